// tessera::image: the steps after decoding, as torchvision.transforms and open_clip compose them
// for evaluation (open_clip/transform.py, image_transform(is_train=False)):
//
//   resize shorter side (bicubic) -> centre crop -> RGB -> to tensor (/255, CHW) -> normalise
//
//   auto x = tessera::image::preprocess<float>(img);                    // [3, 224, 224], CLIP
//   auto s = tessera::image::preprocess<float>(img, tessera::image::siglip_options(256));
//   auto b = tessera::image::preprocess_batch<float>(images);            // [B, 3, 224, 224]
//
// Each step is a function of its own (center_crop, to_rgb, to_tensor, normalize, stack) and is
// tested against torchvision 0.14 on PIL images; the result feeds nn::PatchEmbedding::forward.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/image/resize.hpp"

namespace tessera::image {

// Per-channel mean and standard deviation of torchvision.transforms.Normalize.
struct Normalization {
  std::array<double, 3> mean;
  std::array<double, 3> std;
};

// OpenAI CLIP's (open_clip OPENAI_DATASET_MEAN / OPENAI_DATASET_STD).
inline constexpr Normalization kClipNormalization{{0.48145466, 0.4578275, 0.40821073},
                                                  {0.26862954, 0.26130258, 0.27577711}};
// ImageNet's (open_clip IMAGENET_MEAN / IMAGENET_STD, torchvision's model zoo).
inline constexpr Normalization kImageNetNormalization{{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}};
// SigLIP's and Inception's: [0, 1] -> [-1, 1] (open_clip INCEPTION_MEAN / INCEPTION_STD).
inline constexpr Normalization kSigLipNormalization{{0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}};

// How the image reaches image_size x image_size (open_clip's resize_mode).
enum class ResizeMode {
  shortest,  // shorter side to image_size keeping the aspect ratio, then centre crop
  squash,    // both sides to image_size, ignoring the aspect ratio (SigLIP)
};

// Options of preprocess(): open_clip's image_transform(image_size, is_train=False, mean, std,
// resize_mode, interpolation). The defaults are OpenAI CLIP's ViT-B at 224.
struct PreprocessOptions {
  Index image_size = 224;
  ResizeMode resize_mode = ResizeMode::shortest;
  Interpolation interpolation = Interpolation::bicubic;
  Normalization normalization = kClipNormalization;
};

// Presets.
inline PreprocessOptions clip_options(Index image_size = 224) {
  return {.image_size = image_size, .normalization = kClipNormalization};
}
inline PreprocessOptions imagenet_options(Index image_size = 224) {
  return {.image_size = image_size, .normalization = kImageNetNormalization};
}
inline PreprocessOptions siglip_options(Index image_size = 224) {
  return {.image_size = image_size,
          .resize_mode = ResizeMode::squash,
          .normalization = kSigLipNormalization};
}

namespace impl {

inline void check_image(std::string_view fn, const TensorMap<const std::uint8_t, 3>& img) {
  if (img.empty())
    detail::raise<ShapeError>(fn, "argument 'img' has shape ", detail::shape_string(img.shape()),
                              ", expected [height, width, channels] with every size >= 1");
}

// Python's round(x / 2) for an integer x >= 0: halves go to the even neighbour.
inline Index half_round_even(Index x) {
  const Index q = x / 2;
  return (x % 2 != 0 && q % 2 != 0) ? q + 1 : q;
}

}  // namespace impl

// torchvision.transforms.functional.center_crop (0.14) on a PIL image: the crop's top-left corner
// is (round((H - height) / 2), round((W - width) / 2)) with Python's round (half to even); when
// the crop is larger than the image, the image is first padded with zeros, floor(d / 2) before
// and ceil(d / 2) after on each such side.
//   img: [H, W, C] uint8 -> [height, width, C]
// Throws ShapeError for an empty image; ValueError for height or width < 1.
inline Image center_crop(TensorMap<const std::uint8_t, 3> img, Index height, Index width) {
  constexpr std::string_view fn = "tessera::image::center_crop";
  impl::check_image(fn, img);
  if (height < 1 || width < 1)
    detail::raise<ValueError>(fn, "arguments 'height' and 'width' are ", height, " and ", width,
                              ", expected sizes >= 1");
  const Index in_h = img.dim(0), in_w = img.dim(1), ch = img.dim(2);
  const Index pad_top = height > in_h ? (height - in_h) / 2 : 0;
  const Index pad_left = width > in_w ? (width - in_w) / 2 : 0;
  const Index padded_h = std::max(height, in_h), padded_w = std::max(width, in_w);
  // Offsets of the crop in the padded image, then in the original (may be negative).
  const Index top = impl::half_round_even(padded_h - height) - pad_top;
  const Index left = impl::half_round_even(padded_w - width) - pad_left;
  Image out(Shape<3>{height, width, ch});  // zero-filled: the padding
  for (Index y = 0; y < height; ++y) {
    const Index sy = top + y;
    if (sy < 0 || sy >= in_h) continue;
    const Index x0 = std::max<Index>(0, -left), x1 = std::min(width, in_w - left);
    if (x1 <= x0) continue;
    const std::uint8_t* src = img.data() + (sy * in_w + left + x0) * ch;
    std::copy(src, src + (x1 - x0) * ch, out.data() + (y * width + x0) * ch);
  }
  return out;
}
inline Image center_crop(const Image& img, Index height, Index width) {
  return center_crop(cview(img), height, width);
}

// PIL's Image.convert("RGB") of an "L" (1 channel), "LA" (2), "RGB" (3) or "RGBA" (4) image:
// grey is replicated, alpha dropped.
// Throws ShapeError for an empty image or another channel count.
inline Image to_rgb(TensorMap<const std::uint8_t, 3> img) {
  constexpr std::string_view fn = "tessera::image::to_rgb";
  impl::check_image(fn, img);
  const Index ch = img.dim(2), n = img.dim(0) * img.dim(1);
  if (ch > 4)
    detail::raise<ShapeError>(fn, "argument 'img' has shape ", detail::shape_string(img.shape()),
                              ", expected 1, 2, 3 or 4 channels");
  Image out({img.dim(0), img.dim(1), 3}, uninitialized);
  const std::uint8_t* s = img.data();
  std::uint8_t* d = out.data();
  for (Index i = 0; i < n; ++i, s += ch, d += 3) {
    const bool grey = ch <= 2;
    d[0] = s[0];
    d[1] = grey ? s[0] : s[1];
    d[2] = grey ? s[0] : s[2];
  }
  return out;
}
inline Image to_rgb(const Image& img) { return to_rgb(cview(img)); }

// torchvision.transforms.ToTensor on a PIL image: [H, W, C] uint8 -> [C, H, W] in [0, 1], each
// value converted to T and divided by 255 in T (torchvision: img.to(float32).div(255)).
// Throws ShapeError for an empty image.
template <class T>
Tensor<T, 3> to_tensor(TensorMap<const std::uint8_t, 3> img) {
  static_assert(std::is_floating_point_v<T>, "to_tensor makes a floating-point tensor");
  impl::check_image("tessera::image::to_tensor", img);
  const Index h = img.dim(0), w = img.dim(1), ch = img.dim(2), hw = h * w;
  Tensor<T, 3> out({ch, h, w}, uninitialized);
  const std::uint8_t* s = img.data();
  T* d = out.data();
  // out: [C, H*W] from in: [H*W, C]
  for (Index i = 0; i < hw; ++i)
    for (Index c = 0; c < ch; ++c) d[c * hw + i] = static_cast<T>(s[i * ch + c]) / T(255);
  return out;
}
template <class T>
Tensor<T, 3> to_tensor(const Image& img) {
  return to_tensor<T>(cview(img));
}

// torchvision.transforms.Normalize: out[c] = (x[c] - mean[c]) / std[c], with mean and std
// converted to T first (torchvision makes them tensors of x's dtype), in place.
//   x: [C, H, W]; mean, std: C values each
// Throws ShapeError when mean or std does not have C values; ValueError for a std that is zero
// in T or a mean or std that is not finite.
template <class T>
void normalize_(TensorMap<T, 3> x, std::span<const double> mean, std::span<const double> std) {
  constexpr std::string_view fn = "tessera::image::normalize";
  const Index ch = x.dim(0), hw = x.dim(1) * x.dim(2);
  if (static_cast<Index>(mean.size()) != ch || static_cast<Index>(std.size()) != ch)
    detail::raise<ShapeError>(fn, "arguments 'mean' and 'std' have ", mean.size(), " and ",
                              std.size(), " values, expected one per channel of 'tensor' (shape ",
                              detail::shape_string(x.shape()), ")");
  for (Index c = 0; c < ch; ++c) {
    detail::check_finite_in<T>(fn, "mean", mean[c]);
    detail::check_finite_in<T>(fn, "std", std[c]);
    if (static_cast<T>(std[c]) == T(0))
      detail::raise<ValueError>(fn, "argument 'std' has ", std[c], " for channel ", c,
                                ", which is zero in the scalar type computed in; expected a "
                                "non-zero value");
  }
  for (Index c = 0; c < ch; ++c) {
    const T m = static_cast<T>(mean[c]), s = static_cast<T>(std[c]);
    T* p = x.data() + c * hw;
    for (Index i = 0; i < hw; ++i) p[i] = (p[i] - m) / s;
  }
}

// Normalize, returning a new tensor; see normalize_.
template <class T>
Tensor<T, 3> normalize(const Tensor<T, 3>& x, std::span<const double> mean,
                       std::span<const double> std) {
  Tensor<T, 3> out(x);
  normalize_<T>(out, mean, std);
  return out;
}
template <class T>
Tensor<T, 3> normalize(const Tensor<T, 3>& x, const Normalization& n) {
  return normalize<T>(x, n.mean, n.std);
}

// Stacks same-shaped [C, H, W] tensors into a batch [B, C, H, W] (torch.stack), the input of
// nn::PatchEmbedding::forward.
// Throws ValueError for no tensors; ShapeError when shapes differ (naming the first that does).
template <class T>
Tensor<T, 4> stack(std::span<const Tensor<T, 3>> images) {
  constexpr std::string_view fn = "tessera::image::stack";
  if (images.empty())
    detail::raise<ValueError>(fn, "argument 'images' is empty, expected at least one tensor");
  const Shape<3> s = images[0].shape();
  for (std::size_t i = 1; i < images.size(); ++i)
    if (images[i].shape() != s)
      detail::raise<ShapeError>(fn, "argument 'images' element ", i, " has shape ",
                                detail::shape_string(images[i].shape()), ", expected ",
                                detail::shape_string(s), " (the shape of element 0)");
  const auto b = static_cast<Index>(images.size());
  Tensor<T, 4> out({b, s[0], s[1], s[2]}, uninitialized);
  const Index n = s[0] * s[1] * s[2];
  for (Index i = 0; i < b; ++i)
    std::copy(images[i].data(), images[i].data() + n, out.data() + i * n);
  return out;
}

// open_clip's evaluation transform (image_transform(is_train=False)) on one image:
//   shortest: Resize(image_size, interpolation) -> CenterCrop(image_size)
//   squash:   Resize((image_size, image_size), interpolation)
// then RGB (to_rgb), ToTensor (to_tensor<T>) and Normalize(mean, std).
//   img: [H, W, C] uint8 with C in 1..4 -> [3, image_size, image_size]
// Grey images give exactly PIL's result (channels are resized independently, so RGB conversion
// commutes with resizing); for 4 channels alpha is dropped after resizing un-premultiplied
// colour, where PIL resizes an "RGBA" image with premultiplied alpha (identical for opaque
// images).
// Throws ShapeError for an empty image or more than 4 channels; ValueError for image_size < 1.
template <class T>
Tensor<T, 3> preprocess(TensorMap<const std::uint8_t, 3> img, const PreprocessOptions& opts = {}) {
  constexpr std::string_view fn = "tessera::image::preprocess";
  impl::check_image(fn, img);
  if (img.dim(2) > 4)
    detail::raise<ShapeError>(fn, "argument 'img' has shape ", detail::shape_string(img.shape()),
                              ", expected 1, 2, 3 or 4 channels");
  const Index s = opts.image_size;
  if (s < 1) detail::raise<ValueError>(fn, "option 'image_size' is ", s, ", expected >= 1");
  Image sized = opts.resize_mode == ResizeMode::squash
                    ? resize(img, s, s, opts.interpolation)
                    : center_crop(resize_shorter_side(img, s, opts.interpolation), s, s);
  if (sized.dim(2) != 3) sized = to_rgb(sized);
  Tensor<T, 3> x = to_tensor<T>(sized);
  normalize_<T>(x, opts.normalization.mean, opts.normalization.std);
  return x;
}
template <class T>
Tensor<T, 3> preprocess(const Image& img, const PreprocessOptions& opts = {}) {
  return preprocess<T>(cview(img), opts);
}

// preprocess() on each image, stacked into [B, 3, image_size, image_size].
// Throws ValueError for no images, and as preprocess.
template <class T>
Tensor<T, 4> preprocess_batch(std::span<const Image> images, const PreprocessOptions& opts = {}) {
  if (images.empty())
    detail::raise<ValueError>("tessera::image::preprocess_batch",
                              "argument 'images' is empty, expected at least one image");
  std::vector<Tensor<T, 3>> each;
  each.reserve(images.size());
  for (const Image& img : images) each.push_back(preprocess<T>(img, opts));
  return stack<T>(each);
}

}  // namespace tessera::image
