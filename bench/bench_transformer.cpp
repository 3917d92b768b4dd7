// TransformerEncoderLayer benchmarks (E = 512, 8 heads, F = 2048, post-norm, ReLU): tessera's
// layer (its products on tessera's GEMM with fused epilogues, its attention fused), the same with
// the weights prepacked and on two threads, beside the plain reference (Eigen's products,
// materialised attention, separate passes for bias, ReLU, residuals and norms), with BM_PeakFMA in
// the same run.
//
// FLOPs per layer and batch element: the products only, 2 L E 3E (QKV) + 4 L^2 E (attention) +
// 2 L E E (output projection) + 2 * 2 L E F (feed-forward).
#include <benchmark/benchmark.h>

#include <cmath>
#include <tessera/tessera.hpp>

#include "bench_common.hpp"
#include "bench_reference.hpp"

namespace {

using tessera::Index;
using tessera_bench::random_tensor;
using tessera_bench::reference_head;
using tessera_bench::RowMatrix;
using tessera_bench::set_gflops;
using tessera_bench::StridedMap;
using tessera_bench::StridedOut;

using tessera_bench::kEmbed;
using tessera_bench::kHeadDim;
using tessera_bench::kHeads;
using tessera_bench::mha_flops;
constexpr Index kFeedForward = 2048;


// ---- TransformerEncoderLayer (E = 512, 8 heads, F = 2048), post-norm, ReLU ----

double layer_flops(Index B, Index L) {
  return B * (mha_flops(L) + 2.0 * 2.0 * L * kEmbed * kFeedForward);
}

void layer_bench(benchmark::State& state, bool prepack, int threads) {
  tessera::set_num_threads(threads);
  const Index B = state.range(0), L = state.range(1);
  tessera::nn::TransformerEncoderLayer<float> layer(
      {.d_model = kEmbed, .nhead = kHeads, .dim_feedforward = kFeedForward, .seed = 1});
  if (prepack) layer.prepack();
  const auto x = random_tensor<float, 3>({B, L, kEmbed}, 2);
  tessera_bench::warm_up([&] { return layer.forward(x); });
  for (auto _ : state) {
    auto y = layer.forward(x);
    benchmark::DoNotOptimize(y.data());
  }
  tessera::set_num_threads(1);
  set_gflops(state, layer_flops(B, L));
}

void BM_TransformerEncoderLayer(benchmark::State& state) { layer_bench(state, false, 1); }
// Weights packed once beforehand (TransformerEncoderLayer::prepack), as for inference.
void BM_TransformerEncoderLayer_Prepacked(benchmark::State& state) { layer_bench(state, true, 1); }
void BM_TransformerEncoderLayer_2Threads(benchmark::State& state) { layer_bench(state, true, 2); }

// The plain reference layer: Eigen products, materialised attention, Eigen expressions for the
// residuals, layer norms and ReLU.
void BM_TransformerEncoderLayer_Reference(benchmark::State& state) {
  tessera_bench::single_thread();
  const Index B = state.range(0), L = state.range(1), E = kEmbed;
  tessera::nn::TransformerEncoderLayer<float> layer(
      {.d_model = kEmbed, .nhead = kHeads, .dim_feedforward = kFeedForward, .seed = 1});
  const auto x = random_tensor<float, 3>({B, L, kEmbed}, 2);
  const auto& mha = layer.self_attn;
  RowMatrix qkv(L, 3 * E), heads(L, E), y(L, E), h(L, kFeedForward), S(L, L);
  for (RowMatrix* m : {&qkv, &heads, &y, &h, &S}) m->setZero();  // pages touched before the clock
  auto norm = [](RowMatrix& m, const auto& w, const auto& b) {
    for (Index i = 0; i < m.rows(); ++i) {
      auto r = m.row(i).array();
      const float mean = r.mean();
      const float var = (r - mean).square().mean();
      r = (r - mean) / std::sqrt(var + 1e-5f) * w.as_vector().transpose().array() +
          b.as_vector().transpose().array();
    }
  };
  for (auto _ : state) {
    for (Index bi = 0; bi < B; ++bi) {
      const auto xb = x[bi].as_matrix();
      qkv.noalias() = xb * mha.in_proj_weight.value.as_matrix().transpose();
      qkv.rowwise() += mha.in_proj_bias.value.as_vector().transpose();
      for (Index hh = 0; hh < kHeads; ++hh)
        reference_head(
            StridedMap(qkv.data() + hh * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(3 * E)),
            StridedMap(qkv.data() + E + hh * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(3 * E)),
            StridedMap(qkv.data() + 2 * E + hh * kHeadDim, L, kHeadDim,
                       Eigen::OuterStride<>(3 * E)),
            StridedOut(heads.data() + hh * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(E)), S,
            false);
      y = xb;
      y.noalias() += heads * mha.out_proj.weight.value.as_matrix().transpose();
      y.rowwise() += mha.out_proj.bias.value.as_vector().transpose();
      norm(y, layer.norm1.weight.value, layer.norm1.bias.value);
      h.noalias() = y * layer.ff.linear1.weight.value.as_matrix().transpose();
      h.rowwise() += layer.ff.linear1.bias.value.as_vector().transpose();
      h = h.cwiseMax(0.0f);
      y.noalias() += h * layer.ff.linear2.weight.value.as_matrix().transpose();
      y.rowwise() += layer.ff.linear2.bias.value.as_vector().transpose();
      norm(y, layer.norm2.weight.value, layer.norm2.bias.value);
      benchmark::DoNotOptimize(y.data());
    }
  }
  set_gflops(state, layer_flops(B, L));
}

void layer_args(benchmark::internal::Benchmark* b) {
  for (Index L : {128, 512, 1024, 2048, 4096}) b->Args({1, L});
  b->Args({8, 512});
  b->ArgNames({"B", "L"})->Unit(benchmark::kMillisecond);
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_TransformerEncoderLayer)->Apply(layer_args);
BENCHMARK(BM_TransformerEncoderLayer_Prepacked)->Apply(layer_args);
BENCHMARK(BM_TransformerEncoderLayer_2Threads)->Apply(layer_args)->UseRealTime();
BENCHMARK(BM_TransformerEncoderLayer_Reference)->Apply(layer_args);

BENCHMARK_MAIN();
