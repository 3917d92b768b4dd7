// tessera: stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight
// decay, as PyTorch 1.13's torch.optim.SGD (its single-tensor path, torch/optim/sgd.py
// `_single_tensor_sgd`). Per parameter p with gradient g, at each step:
//
//   d = maximize ? -g : g
//   if weight_decay != 0:  d = d + weight_decay * p
//   if momentum != 0:
//     buf = first step ? d : momentum * buf + (1 - dampening) * d
//     d = nesterov ? d + momentum * buf : buf
//   p = p - lr * d
//
// computed in T with PyTorch's operation order, each double hyper-parameter rounded to T as
// PyTorch rounds a Python scalar operand to the tensor's dtype.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tessera/optim/optimizer.hpp"

namespace tessera::optim {

struct SGDOptions {
  // PyTorch's SGD has no default learning rate: it must be given.
  double lr = std::numeric_limits<double>::quiet_NaN();
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  bool maximize = false;
};

template <class T>
class SGD : public Optimizer<T> {
 public:
  // Throws ValueError (naming "tessera::optim::SGD", the option, expected and actual) for a
  // missing, negative or non-finite lr, a negative momentum or weight_decay, a non-finite
  // dampening, nesterov without momentum or with dampening, an empty parameter list, a parameter
  // given twice or two parameters of the same name.
  SGD(std::vector<ParamGroup<T>> groups, const SGDOptions& options)
      : Optimizer<T>(kFn, std::move(groups), checked(options).lr, options.weight_decay),
        options_(options) {}
  SGD(std::vector<ParameterRef<T>> params, const SGDOptions& options)
      : SGD(Optimizer<T>::one_group(std::move(params), kFn), options) {}

  std::string_view name() const override { return "SGD"; }
  const SGDOptions& options_struct() const noexcept { return options_; }

  void step() override {
    const SGDOptions& o = options_;
    const T momentum = static_cast<T>(o.momentum);
    const T one_minus_dampening = static_cast<T>(1.0 - o.dampening);
    this->for_each_param_with_grad(
        "tessera::optim::SGD::step", [&](auto& group, const ParameterRef<T>& p, auto& st) {
          const std::span<T> value = p.value(), grad = p.grad();
          const std::size_t n = value.size();
          const T wd = static_cast<T>(group.weight_decay);
          const T neg_lr = static_cast<T>(-group.lr);
          const bool first = !st.find("momentum_buffer");  // PyTorch: buf is None
          std::vector<T>* buf = o.momentum != 0 ? &st.buffer("momentum_buffer", n) : nullptr;
          for (std::size_t j = 0; j < n; ++j) {
            T d = o.maximize ? -grad[j] : grad[j];
            if (group.weight_decay != 0) d = d + wd * value[j];
            if (buf) {
              T& b = (*buf)[j];
              b = first ? d : b * momentum + one_minus_dampening * d;
              d = o.nesterov ? d + momentum * b : b;
            }
            value[j] = value[j] + neg_lr * d;
          }
          ++st.step;
        });
  }

 protected:
  std::vector<std::pair<std::string, std::string>> options() const override {
    return {{"momentum", impl::format_double(options_.momentum)},
            {"dampening", impl::format_double(options_.dampening)},
            {"nesterov", options_.nesterov ? "true" : "false"},
            {"maximize", options_.maximize ? "true" : "false"}};
  }
  std::vector<std::string> buffer_names() const override {
    if (options_.momentum != 0) return {"momentum_buffer"};
    return {};
  }

 private:
  static constexpr const char* kFn = "tessera::optim::SGD";
  static const SGDOptions& checked(const SGDOptions& o) {
    if (std::isnan(o.lr))
      detail::raise<ValueError>(kFn, "argument 'lr' is nan, expected a finite value >= 0 (SGD ",
                                "has no default learning rate)");
    impl::check_lr_like(kFn, "lr", o.lr);
    impl::check_lr_like(kFn, "momentum", o.momentum);
    impl::check_lr_like(kFn, "weight_decay", o.weight_decay);
    if (!std::isfinite(o.dampening))
      detail::raise<ValueError>(kFn, "argument 'dampening' is ", o.dampening,
                                ", expected a finite value");
    if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
      detail::raise<ValueError>(kFn, "argument 'nesterov' is true with momentum ", o.momentum,
                                " and dampening ", o.dampening,
                                ", expected momentum > 0 and dampening 0 (Nesterov momentum)");
    return o;
  }
  SGDOptions options_;
};

}  // namespace tessera::optim

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::optim::SGD)
