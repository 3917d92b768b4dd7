// tessera: gradient clipping by the norm of all gradients together, as PyTorch 1.13's
// torch.nn.utils.clip_grad_norm_ (torch/nn/utils/clip_grad.py):
//
//   total = || (||g_1||_p, ..., ||g_k||_p) ||_p          (p = inf: max_i max |g_i|)
//   clip_coef = max_norm / (total + 1e-6), clamped to at most 1
//   every g_i *= clip_coef                                (always, even when the coef is 1)
//
// over the parameters that have a gradient. As in PyTorch the norms are values of T (each
// gradient's norm rounded to T, then the norm of those), and the coefficient is computed in T as
// PyTorch evaluates `max_norm / (total_norm + 1e-6)` on a tensor: reciprocal(total + 1e-6) *
// max_norm. A NaN or infinite total is an error with error_if_nonfinite; without it the gradients
// are scaled by the NaN (or 0) coefficient, as PyTorch does, so the problem stays visible.
#pragma once

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/optim/param_group.hpp"
#include "tessera/optim/parameter_ref.hpp"

namespace tessera::optim {

struct ClipGradNormOptions {
  double norm_type = 2.0;  // p > 0, or std::numeric_limits<double>::infinity()
  bool error_if_nonfinite = false;
};

namespace impl {

// ||x||_p of one gradient, accumulated in double (long double for double) and rounded to T.
template <class T>
T grad_norm(std::span<const T> x, double p) {
  using Acc = std::conditional_t<std::is_same_v<T, float>, double, long double>;
  if (std::isinf(p)) {
    T m = 0;
    for (T v : x) m = nan_max(m, std::abs(v));
    return m;
  }
  Acc s = 0;
  if (p == 2.0) {
    for (T v : x) s += static_cast<Acc>(v) * static_cast<Acc>(v);
    return static_cast<T>(std::sqrt(s));
  }
  if (p == 1.0) {
    for (T v : x) s += std::abs(static_cast<Acc>(v));
    return static_cast<T>(s);
  }
  for (T v : x) s += std::pow(std::abs(static_cast<Acc>(v)), static_cast<Acc>(p));
  return static_cast<T>(std::pow(s, 1 / static_cast<Acc>(p)));
}

template <class T>
T clip_grad_norm_impl(const std::vector<const ParameterRef<T>*>& params, double max_norm,
                      const ClipGradNormOptions& o) {
  constexpr const char* fn = "tessera::optim::clip_grad_norm";
  if (std::isnan(max_norm))
    detail::raise<ValueError>(fn, "argument 'max_norm' is nan, expected a number");
  if (!(o.norm_type > 0))
    detail::raise<ValueError>(fn, "argument 'norm_type' is ", o.norm_type,
                              ", expected a value > 0 or infinity");
  for (const auto* p : params)
    if (p->grad_mismatched())
      detail::raise<ShapeError>(fn, "parameter ", io::detail::quote_name(p->name()),
                                " has a gradient of shape ", detail::shape_string(p->grad_shape()),
                                ", expected its value's shape ", detail::shape_string(p->shape()));
  std::vector<T> norms;
  std::vector<std::span<T>> grads;
  for (const auto* p : params)
    if (p->has_grad()) {
      grads.push_back(p->grad());
      norms.push_back(grad_norm<T>(grads.back(), o.norm_type));
    }
  if (grads.empty()) return T(0);
  const T total = grad_norm<T>(norms, o.norm_type);
  if (o.error_if_nonfinite && !std::isfinite(total))
    detail::raise<ValueError>(fn, "the total norm of order ", o.norm_type, " of the gradients is ",
                              total, ", expected a finite value (error_if_nonfinite is true)");
  const T coef = T(1) / (total + static_cast<T>(1e-6)) * static_cast<T>(max_norm);
  const T clamped = coef != coef ? coef : std::min(coef, T(1));  // clamp(max=1) keeps a NaN
  for (auto g : grads)
    for (T& v : g) v = v * clamped;
  return total;
}

}  // namespace impl

// Scales the gradients of `params` (those that have one) so that their joint p-norm is at most
// `max_norm`, and returns the norm they had. Throws ValueError for a NaN max_norm, a norm_type
// that is not > 0, or (with error_if_nonfinite) a non-finite total norm, and ShapeError for a
// gradient allocated with another shape than its parameter; nothing is changed then. Returns 0
// when no parameter has a gradient.
template <class T>
T clip_grad_norm(const std::vector<ParameterRef<T>>& params, double max_norm,
                 const ClipGradNormOptions& options = {}) {
  std::vector<const ParameterRef<T>*> ps;
  for (const auto& p : params) ps.push_back(&p);
  return impl::clip_grad_norm_impl<T>(ps, max_norm, options);
}
// The same over every parameter of every group.
template <class T>
T clip_grad_norm(const std::vector<ParamGroup<T>>& groups, double max_norm,
                 const ClipGradNormOptions& options = {}) {
  std::vector<const ParameterRef<T>*> ps;
  for (const auto& g : groups)
    for (const auto& p : g.params) ps.push_back(&p);
  return impl::clip_grad_norm_impl<T>(ps, max_norm, options);
}
// The same over every parameter an optimizer updates.
template <class T>
T clip_grad_norm(const Optimizer<T>& optimizer, double max_norm,
                 const ClipGradNormOptions& options = {}) {
  std::vector<const ParameterRef<T>*> ps;
  for (std::size_t g = 0; g < optimizer.num_groups(); ++g)
    for (const auto& p : optimizer.params(g)) ps.push_back(&p);
  return impl::clip_grad_norm_impl<T>(ps, max_norm, options);
}

}  // namespace tessera::optim
