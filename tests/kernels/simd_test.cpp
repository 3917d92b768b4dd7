// Tests for tessera/kernels/simd.hpp: every packet operation over one packet against the same
// operation lane by lane on scalars.
#include "tessera/kernels/simd.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tessera/core/tensor.hpp"
#include "test_util.hpp"

namespace simd_test {

namespace simd = tessera::simd;
using tessera::Index;
using tessera::test::close;
using tessera::test::tol;
using R = long double;

template <class T>
class SimdTest : public ::testing::Test {};
TYPED_TEST_SUITE(SimdTest, tessera::test::Scalars);

template <class T>
constexpr Index W = simd::width<T>;

// One packet's worth of values, uniform in [lo, hi), from a fixed seed.
template <class T>
std::vector<T> lanes(std::uint64_t seed, double lo, double hi) {
  tessera::Tensor<T, 1> t(W<T>);
  t.setRandom(seed, lo, hi);
  return std::vector<T>(t.data(), t.data() + W<T>);
}

template <class T>
std::vector<T> unpack(const simd::Packet<T>& p) {
  std::vector<T> out(static_cast<std::size_t>(W<T>));
  simd::store(out.data(), p);
  return out;
}

TEST(Simd, WidthIsAtLeastOneLane) {
  EXPECT_GE(simd::width<float>, 1);
  EXPECT_GE(simd::width<double>, 1);
  // A packet holds a whole number of lanes: never fewer floats than doubles.
  EXPECT_GE(simd::width<float>, simd::width<double>);
  EXPECT_EQ(sizeof(simd::Packet<float>),
            sizeof(float) * static_cast<std::size_t>(simd::width<float>));
  EXPECT_EQ(sizeof(simd::Packet<double>),
            sizeof(double) * static_cast<std::size_t>(simd::width<double>));
}

TYPED_TEST(SimdTest, LoadAndStoreRoundTripAtUnalignedAddresses) {
  using T = TypeParam;
  constexpr Index w = W<T>;
  std::vector<T> src(static_cast<std::size_t>(3 * w + 3));
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = T(0.5) * static_cast<T>(i) - T(3);
  for (Index off : {Index{0}, Index{1}, Index{3}}) {
    std::vector<T> dst(src.size(), T(-99));
    simd::store(dst.data() + off + 1, simd::load(src.data() + off));
    for (Index i = 0; i < static_cast<Index>(dst.size()); ++i) {
      if (i >= off + 1 && i < off + 1 + w)
        EXPECT_EQ(dst[i], src[i - 1]) << "lane " << i - off - 1 << " off " << off;
      else
        EXPECT_EQ(dst[i], T(-99)) << "store wrote outside its packet at " << i;
    }
  }
}

TYPED_TEST(SimdTest, Set1FillsEveryLane) {
  using T = TypeParam;
  for (T v : {T(0), T(-2.5), T(1e30), -std::numeric_limits<T>::infinity()})
    for (T got : unpack<T>(simd::set1<T>(v))) EXPECT_EQ(got, v);
}

TYPED_TEST(SimdTest, AddSubMulMaxMatchScalarsExactly) {
  using T = TypeParam;
  auto a = lanes<T>(1, -10, 10), b = lanes<T>(2, -10, 10);
  a[0] = -std::numeric_limits<T>::infinity();  // max with -inf, as the masked softmax needs
  b[W<T> - 1] = a[W<T> - 1];                   // max of equal values
  const auto pa = simd::load(a.data()), pb = simd::load(b.data());
  const auto sum = unpack<T>(simd::add(pa, pb)), diff = unpack<T>(simd::sub(pa, pb)),
             prod = unpack<T>(simd::mul(pa, pb)), mx = unpack<T>(simd::max(pa, pb));
  for (Index i = 0; i < W<T>; ++i) {
    EXPECT_EQ(sum[i], a[i] + b[i]) << "add, lane " << i;
    EXPECT_EQ(diff[i], a[i] - b[i]) << "sub, lane " << i;
    EXPECT_EQ(prod[i], a[i] * b[i]) << "mul, lane " << i;
    EXPECT_EQ(mx[i], std::max(a[i], b[i])) << "max, lane " << i;
  }
}

TYPED_TEST(SimdTest, FmaddIsAFusedOrAnUnfusedMultiplyAdd) {
  using T = TypeParam;
  const auto a = lanes<T>(3, -10, 10), b = lanes<T>(4, -10, 10), c = lanes<T>(5, -10, 10);
  const auto r =
      unpack<T>(simd::fmadd(simd::load(a.data()), simd::load(b.data()), simd::load(c.data())));
  for (Index i = 0; i < W<T>; ++i) {
    volatile T p = a[i] * b[i];  // rounded product, kept from being contracted into an FMA
    const T unfused = p + c[i];
    const T fused = std::fma(a[i], b[i], c[i]);
    EXPECT_TRUE(r[i] == fused || r[i] == unfused)
        << "lane " << i << ": " << r[i] << " is neither " << fused << " nor " << unfused;
  }
}

TYPED_TEST(SimdTest, ExpMatchesStdExp) {
  using T = TypeParam;
  // Differences below the smallest normal T are not counted: they are flushed or clamped lanes.
  const T atol = std::numeric_limits<T>::min();
  for (std::uint64_t seed = 10; seed < 20; ++seed) {
    const auto x = lanes<T>(seed, -80, 80);
    const auto e = unpack<T>(simd::exp(simd::load(x.data())));
    for (Index i = 0; i < W<T>; ++i)
      EXPECT_TRUE(close(e[i], static_cast<T>(std::exp(R(x[i]))), atol, tol<T>()))
          << "exp(" << x[i] << ")";
  }
  std::vector<T> special = {T(0), T(1), T(-1), T(-87), T(-100), T(-1000), T(50), T(1e-7)};
  special.resize(static_cast<std::size_t>(W<T>), T(0.5));
  const auto e = unpack<T>(simd::exp(simd::load(special.data())));
  for (Index i = 0; i < W<T> && i < 8; ++i)
    EXPECT_TRUE(close(e[i], static_cast<T>(std::exp(R(special[i]))), atol, tol<T>()))
        << "exp(" << special[i] << ")";
  EXPECT_EQ(e[0], T(1)) << "exp(0)";
}

TYPED_TEST(SimdTest, ExpOfMinusInfinityIsZero) {
  // softmax treats masked positions as -inf and relies on exp(-inf - m) being exactly 0.
  using T = TypeParam;
  const auto e = unpack<T>(simd::exp(simd::set1<T>(-std::numeric_limits<T>::infinity())));
  Index nonzero = 0;
  for (Index i = 0; i < W<T>; ++i) nonzero += e[i] != T(0) ? 1 : 0;
  EXPECT_EQ(nonzero, 0) << "of " << W<T> << " lanes; exp(-inf) gave " << e[0];
}

// Eigen's exp clamps its argument (float without AVX-512 at -88.72, where e^x is the subnormal
// 2.94e-39; double at -709.78): every x below the clamp must still give exactly 0, on every
// instruction set, and NaN must stay NaN.
TYPED_TEST(SimdTest, ExpBelowTheClampIsZeroAndOfNaNIsNaN) {
  using T = TypeParam;
  const T below = std::is_same_v<T, float> ? T(-88.8) : T(-709.9);
  for (T v : {below, T(-1000), -std::numeric_limits<T>::max()}) {
    const auto e = unpack<T>(simd::exp(simd::set1<T>(v)));
    for (Index i = 0; i < W<T>; ++i) EXPECT_EQ(e[i], T(0)) << "exp(" << v << ") lane " << i;
  }
  const auto e = unpack<T>(simd::exp(simd::set1<T>(std::numeric_limits<T>::quiet_NaN())));
  for (Index i = 0; i < W<T>; ++i) EXPECT_TRUE(std::isnan(e[i])) << "exp(NaN) lane " << i;
}

// exp_fast in float: at most 2 ulp from the correctly rounded e^x wherever the result is normal
// (and not flushed: the non-AVX-512 path flushes below 2.4e-38), over every 509th float between
// -110 and 95, both signs; the ends and the special values exactly.
TEST(Simd, ExpFastFloatIsWithinTwoUlpOverTheWholeRange) {
  constexpr Index w = W<float>;
  std::vector<float> x(static_cast<std::size_t>(w)), e(static_cast<std::size_t>(w));
  double worst_ulp = 0, worst_at = 0, worst_tiny = 0;
  Index checked = 0;
  const auto check_one = [&](float v) {
    std::fill(x.begin(), x.end(), v);
    simd::store(e.data(), simd::exp_fast(simd::load(x.data())));
    for (Index i = 1; i < w; ++i) ASSERT_EQ(std::memcmp(&e[i], &e[0], sizeof(float)), 0);
    const double want = std::exp(static_cast<double>(v));
    if (want > std::numeric_limits<float>::max()) {
      EXPECT_EQ(e[0], std::numeric_limits<float>::infinity()) << "exp_fast(" << v << ")";
    } else if (want < 2.5e-38) {  // subnormal or flushed: an absolute error below 2.4e-38
      worst_tiny = std::max(worst_tiny, std::fabs(double(e[0]) - want));
    } else {
      const float wf = static_cast<float>(want);
      const double ulp = double(std::nextafter(wf, std::numeric_limits<float>::infinity())) - wf;
      const double err = std::fabs(double(e[0]) - want) / ulp;
      if (err > worst_ulp) worst_ulp = err, worst_at = v;
      ++checked;
    }
  };
  for (std::uint32_t sign : {0u, 0x80000000u})
    for (std::uint32_t b = 0; b < 0x7f800000u; b += 509) {
      const std::uint32_t bits = sign | b;
      float v;
      std::memcpy(&v, &bits, sizeof v);
      if (v > -110.0f && v < 95.0f) check_one(v);
      if (::testing::Test::HasFatalFailure()) return;
    }
  EXPECT_GT(checked, 4000000);
  EXPECT_LE(worst_ulp, 2.0) << "at x = " << worst_at;
  EXPECT_LE(worst_tiny, 2.4e-38);

  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> special = {-inf,    inf,    0.0f, -0.0f,
                                -120.0f, 100.0f, 1.0f, std::numeric_limits<float>::quiet_NaN()};
  special.resize(static_cast<std::size_t>(std::max<Index>(w, 8)), 0.5f);
  for (std::size_t at = 0; at < special.size(); at += static_cast<std::size_t>(w))
    simd::store(special.data() + at, simd::exp_fast(simd::load(special.data() + at)));
  EXPECT_EQ(special[0], 0.0f) << "exp_fast(-inf)";
  EXPECT_EQ(special[1], inf) << "exp_fast(inf)";
  EXPECT_EQ(special[2], 1.0f) << "exp_fast(0)";
  EXPECT_EQ(special[3], 1.0f) << "exp_fast(-0)";
  EXPECT_EQ(special[4], 0.0f) << "exp_fast(-120)";
  EXPECT_EQ(special[5], inf) << "exp_fast(100)";
  EXPECT_NEAR(special[6], 2.7182817f, 2.4e-7f) << "exp_fast(1)";
  EXPECT_TRUE(std::isnan(special[7])) << "exp_fast(NaN) gave " << special[7];
}

// exp2_nonpositive in float: at most 1 ulp from the correctly rounded 2^x (with FMA; 1.25
// without) wherever the result is at least FLT_MIN (below it: 0), over every 97th float in [-130,
// 0]; -inf, NaN, 0 and the flush boundary exactly.
TEST(Simd, Exp2NonPositiveFloatIsWithinOneUlp) {
  constexpr Index w = W<float>;
  std::vector<float> x(static_cast<std::size_t>(w)), e(static_cast<std::size_t>(w));
  double worst_ulp = 0, worst_at = 0;
  Index checked = 0;
  for (std::uint32_t b = 0; b <= 0x43020000u; b += 97) {  // -0 ... -130
    const std::uint32_t bits = 0x80000000u | b;
    float v;
    std::memcpy(&v, &bits, sizeof v);
    std::fill(x.begin(), x.end(), v);
    simd::store(e.data(), simd::exp2_nonpositive(simd::load(x.data())));
    for (Index i = 1; i < w; ++i) ASSERT_EQ(std::memcmp(&e[i], &e[0], sizeof(float)), 0);
    const double want = std::exp2(static_cast<double>(v));
    if (v < -126.0f) {
      ASSERT_EQ(e[0], 0.0f) << "exp2_nonpositive(" << v << ")";
      continue;
    }
    const float wf = static_cast<float>(want);
    const double ulp = double(std::nextafter(wf, std::numeric_limits<float>::infinity())) - wf;
    const double err = std::fabs(double(e[0]) - want) / ulp;
    if (err > worst_ulp) worst_ulp = err, worst_at = v;
    ++checked;
  }
  EXPECT_GT(checked, 10000000);
#if defined(EIGEN_VECTORIZE_FMA)
  EXPECT_LE(worst_ulp, 1.0) << "at x = " << worst_at;
#else  // each Horner step rounds twice (1.17 ulp measured with SSE2)
  EXPECT_LE(worst_ulp, 1.25) << "at x = " << worst_at;
#endif

  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> special = {-inf,    0.0f,    -0.0f, -1.0f,
                                -126.0f, -126.5f, -0.5f, std::numeric_limits<float>::quiet_NaN()};
  special.resize(static_cast<std::size_t>(std::max<Index>(w, 8)), -0.25f);
  for (std::size_t at = 0; at < special.size(); at += static_cast<std::size_t>(w))
    simd::store(special.data() + at, simd::exp2_nonpositive(simd::load(special.data() + at)));
  EXPECT_EQ(special[0], 0.0f) << "2^-inf";
  EXPECT_EQ(special[1], 1.0f) << "2^0";
  EXPECT_EQ(special[2], 1.0f) << "2^-0";
  EXPECT_EQ(special[3], 0.5f) << "2^-1";
  EXPECT_EQ(special[4], std::numeric_limits<float>::min()) << "2^-126";
  EXPECT_EQ(special[5], 0.0f) << "2^-126.5 is flushed";
  EXPECT_NEAR(special[6], 0.70710678f, 6e-8f) << "2^-0.5";
  EXPECT_TRUE(std::isnan(special[7])) << "2^NaN gave " << special[7];
}

// In double exp2_nonpositive is exp(x ln 2).
TEST(Simd, Exp2NonPositiveDoubleIsExpOfXLn2) {
  const auto x = lanes<double>(46, -700, 0);
  const auto a = unpack<double>(simd::exp2_nonpositive(simd::load(x.data())));
  for (std::size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(a[i], std::exp2(x[i]), 2e-13 * std::exp2(x[i])) << "at " << x[i];  // x ln 2 rounded
}

// In double exp_fast is exp(): the same bits.
TEST(Simd, ExpFastDoubleIsExp) {
  for (std::uint64_t seed = 40; seed < 45; ++seed) {
    const auto x = lanes<double>(seed, -700, 700);
    const auto a = unpack<double>(simd::exp_fast(simd::load(x.data())));
    const auto b = unpack<double>(simd::exp(simd::load(x.data())));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)), 0);
  }
}

TYPED_TEST(SimdTest, ReduceSumAndReduceMax) {
  using T = TypeParam;
  // Small integers sum exactly in any order.
  std::vector<T> ints(static_cast<std::size_t>(W<T>));
  T want = 0;
  for (Index i = 0; i < W<T>; ++i) want += (ints[i] = static_cast<T>(3 * i - 7));
  EXPECT_EQ(simd::reduce_sum(simd::load(ints.data())), want);
  for (std::uint64_t seed = 30; seed < 35; ++seed) {
    const auto x = lanes<T>(seed, -100, 100);
    R sum = 0, mag = 0;
    T mx = -std::numeric_limits<T>::infinity();
    for (T v : x) {
      sum += v;
      mag += std::fabs(R(v));
      mx = std::max(mx, v);
    }
    const T got = simd::reduce_sum(simd::load(x.data()));
    EXPECT_LE(std::fabs(R(got) - sum), R(tol<T>()) * mag) << got << " vs " << double(sum);
    EXPECT_EQ(simd::reduce_max(simd::load(x.data())), mx);
  }
  // reduce_max finds the maximum in every lane and copes with -inf lanes.
  for (Index at = 0; at < W<T>; ++at) {
    std::vector<T> v(static_cast<std::size_t>(W<T>), -std::numeric_limits<T>::infinity());
    v[at] = T(-3);
    EXPECT_EQ(simd::reduce_max(simd::load(v.data())), T(-3)) << "max in lane " << at;
  }
  const auto all_ninf = simd::set1<T>(-std::numeric_limits<T>::infinity());
  EXPECT_EQ(simd::reduce_max(all_ninf), -std::numeric_limits<T>::infinity());
}

}  // namespace simd_test
