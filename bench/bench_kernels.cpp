// tessera benchmarks: the row-wise and element-wise kernels and the products, single-threaded,
// each beside a plain scalar loop and/or the direct Eigen expression, and beside the machine's
// own ceilings (BM_PeakFMA for compute, BM_Copy for memory traffic on the same buffer size).
//
// Row-wise kernels run on [rows, n] = [64, 1024] (256 KiB of float in, 256 KiB out: L2
// resident) and [1024, 1024] (4 MiB in, 4 MiB out: past L2). Every kernel reports items/s
// (elements) and "GB/s" (minimum traffic: x read once, y written once); products report GFLOPS
// (2 M N K per product).
//
//   ./bench_kernels --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//       --benchmark_min_time=0.2

#include <algorithm>
#include <cmath>
#include <limits>
#include <tessera/core/mask.hpp>
#include <tessera/kernels/activation.hpp>
#include <tessera/kernels/linear.hpp>
#include <tessera/kernels/norm.hpp>
#include <tessera/kernels/normalize.hpp>
#include <tessera/kernels/softmax.hpp>

#include "bench_common.hpp"

namespace {

using tessera::Index;
using tessera::Tensor;
using namespace tessera_bench;

template <class T>
using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;

// Same sizes for the kernels and for BM_Copy, so "fraction of copy bandwidth" reads off directly.
void row_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "n"});
  b->Args({64, 1024});
  b->Args({1024, 1024});
}

template <class T>
void rowwise_traffic(benchmark::State& state, Index rows, Index n) {
  set_traffic(state, static_cast<double>(rows * n),
              2.0 * sizeof(T) * static_cast<double>(rows * n));
}

template <class T>
void keep(Tensor<T, 2>& y) {
  benchmark::DoNotOptimize(y.data());
  benchmark::ClobberMemory();
}

// ---------------------------------------------------------------- softmax

template <class T>
void softmax_row_scalar(const T* x, T* y, Index n) {
  T m = -std::numeric_limits<T>::infinity();
  for (Index j = 0; j < n; ++j) m = std::max(m, x[j]);
  T s = 0;
  for (Index j = 0; j < n; ++j) {
    y[j] = std::exp(x[j] - m);
    s += y[j];
  }
  for (Index j = 0; j < n; ++j) y[j] /= s;
}

template <class T>
void BM_Softmax_Tessera(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 11, -4, 4);
  auto y = zero_tensor<T, 2>({rows, n});
  for (auto _ : state) {
    tessera::softmax_into(x, y);
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

// The plain three-pass Eigen expression per row: max, exp, sum, divide.
template <class T>
void BM_Softmax_Eigen(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 11, -4, 4);
  auto y = zero_tensor<T, 2>({rows, n});
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      Eigen::Map<const RowArray<T>> xr(x.data() + r * n, n);
      Eigen::Map<RowArray<T>> yr(y.data() + r * n, n);
      yr = (xr - xr.maxCoeff()).exp();
      yr /= yr.sum();
    }
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_Softmax_Scalar(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 11, -4, 4);
  auto y = zero_tensor<T, 2>({rows, n});
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) softmax_row_scalar(x.data() + r * n, y.data() + r * n, n);
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_LogSoftmax_Tessera(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 12, -4, 4);
  auto y = zero_tensor<T, 2>({rows, n});
  for (auto _ : state) {
    tessera::log_softmax_into(x, y);
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_LogSoftmax_Scalar(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 12, -4, 4);
  auto y = zero_tensor<T, 2>({rows, n});
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * n;
      T* yr = y.data() + r * n;
      T m = -std::numeric_limits<T>::infinity();
      for (Index j = 0; j < n; ++j) m = std::max(m, xr[j]);
      T s = 0;
      for (Index j = 0; j < n; ++j) s += std::exp(xr[j] - m);
      const T shift = m + std::log(s);
      for (Index j = 0; j < n; ++j) yr[j] = xr[j] - shift;
    }
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

// Key-padding style mask: a bool [1, n] "allowed" mask broadcast over every row, the last
// eighth of the columns masked out.
Tensor<bool, 2> padding_mask(Index n) {
  auto m = zero_tensor<bool, 2>({1, n});
  for (Index j = 0; j < n; ++j) m.data()[j] = j < n - n / 8;
  return m;
}

template <class T>
void BM_SoftmaxMasked_Tessera(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 13, -4, 4);
  const auto mask = padding_mask(n);
  auto y = zero_tensor<T, 2>({rows, n});
  const tessera::SoftmaxOptions opts{tessera::Mask::allowed(mask)};
  for (auto _ : state) {
    tessera::softmax_into(x, y, opts);
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

// Scalar reference: apply the mask (-inf where masked), then the scalar softmax.
template <class T>
void BM_SoftmaxMasked_Scalar(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<T, 2>({rows, n}, 13, -4, 4);
  const auto mask = padding_mask(n);
  auto y = zero_tensor<T, 2>({rows, n});
  const bool* m = mask.data();
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * n;
      T* yr = y.data() + r * n;
      for (Index j = 0; j < n; ++j) yr[j] = m[j] ? xr[j] : -std::numeric_limits<T>::infinity();
      softmax_row_scalar(yr, yr, n);
    }
    keep(y);
  }
  rowwise_traffic<T>(state, rows, n);
}

// ---------------------------------------------------------------- layer_norm, rms_norm

constexpr double kEps = 1e-5;

template <class T>
struct NormData {
  NormData(Index rows, Index n)
      : x(random_tensor<T, 2>({rows, n}, 21, -2, 3)),
        w(random_tensor<T, 1>({n}, 22, 0.5, 1.5)),
        b(random_tensor<T, 1>({n}, 23, -0.5, 0.5)),
        y(tessera::Shape<2>{rows, n}) {}
  Tensor<T, 2> x;
  Tensor<T, 1> w, b;
  Tensor<T, 2> y;
};

template <class T>
void BM_LayerNorm_Tessera(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  NormData<T> d(rows, n);
  tessera::LayerNormOptions<T> opts;
  opts.weight = d.w;
  opts.bias = d.b;
  opts.eps = kEps;
  for (auto _ : state) {
    tessera::layer_norm_into(d.x, d.y, opts);
    keep(d.y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_LayerNorm_Eigen(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  NormData<T> d(rows, n);
  Eigen::Map<const RowArray<T>> w(d.w.data(), n), b(d.b.data(), n);
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      Eigen::Map<const RowArray<T>> xr(d.x.data() + r * n, n);
      Eigen::Map<RowArray<T>> yr(d.y.data() + r * n, n);
      const T mean = xr.mean();
      const T var = (xr - mean).square().mean();
      const T rstd = T(1) / std::sqrt(var + T(kEps));
      yr = (xr - mean) * rstd * w + b;
    }
    keep(d.y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_LayerNorm_Scalar(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  NormData<T> d(rows, n);
  const T* w = d.w.data();
  const T* b = d.b.data();
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      const T* xr = d.x.data() + r * n;
      T* yr = d.y.data() + r * n;
      T s = 0;
      for (Index j = 0; j < n; ++j) s += xr[j];
      const T mean = s / T(n);
      T v = 0;
      for (Index j = 0; j < n; ++j) v += (xr[j] - mean) * (xr[j] - mean);
      const T rstd = T(1) / std::sqrt(v / T(n) + T(kEps));
      for (Index j = 0; j < n; ++j) yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
    }
    keep(d.y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_RMSNorm_Tessera(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  NormData<T> d(rows, n);
  tessera::RMSNormOptions<T> opts;
  opts.weight = d.w;
  opts.eps = kEps;
  for (auto _ : state) {
    tessera::rms_norm_into(d.x, d.y, opts);
    keep(d.y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_RMSNorm_Eigen(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  NormData<T> d(rows, n);
  Eigen::Map<const RowArray<T>> w(d.w.data(), n);
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      Eigen::Map<const RowArray<T>> xr(d.x.data() + r * n, n);
      Eigen::Map<RowArray<T>> yr(d.y.data() + r * n, n);
      const T rrms = T(1) / std::sqrt(xr.square().mean() + T(kEps));
      yr = xr * rrms * w;
    }
    keep(d.y);
  }
  rowwise_traffic<T>(state, rows, n);
}

template <class T>
void BM_RMSNorm_Scalar(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  NormData<T> d(rows, n);
  const T* w = d.w.data();
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      const T* xr = d.x.data() + r * n;
      T* yr = d.y.data() + r * n;
      T s = 0;
      for (Index j = 0; j < n; ++j) s += xr[j] * xr[j];
      const T rrms = T(1) / std::sqrt(s / T(n) + T(kEps));
      for (Index j = 0; j < n; ++j) yr[j] = xr[j] * rrms * w[j];
    }
    keep(d.y);
  }
  rowwise_traffic<T>(state, rows, n);
}

// ---------------------------------------------------------------- activations (float)

struct GeluScalar {
  float operator()(float x) const { return 0.5f * x * (1.0f + std::erf(x * 0.70710678f)); }
};
struct GeluTanhScalar {
  float operator()(float x) const {
    return 0.5f * x * (1.0f + std::tanh(0.79788456f * (x + 0.044715f * x * x * x)));
  }
};
struct SiluScalar {
  float operator()(float x) const { return x / (1.0f + std::exp(-x)); }
};
struct ReluScalar {
  float operator()(float x) const { return std::max(x, 0.0f); }
};

void BM_Act_Tessera(benchmark::State& state, tessera::Activation act) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<float, 2>({rows, n}, 31, -5, 5);
  auto y = zero_tensor<float, 2>({rows, n});
  for (auto _ : state) {
    tessera::activate_into(act, x, y);
    keep(y);
  }
  rowwise_traffic<float>(state, rows, n);
}

template <class F>
void BM_Act_Scalar(benchmark::State& state, F f) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<float, 2>({rows, n}, 31, -5, 5);
  auto y = zero_tensor<float, 2>({rows, n});
  const Index size = rows * n;
  for (auto _ : state) {
    const float* xp = x.data();
    float* yp = y.data();
    for (Index i = 0; i < size; ++i) yp[i] = f(xp[i]);
    keep(y);
  }
  rowwise_traffic<float>(state, rows, n);
}

// ---------------------------------------------------------------- l2_normalize (float)

void BM_L2Normalize_Tessera(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<float, 2>({rows, n}, 41);
  auto y = zero_tensor<float, 2>({rows, n});
  for (auto _ : state) {
    tessera::l2_normalize_into(x, y);
    keep(y);
  }
  rowwise_traffic<float>(state, rows, n);
}

void BM_L2Normalize_Scalar(benchmark::State& state) {
  single_thread();
  const Index rows = state.range(0), n = state.range(1);
  const auto x = random_tensor<float, 2>({rows, n}, 41);
  auto y = zero_tensor<float, 2>({rows, n});
  for (auto _ : state) {
    for (Index r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * n;
      float* yr = y.data() + r * n;
      float s = 0;
      for (Index j = 0; j < n; ++j) s += xr[j] * xr[j];
      const float inv = 1.0f / std::max(std::sqrt(s), 1e-12f);
      for (Index j = 0; j < n; ++j) yr[j] = xr[j] * inv;
    }
    keep(y);
  }
  rowwise_traffic<float>(state, rows, n);
}

// ---------------------------------------------------------------- linear, matmul (float)

// linear: x [L, in] . W^T + b, W [out, in]. Args: L, in, out.
void linear_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"L", "in", "out"});
  b->Args({128, 128, 128});
  b->Args({512, 512, 512});
}

struct LinearData {
  LinearData(Index L, Index in, Index out)
      : x(random_tensor<float, 2>({L, in}, 51)),
        w(random_tensor<float, 2>({out, in}, 52, -0.1, 0.1)),
        b(random_tensor<float, 1>({out}, 53)),
        y(tessera::Shape<2>{L, out}) {}
  Tensor<float, 2> x, w;
  Tensor<float, 1> b;
  Tensor<float, 2> y;
};

void BM_Linear_Tessera(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  tessera::LinearOptions<float> opts;
  opts.bias = d.b;
  for (auto _ : state) {
    tessera::linear_into(d.x, d.w, d.y, opts);
    keep(d.y);
  }
  set_gflops(state, 2.0 * static_cast<double>(L * in * out));
}

void BM_Linear_Eigen(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  const auto X = d.x.as_matrix();
  const auto W = d.w.as_matrix();
  const auto b = d.b.as_vector();
  auto Y = d.y.as_matrix();
  for (auto _ : state) {
    Y.noalias() = X * W.transpose();
    Y.rowwise() += b.transpose();
    keep(d.y);
  }
  set_gflops(state, 2.0 * static_cast<double>(L * in * out));
}

// Naive triple loop: y[i][o] = b[o] + sum_k x[i][k] W[o][k].
void BM_Linear_Naive(benchmark::State& state) {
  single_thread();
  const Index L = state.range(0), in = state.range(1), out = state.range(2);
  LinearData d(L, in, out);
  const float* x = d.x.data();
  const float* w = d.w.data();
  const float* b = d.b.data();
  float* y = d.y.data();
  for (auto _ : state) {
    for (Index i = 0; i < L; ++i)
      for (Index o = 0; o < out; ++o) {
        float s = b[o];
        for (Index k = 0; k < in; ++k) s += x[i * in + k] * w[o * in + k];
        y[i * out + o] = s;
      }
    keep(d.y);
  }
  set_gflops(state, 2.0 * static_cast<double>(L * in * out));
}

// matmul: [M, K] . [K, N]. Args: M, K, N.
void matmul_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "K", "N"});
  b->Args({128, 128, 128});
  b->Args({512, 512, 512});
}

void BM_Matmul_Tessera(benchmark::State& state) {
  single_thread();
  const Index M = state.range(0), K = state.range(1), N = state.range(2);
  const auto a = random_tensor<float, 2>({M, K}, 61);
  const auto b = random_tensor<float, 2>({K, N}, 62);
  auto c = zero_tensor<float, 2>({M, N});
  for (auto _ : state) {
    tessera::matmul_into(a, b, c);
    keep(c);
  }
  set_gflops(state, 2.0 * static_cast<double>(M * K * N));
}

void BM_Matmul_Eigen(benchmark::State& state) {
  single_thread();
  const Index M = state.range(0), K = state.range(1), N = state.range(2);
  const auto a = random_tensor<float, 2>({M, K}, 61);
  const auto b = random_tensor<float, 2>({K, N}, 62);
  auto c = zero_tensor<float, 2>({M, N});
  const auto A = a.as_matrix();
  const auto B = b.as_matrix();
  auto C = c.as_matrix();
  for (auto _ : state) {
    C.noalias() = A * B;
    keep(c);
  }
  set_gflops(state, 2.0 * static_cast<double>(M * K * N));
}

// Naive i-j-k triple loop (B walked down a column).
void BM_Matmul_Naive(benchmark::State& state) {
  single_thread();
  const Index M = state.range(0), K = state.range(1), N = state.range(2);
  const auto a = random_tensor<float, 2>({M, K}, 61);
  const auto b = random_tensor<float, 2>({K, N}, 62);
  auto c = zero_tensor<float, 2>({M, N});
  const float* A = a.data();
  const float* B = b.data();
  float* C = c.data();
  for (auto _ : state) {
    for (Index i = 0; i < M; ++i)
      for (Index j = 0; j < N; ++j) {
        float s = 0;
        for (Index k = 0; k < K; ++k) s += A[i * K + k] * B[k * N + j];
        C[i * N + j] = s;
      }
    keep(c);
  }
  set_gflops(state, 2.0 * static_cast<double>(M * K * N));
}

// Batched matmul: [batch, M, K] . [batch, K, N]. Args: batch, M, K, N. The first shape is
// attention's scores (Q K^T per head: L = 128, head dim 64), the second a square block.
void batched_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "M", "K", "N"});
  b->Args({16, 128, 64, 128});
  b->Args({8, 256, 256, 256});
}

void BM_BatchedMatmul_Tessera(benchmark::State& state) {
  single_thread();
  const Index B = state.range(0), M = state.range(1), K = state.range(2), N = state.range(3);
  const auto a = random_tensor<float, 3>({B, M, K}, 71);
  const auto b = random_tensor<float, 3>({B, K, N}, 72);
  auto c = zero_tensor<float, 3>({B, M, N});
  for (auto _ : state) {
    tessera::matmul_into(a, b, c);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 2.0 * static_cast<double>(B * M * K * N));
}

void BM_BatchedMatmul_Eigen(benchmark::State& state) {
  single_thread();
  const Index B = state.range(0), M = state.range(1), K = state.range(2), N = state.range(3);
  const auto a = random_tensor<float, 3>({B, M, K}, 71);
  const auto b = random_tensor<float, 3>({B, K, N}, 72);
  auto c = zero_tensor<float, 3>({B, M, N});
  for (auto _ : state) {
    for (Index i = 0; i < B; ++i) {
      tessera::MatrixMap<const float> Ai(a.data() + i * M * K, M, K);
      tessera::MatrixMap<const float> Bi(b.data() + i * K * N, K, N);
      tessera::MatrixMap<float> Ci(c.data() + i * M * N, M, N);
      Ci.noalias() = Ai * Bi;
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 2.0 * static_cast<double>(B * M * K * N));
}

}  // namespace

// ---------------------------------------------------------------- registration

// Machine ceilings. The FMA peak with several chain counts: too few leave the FMA ports idle
// waiting on latency, too many spill (16 with AVX2's 16 registers); the best is the peak.
BENCHMARK_TEMPLATE(BM_PeakFMA, 8);
BENCHMARK_TEMPLATE(BM_PeakFMA, 12);
BENCHMARK_TEMPLATE(BM_PeakFMA, 16);
#if defined(__AVX512F__)
BENCHMARK_TEMPLATE(BM_PeakFMA, 24);
#endif
BENCHMARK_TEMPLATE(BM_Copy, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_Copy, double)->Apply(row_sizes);

// Softmax family.
BENCHMARK_TEMPLATE(BM_Softmax_Tessera, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_Softmax_Eigen, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_Softmax_Scalar, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_Softmax_Tessera, double)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_Softmax_Eigen, double)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_Softmax_Scalar, double)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LogSoftmax_Tessera, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LogSoftmax_Scalar, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_SoftmaxMasked_Tessera, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_SoftmaxMasked_Scalar, float)->Apply(row_sizes);

// Normalisation.
BENCHMARK_TEMPLATE(BM_LayerNorm_Tessera, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LayerNorm_Eigen, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LayerNorm_Scalar, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LayerNorm_Tessera, double)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LayerNorm_Eigen, double)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_LayerNorm_Scalar, double)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_RMSNorm_Tessera, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_RMSNorm_Eigen, float)->Apply(row_sizes);
BENCHMARK_TEMPLATE(BM_RMSNorm_Scalar, float)->Apply(row_sizes);
BENCHMARK(BM_L2Normalize_Tessera)->Apply(row_sizes);
BENCHMARK(BM_L2Normalize_Scalar)->Apply(row_sizes);

// Activations.
BENCHMARK_CAPTURE(BM_Act_Tessera, gelu, tessera::Activation::gelu)->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Scalar, gelu, GeluScalar{})->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Tessera, gelu_tanh, tessera::Activation::gelu_tanh)->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Scalar, gelu_tanh, GeluTanhScalar{})->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Tessera, silu, tessera::Activation::silu)->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Scalar, silu, SiluScalar{})->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Tessera, relu, tessera::Activation::relu)->Apply(row_sizes);
BENCHMARK_CAPTURE(BM_Act_Scalar, relu, ReluScalar{})->Apply(row_sizes);

// Products. The naive loops only at the small size.
BENCHMARK(BM_Linear_Tessera)->Apply(linear_sizes);
BENCHMARK(BM_Linear_Eigen)->Apply(linear_sizes);
BENCHMARK(BM_Linear_Naive)->ArgNames({"L", "in", "out"})->Args({128, 128, 128});
BENCHMARK(BM_Matmul_Tessera)->Apply(matmul_sizes);
BENCHMARK(BM_Matmul_Eigen)->Apply(matmul_sizes);
BENCHMARK(BM_Matmul_Naive)->ArgNames({"M", "K", "N"})->Args({128, 128, 128});
BENCHMARK(BM_BatchedMatmul_Tessera)->Apply(batched_sizes);
BENCHMARK(BM_BatchedMatmul_Eigen)->Apply(batched_sizes);

int main(int argc, char** argv) {
  tessera::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
