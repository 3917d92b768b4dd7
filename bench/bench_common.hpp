// tessera benchmarks: helpers shared by every bench_*.cpp binary.
//
//   tessera_bench::single_thread()      pin tessera's kernels and Eigen's products to one thread
//   tessera_bench::set_traffic(...)     items/s (SetItemsProcessed) and a "GB/s" counter
//   tessera_bench::set_gflops(...)      a "GFLOPS" counter
//   tessera_bench::random_tensor<T>()   a seeded, uniformly filled tensor
//   tessera_bench::BM_PeakFMA<Acc>      single-thread FP32 FMA throughput through tessera::simd;
//                                       register it with kPeakAccumulators chains (per ISA)
//   tessera_bench::BM_Copy<T>           memcpy bandwidth of a [rows, n] buffer of T (read + write)
//
// Counters are rates in decimal units: "GB/s" is 1e9 bytes per second, "GFLOPS" 1e9 flops per
// second. Each binary registers the templates it wants, e.g.
//
//   BENCHMARK_TEMPLATE(tessera_bench::BM_PeakFMA, tessera_bench::kPeakAccumulators);
//   BENCHMARK_TEMPLATE(tessera_bench::BM_Copy, float)->Args({64, 1024});
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <tessera/core/tensor.hpp>
#include <tessera/core/threading.hpp>
#include <tessera/kernels/simd.hpp>

namespace tessera_bench {

using tessera::Index;

// Every tessera benchmark is single-threaded: call this first in each benchmark function.
inline void single_thread() { tessera::set_num_threads(1); }

// Per-iteration work: `items` elements processed and `bytes` of minimum memory traffic.
inline void set_traffic(benchmark::State& state, double items, double bytes) {
  const auto it = static_cast<double>(state.iterations());
  state.SetItemsProcessed(static_cast<std::int64_t>(it * items));
  state.counters["GB/s"] = benchmark::Counter(it * bytes * 1e-9, benchmark::Counter::kIsRate);
}

// Per-iteration floating-point operations (an FMA counts as 2).
inline void set_gflops(benchmark::State& state, double flops) {
  const auto it = static_cast<double>(state.iterations());
  state.counters["GFLOPS"] = benchmark::Counter(it * flops * 1e-9, benchmark::Counter::kIsRate);
}

template <class T, int Rank>
tessera::Tensor<T, Rank> random_tensor(const tessera::Shape<Rank>& shape, std::uint64_t seed,
                                       double lo = -1.0, double hi = 1.0) {
  tessera::Tensor<T, Rank> t(shape, tessera::uninitialized);
  t.setRandom(seed, lo, hi);
  return t;
}

// An output buffer for a timed loop, allocated zero-filled (tessera::Tensor's default) rather
// than tessera::uninitialized so that its pages are touched before the clock. Google Benchmark
// calls a benchmark afresh for every batch of iterations, and glibc maps a buffer of 32 MiB or
// more afresh each time (its mmap threshold stops growing there), so an untouched output had
// its page faults timed in the batch's first call: on a VM where a fault costs 10 us, that put
// a 4096 x 2048 product at 147 GFLOPS instead of 192 (6 iterations of 45 ms, plus 81 ms).
template <class T, int Rank>
tessera::Tensor<T, Rank> zero_tensor(const tessera::Shape<Rank>& shape) {
  return tessera::Tensor<T, Rank>(shape);
}

// Runs a module's forward twice before the clock. The thread's scratch arena grows to the
// module's high-water mark over its first two calls (one block per buffer, then one block of the
// total), and those blocks' pages fault in then. At L = 4096 one encoder-layer call fills the
// minimum time, so a timed first call put the layer at 129 GFLOPS for 173 on a Zen 5 VM (10 us a
// page fault).
template <class F>
void warm_up(F&& forward) {
  (void)forward();
  (void)forward();
}

// Peak single-thread FP32 FMA throughput: Acc independent chains of acc = acc * a + b on full
// tessera::simd packets (zmm on AVX-512). Acc must cover FMA latency x FMA ports (4 x 2 on
// Sapphire Rapids and Zen 3) and, with a and b, fit the vector registers: 16 chains spill with
// AVX2's 16 registers (58 GFLOPS against a real 101 on a Zen 3 core), so kPeakAccumulators is 16
// where there are 32 registers (AVX-512) and 12 where there are 16 (AVX2, SSE). Each state
// iteration runs kReps rounds of Acc FMAs: 2 * width * Acc * kReps flops. Without FMA (SSE2
// baseline) a multiply and an add stand for each FMA: the number is that build's peak, not the
// core's.
#if defined(__AVX512F__)
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif
inline constexpr int kPeakAccumulators = kVectorRegisters >= 32 ? 16 : 12;

template <int Acc>
void BM_PeakFMA(benchmark::State& state) {
  single_thread();
  using P = tessera::simd::Packet<float>;
  constexpr Index W = tessera::simd::width<float>;
  constexpr int kReps = 256;
  // acc converges to b / (1 - a) ~ 0.1: no overflow, no denormals. a and b are read through
  // volatiles so the compiler cannot fold the chains. (Not benchmark::DoNotOptimize on the two
  // floats: with GCC 12 and benchmark 1.7.1 its "+m,r" operand was compiled as a read of a stack
  // slot that was never written, so a and b were garbage, often denormal, and every FMA took a
  // microcode assist: 0.7 GFLOPS instead of ~170.)
  volatile float va = 0.999999f, vb = 1e-7f;
  const P a = tessera::simd::set1<float>(va);
  const P b = tessera::simd::set1<float>(vb);
  P acc[Acc];
  for (int i = 0; i < Acc; ++i) acc[i] = tessera::simd::set1<float>(0.01f * static_cast<float>(i));
  for (auto _ : state) {
    for (int r = 0; r < kReps; ++r) {
#pragma GCC unroll 32
      for (int i = 0; i < Acc; ++i) acc[i] = tessera::simd::fmadd(acc[i], a, b);
    }
  }
  for (int i = 0; i < Acc; ++i) benchmark::DoNotOptimize(acc[i]);
  set_gflops(state, 2.0 * W * Acc * kReps);
  state.counters["lanes"] = static_cast<double>(W);
  state.counters["chains"] = Acc;
}

// memcpy of a [rows, n] buffer of T: the copy bandwidth baseline. GB/s counts read + write.
template <class T>
void BM_Copy(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto src = random_tensor<T, 2>({rows, n}, 1);
  auto dst = zero_tensor<T, 2>({rows, n});
  const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(rows * n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  set_traffic(state, static_cast<double>(rows * n), 2.0 * static_cast<double>(bytes));
}

}  // namespace tessera_bench
