// tessera::text: the caption clean-up that CLIP's and SigLIP's tokenizers run before splitting,
// as open_clip's tokenizer.py writes it (basic_clean, whitespace_clean, canonicalize_text).
//
//   clip_clean("  Tom &amp;amp;  JERRY\n")   == "tom & jerry"     // CLIP (SimpleTokenizer)
//   clip_clean("it\u2019s \uFB01ne")          == "it's fine"       // ftfy.fix_text's fixes
//   canonicalize_text("A dog_walker, runs!")  == "a dog walker runs" // SigLIP (open_clip)
//
// Every function takes UTF-8 and throws ValueError naming the byte offset of the first invalid
// byte.
#pragma once

#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/text/fix_text.hpp"
#include "tessera/text/html_unescape.hpp"
#include "tessera/text/unicode.hpp"

namespace tessera::text {

namespace impl {

// Collapses every run of Python-whitespace code points to one ' ' and strips both ends (Python's
// `re.sub(r'\s+', ' ', text).strip()`). `s` is valid UTF-8.
inline std::string collapse_whitespace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  impl::for_each_code_point(s, [&](char32_t cp, std::size_t at, std::size_t len) {
    if (python_isspace(cp)) {
      pending_space = !out.empty();
      return;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out.append(s.substr(at, len));
  });
  return out;
}

// Python's str.strip(): removes leading and trailing whitespace code points.
inline std::string strip(std::string_view s) {
  std::size_t first = std::string_view::npos, last_end = 0;
  impl::for_each_code_point(s, [&](char32_t cp, std::size_t at, std::size_t len) {
    if (!python_isspace(cp)) {
      if (first == std::string_view::npos) first = at;
      last_end = at + len;
    }
  });
  return first == std::string_view::npos ? std::string()
                                         : std::string(s.substr(first, last_end - first));
}

inline std::string basic_clean_checked(std::string_view text) {
  // ftfy.fix_text (fix_text.hpp: every default step but mojibake repair), then html.unescape
  // twice, as open_clip's basic_clean.
  std::string s = fix_text_checked(text);
  s = html_unescape(html_unescape(s));
  return s;
}

}  // namespace impl

// CLIP's basic_clean (OpenAI CLIP simple_tokenizer.py and open_clip tokenizer.py):
// ftfy.fix_text, then html.unescape twice, then strip. ftfy.fix_text is fix_text() (ftfy 6.3.1's
// default steps — HTML unescaping when the text has no '<', C1 controls, Latin ligatures,
// full-width forms, curly quotes, line breaks, terminal escapes, control characters, NFC —
// without its mojibake repair, see fix_text.hpp); html.unescape supports the subset described at
// html_unescape().
inline std::string clip_basic_clean(std::string_view text) {
  check_utf8(text, "tessera::text::clip_basic_clean");
  return impl::strip(impl::basic_clean_checked(text));
}

// CLIP's whitespace_clean: runs of whitespace (Python's `\s`, i.e. str.isspace) become one space,
// and the ends are stripped.
inline std::string clip_whitespace_clean(std::string_view text) {
  check_utf8(text, "tessera::text::clip_whitespace_clean");
  return impl::collapse_whitespace(text);
}

namespace impl {
inline std::string clip_clean_checked(std::string_view text) {
  return python_lower(collapse_whitespace(basic_clean_checked(text)));
}
}  // namespace impl

// The whole clean-up CLIP's tokenizer applies before pre-tokenization:
// `whitespace_clean(basic_clean(text)).lower()` (open_clip's default "lower" clean function, and
// OpenAI CLIP's SimpleTokenizer.encode). Lower case is python_lower (Python's str.lower).
inline std::string clip_clean(std::string_view text) {
  check_utf8(text, "tessera::text::clip_clean");
  return impl::clip_clean_checked(text);
}

namespace impl {
inline std::string canonicalize_checked(std::string_view text) {
  std::string s = basic_clean_checked(text);
  std::string kept;
  kept.reserve(s.size());
  for (char c : s) {
    if (c == '_') {
      kept += ' ';
    } else if (!(c >= 0x21 && c <= 0x7E && !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') &&
                 !(c >= 'A' && c <= 'Z'))) {
      kept += c;  // keeps everything but Python's string.punctuation (ASCII
                  // !"#$%&'()*+,-./:;<=>?@[\]^`{|}~)
    }
  }
  return collapse_whitespace(python_lower(kept));
}
}  // namespace impl

// open_clip's SigLIP clean-up, `canonicalize_text(basic_clean(text))` (open_clip tokenizer.py,
// itself from big_vision's evaluators/proj/image_text/prompt_engineering.py): basic_clean as
// above, '_' replaced by a space, ASCII punctuation (Python's string.punctuation) removed, lower
// case, whitespace runs collapsed to one space and stripped. (Hugging Face's SiglipTokenizer
// removes '_' instead of spacing it and does not html-unescape; otherwise the same.)
inline std::string canonicalize_text(std::string_view text) {
  check_utf8(text, "tessera::text::canonicalize_text");
  return impl::canonicalize_checked(text);
}

}  // namespace tessera::text
