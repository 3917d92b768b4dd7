// tessera: the Hugging Face config readers declared in models/siglip.hpp, which includes this
// file header-only; in the compiled mode the library compiles it once (src/json_functions.cpp).
#pragma once

#include "tessera/core/config.hpp"

// In the compiled mode these definitions are the library's alone: a consumer's copy would be a
// second definition of the same (not inline) functions.
#if defined(TESSERA_JSON_IN_LIBRARY) && !defined(TESSERA_BUILDING_JSON_FUNCTIONS)
#error \
    "tessera/models/siglip_impl.hpp is the library's in the compiled mode; include tessera/models/siglip.hpp"
#endif

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/models/hf_config.hpp"
#include "tessera/models/siglip.hpp"

namespace tessera::models {

TESSERA_BEGIN_MODE_NAMESPACE

// siglip_options_from_hf_config (models/siglip.hpp).
TESSERA_JSON_FUNCTION SigLIPOptions siglip_options_from_hf_config(const nlohmann::json& config) {
  constexpr std::string_view fn = "tessera::models::siglip_options_from_hf_config";
  const HfConfigReader cfg(fn);
  auto get = [&](const nlohmann::json& j, const char* section, const char* key, auto fallback) {
    return cfg.get(j, section, key, fallback);
  };
  auto activation = [&](const std::string& name, const char* field) {
    return cfg.activation(name, field);
  };
  if (!config.is_object())
    detail::raise<ValueError>(fn, "the config is ", config.type_name(), ", expected an object");
  const std::string model_type = get(config, "", "model_type", std::string("siglip"));
  if (model_type != "siglip")
    detail::raise<ValueError>(fn, "field 'model_type' is \"", model_type,
                              "\", expected \"siglip\" (a SiglipModel's config.json)");
  const auto& v = HfConfigReader::section(config, "vision_config");
  const auto& t = HfConfigReader::section(config, "text_config");
  if (!get(v, "vision_config.", "vision_use_head", true))
    detail::raise<ValueError>(fn,
                              "field 'vision_config.vision_use_head' is false, expected true: a "
                              "SiglipModel's image embedding is its attention-pooling head's "
                              "output");
  SigLIPOptions o;
  o.vision = {.image_size = get(v, "vision_config.", "image_size", Index{224}),
              .patch_size = get(v, "vision_config.", "patch_size", Index{16}),
              .in_channels = get(v, "vision_config.", "num_channels", Index{3}),
              .width = get(v, "vision_config.", "hidden_size", Index{768}),
              .layers = get(v, "vision_config.", "num_hidden_layers", Index{12}),
              .heads = get(v, "vision_config.", "num_attention_heads", Index{12}),
              .mlp_dim = get(v, "vision_config.", "intermediate_size", Index{3072}),
              .activation = activation(
                  get(v, "vision_config.", "hidden_act", std::string("gelu_pytorch_tanh")),
                  "vision_config.hidden_act"),
              .layer_norm_eps = get(v, "vision_config.", "layer_norm_eps", 1e-6),
              .patch_bias = true,
              .ln_pre = false,
              .class_token = false,
              .pooling = VisionPooling::map,
              .drop_partial_patches = true,  // transformers' Conv2d floors: 384 / 14 -> 27 patches
              .output_dim = 0};
  const Index text_width = get(t, "text_config.", "hidden_size", Index{768});
  o.text = {.vocab_size = get(t, "text_config.", "vocab_size", Index{32000}),
            .context_length = get(t, "text_config.", "max_position_embeddings", Index{64}),
            .width = text_width,
            .layers = get(t, "text_config.", "num_hidden_layers", Index{12}),
            .heads = get(t, "text_config.", "num_attention_heads", Index{12}),
            .mlp_dim = get(t, "text_config.", "intermediate_size", Index{3072}),
            .activation =
                activation(get(t, "text_config.", "hidden_act", std::string("gelu_pytorch_tanh")),
                           "text_config.hidden_act"),
            .layer_norm_eps = get(t, "text_config.", "layer_norm_eps", 1e-6),
            .causal = false,
            .pooling = TextPooling::last,
            .output_dim = get(t, "text_config.", "projection_size", text_width),
            .head_bias = true};
  return o;
}

// read_hf_siglip_config (models/siglip.hpp).
TESSERA_JSON_FUNCTION SigLIPOptions read_hf_siglip_config(const std::filesystem::path& path) {
  return siglip_options_from_hf_config(
      read_json_object("tessera::models::read_hf_siglip_config", path));
}

TESSERA_END_MODE_NAMESPACE

}  // namespace tessera::models
