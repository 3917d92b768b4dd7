// tessera::text::BytePairEncoder: GPT-2/CLIP byte-level byte-pair encoding of one pre-token.
//
// A pre-token's UTF-8 bytes are each mapped to a printable character (bytes_to_unicode), the last
// one carrying CLIP's end-of-word suffix "</w>", and adjacent symbols are merged, lowest merge
// rank first, until no ranked pair is left (Sennrich et al. 2016, "Neural Machine Translation of
// Rare Words with Subword Units"; the byte-level form is OpenAI's GPT-2 encoder.py and CLIP's
// simple_tokenizer.py).
//
//   BytePairEncoder bpe(vocab, merges);            // vocab: symbol string -> id
//   std::vector<std::int64_t> ids;
//   bpe.encode_word("hello", ids);                  // appends the ids of "hello</w>"'s symbols
//
// encode_word is const and may be called from several threads at once: its cache of recent
// words is guarded by a mutex and holds at most `cache_capacity` words (it is emptied when full).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/text/unicode.hpp"

namespace tessera::text {

// GPT-2's bytes_to_unicode (OpenAI CLIP simple_tokenizer.py): byte b maps to the character b for
// the printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ', and to U+0100 + n for the n-th of the other
// 68 bytes in increasing order, so no symbol is whitespace or a control character.
inline const std::array<char32_t, 256>& bytes_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// The bytes in CLIP's vocabulary order: the printable ones in increasing order, then the others.
// Vocabulary id i (i < 256) is the symbol of byte clip_byte_order()[i]; id 256 + i the same with
// "</w>" (OpenAI CLIP: `vocab = list(bytes_to_unicode().values())`, then `v + '</w>'`).
inline const std::array<unsigned char, 256>& clip_byte_order() {
  static const std::array<unsigned char, 256> order = [] {
    std::array<unsigned char, 256> o{};
    std::size_t n = 0;
    for (int pass = 0; pass < 2; ++pass)
      for (int b = 0; b < 256; ++b) {
        const bool printable = bytes_to_unicode()[static_cast<std::size_t>(b)] < 256;
        if (printable == (pass == 0)) o[n++] = static_cast<unsigned char>(b);
      }
    return o;
  }();
  return order;
}

// The symbol string (UTF-8) of each byte: `byte_symbol(b)` is bytes_to_unicode()[b] encoded.
inline std::string byte_symbol(unsigned char b) {
  std::string s;
  impl::append_utf8(s, bytes_to_unicode()[b]);
  return s;
}

// The bytes `symbols` stand for: the inverse of bytes_to_unicode over a concatenation of symbols
// (UTF-8). Code points that are not byte symbols are skipped; `symbols` must be valid UTF-8.
inline std::string bytes_from_symbols(std::string_view symbols) {
  static const std::array<int, 512> inverse = [] {
    std::array<int, 512> inv{};
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[bytes_to_unicode()[static_cast<std::size_t>(b)]] = b;
    return inv;
  }();
  std::string out;
  out.reserve(symbols.size());
  impl::for_each_code_point(symbols, [&](char32_t cp, std::size_t, std::size_t) {
    if (cp < 512 && inverse[cp] >= 0) out += static_cast<char>(inverse[cp]);
  });
  return out;
}

// Options of BytePairEncoder.
struct BytePairEncoderOptions {
  // Suffix of a word's last symbol ("</w>" for CLIP; "" for GPT-2-style vocabularies).
  std::string end_of_word = "</w>";
  // Most words the cache holds; it is emptied when it reaches this size. 0 disables it.
  std::size_t cache_capacity = std::size_t{1} << 16;
};

class BytePairEncoder {
 public:
  using Id = std::int64_t;

  using Options = BytePairEncoderOptions;

  // `id_to_symbol[id]` is the symbol string of each id (an empty string for an unused id);
  // `merges[r]` is the pair of symbols of rank r. Every byte symbol (with and without the
  // suffix) must be in the vocabulary, and so must both symbols of a merge and their
  // concatenation: else ValueError naming `fn`, the merge's index and the symbol. When a symbol
  // appears under several ids the last one is used (Python's dict(zip(vocab, range(...)))); when
  // a pair appears twice, its last rank counts (dict(zip(merges, range(...)))).
  BytePairEncoder(std::vector<std::string> id_to_symbol,
                  const std::vector<std::pair<std::string, std::string>>& merges,
                  Options options = {}, std::string_view fn = "tessera::text::BytePairEncoder")
      : id_to_symbol_(std::move(id_to_symbol)),
        options_(std::move(options)),
        cache_(std::make_unique<Cache>()) {
    symbol_to_id_.reserve(id_to_symbol_.size());
    for (std::size_t i = 0; i < id_to_symbol_.size(); ++i)
      if (!id_to_symbol_[i].empty()) symbol_to_id_[id_to_symbol_[i]] = static_cast<Id>(i);
    for (int b = 0; b < 256; ++b) {
      const std::string sym = byte_symbol(static_cast<unsigned char>(b));
      byte_id_[static_cast<std::size_t>(b)] = require(sym, fn, "the byte symbol", b);
      byte_end_id_[static_cast<std::size_t>(b)] =
          require(sym + options_.end_of_word, fn, "the end-of-word byte symbol", b);
    }
    num_merges_ = merges.size();
    ranks_.reserve(merges.size() * 2);
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const auto& [a, b] = merges[r];
      const Id ia = require(a, fn, "merge", r), ib = require(b, fn, "merge", r);
      const Id merged = require(a + b, fn, "merge", r);
      ranks_[key(ia, ib)] = Merge{static_cast<std::int32_t>(r), static_cast<std::int32_t>(merged)};
    }
  }

  BytePairEncoder(const BytePairEncoder& o)
      : id_to_symbol_(o.id_to_symbol_),
        symbol_to_id_(o.symbol_to_id_),
        ranks_(o.ranks_),
        num_merges_(o.num_merges_),
        byte_id_(o.byte_id_),
        byte_end_id_(o.byte_end_id_),
        options_(o.options_),
        cache_(std::make_unique<Cache>()) {}
  BytePairEncoder& operator=(const BytePairEncoder& o) {
    if (this != &o) *this = BytePairEncoder(o);
    return *this;
  }
  BytePairEncoder(BytePairEncoder&&) noexcept = default;
  BytePairEncoder& operator=(BytePairEncoder&&) noexcept = default;

  // Appends to `out` the ids of the symbols BPE splits the pre-token `word` (raw UTF-8 bytes,
  // not yet mapped through bytes_to_unicode) into. An empty word appends nothing.
  void encode_word(std::string_view word, std::vector<Id>& out) const {
    if (word.empty()) return;
    if (options_.cache_capacity > 0) {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      if (auto it = cache_->words.find(std::string(word)); it != cache_->words.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<std::int32_t> symbols = merge(word);
    out.insert(out.end(), symbols.begin(), symbols.end());
    if (options_.cache_capacity > 0) {
      std::lock_guard<std::mutex> lock(cache_->mutex);
      if (cache_->words.size() >= options_.cache_capacity) cache_->words.clear();
      cache_->words.emplace(std::string(word), std::move(symbols));
    }
  }

  // The symbol strings BPE splits `word` into (for tests and inspection; bypasses the cache).
  std::vector<std::string> split_word(std::string_view word) const {
    std::vector<std::string> out;
    if (word.empty()) return out;
    for (std::int32_t id : merge(word)) out.push_back(id_to_symbol_[static_cast<std::size_t>(id)]);
    return out;
  }

  // Number of ids (the largest id + 1).
  Index vocab_size() const noexcept { return static_cast<Index>(id_to_symbol_.size()); }
  // The symbol string of `id` (empty for an unused id); `id` must be in [0, vocab_size()).
  const std::string& symbol(Id id) const { return id_to_symbol_[static_cast<std::size_t>(id)]; }
  // The id of a symbol string, or -1.
  Id id_of(std::string_view symbol) const {
    const auto it = symbol_to_id_.find(std::string(symbol));
    return it == symbol_to_id_.end() ? Id{-1} : it->second;
  }
  // Number of merges given (duplicated pairs included).
  std::size_t num_merges() const noexcept { return num_merges_; }
  const Options& options() const noexcept { return options_; }

  // Empties the cache of encoded words (benchmarks measure cold encoding this way).
  void clear_cache() const {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    decltype(cache_->words)().swap(cache_->words);  // also frees the buckets
  }
  std::size_t cache_size() const {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    return cache_->words.size();
  }

 private:
  struct Merge {
    std::int32_t rank;
    std::int32_t merged;
  };
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int32_t>> words;
  };

  static std::uint64_t key(Id a, Id b) noexcept {
    return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(b);
  }

  Id require(const std::string& sym, std::string_view fn, std::string_view what,
             std::size_t index) const {
    const auto it = symbol_to_id_.find(sym);
    if (it == symbol_to_id_.end())
      detail::raise<ValueError>(fn, what, " ", index, ": symbol '", sym,
                                "' is not in the vocabulary (", id_to_symbol_.size(), " ids)");
    return it->second;
  }

  // OpenAI CLIP's bpe(): repeatedly merge every occurrence, left to right, of the adjacent pair
  // with the lowest rank.
  std::vector<std::int32_t> merge(std::string_view word) const {
    std::vector<std::int32_t> w;
    w.reserve(word.size());
    for (std::size_t i = 0; i + 1 < word.size(); ++i)
      w.push_back(static_cast<std::int32_t>(byte_id_[static_cast<unsigned char>(word[i])]));
    w.push_back(static_cast<std::int32_t>(byte_end_id_[static_cast<unsigned char>(word.back())]));
    std::vector<std::int32_t> next;
    next.reserve(w.size());
    while (w.size() > 1) {
      std::int32_t best_rank = INT32_MAX, first = -1, second = -1, merged = -1;
      for (std::size_t i = 0; i + 1 < w.size(); ++i) {
        const auto it = ranks_.find(key(w[i], w[i + 1]));
        if (it != ranks_.end() && it->second.rank < best_rank) {
          best_rank = it->second.rank;
          first = w[i];
          second = w[i + 1];
          merged = it->second.merged;
        }
      }
      if (merged < 0) break;
      next.clear();
      for (std::size_t i = 0; i < w.size();) {
        if (i + 1 < w.size() && w[i] == first && w[i + 1] == second) {
          next.push_back(merged);
          i += 2;
        } else {
          next.push_back(w[i++]);
        }
      }
      w.swap(next);
    }
    return w;
  }

  std::vector<std::string> id_to_symbol_;
  std::unordered_map<std::string, Id> symbol_to_id_;
  std::unordered_map<std::uint64_t, Merge> ranks_;
  std::size_t num_merges_ = 0;
  std::array<Id, 256> byte_id_{};
  std::array<Id, 256> byte_end_id_{};
  Options options_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace tessera::text
