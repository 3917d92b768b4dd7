// Attention for training: the forward that also writes the row logsumexp
// (scaled_dot_product_attention_train's fused path) and the fused backward (FlashAttention-2's
// Algorithm 2, kernels/attention_backward.hpp), B = 1, H = 8, D = 64, L = 1024 / 4096 / 8192,
// with and without causal, single thread, float. Beside them: the materialised reference backward
// (each head's L x L probabilities in full, Eigen products), L <= 4096, and BM_PeakFMA.
//
// FLOP counts follow FlashAttention's convention (Dao 2023, section 4.1 / the benchmark script
// of the flash-attention repository): the forward 4 B H L^2 D (two products), the backward 2.5x
// that, 10 B H L^2 D (five products: S, dP, dV, dQ, dK); half of each with causal. BM_PeakFMA
// runs in the same binary: each GFLOPS figure reads as a fraction of its peak.
//
// Extra memory: every malloc / free of this binary is counted (glibc's __libc_* functions behind
// interposed definitions), and "extra_KiB" is the most heap in use during one backward call
// beyond what was in use before it; q, k, v, out, lse, dout, dq, dk, dv are allocated before the
// call, so it is memory beyond inputs and outputs. FlashAttention's backward needs the D vector
// (B H L values) and per-thread tiles: O(L), against the reference's O(L^2).
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <tessera/kernels/attention_backward.hpp>

#include "bench_common.hpp"

// ---- heap accounting ----
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {
std::atomic<long long> g_live{0}, g_peak{0};
void note_alloc(void* p) {
  if (!p) return;
  const long long now = g_live.fetch_add(static_cast<long long>(malloc_usable_size(p))) +
                        static_cast<long long>(malloc_usable_size(p));
  long long peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
void note_free(void* p) {
  if (p) g_live.fetch_sub(static_cast<long long>(malloc_usable_size(p)));
}
}  // namespace

extern "C" {
void* malloc(std::size_t n) {
  void* p = __libc_malloc(n);
  note_alloc(p);
  return p;
}
void* calloc(std::size_t n, std::size_t s) {
  void* p = __libc_calloc(n, s);
  note_alloc(p);
  return p;
}
void* realloc(void* old, std::size_t n) {
  const long long old_size = old ? static_cast<long long>(malloc_usable_size(old)) : 0;
  void* p = __libc_realloc(old, n);
  if (p || n == 0) {  // on failure the old block stays allocated
    g_live.fetch_sub(old_size);
    note_alloc(p);
  }
  return p;
}
void free(void* p) {
  note_free(p);
  __libc_free(p);
}
void* memalign(std::size_t a, std::size_t n) {
  void* p = __libc_memalign(a, n);
  note_alloc(p);
  return p;
}
void* aligned_alloc(std::size_t a, std::size_t n) { return memalign(a, n); }
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  *out = memalign(a, n);
  return *out || n == 0 ? 0 : 12 /* ENOMEM */;
}
}

namespace {

using tessera::Index;
using tessera::Tensor;
using tessera_bench::random_tensor;
using tessera_bench::set_gflops;

double attention_flops(Index B, Index H, Index L, Index D, bool causal) {
  return 4.0 * B * H * double(L) * double(L) * D * (causal ? 0.5 : 1.0);
}

void set_rates(benchmark::State& state, double flops) { set_gflops(state, flops); }

// Inputs, outputs and the problems of one [1, H, L, D] case, all allocated up front.
struct Case {
  Index B, H, L, D;
  bool causal;
  Tensor<float, 4> q, k, v, out, dout, dq, dk, dv;
  Tensor<float, 3> lse;
  tessera::detail::AttentionBackwardProblem<float> bp;

  explicit Case(const benchmark::State& state)
      : B(1),
        H(state.range(0)),
        L(state.range(1)),
        D(state.range(2)),
        causal(state.range(3) != 0),
        q(random_tensor<float, 4>({B, H, L, D}, 1)),
        k(random_tensor<float, 4>({B, H, L, D}, 2)),
        v(random_tensor<float, 4>({B, H, L, D}, 3)),
        out(B, H, L, D),
        dout(random_tensor<float, 4>({B, H, L, D}, 4)),
        dq(B, H, L, D),
        dk(B, H, L, D),
        dv(B, H, L, D),
        lse(B, H, L) {
    auto& p = bp.forward;
    p.batch = B, p.heads = H, p.lq = L, p.lk = L, p.d = D, p.dv = D;
    const tessera::detail::Strided<const float> in_q{q.data(), H * L * D, L * D, D},
        in_k{k.data(), H * L * D, L * D, D}, in_v{v.data(), H * L * D, L * D, D};
    p.q = in_q, p.k = in_k, p.v = in_v;
    p.out = {out.data(), H * L * D, L * D, D};
    p.scale = 1.0f / std::sqrt(static_cast<float>(D));
    p.causal = causal;
    p.mask_lk = L;
    p.lse = lse.data();
    bp.lse = lse.data();
    bp.dout = {dout.data(), H * L * D, L * D, D};
    bp.dq = {dq.data(), H * L * D, L * D, D};
    bp.dk = {dk.data(), H * L * D, L * D, D};
    bp.dv = {dv.data(), H * L * D, L * D, D};
    tessera::detail::attention_fused(bp.forward);  // out and lse for the backward
  }
  double io_bytes() const { return sizeof(float) * (9.0 * B * H * L * D + B * H * L); }
};

// Peak heap growth during f(), bytes.
template <class F>
double extra_bytes(F&& f) {
  const long long before = g_live.load();
  g_peak.store(before);
  f();
  return static_cast<double>(g_peak.load() - before);
}

void BM_SDPA_Train_Forward(benchmark::State& state) {
  tessera_bench::single_thread();
  Case c(state);
  for (auto _ : state) {
    tessera::detail::attention_fused(c.bp.forward);
    benchmark::DoNotOptimize(c.out.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, attention_flops(c.B, c.H, c.L, c.D, c.causal));
}

template <tessera::detail::AttentionTileGemm G>
void backward_fused(benchmark::State& state) {
  tessera_bench::single_thread();
  Case c(state);
  const auto run = [&] { tessera::detail::attention_backward_fused_with<float, G>(c.bp); };
  const double extra = extra_bytes(run);
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(c.dq.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, 2.5 * attention_flops(c.B, c.H, c.L, c.D, c.causal));
  state.counters["extra_KiB"] = extra / 1024.0;
  state.counters["io_MiB"] = c.io_bytes() / (1024.0 * 1024.0);
}

// The kernel as it ships: tile products on tessera's GEMM.
void BM_SDPA_Backward_Fused(benchmark::State& state) {
  backward_fused<tessera::detail::AttentionTileGemm::tessera>(state);
}
// The same kernel with Eigen's products for the tiles (the alternative that was measured).
void BM_SDPA_Backward_Fused_EigenTiles(benchmark::State& state) {
  backward_fused<tessera::detail::AttentionTileGemm::eigen>(state);
}

// The materialised reference: per head P and dS [L, L] in full (computes every tile even with
// causal; the FLOP count is the work needed, as in bench_attention).
void BM_SDPA_Backward_Reference(benchmark::State& state) {
  tessera_bench::single_thread();
  Case c(state);
  const double extra = extra_bytes([&] { tessera::detail::attention_backward_reference(c.bp); });
  for (auto _ : state) {
    tessera::detail::attention_backward_reference(c.bp);
    benchmark::DoNotOptimize(c.dq.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, 2.5 * attention_flops(c.B, c.H, c.L, c.D, c.causal));
  state.counters["extra_KiB"] = extra / 1024.0;
  state.counters["io_MiB"] = c.io_bytes() / (1024.0 * 1024.0);
}

void args(benchmark::internal::Benchmark* b, Index max_l) {
  for (Index L : {1024, 4096, 8192})
    if (L <= max_l)
      for (int causal : {0, 1}) b->Args({8, L, 64, causal});
  b->ArgNames({"H", "L", "D", "causal"})->Unit(benchmark::kMillisecond);
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_SDPA_Train_Forward)->Apply([](auto* b) { args(b, 8192); });
BENCHMARK(BM_SDPA_Backward_Fused)->Apply([](auto* b) { args(b, 8192); });
BENCHMARK(BM_SDPA_Backward_Fused_EigenTiles)->Apply([](auto* b) { args(b, 4096); });
BENCHMARK(BM_SDPA_Backward_Reference)->Apply([](auto* b) { args(b, 4096); });

BENCHMARK_MAIN();
