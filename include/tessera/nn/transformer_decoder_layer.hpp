// tessera: nn::TransformerDecoderLayer, torch.nn.TransformerDecoderLayer with batch_first=True:
//
//   post-norm:  x = norm1(x + self_attn(x));  x = norm2(x + multihead_attn(x, memory));
//               x = norm3(x + ff(x))
//   pre-norm:   x = x + self_attn(norm1(x));  x = x + multihead_attn(norm2(x), memory);
//               x = x + ff(norm3(x))
//
// Parameters under PyTorch's names: self_attn.*, multihead_attn.*, linear1.*, linear2.*,
// norm1.*, norm2.*, norm3.*. For generation, `step` runs new target positions against a cache of
// the self-attention keys/values and of the projected memory, so token t costs O(t).
#pragma once

#include <optional>

#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/feed_forward.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "tessera/nn/transformer_encoder_layer.hpp"

namespace tessera::nn {

struct TransformerDecoderLayerForwardOptions {
  std::optional<Mask> tgt_mask;                 // [Lt, Lt] or [batch * nhead, Lt, Lt]
  std::optional<Mask> memory_mask;              // [Lt, Lm] or [batch * nhead, Lt, Lm]
  std::optional<Mask> tgt_key_padding_mask;     // [batch, Lt]
  std::optional<Mask> memory_key_padding_mask;  // [batch, Lm]
  bool tgt_is_causal = false;
  bool memory_is_causal = false;
};

// One decoder layer's state during generation.
template <class T>
struct DecoderLayerCache {
  KVCache<T> self_kv;    // keys/values of the target positions so far
  KVCache<T> memory_kv;  // the memory, projected once
  // When set, each step leaves its cross-attention weights (averaged over heads) here:
  // [batch, n, Lm] for the n positions of that step.
  bool record_cross_attention = false;
  Tensor<T, 3> cross_attention;
};

template <class T>
class TransformerDecoderLayer : public Module<TransformerDecoderLayer<T>> {
 public:
  MultiheadAttention<T> self_attn;
  MultiheadAttention<T> multihead_attn;
  FeedForward<T> ff;  // linear1, linear2
  LayerNorm<T> norm1, norm2, norm3;

  TransformerDecoderLayer() = default;
  explicit TransformerDecoderLayer(const TransformerLayerOptions& o) : options_(o) {
    check_transformer_layer_options("tessera::nn::TransformerDecoderLayer", o);
    self_attn = MultiheadAttention<T>(
        {.embed_dim = o.d_model, .num_heads = o.nhead, .bias = o.bias, .seed = o.seed});
    multihead_attn = MultiheadAttention<T>(
        {.embed_dim = o.d_model, .num_heads = o.nhead, .bias = o.bias, .seed = o.seed + 50});
    ff = FeedForward<T>({.d_model = o.d_model,
                         .dim_feedforward = o.dim_feedforward,
                         .activation = o.activation,
                         .bias = o.bias,
                         .seed = o.seed + 100});
    const LayerNormOptions ln{
        .normalized_shape = o.d_model, .eps = o.layer_norm_eps, .bias = o.bias};
    norm1 = LayerNorm<T>(ln);
    norm2 = LayerNorm<T>(ln);
    norm3 = LayerNorm<T>(ln);
  }

  const TransformerLayerOptions& options() const noexcept { return options_; }

  // tgt: [batch, Lt, d_model], memory: [batch, Lm, d_model] -> [batch, Lt, d_model]
  template <TensorLike X, TensorLike M>
  Tensor<T, 3> forward(const X& tgt, const M& memory,
                       const TransformerDecoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3 && rank_v<M> == 3,
                  "TransformerDecoderLayer takes [batch, L, d_model]");
    const MultiheadAttentionForwardOptions sa{.key_padding_mask = fo.tgt_key_padding_mask,
                                              .attn_mask = fo.tgt_mask,
                                              .is_causal = fo.tgt_is_causal};
    const MultiheadAttentionForwardOptions ca{.key_padding_mask = fo.memory_key_padding_mask,
                                              .attn_mask = fo.memory_mask,
                                              .is_causal = fo.memory_is_causal};
    Tensor<T, 3> x(cview(tgt));
    return run(
        x, [&](const auto& h) { return self_attn.forward(h, h, h, sa).output; },
        [&](const auto& h) { return multihead_attn.forward(h, memory, memory, ca).output; });
  }

  // Prepares the cache for generation against `memory` [batch, Lm, d_model].
  template <TensorLike M>
  DecoderLayerCache<T> make_cache(const M& memory) const {
    DecoderLayerCache<T> cache;
    multihead_attn.append_kv(cache.memory_kv, memory, memory);
    return cache;
  }

  // Runs new target positions tgt [batch, n, d_model] (usually n = 1), appending their keys and
  // values to `cache`; equal to the causal forward over all positions so far, restricted to the
  // new ones. memory_key_padding_mask: [batch, Lm].
  template <TensorLike X>
  Tensor<T, 3> step(const X& tgt, DecoderLayerCache<T>& cache,
                    const std::optional<Mask>& memory_key_padding_mask = std::nullopt) const {
    static_assert(rank_v<X> == 3, "TransformerDecoderLayer::step takes [batch, n, d_model]");
    Tensor<T, 3> x(cview(tgt));
    const MultiheadAttentionForwardOptions sa{.is_causal = true};
    const MultiheadAttentionForwardOptions ca{.key_padding_mask = memory_key_padding_mask,
                                              .need_weights = cache.record_cross_attention};
    return run(
        x,
        [&](const auto& h) {
          self_attn.append_kv(cache.self_kv, h, h);
          return self_attn.attend(h, cache.self_kv, sa).output;
        },
        [&](const auto& h) {
          auto r = multihead_attn.attend(h, cache.memory_kv, ca);
          if (r.attn_weights) cache.cross_attention = std::move(*r.attn_weights);
          return std::move(r.output);
        });
  }

  // Packs the attentions' and the feed-forward's weights for inference (nn::Linear::prepack).
  void prepack() {
    self_attn.prepack();
    multihead_attn.prepack();
    ff.prepack();
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    MultiheadAttention<T>::visit(self.self_attn, f, prefix + "self_attn.");
    MultiheadAttention<T>::visit(self.multihead_attn, f, prefix + "multihead_attn.");
    FeedForward<T>::visit(self.ff, f, prefix);
    LayerNorm<T>::visit(self.norm1, f, prefix + "norm1.");
    LayerNorm<T>::visit(self.norm2, f, prefix + "norm2.");
    LayerNorm<T>::visit(self.norm3, f, prefix + "norm3.");
  }

 private:
  // The three residual blocks around the given self- and cross-attention, in either norm order.
  template <class SelfAttn, class CrossAttn>
  Tensor<T, 3> run(Tensor<T, 3>& x, SelfAttn&& self_block, CrossAttn&& cross_block) const {
    if (options_.norm_first) {
      x.as_array() += self_block(norm1.forward(x)).as_array();
      x.as_array() += cross_block(norm2.forward(x)).as_array();
      x.as_array() += ff.forward(norm3.forward(x)).as_array();
    } else {
      x.as_array() += self_block(x).as_array();
      norm1.forward_into(x, x);
      x.as_array() += cross_block(x).as_array();
      norm2.forward_into(x, x);
      x.as_array() += ff.forward(x).as_array();
      norm3.forward_into(x, x);
    }
    return std::move(x);
  }

  TransformerLayerOptions options_{};
};

}  // namespace tessera::nn
