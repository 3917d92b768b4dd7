// tessera: a ViT's learned position embeddings resampled to another patch grid, so a checkpoint
// trained at one image size runs at another, as open_clip's resize_pos_embed and timm's
// resample_abs_pos_embed do:
//
//   auto clip336 = tessera::models::with_image_size(clip, 336);   // ViT-B/32: 7 x 7 -> 10 x 10
//
// The grid rows [gh * gw, E] are an E-channel gh x gw image, resized like
// torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=True): Keys'
// cubic with a = -0.5, whose support grows with the reduction factor when the grid shrinks; taps
// outside the grid are dropped and the weights renormalised; width first, then height, in double.
// Rows before the grid (the class token) are kept as they are.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/models/clip.hpp"
#include "tessera/models/vision_transformer.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::detail {

// Keys' cubic convolution kernel, a = -0.5 (Keys 1981; PyTorch's antialiased bicubic).
inline double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// Row-stochastic weights of a 1-D antialiased bicubic resize from `in` to `out` samples:
// weights[i] = (first input index, taps).
inline std::vector<std::pair<Index, std::vector<double>>> resize_weights(Index in, Index out) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  const double support = 2.0 * std::max(scale, 1.0);
  const double inv = 1.0 / std::max(scale, 1.0);
  std::vector<std::pair<Index, std::vector<double>>> w(static_cast<std::size_t>(out));
  for (Index i = 0; i < out; ++i) {
    const double center = (static_cast<double>(i) + 0.5) * scale;
    const Index lo = std::max<Index>(static_cast<Index>(center - support + 0.5), 0);
    const Index hi = std::min<Index>(static_cast<Index>(center + support + 0.5), in);
    std::vector<double> taps;
    double total = 0;
    for (Index j = lo; j < hi; ++j) {
      const double v = keys_cubic((static_cast<double>(j) - center + 0.5) * inv);
      taps.push_back(v);
      total += v;
    }
    for (double& v : taps) v = total != 0 ? v / total : 0;
    w[static_cast<std::size_t>(i)] = {lo, std::move(taps)};
  }
  return w;
}

}  // namespace tessera::detail

namespace tessera::models {

// pos: [prefix + gh * gw, E] (prefix rows first: the class token) -> [prefix + nh * nw, E],
// the grid resampled to nh x nw. Throws ShapeError unless pos has prefix + gh * gw rows,
// ValueError for a grid side < 1.
template <TensorLike X>
Tensor<scalar_t<X>, 2> resize_position_embedding(const X& pos, Index prefix, Index gh, Index gw,
                                                 Index nh, Index nw) {
  using T = scalar_t<X>;
  constexpr std::string_view fn = "tessera::models::resize_position_embedding";
  static_assert(rank_v<X> == 2, "position embeddings are [tokens, width]");
  const auto p = cview(pos);
  if (gh < 1 || gw < 1 || nh < 1 || nw < 1 || prefix < 0)
    detail::raise<ValueError>(fn, "grids ", gh, " x ", gw, " -> ", nh, " x ", nw, " and prefix ",
                              prefix, ", expected sides >= 1 and prefix >= 0");
  const Index E = p.dim(1);
  const Index rows = prefix + detail::checked_mul(gh, gw, fn, "the grid");
  if (p.dim(0) != rows)
    detail::raise<ShapeError>(fn, "argument 'pos' has shape ", detail::shape_string(p.shape()),
                              ", expected [", rows, ", width] (", prefix, " + ", gh, " x ", gw,
                              " rows)");
  const Index new_rows = prefix + detail::checked_mul(nh, nw, fn, "the new grid");
  Tensor<T, 2> out(Shape<2>{new_rows, E});
  for (Index r = 0; r < prefix; ++r) out[r].as_vector() = p[r].as_vector();
  const auto wx = detail::resize_weights(gw, nw), wy = detail::resize_weights(gh, nh);
  // tmp: [gh, nw, E], the width resampled, in double
  std::vector<double> tmp(static_cast<std::size_t>(gh * nw * E), 0.0);
  for (Index y = 0; y < gh; ++y)
    for (Index x = 0; x < nw; ++x) {
      const auto& [lo, taps] = wx[static_cast<std::size_t>(x)];
      double* dst = tmp.data() + (y * nw + x) * E;
      for (std::size_t t = 0; t < taps.size(); ++t) {
        const T* src = p.data() + (prefix + y * gw + lo + static_cast<Index>(t)) * E;
        for (Index e = 0; e < E; ++e) dst[e] += taps[t] * static_cast<double>(src[e]);
      }
    }
  for (Index y = 0; y < nh; ++y) {
    const auto& [lo, taps] = wy[static_cast<std::size_t>(y)];
    for (Index x = 0; x < nw; ++x) {
      T* dst = out.data() + (prefix + y * nw + x) * E;
      for (Index e = 0; e < E; ++e) {
        double acc = 0;
        for (std::size_t t = 0; t < taps.size(); ++t)
          acc += taps[t] *
                 tmp[static_cast<std::size_t>(((lo + static_cast<Index>(t)) * nw + x) * E + e)];
        dst[e] = static_cast<T>(acc);
      }
    }
  }
  return out;
}

// The state dict of a model whose position embeddings `key` ([prefix + g * g, E], square grid)
// are resampled from image_size to new_size for patches of `patch`; throws ValueError, naming
// `fn`, for a new size that is not a positive multiple of the patch size.
template <class T, class Model>
io::StateDict resized_state_dict(std::string_view fn, const Model& model, const std::string& key,
                                 Index image_size, Index patch, Index new_size) {
  if (new_size <= 0 || new_size % patch != 0)
    detail::raise<ValueError>(fn, "image_size is ", new_size,
                              ", expected a positive multiple of the patch size ", patch);
  io::StateDict sd = model.state_dict();
  const auto pos = sd.get<T, 2>(key);
  const Index grid = image_size / patch, new_grid = new_size / patch;
  const Index prefix = pos.dim(0) - grid * grid;
  sd.erase(key);
  sd.insert(key, resize_position_embedding(pos, prefix, grid, grid, new_grid, new_grid));
  return sd;
}

// `vit` for images of image_size x image_size (a positive multiple of its patch size): the same
// weights, the position embeddings resampled to the new grid.
template <class T>
VisionTransformer<T> with_image_size(const VisionTransformer<T>& vit, Index image_size) {
  VisionTransformerOptions o = vit.options();
  io::StateDict sd = resized_state_dict<T>("tessera::models::with_image_size", vit,
                                           "patch_embed.positional_embedding", o.image_size,
                                           o.patch_size, image_size);
  o.image_size = image_size;
  VisionTransformer<T> out = [&] {
    nn::SkipInit skip;
    return VisionTransformer<T>(o);
  }();
  out.load_state_dict(std::move(sd));
  return out;
}

// `clip` with its image tower for images of image_size x image_size (see above).
template <class T>
CLIP<T> with_image_size(const CLIP<T>& clip, Index image_size) {
  CLIPOptions o = clip.options();
  io::StateDict sd = resized_state_dict<T>("tessera::models::with_image_size", clip,
                                           "visual.patch_embed.positional_embedding",
                                           o.vision.image_size, o.vision.patch_size, image_size);
  o.vision.image_size = image_size;
  CLIP<T> out = [&] {
    nn::SkipInit skip;
    return CLIP<T>(o);
  }();
  out.load_state_dict(std::move(sd));
  return out;
}

}  // namespace tessera::models
