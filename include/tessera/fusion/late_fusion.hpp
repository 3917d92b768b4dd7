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
//
// Training (nn/training.hpp): forward_train returns forward's output (fused and pooled) and a
// Context; backward takes dL/dfused and, optionally, dL/dpooled (for a loss that also reads the
// per-modality features), and runs the combination's backward (softmax's Jacobian for
// weighted_sum: dl_j = s_j (dL/ds_j - sum_m s_m dL/ds_m)), the pooling's (token 0, or 1/n on each
// token that is not padding) and each encoder's.
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
#include "tessera/nn/training.hpp"
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
    check_call(fn, inputs, key_padding_masks);
    const Index M = options_.num_modalities, E = embed_dim(), B = inputs[0].dim(0);
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

  // What backward needs: each encoder's context (they hold copies of the masks), each modality's
  // padding as an owned additive mask [batch, L_m] (mean pooling), the pooled features and the
  // combination's weights (mean, weighted_sum), or the head's context (concat).
  struct Context {
    std::vector<typename nn::TransformerEncoder<T>::Context> encoders;  // one per modality
    std::vector<std::optional<Tensor<T, 2>>> padding;  // [batch, L_m], with mean pooling
    std::vector<Tensor<T, 2>> pooled;                  // h_m [batch, E], with weighted_sum
    Tensor<T, 1> weights;                              // [M]; empty with concat
    typename nn::Linear<T>::Context head;              // with concat
  };

  // The training forward: forward's output (to rounding) and the context for backward. Same
  // arguments and errors as forward.
  nn::Trained<LateFusionOutput<T>, Context> forward_train(
      const TokenSequences<T>& inputs, const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::LateFusion::forward_train";
    check_call(fn, inputs, key_padding_masks);
    const Index M = options_.num_modalities, E = embed_dim(), B = inputs[0].dim(0);
    nn::Trained<LateFusionOutput<T>, Context> t;
    LateFusionOutput<T>& r = t.output;
    Context& c = t.context;
    for (Index m = 0; m < M; ++m) {
      const std::optional<Mask> mask =
          key_padding_masks.empty() ? std::nullopt : key_padding_masks[m];
      // h: [batch, L_m, E]
      auto h = encoders[m].forward_train(
          inputs[m], nn::TransformerEncoderLayerForwardOptions{.src_key_padding_mask = mask});
      c.encoders.push_back(std::move(h.context));
      r.pooled.push_back(pool(fn, h.output, mask));
      if (options_.pooling == Pooling::mean) {
        const Index lengths[] = {inputs[m].dim(1)};
        c.padding.push_back(detail::concat_key_padding<T>(fn, std::span(&mask, 1), lengths, B));
      }
    }
    if (options_.combine == Combine::concat) {
      // features: [batch, M E] = [h_0 , ... , h_{M-1}]
      Tensor<T, 2> features(Shape<2>{B, M * E}, uninitialized);
      for (Index m = 0; m < M; ++m)
        features.as_matrix().middleCols(m * E, E) = r.pooled[m].as_matrix();
      auto f = head.forward_train(features);
      r.fused = std::move(f.output);
      c.head = std::move(f.context);
      return t;
    }
    // weights: [M], 1/M each for mean
    c.weights = Tensor<T, 1>(Shape<1>{M});
    if (options_.combine == Combine::weighted_sum)
      softmax_into(fusion_weights.value, c.weights);
    else
      c.weights.setConstant(T(1) / static_cast<T>(M));
    r.fused = Tensor<T, 2>(Shape<2>{B, E});
    for (Index m = 0; m < M; ++m) r.fused.as_array() += c.weights(m) * r.pooled[m].as_array();
    if (options_.combine == Combine::weighted_sum) c.pooled = r.pooled;
    return t;
  }

  // Given forward_train's context, dL/dfused ([batch, E], or [batch, D] with concat) and, when a
  // loss also reads the pooled features, dL/dpooled (none, or one [batch, E] per modality): adds
  // the gradient of every parameter (the encoders', fusion_weights, head.*) and returns
  // dL/dinputs, one [batch, L_m, E] per modality (zero on the tokens pooling does not read:
  // cls reads token 0, mean skips padding). Throws ShapeError when a gradient's shape is not its
  // output's, ValueError when grad_pooled holds another count of tensors or for a context this
  // module's forward_train cannot have made.
  template <TensorLike G>
  TokenSequenceGrads<T> backward(const Context& ctx, const G& grad_fused,
                                 const std::vector<TensorMap<const T, 2>>& grad_pooled = {}) {
    static_assert(rank_v<G> == 2 && std::is_same_v<scalar_t<G>, T>,
                  "fusion::LateFusion::backward takes a [batch, E] (concat: [batch, D]) gradient "
                  "of the module's scalar type");
    constexpr std::string_view fn = "tessera::fusion::LateFusion::backward";
    check_parameters(fn);
    const Index M = options_.num_modalities, E = embed_dim();
    // ---- the context: M encoders' contexts of one batch, and what the combination saved ----
    bool ok = static_cast<Index>(ctx.encoders.size()) == M &&
              ctx.padding.size() ==
                  (options_.pooling == Pooling::mean ? ctx.encoders.size() : std::size_t{0});
    Index B = 0;
    for (std::size_t m = 0; ok && m < ctx.encoders.size(); ++m) {
      ok = static_cast<Index>(ctx.encoders[m].layers.size()) == options_.encoder.num_layers;
      if (!ok) break;
      const auto& s = ctx.encoders[m].layers.front().norm1.input.shape();
      if (m == 0) B = s[0];
      ok = s[0] == B && s[2] == E &&
           (options_.pooling == Pooling::mean
                ? !ctx.padding[m] || ctx.padding[m]->shape() == Shape<2>{B, s[1]}
                : s[1] >= 1);
    }
    if (options_.combine == Combine::concat)
      ok = ok && ctx.head.input.shape() == Shape<2>{B, M * E};
    else
      ok = ok && ctx.weights.shape() == Shape<1>{M} &&
           (options_.combine != Combine::weighted_sum ||
            (static_cast<Index>(ctx.pooled.size()) == M &&
             std::all_of(ctx.pooled.begin(), ctx.pooled.end(), [&](const auto& h) {
               return h.shape() == Shape<2>{B, E};
             })));
    if (!ok)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    const Index g_expected[] = {B, output_dim()};
    detail::check_shape_equal(fn, "grad_fused", cview(grad_fused).shape(), g_expected);
    if (!grad_pooled.empty()) {
      if (static_cast<Index>(grad_pooled.size()) != M)
        detail::raise<ValueError>(fn, "argument 'grad_pooled' holds ", grad_pooled.size(),
                                  " tensors, expected none or ", M, " (one per modality)");
      const Index p_expected[] = {B, E};
      for (Index m = 0; m < M; ++m)
        detail::check_shape_equal(fn, "grad_pooled[" + std::to_string(m) + "]",
                                  grad_pooled[m].shape(), p_expected);
    }

    // ---- the combination's backward: dh_m [batch, E] ----
    const auto g = cview(grad_fused);
    std::vector<Tensor<T, 2>> dh;
    if (options_.combine == Combine::concat) {
      // d_features [batch, M E] = dfused W_head; columns [m E, (m + 1) E) are h_m's
      const Tensor<T, 2> d_features = head.backward(ctx.head, grad_fused);
      for (Index m = 0; m < M; ++m) {
        dh.emplace_back(Shape<2>{B, E}, uninitialized);
        dh.back().as_matrix() = d_features.as_matrix().middleCols(m * E, E);
      }
    } else {
      for (Index m = 0; m < M; ++m) {
        dh.emplace_back(Shape<2>{B, E}, uninitialized);
        dh.back().as_array() = ctx.weights(m) * g.as_array();
      }
      if (options_.combine == Combine::weighted_sum) {
        // ds_m = sum(dfused * h_m); dlogit_j = s_j (ds_j - sum_m s_m ds_m)
        std::vector<T> ds(static_cast<std::size_t>(M));
        T mean = 0;
        for (Index m = 0; m < M; ++m) {
          ds[m] = (g.as_array() * ctx.pooled[m].as_array()).sum();
          mean += ctx.weights(m) * ds[m];
        }
        auto& dl = detail::grad_of(fusion_weights);
        for (Index m = 0; m < M; ++m) dl(m) += ctx.weights(m) * (ds[m] - mean);
      }
    }
    if (!grad_pooled.empty())
      for (Index m = 0; m < M; ++m) dh[m].as_array() += grad_pooled[m].as_array();

    // ---- pooling's and the encoders' backward ----
    TokenSequenceGrads<T> r;
    for (Index m = 0; m < M; ++m) {
      const auto& s = ctx.encoders[m].layers.front().norm1.input.shape();
      const Index L = s[1];
      // d_tokens: [batch, L_m, E], nonzero where pooling read the token
      Tensor<T, 3> d_tokens(s);
      constexpr T ninf = -std::numeric_limits<T>::infinity();
      for (Index b = 0; b < B; ++b) {
        auto rows = d_tokens[b].as_matrix();  // [L, E]
        if (options_.pooling == Pooling::cls) {
          rows.row(0) = dh[m][b].as_matrix();
          continue;
        }
        const auto& pad = ctx.padding[m];
        Index n = 0;
        for (Index t = 0; t < L; ++t) n += !pad || (*pad)(b, t) != ninf;
        if (n == 0) continue;
        for (Index t = 0; t < L; ++t)
          if (!pad || (*pad)(b, t) != ninf) rows.row(t) = dh[m][b].as_matrix() / static_cast<T>(n);
      }
      r.inputs.push_back(encoders[m].backward(ctx.encoders[m], d_tokens));
    }
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
  // The checks of forward and forward_train: the parameters, the inputs and their masks, and at
  // least one token per sequence with cls pooling.
  void check_call(std::string_view fn, const TokenSequences<T>& inputs,
                  const KeyPaddingMasks& key_padding_masks) const {
    check_parameters(fn);
    detail::check_modality_inputs<T>(fn, inputs, options_.num_modalities, embed_dim(),
                                     key_padding_masks);
    if (options_.pooling == Pooling::cls)
      for (Index m = 0; m < options_.num_modalities; ++m)
        if (inputs[m].dim(1) == 0)
          detail::raise<ShapeError>(fn, "argument 'inputs[", m, "]' has shape ",
                                    detail::shape_string(inputs[m].shape()),
                                    ", expected at least one token (cls pooling reads token 0)");
  }

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

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::fusion::LateFusion)
