// tessera::image: resizing uint8 images exactly as Pillow's Image.resize does.
//
//   auto small = tessera::image::resize(img, 224, 298);                    // [224, 298, C]
//   auto clip = tessera::image::resize_shorter_side(img, 224);             // shorter side 224
//
// The reference is Pillow 9.4's src/libImaging/Resample.c (ImagingResample with no box, the
// path torchvision.transforms.Resize takes on a PIL image). Its semantics, reproduced here:
//   * a separable convolution, horizontal pass first, then vertical; the horizontal pass only
//     covers the input rows the vertical pass will read; a pass whose size does not change is
//     skipped;
//   * output pixel i of a side scaled by s = in / out samples the input at centre (i + 0.5) s;
//     when shrinking (s > 1) the filter is stretched by s (its support grows from 2 to 2 s taps
//     each side for bicubic): this is Pillow's antialiasing; taps outside the image are dropped
//     and the remaining weights renormalised to sum to 1;
//   * filters: bicubic is Keys' cubic convolution with a = -0.5 (support 2), bilinear the
//     triangle (support 1);
//   * weights are rounded to 22-bit fixed point (PRECISION_BITS = 32 - 8 - 2), each pass sums
//     uint8 * weight in 32-bit integers from a rounding bias of 2^21, and the result is clipped
//     to [0, 255] and stored as uint8 before the next pass.
// With the weights computed in the same double-precision expressions (no fused multiply-add, as
// in Debian's x86-64 build of Pillow), the result is bit-identical to Pillow's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"

namespace tessera::image {

// An 8-bit image: [height, width, channels], HWC, row-major (also declared in decode.hpp).
using Image = Tensor<std::uint8_t, 3>;

// Resampling filters (torchvision.transforms.InterpolationMode / PIL.Image.Resampling names).
enum class Interpolation { bilinear, bicubic };

namespace impl {

// Pillow's filters are evaluated without fused multiply-adds: an FMA rounds once where Pillow's
// build rounds twice, which changes a weight's last bit and, rarely, a pixel.
#if defined(__clang__)
#define TESSERA_IMAGE_NO_FMA_BEGIN _Pragma("clang fp contract(off)")
#define TESSERA_IMAGE_NO_FMA_ATTR
#elif defined(__GNUC__)
#define TESSERA_IMAGE_NO_FMA_BEGIN
#define TESSERA_IMAGE_NO_FMA_ATTR __attribute__((optimize("fp-contract=off")))
#else
#define TESSERA_IMAGE_NO_FMA_BEGIN
#define TESSERA_IMAGE_NO_FMA_ATTR
#endif

// Keys (1981) cubic convolution kernel with a = -0.5, written as Pillow's bicubic_filter.
TESSERA_IMAGE_NO_FMA_ATTR inline double bicubic_filter(double x) {
  TESSERA_IMAGE_NO_FMA_BEGIN
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

inline double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

// Fixed-point weight bits of Pillow's 8-bit path: 8 bits of result and 2 of headroom for the
// filter's negative lobes in a 32-bit sum.
inline constexpr int kPrecisionBits = 32 - 8 - 2;

// The taps of one pass: output pixel i reads input [first[i], first[i] + count[i]) with weights
// weights[i * ksize + k] in 22-bit fixed point.
struct Taps {
  Index ksize = 0;
  std::vector<Index> first, count;
  std::vector<std::int32_t> weights;
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for a side of in_size -> out_size.
TESSERA_IMAGE_NO_FMA_ATTR inline Taps make_taps(Index in_size, Index out_size,
                                                Interpolation filter) {
  TESSERA_IMAGE_NO_FMA_BEGIN
  const double support0 = filter == Interpolation::bicubic ? 2.0 : 1.0;
  auto kernel = filter == Interpolation::bicubic ? bicubic_filter : bilinear_filter;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support0 * filterscale;
  Taps t;
  t.ksize = static_cast<Index>(std::ceil(support)) * 2 + 1;
  t.first.resize(static_cast<std::size_t>(out_size));
  t.count.resize(static_cast<std::size_t>(out_size));
  t.weights.assign(static_cast<std::size_t>(out_size * t.ksize), 0);
  std::vector<double> w(static_cast<std::size_t>(t.ksize));
  const double ss = 1.0 / filterscale;
  for (Index i = 0; i < out_size; ++i) {
    const double center = (static_cast<double>(i) + 0.5) * scale;
    // C's (int) truncation toward zero, as in Pillow; negative starts are then clamped.
    Index lo = static_cast<Index>(center - support + 0.5);
    if (lo < 0) lo = 0;
    Index hi = static_cast<Index>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const Index n = hi - lo;
    double total = 0.0;
    for (Index k = 0; k < n; ++k) {
      w[k] = kernel((static_cast<double>(k + lo) - center + 0.5) * ss);
      total += w[k];
    }
    std::int32_t* out = &t.weights[static_cast<std::size_t>(i * t.ksize)];
    for (Index k = 0; k < n; ++k) {
      const double v = total != 0.0 ? w[k] / total : w[k];
      out[k] = static_cast<std::int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits)
                                               : 0.5 + v * (1 << kPrecisionBits));
    }
    t.first[i] = lo;
    t.count[i] = n;
  }
  return t;
}

// Pillow's clip8: a 22-bit fixed-point sum to [0, 255].
inline std::uint8_t clip8(std::int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

// planes[c * n + x] = src[x * C + c]: a row split into one int32 plane per channel. The usual
// channel counts get a loop with a constant stride, which the compiler vectorises.
template <int C>
void deinterleave_fixed(const std::uint8_t* src, Index n, std::int32_t* planes) {
  for (Index x = 0; x < n; ++x)
    for (int c = 0; c < C; ++c) planes[c * n + x] = src[x * C + c];
}
inline void deinterleave(const std::uint8_t* src, Index n, Index channels, std::int32_t* planes) {
  switch (channels) {
    case 1:
      return deinterleave_fixed<1>(src, n, planes);
    case 3:
      return deinterleave_fixed<3>(src, n, planes);
    case 4:
      return deinterleave_fixed<4>(src, n, planes);
    default:
      for (Index x = 0; x < n; ++x)
        for (Index c = 0; c < channels; ++c) planes[c * n + x] = src[x * channels + c];
  }
}

// Horizontal pass: rows [row0, row0 + rows) of `in` ([*, in_w, C]) into `out` ([rows, out_w, C]).
// Each input row is first split into one int32 plane per channel so that every output value is a
// contiguous dot product (vectorised over the taps). The sum is the same integer as Pillow's
// (two's-complement addition is associative; Pillow's headroom bits keep it from overflowing).
inline void resample_horizontal(const std::uint8_t* in, Index in_w, Index channels, Index row0,
                                Index rows, const Taps& taps, Index out_w, std::uint8_t* out) {
  parallel_for(rows, 16, [&](Index begin, Index end) {
    std::vector<std::int32_t> planes(static_cast<std::size_t>(in_w * channels));
    for (Index r = begin; r < end; ++r) {
      deinterleave(in + (row0 + r) * in_w * channels, in_w, channels, planes.data());
      std::uint8_t* dst = out + r * out_w * channels;
      for (Index i = 0; i < out_w; ++i) {
        const std::int32_t* w = &taps.weights[static_cast<std::size_t>(i * taps.ksize)];
        const Index lo = taps.first[i], n = taps.count[i];
        for (Index c = 0; c < channels; ++c) {
          const std::int32_t* p = planes.data() + c * in_w + lo;
          std::int32_t acc = 1 << (kPrecisionBits - 1);
          for (Index k = 0; k < n; ++k) acc += p[k] * w[k];
          dst[i * channels + c] = clip8(acc);
        }
      }
    }
  });
}

// Vertical pass: `in` is [*, row_len] (row_len = width * C); output row i reads input rows
// [taps.first[i] - row_shift, ... + count). Vectorised over the row.
inline void resample_vertical(const std::uint8_t* in, Index row_len, Index row_shift,
                              const Taps& taps, Index out_h, std::uint8_t* out) {
  parallel_for(out_h, 8, [&](Index begin, Index end) {
    std::vector<std::int32_t> acc(static_cast<std::size_t>(row_len));
    for (Index i = begin; i < end; ++i) {
      std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
      const std::int32_t* w = &taps.weights[static_cast<std::size_t>(i * taps.ksize)];
      const Index lo = taps.first[i] - row_shift, n = taps.count[i];
      std::int32_t* a = acc.data();
      for (Index k = 0; k < n; ++k) {
        const std::uint8_t* src = in + (lo + k) * row_len;
        const std::int32_t wk = w[k];
        for (Index j = 0; j < row_len; ++j) a[j] += static_cast<std::int32_t>(src[j]) * wk;
      }
      std::uint8_t* dst = out + i * row_len;
      for (Index j = 0; j < row_len; ++j) dst[j] = clip8(a[j]);
    }
  });
}

}  // namespace impl

// Resizes an image to [height, width, C] as Pillow's Image.resize((width, height), filter)
// does (see the top of this header): bit-identical uint8 output, for any number of channels
// (each channel is filtered on its own, as Pillow does for "L" and "RGB" images; Pillow
// premultiplies alpha for "RGBA", which this does not).
//   img: [H, W, C] uint8, H, W, C >= 1
// Throws ShapeError for an empty image; ValueError for height or width < 1.
inline Image resize(TensorMap<const std::uint8_t, 3> img, Index height, Index width,
                    Interpolation interpolation = Interpolation::bicubic) {
  constexpr std::string_view fn = "tessera::image::resize";
  const Index in_h = img.dim(0), in_w = img.dim(1), ch = img.dim(2);
  if (img.empty())
    detail::raise<ShapeError>(fn, "argument 'img' has shape ", detail::shape_string(img.shape()),
                              ", expected [height, width, channels] with every size >= 1");
  if (height < 1 || width < 1)
    detail::raise<ValueError>(fn, "arguments 'height' and 'width' are ", height, " and ", width,
                              ", expected sizes >= 1");
  Image out({height, width, ch}, uninitialized);
  const bool horizontal = width != in_w, vertical = height != in_h;
  if (!horizontal && !vertical) {
    std::copy(img.data(), img.data() + img.size(), out.data());
    return out;
  }
  const impl::Taps taps_h = horizontal ? impl::make_taps(in_w, width, interpolation) : impl::Taps{};
  const impl::Taps taps_v = vertical ? impl::make_taps(in_h, height, interpolation) : impl::Taps{};
  if (!vertical) {
    impl::resample_horizontal(img.data(), in_w, ch, 0, in_h, taps_h, width, out.data());
    return out;
  }
  if (!horizontal) {
    impl::resample_vertical(img.data(), in_w * ch, 0, taps_v, height, out.data());
    return out;
  }
  // Only the input rows the vertical pass reads go through the horizontal pass.
  const Index row0 = taps_v.first.front();
  const Index row1 = taps_v.first.back() + taps_v.count.back();
  // tmp: [row1 - row0, width, C]
  Image tmp({row1 - row0, width, ch}, uninitialized);
  impl::resample_horizontal(img.data(), in_w, ch, row0, row1 - row0, taps_h, width, tmp.data());
  impl::resample_vertical(tmp.data(), width * ch, row0, taps_v, height, out.data());
  return out;
}

inline Image resize(const Image& img, Index height, Index width,
                    Interpolation interpolation = Interpolation::bicubic) {
  return resize(cview(img), height, width, interpolation);
}

// The [height, width] that torchvision.transforms.Resize(size, max_size=max_size) gives an image
// of in_height x in_width (torchvision 0.14, functional._compute_resized_output_size): the
// shorter side becomes `size` and the longer int(size * longer / shorter) (truncated); if that
// exceeds `max_size` the longer side becomes max_size and the shorter is scaled likewise.
// Throws ValueError for sizes < 1 or max_size <= size.
inline Shape<2> shorter_side_size(Index in_height, Index in_width, Index size,
                                  std::optional<Index> max_size = std::nullopt) {
  constexpr std::string_view fn = "tessera::image::shorter_side_size";
  if (in_height < 1 || in_width < 1)
    detail::raise<ValueError>(fn, "arguments 'in_height' and 'in_width' are ", in_height, " and ",
                              in_width, ", expected sizes >= 1");
  if (size < 1) detail::raise<ValueError>(fn, "argument 'size' is ", size, ", expected >= 1");
  if (max_size && *max_size <= size)
    detail::raise<ValueError>(fn, "argument 'max_size' is ", *max_size,
                              ", expected a value greater than 'size' (", size, ")");
  const bool wide = in_width > in_height;  // torchvision: short = w if w <= h
  const Index shorter = wide ? in_height : in_width, longer = wide ? in_width : in_height;
  // Python's int(a * b / c): an exact integer product, a correctly rounded true division, then
  // truncation; doubles give the same while the product is below 2^53.
  Index new_short = size;
  Index new_long =
      static_cast<Index>(static_cast<double>(size * longer) / static_cast<double>(shorter));
  if (max_size && new_long > *max_size) {
    new_short = static_cast<Index>(static_cast<double>(*max_size * new_short) /
                                   static_cast<double>(new_long));
    new_long = *max_size;
  }
  return wide ? Shape<2>{new_short, new_long} : Shape<2>{new_long, new_short};
}

// torchvision.transforms.Resize(size, interpolation, max_size) on a PIL image: the shorter side
// becomes `size` (see shorter_side_size), then resize().
// Throws as shorter_side_size and resize (the function named is resize_shorter_side).
inline Image resize_shorter_side(TensorMap<const std::uint8_t, 3> img, Index size,
                                 Interpolation interpolation = Interpolation::bicubic,
                                 std::optional<Index> max_size = std::nullopt) {
  constexpr std::string_view fn = "tessera::image::resize_shorter_side";
  if (img.empty())
    detail::raise<ShapeError>(fn, "argument 'img' has shape ", detail::shape_string(img.shape()),
                              ", expected [height, width, channels] with every size >= 1");
  if (size < 1) detail::raise<ValueError>(fn, "argument 'size' is ", size, ", expected >= 1");
  if (max_size && *max_size <= size)
    detail::raise<ValueError>(fn, "argument 'max_size' is ", *max_size,
                              ", expected a value greater than 'size' (", size, ")");
  const Shape<2> hw = shorter_side_size(img.dim(0), img.dim(1), size, max_size);
  return resize(img, hw[0], hw[1], interpolation);
}

inline Image resize_shorter_side(const Image& img, Index size,
                                 Interpolation interpolation = Interpolation::bicubic,
                                 std::optional<Index> max_size = std::nullopt) {
  return resize_shorter_side(cview(img), size, interpolation, max_size);
}

}  // namespace tessera::image
