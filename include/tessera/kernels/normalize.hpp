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

}  // namespace tessera
