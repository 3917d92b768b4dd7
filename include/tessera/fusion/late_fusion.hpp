// tessera: fusion::LateFusion, one transformer per modality and a combination of their pooled
// outputs (two-stream "late fusion", the baseline of MBT; Nagrani et al. 2021):
//
//   h_m = pool(encoders[m](x_m))                 [batch, E]: token 0 (cls) or the mean over the
//                                                 tokens that are not padding (mean)
//   out = mean_m h_m                             combine = mean
//       = sum_m softmax(fusion_weights)_m h_m    combine = weighted_sum (learned, normalised)
//       = head([h_0 , h_1 , ... , h_{M-1}])      combine = concat: [batch, M E] -> [batch, D]
//
// No token of one modality ever sees another's. A token counts as padding for the mean when its
// mask entry masks it out (true in Mask::blocked, false in Mask::allowed, -inf in an additive
// mask); a sequence of padding only pools to zeros.
//
// State dict keys: encoders.<m>.layers.<i>.* (and encoders.<m>.norm.*), fusion_weights [M] (with
// weighted_sum; logits, initialised to 0: equal weights), head.weight [D, M E] and head.bias [D]
// (with concat).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/fusion/token_sequences.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::fusion {

enum class Pooling { cls, mean };
enum class Combine { mean, weighted_sum, concat };

struct LateFusionOptions {
  nn::TransformerEncoderOptions encoder;  // each modality's encoder; encoder.layer.d_model = E
  Index num_modalities = 2;               // > 0
  Pooling pooling = Pooling::cls;
  Combine combine = Combine::mean;
  Index output_dim = 0;  // D, the concat head's outputs; 0 means E
  std::uint64_t seed = 0;
};

template <class T>
struct LateFusionOutput {
  Tensor<T, 2> fused;                // [batch, E], or [batch, D] with concat
  std::vector<Tensor<T, 2>> pooled;  // h_m: [batch, E] per modality
};

template <class T>
class LateFusion : public nn::Module<LateFusion<T>> {
 public:
  std::vector<nn::TransformerEncoder<T>> encoders;  // one per modality
  nn::Parameter<T, 1> fusion_weights;               // [M] logits, with weighted_sum
  nn::Linear<T> head;                               // [D, M E], with concat

  LateFusion() = default;
  explicit LateFusion(const LateFusionOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::fusion::LateFusion";
    detail::check_fusion_options(fn, o.num_modalities, o.encoder);
    if (o.output_dim < 0)
      detail::raise<ValueError>(fn, "output_dim is ", o.output_dim, ", expected a value >= 0");
    // An enum holds any value of its underlying type: Pooling(42) must not pool as the mean.
    if (o.pooling != Pooling::cls && o.pooling != Pooling::mean)
      detail::raise<ValueError>(fn, "pooling is Pooling(", static_cast<long long>(o.pooling),
                                "), expected Pooling::cls or Pooling::mean");
    if (o.combine != Combine::mean && o.combine != Combine::weighted_sum &&
        o.combine != Combine::concat)
      detail::raise<ValueError>(fn, "combine is Combine(", static_cast<long long>(o.combine),
                                "), expected Combine::mean, Combine::weighted_sum or "
                                "Combine::concat");
    const Index M = o.num_modalities, E = embed_dim();
    for (Index m = 0; m < M; ++m) {
      nn::TransformerEncoderOptions eo = o.encoder;
      eo.layer.seed = o.encoder.layer.seed + 100000 * static_cast<std::uint64_t>(m);
      encoders.emplace_back(eo);
    }
    if (o.combine == Combine::weighted_sum) fusion_weights = nn::Parameter<T, 1>(Shape<1>{M});
    if (o.combine == Combine::concat)
      head =
          nn::Linear<T>({.in_features = detail::checked_mul(M, E, fn, "num_modalities x d_model"),
                         .out_features = output_dim(),
                         .seed = o.seed});
  }

  const LateFusionOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.encoder.layer.d_model; }
  Index num_modalities() const noexcept { return options_.num_modalities; }

  // Floating-point operations of forward per batch element for sequences of `lengths` tokens
  // (one per modality), counted as fusion::encoder_layer_flops: each encoder on its own L_m, plus
  // the concat head's product.
  double forward_flops(const std::vector<Index>& lengths) const {
    detail::check_flops_lengths("tessera::fusion::LateFusion::forward_flops", lengths,
                                num_modalities());
    double flops = 0;
    for (Index L : lengths)
      flops += static_cast<double>(options_.encoder.num_layers) *
               encoder_layer_flops(static_cast<double>(L), options_.encoder.layer);
    if (options_.combine == Combine::concat)
      flops += 2.0 * static_cast<double>(num_modalities()) * static_cast<double>(embed_dim()) *
               static_cast<double>(output_dim());
    return flops;
  }
  Index output_dim() const noexcept {
    return options_.combine == Combine::concat && options_.output_dim > 0 ? options_.output_dim
                                                                          : embed_dim();
  }

  // inputs: num_modalities sequences [batch, L_m, E] (L_m >= 1 with cls pooling);
  // key_padding_masks: none or one per modality ([batch, L_m]).
  LateFusionOutput<T> forward(const TokenSequences<T>& inputs,
                              const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::LateFusion::forward";
    check_parameters(fn);
    detail::check_modality_inputs<T>(fn, inputs, options_.num_modalities, embed_dim(),
                                     key_padding_masks);
    const Index M = options_.num_modalities, E = embed_dim(), B = inputs[0].dim(0);
    if (options_.pooling == Pooling::cls)
      for (Index m = 0; m < M; ++m)
        if (inputs[m].dim(1) == 0)
          detail::raise<ShapeError>(fn, "argument 'inputs[", m, "]' has shape ",
                                    detail::shape_string(inputs[m].shape()),
                                    ", expected at least one token (cls pooling reads token 0)");
    LateFusionOutput<T> r;
    for (Index m = 0; m < M; ++m) {
      const std::optional<Mask> mask =
          key_padding_masks.empty() ? std::nullopt : key_padding_masks[m];
      // h: [batch, L_m, E]
      const Tensor<T, 3> h = encoders[m].forward(
          inputs[m], nn::TransformerEncoderLayerForwardOptions{.src_key_padding_mask = mask});
      r.pooled.push_back(pool(fn, h, mask));
    }
    if (options_.combine == Combine::concat) {
      // features: [batch, M E] = [h_0 , ... , h_{M-1}]
      Tensor<T, 2> features(Shape<2>{B, M * E}, uninitialized);
      for (Index m = 0; m < M; ++m)
        features.as_matrix().middleCols(m * E, E) = r.pooled[m].as_matrix();
      r.fused = head.forward(features);
      return r;
    }
    // weights: [M], 1/M each for mean
    Tensor<T, 1> weights(Shape<1>{M});
    if (options_.combine == Combine::weighted_sum)
      softmax_into(fusion_weights.value, weights);
    else
      weights.setConstant(T(1) / static_cast<T>(M));
    r.fused = Tensor<T, 2>(Shape<2>{B, E});
    for (Index m = 0; m < M; ++m) r.fused.as_array() += weights(m) * r.pooled[m].as_array();
    return r;
  }

  // Throws, naming `fn`, unless the encoders (ValueError) and every parameter (ShapeError, named
  // as `prefix` + encoders.<m>.*, fusion_weights, head.*) have the shapes the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_fusion_encoders(fn, prefix, encoders, options_.num_modalities, options_.encoder);
    if (options_.combine == Combine::weighted_sum)
      detail::check_parameter(fn, prefix, "fusion_weights", fusion_weights,
                              {options_.num_modalities});
    if (options_.combine == Combine::concat)
      head.check_parameters(fn, detail::ParameterPrefix(prefix, "head."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    for (std::size_t m = 0; m < self.encoders.size(); ++m)
      nn::TransformerEncoder<T>::visit(self.encoders[m], f,
                                       prefix + "encoders." + std::to_string(m) + ".");
    if (self.options_.combine == Combine::weighted_sum)
      f(prefix + "fusion_weights", self.fusion_weights);
    if (self.options_.combine == Combine::concat)
      nn::Linear<T>::visit(self.head, f, prefix + "head.");
  }

 private:
  // h: [batch, L, E] -> [batch, E]
  Tensor<T, 2> pool(std::string_view fn, const Tensor<T, 3>& h,
                    const std::optional<Mask>& mask) const {
    const Index B = h.dim(0), L = h.dim(1), E = h.dim(2);
    Tensor<T, 2> out(Shape<2>{B, E});
    if (options_.pooling == Pooling::cls) {
      for (Index b = 0; b < B; ++b) out[b].as_matrix() = h[b].as_matrix().row(0);
      return out;
    }
    const Index lengths[] = {L};
    const auto padding = detail::concat_key_padding<T>(fn, std::span(&mask, 1), lengths, B);
    constexpr T ninf = -std::numeric_limits<T>::infinity();
    for (Index b = 0; b < B; ++b) {
      const auto tokens = h[b].as_matrix();  // [L, E]
      auto sum = out[b].as_matrix();         // [1, E]
      Index n = 0;
      for (Index t = 0; t < L; ++t)
        if (!padding || (*padding)(b, t) != ninf) {
          sum += tokens.row(t);
          ++n;
        }
      if (n > 0) sum /= static_cast<T>(n);
    }
    return out;
  }

  LateFusionOptions options_{};
};

}  // namespace tessera::fusion
