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
