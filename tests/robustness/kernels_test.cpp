// Adversarial cases for the kernels (softmax, log_softmax, logsumexp, layer_norm, rms_norm,
// l2_normalize, activations, linear, matmul, gemm): NaN and infinities in every position and on
// every code path (vector body, scalar tail, every GEMM path), values whose squares overflow,
// means that dwarf the spread, invalid enum values, outputs that overlap their inputs, options
// that are finite in double but not in float, and empty shapes (run under UBSan too).
//
// Each case states the right value, from PyTorch where it has one (torch 1.13: softmax([inf, 0])
// is [nan, nan], logsumexp([inf]) is inf, rms_norm([inf, 1]) is [nan, 0]) or from a long double
// reference. To add a case: write a TEST or TYPED_TEST (typed over tessera::test::Scalars when
// the scalar type matters) in the section of its kind below; this file is a CTest executable of
// its own (robustness_kernels_test) through the glob in tests/CMakeLists.txt.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"
#include "test_util.hpp"

namespace kernels_test {

using tessera::Activation;
using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::TensorMap;
using tessera::ValueError;
using R = long double;

template <class T>
class KernelsRobustness : public ::testing::Test {};
TYPED_TEST_SUITE(KernelsRobustness, tessera::test::Scalars);

template <class T>
constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();
template <class T>
constexpr T kInf = std::numeric_limits<T>::infinity();

// Row lengths that cover an empty vector body, one and several packets (AVX-512, AVX2 and SSE
// widths in float and double), the 4-packet unrolled loops and their scalar tails.
constexpr Index kLengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257};

std::string at(Index n, Index pos) {
  return "n=" + std::to_string(n) + " pos=" + std::to_string(pos);
}

// Positions worth a special value in a row of n: first, last, middle, and the last full packet's.
std::vector<Index> positions(Index n) {
  std::vector<Index> p = {0, n - 1, n / 2};
  if (n > 17) p.push_back(n - 17);
  return p;
}

template <class T>
bool all_nan(const T* p, Index n) {
  for (Index j = 0; j < n; ++j)
    if (!std::isnan(p[j])) return false;
  return true;
}
template <class T>
bool all_finite(const T* p, Index n) {
  for (Index j = 0; j < n; ++j)
    if (!std::isfinite(p[j])) return false;
  return true;
}

// =============================================================================================
// The AVX2 bug: e^-inf must be exactly 0 on every instruction set (Eigen's float exp without
// AVX-512 clamps at -88.72 and gave the subnormal 2.94e-39).
// =============================================================================================

TYPED_TEST(KernelsRobustness, ExpOfMinusInfinityAndBelowTheClampIsExactlyZero) {
  using T = TypeParam;
  namespace simd = tessera::simd;
  constexpr Index W = simd::width<T>;
  const T below_clamp = std::is_same_v<T, float> ? T(-88.8) : T(-710);
  for (T v : {-kInf<T>, below_clamp, T(-1000), -std::numeric_limits<T>::max()}) {
    std::vector<T> e(static_cast<std::size_t>(W)), f(static_cast<std::size_t>(W));
    simd::store(e.data(), simd::exp(simd::set1<T>(v)));
    simd::store(f.data(), simd::exp_fast(simd::set1<T>(v)));
    for (Index i = 0; i < W; ++i) {
      EXPECT_EQ(e[i], T(0)) << "exp(" << v << ") lane " << i;
      EXPECT_EQ(f[i], T(0)) << "exp_fast(" << v << ") lane " << i;
    }
  }
}

TYPED_TEST(KernelsRobustness, ExpOfNaNIsNaN) {
  using T = TypeParam;
  namespace simd = tessera::simd;
  constexpr Index W = simd::width<T>;
  std::vector<T> e(static_cast<std::size_t>(W)), f(static_cast<std::size_t>(W));
  simd::store(e.data(), simd::exp(simd::set1<T>(kNaN<T>)));
  simd::store(f.data(), simd::exp_fast(simd::set1<T>(kNaN<T>)));
  EXPECT_TRUE(all_nan(e.data(), W)) << "exp(NaN) gave " << e[0];
  EXPECT_TRUE(all_nan(f.data(), W)) << "exp_fast(NaN) gave " << f[0];
}

// =============================================================================================
// Kind 6: NaN in, NaN out, on every row length and every path; fully masked rows stay zeros.
// =============================================================================================

// softmax([NaN, NaN]) gave [0, 0]: the scalar row maximum skipped NaN and the row looked masked.
TYPED_TEST(KernelsRobustness, SoftmaxOfAllNaNIsNaN) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(Shape<2>{2, n});
    x.setConstant(kNaN<T>);
    const auto s = tessera::softmax(x), ls = tessera::log_softmax(x);
    const auto lse = tessera::logsumexp(x);
    EXPECT_TRUE(all_nan(s.data(), 2 * n)) << "softmax n=" << n;
    EXPECT_TRUE(all_nan(ls.data(), 2 * n)) << "log_softmax n=" << n;
    EXPECT_TRUE(all_nan(lse.data(), 2)) << "logsumexp n=" << n;
  }
}

// One NaN among finite logits, or among -inf ones (a row that looked fully masked), anywhere.
TYPED_TEST(KernelsRobustness, OneNaNMakesTheSoftmaxRowNaNAndLeavesOtherRowsAlone) {
  using T = TypeParam;
  for (T rest : {T(0.5), -kInf<T>})
    for (Index n : kLengths)
      for (Index pos : positions(n)) {
        SCOPED_TRACE(at(n, pos) + " rest=" + std::to_string(double(rest)));
        Tensor<T, 2> x(Shape<2>{3, n});
        x.setRandom(7, -3, 3);
        for (Index j = 0; j < n; ++j) x(1, j) = rest == T(0.5) ? x(1, j) : rest;
        x(1, pos) = kNaN<T>;
        const auto s = tessera::softmax(x), ls = tessera::log_softmax(x);
        const auto lse = tessera::logsumexp(x);
        EXPECT_TRUE(all_nan(s.data() + n, n));
        EXPECT_TRUE(all_nan(ls.data() + n, n));
        EXPECT_TRUE(std::isnan(lse(1)));
        for (Index r : {0, 2}) {
          EXPECT_TRUE(all_finite(s.data() + r * n, n)) << "row " << r;
          EXPECT_TRUE(all_finite(ls.data() + r * n, n)) << "row " << r;
          EXPECT_TRUE(std::isfinite(lse(r))) << "row " << r;
        }
      }
}

// A NaN under the mask is masked out (it counts as -inf); one the mask lets through is not.
TYPED_TEST(KernelsRobustness, MaskedNaNIsIgnoredUnmaskedNaNPropagates) {
  using T = TypeParam;
  for (Index n : {Index{2}, Index{17}, Index{64}}) {
    Tensor<T, 2> x(Shape<2>{1, n});
    x.setRandom(3, -1, 1);
    x(0, 0) = kNaN<T>;
    Tensor<bool, 2> blocked(Shape<2>{1, n});
    blocked(0, 0) = true;
    const auto s = tessera::softmax(x, {.mask = tessera::Mask::blocked(blocked)});
    EXPECT_EQ(s(0, 0), T(0)) << "n=" << n;
    EXPECT_TRUE(all_finite(s.data(), n)) << "n=" << n;
    blocked(0, 0) = false;
    blocked(0, n - 1) = true;
    const auto s2 = tessera::softmax(x, {.mask = tessera::Mask::blocked(blocked)});
    EXPECT_TRUE(all_nan(s2.data(), n)) << "n=" << n;
    // Fully masked rows still give zeros, -inf and -inf, not NaN.
    blocked.setConstant(true);
    const tessera::SoftmaxOptions all_masked{.mask = tessera::Mask::blocked(blocked)};
    const auto z = tessera::softmax(x, all_masked);
    const auto lz = tessera::log_softmax(x, all_masked);
    const auto lse = tessera::logsumexp(x, all_masked);
    for (Index j = 0; j < n; ++j) {
      EXPECT_EQ(z(0, j), T(0));
      EXPECT_EQ(lz(0, j), -kInf<T>);
    }
    EXPECT_EQ(lse(0), -kInf<T>);
  }
}

TYPED_TEST(KernelsRobustness, NaNMakesTheNormRowNaN) {
  using T = TypeParam;
  for (Index n : kLengths)
    for (Index pos : positions(n)) {
      SCOPED_TRACE(at(n, pos));
      Tensor<T, 2> x(Shape<2>{3, n});
      x.setRandom(11, -2, 2);
      x(1, pos) = kNaN<T>;
      const auto ln = tessera::layer_norm(x), rms = tessera::rms_norm(x);
      const auto l2 = tessera::l2_normalize(x);
      EXPECT_TRUE(all_nan(ln.data() + n, n)) << "layer_norm";
      EXPECT_TRUE(all_nan(rms.data() + n, n)) << "rms_norm";
      EXPECT_TRUE(all_nan(l2.data() + n, n)) << "l2_normalize";
      for (Index r : {0, 2}) {
        EXPECT_TRUE(all_finite(ln.data() + r * n, n)) << "layer_norm row " << r;
        EXPECT_TRUE(all_finite(rms.data() + r * n, n)) << "rms_norm row " << r;
        EXPECT_TRUE(all_finite(l2.data() + r * n, n)) << "l2_normalize row " << r;
      }
    }
}

TYPED_TEST(KernelsRobustness, EveryActivationOfNaNIsNaN) {
  using T = TypeParam;
  for (Activation act :
       {Activation::identity, Activation::relu, Activation::gelu, Activation::gelu_tanh,
        Activation::silu, Activation::tanh, Activation::quick_gelu})
    for (Index n : kLengths) {
      Tensor<T, 1> x(n);
      x.setConstant(kNaN<T>);
      const auto y = tessera::activate(act, x);
      EXPECT_TRUE(all_nan(y.data(), n)) << tessera::to_string(act) << " n=" << n;
    }
}

// A NaN in a[i, t] makes row i of a b NaN and nothing else; a NaN in b[t, j] column j. Sizes
// reach Eigen's small product, its GEMV (fewer rows than the micro-tile), the packed kernel with
// edge tiles and several k blocks, and a prepacked b; every transpose.
template <class T>
void expect_gemm_nan_lines(Index m, Index n, Index k, bool ta, bool tb, bool prepack) {
  SCOPED_TRACE("m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
               " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
               " prepack=" + std::to_string(prepack));
  std::vector<T> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n)),
      c(static_cast<std::size_t>(m * n), T(-7));
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(-1, 1);
  for (auto& v : a) v = static_cast<T>(u(rng));
  for (auto& v : b) v = static_cast<T>(u(rng));
  const Index ni = m / 2, nj = n - 1, nt = k / 2;  // NaN at a(ni, nt) and b(nt, nj)
  a[static_cast<std::size_t>(ta ? nt * m + ni : ni * k + nt)] = kNaN<T>;
  b[static_cast<std::size_t>(tb ? nj * k + nt : nt * n + nj)] = kNaN<T>;
  tessera::GemmProblem<T> p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a.data();
  p.lda = ta ? m : k;
  p.trans_a = ta;
  p.b = b.data();
  p.ldb = tb ? k : n;
  p.trans_b = tb;
  p.c = c.data();
  p.ldc = n;
  tessera::PackedMatrix<T> packed;
  if (prepack) {
    packed = tessera::PackedMatrix<T>(b.data(), p.ldb, tb, k, n);
    p.packed_b = &packed;
  }
  tessera::gemm(p);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      const T v = c[static_cast<std::size_t>(i * n + j)];
      if (i == ni || j == nj)
        ASSERT_TRUE(std::isnan(v)) << "c(" << i << ", " << j << ") = " << v;
      else
        ASSERT_TRUE(std::isfinite(v)) << "c(" << i << ", " << j << ") = " << v;
    }
}

TYPED_TEST(KernelsRobustness, NaNInAGemmOperandGivesNaNInItsRowOrColumnOnEveryPath) {
  using T = TypeParam;
  using B = tessera::GemmBlocking<T>;
  const Index sizes[][3] = {{3, 4, 5},                                  // Eigen's small product
                            {B::MR - 1, 300, 200},                      // Eigen's GEMV-like path
                            {2 * B::MR + 1, 2 * B::NR + 3, B::KC + 5},  // packed, edge tiles
                            {B::MC + 3, B::NR * 3, 2 * B::KC + 1}};     // several blocks
  for (const auto& s : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool prepack : {false, true}) {
          expect_gemm_nan_lines<T>(s[0], s[1], s[2], ta, tb, prepack);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

// linear: a NaN in the weight's row o makes output column o NaN; in the bias, too; in x's row r,
// output row r. With and without a prepacked weight, with an activation and a residual.
TYPED_TEST(KernelsRobustness, NaNInLinearOperandsPropagates) {
  using T = TypeParam;
  for (Index rows : {Index{2}, Index{40}})
    for (bool prepack : {false, true}) {
      SCOPED_TRACE("rows=" + std::to_string(rows) + " prepack=" + std::to_string(prepack));
      const Index in = 37, out = 45;
      Tensor<T, 2> x(Shape<2>{rows, in}), w(Shape<2>{out, in}), res(Shape<2>{rows, out});
      Tensor<T, 1> bias(out);
      x.setRandom(1);
      w.setRandom(2);
      bias.setRandom(3);
      res.setRandom(4);
      w(3, 30) = kNaN<T>;
      bias(10) = kNaN<T>;
      x(1, 20) = kNaN<T>;
      const tessera::LinearOptions<T> opts{.bias = tessera::cview(bias),
                                           .activation = Activation::gelu,
                                           .residual = tessera::cview(res)};
      const auto y = prepack ? tessera::linear(x, tessera::PackedMatrix<T>::from_weight(w), opts)
                             : tessera::linear(x, w, opts);
      for (Index r = 0; r < rows; ++r)
        for (Index o = 0; o < out; ++o) {
          if (r == 1 || o == 3 || o == 10)
            EXPECT_TRUE(std::isnan(y(r, o))) << "(" << r << ", " << o << ")";
          else
            EXPECT_TRUE(std::isfinite(y(r, o))) << "(" << r << ", " << o << ")";
        }
    }
}

TYPED_TEST(KernelsRobustness, NaNInMatmulOperandsPropagatesAndAccumulateKeepsNaN) {
  using T = TypeParam;
  for (Index m : {Index{3}, Index{50}}) {
    Tensor<T, 3> a(Shape<3>{2, m, 40}), b(Shape<3>{2, 40, 33});
    a.setRandom(1);
    b.setRandom(2);
    a(1, 2, 39) = kNaN<T>;
    const auto c = tessera::matmul(a, b);
    for (Index q = 0; q < 2; ++q)
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < 33; ++j) {
          if (q == 1 && i == 2)
            EXPECT_TRUE(std::isnan(c(q, i, j)));
          else
            EXPECT_TRUE(std::isfinite(c(q, i, j)));
        }
    // c += a b with a NaN already in c: it stays.
    Tensor<T, 3> acc(Shape<3>{2, m, 33});
    acc(0, 0, 0) = kNaN<T>;
    a(1, 2, 39) = T(0.25);
    tessera::matmul_into(a, b, acc, {.accumulate = true});
    EXPECT_TRUE(std::isnan(acc(0, 0, 0)));
    EXPECT_TRUE(std::isfinite(acc(0, 0, 1)));
  }
}

// =============================================================================================
// Kind 7: invalid enum values are a ValueError naming the function and the value.
// =============================================================================================

TYPED_TEST(KernelsRobustness, InvalidActivationIsAValueError) {
  using T = TypeParam;
  const auto bad = static_cast<Activation>(42);
  Tensor<T, 2> x(Shape<2>{3, 4}), w(Shape<2>{5, 4}), y(Shape<2>{3, 5});
  x.setRandom(1);
  w.setRandom(2);
  TESSERA_EXPECT_THROW_MSG(tessera::activate(bad, x), ValueError, "tessera::activate", "'act'",
                           "Activation(42)");
  TESSERA_EXPECT_THROW_MSG(tessera::activate_into(bad, x, x), ValueError, "tessera::activate",
                           "Activation(42)");
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, w, {.activation = bad}), ValueError,
                           "tessera::linear", "'activation'", "Activation(42)");
  TESSERA_EXPECT_THROW_MSG(
      tessera::linear(x, tessera::PackedMatrix<T>::from_weight(w), {.activation = bad}), ValueError,
      "tessera::linear", "Activation(42)");
  tessera::GemmProblem<T> p;
  p.m = 3;
  p.n = 5;
  p.k = 4;
  p.a = x.data();
  p.lda = 4;
  p.b = w.data();
  p.ldb = 4;
  p.trans_b = true;
  p.c = y.data();
  p.ldc = 5;
  p.epilogue.activation = static_cast<Activation>(-1);
  TESSERA_EXPECT_THROW_MSG(tessera::gemm(p), ValueError, "tessera::gemm", "Activation(-1)");
  EXPECT_EQ(tessera::to_string(bad), "unknown");
}

// =============================================================================================
// Kind 9: outputs that overlap their inputs are computed right (exact in-place row-wise and
// element-wise kernels) or rejected with a ValueError.
// =============================================================================================

TYPED_TEST(KernelsRobustness, LinearOutputOverlappingAnInputIsAValueError) {
  using T = TypeParam;
  Tensor<T, 2> x(Shape<2>{6, 8}), w(Shape<2>{8, 8}), res(Shape<2>{6, 8});
  Tensor<T, 1> bias(8);
  x.setRandom(1);
  w.setRandom(2);
  res.setRandom(3);
  // linear_into(x, W, x) gave errors up to 165.
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w, x), ValueError, "tessera::linear",
                           "'out' overlaps argument 'x'");
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, tessera::PackedMatrix<T>::from_weight(w), x),
                           ValueError, "tessera::linear", "'out' overlaps argument 'x'");
  // A partial overlap: out starts inside x.
  Tensor<T, 1> buf(6 * 8 + 4);
  buf.setRandom(4);
  TensorMap<const T, 2> xs(buf.data(), Shape<2>{6, 8});
  TensorMap<T, 2> ys(buf.data() + 4, Shape<2>{6, 8});
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(xs, w, ys), ValueError, "'x'");
  TensorMap<T, 2> out_in_w(w.data(), Shape<2>{6, 8});
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w, out_in_w), ValueError, "'weight'");
  // A residual that is the output: errors up to 25.
  Tensor<T, 2> y(Shape<2>{6, 8});
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w, y, {.residual = tessera::cview(y)}),
                           ValueError, "'residual'");
  TensorMap<T, 1> y_row(y.data(), Shape<1>{8});
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w, y, {.bias = tessera::cview(y_row)}),
                           ValueError, "'bias'");
  // Disjoint operands still work.
  EXPECT_NO_THROW(tessera::linear_into(
      x, w, y, {.bias = tessera::cview(bias), .residual = tessera::cview(res)}));
}

TYPED_TEST(KernelsRobustness, MatmulOutputOverlappingAnOperandIsAValueError) {
  using T = TypeParam;
  Tensor<T, 2> a(Shape<2>{8, 8}), b(Shape<2>{8, 8});
  a.setRandom(1);
  b.setRandom(2);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a, b, a), ValueError, "tessera::matmul",
                           "'out' overlaps argument 'a'");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a, b, b, {.accumulate = true}), ValueError,
                           "tessera::matmul", "'out' overlaps argument 'b'");
  Tensor<T, 3> a3(Shape<3>{3, 4, 4}), b3(Shape<3>{3, 4, 4});
  TensorMap<T, 3> last(a3.data() + 2 * 16, Shape<3>{1, 4, 4});
  TensorMap<const T, 3> a1(a3.data(), Shape<3>{1, 4, 4}), b1(b3.data(), Shape<3>{1, 4, 4});
  EXPECT_NO_THROW(tessera::matmul_into(a1, b1, last));  // disjoint parts of one buffer
  TensorMap<const T, 3> a_all(a3.data(), Shape<3>{3, 4, 4});
  TensorMap<T, 3> c_all(b3.data(), Shape<3>{3, 4, 4});
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a_all, b3, c_all), ValueError, "'b'");
}

// Row-wise and element-wise kernels: out may be x itself (and gives the out-of-place answer),
// but not a partial overlap of it.
TYPED_TEST(KernelsRobustness, RowwiseOutputsMayBeTheInputButNotOverlapItPartially) {
  using T = TypeParam;
  constexpr Index rows = 4, n = 19;
  Tensor<T, 1> buf(rows * n + 5);
  buf.setRandom(9, -2, 2);
  TensorMap<const T, 2> x(buf.data(), Shape<2>{rows, n});
  TensorMap<T, 2> shifted(buf.data() + 5, Shape<2>{rows, n});
  TESSERA_EXPECT_THROW_MSG(tessera::softmax_into(x, shifted), ValueError, "tessera::softmax",
                           "partially overlaps");
  TESSERA_EXPECT_THROW_MSG(tessera::log_softmax_into(x, shifted), ValueError,
                           "tessera::log_softmax", "partially overlaps");
  TESSERA_EXPECT_THROW_MSG(tessera::layer_norm_into(x, shifted), ValueError, "tessera::layer_norm",
                           "partially overlaps");
  TESSERA_EXPECT_THROW_MSG(tessera::rms_norm_into(x, shifted), ValueError, "tessera::rms_norm",
                           "partially overlaps");
  TESSERA_EXPECT_THROW_MSG(tessera::l2_normalize_into(x, shifted), ValueError,
                           "tessera::l2_normalize", "partially overlaps");
  TESSERA_EXPECT_THROW_MSG(tessera::gelu_into(x, shifted), ValueError, "tessera::gelu",
                           "partially overlaps");
  // Exactly in place: the same answer as into a fresh tensor.
  Tensor<T, 2> fresh(Shape<2>{rows, n}), in_place(Shape<2>{rows, n});
  std::copy(x.data(), x.data() + rows * n, in_place.data());
  tessera::layer_norm_into(x, fresh);
  tessera::layer_norm_into(in_place, in_place);
  EXPECT_TRUE(tessera::test::same_bits(fresh, in_place));
  // A weight or bias inside the output is read after rows of it were written.
  Tensor<T, 2> y(Shape<2>{rows, n});
  TensorMap<const T, 1> w_in_y(y.data() + n, Shape<1>{n});
  Tensor<T, 2> xt(Shape<2>{rows, n});
  xt.setRandom(2);
  TESSERA_EXPECT_THROW_MSG(tessera::layer_norm_into(xt, y, {.weight = w_in_y}), ValueError,
                           "tessera::layer_norm", "'weight' overlaps argument 'out'");
  TESSERA_EXPECT_THROW_MSG(tessera::layer_norm_into(xt, y, {.bias = w_in_y}), ValueError,
                           "'bias' overlaps argument 'out'");
  TESSERA_EXPECT_THROW_MSG(tessera::rms_norm_into(xt, y, {.weight = w_in_y}), ValueError,
                           "tessera::rms_norm", "'weight' overlaps argument 'out'");
}

// =============================================================================================
// Kind 10: reductions keep their precision and do not overflow.
// =============================================================================================

// layer_norm of 1024 floats 1e6 + U(0, 1): the error was 1.42 against the float64 answer
// (PyTorch: 0.018). In double the same with 1e14 + U(0, 1).
TYPED_TEST(KernelsRobustness, LayerNormOfALargeMeanKeepsThePrecisionOfTheSpread) {
  using T = TypeParam;
  const R offset = std::is_same_v<T, float> ? R(1e6) : R(1e14);
  constexpr Index n = 1024;
  Tensor<T, 1> x(n);
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> u(0, 1);
  for (Index j = 0; j < n; ++j) x(j) = static_cast<T>(offset + R(u(rng)));
  R mean = 0;
  for (Index j = 0; j < n; ++j) mean += R(x(j));
  mean /= n;
  R var = 0;
  for (Index j = 0; j < n; ++j) var += (R(x(j)) - mean) * (R(x(j)) - mean);
  var /= n;
  const auto y = tessera::layer_norm(x);
  R worst = 0;
  for (Index j = 0; j < n; ++j)
    worst = std::max(worst, std::fabs(R(y(j)) - (R(x(j)) - mean) / std::sqrt(var + R(1e-5))));
  // float: 2e-4 (the input's own quantisation is 0.0625 of a spread of 1 in float, so the
  // reference has the same inputs; PyTorch is at 0.018); double: 1e-9.
  const R limit = std::is_same_v<T, float> ? R(2e-4) : R(1e-9);
  EXPECT_LT(worst, limit);
}

// Floats around 1e20 (doubles around 1e160): the sum of squares overflowed and the rows came out
// zero. Each row against a long double reference, on row lengths that take every code path, and
// rows near the largest finite value, whose plain sum overflows too.
TYPED_TEST(KernelsRobustness, NormsOfRowsWhoseSquaresOverflowAreRight) {
  using T = TypeParam;
  const T big = std::is_same_v<T, float> ? T(1e20) : T(1e160);
  for (T scale : {big, std::numeric_limits<T>::max() / T(4)})
    for (Index n : {Index{1}, Index{2}, Index{17}, Index{64}, Index{1000}}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " scale=" + std::to_string(double(scale)));
      Tensor<T, 2> x(Shape<2>{2, n});
      x.setRandom(5, -1, 1);
      for (Index j = 0; j < 2 * n; ++j) x.data()[j] *= scale;
      Tensor<T, 1> w(n), b(n);
      w.setRandom(6, 0.5, 1.5);
      b.setRandom(7);
      const auto ln =
          tessera::layer_norm(x, {.weight = tessera::cview(w), .bias = tessera::cview(b)});
      const auto rms = tessera::rms_norm(x, {.weight = tessera::cview(w)});
      const auto l2 = tessera::l2_normalize(x);
      const T tol = std::is_same_v<T, float> ? T(2e-5) : T(1e-12);
      for (Index r = 0; r < 2; ++r) {
        R mean = 0, ss = 0;
        for (Index j = 0; j < n; ++j) mean += R(x(r, j));
        mean /= n;
        R var = 0;
        for (Index j = 0; j < n; ++j) {
          var += (R(x(r, j)) - mean) * (R(x(r, j)) - mean);
          ss += R(x(r, j)) * R(x(r, j));
        }
        var /= n;
        for (Index j = 0; j < n; ++j) {
          const R ln_ref = (R(x(r, j)) - mean) / std::sqrt(var + R(1e-5)) * R(w(j)) + R(b(j));
          const R rms_ref =
              R(x(r, j)) / std::sqrt(ss / n + R(std::numeric_limits<T>::epsilon())) * R(w(j));
          const R l2_ref = R(x(r, j)) / std::sqrt(ss);
          ASSERT_TRUE(tessera::test::close<T>(ln(r, j), T(ln_ref), tol, tol)) << "layer_norm " << j;
          ASSERT_TRUE(tessera::test::close<T>(rms(r, j), T(rms_ref), tol, tol)) << "rms_norm " << j;
          ASSERT_TRUE(tessera::test::close<T>(l2(r, j), T(l2_ref), tol, tol)) << "l2 " << j;
        }
      }
    }
}

// =============================================================================================
// Kind 11: infinities. PyTorch: logsumexp([inf]) = inf, logsumexp([inf, 0]) = inf,
// softmax([inf, 0]) = [nan, nan], log_softmax the same; F.normalize([inf, 1]) = [nan, 0];
// rms_norm([inf, 1]) = [nan, 0]; layer_norm([inf, 1]) = [nan, nan].
// =============================================================================================

TYPED_TEST(KernelsRobustness, LogsumexpOfPlusInfinityIsPlusInfinity) {
  using T = TypeParam;
  for (Index n : kLengths)
    for (Index pos : positions(n)) {
      SCOPED_TRACE(at(n, pos));
      Tensor<T, 1> x(n);
      x.setRandom(3, -5, 5);
      x(pos) = kInf<T>;
      EXPECT_EQ(tessera::logsumexp(x)(), kInf<T>);
      const auto s = tessera::softmax(x), ls = tessera::log_softmax(x);
      EXPECT_TRUE(all_nan(s.data(), n)) << "softmax";
      EXPECT_TRUE(all_nan(ls.data(), n)) << "log_softmax";
      x(pos == 0 ? n - 1 : 0) = -kInf<T>;  // [inf, -inf, ...]: still inf
      EXPECT_EQ(tessera::logsumexp(x)(), n > 1 ? kInf<T> : T(-kInf<T>));
      if (n > 1) {
        x((pos + 1) % n) = kNaN<T>;  // [inf, NaN]: NaN
        EXPECT_TRUE(std::isnan(tessera::logsumexp(x)()));
      }
    }
  Tensor<T, 1> one(1), two(2);
  one(0) = kInf<T>;
  two(0) = kInf<T>;
  two(1) = T(0);
  EXPECT_EQ(tessera::logsumexp(one)(), kInf<T>);
  EXPECT_EQ(tessera::logsumexp(two)(), kInf<T>);
}

TYPED_TEST(KernelsRobustness, MinusInfinityLogitsAreMaskedOutExactly) {
  using T = TypeParam;
  Tensor<T, 1> x(2);
  x(0) = -kInf<T>;
  x(1) = T(0);
  const auto s = tessera::softmax(x), ls = tessera::log_softmax(x);
  EXPECT_EQ(s(0), T(0));
  EXPECT_EQ(s(1), T(1));
  EXPECT_EQ(ls(0), -kInf<T>);
  EXPECT_EQ(ls(1), T(0));
  EXPECT_EQ(tessera::logsumexp(x)(), T(0));
}

TYPED_TEST(KernelsRobustness, NormsOfAnInfiniteEntryFollowPyTorch) {
  using T = TypeParam;
  for (T v : {kInf<T>, -kInf<T>}) {
    Tensor<T, 1> x(2);
    x(0) = v;
    x(1) = T(1);
    const auto l2 = tessera::l2_normalize(x), rms = tessera::rms_norm(x);
    const auto ln = tessera::layer_norm(x);
    EXPECT_TRUE(std::isnan(l2(0)));
    EXPECT_EQ(l2(1), T(0));
    EXPECT_TRUE(std::isnan(rms(0)));
    EXPECT_EQ(rms(1), T(0));
    EXPECT_TRUE(std::isnan(ln(0)));
    EXPECT_TRUE(std::isnan(ln(1)));
  }
}

// =============================================================================================
// Kind 8: options that are finite in double but not in the scalar type computed in.
// =============================================================================================

TEST(KernelsRobustnessFloat, OptionsThatOverflowOrVanishInFloatAreValueErrors) {
  Tensor<float, 2> x(Shape<2>{2, 3}), b(Shape<2>{3, 3});
  x.setRandom(1);
  b.setRandom(2);
  TESSERA_EXPECT_THROW_MSG(tessera::layer_norm(x, {.eps = 1e39}), ValueError, "tessera::layer_norm",
                           "'eps'");
  TESSERA_EXPECT_THROW_MSG(tessera::layer_norm(x, {.eps = 1e-50}), ValueError,
                           "tessera::layer_norm", "'eps'");
  TESSERA_EXPECT_THROW_MSG(tessera::rms_norm(x, {.eps = 1e39}), ValueError, "tessera::rms_norm",
                           "'eps'");
  TESSERA_EXPECT_THROW_MSG(tessera::l2_normalize(x, {.eps = 1e39}), ValueError,
                           "tessera::l2_normalize", "'eps'");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(x, b, {.alpha = 1e39}), ValueError, "tessera::matmul",
                           "'alpha'");
  // The same values are fine in double.
  Tensor<double, 2> xd(Shape<2>{2, 3}), bd(Shape<2>{3, 3});
  xd.setRandom(1);
  bd.setRandom(2);
  EXPECT_NO_THROW(tessera::layer_norm(xd, {.eps = 1e-50}));
  EXPECT_NO_THROW(tessera::matmul(xd, bd, {.alpha = 1e39}));
}

// =============================================================================================
// Kind 15: empty inputs (no null-pointer arithmetic; run under UBSan) give the empty result or
// the value of an empty reduction.
// =============================================================================================

TYPED_TEST(KernelsRobustness, EmptyShapesEverywhere) {
  using T = TypeParam;
  for (const Shape<2>& s : {Shape<2>{0, 5}, Shape<2>{5, 0}, Shape<2>{0, 0}}) {
    SCOPED_TRACE(tessera::detail::shape_string(s));
    Tensor<T, 2> x(s);
    EXPECT_EQ(tessera::softmax(x).shape(), s);
    EXPECT_EQ(tessera::log_softmax(x).shape(), s);
    const auto lse = tessera::logsumexp(x);
    for (Index r = 0; r < s[0]; ++r) EXPECT_EQ(lse(r), -kInf<T>);  // the empty sum
    EXPECT_EQ(tessera::layer_norm(x).shape(), s);
    EXPECT_EQ(tessera::rms_norm(x).shape(), s);
    EXPECT_EQ(tessera::l2_normalize(x).shape(), s);
    EXPECT_EQ(tessera::gelu(x).shape(), s);
    // linear [rows, in] x [out, in]^T: zero in-features give the bias.
    Tensor<T, 2> w(Shape<2>{3, s[1]});
    Tensor<T, 1> bias(3);
    bias.setConstant(T(2));
    const auto y = tessera::linear(x, w, {.bias = tessera::cview(bias)});
    EXPECT_EQ(y.shape(), (Shape<2>{s[0], 3}));
    for (Index j = 0; j < y.size(); ++j) EXPECT_EQ(y.data()[j], T(2));
    Tensor<T, 2> w0(Shape<2>{0, s[1]});
    EXPECT_EQ(tessera::linear(x, w0).shape(), (Shape<2>{s[0], 0}));
    // matmul [m, k] x [k, 4]: k = 0 gives zeros.
    Tensor<T, 2> b(Shape<2>{s[1], 4});
    const auto c = tessera::matmul(x, b);
    EXPECT_EQ(c.shape(), (Shape<2>{s[0], 4}));
    for (Index j = 0; j < c.size(); ++j) EXPECT_EQ(c.data()[j], T(0));
    Tensor<T, 3> a3(Shape<3>{2, s[0], s[1]}), b3(Shape<3>{2, s[1], 4});
    EXPECT_EQ(tessera::matmul(a3, b3).shape(), (Shape<3>{2, s[0], 4}));
  }
  Tensor<T, 1> empty(0);
  EXPECT_EQ(tessera::logsumexp(empty)(), -kInf<T>);
}

}  // namespace kernels_test
