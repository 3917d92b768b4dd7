// tessera: models::CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural
// Language Supervision"): an image tower and a text tower mapping into one embedding space, and
// the learned temperature, loaded from a checkpoint in a few lines:
//
//   auto clip = tessera::models::load_clip<float>("ViT-B-32.safetensors", "ViT-B-32-quickgelu");
//   auto img = clip.encode_image(pixels);          // [B, 512], pixels [B, 3, 224, 224]
//   auto txt = clip.encode_text(ids);              // [N, 512], ids [N, 77]
//   auto probs = clip.probabilities(img, txt);     // [B, N], each row sums to 1
//
// Loading detects the checkpoint's naming convention (models/naming.hpp), reads every size the
// shapes give (widths, layers, patch and image size, context length, vocabulary, embedding width,
// as open_clip's build_model_from_openai_state_dict does) and checks them against the preset; a
// preset supplies only what shapes cannot tell (heads, layer norm eps, QuickGELU or GELU, the
// pooling), and a preset that contradicts the checkpoint is a ValueError naming both values.
//
// Parameters: visual.* (VisionTransformer), text.* (TextTransformer), logit_scale [] (the log of
// the logits' scale, as CLIP stores it).
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <span>
#include <sstream>
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

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/contrastive/dual_encoder.hpp"
#include "tessera/contrastive/zero_shot_classifier.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/models/architecture_check.hpp"
#include "tessera/models/loading.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/models/text_transformer.hpp"
#include "tessera/models/vision_transformer.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::models {

struct CLIPOptions {
  VisionTransformerOptions vision;          // its output_dim is the joint embedding width
  TextTransformerOptions text;              // output_dim the same
  double logit_scale = 2.6592600369327779;  // log(1 / 0.07), CLIP's initial temperature
};

template <class T>
class CLIP : public nn::Module<CLIP<T>> {
 public:
  VisionTransformer<T> visual;
  TextTransformer<T> text;
  nn::Parameter<T, 0> logit_scale;  // [] log of the logits' scale

  CLIP() = default;
  explicit CLIP(const CLIPOptions& o) : logit_scale(Shape<0>{}), options_(checked(o)) {
    visual = VisionTransformer<T>(o.vision);
    text = TextTransformer<T>(o.text);
    logit_scale.value() = static_cast<T>(o.logit_scale);
  }

  const CLIPOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.vision.output_dim; }

  // images: [B, 3, image_size, image_size], normalised pixels -> [B, embed_dim] (not unit
  // length; open_clip's encode_image with normalize=False).
  template <TensorLike X>
  Tensor<T, 2> encode_image(const X& images) const {
    return visual.forward(images);
  }
  // ids: [N, L] token ids, L <= context_length -> [N, embed_dim] (not unit length).
  template <TensorLike I>
  Tensor<T, 2> encode_text(const I& ids) const {
    return text.forward(ids);
  }

  // exp(logit_scale): the factor on cosine similarities.
  T scale() const { return std::exp(logit_scale.value()); }

  // scale() * cos(image i, text j): [B, N] from image features [B, E] and text features [N, E]
  // (normalised here).
  template <TensorLike A, TensorLike B>
  Tensor<T, 2> logits(const A& image_features, const B& text_features) const {
    constexpr std::string_view fn = "tessera::models::CLIP::logits";
    const auto av = cview(image_features);
    const auto bv = cview(text_features);
    const Index e[] = {av.dim(0), embed_dim()};
    tessera::detail::check_shape_equal(fn, "image_features", av.shape(), e);
    const Index f[] = {bv.dim(0), embed_dim()};
    tessera::detail::check_shape_equal(fn, "text_features", bv.shape(), f);
    const Tensor<T, 2> a = l2_normalize(av), b = l2_normalize(bv);
    // [B, N] = s [B, E] x [N, E]^T
    Tensor<T, 2> out = linear(a, b);
    out.as_array() *= scale();
    return out;
  }

  // Per image, the softmax over the texts of the logits: [B, N], rows summing to 1 (CLIP's
  // zero-shot probabilities).
  template <TensorLike A, TensorLike B>
  Tensor<T, 2> probabilities(const A& image_features, const B& text_features) const {
    Tensor<T, 2> l = logits(image_features, text_features);
    softmax_into(l, l);
    return l;
  }

  // One training step's loss and gradients: CLIP's contrastive loss (contrastive::clip_loss, as
  // open_clip's ClipLoss: features L2-normalised, logits exp(logit_scale) a b^T, the symmetric
  // cross-entropy of matching pairs) of images [N, C, H, W] and their captions' ids [N, L], row i
  // of each a pair. Backpropagates through both towers and ADDS every parameter's gradient
  // (logit_scale's included; zero the gradients first) and returns the loss. Throws ShapeError
  // when the batches differ, and what the towers and the loss throw.
  template <TensorLike X, TensorLike I>
  T train_loss(const X& images, const I& ids, const contrastive::ClipLossOptions& opts = {}) {
    return train_loss_with(images, ids, [&](const Tensor<T, 2>& a, const Tensor<T, 2>& b, T t) {
      return contrastive::clip_loss(a, b, t, opts);
    });
  }

  // train_loss with another loss of the L2-normalised embeddings: loss(a, b, t) -> a
  // contrastive::ClipLossResult<T> (a [B, E] image and b [B, E] text embeddings, t the logit
  // scale), whose gradients are backpropagated as they are (distributed::clip_train_loss passes
  // the loss over every rank's batch).
  template <TensorLike X, TensorLike I, class Loss>
  T train_loss_with(const X& images, const I& ids, Loss&& loss) {
    constexpr std::string_view fn = "tessera::models::CLIP::train_loss";
    detail::check_training_pairs(fn, cview(images), cview(ids));
    auto img = visual.forward_train(images);
    auto txt = text.forward_train(ids);
    const Tensor<T, 2> a = l2_normalize(img.output), b = l2_normalize(txt.output);
    const contrastive::ClipLossResult<T> r = loss(a, b, logit_scale.value());
    detail::grad_of(logit_scale)() += r.grad_logit_scale;
    visual.backward(img.context, l2_normalize_backward(img.output, r.grad_a));
    text.backward(txt.context, l2_normalize_backward(txt.output, r.grad_b));
    return r.loss;
  }

  // Packs both towers' weights for inference (see VisionTransformer::prepack).
  void prepack() {
    visual.prepack();
    text.prepack();
  }

  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    visual.check_parameters(fn, detail::ParameterPrefix(prefix, "visual."));
    text.check_parameters(fn, detail::ParameterPrefix(prefix, "text."));
    detail::check_parameter(fn, prefix, "logit_scale", logit_scale, {});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    VisionTransformer<T>::visit(self.visual, f, prefix + "visual.");
    TextTransformer<T>::visit(self.text, f, prefix + "text.");
    f(prefix + "logit_scale", self.logit_scale);
  }

 private:
  static const CLIPOptions& checked(const CLIPOptions& o) {
    if (o.vision.output_dim <= 0 || o.vision.output_dim != o.text.output_dim)
      detail::raise<ValueError>("tessera::models::CLIP", "vision.output_dim is ",
                                o.vision.output_dim, " and text.output_dim ", o.text.output_dim,
                                ", expected the same embedding width > 0");
    return o;
  }

  CLIPOptions options_{};
};

// A zero-shot classifier (CLIP's prompt ensembling, contrastive::ZeroShotClassifier) over
// `clip`'s text tower and with the model's own logit scale: every template filled with every
// class name, tokenized by `tokenize` (a std::vector<std::string> of prompts -> ids [P, L], e.g.
// text::ClipTokenizer::tokenize) and embedded by encode_text. Its predict() takes the model's
// image features (encode_image).
template <class T, class Tokenize>
contrastive::ZeroShotClassifier<T> zero_shot_classifier(const CLIP<T>& clip,
                                                        std::vector<std::string> class_names,
                                                        std::vector<std::string> templates,
                                                        Tokenize&& tokenize) {
  return contrastive::ZeroShotClassifier<T>(
      std::move(class_names), std::move(templates),
      [&](const std::vector<std::string>& prompts) { return clip.encode_text(tokenize(prompts)); },
      {.logit_scale = static_cast<double>(clip.scale())});
}

// `clip` as a contrastive::DualEncoder, the form the CLIP loss trains: the towers without their
// projections (image and text features [B, width]), the projections as its ProjectionHeads
// (L2-normalising) and the model's logit scale as its temperature, all with the checkpoint's
// values; its logits equal clip.logits while the scale is at most max_logit_scale (100, where
// CLIP clamps it).
template <class T>
contrastive::DualEncoder<T, VisionTransformer<T>, TextTransformer<T>> dual_encoder(
    const CLIP<T>& clip) {
  CLIPOptions o = clip.options();
  const Index embed = o.vision.output_dim;
  o.vision.output_dim = o.text.output_dim = 0;
  io::StateDict visual = clip.visual.state_dict(), text = clip.text.state_dict();
  visual.erase("head.weight");
  text.erase("head.weight");
  auto [vision_tower, text_tower] = [&] {
    nn::SkipInit skip;
    return std::pair(VisionTransformer<T>(o.vision), TextTransformer<T>(o.text));
  }();
  vision_tower.load_state_dict(std::move(visual));
  text_tower.load_state_dict(std::move(text));
  contrastive::DualEncoder<T, VisionTransformer<T>, TextTransformer<T>> dual(
      std::move(vision_tower), std::move(text_tower),
      {.image_width = o.vision.width, .text_width = o.text.width, .embed_dim = embed});
  dual.visual_projection.proj.weight.value = clip.visual.head.weight.value;
  dual.text_projection.proj.weight.value = clip.text.head.weight.value;
  dual.temperature.logit_scale.value = clip.logit_scale.value;
  return dual;
}

// ---- presets ---------------------------------------------------------------------------------

struct ClipPreset {
  std::string_view name;
  std::string_view description;
  CLIPOptions options;
};

}  // namespace tessera::models

namespace tessera::detail {

// open_clip's model configs (model_configs/ViT-*.json): mlp_ratio 4, heads = width / 64, text
// width 512 (768 for L/14) with 8 (12) heads, context 77, vocabulary 49408, eps 1e-5. The
// -quickgelu variants are the activation OpenAI's released weights were trained with.
inline models::CLIPOptions openai_style_clip(Index patch, Index vision_width, Index vision_layers,
                                             Index text_width, Index embed_dim, Activation act) {
  models::CLIPOptions o;
  o.vision = {.image_size = 224,
              .patch_size = patch,
              .width = vision_width,
              .layers = vision_layers,
              .heads = vision_width / 64,
              .mlp_dim = 4 * vision_width,
              .activation = act,
              .layer_norm_eps = 1e-5,
              .patch_bias = false,
              .ln_pre = true,
              .output_dim = embed_dim};
  o.text = {.vocab_size = 49408,
            .context_length = 77,
            .width = text_width,
            .layers = 12,
            .heads = text_width / 64,
            .mlp_dim = 4 * text_width,
            .activation = act,
            .layer_norm_eps = 1e-5,
            .causal = true,
            .pooling = models::TextPooling::argmax,
            .output_dim = embed_dim};
  return o;
}

}  // namespace tessera::detail

namespace tessera::models {

// The named CLIP architectures (open_clip's names).
inline std::span<const ClipPreset> clip_presets() {
  using detail::openai_style_clip;
  static const ClipPreset presets[] = {
      {"ViT-B-32", "ViT-B/32, GELU (open_clip's LAION/DataComp weights)",
       openai_style_clip(32, 768, 12, 512, 512, Activation::gelu)},
      {"ViT-B-32-quickgelu", "ViT-B/32, QuickGELU (OpenAI's weights)",
       openai_style_clip(32, 768, 12, 512, 512, Activation::quick_gelu)},
      {"ViT-B-16", "ViT-B/16, GELU", openai_style_clip(16, 768, 12, 512, 512, Activation::gelu)},
      {"ViT-B-16-quickgelu", "ViT-B/16, QuickGELU (OpenAI's weights)",
       openai_style_clip(16, 768, 12, 512, 512, Activation::quick_gelu)},
      {"ViT-L-14", "ViT-L/14, GELU", openai_style_clip(14, 1024, 24, 768, 768, Activation::gelu)},
      {"ViT-L-14-quickgelu", "ViT-L/14, QuickGELU (OpenAI's weights)",
       openai_style_clip(14, 1024, 24, 768, 768, Activation::quick_gelu)},
  };
  return presets;
}

// The preset named `name`; throws ValueError listing the known names.
inline const ClipPreset& clip_preset(std::string_view name) {
  for (const ClipPreset& p : clip_presets())
    if (p.name == name) return p;
  std::vector<std::string_view> names;
  for (const ClipPreset& p : clip_presets()) names.push_back(p.name);
  detail::raise<ValueError>("tessera::models::clip_preset", "no CLIP preset named '", name,
                            "'; the presets are ", detail::capped_list(names));
}

}  // namespace tessera::models

namespace tessera::models {

// The CLIPOptions a Hugging Face CLIPModel's config.json describes (transformers'
// CLIPConfig, CLIPTextConfig and CLIPVisionConfig, with their defaults for absent fields):
// projection_dim; vision_config/text_config hidden_size, intermediate_size, num_attention_heads,
// num_hidden_layers, layer_norm_eps, hidden_act (quick_gelu, gelu, gelu_new or
// gelu_pytorch_tanh), image_size, patch_size, num_channels, vocab_size,
// max_position_embeddings, eos_token_id (2, the value of older configs, pools at the largest id
// as OpenAI does; any other at the first occurrence of that id, as transformers does). Throws
// ValueError naming the field for a value of the wrong type or an activation tessera lacks.
TESSERA_BEGIN_MODE_NAMESPACE
TESSERA_JSON_FUNCTION CLIPOptions clip_options_from_hf_config(const nlohmann::json& config);
TESSERA_END_MODE_NAMESPACE

// clip_options_from_hf_config of a config.json file; IoError naming the path when it cannot be
// read or parsed.
TESSERA_BEGIN_MODE_NAMESPACE
TESSERA_JSON_FUNCTION CLIPOptions read_hf_clip_config(const std::filesystem::path& path);
TESSERA_END_MODE_NAMESPACE

// A CLIP from a checkpoint's tensors in the OpenAI/open_clip or the Hugging Face layout
// (detected from the keys), with the architecture of `config` (checked against the checkpoint's
// shapes; `preset` names it in messages). Tensors are moved into tessera's names (HF's q/k/v
// stacked into one matrix), the model is built without drawing random weights and each tensor is
// released as soon as it is copied. Throws ValueError when the keys are in neither layout
// (listing at most 20 of those the closer one lacks, and naming the loader of another known
// layout they fit) or the preset contradicts the shapes, ShapeError when a tensor has a shape the
// architecture does not take.
template <class T>
CLIP<T> load_clip(io::StateDict dict, const CLIPOptions& config,
                  std::string_view preset = "(custom options)") {
  const NamingConvention* candidates[] = {&openai_clip_naming(), &hf_clip_naming()};
  return load_checked<CLIP<T>>("tessera::models::load_clip", std::move(dict), candidates, config,
                               preset, [&](ArchitectureCheck& check) {
                                 check.vision("visual.", "vision.", config.vision);
                                 check.text("text.", "text.", config.text);
                               });
}

// The same with the architecture of the preset named `preset` (clip_presets()).
template <class T>
CLIP<T> load_clip(io::StateDict dict, std::string_view preset) {
  return load_clip<T>(std::move(dict), clip_preset(preset).options, preset);
}

// The same from a safetensors file (io::load_safetensors; its errors are IoErrors).
template <class T>
CLIP<T> load_clip(const std::filesystem::path& path, std::string_view preset) {
  return load_clip<T>(io::load_safetensors(path), preset);
}

// A Hugging Face checkpoint: the weights file and the config.json beside it (a model folder as
// save_pretrained writes it, with model.safetensors). The architecture comes from the config
// and is checked against the shapes.
template <class T>
CLIP<T> load_clip(const std::filesystem::path& path) {
  const auto config = config_beside("tessera::models::load_clip", path, clip_presets());
  return load_clip<T>(io::load_safetensors(path), read_hf_clip_config(config), config.string());
}

// An image tower on its own, from Hugging Face's CLIPVisionModel or CLIPVisionModelWithProjection
// (vision_model.*, and visual_projection with a projection), with the architecture of `options`
// (checked against the shapes as load_clip does).
template <class T>
VisionTransformer<T> load_clip_vision(io::StateDict dict, const VisionTransformerOptions& options,
                                      std::string_view preset = "(custom options)") {
  const NamingConvention* candidates[] = {&hf_clip_vision_naming()};
  return load_checked<VisionTransformer<T>>(
      "tessera::models::load_clip_vision", std::move(dict), candidates, options, preset,
      [&](ArchitectureCheck& check) { check.vision("", "", options); });
}

}  // namespace tessera::models

namespace tessera::detail {
TESSERA_BEGIN_MODE_NAMESPACE
// The vision tower's options in the config.json at `path` (a CLIPVisionConfig or a CLIPConfig);
// errors name `fn`.
TESSERA_JSON_FUNCTION models::VisionTransformerOptions read_clip_vision_config(
    std::string_view fn, const std::filesystem::path& path);
TESSERA_END_MODE_NAMESPACE
}  // namespace tessera::detail

namespace tessera::models {

// The same from a model folder's weights and the config.json beside them: a CLIPVisionConfig
// (fields at the top level, as CLIPVisionModel saves it) or a CLIPConfig (its vision_config).
// The tower ends in visual_projection (projection_dim outputs) when the checkpoint has it, else
// in the normalised class token (hidden_size outputs).
template <class T>
VisionTransformer<T> load_clip_vision(const std::filesystem::path& path) {
  constexpr std::string_view fn = "tessera::models::load_clip_vision";
  const auto config_path = config_beside(fn, path, clip_presets());
  VisionTransformerOptions options = detail::read_clip_vision_config(fn, config_path);
  io::StateDict dict = io::load_safetensors(path);
  if (!dict.contains("visual_projection.weight")) options.output_dim = 0;
  return load_clip_vision<T>(std::move(dict), options, config_path.string());
}

}  // namespace tessera::models

// The compiled mode's instantiations (core/config.hpp), unless its library was built without
// models (no nlohmann_json).
#ifndef TESSERA_COMPILED_WITHOUT_MODELS
TESSERA_INSTANTIATE_FLOATING(class tessera::models::CLIP)
#endif

#ifndef TESSERA_JSON_IN_LIBRARY
#include "tessera/models/clip_impl.hpp"
#endif
