// tessera: layer normalisation and RMS normalisation over the last dimension.
//
//   layer_norm(x) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias   (Ba et al. 2016)
//   rms_norm(x)   = x / sqrt(mean(x^2) + eps) * weight                   (Zhang & Sennrich 2019)
//
// var is the biased (population) variance, as in PyTorch's nn.LayerNorm. The mean and variance
// are computed in two passes over the row shifted by its first element K (the "shifted data"
// two-pass scheme): d_j = x_j - K is exact when x_j and K are within a factor of 2 of each other,
// so when |mean| >> stddev the mean of d and the centred deviations d_j - mean(d) keep the
// precision of the spread, not of the mean (1024 floats 1e6 + U(0, 1): within 2e-4 of the float64
// answer, where a plain float mean gave errors of 1.4), and the output is formed from the same
// deviations.
// A row whose sum of squares overflows T (floats around 1e20) is scaled by a power of two taken
// from its largest magnitude and normalised again with eps scaled to match (exact: both norms
// are invariant to the scale but for eps). NaN anywhere in a row makes the row NaN; an infinity
// gives what PyTorch gives (layer_norm: all NaN; rms_norm: NaN where x is infinite, 0 elsewhere).
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera {

template <class T>
struct LayerNormOptions {
  std::optional<TensorMap<const T, 1>> weight;  // [n], PyTorch's `weight` (gamma)
  std::optional<TensorMap<const T, 1>> bias;    // [n], PyTorch's `bias` (beta)
  double eps = 1e-5;
};

template <class T>
struct RMSNormOptions {
  std::optional<TensorMap<const T, 1>> weight;  // [n]
  // PyTorch's default (eps=None) is the machine epsilon of the scalar type.
  std::optional<double> eps;
};

namespace detail {

template <class T>
void check_norm_params(std::string_view fn, Index n, const std::optional<TensorMap<const T, 1>>& w,
                       const std::optional<TensorMap<const T, 1>>& b, double eps) {
  const Index expected[] = {n};
  if (w) check_shape_equal(fn, "weight", w->shape(), expected);
  if (b) check_shape_equal(fn, "bias", b->shape(), expected);
  // Checked in T: an eps that rounds to 0 in float would turn a constant row into NaN.
  const T eps_t = static_cast<T>(eps);
  if (!(eps_t > 0) || !std::isfinite(eps_t))
    raise<ValueError>(fn, "argument 'eps' is ", eps,
                      ", expected a finite value > 0 in the tensor's scalar type (eps = 0 turns a "
                      "constant row into NaN)");
}

// weight and bias are read for every row, so neither may overlap out (which rows are written to).
template <class T, class Y>
void check_params_outside_out(std::string_view fn, const Y& out,
                              const std::optional<TensorMap<const T, 1>>& w,
                              const std::optional<TensorMap<const T, 1>>& b) {
  const auto out_bytes = static_cast<std::size_t>(cview(out).size()) * sizeof(T);
  const auto check = [&](std::string_view name, const std::optional<TensorMap<const T, 1>>& p) {
    if (p && ranges_overlap(p->data(), static_cast<std::size_t>(p->size()) * sizeof(T), out.data(),
                            out_bytes))
      raise<ValueError>(fn, "argument '", name, "' overlaps argument 'out'");
  };
  check("weight", w);
  check("bias", b);
}

// y = ((x - shift) - shift2) * scale * w + b for one row, each of w and b optional. y may alias
// x.
template <class T>
void affine_row(const T* x, T* y, Index n, T shift, T shift2, T scale, const T* w, const T* b) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  Eigen::Map<Arr> ya(y, n);
  if (w && b)
    ya =
        ((xa - shift) - shift2) * scale * Eigen::Map<const Arr>(w, n) + Eigen::Map<const Arr>(b, n);
  else if (w)
    ya = ((xa - shift) - shift2) * scale * Eigen::Map<const Arr>(w, n);
  else if (b)
    ya = ((xa - shift) - shift2) * scale + Eigen::Map<const Arr>(b, n);
  else
    ya = ((xa - shift) - shift2) * scale;
}

// The power of two 2^-e that brings the largest magnitude of a row of n > 0 elements to [1, 2),
// or 0 when the row holds a NaN or an infinity, or is all zeros (nothing to rescale).
template <class T>
T rescale_factor(const T* x, Index n) {
  T amax = 0;
  for (Index j = 0; j < n; ++j) {
    const T v = std::fabs(x[j]);
    if (std::isnan(v)) return T(0);
    amax = std::max(amax, v);
  }
  if (std::isinf(amax) || amax == 0) return T(0);
  return std::ldexp(T(1), -std::ilogb(amax));
}

// y = x * s (exact: s is a power of two and the rows it is used on are large).
template <class T>
void scale_into(const T* x, T* y, Index n, T s) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<Arr>(y, n) = Eigen::Map<const Arr>(x, n) * s;
}

template <class T>
void layer_norm_row_impl(const T* x, T* y, Index n, T eps, const T* w, const T* b,
                         bool may_rescale = true) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  const T shift = x[0];
  const T mean_d = (xa - shift).sum() / T(n);
  const T var = ((xa - shift) - mean_d).square().sum() / T(n);
  if (!std::isfinite(var) && may_rescale) {
    // The sum or the sum of squares overflowed (or the row holds NaN or inf, rescale_factor 0).
    // layer_norm(x; eps) = layer_norm(s x; s^2 eps) for s > 0.
    const T s = rescale_factor(x, n);
    if (s != 0) {
      scale_into(x, y, n, s);
      layer_norm_row_impl(y, y, n, eps * s * s, w, b, false);
      return;
    }
  }
  affine_row(x, y, n, shift, mean_d, T(1) / std::sqrt(var + eps), w, b);
}

TESSERA_BEGIN_MODE_NAMESPACE
// layer_norm_row_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void layer_norm_row(const T* x, T* y, Index n, T eps, const T* w, const T* b,
                    bool may_rescale = true) {
  if constexpr (kDispatched<T>)
    kernels<T>().layer_norm_row(x, y, n, eps, w, b, may_rescale);
  else
    layer_norm_row_impl(x, y, n, eps, w, b, may_rescale);
}
TESSERA_END_MODE_NAMESPACE

template <class T>
void rms_norm_row_impl(const T* x, T* y, Index n, T eps, const T* w, bool may_rescale = true) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  const T ms = xa.square().sum() / T(n);
  if (!std::isfinite(ms) && may_rescale) {
    const T s = rescale_factor(x, n);  // rms_norm(x; eps) = rms_norm(s x; s^2 eps)
    if (s != 0) {
      scale_into(x, y, n, s);
      rms_norm_row_impl(y, y, n, eps * s * s, w, false);
      return;
    }
  }
  // y = x * scale (* w): no centring, so none of layer norm's shifts in this pass.
  const T scale = T(1) / std::sqrt(ms + eps);
  Eigen::Map<Arr> ya(y, n);
  if (w)
    ya = xa * scale * Eigen::Map<const Arr>(w, n);
  else
    ya = xa * scale;
}

TESSERA_BEGIN_MODE_NAMESPACE
// rms_norm_row_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void rms_norm_row(const T* x, T* y, Index n, T eps, const T* w, bool may_rescale = true) {
  if constexpr (kDispatched<T>)
    kernels<T>().rms_norm_row(x, y, n, eps, w, may_rescale);
  else
    rms_norm_row_impl(x, y, n, eps, w, may_rescale);
}
TESSERA_END_MODE_NAMESPACE

// The backward of layer_norm_row for one row: dx from dy, and dy * xhat, dy added into gw, gb
// (each optional). With xhat = (x - mean) rstd and g = dy * w (dy without a weight):
//   dx = rstd (g - mean(g) - xhat mean(g xhat))
// (Ba et al. 2016; PyTorch's layer_norm_backward in aten/src/ATen/native/cpu/layer_norm_kernel.cpp
// computes the same). The statistics are recomputed from x as the forward computes them; a row
// the forward rescaled (its sum of squares overflowed) is rescaled here too:
// d/dx layer_norm(x; eps) = s * (d/dy layer_norm)(s x; s^2 eps). `tmp` holds n values.
template <class T>
void layer_norm_backward_row_impl(const T* x, const T* dy, T* dx, Index n, T eps, const T* w, T* gw,
                                  T* gb, T* tmp) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  T s = 1;
  const T* xr = x;
  {
    Eigen::Map<const Arr> xa(x, n);
    const T shift = x[0];
    const T mean_d = (xa - shift).sum() / T(n);
    const T var = ((xa - shift) - mean_d).square().sum() / T(n);
    if (!std::isfinite(var)) {
      const T f = rescale_factor(x, n);
      if (f != 0) {
        s = f;
        scale_into(x, tmp, n, s);
        xr = tmp;
        eps = eps * s * s;
      }
    }
  }
  Eigen::Map<const Arr> xa(xr, n), g0(dy, n);
  const T shift = xr[0];
  const T mean_d = (xa - shift).sum() / T(n);
  const T var = ((xa - shift) - mean_d).square().sum() / T(n);
  const T rstd = T(1) / std::sqrt(var + eps);
  Eigen::Map<Arr> xhat(tmp, n);
  xhat = ((xa - shift) - mean_d) * rstd;  // tmp may hold the rescaled x, read just above
  if (gw) Eigen::Map<Arr>(gw, n) += g0 * xhat;
  if (gb) Eigen::Map<Arr>(gb, n) += g0;
  Eigen::Map<Arr> out(dx, n);
  if (w)
    out = g0 * Eigen::Map<const Arr>(w, n);
  else
    out = g0;
  const T a = out.sum() / T(n);
  const T b = (out * xhat).sum() / T(n);
  out = (out - a - xhat * b) * (rstd * s);
}

TESSERA_BEGIN_MODE_NAMESPACE
// layer_norm_backward_row_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void layer_norm_backward_row(const T* x, const T* dy, T* dx, Index n, T eps, const T* w, T* gw,
                             T* gb, T* tmp) {
  if constexpr (kDispatched<T>)
    kernels<T>().layer_norm_backward_row(x, dy, dx, n, eps, w, gw, gb, tmp);
  else
    layer_norm_backward_row_impl(x, dy, dx, n, eps, w, gw, gb, tmp);
}
TESSERA_END_MODE_NAMESPACE

// Rows per block of a norm's backward: blocks are cut from the row count alone, so the weight
// and bias gradients (summed per block, then over blocks in order) are the same for every
// thread count.
inline Index norm_backward_block(Index rows) { return std::max<Index>(64, (rows + 511) / 512); }

}  // namespace detail

// The backward of layer_norm over the last dimension (Ba et al. 2016): given the forward's input
// x [..., n] and options, and dy (x's shape), writes dx (x's shape; may be dy itself, not x) and,
// when given, ADDS the gradients of the weight and bias into grad_weight [n] and grad_bias [n].
// The statistics are recomputed from x (nothing is saved by the forward). Throws ShapeError and
// ValueError as layer_norm does, naming tessera::layer_norm_backward.
template <TensorLike X, TensorLike G, class Y>
void layer_norm_backward_into(const X& x, const G& dy, Y&& dx,
                              const LayerNormOptions<scalar_t<X>>& opts = {},
                              std::optional<TensorMap<scalar_t<X>, 1>> grad_weight = {},
                              std::optional<TensorMap<scalar_t<X>, 1>> grad_bias = {}) {
  using T = scalar_t<X>;
  static_assert(std::is_same_v<T, scalar_t<G>> && std::is_same_v<T, scalar_t<Y>>,
                "layer_norm_backward: x, dy and dx scalar types differ");
  constexpr std::string_view fn = "tessera::layer_norm_backward";
  const auto xv = cview(x);
  const auto gv = cview(dy);
  auto dv = mview(dx);
  detail::check_shape_equal(fn, "dy", gv.shape(), xv.shape());
  detail::check_shape_equal(fn, "dx", dv.shape(), xv.shape());
  const Index n = xv.shape()[rank_v<X> - 1];
  const Index rows = n > 0 ? xv.size() / n : 0;
  detail::check_norm_params<T>(fn, n, opts.weight, opts.bias, opts.eps);
  const Index expected[] = {n};
  if (grad_weight) detail::check_shape_equal(fn, "grad_weight", grad_weight->shape(), expected);
  if (grad_bias) detail::check_shape_equal(fn, "grad_bias", grad_bias->shape(), expected);
  const auto bytes = static_cast<std::size_t>(xv.size()) * sizeof(T);
  if (detail::ranges_partially_overlap(gv.data(), bytes, dv.data(), bytes))
    detail::raise<ValueError>(fn, "argument 'dx' partially overlaps argument 'dy'");
  if (dv.size() > 0 && detail::ranges_overlap(xv.data(), bytes, dv.data(), bytes))
    detail::raise<ValueError>(fn, "argument 'dx' overlaps argument 'x', which is read after it");
  if (n == 0 || rows == 0) return;
  const T* w = opts.weight ? opts.weight->data() : nullptr;
  const T eps = static_cast<T>(opts.eps);
  const Index block = detail::norm_backward_block(rows);
  const Index blocks = (rows + block - 1) / block;
  const bool want_w = grad_weight.has_value(), want_b = grad_bias.has_value();
  // Per-block partial sums of the weight and bias gradients: [blocks, n] each.
  std::vector<T> part_w(want_w ? blocks * n : 0, T(0)), part_b(want_b ? blocks * n : 0, T(0));
  parallel_for(blocks, 1, [&](Index b0, Index b1) {
    std::vector<T> tmp(n);
    for (Index blk = b0; blk < b1; ++blk) {
      T* gw = want_w ? part_w.data() + blk * n : nullptr;
      T* gb = want_b ? part_b.data() + blk * n : nullptr;
      for (Index r = blk * block; r < std::min(rows, (blk + 1) * block); ++r)
        detail::layer_norm_backward_row(xv.data() + r * n, gv.data() + r * n, dv.data() + r * n, n,
                                        eps, w, gw, gb, tmp.data());
    }
  });
  using Vec = Eigen::Array<T, Eigen::Dynamic, 1>;
  for (Index blk = 0; blk < blocks; ++blk) {
    if (want_w)
      Eigen::Map<Vec>(grad_weight->data(), n) += Eigen::Map<const Vec>(&part_w[blk * n], n);
    if (want_b) Eigen::Map<Vec>(grad_bias->data(), n) += Eigen::Map<const Vec>(&part_b[blk * n], n);
  }
}

// Layer norm over the last dimension into `out` (same shape as x; may be x itself).
template <TensorLike X, class Y>
void layer_norm_into(const X& x, Y&& out, const LayerNormOptions<scalar_t<X>>& opts = {}) {
  using T = scalar_t<X>;
  constexpr std::string_view fn = "tessera::layer_norm";
  detail::check_rowwise_io(fn, x, out);
  const auto xv = cview(x);
  auto yv = mview(out);
  const Index rows = xv.rows(), n = xv.cols();
  detail::check_norm_params<T>(fn, n, opts.weight, opts.bias, opts.eps);
  detail::check_params_outside_out<T>(fn, yv, opts.weight, opts.bias);
  if (n == 0) return;
  const T* w = opts.weight ? opts.weight->data() : nullptr;
  const T* b = opts.bias ? opts.bias->data() : nullptr;
  const T eps = static_cast<T>(opts.eps);
  parallel_for(rows, detail::row_grain(n), [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      detail::layer_norm_row(xv.data() + r * n, yv.data() + r * n, n, eps, w, b);
  });
}

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> layer_norm(const X& x,
                                          const LayerNormOptions<scalar_t<X>>& opts = {}) {
  Tensor<scalar_t<X>, rank_v<X>> out(x.shape(), uninitialized);
  layer_norm_into(x, out, opts);
  return out;
}

// RMS norm over the last dimension into `out` (same shape as x; may be x itself).
template <TensorLike X, class Y>
void rms_norm_into(const X& x, Y&& out, const RMSNormOptions<scalar_t<X>>& opts = {}) {
  using T = scalar_t<X>;
  constexpr std::string_view fn = "tessera::rms_norm";
  detail::check_rowwise_io(fn, x, out);
  const auto xv = cview(x);
  auto yv = mview(out);
  const Index rows = xv.rows(), n = xv.cols();
  const double eps_d = opts.eps.value_or(std::numeric_limits<T>::epsilon());
  detail::check_norm_params<T>(fn, n, opts.weight, std::nullopt, eps_d);
  detail::check_params_outside_out<T>(fn, yv, opts.weight, std::nullopt);
  if (n == 0) return;
  const T* w = opts.weight ? opts.weight->data() : nullptr;
  const T eps = static_cast<T>(eps_d);
  parallel_for(rows, detail::row_grain(n), [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      detail::rms_norm_row(xv.data() + r * n, yv.data() + r * n, n, eps, w);
  });
}

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> rms_norm(const X& x, const RMSNormOptions<scalar_t<X>>& opts = {}) {
  Tensor<scalar_t<X>, rank_v<X>> out(x.shape(), uninitialized);
  rms_norm_into(x, out, opts);
  return out;
}

}  // namespace tessera
