// tessera: reading a Hugging Face config.json (nlohmann-json), for the config readers of
// models/clip_impl.hpp and models/siglip_impl.hpp: header-only they are in every includer of
// models/clip.hpp or models/siglip.hpp, in the compiled mode only in the library
// (core/config.hpp, TESSERA_JSON_FUNCTION).
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>

#include "tessera/core/error.hpp"
#include "tessera/kernels/activation.hpp"

namespace tessera::models {

// Reads the fields of a Hugging Face config.json, naming `fn` and the field in its errors.
class HfConfigReader {
 public:
  explicit HfConfigReader(std::string_view fn) : fn_(fn) {}

  // section[key] as V (Index, double, bool or std::string), `fallback` when absent (or when
  // section is not an object); ValueError naming prefix + key for a value of another type.
  template <class V>
  V get(const nlohmann::json& section, std::string_view prefix, const char* key, V fallback) const {
    if (!section.is_object() || !section.contains(key)) return fallback;
    const auto& v = section.at(key);
    if constexpr (std::is_same_v<V, std::string>) {
      if (v.is_string()) return v.template get<std::string>();
    } else if constexpr (std::is_same_v<V, bool>) {
      if (v.is_boolean()) return v.template get<bool>();
    } else if constexpr (std::is_floating_point_v<V>) {
      if (v.is_number()) return v.template get<V>();
    } else {
      if (v.is_number_integer()) return v.template get<V>();
    }
    detail::raise<ValueError>(fn_, "field '", prefix, key, "' is ", v.dump(), ", expected a ",
                              std::is_same_v<V, std::string> ? "string"
                              : std::is_same_v<V, bool>      ? "boolean"
                                                             : "number");
  }

  // transformers' hidden_act names: quick_gelu, gelu, gelu_new and gelu_pytorch_tanh (the tanh
  // approximation); ValueError naming `field` for any other.
  Activation activation(const std::string& name, std::string_view field) const {
    if (name == "quick_gelu") return Activation::quick_gelu;
    if (name == "gelu") return Activation::gelu;
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::gelu_tanh;
    detail::raise<ValueError>(fn_, "field '", field, "' is \"", name,
                              "\", expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh");
  }

  // config[name], or an empty object when absent.
  static const nlohmann::json& section(const nlohmann::json& config, const char* name) {
    static const nlohmann::json empty = nlohmann::json::object();
    return config.is_object() && config.contains(name) ? config.at(name) : empty;
  }

 private:
  std::string_view fn_;
};

// The JSON object in the file at `path`; IoError naming `fn` and the path when it cannot be read
// or parsed, or holds something else than an object.
inline nlohmann::json read_json_object(std::string_view fn, const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) detail::raise<IoError>(fn, "cannot open '", path.string(), "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    detail::raise<IoError>(fn, "'", path.string(), "' is not valid JSON: ", e.what());
  }
  if (!j.is_object()) detail::raise<IoError>(fn, "'", path.string(), "' is not a JSON object");
  return j;
}

}  // namespace tessera::models
