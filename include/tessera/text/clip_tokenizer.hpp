// tessera::text::ClipTokenizer: CLIP's byte-level BPE tokenizer, as open_clip's SimpleTokenizer
// (src/open_clip/tokenizer.py) and OpenAI CLIP's clip/simple_tokenizer.py behave:
//
//   clean-up          clip_clean (text_cleaning.hpp): ftfy.fix_text (fix_text.hpp, without
//                     mojibake repair), html.unescape twice,
//                     whitespace collapsed and stripped, Python's str.lower
//   pre-tokenization  ClipPreTokenizer: CLIP's regular expression through PCRE2
//   BPE               BytePairEncoder (bpe.hpp): bytes_to_unicode symbols, "</w>", merge ranks
//   special tokens    start and end of text around the ids, zero padding (tokenize)
//
//   auto tok = tessera::text::ClipTokenizer::from_file("bpe_simple_vocab_16e6.txt.gz");
//   // {320, 1125, 539, 320, 2368}
//   std::vector<std::int64_t> ids = tok.encode("a photo of a cat");
//   // [2, 77]: start token, ids, end token, zeros
//   tessera::Tensor<tessera::Index, 2> batch = tok.tokenize({"a cat", "a dog"});
//   std::string text = tok.decode(ids);   // "a photo of a cat "
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8  // UTF-8 patterns and subjects
#endif
#include <pcre2.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/text/bpe.hpp"
#include "tessera/text/text_cleaning.hpp"
#include "tessera/text/unicode.hpp"

namespace tessera::text {

// CLIP's pre-tokenizer: the regular expression
//   <special tokens>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// matched case-insensitively, left to right, with Unicode properties (PCRE2 in UTF + UCP mode;
// the reference uses Python's `regex` module); text no alternative matches (whitespace) is
// skipped. Contractions come off a word ("it's" -> "it", "'s"), letters run together, every
// digit is its own piece, and runs of other characters are one piece.
//
// The special tokens are matched literally (open_clip puts its "<start_of_text>|<end_of_text>"
// there; Hugging Face's CLIPTokenizer escapes "<\|startoftext\|>|<\|endoftext\|>"). OpenAI's
// simple_tokenizer.py writes "<|startoftext|>|<|endoftext|>" unescaped, which Python reads as the
// alternatives "<", "startoftext", ">", ...: that quirk is not reproduced.
//
// The pattern is compiled once (and JIT-compiled where PCRE2 supports it); split() is const and
// thread-safe (pcre2 code objects are read-only while matching; match data is per call).
class ClipPreTokenizer {
 public:
  explicit ClipPreTokenizer(const std::vector<std::string>& special_tokens = {}) {
    std::string pattern;
    for (const auto& t : special_tokens) {
      for (char c : t) {
        if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) pattern += '\\';
        pattern += c;
      }
      pattern += '|';
    }
    pattern += R"('s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)";
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      detail::raise<ValueError>("tessera::text::ClipPreTokenizer",
                                "cannot compile the pattern at offset ", offset, ": ",
                                reinterpret_cast<const char*>(message));
    }
    code_.reset(code, pcre2_code_free);
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional: interpreted matching if it fails
  }

  // The pieces of cleaned, valid UTF-8 `text`, as views into it.
  std::vector<std::string_view> split(std::string_view text) const {
    check_utf8(text, "tessera::text::ClipPreTokenizer::split");
    return split_unchecked(text);
  }

  std::vector<std::string_view> split_unchecked(std::string_view text) const {
    std::vector<std::string_view> pieces;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    PCRE2_SIZE start = 0;
    while (start < text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK,
                                 match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        detail::raise<ValueError>("tessera::text::ClipPreTokenizer::split",
                                  "pcre2_match failed: ", reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.get());
      pieces.push_back(text.substr(ov[0], ov[1] - ov[0]));
      start = ov[1] > ov[0] ? ov[1] : ov[1] + 1;  // no alternative matches empty text
    }
    return pieces;
  }

 private:
  std::shared_ptr<pcre2_code> code_;
};

namespace impl {

// The whole of a file, gunzipped when it is gzip (zlib reads other files as they are). Raises
// IoError naming `fn` and the path when it cannot be opened or the gzip data is corrupt or
// truncated.
inline std::string read_maybe_gzip(const std::filesystem::path& path, std::string_view fn) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    detail::raise<IoError>(
        fn, "cannot open '", path.string(),
        "': ", std::filesystem::exists(path, ec) ? "not a regular file" : "no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) detail::raise<IoError>(fn, "cannot open '", path.string(), "'");
  std::string data;
  char buffer[1 << 16];
  for (;;) {
    const int n = gzread(f, buffer, sizeof buffer);
    if (n < 0) {
      int errnum = 0;
      const std::string message = gzerror(f, &errnum);
      gzclose(f);
      detail::raise<IoError>(fn, "'", path.string(), "' is not a readable gzip file: ", message,
                             " (after ", data.size(), " bytes)");
    }
    if (n == 0) break;
    data.append(buffer, static_cast<std::size_t>(n));
  }
  int errnum = 0;
  const std::string message = gzerror(f, &errnum);
  const int closed = gzclose(f);
  if ((errnum != Z_OK && errnum != Z_STREAM_END) || closed != Z_OK)
    detail::raise<IoError>(fn, "'", path.string(), "' is a truncated or corrupt gzip file: ",
                           errnum != Z_OK ? message : std::string("unexpected end of file"), " (",
                           data.size(), " bytes read)");
  return data;
}

inline std::string read_text_file(const std::filesystem::path& path, std::string_view fn) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (!in || !std::filesystem::is_regular_file(path, ec))
    detail::raise<IoError>(fn, "cannot open '", path.string(), "'");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Splits a merge line "a b" on ASCII whitespace (Python's str.split(): byte symbols are never
// whitespace). Returns false unless it has exactly two parts.
inline bool split_merge_line(std::string_view line, std::pair<std::string, std::string>& out,
                             std::size_t& parts) {
  std::vector<std::string_view> p;
  std::size_t i = 0;
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; };
  while (i < line.size()) {
    while (i < line.size() && space(line[i])) ++i;
    const std::size_t b = i;
    while (i < line.size() && !space(line[i])) ++i;
    if (i > b) p.push_back(line.substr(b, i - b));
  }
  parts = p.size();
  if (p.size() != 2) return false;
  out = {std::string(p[0]), std::string(p[1])};
  return true;
}

// Parses merge lines (header excluded), at most `max_merges`; `first_line` is the 1-based line
// number of lines[0] in the file, for messages. A last empty line (the file's final newline) is
// ignored.
inline std::vector<std::pair<std::string, std::string>> parse_merges(
    std::string_view text, std::size_t skip_lines, std::size_t max_merges,
    const std::filesystem::path& path, std::string_view fn) {
  std::vector<std::pair<std::string, std::string>> merges;
  std::size_t line_no = 0, pos = 0;
  while (pos <= text.size() && merges.size() < max_merges) {
    std::size_t nl = text.find('\n', pos);
    const bool last = nl == std::string_view::npos;
    if (last) nl = text.size();
    const std::string_view line = text.substr(pos, nl - pos);
    ++line_no;
    pos = nl + 1;
    if (line_no <= skip_lines) {
      if (last) break;
      continue;
    }
    if (last && line.empty()) break;
    std::size_t parts = 0;
    std::pair<std::string, std::string> m;
    if (!split_merge_line(line, m, parts))
      detail::raise<IoError>(fn, "'", path.string(), "' line ", line_no,
                             ": expected a merge of two symbols separated by a space, found ",
                             parts, " symbol(s) in \"", line.substr(0, 80), "\"");
    merges.push_back(std::move(m));
    if (last) break;
  }
  return merges;
}

inline nlohmann::json read_json(const std::filesystem::path& path, std::string_view fn) {
  const std::string text = read_text_file(path, fn);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    detail::raise<IoError>(fn, "'", path.string(), "' is not valid JSON: ", e.what());
  }
}

// vocab.json / tokenizer.json's model.vocab: symbol -> id, into id -> symbol.
inline std::vector<std::string> vocab_from_json(const nlohmann::json& vocab,
                                                const std::filesystem::path& path,
                                                std::string_view fn, std::string_view where) {
  if (!vocab.is_object() || vocab.empty())
    detail::raise<IoError>(fn, "'", path.string(), "': ", where,
                           " must be a non-empty object of symbol -> id, found ",
                           vocab.type_name());
  std::vector<std::string> id_to_symbol;
  for (const auto& [symbol, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
        id.get<std::int64_t>() > (std::int64_t{1} << 30))
      detail::raise<IoError>(fn, "'", path.string(), "': ", where, " entry '", symbol, "' has id ",
                             id.dump(), ", expected an integer in [0, 2^30]");
    const auto i = static_cast<std::size_t>(id.get<std::int64_t>());
    if (i >= id_to_symbol.size()) id_to_symbol.resize(i + 1);
    if (symbol.empty())
      detail::raise<IoError>(fn, "'", path.string(), "': ", where, " has an empty symbol");
    id_to_symbol[i] = symbol;
  }
  return id_to_symbol;
}

}  // namespace impl

// Options of ClipTokenizer.
struct ClipTokenizerOptions {
  // Most BPE words cached (emptied when full); 0 disables the cache.
  std::size_t cache_capacity = std::size_t{1} << 16;
};

// CLIP's tokenizer. Loading: from_file (CLIP's bpe_simple_vocab_16e6.txt.gz or the same text
// uncompressed), from_hf_files (Hugging Face's vocab.json + merges.txt), from_hf_tokenizer_json
// (Hugging Face's tokenizer.json), or the constructor from a merge list. All give the same ids for
// the same merges: vocabulary = the 256 byte symbols, the same with "</w>", one symbol per merge,
// then the start and end of text tokens (49406 and 49407 with CLIP's 48,894 merges).
//
// encode/tokenize/decode are const and may run on several threads at once (the BPE word cache is
// locked; see BytePairEncoder).
class ClipTokenizer {
 public:
  using Id = std::int64_t;
  using Merges = std::vector<std::pair<std::string, std::string>>;

  // CLIP uses the first 49152 - 256 - 2 merges of its list (simple_tokenizer.py:
  // `merges[1:49152-256-2+1]`).
  static constexpr std::size_t kClipMerges = 49152 - 256 - 2;

  using Options = ClipTokenizerOptions;

  // A tokenizer built as open_clip's SimpleTokenizer builds its vocabulary from `merges` (all of
  // them: the caller truncates), with special tokens "<start_of_text>" and "<end_of_text>" after
  // the merges. Throws ValueError when a merge's symbols are not byte symbols or earlier merges.
  explicit ClipTokenizer(const Merges& merges, Options options = {})
      : ClipTokenizer(clip_vocab(merges), merges, "<start_of_text>", "<end_of_text>", options,
                      "tessera::text::ClipTokenizer") {}

  // From a vocabulary (id -> symbol, dense or with unused ids as empty strings), its merges, and
  // the names of the start and end tokens, which must be in the vocabulary.
  ClipTokenizer(std::vector<std::string> id_to_symbol, const Merges& merges, const std::string& sot,
                const std::string& eot, Options options = {},
                std::string_view fn = "tessera::text::ClipTokenizer")
      : bpe_(std::move(id_to_symbol), merges,
             {.end_of_word = "</w>", .cache_capacity = options.cache_capacity}, fn),
        pre_({sot, eot}),
        sot_name_(sot),
        eot_name_(eot) {
    sot_ = bpe_.id_of(sot);
    eot_ = bpe_.id_of(eot);
    if (sot_ < 0 || eot_ < 0)
      detail::raise<ValueError>(fn, "the special token '", sot_ < 0 ? sot : eot,
                                "' is not in the vocabulary");
  }

  // CLIP's merge list: gzip (bpe_simple_vocab_16e6.txt.gz) or plain text, a version header line
  // then one merge "a b" a line, of which the first 48,894 are used (fewer if the file has
  // fewer). Throws IoError naming the path when the file cannot be read, its gzip data is corrupt
  // or truncated, it is not UTF-8, a merge line does not hold two symbols (naming the line), or a
  // merge's symbols are neither byte symbols nor earlier merges (naming the merge's index).
  static ClipTokenizer from_file(const std::filesystem::path& path, Options options = {}) {
    constexpr std::string_view fn = "tessera::text::ClipTokenizer::from_file";
    const std::string text = impl::read_maybe_gzip(path, fn);
    check_merges_utf8(text, path, fn);
    Merges merges = impl::parse_merges(text, 1, kClipMerges, path, fn);
    return build(path, fn, [&] {
      return ClipTokenizer(clip_vocab(merges), merges, "<start_of_text>", "<end_of_text>", options,
                           fn);
    });
  }

  // Hugging Face's CLIPTokenizer files: vocab.json (symbol -> id: the byte symbols, their "</w>"
  // forms, the merges, then "<|startoftext|>" and "<|endoftext|>") and merges.txt (a
  // "#version: ..." first line, which is skipped when present, then a merge a line; the first
  // 48,894 are used, as transformers' CLIPTokenizer does). Throws IoError naming the path for an
  // unreadable file, malformed JSON, a malformed merge line, a merge whose symbols or result are
  // not in the vocabulary, or a vocabulary without the two special tokens.
  static ClipTokenizer from_hf_files(const std::filesystem::path& vocab_json,
                                     const std::filesystem::path& merges_txt,
                                     Options options = {}) {
    constexpr std::string_view fn = "tessera::text::ClipTokenizer::from_hf_files";
    const nlohmann::json vocab = impl::read_json(vocab_json, fn);
    std::vector<std::string> id_to_symbol =
        impl::vocab_from_json(vocab, vocab_json, fn, "the vocabulary");
    const std::string text = impl::read_text_file(merges_txt, fn);
    check_merges_utf8(text, merges_txt, fn);
    const std::size_t header = text.rfind("#version", 0) == 0 ? 1 : 0;
    Merges merges = impl::parse_merges(text, header, kClipMerges, merges_txt, fn);
    return build(vocab_json, fn, [&] {
      return ClipTokenizer(std::move(id_to_symbol), merges, "<|startoftext|>", "<|endoftext|>",
                           options, fn);
    });
  }

  // Hugging Face's tokenizer.json: model.vocab (symbol -> id) and model.merges (each "a b" or
  // ["a", "b"]; all are used); the special tokens "<|startoftext|>" and "<|endoftext|>" are
  // looked up in model.vocab, then in added_tokens. The file's normalizer and pre-tokenizer
  // sections are not read: CLIP's clean-up and pattern are used. Throws IoError naming the path
  // (unreadable, malformed JSON, no model.vocab/merges, a malformed merge, a merge or special
  // token missing from the vocabulary).
  static ClipTokenizer from_hf_tokenizer_json(const std::filesystem::path& path,
                                              Options options = {}) {
    constexpr std::string_view fn = "tessera::text::ClipTokenizer::from_hf_tokenizer_json";
    const nlohmann::json j = impl::read_json(path, fn);
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object() ||
        !j["model"].contains("vocab") || !j["model"].contains("merges"))
      detail::raise<IoError>(fn, "'", path.string(),
                             "' has no model.vocab and model.merges (not a BPE tokenizer.json)");
    const auto& model = j["model"];
    std::vector<std::string> id_to_symbol =
        impl::vocab_from_json(model["vocab"], path, fn, "model.vocab");
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& t : j["added_tokens"]) {
        if (!t.is_object() || !t.contains("id") || !t.contains("content") ||
            !t["id"].is_number_integer() || !t["content"].is_string())
          continue;
        const auto id = t["id"].get<std::int64_t>();
        if (id < 0 || id > (std::int64_t{1} << 30)) continue;
        if (static_cast<std::size_t>(id) >= id_to_symbol.size())
          id_to_symbol.resize(static_cast<std::size_t>(id) + 1);
        if (id_to_symbol[static_cast<std::size_t>(id)].empty())
          id_to_symbol[static_cast<std::size_t>(id)] = t["content"].get<std::string>();
      }
    const auto& jm = model["merges"];
    if (!jm.is_array())
      detail::raise<IoError>(fn, "'", path.string(), "': model.merges must be an array, found ",
                             jm.type_name());
    Merges merges;
    merges.reserve(jm.size());
    for (std::size_t i = 0; i < jm.size(); ++i) {
      const auto& m = jm[i];
      std::pair<std::string, std::string> pair;
      std::size_t parts = 0;
      bool ok = false;
      if (m.is_string()) {
        ok = impl::split_merge_line(m.get_ref<const std::string&>(), pair, parts);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        pair = {m[0].get<std::string>(), m[1].get<std::string>()};
        ok = !pair.first.empty() && !pair.second.empty();
      }
      if (!ok)
        detail::raise<IoError>(fn, "'", path.string(), "': model.merges[", i, "] is ",
                               m.dump().substr(0, 80),
                               ", expected \"a b\" or [\"a\", \"b\"] (two symbols)");
      merges.push_back(std::move(pair));
    }
    return build(path, fn, [&] {
      return ClipTokenizer(std::move(id_to_symbol), merges, "<|startoftext|>", "<|endoftext|>",
                           options, fn);
    });
  }

  // The ids of `text` (UTF-8), without start and end tokens: clean-up (clip_clean), pre-tokens
  // (ClipPreTokenizer), BPE of each. A pre-token equal to a special token's name becomes that
  // token (as SimpleTokenizer's cache seeds it). Throws ValueError naming the byte offset of
  // invalid UTF-8.
  std::vector<Id> encode(std::string_view text) const {
    check_utf8(text, "tessera::text::ClipTokenizer::encode");
    std::vector<Id> ids;
    encode_into(text, ids);
    return ids;
  }

  // open_clip's tokenize: each text as [sot] + encode(text) + [eot], zero padded to
  // `context_length`; a longer one is cut to context_length ids whose last is eot. Returns shape
  // [texts.size(), context_length]. Throws ValueError when context_length < 2, or naming the text
  // index and byte offset of invalid UTF-8.
  Tensor<Index, 2> tokenize(std::span<const std::string> texts, Index context_length = 77) const {
    return tokenize_impl(
        texts.size(), [&](std::size_t i) { return std::string_view(texts[i]); }, context_length);
  }
  Tensor<Index, 2> tokenize(std::initializer_list<std::string_view> texts,
                            Index context_length = 77) const {
    return tokenize_impl(
        texts.size(), [&](std::size_t i) { return texts.begin()[i]; }, context_length);
  }
  // One text: shape [1, context_length].
  Tensor<Index, 2> tokenize(std::string_view text, Index context_length = 77) const {
    return tokenize_impl(
        1, [&](std::size_t) { return text; }, context_length);
  }

  // Text from ids: decoding stops at the first end-of-text token, start-of-text tokens are
  // dropped, the other symbols concatenated, "</w>" becomes a space, and the symbols' bytes are
  // decoded as UTF-8 with U+FFFD for invalid sequences. So a row of tokenize() decodes to its
  // text: its zero padding after the end token is not read (id 0 is the real token "!", so
  // reading it would append "!!!..."). open_clip's SimpleTokenizer.decode keeps everything,
  // special tokens and padding included ("<start_of_text>a cat <end_of_text>!!!!..."); its
  // callers (e.g. open_clip's CoCa generation) cut at the end token first, which is what is done
  // here; Hugging Face's decode with skip_special_tokens drops the special tokens likewise. Ids
  // without an end token (encode()'s output) decode whole. Throws ValueError naming the position
  // of an id outside the vocabulary before the end token (ids after it are not read).
  std::string decode(std::span<const Id> ids) const {
    std::string symbols;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const Id id = ids[i];
      if (id < 0 || id >= bpe_.vocab_size() || bpe_.symbol(id).empty())
        detail::raise<ValueError>("tessera::text::ClipTokenizer::decode", "argument 'ids'[", i,
                                  "] is ", id, ", expected an id in [0, ", bpe_.vocab_size(), ")");
      if (id == eot_) break;
      if (id == sot_) continue;
      symbols += bpe_.symbol(id);
    }
    // bytes_from_symbols keeps "</w>"'s ASCII characters (they are their own byte symbols).
    std::string text = decode_utf8_replace(bytes_from_symbols(symbols));
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
      if (text.compare(i, 4, "</w>") == 0) {
        out += ' ';
        i += 4;
      } else {
        out += text[i++];
      }
    }
    return out;
  }
  std::string decode(const std::vector<Id>& ids) const {
    return decode(std::span<const Id>(ids.data(), ids.size()));
  }

  Index vocab_size() const noexcept { return bpe_.vocab_size(); }
  Id sot_token_id() const noexcept { return sot_; }
  Id eot_token_id() const noexcept { return eot_; }
  const BytePairEncoder& bpe() const noexcept { return bpe_; }
  const ClipPreTokenizer& pre_tokenizer() const noexcept { return pre_; }
  void clear_cache() const { bpe_.clear_cache(); }

  // open_clip's vocabulary for a merge list: byte symbols in CLIP's order, the same with "</w>",
  // each merge's concatenation, "<start_of_text>", "<end_of_text>".
  static std::vector<std::string> clip_vocab(const Merges& merges) {
    std::vector<std::string> v;
    v.reserve(512 + merges.size() + 2);
    for (unsigned char b : clip_byte_order()) v.push_back(byte_symbol(b));
    for (std::size_t i = 0; i < 256; ++i) v.push_back(v[i] + "</w>");
    for (const auto& [a, b] : merges) v.push_back(a + b);
    v.emplace_back("<start_of_text>");
    v.emplace_back("<end_of_text>");
    return v;
  }

 private:
  // Runs `make`, turning its ValueError (a merge or special token missing from the vocabulary)
  // into an IoError naming the file: the file is malformed.
  template <class Make>
  static ClipTokenizer build(const std::filesystem::path& path, std::string_view fn, Make&& make) {
    try {
      return make();
    } catch (const ValueError& e) {
      std::string_view what = e.what();
      if (what.substr(0, fn.size()) == fn) what.remove_prefix(std::min(what.size(), fn.size() + 2));
      detail::raise<IoError>(fn, "'", path.string(), "': ", what);
    }
  }

  static void check_merges_utf8(std::string_view text, const std::filesystem::path& path,
                                std::string_view fn) {
    if (const std::size_t i = find_invalid_utf8(text); i != std::string_view::npos) {
      std::size_t line = 1;
      for (std::size_t k = 0; k < i; ++k) line += text[k] == '\n';
      detail::raise<IoError>(fn, "'", path.string(), "' line ", line,
                             " is not valid UTF-8 (byte offset ", i, ")");
    }
  }

  void encode_into(std::string_view text, std::vector<Id>& ids) const {
    const std::string clean = impl::clip_clean_checked(text);
    for (std::string_view piece : pre_.split_unchecked(clean)) {
      if (piece == sot_name_) {
        ids.push_back(sot_);
      } else if (piece == eot_name_) {
        ids.push_back(eot_);
      } else {
        bpe_.encode_word(piece, ids);
      }
    }
  }

  template <class Get>
  Tensor<Index, 2> tokenize_impl(std::size_t n, Get&& get, Index context_length) const {
    constexpr std::string_view fn = "tessera::text::ClipTokenizer::tokenize";
    if (context_length < 2)
      detail::raise<ValueError>(fn, "argument 'context_length' is ", context_length,
                                ", expected at least 2 (the start and end tokens)");
    Tensor<Index, 2> out(Shape<2>{static_cast<Index>(n), context_length});  // zero-filled
    std::vector<Id> ids;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string_view text = get(i);
      if (const std::size_t bad = find_invalid_utf8(text); bad != std::string_view::npos)
        detail::raise<ValueError>(fn, "argument 'texts'[", i, "] is not valid UTF-8: byte offset ",
                                  bad, " (", impl::hex_byte(static_cast<unsigned char>(text[bad])),
                                  ") does not begin a well-formed sequence");
      ids.clear();
      ids.push_back(sot_);
      encode_into(text, ids);
      ids.push_back(eot_);
      const auto len = std::min<std::size_t>(ids.size(), static_cast<std::size_t>(context_length));
      if (ids.size() > len) ids[len - 1] = eot_;  // truncated: the end token stays last
      for (std::size_t t = 0; t < len; ++t)
        out(static_cast<Index>(i), static_cast<Index>(t)) = ids[t];
    }
    return out;
  }

  BytePairEncoder bpe_;
  ClipPreTokenizer pre_;
  std::string sot_name_, eot_name_;
  Id sot_ = -1, eot_ = -1;
};

}  // namespace tessera::text
