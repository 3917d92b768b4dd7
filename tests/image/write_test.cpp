#include "tessera/image/write.hpp"

#include <gtest/gtest.h>

#include <stb_image.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace write_test {

using tessera::Index;
using tessera::Tensor;
using tessera::TensorMap;
namespace image = tessera::image;

struct StbFree {
  void operator()(unsigned char* p) const noexcept { stbi_image_free(p); }
};

// A decoded file: its pixels as stb_image returns them (channels as stored) and its size.
struct Decoded {
  std::unique_ptr<unsigned char, StbFree> pixels;
  int width = 0, height = 0, channels = 0;
};

Decoded load_file(const std::filesystem::path& path) {
  Decoded d;
  d.pixels.reset(stbi_load(path.c_str(), &d.width, &d.height, &d.channels, 0));
  return d;
}

Decoded load_memory(const std::vector<std::uint8_t>& bytes) {
  Decoded d;
  d.pixels.reset(stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &d.width,
                                       &d.height, &d.channels, 0));
  return d;
}

Tensor<std::uint8_t, 3> random_image(Index h, Index w, Index c, unsigned seed) {
  Tensor<std::uint8_t, 3> img(h, w, c);
  std::uint32_t s = seed;
  for (Index i = 0; i < img.size(); ++i) {
    s = s * 1664525u + 1013904223u;  // Numerical Recipes' LCG: any bytes will do
    img.data()[i] = static_cast<std::uint8_t>(s >> 24);
  }
  return img;
}

void expect_same_pixels(const Decoded& d, const Tensor<std::uint8_t, 3>& img) {
  ASSERT_NE(d.pixels, nullptr) << stbi_failure_reason();
  ASSERT_EQ(d.height, img.dim(0));
  ASSERT_EQ(d.width, img.dim(1));
  ASSERT_EQ(d.channels, img.dim(2));
  for (Index i = 0; i < img.size(); ++i)
    ASSERT_EQ(d.pixels.get()[i], img.data()[i]) << "byte " << i;
}

TEST(WritePng, FileRoundTripsEveryChannelCount) {
  tessera::test::TempDir dir;
  for (Index c : {1, 3, 4}) {
    SCOPED_TRACE(c);
    const auto img = random_image(7, 13, c, static_cast<unsigned>(c));
    const auto path = dir / ("img" + std::to_string(c) + ".png");
    image::write_png(path, img);
    expect_same_pixels(load_file(path), img);
  }
}

TEST(WritePng, EncodeRoundTripsInMemoryAndMatchesTheFile) {
  tessera::test::TempDir dir;
  const auto img = random_image(5, 9, 3, 42);
  const auto bytes = image::encode_png(img);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes[0], 0x89);
  EXPECT_EQ(bytes[1], 'P');
  expect_same_pixels(load_memory(bytes), img);
  // a view and a temporary are accepted as well
  const TensorMap<const std::uint8_t, 3> view(img.data(), img.shape());
  EXPECT_EQ(image::encode_png(view), bytes);
  EXPECT_EQ(image::encode_png(Tensor<std::uint8_t, 3>(img)), bytes);
  image::write_png(dir / "a.png", view);
  EXPECT_EQ(std::filesystem::file_size(dir / "a.png"), bytes.size());
}

TEST(WritePng, OverwritesAnExistingFile) {
  tessera::test::TempDir dir;
  image::write_png(dir / "x.png", random_image(40, 40, 3, 1));
  const auto small = random_image(2, 3, 1, 2);
  image::write_png(dir / "x.png", small);
  expect_same_pixels(load_file(dir / "x.png"), small);
}

TEST(WriteJpg, FileDecodesToTheSizeAndNearlyTheColour) {
  tessera::test::TempDir dir;
  // A flat colour survives JPEG's quantisation almost exactly (only DC terms).
  for (Index c : {1, 3, 4}) {
    SCOPED_TRACE(c);
    Tensor<std::uint8_t, 3> img(24, 40, c);
    for (Index y = 0; y < 24; ++y)
      for (Index x = 0; x < 40; ++x)
        for (Index k = 0; k < c; ++k) img(y, x, k) = static_cast<std::uint8_t>(60 + 50 * k);
    const auto path = dir / ("img" + std::to_string(c) + ".jpg");
    image::write_jpg(path, img, 95);
    const auto d = load_file(path);
    ASSERT_NE(d.pixels, nullptr) << stbi_failure_reason();
    EXPECT_EQ(d.height, 24);
    EXPECT_EQ(d.width, 40);
    // stb_image_write always stores three components (YCbCr): grey comes back as R = G = B,
    // and JPEG has no alpha.
    EXPECT_EQ(d.channels, 3);
    for (Index i = 0; i < 24 * 40; ++i)
      for (Index k = 0; k < 3; ++k)
        ASSERT_NEAR(d.pixels.get()[i * 3 + k], c == 1 ? 60 : 60 + 50 * k, 3) << "pixel " << i;
  }
}

TEST(WriteJpg, LowerQualityGivesFewerBytes) {
  const auto img = random_image(64, 64, 3, 7);
  const auto q95 = image::encode_jpg(img, 95), q20 = image::encode_jpg(img, 20);
  EXPECT_LT(q20.size(), q95.size());
  const auto d = load_memory(image::encode_jpg(img));
  ASSERT_NE(d.pixels, nullptr);
  EXPECT_EQ(d.width, 64);
  EXPECT_EQ(d.height, 64);
  EXPECT_EQ(d.channels, 3);
}

TEST(WriteErrors, BadChannelCount) {
  tessera::test::TempDir dir;
  for (Index c : {2, 5}) {
    const Tensor<std::uint8_t, 3> img(4, 4, c);
    const std::string shape = "[4, 4, " + std::to_string(c) + "]";
    TESSERA_EXPECT_THROW_MSG(image::write_png(dir / "a.png", img), tessera::ShapeError,
                             "tessera::image::write_png", "'image'", shape.c_str(),
                             "1, 3 or 4 channels");
    TESSERA_EXPECT_THROW_MSG(image::write_jpg(dir / "a.jpg", img), tessera::ShapeError,
                             "tessera::image::write_jpg", "'image'", shape.c_str());
    TESSERA_EXPECT_THROW_MSG(image::encode_png(img), tessera::ShapeError,
                             "tessera::image::encode_png", shape.c_str());
    TESSERA_EXPECT_THROW_MSG(image::encode_jpg(img), tessera::ShapeError,
                             "tessera::image::encode_jpg", shape.c_str());
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "a.png"));  // nothing written on a refusal
}

TEST(WriteErrors, ZeroSize) {
  tessera::test::TempDir dir;
  const Tensor<std::uint8_t, 3> no_rows(0, 4, 3), no_cols(4, 0, 3);
  TESSERA_EXPECT_THROW_MSG(image::write_png(dir / "a.png", no_rows), tessera::ShapeError,
                           "tessera::image::write_png", "[0, 4, 3]", "at least 1");
  TESSERA_EXPECT_THROW_MSG(image::write_jpg(dir / "a.jpg", no_cols), tessera::ShapeError,
                           "tessera::image::write_jpg", "[4, 0, 3]", "at least 1");
  TESSERA_EXPECT_THROW_MSG(image::encode_png(no_cols), tessera::ShapeError,
                           "tessera::image::encode_png", "[4, 0, 3]");
  TESSERA_EXPECT_THROW_MSG(image::encode_jpg(no_rows), tessera::ShapeError,
                           "tessera::image::encode_jpg", "[0, 4, 3]");
}

TEST(WriteErrors, DimensionsBeyondTheEncoders) {
  // Views with a large shape over a tiny buffer: the size check comes before any read.
  std::uint8_t byte = 0;
  const TensorMap<const std::uint8_t, 3> wide_png(&byte, {1, Index{1} << 30, 1});
  TESSERA_EXPECT_THROW_MSG(image::encode_png(wide_png), tessera::ShapeError,
                           "tessera::image::encode_png", "[1, 1073741824, 1]", "1073741824");
  const TensorMap<const std::uint8_t, 3> tall_png(&byte, {Index{1} << 29, 1, 3});
  TESSERA_EXPECT_THROW_MSG(image::encode_png(tall_png), tessera::ShapeError,
                           "tessera::image::encode_png", "[536870912, 1, 3]");
  const TensorMap<const std::uint8_t, 3> wide_jpg(&byte, {1, 65536, 3});
  TESSERA_EXPECT_THROW_MSG(image::encode_jpg(wide_jpg), tessera::ShapeError,
                           "tessera::image::encode_jpg", "[1, 65536, 3]", "at most 65535");
  const TensorMap<const std::uint8_t, 3> tall_jpg(&byte, {70000, 1, 1});
  tessera::test::TempDir dir;
  TESSERA_EXPECT_THROW_MSG(image::write_jpg(dir / "a.jpg", tall_jpg), tessera::ShapeError,
                           "tessera::image::write_jpg", "[70000, 1, 1]", "65535");
}

TEST(WriteErrors, JpegQualityOutOfRange) {
  const auto img = random_image(8, 8, 3, 3);
  for (int q : {0, -5, 101}) {
    const std::string is = "is " + std::to_string(q);
    TESSERA_EXPECT_THROW_MSG(image::encode_jpg(img, q), tessera::ValueError,
                             "tessera::image::encode_jpg", "'quality'", is.c_str(), "[1, 100]");
  }
  tessera::test::TempDir dir;
  TESSERA_EXPECT_THROW_MSG(image::write_jpg(dir / "a.jpg", img, 0), tessera::ValueError,
                           "tessera::image::write_jpg", "'quality'");
  EXPECT_NO_THROW(image::encode_jpg(img, 1));
  EXPECT_NO_THROW(image::encode_jpg(img, 100));
}

TEST(WriteErrors, UnwritablePath) {
  tessera::test::TempDir dir;
  const auto img = random_image(4, 4, 3, 5);
  const auto missing = dir / "no_such_dir" / "a.png";
  TESSERA_EXPECT_THROW_MSG(image::write_png(missing, img), tessera::IoError,
                           "tessera::image::write_png", missing.c_str(), "for writing");
  // a directory is not a file
  TESSERA_EXPECT_THROW_MSG(image::write_jpg(dir.path(), img), tessera::IoError,
                           "tessera::image::write_jpg", dir.path().c_str());
  TESSERA_EXPECT_THROW_MSG(image::write_png("", img), tessera::IoError, "tessera::image::write_png",
                           "'path' is empty");
}

}  // namespace write_test
