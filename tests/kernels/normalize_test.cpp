// Tests for tessera/kernels/normalize.hpp: l2_normalize (x / max(||x||_2, eps) per row) against
// a long double reference loop, zero rows, custom eps, in-place use, empty shapes, thread-count
// invariance and the messages of every error.
#include "tessera/kernels/normalize.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace normalize_test {

using tessera::Index;
using tessera::L2NormalizeOptions;
using tessera::Shape;
using tessera::Tensor;
using tessera::test::close;
using tessera::test::tol;
using R = long double;

constexpr Index kLengths[] = {1, 7, 17, 1000, 4099};
constexpr Index kRows = 5;

template <class T>
class NormalizeTest : public ::testing::Test {};
TYPED_TEST_SUITE(NormalizeTest, tessera::test::Scalars);

template <class T>
std::vector<R> reference(const T* x, Index rows, Index n, R eps) {
  std::vector<R> y(static_cast<std::size_t>(rows * n));
  for (Index r = 0; r < rows; ++r) {
    R sq = 0;
    for (Index j = 0; j < n; ++j) sq += R(x[r * n + j]) * R(x[r * n + j]);
    const R d = std::max(std::sqrt(sq), eps);
    for (Index j = 0; j < n; ++j) y[r * n + j] = R(x[r * n + j]) / d;
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

TYPED_TEST(NormalizeTest, MatchesReference) {
  using T = TypeParam;
  for (Index n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor<T, 2> x(kRows, n);
    x.setRandom(10 + static_cast<std::uint64_t>(n), -3.0, 3.0);
    const auto want = reference(x.data(), kRows, n, R(1e-12));
    const auto y = tessera::l2_normalize(x);
    EXPECT_EQ(y.shape(), x.shape());
    EXPECT_TRUE(all_close(y.data(), want, tol<T>(), tol<T>()));
    for (Index r = 0; r < kRows; ++r) {  // unit rows
      R sq = 0;
      for (Index j = 0; j < n; ++j) sq += R(y(r, j)) * y(r, j);
      EXPECT_TRUE(close(static_cast<T>(std::sqrt(sq)), T(1), tol<T>(), T(0))) << "row " << r;
    }
    Tensor<T, 2> out(kRows, n);
    out.setConstant(T(7));
    tessera::l2_normalize_into(x, out.view());
    EXPECT_TRUE(bitwise_equal(out, y)) << "l2_normalize_into";
    Tensor<T, 2> z(x);
    tessera::l2_normalize_into(z, z);
    EXPECT_TRUE(bitwise_equal(z, y)) << "in place";
  }
}

TYPED_TEST(NormalizeTest, Rank1AndRank3AndLargeValues) {
  using T = TypeParam;
  for (Index n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor<T, 1> v(n);
    v.setRandom(20 + static_cast<std::uint64_t>(n), -1e4, 1e4);
    EXPECT_TRUE(all_close(tessera::l2_normalize(v).data(), reference(v.data(), 1, n, R(1e-12)),
                          tol<T>(), tol<T>()))
        << "rank 1";
    Tensor<T, 3> x(2, 3, n);
    x.setRandom(30 + static_cast<std::uint64_t>(n), -1e-3, 1e-3);
    const auto y = tessera::l2_normalize(x);
    EXPECT_EQ(y.shape(), x.shape());
    EXPECT_TRUE(all_close(y.data(), reference(x.data(), 6, n, R(1e-12)), tol<T>(), tol<T>()))
        << "rank 3";
  }
}

TYPED_TEST(NormalizeTest, ZeroRowsStayZero) {
  using T = TypeParam;
  for (Index n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor<T, 2> x(4, n);
    x.setRandom(40 + static_cast<std::uint64_t>(n));
    for (Index j = 0; j < n; ++j) {
      x(0, j) = T(0);
      x(2, j) = T(0);
    }
    const auto y = tessera::l2_normalize(x);
    EXPECT_TRUE(all_close(y.data(), reference(x.data(), 4, n, R(1e-12)), tol<T>(), tol<T>()));
    for (Index j = 0; j < n; ++j) {
      ASSERT_EQ(y(0, j), T(0));
      ASSERT_EQ(y(2, j), T(0));
    }
  }
}

TYPED_TEST(NormalizeTest, CustomEps) {
  // eps = 10 exceeds the norm of short rows (x / 10) and not of long ones (x / ||x||).
  using T = TypeParam;
  for (double eps : {10.0, 1e-3, 0.5}) {
    for (Index n : kLengths) {
      SCOPED_TRACE(::testing::Message() << "eps=" << eps << " n=" << n);
      Tensor<T, 2> x(kRows, n);
      x.setRandom(50 + static_cast<std::uint64_t>(n));
      for (Index j = 0; j < n; ++j) x(1, j) = T(0);
      L2NormalizeOptions opts;
      opts.eps = eps;
      const auto y = tessera::l2_normalize(x, opts);
      EXPECT_TRUE(all_close(y.data(), reference(x.data(), kRows, n, R(eps)), tol<T>(), tol<T>()));
      for (Index j = 0; j < n; ++j) ASSERT_EQ(y(1, j), T(0));
    }
  }
}

TYPED_TEST(NormalizeTest, ZeroRowsStayZeroForEveryValidEps) {
  // The header promises a zero row "is divided by eps, not by 0": 0 / eps is 0 for every eps the
  // argument check accepts (finite, > 0), down to the smallest positive T.
  using T = TypeParam;
  for (double eps : {1.0, 1e-12, 1e-30, static_cast<double>(std::numeric_limits<T>::min()),
                     static_cast<double>(std::numeric_limits<T>::denorm_min())}) {
    SCOPED_TRACE(::testing::Message() << "eps=" << eps);
    Tensor<T, 2> x(2, 33);
    x.setRandom(60);
    for (Index j = 0; j < 33; ++j) x(0, j) = T(0);
    L2NormalizeOptions opts;
    opts.eps = eps;
    const auto y = tessera::l2_normalize(x, opts);
    Index nan = 0, nonzero = 0;
    for (Index j = 0; j < 33; ++j) {
      nan += std::isnan(y(0, j)) ? 1 : 0;
      nonzero += y(0, j) != T(0) ? 1 : 0;
    }
    EXPECT_EQ(nan, 0) << "zero row became " << y(0, 0);
    EXPECT_EQ(nonzero, 0) << "zero row became " << y(0, 0);
    std::vector<R> want = reference(x.data(), 2, 33, R(eps));
    std::vector<R> second(want.begin() + 33, want.end());
    EXPECT_TRUE(all_close(y.data() + 33, second, tol<T>(), tol<T>())) << "the non-zero row";
  }
}

TYPED_TEST(NormalizeTest, EmptyShapes) {
  using T = TypeParam;
  EXPECT_EQ(tessera::l2_normalize(Tensor<T, 2>(0, 4)).shape(), (Shape<2>{0, 4}));
  EXPECT_EQ(tessera::l2_normalize(Tensor<T, 2>(3, 0)).shape(), (Shape<2>{3, 0}));
  EXPECT_EQ(tessera::l2_normalize(Tensor<T, 1>(0)).shape(), (Shape<1>{0}));
  EXPECT_EQ(tessera::l2_normalize(Tensor<T, 3>(2, 0, 3)).shape(), (Shape<3>{2, 0, 3}));
}

TYPED_TEST(NormalizeTest, ResultsDoNotDependOnTheThreadCount) {
  using T = TypeParam;
  Tensor<T, 2> x(256, 1000);
  x.setRandom(70, -5.0, 5.0);
  tessera::set_num_threads(1);
  const auto y1 = tessera::l2_normalize(x);
  tessera::set_num_threads(2);
  const auto y2 = tessera::l2_normalize(x);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_TRUE(bitwise_equal(y1, y2));
}

TYPED_TEST(NormalizeTest, RejectsOutOfTheWrongShape) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4), out(2, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::l2_normalize_into(x, out), tessera::ShapeError,
                           "tessera::l2_normalize:", "argument 'out'", "[2, 3]", "expected [2, 4]");
  Tensor<T, 3> x3(2, 3, 4), out3(3, 2, 4);
  TESSERA_EXPECT_THROW_MSG(tessera::l2_normalize_into(x3, out3.view()), tessera::ShapeError,
                           "tessera::l2_normalize:", "argument 'out'", "[3, 2, 4]",
                           "expected [2, 3, 4]");
}

TYPED_TEST(NormalizeTest, RejectsEpsThatIsNotPositiveAndFinite) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4);
  struct Bad {
    double eps;
    const char* shown;
  };
  for (const Bad& bad : {Bad{0.0, "is 0,"}, Bad{-1.0, "is -1,"},
                         Bad{std::numeric_limits<double>::infinity(), "is inf,"},
                         Bad{std::numeric_limits<double>::quiet_NaN(), "nan"}}) {
    SCOPED_TRACE(bad.shown);
    L2NormalizeOptions opts;
    opts.eps = bad.eps;
    TESSERA_EXPECT_THROW_MSG(tessera::l2_normalize(x, opts), tessera::ValueError,
                             "tessera::l2_normalize:", "argument 'eps'", bad.shown,
                             "expected a finite value > 0");
    Tensor<T, 2> out(2, 4);
    TESSERA_EXPECT_THROW_MSG(tessera::l2_normalize_into(x, out, opts), tessera::ValueError,
                             "tessera::l2_normalize:", "argument 'eps'");
  }
}

}  // namespace normalize_test
