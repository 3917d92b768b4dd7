// Multimodal fusion benchmarks: the four ways tessera fuses two modalities, on the same input —
// 196 video tokens (a 14 x 14 patch grid) and 100 audio tokens, embed 512, 8 heads, feed-forward
// 2048, 12 post-norm ReLU layers per stream, fusion from layer 8 — beside BM_PeakFMA in the same
// run, so every GFLOPS figure reads as a fraction of peak.
//
//   BM_EarlyFusion        one encoder over the 296 concatenated tokens (12 layers)
//   BM_LateFusion         one encoder per modality (12 layers each), pooled and averaged
//   BM_CoAttentionFusion  per-modality layers 0-7; layers 8-11 are a CrossModalAttention block
//                         (each stream attends to the other) followed by each stream's layer
//   BM_BottleneckFusion   MBT: per-modality layers 0-7; layers 8-11 on [tokens ; 4 bottlenecks]
//
// FLOP counts are the products only, as the modules' forward_flops count them
// (fusion::encoder_layer_flops: a layer on L tokens 2 L E 3E for q, k, v + 4 L^2 E for scores and
// weighted values + 2 L E E output projection + 4 L E F feed-forward); a cross-attention block
// 2 Lq E E + 2 Lk E 2E + 4 Lq Lk E + 2 Lq E E per direction. Single thread, float, batch 1.
#include <benchmark/benchmark.h>

#include <tessera/fusion/bottleneck_fusion.hpp>
#include <tessera/fusion/cross_modal_attention.hpp>
#include <tessera/fusion/early_fusion.hpp>
#include <tessera/fusion/late_fusion.hpp>
#include <vector>

#include "bench_common.hpp"

namespace {

using tessera::Index;
using tessera::Tensor;
using tessera_bench::random_tensor;
using tessera_bench::set_gflops;

constexpr Index kEmbed = 512;
constexpr Index kHeads = 8;
constexpr Index kFeedForward = 2048;
constexpr Index kLayers = 12;
constexpr Index kFusionLayer = 8;
constexpr Index kVideoTokens = 196;
constexpr Index kAudioTokens = 100;
constexpr Index kBottlenecks = 4;

const tessera::nn::TransformerLayerOptions kLayer{
    .d_model = kEmbed, .nhead = kHeads, .dim_feedforward = kFeedForward, .seed = 1};
const tessera::nn::TransformerEncoderOptions kEncoder{.layer = kLayer, .num_layers = kLayers};

const std::vector<Index> kLengths = {kVideoTokens, kAudioTokens};

double layer_flops(Index L) { return tessera::fusion::encoder_layer_flops(L, kLayer); }

double cross_attention_flops(double Lq, double Lk) {
  constexpr double E = kEmbed;
  return 2 * Lq * E * E + 2 * Lk * E * 2 * E + 4 * Lq * Lk * E + 2 * Lq * E * E;
}

struct TwoModalities {
  Tensor<float, 3> video = random_tensor<float, 3>({1, kVideoTokens, kEmbed}, 1);
  Tensor<float, 3> audio = random_tensor<float, 3>({1, kAudioTokens, kEmbed}, 2);
};

void BM_EarlyFusion(benchmark::State& state) {
  tessera_bench::single_thread();
  const tessera::fusion::EarlyFusion<float> early({.encoder = kEncoder});
  const TwoModalities in;
  for (auto _ : state) {
    auto out = early.forward({in.video, in.audio});
    benchmark::DoNotOptimize(out.data());
  }
  set_gflops(state, early.forward_flops(kLengths));
}

void BM_LateFusion(benchmark::State& state) {
  tessera_bench::single_thread();
  const tessera::fusion::LateFusion<float> late({.encoder = kEncoder});
  const TwoModalities in;
  for (auto _ : state) {
    auto out = late.forward({in.video, in.audio});
    benchmark::DoNotOptimize(out.fused.data());
  }
  set_gflops(state, late.forward_flops(kLengths));
}

// ViLBERT-style: the co-attention block, then each stream's own transformer layer.
void BM_CoAttentionFusion(benchmark::State& state) {
  tessera_bench::single_thread();
  const tessera::nn::TransformerEncoder<float> video_encoder(kEncoder), audio_encoder(kEncoder);
  std::vector<tessera::fusion::CrossModalAttention<float>> co;
  for (Index l = kFusionLayer; l < kLayers; ++l)
    co.emplace_back(tessera::fusion::CrossModalAttentionOptions{
        .embed_dim = kEmbed, .num_heads = kHeads, .seed = static_cast<std::uint64_t>(l)});
  const TwoModalities in;
  for (auto _ : state) {
    Tensor<float, 3> v(in.video), a(in.audio);
    for (Index l = 0; l < kLayers; ++l) {
      if (l >= kFusionLayer) {
        auto fused = co[l - kFusionLayer].forward(v, a);
        v = std::move(fused.a);
        a = std::move(fused.b);
      }
      v = video_encoder.layers[l].forward(v);
      a = audio_encoder.layers[l].forward(a);
    }
    benchmark::DoNotOptimize(v.data());
    benchmark::DoNotOptimize(a.data());
  }
  set_gflops(state,
             kLayers * (layer_flops(kVideoTokens) + layer_flops(kAudioTokens)) +
                 (kLayers - kFusionLayer) * (cross_attention_flops(kVideoTokens, kAudioTokens) +
                                             cross_attention_flops(kAudioTokens, kVideoTokens)));
}

void BM_BottleneckFusion(benchmark::State& state) {
  tessera_bench::single_thread();
  const tessera::fusion::BottleneckFusion<float> mbt(
      {.encoder = kEncoder, .fusion_layer = kFusionLayer, .n_bottlenecks = kBottlenecks});
  const TwoModalities in;
  for (auto _ : state) {
    auto out = mbt.forward({in.video, in.audio});
    benchmark::DoNotOptimize(out.tokens[0].data());
  }
  set_gflops(state, mbt.forward_flops(kLengths));
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_EarlyFusion)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LateFusion)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CoAttentionFusion)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BottleneckFusion)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
