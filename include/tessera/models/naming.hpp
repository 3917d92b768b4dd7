// tessera: checkpoint naming conventions as data. A convention is a table of rules, each mapping
// a family of checkpoint keys onto tessera's parameter names (models/clip.hpp,
// vision_transformer.hpp, text_transformer.hpp) with an optional transform:
//
//   {"visual.transformer.resblocks.#.ln_1.*", "visual.encoder.layers.#.norm1.*"}
//
// '#' matches a layer number (decimal digits), a trailing '*' the rest of the key (at least one
// character), '{q,k,v}' one of the listed words; the target names the '#' and '*' placeholders in
// the same order. A concat rule gathers the tensors its '{...}' alternatives match into one,
// stacked along the first dimension in the order listed: Hugging Face's separate q_proj, k_proj
// and v_proj weights become PyTorch's in_proj_weight. Renaming moves each
// tensor's bytes (io::StateDict::rename); only a transposed tensor is copied, one at a time.
//
// The OpenAI CLIP layout (also open_clip's for its ViT models) is openai_clip_naming(): keys as
// in OpenAI's model.py (https://github.com/openai/CLIP, MIT), `proj` and `text_projection` stored
// [in, out] and transposed into Linear's [out, in].
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <sstream>
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
  concat,     // the tensors of the '{a,b,c}' alternatives stacked along dimension 0 (copied)
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
  std::string_view loader;  // the tessera function that loads it, for hints: "models::load_clip"
};

}  // namespace tessera::models

namespace tessera::detail {

// `key` renamed by `rule`, or nullopt when the rule does not match it; `part`, when given,
// receives the index of the '{...}' alternative that matched (0 without one).
inline std::optional<std::string> apply_name_rule(std::string_view key,
                                                  const models::NameRule& rule,
                                                  std::size_t* part = nullptr) {
  std::vector<std::string_view> captures;
  std::size_t k = 0;
  if (part) *part = 0;
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
    } else if (pat[p] == '{') {
      const std::size_t close = pat.find('}', p);
      if (close == std::string_view::npos) return std::nullopt;
      const std::string_view alternatives = pat.substr(p + 1, close - p - 1);
      bool found = false;
      std::size_t index = 0;
      for (std::size_t a = 0; a <= alternatives.size(); ++index) {
        const std::size_t comma = std::min(alternatives.find(',', a), alternatives.size());
        const std::string_view word = alternatives.substr(a, comma - a);
        if (key.substr(k, word.size()) == word) {
          k += word.size();
          if (part) *part = index;
          found = true;
          break;
        }
        a = comma + 1;
      }
      if (!found) return std::nullopt;
      p = close;
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

// The words of a pattern's '{...}' group ("q", "k", "v"), empty without one.
inline std::vector<std::string_view> name_rule_alternatives(std::string_view pattern) {
  std::vector<std::string_view> words;
  const std::size_t open = pattern.find('{'), close = pattern.find('}');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open)
    return words;
  const std::string_view inside = pattern.substr(open + 1, close - open - 1);
  for (std::size_t a = 0; a <= inside.size();) {
    const std::size_t comma = std::min(inside.find(',', a), inside.size());
    words.push_back(inside.substr(a, comma - a));
    a = comma + 1;
  }
  return words;
}

// Stacks `parts` (same dtype, same trailing dimensions) along dimension 0 into one tensor.
inline io::StoredTensor concat_stored(std::string_view fn, std::string_view target,
                                      std::vector<io::StoredTensor>& parts) {
  io::StoredTensor out;
  out.dtype = parts.front().dtype;
  out.shape = parts.front().shape;
  if (out.shape.empty())
    raise<ShapeError>(fn, "the parts of '", target, "' are scalars, expected tensors to stack");
  Index rows = 0;
  std::size_t bytes = 0;
  for (const auto& p : parts) {
    const bool same_rest = p.shape.size() == out.shape.size() &&
                           std::equal(p.shape.begin() + 1, p.shape.end(), out.shape.begin() + 1);
    if (p.dtype != out.dtype || !same_rest)
      raise<ShapeError>(fn, "the parts of '", target, "' have shapes ",
                        shape_string(parts.front().shape), " and ", shape_string(p.shape),
                        " (dtypes ", io::dtype_name(out.dtype), ", ", io::dtype_name(p.dtype),
                        "), expected one dtype and the same dimensions after the first");
    rows += p.shape[0];
    bytes += p.bytes.size();
  }
  out.shape[0] = rows;
  out.bytes.reserve(bytes);
  for (auto& p : parts) {
    out.bytes.insert(out.bytes.end(), p.bytes.begin(), p.bytes.end());
    p.bytes = {};  // released as soon as copied
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
  // Concat rules: each target's parts, by alternative, until all are there.
  struct Group {
    const NameRule* rule = nullptr;
    std::vector<std::optional<io::StoredTensor>> parts;
    std::vector<std::string> keys;
  };
  std::map<std::string, Group, std::less<>> groups;
  for (const std::string& key : dict.keys()) {
    const NameRule* rule = detail::find_name_rule(key, convention);
    std::optional<io::StoredTensor> t = dict.take(key);
    if (rule->transform == NameTransform::drop) continue;
    if (rule->transform == NameTransform::concat) {
      std::size_t part = 0;
      std::string name = *detail::apply_name_rule(key, *rule, &part);
      Group& g = groups[name];
      if (!g.rule) {
        const std::size_t n = detail::name_rule_alternatives(rule->from).size();
        g.rule = rule, g.parts.resize(n), g.keys.resize(n);
      }
      g.parts[part] = std::move(t);
      g.keys[part] = key;
      continue;
    }
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
  for (auto& [name, g] : groups) {
    const auto words = detail::name_rule_alternatives(g.rule->from);
    std::vector<io::StoredTensor> parts;
    std::string present;
    for (std::size_t i = 0; i < g.parts.size(); ++i)
      if (g.parts[i]) present += (present.empty() ? "'" : ", '") + g.keys[i] + "'";
    for (std::size_t i = 0; i < g.parts.size(); ++i) {
      if (!g.parts[i])
        tessera::detail::raise<ValueError>(
            fn, "'", name, "' is stacked from the ", tessera::detail::capped_list(words),
            " tensors, but the checkpoint has only ", present, " (no '", words[i], "' part)");
      parts.push_back(std::move(*g.parts[i]));
    }
    if (out.contains(name))
      tessera::detail::raise<ValueError>(fn, "checkpoint keys map twice onto '", name, "' in the ",
                                         convention.name, " layout");
    if (origin) (*origin)[name] = g.keys.front();
    out.insert(name, detail::concat_stored(fn, name, parts));
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
      rules, "models::load_clip"};
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
      "torchvision's VisionTransformer: encoder.layers.encoder_layer_N, heads.head", rules,
      "models::load_vit"};
  return convention;
}

// Hugging Face's CLIPModel (transformers' modeling_clip.py): vision_model.* and text_model.* with
// separate q/k/v projections (stacked into in_proj_weight here), pre_layrnorm, post_layernorm,
// final_layer_norm, and Linear projections visual_projection and text_projection ([out, in]
// already).
inline const NamingConvention& hf_clip_naming() {
  static constexpr NameRule rules[] = {
      {"vision_model.embeddings.patch_embedding.*", "visual.patch_embed.conv1.*"},
      {"vision_model.embeddings.class_embedding", "visual.patch_embed.class_embedding"},
      {"vision_model.embeddings.position_embedding.weight",
       "visual.patch_embed.positional_embedding"},
      {"vision_model.embeddings.position_ids", "", NameTransform::drop},
      {"vision_model.pre_layrnorm.*", "visual.patch_embed.ln_pre.*"},
      {"vision_model.encoder.layers.#.self_attn.{q,k,v}_proj.weight",
       "visual.encoder.layers.#.self_attn.in_proj_weight", NameTransform::concat},
      {"vision_model.encoder.layers.#.self_attn.{q,k,v}_proj.bias",
       "visual.encoder.layers.#.self_attn.in_proj_bias", NameTransform::concat},
      {"vision_model.encoder.layers.#.self_attn.out_proj.*",
       "visual.encoder.layers.#.self_attn.out_proj.*"},
      {"vision_model.encoder.layers.#.layer_norm1.*", "visual.encoder.layers.#.norm1.*"},
      {"vision_model.encoder.layers.#.mlp.fc1.*", "visual.encoder.layers.#.linear1.*"},
      {"vision_model.encoder.layers.#.mlp.fc2.*", "visual.encoder.layers.#.linear2.*"},
      {"vision_model.encoder.layers.#.layer_norm2.*", "visual.encoder.layers.#.norm2.*"},
      {"vision_model.post_layernorm.*", "visual.ln_post.*"},
      {"visual_projection.weight", "visual.head.weight"},
      {"text_model.embeddings.token_embedding.weight", "text.embed.token_embedding.weight"},
      {"text_model.embeddings.position_embedding.weight", "text.embed.positional_embedding"},
      {"text_model.embeddings.position_ids", "", NameTransform::drop},
      {"text_model.encoder.layers.#.self_attn.{q,k,v}_proj.weight",
       "text.encoder.layers.#.self_attn.in_proj_weight", NameTransform::concat},
      {"text_model.encoder.layers.#.self_attn.{q,k,v}_proj.bias",
       "text.encoder.layers.#.self_attn.in_proj_bias", NameTransform::concat},
      {"text_model.encoder.layers.#.self_attn.out_proj.*",
       "text.encoder.layers.#.self_attn.out_proj.*"},
      {"text_model.encoder.layers.#.layer_norm1.*", "text.encoder.layers.#.norm1.*"},
      {"text_model.encoder.layers.#.mlp.fc1.*", "text.encoder.layers.#.linear1.*"},
      {"text_model.encoder.layers.#.mlp.fc2.*", "text.encoder.layers.#.linear2.*"},
      {"text_model.encoder.layers.#.layer_norm2.*", "text.encoder.layers.#.norm2.*"},
      {"text_model.final_layer_norm.*", "text.ln_final.*"},
      {"text_projection.weight", "text.head.weight"},
      {"logit_scale", "logit_scale"},
  };
  static constexpr NamingConvention convention{
      "hf_clip", "Hugging Face CLIPModel: vision_model.*, text_model.*, q_proj/k_proj/v_proj",
      rules, "models::load_clip"};
  return convention;
}

// Hugging Face's SiglipModel (transformers' modeling_siglip.py; models::SigLIP in
// models/siglip.hpp): as hf_clip_naming() for the encoders, with a patch conv that has a bias, no
// class token and no pre-layernorm, the attention-pooling `vision_model.head` (probe [1, 1, width]
// squeezed to [width], a torch.nn.MultiheadAttention, layernorm, mlp.fc1/fc2), the text tower's
// `head` Linear with bias, and logit_scale and logit_bias ([1] each). position_ids buffers (not
// persistent in transformers, but kept by some exports) are dropped.
inline const NamingConvention& hf_siglip_naming() {
  static constexpr NameRule rules[] = {
      {"vision_model.embeddings.patch_embedding.*", "visual.patch_embed.conv1.*"},
      {"vision_model.embeddings.position_embedding.weight",
       "visual.patch_embed.positional_embedding"},
      {"vision_model.embeddings.position_ids", "", NameTransform::drop},
      {"vision_model.encoder.layers.#.self_attn.{q,k,v}_proj.weight",
       "visual.encoder.layers.#.self_attn.in_proj_weight", NameTransform::concat},
      {"vision_model.encoder.layers.#.self_attn.{q,k,v}_proj.bias",
       "visual.encoder.layers.#.self_attn.in_proj_bias", NameTransform::concat},
      {"vision_model.encoder.layers.#.self_attn.out_proj.*",
       "visual.encoder.layers.#.self_attn.out_proj.*"},
      {"vision_model.encoder.layers.#.layer_norm1.*", "visual.encoder.layers.#.norm1.*"},
      {"vision_model.encoder.layers.#.mlp.fc1.*", "visual.encoder.layers.#.linear1.*"},
      {"vision_model.encoder.layers.#.mlp.fc2.*", "visual.encoder.layers.#.linear2.*"},
      {"vision_model.encoder.layers.#.layer_norm2.*", "visual.encoder.layers.#.norm2.*"},
      {"vision_model.post_layernorm.*", "visual.ln_post.*"},
      {"vision_model.head.probe", "visual.map_head.probe", NameTransform::squeeze},
      {"vision_model.head.attention.*", "visual.map_head.attention.*"},
      {"vision_model.head.layernorm.*", "visual.map_head.layernorm.*"},
      {"vision_model.head.mlp.fc1.*", "visual.map_head.mlp.fc1.*"},
      {"vision_model.head.mlp.fc2.*", "visual.map_head.mlp.fc2.*"},
      {"text_model.embeddings.token_embedding.weight", "text.embed.token_embedding.weight"},
      {"text_model.embeddings.position_embedding.weight", "text.embed.positional_embedding"},
      {"text_model.embeddings.position_ids", "", NameTransform::drop},
      {"text_model.encoder.layers.#.self_attn.{q,k,v}_proj.weight",
       "text.encoder.layers.#.self_attn.in_proj_weight", NameTransform::concat},
      {"text_model.encoder.layers.#.self_attn.{q,k,v}_proj.bias",
       "text.encoder.layers.#.self_attn.in_proj_bias", NameTransform::concat},
      {"text_model.encoder.layers.#.self_attn.out_proj.*",
       "text.encoder.layers.#.self_attn.out_proj.*"},
      {"text_model.encoder.layers.#.layer_norm1.*", "text.encoder.layers.#.norm1.*"},
      {"text_model.encoder.layers.#.mlp.fc1.*", "text.encoder.layers.#.linear1.*"},
      {"text_model.encoder.layers.#.mlp.fc2.*", "text.encoder.layers.#.linear2.*"},
      {"text_model.encoder.layers.#.layer_norm2.*", "text.encoder.layers.#.norm2.*"},
      {"text_model.final_layer_norm.*", "text.ln_final.*"},
      {"text_model.head.*", "text.head.*"},
      {"logit_scale", "logit_scale"},
      {"logit_bias", "logit_bias"},
  };
  static constexpr NamingConvention convention{
      "hf_siglip", "Hugging Face SiglipModel: vision_model.head.probe, text_model.head, logit_bias",
      rules, "models::load_siglip"};
  return convention;
}

// Hugging Face's CLIPVisionModel and CLIPVisionModelWithProjection on their own: vision_model.*
// as in hf_clip_naming(), onto a VisionTransformer's names, and the optional visual_projection as
// its head.
inline const NamingConvention& hf_clip_vision_naming() {
  static constexpr NameRule rules[] = {
      {"vision_model.embeddings.patch_embedding.*", "patch_embed.conv1.*"},
      {"vision_model.embeddings.class_embedding", "patch_embed.class_embedding"},
      {"vision_model.embeddings.position_embedding.weight", "patch_embed.positional_embedding"},
      {"vision_model.embeddings.position_ids", "", NameTransform::drop},
      {"vision_model.pre_layrnorm.*", "patch_embed.ln_pre.*"},
      {"vision_model.encoder.layers.#.self_attn.{q,k,v}_proj.weight",
       "encoder.layers.#.self_attn.in_proj_weight", NameTransform::concat},
      {"vision_model.encoder.layers.#.self_attn.{q,k,v}_proj.bias",
       "encoder.layers.#.self_attn.in_proj_bias", NameTransform::concat},
      {"vision_model.encoder.layers.#.self_attn.out_proj.*",
       "encoder.layers.#.self_attn.out_proj.*"},
      {"vision_model.encoder.layers.#.layer_norm1.*", "encoder.layers.#.norm1.*"},
      {"vision_model.encoder.layers.#.mlp.fc1.*", "encoder.layers.#.linear1.*"},
      {"vision_model.encoder.layers.#.mlp.fc2.*", "encoder.layers.#.linear2.*"},
      {"vision_model.encoder.layers.#.layer_norm2.*", "encoder.layers.#.norm2.*"},
      {"vision_model.post_layernorm.*", "ln_post.*"},
      {"visual_projection.weight", "head.weight"},
  };
  static constexpr NamingConvention convention{
      "hf_clip_vision",
      "Hugging Face CLIPVisionModel(WithProjection): vision_model.*, no text_model", rules,
      "models::load_clip_vision"};
  return convention;
}

// Every layout tessera knows, for detection and for hints when a checkpoint is given to the wrong
// loader.
inline std::vector<const NamingConvention*> known_namings() {
  return {&openai_clip_naming(), &hf_clip_naming(), &hf_clip_vision_naming(),
          &torchvision_vit_naming(), &hf_siglip_naming()};
}

// The convention among `candidates` whose rules name every key of `dict`. Otherwise throws
// ValueError naming `fn`: with the closest candidate's unmatched keys (at most 20, then their
// count), and, when another known layout (`others`) names every key, which one it is and the
// function that loads it.
inline const NamingConvention& detect_naming(std::string_view fn, const io::StateDict& dict,
                                             std::span<const NamingConvention* const> candidates,
                                             std::span<const NamingConvention* const> others) {
  const NamingConvention* best = nullptr;
  std::size_t best_count = 0;
  for (const NamingConvention* c : candidates) {
    const std::size_t n = count_matching_keys(dict, *c);
    if (n == dict.size() && !dict.empty()) return *c;
    if (!best || n > best_count) best = c, best_count = n;
  }
  std::string hint;
  for (const NamingConvention* c : others)
    if (!dict.empty() && count_matching_keys(dict, *c) == dict.size())
      hint = std::string("; the keys are in the ") + std::string(c->name) + " layout (" +
             std::string(c->description) + "): load it with " + std::string(c->loader);
  std::vector<std::string> unmatched;
  for (const auto& kv : dict)
    if (!detail::find_name_rule(kv.first, *best)) unmatched.push_back(kv.first);
  std::vector<std::string_view> names;
  for (const NamingConvention* c : candidates) names.push_back(c->name);
  std::ostringstream os;
  os << "the checkpoint's keys are in none of the layouts " << tessera::detail::capped_list(names);
  if (dict.empty())
    os << " (it holds no tensors)";
  else
    os << "; closest is " << best->name << ", which has no rule for " << unmatched.size()
       << " of the " << dict.size() << " keys: " << tessera::detail::capped_list(unmatched);
  tessera::detail::raise<ValueError>(fn, os.str(), hint);
}

}  // namespace tessera::models
