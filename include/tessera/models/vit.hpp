// tessera: ViT image classifiers (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") from
// torchvision checkpoints, as the state dict of torchvision.models.vit_b_16 & co. writes them,
// with no renaming by the caller:
//
//   auto vit = tessera::models::load_vit<float>("vit_b_16.safetensors", "vit_b_16");
//   auto logits = vit.forward(pixels);   // [B, 1000], pixels [B, 3, 224, 224]
//   (ImageNet-normalised)
//
// Export from Python:  from safetensors.torch import save_file
//                      save_file(torchvision.models.vit_b_16(weights="DEFAULT").state_dict(),
//                                "vit_b_16.safetensors")
//
// As load_clip, the loader reads every size the shapes give and checks it against the preset;
// the preset gives the heads, torchvision's LayerNorm eps 1e-6 and GELU.
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
#include "tessera/io/safetensors.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/models/architecture_check.hpp"
#include "tessera/models/loading.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/models/vision_transformer.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::models {

struct VitPreset {
  std::string_view name;
  std::string_view description;
  VisionTransformerOptions options;
};

// torchvision's ViT builders (torchvision/models/vision_transformer.py, 0.14): 224 x 224
// images, 1000 ImageNet classes, LayerNorm eps 1e-6, GELU, conv_proj with bias, no ln_pre.
inline std::span<const VitPreset> vit_presets() {
  auto tv = [](Index patch, Index width, Index layers, Index heads, Index mlp) {
    return VisionTransformerOptions{.image_size = 224,
                                    .patch_size = patch,
                                    .width = width,
                                    .layers = layers,
                                    .heads = heads,
                                    .mlp_dim = mlp,
                                    .activation = Activation::gelu,
                                    .layer_norm_eps = 1e-6,
                                    .patch_bias = true,
                                    .ln_pre = false,
                                    .output_dim = 1000,
                                    .head_bias = true};
  };
  static const VitPreset presets[] = {
      {"vit_b_16", "torchvision ViT-B/16", tv(16, 768, 12, 12, 3072)},
      {"vit_b_32", "torchvision ViT-B/32", tv(32, 768, 12, 12, 3072)},
      {"vit_l_16", "torchvision ViT-L/16", tv(16, 1024, 24, 16, 4096)},
      {"vit_l_32", "torchvision ViT-L/32", tv(32, 1024, 24, 16, 4096)},
      {"vit_h_14", "torchvision ViT-H/14", tv(14, 1280, 32, 16, 5120)},
  };
  return presets;
}

// The preset named `name`; throws ValueError listing the known names.
inline const VitPreset& vit_preset(std::string_view name) {
  for (const VitPreset& p : vit_presets())
    if (p.name == name) return p;
  std::vector<std::string_view> names;
  for (const VitPreset& p : vit_presets()) names.push_back(p.name);
  tessera::detail::raise<ValueError>("tessera::models::vit_preset", "no ViT preset named '", name,
                                     "'; the presets are ", tessera::detail::capped_list(names));
}

// A VisionTransformer from a torchvision checkpoint's tensors, with the architecture of
// `options` (checked against the shapes; `preset` names it in messages). Tensors are moved into
// tessera's names, the model is built without random initialisation and each tensor is
// released once copied. Throws ValueError for keys outside torchvision's layout (at most 20
// listed, then their count) or a preset that contradicts the shapes, ShapeError for a tensor of
// a shape the architecture does not take.
template <class T>
VisionTransformer<T> load_vit(io::StateDict dict, const VisionTransformerOptions& options,
                              std::string_view preset = "(custom options)") {
  const NamingConvention* candidates[] = {&torchvision_vit_naming()};
  return load_checked<VisionTransformer<T>>(
      "tessera::models::load_vit", std::move(dict), candidates, options, preset,
      [&](ArchitectureCheck& check) { check.vision("", "", options); });
}

template <class T>
VisionTransformer<T> load_vit(io::StateDict dict, std::string_view preset) {
  return load_vit<T>(std::move(dict), vit_preset(preset).options, preset);
}

template <class T>
VisionTransformer<T> load_vit(const std::filesystem::path& path, std::string_view preset) {
  return load_vit<T>(io::load_safetensors(path), preset);
}

}  // namespace tessera::models
