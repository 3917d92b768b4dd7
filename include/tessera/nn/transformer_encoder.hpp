// tessera: nn::TransformerEncoder, a stack of TransformerEncoderLayer with an optional final
// LayerNorm, as torch.nn.TransformerEncoder (parameters layers.<i>.*, norm.*). A layer may write
// over its own input, so the stack runs every layer in place in the output it returns: no buffer
// per layer, and the layers' intermediates come from the thread's scratch arena.
#pragma once

#include <vector>

#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/transformer_encoder_layer.hpp"

namespace tessera::nn {

struct TransformerEncoderOptions {
  TransformerLayerOptions layer;
  Index num_layers = 1;
  bool final_norm = false;  // PyTorch's norm=LayerNorm(d_model)
};

template <class T>
class TransformerEncoder : public Module<TransformerEncoder<T>> {
 public:
  std::vector<TransformerEncoderLayer<T>> layers;
  LayerNorm<T> norm;  // used when options.final_norm

  TransformerEncoder() = default;
  explicit TransformerEncoder(const TransformerEncoderOptions& o) : options_(o) {
    if (o.num_layers < 1)
      detail::raise<ValueError>("tessera::nn::TransformerEncoder", "num_layers is ", o.num_layers,
                                ", expected a value >= 1");
    for (Index i = 0; i < o.num_layers; ++i) {
      TransformerLayerOptions lo = o.layer;
      lo.seed = o.layer.seed + 1000 * static_cast<std::uint64_t>(i);
      layers.emplace_back(lo);
    }
    if (o.final_norm)
      norm = LayerNorm<T>({.normalized_shape = o.layer.d_model,
                           .eps = o.layer.layer_norm_eps,
                           .bias = o.layer.bias});
  }

  const TransformerEncoderOptions& options() const noexcept { return options_; }

  // src: [batch, L, d_model] -> [batch, L, d_model]
  template <TensorLike X>
  Tensor<T, 3> forward(const X& src, const TransformerEncoderLayerForwardOptions& fo = {}) const {
    return transformer_output<T>(src, [&](TensorMap<T, 3> out) { forward_into(src, out, fo); });
  }
  // The same into `out` (src's shape); out may be src.
  template <TensorLike X>
  void forward_into(const X& src, TensorMap<T, 3> out,
                    const TransformerEncoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3, "TransformerEncoder takes [batch, L, d_model]");
    check_transformer_out("tessera::nn::TransformerEncoder::forward_into", out, cview(src));
    layers.front().forward_into(src, out, fo);
    for (std::size_t i = 1; i < layers.size(); ++i) layers[i].forward_into(out, out, fo);
    if (options_.final_norm) norm.forward_into(out, out);
  }

  // Packs every layer's weights for inference (nn::Linear::prepack).
  void prepack() {
    for (auto& l : layers) l.prepack();
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    for (std::size_t i = 0; i < self.layers.size(); ++i)
      TransformerEncoderLayer<T>::visit(self.layers[i], f,
                                        prefix + "layers." + std::to_string(i) + ".");
    if (self.options_.final_norm) LayerNorm<T>::visit(self.norm, f, prefix + "norm.");
  }

 private:
  TransformerEncoderOptions options_{};
};

}  // namespace tessera::nn
