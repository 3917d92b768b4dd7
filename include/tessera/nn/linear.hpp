// tessera: nn::Linear, y = x W^T + b, as torch.nn.Linear (weight [out_features, in_features]).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::nn {

struct LinearOptions {
  Index in_features = 0;
  Index out_features = 0;
  bool bias = true;
  std::uint64_t seed = 0;  // initialisation: U(-1/sqrt(in), 1/sqrt(in)), PyTorch's bounds
};

template <class T>
class Linear : public Module<Linear<T>> {
 public:
  Parameter<T, 2> weight;  // [out_features, in_features]
  Parameter<T, 1> bias;    // [out_features], empty when options.bias is false

  Linear() = default;
  explicit Linear(const LinearOptions& o) : options_(o) {
    if (o.in_features < 0 || o.out_features < 0)
      detail::raise<ValueError>("tessera::nn::Linear", "in_features and out_features are ",
                                o.in_features, " and ", o.out_features, ", expected values >= 0");
    weight = Parameter<T, 2>(Shape<2>{o.out_features, o.in_features});
    const double bound =
        o.in_features > 0 ? 1.0 / std::sqrt(static_cast<double>(o.in_features)) : 0.0;
    if (bound > 0) weight.value.setRandom(o.seed, -bound, bound);
    if (o.bias) {
      bias = Parameter<T, 1>(Shape<1>{o.out_features});
      if (bound > 0) bias.value.setRandom(o.seed ^ 0x9e3779b97f4a7c15ull, -bound, bound);
    }
  }

  const LinearOptions& options() const noexcept { return options_; }
  Index in_features() const noexcept { return options_.in_features; }
  Index out_features() const noexcept { return options_.out_features; }

  // x: [..., in_features] -> [..., out_features]
  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::Linear: input scalar type differs from the module's");
    return linear(x, weight.value, bias_options());
  }
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out) const {
    linear_into(x, weight.value, std::forward<Y>(out), bias_options());
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    if (self.options_.bias) f(prefix + "bias", self.bias);
  }

 private:
  tessera::LinearOptions<T> bias_options() const {
    tessera::LinearOptions<T> lo;
    if (options_.bias) lo.bias = cview(bias.value);
    return lo;
  }
  LinearOptions options_{};
};

}  // namespace tessera::nn
