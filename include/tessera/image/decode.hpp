// tessera::image: decoding PNG, JPEG and BMP files into uint8 images of shape [height, width,
// channels] (HWC, row-major: the layout of a PIL image seen through numpy.asarray).
//
//   auto img = tessera::image::read_image("cat.png");        // Tensor<uint8_t, 3>, [H, W, 3]
//   auto grey = tessera::image::decode_image(bytes, 1);      // [H, W, 1]
//
// Decoding is stb_image's (https://github.com/nothings/stb, Debian libstb-dev, linked through
// tessera::image). Channel conversions are done here, not by stb, with PIL's rules (Pillow
// src/libImaging/Convert.c) so that `channels` gives what `Image.convert("L" | "RGB" | "RGBA")`
// gives: grey from RGB is ITU-R 601 luma in 16-bit fixed point, (19595 R + 38470 G + 7471 B +
// 2^15) >> 16 (stb's own conversion uses 8-bit weights and differs by up to a grey level); RGB
// from grey replicates the level; alpha is dropped, or added as 255.
//
// Beyond stb_image, which zero-fills truncated BMP and JPEG data and ignores PNG checksums, the
// data is checked as PIL checks it: every PNG chunk's bounds and CRC-32 up to IEND, a BMP's pixel
// array against its header, a JPEG's end-of-image marker.
//
// PNG and BMP decode exactly as PIL does. JPEG does not: stb's IDCT and chroma upsampling are
// not libjpeg's, and a decoded JPEG differs from PIL's by a few grey levels (tests/image measure
// it); exactness claims against PIL are made on PNG input.
#pragma once

#include <stb_image.h>

#include <array>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::image {

// An 8-bit image: [height, width, channels], HWC, row-major.
using Image = Tensor<std::uint8_t, 3>;

// The container formats decode_image accepts, recognised by their signature bytes.
enum class ImageFormat { png, jpeg, bmp };

namespace impl {

inline bool starts_with(std::span<const std::uint8_t> b, std::initializer_list<int> sig) {
  if (b.size() < sig.size()) return false;
  std::size_t i = 0;
  for (int s : sig)
    if (b[i++] != static_cast<std::uint8_t>(s)) return false;
  return true;
}

// Names a few formats we refuse, so that the error says what was found.
inline std::string describe_signature(std::span<const std::uint8_t> b) {
  std::ostringstream os;
  if (starts_with(b, {'G', 'I', 'F', '8'}))
    os << "a GIF file";
  else if (starts_with(b, {'8', 'B', 'P', 'S'}))
    os << "a Photoshop (PSD) file";
  else if (starts_with(b, {'#', '?'}))
    os << "a Radiance HDR file";
  else if (b.size() >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '7')
    os << "a PNM/PGM/PPM file";
  else if (starts_with(b, {'R', 'I', 'F', 'F'}))
    os << "a RIFF (WebP?) file";
  else if (starts_with(b, {'I', 'I', 42, 0}) || starts_with(b, {'M', 'M', 0, 42}))
    os << "a TIFF file";
  else
    os << "an unrecognised format";
  os << " (first bytes:";
  const std::size_t n = std::min<std::size_t>(b.size(), 8);
  static const char* hex = "0123456789abcdef";
  for (std::size_t i = 0; i < n; ++i) os << ' ' << hex[b[i] >> 4] << hex[b[i] & 15];
  if (n == 0) os << " none, the data is empty";
  os << ")";
  return os.str();
}

inline std::uint32_t read_le32(std::span<const std::uint8_t> b, std::size_t at) {
  return static_cast<std::uint32_t>(b[at]) | (static_cast<std::uint32_t>(b[at + 1]) << 8) |
         (static_cast<std::uint32_t>(b[at + 2]) << 16) |
         (static_cast<std::uint32_t>(b[at + 3]) << 24);
}

// stb_image zero-fills the rest of a truncated BMP or JPEG instead of failing (PIL raises
// "image file is truncated"); these checks catch the common cases before decoding. Returns an
// empty string when the data looks complete, else what is missing.
inline std::string truncation_problem(ImageFormat fmt, std::span<const std::uint8_t> b) {
  if (fmt == ImageFormat::jpeg) {
    // Entropy-coded data stuffs every 0xff with 0x00, so an end-of-image marker ff d9 appears
    // only as a marker: no marker at all means the data stops before the image ends.
    for (std::size_t i = b.size(); i-- > 1;)
      if (b[i - 1] == 0xff && b[i] == 0xd9) return {};
    return "no JPEG end-of-image marker (ff d9): the data is truncated";
  }
  if (fmt == ImageFormat::bmp && b.size() >= 34) {
    // Uncompressed (BI_RGB) or bitfield BMPs of a BITMAPINFOHEADER or later: the pixel array of
    // |height| rows of 4-byte-aligned width * bpp bits starts at bfOffBits.
    const std::uint32_t offset = read_le32(b, 10), header = read_le32(b, 14);
    if (header < 40) return {};
    const auto width = static_cast<std::int32_t>(read_le32(b, 18));
    const auto height = static_cast<std::int32_t>(read_le32(b, 22));
    const unsigned bpp = static_cast<unsigned>(b[28]) | (static_cast<unsigned>(b[29]) << 8);
    const std::uint32_t compression = read_le32(b, 30);
    if ((compression != 0 && compression != 3) || width <= 0 || height == 0 || bpp == 0) return {};
    const auto abs_h = static_cast<std::uint64_t>(height < 0 ? -static_cast<std::int64_t>(height)
                                                             : static_cast<std::int64_t>(height));
    const std::uint64_t row = (static_cast<std::uint64_t>(width) * bpp + 31) / 32 * 4;
    const std::uint64_t need = static_cast<std::uint64_t>(offset) + row * abs_h;
    if (need > b.size()) {
      std::ostringstream os;
      os << "the BMP pixel array needs " << need << " bytes, the data has " << b.size()
         << ": the data is truncated";
      return os.str();
    }
  }
  return {};
}

// A chunk type for messages: its four letters, or '?' for bytes that are not.
inline std::string printable_type(std::string t) {
  for (char& c : t)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) c = '?';
  return t;
}

// zlib's CRC-32 (ISO 3309 / ITU-T V.42, polynomial 0xedb88320), which guards every PNG chunk.
inline std::uint32_t crc32_update(std::uint32_t crc, const std::uint8_t* p, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

inline std::uint32_t read_be32(std::span<const std::uint8_t> b, std::size_t at) {
  return (static_cast<std::uint32_t>(b[at]) << 24) | (static_cast<std::uint32_t>(b[at + 1]) << 16) |
         (static_cast<std::uint32_t>(b[at + 2]) << 8) | static_cast<std::uint32_t>(b[at + 3]);
}

// stb_image skips PNG chunk CRCs; PIL checks them ("broken PNG file"). Walks the chunks from the
// signature to IEND checking bounds and CRCs. Returns an empty string for a sound file, else the
// problem with its byte offset.
inline std::string png_chunk_problem(std::span<const std::uint8_t> b) {
  std::size_t at = 8;
  std::ostringstream os;
  while (true) {
    if (b.size() - at < 12) {
      os << "the data ends at byte " << b.size() << " inside the chunk header at byte offset " << at
         << " before the IEND chunk: the data is truncated";
      return os.str();
    }
    const std::uint32_t len = read_be32(b, at);
    const std::string type(reinterpret_cast<const char*>(&b[at + 4]), 4);
    if (len > b.size() - at - 12) {
      os << "chunk '" << printable_type(type) << "' at byte offset " << at << " declares " << len
         << " bytes of data, but only " << b.size() - at - 12 << " remain: the data is truncated";
      return os.str();
    }
    const std::uint32_t crc = crc32_update(0, &b[at + 4], std::size_t{len} + 4);
    if (crc != read_be32(b, at + 8 + len)) {
      os << "chunk '" << printable_type(type) << "' at byte offset " << at
         << " fails its CRC check (stored " << std::hex << read_be32(b, at + 8 + len)
         << ", computed " << crc << ")";
      return os.str();
    }
    at += std::size_t{len} + 12;
    if (type == "IEND") return {};
  }
}

// ITU-R 601 luma as PIL computes it (Convert.c, L24): 16-bit fixed-point weights, rounded.
inline std::uint8_t pil_luma(std::uint8_t r, std::uint8_t g, std::uint8_t b) {
  return static_cast<std::uint8_t>((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

struct StbFree {
  void operator()(stbi_uc* p) const noexcept { stbi_image_free(p); }
};

// `where` names the source in messages: "file '/a/b.png'" or "argument 'bytes'".
inline Image decode(std::span<const std::uint8_t> bytes, int channels, std::string_view fn,
                    const std::string& where) {
  if (channels != 1 && channels != 3 && channels != 4)
    detail::raise<ValueError>(fn, "argument 'channels' is ", channels, ", expected 1, 3 or 4");
  ImageFormat fmt;
  if (starts_with(bytes, {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a}))
    fmt = ImageFormat::png;
  else if (starts_with(bytes, {0xff, 0xd8, 0xff}))
    fmt = ImageFormat::jpeg;
  else if (starts_with(bytes, {'B', 'M'}))
    fmt = ImageFormat::bmp;
  else
    detail::raise<IoError>(fn, where, " is not a PNG, JPEG or BMP image: found ",
                           describe_signature(bytes));
  if (bytes.size() > static_cast<std::size_t>(INT_MAX))
    detail::raise<ValueError>(fn, where, " holds ", bytes.size(),
                              " bytes, more than the 2^31 - 1 that stb_image reads");
  const int len = static_cast<int>(bytes.size());
  if (fmt == ImageFormat::png)
    if (auto problem = png_chunk_problem(bytes); !problem.empty())
      detail::raise<IoError>(fn, where, " is corrupt: PNG ", problem);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(bytes.data(), len, &w, &h, &comp)) {
    // stbi_info tries every format in turn, so its failure reason is the last format's
    // ("unknown image type"); stbi_load tests the format first and then reports that decoder's
    // own reason, which is what the message needs.
    int x = 0, y = 0, n = 0;
    stbi_image_free(stbi_load_from_memory(bytes.data(), len, &x, &y, &n, 0));
    detail::raise<IoError>(fn, where, " could not be read as an image: stb_image says \"",
                           stbi_failure_reason() ? stbi_failure_reason() : "unknown error", "\" (",
                           bytes.size(), " bytes)");
  }
  if (w <= 0 || h <= 0)
    detail::raise<IoError>(fn, where, " is an image of size ", w, " x ", h,
                           ", expected a width and height >= 1");
  // stb allocates its output with int sizes: width * height * channels must fit an int, for the
  // file's own channel count and for the one we convert to.
  const Index pixels = static_cast<Index>(w) * h;
  const Index widest = static_cast<Index>(std::max(comp, channels));
  if (pixels > static_cast<Index>(INT_MAX) / widest)
    detail::raise<ValueError>(fn, where, " is an image of ", w, " x ", h, " pixels x ", widest,
                              " channels = ", pixels * widest,
                              " bytes, more than the 2^31 - 1 that stb_image can decode");
  if (auto problem = truncation_problem(fmt, bytes); !problem.empty())
    detail::raise<IoError>(fn, where, " is corrupt: ", problem);
  int got = 0;
  std::unique_ptr<stbi_uc, StbFree> px(
      stbi_load_from_memory(bytes.data(), len, &w, &h, &got, /*desired_channels=*/0));
  if (!px)
    detail::raise<IoError>(fn, where, " could not be decoded: stb_image says \"",
                           stbi_failure_reason() ? stbi_failure_reason() : "unknown error", "\" (",
                           bytes.size(), " bytes)");
  Image out({h, w, channels}, uninitialized);
  const stbi_uc* s = px.get();
  std::uint8_t* d = out.data();
  // got: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA (stb's order). PIL's conversions (Convert.c).
  for (Index i = 0; i < pixels; ++i, s += got, d += channels) {
    const bool grey = got <= 2;
    const std::uint8_t r = s[0], g = grey ? s[0] : s[1], b = grey ? s[0] : s[2];
    const std::uint8_t a = (got == 2 || got == 4) ? s[got - 1] : 255;
    if (channels == 1) {
      d[0] = grey ? r : pil_luma(r, g, b);
    } else {
      d[0] = r;
      d[1] = g;
      d[2] = b;
      if (channels == 4) d[3] = a;
    }
  }
  return out;
}

}  // namespace impl

// Decodes a PNG, JPEG or BMP image held in memory (the format is recognised by its signature
// bytes; every other format, including ones stb_image could decode, is refused).
//   bytes:    the encoded file
//   channels: 1 (grey, PIL "L"), 3 (RGB) or 4 (RGBA); the image is converted to it with PIL's
//             rules (see the top of this header)
// Returns [height, width, channels] uint8.
// Throws ValueError for `channels` not in {1, 3, 4} or an image whose width * height * channels
// does not fit an int (stb_image's limit); IoError for another format, corrupt or truncated data
// (with stb_image's stbi_failure_reason), or a zero width or height.
inline Image decode_image(std::span<const std::uint8_t> bytes, int channels = 3) {
  return impl::decode(bytes, channels, "tessera::image::decode_image", "argument 'bytes'");
}

// Reads and decodes the PNG, JPEG or BMP file at `path`; see decode_image. Messages name the
// path. Throws IoError when the file is missing or cannot be read, and as decode_image.
inline Image read_image(const std::filesystem::path& path, int channels = 3) {
  constexpr std::string_view fn = "tessera::image::read_image";
  const std::string where = "file '" + path.string() + "'";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    detail::raise<IoError>(
        fn, where,
        std::filesystem::exists(path, ec) ? " is not a regular file" : " does not exist");
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::raise<IoError>(fn, where, " could not be opened for reading");
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  if (in.bad()) detail::raise<IoError>(fn, where, " could not be read");
  return impl::decode(bytes, channels, fn, where);
}

}  // namespace tessera::image
