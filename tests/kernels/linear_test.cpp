// Tests for tessera/kernels/linear.hpp: linear (x W^T + b) and matmul / matmul_into for matrices
// and batches with every transpose combination, against a long double triple loop, with odd and
// zero sizes, long inner dimensions, and the messages of every error; linear's fused activation and
// residual, and a weight pre-packed with PackedMatrix::from_weight.
#include "tessera/kernels/linear.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace linear_test {

using tessera::Index;
using tessera::LinearOptions;
using tessera::MatmulOptions;
using tessera::Shape;
using tessera::Tensor;
using R = long double;

constexpr Index kLengths[] = {1, 7, 17, 1000, 4099};
constexpr Index kOdd[] = {1, 3, 17, 65};

template <class T>
class LinearTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearTest, tessera::test::Scalars);

// A sum of k products is accurate to about k * eps_T * sum |a_i b_i| in the worst case and far
// better in practice; the check is relative to that magnitude, 1e-5 for float (about 84 ulp) and
// tessera's usual tolerance for double.
template <class T>
constexpr T product_tol() {
  return std::is_same_v<T, float> ? T(1e-5) : tessera::test::tol<T>();
}

// A product's reference values and, per element, sum |a_i b_i| (+ |bias|), the scale its error is
// measured against.
struct Products {
  std::vector<R> value, magnitude;
};

// Every element within product_tol<T>() * magnitude of the reference (exact where magnitude is 0).
template <class T>
::testing::AssertionResult products_close(const T* got, const Products& want) {
  std::size_t bad = 0, first = 0;
  R first_err = 0;
  for (std::size_t i = 0; i < want.value.size(); ++i) {
    const R err = std::fabs(R(got[i]) - want.value[i]);
    if (std::isnan(got[i]) || err > R(product_tol<T>()) * want.magnitude[i]) {
      if (bad++ == 0) {
        first = i;
        first_err = err;
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << want.value.size() << " elements differ; first at flat index " << first
         << ": " << got[first] << " vs " << static_cast<double>(want.value[first]) << " differ by "
         << static_cast<double>(first_err) << " (allowed "
         << static_cast<double>(R(product_tol<T>()) * want.magnitude[first]) << ")";
}

// y[r, o] = sum_i x[r, i] w[o, i] + b[o], x viewed as [rows, in].
template <class T>
Products ref_linear(const T* x, const T* w, const T* b, Index rows, Index in, Index out) {
  Products p;
  p.value.resize(static_cast<std::size_t>(rows * out));
  p.magnitude.resize(p.value.size());
  for (Index r = 0; r < rows; ++r)
    for (Index o = 0; o < out; ++o) {
      R s = b ? R(b[o]) : R(0), m = b ? std::fabs(R(b[o])) : R(0);
      for (Index i = 0; i < in; ++i) {
        s += R(x[r * in + i]) * R(w[o * in + i]);
        m += std::fabs(R(x[r * in + i]) * R(w[o * in + i]));
      }
      p.value[r * out + o] = s;
      p.magnitude[r * out + o] = m;
    }
  return p;
}

// c = op(a) op(b) for `batch` matrices; a stored [m, k] ([k, m] when transposed), b stored [k, n]
// ([n, k] when transposed).
template <class T>
Products ref_matmul(const T* a, const T* b, Index batch, Index m, Index k, Index n,
                    const MatmulOptions& o) {
  Products p;
  p.value.resize(static_cast<std::size_t>(batch * m * n));
  p.magnitude.resize(p.value.size());
  for (Index q = 0; q < batch; ++q) {
    const T* aq = a + q * m * k;
    const T* bq = b + q * k * n;
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < n; ++j) {
        R s = 0, mag = 0;
        for (Index t = 0; t < k; ++t) {
          const R av = o.transpose_a ? aq[t * m + i] : aq[i * k + t];
          const R bv = o.transpose_b ? bq[j * k + t] : bq[t * n + j];
          s += av * bv;
          mag += std::fabs(av * bv);
        }
        p.value[(q * m + i) * n + j] = s;
        p.magnitude[(q * m + i) * n + j] = mag;
      }
  }
  return p;
}

std::string label(const MatmulOptions& o, Index batch, Index m, Index k, Index n) {
  return "transpose_a=" + std::to_string(o.transpose_a) +
         " transpose_b=" + std::to_string(o.transpose_b) + " batch=" + std::to_string(batch) +
         " m=" + std::to_string(m) + " k=" + std::to_string(k) + " n=" + std::to_string(n);
}

constexpr MatmulOptions kTransposes[] = {
    {false, false}, {false, true}, {true, false}, {true, true}};

// ---- linear ----------------------------------------------------------------------------------

TYPED_TEST(LinearTest, Rank2WithAndWithoutBias) {
  using T = TypeParam;
  for (Index in : kLengths)
    for (Index out : {Index{1}, Index{3}, Index{17}}) {
      SCOPED_TRACE("in=" + std::to_string(in) + " out=" + std::to_string(out));
      Tensor<T, 2> x(5, in), w(out, in);
      Tensor<T, 1> b(out);
      x.setRandom(10 + static_cast<std::uint64_t>(in));
      w.setRandom(20 + static_cast<std::uint64_t>(in * out));
      b.setRandom(30 + static_cast<std::uint64_t>(out), -2.0, 2.0);
      const auto y = tessera::linear(x, w);
      EXPECT_EQ(y.shape(), (Shape<2>{5, out}));
      EXPECT_TRUE(products_close(y.data(), ref_linear<T>(x.data(), w.data(), nullptr, 5, in, out)));
      LinearOptions<T> opts;
      opts.bias = tessera::cview(b);
      const auto yb = tessera::linear(x, w, opts);
      const Products want_b = ref_linear<T>(x.data(), w.data(), b.data(), 5, in, out);
      EXPECT_TRUE(products_close(yb.data(), want_b)) << "with bias";
      Tensor<T, 2> into(5, out);
      into.setConstant(T(7));
      tessera::linear_into(x, w, into.view(), opts);
      EXPECT_TRUE(products_close(into.data(), want_b)) << "linear_into with bias";
    }
}

TYPED_TEST(LinearTest, Rank1AndRank3Inputs) {
  using T = TypeParam;
  for (Index in : kLengths) {
    SCOPED_TRACE("in=" + std::to_string(in));
    Tensor<T, 2> w(3, in);
    w.setRandom(40 + static_cast<std::uint64_t>(in));
    Tensor<T, 1> b(3);
    b.setRandom(41);
    LinearOptions<T> opts;
    opts.bias = tessera::cview(b);

    Tensor<T, 1> v(in);
    v.setRandom(50 + static_cast<std::uint64_t>(in));
    const auto yv = tessera::linear(v, w, opts);
    EXPECT_EQ(yv.shape(), (Shape<1>{3}));
    EXPECT_TRUE(products_close(yv.data(), ref_linear<T>(v.data(), w.data(), b.data(), 1, in, 3)))
        << "rank 1";

    Tensor<T, 3> x(2, 3, in);
    x.setRandom(60 + static_cast<std::uint64_t>(in));
    const auto y = tessera::linear(x, w);
    EXPECT_EQ(y.shape(), (Shape<3>{2, 3, 3}));
    EXPECT_TRUE(products_close(y.data(), ref_linear<T>(x.data(), w.data(), nullptr, 6, in, 3)))
        << "rank 3";
    Tensor<T, 3> into(2, 3, 3);
    tessera::linear_into(x, w, into, opts);
    EXPECT_TRUE(products_close(into.data(), ref_linear<T>(x.data(), w.data(), b.data(), 6, in, 3)))
        << "rank 3 linear_into with bias";
  }
}

TYPED_TEST(LinearTest, ZeroInFeaturesGivesTheBiasOrZeros) {
  using T = TypeParam;
  Tensor<T, 2> x(4, 0), w(3, 0);
  Tensor<T, 1> b{T(1.5), T(-2), T(0.25)};
  const auto y = tessera::linear(x, w);
  ASSERT_EQ(y.shape(), (Shape<2>{4, 3}));
  for (Index i = 0; i < y.size(); ++i) EXPECT_EQ(y.data()[i], T(0));
  Tensor<T, 2> into(4, 3);
  into.setConstant(T(7));
  tessera::linear_into(x, w, into);
  for (Index i = 0; i < into.size(); ++i) EXPECT_EQ(into.data()[i], T(0));
  LinearOptions<T> opts;
  opts.bias = tessera::cview(b);
  into.setConstant(T(7));
  tessera::linear_into(x, w, into, opts);
  for (Index r = 0; r < 4; ++r)
    for (Index o = 0; o < 3; ++o) EXPECT_EQ(into(r, o), b(o)) << "row " << r;
  Tensor<T, 1> v(0);
  const auto yv = tessera::linear(v, w, opts);
  ASSERT_EQ(yv.shape(), (Shape<1>{3}));
  for (Index o = 0; o < 3; ++o) EXPECT_EQ(yv(o), b(o));
}

TYPED_TEST(LinearTest, EmptyBatchesAndZeroOutFeatures) {
  using T = TypeParam;
  Tensor<T, 2> x(0, 5), w(3, 5);
  EXPECT_EQ(tessera::linear(x, w).shape(), (Shape<2>{0, 3}));
  Tensor<T, 2> x2(4, 5), w0(0, 5);
  Tensor<T, 1> b0(0);
  LinearOptions<T> opts;
  opts.bias = tessera::cview(b0);
  EXPECT_EQ(tessera::linear(x2, w0, opts).shape(), (Shape<2>{4, 0}));
  Tensor<T, 3> x3(2, 0, 5);
  EXPECT_EQ(tessera::linear(x3, w).shape(), (Shape<3>{2, 0, 3}));
}

// ---- matmul ----------------------------------------------------------------------------------

TYPED_TEST(LinearTest, MatmulRank2EveryTransposeAndOddSizes) {
  using T = TypeParam;
  std::uint64_t seed = 100;
  for (const MatmulOptions& o : kTransposes)
    for (Index m : kOdd)
      for (Index k : kOdd)
        for (Index n : kOdd) {
          SCOPED_TRACE(label(o, 1, m, k, n));
          Tensor<T, 2> a(o.transpose_a ? Shape<2>{k, m} : Shape<2>{m, k});
          Tensor<T, 2> b(o.transpose_b ? Shape<2>{n, k} : Shape<2>{k, n});
          a.setRandom(seed++);
          b.setRandom(seed++);
          const Products want = ref_matmul<T>(a.data(), b.data(), 1, m, k, n, o);
          const auto c = tessera::matmul(a, b, o);
          ASSERT_EQ(c.shape(), (Shape<2>{m, n}));
          EXPECT_TRUE(products_close(c.data(), want));
          Tensor<T, 2> into(m, n);
          into.setConstant(T(7));
          tessera::matmul_into(a, b, into.view(), o);
          EXPECT_TRUE(products_close(into.data(), want)) << "matmul_into";
        }
}

TYPED_TEST(LinearTest, MatmulRank3EveryTransposeAndOddSizes) {
  using T = TypeParam;
  std::uint64_t seed = 200;
  for (Index batch : {Index{1}, Index{3}})
    for (const MatmulOptions& o : kTransposes)
      for (Index m : kOdd)
        for (Index k : kOdd)
          for (Index n : kOdd) {
            SCOPED_TRACE(label(o, batch, m, k, n));
            Tensor<T, 3> a(o.transpose_a ? Shape<3>{batch, k, m} : Shape<3>{batch, m, k});
            Tensor<T, 3> b(o.transpose_b ? Shape<3>{batch, n, k} : Shape<3>{batch, k, n});
            a.setRandom(seed++);
            b.setRandom(seed++);
            const Products want = ref_matmul<T>(a.data(), b.data(), batch, m, k, n, o);
            const auto c = tessera::matmul(a, b, o);
            ASSERT_EQ(c.shape(), (Shape<3>{batch, m, n}));
            EXPECT_TRUE(products_close(c.data(), want));
            Tensor<T, 3> into(batch, m, n);
            into.setConstant(T(7));
            tessera::matmul_into(a, b, into, o);
            EXPECT_TRUE(products_close(into.data(), want)) << "matmul_into";
          }
}

TYPED_TEST(LinearTest, MatmulLongInnerDimension) {
  using T = TypeParam;
  for (Index k : kLengths)
    for (const MatmulOptions& o : kTransposes) {
      SCOPED_TRACE(label(o, 2, 3, k, 5));
      Tensor<T, 3> a(o.transpose_a ? Shape<3>{2, k, 3} : Shape<3>{2, 3, k});
      Tensor<T, 3> b(o.transpose_b ? Shape<3>{2, 5, k} : Shape<3>{2, k, 5});
      a.setRandom(300 + static_cast<std::uint64_t>(k));
      b.setRandom(400 + static_cast<std::uint64_t>(k));
      EXPECT_TRUE(products_close(tessera::matmul(a, b, o).data(),
                                 ref_matmul<T>(a.data(), b.data(), 2, 3, k, 5, o)));
      const auto a0 = a[0];
      const auto b0 = b[0];
      EXPECT_TRUE(products_close(tessera::matmul(a0, b0, o).data(),
                                 ref_matmul<T>(a0.data(), b0.data(), 1, 3, k, 5, o)))
          << "rank 2";
    }
}

TYPED_TEST(LinearTest, MatmulZeroSizes) {
  using T = TypeParam;
  for (const MatmulOptions& o : kTransposes) {
    SCOPED_TRACE(label(o, 1, 3, 0, 4));
    // k = 0: an empty sum, zeros.
    Tensor<T, 2> a(o.transpose_a ? Shape<2>{0, 3} : Shape<2>{3, 0});
    Tensor<T, 2> b(o.transpose_b ? Shape<2>{4, 0} : Shape<2>{0, 4});
    Tensor<T, 2> c(3, 4);
    c.setConstant(T(7));
    tessera::matmul_into(a, b, c, o);
    for (Index i = 0; i < c.size(); ++i) EXPECT_EQ(c.data()[i], T(0));
    Tensor<T, 3> a3(o.transpose_a ? Shape<3>{2, 0, 3} : Shape<3>{2, 3, 0});
    Tensor<T, 3> b3(o.transpose_b ? Shape<3>{2, 4, 0} : Shape<3>{2, 0, 4});
    Tensor<T, 3> c3(2, 3, 4);
    c3.setConstant(T(7));
    tessera::matmul_into(a3, b3, c3, o);
    for (Index i = 0; i < c3.size(); ++i) EXPECT_EQ(c3.data()[i], T(0));
    // m = 0, n = 0, batch = 0: empty results of the right shape.
    Tensor<T, 2> am(o.transpose_a ? Shape<2>{5, 0} : Shape<2>{0, 5});
    Tensor<T, 2> bn(o.transpose_b ? Shape<2>{4, 5} : Shape<2>{5, 4});
    EXPECT_EQ(tessera::matmul(am, bn, o).shape(), (Shape<2>{0, 4}));
    Tensor<T, 2> ak(o.transpose_a ? Shape<2>{5, 3} : Shape<2>{3, 5});
    Tensor<T, 2> b0(o.transpose_b ? Shape<2>{0, 5} : Shape<2>{5, 0});
    EXPECT_EQ(tessera::matmul(ak, b0, o).shape(), (Shape<2>{3, 0}));
    Tensor<T, 3> ab(o.transpose_a ? Shape<3>{0, 5, 3} : Shape<3>{0, 3, 5});
    Tensor<T, 3> bb(o.transpose_b ? Shape<3>{0, 4, 5} : Shape<3>{0, 5, 4});
    EXPECT_EQ(tessera::matmul(ab, bb, o).shape(), (Shape<3>{0, 3, 4}));
  }
}

// alpha scales the product and accumulate adds it to what out holds, for every transpose, rank 2
// and 3, and an empty inner dimension (which leaves an accumulated out as it was).
TYPED_TEST(LinearTest, MatmulAlphaAndAccumulate) {
  using T = TypeParam;
  const Index m = 5, k = 7, n = 3;
  for (const MatmulOptions& base : kTransposes) {
    SCOPED_TRACE(label(base, 2, m, k, n));
    Tensor<T, 3> a(2, base.transpose_a ? k : m, base.transpose_a ? m : k);
    Tensor<T, 3> b(2, base.transpose_b ? n : k, base.transpose_b ? k : n);
    a.setRandom(81);
    b.setRandom(82);
    const auto plain = tessera::matmul(a, b, base);
    MatmulOptions o = base;
    o.alpha = -2.5;
    o.accumulate = true;
    Tensor<T, 3> c(2, m, n);
    c.setRandom(83);
    const Tensor<T, 3> before = c;
    tessera::matmul_into(a, b, c, o);
    for (Index i = 0; i < c.size(); ++i)
      EXPECT_TRUE(tessera::test::close<T>(c.data()[i], before.data()[i] + T(-2.5) * plain.data()[i],
                                          tessera::test::tol<T>(), tessera::test::tol<T>()))
          << "flat index " << i;
    o.accumulate = false;
    const auto scaled = tessera::matmul(a[1], b[1], o);
    for (Index i = 0; i < scaled.size(); ++i)
      EXPECT_TRUE(tessera::test::close<T>(scaled.data()[i], T(-2.5) * plain[1].data()[i],
                                          tessera::test::tol<T>(), tessera::test::tol<T>()));
  }
  Tensor<T, 2> a0(3, 0), b0(0, 4), c(3, 4);
  c.setConstant(T(7));
  tessera::matmul_into(a0, b0, c, {.accumulate = true});
  for (Index i = 0; i < c.size(); ++i) EXPECT_EQ(c.data()[i], T(7));
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a0, b0, c, {.alpha = NAN}), tessera::ValueError,
                           "tessera::matmul:", "option 'alpha' is nan", "finite");
  if constexpr (std::is_same_v<T, float>) {
    EXPECT_THROW(tessera::matmul_into(a0, b0, c, {.alpha = 1e39}), tessera::ValueError);
  }
}

// ---- errors ----------------------------------------------------------------------------------

TYPED_TEST(LinearTest, LinearRejectsMismatchedWeightOutAndBias) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4), w35(3, 5), w34(3, 4), out22(2, 2), out23(2, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, w35), tessera::ShapeError,
                           "tessera::linear:", "argument 'weight'", "[3, 5]", "[out_features, 4]",
                           "input of shape [2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w35, out23), tessera::ShapeError,
                           "tessera::linear:", "argument 'weight'", "[3, 5]");
  Tensor<T, 3> x3(2, 3, 7);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x3, w34), tessera::ShapeError,
                           "tessera::linear:", "argument 'weight'", "[3, 4]", "[out_features, 7]",
                           "[2, 3, 7]");
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w34, out22), tessera::ShapeError,
                           "tessera::linear:", "argument 'out'", "[2, 2]", "expected [2, 3]");
  Tensor<T, 1> b4(4);
  LinearOptions<T> opts;
  opts.bias = tessera::cview(b4);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, w34, opts), tessera::ShapeError,
                           "tessera::linear:", "argument 'bias'", "[4]", "expected [3]");
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w34, out23.view(), opts), tessera::ShapeError,
                           "tessera::linear:", "argument 'bias'", "[4]", "expected [3]");
}

TYPED_TEST(LinearTest, MatmulRejectsInnerDimensionMismatch) {
  using T = TypeParam;
  Tensor<T, 2> a23(2, 3), b45(4, 5), b54(5, 4), a32(3, 2);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(a23, b45), tessera::ShapeError,
                           "tessera::matmul:", "inner dimensions differ",
                           "a of shape [2, 3] gives k = 3", "b of shape [4, 5] gives k = 4");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(a23, b45, MatmulOptions{false, true}),
                           tessera::ShapeError, "tessera::matmul:", "inner dimensions differ",
                           "a of shape [2, 3] gives k = 3",
                           "b of shape [4, 5] (transposed) gives k = 5");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(a23, b54, MatmulOptions{true, false}),
                           tessera::ShapeError,
                           "tessera::matmul:", "a of shape [2, 3] (transposed) gives k = 2",
                           "b of shape [5, 4] gives k = 5");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(a32, b54, MatmulOptions{true, true}),
                           tessera::ShapeError,
                           "tessera::matmul:", "a of shape [3, 2] (transposed) gives k = 3",
                           "b of shape [5, 4] (transposed) gives k = 4");
  Tensor<T, 2> out(2, 5);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a23, b45, out), tessera::ShapeError,
                           "tessera::matmul:", "inner dimensions differ", "[2, 3]", "[4, 5]");
  Tensor<T, 3> a3(2, 2, 3), b3(2, 4, 5);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(a3, b3), tessera::ShapeError,
                           "tessera::matmul:", "inner dimensions differ",
                           "a of shape [2, 2, 3] gives k = 3", "b of shape [2, 4, 5] gives k = 4");
}

TYPED_TEST(LinearTest, MatmulRejectsBatchMismatchAndWrongOut) {
  using T = TypeParam;
  Tensor<T, 3> a(2, 3, 4), b(3, 4, 5), b_ok(2, 4, 5);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul(a, b), tessera::ShapeError,
                           "tessera::matmul:", "argument 'b'", "[3, 4, 5]", "expected batch size 2",
                           "a of shape [2, 3, 4]");
  Tensor<T, 3> out(2, 3, 5), bad_out(2, 5, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a, b, out), tessera::ShapeError,
                           "tessera::matmul:", "argument 'b'", "batch size 2");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a, b_ok, bad_out), tessera::ShapeError,
                           "tessera::matmul:", "argument 'out'", "[2, 5, 3]", "expected [2, 3, 5]");
  Tensor<T, 2> a2(2, 3), b2(3, 4), out2(4, 2);
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a2, b2, out2.view()), tessera::ShapeError,
                           "tessera::matmul:", "argument 'out'", "[4, 2]", "expected [2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::matmul_into(a2, b2, out2, MatmulOptions{true, false}),
                           tessera::ShapeError, "tessera::matmul:", "inner dimensions differ");
}

// ---- activation, residual and a packed weight ------------------------------------------------

using tessera::Activation;
using tessera::PackedMatrix;

// rows x in x out, on Eigen's path (few rows or little work) and the packed one (several k blocks
// and more than one NC panel of outputs for double).
struct LinearSize {
  Index rows, in, out;
};
constexpr LinearSize kLinearSizes[] = {{1, 7, 3},    {5, 1, 17},    {5, 300, 40},
                                       {37, 65, 17}, {50, 600, 99}, {13, 300, 1100}};

std::string label(const LinearSize& s) {
  return "rows=" + std::to_string(s.rows) + " in=" + std::to_string(s.in) +
         " out=" + std::to_string(s.out);
}

// Fusing the activation into linear gives linear followed by activate: bitwise for relu, and for
// gelu within 2 tol<T>() (each is within tol<T>() of the exact value, activation_test; the
// fused one runs the activation on tile-sized pieces, so packet and scalar paths see different
// elements).
TYPED_TEST(LinearTest, ActivationEqualsLinearThenActivate) {
  using T = TypeParam;
  const T t2 = 2 * tessera::test::tol<T>();
  std::uint64_t seed = 500;
  for (const LinearSize& s : kLinearSizes)
    for (Activation act : {Activation::relu, Activation::gelu}) {
      SCOPED_TRACE(label(s) + " act=" + std::string(tessera::to_string(act)));
      Tensor<T, 2> x(s.rows, s.in), w(s.out, s.in);
      Tensor<T, 1> b(s.out);
      x.setRandom(seed++);
      w.setRandom(seed++);
      b.setRandom(seed++);
      LinearOptions<T> plain;
      plain.bias = tessera::cview(b);
      LinearOptions<T> fused = plain;
      fused.activation = act;
      const auto want = tessera::activate(act, tessera::linear(x, w, plain));
      const auto got = tessera::linear(x, w, fused);
      ASSERT_EQ(got.shape(), want.shape());
      Tensor<T, 2> into(s.rows, s.out);
      into.setConstant(T(7));
      tessera::linear_into(x, w, into, fused);
      for (Index i = 0; i < got.size(); ++i) {
        if (act == Activation::relu) {
          ASSERT_EQ(got.data()[i], want.data()[i]) << "flat index " << i;
        } else {
          ASSERT_TRUE(tessera::test::close<T>(got.data()[i], want.data()[i], t2, t2))
              << "flat index " << i;
        }
        ASSERT_EQ(into.data()[i], got.data()[i]) << "linear_into, flat index " << i;
      }
      // Rank 3, without a bias.
      const auto x3 = x.template reshape<3>({1, s.rows, s.in});
      LinearOptions<T> fused3;
      fused3.activation = act;
      const auto got3 = tessera::linear(x3, w, fused3);
      const auto want3 = tessera::activate(act, tessera::linear(x3, w));
      ASSERT_EQ(got3.shape(), (Shape<3>{1, s.rows, s.out}));
      for (Index i = 0; i < got3.size(); ++i)
        ASSERT_TRUE(tessera::test::close<T>(got3.data()[i], want3.data()[i], t2, t2))
            << "rank 3, flat index " << i;
    }
}

// The residual is added last: linear(x, W, {bias, act, residual}) = linear(x, W, {bias, act}) +
// residual, bitwise (the same additions), for rank 2 and 3 inputs.
TYPED_TEST(LinearTest, ResidualIsAddedAfterTheActivation) {
  using T = TypeParam;
  std::uint64_t seed = 600;
  for (const LinearSize& s : kLinearSizes)
    for (Activation act : {Activation::identity, Activation::gelu})
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(label(s) + " act=" + std::string(tessera::to_string(act)) +
                     " bias=" + std::to_string(with_bias));
        Tensor<T, 2> x(s.rows, s.in), w(s.out, s.in), r(s.rows, s.out);
        Tensor<T, 1> b(s.out);
        x.setRandom(seed++);
        w.setRandom(seed++);
        b.setRandom(seed++);
        r.setRandom(seed++, -3.0, 3.0);
        LinearOptions<T> opts;
        if (with_bias) opts.bias = tessera::cview(b);
        opts.activation = act;
        const auto base = tessera::linear(x, w, opts);
        opts.residual = tessera::cview(r);
        const auto got = tessera::linear(x, w, opts);
        for (Index i = 0; i < got.size(); ++i)
          ASSERT_EQ(got.data()[i], base.data()[i] + r.data()[i]) << "flat index " << i;
        // Rank 3: the residual is the output flattened to [rows, out].
        for (Index b0 : {Index{1}, Index{2}}) {
          if (s.rows % b0) continue;
          const auto x3 = x.template reshape<3>({b0, s.rows / b0, s.in});
          Tensor<T, 3> into(b0, s.rows / b0, s.out);
          into.setConstant(T(7));
          tessera::linear_into(x3, w, into, opts);
          for (Index i = 0; i < into.size(); ++i)
            ASSERT_EQ(into.data()[i], got.data()[i])
                << "rank 3, batch " << b0 << ", flat index " << i;
        }
      }
}

// A weight packed with PackedMatrix::from_weight gives what the weight itself gives (bitwise where
// both take the packed path, without TESSERA_USE_BLAS), for rank 2 and 3 inputs, with and without
// bias, activation and residual, through linear and linear_into.
TYPED_TEST(LinearTest, PackedWeightEqualsUnpacked) {
  using T = TypeParam;
  std::uint64_t seed = 700;
  for (const LinearSize& s : kLinearSizes)
    for (bool epilogue : {false, true}) {
      SCOPED_TRACE(label(s) + " epilogue=" + std::to_string(epilogue));
      Tensor<T, 2> x(s.rows, s.in), w(s.out, s.in), r(s.rows, s.out);
      Tensor<T, 1> b(s.out);
      x.setRandom(seed++);
      w.setRandom(seed++);
      b.setRandom(seed++);
      r.setRandom(seed++);
      const auto packed = PackedMatrix<T>::from_weight(w);
      EXPECT_EQ(packed.rows(), s.in);
      EXPECT_EQ(packed.cols(), s.out);
      LinearOptions<T> opts;
      if (epilogue) {
        opts.bias = tessera::cview(b);
        opts.activation = Activation::relu;
        opts.residual = tessera::cview(r);
      }
      const auto want = tessera::linear(x, w, opts);
      const auto got = tessera::linear(x, packed, opts);
      ASSERT_EQ(got.shape(), (Shape<2>{s.rows, s.out}));
      if (!epilogue) {
        EXPECT_TRUE(products_close(
            got.data(), ref_linear<T>(x.data(), w.data(), nullptr, s.rows, s.in, s.out)));
      }
      const bool same_path = !tessera::kGemmUsesBlas && s.rows >= tessera::gemm_tile<T>().mr &&
                             s.rows * s.in * s.out >= 32 * 32 * 32;
      for (Index i = 0; i < got.size(); ++i) {
        if (same_path) {
          ASSERT_EQ(got.data()[i], want.data()[i]) << "flat index " << i;
        } else {
          ASSERT_TRUE(tessera::test::close<T>(got.data()[i], want.data()[i],
                                              product_tol<T>() * T(s.in + 1), product_tol<T>()))
              << "flat index " << i;
        }
      }
      // Rank 3 ([1, rows, in] and, when rows is even, [2, rows / 2, in]) and linear_into.
      for (Index b0 : {Index{1}, Index{2}}) {
        if (s.rows % b0) continue;
        const auto x3 = x.template reshape<3>({b0, s.rows / b0, s.in});
        const auto got3 = tessera::linear(x3, packed, opts);
        ASSERT_EQ(got3.shape(), (Shape<3>{b0, s.rows / b0, s.out}));
        Tensor<T, 3> into(b0, s.rows / b0, s.out);
        into.setConstant(T(7));
        tessera::linear_into(x3, packed, into, opts);
        for (Index i = 0; i < got.size(); ++i) {
          ASSERT_EQ(got3.data()[i], got.data()[i])
              << "rank 3, batch " << b0 << ", flat index " << i;
          ASSERT_EQ(into.data()[i], got.data()[i])
              << "rank 3 linear_into, batch " << b0 << ", flat index " << i;
        }
      }
    }
}

// Zero input features with a packed weight: the bias through the activation (or zeros).
TYPED_TEST(LinearTest, PackedWeightWithZeroInFeatures) {
  using T = TypeParam;
  Tensor<T, 2> x(20, 0), w(3, 0);
  Tensor<T, 1> b{T(1.5), T(-2), T(0.25)};
  const auto packed = PackedMatrix<T>::from_weight(w);
  const auto y = tessera::linear(x, packed);
  ASSERT_EQ(y.shape(), (Shape<2>{20, 3}));
  for (Index i = 0; i < y.size(); ++i) EXPECT_EQ(y.data()[i], T(0));
  LinearOptions<T> opts;
  opts.bias = tessera::cview(b);
  opts.activation = Activation::relu;
  Tensor<T, 2> into(20, 3);
  into.setConstant(T(7));
  tessera::linear_into(x, packed, into, opts);
  for (Index r = 0; r < 20; ++r)
    for (Index o = 0; o < 3; ++o) EXPECT_EQ(into(r, o), std::max(b(o), T(0))) << "row " << r;
}

TYPED_TEST(LinearTest, LinearRejectsWrongResidualAndPackedWeight) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4), w34(3, 4), w35(3, 5), r24(2, 4), out23(2, 3);
  LinearOptions<T> opts;
  opts.residual = tessera::cview(r24);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, w34, opts), tessera::ShapeError,
                           "tessera::linear:", "argument 'residual'", "[2, 4]", "expected [2, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, w34, out23, opts), tessera::ShapeError,
                           "tessera::linear:", "argument 'residual'", "[2, 4]", "expected [2, 3]");
  const auto packed34 = PackedMatrix<T>::from_weight(w34);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, packed34, opts), tessera::ShapeError,
                           "tessera::linear:", "argument 'residual'", "[2, 4]", "expected [2, 3]");
  // Rank 3: the residual is [rows, out] = [6, 3], not the output's shape.
  Tensor<T, 3> x3(2, 3, 4);
  Tensor<T, 2> r33(3, 3);
  LinearOptions<T> opts3;
  opts3.residual = tessera::cview(r33);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x3, w34, opts3), tessera::ShapeError,
                           "tessera::linear:", "argument 'residual'", "[3, 3]", "expected [6, 3]");

  const auto packed35 = PackedMatrix<T>::from_weight(w35);  // k = 5, x has 4 features
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, packed35), tessera::ShapeError,
                           "tessera::linear:", "argument 'weight'", "5 input features",
                           "expected 4", "[2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, packed35, out23), tessera::ShapeError,
                           "tessera::linear:", "argument 'weight'", "5", "[2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x3, packed35), tessera::ShapeError,
                           "tessera::linear:", "argument 'weight'", "5 input features",
                           "expected 4", "[2, 3, 4]");
  Tensor<T, 2> out22(2, 2);
  TESSERA_EXPECT_THROW_MSG(tessera::linear_into(x, packed34, out22), tessera::ShapeError,
                           "tessera::linear:", "argument 'out'", "[2, 2]", "expected [2, 3]");
  Tensor<T, 1> b4(4);
  LinearOptions<T> bad_bias;
  bad_bias.bias = tessera::cview(b4);
  TESSERA_EXPECT_THROW_MSG(tessera::linear(x, packed34, bad_bias), tessera::ShapeError,
                           "tessera::linear:", "argument 'bias'", "[4]", "expected [3]");
}

}  // namespace linear_test
