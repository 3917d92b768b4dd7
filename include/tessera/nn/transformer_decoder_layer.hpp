// tessera: nn::TransformerDecoderLayer, torch.nn.TransformerDecoderLayer with batch_first=True:
//
//   post-norm:  x = norm1(x + self_attn(x));  x = norm2(x + multihead_attn(x, memory));
//               x = norm3(x + ff(x))
//   pre-norm:   x = x + self_attn(norm1(x));  x = x + multihead_attn(norm2(x), memory);
//               x = x + ff(norm3(x))
//
// Parameters under PyTorch's names: self_attn.*, multihead_attn.*, linear1.*, linear2.*,
// norm1.*, norm2.*, norm3.*. For generation, `step` runs new target positions against a cache of
// the self-attention keys/values and of the projected memory, so token t costs O(t). As in the
// encoder layer, each skip connection is fused into the product that ends its block, and the
// intermediates live in the calling thread's scratch arena (core/scratch.hpp).
#pragma once

#include <optional>
#include <string_view>

#include "tessera/core/mask.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/feed_forward.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "tessera/nn/training.hpp"
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

// The gradients a decoder layer's backward returns.
template <class T>
struct TransformerDecoderGrads {
  Tensor<T, 3> tgt;     // [batch, Lt, d_model]
  Tensor<T, 3> memory;  // [batch, Lm, d_model]
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
    check_call("tessera::nn::TransformerDecoderLayer::forward", cview(tgt), cview(memory), fo);
    return transformer_output<T>(
        tgt, [&](TensorMap<T, 3> out) { run_forward(cview(tgt), cview(memory), out, fo); });
  }
  // The same into `out` (tgt's shape). out may be tgt or memory, or overlap them: both are read
  // only before out is first written.
  template <TensorLike X, TensorLike M>
  void forward_into(const X& tgt, const M& memory, TensorMap<T, 3> out,
                    const TransformerDecoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3 && rank_v<M> == 3,
                  "TransformerDecoderLayer takes [batch, L, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerDecoderLayer::forward_into";
    check_call(fn, cview(tgt), cview(memory), fo);
    check_transformer_out(fn, out, cview(tgt));
    run_forward(cview(tgt), cview(memory), out, fo);
  }

  // What backward needs: the contexts of both attentions, the feed-forward block and the norms.
  struct Context {
    typename MultiheadAttention<T>::Context self_attn, multihead_attn;
    typename FeedForward<T>::Context ff;
    typename LayerNorm<T>::template Context<3> norm1, norm2, norm3;
    bool norm_first = false;
  };

  // The training forward: the layer's output (as forward computes it, up to rounding) and the
  // context for backward.
  template <TensorLike X, TensorLike M>
  Trained<Tensor<T, 3>, Context> forward_train(
      const X& tgt, const M& memory, const TransformerDecoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3 && rank_v<M> == 3,
                  "TransformerDecoderLayer takes [batch, L, d_model]");
    return forward_train_views(cview(tgt), cview(memory), fo);
  }

  // Given forward_train's context and dL/dy [batch, Lt, d_model]: adds every parameter's
  // gradient and returns dL/dtgt and dL/dmemory.
  template <TensorLike G>
  TransformerDecoderGrads<T> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "TransformerDecoderLayer::backward takes a [batch, Lt, d_model] gradient");
    return backward_views(ctx, cview(grad_output));
  }

  // Prepares the cache for generation against `memory` [batch, Lm, d_model].
  template <TensorLike M>
  DecoderLayerCache<T> make_cache(const M& memory) const {
    static_assert(rank_v<M> == 3, "TransformerDecoderLayer::make_cache takes [batch, Lm, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerDecoderLayer::make_cache";
    multihead_attn.check_parameters(fn, "multihead_attn.");
    check_transformer_input<T>(fn, "memory", cview(memory), options_.d_model);
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
    check_step("tessera::nn::TransformerDecoderLayer::step", cview(tgt), cache,
               memory_key_padding_mask);
    return transformer_output<T>(tgt, [&](TensorMap<T, 3> out) {
      run_step(cview(tgt), cache, out, memory_key_padding_mask);
    });
  }
  // The same into `out` (tgt's shape); out may be tgt, as in forward_into.
  template <TensorLike X>
  void step_into(const X& tgt, DecoderLayerCache<T>& cache, TensorMap<T, 3> out,
                 const std::optional<Mask>& memory_key_padding_mask = std::nullopt) const {
    static_assert(rank_v<X> == 3, "TransformerDecoderLayer::step takes [batch, n, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerDecoderLayer::step_into";
    check_step(fn, cview(tgt), cache, memory_key_padding_mask);
    check_transformer_out(fn, out, cview(tgt));
    run_step(cview(tgt), cache, out, memory_key_padding_mask);
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name
  // (self_attn.*, multihead_attn.*, linear1.*, linear2.*, norm1.* to norm3.*), unless every
  // parameter has the shape the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    self_attn.check_parameters(fn, detail::ParameterPrefix(prefix, "self_attn."));
    multihead_attn.check_parameters(fn, detail::ParameterPrefix(prefix, "multihead_attn."));
    ff.check_parameters(fn, prefix);
    norm1.check_parameters(fn, detail::ParameterPrefix(prefix, "norm1."));
    norm2.check_parameters(fn, detail::ParameterPrefix(prefix, "norm2."));
    norm3.check_parameters(fn, detail::ParameterPrefix(prefix, "norm3."));
  }
  // The checks of forward and forward_into but the output's: the parameters, tgt
  // [batch, Lt, d_model], memory [batch, Lm, d_model] and the masks.
  void check_call(std::string_view fn, const TensorMap<const T, 3>& tgt,
                  const TensorMap<const T, 3>& memory,
                  const TransformerDecoderLayerForwardOptions& fo,
                  std::string_view prefix = "") const {
    check_parameters(fn, prefix);
    check_transformer_input<T>(fn, "tgt", tgt, options_.d_model);
    const Index B = tgt.dim(0), Lt = tgt.dim(1), H = options_.nhead;
    check_transformer_input<T>(fn, "memory", memory, options_.d_model, B);
    const Index Lm = memory.dim(1);
    check_transformer_attn_mask(fn, "tgt_mask", fo.tgt_mask, B, H, Lt, Lt);
    check_transformer_attn_mask(fn, "memory_mask", fo.memory_mask, B, H, Lt, Lm);
    check_transformer_padding_mask(fn, "tgt_key_padding_mask", fo.tgt_key_padding_mask, B, Lt);
    check_transformer_padding_mask(fn, "memory_key_padding_mask", fo.memory_key_padding_mask, B,
                                   Lm);
  }
  // The checks of step and step_into but the output's: the parameters, tgt [batch, n, d_model]
  // and the padding mask against the cached memory ([batch, Lm]).
  void check_step(std::string_view fn, const TensorMap<const T, 3>& tgt,
                  const DecoderLayerCache<T>& cache,
                  const std::optional<Mask>& memory_key_padding_mask, std::string_view prefix = "",
                  std::string_view cache_arg = "cache") const {
    check_parameters(fn, prefix);
    check_transformer_input<T>(fn, "tgt", tgt, options_.d_model);
    self_attn.check_cache(fn, cache.self_kv, cache_arg, ".self_kv");
    multihead_attn.check_cache(fn, cache.memory_kv, cache_arg, ".memory_kv");
    const Index B = tgt.dim(0);
    for (const auto* kv : {&cache.memory_kv, &cache.self_kv})
      if ((kv == &cache.memory_kv || kv->length > 0) && kv->k.dim(0) != B)
        detail::raise<ShapeError>(fn, "argument '", cache_arg, "' holds ",
                                  kv == &cache.memory_kv ? "a memory" : "keys", " of batch ",
                                  kv->k.dim(0), ", argument 'tgt' has shape ",
                                  detail::shape_string(tgt.shape()), " (batch ", B, ")");
    check_transformer_padding_mask(fn, "memory_key_padding_mask", memory_key_padding_mask,
                                   tgt.dim(0), cache.memory_kv.length);
  }

  // Packs the attentions' and the feed-forward's weights for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::nn::TransformerDecoderLayer::prepack");
    self_attn.prepack(AttentionUse::self);
    multihead_attn.prepack(AttentionUse::cross);
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
  // The entry points that take any TensorLike run these on views: members that are not
  // templates, instantiated once per T (in tessera::compiled's library in the compiled mode).
  TransformerDecoderGrads<T> backward_views(const Context& ctx, TensorMap<const T, 3> grad_output);
  Trained<Tensor<T, 3>, Context> forward_train_views(
      TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory,
      const TransformerDecoderLayerForwardOptions& fo) const;
  void run_forward(TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory, TensorMap<T, 3> out,
                   const TransformerDecoderLayerForwardOptions& fo) const;
  void run_step(TensorMap<const T, 3> tgt, DecoderLayerCache<T>& cache, TensorMap<T, 3> out,
                const std::optional<Mask>& memory_key_padding_mask) const;

  // The three residual blocks around the given self- and cross-attention, in either norm order,
  // from tgt into out. block(h, dst, residual) writes attention(h) + residual into dst. tgt (and
  // whatever the blocks read) is read only before out is written, by the feed-forward block.
  template <class SelfAttn, class CrossAttn>
  void run(TensorMap<const T, 3> tgt, TensorMap<T, 3> out, SelfAttn&& self_block,
           CrossAttn&& cross_block) const {
    // x, y: the self- and cross-attention blocks' outputs [batch, L, d_model], in scratch.
    detail::ScratchFrame frame;
    const auto x = frame.tensor<T, 3>(tgt.shape());
    const auto y = frame.tensor<T, 3>(tgt.shape());
    if (options_.norm_first) {
      const auto h = frame.tensor<T, 3>(tgt.shape());  // each block's normalised input
      norm1.forward_into(tgt, h);
      self_block(cview(h), x, transformer_rows(tgt));
      norm2.forward_into(x, h);
      cross_block(cview(h), y, transformer_rows(x));
      norm3.forward_into(y, h);
      ff.forward_into(h, out, transformer_rows(y));
      return;
    }
    self_block(tgt, x, transformer_rows(tgt));
    norm1.forward_into(x, x);
    cross_block(cview(x), y, transformer_rows(x));
    norm2.forward_into(y, y);
    ff.forward_into(y, out, transformer_rows(y));
    norm3.forward_into(out, out);
  }

  TransformerLayerOptions options_{};
};

template <class T>
TransformerDecoderGrads<T> TransformerDecoderLayer<T>::backward_views(
    const Context& ctx, TensorMap<const T, 3> grad_output) {
  constexpr std::string_view fn = "tessera::nn::TransformerDecoderLayer::backward";
  check_parameters(fn);
  if (ctx.norm_first != options_.norm_first || ctx.norm1.input.dim(2) != options_.d_model)
    detail::raise<ValueError>(fn, "argument 'ctx' does not come from this module's forward_train");
  detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), ctx.norm1.input.shape());
  Tensor<T, 3> dy(cview(grad_output).shape(), uninitialized);
  std::copy_n(cview(grad_output).data(), dy.size(), dy.data());
  TransformerDecoderGrads<T> g;
  // The cross-attention's gradient: into its query's path, and into memory (key + value).
  const auto cross = [&](const Tensor<T, 3>& d) {
    auto ca = multihead_attn.backward(ctx.multihead_attn, d);
    g.memory = std::move(ca.key);
    detail::add_into(g.memory, ca.value);
    return std::move(ca.query);
  };
  if (options_.norm_first) {
    detail::add_into(dy, norm3.backward(ctx.norm3, ff.backward(ctx.ff, dy)));  // dx2
    detail::add_into(dy, norm2.backward(ctx.norm2, cross(dy)));                // dx1
    detail::add_into(dy, norm1.backward(ctx.norm1, detail::self_attention_grad(
                                                       self_attn.backward(ctx.self_attn, dy))));
    g.tgt = std::move(dy);
    return g;
  }
  Tensor<T, 3> dz = norm3.backward(ctx.norm3, dy);  // d(x2 + ff(x2))
  detail::add_into(dz, ff.backward(ctx.ff, dz));    // dx2
  Tensor<T, 3> dw = norm2.backward(ctx.norm2, dz);  // d(x1 + ca(x1))
  detail::add_into(dw, cross(dw));                  // dx1
  Tensor<T, 3> dx = norm1.backward(ctx.norm1, dw);  // d(x + sa(x))
  detail::add_into(dx, detail::self_attention_grad(self_attn.backward(ctx.self_attn, dx)));
  g.tgt = std::move(dx);
  return g;
}

template <class T>
Trained<Tensor<T, 3>, typename TransformerDecoderLayer<T>::Context>
TransformerDecoderLayer<T>::forward_train_views(
    TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory,
    const TransformerDecoderLayerForwardOptions& fo) const {
  check_call("tessera::nn::TransformerDecoderLayer::forward_train", cview(tgt), cview(memory), fo);
  const MultiheadAttentionForwardOptions sa{.key_padding_mask = fo.tgt_key_padding_mask,
                                            .attn_mask = fo.tgt_mask,
                                            .is_causal = fo.tgt_is_causal};
  const MultiheadAttentionForwardOptions ca{.key_padding_mask = fo.memory_key_padding_mask,
                                            .attn_mask = fo.memory_mask,
                                            .is_causal = fo.memory_is_causal};
  const auto mv = cview(memory);
  Trained<Tensor<T, 3>, Context> r;
  Context& c = r.context;
  c.norm_first = options_.norm_first;
  Tensor<T, 3> x(cview(tgt).shape(), uninitialized);
  std::copy_n(cview(tgt).data(), x.size(), x.data());
  if (options_.norm_first) {
    // x1 = x + sa(n1(x)); x2 = x1 + ca(n2(x1), m); y = x2 + ff(n3(x2))
    auto h1 = norm1.forward_train(x);
    auto a = self_attn.forward_train(h1.output, h1.output, h1.output, sa);
    detail::add_into(a.output, x);
    auto h2 = norm2.forward_train(a.output);
    auto b = multihead_attn.forward_train(h2.output, mv, mv, ca);
    detail::add_into(b.output, a.output);
    auto h3 = norm3.forward_train(b.output);
    auto f = ff.forward_train(h3.output);
    detail::add_into(f.output, b.output);
    r.output = std::move(f.output);
    c.norm1 = std::move(h1.context), c.self_attn = std::move(a.context);
    c.norm2 = std::move(h2.context), c.multihead_attn = std::move(b.context);
    c.norm3 = std::move(h3.context), c.ff = std::move(f.context);
    return r;
  }
  // x1 = n1(x + sa(x)); x2 = n2(x1 + ca(x1, m)); y = n3(x2 + ff(x2))
  auto a = self_attn.forward_train(x, x, x, sa);
  detail::add_into(a.output, x);
  auto x1 = norm1.forward_train(a.output);
  auto b = multihead_attn.forward_train(x1.output, mv, mv, ca);
  detail::add_into(b.output, x1.output);
  auto x2 = norm2.forward_train(b.output);
  auto f = ff.forward_train(x2.output);
  detail::add_into(f.output, x2.output);
  auto y = norm3.forward_train(f.output);
  r.output = std::move(y.output);
  c.self_attn = std::move(a.context), c.norm1 = std::move(x1.context);
  c.multihead_attn = std::move(b.context), c.norm2 = std::move(x2.context);
  c.ff = std::move(f.context), c.norm3 = std::move(y.context);
  return r;
}

template <class T>
void TransformerDecoderLayer<T>::run_step(
    TensorMap<const T, 3> tgt, DecoderLayerCache<T>& cache, TensorMap<T, 3> out,
    const std::optional<Mask>& memory_key_padding_mask) const {
  const MultiheadAttentionForwardOptions sa{.is_causal = true};
  const MultiheadAttentionForwardOptions ca{.key_padding_mask = memory_key_padding_mask,
                                            .need_weights = cache.record_cross_attention};
  run(
      cview(tgt), out,
      [&](const auto& h, const auto& dst, const auto& residual) {
        self_attn.append_kv(cache.self_kv, h, h);
        self_attn.attend_into(h, cache.self_kv, dst, sa, residual);
      },
      [&](const auto& h, const auto& dst, const auto& residual) {
        auto w = multihead_attn.attend_into(h, cache.memory_kv, dst, ca, residual);
        if (w.attn_weights) cache.cross_attention = std::move(*w.attn_weights);
      });
}

template <class T>
void TransformerDecoderLayer<T>::run_forward(
    TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory, TensorMap<T, 3> out,
    const TransformerDecoderLayerForwardOptions& fo) const {
  const MultiheadAttentionForwardOptions sa{.key_padding_mask = fo.tgt_key_padding_mask,
                                            .attn_mask = fo.tgt_mask,
                                            .is_causal = fo.tgt_is_causal};
  const MultiheadAttentionForwardOptions ca{.key_padding_mask = fo.memory_key_padding_mask,
                                            .attn_mask = fo.memory_mask,
                                            .is_causal = fo.memory_is_causal};
  run(
      cview(tgt), out,
      [&](const auto& h, const auto& dst, const auto& residual) {
        self_attn.forward_into(h, h, h, dst, sa, residual);
      },
      [&](const auto& h, const auto& dst, const auto& residual) {
        multihead_attn.forward_into(h, memory, memory, dst, ca, residual);
      });
}

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::TransformerDecoderLayer)
