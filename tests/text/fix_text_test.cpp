// tessera::text::fix_text and its steps (ftfy_fixes) against ftfy 6.3.1: the examples its own
// docstrings give (ftfy/__init__.py, fixes.py), cases derived from its source step by step, and
// tests/fixtures/text/ftfy_cases.jsonl (make_text_fixtures.py's re-statement of fix_text without
// fix_encoding; ftfy itself is not installable here, see tests/fixtures/text/README.md).
#include "tessera/text/fix_text.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tessera/text/text_cleaning.hpp"
#include "test_util.hpp"

namespace fix_text_test {

using tessera::ValueError;
using namespace tessera::text;

// The outputs ftfy 6.3.1's docstrings show for these inputs.
TEST(FixText, FtfyDocumentedExamples) {
  EXPECT_EQ(fix_text("Broken text&hellip; it&#x2019;s \xEF\xAC\x82ubberi\xEF\xAC\x81"
                     "c!"),
            "Broken text\xE2\x80\xA6 it's flubberific!");
  EXPECT_EQ(fix_text("\xEF\xBC\xAC\xEF\xBC\xAF\xEF\xBC\xB5\xEF\xBC\xA4\xE3\x80\x80"
                     "\xEF\xBC\xAE\xEF\xBC\xAF\xEF\xBC\xA9\xEF\xBC\xB3\xEF\xBC\xA5\xEF\xBC\xB3"),
            "LOUD NOISES");
  EXPECT_EQ(ftfy_fixes::unescape_html("&lt;tag&gt;"), "<tag>");
  EXPECT_EQ(ftfy_fixes::unescape_html("P&eacute;rez"), "P\xC3\xA9rez");
  EXPECT_EQ(ftfy_fixes::unescape_html("P&EACUTE;REZ"), "P\xC3\x89REZ");
  EXPECT_EQ(ftfy_fixes::unescape_html("BUNDESSTRA&SZLIG;E"), "BUNDESSTRASSE");
  EXPECT_EQ(ftfy_fixes::unescape_html("&ntilde; &Ntilde; &NTILDE; &nTILDE;"),
            "\xC3\xB1 \xC3\x91 \xC3\x91 &nTILDE;");
  EXPECT_EQ(
      ftfy_fixes::remove_terminal_escapes("\x1B[36;44mI'm blue, da ba dee da ba doo...\x1B[0m"),
      "I'm blue, da ba dee da ba doo...");
  EXPECT_EQ(ftfy_fixes::uncurl_quotes("\xE2\x80\x9Chere\xE2\x80\x99s a test\xE2\x80\x9D"),
            "\"here's a test\"");
  EXPECT_EQ(ftfy_fixes::fix_latin_ligatures("\xEF\xAC\x82u\xEF\xAC\x83"
                                            "e\xEF\xAC\x86"),
            "fluffiest");
  // "Ｕﾀｰﾝ" (U-turn) -> "Uターン"
  EXPECT_EQ(ftfy_fixes::fix_character_width("\xEF\xBC\xB5\xEF\xBE\x80\xEF\xBD\xB0\xEF\xBE\x9D"),
            "U\xE3\x82\xBF\xE3\x83\xBC\xE3\x83\xB3");
  EXPECT_EQ(ftfy_fixes::fix_line_breaks("This string is made of two things:\xE2\x80\xA9"
                                        "1. Unicode\xE2\x80\xA8"
                                        "2. Spite"),
            "This string is made of two things:\n1. Unicode\n2. Spite");
  EXPECT_EQ(ftfy_fixes::fix_line_breaks("Content-type: text/plain\r\n\r\nHi."),
            "Content-type: text/plain\n\nHi.");
  EXPECT_EQ(ftfy_fixes::fix_line_breaks("This is how Microsoft \r trolls Mac users"),
            "This is how Microsoft \n trolls Mac users");
  EXPECT_EQ(ftfy_fixes::fix_line_breaks("What is this \xC2\x85 I don't even"),
            "What is this \n I don't even");
}

TEST(FixText, UnescapeHtmlNeedsTheSemicolonAndAWholeNumericReference) {
  using ftfy_fixes::unescape_html;
  EXPECT_EQ(unescape_html("&amp &amp; &AMP; &Amp;"), "&amp & & &Amp;");
  EXPECT_EQ(unescape_html("&#x41;&#65;&#X41;"), "AAA");
  EXPECT_EQ(unescape_html("&#65x; &#xZZ; &#;"), "&#65x; &#xZZ; &#;");  // partly or not numeric
  EXPECT_EQ(unescape_html("&#0;&#128;&#1;x"),
            "\xEF\xBF\xBD\xE2\x82\xAC"
            "x");  // html.unescape's
  EXPECT_EQ(unescape_html("&" + std::string(24, 'a') + ";"), "&" + std::string(24, 'a') + ";");
  EXPECT_EQ(unescape_html("&" + std::string(25, 'a') + "; &lt;"),
            "&" + std::string(25, 'a') + "; <");
  EXPECT_EQ(unescape_html("&checkmark;"), "&checkmark;");  // HTML5-only: not in our subset
}

TEST(FixText, StepsAndTheirOrder) {
  // The HTML rule: from the first line with '<' on, entities stay (earlier lines are unescaped).
  EXPECT_EQ(fix_text("&lt;3\n<b>&amp;</b>\n&amp;"), "<3\n<b>&amp;</b>\n&amp;");
  // Unescaping that produces '<' goes on: the rule looks at the input line only.
  EXPECT_EQ(fix_text("&amp;lt;b&amp;gt;"), "<b>");
  // C1 controls as Windows-1252 (0x93 is U+201C, which uncurl_quotes then straightens); the five
  // undefined bytes stay; U+0085 is '…', not a line break.
  EXPECT_EQ(fix_text("\xC2\x80\xC2\x93\xC2\x81\xC2\x85"), "\xE2\x82\xAC\"\xC2\x81\xE2\x80\xA6");
  // ŉ -> U+02BC n -> 'n (uncurl_quotes comes after fix_latin_ligatures); ǅ -> Dž (NFC).
  EXPECT_EQ(fix_text("\xC5\x89 \xC7\x85"), "'n D\xC5\xBE");
  // Half-width katakana + half-width voiced mark -> one composed kana (width, then NFC).
  EXPECT_EQ(fix_text("\xEF\xBD\xB6\xEF\xBE\x9E"), "\xE3\x82\xAC");  // ｶﾞ -> ガ
  // Line breaks: CRLF, CR, U+2028 then LF gives two.
  EXPECT_EQ(fix_text("a\r\nb\rc\xE2\x80\xA8\nd"), "a\nb\nc\n\nd");
  // ftfy's control-character set: tab, LF, FF, CR (as LF) stay; the rest of C0, DEL, U+206A-F,
  // BOM and U+FFF9-U+FFFC go; joiners and bidi controls stay.
  EXPECT_EQ(fix_text(std::string("\x00\x01\t\x0B\x0C\x1F\x7F"
                                 "a",
                                 8)),
            "\t\x0C"
            "a");
  EXPECT_EQ(fix_text("\xE2\x81\xAA\xEF\xBB\xBF\xEF\xBF\xBC"
                     "b\xE2\x80\x8D\xE2\x80\x8F"),
            "b\xE2\x80\x8D\xE2\x80\x8F");
  // A terminal escape is removed before the control characters (else "[31m" would stay).
  EXPECT_EQ(fix_text("\x1B[31mred\x1B[0m \x1B[2J"), "red ");
  EXPECT_EQ(fix_text("\x1B[3!"), "[3!");  // not an escape: ESC alone is a control character
  // Repeated until stable, then NFC.
  EXPECT_EQ(fix_text("&amp;amp;amp;eacute; e&#769;"), "\xC3\xA9 \xC3\xA9");
  EXPECT_EQ(fix_text(""), "");
  EXPECT_EQ(fix_text("plain text\n"), "plain text\n");
  // Mojibake is the one default step not implemented: it passes unchanged.
  EXPECT_EQ(fix_text("sch\xC3\x83\xC2\xB6n"), "sch\xC3\x83\xC2\xB6n");
}

TEST(FixText, InvalidUtf8IsAValueError) {
  TESSERA_EXPECT_THROW_MSG(fix_text("ab\xFF"), ValueError, "tessera::text::fix_text",
                           "byte offset 2", "0xFF");
}

// Reference outputs of make_text_fixtures.py's fix_text re-statement (Python's html, unicodedata
// and str methods, ftfy 6.3.1's steps without fix_encoding), and of open_clip's basic_clean.
TEST(FixText, MatchesThePythonRestatementOnTrickyStrings) {
  std::ifstream in(std::filesystem::path(TESSERA_TEST_DATA_DIR) / "fixtures" / "text" /
                   "ftfy_cases.jsonl");
  ASSERT_TRUE(in) << "missing tests/fixtures/text/ftfy_cases.jsonl";
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = j["text"], fixed = j["fix_text"], basic = j["basic_clean"];
    EXPECT_EQ(fix_text(text), fixed) << j["text"].dump();
    EXPECT_EQ(clip_basic_clean(text), basic) << j["text"].dump();
    ++n;
  }
  EXPECT_GE(n, 30);
}

}  // namespace fix_text_test
