// tessera: nn::TransformerEncoderLayer, torch.nn.TransformerEncoderLayer with batch_first=True:
//
//   norm_first = false (post-norm):  x = norm1(x + self_attn(x));  x = norm2(x + ff(x))
//   norm_first = true  (pre-norm):   x = x + self_attn(norm1(x));  x = x + ff(norm2(x))
//
// Parameters under PyTorch's names: self_attn.*, linear1.*, linear2.*, norm1.*, norm2.*.
// Dropout is not applied (inference). The intermediates live in the calling thread's scratch
// arena (core/scratch.hpp): forward allocates only its output, forward_into nothing.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/nn/feed_forward.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct TransformerLayerOptions {
  Index d_model = 0;
  Index nhead = 1;
  Index dim_feedforward = 2048;
  Activation activation = Activation::relu;  // PyTorch offers relu and gelu; CLIP quick_gelu
  double layer_norm_eps = 1e-5;
  bool norm_first = false;
  bool bias = true;  // biases of every Linear, of the attention and of the LayerNorms
  std::uint64_t seed = 0;
};

struct TransformerEncoderLayerForwardOptions {
  std::optional<Mask> src_mask;              // [L, L] or [batch * nhead, L, L]
  std::optional<Mask> src_key_padding_mask;  // [batch, L]; PyTorch's bool = Mask::blocked
  bool is_causal = false;
};

// [rows, d_model] view of a [batch, L, d_model] tensor: the shape a fused residual takes.
template <class X>
auto transformer_rows(const X& x) {
  return cview(x).template reshape<2>({-1, x.shape()[2]});
}

// A new tensor of x's shape, [batch, L, d_model], filled by into(out): forward in terms of
// forward_into.
template <class T, class X, class Into>
Tensor<T, 3> transformer_output(const X& x, Into&& into) {
  Tensor<T, 3> out(x.shape(), uninitialized);
  into(TensorMap<T, 3>(out));
  return out;
}

// Throws ShapeError unless `out` has the shape of `x` (the layer's input, [batch, L, d_model]).
template <class T>
void check_transformer_out(std::string_view fn, const TensorMap<T, 3>& out,
                           const TensorMap<const T, 3>& x) {
  detail::check_shape_equal(fn, "out", out.shape(), x.shape());
}

// Checks the options before the attention, feed-forward and norm constructors see them, so that
// a bad value is reported under the layer's name. (Not in a nested `detail` namespace: that would
// hide tessera::detail inside tessera::nn.)
inline void check_transformer_layer_options(std::string_view fn, const TransformerLayerOptions& o) {
  if (o.d_model <= 0)
    detail::raise<ValueError>(fn, "d_model is ", o.d_model, ", expected a value > 0");
  if (o.nhead <= 0 || o.d_model % o.nhead != 0)
    detail::raise<ValueError>(fn, "nhead is ", o.nhead,
                              ", expected a positive divisor of d_model = ", o.d_model);
  detail::check_activation_enum(fn, "activation", o.activation);
  if (o.activation != Activation::relu && o.activation != Activation::gelu &&
      o.activation != Activation::gelu_tanh && o.activation != Activation::silu &&
      o.activation != Activation::quick_gelu)
    detail::raise<ValueError>(fn, "activation is ", to_string(o.activation),
                              ", expected relu, gelu, gelu_tanh, silu or quick_gelu");
  if (o.dim_feedforward <= 0)
    detail::raise<ValueError>(fn, "dim_feedforward is ", o.dim_feedforward,
                              ", expected a value > 0");
  if (!(o.layer_norm_eps > 0))
    detail::raise<ValueError>(fn, "layer_norm_eps is ", o.layer_norm_eps, ", expected a value > 0");
}

// Throws ShapeError unless x (argument `arg`) is [batch, L, d_model] (with `batch` >= 0 given,
// that batch).
template <class T>
void check_transformer_input(std::string_view fn, std::string_view arg,
                             const TensorMap<const T, 3>& x, Index d_model, Index batch = -1) {
  if (x.dim(2) != d_model || (batch >= 0 && x.dim(0) != batch))
    detail::raise<ShapeError>(fn, "argument '", arg, "' has shape ",
                              detail::shape_string(x.shape()), ", expected [",
                              batch >= 0 ? std::to_string(batch) : "batch", ", L, ", d_model,
                              "] (d_model = ", d_model, ")");
}

// Throws ShapeError unless the attention mask `arg` is [Lq, Lk] or [batch * nhead, Lq, Lk], the
// shapes nn::MultiheadAttention takes, named as the layer's caller wrote it.
inline void check_transformer_attn_mask(std::string_view fn, std::string_view arg,
                                        const std::optional<Mask>& mask, Index batch, Index nhead,
                                        Index Lq, Index Lk) {
  if (!mask) return;
  const auto s = mask->shape();
  const Index bh = detail::checked_mul(batch, nhead, fn, "batch * nhead");
  const bool two_d = s.size() == 2 && s[0] == Lq && s[1] == Lk;
  const bool three_d = s.size() == 3 && s[0] == bh && s[1] == Lq && s[2] == Lk;
  if (!two_d && !three_d)
    detail::raise<ShapeError>(fn, "argument '", arg, "' has shape ", detail::shape_string(s),
                              ", expected [", Lq, ", ", Lk, "] or [", bh, ", ", Lq, ", ", Lk,
                              "] ([L, S] or [batch * nhead, L, S])");
}

// Throws ShapeError unless the key-padding mask `arg` is [batch, Lk].
inline void check_transformer_padding_mask(std::string_view fn, std::string_view arg,
                                           const std::optional<Mask>& mask, Index batch, Index Lk) {
  if (!mask) return;
  const auto s = mask->shape();
  if (s.size() != 2 || s[0] != batch || s[1] != Lk)
    detail::raise<ShapeError>(fn, "argument '", arg, "' has shape ", detail::shape_string(s),
                              ", expected [", batch, ", ", Lk, "] ([batch, S])");
}

template <class T>
class TransformerEncoderLayer : public Module<TransformerEncoderLayer<T>> {
 public:
  MultiheadAttention<T> self_attn;
  FeedForward<T> ff;  // linear1, linear2
  LayerNorm<T> norm1, norm2;

  TransformerEncoderLayer() = default;
  explicit TransformerEncoderLayer(const TransformerLayerOptions& o) : options_(o) {
    check_transformer_layer_options("tessera::nn::TransformerEncoderLayer", o);
    self_attn = MultiheadAttention<T>(
        {.embed_dim = o.d_model, .num_heads = o.nhead, .bias = o.bias, .seed = o.seed});
    ff = FeedForward<T>({.d_model = o.d_model,
                         .dim_feedforward = o.dim_feedforward,
                         .activation = o.activation,
                         .bias = o.bias,
                         .seed = o.seed + 100});
    const LayerNormOptions ln{
        .normalized_shape = o.d_model, .eps = o.layer_norm_eps, .bias = o.bias};
    norm1 = LayerNorm<T>(ln);
    norm2 = LayerNorm<T>(ln);
  }

  const TransformerLayerOptions& options() const noexcept { return options_; }

  // src: [batch, L, d_model] -> [batch, L, d_model]
  template <TensorLike X>
  Tensor<T, 3> forward(const X& src, const TransformerEncoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3, "TransformerEncoderLayer takes [batch, L, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerEncoderLayer::forward";
    check_call(fn, cview(src), fo);
    return transformer_output<T>(src, [&](TensorMap<T, 3> out) { run(cview(src), out, fo); });
  }
  // The same into `out` (src's shape). out may be src, or overlap it: src is read only before
  // out is first written, so a stack can run every layer in place.
  template <TensorLike X>
  void forward_into(const X& src, TensorMap<T, 3> out,
                    const TransformerEncoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3, "TransformerEncoderLayer takes [batch, L, d_model]");
    constexpr std::string_view fn = "tessera::nn::TransformerEncoderLayer::forward_into";
    check_call(fn, cview(src), fo);
    check_transformer_out(fn, out, cview(src));
    run(cview(src), out, fo);
  }

  // What backward needs: the contexts of the attention, the feed-forward block and both norms.
  struct Context {
    typename MultiheadAttention<T>::Context self_attn;
    typename FeedForward<T>::Context ff;
    typename LayerNorm<T>::template Context<3> norm1, norm2;
    bool norm_first = false;
  };

  // The training forward: the layer's output, as forward computes it up to rounding (the skip
  // connections are added after the products here), and the context for backward.
  template <TensorLike X>
  Trained<Tensor<T, 3>, Context> forward_train(
      const X& src, const TransformerEncoderLayerForwardOptions& fo = {}) const {
    static_assert(rank_v<X> == 3, "TransformerEncoderLayer takes [batch, L, d_model]");
    return forward_train_views(cview(src), fo);
  }

  // Given forward_train's context and dL/dy [batch, L, d_model]: adds every parameter's gradient
  // and returns dL/dsrc.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "TransformerEncoderLayer::backward takes a [batch, L, d_model] gradient");
    return backward_views(ctx, cview(grad_output));
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name
  // (self_attn.*, linear1.*, linear2.*, norm1.*, norm2.*), unless every parameter has the shape
  // the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    self_attn.check_parameters(fn, detail::ParameterPrefix(prefix, "self_attn."));
    ff.check_parameters(fn, prefix);
    norm1.check_parameters(fn, detail::ParameterPrefix(prefix, "norm1."));
    norm2.check_parameters(fn, detail::ParameterPrefix(prefix, "norm2."));
  }
  // The checks of forward and forward_into but the output's: the parameters, src
  // [batch, L, d_model] and the masks. The stack runs them once under its own name.
  void check_call(std::string_view fn, const TensorMap<const T, 3>& src,
                  const TransformerEncoderLayerForwardOptions& fo,
                  std::string_view prefix = "") const {
    check_parameters(fn, prefix);
    check_transformer_input<T>(fn, "src", src, options_.d_model);
    const Index B = src.dim(0), L = src.dim(1);
    check_transformer_attn_mask(fn, "src_mask", fo.src_mask, B, options_.nhead, L, L);
    check_transformer_padding_mask(fn, "src_key_padding_mask", fo.src_key_padding_mask, B, L);
  }

  // Packs the attention's and the feed-forward's weights for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::nn::TransformerEncoderLayer::prepack");
    self_attn.prepack(AttentionUse::self);
    ff.prepack();
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    MultiheadAttention<T>::visit(self.self_attn, f, prefix + "self_attn.");
    FeedForward<T>::visit(self.ff, f, prefix);
    LayerNorm<T>::visit(self.norm1, f, prefix + "norm1.");
    LayerNorm<T>::visit(self.norm2, f, prefix + "norm2.");
  }

 private:
  // The entry points that take any TensorLike run these on views: members that are not
  // templates, instantiated once per T (in tessera::compiled's library in the compiled mode).
  Tensor<T, 3> backward_views(const Context& ctx, TensorMap<const T, 3> grad_output);
  Trained<Tensor<T, 3>, Context> forward_train_views(
      TensorMap<const T, 3> src, const TransformerEncoderLayerForwardOptions& fo) const;
  void run(TensorMap<const T, 3> src, TensorMap<T, 3> out,
           const TransformerEncoderLayerForwardOptions& fo) const;

  TransformerLayerOptions options_{};
};

// The layer, on checked inputs.
template <class T>
void TransformerEncoderLayer<T>::run(TensorMap<const T, 3> src, TensorMap<T, 3> out,
                                     const TransformerEncoderLayerForwardOptions& fo) const {
  const auto xv = cview(src);
  const MultiheadAttentionForwardOptions sa{.key_padding_mask = fo.src_key_padding_mask,
                                            .attn_mask = fo.src_mask,
                                            .is_causal = fo.is_causal};
  // Each skip connection is added inside the product that ends its block (the attention's
  // output projection, linear2), so no pass of its own sweeps the activations. x: the
  // attention block's output [batch, L, d_model], in scratch.
  detail::ScratchFrame frame;
  const auto x = frame.tensor<T, 3>(xv.shape());
  if (options_.norm_first) {
    const auto h = frame.tensor<T, 3>(xv.shape());
    norm1.forward_into(xv, h);
    self_attn.forward_into(h, h, h, x, sa, transformer_rows(xv));
    norm2.forward_into(x, h);
    ff.forward_into(h, out, transformer_rows(x));
    return;
  }
  self_attn.forward_into(xv, xv, xv, x, sa, transformer_rows(xv));
  norm1.forward_into(x, x);
  ff.forward_into(x, out, transformer_rows(x));
  norm2.forward_into(out, out);
}

template <class T>
Tensor<T, 3> TransformerEncoderLayer<T>::backward_views(const Context& ctx,
                                                        TensorMap<const T, 3> grad_output) {
  constexpr std::string_view fn = "tessera::nn::TransformerEncoderLayer::backward";
  check_parameters(fn);
  if (ctx.norm_first != options_.norm_first || ctx.norm1.input.dim(2) != options_.d_model)
    detail::raise<ValueError>(fn, "argument 'ctx' does not come from this module's forward_train");
  detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), ctx.norm1.input.shape());
  Tensor<T, 3> dy(cview(grad_output).shape(), uninitialized);
  std::copy_n(cview(grad_output).data(), dy.size(), dy.data());
  if (options_.norm_first) {
    // dx1 = dy + norm2'(ff'(dy)); dx = dx1 + norm1'(sa'(dx1))
    detail::add_into(dy, norm2.backward(ctx.norm2, ff.backward(ctx.ff, dy)));
    detail::add_into(dy, norm1.backward(ctx.norm1, detail::self_attention_grad(
                                                       self_attn.backward(ctx.self_attn, dy))));
    return dy;
  }
  // dz2 = norm2'(dy); dz1 = norm1'(dz2 + ff'(dz2)); dx = dz1 + sa'(dz1)
  Tensor<T, 3> dz = norm2.backward(ctx.norm2, dy);
  detail::add_into(dz, ff.backward(ctx.ff, dz));
  Tensor<T, 3> dx = norm1.backward(ctx.norm1, dz);
  detail::add_into(dx, detail::self_attention_grad(self_attn.backward(ctx.self_attn, dx)));
  return dx;
}

template <class T>
Trained<Tensor<T, 3>, typename TransformerEncoderLayer<T>::Context>
TransformerEncoderLayer<T>::forward_train_views(
    TensorMap<const T, 3> src, const TransformerEncoderLayerForwardOptions& fo) const {
  constexpr std::string_view fn = "tessera::nn::TransformerEncoderLayer::forward_train";
  check_call(fn, cview(src), fo);
  const MultiheadAttentionForwardOptions sa{.key_padding_mask = fo.src_key_padding_mask,
                                            .attn_mask = fo.src_mask,
                                            .is_causal = fo.is_causal};
  Trained<Tensor<T, 3>, Context> r;
  Context& c = r.context;
  c.norm_first = options_.norm_first;
  Tensor<T, 3> x(cview(src).shape(), uninitialized);
  std::copy_n(cview(src).data(), x.size(), x.data());
  if (options_.norm_first) {
    // x1 = x + sa(norm1(x)); y = x1 + ff(norm2(x1))
    auto h1 = norm1.forward_train(x);
    auto a = self_attn.forward_train(h1.output, h1.output, h1.output, sa);
    detail::add_into(a.output, x);
    auto h2 = norm2.forward_train(a.output);
    auto f = ff.forward_train(h2.output);
    detail::add_into(f.output, a.output);
    r.output = std::move(f.output);
    c.norm1 = std::move(h1.context), c.self_attn = std::move(a.context);
    c.norm2 = std::move(h2.context), c.ff = std::move(f.context);
    return r;
  }
  // x1 = norm1(x + sa(x)); y = norm2(x1 + ff(x1))
  auto a = self_attn.forward_train(x, x, x, sa);
  detail::add_into(a.output, x);
  auto x1 = norm1.forward_train(a.output);
  auto f = ff.forward_train(x1.output);
  detail::add_into(f.output, x1.output);
  auto y = norm2.forward_train(f.output);
  r.output = std::move(y.output);
  c.self_attn = std::move(a.context), c.norm1 = std::move(x1.context);
  c.ff = std::move(f.context), c.norm2 = std::move(y.context);
  return r;
}

}  // namespace tessera::nn

namespace tessera::detail {

// The check the encoder and decoder stacks run on their public `layers` vector: num_layers
// layers, each built with the stack's d_model and nhead (ValueError naming `fn` otherwise).
template <class Layers, class LayerOptions>
void check_stack_layers(std::string_view fn, std::string_view prefix, const Layers& layers,
                        Index num_layers, const LayerOptions& layer) {
  if (static_cast<Index>(layers.size()) != num_layers)
    raise<ValueError>(fn, "member '", prefix, "layers' holds ", layers.size(), " layers, expected ",
                      num_layers, " (num_layers)");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& lo = layers[i].options();
    if (lo.d_model != layer.d_model || lo.nhead != layer.nhead)
      raise<ValueError>(fn, "member '", prefix, "layers[", i, "]' has d_model ", lo.d_model,
                        " and nhead ", lo.nhead, ", expected ", layer.d_model, " and ", layer.nhead,
                        " (layer.d_model, layer.nhead)");
  }
}

}  // namespace tessera::detail

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::TransformerEncoderLayer)
