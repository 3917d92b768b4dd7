// tessera::text::SentencePieceTokenizer: a SentencePiece model (.model file, unigram or BPE)
// through the sentencepiece library, with SigLIP's batch tokenization.
//
//   tessera::text::SentencePieceTokenizer tok("spiece.model");
//   std::vector<std::int64_t> ids = tok.encode("a photo of a cat");
//   tessera::Tensor<tessera::Index, 2> batch = tok.tokenize({"a cat", "a dog"});   // [2, 64]
//
// Needs tessera::sentencepiece (libsentencepiece) and, for the clean-up, tessera::text
// (utf8proc).
#pragma once

#include <sentencepiece_processor.h>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/text/text_cleaning.hpp"
#include "tessera/text/unicode.hpp"

namespace tessera::text {

struct SentencePieceOptions {
  // Clean each text as open_clip's SigLipTokenizer does before encoding: canonicalize_text
  // (html unescape, '_' to space, ASCII punctuation removed, lower case, whitespace collapsed).
  bool canonicalize = true;
  // Append the end-of-sequence id to every text in tokenize() (T5/SigLIP's "X </s>").
  bool add_eos = true;
  // The id tokenize() pads with; -1 means the model's eos id (SigLIP pads with "</s>", id 1).
  std::int64_t pad_id = -1;
};

// SigLIP's text tokenizer (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"):
//   - big_vision's SigLIP demo colab and zero-shot configs run its `tokenize` preprocessing op
//     (get_pp_tokenize) as `tokenize(max_len=64, model='c4_en', eos='sticky', pad_value=1)`:
//     the text lower-cased (the op's default lower=True), its SentencePiece ids, an eos that stays
//     last when the ids are cut to max_len ('sticky'), padding with 1 (the eos id of the T5 c4_en
//     vocabulary: pad 0, eos 1, unk 2);
//   - Hugging Face's SiglipTokenizer (models/siglip/tokenization_siglip.py) appends eos
//     ("X </s>"), pads with pad_token "</s>" to model_max_length 64 (padding="max_length" in the
//     model card), lower-cases (do_lower_case=True) and strips punctuation (canonicalize_text);
//   - open_clip's SigLipTokenizer cleans with canonicalize_text(basic_clean(text)), then T5's
//     tokenizer with eos, pad_token_id = eos_token_id = 1, max_length 64, truncation.
// This follows open_clip (SentencePieceOptions' defaults). encode/decode/tokenize are const and
// thread-safe (SentencePieceProcessor's Encode and Decode are const).
class SentencePieceTokenizer {
 public:
  using Id = std::int64_t;

  // Loads `model_file`; throws IoError naming the path and sentencepiece's message when it
  // cannot, and ValueError when options.pad_id is outside the vocabulary.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_file,
                                  SentencePieceOptions options = {})
      : sp_(std::make_shared<sentencepiece::SentencePieceProcessor>()), options_(options) {
    constexpr std::string_view fn = "tessera::text::SentencePieceTokenizer";
    std::error_code ec;
    if (!std::filesystem::is_regular_file(model_file, ec))
      detail::raise<IoError>(
          fn, "cannot open '", model_file.string(),
          "': ", std::filesystem::exists(model_file, ec) ? "not a regular file" : "no such file");
    const auto status = sp_->Load(model_file.string());
    if (!status.ok())
      detail::raise<IoError>(fn, "cannot load the SentencePiece model '", model_file.string(),
                             "': ", status.ToString());
    if (options_.pad_id < 0) options_.pad_id = sp_->eos_id();
    if (options_.pad_id < 0 || options_.pad_id >= sp_->GetPieceSize())
      detail::raise<ValueError>(fn, "options.pad_id is ", options_.pad_id,
                                " (or the model has no eos id), expected an id in [0, ",
                                sp_->GetPieceSize(), ")");
    if (options_.add_eos && sp_->eos_id() < 0)
      detail::raise<ValueError>(fn, "options.add_eos is set but the model '", model_file.string(),
                                "' has no eos piece");
  }

  // The ids of `text` (UTF-8): canonicalize_text first when options.canonicalize, then
  // SentencePiece's own normalisation and segmentation; no eos. Throws ValueError naming the byte
  // offset of invalid UTF-8.
  std::vector<Id> encode(std::string_view text) const {
    constexpr std::string_view fn = "tessera::text::SentencePieceTokenizer::encode";
    check_utf8(text, fn);
    return encode_checked(text, fn);
  }

  // SigLIP's batch: each text's encode() ids, then eos (options.add_eos), cut to
  // `context_length` with eos kept last (big_vision's eos='sticky'), padded with options.pad_id.
  // Returns shape [texts.size(), context_length]. Throws ValueError when context_length < 1 (< 2
  // with add_eos), or naming the text index and byte offset of invalid UTF-8.
  Tensor<Index, 2> tokenize(std::span<const std::string> texts, Index context_length = 64) const {
    return tokenize_impl(
        texts.size(), [&](std::size_t i) { return std::string_view(texts[i]); }, context_length);
  }
  Tensor<Index, 2> tokenize(std::initializer_list<std::string_view> texts,
                            Index context_length = 64) const {
    return tokenize_impl(
        texts.size(), [&](std::size_t i) { return texts.begin()[i]; }, context_length);
  }
  Tensor<Index, 2> tokenize(std::string_view text, Index context_length = 64) const {
    return tokenize_impl(
        1, [&](std::size_t) { return text; }, context_length);
  }

  // Text from ids (SentencePiece's Decode: pieces joined, "▁" to spaces, control pieces such as
  // eos and pad dropped). Throws ValueError naming the position of an id outside the vocabulary.
  std::string decode(std::span<const Id> ids) const {
    std::vector<int> v(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size())
        detail::raise<ValueError>("tessera::text::SentencePieceTokenizer::decode",
                                  "argument 'ids'[", i, "] is ", ids[i], ", expected an id in [0, ",
                                  vocab_size(), ")");
      v[i] = static_cast<int>(ids[i]);
    }
    std::string out;
    const auto status = sp_->Decode(v, &out);
    if (!status.ok())
      detail::raise<ValueError>("tessera::text::SentencePieceTokenizer::decode",
                                "sentencepiece failed: ", status.ToString());
    return out;
  }
  std::string decode(const std::vector<Id>& ids) const {
    return decode(std::span<const Id>(ids.data(), ids.size()));
  }

  Index vocab_size() const { return sp_->GetPieceSize(); }
  Id eos_id() const { return sp_->eos_id(); }
  Id unk_id() const { return sp_->unk_id(); }
  Id bos_id() const { return sp_->bos_id(); }
  // The id tokenize() pads with.
  Id pad_id() const { return options_.pad_id; }
  const SentencePieceOptions& options() const { return options_; }
  const sentencepiece::SentencePieceProcessor& processor() const { return *sp_; }

 private:
  std::vector<Id> encode_checked(std::string_view text, std::string_view fn) const {
    const std::string clean =
        options_.canonicalize ? impl::canonicalize_checked(text) : std::string(text);
    std::vector<int> ids;
    const auto status = sp_->Encode(clean, &ids);
    if (!status.ok()) detail::raise<ValueError>(fn, "sentencepiece failed: ", status.ToString());
    return std::vector<Id>(ids.begin(), ids.end());
  }

  template <class Get>
  Tensor<Index, 2> tokenize_impl(std::size_t n, Get&& get, Index context_length) const {
    constexpr std::string_view fn = "tessera::text::SentencePieceTokenizer::tokenize";
    const Index min_length = options_.add_eos ? 2 : 1;
    if (context_length < min_length)
      detail::raise<ValueError>(fn, "argument 'context_length' is ", context_length,
                                ", expected at least ", min_length);
    Tensor<Index, 2> out(Shape<2>{static_cast<Index>(n), context_length}, uninitialized);
    out.setConstant(options_.pad_id);
    for (std::size_t i = 0; i < n; ++i) {
      const std::string_view text = get(i);
      if (const std::size_t bad = find_invalid_utf8(text); bad != std::string_view::npos)
        detail::raise<ValueError>(fn, "argument 'texts'[", i, "] is not valid UTF-8: byte offset ",
                                  bad, " (", impl::hex_byte(static_cast<unsigned char>(text[bad])),
                                  ") does not begin a well-formed sequence");
      std::vector<Id> ids = encode_checked(text, fn);
      if (options_.add_eos) ids.push_back(eos_id());
      const auto len = std::min<std::size_t>(ids.size(), static_cast<std::size_t>(context_length));
      if (options_.add_eos && ids.size() > len) ids[len - 1] = eos_id();  // eos='sticky'
      for (std::size_t t = 0; t < len; ++t)
        out(static_cast<Index>(i), static_cast<Index>(t)) = ids[t];
    }
    return out;
  }

  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  SentencePieceOptions options_;
};

}  // namespace tessera::text
