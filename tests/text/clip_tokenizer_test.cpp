// Tests of CLIP's tokenizer and its steps: clean-up (HTML entities, NFC, whitespace, Python's
// lower case), pre-tokenization, byte-level BPE, loading (CLIP's merge list, Hugging Face's
// vocab.json + merges.txt and tokenizer.json), tokenize/decode, errors. Reference ids for real
// captions come from open_clip (../shared/data/clip_tokenizer_cases.jsonl); the expected outputs
// of the clean-up helpers were computed with CPython 3.11's html.unescape and str.lower.
#include "tessera/text/clip_tokenizer.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tessera/text/bpe.hpp"
#include "tessera/text/html_unescape.hpp"
#include "tessera/text/text_cleaning.hpp"
#include "tessera/text/unicode.hpp"
#include "test_util.hpp"

namespace clip_tokenizer_test {

using tessera::Index;
using tessera::IoError;
using tessera::ValueError;
using tessera::test::TempDir;
using namespace tessera::text;
using Ids = std::vector<std::int64_t>;

void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_gzip(const std::filesystem::path& path, std::string_view bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// A tiny merge list: symbols are bytes_to_unicode characters (ASCII letters stand for themselves).
ClipTokenizer::Merges tiny_merges() {
  return {{"a", "t</w>"},     // 0: "at</w>" before "ca" (rank order test)
          {"c", "a"},         // 1
          {"ca", "t</w>"},    // 2: never reached for "cat": "a t</w>" merges first
          {"h", "e"},         // 3
          {"l", "l"},         // 4
          {"he", "ll"},       // 5
          {"hell", "o</w>"},  // 6
          {"d", "o"},         // 7
          {"do", "g</w>"}};   // 8
}

ClipTokenizer tiny(std::size_t cache_capacity = 1 << 16) {
  return ClipTokenizer(tiny_merges(), {.cache_capacity = cache_capacity});
}

// Id of the byte symbol of ASCII letter `c` (with "</w>" when `end`) in CLIP's vocabulary.
std::int64_t byte_id(char c, bool end = false) {
  const auto& order = clip_byte_order();
  for (std::size_t i = 0; i < 256; ++i)
    if (order[i] == static_cast<unsigned char>(c))
      return static_cast<std::int64_t>(i + (end ? 256 : 0));
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Clean-up

TEST(HtmlUnescape, MatchesPythonOnEntitiesCaptionsHit) {
  // (input, CPython 3.11 html.unescape(input))
  const std::pair<const char*, const char*> cases[] = {
      {"&amp;", "&"},
      {"&ampx", "&x"},
      {"&amp", "&"},
      {"&lt;3", "<3"},
      {"&#233;", "\xC3\xA9"},
      {"&#xE9;", "\xC3\xA9"},
      {"&#X1F431;", "\xF0\x9F\x90\xB1"},
      {"&#0;", "\xEF\xBF\xBD"},
      {"&#128;", "\xE2\x82\xAC"},
      {"&#x80;", "\xE2\x82\xAC"},
      {"&#xD800;", "\xEF\xBF\xBD"},
      {"&#1114112;", "\xEF\xBF\xBD"},
      {"&#99999999999999999999;", "\xEF\xBF\xBD"},
      {"&#1;", ""},
      {"&#xFFFE;", ""},
      {"&hellip;", "\xE2\x80\xA6"},
      {"&notit;",
       "\xC2\xAC"
       "it;"},
      {"&notin;", "\xE2\x88\x89"},
      {"&copy2024",
       "\xC2\xA9"
       "2024"},
      {"& amp;", "& amp;"},
      {"&#;", "&#;"},
      {"&#x;", "&#x;"},
      {"&unknown;", "&unknown;"},
      {"&Eacute;", "\xC3\x89"},
      {"&eacute", "\xC3\xA9"},
      {"&apos;", "'"},
      {"&&amp;", "&&"},
      {"a&b", "a&b"},
      {"&#65&#66", "AB"},
      {"&euro;", "\xE2\x82\xAC"},
      {"&AMP;", "&"},
      {"&alpha;&Omega;", "\xCE\xB1\xCE\xA9"},
      {"caf\xC3\xA9 &amp; th\xC3\xA9", "caf\xC3\xA9 & th\xC3\xA9"},
  };
  for (const auto& [in, expected] : cases) EXPECT_EQ(html_unescape(in), expected) << in;
  // Outside the supported subset (HTML5-only names): left as is, where Python gives "\n".
  EXPECT_EQ(html_unescape("&NewLine;"), "&NewLine;");
}

TEST(PythonLower, FullAndSimpleCaseMapping) {
  // (input, CPython 3.11 str.lower(input))
  const std::pair<const char*, const char*> cases[] = {
      {"A Photo of a DOG.", "a photo of a dog."},
      {"\xC3\x80\xC3\x89\xC3\x8E", "\xC3\xA0\xC3\xA9\xC3\xAE"},                  // ÀÉÎ
      {"\xC4\xB0stanbul", "i\xCC\x87stanbul"},                                   // İ: full mapping
      {"\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3", "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82"},  // ΟΔΟΣ: final ς
      {"\xCE\xA3", "\xCF\x83"},                                                  // lone Σ: σ
      {"\xCE\xA3\xCE\x91", "\xCF\x83\xCE\xB1"},                                  // ΣΑ
      {"A\xCE\xA3.", "a\xCF\x82."},                                              // AΣ.
      {"\xCE\x91\xCE\xA3'\xCE\x92", "\xCE\xB1\xCF\x83'\xCE\xB2"},  // ΑΣ'Β: not final
      {"\xC7\x85", "\xC7\x86"},                                    // ǅ (title case)
      {"\xE1\xBA\x9E", "\xC3\x9F"},                                // ẞ
      {"\xE2\x85\xAB", "\xE2\x85\xBB"},                            // Ⅻ
      {"\xEF\xBC\xA1\xEF\xBC\xA2", "\xEF\xBD\x81\xEF\xBD\x82"},    // ＡＢ
  };
  for (const auto& [in, expected] : cases) EXPECT_EQ(python_lower(in), expected) << in;
}

TEST(ClipClean, UnescapesTwiceCollapsesWhitespaceLowersAndComposes) {
  EXPECT_EQ(clip_clean("  Tom &amp;amp;  JERRY\n"), "tom & jerry");
  EXPECT_EQ(clip_basic_clean("  Tom &amp;amp;  JERRY\n"), "Tom &  JERRY");
  EXPECT_EQ(clip_whitespace_clean(" a \t\n b "), "a b");
  // Python's \s: ideographic space, NBSP, line separator, U+001C, NEL; not U+200B.
  // ftfy.fix_text runs first: U+3000 becomes ' ' (fix_character_width), U+2028 '\n'
  // (fix_line_breaks), U+001C is removed (remove_control_chars) and NEL U+0085 becomes U+2026 '…'
  // (fix_c1_controls, Windows-1252's 0x85), so only U+3000, NBSP and U+2028 end as spaces.
  EXPECT_EQ(clip_clean("\xE3\x80\x80"
                       "a\xC2\xA0"
                       "b\xE2\x80\xA8"
                       "c\x1C\xC2\x85"
                       "d\xE2\x80\x8B"
                       "e"),
            "a b c\xE2\x80\xA6"
            "d\xE2\x80\x8B"
            "e");
  // Python's \s on what ftfy leaves: NBSP, tab, LF, FF, U+2000-U+200A are whitespace.
  EXPECT_EQ(clip_whitespace_clean("a\xC2\xA0"
                                  "b\x0C"
                                  "c\xE2\x80\x83"
                                  "d\x1C"
                                  "e"),
            "a b c d e");
  // NFC (ftfy's default normalisation): e + U+0301 becomes é.
  EXPECT_EQ(clip_clean("Cafe\xCC\x81"), "caf\xC3\xA9");
  EXPECT_EQ(nfc("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(clip_clean(""), "");
  EXPECT_EQ(clip_clean(" \t "), "");
  // Embedded NUL survives (utf8proc is given the length).
  EXPECT_EQ(nfc(std::string("\xC3\xA9\0x", 4)), std::string("\xC3\xA9\0x", 4));
}

TEST(CanonicalizeText, SiglipCleanUp) {
  EXPECT_EQ(canonicalize_text("A dog_walker, runs!  (fast)"), "a dog walker runs fast");
  EXPECT_EQ(canonicalize_text("Tom &amp; Jerry"), "tom jerry");
  EXPECT_EQ(canonicalize_text("\xC3\x9C"
                              "ber-Caf\xC3\xA9"),
            "\xC3\xBC"
            "bercaf\xC3\xA9");
}

TEST(Utf8, ValidationAndReplacementDecoding) {
  EXPECT_EQ(find_invalid_utf8("abc \xC3\xA9 \xF0\x9F\x90\xB1"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("abc\xFF"), 3u);
  EXPECT_EQ(find_invalid_utf8("\xC0\xAF"), 0u);          // overlong
  EXPECT_EQ(find_invalid_utf8("ab\xED\xA0\x80"), 2u);    // surrogate
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("\xE2\x82"), 0u);          // truncated
  // Python: b'a\xe2\x82b\xff'.decode('utf-8', 'replace') == 'a\ufffdb\ufffd'
  EXPECT_EQ(decode_utf8_replace("a\xE2\x82"
                                "b\xFF"),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD");
  // b'\xed\xa0\x80'.decode('utf-8','replace') == '\ufffd\ufffd\ufffd'
  EXPECT_EQ(decode_utf8_replace("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenization

std::vector<std::string> pieces(const ClipPreTokenizer& pre, std::string_view text) {
  std::vector<std::string> out;
  for (auto p : pre.split(text)) out.emplace_back(p);
  return out;
}

TEST(ClipPreTokenizer, ContractionsLettersDigitsPunctuation) {
  const ClipPreTokenizer pre({"<start_of_text>", "<end_of_text>"});
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces(pre, "it's a dog's life, isn't it?"),
            (V{"it", "'s", "a", "dog", "'s", "life", ",", "isn", "'t", "it", "?"}));
  EXPECT_EQ(pieces(pre, "we'll we've i'm you're he'd"),
            (V{"we", "'ll", "we", "'ve", "i", "'m", "you", "'re", "he", "'d"}));
  EXPECT_EQ(pieces(pre, "IT'S"), (V{"IT", "'S"}));  // case-insensitive
  EXPECT_EQ(pieces(pre, "year 2024!?..."), (V{"year", "2", "0", "2", "4", "!?..."}));
  // Unicode letters run together; every \p{N} (Arabic-Indic digits, ½, ²) is its own piece.
  EXPECT_EQ(
      pieces(
          pre,
          "na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xD9\xA1\xD9\xA2 x\xC2\xB2\xC2\xBD"),
      (V{"na\xC3\xAFve", "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "\xD9\xA1", "\xD9\xA2", "x",
         "\xC2\xB2", "\xC2\xBD"}));
  // Emoji and symbols are "other" runs; U+0307 (a mark, not a letter) splits a word.
  EXPECT_EQ(pieces(pre, "\xF0\x9F\x90\xB1\xF0\x9F\x90\xB6 #tag"),
            (V{"\xF0\x9F\x90\xB1\xF0\x9F\x90\xB6", "#", "tag"}));
  EXPECT_EQ(pieces(pre, "i\xCC\x87stanbul"), (V{"i", "\xCC\x87", "stanbul"}));
  // Special token names are single pieces, matched literally.
  EXPECT_EQ(pieces(pre, "a<start_of_text>b <end_of_text>"),
            (V{"a", "<start_of_text>", "b", "<end_of_text>"}));
  EXPECT_EQ(pieces(pre, "<|x|>"), (V{"<|", "x", "|>"}));
  EXPECT_TRUE(pieces(pre, "").empty());
}

// ---------------------------------------------------------------------------------------------
// BPE

TEST(BytesToUnicode, MatchesGpt2Table) {
  const auto& t = bytes_to_unicode();
  EXPECT_EQ(t['!'], U'!');
  EXPECT_EQ(t['~'], U'~');
  EXPECT_EQ(t[0xA1], U'\u00A1');
  EXPECT_EQ(t[0], U'\u0100');
  EXPECT_EQ(t[' '], U'\u0120');   // GPT-2's "Ġ"
  EXPECT_EQ(t[0xAD], U'\u0143');  // the last of the 68 remapped bytes
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::string symbols;
  for (int b = 0; b < 256; ++b) symbols += byte_symbol(static_cast<unsigned char>(b));
  EXPECT_EQ(bytes_from_symbols(symbols), all);
  EXPECT_EQ(clip_byte_order()[0], '!');
  EXPECT_EQ(clip_byte_order()[93], '~');
  EXPECT_EQ(clip_byte_order()[188], 0);
}

TEST(BytePairEncoder, MergesLowestRankFirstLeftToRight) {
  const auto tok = tiny();
  using V = std::vector<std::string>;
  EXPECT_EQ(tok.bpe().split_word("cat"), (V{"c", "at</w>"}));  // rank 0 beats rank 1
  EXPECT_EQ(tok.bpe().split_word("hello"), (V{"hello</w>"}));
  EXPECT_EQ(tok.bpe().split_word("lll"), (V{"ll", "l</w>"}));  // left to right
  EXPECT_EQ(tok.bpe().split_word("llll"), (V{"ll", "l", "l</w>"}));
  EXPECT_EQ(tok.bpe().split_word("x"), (V{"x</w>"}));
  EXPECT_EQ(tok.bpe().split_word("dog"), (V{"dog</w>"}));
  // Vocabulary: 256 bytes, 256 with </w>, 9 merges, 2 specials.
  EXPECT_EQ(tok.vocab_size(), 512 + 9 + 2);
  EXPECT_EQ(tok.sot_token_id(), 521);
  EXPECT_EQ(tok.eot_token_id(), 522);
  EXPECT_EQ(tok.encode("Cat"), (Ids{byte_id('c'), 512 + 0}));
  EXPECT_EQ(tok.encode("hello, dog"), (Ids{512 + 6, byte_id(',', true), 512 + 8}));
  // A special token's name in the text is that token.
  EXPECT_EQ(tok.encode("dog <end_of_text>"), (Ids{512 + 8, 522}));
}

TEST(BytePairEncoder, NonAsciiBytesAreByteSymbols) {
  const auto tok = tiny();
  // "é" = C3 A9: two byte symbols, the last with </w>.
  const auto ids = tok.encode("\xC3\xA9");
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok.bpe().symbol(ids[0]), byte_symbol(0xC3));
  EXPECT_EQ(tok.bpe().symbol(ids[1]), byte_symbol(0xA9) + "</w>");
}

TEST(BytePairEncoder, CacheIsConsistentAcrossThreads) {
  const std::vector<std::string> texts = {"hello cat dog",   "the cat's hat",   "llll hello",
                                          "caf\xC3\xA9 dog", "a b c d e f g h", "dogs and cats"};
  const auto reference_tok = tiny(/*cache_capacity=*/0);
  std::vector<Ids> reference;
  for (const auto& t : texts) reference.push_back(reference_tok.encode(t));
  for (std::size_t capacity : {std::size_t{3}, std::size_t{1} << 16}) {
    const auto tok = tiny(capacity);
    std::vector<std::thread> threads;
    std::atomic<int> mismatches{0};
    for (int th = 0; th < 8; ++th)
      threads.emplace_back([&, th] {
        for (int rep = 0; rep < 200; ++rep) {
          const std::size_t i = static_cast<std::size_t>(th + rep) % texts.size();
          if (tok.encode(texts[i]) != reference[i]) ++mismatches;
        }
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(mismatches.load(), 0) << "cache capacity " << capacity;
    EXPECT_LE(tok.bpe().cache_size(), capacity);
    EXPECT_GT(tok.bpe().cache_size(), 0u);
    tok.clear_cache();
    EXPECT_EQ(tok.bpe().cache_size(), 0u);
    for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(tok.encode(texts[i]), reference[i]);
  }
  // A copy has its own, empty cache and the same ids.
  const auto tok = tiny();
  (void)tok.encode("hello");
  const ClipTokenizer copy = tok;
  EXPECT_EQ(copy.bpe().cache_size(), 0u);
  EXPECT_EQ(copy.encode("hello cat"), tok.encode("hello cat"));
}

// ---------------------------------------------------------------------------------------------
// tokenize / decode

TEST(ClipTokenizer, TokenizePadsAndTruncatesWithEndTokenLast) {
  const auto tok = tiny();
  const auto sot = tok.sot_token_id(), eot = tok.eot_token_id();
  const auto out = tok.tokenize({"hello", "hello dog cat", ""}, 5);
  ASSERT_EQ(out.dim(0), 3);
  ASSERT_EQ(out.dim(1), 5);
  const Index expected[3][5] = {{sot, 512 + 6, eot, 0, 0},
                                {sot, 512 + 6, 512 + 8, byte_id('c'), eot},  // cut: eot last
                                {sot, eot, 0, 0, 0}};
  for (Index i = 0; i < 3; ++i)
    for (Index t = 0; t < 5; ++t) EXPECT_EQ(out(i, t), expected[i][t]) << i << ", " << t;
  const auto two = tok.tokenize("hello dog", 2);
  EXPECT_EQ(two(0, 0), sot);
  EXPECT_EQ(two(0, 1), eot);
  const auto def = tok.tokenize("hello");
  EXPECT_EQ(def.dim(0), 1);
  EXPECT_EQ(def.dim(1), 77);
  const std::vector<std::string> none;
  EXPECT_EQ(tok.tokenize(none).dim(0), 0);
  const std::vector<std::string> vec = {"dog", "cat"};
  EXPECT_EQ(tok.tokenize(vec, 8)(1, 2), 512 + 0);
}

// The captions where treating ftfy.fix_text as NFC alone gave other ids than open_clip: each must
// encode as its ftfy-fixed spelling does (runs everywhere, on the tiny merge list).
TEST(ClipTokenizer, FtfyFixesApplyBeforeSplitting) {
  const auto tok = tiny();
  const std::pair<const char*, const char*> cases[] = {
      {"it\xE2\x80\x99s", "it's"},  // uncurl_quotes
      {"\xE2\x80\x9C"
       "dog\xE2\x80\x9D",
       "\"dog\""},                                  // uncurl_quotes
      {"\xEF\xAC\x81sh", "fish"},                   // fix_latin_ligatures
      {"\xEF\xBC\xA1\xEF\xBC\xA2", "ab"},           // fix_character_width
      {"e&#769;", "\xC3\xA9"},                      // unescape_html, then NFC
      {"&amp;amp;amp;", "&"},                       // unescaped until stable
      {"hello\x1B[1;31m dog\x1B[0m", "hello dog"},  // remove_terminal_escapes
      {"\xEF\xBB\xBFhello\x07", "hello"},           // remove_control_chars
      {"<b>&amp;amp;</b>", "<b>&</b>"},  // HTML: ftfy keeps it, html.unescape twice gives '&'
  };
  for (const auto& [text, fixed] : cases) {
    EXPECT_EQ(tok.encode(text), tok.encode(fixed)) << text;
  }
}

// decode stops at the end token: a tokenize() row (padded with id 0, the token "!") decodes to
// its text, not "hello dog !!!!!!".
TEST(ClipTokenizer, DecodeOfATokenizeRowStopsAtTheEndToken) {
  const auto tok = tiny();
  const auto rows = tok.tokenize({"hello dog", ""}, 12);
  ASSERT_EQ(rows(0, 4), 0);  // padding
  EXPECT_EQ(tok.bpe().symbol(0), "!");
  Ids row0, row1;
  for (Index t = 0; t < 12; ++t) {
    row0.push_back(rows(0, t));
    row1.push_back(rows(1, t));
  }
  EXPECT_EQ(tok.decode(row0), "hello dog ");
  EXPECT_EQ(tok.decode(row1), "");
  // Anything after the first end token is not read, not even an id outside the vocabulary.
  EXPECT_EQ(tok.decode(Ids{512 + 8, tok.eot_token_id(), 512 + 6, -5}), "dog ");
  // Without an end token everything decodes, id 0 included.
  EXPECT_EQ(tok.decode(Ids{512 + 8, 0}), "dog !");
}

TEST(ClipTokenizer, DecodeRoundTrip) {
  const auto tok = tiny();
  EXPECT_EQ(tok.decode(tok.encode("Hello, dog cat")), "hello , dog cat ");
  EXPECT_EQ(tok.decode(tok.encode("caf\xC3\xA9 \xF0\x9F\x90\xB1")),
            "caf\xC3\xA9 \xF0\x9F\x90\xB1 ");
  // Special tokens are dropped.
  Ids with_special = {tok.sot_token_id(), 512 + 8, tok.eot_token_id()};
  EXPECT_EQ(tok.decode(with_special), "dog ");
  // A lone lead byte decodes to U+FFFD.
  EXPECT_EQ(tok.decode(Ids{tok.bpe().id_of(byte_symbol(0xC3) + "</w>")}), "\xEF\xBF\xBD ");
  EXPECT_EQ(tok.decode(Ids{}), "");
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(ClipTokenizerErrors, InvalidInputs) {
  const auto tok = tiny();
  TESSERA_EXPECT_THROW_MSG(tok.encode("abc\xFF"
                                      "d"),
                           ValueError, "tessera::text::ClipTokenizer::encode", "'text'",
                           "byte offset 3", "0xFF");
  TESSERA_EXPECT_THROW_MSG(tok.tokenize({"ok", "ab\xC3"}), ValueError,
                           "tessera::text::ClipTokenizer::tokenize", "'texts'[1]", "byte offset 2");
  TESSERA_EXPECT_THROW_MSG(tok.tokenize("a", 1), ValueError,
                           "tessera::text::ClipTokenizer::tokenize", "'context_length' is 1",
                           "at least 2");
  TESSERA_EXPECT_THROW_MSG(tok.decode(Ids{5, 523}), ValueError,
                           "tessera::text::ClipTokenizer::decode", "'ids'[1] is 523", "[0, 523)");
  TESSERA_EXPECT_THROW_MSG(tok.decode(Ids{-1}), ValueError, "'ids'[0] is -1");
  TESSERA_EXPECT_THROW_MSG(clip_clean("\xE2\x82"), ValueError, "tessera::text::clip_clean",
                           "byte offset 0");
  TESSERA_EXPECT_THROW_MSG(canonicalize_text("a\xC0\xAF"), ValueError,
                           "tessera::text::canonicalize_text", "byte offset 1");
  TESSERA_EXPECT_THROW_MSG(ClipPreTokenizer().split("\xFF"), ValueError,
                           "tessera::text::ClipPreTokenizer::split", "byte offset 0");
  // A merge whose symbols are not in the vocabulary.
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer(ClipTokenizer::Merges{{"a", "b"}, {"xy", "z"}}),
                           ValueError, "tessera::text::ClipTokenizer", "merge 1", "'xy'");
}

TEST(ClipTokenizerErrors, FilesAndFormats) {
  TempDir dir;
  const auto missing = dir / "missing.txt.gz";
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(missing), IoError,
                           "tessera::text::ClipTokenizer::from_file", "missing.txt.gz",
                           "no such file");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir.path()), IoError, "not a regular file");

  // Plain text and gzip load the same merges.
  const std::string merges = "#version: 0.2\nc a\nca t</w>\nh e\n";
  write_file(dir / "merges.txt", merges);
  write_gzip(dir / "merges.txt.gz", merges);
  const auto plain = ClipTokenizer::from_file(dir / "merges.txt");
  const auto gz = ClipTokenizer::from_file(dir / "merges.txt.gz");
  EXPECT_EQ(plain.vocab_size(), 512 + 3 + 2);
  EXPECT_EQ(plain.encode("cat hec"), gz.encode("cat hec"));
  EXPECT_EQ(plain.encode("cat"), (Ids{512 + 1}));

  write_file(dir / "bad_line.txt", "#version: 0.2\nc a\nca t</w> x\n");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "bad_line.txt"), IoError, "bad_line.txt",
                           "line 3", "found 3 symbol(s)");
  write_file(dir / "empty_line.txt", "#version: 0.2\nc a\n\nh e\n");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "empty_line.txt"), IoError, "line 3",
                           "found 0 symbol(s)");
  write_file(dir / "not_utf8.txt", "#version: 0.2\nc a\nh \xFF\n");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "not_utf8.txt"), IoError, "not_utf8.txt",
                           "line 3", "not valid UTF-8");
  write_file(dir / "unknown_symbol.txt", "#version: 0.2\nxy z\n");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "unknown_symbol.txt"), IoError,
                           "unknown_symbol.txt", "tessera::text::ClipTokenizer::from_file",
                           "merge 0", "'xy'");

  // Truncated and corrupt gzip (a longer text, so the deflate stream has a body to damage).
  std::string big = "#version: 0.2\n";
  for (int i = 0; i < 4000; ++i) big += "c a\n";
  write_gzip(dir / "big.txt.gz", big);
  const std::string gz_bytes = read_file(dir / "big.txt.gz");
  ASSERT_GT(gz_bytes.size(), 40u);
  write_file(dir / "truncated.txt.gz", gz_bytes.substr(0, gz_bytes.size() / 2));
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "truncated.txt.gz"), IoError,
                           "tessera::text::ClipTokenizer::from_file", "truncated.txt.gz",
                           "truncated or corrupt gzip");
  std::string corrupt = gz_bytes;
  for (std::size_t i = 12; i < 24 && i < corrupt.size(); ++i)
    corrupt[i] = static_cast<char>(~corrupt[i]);
  write_file(dir / "corrupt.txt.gz", corrupt);
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "corrupt.txt.gz"), IoError,
                           "corrupt.txt.gz", "gzip");

  // Hugging Face files.
  write_file(dir / "bad.json", "{\"a\": 1,");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_files(dir / "bad.json", dir / "merges.txt"),
                           IoError, "tessera::text::ClipTokenizer::from_hf_files", "bad.json",
                           "not valid JSON");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_tokenizer_json(dir / "bad.json"), IoError,
                           "tessera::text::ClipTokenizer::from_hf_tokenizer_json", "bad.json",
                           "not valid JSON");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_files(dir / "nope.json", dir / "merges.txt"),
                           IoError, "tessera::text::ClipTokenizer::from_hf_files", "nope.json");
  write_file(dir / "array.json", "[1, 2]");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_files(dir / "array.json", dir / "merges.txt"),
                           IoError, "array.json", "non-empty object");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_tokenizer_json(dir / "array.json"), IoError,
                           "array.json", "model.vocab and model.merges");
  write_file(dir / "bad_id.json", "{\"a\": \"x\"}");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_files(dir / "bad_id.json", dir / "merges.txt"),
                           IoError, "bad_id.json", "entry 'a'", "expected an integer");
}

// The HF layout for a merge list: byte symbols, their "</w>" forms, merges, then the specials.
nlohmann::json hf_vocab(const ClipTokenizer::Merges& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  auto symbols = ClipTokenizer::clip_vocab(merges);
  symbols[symbols.size() - 2] = "<|startoftext|>";
  symbols[symbols.size() - 1] = "<|endoftext|>";
  for (std::size_t i = 0; i < symbols.size(); ++i) vocab[symbols[i]] = i;
  return vocab;
}

void write_hf_files(const TempDir& dir, const ClipTokenizer::Merges& merges) {
  const auto vocab = hf_vocab(merges);
  write_file(dir / "vocab.json", vocab.dump());
  std::string text = "#version: 0.2\n";
  for (const auto& [a, b] : merges) text += a + " " + b + "\n";
  write_file(dir / "merges.txt", text);
  nlohmann::json strings = nlohmann::json::array(), pairs = nlohmann::json::array();
  for (const auto& [a, b] : merges) {
    strings.push_back(a + " " + b);
    pairs.push_back({a, b});
  }
  nlohmann::json added = nlohmann::json::array();
  added.push_back({{"id", merges.size() + 512}, {"content", "<|startoftext|>"}, {"special", true}});
  added.push_back({{"id", merges.size() + 513}, {"content", "<|endoftext|>"}, {"special", true}});
  nlohmann::json tj = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", strings}, {"end_of_word_suffix", "</w>"}}}};
  write_file(dir / "tokenizer.json", tj.dump());
  tj["model"]["merges"] = pairs;
  // Specials only in added_tokens, not in model.vocab.
  tj["model"]["vocab"].erase("<|startoftext|>");
  tj["model"]["vocab"].erase("<|endoftext|>");
  write_file(dir / "tokenizer_pairs.json", tj.dump());
}

TEST(ClipTokenizer, HuggingFaceFilesGiveTheSameIds) {
  TempDir dir;
  write_hf_files(dir, tiny_merges());
  const auto ref = tiny();
  const auto a = ClipTokenizer::from_hf_files(dir / "vocab.json", dir / "merges.txt");
  const auto b = ClipTokenizer::from_hf_tokenizer_json(dir / "tokenizer.json");
  const auto c = ClipTokenizer::from_hf_tokenizer_json(dir / "tokenizer_pairs.json");
  for (const auto* tok : {&a, &b, &c}) {
    EXPECT_EQ(tok->vocab_size(), ref.vocab_size());
    EXPECT_EQ(tok->sot_token_id(), ref.sot_token_id());
    EXPECT_EQ(tok->eot_token_id(), ref.eot_token_id());
    EXPECT_EQ(tok->encode("Hello dog, cat <|endoftext|>"),
              (Ids{512 + 6, 512 + 8, byte_id(',', true), byte_id('c'), 512, ref.eot_token_id()}));
  }
  nlohmann::json tj = nlohmann::json::parse(read_file(dir / "tokenizer.json"));
  tj["model"]["merges"][2] = nlohmann::json::array({"ca"});
  write_file(dir / "bad_merge.json", tj.dump());
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_tokenizer_json(dir / "bad_merge.json"), IoError,
                           "bad_merge.json", "model.merges[2]", "two symbols");
  // A vocabulary without the special tokens.
  tj = nlohmann::json::parse(read_file(dir / "tokenizer.json"));
  tj["model"]["vocab"].erase("<|endoftext|>");
  tj.erase("added_tokens");
  write_file(dir / "no_special.json", tj.dump());
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_tokenizer_json(dir / "no_special.json"), IoError,
                           "tessera::text::ClipTokenizer::from_hf_tokenizer_json",
                           "no_special.json", "'<|endoftext|>' is not in the vocabulary");
  write_file(dir / "bad_merges.txt", "#version: 0.2\nc a\nca\n");
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_hf_files(dir / "vocab.json", dir / "bad_merges.txt"),
                           IoError, "bad_merges.txt", "line 3");
}

// ---------------------------------------------------------------------------------------------
// Real merge list and open_clip's ids (../shared/data)

struct Case {
  std::string text;
  Ids ids;
  Index context_length;
};

std::vector<Case> read_cases(const std::filesystem::path& path) {
  std::vector<Case> cases;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    cases.push_back(
        {j["text"].get<std::string>(), j["ids"].get<Ids>(), j["context_length"].get<Index>()});
  }
  return cases;
}

std::vector<Case> shared_cases() {
  return read_cases(tessera::test::shared_data_dir() / "clip_tokenizer_cases.jsonl");
}

// Expects every shared caption to tokenize to its open_clip ids; returns how many matched.
int expect_shared_cases(const ClipTokenizer& tok, const std::vector<Case>& cases) {
  int matched = 0;
  for (const auto& c : cases) {
    const auto row = tok.tokenize(c.text, c.context_length);
    Ids got;
    for (Index t = 0; t < c.context_length; ++t) {
      if (t < static_cast<Index>(c.ids.size()) || row(0, t) != 0) got.push_back(row(0, t));
    }
    EXPECT_EQ(got, c.ids) << "caption: " << c.text;
    matched += got == c.ids;
    // encode alone: the ids between the specials (when not truncated).
    if (static_cast<Index>(c.ids.size()) < c.context_length) {
      EXPECT_EQ(tok.encode(c.text), Ids(c.ids.begin() + 1, c.ids.end() - 1)) << c.text;
    }
    // decode, then encode again, gives the same ids (but the special tokens decode drops).
    auto ids = tok.encode(c.text);
    const auto decoded = tok.decode(ids);
    std::erase_if(ids,
                  [&](auto id) { return id == tok.sot_token_id() || id == tok.eot_token_id(); });
    EXPECT_EQ(tok.encode(decoded), ids) << c.text;
  }
  return matched;
}

TEST(ClipTokenizerSharedData, MatchesOpenClipOnEveryCaption) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto cases = shared_cases();
  ASSERT_FALSE(cases.empty());
  const auto tok =
      ClipTokenizer::from_file(tessera::test::shared_data_dir() / "bpe_simple_vocab_16e6.txt.gz");
  EXPECT_EQ(tok.vocab_size(), 49408);
  EXPECT_EQ(tok.sot_token_id(), 49406);
  EXPECT_EQ(tok.eot_token_id(), 49407);
  EXPECT_EQ(tok.bpe().num_merges(), ClipTokenizer::kClipMerges);
  const int matched = expect_shared_cases(tok, cases);
  EXPECT_EQ(matched, static_cast<int>(cases.size()));
  std::cout << "[ shared   ] " << matched << " of " << cases.size()
            << " captions match open_clip's ids\n";
  // Batch form: the same rows.
  std::vector<std::string> texts;
  for (const auto& c : cases) texts.push_back(c.text);
  const auto batch = tok.tokenize(texts);
  for (std::size_t i = 0; i < cases.size(); ++i)
    for (std::size_t t = 0; t < cases[i].ids.size(); ++t)
      EXPECT_EQ(batch(static_cast<Index>(i), static_cast<Index>(t)), cases[i].ids[t]);
  // Decoding strips the specials and gives the cleaned words back.
  EXPECT_EQ(tok.decode(tok.encode("A photo of a DOG.")), "a photo of a dog . ");
}

// Captions that stress the clean-up (tests/fixtures/text/clip_extra_cases.jsonl: the script's
// re-statement of ftfy.fix_text, Python's html.unescape, str.lower and `regex` with the real merge
// list; see make_text_fixtures.py).
TEST(ClipTokenizerSharedData, MatchesPythonOnCleanUpStressCaptions) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto cases = read_cases(std::filesystem::path(TESSERA_TEST_DATA_DIR) / "fixtures" / "text" /
                                "clip_extra_cases.jsonl");
  ASSERT_EQ(cases.size(), 16u);
  const auto tok =
      ClipTokenizer::from_file(tessera::test::shared_data_dir() / "bpe_simple_vocab_16e6.txt.gz");
  const int matched = expect_shared_cases(tok, cases);
  EXPECT_EQ(matched, static_cast<int>(cases.size()));
  std::cout << "[ extra    ] " << matched << " of " << cases.size()
            << " clean-up stress captions match the Python reference\n";
}

// Captions whose ids depend on ftfy.fix_text's fixes, with the ids open_clip gives (its
// SimpleTokenizer with ftfy 6 installed) on the real merge list.
TEST(ClipTokenizerSharedData, MatchesOpenClipWhereFtfyChangesTheText) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto tok =
      ClipTokenizer::from_file(tessera::test::shared_data_dir() / "bpe_simple_vocab_16e6.txt.gz");
  const std::pair<const char*, Ids> cases[] = {
      {"it\xE2\x80\x99s", {585, 568}},
      {"\xE2\x80\x9C"
       "dog\xE2\x80\x9D",
       {257, 1929, 257}},
      {"\xEF\xAC\x81sh", {2759}},
      {"\xEF\xBC\xA1\xEF\xBC\xA2", {3937}},
      {"e&#769;", {4166}},
      {"&amp;amp;amp;", {261}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ(tok.encode(text), ids) << text;
    const auto row = tok.tokenize(text);  // [1, 77]
    EXPECT_EQ(tok.decode(Ids(row.data(), row.data() + row.size())), tok.decode(ids)) << text;
  }
}

TEST(ClipTokenizerSharedData, UncompressedAndHuggingFaceLayoutsMatch) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto cases = shared_cases();
  const auto gz = tessera::test::shared_data_dir() / "bpe_simple_vocab_16e6.txt.gz";
  TempDir dir;
  // The merge list gunzipped: the same tokenizer.
  gzFile f = gzopen(gz.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::string text;
  char buf[1 << 16];
  for (int n; (n = gzread(f, buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  gzclose(f);
  write_file(dir / "bpe_simple_vocab_16e6.txt", text);
  const auto plain = ClipTokenizer::from_file(dir / "bpe_simple_vocab_16e6.txt");
  EXPECT_EQ(expect_shared_cases(plain, cases), static_cast<int>(cases.size()));

  // Hugging Face's layout, written here from the real merges (first 48,894 lines).
  ClipTokenizer::Merges merges;
  std::size_t pos = text.find('\n') + 1;
  while (merges.size() < ClipTokenizer::kClipMerges) {
    const std::size_t nl = text.find('\n', pos);
    const std::string line = text.substr(pos, nl - pos);
    const std::size_t sp = line.find(' ');
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    pos = nl + 1;
  }
  TempDir hf;
  write_hf_files(hf, merges);
  const auto a = ClipTokenizer::from_hf_files(hf / "vocab.json", hf / "merges.txt");
  const auto b = ClipTokenizer::from_hf_tokenizer_json(hf / "tokenizer.json");
  const auto c = ClipTokenizer::from_hf_tokenizer_json(hf / "tokenizer_pairs.json");
  for (const auto* tok : {&a, &b, &c}) {
    EXPECT_EQ(tok->vocab_size(), 49408);
    EXPECT_EQ(tok->sot_token_id(), 49406);
    EXPECT_EQ(tok->eot_token_id(), 49407);
    EXPECT_EQ(expect_shared_cases(*tok, cases), static_cast<int>(cases.size()));
  }
}

TEST(ClipTokenizerSharedData, CorruptRealGzip) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const std::string bytes =
      read_file(tessera::test::shared_data_dir() / "bpe_simple_vocab_16e6.txt.gz");
  TempDir dir;
  // Cut after the part holding CLIP's 48,894 merges would still be truncated: cut early.
  write_file(dir / "cut.txt.gz", bytes.substr(0, 100000));
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "cut.txt.gz"), IoError, "cut.txt.gz",
                           "truncated or corrupt gzip");
  std::string flipped = bytes;
  for (std::size_t i = 5000; i < 5100; ++i) flipped[i] = static_cast<char>(flipped[i] ^ 0x5A);
  write_file(dir / "flipped.txt.gz", flipped);
  TESSERA_EXPECT_THROW_MSG(ClipTokenizer::from_file(dir / "flipped.txt.gz"), IoError,
                           "flipped.txt.gz");
}

}  // namespace clip_tokenizer_test
