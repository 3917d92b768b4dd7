// tessera: nn::TransformerDecoder, a stack of TransformerDecoderLayer with an optional final
// LayerNorm, as torch.nn.TransformerDecoder (parameters layers.<i>.*, norm.*), plus cached
// incremental decoding for generation. A layer may write over its own input, so the stack runs
// every layer in place in the output it returns: no buffer per layer, and the layers'
// intermediates come from the thread's scratch arena.
#pragma once

#include <cstddef>
#include <cstdio>
#include <limits>
#include <string_view>
#include <vector>

#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/transformer_decoder_layer.hpp"

namespace tessera::nn {

struct TransformerDecoderOptions {
  TransformerLayerOptions layer;
  Index num_layers = 1;
  bool final_norm = false;
};

// Generation state of a whole decoder: one cache per layer, and the memory padding mask.
template <class T>
struct DecoderCache {
  std::vector<DecoderLayerCache<T>> layers;
  std::optional<Mask> memory_key_padding_mask;
  Index length() const noexcept { return layers.empty() ? 0 : layers.front().self_kv.length; }
  // Makes every step record each layer's cross-attention weights (layers[i].cross_attention).
  void record_cross_attention(bool on = true) {
    for (auto& l : layers) l.record_cross_attention = on;
  }
};

template <class T>
class TransformerDecoder : public Module<TransformerDecoder<T>> {
 public:
  std::vector<TransformerDecoderLayer<T>> layers;
  LayerNorm<T> norm;  // used when options.final_norm

  TransformerDecoder() = default;
  explicit TransformerDecoder(const TransformerDecoderOptions& o) : options_(o) {
    if (o.num_layers < 1)
      detail::raise<ValueError>("tessera::nn::TransformerDecoder", "num_layers is ", o.num_layers,
                                ", expected a value >= 1");
    // The layer options, reported under the stack's name rather than the layer's.
    check_transformer_layer_options("tessera::nn::TransformerDecoder", o.layer);
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

  const TransformerDecoderOptions& options() const noexcept { return options_; }

  // tgt: [batch, Lt, d_model], memory: [batch, Lm, d_model] -> [batch, Lt, d_model]
  template <TensorLike X, TensorLike M>
  Tensor<T, 3> forward(const X& tgt, const M& memory,
                       const TransformerDecoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3 && rank_v<M> == 3, "TransformerDecoder takes [batch, L, d_model]");
    check_call("tessera::nn::TransformerDecoder::forward", cview(tgt), cview(memory), fo);
    return transformer_output<T>(
        tgt, [&](TensorMap<T, 3> out) { run_forward(cview(tgt), cview(memory), out, fo); });
  }
  // The same into `out` (tgt's shape). out may be tgt; it must not overlap memory, which every
  // layer reads after the one before it wrote out.
  template <TensorLike X, TensorLike M>
  void forward_into(const X& tgt, const M& memory, TensorMap<T, 3> out,
                    const TransformerDecoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3 && rank_v<M> == 3, "TransformerDecoder takes [batch, L, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerDecoder::forward_into";
    check_call(fn, cview(tgt), cview(memory), fo);
    check_transformer_out(fn, out, cview(tgt));
    const auto mv = cview(memory);
    if (detail::ranges_overlap(out.data(), static_cast<std::size_t>(out.size()) * sizeof(T),
                               mv.data(), static_cast<std::size_t>(mv.size()) * sizeof(T)))
      detail::raise<ValueError>(fn, "argument 'out' overlaps argument 'memory', which every layer ",
                                "reads after the one before it wrote out");
    run_forward(cview(tgt), cview(memory), out, fo);
  }

  // Starts generation against `memory` [batch, Lm, d_model]: projects it once per layer. The
  // padding mask ([batch, Lm]) is a view: its tensor must outlive the cache.
  template <TensorLike M>
  DecoderCache<T> make_cache(
      const M& memory, const std::optional<Mask>& memory_key_padding_mask = std::nullopt) const {
    static_assert(rank_v<M> == 3, "TransformerDecoder::make_cache takes [batch, Lm, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerDecoder::make_cache";
    check_parameters(fn);
    const auto mv = cview(memory);
    check_transformer_input<T>(fn, "memory", mv, options_.layer.d_model);
    check_transformer_padding_mask(fn, "memory_key_padding_mask", memory_key_padding_mask,
                                   mv.dim(0), mv.dim(1));
    DecoderCache<T> cache;
    cache.memory_key_padding_mask = memory_key_padding_mask;
    for (const auto& layer : layers) cache.layers.push_back(layer.make_cache(memory));
    return cache;
  }

  // Runs the next target positions tgt [batch, n, d_model] through every layer, appending to the
  // cache; returns their outputs [batch, n, d_model]. Equal to the causal forward over all
  // positions so far, restricted to the new ones.
  template <TensorLike X>
  Tensor<T, 3> step(const X& tgt, DecoderCache<T>& cache) const {
    static_assert(rank_v<X> == 3, "TransformerDecoder::step takes [batch, n, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerDecoder::step";
    check_layers(fn, "");
    if (cache.layers.size() != layers.size())
      detail::raise<ValueError>(fn, "the cache has ", cache.layers.size(), " layers, the decoder ",
                                layers.size(), " (make it with make_cache)");
    for (std::size_t i = 0; i < layers.size(); ++i) {
      char cache_arg[48];  // how the user writes this layer's cache
      std::snprintf(cache_arg, sizeof cache_arg, "cache.layers[%zu]", i);
      layers[i].check_step(fn, cview(tgt), cache.layers[i], cache.memory_key_padding_mask,
                           detail::ParameterPrefix("", "layers.", i), cache_arg);
      // Every layer's caches advance together: a layer that holds another number of target or
      // memory positions than the first would attend over other positions.
      const auto& first = cache.layers.front();
      if (cache.layers[i].self_kv.length != first.self_kv.length ||
          cache.layers[i].memory_kv.length != first.memory_kv.length)
        detail::raise<ValueError>(
            fn, "argument 'cache' holds ", cache.layers[i].self_kv.length, " target and ",
            cache.layers[i].memory_kv.length, " memory positions in layer ", i, " but ",
            first.self_kv.length, " and ", first.memory_kv.length,
            " in layer 0: the layers' caches must advance together (make it with make_cache)");
    }
    if (options_.final_norm) norm.check_parameters(fn, "norm.");
    return transformer_output<T>(tgt, [&](TensorMap<T, 3> out) {
      layers.front().step_into(tgt, cache.layers.front(), out, cache.memory_key_padding_mask);
      for (std::size_t i = 1; i < layers.size(); ++i)
        layers[i].step_into(out, cache.layers[i], out, cache.memory_key_padding_mask);
      if (options_.final_norm) norm.forward_into(out, out);
    });
  }

  // Throws, naming `fn`, unless `layers` holds num_layers layers of the configured d_model and
  // nhead (ValueError) and every parameter has the shape the options give (ShapeError, the
  // parameter named as `prefix` + its state-dict name: layers.<i>.*, norm.*).
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    check_layers(fn, prefix);
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].check_parameters(fn, detail::ParameterPrefix(prefix, "layers.", i));
    if (options_.final_norm) norm.check_parameters(fn, detail::ParameterPrefix(prefix, "norm."));
  }
  // What backward needs: each layer's context and the final norm's.
  struct Context {
    std::vector<typename TransformerDecoderLayer<T>::Context> layers;
    typename LayerNorm<T>::template Context<3> norm;
  };

  // The training forward: the stack's output (as forward computes it, up to rounding) and the
  // context for backward.
  template <TensorLike X, TensorLike M>
  Trained<Tensor<T, 3>, Context> forward_train(
      const X& tgt, const M& memory, const TransformerDecoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3 && rank_v<M> == 3, "TransformerDecoder takes [batch, L, d_model]");
    return forward_train_views(cview(tgt), cview(memory), fo);
  }

  // Given forward_train's context and dL/dy [batch, Lt, d_model]: adds every parameter's
  // gradient and returns dL/dtgt and dL/dmemory (summed over the layers, which all read memory).
  template <TensorLike G>
  TransformerDecoderGrads<T> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "TransformerDecoder::backward takes a [batch, Lt, d_model] gradient");
    return backward_views(ctx, cview(grad_output));
  }

  // The checks of forward and forward_into but the output's: the layers and parameters, tgt,
  // memory and the masks.
  void check_call(std::string_view fn, const TensorMap<const T, 3>& tgt,
                  const TensorMap<const T, 3>& memory,
                  const TransformerDecoderLayerForwardOptions& fo) const {
    check_layers(fn, "");
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].check_call(fn, tgt, memory, fo, detail::ParameterPrefix("", "layers.", i));
    if (options_.final_norm) norm.check_parameters(fn, "norm.");
  }

  // Packs every layer's weights for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::nn::TransformerDecoder::prepack");
    for (auto& l : layers) l.prepack();
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    for (std::size_t i = 0; i < self.layers.size(); ++i)
      TransformerDecoderLayer<T>::visit(self.layers[i], f,
                                        prefix + "layers." + std::to_string(i) + ".");
    if (self.options_.final_norm) LayerNorm<T>::visit(self.norm, f, prefix + "norm.");
  }

 private:
  // The entry points that take any TensorLike run these on views: members that are not
  // templates, instantiated once per T (in tessera::compiled's library in the compiled mode).
  TransformerDecoderGrads<T> backward_views(const Context& ctx, TensorMap<const T, 3> grad_output);
  Trained<Tensor<T, 3>, Context> forward_train_views(
      TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory,
      const TransformerDecoderLayerForwardOptions& fo) const;
  // `layers` is a public vector: a user may resize it or put in a layer built with other options.
  void check_layers(std::string_view fn, std::string_view prefix) const {
    detail::check_stack_layers(fn, prefix, layers, options_.num_layers, options_.layer);
  }
  void run_forward(TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory, TensorMap<T, 3> out,
                   const TransformerDecoderLayerForwardOptions& fo) const;

  TransformerDecoderOptions options_{};
};

template <class T>
TransformerDecoderGrads<T> TransformerDecoder<T>::backward_views(
    const Context& ctx, TensorMap<const T, 3> grad_output) {
  constexpr std::string_view fn = "tessera::nn::TransformerDecoder::backward";
  check_parameters(fn);
  if (ctx.layers.size() != layers.size())
    detail::raise<ValueError>(fn, "argument 'ctx' holds ", ctx.layers.size(),
                              " layers' contexts, the stack has ", layers.size(), " layers");
  detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(),
                            ctx.layers.front().norm1.input.shape());
  TransformerDecoderGrads<T> g;
  g.tgt = Tensor<T, 3>(cview(grad_output).shape(), uninitialized);
  std::copy_n(cview(grad_output).data(), g.tgt.size(), g.tgt.data());
  if (options_.final_norm) g.tgt = norm.backward(ctx.norm, g.tgt);
  for (std::size_t i = layers.size(); i-- > 0;) {
    auto li = layers[i].backward(ctx.layers[i], g.tgt);
    g.tgt = std::move(li.tgt);
    if (i + 1 == layers.size())
      g.memory = std::move(li.memory);
    else
      detail::add_into(g.memory, li.memory);
  }
  return g;
}

template <class T>
Trained<Tensor<T, 3>, typename TransformerDecoder<T>::Context>
TransformerDecoder<T>::forward_train_views(TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory,
                                           const TransformerDecoderLayerForwardOptions& fo) const {
  check_call("tessera::nn::TransformerDecoder::forward_train", cview(tgt), cview(memory), fo);
  Trained<Tensor<T, 3>, Context> r;
  auto l = layers.front().forward_train(tgt, memory, fo);
  r.context.layers.push_back(std::move(l.context));
  for (std::size_t i = 1; i < layers.size(); ++i) {
    auto next = layers[i].forward_train(l.output, memory, fo);
    l.output = std::move(next.output);
    r.context.layers.push_back(std::move(next.context));
  }
  if (options_.final_norm) {
    auto n = norm.forward_train(l.output);
    l.output = std::move(n.output);
    r.context.norm = std::move(n.context);
  }
  r.output = std::move(l.output);
  return r;
}

template <class T>
void TransformerDecoder<T>::run_forward(TensorMap<const T, 3> tgt, TensorMap<const T, 3> memory,
                                        TensorMap<T, 3> out,
                                        const TransformerDecoderLayerForwardOptions& fo) const {
  layers.front().forward_into(tgt, memory, out, fo);
  for (std::size_t i = 1; i < layers.size(); ++i) layers[i].forward_into(out, memory, out, fo);
  if (options_.final_norm) norm.forward_into(out, out);
}

// PyTorch's nn.Transformer.generate_square_subsequent_mask as an additive mask [n, n]:
// 0 on and below the diagonal, -inf above. Use it with Mask::additive.
template <class T>
Tensor<T, 2> generate_square_subsequent_mask(Index n) {
  if (n < 0)
    detail::raise<ValueError>("tessera::nn::generate_square_subsequent_mask", "argument 'n' is ", n,
                              ", expected a value >= 0");
  Tensor<T, 2> m(n, n);
  for (Index i = 0; i < n; ++i)
    for (Index j = i + 1; j < n; ++j) m(i, j) = -std::numeric_limits<T>::infinity();
  return m;
}

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::TransformerDecoder)
