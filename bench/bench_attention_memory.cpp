// Memory of the fused attention kernel at a length where the score matrix would not fit: B = 1,
// H = 8, L = 16384, D = 64, float. Materialised, the scores alone would be 8 x 16384^2 x 4 bytes
// = 8 GiB; the fused kernel keeps one packed copy of a head's K and V per thread.
//
// The benchmark resets the process's resident-memory high-water mark (Linux: writing 5 to
// /proc/self/clear_refs), allocates and fills Q, K, V and the output, runs attention, and reports
//   io_MiB      inputs plus output,
//   peak_MiB    the growth of the high-water mark over the resident size before allocating,
//   peak_ratio  peak_MiB / io_MiB (the target is at most 1.2).
// It runs on every available thread (each thread packs its own head).
#include <benchmark/benchmark.h>

#include <fstream>
#include <string>
#include <tessera/tessera.hpp>

#include "bench_common.hpp"

namespace {

using tessera::Index;
using tessera::Tensor;

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"), or -1 where there is none.
double status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, field.size() + 1, field + ":") == 0) return std::stod(line.substr(field.size() + 1));
  return -1;
}

bool reset_peak() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  return static_cast<bool>(out.flush());
}

void BM_SDPA_Fused_Memory(benchmark::State& state) {
  const Index B = 1, H = state.range(0), L = state.range(1), D = state.range(2);
  tessera::set_num_threads(tessera::max_threads());
  double peak_kib = 0, io_kib = 0;
  for (auto _ : state) {
    const double before = status_kib("VmRSS");
    if (before < 0 || !reset_peak()) {
      state.SkipWithError("needs Linux's /proc/self/status and /proc/self/clear_refs");
      break;
    }
    {
      const auto q = tessera_bench::random_tensor<float, 4>({B, H, L, D}, 1);
      const auto k = tessera_bench::random_tensor<float, 4>({B, H, L, D}, 2);
      const auto v = tessera_bench::random_tensor<float, 4>({B, H, L, D}, 3);
      Tensor<float, 4> out(B, H, L, D);  // zero-filled, so resident before the kernel runs
      tessera::scaled_dot_product_attention_into(q, k, v, out);
      benchmark::DoNotOptimize(out.data());
      io_kib = 4.0 * sizeof(float) * double(B * H * L * D) / 1024.0;
      peak_kib = status_kib("VmHWM") - before;
    }
  }
  state.counters["io_MiB"] = io_kib / 1024.0;
  state.counters["peak_MiB"] = peak_kib / 1024.0;
  state.counters["peak_ratio"] = io_kib > 0 ? peak_kib / io_kib : 0.0;
  state.counters["threads"] = tessera::num_threads();
  tessera_bench::single_thread();
}

}  // namespace

BENCHMARK(BM_SDPA_Fused_Memory)
    ->Args({8, 16384, 64})
    ->ArgNames({"H", "L", "D"})
    ->Iterations(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();

BENCHMARK_MAIN();
