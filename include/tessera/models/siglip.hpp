// tessera: models::SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"): an
// image tower and a text tower mapping into one embedding space, like CLIP, scored per pair with
// a learned scale AND bias and a sigmoid instead of a softmax over the texts:
//
//   auto m = tessera::models::load_siglip<float>("siglip-base-patch16-224/model.safetensors");
//   auto img = m.encode_image(pixels);        // [B, 768], pixels [B, 3, 224, 224] in [-1, 1]
//   auto txt = m.encode_text(ids);            // [N, 768], ids [N, 64] (padded to 64)
//   auto p = m.probabilities(img, txt);       // [B, N], each entry in (0, 1) on its own
//
// logits = exp(logit_scale) * cos(image, text) + logit_bias, and probabilities = sigmoid(logits):
// each is the model's probability that that image and that text match, independent of the other
// texts (transformers' SiglipModel.forward, and its documented `torch.sigmoid(logits_per_image)`).
// A row does NOT sum to 1; for a zero-shot classifier's choice take the argmax of a row.
//
// The checkpoints are Hugging Face's (transformers' SiglipModel, e.g.
// google/siglip-base-patch16-224, exported with save_pretrained(safe_serialization=True): a folder
// with model.safetensors and config.json). The towers (models/vision_transformer.hpp,
// text_transformer.hpp):
//   image  conv with bias, no class token (grid^2 positions), pre-norm blocks with q/k/v stacked
//          by the naming table, post_layernorm over every token, then the attention-pooling head
//          (models/map_head.hpp); its output (width) is the image embedding, no projection;
//   text   token + position embeddings, blocks without a causal mask, final_layer_norm, the last
//          position, `head` Linear(width, projection_size) with bias.
// Loading detects the layout (models/naming.hpp, hf_siglip_naming), reads every size the shapes
// give and checks it against the preset or config.json, as load_clip does.
//
// Parameters: visual.* (VisionTransformer with pooling = map), text.* (TextTransformer),
// logit_scale [1] (the log of the scale) and logit_bias [1], as transformers stores them.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

// nlohmann::json is a parameter type here: declared by json_fwd.hpp where the definitions are the
// library's (installs of nlohmann-json before 3.11 may lack that header), else defined.
#if defined(TESSERA_JSON_IN_LIBRARY) && __has_include(<nlohmann/json_fwd.hpp>)
#include <nlohmann/json_fwd.hpp>
#else
#include <nlohmann/json.hpp>
#endif

#include "tessera/contrastive/siglip_loss.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/models/architecture_check.hpp"
#include "tessera/models/loading.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/models/text_transformer.hpp"
#include "tessera/models/vision_transformer.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::models {

struct SigLIPOptions {
  VisionTransformerOptions vision;  // pooling map, output_dim 0: the embedding is `width` wide
  TextTransformerOptions text;      // output_dim (projection_size) = the vision width
  // Initial values when not loaded (Zhai et al. 2023, section 3.3: t' = log 10, b = -10).
  double logit_scale = 2.302585092994046;
  double logit_bias = -10.0;
};

template <class T>
class SigLIP : public nn::Module<SigLIP<T>> {
 public:
  VisionTransformer<T> visual;
  TextTransformer<T> text;
  nn::Parameter<T, 1> logit_scale;  // [1], log of the logits' scale
  nn::Parameter<T, 1> logit_bias;   // [1]

  SigLIP() = default;
  explicit SigLIP(const SigLIPOptions& o)
      : logit_scale(Shape<1>{1}), logit_bias(Shape<1>{1}), options_(checked(o)) {
    visual = VisionTransformer<T>(o.vision);
    text = TextTransformer<T>(o.text);
    logit_scale.value.data()[0] = static_cast<T>(o.logit_scale);
    logit_bias.value.data()[0] = static_cast<T>(o.logit_bias);
  }

  const SigLIPOptions& options() const noexcept { return options_; }
  // The joint embedding width: the image tower's output (its width without a projection).
  Index embed_dim() const noexcept { return visual.output_features(); }

  // images: [B, 3, image_size, image_size], normalised pixels -> [B, embed_dim] (not unit length;
  // transformers' get_image_features).
  template <TensorLike X>
  Tensor<T, 2> encode_image(const X& images) const {
    return visual.forward(images);
  }
  // ids: [N, L] token ids, L <= context_length -> [N, embed_dim] (not unit length;
  // get_text_features). The embedding is read at position L - 1: pad the ids to the context
  // length as SigLIP was trained (transformers: padding="max_length").
  template <TensorLike I>
  Tensor<T, 2> encode_text(const I& ids) const {
    return text.forward(ids);
  }

  // exp(logit_scale): the factor on cosine similarities.
  T scale() const { return std::exp(logit_scale.value.data()[0]); }
  // logit_bias: added after the scale.
  T bias() const { return logit_bias.value.data()[0]; }

  // scale() * cos(image i, text j) + bias(): [B, N] from image features [B, E] and text features
  // [N, E] (normalised here); transformers' logits_per_image.
  template <TensorLike A, TensorLike B>
  Tensor<T, 2> logits(const A& image_features, const B& text_features) const {
    constexpr std::string_view fn = "tessera::models::SigLIP::logits";
    const auto av = cview(image_features);
    const auto bv = cview(text_features);
    const Index e[] = {av.dim(0), embed_dim()};
    tessera::detail::check_shape_equal(fn, "image_features", av.shape(), e);
    const Index f[] = {bv.dim(0), embed_dim()};
    tessera::detail::check_shape_equal(fn, "text_features", bv.shape(), f);
    const Tensor<T, 2> a = l2_normalize(av), b = l2_normalize(bv);
    // [B, N] = [B, E] x [N, E]^T
    Tensor<T, 2> out = linear(a, b);
    out.as_array() = out.as_array() * scale() + bias();
    return out;
  }

  // One training step's loss and gradients: SigLIP's pairwise sigmoid loss
  // (contrastive::siglip_loss; Zhai et al. 2023) of images [N, C, H, W] and their captions' ids
  // [N, L], row i of each a pair, on L2-normalised features with the learnable logit_scale and
  // logit_bias. Backpropagates through both towers, ADDS every parameter's gradient (zero them
  // first) and returns the loss. Throws ShapeError when the batches differ.
  template <TensorLike X, TensorLike I>
  T train_loss(const X& images, const I& ids, const contrastive::SigLipLossOptions& opts = {}) {
    return train_loss_with(images, ids,
                           [&](const Tensor<T, 2>& a, const Tensor<T, 2>& b, T t, T bias) {
                             return contrastive::siglip_loss(a, b, t, bias, opts);
                           });
  }

  // train_loss with another loss of the L2-normalised embeddings: loss(a, b, t, bias) -> a
  // contrastive::SigLipLossResult<T>, whose gradients are backpropagated as they are
  // (distributed::siglip_train_loss passes the loss over every rank's batch).
  template <TensorLike X, TensorLike I, class Loss>
  T train_loss_with(const X& images, const I& ids, Loss&& loss) {
    constexpr std::string_view fn = "tessera::models::SigLIP::train_loss";
    detail::check_training_pairs(fn, cview(images), cview(ids));
    auto img = visual.forward_train(images);
    auto txt = text.forward_train(ids);
    const Tensor<T, 2> a = l2_normalize(img.output), b = l2_normalize(txt.output);
    const contrastive::SigLipLossResult<T> r =
        loss(a, b, logit_scale.value.data()[0], logit_bias.value.data()[0]);
    detail::grad_of(logit_scale).data()[0] += r.grad_logit_scale;
    detail::grad_of(logit_bias).data()[0] += r.grad_logit_bias;
    visual.backward(img.context, l2_normalize_backward(img.output, r.grad_a));
    text.backward(txt.context, l2_normalize_backward(txt.output, r.grad_b));
    return r.loss;
  }

  // sigmoid(logits): [B, N], each entry the probability that image i and text j match, on its
  // own (SigLIP's pairwise sigmoid; NOT a softmax, rows do not sum to 1).
  template <TensorLike A, TensorLike B>
  Tensor<T, 2> probabilities(const A& image_features, const B& text_features) const {
    Tensor<T, 2> l = logits(image_features, text_features);
    // sigmoid, written so that exp never overflows: 1 / (1 + e^-x) or e^x / (1 + e^x)
    for (Index i = 0; i < l.size(); ++i) {
      const T x = l.data()[i];
      const T z = std::exp(-std::abs(x));
      l.data()[i] = x >= 0 ? T(1) / (T(1) + z) : z / (T(1) + z);
    }
    return l;
  }

  // Packs both towers' weights for inference (see VisionTransformer::prepack).
  void prepack() {
    visual.prepack();
    text.prepack();
  }

  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    visual.check_parameters(fn, detail::ParameterPrefix(prefix, "visual."));
    text.check_parameters(fn, detail::ParameterPrefix(prefix, "text."));
    detail::check_parameter(fn, prefix, "logit_scale", logit_scale, {1});
    detail::check_parameter(fn, prefix, "logit_bias", logit_bias, {1});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    VisionTransformer<T>::visit(self.visual, f, prefix + "visual.");
    TextTransformer<T>::visit(self.text, f, prefix + "text.");
    f(prefix + "logit_scale", self.logit_scale);
    f(prefix + "logit_bias", self.logit_bias);
  }

 private:
  static const SigLIPOptions& checked(const SigLIPOptions& o) {
    constexpr std::string_view fn = "tessera::models::SigLIP";
    const Index image = o.vision.output_dim > 0 ? o.vision.output_dim : o.vision.width;
    const Index text = o.text.output_dim > 0 ? o.text.output_dim : o.text.width;
    if (image != text)
      detail::raise<ValueError>(fn, "the image embedding is ", image,
                                " wide (vision.output_dim, or vision.width without one) and the "
                                "text embedding ",
                                text, " (text.output_dim), expected the same width");
    return o;
  }

  SigLIPOptions options_{};
};

// ---- presets ---------------------------------------------------------------------------------

struct SiglipPreset {
  std::string_view name;
  std::string_view description;
  SigLIPOptions options;
};

}  // namespace tessera::models

namespace tessera::detail {

// A SigLIP in transformers' layout: image tower without class token or ln_pre, conv with bias,
// attention pooling, no projection; text tower not causal, pooled at the last position, head
// with bias; GELU (tanh approximation, "gelu_pytorch_tanh") and LayerNorm eps 1e-6 throughout
// (SiglipTextConfig / SiglipVisionConfig defaults).
inline models::SigLIPOptions hf_style_siglip(Index image, Index patch, Index width, Index layers,
                                             Index heads, Index mlp, Index vocab, Index context,
                                             Index text_width, Index text_layers, Index text_heads,
                                             Index text_mlp) {
  models::SigLIPOptions o;
  o.vision = {.image_size = image,
              .patch_size = patch,
              .width = width,
              .layers = layers,
              .heads = heads,
              .mlp_dim = mlp,
              .activation = Activation::gelu_tanh,
              .layer_norm_eps = 1e-6,
              .patch_bias = true,
              .ln_pre = false,
              .class_token = false,
              .pooling = models::VisionPooling::map,
              .drop_partial_patches = true,
              .output_dim = 0};
  o.text = {.vocab_size = vocab,
            .context_length = context,
            .width = text_width,
            .layers = text_layers,
            .heads = text_heads,
            .mlp_dim = text_mlp,
            .activation = Activation::gelu_tanh,
            .layer_norm_eps = 1e-6,
            .causal = false,
            .pooling = models::TextPooling::last,
            .output_dim = width,
            .head_bias = true};
  return o;
}

}  // namespace tessera::detail

namespace tessera::models {

// The named SigLIP architectures (Hugging Face's model names without "google/").
// siglip-base-patch16-224: transformers' SiglipVisionConfig and SiglipTextConfig defaults, which
// its documentation gives as that checkpoint's architecture: vision 224 x 224 images, patch 16,
// width 768, 12 layers, 12 heads, MLP 3072; text vocabulary 32000, context 64, width 768, 12
// layers, 12 heads, MLP 3072.
inline std::span<const SiglipPreset> siglip_presets() {
  static const SiglipPreset presets[] = {
      {"siglip-base-patch16-224", "SigLIP B/16 at 224 x 224 (google/siglip-base-patch16-224)",
       detail::hf_style_siglip(224, 16, 768, 12, 12, 3072, 32000, 64, 768, 12, 12, 3072)},
  };
  return presets;
}

// The preset named `name`; throws ValueError listing the known names.
inline const SiglipPreset& siglip_preset(std::string_view name) {
  for (const SiglipPreset& p : siglip_presets())
    if (p.name == name) return p;
  std::vector<std::string_view> names;
  for (const SiglipPreset& p : siglip_presets()) names.push_back(p.name);
  detail::raise<ValueError>("tessera::models::siglip_preset", "no SigLIP preset named '", name,
                            "'; the presets are ", detail::capped_list(names));
}

// The SigLIPOptions a Hugging Face SiglipModel's config.json describes (transformers'
// SiglipConfig, SiglipTextConfig and SiglipVisionConfig, with their defaults — the
// siglip-base-patch16-224 architecture — for absent fields): vision_config hidden_size,
// intermediate_size, num_hidden_layers, num_attention_heads, num_channels, image_size,
// patch_size, hidden_act, layer_norm_eps, vision_use_head (must be true: the image embedding is
// the head's output); text_config vocab_size, hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, max_position_embeddings, hidden_act, layer_norm_eps, projection_size
// (default hidden_size). Throws ValueError naming the field for a value of the wrong type, an
// activation tessera lacks, a model_type other than "siglip", or vision_use_head false.
TESSERA_BEGIN_MODE_NAMESPACE
TESSERA_JSON_FUNCTION SigLIPOptions siglip_options_from_hf_config(const nlohmann::json& config);
TESSERA_END_MODE_NAMESPACE

// siglip_options_from_hf_config of a config.json file; IoError naming the path when it cannot be
// read or parsed.
TESSERA_BEGIN_MODE_NAMESPACE
TESSERA_JSON_FUNCTION SigLIPOptions read_hf_siglip_config(const std::filesystem::path& path);
TESSERA_END_MODE_NAMESPACE

// A SigLIP from a checkpoint's tensors in Hugging Face's SiglipModel layout, with the
// architecture of `config` (checked against the checkpoint's shapes; `preset` names it in
// messages). Tensors are moved into tessera's names (q/k/v stacked into one matrix, the probe
// squeezed), the model is built without drawing random weights and each tensor is released as
// soon as it is copied. Throws ValueError when the keys are not in that layout (listing at most
// 20 of those without a rule, and naming the loader of another known layout they fit, e.g.
// models::load_clip) or the config contradicts the shapes, ShapeError when a tensor has a shape
// the architecture does not take.
template <class T>
SigLIP<T> load_siglip(io::StateDict dict, const SigLIPOptions& config,
                      std::string_view preset = "(custom options)") {
  const NamingConvention* candidates[] = {&hf_siglip_naming()};
  return load_checked<SigLIP<T>>("tessera::models::load_siglip", std::move(dict), candidates,
                                 config, preset, [&](ArchitectureCheck& check) {
                                   check.vision("visual.", "vision.", config.vision);
                                   check.text("text.", "text.", config.text);
                                 });
}

// The same with the architecture of the preset named `preset` (siglip_presets()).
template <class T>
SigLIP<T> load_siglip(io::StateDict dict, std::string_view preset) {
  return load_siglip<T>(std::move(dict), siglip_preset(preset).options, preset);
}

// The same from a safetensors file (io::load_safetensors; its errors are IoErrors).
template <class T>
SigLIP<T> load_siglip(const std::filesystem::path& path, std::string_view preset) {
  return load_siglip<T>(io::load_safetensors(path), preset);
}

// A Hugging Face checkpoint: the weights file and the config.json beside it (a model folder as
// save_pretrained writes it). The architecture comes from the config and is checked against the
// shapes; ValueError when there is no config.json there.
template <class T>
SigLIP<T> load_siglip(const std::filesystem::path& path) {
  const auto config = config_beside("tessera::models::load_siglip", path, siglip_presets());
  return load_siglip<T>(io::load_safetensors(path), read_hf_siglip_config(config), config.string());
}

}  // namespace tessera::models

// The compiled mode's instantiations (core/config.hpp), unless its library was built without
// models (no nlohmann_json).
#ifndef TESSERA_COMPILED_WITHOUT_MODELS
TESSERA_INSTANTIATE_FLOATING(class tessera::models::SigLIP)
#endif

#ifndef TESSERA_JSON_IN_LIBRARY
#include "tessera/models/siglip_impl.hpp"
#endif
