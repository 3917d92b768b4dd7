// tessera: nn::TransformerEncoder, a stack of TransformerEncoderLayer with an optional final
// LayerNorm, as torch.nn.TransformerEncoder (parameters layers.<i>.*, norm.*). A layer may write
// over its own input, so the stack runs every layer in place in the output it returns: no buffer
// per layer, and the layers' intermediates come from the thread's scratch arena.
#pragma once

#include <string>
#include <string_view>
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
    // The layer options, reported under the stack's name rather than the layer's.
    check_transformer_layer_options("tessera::nn::TransformerEncoder", o.layer);
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
    static_assert(rank_v<X> == 3, "TransformerEncoder takes [batch, L, d_model]");
    check_call("tessera::nn::TransformerEncoder::forward", cview(src), fo);
    return transformer_output<T>(src, [&](TensorMap<T, 3> out) { run(cview(src), out, fo); });
  }
  // The same into `out` (src's shape); out may be src.
  template <TensorLike X>
  void forward_into(const X& src, TensorMap<T, 3> out,
                    const TransformerEncoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3, "TransformerEncoder takes [batch, L, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerEncoder::forward_into";
    check_call(fn, cview(src), fo);
    check_transformer_out(fn, out, cview(src));
    run(cview(src), out, fo);
  }

  // What backward needs: each layer's context and the final norm's.
  struct Context {
    std::vector<typename TransformerEncoderLayer<T>::Context> layers;
    typename LayerNorm<T>::template Context<3> norm;
  };

  // The training forward: the stack's output (as forward computes it, up to rounding) and the
  // context for backward.
  template <TensorLike X>
  Trained<Tensor<T, 3>, Context> forward_train(
      const X& src, const TransformerEncoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3, "TransformerEncoder takes [batch, L, d_model]");
    return forward_train_views(cview(src), fo);
  }

  // Given forward_train's context and dL/dy [batch, L, d_model]: adds every parameter's gradient
  // and returns dL/dsrc.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "TransformerEncoder::backward takes a [batch, L, d_model] gradient");
    return backward_views(ctx, cview(grad_output));
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
  // The checks of forward and forward_into but the output's: the layers and parameters, src
  // [batch, L, d_model] and the masks.
  void check_call(std::string_view fn, const TensorMap<const T, 3>& src,
                  const TransformerEncoderLayerForwardOptions& fo,
                  std::string_view prefix = "") const {
    check_layers(fn, prefix);
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].check_call(fn, src, fo, detail::ParameterPrefix(prefix, "layers.", i));
    if (options_.final_norm) norm.check_parameters(fn, detail::ParameterPrefix(prefix, "norm."));
  }

  // Packs every layer's weights for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::nn::TransformerEncoder::prepack");
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
  // The entry points that take any TensorLike run these on views: members that are not
  // templates, instantiated once per T (in tessera::compiled's library in the compiled mode).
  Tensor<T, 3> backward_views(const Context& ctx, TensorMap<const T, 3> grad_output);
  Trained<Tensor<T, 3>, Context> forward_train_views(
      TensorMap<const T, 3> src, const TransformerEncoderLayerForwardOptions& fo) const;
  // `layers` is a public vector: a user may resize it or put in a layer built with other options.
  void check_layers(std::string_view fn, std::string_view prefix) const {
    detail::check_stack_layers(fn, prefix, layers, options_.num_layers, options_.layer);
  }
  void run(TensorMap<const T, 3> src, TensorMap<T, 3> out,
           const TransformerEncoderLayerForwardOptions& fo) const;

  TransformerEncoderOptions options_{};
};

// Every layer, on checked inputs.
template <class T>
void TransformerEncoder<T>::run(TensorMap<const T, 3> src, TensorMap<T, 3> out,
                                const TransformerEncoderLayerForwardOptions& fo) const {
  layers.front().forward_into(src, out, fo);
  for (std::size_t i = 1; i < layers.size(); ++i) layers[i].forward_into(out, out, fo);
  if (options_.final_norm) norm.forward_into(out, out);
}

template <class T>
Tensor<T, 3> TransformerEncoder<T>::backward_views(const Context& ctx,
                                                   TensorMap<const T, 3> grad_output) {
  constexpr std::string_view fn = "tessera::nn::TransformerEncoder::backward";
  check_parameters(fn);
  if (ctx.layers.size() != layers.size())
    detail::raise<ValueError>(fn, "argument 'ctx' holds ", ctx.layers.size(),
                              " layers' contexts, the stack has ", layers.size(), " layers");
  detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(),
                            ctx.layers.front().norm1.input.shape());
  Tensor<T, 3> d(cview(grad_output).shape(), uninitialized);
  std::copy_n(cview(grad_output).data(), d.size(), d.data());
  if (options_.final_norm) d = norm.backward(ctx.norm, d);
  for (std::size_t i = layers.size(); i-- > 0;) d = layers[i].backward(ctx.layers[i], d);
  return d;
}

template <class T>
Trained<Tensor<T, 3>, typename TransformerEncoder<T>::Context>
TransformerEncoder<T>::forward_train_views(TensorMap<const T, 3> src,
                                           const TransformerEncoderLayerForwardOptions& fo) const {
  check_call("tessera::nn::TransformerEncoder::forward_train", cview(src), fo);
  Trained<Tensor<T, 3>, Context> r;
  auto l = layers.front().forward_train(src, fo);
  r.context.layers.push_back(std::move(l.context));
  for (std::size_t i = 1; i < layers.size(); ++i) {
    auto next = layers[i].forward_train(l.output, fo);
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

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::TransformerEncoder)
