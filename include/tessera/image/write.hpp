// tessera::image: PNG and JPEG encoding of uint8 images, in memory or to a file.
//
// An image is a Tensor<std::uint8_t, 3> (or a view of one) of shape [height, width, channels],
// row-major (HWC, the layout of PIL, stb_image and torchvision's decode_image before its permute),
// with 1 (grey), 3 (RGB) or 4 (RGBA) channels.
//
//   tessera::image::write_png("attention.png", rgb);          // throws IoError if it cannot
//   std::vector<std::uint8_t> jpg = tessera::image::encode_jpg(rgb, /*quality=*/85);
//
// The encoders are stb_image_write's (Sean Barrett, public domain / MIT,
// https://github.com/nothings/stb): PNG with its zlib deflate and adaptive filters, baseline JPEG
// (stb keeps full-resolution chroma above quality 90 and subsamples it 2 x 2 at 90 and below). Its
// implementation lives in libstb; this header only declares it. stb_image_write keeps one
// process-wide setting that changes every image it writes: stbi_flip_vertically_on_write(). tessera
// never sets it; leave it unset, or the images come out upside down.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <stb_image_write.h>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::image {

// The largest width or height a JPEG frame header can hold (16-bit fields, ITU-T T.81 B.2.2).
inline constexpr Index kMaxJpegSide = 65535;

// stb_image_write counts the PNG's filtered bytes, height * (width * channels + 1), and the
// compressed stream (at most 9/8 of them plus headers) in int; tessera refuses images whose
// filtered bytes pass 2^30 so that neither count can overflow.
inline constexpr Index kMaxPngFilteredBytes = Index{1} << 30;

}  // namespace tessera::image

namespace tessera::image::impl {

using ImageView = TensorMap<const std::uint8_t, 3>;

// A read-only view of any [H, W, C] uint8 tensor-like value (temporaries included: the view
// lives only as long as the call that takes it).
template <TensorLike X>
ImageView image_view(const X& image) {
  static_assert(std::is_same_v<scalar_t<X>, std::uint8_t> && rank_v<X> == 3,
                "tessera::image: an image is a [height, width, channels] tensor of std::uint8_t");
  return ImageView(image.data(), image.shape());
}

// Throws ShapeError unless `image` is a non-empty [H, W, C] image with C in {1, 3, 4}.
inline void check_encodable(std::string_view fn, std::string_view arg, const ImageView& image) {
  const auto& s = image.shape();
  if (s[2] != 1 && s[2] != 3 && s[2] != 4)
    detail::raise<ShapeError>(fn, "argument '", arg, "' has shape ", detail::shape_string(s),
                              ", expected [height, width, channels] with 1, 3 or 4 channels");
  if (s[0] == 0 || s[1] == 0)
    detail::raise<ShapeError>(fn, "argument '", arg, "' has shape ", detail::shape_string(s),
                              ", expected a height and a width of at least 1");
}

inline void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<std::uint8_t>*>(context);
  const auto* p = static_cast<const std::uint8_t*>(data);
  out->insert(out->end(), p, p + size);
}

inline std::vector<std::uint8_t> encode_png(std::string_view fn, const ImageView& image) {
  check_encodable(fn, "image", image);
  const Index h = image.dim(0), w = image.dim(1), c = image.dim(2);
  // h * (w * c + 1) <= 2^30 without overflow: each factor is checked before the product.
  if (w > kMaxPngFilteredBytes / c || h > kMaxPngFilteredBytes / (w * c + 1))
    detail::raise<ShapeError>(
        fn, "argument 'image' has shape ", detail::shape_string(image.shape()),
        ", expected height * (width * channels + 1) <= ", kMaxPngFilteredBytes,
        " (stb_image_write counts PNG bytes in int)");
  std::vector<std::uint8_t> out;
  const int ok =
      stbi_write_png_to_func(&append_bytes, &out, static_cast<int>(w), static_cast<int>(h),
                             static_cast<int>(c), image.data(), static_cast<int>(w * c));
  if (!ok || out.empty())
    detail::raise<IoError>(fn, "stb_image_write could not encode a PNG of shape ",
                           detail::shape_string(image.shape()), " (out of memory?)");
  return out;
}

inline std::vector<std::uint8_t> encode_jpg(std::string_view fn, const ImageView& image,
                                            int quality) {
  check_encodable(fn, "image", image);
  if (image.dim(0) > kMaxJpegSide || image.dim(1) > kMaxJpegSide)
    detail::raise<ShapeError>(fn, "argument 'image' has shape ",
                              detail::shape_string(image.shape()),
                              ", expected a height and a width of at most ", kMaxJpegSide,
                              " (the JPEG frame header's 16-bit fields)");
  if (quality < 1 || quality > 100)
    detail::raise<ValueError>(fn, "argument 'quality' is ", quality,
                              ", expected a value in [1, 100]");
  std::vector<std::uint8_t> out;
  const int ok = stbi_write_jpg_to_func(&append_bytes, &out, static_cast<int>(image.dim(1)),
                                        static_cast<int>(image.dim(0)),
                                        static_cast<int>(image.dim(2)), image.data(), quality);
  if (!ok || out.empty())
    detail::raise<IoError>(fn, "stb_image_write could not encode a JPEG of shape ",
                           detail::shape_string(image.shape()));
  return out;
}

// Writes `bytes` to `path` (created or truncated), or throws IoError naming the path and the
// system's reason.
inline void write_file(std::string_view fn, const std::filesystem::path& path,
                       const std::vector<std::uint8_t>& bytes) {
  if (path.empty()) detail::raise<IoError>(fn, "argument 'path' is empty, expected a file name");
  struct Closer {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
  };
  errno = 0;
  std::unique_ptr<std::FILE, Closer> file(std::fopen(path.c_str(), "wb"));
  if (!file)
    detail::raise<IoError>(fn, "cannot open '", path.string(),
                           "' for writing: ", std::strerror(errno));
  if (std::fwrite(bytes.data(), 1, bytes.size(), file.get()) != bytes.size())
    detail::raise<IoError>(fn, "writing ", bytes.size(), " bytes to '", path.string(),
                           "' failed: ", std::strerror(errno));
  if (std::fclose(file.release()) != 0)
    detail::raise<IoError>(fn, "closing '", path.string(),
                           "' after writing failed: ", std::strerror(errno));
}

}  // namespace tessera::image::impl

namespace tessera::image {

// The PNG encoding of `image` ([H, W, C] uint8, C in {1, 3, 4}; a Tensor, a TensorMap or a
// temporary): lossless, every byte kept.
// Throws ShapeError for another channel count, a zero height or width, or an image past
// kMaxPngFilteredBytes; IoError if stb_image_write fails (it only does when out of memory).
template <TensorLike X>
std::vector<std::uint8_t> encode_png(const X& image) {
  return impl::encode_png("tessera::image::encode_png", impl::image_view(image));
}

// The baseline JPEG encoding of `image` ([H, W, C] uint8, C in {1, 3, 4}) at `quality` in
// [1, 100] (the IJG scale stb_image_write follows). stb_image_write always stores three
// components (YCbCr): a grey image decodes as RGB with R = G = B, and a fourth channel, alpha,
// is dropped (JPEG has none). Throws ShapeError for another channel count, a zero side or a side
// over 65535; ValueError for a quality outside [1, 100].
template <TensorLike X>
std::vector<std::uint8_t> encode_jpg(const X& image, int quality = 90) {
  return impl::encode_jpg("tessera::image::encode_jpg", impl::image_view(image), quality);
}

// Writes `image` as a PNG file at `path` (created or replaced). Errors as encode_png, and IoError
// naming the path when the file cannot be written (missing directory, no permission, full disk).
template <TensorLike X>
void write_png(const std::filesystem::path& path, const X& image) {
  constexpr std::string_view fn = "tessera::image::write_png";
  impl::write_file(fn, path, impl::encode_png(fn, impl::image_view(image)));
}

// Writes `image` as a JPEG file at `path`. Errors as encode_jpg and write_png.
template <TensorLike X>
void write_jpg(const std::filesystem::path& path, const X& image, int quality = 90) {
  constexpr std::string_view fn = "tessera::image::write_jpg";
  impl::write_file(fn, path, impl::encode_jpg(fn, impl::image_view(image), quality));
}

}  // namespace tessera::image
