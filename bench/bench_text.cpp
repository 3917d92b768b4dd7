// Text tokenizer benchmarks: tokens per second (items/s) of CLIP's tokenizer on 256 captions of
// 10 to 70 tokens, with the real merge list (../shared/data/bpe_simple_vocab_16e6.txt.gz; the
// benchmarks say why and skip when it is absent):
//   BM_ClipEncode_Cold      BPE cache emptied before every caption: every word merged from bytes
//                           but a caption's repeated words (the reference for the cache)
//   BM_ClipEncode_NoCache   a tokenizer built with cache_capacity 0: every word merged
//   BM_ClipEncode_Cached    the same batch with the words cached (steady state of a data loader)
//   BM_ClipTokenize_Cached  tokenize() into the [256, 77] id tensor
//   BM_ClipClean / BM_ClipPreTokenize  the clean-up and the PCRE2 split alone, for the breakdown
// and SentencePiece's encode and SigLIP batch on the tiny unigram test model
// (tests/fixtures/text/tiny_unigram.model). Single-threaded; items are output tokens.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <tessera/text/clip_tokenizer.hpp>
#include <tessera/text/sentencepiece_tokenizer.hpp>
#include <vector>

#include "bench_common.hpp"

namespace {

namespace fs = std::filesystem;
using tessera::Index;

fs::path shared_data() {
  if (const char* env = std::getenv("TESSERA_SHARED_DATA"); env && *env) return env;
  return fs::path(__FILE__).parent_path().parent_path().parent_path() / "shared" / "data";
}

std::optional<tessera::text::ClipTokenizer> load_clip(std::size_t cache_capacity) {
  const fs::path path = shared_data() / "bpe_simple_vocab_16e6.txt.gz";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  return tessera::text::ClipTokenizer::from_file(path, {.cache_capacity = cache_capacity});
}

// The tokenizer with its default cache, and one without a cache.
const tessera::text::ClipTokenizer* clip(bool cached = true) {
  static const auto with_cache = load_clip(std::size_t{1} << 16);
  static const auto without_cache = load_clip(0);
  const auto& tok = cached ? with_cache : without_cache;
  return tok ? &*tok : nullptr;
}

// 256 captions of 10 to 40 words drawn from a fixed vocabulary of caption words (some rare, so BPE
// splits them), seeded: 10 to 70 CLIP tokens each.
const std::vector<std::string>& captions() {
  static const std::vector<std::string> texts = [] {
    const char* words[] = {
        "a",
        "photo",
        "of",
        "the",
        "cat",
        "dog",
        "sitting",
        "on",
        "wooden",
        "table",
        "next",
        "to",
        "window",
        "with",
        "sunlight",
        "astronaut",
        "riding",
        "horse",
        "in",
        "space",
        "digital",
        "art",
        "painting",
        "by",
        "impressionist",
        "landscape",
        "mountains",
        "lake",
        "reflection",
        "at",
        "sunset",
        "close-up",
        "macro",
        "shot",
        "bokeh",
        "street",
        "Tokyo",
        "night",
        "neon",
        "lights",
        "rain",
        "umbrella",
        "café",
        "croissant",
        "espresso",
        "2024",
        "4k",
        "HDR",
        "isn't",
        "it's",
        "children's",
        "playground",
        "bicycles",
        "parked",
        "supercalifragilistic",
        "antidisestablishment",
        "#sunset",
        "@home",
        "&amp;",
        "!!",
    };
    std::mt19937 gen(1234);
    std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(words)) - 1);
    std::uniform_int_distribution<int> length(10, 40);
    std::vector<std::string> out;
    for (int i = 0; i < 256; ++i) {
      std::string s;
      for (int w = length(gen); w > 0; --w) (s += words[pick(gen)]) += ' ';
      out.push_back(s);
    }
    return out;
  }();
  return texts;
}

double count_tokens(const tessera::text::ClipTokenizer& tok, benchmark::State* state = nullptr) {
  double n = 0, lo = 1e9, hi = 0;
  for (const auto& t : captions()) {
    const auto k = static_cast<double>(tok.encode(t).size());
    n += k;
    lo = std::min(lo, k);
    hi = std::max(hi, k);
  }
  if (state) {
    state->counters["min_tokens"] = lo;
    state->counters["max_tokens"] = hi;
  }
  return n;
}

enum class Cache { kCold, kCached, kNone };

void clip_encode(benchmark::State& state, Cache cache) {
  tessera_bench::single_thread();
  const auto* tok = clip(cache != Cache::kNone);
  if (!tok) {
    state.SkipWithError(
        "../shared/data/bpe_simple_vocab_16e6.txt.gz not found (set TESSERA_SHARED_DATA)");
    return;
  }
  const double tokens = count_tokens(*tok, &state);
  for (auto _ : state) {
    for (const auto& t : captions()) {
      if (cache == Cache::kCold) tok->clear_cache();  // only repeats inside a caption hit
      auto ids = tok->encode(t);
      benchmark::DoNotOptimize(ids.data());
    }
  }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(tokens * static_cast<double>(state.iterations())));
  state.counters["tokens/caption"] = tokens / static_cast<double>(captions().size());
}

void BM_ClipEncode_Cold(benchmark::State& state) { clip_encode(state, Cache::kCold); }
void BM_ClipEncode_Cached(benchmark::State& state) { clip_encode(state, Cache::kCached); }
void BM_ClipEncode_NoCache(benchmark::State& state) { clip_encode(state, Cache::kNone); }

void BM_ClipTokenize_Cached(benchmark::State& state) {
  tessera_bench::single_thread();
  const auto* tok = clip();
  if (!tok) {
    state.SkipWithError(
        "../shared/data/bpe_simple_vocab_16e6.txt.gz not found (set TESSERA_SHARED_DATA)");
    return;
  }
  const double tokens = count_tokens(*tok) + 2.0 * static_cast<double>(captions().size());
  for (auto _ : state) {
    auto ids = tok->tokenize(captions());
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(tokens * static_cast<double>(state.iterations())));
}

// The steps before BPE alone; items are still the captions' CLIP tokens, so the rates compare.
void BM_ClipClean(benchmark::State& state) {
  tessera_bench::single_thread();
  const auto* tok = clip();
  if (!tok) {
    state.SkipWithError(
        "../shared/data/bpe_simple_vocab_16e6.txt.gz not found (set TESSERA_SHARED_DATA)");
    return;
  }
  const double tokens = count_tokens(*tok);
  for (auto _ : state)
    for (const auto& t : captions()) {
      auto s = tessera::text::clip_clean(t);
      benchmark::DoNotOptimize(s.data());
    }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(tokens * static_cast<double>(state.iterations())));
}

void BM_ClipPreTokenize(benchmark::State& state) {
  tessera_bench::single_thread();
  const auto* tok = clip();
  if (!tok) {
    state.SkipWithError(
        "../shared/data/bpe_simple_vocab_16e6.txt.gz not found (set TESSERA_SHARED_DATA)");
    return;
  }
  const double tokens = count_tokens(*tok);
  std::vector<std::string> cleaned;
  for (const auto& t : captions()) cleaned.push_back(tessera::text::clip_clean(t));
  for (auto _ : state)
    for (const auto& t : cleaned) {
      auto pieces = tok->pre_tokenizer().split(t);
      benchmark::DoNotOptimize(pieces.data());
    }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(tokens * static_cast<double>(state.iterations())));
}

const tessera::text::SentencePieceTokenizer* sentencepiece() {
  static const std::optional<tessera::text::SentencePieceTokenizer> tok =
      []() -> std::optional<tessera::text::SentencePieceTokenizer> {
    const fs::path path = fs::path(__FILE__).parent_path().parent_path() / "tests" / "fixtures" /
                          "text" / "tiny_unigram.model";
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return std::nullopt;
    return tessera::text::SentencePieceTokenizer(path);
  }();
  return tok ? &*tok : nullptr;
}

void BM_SentencePieceEncode(benchmark::State& state) {
  tessera_bench::single_thread();
  const auto* tok = sentencepiece();
  if (!tok) {
    state.SkipWithError("tests/fixtures/text/tiny_unigram.model not found");
    return;
  }
  double tokens = 0;
  for (const auto& t : captions()) tokens += static_cast<double>(tok->encode(t).size());
  for (auto _ : state)
    for (const auto& t : captions()) {
      auto ids = tok->encode(t);
      benchmark::DoNotOptimize(ids.data());
    }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(tokens * static_cast<double>(state.iterations())));
  state.counters["tokens/caption"] = tokens / static_cast<double>(captions().size());
}

void BM_SentencePieceTokenize(benchmark::State& state) {
  tessera_bench::single_thread();
  const auto* tok = sentencepiece();
  if (!tok) {
    state.SkipWithError("tests/fixtures/text/tiny_unigram.model not found");
    return;
  }
  double tokens = 0;
  for (const auto& t : captions())
    tokens += std::min(64.0, static_cast<double>(tok->encode(t).size()) + 1.0);
  for (auto _ : state) {
    auto ids = tok->tokenize(captions());
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetItemsProcessed(
      static_cast<std::int64_t>(tokens * static_cast<double>(state.iterations())));
}

BENCHMARK(BM_ClipEncode_Cold)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ClipEncode_Cached)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ClipEncode_NoCache)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ClipTokenize_Cached)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ClipClean)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ClipPreTokenize)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SentencePieceEncode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SentencePieceTokenize)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
