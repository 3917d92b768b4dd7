// tessera: checkpoint naming conventions as data. A convention is a table of rules, each mapping
// a family of checkpoint keys onto tessera's parameter names (models/clip.hpp,
// vision_transformer.hpp, text_transformer.hpp) with an optional transform:
//
//   {"visual.transformer.resblocks.#.ln_1.*", "visual.encoder.layers.#.norm1.*"}
//
// '#' matches a layer number (decimal digits), a trailing '*' the rest of the key (at least one
// character); the target names the same placeholders in the same order. Renaming moves each
// tensor's bytes (io::StateDict::rename); only a transposed tensor is copied, one at a time.
//
// The OpenAI CLIP layout (also open_clip's for its ViT models) is openai_clip_naming(): keys as
// in OpenAI's model.py (https://github.com/openai/CLIP, MIT), `proj` and `text_projection` stored
// [in, out] and transposed into Linear's [out, in].
#pragma once

#include <cstddef>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/state_dict.hpp"

namespace tessera::models {

// What a rule does to the tensor besides renaming it.
enum class NameTransform {
  none,
  transpose,  // a matrix [rows, cols] becomes [cols, rows]
  squeeze,    // leading dimensions of size 1 removed: [1, 1, 768] -> [768] (bytes unchanged)
  drop,       // a checkpoint entry the model does not use (e.g. OpenAI's `input_resolution`)
};

struct NameRule {
  std::string_view from;  // checkpoint key pattern
  std::string_view to;    // tessera key pattern (ignored with drop)
  NameTransform transform = NameTransform::none;
};

struct NamingConvention {
  std::string_view name;         // "openai_clip"
  std::string_view description;  // who writes checkpoints in this layout
  std::span<const NameRule> rules;
};

}  // namespace tessera::models

namespace tessera::detail {

// `key` renamed by `rule`, or nullopt when the rule does not match it.
inline std::optional<std::string> apply_name_rule(std::string_view key,
                                                  const models::NameRule& rule) {
  std::vector<std::string_view> captures;
  std::size_t k = 0;
  const std::string_view pat = rule.from;
  for (std::size_t p = 0; p < pat.size(); ++p) {
    if (pat[p] == '#') {
      const std::size_t start = k;
      while (k < key.size() && key[k] >= '0' && key[k] <= '9') ++k;
      if (k == start) return std::nullopt;
      captures.push_back(key.substr(start, k - start));
    } else if (pat[p] == '*') {
      if (k >= key.size()) return std::nullopt;
      captures.push_back(key.substr(k));
      k = key.size();
    } else {
      if (k >= key.size() || key[k] != pat[p]) return std::nullopt;
      ++k;
    }
  }
  if (k != key.size()) return std::nullopt;
  std::string out;
  std::size_t c = 0;
  for (const char ch : rule.to) {
    if ((ch == '#' || ch == '*') && c < captures.size())
      out.append(captures[c++]);
    else
      out.push_back(ch);
  }
  return out;
}

// The first rule of `convention` that matches `key`, or null.
inline const models::NameRule* find_name_rule(std::string_view key,
                                              const models::NamingConvention& convention) {
  for (const models::NameRule& r : convention.rules)
    if (apply_name_rule(key, r)) return &r;
  return nullptr;
}

// Transposes a stored matrix in place: [rows, cols] -> [cols, rows], element bytes moved as is.
inline void transpose_stored(std::string_view fn, std::string_view key, io::StoredTensor& t) {
  if (t.shape.size() != 2)
    tessera::detail::raise<ShapeError>(fn, "checkpoint tensor '", key, "' has shape ",
                                       tessera::detail::shape_string(t.shape),
                                       ", expected a matrix to transpose");
  const Index rows = t.shape[0], cols = t.shape[1];
  const std::size_t es = io::dtype_size(t.dtype);
  std::vector<std::byte> out(t.bytes.size());
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      std::memcpy(out.data() + (static_cast<std::size_t>(c * rows + r)) * es,
                  t.bytes.data() + (static_cast<std::size_t>(r * cols + c)) * es, es);
  t.bytes = std::move(out);
  t.shape = {cols, rows};
}

}  // namespace tessera::detail

namespace tessera::models {

// How many keys of `dict` some rule of `convention` matches.
inline std::size_t count_matching_keys(const io::StateDict& dict,
                                       const NamingConvention& convention) {
  std::size_t n = 0;
  for (const auto& kv : dict)
    if (detail::find_name_rule(kv.first, convention)) ++n;
  return n;
}

// `dict` with every key renamed by `convention` (bytes moved, not copied; transposed matrices
// copied one at a time) and dropped entries removed; `origin`, when given, receives each new
// name's checkpoint key, for messages. Throws ValueError, naming `fn`, listing at most
// tessera::detail::kMaxListedItems keys that no rule matches, and their count.
inline io::StateDict rename_state_dict(
    std::string_view fn, io::StateDict dict, const NamingConvention& convention,
    std::map<std::string, std::string, std::less<>>* origin = nullptr) {
  std::vector<std::string> unmatched;
  for (const auto& kv : dict)
    if (!detail::find_name_rule(kv.first, convention)) unmatched.push_back(kv.first);
  if (!unmatched.empty())
    tessera::detail::raise<ValueError>(fn, unmatched.size(), " of the checkpoint's ", dict.size(),
                                       " keys are not in the ", convention.name, " layout (",
                                       convention.description,
                                       "): ", tessera::detail::capped_list(unmatched));
  io::StateDict out;
  out.metadata = std::move(dict.metadata);
  for (const std::string& key : dict.keys()) {
    const NameRule* rule = detail::find_name_rule(key, convention);
    std::optional<io::StoredTensor> t = dict.take(key);
    if (rule->transform == NameTransform::drop) continue;
    if (rule->transform == NameTransform::transpose) detail::transpose_stored(fn, key, *t);
    if (rule->transform == NameTransform::squeeze)
      while (t->shape.size() > 1 && t->shape.front() == 1) t->shape.erase(t->shape.begin());
    std::string name = *detail::apply_name_rule(key, *rule);
    if (out.contains(name))
      tessera::detail::raise<ValueError>(fn, "checkpoint keys map twice onto '", name, "' in the ",
                                         convention.name, " layout");
    if (origin) (*origin)[name] = key;
    out.insert(std::move(name), std::move(*t));
  }
  return out;
}

// OpenAI's CLIP (model.py) and open_clip's CLIP with a ViT image tower and the default text
// tower: visual.*, token_embedding, positional_embedding, transformer.resblocks.*, ln_final,
// text_projection, logit_scale.
inline const NamingConvention& openai_clip_naming() {
  static constexpr NameRule rules[] = {
      {"visual.conv1.weight", "visual.patch_embed.conv1.weight"},
      {"visual.class_embedding", "visual.patch_embed.class_embedding"},
      {"visual.positional_embedding", "visual.patch_embed.positional_embedding"},
      {"visual.ln_pre.*", "visual.patch_embed.ln_pre.*"},
      {"visual.transformer.resblocks.#.attn.*", "visual.encoder.layers.#.self_attn.*"},
      {"visual.transformer.resblocks.#.ln_1.*", "visual.encoder.layers.#.norm1.*"},
      {"visual.transformer.resblocks.#.mlp.c_fc.*", "visual.encoder.layers.#.linear1.*"},
      {"visual.transformer.resblocks.#.mlp.c_proj.*", "visual.encoder.layers.#.linear2.*"},
      {"visual.transformer.resblocks.#.ln_2.*", "visual.encoder.layers.#.norm2.*"},
      {"visual.ln_post.*", "visual.ln_post.*"},
      {"visual.proj", "visual.head.weight", NameTransform::transpose},
      {"token_embedding.weight", "text.embed.token_embedding.weight"},
      {"positional_embedding", "text.embed.positional_embedding"},
      {"transformer.resblocks.#.attn.*", "text.encoder.layers.#.self_attn.*"},
      {"transformer.resblocks.#.ln_1.*", "text.encoder.layers.#.norm1.*"},
      {"transformer.resblocks.#.mlp.c_fc.*", "text.encoder.layers.#.linear1.*"},
      {"transformer.resblocks.#.mlp.c_proj.*", "text.encoder.layers.#.linear2.*"},
      {"transformer.resblocks.#.ln_2.*", "text.encoder.layers.#.norm2.*"},
      {"ln_final.*", "text.ln_final.*"},
      {"text_projection", "text.head.weight", NameTransform::transpose},
      {"logit_scale", "logit_scale"},
      // Entries of OpenAI's TorchScript archives that are configuration, not weights.
      {"input_resolution", "", NameTransform::drop},
      {"context_length", "", NameTransform::drop},
      {"vocab_size", "", NameTransform::drop},
      {"attn_mask", "", NameTransform::drop},
  };
  static constexpr NamingConvention convention{
      "openai_clip", "OpenAI CLIP or open_clip: visual.transformer.resblocks.N, text_projection",
      rules};
  return convention;
}

// torchvision's VisionTransformer (torchvision.models.vit_b_16 and its siblings): conv_proj,
// class_token [1, 1, width], encoder.pos_embedding [1, tokens, width],
// encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp.0, mlp.3}, encoder.ln,
// heads.head. The MLP's older names mlp.linear_1/linear_2 (torchvision < 0.13) load too.
inline const NamingConvention& torchvision_vit_naming() {
  static constexpr NameRule rules[] = {
      {"conv_proj.*", "patch_embed.conv1.*"},
      {"class_token", "patch_embed.class_embedding", NameTransform::squeeze},
      {"encoder.pos_embedding", "patch_embed.positional_embedding", NameTransform::squeeze},
      {"encoder.layers.encoder_layer_#.ln_1.*", "encoder.layers.#.norm1.*"},
      {"encoder.layers.encoder_layer_#.self_attention.*", "encoder.layers.#.self_attn.*"},
      {"encoder.layers.encoder_layer_#.ln_2.*", "encoder.layers.#.norm2.*"},
      {"encoder.layers.encoder_layer_#.mlp.0.*", "encoder.layers.#.linear1.*"},
      {"encoder.layers.encoder_layer_#.mlp.3.*", "encoder.layers.#.linear2.*"},
      {"encoder.layers.encoder_layer_#.mlp.linear_1.*", "encoder.layers.#.linear1.*"},
      {"encoder.layers.encoder_layer_#.mlp.linear_2.*", "encoder.layers.#.linear2.*"},
      {"encoder.ln.*", "ln_post.*"},
      {"heads.head.*", "head.*"},
  };
  static constexpr NamingConvention convention{
      "torchvision_vit",
      "torchvision's VisionTransformer: encoder.layers.encoder_layer_N, heads.head", rules};
  return convention;
}

}  // namespace tessera::models
