#include "tessera/image/colormap.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>

#include "test_util.hpp"

namespace colormap_test {

using tessera::Index;
using tessera::Tensor;
namespace image = tessera::image;
using image::Colormap;
using image::Rgb;

::testing::AssertionResult same_color(Rgb a, Rgb b) {
  if (a == b) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "(" << +a.r << ", " << +a.g << ", " << +a.b << ") vs ("
                                       << +b.r << ", " << +b.g << ", " << +b.b << ")";
}

Rgb pixel(const Tensor<std::uint8_t, 3>& img, Index y, Index x) {
  return {img(y, x, 0), img(y, x, 1), img(y, x, 2)};
}

// matplotlib's viridis at its table entries 0, 64, 200 and 255 (_viridis_data[k] * 255, rounded):
// #440154, the first, and #fde725, the last, are the colours matplotlib's docs show.
TEST(Colormap, ViridisMatchesMatplotlibsTableAtItsEntries) {
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::viridis, 0.0), {68, 1, 84}));
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::viridis, 64 / 255.0), {59, 82, 139}));
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::viridis, 200 / 255.0), {112, 207, 87}));
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::viridis, 1.0), {253, 231, 37}));
}

TEST(Colormap, ViridisInterpolatesBetweenEntries) {
  // t = 0.5 falls halfway between entries 127 (0.128729, 0.563265, 0.551229) and 128 (0.127568,
  // 0.566949, 0.550556): their mean * 255 = (32.7, 144.1, 140.4).
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::viridis, 0.5), {33, 144, 140}));
  // Lightness rises monotonically along viridis: its green channel never falls.
  int last_g = -1;
  for (int i = 0; i <= 1000; ++i) {
    const Rgb c = image::colormap_color(Colormap::viridis, i / 1000.0);
    EXPECT_GE(c.g, last_g) << "t = " << i / 1000.0;
    last_g = c.g;
  }
}

TEST(Colormap, GrayIsALinearRamp) {
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::gray, 0.0), {0, 0, 0}));
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::gray, 1.0), {255, 255, 255}));
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::gray, 0.5), {128, 128, 128}));
  EXPECT_TRUE(same_color(image::colormap_color(Colormap::gray, 0.2), {51, 51, 51}));
  EXPECT_EQ(image::colormap_name(Colormap::gray), "gray");
  EXPECT_EQ(image::colormap_name(Colormap::viridis), "viridis");
}

TEST(Colormap, OutOfRangeIsClippedAndNanIsMagenta) {
  for (Colormap m : {Colormap::viridis, Colormap::gray}) {
    EXPECT_TRUE(same_color(image::colormap_color(m, -3.0), image::colormap_color(m, 0.0)));
    EXPECT_TRUE(same_color(image::colormap_color(m, 7.0), image::colormap_color(m, 1.0)));
    EXPECT_TRUE(same_color(image::colormap_color(m, std::nan("")), image::kNanColor));
    // NaN's colour is far from every colour of the map, so it never passes for a value.
    for (int i = 0; i <= 1000; ++i) {
      const Rgb c = image::colormap_color(m, i / 1000.0);
      const int dist = std::abs(c.r - 255) + std::abs(c.g - 0) + std::abs(c.b - 255);
      EXPECT_GT(dist, 150) << "t = " << i / 1000.0;
    }
  }
  EXPECT_TRUE(same_color(image::kNanColor, {255, 0, 255}));
}

template <class T>
class ApplyColormap : public ::testing::Test {};
TYPED_TEST_SUITE(ApplyColormap, tessera::test::Scalars);

TYPED_TEST(ApplyColormap, DefaultRangeIsTheFiniteMinAndMax) {
  using T = TypeParam;
  const Tensor<T, 2> v{{0, 1, 2}, {3, 4, 5}};
  const auto img = image::apply_colormap(v);
  ASSERT_EQ(img.shape(), (tessera::Shape<3>{2, 3, 3}));
  for (Index i = 0; i < 6; ++i)
    EXPECT_TRUE(
        same_color(pixel(img, i / 3, i % 3), image::colormap_color(Colormap::viridis, i / 5.0)))
        << "value " << i;
  EXPECT_TRUE(same_color(pixel(img, 0, 0), {68, 1, 84}));
  EXPECT_TRUE(same_color(pixel(img, 1, 2), {253, 231, 37}));
}

TYPED_TEST(ApplyColormap, GivenRangeClipsAndNonFiniteValuesStandOut) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const Tensor<T, 2> v{{-1, 0, T(0.5)}, {2, nan, inf}, {-inf, 1, T(0.25)}};
  const auto img = image::apply_colormap(v, {.colormap = Colormap::gray, .vmin = 0.0, .vmax = 1.0});
  EXPECT_TRUE(same_color(pixel(img, 0, 0), {0, 0, 0}));        // below vmin: clipped
  EXPECT_TRUE(same_color(pixel(img, 0, 2), {128, 128, 128}));  // 127.5 rounds up
  EXPECT_TRUE(same_color(pixel(img, 1, 0), {255, 255, 255}));  // above vmax: clipped
  EXPECT_TRUE(same_color(pixel(img, 1, 1), image::kNanColor));
  EXPECT_TRUE(same_color(pixel(img, 1, 2), {255, 255, 255}));  // +inf draws as vmax
  EXPECT_TRUE(same_color(pixel(img, 2, 0), {0, 0, 0}));        // -inf draws as vmin
  EXPECT_TRUE(same_color(pixel(img, 2, 2), {64, 64, 64}));     // 63.75
  // Without a range, NaN and the infinities take no part in finding it: [-1, 2] here.
  const auto auto_range = image::apply_colormap(v, {.colormap = Colormap::gray});
  EXPECT_TRUE(same_color(pixel(auto_range, 0, 0), {0, 0, 0}));
  EXPECT_TRUE(same_color(pixel(auto_range, 0, 1), {85, 85, 85}));
  EXPECT_TRUE(same_color(pixel(auto_range, 1, 0), {255, 255, 255}));
  EXPECT_TRUE(same_color(pixel(auto_range, 1, 1), image::kNanColor));
}

TYPED_TEST(ApplyColormap, OneGivenBoundAndTheOtherFromTheData) {
  using T = TypeParam;
  const Tensor<T, 2> v{{0, 1, 2, 4}};
  const auto lo = image::apply_colormap(v, {.colormap = Colormap::gray, .vmin = 2.0});  // [2, 4]
  EXPECT_TRUE(same_color(pixel(lo, 0, 1), {0, 0, 0}));
  EXPECT_TRUE(same_color(pixel(lo, 0, 3), {255, 255, 255}));
  const auto hi = image::apply_colormap(v, {.colormap = Colormap::gray, .vmax = 8.0});  // [0, 8]
  EXPECT_TRUE(same_color(pixel(hi, 0, 3), {128, 128, 128}));
  // A given vmin above all the data: vmax follows it, and every value draws as the bottom.
  const auto above = image::apply_colormap(v, {.colormap = Colormap::gray, .vmin = 10.0});
  EXPECT_TRUE(same_color(pixel(above, 0, 3), {0, 0, 0}));
}

TYPED_TEST(ApplyColormap, ConstantAllNanAndEmptyInputs) {
  using T = TypeParam;
  // vmin == vmax: every value maps to the bottom colour, as matplotlib's Normalize does.
  Tensor<T, 2> constant(3, 4);
  constant.setConstant(T(0.7));
  const auto c = image::apply_colormap(constant);
  for (Index y = 0; y < 3; ++y)
    for (Index x = 0; x < 4; ++x) EXPECT_TRUE(same_color(pixel(c, y, x), {68, 1, 84}));
  Tensor<T, 2> nans(2, 2);
  nans.setConstant(std::numeric_limits<T>::quiet_NaN());
  const auto n = image::apply_colormap(nans);
  for (Index i = 0; i < 4; ++i) EXPECT_TRUE(same_color(pixel(n, i / 2, i % 2), image::kNanColor));
  const Tensor<T, 2> empty(0, 5);
  EXPECT_EQ(image::apply_colormap(empty).shape(), (tessera::Shape<3>{0, 5, 3}));
}

TYPED_TEST(ApplyColormap, HugeRangesDoNotOverflow) {
  using T = TypeParam;
  const Tensor<T, 2> v{{0}};
  const auto img =
      image::apply_colormap(v, {.colormap = Colormap::gray, .vmin = -1e308, .vmax = 1e308});
  EXPECT_TRUE(same_color(pixel(img, 0, 0), {128, 128, 128}));
}

TYPED_TEST(ApplyColormap, BadRangesAreRejected) {
  using T = TypeParam;
  const Tensor<T, 2> v{{0, 1}};
  TESSERA_EXPECT_THROW_MSG(image::apply_colormap(v, {.vmin = std::nan("")}), tessera::ValueError,
                           "tessera::image::apply_colormap", "'vmin'", "nan", "finite");
  TESSERA_EXPECT_THROW_MSG(
      image::apply_colormap(v, {.vmax = std::numeric_limits<double>::infinity()}),
      tessera::ValueError, "tessera::image::apply_colormap", "'vmax'", "inf", "finite");
  TESSERA_EXPECT_THROW_MSG(image::apply_colormap(v, {.vmin = 2.0, .vmax = 1.0}),
                           tessera::ValueError, "tessera::image::apply_colormap", "'vmin'",
                           "'vmax'", "2 and 1", "vmin <= vmax");
}

}  // namespace colormap_test
