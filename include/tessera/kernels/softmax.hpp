// tessera: softmax, log-softmax and logsumexp over the last dimension, with an optional mask.
//
//   softmax(x)_j     = exp(x_j - m) / sum_k exp(x_k - m),   m = max_k x_k
//   log_softmax(x)_j = x_j - m - log(sum_k exp(x_k - m))
//   logsumexp(x)     = m + log(sum_k exp(x_k - m))
//
// Subtracting the row maximum keeps every exp in [0, 1], so logits of +-1e4 are exact enough.
// Masked positions (see Mask) count as -inf. A row whose every entry is masked out (or -inf)
// gives: softmax all zeros, log_softmax all -inf, logsumexp -inf (the value of an empty sum).
// Non-finite logits follow PyTorch (torch.softmax / log_softmax / logsumexp):
//   - a NaN anywhere in a row makes the whole row NaN (and its logsumexp NaN), on every path;
//   - a +inf in a row (and no NaN) makes softmax and log_softmax NaN for the whole row (the
//     shift gives inf - inf) and logsumexp +inf.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/simd.hpp"

namespace tessera {

struct SoftmaxOptions {
  // Broadcasts against x's shape; masked-out positions get probability 0.
  std::optional<Mask> mask;
};

namespace detail {

// Rows of at least this many elements per thread are worth a thread.
inline constexpr Index kRowGrainElements = 16384;

inline Index row_grain(Index n) {
  return std::max<Index>(1, kRowGrainElements / std::max<Index>(n, 1));
}

template <class T>
T row_max(const T* x, Index n) {
  using P = simd::Packet<T>;
  constexpr Index W = simd::width<T>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  Index j = 0;
  T m = ninf;
  if (n >= 4 * W) {
    P m0 = simd::load(x), m1 = simd::load(x + W), m2 = simd::load(x + 2 * W),
      m3 = simd::load(x + 3 * W);
    for (j = 4 * W; j + 4 * W <= n; j += 4 * W) {
      m0 = simd::max(m0, simd::load(x + j));
      m1 = simd::max(m1, simd::load(x + j + W));
      m2 = simd::max(m2, simd::load(x + j + 2 * W));
      m3 = simd::max(m3, simd::load(x + j + 3 * W));
    }
    for (; j + W <= n; j += W) m0 = simd::max(m0, simd::load(x + j));
    m = simd::reduce_max(simd::max(simd::max(m0, m1), simd::max(m2, m3)));
  }
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// y_j = exp(x_j - m) (simd::exp_fast: about 1 ulp); returns the sum of the y_j. y may be x. With
// y == nullptr only sums.
template <class T>
T exp_shifted(const T* x, T* y, Index n, T m) {
  using P = simd::Packet<T>;
  constexpr Index W = simd::width<T>;
  const P pm = simd::set1<T>(m);
  P s0 = simd::set1<T>(0), s1 = simd::set1<T>(0);
  Index j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const P e0 = simd::exp_fast(simd::sub(simd::load(x + j), pm));
    const P e1 = simd::exp_fast(simd::sub(simd::load(x + j + W), pm));
    if (y) {
      simd::store(y + j, e0);
      simd::store(y + j + W, e1);
    }
    s0 = simd::add(s0, e0);
    s1 = simd::add(s1, e1);
  }
  for (; j + W <= n; j += W) {
    const P e0 = simd::exp_fast(simd::sub(simd::load(x + j), pm));
    if (y) simd::store(y + j, e0);
    s0 = simd::add(s0, e0);
  }
  T s = simd::reduce_sum(simd::add(s0, s1));
  for (; j < n; ++j) {
    const T e = std::exp(x[j] - m);
    if (y) y[j] = e;
    s += e;
  }
  return s;
}

template <class T>
void scale_row(T* y, Index n, T a) {
  using P = simd::Packet<T>;
  constexpr Index W = simd::width<T>;
  const P pa = simd::set1<T>(a);
  Index j = 0;
  for (; j + W <= n; j += W) simd::store(y + j, simd::mul(simd::load(y + j), pa));
  for (; j < n; ++j) y[j] *= a;
}

// y_j = (x_j - m) - c: the two subtractions in this order keep log-softmax exact to a few ulp
// when |m| is large (m + c rounded first would lose most of c).
template <class T>
void shift_row(const T* x, T* y, Index n, T m, T c) {
  using P = simd::Packet<T>;
  constexpr Index W = simd::width<T>;
  const P pm = simd::set1<T>(m), pc = simd::set1<T>(c);
  Index j = 0;
  for (; j + W <= n; j += W) simd::store(y + j, simd::sub(simd::sub(simd::load(x + j), pm), pc));
  for (; j < n; ++j) y[j] = (x[j] - m) - c;
}

template <class T>
bool row_has_nan(const T* x, Index n) {
  for (Index j = 0; j < n; ++j)
    if (std::isnan(x[j])) return true;
  return false;
}

// row_max skips NaN (a plain compare in the scalar tail), so a row whose maximum comes out
// infinite is looked at again here, off the fast path: a NaN anywhere wins. Returns the NaN to
// fill the row with, or m.
template <class T>
T infinite_row_max(const T* x, Index n, T m) {
  return row_has_nan(x, n) ? std::numeric_limits<T>::quiet_NaN() : m;
}

// One row of softmax; y may alias x. A finite maximum needs no check: a NaN in the row makes the
// sum NaN and with it every output.
template <class T>
void softmax_row_impl(const T* x, T* y, Index n) {
  const T m = row_max(x, n);
  if (std::isinf(m)) {
    // -inf: an empty or fully masked row; +inf gives inf - inf, NaN, as in PyTorch.
    const T mm = infinite_row_max(x, n, m);
    std::fill(y, y + n, mm < 0 ? T(0) : std::numeric_limits<T>::quiet_NaN());
    return;
  }
  const T s = exp_shifted(x, y, n, m);
  scale_row(y, n, T(1) / s);
}

TESSERA_BEGIN_MODE_NAMESPACE
// softmax_row_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void softmax_row(const T* x, T* y, Index n) {
  if constexpr (kDispatched<T>)
    kernels<T>().softmax_row(x, y, n);
  else
    softmax_row_impl(x, y, n);
}
TESSERA_END_MODE_NAMESPACE

// One row of log-softmax; y may alias x.
template <class T>
void log_softmax_row_impl(const T* x, T* y, Index n) {
  const T m = row_max(x, n);
  if (std::isinf(m)) {
    const T mm = infinite_row_max(x, n, m);
    std::fill(y, y + n, mm < 0 ? mm : std::numeric_limits<T>::quiet_NaN());
    return;
  }
  const T s = exp_shifted<T>(x, nullptr, n, m);
  shift_row(x, y, n, m, std::log(s));
}

TESSERA_BEGIN_MODE_NAMESPACE
// log_softmax_row_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void log_softmax_row(const T* x, T* y, Index n) {
  if constexpr (kDispatched<T>)
    kernels<T>().log_softmax_row(x, y, n);
  else
    log_softmax_row_impl(x, y, n);
}
TESSERA_END_MODE_NAMESPACE

// logsumexp of one row: -inf for an empty or fully masked row, +inf for a row holding +inf
// (e^inf dominates the sum), NaN for a row holding NaN.
template <class T>
T logsumexp_row_impl(const T* x, Index n) {
  const T m = row_max(x, n);
  if (std::isinf(m)) return infinite_row_max(x, n, m);
  return m + std::log(exp_shifted<T>(x, nullptr, n, m));
}

TESSERA_BEGIN_MODE_NAMESPACE
// logsumexp_row_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
T logsumexp_row(const T* x, Index n) {
  if constexpr (kDispatched<T>)
    return kernels<T>().logsumexp_row(x, n);
  else
    return logsumexp_row_impl(x, n);
}
TESSERA_END_MODE_NAMESPACE

// out has x's shape, and is either x itself or disjoint from it: each row is written after its
// own row of x is read, so a partial overlap would feed rows already written back in.
template <class X, class Y>
void check_rowwise_io(std::string_view fn, const X& x, const Y& out) {
  static_assert(rank_v<X> >= 1, "row-wise kernels need a tensor of rank >= 1");
  static_assert(std::is_same_v<scalar_t<X>, scalar_t<Y>>, "input and output scalar types differ");
  check_shape_equal(fn, "out", out.shape(), x.shape());
  const auto bytes = static_cast<std::size_t>(cview(x).size()) * sizeof(scalar_t<X>);
  if (ranges_partially_overlap(x.data(), bytes, out.data(), bytes))
    raise<ValueError>(fn,
                      "argument 'out' partially overlaps argument 'x'; it must be x itself "
                      "or not overlap it");
}

// Runs row_fn(x_row, y_row, n) over every row, applying the mask first when there is one.
template <class T, int Rank, class RowFn>
void rowwise_masked(std::string_view fn, TensorMap<const T, Rank> x, TensorMap<T, Rank> out,
                    const std::optional<Mask>& mask, RowFn row_fn) {
  const Index rows = x.rows(), n = x.cols();
  const T* xp = x.data();
  T* yp = out.data();
  if (!mask) {
    parallel_for(rows, row_grain(n), [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) row_fn(xp + r * n, yp + r * n, n);
    });
    return;
  }
  const MaskRows mrows(*mask, x.shape(), fn, "mask");
  parallel_for(rows, row_grain(n), [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      mrows.apply(r, xp + r * n, yp + r * n, n);
      row_fn(yp + r * n, yp + r * n, n);
    }
  });
}

}  // namespace detail

// softmax over the last dimension into `out` (same shape as x; may be x itself).
template <TensorLike X, class Y>
void softmax_into(const X& x, Y&& out, const SoftmaxOptions& opts = {}) {
  using T = scalar_t<X>;
  detail::check_rowwise_io("tessera::softmax", x, out);
  detail::rowwise_masked<T, rank_v<X>>(
      "tessera::softmax", cview(x), mview(out), opts.mask,
      [](const T* a, T* b, Index n) { detail::softmax_row(a, b, n); });
}

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> softmax(const X& x, const SoftmaxOptions& opts = {}) {
  Tensor<scalar_t<X>, rank_v<X>> out(x.shape(), uninitialized);
  softmax_into(x, out, opts);
  return out;
}

// log-softmax over the last dimension into `out` (same shape as x; may be x itself).
template <TensorLike X, class Y>
void log_softmax_into(const X& x, Y&& out, const SoftmaxOptions& opts = {}) {
  using T = scalar_t<X>;
  detail::check_rowwise_io("tessera::log_softmax", x, out);
  detail::rowwise_masked<T, rank_v<X>>(
      "tessera::log_softmax", cview(x), mview(out), opts.mask,
      [](const T* a, T* b, Index n) { detail::log_softmax_row(a, b, n); });
}

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> log_softmax(const X& x, const SoftmaxOptions& opts = {}) {
  Tensor<scalar_t<X>, rank_v<X>> out(x.shape(), uninitialized);
  log_softmax_into(x, out, opts);
  return out;
}

// logsumexp over the last dimension: shape [..., n] -> [...] (a rank-0 tensor for a vector).
template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X> - 1> logsumexp(const X& x, const SoftmaxOptions& opts = {}) {
  using T = scalar_t<X>;
  constexpr int R = rank_v<X>;
  static_assert(R >= 1, "logsumexp needs a tensor of rank >= 1");
  Shape<R - 1> out_shape;
  std::copy(x.shape().begin(), x.shape().end() - 1, out_shape.begin());
  Tensor<T, R - 1> out(out_shape, uninitialized);
  const auto xv = cview(x);
  const Index rows = xv.rows(), n = xv.cols();
  const T* xp = xv.data();
  T* yp = out.data();
  if (!opts.mask) {
    parallel_for(rows, detail::row_grain(n), [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) yp[r] = detail::logsumexp_row(xp + r * n, n);
    });
    return out;
  }
  const detail::MaskRows mrows(*opts.mask, xv.shape(), "tessera::logsumexp", "mask");
  parallel_for(rows, detail::row_grain(n), [&](Index r0, Index r1) {
    std::vector<T> scratch(static_cast<std::size_t>(n));
    for (Index r = r0; r < r1; ++r) {
      mrows.apply(r, xp + r * n, scratch.data(), n);
      yp[r] = detail::logsumexp_row(scratch.data(), n);
    }
  });
  return out;
}

}  // namespace tessera
