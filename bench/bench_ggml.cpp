// tessera's fused attention beside ggml's flash_attn_ext on the same shapes, in the same binary,
// with BM_PeakFMA so both read as a fraction of peak. Built only when a local ggml source tree is
// given (cmake -DTESSERA_GGML_DIR=/path/to/ggml, the ggml/ folder of ggml or of llama.cpp); the
// project never downloads it. ggml is compiled with the same -march as tessera's benchmarks.
//
// Shapes: B = 1, H heads of head_dim D, Lq = Lk = L; causal through an F16 mask of -inf above the
// diagonal (ggml's way; tessera needs no mask). ggml runs its CPU backend on one thread, with Q in
// F32 and K, V either in F32 (the same precision as tessera) or in F16 (ggml's usual KV cache).
// GFLOPS count 4 B H L^2 D, half that when causal, for both.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tessera/kernels/attention.hpp>
#include <vector>

#include "bench_common.hpp"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

using tessera::Index;
using tessera::Tensor;
using tessera_bench::random_tensor;
using tessera_bench::zero_tensor;
using tessera_bench::set_gflops;

double sdpa_flops(Index H, Index L, Index D, bool causal) {
  return 4.0 * H * double(L) * double(L) * D * (causal ? 0.5 : 1.0);
}

void BM_Tessera_SDPA(benchmark::State& state) {
  tessera_bench::single_thread();
  const Index H = state.range(0), L = state.range(1), D = state.range(2);
  const bool causal = state.range(3) != 0;
  const auto q = random_tensor<float, 4>({1, H, L, D}, 1);
  const auto k = random_tensor<float, 4>({1, H, L, D}, 2);
  const auto v = random_tensor<float, 4>({1, H, L, D}, 3);
  auto out = zero_tensor<float, 4>({1, H, L, D});
  for (auto _ : state) {
    tessera::scaled_dot_product_attention_into(q, k, v, out, {.causal = causal});
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, sdpa_flops(H, L, D, causal));
}

// Fills a ggml tensor of F32 or F16 with uniform values in [-1, 1) from tessera's generator.
void fill(ggml_tensor* t, std::uint64_t seed) {
  const auto n = static_cast<Index>(ggml_nelements(t));
  const auto values = random_tensor<float, 1>({n}, seed);
  if (t->type == GGML_TYPE_F32)
    std::copy_n(values.data(), n, static_cast<float*>(t->data));
  else
    ggml_fp32_to_fp16_row(values.data(), static_cast<ggml_fp16_t*>(t->data), n);
}

void BM_Ggml_FlashAttnExt(benchmark::State& state) {
  const Index H = state.range(0), L = state.range(1), D = state.range(2);
  const bool causal = state.range(3) != 0;
  const ggml_type kv_type = state.range(4) != 0 ? GGML_TYPE_F16 : GGML_TYPE_F32;
  const std::size_t bytes = 4 * static_cast<std::size_t>(H * L * D) * sizeof(float) +
                            static_cast<std::size_t>(L * L) * sizeof(ggml_fp16_t) +
                            ggml_graph_overhead() + 64 * ggml_tensor_overhead() + (1 << 20);
  ggml_init_params params{bytes, nullptr, false};
  ggml_context* ctx = ggml_init(params);
  // ggml's order is innermost first: q [D, L, H, 1], k and v [D, L, H, 1].
  ggml_tensor* q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, L, H, 1);
  ggml_tensor* k = ggml_new_tensor_4d(ctx, kv_type, D, L, H, 1);
  ggml_tensor* v = ggml_new_tensor_4d(ctx, kv_type, D, L, H, 1);
  fill(q, 1);
  fill(k, 2);
  fill(v, 3);
  ggml_tensor* mask = nullptr;
  if (causal) {
    mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, L, L);
    auto* m = static_cast<ggml_fp16_t*>(mask->data);
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f);
    const ggml_fp16_t ninf = ggml_fp32_to_fp16(-std::numeric_limits<float>::infinity());
    for (Index i = 0; i < L; ++i)
      for (Index j = 0; j < L; ++j) m[i * L + j] = j <= i ? zero : ninf;
  }
  ggml_tensor* out =
      ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f / std::sqrt(static_cast<float>(D)), 0.0f, 0.0f);
  ggml_cgraph* graph = ggml_new_graph(ctx);
  ggml_build_forward_expand(graph, out);
  // The work buffer is ours (its size depends on the build's SIMD width), planned once, and
  // aligned to 64 bytes. ggml's CPU backend takes it from new[], which for a large buffer gives an
  // address 16 bytes past a page boundary; flash_attn_ext's tiles in it then straddle cache lines,
  // and on a Zen 5 core ran 61 GFLOPS instead of 86-89 (L 1024 and 4096, D 64). ggml is measured
  // at its better figure.
  ggml_cplan plan = ggml_graph_plan(graph, 1, nullptr);
  std::vector<std::uint8_t> work(plan.work_size + 64);
  plan.work_data = work.data() + (64 - reinterpret_cast<std::uintptr_t>(work.data()) % 64) % 64;
  // One call before the clock starts, for the reason of zero_tensor (bench_common.hpp): the
  // context, about 64 MiB at L = 4096, is mapped afresh for every batch, and the first timed call
  // would fault in its output's pages.
  if (ggml_graph_compute(graph, &plan) != GGML_STATUS_SUCCESS) {
    state.SkipWithError("ggml_graph_compute failed");
    ggml_free(ctx);
    return;
  }
  for (auto _ : state) {
    if (ggml_graph_compute(graph, &plan) != GGML_STATUS_SUCCESS) {
      state.SkipWithError("ggml_graph_compute failed");
      break;
    }
    benchmark::DoNotOptimize(out->data);
    benchmark::ClobberMemory();
  }
  ggml_free(ctx);
  set_gflops(state, sdpa_flops(H, L, D, causal));
}

void shapes(benchmark::internal::Benchmark* b, bool with_kv_type) {
  for (Index L : {256, 1024, 4096})
    for (int causal : {0, 1}) {
      // head_dim 64 with 8 heads and 128 with 4: the same embedding width, 512
      for (Index D : {64, 128}) {
        if (D == 128 && L == 256) continue;
        const Index H = D == 64 ? 8 : 4;
        if (with_kv_type)
          for (int f16 : {0, 1}) b->Args({H, L, D, causal, f16});
        else
          b->Args({H, L, D, causal});
      }
    }
  if (with_kv_type)
    b->ArgNames({"H", "L", "D", "causal", "kv_f16"});
  else
    b->ArgNames({"H", "L", "D", "causal"});
  b->Unit(benchmark::kMillisecond);
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_Tessera_SDPA)->Apply([](auto* b) { shapes(b, false); });
BENCHMARK(BM_Ggml_FlashAttnExt)->Apply([](auto* b) { shapes(b, true); });
BENCHMARK_MAIN();
