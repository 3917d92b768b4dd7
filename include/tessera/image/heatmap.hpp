// tessera::image: pictures of attention a person can read.
//
//   overlay(photo, attention)   an attention grid (a ViT's [grid_h, grid_w] patch scores)
//                               upsampled to the photo's size, coloured and alpha-blended over it
//   make_grid(images, titles)   several images (one overlay per query word, per head...) laid out
//                               in a grid, each under its title
//   heatmap(matrix, rows, cols) a [rows, cols] matrix as coloured cells, the row labels at the
//   left,
//                               the column labels on top (rotated when long), a title, and a
//                               colour bar with its minimum and maximum printed beside it
//
//   auto pic = tessera::image::heatmap(weights, words, patch_names,
//                                      {.title = "question -> patch attention"});
//   tessera::image::write_png("attention.png", pic);
//
// Every result is an RGB image, Tensor<std::uint8_t, 3> of shape [height, width, 3], ready for
// write_png (tessera/image/write.hpp). Colours come from tessera/image/colormap.hpp (viridis by
// default; NaN in magenta). Text is drawn with stb_easy_font (Sean Barrett, public domain / MIT,
// https://github.com/nothings/stb), a 5 x 7-pixel ASCII vector font whose quads are filled here,
// scaled by an integer factor; characters outside printable ASCII are drawn as '?'.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

// stb_easy_font defines its functions `static` in every translation unit; those tessera does not
// call (spacing, height) would otherwise warn as unused.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/image/colormap.hpp"
#include "tessera/image/write.hpp"

namespace tessera::image {

// The largest height or width of a picture these functions draw; larger requests (a 10,000 x
// 10,000 matrix at 32 pixels a cell) are refused instead of allocating gigabytes.
inline constexpr Index kMaxPictureSide = 16384;

struct OverlayOptions {
  // Weight of the colour over the photo: out = (1 - alpha) * photo + alpha * colour.
  double alpha = 0.5;
  Colormap colormap = Colormap::viridis;
  // The attention values drawn as the map's two ends; default: the grid's finite min / max. Give
  // the same range to several overlays to make their colours comparable.
  std::optional<double> vmin, vmax;
};

struct GridOptions {
  // Images per row; 0 picks ceil(sqrt(n)) (torchvision.utils.make_grid's `nrow`).
  Index nrow = 0;
  // Pixels between tiles and around the grid.
  Index padding = 8;
  // stb_easy_font's 5 x 7 font drawn at this integer scale (2: capitals 14 pixels high).
  int font_scale = 2;
  // Written above the whole grid when not empty.
  std::string title;
};

struct HeatmapOptions {
  std::string title;
  // Names of the axes: x_label above the column labels, y_label (rotated) left of the row labels.
  std::string x_label, y_label;
  // Side of one matrix cell, in pixels.
  Index cell_size = 32;
  Colormap colormap = Colormap::viridis;
  // The values drawn as the map's two ends; default: the matrix's finite min / max.
  std::optional<double> vmin, vmax;
  // stb_easy_font's 5 x 7 font drawn at this integer scale (2: capitals 14 pixels high).
  int font_scale = 2;
  // Longer labels are cut to this many characters, the last two shown as "..".
  Index max_label_chars = 20;
};

}  // namespace tessera::image

namespace tessera::image::impl {

inline constexpr Rgb kWhite{255, 255, 255};
inline constexpr Rgb kInk{20, 20, 20};
inline constexpr Rgb kFrame{90, 90, 90};
// stb_easy_font's glyphs span 9 units from the top of a capital to the bottom of a descender.
inline constexpr Index kGlyphHeight = 9;
// The most quads stb_easy_font emits for one character (measured over ' '..'~': 11), with room.
inline constexpr std::size_t kMaxQuadsPerChar = 16;

// A white RGB canvas [h, w, 3].
inline Tensor<std::uint8_t, 3> canvas(Index h, Index w) {
  Tensor<std::uint8_t, 3> img(Shape<3>{h, w, 3}, uninitialized);
  img.setConstant(255);
  return img;
}

// Fills [x0, x1) x [y0, y1), clipped to the image.
inline void fill_rect(Tensor<std::uint8_t, 3>& img, Index x0, Index y0, Index x1, Index y1, Rgb c) {
  x0 = std::max<Index>(x0, 0), y0 = std::max<Index>(y0, 0);
  x1 = std::min(x1, img.dim(1)), y1 = std::min(y1, img.dim(0));
  for (Index y = y0; y < y1; ++y)
    for (Index x = x0; x < x1; ++x) {
      std::uint8_t* p = &img(y, x, 0);
      p[0] = c.r, p[1] = c.g, p[2] = c.b;
    }
}

// A one-pixel frame just outside [x0, x1) x [y0, y1).
inline void frame_rect(Tensor<std::uint8_t, 3>& img, Index x0, Index y0, Index x1, Index y1,
                       Rgb c) {
  fill_rect(img, x0 - 1, y0 - 1, x1 + 1, y0, c);
  fill_rect(img, x0 - 1, y1, x1 + 1, y1 + 1, c);
  fill_rect(img, x0 - 1, y0, x0, y1, c);
  fill_rect(img, x1, y0, x1 + 1, y1, c);
}

// Copies `src` (RGB) with its top-left corner at (x, y).
inline void blit(Tensor<std::uint8_t, 3>& dst, const ImageView& src, Index x, Index y) {
  for (Index r = 0; r < src.dim(0); ++r)
    std::copy_n(&src(r, 0, 0), src.dim(1) * 3, &dst(y + r, x, 0));
}

// `s` with every byte outside printable ASCII (stb_easy_font's range) replaced by '?'.
inline std::string printable(std::string_view s) {
  std::string out(s);
  for (char& ch : out)
    if (ch < 32 || ch > 126) ch = '?';
  return out;
}

// Width in pixels of `s` drawn at `scale` (each glyph's advance includes one unit of spacing).
inline Index text_width(std::string_view s, int scale) {
  std::string t = printable(s);
  return static_cast<Index>(stb_easy_font_width(t.data())) * scale;
}

inline Index text_height(int scale) { return kGlyphHeight * scale; }

// `s` cut to at most `max_chars` characters and `max_px` pixels at `scale`, ending in ".." when
// cut ("" when not even one character and the dots fit). A binary search over the kept length
// (widths only grow with it), so a megabyte-long label costs a few passes, not a million.
inline std::string fit_text(std::string_view s, Index max_chars, Index max_px, int scale) {
  std::string t = printable(s);
  if (static_cast<Index>(t.size()) <= max_chars && text_width(t, scale) <= max_px) return t;
  auto cut = [&](Index keep) { return t.substr(0, static_cast<std::size_t>(keep)) + ".."; };
  Index lo = 0, hi = std::min<Index>(static_cast<Index>(t.size()), max_chars - 2);
  while (lo < hi) {  // the largest keep in [0, hi] that fits (0 stands for nothing fitting)
    const Index mid = lo + (hi - lo + 1) / 2;
    if (text_width(cut(mid), scale) <= max_px)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo > 0 ? cut(lo) : std::string();
}

// Draws `s` at `scale`. Horizontal: (x, y) is the top-left corner of the text box. Vertical
// (rotated 90 degrees counter-clockwise, reading bottom to top): (x, y) is the box's bottom-left
// corner, and the box spans [x, x + text_height) x [y - text_width, y). Clipped to the image.
inline void draw_text(Tensor<std::uint8_t, 3>& img, Index x, Index y, std::string_view s, Rgb c,
                      int scale, bool vertical = false) {
  if (s.empty()) return;
  std::string t = printable(s);
  // stb_easy_font's vertices: x, y, z as floats and 4 colour bytes, 4 vertices per quad.
  std::vector<float> buf(t.size() * kMaxQuadsPerChar * 16);
  const int quads = stb_easy_font_print(0, 0, t.data(), nullptr, buf.data(),
                                        static_cast<int>(buf.size() * sizeof(float)));
  for (int q = 0; q < quads; ++q) {
    // vertices 0 and 2 are the quad's opposite corners, in whole font units
    const float* v = &buf[static_cast<std::size_t>(q) * 16];
    const auto u0 = static_cast<Index>(v[0]), w0 = static_cast<Index>(v[1]);
    const auto u1 = static_cast<Index>(v[8]), w1 = static_cast<Index>(v[9]);
    if (!vertical)
      fill_rect(img, x + u0 * scale, y + w0 * scale, x + u1 * scale, y + w1 * scale, c);
    else
      fill_rect(img, x + w0 * scale, y - u1 * scale, x + w1 * scale, y - u0 * scale, c);
  }
}

// Throws ShapeError when a picture of h x w pixels is past kMaxPictureSide.
inline void check_picture_size(std::string_view fn, Index h, Index w, std::string_view what) {
  if (h > kMaxPictureSide || w > kMaxPictureSide)
    detail::raise<ShapeError>(fn, "the picture would be ", h, " x ", w, " pixels (", what,
                              "), expected at most ", kMaxPictureSide, " on each side");
}

inline void check_font_scale(std::string_view fn, int scale) {
  if (scale < 1 || scale > 16)
    detail::raise<ValueError>(fn, "argument 'font_scale' is ", scale,
                              ", expected a value in [1, 16]");
}

// Bilinear upsampling of `grid` [gh, gw] to [out_h, out_w] with PyTorch's align_corners=False
// convention (F.interpolate(mode="bilinear"); aten/src/ATen/native/UpSample.h,
// area_pixel_compute_source_index): output pixel d samples the input at
// (d + 0.5) * in / out - 0.5, clamped below at 0, so each grid cell's value sits at the centre of
// the block of pixels it covers and the edges hold the border cells' values. Computed in double.
template <class T>
Tensor<double, 2> upsample_bilinear(const TensorMap<const T, 2>& grid, Index out_h, Index out_w) {
  const Index gh = grid.dim(0), gw = grid.dim(1);
  struct Tap {
    Index i0, i1;
    double l1;
  };
  auto taps = [](Index in, Index out) {
    std::vector<Tap> t(static_cast<std::size_t>(out));
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (Index d = 0; d < out; ++d) {
      const double src = std::max(scale * (static_cast<double>(d) + 0.5) - 0.5, 0.0);
      const Index i0 = std::min(static_cast<Index>(src), in - 1);
      t[static_cast<std::size_t>(d)] = {i0, std::min(i0 + 1, in - 1),
                                        src - static_cast<double>(i0)};
    }
    return t;
  };
  const auto ty = taps(gh, out_h), tx = taps(gw, out_w);
  Tensor<double, 2> out(Shape<2>{out_h, out_w}, uninitialized);
  for (Index y = 0; y < out_h; ++y) {
    const Tap& a = ty[static_cast<std::size_t>(y)];
    for (Index x = 0; x < out_w; ++x) {
      const Tap& b = tx[static_cast<std::size_t>(x)];
      const double top = (1 - b.l1) * static_cast<double>(grid(a.i0, b.i0)) +
                         b.l1 * static_cast<double>(grid(a.i0, b.i1));
      const double bottom = (1 - b.l1) * static_cast<double>(grid(a.i1, b.i0)) +
                            b.l1 * static_cast<double>(grid(a.i1, b.i1));
      out(y, x) = (1 - a.l1) * top + a.l1 * bottom;
    }
  }
  return out;
}

// "%.3g": 0.0625, 0.25, 1.5e+03.
inline std::string format_value(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

}  // namespace tessera::image::impl

namespace tessera::image {

// Draws `attention` [grid_h, grid_w] (float or double; e.g. one query's attention over a ViT's
// patch grid, row-major as the patches are numbered) over `photo` [H, W, 3] (uint8 RGB):
// the grid is upsampled to H x W bilinearly with PyTorch's align_corners=False convention
// (F.interpolate(..., mode="bilinear")), normalised to [vmin, vmax] and coloured as
// apply_colormap does, and blended: out = round((1 - alpha) * photo + alpha * colour).
// Returns [H, W, 3] uint8. NaN attention draws in kNanColor (blended; bilinear sampling spreads
// it to the pixels that sample a NaN cell).
// Throws ShapeError when photo is not [H, W, 3] with H, W >= 1 or attention is empty; ValueError
// for alpha outside [0, 1], a non-finite vmin/vmax or vmin > vmax.
template <TensorLike P, TensorLike A>
Tensor<std::uint8_t, 3> overlay(const P& photo_in, const A& attention,
                                const OverlayOptions& options = {}) {
  using T = scalar_t<A>;
  static_assert(rank_v<A> == 2, "tessera::image::overlay: attention must be [grid_h, grid_w]");
  static_assert(std::is_floating_point_v<T>,
                "tessera::image::overlay: attention must be float or double");
  constexpr std::string_view fn = "tessera::image::overlay";
  const impl::ImageView photo = impl::image_view(photo_in);
  const auto& ps = photo.shape();
  if (ps[2] != 3 || ps[0] == 0 || ps[1] == 0)
    detail::raise<ShapeError>(fn, "argument 'photo' has shape ", detail::shape_string(ps),
                              ", expected [height, width, 3] (RGB) with height, width >= 1");
  if (attention.size() == 0)
    detail::raise<ShapeError>(fn, "argument 'attention' has shape ",
                              detail::shape_string(attention.shape()),
                              ", expected [grid_h, grid_w] with grid_h, grid_w >= 1");
  if (!(options.alpha >= 0 && options.alpha <= 1))
    detail::raise<ValueError>(fn, "argument 'options.alpha' is ", options.alpha,
                              ", expected a value in [0, 1]");
  const auto range =
      impl::value_range(fn, attention.data(), attention.size(), options.vmin, options.vmax);
  const auto up = impl::upsample_bilinear(cview(attention), ps[0], ps[1]);  // [H, W]
  Tensor<std::uint8_t, 3> out(ps, uninitialized);
  const double a = options.alpha;
  const std::uint8_t* in = photo.data();
  std::uint8_t* o = out.data();
  for (Index i = 0, n = ps[0] * ps[1]; i < n; ++i) {
    const Rgb c = colormap_color(options.colormap, impl::normalize(up.data()[i], range));
    const double rgb[3] = {static_cast<double>(c.r), static_cast<double>(c.g),
                           static_cast<double>(c.b)};
    for (int k = 0; k < 3; ++k)
      o[3 * i + k] = static_cast<std::uint8_t>(
          std::lround((1 - a) * static_cast<double>(in[3 * i + k]) + a * rgb[k]));
  }
  return out;
}

// Lays `images` (each [H, W, 3] uint8, all the same shape) out in a grid of `options.nrow` per
// row, `options.padding` pixels apart on white, each under its title from `titles` (cut with
// ".." to the tile's width), and `options.title` above everything (cut with ".." when it would
// make the picture wider than kMaxPictureSide). `titles` may be empty (no
// titles). Returns [height, width, 3] uint8.
// Throws ValueError for no images, a negative nrow, a padding outside [0, kMaxPictureSide] or a
// font_scale outside [1, 16];
// ShapeError when an image is not RGB, is empty or differs in shape from the first, when
// titles.size() is neither 0 nor images.size(), or when the picture would pass kMaxPictureSide.
inline Tensor<std::uint8_t, 3> make_grid(std::span<const Tensor<std::uint8_t, 3>> images,
                                         std::span<const std::string> titles,
                                         const GridOptions& options = {}) {
  constexpr std::string_view fn = "tessera::image::make_grid";
  if (images.empty())
    detail::raise<ValueError>(fn, "argument 'images' is empty, expected at least one image");
  impl::check_font_scale(fn, options.font_scale);
  if (options.nrow < 0)
    detail::raise<ValueError>(fn, "argument 'options.nrow' is ", options.nrow,
                              ", expected a value >= 0");
  if (options.padding < 0 || options.padding > kMaxPictureSide)
    detail::raise<ValueError>(fn, "argument 'options.padding' is ", options.padding,
                              ", expected a value in [0, ", kMaxPictureSide, "]");
  const auto& s0 = images[0].shape();
  for (std::size_t i = 0; i < images.size(); ++i) {
    const auto& s = images[i].shape();
    if (s[2] != 3 || s[0] == 0 || s[1] == 0 || s != s0)
      detail::raise<ShapeError>(fn, "argument 'images[", i, "]' has shape ",
                                detail::shape_string(s), ", expected ", detail::shape_string(s0),
                                " (every image RGB, non-empty and of the first one's shape)");
    if (s[0] > kMaxPictureSide || s[1] > kMaxPictureSide)
      detail::raise<ShapeError>(fn, "argument 'images[", i, "]' has shape ",
                                detail::shape_string(s), ", expected at most ", kMaxPictureSide,
                                " pixels on each side");
  }
  if (!titles.empty() && titles.size() != images.size())
    detail::raise<ShapeError>(fn, "argument 'titles' has ", titles.size(), " titles, expected ",
                              images.size(), " (one per image) or none");
  const int sc = options.font_scale;
  const Index n = static_cast<Index>(images.size()), th = impl::text_height(sc);
  const Index pad = options.padding, tile_h = s0[0], tile_w = s0[1];
  const Index nrow = options.nrow > 0
                         ? std::min(options.nrow, n)
                         : static_cast<Index>(std::ceil(std::sqrt(static_cast<double>(n))));
  const Index rows = (n + nrow - 1) / nrow;
  const Index label_h = titles.empty() ? 0 : th + 2 * sc;  // a title line and a small gap
  // The title widens the picture as far as it needs, up to kMaxPictureSide; a longer one ends in
  // ".." (as the tiles' titles do) rather than making the picture too large.
  const std::string title =
      impl::fit_text(options.title, kMaxPictureSide, kMaxPictureSide - 2 * pad, sc);
  const Index title_h = title.empty() ? 0 : th + pad;
  const Index width = std::max(nrow * (tile_w + pad) + pad, impl::text_width(title, sc) + 2 * pad);
  const Index height = pad + title_h + rows * (label_h + tile_h + pad);
  impl::check_picture_size(fn, height, width, "the tiles, their titles and padding");
  auto img = impl::canvas(height, width);
  if (!title.empty())
    impl::draw_text(img, (width - impl::text_width(title, sc)) / 2, pad, title, impl::kInk, sc);
  const Index x_start = (width - (nrow * (tile_w + pad) + pad)) / 2 + pad;
  for (Index i = 0; i < n; ++i) {
    const Index x = x_start + (i % nrow) * (tile_w + pad);
    const Index y = pad + title_h + (i / nrow) * (label_h + tile_h + pad);
    if (!titles.empty()) {
      const auto t = impl::fit_text(titles[static_cast<std::size_t>(i)], tile_w, tile_w, sc);
      impl::draw_text(img, x + (tile_w - impl::text_width(t, sc)) / 2, y, t, impl::kInk, sc);
    }
    impl::blit(img, images[static_cast<std::size_t>(i)], x, y + label_h);
  }
  return img;
}

// Draws `matrix` [rows, cols] (float or double) as a heatmap: one cell_size x cell_size square
// per entry, coloured as apply_colormap does (NaN in kNanColor, with a "NaN" key under the colour
// bar); `row_labels` written left of the rows, `col_labels` above the columns (horizontal when
// every one fits its column, else rotated to read bottom to top); labels longer than
// max_label_chars, or than the room a rotated label has, end in "..". When labels would overlap
// (cells smaller than the text) only every k-th is written. An empty label list numbers the
// rows or columns 0, 1, 2... `title` is written on top, x_label / y_label name the axes, and a
// colour bar at the right shows the map from vmin (bottom) to vmax (top) with both printed.
// Returns an RGB image [height, width, 3] uint8 on white.
// Throws ShapeError for an empty matrix, a label list whose size is neither 0 nor the number of
// rows / columns, or a picture past kMaxPictureSide; ValueError for cell_size outside
// [1, 1024], font_scale outside [1, 16], max_label_chars < 3, a non-finite vmin / vmax or
// vmin > vmax.
template <TensorLike M>
Tensor<std::uint8_t, 3> heatmap(const M& matrix, std::span<const std::string> row_labels,
                                std::span<const std::string> col_labels,
                                const HeatmapOptions& options = {}) {
  using T = scalar_t<M>;
  static_assert(rank_v<M> == 2, "tessera::image::heatmap: matrix must be [rows, cols]");
  static_assert(std::is_floating_point_v<T>,
                "tessera::image::heatmap: matrix must be float or double");
  constexpr std::string_view fn = "tessera::image::heatmap";
  const Index R = matrix.shape()[0], C = matrix.shape()[1];
  if (R == 0 || C == 0)
    detail::raise<ShapeError>(fn, "argument 'matrix' has shape ",
                              detail::shape_string(matrix.shape()),
                              ", expected [rows, cols] with rows, cols >= 1");
  if (!row_labels.empty() && static_cast<Index>(row_labels.size()) != R)
    detail::raise<ShapeError>(fn, "argument 'row_labels' has ", row_labels.size(),
                              " labels, expected ", R, " (the rows of matrix ",
                              detail::shape_string(matrix.shape()), ") or none");
  if (!col_labels.empty() && static_cast<Index>(col_labels.size()) != C)
    detail::raise<ShapeError>(fn, "argument 'col_labels' has ", col_labels.size(),
                              " labels, expected ", C, " (the columns of matrix ",
                              detail::shape_string(matrix.shape()), ") or none");
  if (options.cell_size < 1 || options.cell_size > 1024)
    detail::raise<ValueError>(fn, "argument 'options.cell_size' is ", options.cell_size,
                              ", expected a value in [1, 1024]");
  impl::check_font_scale(fn, options.font_scale);
  if (options.max_label_chars < 3)
    detail::raise<ValueError>(fn, "argument 'options.max_label_chars' is ", options.max_label_chars,
                              ", expected a value >= 3");
  const auto range =
      impl::value_range(fn, matrix.data(), matrix.size(), options.vmin, options.vmax);
  const Index cell = options.cell_size;
  if (R > kMaxPictureSide / cell || C > kMaxPictureSide / cell)
    detail::raise<ShapeError>(fn, "argument 'matrix' has shape ",
                              detail::shape_string(matrix.shape()), ", which at cell_size ", cell,
                              " is more than ", kMaxPictureSide, " pixels on a side");

  const int sc = options.font_scale;
  const Index th = impl::text_height(sc), pad = 4 * sc, gap = 2 * sc;
  const Index grid_w = C * cell, grid_h = R * cell;
  auto label = [&](std::span<const std::string> labels, Index i) {
    return labels.empty() ? std::to_string(i) : labels[static_cast<std::size_t>(i)];
  };
  // Labels that would overlap (cells thinner than a line of text) are thinned to every k-th.
  const Index step = (th + gap + cell - 1) / cell;

  // Row labels, right-aligned against the grid.
  std::vector<std::string> rows(static_cast<std::size_t>(R));
  Index rows_w = 0;
  for (Index r = 0; r < R; r += step) {
    auto t = impl::fit_text(label(row_labels, r), options.max_label_chars, kMaxPictureSide, sc);
    rows_w = std::max(rows_w, impl::text_width(t, sc));
    rows[static_cast<std::size_t>(r)] = std::move(t);
  }
  // Column labels: horizontal when each fits its cell with a gap, else rotated.
  std::vector<std::string> cols(static_cast<std::size_t>(C));
  bool vertical = false;
  for (Index c = 0; c < C; ++c) {
    cols[static_cast<std::size_t>(c)] =
        impl::fit_text(label(col_labels, c), options.max_label_chars, kMaxPictureSide, sc);
    // at least a gap of 2 font units between neighbours, or they read as one word
    vertical = vertical || impl::text_width(cols[static_cast<std::size_t>(c)], sc) + 2 * sc > cell;
  }
  const Index col_step = vertical ? step : 1;
  Index cols_h = th;
  if (vertical) {
    cols_h = 0;
    for (Index c = 0; c < C; ++c) {
      if (c % col_step) cols[static_cast<std::size_t>(c)].clear();
      cols_h = std::max(cols_h, impl::text_width(cols[static_cast<std::size_t>(c)], sc));
    }
  }

  // Colour bar and its two values; a NaN key below it when the matrix holds a NaN.
  const std::string top = impl::format_value(range.vmax), bottom = impl::format_value(range.vmin);
  const Index bar_w = 8 * sc, bar_h = std::max(grid_h, 3 * th + 2 * pad);
  const Index values_w = std::max(impl::text_width(top, sc), impl::text_width(bottom, sc));
  bool has_nan = false;
  for (Index i = 0; i < matrix.size(); ++i) has_nan = has_nan || std::isnan(matrix.data()[i]);
  const Index nan_h = has_nan ? pad + th : 0;

  // Horizontal layout: [pad][y_label][gap][row labels][gap][grid][2 pad][bar][gap][values][pad]
  const std::string y_name = impl::fit_text(options.y_label, 200, std::max(grid_h, th), sc);
  const Index y_name_w = y_name.empty() ? 0 : th + gap;
  const Index grid_x = pad + y_name_w + rows_w + gap;
  const Index bar_x = grid_x + grid_w + 2 * pad;
  const Index content_w =
      bar_x + bar_w + gap + std::max(values_w, impl::text_width("NaN", sc)) + pad;
  // The title and x_label widen the picture as far as they need, up to kMaxPictureSide: longer
  // ones end in ".." as the labels do, rather than making the picture too large.
  const std::string title =
      impl::fit_text(options.title, kMaxPictureSide, kMaxPictureSide - 2 * pad, sc);
  const std::string x_name =
      impl::fit_text(options.x_label, kMaxPictureSide, kMaxPictureSide - grid_x - pad, sc);
  const Index title_w = impl::text_width(title, sc) + 2 * pad;
  const Index x_name_w = impl::text_width(x_name, sc);
  const Index width = std::max({content_w, title_w, grid_x + x_name_w + pad});
  // Vertical layout: [pad][title][pad][x_label][gap][column labels][gap][grid or bar][pad]
  const Index title_h = title.empty() ? 0 : th + pad;
  const Index x_name_h = x_name.empty() ? 0 : th + gap;
  const Index grid_y = pad + title_h + x_name_h + cols_h + gap;
  const Index height = grid_y + std::max(grid_h, bar_h + nan_h) + pad;
  impl::check_picture_size(fn, height, width, "the cells, labels, title and colour bar");

  auto img = impl::canvas(height, width);
  if (!title.empty())
    impl::draw_text(img, (width - impl::text_width(title, sc)) / 2, pad, title, impl::kInk, sc);
  if (!x_name.empty())
    impl::draw_text(img, grid_x + std::max<Index>((grid_w - x_name_w) / 2, 0), pad + title_h,
                    x_name, impl::kInk, sc);
  if (!y_name.empty())
    impl::draw_text(img, pad, grid_y + (grid_h + impl::text_width(y_name, sc)) / 2, y_name,
                    impl::kInk, sc, /*vertical=*/true);
  // cells
  for (Index r = 0; r < R; ++r)
    for (Index c = 0; c < C; ++c) {
      const Rgb color = colormap_color(options.colormap,
                                       impl::normalize(static_cast<double>(matrix(r, c)), range));
      impl::fill_rect(img, grid_x + c * cell, grid_y + r * cell, grid_x + (c + 1) * cell,
                      grid_y + (r + 1) * cell, color);
    }
  impl::frame_rect(img, grid_x, grid_y, grid_x + grid_w, grid_y + grid_h, impl::kFrame);
  // row labels, centred on their rows
  for (Index r = 0; r < R; ++r) {
    const auto& t = rows[static_cast<std::size_t>(r)];
    if (t.empty()) continue;
    impl::draw_text(img, grid_x - gap - impl::text_width(t, sc),
                    grid_y + r * cell + (cell - th) / 2, t, impl::kInk, sc);
  }
  // column labels, centred on their columns, their bottoms against the grid
  for (Index c = 0; c < C; ++c) {
    const auto& t = cols[static_cast<std::size_t>(c)];
    if (t.empty()) continue;
    if (vertical)
      impl::draw_text(img, grid_x + c * cell + (cell - th) / 2, grid_y - gap, t, impl::kInk, sc,
                      /*vertical=*/true);
    else
      impl::draw_text(img, grid_x + c * cell + (cell - impl::text_width(t, sc)) / 2,
                      grid_y - gap - th, t, impl::kInk, sc);
  }
  // colour bar: vmax at the top row, vmin at the bottom row
  for (Index y = 0; y < bar_h; ++y) {
    const double t = bar_h > 1 ? 1.0 - static_cast<double>(y) / static_cast<double>(bar_h - 1) : 1;
    impl::fill_rect(img, bar_x, grid_y + y, bar_x + bar_w, grid_y + y + 1,
                    colormap_color(options.colormap, t));
  }
  impl::frame_rect(img, bar_x, grid_y, bar_x + bar_w, grid_y + bar_h, impl::kFrame);
  impl::draw_text(img, bar_x + bar_w + gap, grid_y, top, impl::kInk, sc);
  impl::draw_text(img, bar_x + bar_w + gap, grid_y + bar_h - th, bottom, impl::kInk, sc);
  if (has_nan) {
    const Index y = grid_y + bar_h + pad;
    impl::fill_rect(img, bar_x, y, bar_x + bar_w, y + th, kNanColor);
    impl::draw_text(img, bar_x + bar_w + gap, y, "NaN", impl::kInk, sc);
  }
  return img;
}

}  // namespace tessera::image
