// Tests for tessera/kernels/simd.hpp: every packet operation over one packet against the same
// operation lane by lane on scalars.
#include "tessera/kernels/simd.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tessera/core/tensor.hpp"
#include "test_util.hpp"

namespace {

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

}  // namespace
