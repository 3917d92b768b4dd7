// tessera: AdamW, Adam with decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight
// Decay Regularization"), as PyTorch 1.13's torch.optim.AdamW (its single-tensor path,
// torch/optim/adamw.py `_single_tensor_adamw`). Per parameter p, at step t:
//
//   p = p * (1 - lr * weight_decay)        (the factor computed in double, then rounded to T)
//
// then the Adam update of adam.hpp without L2 term: moments, bias corrections
// step_size = lr / (1 - beta1^t) and sqrt(1 - beta2^t), AMSGrad, p += (-step_size * m) / denom.
// As in PyTorch 1.13 the decay multiplies even when weight_decay is 0 (by exactly 1).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "tessera/optim/adam.hpp"

namespace tessera::optim {

// AdamW's options: Adam's, with PyTorch's default weight_decay of 1e-2.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  bool maximize = false;
};

template <class T>
class AdamW : public Optimizer<T> {
 public:
  // Throws ValueError (naming "tessera::optim::AdamW", the option, expected and actual) for a
  // negative or non-finite lr, eps or weight_decay, a beta outside [0, 1), an empty parameter
  // list, a parameter given twice or two parameters of the same name.
  AdamW(std::vector<ParamGroup<T>> groups, const AdamWOptions& options = {})
      : Optimizer<T>(kFn, std::move(groups), checked(options).lr, options.weight_decay),
        options_(options) {}
  AdamW(std::vector<ParameterRef<T>> params, const AdamWOptions& options = {})
      : AdamW(Optimizer<T>::one_group(std::move(params), kFn), options) {}

  std::string_view name() const override { return "AdamW"; }
  const AdamWOptions& options_struct() const noexcept { return options_; }

  void step() override {
    const AdamOptions a = as_adam(options_);
    this->for_each_param_with_grad(
        "tessera::optim::AdamW::step", [&](auto& group, const ParameterRef<T>& p, auto& st) {
          const T decay = static_cast<T>(1.0 - group.lr * group.weight_decay);
          for (T& x : p.value()) x = x * decay;
          impl::adam_update(a, group, /*l2=*/0.0, p, st);
        });
  }

 protected:
  std::vector<std::pair<std::string, std::string>> options() const override {
    return impl::adam_option_strings(as_adam(options_));
  }
  std::vector<std::string> buffer_names() const override {
    return impl::adam_buffer_names(as_adam(options_));
  }

 private:
  static constexpr const char* kFn = "tessera::optim::AdamW";
  static AdamOptions as_adam(const AdamWOptions& o) {
    return {o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize};
  }
  static const AdamWOptions& checked(const AdamWOptions& o) {
    impl::check_adam_options(kFn, as_adam(o));
    return o;
  }
  AdamWOptions options_;
};

}  // namespace tessera::optim

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::optim::AdamW)
