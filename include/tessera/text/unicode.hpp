// tessera::text: the Unicode steps of text clean-up — UTF-8 checking and decoding, NFC, Python's
// str.isspace and str.lower — on UTF-8 std::strings, with utf8proc for every Unicode property
// (no hand-written Unicode tables).
//
//   tessera::text::check_utf8(s, "my_function");   // ValueError naming the first bad byte offset
//   std::string n = tessera::text::nfc(s);           // canonical composition (NFC)
//   std::string l = tessera::text::python_lower(s);  // what Python's s.lower() returns
#pragma once

#include <utf8proc.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"

namespace tessera::text {

namespace impl {

// The length of the well-formed UTF-8 sequence at s[i], or 0 when the bytes there are not one
// (Unicode 15, Table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF). `maximal`
// receives the length of the maximal subpart of an ill-formed sequence (at least 1), which is
// what a decoder with replacement skips per U+FFFD (Unicode's "best practice", as Python does).
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, char32_t& cp,
                                 std::size_t& maximal) noexcept {
  const auto b0 = static_cast<unsigned char>(s[i]);
  maximal = 1;
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the valid range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (std::size_t k = 1; k < len; ++k) {
    if (i + k >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return 0;
    cp = (cp << 6) | (b & 0x3F);
    maximal = k + 1;
  }
  return len;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Calls f(code_point, byte_offset, byte_length) for each code point of valid UTF-8 `s`.
template <class F>
void for_each_code_point(std::string_view s, F&& f) {
  std::size_t i = 0, maximal = 0;
  char32_t cp = 0;
  while (i < s.size()) {
    const std::size_t n = utf8_sequence(s, i, cp, maximal);
    f(cp, i, n);
    i += n;
  }
}

}  // namespace impl

// The byte offset of the first byte of `s` that does not start or continue a well-formed UTF-8
// sequence (Unicode Table 3-7: overlong forms, surrogates and code points above U+10FFFF are
// ill-formed, as for Python's bytes.decode('utf-8')), or std::string_view::npos when `s` is valid.
inline std::size_t find_invalid_utf8(std::string_view s) noexcept {
  std::size_t i = 0, maximal = 0;
  char32_t cp = 0;
  while (i < s.size()) {
    const std::size_t n = impl::utf8_sequence(s, i, cp, maximal);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

namespace impl {
inline std::string hex_byte(unsigned char b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return {'0', 'x', kHex[b >> 4], kHex[b & 15]};
}
}  // namespace impl

// Throws ValueError "<fn>: argument '<arg>' is not valid UTF-8: byte offset N (0xXX) ..." naming
// the first invalid byte (see find_invalid_utf8).
inline void check_utf8(std::string_view s, std::string_view fn, std::string_view arg = "text") {
  if (const std::size_t i = find_invalid_utf8(s); i != std::string_view::npos)
    detail::raise<ValueError>(fn, "argument '", arg, "' is not valid UTF-8: byte offset ", i, " (",
                              impl::hex_byte(static_cast<unsigned char>(s[i])),
                              ") does not begin a well-formed sequence (", s.size(),
                              " bytes in all)");
}

// Decodes bytes as Python's bytes.decode('utf-8', errors='replace') does: each maximal ill-formed
// subpart becomes one U+FFFD. Never throws.
inline std::string decode_utf8_replace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0, maximal = 0;
  char32_t cp = 0;
  while (i < s.size()) {
    const std::size_t n = impl::utf8_sequence(s, i, cp, maximal);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += maximal;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

// Python's str.isspace() (and the `\s` of `re` on str): bidirectional class WS, B or S, or
// general category Zs — read from utf8proc's tables.
inline bool python_isspace(char32_t cp) noexcept {
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
  return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
         p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

// Canonical composition (Unicode NFC, UAX #15) through utf8proc_map(STABLE | COMPOSE). `s` must
// be valid UTF-8 (see check_utf8); embedded NUL characters are kept.
inline std::string nfc(std::string_view s) {
  if (s.empty()) return {};
  bool ascii = true;
  for (char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);  // ASCII is always NFC
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
      &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0)
    detail::raise<ValueError>("tessera::text::nfc", "utf8proc_map failed: ", utf8proc_errmsg(n));
  std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return result;
}

namespace impl {

// Unicode's derived property Cased (D135), from utf8proc: categories Lu, Ll, Lt, or a code point
// with a case mapping (utf8proc_islower / isupper). Other_Lowercase letters without a mapping
// (ª, º, modifier letters) are not seen as cased: an approximation used only for Final_Sigma.
inline bool is_cased(char32_t cp) noexcept {
  const auto c = static_cast<utf8proc_int32_t>(cp);
  const auto cat = utf8proc_category(c);
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
         cat == UTF8PROC_CATEGORY_LT || utf8proc_islower(c) || utf8proc_isupper(c);
}

// Unicode's Case_Ignorable (D136): categories Mn, Me, Cf, Lm, Sk from utf8proc, plus the code
// points of Word_Break = MidLetter, MidNumLet or Single_Quote (UAX #29), which utf8proc does not
// expose and are listed here.
inline bool is_case_ignorable(char32_t cp) noexcept {
  switch (cp) {
    case 0x0027:
    case 0x002E:
    case 0x003A:
    case 0x00B7:
    case 0x0387:
    case 0x055F:
    case 0x05F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A:
      return true;
    default:
      break;
  }
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME ||
         cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}

}  // namespace impl

// Lower case as Python 3's str.lower(): utf8proc's simple lowercase mapping (UnicodeData.txt)
// for every code point, plus the two places where Python applies SpecialCasing.txt's full mapping:
//   - U+0130 (İ, capital I with dot above) becomes "i\u0307" (two code points; the simple mapping
//     would give a plain "i"), the only unconditional multi-character lowercase mapping;
//   - U+03A3 (Σ) becomes ς (U+03C2) in the Final_Sigma context (after a cased letter, not before
//     one, skipping case-ignorable code points; Unicode 15 §3.13), else σ (U+03C3).
// Python applies no language-specific rules (Turkish/Lithuanian), nor does this. The only known
// difference left: Cased and Case_Ignorable are approximated from utf8proc's categories (see
// impl::is_cased), which can only change the sigma chosen next to rare letters such as ª.
// `s` must be valid UTF-8.
inline std::string python_lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool ascii = true;
  for (char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) {
    for (char c : s) out += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    return out;
  }
  // Decode once so the Final_Sigma rule can look both ways.
  std::u32string cps;
  cps.reserve(s.size());
  impl::for_each_code_point(s, [&](char32_t cp, std::size_t, std::size_t) { cps += cp; });
  for (std::size_t i = 0; i < cps.size(); ++i) {
    const char32_t cp = cps[i];
    if (cp == 0x0130) {
      out += "i\xCC\x87";  // i + U+0307 COMBINING DOT ABOVE
    } else if (cp == 0x03A3) {
      std::size_t j = i;
      while (j > 0 && impl::is_case_ignorable(cps[j - 1])) --j;
      const bool after_cased = j > 0 && impl::is_cased(cps[j - 1]);
      std::size_t k = i + 1;
      while (k < cps.size() && impl::is_case_ignorable(cps[k])) ++k;
      const bool before_cased = k < cps.size() && impl::is_cased(cps[k]);
      impl::append_utf8(out, after_cased && !before_cased ? 0x03C2 : 0x03C3);
    } else {
      impl::append_utf8(out,
                        static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }
  return out;
}

}  // namespace tessera::text
