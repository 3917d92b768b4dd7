// tessera: fusion::BottleneckFusion, the Multimodal Bottleneck Transformer (MBT; Nagrani et al.
// 2021, Attention Bottlenecks for Multimodal Fusion, NeurIPS). Modalities exchange information
// only through a few shared bottleneck tokens z [batch, n_bottlenecks, E]:
//
//   layer l < fusion_layer:   x_m = layer_m^l(x_m)                       each modality alone
//   layer l >= fusion_layer:  [x_m ; z_m] = layer_m^l([x_m ; z])        each modality with z
//                             z = mean_m z_m
//
// z starts as the learned `bottleneck` tokens (the same for every batch element). Each modality
// keeps its own tokens and contributes its copy of the bottleneck; the next layer sees their mean.
// fusion_layer = 0 fuses from the first layer; fusion_layer = num_layers is late fusion (the
// modalities' encoders run independently), and n_bottlenecks = 0 has no path between modalities
// at all. A modality's key-padding mask covers its own tokens; the bottleneck tokens are never
// masked. With shared_weights every modality runs one encoder.
//
// State dict keys: bottleneck [1, n_bottlenecks, E], encoders.<m>.layers.<i>.* (one encoder,
// encoders.0, with shared_weights) and encoders.<m>.norm.* with encoder.final_norm (applied to
// each modality's tokens after the last layer, not to z). Initialisation: bottleneck N(0, 0.02).
//
// Training (nn/training.hpp): forward_train returns forward's state and a Context; backward takes
// dL/dtokens (one per modality) and, optionally, dL/dbottleneck of the last z, and differentiates
// exactly the update above, layer by layer from the last: a fusion layer's z = mean_m z_m gives
// each modality's stream dL/dz / M at its bottleneck outputs, and the z that layer read collects
// the sum of every stream's gradient at its bottleneck inputs. The learned `bottleneck` (repeated
// over the batch) gets the sum over the batch of the gradient at the first z, i.e. the sum over
// every modality stream and every layer that reads it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/fusion/token_sequences.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::fusion {

struct BottleneckFusionOptions {
  nn::TransformerEncoderOptions encoder;  // each modality's layers: layer (d_model = E), num_layers
  Index num_modalities = 2;               // > 0
  Index fusion_layer = 0;       // first layer that sees the bottleneck, in [0, num_layers]
  Index n_bottlenecks = 4;      // >= 0
  bool shared_weights = false;  // one encoder for every modality
  std::uint64_t seed = 0;       // bottleneck initialisation
};

// What the layers carry: each modality's tokens and the current bottleneck.
template <class T>
struct BottleneckFusionState {
  std::vector<Tensor<T, 3>> tokens;  // [batch, L_m, E] per modality
  Tensor<T, 3> bottleneck;           // z: [batch, n_bottlenecks, E]
};

template <class T>
class BottleneckFusion : public nn::Module<BottleneckFusion<T>> {
 public:
  std::vector<nn::TransformerEncoder<T>> encoders;  // one per modality, or one with shared_weights
  nn::Parameter<T, 3> bottleneck;                   // [1, n_bottlenecks, E]

  BottleneckFusion() = default;
  explicit BottleneckFusion(const BottleneckFusionOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::fusion::BottleneckFusion";
    detail::check_fusion_options(fn, o.num_modalities, o.encoder);
    if (o.encoder.num_layers < 1)
      detail::raise<ValueError>(fn, "encoder.num_layers is ", o.encoder.num_layers,
                                ", expected a value >= 1");
    if (o.fusion_layer < 0 || o.fusion_layer > o.encoder.num_layers)
      detail::raise<ValueError>(fn, "fusion_layer is ", o.fusion_layer,
                                ", expected a value in [0, ", o.encoder.num_layers,
                                "] (num_layers = ", o.encoder.num_layers, ")");
    if (o.n_bottlenecks < 0)
      detail::raise<ValueError>(fn, "n_bottlenecks is ", o.n_bottlenecks,
                                ", expected a value >= 0");
    const Index n_encoders = o.shared_weights ? 1 : o.num_modalities;
    for (Index m = 0; m < n_encoders; ++m) {
      nn::TransformerEncoderOptions eo = o.encoder;
      eo.layer.seed = o.encoder.layer.seed + 100000 * static_cast<std::uint64_t>(m);
      encoders.emplace_back(eo);
    }
    bottleneck = nn::Parameter<T, 3>(Shape<3>{1, o.n_bottlenecks, embed_dim()});
    tessera::detail::init_normal(bottleneck, o.seed, 0.0, 0.02);
  }

  const BottleneckFusionOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.encoder.layer.d_model; }
  Index num_modalities() const noexcept { return options_.num_modalities; }

  // Floating-point operations of forward per batch element for sequences of `lengths` tokens
  // (one per modality), counted as fusion::encoder_layer_flops: layers before fusion_layer on
  // L_m, the others on L_m + n_bottlenecks. Attention grows with (L_m + n_bottlenecks)^2 per
  // modality, not with (sum L_m)^2 as in early fusion.
  double forward_flops(const std::vector<Index>& lengths) const {
    detail::check_flops_lengths("tessera::fusion::BottleneckFusion::forward_flops", lengths,
                                num_modalities());
    const auto& layer = options_.encoder.layer;
    const double before = static_cast<double>(fusion_layer()),
                 after = static_cast<double>(num_layers() - fusion_layer());
    double flops = 0;
    for (Index L : lengths)
      flops += before * encoder_layer_flops(static_cast<double>(L), layer) +
               after * encoder_layer_flops(
                           static_cast<double>(L) + static_cast<double>(n_bottlenecks()), layer);
    return flops;
  }
  Index num_layers() const noexcept { return options_.encoder.num_layers; }
  Index fusion_layer() const noexcept { return options_.fusion_layer; }
  Index n_bottlenecks() const noexcept { return options_.n_bottlenecks; }
  // The encoder modality m runs (the one encoder with shared_weights).
  const nn::TransformerEncoder<T>& encoder(Index m) const {
    return encoders[options_.shared_weights ? 0 : static_cast<std::size_t>(m)];
  }

  // inputs: num_modalities sequences [batch, L_m, E]; key_padding_masks: none or one per
  // modality ([batch, L_m]) -> every modality's tokens after the last layer (and the final norm)
  // and the last bottleneck.
  BottleneckFusionState<T> forward(const TokenSequences<T>& inputs,
                                   const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::BottleneckFusion::forward";
    BottleneckFusionState<T> state = start(fn, inputs, key_padding_masks);
    for (Index l = 0; l < num_layers(); ++l) run_layer(fn, l, state, key_padding_masks);
    if (options_.encoder.final_norm)
      for (Index m = 0; m < num_modalities(); ++m)
        encoder(m).norm.forward_into(state.tokens[m], state.tokens[m]);
    return state;
  }

  // The state before layer 0: copies of the inputs, and the learned bottleneck for every batch
  // element. Checks the inputs as forward does.
  BottleneckFusionState<T> initial_state(const TokenSequences<T>& inputs,
                                         const KeyPaddingMasks& key_padding_masks = {}) const {
    return start("tessera::fusion::BottleneckFusion::initial_state", inputs, key_padding_masks);
  }

  // Runs layer `layer` (in [0, num_layers)) on `state`, as forward does; the final norm is not
  // applied. The state must come from initial_state (or earlier layers) with the same masks.
  void forward_layer(Index layer, BottleneckFusionState<T>& state,
                     const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::BottleneckFusion::forward_layer";
    check_parameters(fn);
    run_layer(fn, layer, state, key_padding_masks);
  }

  // What backward needs: every layer's context on every modality's stream (they hold copies of
  // the masks), the final norms' contexts, and the sequences' lengths.
  struct Context {
    // layers[l][m]: layer l on modality m's tokens [batch, L_m, E] (l < fusion_layer) or on
    // [x_m ; z] [batch, L_m + n_bottlenecks, E]
    std::vector<std::vector<typename nn::TransformerEncoderLayer<T>::Context>> layers;
    std::vector<typename nn::LayerNorm<T>::template Context<3>> norms;  // with final_norm
    std::vector<Index> lengths;                                         // L_m
    Index batch = 0;
  };

  // The training forward: forward's state (to rounding) and the context for backward. Same
  // arguments and errors as forward.
  nn::Trained<BottleneckFusionState<T>, Context> forward_train(
      const TokenSequences<T>& inputs, const KeyPaddingMasks& key_padding_masks = {}) const {
    constexpr std::string_view fn = "tessera::fusion::BottleneckFusion::forward_train";
    nn::Trained<BottleneckFusionState<T>, Context> t;
    BottleneckFusionState<T>& state = t.output;
    Context& c = t.context;
    state = start(fn, inputs, key_padding_masks);
    const Index M = num_modalities(), B = state.bottleneck.dim(0), nb = n_bottlenecks();
    for (const auto& x : state.tokens) c.lengths.push_back(x.dim(1));
    c.batch = B;
    auto mask = [&](Index m) {
      return key_padding_masks.empty() ? std::nullopt : key_padding_masks[m];
    };
    for (Index l = 0; l < num_layers(); ++l) {
      auto& contexts = c.layers.emplace_back();
      if (l < fusion_layer()) {
        for (Index m = 0; m < M; ++m) {
          auto y = encoder(m).layers[l].forward_train(state.tokens[m],
                                                      {.src_key_padding_mask = mask(m)});
          state.tokens[m] = std::move(y.output);
          contexts.push_back(std::move(y.context));
        }
        continue;
      }
      // z_sum: [B, nb, E], the sum over modalities of their bottleneck outputs
      Tensor<T, 3> z_sum(state.bottleneck.shape());
      for (Index m = 0; m < M; ++m) {
        const Index L = c.lengths[m];
        // joint: [B, L + nb, E] = [x_m ; z]; its padding [B, L + nb]: x_m's, then nb zeros
        const TensorMap<const T, 3> parts[] = {cview(state.tokens[m]), cview(state.bottleneck)};
        const Tensor<T, 3> joint = detail::concat_tokens<T>(parts);
        const std::optional<Mask> own = mask(m);
        const Index lengths[] = {L};
        const auto padding = detail::concat_key_padding<T>(fn, std::span(&own, 1), lengths, B, nb);
        nn::TransformerEncoderLayerForwardOptions fo;
        if (padding) fo.src_key_padding_mask = Mask::additive(*padding);
        // out: [B, L + nb, E] (the layer's context keeps its own copy of the padding)
        auto out = encoder(m).layers[l].forward_train(joint, fo);
        state.tokens[m] = detail::slice_tokens<T>(out.output, 0, L);
        const Tensor<T, 3> z_m = detail::slice_tokens<T>(out.output, L, nb);  // [B, nb, E]
        z_sum.as_array() += z_m.as_array();
        contexts.push_back(std::move(out.context));
      }
      z_sum.as_array() /= static_cast<T>(M);
      state.bottleneck = std::move(z_sum);
    }
    if (options_.encoder.final_norm)
      for (Index m = 0; m < M; ++m) {
        auto y = encoder(m).norm.forward_train(state.tokens[m]);
        state.tokens[m] = std::move(y.output);
        c.norms.push_back(std::move(y.context));
      }
    return t;
  }

  // Given forward_train's context, dL/dtokens (one [batch, L_m, E] per modality, the state's
  // tokens) and optionally dL/dbottleneck ([batch, n_bottlenecks, E], the state's last z; none
  // means zero): adds the gradient of every parameter (bottleneck, encoders.<m>.*; with
  // shared_weights every modality's into the one encoder) and returns dL/dinputs, one
  // [batch, L_m, E] per modality. Throws ShapeError when a gradient's shape is not its output's,
  // ValueError when grad_tokens holds another count of tensors or for a context this module's
  // forward_train cannot have made.
  TokenSequenceGrads<T> backward(const Context& ctx, const TokenSequences<T>& grad_tokens,
                                 std::optional<TensorMap<const T, 3>> grad_bottleneck = {}) {
    constexpr std::string_view fn = "tessera::fusion::BottleneckFusion::backward";
    check_parameters(fn);
    const Index M = num_modalities(), B = ctx.batch, nb = n_bottlenecks(), E = embed_dim();
    // ---- the context: num_layers x M layer contexts of the streams' shapes ----
    bool ok = static_cast<Index>(ctx.lengths.size()) == M &&
              static_cast<Index>(ctx.layers.size()) == num_layers() &&
              static_cast<Index>(ctx.norms.size()) == (options_.encoder.final_norm ? M : 0);
    for (Index l = 0; ok && l < num_layers(); ++l) {
      ok = static_cast<Index>(ctx.layers[l].size()) == M;
      for (Index m = 0; ok && m < M; ++m)
        ok = ctx.layers[l][m].norm_first == options_.encoder.layer.norm_first &&
             ctx.layers[l][m].norm1.input.shape() ==
                 Shape<3>{B, ctx.lengths[m] + (l < fusion_layer() ? 0 : nb), E};
    }
    for (std::size_t m = 0; ok && m < ctx.norms.size(); ++m)
      ok = ctx.norms[m].input.shape() == Shape<3>{B, ctx.lengths[m], E};
    if (!ok)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    std::vector<Shape<3>> expected;
    for (Index L : ctx.lengths) expected.push_back({B, L, E});
    detail::check_grad_sequences<T>(fn, "grad_tokens", grad_tokens, expected);
    const Shape<3> z_shape{B, nb, E};
    if (grad_bottleneck)
      detail::check_shape_equal(fn, "grad_bottleneck", grad_bottleneck->shape(), z_shape);

    // dx[m]: dL/d(modality m's tokens) [B, L_m, E]; dz: dL/dz [B, nb, E], after the current layer
    std::vector<Tensor<T, 3>> dx;
    for (Index m = 0; m < M; ++m)
      dx.push_back(options_.encoder.final_norm
                       ? encoder_of(m).norm.backward(ctx.norms[m], grad_tokens[m])
                       : Tensor<T, 3>(grad_tokens[m]));
    Tensor<T, 3> dz = grad_bottleneck ? Tensor<T, 3>(*grad_bottleneck) : Tensor<T, 3>(z_shape);
    for (Index l = num_layers(); l-- > 0;) {
      if (l < fusion_layer()) {
        for (Index m = 0; m < M; ++m)
          dx[m] = encoder_of(m).layers[l].backward(ctx.layers[l][m], dx[m]);
        continue;
      }
      // z = mean_m z_m: each stream's bottleneck outputs get dz / M; the z this layer read gets
      // the sum of the streams' gradients at their bottleneck inputs
      Tensor<T, 3> dz_m(dz);
      dz_m.as_array() /= static_cast<T>(M);
      Tensor<T, 3> dz_in(z_shape);
      for (Index m = 0; m < M; ++m) {
        const Index L = ctx.lengths[m];
        // d_out: [B, L + nb, E] = [dx_m ; dz / M]
        const TensorMap<const T, 3> parts[] = {cview(dx[m]), cview(dz_m)};
        const Tensor<T, 3> d_joint =
            encoder_of(m).layers[l].backward(ctx.layers[l][m], detail::concat_tokens<T>(parts));
        dx[m] = detail::slice_tokens<T>(d_joint, 0, L);
        const Tensor<T, 3> dz_from_m = detail::slice_tokens<T>(d_joint, L, nb);  // [B, nb, E]
        dz_in.as_array() += dz_from_m.as_array();
      }
      dz = std::move(dz_in);
    }
    // z before layer 0 is the learned bottleneck repeated over the batch
    auto& db = detail::grad_of(bottleneck);
    auto db0 = db[0];  // [nb, E]
    for (Index b = 0; b < B; ++b) {
      const auto dzb = dz[b];  // [nb, E]
      db0.as_array() += dzb.as_array();
    }
    return TokenSequenceGrads<T>{std::move(dx)};
  }

  // Throws, naming `fn`, unless the encoders (ValueError) and every parameter (ShapeError, named
  // as `prefix` + bottleneck, encoders.<m>.*) have the shapes the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_parameter(fn, prefix, "bottleneck", bottleneck,
                            {1, n_bottlenecks(), embed_dim()});
    detail::check_fusion_encoders(fn, prefix, encoders,
                                  options_.shared_weights ? 1 : num_modalities(), options_.encoder);
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "bottleneck", self.bottleneck);
    for (std::size_t m = 0; m < self.encoders.size(); ++m)
      nn::TransformerEncoder<T>::visit(self.encoders[m], f,
                                       prefix + "encoders." + std::to_string(m) + ".");
  }

 private:
  // The encoder modality m runs, for backward (which adds to its gradients).
  nn::TransformerEncoder<T>& encoder_of(Index m) {
    return encoders[options_.shared_weights ? 0 : static_cast<std::size_t>(m)];
  }

  // initial_state, with the errors naming `fn`.
  BottleneckFusionState<T> start(std::string_view fn, const TokenSequences<T>& inputs,
                                 const KeyPaddingMasks& key_padding_masks) const {
    check_parameters(fn);
    detail::check_modality_inputs<T>(fn, inputs, num_modalities(), embed_dim(), key_padding_masks);
    const Index B = inputs[0].dim(0), nb = n_bottlenecks(), E = embed_dim();
    BottleneckFusionState<T> state;
    for (const auto& x : inputs) state.tokens.emplace_back(x);
    // z: [B, nb, E], the learned tokens repeated over the batch
    state.bottleneck = Tensor<T, 3>(Shape<3>{B, nb, E}, uninitialized);
    for (Index b = 0; b < B; ++b) state.bottleneck[b].assign(bottleneck.value[0]);
    return state;
  }

  // forward_layer on checked parameters, with the errors naming `fn`.
  void run_layer(std::string_view fn, Index layer, BottleneckFusionState<T>& state,
                 const KeyPaddingMasks& key_padding_masks) const {
    const Index M = num_modalities();
    if (layer < 0 || layer >= num_layers())
      detail::raise<IndexError>(fn, "argument 'layer' is ", layer, ", expected a value in [0, ",
                                num_layers(), ")");
    TokenSequences<T> views(state.tokens.begin(), state.tokens.end());
    detail::check_modality_inputs<T>(fn, views, M, embed_dim(), key_padding_masks, "state.tokens");
    const Index expected[] = {views[0].dim(0), n_bottlenecks(), embed_dim()};
    detail::check_shape_equal(fn, "state.bottleneck", state.bottleneck.shape(), expected);
    auto mask = [&](Index m) {
      return key_padding_masks.empty() ? std::nullopt : key_padding_masks[m];
    };
    if (layer < fusion_layer()) {
      for (Index m = 0; m < M; ++m)
        state.tokens[m] =
            encoder(m).layers[layer].forward(state.tokens[m], {.src_key_padding_mask = mask(m)});
      return;
    }
    const Index B = state.bottleneck.dim(0), nb = n_bottlenecks();
    // z_sum: [B, nb, E], the sum over modalities of their bottleneck outputs
    Tensor<T, 3> z_sum(state.bottleneck.shape());
    for (Index m = 0; m < M; ++m) {
      const Index L = state.tokens[m].dim(1);
      // joint: [B, L + nb, E] = [x_m ; z]; its padding [B, L + nb]: x_m's, then nb zeros
      const TensorMap<const T, 3> parts[] = {cview(state.tokens[m]), cview(state.bottleneck)};
      const Tensor<T, 3> joint = detail::concat_tokens<T>(parts);
      const std::optional<Mask> own = mask(m);
      const Index lengths[] = {L};
      const auto padding = detail::concat_key_padding<T>(fn, std::span(&own, 1), lengths, B, nb);
      nn::TransformerEncoderLayerForwardOptions fo;
      if (padding) fo.src_key_padding_mask = Mask::additive(*padding);
      // out: [B, L + nb, E]
      const Tensor<T, 3> out = encoder(m).layers[layer].forward(joint, fo);
      state.tokens[m] = detail::slice_tokens<T>(out, 0, L);
      const Tensor<T, 3> z_m = detail::slice_tokens<T>(out, L, nb);  // [B, nb, E]
      z_sum.as_array() += z_m.as_array();
    }
    z_sum.as_array() /= static_cast<T>(M);
    state.bottleneck = std::move(z_sum);
  }

  BottleneckFusionOptions options_{};
};

}  // namespace tessera::fusion

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::fusion::BottleneckFusion)
