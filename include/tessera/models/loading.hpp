// tessera: what every checkpoint loader in models/ shares: reading a Hugging Face config.json,
// finding it beside the weights, and the load itself (layout detection, renaming that moves the
// bytes, the architecture check, construction without random initialisation, a consuming load).
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/models/architecture_check.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/nn/parameter.hpp"

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

// The config.json beside a weights file (a Hugging Face model folder). ValueError naming `fn`
// and listing the `presets` to pass instead when there is none.
template <class Presets>
std::filesystem::path config_beside(std::string_view fn, const std::filesystem::path& weights,
                                    const Presets& presets) {
  auto config = weights.parent_path() / "config.json";
  if (std::filesystem::exists(config)) return config;
  std::vector<std::string_view> names;
  for (const auto& p : presets) names.push_back(p.name);
  detail::raise<ValueError>(fn, "no preset given and no config.json beside '", weights.string(),
                            "'; pass a preset (", detail::capped_list(names),
                            ") or put the checkpoint's config.json there");
}

// A Model built with `options` and loaded from `dict`: the layout detected among `candidates`
// (the others of known_namings() named in the error when the keys fit one), the tensors renamed
// (bytes moved), `check(ArchitectureCheck&)` comparing the shapes with the options (`preset`
// names them in messages), the model built without drawing random weights and every parameter
// written from the checkpoint, each tensor released once copied.
template <class Model, class Options, class Check>
Model load_checked(std::string_view fn, io::StateDict dict,
                   std::span<const NamingConvention* const> candidates, const Options& options,
                   std::string_view preset, Check&& check) {
  const auto others = known_namings();
  const NamingConvention& naming = detect_naming(fn, dict, candidates, others);
  std::map<std::string, std::string, std::less<>> origin;
  io::StateDict named = rename_state_dict(fn, std::move(dict), naming, &origin);
  ArchitectureCheck arch(fn, named, origin, naming);
  check(arch);
  arch.raise_if_any(preset);
  Model model = [&] {
    nn::SkipInit skip;
    return Model(options);
  }();
  model.load_state_dict(std::move(named));
  return model;
}

}  // namespace tessera::models

namespace tessera::detail {

// The checks a contrastive train_loss runs first: images [N, ...] and ids [N, L] hold the same
// number N >= 1 of pairs (ShapeError naming `fn` otherwise).
template <class X, class I>
void check_training_pairs(std::string_view fn, const X& images, const I& ids) {
  if (images.dim(0) < 1)
    raise<ShapeError>(fn, "argument 'images' holds no examples (shape ",
                      shape_string(images.shape()), "), expected a batch of at least 1 pair");
  if (images.dim(0) != ids.dim(0))
    raise<ShapeError>(fn, "arguments 'images' and 'ids' hold ", images.dim(0), " and ", ids.dim(0),
                      " examples, expected pairs");
}

}  // namespace tessera::detail
