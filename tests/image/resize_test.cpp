// tessera::image::resize and resize_shorter_side against Pillow 9.4's Image.resize and
// torchvision 0.14's Resize (fixtures: tests/fixtures/image/make_image_fixtures.py).
#include "tessera/image/resize.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tessera/image/decode.hpp"
#include "test_util.hpp"

namespace resize_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::ValueError;
using tessera::image::Image;
using tessera::image::Interpolation;

std::string fixture(const std::string& name) {
  return std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/image/" + name;
}

std::vector<std::vector<std::string>> read_cases(const std::string& name) {
  std::ifstream in(fixture(name));
  EXPECT_TRUE(in) << "cannot open " << fixture(name);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    std::vector<std::string> row;
    for (std::string f; ls >> f;) row.push_back(f);
    if (!row.empty()) rows.push_back(row);
  }
  return rows;
}

Interpolation filter_of(const std::string& s) {
  return s == "bicubic" ? Interpolation::bicubic : Interpolation::bilinear;
}

// zlib's CRC-32 (polynomial 0xedb88320), as Python's zlib.crc32.
std::uint32_t crc32(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

struct Diff {
  int max = 0;
  Index count = 0;
};
Diff compare(const Image& a, const Image& b) {
  Diff d;
  for (Index i = 0; i < a.size(); ++i) {
    const int e = std::abs(int(a.data()[i]) - int(b.data()[i]));
    d.max = std::max(d.max, e);
    d.count += e != 0;
  }
  return d;
}

// Every case of resize_cases.txt: PIL's uint8 result, bit for bit.
TEST(ResizeTest, MatchesPillowOnFixtures) {
  const auto cases = read_cases("resize_cases.txt");
  ASSERT_EQ(cases.size(), 36u);
  int worst = 0;
  Index differing = 0, total = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c[0]);
    const Image in = tessera::image::read_image(
        fixture(c[1]), /*channels=*/c[0].rfind("grey", 0) == 0 || c[0].rfind("checker", 0) == 0 ||
                               c[0].rfind("dot", 0) == 0
                           ? 1
                           : 3);
    const Image expected =
        tessera::image::read_image(fixture("resize_" + c[0] + ".png"), static_cast<int>(in.dim(2)));
    const Index h = std::stol(c[2]), w = std::stol(c[3]);
    const Image out = tessera::image::resize(in, h, w, filter_of(c[4]));
    ASSERT_EQ(out.shape(), expected.shape());
    const Diff d = compare(out, expected);
    EXPECT_EQ(d.max, 0) << d.count << " of " << out.size() << " values differ";
    worst = std::max(worst, d.max);
    differing += d.count;
    total += out.size();
  }
  std::cout << "[ resize vs Pillow 9.4 ] " << cases.size() << " cases, " << total
            << " values: max difference " << worst << " grey levels, " << differing
            << " values differ\n";
  RecordProperty("max_grey_level_difference", worst);
  RecordProperty("differing_values", static_cast<int>(differing));
}

// torchvision 0.14's Resize(size, max_size) output sizes.
TEST(ResizeTest, ShorterSideSizeMatchesTorchvision) {
  for (const auto& c : read_cases("shorter_side_cases.txt")) {
    const Index h = std::stol(c[0]), w = std::stol(c[1]), size = std::stol(c[2]),
                max_size = std::stol(c[3]);
    const auto hw = tessera::image::shorter_side_size(
        h, w, size, max_size ? std::optional<Index>(max_size) : std::nullopt);
    EXPECT_EQ(hw[0], std::stol(c[4])) << h << "x" << w << " size " << size;
    EXPECT_EQ(hw[1], std::stol(c[5])) << h << "x" << w << " size " << size;
  }
}

TEST(ResizeTest, ResizeShorterSideComposes) {
  const Image in = tessera::image::read_image(fixture("in_astronaut_crop.png"));
  const Image a = tessera::image::resize_shorter_side(in, 23);  // 60 x 80 -> 23 x 30
  ASSERT_EQ(a.shape(), (tessera::Shape<3>{23, 30, 3}));
  EXPECT_TRUE(tessera::test::same_bits(a, tessera::image::resize(in, 23, 30)));
  const Image b = tessera::image::resize_shorter_side(in, 30, Interpolation::bilinear, 35);
  ASSERT_EQ(b.shape(), (tessera::Shape<3>{26, 35, 3}));  // int(35 * 30 / 40) = 26
}

// The weights of every output pixel sum to 1 (after rounding, within the fixed point), so a
// constant image stays constant whatever the sizes and filter.
TEST(ResizeTest, ConstantImageStaysConstant) {
  for (int v : {0, 1, 128, 254, 255}) {
    Image in(13, 17, 2);
    in.setConstant(v);
    for (auto f : {Interpolation::bicubic, Interpolation::bilinear})
      for (auto hw : {std::array<Index, 2>{1, 1}, {5, 200}, {156, 3}, {13, 18}}) {
        const Image out = tessera::image::resize(in, hw[0], hw[1], f);
        for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], v);
      }
  }
}

// A view and an owning tensor give the same result; so does a single thread.
TEST(ResizeTest, ViewAndThreadsGiveSameResult) {
  const Image in = tessera::image::read_image(fixture("in_coffee_crop.png"));
  const tessera::TensorMap<const std::uint8_t, 3> view = tessera::cview(in);
  const Image a = tessera::image::resize(view, 31, 9);
  const int threads = tessera::num_threads();
  tessera::set_num_threads(1);
  const Image b = tessera::image::resize(in, 31, 9);
  tessera::set_num_threads(threads);
  EXPECT_TRUE(tessera::test::same_bits(a, b));
}

// Full-size shared photographs (skip without ../shared/data): torchvision Resize(size) on the
// PIL image, compared through the CRC-32 of the uint8 result.
TEST(ResizeTest, SharedPhotographsMatchTorchvision) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto dir = tessera::test::shared_data_dir() / "images";
  for (const auto& c : read_cases("shared_cases.txt")) {
    if (c[0] == "clip224") continue;  // the float pipeline: transforms_test
    SCOPED_TRACE(c[0]);
    const Image in = tessera::image::read_image(dir / c[1]);
    const Image out = tessera::image::resize_shorter_side(in, std::stol(c[2]), filter_of(c[3]));
    ASSERT_EQ(out.dim(0), std::stol(c[4]));
    ASSERT_EQ(out.dim(1), std::stol(c[5]));
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", crc32(out.data(), static_cast<std::size_t>(out.size())));
    EXPECT_EQ(std::string(hex), c[6]) << "the uint8 result differs from torchvision + PIL";
  }
}

TEST(ResizeTest, Errors) {
  const Image img(4, 5, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize(img, 0, 3), ValueError, "tessera::image::resize",
                           "'height'", "0", ">= 1");
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize(img, 3, -2), ValueError, "tessera::image::resize",
                           "'width'", "-2");
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize(Image(0, 5, 3), 3, 3), ShapeError,
                           "tessera::image::resize", "'img'", "[0, 5, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize(Image(4, 5, 0), 3, 3), ShapeError,
                           "tessera::image::resize", "[4, 5, 0]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize_shorter_side(img, 0), ValueError,
                           "tessera::image::resize_shorter_side", "'size'", "0");
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize_shorter_side(img, 4, Interpolation::bicubic, 4),
                           ValueError, "tessera::image::resize_shorter_side", "'max_size'", "4");
  TESSERA_EXPECT_THROW_MSG(tessera::image::resize_shorter_side(Image(3, 0, 3), 2), ShapeError,
                           "tessera::image::resize_shorter_side", "'img'", "[3, 0, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::shorter_side_size(0, 5, 3), ValueError,
                           "tessera::image::shorter_side_size", "'in_height'", "0");
  TESSERA_EXPECT_THROW_MSG(tessera::image::shorter_side_size(5, 5, -1), ValueError,
                           "tessera::image::shorter_side_size", "'size'", "-1");
  TESSERA_EXPECT_THROW_MSG(tessera::image::shorter_side_size(5, 5, 3, 2), ValueError,
                           "tessera::image::shorter_side_size", "'max_size'", "2", "3");
}

}  // namespace resize_test
