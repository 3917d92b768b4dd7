// tessera: fusion::EarlyFusion, one transformer over the tokens of every modality at once
// (single-stream fusion, as VisualBERT, ViLT and MBT's early-fusion baseline; Li et al. 2019,
// Kim et al. 2021, Nagrani et al. 2021):
//
//   x_m' = x_m + modality_embedding.weight[m]          each modality's tokens [batch, L_m, E]
//   out  = encoder([x_0' ; x_1' ; ... ; x_{M-1}'])      [batch, sum L_m, E]
//
// Every token attends to every token of every modality. The modalities' key-padding masks are
// concatenated in the same order, so padded tokens of any modality are never attended to.
// Modality m's outputs are the rows [L_0 + ... + L_{m-1}, ... + L_m) of each batch.
//
// State dict keys: modality_embedding.weight [num_modalities, E] (with modality_embedding),
// encoder.layers.<i>.* and encoder.norm.* (nn::TransformerEncoder's).
//
// Training (nn/training.hpp): forward_train returns forward's output and a Context (the modality
// embeddings' and the encoder's contexts, which own copies of the masks); backward runs the
// encoder's backward on dL/dout, splits the token gradient back into the modalities
// (concatenation's backward) and adds each modality's token sum to its embedding row.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/fusion/token_sequences.hpp"
#include "tessera/nn/modality_embedding.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::fusion {

struct EarlyFusionOptions {
  nn::TransformerEncoderOptions encoder;  // the shared encoder; encoder.layer.d_model = E
  Index num_modalities = 2;               // > 0
  bool modality_embedding = true;         // add a learned embedding per modality
  std::uint64_t seed = 0;                 // modality embedding initialisation
};

template <class T>
class EarlyFusion : public nn::Module<EarlyFusion<T>> {
 public:
  nn::ModalityEmbedding<T> modality_embedding;  // [num_modalities, E], with modality_embedding
  nn::TransformerEncoder<T> encoder;

  EarlyFusion() = default;
  explicit EarlyFusion(const EarlyFusionOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::fusion::EarlyFusion";
    detail::check_fusion_options(fn, o.num_modalities, o.encoder);
    encoder = nn::TransformerEncoder<T>(o.encoder);
    if (o.modality_embedding)
      modality_embedding = nn::ModalityEmbedding<T>(
          {.num_modalities = o.num_modalities, .embed_dim = embed_dim(), .seed = o.seed});
  }

  const EarlyFusionOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.encoder.layer.d_model; }
  Index num_modalities() const noexcept { return options_.num_modalities; }

  // Floating-point operations of forward per batch element for sequences of `lengths` tokens
  // (one per modality), counted as fusion::encoder_layer_flops: every layer runs on sum L_m.
  double forward_flops(const std::vector<Index>& lengths) const {
    detail::check_flops_lengths("tessera::fusion::EarlyFusion::forward_flops", lengths,
                                num_modalities());
    double total = 0;  // in double: a sum of Index lengths may overflow
    for (Index L : lengths) total += static_cast<double>(L);
    return static_cast<double>(options_.encoder.num_layers) *
           encoder_layer_flops(total, options_.encoder.layer);
  }

  // inputs: num_modalities sequences [batch, L_m, E]; key_padding_masks: none or one per
  // modality ([batch, L_m]) -> [batch, sum L_m, E].
  Tensor<T, 3> forward(const TokenSequences<T>& inputs,
                       const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::EarlyFusion::forward";
    check_parameters(fn);
    detail::check_modality_inputs<T>(fn, inputs, options_.num_modalities, embed_dim(),
                                     key_padding_masks);
    const Index B = inputs[0].dim(0);
    std::vector<Tensor<T, 3>> typed;  // x_m + modality_embedding[m]: [batch, L_m, E]
    TokenSequences<T> parts = inputs;
    std::vector<Index> lengths;
    for (std::size_t m = 0; m < inputs.size(); ++m) {
      lengths.push_back(inputs[m].dim(1));
      if (options_.modality_embedding)
        typed.push_back(modality_embedding.forward(inputs[m], static_cast<Index>(m)));
    }
    for (std::size_t m = 0; m < typed.size(); ++m) parts[m] = cview(typed[m]);
    // tokens: [batch, sum L_m, E]; padding: [batch, sum L_m] additive, or none
    const Tensor<T, 3> tokens = detail::concat_tokens<T>(parts);
    const auto padding = detail::concat_key_padding<T>(fn, key_padding_masks, lengths, B);
    nn::TransformerEncoderLayerForwardOptions fo;
    if (padding) fo.src_key_padding_mask = Mask::additive(*padding);
    return encoder.forward(tokens, fo);
  }

  // What backward needs: the sequences' lengths, the modality embeddings' contexts (with
  // modality_embedding) and the encoder's (which holds copies of the concatenated padding mask).
  struct Context {
    std::vector<Index> lengths;  // L_m
    std::vector<typename nn::ModalityEmbedding<T>::Context> modality_embedding;
    typename nn::TransformerEncoder<T>::Context encoder;
  };

  // The training forward: forward's output (to rounding) and the context for backward. Same
  // arguments and errors as forward.
  nn::Trained<Tensor<T, 3>, Context> forward_train(
      const TokenSequences<T>& inputs, const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::EarlyFusion::forward_train";
    check_parameters(fn);
    detail::check_modality_inputs<T>(fn, inputs, options_.num_modalities, embed_dim(),
                                     key_padding_masks);
    const Index B = inputs[0].dim(0);
    nn::Trained<Tensor<T, 3>, Context> r;
    Context& c = r.context;
    std::vector<Tensor<T, 3>> typed;  // x_m + modality_embedding[m]: [batch, L_m, E]
    TokenSequences<T> parts = inputs;
    for (std::size_t m = 0; m < inputs.size(); ++m) {
      c.lengths.push_back(inputs[m].dim(1));
      if (options_.modality_embedding) {
        auto e = modality_embedding.forward_train(inputs[m], static_cast<Index>(m));
        typed.push_back(std::move(e.output));
        c.modality_embedding.push_back(std::move(e.context));
      }
    }
    for (std::size_t m = 0; m < typed.size(); ++m) parts[m] = cview(typed[m]);
    // tokens: [batch, sum L_m, E]; padding: [batch, sum L_m] additive, or none (the encoder's
    // context keeps its own copy)
    const Tensor<T, 3> tokens = detail::concat_tokens<T>(parts);
    const auto padding = detail::concat_key_padding<T>(fn, key_padding_masks, c.lengths, B);
    nn::TransformerEncoderLayerForwardOptions fo;
    if (padding) fo.src_key_padding_mask = Mask::additive(*padding);
    auto e = encoder.forward_train(tokens, fo);
    r.output = std::move(e.output);
    c.encoder = std::move(e.context);
    return r;
  }

  // Given forward_train's context and dL/dout [batch, sum L_m, E]: adds the gradient of every
  // parameter (the encoder's, modality_embedding.weight) and returns dL/dinputs, one
  // [batch, L_m, E] per modality. Throws ShapeError when grad_output's shape is not the output's,
  // ValueError for a context this module's forward_train cannot have made.
  template <TensorLike G>
  TokenSequenceGrads<T> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "fusion::EarlyFusion::backward takes a [batch, sum L_m, E] gradient of the "
                  "module's scalar type");
    constexpr std::string_view fn = "tessera::fusion::EarlyFusion::backward";
    check_parameters(fn);
    const Index M = options_.num_modalities, E = embed_dim();
    bool ok = static_cast<Index>(ctx.lengths.size()) == M &&
              static_cast<Index>(ctx.encoder.layers.size()) == options_.encoder.num_layers &&
              ctx.modality_embedding.size() ==
                  (options_.modality_embedding ? ctx.lengths.size() : std::size_t{0});
    Shape<3> out_shape{};
    if (ok) {
      out_shape = ctx.encoder.layers.front().norm1.input.shape();
      Index total = 0;
      for (std::size_t m = 0; m < ctx.lengths.size(); ++m) {
        total += ctx.lengths[m];
        if (options_.modality_embedding)
          ok = ok && ctx.modality_embedding[m].shape == Shape<3>{out_shape[0], ctx.lengths[m], E} &&
               ctx.modality_embedding[m].modality == static_cast<Index>(m);
      }
      ok = ok && out_shape[1] == total && out_shape[2] == E;
    }
    if (!ok)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), out_shape);
    // d_tokens: [batch, sum L_m, E], split into the modalities' [batch, L_m, E]
    const Tensor<T, 3> d_tokens = encoder.backward(ctx.encoder, grad_output);
    TokenSequenceGrads<T> g{detail::split_tokens<T>(d_tokens, ctx.lengths)};
    if (options_.modality_embedding)
      for (std::size_t m = 0; m < g.inputs.size(); ++m)
        g.inputs[m] = modality_embedding.backward(ctx.modality_embedding[m], g.inputs[m]);
    return g;
  }

  // Throws, naming `fn`, unless the encoder's layers (ValueError) and every parameter (ShapeError,
  // named as `prefix` + modality_embedding.weight, encoder.*) have the shapes the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    if (options_.modality_embedding)
      modality_embedding.check_parameters(fn,
                                          detail::ParameterPrefix(prefix, "modality_embedding."));
    const auto& eo = encoder.options();
    if (eo.layer.d_model != embed_dim() || eo.num_layers != options_.encoder.num_layers)
      detail::raise<ValueError>(fn, "member '", prefix, "encoder' has d_model ", eo.layer.d_model,
                                " and num_layers ", eo.num_layers, ", expected ", embed_dim(),
                                " and ", options_.encoder.num_layers, " (options.encoder)");
    encoder.check_parameters(fn, detail::ParameterPrefix(prefix, "encoder."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    if (self.options_.modality_embedding)
      nn::ModalityEmbedding<T>::visit(self.modality_embedding, f, prefix + "modality_embedding.");
    nn::TransformerEncoder<T>::visit(self.encoder, f, prefix + "encoder.");
  }

 private:
  EarlyFusionOptions options_{};
};

}  // namespace tessera::fusion

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::fusion::EarlyFusion)
