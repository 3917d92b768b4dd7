// tessera: models::TextTransformer, CLIP's text tower (Radford et al. 2021) composed of nn/
// modules:
//
//   ids [B, L] -> embed (token embedding + positions) -> encoder (pre-norm blocks, causal)
//     -> pool (one token per text) -> ln_final -> head -> [B, output_dim]
//
// The pooled token is the end-of-text token: OpenAI's CLIP and open_clip take the position of the
// largest id in each row (`text.argmax(dim=-1)`: the end token 49407 is the largest id);
// Hugging Face's CLIPTextTransformer takes the first position holding eos_token_id; SigLIP's text
// tower takes the last position. Layer norm is per token, so normalising only the pooled token
// equals CLIP's ln_final over every token followed by the pooling.
//
// The layouts of the checkpoints this loads:
//   OpenAI CLIP / open_clip  causal, pooled at the largest id, `text_projection` [width, embed]
//                            (no bias);
//   Hugging Face CLIP        causal, pooled at the first eos_token_id, `text_projection` Linear;
//   Hugging Face SigLIP      not causal (causal = false: every token sees every other), pooled at
//                            the last position (the tokenizer pads to the context length, so the
//                            last position is an end or padding token), `final_layer_norm`, and
//                            `head` Linear(width, projection_size) WITH bias (head_bias = true).
//
// Parameters (tessera's names; models/naming.hpp maps each checkpoint layout onto them):
//   embed.token_embedding.weight [vocab_size, width], embed.positional_embedding
//   [context_length, width], encoder.layers.<i>.* (nn::TransformerEncoderLayer, pre-norm),
//   ln_final.weight, ln_final.bias [width], head.weight [output_dim, width] (CLIP's
//   text_projection transposed), head.bias [output_dim] (with head_bias).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/token_embedding.hpp"
#include "tessera/nn/training.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::models {

// Which token of a text its embedding is read from.
enum class TextPooling {
  argmax,  // the position of the largest id (OpenAI CLIP, open_clip)
  eos,     // the first position holding eos_token_id (Hugging Face CLIP)
  last,    // the last position (SigLIP)
};

struct TextTransformerOptions {
  Index vocab_size = 49408;
  Index context_length = 77;  // positions
  Index width = 512;
  Index layers = 12;
  Index heads = 8;
  Index mlp_dim = 2048;
  Activation activation = Activation::gelu;  // quick_gelu for OpenAI's CLIP weights
  double layer_norm_eps = 1e-5;
  bool causal = true;  // CLIP: each token sees only those before it
  TextPooling pooling = TextPooling::argmax;
  Index eos_token_id = 49407;  // for TextPooling::eos
  Index output_dim = 512;      // head's outputs; 0: no head
  bool head_bias = false;
  std::uint64_t seed = 0;
};

template <class T>
class TextTransformer : public nn::Module<TextTransformer<T>> {
 public:
  nn::TokenEmbedding<T> embed;
  nn::TransformerEncoder<T> encoder;
  nn::LayerNorm<T> ln_final;
  nn::Linear<T> head;  // used when output_dim > 0

  TextTransformer() = default;
  explicit TextTransformer(const TextTransformerOptions& o) : options_(checked(o)) {
    embed = nn::TokenEmbedding<T>({.vocab_size = o.vocab_size,
                                   .max_len = o.context_length,
                                   .embed_dim = o.width,
                                   .seed = o.seed});
    encoder = nn::TransformerEncoder<T>({.layer = {.d_model = o.width,
                                                   .nhead = o.heads,
                                                   .dim_feedforward = o.mlp_dim,
                                                   .activation = o.activation,
                                                   .layer_norm_eps = o.layer_norm_eps,
                                                   .norm_first = true,
                                                   .seed = o.seed + 100},
                                         .num_layers = o.layers});
    ln_final = nn::LayerNorm<T>({.normalized_shape = o.width, .eps = o.layer_norm_eps});
    if (o.output_dim > 0)
      head = nn::Linear<T>({.in_features = o.width,
                            .out_features = o.output_dim,
                            .bias = o.head_bias,
                            .seed = o.seed + 200});
  }

  const TextTransformerOptions& options() const noexcept { return options_; }
  Index output_features() const noexcept {
    return options_.output_dim > 0 ? options_.output_dim : options_.width;
  }

  // ids: [B, L] token ids (integers in [0, vocab_size)), 1 <= L <= context_length -> every token
  // after the last block [B, L, width] (not normalised by ln_final).
  template <TensorLike I>
  requires(rank_v<I> == 2) Tensor<T, 3> forward_tokens(const I& ids)
  const {
    constexpr std::string_view fn = "tessera::models::TextTransformer::forward_tokens";
    check_parameters(fn);
    return tokens(fn, ids);
  }

  // ids: [B, L] token ids -> [B, output_features()]: the pooled token after ln_final, through
  // the head. Throws ValueError naming the row when pooling is eos and a row lacks the token.
  template <TensorLike I>
  requires(rank_v<I> == 2) Tensor<T, 2> forward(const I& ids)
  const {
    constexpr std::string_view fn = "tessera::models::TextTransformer::forward";
    check_parameters(fn);
    const auto idv = cview(ids);
    const Tensor<T, 3> x = tokens(fn, ids);
    const Index B = x.dim(0), W = options_.width;
    // pooled: [B, width], one token per text
    Tensor<T, 2> pooled(Shape<2>{B, W}, uninitialized);
    for (Index b = 0; b < B; ++b) pooled[b].as_vector() = x[b][pool_index(fn, idv, b)].as_vector();
    ln_final.forward_into(pooled, pooled);
    if (options_.output_dim <= 0) return pooled;
    return head.forward(pooled);
  }

  // What backward needs: every part's context and the pooled positions.
  struct Context {
    typename nn::TokenEmbedding<T>::Context embed;
    typename nn::TransformerEncoder<T>::Context encoder;
    std::vector<Index> pooled_at;  // per text, the position pooled
    typename nn::LayerNorm<T>::template Context<2> ln_final;
    typename nn::Linear<T>::Context head;
  };

  // The training forward: forward's [B, output_features()] (to rounding) and the context.
  template <TensorLike I>
  requires(rank_v<I> == 2) nn::Trained<Tensor<T, 2>, Context> forward_train(const I& ids)
  const {
    constexpr std::string_view fn = "tessera::models::TextTransformer::forward_train";
    check_parameters(fn);
    const auto idv = cview(ids);
    const Index L = idv.dim(1);
    if (L < 1 || L > options_.context_length)
      detail::raise<ShapeError>(
          fn, "argument 'ids' has shape ", detail::shape_string(idv.shape()),
          ", expected [batch, L] with 1 <= L <= context_length = ", options_.context_length);
    nn::Trained<Tensor<T, 2>, Context> r;
    Context& c = r.context;
    auto e = embed.forward_train(ids);
    auto enc = encoder.forward_train(e.output, {.is_causal = options_.causal});
    c.embed = std::move(e.context);
    c.encoder = std::move(enc.context);
    const Index B = idv.dim(0), W = options_.width;
    Tensor<T, 2> pooled(Shape<2>{B, W}, uninitialized);
    for (Index b = 0; b < B; ++b) {
      c.pooled_at.push_back(pool_index(fn, idv, b));
      pooled[b].as_vector() = enc.output[b][c.pooled_at.back()].as_vector();
    }
    auto n = ln_final.forward_train(pooled);
    c.ln_final = std::move(n.context);
    if (options_.output_dim <= 0) {
      r.output = std::move(n.output);
      return r;
    }
    auto h = head.forward_train(n.output);
    c.head = std::move(h.context);
    r.output = std::move(h.output);
    return r;
  }

  // Given forward_train's context and dL/dout [B, output_features()]: adds every parameter's
  // gradient (token ids have none).
  template <TensorLike G>
  void backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 2 && std::is_same_v<scalar_t<G>, T>,
                  "TextTransformer::backward takes a [B, output_features] gradient");
    constexpr std::string_view fn = "tessera::models::TextTransformer::backward";
    check_parameters(fn);
    const Index B = static_cast<Index>(ctx.pooled_at.size()), W = options_.width;
    const Index expected[] = {B, output_features()};
    detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), expected);
    const Index L = ctx.embed.ids.dim(1);
    if (ctx.embed.ids.dim(0) != B)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    Tensor<T, 2> dpooled;
    if (options_.output_dim > 0) {
      dpooled = head.backward(ctx.head, grad_output);
    } else {
      dpooled = Tensor<T, 2>(Shape<2>{B, W}, uninitialized);
      std::copy_n(cview(grad_output).data(), dpooled.size(), dpooled.data());
    }
    const Tensor<T, 2> dp = ln_final.backward(ctx.ln_final, dpooled);
    Tensor<T, 3> dx(Shape<3>{B, L, W});  // only the pooled tokens were read
    for (Index b = 0; b < B; ++b) dx[b][ctx.pooled_at[b]].as_vector() = dp[b].as_vector();
    embed.backward(ctx.embed, encoder.backward(ctx.encoder, dx));
  }

  // Packs the weights of every product for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::models::TextTransformer::prepack");
    encoder.prepack();
    if (options_.output_dim > 0) head.prepack();
  }

  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    embed.check_parameters(fn, detail::ParameterPrefix(prefix, "embed."));
    encoder.check_parameters(fn, detail::ParameterPrefix(prefix, "encoder."));
    ln_final.check_parameters(fn, detail::ParameterPrefix(prefix, "ln_final."));
    if (options_.output_dim > 0)
      head.check_parameters(fn, detail::ParameterPrefix(prefix, "head."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::TokenEmbedding<T>::visit(self.embed, f, prefix + "embed.");
    nn::TransformerEncoder<T>::visit(self.encoder, f, prefix + "encoder.");
    nn::LayerNorm<T>::visit(self.ln_final, f, prefix + "ln_final.");
    if (self.options_.output_dim > 0) nn::Linear<T>::visit(self.head, f, prefix + "head.");
  }

 private:
  template <class I>
  Tensor<T, 3> tokens(std::string_view fn, const I& ids) const {
    const Index L = ids.shape()[1];
    if (L < 1 || L > options_.context_length)
      detail::raise<ShapeError>(
          fn, "argument 'ids' has shape ", detail::shape_string(ids.shape()),
          ", expected [batch, L] with 1 <= L <= context_length = ", options_.context_length);
    Tensor<T, 3> x = embed.forward(ids);  // [B, L, width]
    encoder.forward_into(x, x, {.is_causal = options_.causal});
    return x;
  }

  template <class V>
  Index pool_index(std::string_view fn, const V& ids, Index b) const {
    const Index L = ids.dim(1);
    switch (options_.pooling) {
      case TextPooling::argmax: {
        Index best = 0;  // the first of equal maxima, as torch.argmax
        for (Index l = 1; l < L; ++l)
          if (ids(b, l) > ids(b, best)) best = l;
        return best;
      }
      case TextPooling::eos:
        for (Index l = 0; l < L; ++l)
          if (static_cast<Index>(ids(b, l)) == options_.eos_token_id) return l;
        detail::raise<ValueError>(fn, "row ", b, " of argument 'ids' holds no end-of-text token ",
                                  options_.eos_token_id,
                                  ", which pooling = eos reads the embedding from");
      case TextPooling::last:
        return L - 1;
    }
    return L - 1;
  }

  static const TextTransformerOptions& checked(const TextTransformerOptions& o) {
    constexpr std::string_view fn = "tessera::models::TextTransformer";
    if (o.vocab_size <= 0 || o.context_length <= 0)
      detail::raise<ValueError>(fn, "vocab_size is ", o.vocab_size, " and context_length ",
                                o.context_length, ", expected both > 0");
    if (o.layers < 1) detail::raise<ValueError>(fn, "layers is ", o.layers, ", expected >= 1");
    if (o.width <= 0 || o.heads <= 0 || o.width % o.heads != 0)
      detail::raise<ValueError>(fn, "width is ", o.width, " and heads ", o.heads,
                                ", expected heads > 0 dividing width");
    if (o.mlp_dim <= 0) detail::raise<ValueError>(fn, "mlp_dim is ", o.mlp_dim, ", expected > 0");
    if (o.output_dim < 0)
      detail::raise<ValueError>(fn, "output_dim is ", o.output_dim, ", expected >= 0");
    if (o.pooling != TextPooling::argmax && o.pooling != TextPooling::eos &&
        o.pooling != TextPooling::last)
      detail::raise<ValueError>(fn, "pooling is TextPooling(", static_cast<int>(o.pooling),
                                "), expected argmax, eos or last");
    return o;
  }

  TextTransformerOptions options_{};
};

}  // namespace tessera::models

// The compiled mode's instantiations (core/config.hpp), unless its library was built without
// models (no nlohmann_json).
#ifndef TESSERA_COMPILED_WITHOUT_MODELS
TESSERA_INSTANTIATE_FLOATING(class tessera::models::TextTransformer)
#endif
