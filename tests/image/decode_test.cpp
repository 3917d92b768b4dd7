// tessera::image::decode_image and read_image: PNG, BMP and JPEG against PIL 9.4's decoding
// (fixtures: tests/fixtures/image/make_image_fixtures.py), channel conversions as PIL's
// Image.convert, and every error path.
#include "tessera/image/decode.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace decode_test {

using tessera::Index;
using tessera::IoError;
using tessera::ValueError;
using tessera::image::Image;
using Bytes = std::vector<std::uint8_t>;

std::string fixture(const std::string& name) {
  return std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/image/" + name;
}

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::filesystem::path& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// The raw pixels the fixtures were made from: [60, 80, 3] RGB and PIL's "L" of it.
Image raw(const std::string& name, Index channels) {
  const Bytes b = read_bytes(fixture(name));
  Image img(tessera::Shape<3>{60, 80, channels});
  EXPECT_EQ(static_cast<Index>(b.size()), img.size());
  std::copy(b.begin(), b.end(), img.data());
  return img;
}

::testing::AssertionResult same_pixels(const Image& a, const Image& b) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shapes " << tessera::detail::shape_string(a.shape())
                                         << " and " << tessera::detail::shape_string(b.shape());
  for (Index i = 0; i < a.size(); ++i)
    if (a.data()[i] != b.data()[i])
      return ::testing::AssertionFailure()
             << "value " << i << ": " << int(a.data()[i]) << " vs " << int(b.data()[i]);
  return ::testing::AssertionSuccess();
}

// Little-endian helpers to build BMP headers.
void put16(Bytes& b, unsigned v) {
  b.push_back(v & 0xff);
  b.push_back((v >> 8) & 0xff);
}
void put32(Bytes& b, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back((v >> (8 * i)) & 0xff);
}
// A 24-bit BI_RGB BMP of width x height with `pixel_bytes` bytes of pixel data (zeros).
Bytes bmp(std::int32_t width, std::int32_t height, std::size_t pixel_bytes) {
  Bytes b = {'B', 'M'};
  put32(b, static_cast<std::uint32_t>(54 + pixel_bytes));
  put32(b, 0);
  put32(b, 54);
  put32(b, 40);
  put32(b, static_cast<std::uint32_t>(width));
  put32(b, static_cast<std::uint32_t>(height));
  put16(b, 1);
  put16(b, 24);
  for (int i = 0; i < 6; ++i) put32(b, 0);
  b.resize(b.size() + pixel_bytes, 0);
  return b;
}

std::uint32_t crc32(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}
std::uint32_t be32(const Bytes& b, std::size_t at) {
  return (std::uint32_t{b[at]} << 24) | (std::uint32_t{b[at + 1]} << 16) |
         (std::uint32_t{b[at + 2]} << 8) | b[at + 3];
}
// Byte offset of the first PNG chunk of the given type.
std::size_t find_chunk(const Bytes& png, const std::string& type) {
  for (std::size_t at = 8; at + 12 <= png.size(); at += be32(png, at) + 12)
    if (std::string(png.begin() + at + 4, png.begin() + at + 8) == type) return at;
  ADD_FAILURE() << "no " << type << " chunk";
  return 8;
}
// Recomputes the CRC of the chunk at byte offset `at` after an edit.
void fix_crc(Bytes& png, std::size_t at) {
  const std::uint32_t len = be32(png, at);
  const std::uint32_t c = crc32(&png[at + 4], len + 4);
  for (int i = 0; i < 4; ++i) png[at + 8 + len + i] = (c >> (24 - 8 * i)) & 0xff;
}

TEST(DecodeTest, PngAndBmpDecodeExactly) {
  const Image rgb = raw("decode_astro.rgb", 3);
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("in_astronaut_crop.png")), rgb));
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("decode_astro.bmp")), rgb));
  const Bytes png = read_bytes(fixture("in_astronaut_crop.png"));
  EXPECT_TRUE(same_pixels(tessera::image::decode_image(png), rgb));
  // 16-colour palette PNG: PIL's convert("RGB") of it.
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("decode_astro_p.png")),
                          tessera::image::read_image(fixture("decode_astro_p_rgb.png"))));
}

// channels = 1, 3, 4 follow PIL's Image.convert("L" | "RGB" | "RGBA").
TEST(DecodeTest, ChannelConversionsFollowPil) {
  const Image rgb = raw("decode_astro.rgb", 3), grey = raw("decode_astro.l", 1);
  // RGB -> L: ITU-R 601 luma in PIL's 16-bit fixed point.
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("in_astronaut_crop.png"), 1), grey));
  // 8-bit grey BMP -> L and -> RGB (replicated).
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("decode_astro_grey.bmp"), 1), grey));
  const Image grey3 = tessera::image::read_image(fixture("decode_astro_grey.bmp"), 3);
  ASSERT_EQ(grey3.shape(), (tessera::Shape<3>{60, 80, 3}));
  for (Index i = 0; i < 60 * 80; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(grey3.data()[3 * i + c], grey.data()[i]);
  // RGBA: alpha kept with 4 channels, dropped with 3; grey from RGBA ignores alpha.
  const Image rgba = tessera::image::read_image(fixture("decode_astro_rgba.png"), 4);
  ASSERT_EQ(rgba.shape(), (tessera::Shape<3>{60, 80, 4}));
  for (Index y = 0; y < 60; ++y)
    for (Index x = 0; x < 80; ++x) {
      for (int c = 0; c < 3; ++c) ASSERT_EQ(rgba(y, x, c), rgb(y, x, c));
      ASSERT_EQ(rgba(y, x, 3), 3 * x);
    }
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("decode_astro_rgba.png"), 3), rgb));
  EXPECT_TRUE(same_pixels(tessera::image::read_image(fixture("decode_astro_rgba.png"), 1), grey));
  // RGB -> RGBA: opaque.
  const Image opaque = tessera::image::read_image(fixture("in_astronaut_crop.png"), 4);
  for (Index i = 0; i < 60 * 80; ++i) ASSERT_EQ(opaque.data()[4 * i + 3], 255);
}

// stb_image's JPEG decoder is not libjpeg's: measure how far it is from PIL's decoding of the
// same file (PIL's libjpeg encoder, quality 90, 4:2:0 chroma; and a grey quality-95 JPEG).
TEST(DecodeTest, JpegIsCloseToPil) {
  struct Case {
    const char *jpg, *pil;
    int channels, max_allowed;
  };
  // Measured on these files (stb 2.27 vs Debian Pillow 9.4 / libjpeg-turbo): colour max 3 grey
  // levels (883 of 14400 values differ, mean 0.08), grey max 1 (17 of 3072); the bounds are
  // those measurements, so any change in either decoder shows here.
  for (const Case& c : {Case{"decode_astro.jpg", "decode_astro_jpg_pil.png", 3, 3},
                        Case{"decode_grey.jpg", "decode_grey_jpg_pil.png", 1, 1}}) {
    const Image ours = tessera::image::read_image(fixture(c.jpg), c.channels);
    const Image pil = tessera::image::read_image(fixture(c.pil), c.channels);
    ASSERT_EQ(ours.shape(), pil.shape());
    int worst = 0;
    Index differing = 0;
    double sum = 0;
    for (Index i = 0; i < ours.size(); ++i) {
      const int e = std::abs(int(ours.data()[i]) - int(pil.data()[i]));
      worst = std::max(worst, e);
      differing += e != 0;
      sum += e;
    }
    std::cout << "[ JPEG stb vs PIL ] " << c.jpg << ": max " << worst << " grey levels, "
              << differing << " of " << ours.size() << " values differ, mean |diff| "
              << sum / static_cast<double>(ours.size()) << "\n";
    EXPECT_LE(worst, c.max_allowed) << c.jpg;
  }
}

TEST(DecodeTest, SharedPhotographs) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto dir = tessera::test::shared_data_dir() / "images";
  EXPECT_EQ(tessera::image::read_image(dir / "astronaut.png").shape(),
            (tessera::Shape<3>{512, 512, 3}));
  EXPECT_EQ(tessera::image::read_image(dir / "chelsea.png").shape(),
            (tessera::Shape<3>{300, 451, 3}));
  EXPECT_EQ(tessera::image::read_image(dir / "coffee.png", 1).shape(),
            (tessera::Shape<3>{400, 600, 1}));
}

TEST(DecodeTest, FileErrors) {
  tessera::test::TempDir dir;
  const auto missing = (dir / "missing.png").string();
  TESSERA_EXPECT_THROW_MSG(tessera::image::read_image(missing), IoError,
                           "tessera::image::read_image", missing.c_str(), "does not exist");
  TESSERA_EXPECT_THROW_MSG(tessera::image::read_image(dir.path()), IoError,
                           "tessera::image::read_image", "not a regular file");
  // Errors from the data name the path.
  const auto gif = dir / "anim.gif";
  const std::string gif_name = gif.string(), bad_name = (dir / "cut.png").string();
  write_bytes(gif, {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0});
  TESSERA_EXPECT_THROW_MSG(tessera::image::read_image(gif), IoError, "tessera::image::read_image",
                           gif_name.c_str(), "not a PNG, JPEG or BMP", "GIF", "47 49 46 38 39 61");
  const auto bad = dir / "cut.png";
  Bytes png = read_bytes(fixture("in_astronaut_crop.png"));
  png.resize(png.size() / 2);
  write_bytes(bad, png);
  TESSERA_EXPECT_THROW_MSG(tessera::image::read_image(bad), IoError, "tessera::image::read_image",
                           bad_name.c_str(), "truncated");
  TESSERA_EXPECT_THROW_MSG(tessera::image::read_image(fixture("decode_astro.bmp"), 2), ValueError,
                           "tessera::image::read_image", "'channels'", "2", "1, 3 or 4");
#ifndef _WIN32
  if (::geteuid() != 0) {  // root reads any file
    const auto locked = dir / "locked.png";
    const std::string locked_name = locked.string();
    write_bytes(locked, read_bytes(fixture("in_dot.png")));
    std::filesystem::permissions(locked, std::filesystem::perms::none);
    TESSERA_EXPECT_THROW_MSG(tessera::image::read_image(locked), IoError,
                             "tessera::image::read_image", locked_name.c_str(),
                             "could not be opened");
  }
#endif
}

TEST(DecodeTest, FormatErrors) {
  const char* fn = "tessera::image::decode_image";
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{}), IoError, fn, "'bytes'",
                           "not a PNG, JPEG or BMP", "empty");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{'P', '6', '\n', '1', ' ', '1'}),
                           IoError, fn, "PNM", "50 36");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{'8', 'B', 'P', 'S', 0, 1}), IoError,
                           fn, "Photoshop");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{'#', '?', 'R', 'A', 'D'}), IoError,
                           fn, "Radiance");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{'I', 'I', 42, 0, 8, 0}), IoError, fn,
                           "TIFF");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{'R', 'I', 'F', 'F', 0, 0}), IoError,
                           fn, "RIFF");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{1, 2, 3}), IoError, fn,
                           "unrecognised", "01 02 03");
  // channels
  const Bytes png = read_bytes(fixture("in_dot.png"));
  for (int ch : {0, 2, 5, -1}) {
    const std::string value = std::to_string(ch);
    TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(png, ch), ValueError, fn, "'channels'",
                             value.c_str());
  }
}

TEST(DecodeTest, CorruptAndTruncatedData) {
  const char* fn = "tessera::image::decode_image";
  // PNG: truncated at several points (PIL: "image file is truncated"); caught by the chunk walk.
  const Bytes png = read_bytes(fixture("in_astronaut_crop.png"));
  for (std::size_t n :
       {std::size_t{8}, std::size_t{20}, std::size_t{40}, png.size() / 2, png.size() - 13}) {
    SCOPED_TRACE(n);
    TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(std::span(png.data(), n)), IoError, fn,
                             "'bytes'", "corrupt: PNG", "byte offset", "truncated");
  }
  // A flipped bit in the compressed data: the chunk's CRC (PIL: "broken PNG file").
  const std::size_t idat = find_chunk(png, "IDAT");
  const std::string at = "chunk 'IDAT' at byte offset " + std::to_string(idat);
  Bytes damaged = png;
  damaged[idat + 100] ^= 0x10;
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(damaged), IoError, fn, "'bytes'",
                           at.c_str(), "fails its CRC check");
  // A broken zlib stream with valid CRCs (a writer's bug): stb_image's inflate refuses it.
  Bytes bad_zlib = png;
  bad_zlib[idat + 8] = 0xff;  // zlib CMF byte: not deflate
  fix_crc(bad_zlib, idat);
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(bad_zlib), IoError, fn, "'bytes'",
                           "stb_image says");
  // JPEG: without its end-of-image marker, and with a broken header.
  const Bytes jpg = read_bytes(fixture("decode_astro.jpg"));
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(std::span(jpg.data(), jpg.size() * 2 / 3)),
                           IoError, fn, "'bytes'", "truncated", "ff d9");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(Bytes{0xff, 0xd8, 0xff, 0x00, 0xff, 0xd9}),
                           IoError, fn, "stb_image says");
  // BMP: pixel array shorter than the header says; header cut short.
  const Bytes bmp_file = read_bytes(fixture("decode_astro.bmp"));
  TESSERA_EXPECT_THROW_MSG(
      tessera::image::decode_image(std::span(bmp_file.data(), bmp_file.size() - 100)), IoError, fn,
      "BMP pixel array needs 14454 bytes", "14354", "truncated");
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(std::span(bmp_file.data(), 20)), IoError,
                           fn, "stb_image says");
}

TEST(DecodeTest, SizeErrors) {
  const char* fn = "tessera::image::decode_image";
  // Zero width (stb's BMP reader accepts the header): refused here.
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(bmp(0, 5, 0)), IoError, fn, "'bytes'",
                           "size 0 x 5", ">= 1");
  // 30000 x 30000 x 3 bytes does not fit stb's int sizes: refused before decoding.
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(bmp(30000, 30000, 0)), ValueError, fn,
                           "'bytes'", "30000 x 30000", "2700000000", "2^31 - 1");
  // A PNG header declaring 100000 x 100000: stb's own "too large".
  Bytes png = read_bytes(fixture("in_dot.png"));
  for (int i : {16, 20}) {  // IHDR width and height, big-endian
    png[i] = 0;
    png[i + 1] = 0x01;
    png[i + 2] = 0x86;
    png[i + 3] = 0xa0;
  }
  fix_crc(png, 8);
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(png), IoError, fn, "stb_image says",
                           "too large");
  // A PNG declaring 0 x 1: stb's "0-pixel image".
  for (int i : {16, 17, 18, 19}) png[i] = 0;
  fix_crc(png, 8);
  TESSERA_EXPECT_THROW_MSG(tessera::image::decode_image(png), IoError, fn, "stb_image says",
                           "0-pixel");
  png = read_bytes(fixture("in_dot.png"));
  // A valid tiny BMP decodes (the headers above are well formed).
  const Image one = tessera::image::decode_image(bmp(1, 1, 4));
  EXPECT_EQ(one.shape(), (tessera::Shape<3>{1, 1, 3}));
}

}  // namespace decode_test
