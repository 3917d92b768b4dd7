// tessera benchmarks: decoding and preprocessing a 12-megapixel photograph for CLIP,
// single-threaded.
//
// At start-up a 4000 x 3000 RGB image is built in memory (a synthetic scene of gradients, edges
// and discs, upscaled bicubically from 400 x 300, with deterministic per-pixel noise so that the
// JPEG carries photograph-like high frequencies) and encoded as a quality-90 JPEG with
// stb_image_write's stbi_write_jpg_to_func. Then:
//   BM_DecodeJpeg12MP         decode_image: JPEG -> [3000, 4000, 3] uint8 (stb_image)
//   BM_ResizeShorter224       resize_shorter_side(224, bicubic): -> [224, 298, 3] (Pillow's
//                             separable antialiased bicubic, 13.4x reduction)
//   BM_ResizeShorter224_Naive the same result from a plain loop in Pillow's own order (channels
//                             interleaved, one scalar sum per value): the reference
//   BM_Preprocess224          preprocess<float>(clip_options()): resize, crop, to tensor, normalise
//   BM_DecodeAndPreprocess    the whole path from JPEG bytes to the [3, 224, 224] float tensor
// Rates: items/s = input pixels (12e6 per iteration), "GB/s" = input bytes read (the JPEG for
// decoding, the 36 MB uint8 image otherwise).
//
//   ./bench_image --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <stb_image_write.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <tessera/image/decode.hpp>
#include <tessera/image/resize.hpp>
#include <tessera/image/transforms.hpp>
#include <vector>

#include "bench_common.hpp"

namespace {

using tessera::Index;
using tessera::image::Image;
using namespace tessera_bench;

constexpr Index kHeight = 3000, kWidth = 4000;

Image synthetic_photo() {
  Image small(400 / 4 * 3, 400, 3);  // [300, 400, 3]
  for (Index y = 0; y < 300; ++y)
    for (Index x = 0; x < 400; ++x) {
      const double dx = static_cast<double>(x - 260), dy = static_cast<double>(y - 120);
      const bool disc = dx * dx + dy * dy < 70.0 * 70.0;
      const bool band = (x / 37 + y / 23) % 5 == 0;
      small(y, x, 0) = static_cast<std::uint8_t>(disc ? 230 : (x * 255) / 400);
      small(y, x, 1) = static_cast<std::uint8_t>(band ? 20 : (y * 255) / 300);
      small(y, x, 2) =
          static_cast<std::uint8_t>(128 + 100 * std::sin(0.05 * static_cast<double>(x + 2 * y)));
    }
  Image big =
      tessera::image::resize(small, kHeight, kWidth, tessera::image::Interpolation::bicubic);
  std::uint32_t state = 12345;
  for (Index i = 0; i < big.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    const int v = big.data()[i] + static_cast<int>((state >> 24) % 17) - 8;
    big.data()[i] = static_cast<std::uint8_t>(std::clamp(v, 0, 255));
  }
  return big;
}

const std::vector<std::uint8_t>& jpeg_12mp() {
  static const std::vector<std::uint8_t> bytes = [] {
    const Image img = synthetic_photo();
    std::vector<std::uint8_t> out;
    auto sink = [](void* ctx, void* data, int size) {
      auto* v = static_cast<std::vector<std::uint8_t>*>(ctx);
      const auto* p = static_cast<const std::uint8_t*>(data);
      v->insert(v->end(), p, p + size);
    };
    if (!stbi_write_jpg_to_func(sink, &out, static_cast<int>(kWidth), static_cast<int>(kHeight), 3,
                                img.data(), /*quality=*/90))
      throw std::runtime_error("bench_image: stbi_write_jpg_to_func failed");
    // bench/compare_inputs.py times PIL on these very bytes.
    if (const char* path = std::getenv("TESSERA_BENCH_JPEG_OUT"))
      if (std::FILE* f = std::fopen(path, "wb")) {
        std::fwrite(out.data(), 1, out.size(), f);
        std::fclose(f);
      }
    return out;
  }();
  return bytes;
}

const Image& decoded_12mp() {
  static const Image img = tessera::image::decode_image(jpeg_12mp());
  return img;
}

void set_rates(benchmark::State& state, double bytes) {
  set_traffic(state, static_cast<double>(kHeight * kWidth), bytes);
}

void BM_DecodeJpeg12MP(benchmark::State& state) {
  single_thread();
  const auto& jpeg = jpeg_12mp();
  for (auto _ : state) {
    Image img = tessera::image::decode_image(jpeg);
    benchmark::DoNotOptimize(img.data());
  }
  set_rates(state, static_cast<double>(jpeg.size()));
  state.counters["jpeg_MB"] = static_cast<double>(jpeg.size()) * 1e-6;
}

void BM_ResizeShorter224(benchmark::State& state) {
  single_thread();
  const Image& img = decoded_12mp();
  for (auto _ : state) {
    Image out = tessera::image::resize_shorter_side(img, 224);
    benchmark::DoNotOptimize(out.data());
  }
  set_rates(state, static_cast<double>(img.size()));
}

// Pillow's loop order on interleaved channels: for each output value, one scalar fixed-point
// sum over its taps, horizontal pass over the rows the vertical pass reads, then vertical.
Image resize_naive(const Image& img, Index out_h, Index out_w) {
  namespace impl = tessera::image::impl;
  const Index in_h = img.dim(0), in_w = img.dim(1), ch = img.dim(2);
  const auto th = impl::make_taps(in_w, out_w, tessera::image::Interpolation::bicubic);
  const auto tv = impl::make_taps(in_h, out_h, tessera::image::Interpolation::bicubic);
  const Index row0 = tv.first.front(), row1 = tv.first.back() + tv.count.back();
  Image tmp(tessera::Shape<3>{row1 - row0, out_w, ch}, tessera::uninitialized);
  for (Index y = row0; y < row1; ++y)
    for (Index x = 0; x < out_w; ++x)
      for (Index c = 0; c < ch; ++c) {
        std::int32_t acc = 1 << (impl::kPrecisionBits - 1);
        for (Index k = 0; k < th.count[x]; ++k)
          acc +=
              img(y, th.first[x] + k, c) * th.weights[static_cast<std::size_t>(x * th.ksize + k)];
        tmp(y - row0, x, c) = impl::clip8(acc);
      }
  Image out(tessera::Shape<3>{out_h, out_w, ch}, tessera::uninitialized);
  for (Index y = 0; y < out_h; ++y)
    for (Index x = 0; x < out_w; ++x)
      for (Index c = 0; c < ch; ++c) {
        std::int32_t acc = 1 << (impl::kPrecisionBits - 1);
        for (Index k = 0; k < tv.count[y]; ++k)
          acc += tmp(tv.first[y] - row0 + k, x, c) *
                 tv.weights[static_cast<std::size_t>(y * tv.ksize + k)];
        out(y, x, c) = impl::clip8(acc);
      }
  return out;
}

void BM_ResizeShorter224_Naive(benchmark::State& state) {
  single_thread();
  const Image& img = decoded_12mp();
  const auto hw = tessera::image::shorter_side_size(kHeight, kWidth, 224);
  {
    const Image a = resize_naive(img, hw[0], hw[1]);
    const Image b = tessera::image::resize_shorter_side(img, 224);
    if (std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size())) != 0)
      state.SkipWithError("the naive reference and resize_shorter_side disagree");
  }
  for (auto _ : state) {
    Image out = resize_naive(img, hw[0], hw[1]);
    benchmark::DoNotOptimize(out.data());
  }
  set_rates(state, static_cast<double>(img.size()));
}

void BM_Preprocess224(benchmark::State& state) {
  single_thread();
  const Image& img = decoded_12mp();
  const auto opts = tessera::image::clip_options(224);
  for (auto _ : state) {
    auto x = tessera::image::preprocess<float>(img, opts);
    benchmark::DoNotOptimize(x.data());
  }
  set_rates(state, static_cast<double>(img.size()));
}

void BM_DecodeAndPreprocess(benchmark::State& state) {
  single_thread();
  const auto& jpeg = jpeg_12mp();
  const auto opts = tessera::image::clip_options(224);
  for (auto _ : state) {
    auto x = tessera::image::preprocess<float>(tessera::image::decode_image(jpeg), opts);
    benchmark::DoNotOptimize(x.data());
  }
  set_rates(state, static_cast<double>(jpeg.size()));
}

BENCHMARK(BM_DecodeJpeg12MP)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ResizeShorter224)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ResizeShorter224_Naive)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Preprocess224)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeAndPreprocess)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
