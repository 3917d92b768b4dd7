// tessera: what every checkpoint loader in models/ shares: finding a Hugging Face config.json
// beside the weights (reading one: models/hf_config.hpp), and the load itself (layout detection,
// renaming that moves the bytes, the architecture check, construction without random
// initialisation, a consuming load).
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/models/architecture_check.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::models {

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
