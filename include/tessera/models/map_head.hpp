// tessera: models::MAPHead, multihead attention pooling ("MAP", Lee et al. 2019, "Set
// Transformer", as big_vision's MAPHead and SigLIP's image tower use it; Zhai et al. 2023): a
// learned probe attends over every token of an image, and a residual MLP follows:
//
//   q = probe                                          [B, 1, width]  (the same row per image)
//   x = attention(q, tokens, tokens)                   [B, 1, width]  nn::MultiheadAttention
//   x = x + fc2(act(fc1(layernorm(x))))                [B, width]
//
// as transformers' SiglipMultiheadAttentionPoolingHead (modeling_siglip.py): probe [1, 1, width],
// torch.nn.MultiheadAttention(width, heads, batch_first=True) with biases, LayerNorm(eps) and
// SiglipMLP (fc1 [mlp_dim, width], fc2 [width, mlp_dim], the tower's activation).
//
// Parameters (Hugging Face's names, under vision_model.head.): probe [width] (HF's [1, 1, width]
// squeezed), attention.in_proj_weight [3 width, width], attention.in_proj_bias [3 width],
// attention.out_proj.{weight, bias}, layernorm.{weight, bias}, mlp.fc1.{weight, bias},
// mlp.fc2.{weight, bias}.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "tessera/nn/parameter.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::models {

struct MAPHeadOptions {
  Index width = 768;  // token width
  Index heads = 12;   // width a multiple of heads
  Index mlp_dim = 3072;
  Activation activation = Activation::gelu_tanh;  // SigLIP: gelu_pytorch_tanh
  double layer_norm_eps = 1e-6;
  std::uint64_t seed = 0;
};

template <class T>
class MAPHead : public nn::Module<MAPHead<T>> {
 public:
  nn::Parameter<T, 1> probe;  // [width], the query shared by every image
  nn::MultiheadAttention<T> attention;
  nn::LayerNorm<T> layernorm;
  nn::Linear<T> fc1;  // [mlp_dim, width]
  nn::Linear<T> fc2;  // [width, mlp_dim]

  MAPHead() = default;
  explicit MAPHead(const MAPHeadOptions& o) : options_(checked(o)) {
    probe = nn::Parameter<T, 1>(Shape<1>{o.width});
    // transformers initialises the probe with xavier_uniform_ over [1, 1, width]: fan_in =
    // fan_out = width.
    const double bound = std::sqrt(3.0 / static_cast<double>(o.width));
    detail::init_uniform(probe, o.seed, -bound, bound);
    attention = nn::MultiheadAttention<T>(
        {.embed_dim = o.width, .num_heads = o.heads, .bias = true, .seed = o.seed + 1});
    layernorm = nn::LayerNorm<T>({.normalized_shape = o.width, .eps = o.layer_norm_eps});
    fc1 = nn::Linear<T>({.in_features = o.width, .out_features = o.mlp_dim, .seed = o.seed + 2});
    fc2 = nn::Linear<T>({.in_features = o.mlp_dim, .out_features = o.width, .seed = o.seed + 3});
  }

  const MAPHeadOptions& options() const noexcept { return options_; }

  // tokens: [B, N, width], N >= 1 -> [B, width], the probe's row after the attention and the MLP.
  template <TensorLike X>
  requires(rank_v<X> == 3) Tensor<T, 2> forward(const X& tokens)
  const {
    constexpr std::string_view fn = "tessera::models::MAPHead::forward";
    check_parameters(fn);
    const auto xv = cview(tokens);
    const Index B = xv.dim(0), W = options_.width;
    const Index expected[] = {B, std::max<Index>(xv.dim(1), 1), W};
    tessera::detail::check_shape_equal(fn, "tokens", xv.shape(), expected);
    // q: [B, 1, W], the probe repeated per image
    Tensor<T, 3> q(Shape<3>{B, 1, W}, uninitialized);
    for (Index b = 0; b < B; ++b) q[b][0].as_vector() = probe.value.as_vector();
    // x: [B, 1, W] = attention(q, tokens, tokens), written over q
    attention.forward_into(q, xv, xv, q);
    const auto x = q.template reshape<2>({B, W});  // [B, W]
    // out: [B, W] = x + fc2(act(fc1(layernorm(x)))), the residual fused into fc2's product
    const Tensor<T, 2> h = layernorm.forward(x);
    const Tensor<T, 2> hidden = fc1.forward(h, options_.activation);  // [B, mlp_dim]
    return fc2.forward(hidden, Activation::identity, TensorMap<const T, 2>(x.data(), {B, W}));
  }

  // What backward needs: the contexts of the attention, the norm and both products.
  struct Context {
    typename nn::MultiheadAttention<T>::Context attention;
    typename nn::LayerNorm<T>::template Context<2> layernorm;
    typename nn::Linear<T>::Context fc1, fc2;
  };

  // The training forward: forward's [B, width] (to rounding) and the context for backward.
  template <TensorLike X>
  requires(rank_v<X> == 3) nn::Trained<Tensor<T, 2>, Context> forward_train(const X& tokens)
  const {
    constexpr std::string_view fn = "tessera::models::MAPHead::forward_train";
    check_parameters(fn);
    const auto xv = cview(tokens);
    const Index B = xv.dim(0), W = options_.width;
    const Index expected[] = {B, std::max<Index>(xv.dim(1), 1), W};
    tessera::detail::check_shape_equal(fn, "tokens", xv.shape(), expected);
    Tensor<T, 3> q(Shape<3>{B, 1, W}, uninitialized);
    for (Index b = 0; b < B; ++b) q[b][0].as_vector() = probe.value.as_vector();
    nn::Trained<Tensor<T, 2>, Context> r;
    auto a = attention.forward_train(q, xv, xv);
    const Tensor<T, 2> x(a.output.template reshape<2>({B, W}));
    auto h = layernorm.forward_train(x);
    auto f1 = fc1.forward_train(h.output, options_.activation);
    auto f2 = fc2.forward_train(f1.output);
    tessera::detail::add_into(f2.output, x);
    r.output = std::move(f2.output);
    r.context = {std::move(a.context), std::move(h.context), std::move(f1.context),
                 std::move(f2.context)};
    return r;
  }

  // Given forward_train's context and dL/dout [B, width]: adds every parameter's gradient (the
  // probe's summed over the images) and returns dL/dtokens [B, N, width].
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 2 && std::is_same_v<scalar_t<G>, T>,
                  "MAPHead::backward takes a [B, width] gradient");
    constexpr std::string_view fn = "tessera::models::MAPHead::backward";
    check_parameters(fn);
    const Index B = ctx.attention.q.dim(0), W = options_.width;
    const Index expected[] = {B, W};
    tessera::detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), expected);
    // dx [B, W] = dout + layernorm'(fc1'(fc2'(dout)))
    Tensor<T, 2> dx(Shape<2>{B, W}, uninitialized);
    std::copy_n(cview(grad_output).data(), dx.size(), dx.data());
    tessera::detail::add_into(
        dx, layernorm.backward(ctx.layernorm, fc1.backward(ctx.fc1, fc2.backward(ctx.fc2, dx))));
    auto g = attention.backward(ctx.attention, TensorMap<const T, 3>(dx.data(), {B, 1, W}));
    auto gp = tessera::detail::grad_of(probe).as_vector();
    for (Index b = 0; b < B; ++b) gp += g.query[b][0].as_vector();
    tessera::detail::add_into(g.key, g.value);
    return std::move(g.key);
  }

  // Packs the attention's and the MLP's weights for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::models::MAPHead::prepack");
    attention.prepack();
    fc1.prepack();
    fc2.prepack();
  }

  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_parameter(fn, prefix, "probe", probe, {options_.width});
    attention.check_parameters(fn, detail::ParameterPrefix(prefix, "attention."));
    layernorm.check_parameters(fn, detail::ParameterPrefix(prefix, "layernorm."));
    fc1.check_parameters(fn, detail::ParameterPrefix(prefix, "mlp.fc1."));
    fc2.check_parameters(fn, detail::ParameterPrefix(prefix, "mlp.fc2."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "probe", self.probe);
    nn::MultiheadAttention<T>::visit(self.attention, f, prefix + "attention.");
    nn::LayerNorm<T>::visit(self.layernorm, f, prefix + "layernorm.");
    nn::Linear<T>::visit(self.fc1, f, prefix + "mlp.fc1.");
    nn::Linear<T>::visit(self.fc2, f, prefix + "mlp.fc2.");
  }

 private:
  static const MAPHeadOptions& checked(const MAPHeadOptions& o) {
    constexpr std::string_view fn = "tessera::models::MAPHead";
    if (o.width <= 0 || o.heads <= 0 || o.width % o.heads != 0)
      detail::raise<ValueError>(fn, "width is ", o.width, " and heads ", o.heads,
                                ", expected heads > 0 dividing width");
    if (o.mlp_dim <= 0) detail::raise<ValueError>(fn, "mlp_dim is ", o.mlp_dim, ", expected > 0");
    return o;
  }

  MAPHeadOptions options_{};
};

}  // namespace tessera::models

// The compiled mode's instantiations (core/config.hpp), unless its library was built without
// models (no nlohmann_json).
#ifndef TESSERA_COMPILED_WITHOUT_MODELS
TESSERA_INSTANTIATE_FLOATING(class tessera::models::MAPHead)
#endif
