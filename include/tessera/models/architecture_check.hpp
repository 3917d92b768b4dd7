// tessera: models::ArchitectureCheck, what a checkpoint's shapes say about the model that wrote
// it, compared with the options (a preset) it is about to be loaded into. Every size the shapes
// give — widths, layers, patch and image size, MLP width, context length, vocabulary, outputs,
// which optional tensors exist (class token, ln_pre, biases, SigLIP's attention-pooling head) — is
// compared, as open_clip's build_model_from_openai_state_dict reads them; every disagreement is
// collected, and raise_if_any() throws one ValueError listing them all with both values and the
// checkpoint tensor that says so:
//
//   vision.patch_size: the preset says 32, the checkpoint's 'visual.conv1.weight'
//   [768, 3, 16, 16] says 16
//
// The dict holds tessera's names (models/naming.hpp); `origin` maps them back to the
// checkpoint's own, for messages.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/models/naming.hpp"
#include "tessera/models/text_transformer.hpp"
#include "tessera/models/vision_transformer.hpp"

namespace tessera::models {

class ArchitectureCheck {
 public:
  using Origin = std::map<std::string, std::string, std::less<>>;

  // `fn`: the function the user called, for messages; `convention` the checkpoint's layout,
  // which names a tensor the checkpoint lacks in its own terms. The check keeps references to
  // the maps and the convention.
  ArchitectureCheck(std::string_view fn, const io::StateDict& dict, const Origin& origin,
                    const NamingConvention& convention)
      : fn_(fn), dict_(dict), origin_(origin), convention_(convention) {}

  // A VisionTransformer's tensors under `prefix` ("visual." or ""), fields named `field` +
  // "width" etc. in messages.
  void vision(const std::string& prefix, const std::string& field,
              const VisionTransformerOptions& v) {
    const std::string conv = prefix + "patch_embed.conv1.weight";
    const auto& cs = expect_rank(conv, 4);
    compare(field + "width", v.width, cs[0], conv);
    compare(field + "in_channels", v.in_channels, cs[1], conv);
    compare(field + "patch_size", v.patch_size, cs[2], conv);
    if (cs[2] != cs[3])
      detail::raise<ValueError>(fn_, "checkpoint tensor '", original(conv), "' has shape ",
                                detail::shape_string(cs), ", expected square patches");
    // Positions: the patch grid, and the class token's when the checkpoint has one (the grid
    // is read from the checkpoint's own layout, so that a preset's wrong class_token is reported
    // as such and not as a wrong image size).
    const std::string cls = prefix + "patch_embed.class_embedding";
    const bool has_cls = dict_.contains(cls);
    compare_flag(field + "class_token", v.class_token, cls);
    const std::string pos = prefix + "patch_embed.positional_embedding";
    const auto& ps = expect_rank(pos, 2);
    const Index extra = has_cls ? 1 : 0;
    const Index grid = static_cast<Index>(
        std::llround(std::sqrt(static_cast<double>(std::max<Index>(ps[0] - extra, 0)))));
    if (grid < 1 || grid * grid + extra != ps[0])
      detail::raise<ValueError>(fn_, "checkpoint tensor '", original(pos), "' has shape ",
                                detail::shape_string(ps),
                                has_cls ? ", expected 1 + a square number of positions (the class "
                                          "token and the patch grid)"
                                        : ", expected a square number of positions (the patch "
                                          "grid; the checkpoint has no class token)");
    // With drop_partial_patches the image may be up to a patch larger than the grid covers.
    if (!(v.drop_partial_patches && cs[2] > 0 && v.image_size / cs[2] == grid))
      compare(field + "image_size", v.image_size, grid * cs[2], pos);
    compare_layers(field + "layers", v.layers, prefix + "encoder.layers.");
    const std::string fc = prefix + "encoder.layers.0.linear1.weight";
    compare(field + "mlp_dim", v.mlp_dim, expect_rank(fc, 2)[0], fc);
    const std::string head = prefix + "head.weight";
    if (v.output_dim > 0 || dict_.contains(head))
      compare(field + "output_dim", v.output_dim,
              dict_.contains(head) ? expect_rank(head, 2)[0] : 0, head);
    // The attention-pooling head (SigLIP): present or not, and its sizes.
    const std::string probe = prefix + "map_head.probe";
    const bool map = v.pooling == VisionPooling::map;
    if (map != dict_.contains(probe))
      problems_.push_back(field + "pooling: the preset says " + (map ? "map" : "class_token") +
                          ", the checkpoint " + (map ? "has no '" : "has '") + original(probe) +
                          "' (the attention-pooling head)");
    if (map && dict_.contains(probe)) {
      compare(field + "width", v.width, expect_rank(probe, 1)[0], probe);
      const std::string head_fc = prefix + "map_head.mlp.fc1.weight";
      compare(field + "mlp_dim", v.mlp_dim, expect_rank(head_fc, 2)[0], head_fc);
    }
    compare_flag(field + "ln_pre", v.ln_pre, prefix + "patch_embed.ln_pre.weight");
    compare_flag(field + "patch_bias", v.patch_bias, prefix + "patch_embed.conv1.bias");
    compare_flag(field + "head_bias", v.output_dim > 0 && v.head_bias, prefix + "head.bias");
  }

  // A TextTransformer's tensors under `prefix`.
  void text(const std::string& prefix, const std::string& field, const TextTransformerOptions& t) {
    const std::string tok = prefix + "embed.token_embedding.weight";
    const auto& ts = expect_rank(tok, 2);
    compare(field + "vocab_size", t.vocab_size, ts[0], tok);
    compare(field + "width", t.width, ts[1], tok);
    const std::string pos = prefix + "embed.positional_embedding";
    compare(field + "context_length", t.context_length, expect_rank(pos, 2)[0], pos);
    compare_layers(field + "layers", t.layers, prefix + "encoder.layers.");
    const std::string fc = prefix + "encoder.layers.0.linear1.weight";
    compare(field + "mlp_dim", t.mlp_dim, expect_rank(fc, 2)[0], fc);
    const std::string head = prefix + "head.weight";
    if (t.output_dim > 0 || dict_.contains(head))
      compare(field + "output_dim", t.output_dim,
              dict_.contains(head) ? expect_rank(head, 2)[0] : 0, head);
    compare_flag(field + "head_bias", t.output_dim > 0 && t.head_bias, prefix + "head.bias");
  }

  // Throws ValueError listing every disagreement found, if any; `preset` names the options.
  void raise_if_any(std::string_view preset) const {
    if (problems_.empty()) return;
    std::ostringstream os;
    for (std::size_t i = 0; i < problems_.size(); ++i) os << (i ? "; " : "") << problems_[i];
    detail::raise<ValueError>(fn_, "the checkpoint does not have the architecture of preset '",
                              preset, "': ", os.str());
  }

  const std::vector<std::string>& problems() const noexcept { return problems_; }

 private:
  // The checkpoint's own name for a tensor renamed to `key`, or for one it would have been
  // renamed from (a rule read backwards).
  std::string original(const std::string& key) const {
    if (const auto it = origin_.find(key); it != origin_.end()) return it->second;
    for (const NameRule& r : convention_.rules)
      if (r.transform != NameTransform::drop)
        if (auto name = detail::apply_name_rule(key, NameRule{r.to, r.from})) return *name;
    return key;
  }
  const std::vector<Index>& shape(const std::string& key) const {
    const io::StoredTensor* t = dict_.find(key);
    if (!t)
      detail::raise<ValueError>(fn_, "the checkpoint has no tensor '", original(key),
                                "' (tessera's '", key, "')");
    return t->shape;
  }
  const std::vector<Index>& expect_rank(const std::string& key, std::size_t rank) const {
    const auto& s = shape(key);
    if (s.size() != rank)
      detail::raise<ShapeError>(fn_, "checkpoint tensor '", original(key), "' has shape ",
                                detail::shape_string(s), ", expected rank ", rank);
    return s;
  }
  void compare(const std::string& field, Index preset_value, Index checkpoint_value,
               const std::string& key) {
    if (preset_value == checkpoint_value) return;
    std::ostringstream os;
    os << field << ": the preset says " << preset_value << ", the checkpoint";
    if (dict_.contains(key))
      os << "'s '" << original(key) << "' " << detail::shape_string(shape(key)) << " says "
         << checkpoint_value;
    else
      os << " has no '" << original(key) << "'";
    problems_.push_back(os.str());
  }
  // The number of blocks: the last one's key says how many there are.
  void compare_layers(const std::string& field, Index preset_value, const std::string& prefix) {
    Index n = 0;
    while (dict_.contains(prefix + std::to_string(n) + ".norm1.weight")) ++n;
    compare(field, preset_value, n, prefix + std::to_string(n > 0 ? n - 1 : 0) + ".norm1.weight");
  }
  void compare_flag(const std::string& field, bool preset_value, const std::string& key) {
    const bool present = dict_.contains(key);
    if (preset_value == present) return;
    problems_.push_back(field + ": the preset says " + (preset_value ? "true" : "false") +
                        ", the checkpoint " + (present ? "has '" : "has no '") + original(key) +
                        "'");
  }

  std::string_view fn_;
  const io::StateDict& dict_;
  const Origin& origin_;
  const NamingConvention& convention_;
  std::vector<std::string> problems_;
};

}  // namespace tessera::models
