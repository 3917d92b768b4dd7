// GEMM benchmarks: tessera's packed GEMM (kernels/gemm.hpp) beside Eigen's product, a naive
// triple loop (small sizes only) and, when CMake found it, OpenBLAS through CBLAS, on square
// sizes and on a transformer's shapes, with BM_PeakFMA in the same run so each GFLOPS figure
// reads as a fraction of peak. Single thread, float; 2 m n k flops per product.
//
//   square:       [n, n] x [n, n]                    n = 256 ... 4096
//   transformer:  x [L, in] x W^T with W [out, in]   (in, out) = (E, 3E), (E, F), (F, E)
//                                                    E = 512, F = 2048, L = 512 ... 4096
//
// OpenBLAS 0.3.21 as Debian ships it chose its generic "Prescott" kernels on this machine's CPU
// when OPENBLAS_CORETYPE was unset; run with OPENBLAS_CORETYPE=SKYLAKEX to measure its AVX-512
// kernels.
#include <benchmark/benchmark.h>

#include <tessera/kernels/gemm.hpp>
#include <tessera/kernels/linear.hpp>

#include "bench_common.hpp"

#ifdef TESSERA_BENCH_HAVE_CBLAS
#include <cblas.h>
#endif

namespace {

using tessera::Index;
using tessera::Tensor;
using tessera_bench::random_tensor;
using tessera_bench::zero_tensor;
using tessera_bench::set_gflops;
using tessera_bench::single_thread;

constexpr Index kEmbed = 512;
constexpr Index kFeedForward = 2048;

double flops(Index m, Index k, Index n) { return 2.0 * double(m) * double(k) * double(n); }

// ---- square: c = a b ----

void BM_Square_Tessera(benchmark::State& state) {
  single_thread();
  const Index n = state.range(0);
  const auto a = random_tensor<float, 2>({n, n}, 1);
  const auto b = random_tensor<float, 2>({n, n}, 2);
  auto c = zero_tensor<float, 2>({n, n});
  for (auto _ : state) {
    tessera::matmul_into(a, b, c);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(n, n, n));
}

void BM_Square_Eigen(benchmark::State& state) {
  single_thread();
  const Index n = state.range(0);
  const auto a = random_tensor<float, 2>({n, n}, 1);
  const auto b = random_tensor<float, 2>({n, n}, 2);
  auto c = zero_tensor<float, 2>({n, n});
  auto C = c.as_matrix();
  for (auto _ : state) {
    C.noalias() = a.as_matrix() * b.as_matrix();
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(n, n, n));
}

// The plain reference (i-k-j order, which the compiler vectorises over j).
void BM_Square_Naive(benchmark::State& state) {
  single_thread();
  const Index n = state.range(0);
  const auto a = random_tensor<float, 2>({n, n}, 1);
  const auto b = random_tensor<float, 2>({n, n}, 2);
  auto c = zero_tensor<float, 2>({n, n});
  for (auto _ : state) {
    float* cp = c.data();
    for (Index i = 0; i < n; ++i) {
      std::fill_n(cp + i * n, n, 0.0f);
      for (Index p = 0; p < n; ++p) {
        const float aip = a.data()[i * n + p];
        const float* bp = b.data() + p * n;
        for (Index j = 0; j < n; ++j) cp[i * n + j] += aip * bp[j];
      }
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(n, n, n));
}

#ifdef TESSERA_BENCH_HAVE_CBLAS
void BM_Square_OpenBLAS(benchmark::State& state) {
  single_thread();
  openblas_set_num_threads(1);
  const Index n = state.range(0);
  const auto a = random_tensor<float, 2>({n, n}, 1);
  const auto b = random_tensor<float, 2>({n, n}, 2);
  auto c = zero_tensor<float, 2>({n, n});
  const int ni = static_cast<int>(n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ni, ni, 1.0f, a.data(), ni, b.data(),
                ni, 0.0f, c.data(), ni);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(n, n, n));
}
#endif

// ---- transformer shapes: y = x W^T, x [L, in], W [out, in] ----

struct LinearData {
  LinearData(Index L, Index in, Index out)
      : x(random_tensor<float, 2>({L, in}, 3)),
        w(random_tensor<float, 2>({out, in}, 4, -0.1, 0.1)),
        y(tessera::Shape<2>{L, out}) {}
  Tensor<float, 2> x, w, y;
};

void BM_Linear_Tessera(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  for (auto _ : state) {
    tessera::linear_into(d.x, d.w, d.y);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(L, in, out));
}

// The weight packed once beforehand, as nn::Linear::prepack does.
void BM_Linear_TesseraPrepacked(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  const auto packed = tessera::PackedMatrix<float>::from_weight(d.w);
  for (auto _ : state) {
    tessera::linear_into(d.x, packed, d.y);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(L, in, out));
}

// With the bias and GELU fused into the product (the feed-forward's first linear).
void BM_Linear_TesseraBiasGelu(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  const auto bias = random_tensor<float, 1>({out}, 5);
  const auto packed = tessera::PackedMatrix<float>::from_weight(d.w);
  tessera::LinearOptions<float> lo;
  lo.bias = bias;
  lo.activation = tessera::Activation::gelu;
  for (auto _ : state) {
    tessera::linear_into(d.x, packed, d.y, lo);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(L, in, out));
}

// The same three steps unfused: product, bias, GELU as separate sweeps, each through Eigen.
void BM_Linear_EigenBiasGelu(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  const auto bias = random_tensor<float, 1>({out}, 5);
  auto Y = d.y.as_matrix();
  for (auto _ : state) {
    Y.noalias() = d.x.as_matrix() * d.w.as_matrix().transpose();
    Y.rowwise() += bias.as_vector().transpose();
    tessera::gelu_into(d.y, d.y);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(L, in, out));
}

void BM_Linear_Eigen(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  auto Y = d.y.as_matrix();
  for (auto _ : state) {
    Y.noalias() = d.x.as_matrix() * d.w.as_matrix().transpose();
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(L, in, out));
}

#ifdef TESSERA_BENCH_HAVE_CBLAS
void BM_Linear_OpenBLAS(benchmark::State& state) {
  single_thread();
  openblas_set_num_threads(1);
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(L), static_cast<int>(out),
                static_cast<int>(in), 1.0f, d.x.data(), static_cast<int>(in), d.w.data(),
                static_cast<int>(in), 0.0f, d.y.data(), static_cast<int>(out));
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, flops(L, in, out));
}
#endif

// Two threads against one, on the largest transformer shape.
void BM_Linear_Tessera_Threads(benchmark::State& state) {
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  tessera::set_num_threads(static_cast<int>(state.range(3)));
  LinearData d(L, in, out);
  for (auto _ : state) {
    tessera::linear_into(d.x, d.w, d.y);
    benchmark::DoNotOptimize(d.y.data());
    benchmark::ClobberMemory();
  }
  tessera::set_num_threads(1);
  set_gflops(state, flops(L, in, out));
}

void square_args(benchmark::internal::Benchmark* b) {
  for (Index n : {256, 512, 1024, 2048, 4096}) b->Arg(n);
  b->ArgNames({"n"})->Unit(benchmark::kMillisecond);
}
void naive_args(benchmark::internal::Benchmark* b) {
  for (Index n : {256, 512}) b->Arg(n);
  b->ArgNames({"n"})->Unit(benchmark::kMillisecond);
}
void transformer_args(benchmark::internal::Benchmark* b) {
  for (Index L : {512, 4096}) {
    b->Args({L, kEmbed, 3 * kEmbed});
    b->Args({L, kEmbed, kFeedForward});
    b->Args({L, kFeedForward, kEmbed});
  }
  b->ArgNames({"L", "in", "out"})->Unit(benchmark::kMillisecond);
}
void thread_args(benchmark::internal::Benchmark* b) {
  for (int t : {1, 2}) b->Args({4096, kEmbed, kFeedForward, t});
  b->ArgNames({"L", "in", "out", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_Square_Tessera)->Apply(square_args);
BENCHMARK(BM_Square_Eigen)->Apply(square_args);
BENCHMARK(BM_Square_Naive)->Apply(naive_args);
#ifdef TESSERA_BENCH_HAVE_CBLAS
BENCHMARK(BM_Square_OpenBLAS)->Apply(square_args);
#endif
BENCHMARK(BM_Linear_Tessera)->Apply(transformer_args);
BENCHMARK(BM_Linear_TesseraPrepacked)->Apply(transformer_args);
BENCHMARK(BM_Linear_Eigen)->Apply(transformer_args);
#ifdef TESSERA_BENCH_HAVE_CBLAS
BENCHMARK(BM_Linear_OpenBLAS)->Apply(transformer_args);
#endif
BENCHMARK(BM_Linear_TesseraBiasGelu)->Apply(transformer_args);
BENCHMARK(BM_Linear_EigenBiasGelu)->Apply(transformer_args);
BENCHMARK(BM_Linear_Tessera_Threads)->Apply(thread_args);

BENCHMARK_MAIN();
