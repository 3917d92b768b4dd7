// Contrastive loss benchmarks: CLIP's symmetric loss, forward and backward (the loss, dL/da,
// dL/db and dL/dt), for N = 1024, 4096 and 8192 pairs of D = 512 float embeddings — the chunked
// path (block x block tiles of the logits, one per thread) beside the materialised one (the full
// N x N logits and their gradient) — and BM_PeakFMA in the same run.
//
// GFLOPS counts the three N x N x D products the loss needs (logits, dL/da, dL/db): 6 N^2 D.
// The chunked path recomputes the logits in its second sweep, a fourth product not counted.
// "logits_MB" is the similarity memory alive at once: 2 tiles (S and dL/dl) per thread for the
// chunked path, 2 N x N matrices for the materialised one. Argument 2 is the thread count.
#include <benchmark/benchmark.h>

#include <cmath>
#include <tessera/contrastive/clip_loss.hpp>
#include <tessera/core/threading.hpp>

#include "bench_common.hpp"

namespace {

using tessera::Index;
using tessera::Tensor;
using tessera_bench::random_tensor;
using tessera_bench::set_gflops;

constexpr Index kDim = 512;

void clip_bench(benchmark::State& state, bool materialized) {
  const Index n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  tessera::set_num_threads(threads);
  // Unit rows, as CLIP's embeddings.
  auto a = random_tensor<float, 2>({n, kDim}, 1);
  auto b = random_tensor<float, 2>({n, kDim}, 2);
  a.as_matrix().rowwise().normalize();
  b.as_matrix().rowwise().normalize();
  const float t = std::log(1.0f / 0.07f);
  const tessera::contrastive::ClipLossOptions opts{.materialized = materialized};
  float loss = 0;
  for (auto _ : state) {
    const auto r = tessera::contrastive::clip_loss(a, b, t, opts);
    loss = r.loss;
    benchmark::DoNotOptimize(r.grad_a.data());
    benchmark::DoNotOptimize(r.grad_b.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 6.0 * double(n) * double(n) * double(kDim));
  const double block = double(opts.block_size);
  state.counters["logits_MB"] =
      (materialized ? 2.0 * double(n) * double(n) : 2.0 * threads * block * block) * 4 * 1e-6;
  state.counters["loss"] = loss;
  tessera::set_num_threads(1);
}

void BM_ClipLoss_Chunked(benchmark::State& state) { clip_bench(state, false); }
void BM_ClipLoss_Materialized(benchmark::State& state) { clip_bench(state, true); }

void sizes(benchmark::internal::Benchmark* b) {
  for (Index threads : {1, 2})
    for (Index n : {1024, 4096, 8192}) b->Args({n, threads});
  b->ArgNames({"N", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_ClipLoss_Chunked)->Apply(sizes);
BENCHMARK(BM_ClipLoss_Materialized)->Apply(sizes);

BENCHMARK_MAIN();
