// tessera: layer normalisation and RMS normalisation over the last dimension.
//
//   layer_norm(x) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias   (Ba et al. 2016)
//   rms_norm(x)   = x / sqrt(mean(x^2) + eps) * weight                   (Zhang & Sennrich 2019)
//
// var is the biased (population) variance, as in PyTorch's nn.LayerNorm. The mean and variance
// are computed in two passes over the row, which stays accurate when |mean| >> stddev.
#pragma once

#include <cmath>
#include <limits>
#include <optional>

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

// y = (x - shift) * scale * w + b for one row, each of w and b optional. y may alias x.
template <class T>
void affine_row(const T* x, T* y, Index n, T shift, T scale, const T* w, const T* b) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  Eigen::Map<Arr> ya(y, n);
  if (w && b)
    ya = (xa - shift) * scale * Eigen::Map<const Arr>(w, n) + Eigen::Map<const Arr>(b, n);
  else if (w)
    ya = (xa - shift) * scale * Eigen::Map<const Arr>(w, n);
  else if (b)
    ya = (xa - shift) * scale + Eigen::Map<const Arr>(b, n);
  else
    ya = (xa - shift) * scale;
}

template <class T>
void layer_norm_row(const T* x, T* y, Index n, T eps, const T* w, const T* b) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  const T mean = xa.sum() / T(n);
  const T var = (xa - mean).square().sum() / T(n);
  affine_row(x, y, n, mean, T(1) / std::sqrt(var + eps), w, b);
}

template <class T>
void rms_norm_row(const T* x, T* y, Index n, T eps, const T* w) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  const T ms = xa.square().sum() / T(n);
  affine_row<T>(x, y, n, T(0), T(1) / std::sqrt(ms + eps), w, nullptr);
}

}  // namespace detail

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
