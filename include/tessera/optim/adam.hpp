// tessera: Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization"), with L2 weight
// decay added to the gradient and the AMSGrad variant (Reddi et al. 2018), as PyTorch 1.13's
// torch.optim.Adam (its single-tensor path, torch/optim/adam.py `_single_tensor_adam`). Per
// parameter p with gradient g, at step t = 1, 2, ...:
//
//   g = maximize ? -g : g
//   if weight_decay != 0:  g = g + weight_decay * p
//   m = beta1 * m + (1 - beta1) * g                (exp_avg)
//   v = beta2 * v + (1 - beta2) * g * g            (exp_avg_sq)
//   step_size = lr / (1 - beta1^t)                 (double, as PyTorch's Python floats)
//   amsgrad:  vmax = max(vmax, v), and vmax replaces v below (max_exp_avg_sq)
//   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//   p = p + (-step_size * m) / denom               (addcdiv_: value * t1 / t2)
//
// Everything per element is computed in T in PyTorch's order; the double hyper-parameters are
// rounded to T as PyTorch rounds Python scalars.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "tessera/optim/optimizer.hpp"

namespace tessera::optim {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
  bool maximize = false;
};

namespace impl {

inline void check_adam_options(std::string_view fn, const AdamOptions& o) {
  check_lr_like(fn, "lr", o.lr);
  check_lr_like(fn, "eps", o.eps);
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0))
    detail::raise<ValueError>(fn, "argument 'beta1' (betas[0]) is ", o.beta1,
                              ", expected a value in [0, 1)");
  if (!(o.beta2 >= 0.0 && o.beta2 < 1.0))
    detail::raise<ValueError>(fn, "argument 'beta2' (betas[1]) is ", o.beta2,
                              ", expected a value in [0, 1)");
  check_lr_like(fn, "weight_decay", o.weight_decay);
}

inline std::vector<std::pair<std::string, std::string>> adam_option_strings(const AdamOptions& o) {
  return {{"beta1", format_double(o.beta1)},
          {"beta2", format_double(o.beta2)},
          {"eps", format_double(o.eps)},
          {"amsgrad", o.amsgrad ? "true" : "false"},
          {"maximize", o.maximize ? "true" : "false"}};
}

inline std::vector<std::string> adam_buffer_names(const AdamOptions& o) {
  if (o.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

// One Adam/AdamW update of one parameter (the part after AdamW's decoupled decay). `l2` is the
// weight decay added to the gradient (Adam), 0 for AdamW.
template <class T, class Group>
void adam_update(const AdamOptions& o, const Group& group, double l2, const ParameterRef<T>& p,
                 ParamState<T>& st) {
  const std::span<T> value = p.value(), grad = p.grad();
  const std::size_t n = value.size();
  auto& exp_avg = st.buffer("exp_avg", n);
  auto& exp_avg_sq = st.buffer("exp_avg_sq", n);
  std::vector<T>* max_sq = o.amsgrad ? &st.buffer("max_exp_avg_sq", n) : nullptr;
  ++st.step;
  const double t = static_cast<double>(st.step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  const double step_size = group.lr / bias_correction1;
  const T neg_step_size = static_cast<T>(-step_size);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  const T beta1 = static_cast<T>(o.beta1), one_minus_beta1 = static_cast<T>(1.0 - o.beta1);
  const T beta2 = static_cast<T>(o.beta2), one_minus_beta2 = static_cast<T>(1.0 - o.beta2);
  const T eps = static_cast<T>(o.eps), wd = static_cast<T>(l2);
  for (std::size_t j = 0; j < n; ++j) {
    T g = o.maximize ? -grad[j] : grad[j];
    if (l2 != 0) g = g + wd * value[j];
    T& m = exp_avg[j];
    T& v = exp_avg_sq[j];
    m = m * beta1;
    m = m + one_minus_beta1 * g;
    v = v * beta2;
    v = v + one_minus_beta2 * g * g;
    T second = v;
    if (max_sq) second = (*max_sq)[j] = nan_max((*max_sq)[j], v);
    const T denom = std::sqrt(second) / bc2_sqrt + eps;
    value[j] = value[j] + neg_step_size * m / denom;
  }
}

}  // namespace impl

template <class T>
class Adam : public Optimizer<T> {
 public:
  // Throws ValueError (naming "tessera::optim::Adam", the option, expected and actual) for a
  // negative or non-finite lr, eps or weight_decay, a beta outside [0, 1), an empty parameter
  // list, a parameter given twice or two parameters of the same name.
  Adam(std::vector<ParamGroup<T>> groups, const AdamOptions& options = {})
      : Optimizer<T>(kFn, std::move(groups), checked(options).lr, options.weight_decay),
        options_(options) {}
  Adam(std::vector<ParameterRef<T>> params, const AdamOptions& options = {})
      : Adam(Optimizer<T>::one_group(std::move(params), kFn), options) {}

  std::string_view name() const override { return "Adam"; }
  const AdamOptions& options_struct() const noexcept { return options_; }

  void step() override {
    this->for_each_param_with_grad("tessera::optim::Adam::step",
                                   [&](auto& group, const ParameterRef<T>& p, auto& st) {
                                     impl::adam_update(options_, group, group.weight_decay, p, st);
                                   });
  }

 protected:
  std::vector<std::pair<std::string, std::string>> options() const override {
    return impl::adam_option_strings(options_);
  }
  std::vector<std::string> buffer_names() const override {
    return impl::adam_buffer_names(options_);
  }

 private:
  static constexpr const char* kFn = "tessera::optim::Adam";
  static const AdamOptions& checked(const AdamOptions& o) {
    impl::check_adam_options(kFn, o);
    return o;
  }
  AdamOptions options_;
};

}  // namespace tessera::optim

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::optim::Adam)
