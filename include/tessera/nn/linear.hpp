// tessera: nn::Linear, y = x W^T + b, as torch.nn.Linear (weight [out_features, in_features]).
//
// For inference, prepack() copies the weight once into the GEMM's packed layout, and every later
// forward reads that copy instead of re-packing the weight. The packed copy does not follow later
// writes to `weight`: call prepack() again after changing it (or unprepack() to drop the copy).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
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
    return forward(x, Activation::identity);
  }
  // act(x W^T + b) (+ residual, [rows, out_features]), the activation and the addition applied to
  // each output tile inside the product.
  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x, Activation act,
                               std::optional<TensorMap<const T, 2>> residual = {}) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::Linear: input scalar type differs from the module's");
    Shape<rank_v<X>> s = x.shape();
    s[rank_v<X> - 1] = options_.out_features;
    Tensor<T, rank_v<X>> out(s, uninitialized);
    forward_into(x, out, act, residual);
    return out;
  }
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out, Activation act = Activation::identity,
                    std::optional<TensorMap<const T, 2>> residual = {}) const {
    auto lo = bias_options();
    lo.activation = act;
    lo.residual = residual;
    if (packed_ && packed_->rows() == weight.value.dim(1) && packed_->cols() == weight.value.dim(0))
      linear_into(x, *packed_, std::forward<Y>(out), lo);
    else
      linear_into(x, weight.value, std::forward<Y>(out), lo);
  }

  // Packs the weight for inference (see the top of this file); unprepack() drops the packed copy.
  void prepack() {
    packed_ = std::make_shared<const PackedMatrix<T>>(PackedMatrix<T>::from_weight(weight.value));
  }
  void unprepack() noexcept { packed_.reset(); }
  bool is_prepacked() const noexcept { return packed_ != nullptr; }

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
  std::shared_ptr<const PackedMatrix<T>> packed_;
};

}  // namespace tessera::nn
