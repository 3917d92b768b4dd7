// Attention benchmarks: scaled dot-product attention and MultiheadAttention (embed 512, 8 heads)
// over sequence lengths 128-4096, each beside
// the plain reference (the full L x L score matrix materialised, a softmax over it, a product
// with V), and BM_PeakFMA in the same run so every GFLOPS figure reads as a fraction of peak.
//
// FLOP counts: attention 4 B H Lq Lk D (two products; half of that with causal), a projection
// 2 rows in out. Single thread, float.
#include <benchmark/benchmark.h>

#include <cmath>
#include <tessera/tessera.hpp>

#include "bench_common.hpp"
#include "bench_reference.hpp"

namespace {

using tessera::Index;
using tessera::Tensor;
using tessera_bench::random_tensor;
using tessera_bench::zero_tensor;
using tessera_bench::reference_head;
using tessera_bench::RowMatrix;
using tessera_bench::set_gflops;
using tessera_bench::StridedMap;
using tessera_bench::StridedOut;

using tessera_bench::kEmbed;
using tessera_bench::kHeadDim;
using tessera_bench::kHeads;
using tessera_bench::mha_flops;

// ---- scaled dot-product attention on [B, H, L, D] ----

double sdpa_flops(Index B, Index H, Index L, Index D, bool causal) {
  return 4.0 * B * H * double(L) * double(L) * D * (causal ? 0.5 : 1.0);
}

// impl: 0 = fused (the default path), 1 = the blocked reference path (Eigen products over blocks
// of 64 query rows, scores for one block at a time).
void sdpa_bench(benchmark::State& state, tessera::AttentionImpl impl) {
  tessera_bench::single_thread();
  const Index B = state.range(0), H = state.range(1), L = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  const auto q = random_tensor<float, 4>({B, H, L, D}, 1);
  const auto k = random_tensor<float, 4>({B, H, L, D}, 2);
  const auto v = random_tensor<float, 4>({B, H, L, D}, 3);
  auto out = zero_tensor<float, 4>({B, H, L, D});
  for (auto _ : state) {
    tessera::scaled_dot_product_attention_into(q, k, v, out, {.causal = causal, .impl = impl});
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, sdpa_flops(B, H, L, D, causal));
}

void BM_SDPA_Fused(benchmark::State& state) { sdpa_bench(state, tessera::AttentionImpl::fused); }
void BM_SDPA_Blocked(benchmark::State& state) {
  sdpa_bench(state, tessera::AttentionImpl::reference);
}

void BM_SDPA_Reference(benchmark::State& state) {
  tessera_bench::single_thread();
  const Index B = state.range(0), H = state.range(1), L = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  const auto q = random_tensor<float, 4>({B, H, L, D}, 1);
  const auto k = random_tensor<float, 4>({B, H, L, D}, 2);
  const auto v = random_tensor<float, 4>({B, H, L, D}, 3);
  auto out = zero_tensor<float, 4>({B, H, L, D});
  RowMatrix S = RowMatrix::Zero(L, L);  // pages touched before the clock (zero_tensor)
  for (auto _ : state) {
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        const Index off = (b * H + h) * L * D;
        reference_head(StridedMap(q.data() + off, L, D, Eigen::OuterStride<>(D)),
                       StridedMap(k.data() + off, L, D, Eigen::OuterStride<>(D)),
                       StridedMap(v.data() + off, L, D, Eigen::OuterStride<>(D)),
                       StridedOut(out.data() + off, L, D, Eigen::OuterStride<>(D)), S, causal);
      }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // The reference computes the full matrix even when causal; count only the work needed.
  set_gflops(state, sdpa_flops(B, H, L, D, causal));
}

void sdpa_args(benchmark::internal::Benchmark* b) {
  for (Index L : {128, 256, 512, 1024, 2048, 4096})
    for (int causal : {0, 1}) b->Args({1, kHeads, L, kHeadDim, causal});
  for (Index L : {1024, 4096})  // head_dim 128 (4 heads: the same embedding width)
    for (int causal : {0, 1}) b->Args({1, kHeads / 2, L, 2 * kHeadDim, causal});
  b->ArgNames({"B", "H", "L", "D", "causal"})->Unit(benchmark::kMillisecond);
}

// ---- threads: the fused kernel on 1 and 2 threads (wall-clock time) ----

void BM_SDPA_Fused_Threads(benchmark::State& state) {
  const Index B = state.range(0), H = state.range(1), L = state.range(2), D = state.range(3);
  const bool causal = state.range(4) != 0;
  tessera::set_num_threads(static_cast<int>(state.range(5)));
  const auto q = random_tensor<float, 4>({B, H, L, D}, 1);
  const auto k = random_tensor<float, 4>({B, H, L, D}, 2);
  const auto v = random_tensor<float, 4>({B, H, L, D}, 3);
  auto out = zero_tensor<float, 4>({B, H, L, D});
  for (auto _ : state) {
    tessera::scaled_dot_product_attention_into(q, k, v, out, {.causal = causal});
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, sdpa_flops(B, H, L, D, causal));
  tessera_bench::single_thread();
}

void thread_args(benchmark::internal::Benchmark* b) {
  for (Index L : {1024, 4096})
    for (int causal : {0, 1})
      for (int threads : {1, 2}) b->Args({1, kHeads, L, kHeadDim, causal, threads});
  b->ArgNames({"B", "H", "L", "D", "causal", "threads"})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

// ---- decoding: one query against a long key/value cache ----
// With fewer heads than threads the keys are split across threads and the partial softmax
// states merged; with H = 8 the heads alone keep both threads busy.

void BM_SDPA_Decode(benchmark::State& state) {
  const Index H = state.range(0), Lk = state.range(1), D = kHeadDim;
  tessera::set_num_threads(static_cast<int>(state.range(2)));
  const auto q = random_tensor<float, 4>({1, H, 1, D}, 1);
  const auto k = random_tensor<float, 4>({1, H, Lk, D}, 2);
  const auto v = random_tensor<float, 4>({1, H, Lk, D}, 3);
  auto out = zero_tensor<float, 4>({1, H, 1, D});
  for (auto _ : state) {
    tessera::scaled_dot_product_attention_into(q, k, v, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 4.0 * H * double(Lk) * D);
  // K and V are read once: a memory-bound kernel, so bandwidth says more than GFLOPS.
  tessera_bench::set_traffic(state, double(H * Lk), 2.0 * sizeof(float) * double(H * Lk * D));
  tessera_bench::single_thread();
}

void decode_args(benchmark::internal::Benchmark* b) {
  for (Index H : {1, 8})
    for (int threads : {1, 2}) b->Args({H, 16384, threads});
  b->ArgNames({"H", "Lk", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}

// ---- MultiheadAttention, self-attention on [1, L, 512] ----


void BM_MultiheadAttention(benchmark::State& state) {
  tessera_bench::single_thread();
  const Index L = state.range(0);
  tessera::nn::MultiheadAttention<float> mha({.embed_dim = kEmbed, .num_heads = kHeads, .seed = 1});
  const auto x = random_tensor<float, 3>({1, L, kEmbed}, 2);
  tessera_bench::warm_up([&] { return mha.forward(x, x, x); });
  for (auto _ : state) {
    auto y = mha.forward(x, x, x);
    benchmark::DoNotOptimize(y.output.data());
  }
  set_gflops(state, mha_flops(L));
}

// The plain reference: the same projections with Eigen's products, each head's scores in full.
void BM_MultiheadAttention_Reference(benchmark::State& state) {
  tessera_bench::single_thread();
  const Index L = state.range(0), E = kEmbed;
  tessera::nn::MultiheadAttention<float> mha({.embed_dim = kEmbed, .num_heads = kHeads, .seed = 1});
  const auto x = random_tensor<float, 3>({1, L, kEmbed}, 2);
  RowMatrix qkv(L, 3 * E), heads(L, E), out(L, E), S(L, L);
  for (RowMatrix* m : {&qkv, &heads, &out, &S}) m->setZero();  // pages touched before the clock
  for (auto _ : state) {
    qkv.noalias() = x.as_matrix() * mha.in_proj_weight.value.as_matrix().transpose();
    qkv.rowwise() += mha.in_proj_bias.value.as_vector().transpose();
    for (Index h = 0; h < kHeads; ++h)
      reference_head(
          StridedMap(qkv.data() + h * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(3 * E)),
          StridedMap(qkv.data() + E + h * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(3 * E)),
          StridedMap(qkv.data() + 2 * E + h * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(3 * E)),
          StridedOut(heads.data() + h * kHeadDim, L, kHeadDim, Eigen::OuterStride<>(E)), S, false);
    out.noalias() = heads * mha.out_proj.weight.value.as_matrix().transpose();
    out.rowwise() += mha.out_proj.bias.value.as_vector().transpose();
    benchmark::DoNotOptimize(out.data());
  }
  set_gflops(state, mha_flops(L));
}

void length_args(benchmark::internal::Benchmark* b) {
  for (Index L : {128, 512, 1024, 2048, 4096}) b->Arg(L);
  b->ArgNames({"L"})->Unit(benchmark::kMillisecond);
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_SDPA_Fused)->Apply(sdpa_args);
BENCHMARK(BM_SDPA_Blocked)->Apply(sdpa_args);
BENCHMARK(BM_SDPA_Reference)->Apply(sdpa_args);
BENCHMARK(BM_SDPA_Fused_Threads)->Apply(thread_args);
BENCHMARK(BM_SDPA_Decode)->Apply(decode_args);
BENCHMARK(BM_MultiheadAttention)->Apply(length_args);
BENCHMARK(BM_MultiheadAttention_Reference)->Apply(length_args);

BENCHMARK_MAIN();
