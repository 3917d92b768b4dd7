// Tests of SentencePieceTokenizer against ids from the Python sentencepiece package
// (tests/fixtures/text/sentencepiece_cases.json, written by make_text_fixtures.py for the tiny
// unigram model tiny_unigram.model), SigLIP-style batches, and the error paths.
#include "tessera/text/sentencepiece_tokenizer.hpp"

#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tessera/text/text_cleaning.hpp"
#include "test_util.hpp"

namespace sentencepiece_tokenizer_test {

using tessera::Index;
using tessera::IoError;
using tessera::ValueError;
using tessera::test::TempDir;
using tessera::text::SentencePieceOptions;
using tessera::text::SentencePieceTokenizer;
using Ids = std::vector<std::int64_t>;

const std::filesystem::path kFixtures =
    std::filesystem::path(TESSERA_TEST_DATA_DIR) / "fixtures" / "text";

nlohmann::json reference() {
  std::ifstream in(kFixtures / "sentencepiece_cases.json");
  return nlohmann::json::parse(in);
}

TEST(SentencePieceTokenizer, MatchesPythonSentencepiece) {
  const auto ref = reference();
  const SentencePieceTokenizer tok(kFixtures / ref["model"].get<std::string>());
  const SentencePieceTokenizer raw(kFixtures / ref["model"].get<std::string>(),
                                   {.canonicalize = false});
  EXPECT_EQ(tok.vocab_size(), ref["vocab_size"].get<Index>());
  EXPECT_EQ(tok.eos_id(), ref["eos_id"].get<Ids::value_type>());
  EXPECT_EQ(tok.unk_id(), ref["unk_id"].get<Ids::value_type>());
  EXPECT_EQ(tok.bos_id(), ref["bos_id"].get<Ids::value_type>());
  EXPECT_EQ(tok.pad_id(), tok.eos_id());  // SigLIP pads with </s>
  const auto context_length = ref["context_length"].get<Index>();
  int matched = 0;
  for (const auto& c : ref["cases"]) {
    const auto text = c["text"].get<std::string>();
    EXPECT_EQ(raw.encode(text), c["encode"].get<Ids>()) << text;
    EXPECT_EQ(tessera::text::canonicalize_text(text), c["canonical"].get<std::string>()) << text;
    EXPECT_EQ(tok.encode(text), c["canonical_ids"].get<Ids>()) << text;
    const auto row = tok.tokenize(text, context_length);
    ASSERT_EQ(row.dim(1), context_length);
    Ids got(row.data(), row.data() + row.size());
    EXPECT_EQ(got, c["tokenize"].get<Ids>()) << text;
    EXPECT_EQ(tok.decode(c["canonical_ids"].get<Ids>()), c["decode"].get<std::string>()) << text;
    matched += got == c["tokenize"].get<Ids>();
  }
  EXPECT_EQ(matched, static_cast<int>(ref["cases"].size()));
}

TEST(SentencePieceTokenizer, BatchPaddingTruncationAndThreads) {
  const SentencePieceTokenizer tok(kFixtures / "tiny_unigram.model");
  const std::vector<std::string> texts = {"a photo of a cat", "", "a dog running in the park"};
  const auto batch = tok.tokenize(texts, 6);
  ASSERT_EQ(batch.dim(0), 3);
  ASSERT_EQ(batch.dim(1), 6);
  for (Index i = 0; i < 3; ++i) {
    auto ids = tok.encode(texts[static_cast<std::size_t>(i)]);
    ids.push_back(tok.eos_id());
    if (ids.size() > 6) {
      ids.resize(6);
      ids.back() = tok.eos_id();  // eos stays last
    }
    for (Index t = 0; t < 6; ++t)
      EXPECT_EQ(batch(i, t), t < static_cast<Index>(ids.size()) ? ids[static_cast<std::size_t>(t)]
                                                                : tok.pad_id());
  }
  EXPECT_EQ(batch(2, 5), tok.eos_id());
  EXPECT_EQ(tok.tokenize("a cat").dim(1), 64);
  // Without eos, padding with id 0.
  const SentencePieceTokenizer plain(kFixtures / "tiny_unigram.model",
                                     {.add_eos = false, .pad_id = 0});
  const auto p = plain.tokenize({"a cat"}, 8);
  const auto ids = plain.encode("a cat");
  for (std::size_t t = 0; t < 8; ++t)
    EXPECT_EQ(p(0, static_cast<Index>(t)), t < ids.size() ? ids[t] : 0);
  // Concurrent encodes agree.
  const auto expected = tok.encode(texts[2]);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th)
    threads.emplace_back([&] {
      for (int r = 0; r < 100; ++r)
        if (tok.encode(texts[2]) != expected) ++mismatches;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(SentencePieceTokenizer, TrainedInProcessRoundTrips) {
  // The trainer library (linked by tessera::sentencepiece) makes a model here, too.
  TempDir dir;
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 50; ++i) corpus << "the cat sat on the mat\nthe dog ate the hat\n";
  }
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "corpus.txt").string() + " --model_prefix=" + (dir / "m").string() +
      " --vocab_size=30 --model_type=bpe --minloglevel=2 --num_threads=1");
  ASSERT_TRUE(status.ok()) << status.ToString();
  const SentencePieceTokenizer tok(dir / "m.model");
  EXPECT_EQ(tok.decode(tok.encode("The cat ate the hat!")), "the cat ate the hat");
}

TEST(SentencePieceTokenizerErrors, Messages) {
  TempDir dir;
  TESSERA_EXPECT_THROW_MSG(SentencePieceTokenizer(dir / "missing.model"), IoError,
                           "tessera::text::SentencePieceTokenizer", "missing.model",
                           "no such file");
  {
    std::ofstream bad(dir / "bad.model");
    bad << "not a model";
  }
  TESSERA_EXPECT_THROW_MSG(SentencePieceTokenizer(dir / "bad.model"), IoError,
                           "tessera::text::SentencePieceTokenizer", "bad.model");
  TESSERA_EXPECT_THROW_MSG(
      SentencePieceTokenizer(kFixtures / "tiny_unigram.model", {.pad_id = 100}), ValueError,
      "options.pad_id is 100", "[0, 100)");
  const SentencePieceTokenizer tok(kFixtures / "tiny_unigram.model");
  TESSERA_EXPECT_THROW_MSG(tok.encode("ab\xFF"), ValueError,
                           "tessera::text::SentencePieceTokenizer::encode", "byte offset 2");
  TESSERA_EXPECT_THROW_MSG(tok.tokenize({"ok", "\xC3"}), ValueError,
                           "tessera::text::SentencePieceTokenizer::tokenize", "'texts'[1]",
                           "byte offset 0");
  TESSERA_EXPECT_THROW_MSG(tok.tokenize("a", 1), ValueError, "'context_length' is 1", "at least 2");
  TESSERA_EXPECT_THROW_MSG(tok.decode(Ids{4, 100}), ValueError,
                           "tessera::text::SentencePieceTokenizer::decode", "'ids'[1] is 100",
                           "[0, 100)");
}

}  // namespace sentencepiece_tokenizer_test
