// tessera: row-wise L2 normalisation, x / max(||x||_2, eps), as PyTorch's F.normalize(x, dim=-1).
// A zero row stays zero (it is divided by eps, not by 0). A row whose sum of squares overflows T
// (floats around 1e20) is scaled by a power of two first (x / max(||x||, eps) is invariant to the
// scale but for eps, which is scaled with it). NaN in a row gives a NaN row; an infinity gives
// NaN there and 0 elsewhere (x / inf), as PyTorch's F.normalize does.
#pragma once

#include <cmath>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera {

struct L2NormalizeOptions {
  double eps = 1e-12;  // PyTorch's default
};

namespace detail {

template <class T>
void l2_normalize_row(const T* x, T* y, Index n, T eps, bool may_rescale = true) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> xa(x, n);
  const T ss = xa.square().sum();
  if (!std::isfinite(ss) && may_rescale) {
    const T s = rescale_factor(x, n);  // 0 for a row holding NaN or inf: nothing to rescale
    if (s != 0) {
      scale_into(x, y, n, s);
      l2_normalize_row(y, y, n, eps * s, false);
      return;
    }
  }
  const T norm = std::sqrt(ss);
  // A division, not a multiplication by 1 / max(norm, eps): that reciprocal overflows for a
  // subnormal eps and would turn a zero row into 0 * inf = NaN.
  Eigen::Map<Arr>(y, n) = xa / std::max(norm, eps);
}

}  // namespace detail

// Each row (last dimension) divided by its L2 norm, into `out` (same shape as x; may be x).
template <TensorLike X, class Y>
void l2_normalize_into(const X& x, Y&& out, const L2NormalizeOptions& opts = {}) {
  using T = scalar_t<X>;
  constexpr std::string_view fn = "tessera::l2_normalize";
  detail::check_rowwise_io(fn, x, out);
  if (!(static_cast<T>(opts.eps) > 0) || !std::isfinite(static_cast<T>(opts.eps)))
    detail::raise<ValueError>(fn, "argument 'eps' is ", opts.eps,
                              ", expected a finite value > 0 in the tensor's scalar type");
  const auto xv = cview(x);
  auto yv = mview(out);
  const Index rows = xv.rows(), n = xv.cols();
  const T eps = static_cast<T>(opts.eps);
  parallel_for(rows, detail::row_grain(n), [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      detail::l2_normalize_row(xv.data() + r * n, yv.data() + r * n, n, eps);
  });
}

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> l2_normalize(const X& x, const L2NormalizeOptions& opts = {}) {
  Tensor<scalar_t<X>, rank_v<X>> out(x.shape(), uninitialized);
  l2_normalize_into(x, out, opts);
  return out;
}

// The backward of l2_normalize: given the forward's input x [..., n] and dy (x's shape), returns
// dx = (dy - e (e . dy)) / ||x|| per row, e = x / ||x||; where the norm was floored at eps the
// forward divided by the constant eps, so dx = dy / eps (PyTorch's F.normalize differentiates
// x / clamp_min(||x||, eps) the same way). Rows whose sum of squares overflows are rescaled as
// in the forward. NaN in x or dy gives a NaN row. Throws ShapeError (dy of another shape) and
// ValueError (eps) naming tessera::l2_normalize_backward.
template <TensorLike X, TensorLike G>
Tensor<scalar_t<X>, rank_v<X>> l2_normalize_backward(const X& x, const G& dy,
                                                     const L2NormalizeOptions& opts = {}) {
  using T = scalar_t<X>;
  static_assert(std::is_same_v<T, scalar_t<G>>, "l2_normalize_backward: x and dy types differ");
  constexpr std::string_view fn = "tessera::l2_normalize_backward";
  const auto xv = cview(x);
  const auto gv = cview(dy);
  detail::check_shape_equal(fn, "dy", gv.shape(), xv.shape());
  if (!(static_cast<T>(opts.eps) > 0) || !std::isfinite(static_cast<T>(opts.eps)))
    detail::raise<ValueError>(fn, "argument 'eps' is ", opts.eps,
                              ", expected a finite value > 0 in the tensor's scalar type");
  Tensor<T, rank_v<X>> dx(xv.shape(), uninitialized);
  const Index n = xv.shape()[rank_v<X> - 1];
  const Index rows = n > 0 ? xv.size() / n : 0;
  const T eps = static_cast<T>(opts.eps);
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  parallel_for(rows, detail::row_grain(n), [&](Index r0, Index r1) {
    Arr scaled;
    for (Index r = r0; r < r1; ++r) {
      Eigen::Map<const Arr> xa(xv.data() + r * n, n), g(gv.data() + r * n, n);
      Eigen::Map<Arr> out(dx.data() + r * n, n);
      T ss = xa.square().sum(), s = 1, e = eps;
      const T* xr = xv.data() + r * n;
      if (!std::isfinite(ss)) {
        const T f = detail::rescale_factor(xr, n);
        if (f != 0) {
          scaled = xa * f;
          xr = scaled.data();
          ss = scaled.square().sum();
          s = f, e = eps * f;
        }
      }
      const T norm = std::sqrt(ss);
      if (norm > e) {
        Eigen::Map<const Arr> xs(xr, n);
        // d/dx_s (x_s / |x_s|) then the chain rule through x_s = s x
        out = (g - xs * ((xs * g).sum() / ss)) * (s / norm);
      } else if (std::isnan(norm)) {
        out.setConstant(norm);
      } else {
        out = g * (s / e);
      }
    }
  });
  return dx;
}

}  // namespace tessera
