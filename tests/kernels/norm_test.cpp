// Tests for tessera/kernels/norm.hpp: layer_norm and rms_norm against a long double reference
// loop, with and without weight and bias, default and custom eps, rows with a large mean, in-place
// use, empty shapes, thread-count invariance and the messages of every error.
#include "tessera/kernels/norm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace norm_test {

using tessera::Index;
using tessera::LayerNormOptions;
using tessera::RMSNormOptions;
using tessera::Shape;
using tessera::Tensor;
using tessera::test::close;
using tessera::test::tol;
using R = long double;

constexpr Index kLengths[] = {1, 7, 17, 1000, 4099};
constexpr Index kRows = 5;

template <class T>
class NormTest : public ::testing::Test {};
TYPED_TEST_SUITE(NormTest, tessera::test::Scalars);

// ---- reference -------------------------------------------------------------------------------

// (x - mean) / sqrt(var + eps) * w + b per row, var the population variance; w, b may be null.
template <class T>
std::vector<R> ref_layer_norm(const T* x, Index rows, Index n, R eps, const T* w, const T* b) {
  std::vector<R> y(static_cast<std::size_t>(rows * n));
  for (Index r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    R mean = 0;
    for (Index j = 0; j < n; ++j) mean += xr[j];
    mean /= n;
    R var = 0;
    for (Index j = 0; j < n; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= n;
    const R inv = 1 / std::sqrt(var + eps);
    for (Index j = 0; j < n; ++j)
      y[r * n + j] = (xr[j] - mean) * inv * (w ? R(w[j]) : R(1)) + (b ? R(b[j]) : R(0));
  }
  return y;
}

// x / sqrt(mean(x^2) + eps) * w per row; w may be null.
template <class T>
std::vector<R> ref_rms_norm(const T* x, Index rows, Index n, R eps, const T* w) {
  std::vector<R> y(static_cast<std::size_t>(rows * n));
  for (Index r = 0; r < rows; ++r) {
    const T* xr = x + r * n;
    R ms = 0;
    for (Index j = 0; j < n; ++j) ms += R(xr[j]) * R(xr[j]);
    ms /= n;
    const R inv = 1 / std::sqrt(ms + eps);
    for (Index j = 0; j < n; ++j) y[r * n + j] = xr[j] * inv * (w ? R(w[j]) : R(1));
  }
  return y;
}

// Every element of `got` close to the reference; reports how many are not and the first one.
template <class T>
::testing::AssertionResult all_close(const T* got, const std::vector<R>& want, T atol, T rtol) {
  std::size_t bad = 0, first = 0;
  std::string first_msg;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const auto c = close(got[i], static_cast<T>(want[i]), atol, rtol);
    if (!c && bad++ == 0) {
      first = i;
      first_msg = c.message();
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << want.size() << " elements differ; first at flat index " << first
         << ": " << first_msg;
}

template <class T, int Rank>
bool bitwise_equal(const Tensor<T, Rank>& a, const Tensor<T, Rank>& b) {
  return a.shape() == b.shape() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0);
}

// ---- layer_norm ------------------------------------------------------------------------------

struct Affine {
  bool weight, bias;
  double eps;
  const char* name;
};
constexpr Affine kAffine[] = {{false, false, 1e-5, "plain"},      {true, false, 1e-5, "weight"},
                              {false, true, 1e-5, "bias"},        {true, true, 1e-5, "weight+bias"},
                              {true, true, 0.5, "both, eps=0.5"}, {false, false, 1e-2, "eps=1e-2"}};

TYPED_TEST(NormTest, LayerNormMatchesReference) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(10 + static_cast<std::uint64_t>(n), -3.0, 3.0);
    Tensor<T, 1> w(n), b(n);
    w.setRandom(20 + static_cast<std::uint64_t>(n), 0.5, 1.5);
    b.setRandom(30 + static_cast<std::uint64_t>(n), -1.0, 1.0);
    for (const Affine& a : kAffine) {
      SCOPED_TRACE(std::string(a.name) + " n=" + std::to_string(n));
      LayerNormOptions<T> opts;
      if (a.weight) opts.weight = tessera::cview(w);
      if (a.bias) opts.bias = tessera::cview(b);
      opts.eps = a.eps;
      const auto want = ref_layer_norm(x.data(), kRows, n, R(a.eps), a.weight ? w.data() : nullptr,
                                       a.bias ? b.data() : nullptr);
      const auto y = tessera::layer_norm(x, opts);
      EXPECT_EQ(y.shape(), x.shape());
      EXPECT_TRUE(all_close(y.data(), want, tol<T>(), tol<T>()));
      Tensor<T, 2> out(kRows, n);
      tessera::layer_norm_into(x, out.view(), opts);
      EXPECT_TRUE(bitwise_equal(out, y)) << "layer_norm_into";
      Tensor<T, 2> z(x);
      tessera::layer_norm_into(z, z, opts);
      EXPECT_TRUE(bitwise_equal(z, y)) << "in place";
    }
  }
}

TYPED_TEST(NormTest, LayerNormDefaultEpsIs1e5) {
  // A row whose variance is comparable to eps tells eps = 1e-5 from other values.
  using T = TypeParam;
  Tensor<T, 2> x(3, 64);
  x.setRandom(40, -4e-3, 4e-3);  // variance about 5e-6
  const auto want = ref_layer_norm<T>(x.data(), 3, 64, R(1e-5), nullptr, nullptr);
  EXPECT_TRUE(all_close(tessera::layer_norm(x).data(), want, tol<T>(), tol<T>()));
}

TYPED_TEST(NormTest, LayerNormRank1AndRank3) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 1> v(n);
    v.setRandom(50 + static_cast<std::uint64_t>(n), -2.0, 2.0);
    EXPECT_TRUE(all_close(tessera::layer_norm(v).data(),
                          ref_layer_norm<T>(v.data(), 1, n, R(1e-5), nullptr, nullptr), tol<T>(),
                          tol<T>()))
        << "rank 1, n=" << n;
    Tensor<T, 3> x(2, 3, n);
    x.setRandom(60 + static_cast<std::uint64_t>(n), -2.0, 2.0);
    Tensor<T, 1> b(n);
    b.setRandom(70 + static_cast<std::uint64_t>(n));
    LayerNormOptions<T> opts;
    opts.bias = tessera::cview(b);
    const auto y = tessera::layer_norm(x, opts);
    EXPECT_EQ(y.shape(), x.shape());
    EXPECT_TRUE(all_close(y.data(), ref_layer_norm<T>(x.data(), 6, n, R(1e-5), nullptr, b.data()),
                          tol<T>(), tol<T>()))
        << "rank 3, n=" << n;
  }
}

TYPED_TEST(NormTest, LayerNormStaysAccurateWhenTheMeanDwarfsTheSpread) {
  // Rows 1e4 + U(-1, 1). A one-pass E[x^2] - E[x]^2 loses the variance entirely here; the two-pass
  // algorithm keeps it. The tolerance scales with the problem's condition number |mean| / stddev:
  // the mean of the row is only representable in T to about eps_T * |mean|, which moves every
  // output by that much over the stddev. A one-pass variance misses by O(1).
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(80 + static_cast<std::uint64_t>(n), 1e4 - 1.0, 1e4 + 1.0);
    const auto y = tessera::layer_norm(x);
    const auto want = ref_layer_norm<T>(x.data(), kRows, n, R(1e-5), nullptr, nullptr);
    for (Index r = 0; r < kRows; ++r) {
      R mean = 0, var = 0;
      for (Index j = 0; j < n; ++j) mean += x(r, j);
      mean /= n;
      for (Index j = 0; j < n; ++j) var += (x(r, j) - mean) * (x(r, j) - mean);
      var /= n;
      const T cond = static_cast<T>(std::fabs(mean) / std::sqrt(var + R(1e-5)));
      std::vector<R> row(want.begin() + r * n, want.begin() + (r + 1) * n);
      EXPECT_TRUE(all_close(y.data() + r * n, row, tol<T>() * cond, tol<T>()))
          << "n=" << n << " row " << r << " (mean/stddev = " << cond << ")";
    }
    if (n > 1) {  // the output still has mean 0 and variance var / (var + eps) ~ 1
      R mean = 0, sq = 0;
      for (Index j = 0; j < n; ++j) mean += y(0, j);
      for (Index j = 0; j < n; ++j) sq += R(y(0, j)) * y(0, j);
      EXPECT_NEAR(static_cast<double>(mean / n), 0.0, 1e-2) << "n=" << n;
      EXPECT_NEAR(static_cast<double>(sq / n), 1.0, 1e-2) << "n=" << n;
    }
  }
}

TYPED_TEST(NormTest, LayerNormOfAConstantRowIsTheBias) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(2, n);
    x.setConstant(T(3.25));
    for (Index j = 0; j < n; ++j) x(1, j) = T(0);
    Tensor<T, 1> b(n);
    b.setRandom(90);
    LayerNormOptions<T> opts;
    opts.bias = tessera::cview(b);
    const auto y = tessera::layer_norm(x, opts);
    for (Index r = 0; r < 2; ++r)
      for (Index j = 0; j < n; ++j) ASSERT_EQ(y(r, j), b(j)) << "n=" << n << " row " << r;
  }
}

// eps is validated as a double (> 0, finite) but used as T. A value that is positive as a double
// and zero as a float must either be rejected or still keep a constant row from 0 * inf = NaN.
TYPED_TEST(NormTest, EpsThatUnderflowsInTIsRejectedOrStillGuardsConstantRows) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 8);
  x.setConstant(T(3));
  for (Index j = 0; j < 8; ++j) x(1, j) = T(0);
  for (double eps : {1e-60, static_cast<double>(std::numeric_limits<T>::denorm_min())}) {
    SCOPED_TRACE(::testing::Message() << "eps=" << eps);
    LayerNormOptions<T> lo;
    lo.eps = eps;
    try {
      const auto y = tessera::layer_norm(x, lo);
      Index nan = 0, nonzero = 0;
      for (Index i = 0; i < y.size(); ++i) {
        nan += std::isnan(y.data()[i]) ? 1 : 0;
        nonzero += y.data()[i] != T(0) ? 1 : 0;
      }
      EXPECT_EQ(nan, 0) << "layer_norm of constant rows gave NaN, e.g. " << y(0, 0);
      EXPECT_EQ(nonzero, 0) << "layer_norm of constant rows is not all zeros";
    } catch (const tessera::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("argument 'eps'"), std::string::npos) << e.what();
    }
    RMSNormOptions<T> ro;
    ro.eps = eps;
    try {
      const auto y = tessera::rms_norm(x, ro);
      Index nan = 0;
      for (Index i = 0; i < y.size(); ++i) nan += std::isnan(y.data()[i]) ? 1 : 0;
      EXPECT_EQ(nan, 0) << "rms_norm gave NaN, e.g. " << y(1, 0);
      Index nonzero = 0, off = 0;
      for (Index j = 0; j < 8; ++j) {
        nonzero += y(1, j) != T(0) ? 1 : 0;
        off += close(y(0, j), T(1), tol<T>(), tol<T>()) ? 0 : 1;
      }
      EXPECT_EQ(nonzero, 0) << "rms_norm of the zero row is not all zeros";
      EXPECT_EQ(off, 0) << "rms_norm of the row of 3s is not all ones";
    } catch (const tessera::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("argument 'eps'"), std::string::npos) << e.what();
    }
  }
}

// ---- rms_norm --------------------------------------------------------------------------------

TYPED_TEST(NormTest, RmsNormMatchesReference) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(110 + static_cast<std::uint64_t>(n), -3.0, 3.0);
    Tensor<T, 1> w(n);
    w.setRandom(120 + static_cast<std::uint64_t>(n), -1.5, 1.5);
    struct Case {
      bool weight;
      std::optional<double> eps;
      const char* name;
    };
    for (const Case& c :
         {Case{false, std::nullopt, "default eps"}, Case{true, std::nullopt, "weight, default eps"},
          Case{false, 0.25, "eps=0.25"}, Case{true, 1e-6, "weight, eps=1e-6"}}) {
      SCOPED_TRACE(std::string(c.name) + " n=" + std::to_string(n));
      RMSNormOptions<T> opts;
      if (c.weight) opts.weight = tessera::cview(w);
      opts.eps = c.eps;
      const R eps = c.eps ? R(*c.eps) : R(std::numeric_limits<T>::epsilon());
      const auto want = ref_rms_norm(x.data(), kRows, n, eps, c.weight ? w.data() : nullptr);
      const auto y = tessera::rms_norm(x, opts);
      EXPECT_EQ(y.shape(), x.shape());
      EXPECT_TRUE(all_close(y.data(), want, tol<T>(), tol<T>()));
      Tensor<T, 2> out(kRows, n);
      tessera::rms_norm_into(x, out.view(), opts);
      EXPECT_TRUE(bitwise_equal(out, y)) << "rms_norm_into";
      Tensor<T, 2> z(x);
      tessera::rms_norm_into(z, z, opts);
      EXPECT_TRUE(bitwise_equal(z, y)) << "in place";
    }
  }
}

TYPED_TEST(NormTest, RmsNormDefaultEpsIsTheMachineEpsilonOfT) {
  // Entries of size sqrt(eps_T) make mean(x^2) comparable to eps_T, so the default is visible.
  using T = TypeParam;
  const double s = std::sqrt(static_cast<double>(std::numeric_limits<T>::epsilon()));
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(130 + static_cast<std::uint64_t>(n), -s, s);
    const auto want =
        ref_rms_norm<T>(x.data(), kRows, n, R(std::numeric_limits<T>::epsilon()), nullptr);
    const auto y = tessera::rms_norm(x);
    EXPECT_TRUE(all_close(y.data(), want, tol<T>(), tol<T>())) << "n=" << n;
    RMSNormOptions<T> explicit_eps;
    explicit_eps.eps = static_cast<double>(std::numeric_limits<T>::epsilon());
    EXPECT_TRUE(bitwise_equal(y, tessera::rms_norm(x, explicit_eps))) << "n=" << n;
  }
}

TYPED_TEST(NormTest, RmsNormOfAZeroRowIsZeroAndOfALargeMeanRowIsAccurate) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(3, n);
    x.setRandom(140 + static_cast<std::uint64_t>(n), 1e4 - 1.0, 1e4 + 1.0);
    for (Index j = 0; j < n; ++j) x(1, j) = T(0);
    const auto y = tessera::rms_norm(x);
    const auto want =
        ref_rms_norm<T>(x.data(), 3, n, R(std::numeric_limits<T>::epsilon()), nullptr);
    EXPECT_TRUE(all_close(y.data(), want, tol<T>(), tol<T>())) << "n=" << n;
    for (Index j = 0; j < n; ++j) ASSERT_EQ(y(1, j), T(0)) << "n=" << n;
  }
}

TYPED_TEST(NormTest, RmsNormRank1AndRank3) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 1> v(n);
    v.setRandom(150 + static_cast<std::uint64_t>(n));
    EXPECT_TRUE(
        all_close(tessera::rms_norm(v).data(),
                  ref_rms_norm<T>(v.data(), 1, n, R(std::numeric_limits<T>::epsilon()), nullptr),
                  tol<T>(), tol<T>()))
        << "rank 1, n=" << n;
    Tensor<T, 3> x(3, 2, n);
    x.setRandom(160 + static_cast<std::uint64_t>(n));
    Tensor<T, 1> w(n);
    w.setRandom(170 + static_cast<std::uint64_t>(n));
    RMSNormOptions<T> opts;
    opts.weight = tessera::cview(w);
    opts.eps = 1e-3;
    EXPECT_TRUE(all_close(tessera::rms_norm(x, opts).data(),
                          ref_rms_norm<T>(x.data(), 6, n, R(1e-3), w.data()), tol<T>(), tol<T>()))
        << "rank 3, n=" << n;
  }
}

// ---- empty shapes, threads -------------------------------------------------------------------

TYPED_TEST(NormTest, EmptyShapes) {
  using T = TypeParam;
  Tensor<T, 2> no_rows(0, 4), empty_rows(3, 0);
  Tensor<T, 1> w4(4), w0(0);
  LayerNormOptions<T> lo4;
  lo4.weight = tessera::cview(w4);
  lo4.bias = tessera::cview(w4);
  EXPECT_EQ(tessera::layer_norm(no_rows, lo4).shape(), (Shape<2>{0, 4}));
  LayerNormOptions<T> lo0;
  lo0.weight = tessera::cview(w0);
  lo0.bias = tessera::cview(w0);
  EXPECT_EQ(tessera::layer_norm(empty_rows, lo0).shape(), (Shape<2>{3, 0}));
  EXPECT_EQ(tessera::layer_norm(empty_rows).shape(), (Shape<2>{3, 0}));
  RMSNormOptions<T> ro0;
  ro0.weight = tessera::cview(w0);
  EXPECT_EQ(tessera::rms_norm(empty_rows, ro0).shape(), (Shape<2>{3, 0}));
  EXPECT_EQ(tessera::rms_norm(no_rows).shape(), (Shape<2>{0, 4}));
  Tensor<T, 3> x(2, 0, 5);
  EXPECT_EQ(tessera::layer_norm(x).shape(), (Shape<3>{2, 0, 5}));
  EXPECT_EQ(tessera::rms_norm(x).shape(), (Shape<3>{2, 0, 5}));
}

TYPED_TEST(NormTest, ResultsDoNotDependOnTheThreadCount) {
  using T = TypeParam;
  Tensor<T, 2> x(256, 1000);
  x.setRandom(180, -5.0, 5.0);
  Tensor<T, 1> w(1000), b(1000);
  w.setRandom(181);
  b.setRandom(182);
  LayerNormOptions<T> lo;
  lo.weight = tessera::cview(w);
  lo.bias = tessera::cview(b);
  RMSNormOptions<T> ro;
  ro.weight = tessera::cview(w);
  tessera::set_num_threads(1);
  const auto l1 = tessera::layer_norm(x, lo);
  const auto r1 = tessera::rms_norm(x, ro);
  tessera::set_num_threads(2);
  const auto l2 = tessera::layer_norm(x, lo);
  const auto r2 = tessera::rms_norm(x, ro);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_TRUE(bitwise_equal(l1, l2));
  EXPECT_TRUE(bitwise_equal(r1, r2));
}

// ---- errors ----------------------------------------------------------------------------------

TYPED_TEST(NormTest, RejectsOutOfTheWrongShape) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4), out(2, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::layer_norm_into(x, out), tessera::ShapeError,
                           "tessera::layer_norm:", "argument 'out'", "[2, 3]", "expected [2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::rms_norm_into(x, out.view()), tessera::ShapeError,
                           "tessera::rms_norm:", "argument 'out'", "[2, 3]", "expected [2, 4]");
}

TYPED_TEST(NormTest, RejectsWeightAndBiasOfTheWrongShape) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4);
  Tensor<T, 1> w4(4), w5(5), w3(3);
  {
    LayerNormOptions<T> opts;
    opts.weight = tessera::cview(w5);
    TESSERA_EXPECT_THROW_MSG(tessera::layer_norm(x, opts), tessera::ShapeError,
                             "tessera::layer_norm:", "argument 'weight'", "[5]", "expected [4]");
  }
  {
    LayerNormOptions<T> opts;
    opts.weight = tessera::cview(w4);
    opts.bias = tessera::cview(w3);
    TESSERA_EXPECT_THROW_MSG(tessera::layer_norm(x, opts), tessera::ShapeError,
                             "tessera::layer_norm:", "argument 'bias'", "[3]", "expected [4]");
  }
  {
    LayerNormOptions<T> opts;
    opts.bias = tessera::cview(w5);
    Tensor<T, 2> out(2, 4);
    TESSERA_EXPECT_THROW_MSG(tessera::layer_norm_into(x, out, opts), tessera::ShapeError,
                             "tessera::layer_norm:", "argument 'bias'", "[5]", "expected [4]");
  }
  {
    RMSNormOptions<T> opts;
    opts.weight = tessera::cview(w3);
    TESSERA_EXPECT_THROW_MSG(tessera::rms_norm(x, opts), tessera::ShapeError,
                             "tessera::rms_norm:", "argument 'weight'", "[3]", "expected [4]");
  }
}

TYPED_TEST(NormTest, RejectsEpsThatIsNotPositiveAndFinite) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4);
  struct Bad {
    double eps;
    const char* shown;
  };
  for (const Bad& bad : {Bad{0.0, "is 0,"}, Bad{-1e-5, "is -1e-05,"},
                         Bad{std::numeric_limits<double>::infinity(), "is inf,"},
                         Bad{-std::numeric_limits<double>::infinity(), "is -inf,"},
                         Bad{std::numeric_limits<double>::quiet_NaN(), "nan"}}) {
    SCOPED_TRACE(bad.shown);
    LayerNormOptions<T> lo;
    lo.eps = bad.eps;
    TESSERA_EXPECT_THROW_MSG(tessera::layer_norm(x, lo), tessera::ValueError,
                             "tessera::layer_norm:", "argument 'eps'", bad.shown,
                             "expected a finite value > 0");
    RMSNormOptions<T> ro;
    ro.eps = bad.eps;
    TESSERA_EXPECT_THROW_MSG(tessera::rms_norm(x, ro), tessera::ValueError,
                             "tessera::rms_norm:", "argument 'eps'", bad.shown,
                             "expected a finite value > 0");
    Tensor<T, 2> out(2, 4);
    TESSERA_EXPECT_THROW_MSG(tessera::rms_norm_into(x, out, ro), tessera::ValueError,
                             "tessera::rms_norm:", "argument 'eps'");
  }
}

}  // namespace norm_test
