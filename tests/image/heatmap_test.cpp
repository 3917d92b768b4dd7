#include "tessera/image/heatmap.hpp"

#include <gtest/gtest.h>

#include <stb_image.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tessera/image/colormap.hpp"
#include "tessera/image/write.hpp"
#include "test_util.hpp"

namespace heatmap_test {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
namespace image = tessera::image;
using image::Colormap;
using image::Rgb;
using Image = Tensor<std::uint8_t, 3>;

Rgb pixel(const Image& img, Index y, Index x) { return {img(y, x, 0), img(y, x, 1), img(y, x, 2)}; }

bool is_ink(const Image& img, Index y, Index x) { return pixel(img, y, x) == image::impl::kInk; }

// Ink pixels (the text colour) in [x0, x1) x [y0, y1).
Index ink_in(const Image& img, Index x0, Index y0, Index x1, Index y1) {
  Index n = 0;
  for (Index y = std::max<Index>(y0, 0); y < std::min(y1, img.dim(0)); ++y)
    for (Index x = std::max<Index>(x0, 0); x < std::min(x1, img.dim(1)); ++x)
      n += is_ink(img, y, x);
  return n;
}

Index count_color(const Image& img, Rgb c) {
  Index n = 0;
  for (Index y = 0; y < img.dim(0); ++y)
    for (Index x = 0; x < img.dim(1); ++x) n += pixel(img, y, x) == c;
  return n;
}

// The first pixel, in row-major order, of colour c ({-1, -1} if none): {x, y}.
std::pair<Index, Index> find_color(const Image& img, Rgb c) {
  for (Index y = 0; y < img.dim(0); ++y)
    for (Index x = 0; x < img.dim(1); ++x)
      if (pixel(img, y, x) == c) return {x, y};
  return {-1, -1};
}

Image random_photo(Index h, Index w, unsigned seed) {
  Image img(h, w, 3);
  std::uint32_t s = seed;
  for (Index i = 0; i < img.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    img.data()[i] = static_cast<std::uint8_t>(s >> 24);
  }
  return img;
}

struct StbFree {
  void operator()(unsigned char* p) const noexcept { stbi_image_free(p); }
};

// Writes `img` as a PNG in `dir`, decodes it with stb_image and checks size, channels and bytes.
void expect_png_round_trip(const tessera::test::TempDir& dir, const Image& img, const char* name) {
  const auto path = dir / name;
  image::write_png(path, img);
  int w = 0, h = 0, c = 0;
  std::unique_ptr<unsigned char, StbFree> px(stbi_load(path.c_str(), &w, &h, &c, 0));
  ASSERT_NE(px, nullptr) << stbi_failure_reason();
  EXPECT_EQ(h, img.dim(0));
  EXPECT_EQ(w, img.dim(1));
  EXPECT_EQ(c, 3);
  for (Index i = 0; i < img.size(); ++i) ASSERT_EQ(px.get()[i], img.data()[i]) << "byte " << i;
}

template <class T>
class Overlay : public ::testing::Test {};
TYPED_TEST_SUITE(Overlay, tessera::test::Scalars);

// F.interpolate(torch.tensor([[0., 1, 2], [3, 4, 5]], dtype=torch.float64)[None, None],
//               size=(4, 5), mode="bilinear", align_corners=False)[0, 0]   (PyTorch 1.13)
constexpr double kTorchUpsampled[4][5] = {{0.0, 0.4, 1.0, 1.6, 2.0},
                                          {0.75, 1.15, 1.75, 2.35, 2.75},
                                          {2.25, 2.65, 3.25, 3.85, 4.25},
                                          {3.0, 3.4, 4.0, 4.6, 5.0}};

TYPED_TEST(Overlay, UpsamplingMatchesTorchBilinearAlignCornersFalse) {
  using T = TypeParam;
  const Tensor<T, 2> grid{{0, 1, 2}, {3, 4, 5}};
  const auto up = image::impl::upsample_bilinear(cview(grid), 4, 5);
  for (Index y = 0; y < 4; ++y)
    for (Index x = 0; x < 5; ++x) EXPECT_NEAR(up(y, x), kTorchUpsampled[y][x], 1e-12);
  // the same size is the identity, and a 1 x 1 grid is constant
  const auto same = image::impl::upsample_bilinear(cview(grid), 2, 3);
  for (Index i = 0; i < 6; ++i) EXPECT_EQ(same.data()[i], static_cast<double>(grid.data()[i]));
  const Tensor<T, 2> one{{T(0.25)}};
  const auto flat = image::impl::upsample_bilinear(cview(one), 3, 2);
  for (Index i = 0; i < 6; ++i) EXPECT_EQ(flat.data()[i], 0.25);
}

TYPED_TEST(Overlay, EveryPixelIsTheBlendOfPhotoAndColour) {
  using T = TypeParam;
  const Tensor<T, 2> grid{{0, 1, 2}, {3, 4, 5}};
  const auto photo = random_photo(4, 5, 11);
  const double alpha = 0.4;
  const auto out = image::overlay(photo, grid, {.alpha = alpha});
  ASSERT_EQ(out.shape(), (Shape<3>{4, 5, 3}));
  for (Index y = 0; y < 4; ++y)
    for (Index x = 0; x < 5; ++x) {
      // default range: the grid's [0, 5]
      const Rgb c = image::colormap_color(Colormap::viridis, kTorchUpsampled[y][x] / 5.0);
      const double rgb[3] = {double(c.r), double(c.g), double(c.b)};
      for (Index k = 0; k < 3; ++k) {
        const double want = (1 - alpha) * photo(y, x, k) + alpha * rgb[k];
        EXPECT_NEAR(out(y, x, k), want, 1.0) << y << ", " << x << ", " << k;
      }
    }
  // The corners sample the corner cells exactly: the map's two ends.
  for (Index k = 0; k < 3; ++k) {
    const std::uint8_t lo[3] = {68, 1, 84}, hi[3] = {253, 231, 37};
    EXPECT_NEAR(out(0, 0, k), 0.6 * photo(0, 0, k) + 0.4 * lo[k], 1.0);
    EXPECT_NEAR(out(3, 4, k), 0.6 * photo(3, 4, k) + 0.4 * hi[k], 1.0);
  }
}

TYPED_TEST(Overlay, AlphaEndsAndAGivenRange) {
  using T = TypeParam;
  const Tensor<T, 2> grid{{0, T(0.5)}, {T(0.5), 1}};
  const auto photo = random_photo(6, 6, 3);
  const auto none = image::overlay(photo, grid, {.alpha = 0.0});
  EXPECT_TRUE(tessera::test::same_bits(none, photo));
  const auto all = image::overlay(photo, grid, {.alpha = 1.0, .colormap = Colormap::gray});
  // A 2 x 2 grid on 6 x 6: pixel (0, 0) samples cell (0, 0) alone, value 0: black.
  EXPECT_EQ(pixel(all, 0, 0), (Rgb{0, 0, 0}));
  EXPECT_EQ(pixel(all, 5, 5), (Rgb{255, 255, 255}));
  // vmax = 2: the top cell is only halfway up the map.
  const auto ranged =
      image::overlay(photo, grid, {.alpha = 1.0, .colormap = Colormap::gray, .vmin = 0, .vmax = 2});
  EXPECT_EQ(pixel(ranged, 5, 5), (Rgb{128, 128, 128}));
}

TYPED_TEST(Overlay, NanCellDrawsInTheNanColour) {
  using T = TypeParam;
  const Tensor<T, 2> grid{{std::numeric_limits<T>::quiet_NaN(), 1}, {2, 3}};
  Image photo(8, 8, 3);
  photo.setConstant(100);
  const auto out = image::overlay(photo, grid, {.alpha = 0.5});
  // pixel (0, 0) samples only the NaN cell: (100 + 255) / 2, (100 + 0) / 2, (100 + 255) / 2
  EXPECT_NEAR(out(0, 0, 0), 177.5, 1.0);
  EXPECT_NEAR(out(0, 0, 1), 50.0, 1.0);
  EXPECT_NEAR(out(0, 0, 2), 177.5, 1.0);
  // the far corner samples cell (1, 1) alone, the top of the finite range [1, 3]
  EXPECT_NEAR(out(7, 7, 0), (100 + 253) / 2.0, 1.0);
  EXPECT_NEAR(out(7, 7, 1), (100 + 231) / 2.0, 1.0);
  EXPECT_NEAR(out(7, 7, 2), (100 + 37) / 2.0, 1.0);
}

TYPED_TEST(Overlay, WrittenAndDecoded) {
  using T = TypeParam;
  Tensor<T, 2> grid(7, 7);
  grid.setRandom(5, 0.0, 1.0);
  const auto out = image::overlay(random_photo(224, 160, 9), grid);
  tessera::test::TempDir dir;
  expect_png_round_trip(dir, out, "overlay.png");
}

TYPED_TEST(Overlay, Errors) {
  using T = TypeParam;
  const Tensor<T, 2> grid{{0, 1}, {2, 3}};
  const Image grey(4, 5, 1), rgba(4, 5, 4), empty(0, 5, 3);
  TESSERA_EXPECT_THROW_MSG(image::overlay(grey, grid), tessera::ShapeError,
                           "tessera::image::overlay", "'photo'", "[4, 5, 1]", "[height, width, 3]");
  TESSERA_EXPECT_THROW_MSG(image::overlay(rgba, grid), tessera::ShapeError,
                           "tessera::image::overlay", "'photo'", "[4, 5, 4]");
  TESSERA_EXPECT_THROW_MSG(image::overlay(empty, grid), tessera::ShapeError,
                           "tessera::image::overlay", "'photo'", "[0, 5, 3]");
  const auto photo = random_photo(4, 5, 1);
  const Tensor<T, 2> no_grid(0, 3);
  TESSERA_EXPECT_THROW_MSG(image::overlay(photo, no_grid), tessera::ShapeError,
                           "tessera::image::overlay", "'attention'", "[0, 3]",
                           "grid_h, grid_w >= 1");
  for (double a : {-0.1, 1.5, std::nan("")})
    TESSERA_EXPECT_THROW_MSG(image::overlay(photo, grid, {.alpha = a}), tessera::ValueError,
                             "tessera::image::overlay", "'options.alpha'", "[0, 1]");
  TESSERA_EXPECT_THROW_MSG(image::overlay(photo, grid, {.vmin = 3.0, .vmax = 1.0}),
                           tessera::ValueError, "tessera::image::overlay", "vmin <= vmax");
  TESSERA_EXPECT_THROW_MSG(image::overlay(photo, grid, {.vmax = std::nan("")}), tessera::ValueError,
                           "tessera::image::overlay", "'vmax'");
}

TEST(MakeGrid, TilesSitAtTheirPlacesWithoutTitles) {
  std::vector<Image> tiles;
  for (unsigned i = 0; i < 5; ++i) tiles.push_back(random_photo(10, 12, i + 1));
  const auto g = image::make_grid(tiles, {}, {.nrow = 3, .padding = 4});
  // 3 per row, 2 rows: width 3 * (12 + 4) + 4, height 2 * (10 + 4) + 4
  ASSERT_EQ(g.shape(), (Shape<3>{32, 52, 3}));
  for (Index i = 0; i < 5; ++i) {
    const Index x0 = 4 + (i % 3) * 16, y0 = 4 + (i / 3) * 14;
    for (Index y = 0; y < 10; ++y)
      for (Index x = 0; x < 12; ++x)
        for (Index k = 0; k < 3; ++k)
          ASSERT_EQ(g(y0 + y, x0 + x, k), tiles[std::size_t(i)](y, x, k)) << "tile " << i;
  }
  // the sixth place is empty: white
  for (Index y = 18; y < 28; ++y)
    for (Index x = 36; x < 48; ++x) ASSERT_EQ(pixel(g, y, x), (Rgb{255, 255, 255}));
  // nrow = 0: ceil(sqrt(5)) = 3 per row as well
  EXPECT_EQ(image::make_grid(tiles, {}, {.padding = 4}).shape(), g.shape());
}

TEST(MakeGrid, TitlesAreWrittenAboveTheirTiles) {
  std::vector<Image> tiles;
  for (unsigned i = 0; i < 3; ++i) tiles.push_back(random_photo(40, 60, i + 1));
  const std::vector<std::string> titles = {"red", "", "a very long title that cannot fit"};
  const auto g =
      image::make_grid(tiles, titles, {.nrow = 3, .padding = 8, .font_scale = 2, .title = "Heads"});
  const Index th = 18, label_h = th + 4, title_h = th + 8;
  ASSERT_EQ(g.shape(), (Shape<3>{8 + title_h + label_h + 40 + 8, 3 * 68 + 8, 3}));
  const Index band_y = 8 + title_h;                      // the tiles' titles: [band_y, band_y + th)
  EXPECT_GT(ink_in(g, 8, band_y, 68, band_y + th), 20);  // "red"
  EXPECT_EQ(ink_in(g, 76, band_y, 136, band_y + th), 0);    // ""
  EXPECT_GT(ink_in(g, 144, band_y, 204, band_y + th), 20);  // cut to fit
  EXPECT_EQ(ink_in(g, 0, band_y, 8, band_y + th), 0);       // not past its tile
  EXPECT_EQ(ink_in(g, 204, band_y, g.dim(1), band_y + th), 0);
  EXPECT_GT(ink_in(g, 0, 8, g.dim(1), 8 + th), 20);  // "Heads"
  for (Index i = 0; i < 3; ++i)                      // the tiles themselves, under the band
    EXPECT_EQ(pixel(g, band_y + label_h, 8 + i * 68), pixel(tiles[std::size_t(i)], 0, 0));
  tessera::test::TempDir dir;
  expect_png_round_trip(dir, g, "grid.png");
}

// A title too long for kMaxPictureSide is cut with ".." (as the tiles' titles are) instead of
// making make_grid throw "the picture would be ...".
TEST(MakeGrid, LongTitleIsCutToThePictureLimit) {
  const std::vector<Image> tiles = {random_photo(20, 30, 1), random_photo(20, 30, 2)};
  const std::string long_title(5000, 'W');  // ~60000 pixels at font scale 2
  const auto g = image::make_grid(tiles, {}, {.nrow = 2, .padding = 8, .title = long_title});
  EXPECT_LE(g.dim(1), image::kMaxPictureSide);
  const std::string cut =
      image::impl::fit_text(long_title, image::kMaxPictureSide, image::kMaxPictureSide - 16, 2);
  ASSERT_EQ(cut.substr(cut.size() - 2), "..");
  EXPECT_EQ(g.dim(1), image::impl::text_width(cut, 2) + 16);
  // Exactly the picture a caller gets by cutting the title itself.
  EXPECT_TRUE(tessera::test::same_bits(
      g, image::make_grid(tiles, {}, {.nrow = 2, .padding = 8, .title = cut})));
  // A title that fits is not touched.
  const auto short_one = image::make_grid(tiles, {}, {.nrow = 2, .padding = 8, .title = "Heads"});
  EXPECT_EQ(short_one.dim(1), 2 * 38 + 8);
}

TEST(MakeGrid, Errors) {
  const std::vector<Image> none;
  TESSERA_EXPECT_THROW_MSG(image::make_grid(none, {}), tessera::ValueError,
                           "tessera::image::make_grid", "'images' is empty");
  const std::vector<Image> mixed = {Image(4, 4, 3), Image(4, 5, 3)};
  TESSERA_EXPECT_THROW_MSG(image::make_grid(mixed, {}), tessera::ShapeError,
                           "tessera::image::make_grid", "'images[1]'", "[4, 5, 3]", "[4, 4, 3]");
  const std::vector<Image> grey = {Image(4, 4, 1)};
  TESSERA_EXPECT_THROW_MSG(image::make_grid(grey, {}), tessera::ShapeError,
                           "tessera::image::make_grid", "'images[0]'", "[4, 4, 1]", "RGB");
  const std::vector<Image> three = {Image(4, 4, 3), Image(4, 4, 3), Image(4, 4, 3)};
  const std::vector<std::string> two = {"a", "b"};
  TESSERA_EXPECT_THROW_MSG(image::make_grid(three, two), tessera::ShapeError,
                           "tessera::image::make_grid", "'titles'", "2 titles", "expected 3");
  TESSERA_EXPECT_THROW_MSG(image::make_grid(three, {}, {.nrow = -1}), tessera::ValueError,
                           "tessera::image::make_grid", "'options.nrow'", "-1");
  TESSERA_EXPECT_THROW_MSG(image::make_grid(three, {}, {.padding = -2}), tessera::ValueError,
                           "tessera::image::make_grid", "'options.padding'", "-2");
  TESSERA_EXPECT_THROW_MSG(image::make_grid(three, {}, {.padding = Index{1} << 62}),
                           tessera::ValueError, "tessera::image::make_grid", "'options.padding'",
                           "[0, 16384]");
  const std::vector<Image> huge = {Image(1, 20000, 3)};
  TESSERA_EXPECT_THROW_MSG(image::make_grid(huge, {}), tessera::ShapeError,
                           "tessera::image::make_grid", "'images[0]'", "[1, 20000, 3]",
                           "at most 16384");
  TESSERA_EXPECT_THROW_MSG(image::make_grid(three, {}, {.font_scale = 0}), tessera::ValueError,
                           "tessera::image::make_grid", "'font_scale'", "[1, 16]");
  const std::vector<Image> wide = {Image(1, 9000, 3), Image(1, 9000, 3)};
  TESSERA_EXPECT_THROW_MSG(image::make_grid(wide, {}, {.nrow = 2}), tessera::ShapeError,
                           "tessera::image::make_grid", "at most 16384");
}

template <class T>
class Heatmap : public ::testing::Test {};
TYPED_TEST_SUITE(Heatmap, tessera::test::Scalars);

// Below, find_color(img, colour of the minimum) finds the grid's top-left corner: the minimum is
// in cell (0, 0), and the only other pixels of that colour, the colour bar's bottom row, lie lower.

TYPED_TEST(Heatmap, CellsTakeTheirValuesColours) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, 1, 2}, {3, 4, 5}};
  const std::vector<std::string> rows = {"first", "second"}, cols = {"a", "b", "c"};
  const auto img = image::heatmap(m, rows, cols, {.cell_size = 20});
  const auto [gx, gy] = find_color(img, {68, 1, 84});
  ASSERT_GE(gx, 0);
  for (Index r = 0; r < 2; ++r)
    for (Index c = 0; c < 3; ++c) {
      const Rgb want = image::colormap_color(Colormap::viridis, (3 * r + c) / 5.0);
      for (Index y = 0; y < 20; ++y)
        for (Index x = 0; x < 20; ++x)
          ASSERT_EQ(pixel(img, gy + r * 20 + y, gx + c * 20 + x), want) << r << ", " << c;
    }
  // a frame, not a cell colour, just outside the grid
  EXPECT_EQ(pixel(img, gy - 1, gx), image::impl::kFrame);
  EXPECT_EQ(pixel(img, gy + 40, gx), image::impl::kFrame);
  // the colour bar, right of the grid: vmax's colour on the grid's top row, vmin's at its bottom
  Index bar_x = -1;
  for (Index x = gx + 60; x < img.dim(1) && bar_x < 0; ++x)
    if (pixel(img, gy, x) == (Rgb{253, 231, 37})) bar_x = x;
  ASSERT_GE(bar_x, 0);
  Index y = gy;
  while (pixel(img, y + 1, bar_x) != image::impl::kFrame) ++y;
  EXPECT_EQ(pixel(img, y, bar_x), (Rgb{68, 1, 84}));
  // its two values printed to its right, at its top and at its bottom
  const Index th = 18;
  EXPECT_GT(ink_in(img, bar_x + 16, gy, img.dim(1), gy + th), 10);
  EXPECT_GT(ink_in(img, bar_x + 16, y + 1 - th, img.dim(1), y + 1), 10);
  tessera::test::TempDir dir;
  expect_png_round_trip(dir, img, "heatmap.png");
}

TYPED_TEST(Heatmap, LabelsAreWrittenWhereTheyBelongAndNowhereElse) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, 1, 2}, {3, 4, 5}};
  const std::vector<std::string> rows = {"where", "red"}, cols = {"p0", "p1", "p2"};
  const std::vector<std::string> blank_rows = {" ", " "}, blank_cols = {" ", " ", " "};
  const auto img = image::heatmap(m, rows, cols, {.cell_size = 32});
  const auto blank = image::heatmap(m, blank_rows, blank_cols, {.cell_size = 32});
  const auto [gx, gy] = find_color(img, {68, 1, 84});
  const auto [bx, by] = find_color(blank, {68, 1, 84});
  ASSERT_GE(gx, 0);
  ASSERT_GE(bx, 0);
  // row labels: left of each row; column labels: above each column (short ones stay horizontal)
  for (Index r = 0; r < 2; ++r)
    EXPECT_GT(ink_in(img, 0, gy + r * 32, gx, gy + (r + 1) * 32), 20) << "row " << r;
  for (Index c = 0; c < 3; ++c)
    EXPECT_GT(ink_in(img, gx + c * 32, 0, gx + (c + 1) * 32, gy), 20) << "column " << c;
  // no ink in the cells, below the grid, or beside the grid's label areas
  EXPECT_EQ(ink_in(img, gx, gy, gx + 96, gy + 64), 0);
  EXPECT_EQ(ink_in(img, 0, gy + 64 + 1, gx + 96 + 1, img.dim(0)), 0);
  EXPECT_EQ(ink_in(img, 0, 0, gx, gy), 0);  // the empty corner above the row labels
  // labels of spaces draw nothing at all there
  EXPECT_EQ(ink_in(blank, 0, 0, bx, by + 64), 0);
  EXPECT_EQ(ink_in(blank, bx, 0, bx + 96, by), 0);
}

TYPED_TEST(Heatmap, TitleAxisNamesAndDefaultNumbering) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, 1, 2}, {3, 4, 5}};
  const auto plain = image::heatmap(m, {}, {}, {.cell_size = 32});
  const auto titled = image::heatmap(m, {}, {}, {.title = "Attention", .cell_size = 32});
  const Index th = 18, pad = 8;
  EXPECT_EQ(titled.dim(0), plain.dim(0) + th + pad);
  EXPECT_GT(ink_in(titled, 0, pad, titled.dim(1), pad + th), 20);
  EXPECT_GT(ink_in(plain, 0, pad, plain.dim(1), pad + th), 5);  // the column numbers
  // empty label lists number the rows and columns: ink left of each row, above each column
  const auto [gx, gy] = find_color(plain, {68, 1, 84});
  for (Index r = 0; r < 2; ++r) EXPECT_GT(ink_in(plain, 0, gy + r * 32, gx, gy + r * 32 + 32), 5);
  for (Index c = 0; c < 3; ++c) EXPECT_GT(ink_in(plain, gx + c * 32, 0, gx + c * 32 + 32, gy), 5);
  // axis names add a line above the column labels and a rotated column left of the row labels
  const auto named =
      image::heatmap(m, {}, {}, {.x_label = "patch", .y_label = "word", .cell_size = 32});
  EXPECT_EQ(named.dim(0), plain.dim(0) + th + 4);
  const auto [nx, ny] = find_color(named, {68, 1, 84});
  EXPECT_EQ(nx, gx + th + 4);
  EXPECT_GT(ink_in(named, 0, ny, pad + th, ny + 64), 20);  // "word", rotated
}

TYPED_TEST(Heatmap, LongColumnLabelsAreRotatedAndCut) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, 1}};
  const std::vector<std::string> rows = {"q"};
  const std::vector<std::string> short_cols = {"a", "b"};
  const std::vector<std::string> long_cols = {"a rather long label", "b"};
  const std::vector<std::string> longer_cols = {std::string(100, 'x'), "b"};
  const std::vector<std::string> cut_cols = {std::string(18, 'x') + "..", "b"};
  const auto s = image::heatmap(m, rows, short_cols, {.cell_size = 24});
  const auto l = image::heatmap(m, rows, long_cols, {.cell_size = 24});
  // rotated: the band above the grid is as tall as the longest label is wide
  EXPECT_EQ(l.dim(0) - s.dim(0),
            image::impl::text_width("a rather long label", 2) - image::impl::text_height(2));
  const auto [gx, gy] = find_color(l, {68, 1, 84});
  EXPECT_GT(ink_in(l, gx, 0, gx + 24, gy), 100);
  EXPECT_EQ(ink_in(l, gx + 48, 0, l.dim(1), gy), 0);  // nothing past the last column
  // cut to max_label_chars (20): 18 characters and ".."
  const auto x = image::heatmap(m, rows, longer_cols, {.cell_size = 24});
  const auto c = image::heatmap(m, rows, cut_cols, {.cell_size = 24});
  EXPECT_TRUE(tessera::test::same_bits(x, c));
  // non-ASCII bytes draw as '?', never out of the font's table
  const std::vector<std::string> utf8 = {"caf\xc3\xa9", "\x01\x7f"};
  EXPECT_NO_THROW(image::heatmap(m, rows, utf8, {.cell_size = 24}));
}

// Titles and x_labels too long for kMaxPictureSide end in ".." as the labels do, rather than
// making heatmap throw "the picture would be ...".
TYPED_TEST(Heatmap, LongTitleAndAxisNameAreCutToThePictureLimit) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, 1, 2}, {3, 4, 5}};
  const std::string long_text(5000, 'W');
  const auto t = image::heatmap(m, {}, {}, {.title = long_text, .cell_size = 32});
  EXPECT_LE(t.dim(1), image::kMaxPictureSide);
  const std::string cut =
      image::impl::fit_text(long_text, image::kMaxPictureSide, image::kMaxPictureSide - 16, 2);
  ASSERT_EQ(cut.substr(cut.size() - 2), "..");
  EXPECT_TRUE(
      tessera::test::same_bits(t, image::heatmap(m, {}, {}, {.title = cut, .cell_size = 32})));
  EXPECT_GT(ink_in(t, 0, 8, t.dim(1), 8 + 18), 1000);  // the title is drawn
  const auto x = image::heatmap(m, {}, {}, {.x_label = long_text, .cell_size = 32});
  EXPECT_LE(x.dim(1), image::kMaxPictureSide);
  EXPECT_GT(x.dim(1), image::kMaxPictureSide - 100);  // as wide as the cut name needs
  // Cutting leaves titles that fit alone.
  const auto plain = image::heatmap(m, {}, {}, {.title = "Attention", .cell_size = 32});
  const auto direct = image::heatmap(m, {}, {}, {.cell_size = 32});
  EXPECT_EQ(plain.dim(1), direct.dim(1));
}

TEST(Text, FitTextCutsToCharactersAndPixels) {
  using image::impl::fit_text;
  using image::impl::text_width;
  EXPECT_EQ(fit_text("short", 20, 1000, 2), "short");
  EXPECT_EQ(fit_text("abcdefghij", 6, 1000, 2), "abcd..");
  const std::string cut = fit_text("abcdefghij", 20, 50, 2);
  EXPECT_LE(text_width(cut, 2), 50);
  EXPECT_GT(text_width(fit_text("abcdefghij", 20, 50 + 12, 2), 2), text_width(cut, 2));
  EXPECT_EQ(cut.substr(cut.size() - 2), "..");
  EXPECT_EQ(fit_text("abcdefghij", 20, 5, 2), "");  // not even "a.." fits in 5 pixels
  const std::string long_label(1 << 20, 'x');       // a megabyte: a binary search, still quick
  EXPECT_LE(fit_text(long_label, Index{1} << 40, 100, 1).size(), 100u);
  EXPECT_EQ(image::impl::printable("caf\xc3\xa9\n~"), "caf???~");
}

TYPED_TEST(Heatmap, SmallCellsThinTheLabels) {
  using T = TypeParam;
  Tensor<T, 2> m(40, 3);
  m.setRandom(2, 0.0, 1.0);
  m(0, 0) = -1;  // the minimum, so that cell (0, 0) has the map's first colour
  const auto img = image::heatmap(m, {}, {}, {.cell_size = 6});
  const auto [gx, gy] = find_color(img, {68, 1, 84});
  ASSERT_GE(gx, 0);
  // Text 18 pixels high plus a 4-pixel gap over 6-pixel rows: rows 0, 4, 8... are labelled,
  // each label centred on its row: row 0's spans [gy - 6, gy + 12), row 4's [gy + 18, gy + 36).
  EXPECT_GT(ink_in(img, 0, gy - 6, gx, gy + 12), 10);
  EXPECT_EQ(ink_in(img, 0, gy + 12, gx, gy + 18), 0);
  EXPECT_GT(ink_in(img, 0, gy + 18, gx, gy + 36), 10);
}

TYPED_TEST(Heatmap, NanCellsAndTheNanKey) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, std::numeric_limits<T>::quiet_NaN()}, {2, 3}};
  const auto img = image::heatmap(m, {}, {}, {.cell_size = 16, .font_scale = 1});
  // one NaN cell (16 x 16) and the key's swatch (8 x 9 at scale 1)
  EXPECT_EQ(count_color(img, image::kNanColor), 16 * 16 + 8 * 9);
  const Tensor<T, 2> finite{{0, 1}, {2, 3}};
  const auto plain = image::heatmap(finite, {}, {}, {.cell_size = 16, .font_scale = 1});
  EXPECT_EQ(count_color(plain, image::kNanColor), 0);
}

TYPED_TEST(Heatmap, GivenRangeAndGrayMap) {
  using T = TypeParam;
  const Tensor<T, 2> m{{T(0.5), 2}};
  const auto img = image::heatmap(
      m, {}, {}, {.cell_size = 10, .colormap = Colormap::gray, .vmin = 0.0, .vmax = 1.0});
  // the 0.5 cell (10 x 10), and perhaps whole rows of the 16-pixel-wide colour bar
  const Index grey = count_color(img, {128, 128, 128});
  EXPECT_GE(grey, 100);
  EXPECT_EQ((grey - 100) % 16, 0);
  EXPECT_EQ(count_color(img, {0, 0, 0}), 16);  // the bar's bottom row only
}

TYPED_TEST(Heatmap, Errors) {
  using T = TypeParam;
  const Tensor<T, 2> m{{0, 1, 2}, {3, 4, 5}};
  const Tensor<T, 2> empty(0, 3);
  TESSERA_EXPECT_THROW_MSG(image::heatmap(empty, {}, {}), tessera::ShapeError,
                           "tessera::image::heatmap", "'matrix'", "[0, 3]", "rows, cols >= 1");
  const std::vector<std::string> three = {"a", "b", "c"}, two = {"a", "b"};
  TESSERA_EXPECT_THROW_MSG(image::heatmap(m, three, three), tessera::ShapeError,
                           "tessera::image::heatmap", "'row_labels'", "3 labels", "expected 2",
                           "[2, 3]");
  TESSERA_EXPECT_THROW_MSG(image::heatmap(m, two, two), tessera::ShapeError,
                           "tessera::image::heatmap", "'col_labels'", "2 labels", "expected 3");
  for (Index cell : {0, -4, 2000})
    TESSERA_EXPECT_THROW_MSG(image::heatmap(m, {}, {}, {.cell_size = cell}), tessera::ValueError,
                             "tessera::image::heatmap", "'options.cell_size'", "[1, 1024]");
  TESSERA_EXPECT_THROW_MSG(image::heatmap(m, {}, {}, {.font_scale = 17}), tessera::ValueError,
                           "tessera::image::heatmap", "'font_scale'", "17");
  TESSERA_EXPECT_THROW_MSG(image::heatmap(m, {}, {}, {.max_label_chars = 2}), tessera::ValueError,
                           "tessera::image::heatmap", "'options.max_label_chars'", ">= 3");
  TESSERA_EXPECT_THROW_MSG(image::heatmap(m, {}, {}, {.vmin = 5.0, .vmax = 1.0}),
                           tessera::ValueError, "tessera::image::heatmap", "vmin <= vmax");
  const Tensor<T, 2> tall(1000, 2);
  TESSERA_EXPECT_THROW_MSG(image::heatmap(tall, {}, {}, {.cell_size = 32}), tessera::ShapeError,
                           "tessera::image::heatmap", "'matrix'", "[1000, 2]", "cell_size 32",
                           "16384");
}

}  // namespace heatmap_test
