// tessera's GEMM built with TESSERA_USE_BLAS: products whose right-hand side is not prepacked go
// through Eigen's BLAS binding (EIGEN_USE_BLAS) to the BLAS CMake found, with tessera's epilogue
// after. This binary is compiled with both definitions (tests/CMakeLists.txt) and checks the
// routing is on and the results equal a plain loop, for every transpose, alpha, accumulate and
// epilogue; prepacked products still run on tessera's own kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tessera/kernels/gemm.hpp>
#include <tessera/kernels/linear.hpp>
#include <vector>

#include "test_util.hpp"

namespace {

using tessera::Index;

template <class T>
class GemmBlas : public ::testing::Test {};
TYPED_TEST_SUITE(GemmBlas, tessera::test::Scalars);

template <class T>
std::vector<T> random_vector(Index n, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<T>(u(g));
  return v;
}

// c = act(alpha op(a) op(b) [+ c0] + bias) + residual, in double, one element at a time.
template <class T>
double reference(const tessera::GemmProblem<T>& p, const std::vector<T>& c0, Index i, Index j) {
  double s = 0;
  for (Index q = 0; q < p.k; ++q) {
    const double av = p.trans_a ? p.a[q * p.lda + i] : p.a[i * p.lda + q];
    const double bv = p.trans_b ? p.b[j * p.ldb + q] : p.b[q * p.ldb + j];
    s += av * bv;
  }
  s *= static_cast<double>(p.alpha);
  if (p.accumulate) s += c0[static_cast<std::size_t>(i * p.ldc + j)];
  if (p.epilogue.bias) s += p.epilogue.bias[j];
  if (p.epilogue.activation == tessera::Activation::relu) s = std::max(s, 0.0);
  if (p.epilogue.residual) s += p.epilogue.residual[i * p.epilogue.residual_stride + j];
  return s;
}

TEST(GemmBlasRouting, IsOn) { EXPECT_TRUE(tessera::kGemmUsesBlas); }

TYPED_TEST(GemmBlas, MatchesPlainLoopForEveryOption) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (const auto [m, k, n] :
       {std::array<Index, 3>{1, 3, 17}, {17, 255, 3}, {257, 300, 129}, {64, 512, 96}}) {
    for (int t = 0; t < 4; ++t) {
      for (int mode = 0; mode < 3; ++mode) {
        tessera::GemmProblem<T> p;
        p.m = m, p.n = n, p.k = k;
        p.trans_a = t & 1, p.trans_b = (t & 2) != 0;
        const auto a = random_vector<T>(m * k, 1), b = random_vector<T>(k * n, 2);
        const auto bias = random_vector<T>(n, 3), res = random_vector<T>(m * n, 4);
        auto c = random_vector<T>(m * n, 5);
        const auto c0 = c;
        p.a = a.data(), p.lda = p.trans_a ? m : k;
        p.b = b.data(), p.ldb = p.trans_b ? k : n;
        p.c = c.data(), p.ldc = n;
        if (mode >= 1) p.alpha = T(-0.75), p.accumulate = true;
        if (mode == 2) {
          p.epilogue.bias = bias.data();
          p.epilogue.activation = tessera::Activation::relu;
          p.epilogue.residual = res.data();
          p.epilogue.residual_stride = n;
        }
        tessera::gemm(p);
        double worst = 0;
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < n; ++j)
            worst = std::max(
                worst, std::fabs(c[static_cast<std::size_t>(i * n + j)] - reference(p, c0, i, j)));
        EXPECT_LE(worst, tol * std::sqrt(static_cast<double>(k)))
            << "m " << m << " k " << k << " n " << n << " transposes " << t << " mode " << mode;
      }
    }
  }
}

TYPED_TEST(GemmBlas, PrepackedWeightStillUsesTesserasKernel) {
  using T = TypeParam;
  const Index rows = 40, in = 70, out = 33;
  const auto xs = random_vector<T>(rows * in, 6), ws = random_vector<T>(out * in, 7);
  tessera::Tensor<T, 2> x(tessera::Shape<2>{rows, in}), w(tessera::Shape<2>{out, in});
  std::copy(xs.begin(), xs.end(), x.data());
  std::copy(ws.begin(), ws.end(), w.data());
  const auto via_blas = tessera::linear(x, w);
  const auto via_packed = tessera::linear(x, tessera::PackedMatrix<T>::from_weight(w));
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (Index i = 0; i < rows * out; ++i)
    EXPECT_NEAR(via_blas.data()[i], via_packed.data()[i], tol) << i;
}

}  // namespace
