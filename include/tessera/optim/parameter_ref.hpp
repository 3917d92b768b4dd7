// tessera: a type-erased reference to an nn::Parameter<T, R> of any rank, under its state-dict
// name, and `parameters(module)` that collects them from a module.
//
// Optimizers see every parameter as two contiguous spans of T (value and gradient) and a shape,
// whatever its rank, as PyTorch's optimizers see `Parameter`s as flat tensors:
//
//   tessera::nn::Linear<float> proj({.in_features = 8, .out_features = 4});
//   auto params = tessera::optim::parameters(proj);   // "weight" [4, 8], "bias" [4]
//   params[0].value()[0] = 1.0f;                       // proj.weight.value(0, 0)
//
// A ParameterRef does not own the parameter: the module must outlive it and must not move.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::optim {

template <class T>
class ParameterRef {
 public:
  using Scalar = T;

  template <int R>
  ParameterRef(std::string name, nn::Parameter<T, R>& p)
      : name_(std::move(name)), param_(&p), ops_(&kOps<R>) {}

  // The state-dict name ("layers.0.norm1.weight").
  const std::string& name() const noexcept { return name_; }
  // The shape of the value (its rank is shape().size()).
  std::span<const Index> shape() const { return ops_->shape(param_); }
  int rank() const noexcept { return ops_->rank; }
  Index size() const { return ops_->value(param_).size(); }
  // The value, row-major and contiguous.
  std::span<T> value() const { return ops_->value(param_); }
  // The gradient; empty when the parameter has none (has_grad() false).
  std::span<T> grad() const { return has_grad() ? ops_->grad(param_) : std::span<T>(); }
  // Whether a gradient of the value's shape is allocated (nn::Parameter::has_grad): PyTorch's
  // `p.grad is not None`.
  bool has_grad() const { return ops_->has_grad(param_); }
  // Whether a gradient is allocated with another shape than the value (a bug of the caller that
  // optimizers report instead of skipping the parameter).
  bool grad_mismatched() const { return ops_->grad_mismatched(param_); }
  // The shape of the allocated gradient.
  std::span<const Index> grad_shape() const { return ops_->grad_shape(param_); }
  // Allocates the gradient if needed and sets it to zero (nn::Parameter::zero_grad).
  void zero_grad() const { ops_->zero_grad(param_); }
  // Bumps the parameter's version, so packed copies of its value are known stale (optimizers
  // call it after changing the value).
  void bump_version() const { ops_->bump_version(param_); }
  // Identity of the referenced parameter.
  const void* address() const noexcept { return param_; }

 private:
  struct Ops {
    int rank;
    std::span<const Index> (*shape)(void*);
    std::span<const Index> (*grad_shape)(void*);
    std::span<T> (*value)(void*);
    std::span<T> (*grad)(void*);
    bool (*has_grad)(void*);
    bool (*grad_mismatched)(void*);
    void (*zero_grad)(void*);
    void (*bump_version)(void*);
  };
  template <int R>
  static nn::Parameter<T, R>& cast(void* p) {
    return *static_cast<nn::Parameter<T, R>*>(p);
  }
  template <int R>
  static constexpr Ops kOps{
      R,
      [](void* p) { return std::span<const Index>(cast<R>(p).value.shape()); },
      [](void* p) { return std::span<const Index>(cast<R>(p).grad.shape()); },
      [](void* p) {
        auto& v = cast<R>(p).value;
        return std::span<T>(v.data(), static_cast<std::size_t>(v.size()));
      },
      [](void* p) {
        auto& g = cast<R>(p).grad;
        return std::span<T>(g.data(), static_cast<std::size_t>(g.size()));
      },
      [](void* p) { return cast<R>(p).has_grad(); },
      [](void* p) {
        const auto& q = cast<R>(p);
        return q.grad.shape() != q.value.shape() && q.grad.size() > 0;
      },
      [](void* p) { cast<R>(p).zero_grad(); },
      [](void* p) { ++cast<R>(p).version; },
  };

  std::string name_;
  void* param_;
  const Ops* ops_;
};

namespace impl {

// The scalar type of a module template instance such as nn::Linear<float>.
template <class M>
struct module_scalar {};
template <template <class> class M, class T>
struct module_scalar<M<T>> {
  using type = T;
};

// T, or (T = void) the module's scalar type; only looked up when needed.
template <class T, class M>
struct scalar_or_module_scalar_t {
  using type = T;
};
template <class M>
struct scalar_or_module_scalar_t<void, M> {
  using type = typename module_scalar<std::remove_cv_t<M>>::type;
};
template <class T, class M>
using scalar_or_module_scalar = typename scalar_or_module_scalar_t<T, M>::type;

}  // namespace impl

// Every parameter of `module` (anything with for_each_parameter(f, prefix), which calls
// f(name, nn::Parameter<T, R>&)), in visiting order, named `prefix` + its state-dict name as
// torch.nn.Module.named_parameters(prefix) does. T is deduced from a module template instance
// (nn::Linear<float> -> float); give it explicitly for other modules: parameters<float>(m).
template <class T = void, class M>
std::vector<ParameterRef<impl::scalar_or_module_scalar<T, M>>> parameters(
    M& module, const std::string& prefix = "") {
  using S = impl::scalar_or_module_scalar<T, M>;
  std::vector<ParameterRef<S>> out;
  module.for_each_parameter(
      [&](const std::string& name, auto& p) {
        static_assert(std::is_same_v<typename std::remove_cvref_t<decltype(p)>::Scalar, S>,
                      "tessera::optim::parameters: the module's parameters are not of scalar T");
        out.emplace_back(name, p);
      },
      prefix);
  return out;
}

}  // namespace tessera::optim
