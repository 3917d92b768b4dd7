// tessera: nn::LayerNorm over the last dimension, as torch.nn.LayerNorm(normalized_shape=[n]).
#pragma once

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::nn {

struct LayerNormOptions {
  Index normalized_shape = 0;  // size of the last dimension
  double eps = 1e-5;
  bool elementwise_affine = true;  // learnable weight (initialised to 1)
  bool bias = true;                // learnable bias (initialised to 0); needs elementwise_affine
};

template <class T>
class LayerNorm : public Module<LayerNorm<T>> {
 public:
  Parameter<T, 1> weight;  // [n], empty without elementwise_affine
  Parameter<T, 1> bias;    // [n], empty without bias

  LayerNorm() = default;
  explicit LayerNorm(const LayerNormOptions& o) : options_(o) {
    if (o.normalized_shape < 0)
      detail::raise<ValueError>("tessera::nn::LayerNorm", "normalized_shape is ",
                                o.normalized_shape, ", expected a value >= 0");
    if (!(o.eps > 0))
      detail::raise<ValueError>("tessera::nn::LayerNorm", "eps is ", o.eps,
                                ", expected a value > 0");
    if (o.elementwise_affine) {
      weight = Parameter<T, 1>(Shape<1>{o.normalized_shape});
      weight.value.setConstant(1);
      if (o.bias) bias = Parameter<T, 1>(Shape<1>{o.normalized_shape});
    }
  }

  const LayerNormOptions& options() const noexcept { return options_; }

  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x) const {
    Tensor<T, rank_v<X>> out(x.shape(), uninitialized);
    forward_into(x, out);
    return out;
  }
  // out may be x.
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::LayerNorm: input scalar type differs from the module's");
    if (rank_v<X> >= 1 && x.shape()[rank_v<X> - 1] != options_.normalized_shape)
      detail::raise<ShapeError>("tessera::nn::LayerNorm::forward", "argument 'x' has shape ",
                                detail::shape_string(x.shape()), ", expected a last dimension of ",
                                options_.normalized_shape);
    tessera::LayerNormOptions<T> lo{.eps = options_.eps};
    if (has_weight()) lo.weight = cview(weight.value);
    if (has_bias()) lo.bias = cview(bias.value);
    layer_norm_into(x, std::forward<Y>(out), lo);
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    if (self.has_weight()) f(prefix + "weight", self.weight);
    if (self.has_bias()) f(prefix + "bias", self.bias);
  }

 private:
  bool has_weight() const noexcept { return options_.elementwise_affine; }
  bool has_bias() const noexcept { return options_.elementwise_affine && options_.bias; }
  LayerNormOptions options_{};
};

}  // namespace tessera::nn
