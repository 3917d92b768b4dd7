// tessera: the Hugging Face config readers declared in models/clip.hpp, which includes this file
// header-only; in the compiled mode the library compiles it once (src/json_functions.cpp).
#pragma once

#include "tessera/core/config.hpp"

// In the compiled mode these definitions are the library's alone: a consumer's copy would be a
// second definition of the same (not inline) functions.
#if defined(TESSERA_JSON_IN_LIBRARY) && !defined(TESSERA_BUILDING_JSON_FUNCTIONS)
#error \
    "tessera/models/clip_impl.hpp is the library's in the compiled mode; include tessera/models/clip.hpp"
#endif

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>

#include "tessera/core/error.hpp"
#include "tessera/models/clip.hpp"
#include "tessera/models/hf_config.hpp"

namespace tessera::models {

TESSERA_BEGIN_MODE_NAMESPACE

// clip_options_from_hf_config (models/clip.hpp).
TESSERA_JSON_FUNCTION CLIPOptions clip_options_from_hf_config(const nlohmann::json& config) {
  const HfConfigReader cfg("tessera::models::clip_options_from_hf_config");
  auto get = [&](const nlohmann::json& j, const char* section, const char* key, auto fallback) {
    return cfg.get(j, section, key, fallback);
  };
  auto activation = [&](const std::string& name, const char* field) {
    return cfg.activation(name, field);
  };
  const auto& v = HfConfigReader::section(config, "vision_config");
  const auto& t = HfConfigReader::section(config, "text_config");
  const Index projection = get(config, "", "projection_dim", Index{512});
  CLIPOptions o;
  o.vision = {
      .image_size = get(v, "vision_config.", "image_size", Index{224}),
      .patch_size = get(v, "vision_config.", "patch_size", Index{32}),
      .in_channels = get(v, "vision_config.", "num_channels", Index{3}),
      .width = get(v, "vision_config.", "hidden_size", Index{768}),
      .layers = get(v, "vision_config.", "num_hidden_layers", Index{12}),
      .heads = get(v, "vision_config.", "num_attention_heads", Index{12}),
      .mlp_dim = get(v, "vision_config.", "intermediate_size", Index{3072}),
      .activation = activation(get(v, "vision_config.", "hidden_act", std::string("quick_gelu")),
                               "vision_config.hidden_act"),
      .layer_norm_eps = get(v, "vision_config.", "layer_norm_eps", 1e-5),
      .patch_bias = false,
      .ln_pre = true,
      .output_dim = projection};
  const Index eos = get(t, "text_config.", "eos_token_id", Index{49407});
  o.text = {
      .vocab_size = get(t, "text_config.", "vocab_size", Index{49408}),
      .context_length = get(t, "text_config.", "max_position_embeddings", Index{77}),
      .width = get(t, "text_config.", "hidden_size", Index{512}),
      .layers = get(t, "text_config.", "num_hidden_layers", Index{12}),
      .heads = get(t, "text_config.", "num_attention_heads", Index{8}),
      .mlp_dim = get(t, "text_config.", "intermediate_size", Index{2048}),
      .activation = activation(get(t, "text_config.", "hidden_act", std::string("quick_gelu")),
                               "text_config.hidden_act"),
      .layer_norm_eps = get(t, "text_config.", "layer_norm_eps", 1e-5),
      .causal = true,
      .pooling = eos == 2 ? TextPooling::argmax : TextPooling::eos,
      .eos_token_id = eos,
      .output_dim = projection};
  o.logit_scale = get(config, "", "logit_scale_init_value", 2.6592);
  return o;
}

// read_hf_clip_config (models/clip.hpp).
TESSERA_JSON_FUNCTION CLIPOptions read_hf_clip_config(const std::filesystem::path& path) {
  return clip_options_from_hf_config(
      read_json_object("tessera::models::read_hf_clip_config", path));
}

TESSERA_END_MODE_NAMESPACE

}  // namespace tessera::models

namespace tessera::detail {
TESSERA_BEGIN_MODE_NAMESPACE

// read_clip_vision_config (models/clip.hpp): a CLIPVisionConfig has its fields at the top level,
// as CLIPVisionModel saves it; a CLIPConfig has them in vision_config.
TESSERA_JSON_FUNCTION models::VisionTransformerOptions read_clip_vision_config(
    std::string_view fn, const std::filesystem::path& path) {
  nlohmann::json config = models::read_json_object(fn, path);
  if (!config.contains("vision_config")) {
    nlohmann::json wrapped = nlohmann::json::object();
    wrapped["vision_config"] = config;
    if (config.contains("projection_dim")) wrapped["projection_dim"] = config["projection_dim"];
    config = std::move(wrapped);
  }
  return models::clip_options_from_hf_config(config).vision;
}

TESSERA_END_MODE_NAMESPACE
}  // namespace tessera::detail
