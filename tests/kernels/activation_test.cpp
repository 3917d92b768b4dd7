// Tests for tessera/kernels/activation.hpp: relu, gelu (exact erf), gelu_tanh, silu, tanh and
// activate / activate_into for every Activation, against long double std:: functions, at large
// |x|, in place, on empty shapes, and the messages of every error.
#include "tessera/kernels/activation.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace activation_test {

using tessera::Activation;
using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::test::close;
using tessera::test::tol;
using R = long double;

constexpr Index kLengths[] = {1, 7, 17, 1000, 4099};
constexpr Index kRows = 5;
constexpr Activation kAll[] = {Activation::identity,  Activation::relu, Activation::gelu,
                               Activation::gelu_tanh, Activation::silu, Activation::tanh,
                               Activation::quick_gelu};

template <class T>
class ActivationTest : public ::testing::Test {};
TYPED_TEST_SUITE(ActivationTest, tessera::test::Scalars);

// ---- reference -------------------------------------------------------------------------------

R reference(Activation act, R x) {
  switch (act) {
    case Activation::identity:
      return x;
    case Activation::relu:
      return x > 0 ? x : R(0);
    case Activation::gelu:  // x * Phi(x), through erfc so that large negative x keeps its digits
      return R(0.5) * x * std::erfc(-x / std::sqrt(R(2)));
    case Activation::gelu_tanh: {
      const R k = std::sqrt(R(2) / R(3.14159265358979323846264338327950288L));
      return R(0.5) * x * (R(1) + std::tanh(k * (x + R(0.044715) * x * x * x)));
    }
    case Activation::silu:
      return x / (R(1) + std::exp(-x));
    case Activation::tanh:
      return std::tanh(x);
    case Activation::quick_gelu:
      return x / (R(1) + std::exp(R(-1.702) * x));
  }
  return std::numeric_limits<R>::quiet_NaN();
}

template <class T>
std::vector<R> reference(Activation act, const T* x, Index n) {
  std::vector<R> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) y[i] = reference(act, R(x[i]));
  return y;
}

// Every element of `got` close to the reference; reports how many are not and the first one.
template <class T>
::testing::AssertionResult all_close(const T* got, const T* in, const std::vector<R>& want, T atol,
                                     T rtol) {
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
         << " (x = " << in[first] << "): " << first_msg;
}

template <class T, int Rank>
bool bitwise_equal(const Tensor<T, Rank>& a, const Tensor<T, Rank>& b) {
  return a.shape() == b.shape() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0);
}

// The named returning function for each activation.
template <class X>
auto named(Activation act, const X& x) {
  switch (act) {
    case Activation::relu:
      return tessera::relu(x);
    case Activation::gelu:
      return tessera::gelu(x);
    case Activation::gelu_tanh:
      return tessera::gelu_tanh(x);
    case Activation::silu:
      return tessera::silu(x);
    case Activation::tanh:
      return tessera::tanh(x);
    case Activation::quick_gelu:
      return tessera::quick_gelu(x);
    case Activation::identity:
      break;
  }
  return tessera::activate(Activation::identity, x);
}

// The named _into function for each activation.
template <class X, class Y>
void named_into(Activation act, const X& x, Y&& out) {
  switch (act) {
    case Activation::relu:
      return tessera::relu_into(x, out);
    case Activation::gelu:
      return tessera::gelu_into(x, out);
    case Activation::gelu_tanh:
      return tessera::gelu_tanh_into(x, out);
    case Activation::silu:
      return tessera::silu_into(x, out);
    case Activation::tanh:
      return tessera::tanh_into(x, out);
    case Activation::quick_gelu:
      return tessera::quick_gelu_into(x, out);
    case Activation::identity:
      break;
  }
  tessera::activate_into(Activation::identity, x, out);
}

// ---- values ----------------------------------------------------------------------------------

TYPED_TEST(ActivationTest, EveryActivationMatchesReference) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(10 + static_cast<std::uint64_t>(n), -8.0, 8.0);
    for (Activation act : kAll) {
      SCOPED_TRACE(std::string(tessera::to_string(act)) + " n=" + std::to_string(n));
      const auto want = reference(act, x.data(), x.size());
      const auto y = tessera::activate(act, x);
      EXPECT_EQ(y.shape(), x.shape());
      EXPECT_TRUE(all_close(y.data(), x.data(), want, tol<T>(), tol<T>()));
      // activate_into, the named forms and in-place use give the same bits.
      Tensor<T, 2> out(kRows, n);
      out.setConstant(T(7));
      tessera::activate_into(act, x, out);
      EXPECT_TRUE(bitwise_equal(out, y)) << "activate_into";
      EXPECT_TRUE(bitwise_equal(named(act, x), y)) << "named function";
      out.setConstant(T(7));
      named_into(act, x, out.view());
      EXPECT_TRUE(bitwise_equal(out, y)) << "named _into function";
      Tensor<T, 2> z(x);
      tessera::activate_into(act, z, z);
      EXPECT_TRUE(bitwise_equal(z, y)) << "activate_into in place";
      Tensor<T, 2> z2(x);
      named_into(act, z2, z2);
      EXPECT_TRUE(bitwise_equal(z2, y)) << "named _into in place";
    }
  }
}

TYPED_TEST(ActivationTest, SmallInputsKeepTheirRelativeAccuracy) {
  using T = TypeParam;
  Tensor<T, 1> x(4099);
  x.setRandom(20, -1e-3, 1e-3);
  for (Activation act : kAll) {
    SCOPED_TRACE(std::string(tessera::to_string(act)));
    const auto want = reference(act, x.data(), x.size());
    const auto y = tessera::activate(act, x);
    EXPECT_TRUE(all_close(y.data(), x.data(), want, T(0), tol<T>()));
  }
}

TYPED_TEST(ActivationTest, LargeMagnitudesGiveNoNaN) {
  using T = TypeParam;
  const double values[] = {-1e30, -1e4, -30, -10, -9.5, -5, -1,  -1e-3, 0,
                           1e-3,  1,    5,   9.5, 10,   30, 1e4, 1e30};
  Tensor<T, 1> x(static_cast<Index>(std::size(values)));
  for (Index i = 0; i < x.size(); ++i) x(i) = static_cast<T>(values[i]);
  // The same values again at every position of a packet, so vector and scalar paths both see them.
  Tensor<T, 2> wide(x.size(), 37);
  for (Index i = 0; i < x.size(); ++i)
    for (Index j = 0; j < 37; ++j) wide(i, j) = x(i);
  for (Activation act : kAll) {
    SCOPED_TRACE(std::string(tessera::to_string(act)));
    const auto y = tessera::activate(act, x);
    for (Index i = 0; i < x.size(); ++i) ASSERT_FALSE(std::isnan(y(i))) << "x = " << x(i);
    EXPECT_TRUE(
        all_close(y.data(), x.data(), reference(act, x.data(), x.size()), tol<T>(), tol<T>()));
    const auto yw = tessera::activate(act, wide);
    EXPECT_TRUE(all_close(yw.data(), wide.data(), reference(act, wide.data(), wide.size()),
                          tol<T>(), tol<T>()));
  }
  // The limits the definitions give, to within T's precision, at |x| >= 1e4.
  const auto g = tessera::gelu(x), gt = tessera::gelu_tanh(x), s = tessera::silu(x),
             t = tessera::tanh(x), r = tessera::relu(x), q = tessera::quick_gelu(x);
  for (Index i = 0; i < x.size(); ++i) {
    if (std::fabs(values[i]) < 1e4) continue;
    const T want_pos = values[i] > 0 ? x(i) : T(0);
    EXPECT_TRUE(close(g(i), want_pos, tol<T>(), tol<T>())) << "gelu(" << x(i) << ")";
    EXPECT_TRUE(close(gt(i), want_pos, tol<T>(), tol<T>())) << "gelu_tanh(" << x(i) << ")";
    EXPECT_TRUE(close(s(i), want_pos, tol<T>(), tol<T>())) << "silu(" << x(i) << ")";
    EXPECT_TRUE(close(q(i), want_pos, tol<T>(), tol<T>())) << "quick_gelu(" << x(i) << ")";
    EXPECT_TRUE(close(r(i), want_pos, T(0), T(0))) << "relu(" << x(i) << ")";
    EXPECT_EQ(t(i), values[i] > 0 ? T(1) : T(-1)) << "tanh(" << x(i) << ")";
  }
}

TYPED_TEST(ActivationTest, ReluIsExact) {
  using T = TypeParam;
  Tensor<T, 1> x(1000);
  x.setRandom(30, -2.0, 2.0);
  x(0) = T(0);
  x(1) = -T(0);
  const auto y = tessera::relu(x);
  for (Index i = 0; i < x.size(); ++i) ASSERT_EQ(y(i), x(i) > 0 ? x(i) : T(0)) << "x = " << x(i);
}

TYPED_TEST(ActivationTest, Rank1AndRank3AndTensorMaps) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 3> x(2, 3, n);
    x.setRandom(40 + static_cast<std::uint64_t>(n), -6.0, 6.0);
    std::vector<T> storage(static_cast<std::size_t>(x.size()));
    tessera::TensorMap<T, 3> out(storage.data(), x.shape());
    tessera::gelu_into(x.view(), out);
    EXPECT_TRUE(all_close(storage.data(), x.data(), reference(Activation::gelu, x.data(), x.size()),
                          tol<T>(), tol<T>()))
        << "rank 3, n=" << n;
    Tensor<T, 1> v(n);
    v.setRandom(50 + static_cast<std::uint64_t>(n), -6.0, 6.0);
    const auto y = tessera::silu(tessera::cview(v));
    EXPECT_EQ(y.shape(), (Shape<1>{n}));
    EXPECT_TRUE(
        all_close(y.data(), v.data(), reference(Activation::silu, v.data(), n), tol<T>(), tol<T>()))
        << "rank 1, n=" << n;
  }
}

TYPED_TEST(ActivationTest, EmptyShapes) {
  using T = TypeParam;
  Tensor<T, 2> a(0, 5), b(3, 0);
  Tensor<T, 1> c(0);
  for (Activation act : kAll) {
    EXPECT_EQ(tessera::activate(act, a).shape(), (Shape<2>{0, 5}));
    EXPECT_EQ(tessera::activate(act, b).shape(), (Shape<2>{3, 0}));
    EXPECT_EQ(tessera::activate(act, c).shape(), (Shape<1>{0}));
    tessera::activate_into(act, a, a);
  }
}

TYPED_TEST(ActivationTest, LargeTensorsAcrossThreads) {
  // Big enough to be split across threads (32768 elements per thread); an odd size so the split
  // points fall inside packets.
  using T = TypeParam;
  Tensor<T, 2> x(3, 40001);
  x.setRandom(60, -8.0, 8.0);
  for (Activation act : kAll) {
    SCOPED_TRACE(std::string(tessera::to_string(act)));
    tessera::set_num_threads(1);
    const auto y1 = tessera::activate(act, x);
    tessera::set_num_threads(2);
    const auto y2 = tessera::activate(act, x);
    EXPECT_TRUE(
        all_close(y1.data(), x.data(), reference(act, x.data(), x.size()), tol<T>(), tol<T>()));
    EXPECT_TRUE(
        all_close(y2.data(), x.data(), reference(act, x.data(), x.size()), tol<T>(), tol<T>()));
  }
  tessera::set_num_threads(tessera::max_threads());
}

TEST(Activation, ToStringNamesEveryValue) {
  EXPECT_EQ(tessera::to_string(Activation::identity), "identity");
  EXPECT_EQ(tessera::to_string(Activation::relu), "relu");
  EXPECT_EQ(tessera::to_string(Activation::gelu), "gelu");
  EXPECT_EQ(tessera::to_string(Activation::gelu_tanh), "gelu_tanh");
  EXPECT_EQ(tessera::to_string(Activation::silu), "silu");
  EXPECT_EQ(tessera::to_string(Activation::tanh), "tanh");
  EXPECT_EQ(tessera::to_string(Activation::quick_gelu), "quick_gelu");
}

// CLIP's QuickGELU against PyTorch 1.13's x * torch.sigmoid(1.702 * x) in float64 (open_clip's
// QuickGELU module), and against GELU: close, but not the same function.
TYPED_TEST(ActivationTest, QuickGeluMatchesPyTorch) {
  using T = TypeParam;
  const double xs[] = {-4.0, -1.5, -0.25, 0.0, 0.3, 1.0, 2.5, 6.0};
  const double want[] = {
      -0.0044147241395810621, -0.10833780155292341, -0.098800350099805825, 0.0,
      0.1874841353815917,     0.84579576593282124,  2.4650138349514301,    5.9997796464502127};
  Tensor<T, 1> x(8);
  for (Index i = 0; i < 8; ++i) x(i) = static_cast<T>(xs[i]);
  const auto y = tessera::quick_gelu(x), g = tessera::gelu(x);
  for (Index i = 0; i < 8; ++i) {
    EXPECT_TRUE(close(y(i), static_cast<T>(want[i]), tol<T>(), tol<T>())) << "x = " << xs[i];
    if (xs[i] == 1.0) {  // 0.84580 vs 0.84134
      EXPECT_GT(std::fabs(y(i) - g(i)), T(4e-3)) << "quick_gelu(1) vs gelu(1)";
    }
  }
}

// ---- errors ----------------------------------------------------------------------------------

TYPED_TEST(ActivationTest, RejectsOutOfTheWrongShape) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4), out(2, 3);
  for (Activation act : kAll) {
    const std::string fn = "tessera::" + std::string(tessera::to_string(act)) + ":";
    TESSERA_EXPECT_THROW_MSG(tessera::activate_into(act, x, out), tessera::ShapeError, fn.c_str(),
                             "argument 'out'", "[2, 3]", "expected [2, 4]");
  }
  Tensor<T, 3> x3(2, 3, 4), out3(2, 4, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::relu_into(x3, out3), tessera::ShapeError,
                           "tessera::relu:", "argument 'out'", "[2, 4, 3]", "expected [2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::gelu_into(x, out.view()), tessera::ShapeError,
                           "tessera::gelu:", "argument 'out'", "[2, 3]", "expected [2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::gelu_tanh_into(x, out), tessera::ShapeError,
                           "tessera::gelu_tanh:", "argument 'out'", "[2, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::silu_into(x, out), tessera::ShapeError,
                           "tessera::silu:", "argument 'out'", "[2, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::tanh_into(x, out), tessera::ShapeError,
                           "tessera::tanh:", "argument 'out'", "[2, 3]");
}

}  // namespace activation_test
