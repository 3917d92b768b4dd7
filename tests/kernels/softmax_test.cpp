// Tests for tessera/kernels/softmax.hpp: softmax, log_softmax and logsumexp against a long double
// reference loop, with masks of every kind and broadcast shape, large logits, fully masked rows,
// in-place use, empty shapes, thread-count invariance and the messages of every error.
#include "tessera/kernels/softmax.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace softmax_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::SoftmaxOptions;
using tessera::Tensor;
using tessera::test::close;
using tessera::test::tol;
using R = long double;

constexpr Index kLengths[] = {1, 7, 17, 1000, 4099};
constexpr Index kRows = 5;
constexpr R kNegInf = -std::numeric_limits<R>::infinity();

template <class T>
class SoftmaxTest : public ::testing::Test {};
TYPED_TEST_SUITE(SoftmaxTest, tessera::test::Scalars);

// ---- reference -------------------------------------------------------------------------------

// Row-wise softmax, log-softmax and logsumexp of masked logits, in long double.
struct Reference {
  std::vector<R> softmax, log_softmax, logsumexp;
};

// logit(r, j) is the masked logit of row r, column j (-inf where masked out).
Reference reference(Index rows, Index n, const std::function<R(Index, Index)>& logit) {
  Reference ref;
  ref.softmax.resize(static_cast<std::size_t>(rows * n));
  ref.log_softmax.resize(static_cast<std::size_t>(rows * n));
  ref.logsumexp.resize(static_cast<std::size_t>(rows));
  std::vector<R> v(static_cast<std::size_t>(n)), e(static_cast<std::size_t>(n));
  for (Index r = 0; r < rows; ++r) {
    R m = kNegInf;
    for (Index j = 0; j < n; ++j) {
      v[j] = logit(r, j);
      if (v[j] > m) m = v[j];
    }
    const std::size_t o = static_cast<std::size_t>(r * n);
    if (m == kNegInf) {  // empty or fully masked row
      for (Index j = 0; j < n; ++j) {
        ref.softmax[o + j] = 0;
        ref.log_softmax[o + j] = kNegInf;
      }
      ref.logsumexp[r] = kNegInf;
      continue;
    }
    R s = 0;
    for (Index j = 0; j < n; ++j) {
      e[j] = std::exp(v[j] - m);
      s += e[j];
    }
    const R log_s = std::log(s);
    for (Index j = 0; j < n; ++j) {
      ref.softmax[o + j] = e[j] / s;
      ref.log_softmax[o + j] = (v[j] - m) - log_s;
    }
    ref.logsumexp[r] = m + log_s;
  }
  return ref;
}

template <class T, int Rank>
Reference reference_unmasked(const Tensor<T, Rank>& x) {
  const Index n = x.cols();
  const T* p = x.data();
  return reference(x.rows(), n, [&](Index r, Index j) { return R(p[r * n + j]); });
}

// Every element of `got` close to the reference; reports how many are not and the first one.
template <class T>
::testing::AssertionResult all_close(const T* got, const std::vector<R>& want, T atol, T rtol) {
  std::size_t bad = 0, first = 0;
  std::string first_msg;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const auto c = close(got[i], static_cast<T>(want[i]), atol, rtol);
    if (!c) {
      if (bad++ == 0) {
        first = i;
        first_msg = c.message();
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << want.size() << " elements differ; first at flat index " << first
         << ": " << first_msg;
}

template <class T>
bool any_nan(const T* p, Index n) {
  for (Index i = 0; i < n; ++i)
    if (std::isnan(p[i])) return true;
  return false;
}

template <class T, int Rank>
bool bitwise_equal(const Tensor<T, Rank>& a, const Tensor<T, Rank>& b) {
  return a.shape() == b.shape() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0);
}

// Runs softmax, log_softmax and logsumexp (returning, _into and in-place forms) on x and compares
// them with the reference.
template <class T, int Rank>
void check_all(const Tensor<T, Rank>& x, const SoftmaxOptions& opts, const Reference& ref,
               const std::string& label) {
  SCOPED_TRACE(label);
  const Index rows = x.rows(), n = x.cols();
  // Probabilities are compared relative to their size, with an absolute floor at a small fraction
  // of the uniform probability 1/n.
  const T sm_atol = tol<T>() / static_cast<T>(std::max<Index>(n, 1));

  const auto y = tessera::softmax(x, opts);
  EXPECT_EQ(y.shape(), x.shape());
  EXPECT_TRUE(all_close(y.data(), ref.softmax, sm_atol, tol<T>()));
  for (Index r = 0; r < rows; ++r) {
    if (ref.logsumexp[r] == kNegInf) continue;  // fully masked: all zeros, checked above
    R sum = 0;
    for (Index j = 0; j < n; ++j) sum += y.data()[r * n + j];
    EXPECT_TRUE(close(static_cast<T>(sum), T(1), tol<T>(), T(0))) << "row " << r << " sum";
  }

  const auto l = tessera::log_softmax(x, opts);
  EXPECT_EQ(l.shape(), x.shape());
  EXPECT_TRUE(all_close(l.data(), ref.log_softmax, tol<T>(), tol<T>()));

  const auto lse = tessera::logsumexp(x, opts);
  EXPECT_EQ(lse.size(), rows);
  EXPECT_TRUE(all_close(lse.data(), ref.logsumexp, tol<T>(), tol<T>()));

  // The _into forms and in-place use give the same bits as the returning forms.
  Tensor<T, Rank> out(x.shape());
  out.setConstant(T(7));
  tessera::softmax_into(x, out, opts);
  EXPECT_TRUE(bitwise_equal(out, y)) << "softmax_into";
  out.setConstant(T(7));
  tessera::log_softmax_into(x, out.view(), opts);
  EXPECT_TRUE(bitwise_equal(out, l)) << "log_softmax_into into a TensorMap";
  Tensor<T, Rank> inplace(x);
  tessera::softmax_into(inplace, inplace, opts);
  EXPECT_TRUE(bitwise_equal(inplace, y)) << "softmax in place";
  inplace = x;
  tessera::log_softmax_into(inplace, inplace, opts);
  EXPECT_TRUE(bitwise_equal(inplace, l)) << "log_softmax in place";
}

// ---- masks -----------------------------------------------------------------------------------

enum class Kind { allowed, blocked, additive };

const char* kind_name(Kind k) {
  return k == Kind::allowed ? "allowed" : k == Kind::blocked ? "blocked" : "additive";
}

template <std::size_t N>
Tensor<bool, static_cast<int>(N)> random_bools(const std::array<Index, N>& shape,
                                               std::uint64_t seed, double p_true) {
  Tensor<bool, static_cast<int>(N)> m(shape);
  std::mt19937_64 gen(seed);
  std::bernoulli_distribution d(p_true);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = d(gen);
  return m;
}

// Additive mask values in [-3, 3) with every fifth entry -inf.
template <class M, std::size_t N>
Tensor<M, static_cast<int>(N)> random_additive(const std::array<Index, N>& shape,
                                               std::uint64_t seed) {
  Tensor<M, static_cast<int>(N)> m(shape);
  m.setRandom(seed, -3.0, 3.0);
  for (Index i = 2; i < m.size(); i += 5) m.data()[i] = -std::numeric_limits<M>::infinity();
  return m;
}

template <class M, int Rank>
Mask make_mask(const Tensor<M, Rank>& m, Kind kind) {
  if constexpr (std::is_same_v<M, bool>) {
    return kind == Kind::allowed ? Mask::allowed(m) : Mask::blocked(m);
  } else {
    return Mask::additive(m);
  }
}

// Compares the kernels on x with mask tensor m of the given kind; mask_index(r, j) is the flat
// index into m of the mask entry for row r, column j of x (the broadcast written out by hand).
template <class T, int XR, class M, int MR>
void check_mask_case(const Tensor<T, XR>& x, const Tensor<M, MR>& m, Kind kind,
                     const std::function<Index(Index, Index)>& mask_index,
                     const std::string& label) {
  const Index n = x.cols();
  const T* xp = x.data();
  const M* mp = m.data();
  const Reference ref = reference(x.rows(), n, [&](Index r, Index j) -> R {
    const T xv = xp[r * n + j];
    const M mv = mp[mask_index(r, j)];
    if constexpr (std::is_same_v<M, bool>) {
      const bool keep = kind == Kind::allowed ? mv : !mv;
      return keep ? R(xv) : kNegInf;
    } else {
      // The mask is converted to x's type and added in that type: the masked score is a T.
      return R(static_cast<T>(xv + static_cast<T>(mv)));
    }
  });
  SoftmaxOptions opts;
  opts.mask = make_mask(m, kind);
  check_all(x, opts, ref, label + " kind=" + kind_name(kind));
}

// Every mask shape that broadcasts against x of shape [rows, n], for one mask element type.
template <class T, class M>
void check_rank2_masks(const Tensor<T, 2>& x, Kind kind, std::uint64_t seed) {
  const Index rows = x.dim(0), n = x.dim(1);
  auto make = [&](auto shape) {
    if constexpr (std::is_same_v<M, bool>)
      return random_bools(shape, seed++, 0.7);
    else
      return random_additive<M>(shape, seed++);
  };
  const std::string ln = " n=" + std::to_string(n);
  check_mask_case(
      x, make(Shape<1>{n}), kind, [](Index, Index j) { return j; }, "mask [n]" + ln);
  check_mask_case(
      x, make(Shape<2>{1, n}), kind, [](Index, Index j) { return j; }, "mask [1, n]" + ln);
  check_mask_case(
      x, make(Shape<2>{rows, 1}), kind, [](Index r, Index) { return r; }, "mask [rows, 1]" + ln);
  check_mask_case(
      x, make(Shape<2>{rows, n}), kind, [n](Index r, Index j) { return r * n + j; },
      "mask [rows, n]" + ln);
  check_mask_case(
      x, make(Shape<2>{1, 1}), kind, [](Index, Index) { return Index{0}; }, "mask [1, 1]" + ln);
}

// Every mask shape that broadcasts against x of shape [b, h, n] (rows r = bi * h + hi).
template <class T, class M>
void check_rank3_masks(const Tensor<T, 3>& x, Kind kind, std::uint64_t seed) {
  const Index b = x.dim(0), h = x.dim(1), n = x.dim(2);
  auto make = [&](auto shape) {
    if constexpr (std::is_same_v<M, bool>)
      return random_bools(shape, seed++, 0.7);
    else
      return random_additive<M>(shape, seed++);
  };
  const std::string ln = " n=" + std::to_string(n);
  check_mask_case(
      x, make(Shape<1>{n}), kind, [](Index, Index j) { return j; }, "mask [n]" + ln);
  check_mask_case(
      x, make(Shape<2>{h, n}), kind, [h, n](Index r, Index j) { return (r % h) * n + j; },
      "rank-2 mask [h, n]" + ln);
  check_mask_case(
      x, make(Shape<2>{1, n}), kind, [](Index, Index j) { return j; }, "rank-2 mask [1, n]" + ln);
  check_mask_case(
      x, make(Shape<2>{h, 1}), kind, [h](Index r, Index) { return r % h; },
      "rank-2 mask [h, 1]" + ln);
  check_mask_case(
      x, make(Shape<3>{b, 1, n}), kind, [h, n](Index r, Index j) { return (r / h) * n + j; },
      "mask [b, 1, n]" + ln);
  check_mask_case(
      x, make(Shape<3>{1, h, n}), kind, [h, n](Index r, Index j) { return (r % h) * n + j; },
      "mask [1, h, n]" + ln);
  check_mask_case(
      x, make(Shape<3>{b, h, 1}), kind, [](Index r, Index) { return r; }, "mask [b, h, 1]" + ln);
  check_mask_case(
      x, make(Shape<3>{b, h, n}), kind, [n](Index r, Index j) { return r * n + j; },
      "mask [b, h, n]" + ln);
}

// ---- unmasked --------------------------------------------------------------------------------

TYPED_TEST(SoftmaxTest, MatchesReferenceOnEveryRowLength) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(100 + static_cast<std::uint64_t>(n), -4.0, 4.0);
    check_all(x, {}, reference_unmasked(x), "n=" + std::to_string(n));
  }
}

TYPED_TEST(SoftmaxTest, LogitsOfMagnitude1e4StayFiniteAndAccurate) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(200 + static_cast<std::uint64_t>(n), -1e4, 1e4);
    const auto y = tessera::softmax(x);
    const auto l = tessera::log_softmax(x);
    const auto lse = tessera::logsumexp(x);
    for (Index i = 0; i < x.size(); ++i) {
      ASSERT_TRUE(std::isfinite(y.data()[i])) << "softmax n=" << n << " i=" << i;
      ASSERT_TRUE(std::isfinite(l.data()[i])) << "log_softmax n=" << n << " i=" << i;
    }
    for (Index r = 0; r < kRows; ++r) ASSERT_TRUE(std::isfinite(lse.data()[r])) << "n=" << n;
    check_all(x, {}, reference_unmasked(x), "scaled n=" + std::to_string(n));
  }
}

TYPED_TEST(SoftmaxTest, LargeEqualLogitsKeepTheirNormaliser) {
  // Shift invariance: [c, c] gives log(1/2) whatever c is; [c, c - 1] gives the same as [1, 0].
  using T = TypeParam;
  for (double c : {1.0, 1e4, -1e4}) {
    Tensor<T, 2> x{{T(c), T(c)}, {T(c), T(c - 1)}};
    const R l1 = std::log1p(std::exp(R(-1)));
    const std::vector<R> want = {-std::log(R(2)), -std::log(R(2)), -l1, R(-1) - l1};
    const auto l = tessera::log_softmax(x);
    EXPECT_TRUE(all_close(l.data(), want, tol<T>(), tol<T>())) << "log_softmax, c=" << c;
    const auto y = tessera::softmax(x);
    std::vector<R> want_p(want.size());
    for (std::size_t i = 0; i < want.size(); ++i) want_p[i] = std::exp(want[i]);
    EXPECT_TRUE(all_close(y.data(), want_p, tol<T>(), tol<T>())) << "softmax, c=" << c;
  }
}

TYPED_TEST(SoftmaxTest, Rank1AndRank3Inputs) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 1> v(n);
    v.setRandom(300 + static_cast<std::uint64_t>(n), -5.0, 5.0);
    const Reference ref = reference_unmasked(v);
    const auto y = tessera::softmax(v);
    EXPECT_TRUE(all_close(y.data(), ref.softmax, tol<T>() / static_cast<T>(n), tol<T>()));
    const auto l = tessera::log_softmax(v);
    EXPECT_TRUE(all_close(l.data(), ref.log_softmax, tol<T>(), tol<T>()));
    const Tensor<T, 0> lse = tessera::logsumexp(v);
    EXPECT_TRUE(close(lse(), static_cast<T>(ref.logsumexp[0]), tol<T>(), tol<T>())) << "n=" << n;

    Tensor<T, 3> x(2, 3, n);
    x.setRandom(400 + static_cast<std::uint64_t>(n), -5.0, 5.0);
    check_all(x, {}, reference_unmasked(x), "rank 3, n=" + std::to_string(n));
    const auto lse3 = tessera::logsumexp(x);
    EXPECT_EQ(lse3.shape(), (Shape<2>{2, 3}));
  }
}

// ---- masks -----------------------------------------------------------------------------------

TYPED_TEST(SoftmaxTest, EveryMaskKindAndBroadcastShapeOnRank2) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(500 + static_cast<std::uint64_t>(n), -4.0, 4.0);
    const std::uint64_t seed = 1000 * static_cast<std::uint64_t>(n);
    check_rank2_masks<T, bool>(x, Kind::allowed, seed);
    check_rank2_masks<T, bool>(x, Kind::blocked, seed + 100);
    check_rank2_masks<T, float>(x, Kind::additive, seed + 200);
    check_rank2_masks<T, double>(x, Kind::additive, seed + 300);
  }
}

TYPED_TEST(SoftmaxTest, EveryMaskKindAndBroadcastShapeOnRank3) {
  // Rows of 4099 are covered by the rank-2 cases; here the broadcast over leading axes matters.
  using T = TypeParam;
  for (Index n : {Index{1}, Index{7}, Index{17}, Index{1000}}) {
    Tensor<T, 3> x(2, 3, n);
    x.setRandom(600 + static_cast<std::uint64_t>(n), -4.0, 4.0);
    const std::uint64_t seed = 2000 * static_cast<std::uint64_t>(n);
    check_rank3_masks<T, bool>(x, Kind::allowed, seed);
    check_rank3_masks<T, bool>(x, Kind::blocked, seed + 100);
    check_rank3_masks<T, float>(x, Kind::additive, seed + 200);
    check_rank3_masks<T, double>(x, Kind::additive, seed + 300);
  }
}

TYPED_TEST(SoftmaxTest, MasksOnLogitsOfMagnitude1e4) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(700 + static_cast<std::uint64_t>(n), -1e4, 1e4);
    const auto allowed = random_bools(Shape<2>{kRows, n}, 800 + static_cast<std::uint64_t>(n), 0.5);
    check_mask_case(
        x, allowed, Kind::allowed, [n](Index r, Index j) { return r * n + j; },
        "scaled n=" + std::to_string(n));
    const auto add = random_additive<double>(Shape<1>{n}, 900 + static_cast<std::uint64_t>(n));
    check_mask_case(
        x, add, Kind::additive, [](Index, Index j) { return j; }, "scaled n=" + std::to_string(n));
  }
}

TYPED_TEST(SoftmaxTest, FullyMaskedRowsGiveZerosMinusInfinityAndNeverNaN) {
  using T = TypeParam;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  for (Index n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Tensor<T, 2> x(4, n);
    x.setRandom(1100 + static_cast<std::uint64_t>(n), -1e4, 1e4);
    // Rows 1 and 3 are masked out entirely, by each kind of mask.
    Tensor<bool, 2> allowed(4, n), blocked(4, n);
    Tensor<float, 2> add_f(4, n);
    Tensor<double, 2> add_d(4, n);
    for (Index r = 0; r < 4; ++r)
      for (Index j = 0; j < n; ++j) {
        const bool out = (r % 2 == 1);
        allowed(r, j) = !out;
        blocked(r, j) = out;
        add_f(r, j) = out ? -std::numeric_limits<float>::infinity() : 0.5f;
        add_d(r, j) = out ? -std::numeric_limits<double>::infinity() : -0.25;
      }
    // The same rows masked through a broadcast [rows, 1] mask.
    Tensor<bool, 2> rows_allowed{{true}, {false}, {true}, {false}};
    for (const Mask& mask : {Mask::allowed(allowed), Mask::blocked(blocked), Mask::additive(add_f),
                             Mask::additive(add_d), Mask::allowed(rows_allowed)}) {
      SoftmaxOptions opts;
      opts.mask = mask;
      const auto y = tessera::softmax(x, opts);
      const auto l = tessera::log_softmax(x, opts);
      const auto lse = tessera::logsumexp(x, opts);
      EXPECT_FALSE(any_nan(y.data(), y.size()));
      EXPECT_FALSE(any_nan(l.data(), l.size()));
      EXPECT_FALSE(any_nan(lse.data(), lse.size()));
      for (Index r : {1, 3}) {
        for (Index j = 0; j < n; ++j) {
          ASSERT_EQ(y(r, j), T(0)) << "softmax row " << r << " col " << j;
          ASSERT_EQ(l(r, j), ninf) << "log_softmax row " << r << " col " << j;
        }
        EXPECT_EQ(lse(r), ninf) << "logsumexp row " << r;
      }
      for (Index r : {0, 2}) EXPECT_TRUE(std::isfinite(lse(r))) << "row " << r;
    }
    // Every row masked out, through a mask of shape [n].
    Tensor<bool, 1> none(n);
    SoftmaxOptions opts;
    opts.mask = Mask::allowed(none);
    const auto y = tessera::softmax(x, opts);
    const auto l = tessera::log_softmax(x, opts);
    const auto lse = tessera::logsumexp(x, opts);
    for (Index i = 0; i < x.size(); ++i) {
      ASSERT_EQ(y.data()[i], T(0));
      ASSERT_EQ(l.data()[i], ninf);
    }
    for (Index r = 0; r < 4; ++r) EXPECT_EQ(lse(r), ninf);
    // In place too.
    Tensor<T, 2> z(x);
    tessera::softmax_into(z, z, opts);
    for (Index i = 0; i < z.size(); ++i) ASSERT_EQ(z.data()[i], T(0));
  }
}

TYPED_TEST(SoftmaxTest, MaskedPositionsGetExactlyZeroProbability) {
  // "masked-out positions get probability 0": not a tiny positive number, in every lane of a row.
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 2> x(kRows, n);
    x.setRandom(1200 + static_cast<std::uint64_t>(n), -4.0, 4.0);
    const auto keep = random_bools(Shape<2>{kRows, n}, 1300 + static_cast<std::uint64_t>(n), 0.5);
    for (const Mask& mask : {Mask::allowed(keep), Mask::blocked(keep)}) {
      SoftmaxOptions opts;
      opts.mask = mask;
      const bool keep_when = mask.kind() == tessera::MaskKind::allowed;
      const auto y = tessera::softmax(x, opts);
      const auto l = tessera::log_softmax(x, opts);
      Index nonzero = 0, first = -1;
      for (Index i = 0; i < x.size(); ++i) {
        if (keep.data()[i] == keep_when) continue;
        if (y.data()[i] != T(0) && nonzero++ == 0) first = i;
        EXPECT_EQ(l.data()[i], -std::numeric_limits<T>::infinity()) << "i=" << i;
      }
      EXPECT_EQ(nonzero, 0) << "n=" << n << ": masked positions with non-zero probability, first "
                            << "at flat index " << first << " = "
                            << (first >= 0 ? y.data()[first] : T(0));
    }
  }
}

// ---- in place, empty shapes, threads ---------------------------------------------------------

TYPED_TEST(SoftmaxTest, InPlaceMatchesOutOfPlace) {
  using T = TypeParam;
  for (Index n : kLengths) {
    Tensor<T, 3> x(2, 3, n);
    x.setRandom(1400 + static_cast<std::uint64_t>(n), -1e4, 1e4);
    const auto mvals = random_additive<float>(Shape<2>{3, n}, 1500 + static_cast<std::uint64_t>(n));
    SoftmaxOptions masked;
    masked.mask = Mask::additive(mvals);
    for (const SoftmaxOptions& opts : {SoftmaxOptions{}, masked}) {
      Tensor<T, 3> a(x);
      tessera::softmax_into(a, a, opts);
      EXPECT_TRUE(bitwise_equal(a, tessera::softmax(x, opts))) << "n=" << n;
      Tensor<T, 3> b(x);
      tessera::log_softmax_into(b.view(), b.view(), opts);
      EXPECT_TRUE(bitwise_equal(b, tessera::log_softmax(x, opts))) << "n=" << n;
    }
  }
}

TYPED_TEST(SoftmaxTest, EmptyShapes) {
  using T = TypeParam;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  {  // no rows
    Tensor<T, 2> x(0, 5);
    EXPECT_EQ(tessera::softmax(x).shape(), (Shape<2>{0, 5}));
    EXPECT_EQ(tessera::log_softmax(x).shape(), (Shape<2>{0, 5}));
    EXPECT_EQ(tessera::logsumexp(x).shape(), (Shape<1>{0}));
    Tensor<bool, 1> m(5);
    SoftmaxOptions opts;
    opts.mask = Mask::blocked(m);
    EXPECT_EQ(tessera::softmax(x, opts).shape(), (Shape<2>{0, 5}));
    EXPECT_EQ(tessera::logsumexp(x, opts).shape(), (Shape<1>{0}));
    tessera::softmax_into(x, x, opts);
  }
  {  // rows of length 0: logsumexp is the value of an empty sum, -inf
    Tensor<T, 2> x(3, 0);
    EXPECT_EQ(tessera::softmax(x).shape(), (Shape<2>{3, 0}));
    EXPECT_EQ(tessera::log_softmax(x).shape(), (Shape<2>{3, 0}));
    const auto lse = tessera::logsumexp(x);
    ASSERT_EQ(lse.shape(), (Shape<1>{3}));
    for (Index r = 0; r < 3; ++r) EXPECT_EQ(lse(r), ninf);
    Tensor<double, 2> m(3, 0);
    SoftmaxOptions opts;
    opts.mask = Mask::additive(m);
    EXPECT_EQ(tessera::softmax(x, opts).shape(), (Shape<2>{3, 0}));
    const auto lse_m = tessera::logsumexp(x, opts);
    ASSERT_EQ(lse_m.shape(), (Shape<1>{3}));
    for (Index r = 0; r < 3; ++r) EXPECT_EQ(lse_m(r), ninf);
  }
  {  // empty vector and rank-3 tensors with a zero dimension
    Tensor<T, 1> v(0);
    EXPECT_EQ(tessera::softmax(v).size(), 0);
    EXPECT_EQ(tessera::logsumexp(v)(), ninf);
    Tensor<T, 3> a(2, 0, 4), b(2, 3, 0);
    EXPECT_EQ(tessera::softmax(a).shape(), (Shape<3>{2, 0, 4}));
    EXPECT_EQ(tessera::logsumexp(a).shape(), (Shape<2>{2, 0}));
    EXPECT_EQ(tessera::log_softmax(b).shape(), (Shape<3>{2, 3, 0}));
    const auto lse = tessera::logsumexp(b);
    ASSERT_EQ(lse.shape(), (Shape<2>{2, 3}));
    for (Index i = 0; i < lse.size(); ++i) EXPECT_EQ(lse.data()[i], ninf);
  }
}

TYPED_TEST(SoftmaxTest, ResultsDoNotDependOnTheThreadCount) {
  using T = TypeParam;
  const Index rows = 256, n = 1000;  // 16 rows per thread is the grain for n = 1000
  Tensor<T, 2> x(rows, n);
  x.setRandom(1600, -1e4, 1e4);
  const auto mvals = random_additive<T>(Shape<2>{rows, n}, 1700);
  SoftmaxOptions masked;
  masked.mask = Mask::additive(mvals);
  for (const SoftmaxOptions& opts : {SoftmaxOptions{}, masked}) {
    tessera::set_num_threads(1);
    const auto y1 = tessera::softmax(x, opts);
    const auto l1 = tessera::log_softmax(x, opts);
    const auto s1 = tessera::logsumexp(x, opts);
    tessera::set_num_threads(2);
    const auto y2 = tessera::softmax(x, opts);
    const auto l2 = tessera::log_softmax(x, opts);
    const auto s2 = tessera::logsumexp(x, opts);
    EXPECT_TRUE(bitwise_equal(y1, y2)) << "softmax, masked=" << opts.mask.has_value();
    EXPECT_TRUE(bitwise_equal(l1, l2)) << "log_softmax, masked=" << opts.mask.has_value();
    EXPECT_TRUE(bitwise_equal(s1, s2)) << "logsumexp, masked=" << opts.mask.has_value();
  }
  tessera::set_num_threads(tessera::max_threads());
}

// ---- errors ----------------------------------------------------------------------------------

TYPED_TEST(SoftmaxTest, RejectsOutOfTheWrongShape) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4), wide(2, 5), tall(3, 4);
  TESSERA_EXPECT_THROW_MSG(tessera::softmax_into(x, wide), tessera::ShapeError,
                           "tessera::softmax:", "argument 'out'", "[2, 5]", "expected [2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::softmax_into(x, tall.view()), tessera::ShapeError,
                           "tessera::softmax:", "argument 'out'", "[3, 4]", "expected [2, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::log_softmax_into(x, wide), tessera::ShapeError,
                           "tessera::log_softmax:", "argument 'out'", "[2, 5]", "expected [2, 4]");
  Tensor<T, 3> x3(2, 3, 4), out3(2, 4, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::log_softmax_into(x3, out3), tessera::ShapeError,
                           "tessera::log_softmax:", "argument 'out'", "[2, 4, 3]",
                           "expected [2, 3, 4]");
}

TYPED_TEST(SoftmaxTest, RejectsMasksThatDoNotBroadcast) {
  using T = TypeParam;
  Tensor<T, 2> x(2, 4);
  Tensor<bool, 2> b25(2, 5), b34(3, 4);
  Tensor<bool, 1> b5(5);
  Tensor<bool, 3> b124(1, 2, 4);
  Tensor<float, 2> f41(4, 1);
  Tensor<double, 2> d24t(4, 2);
  struct Case {
    Mask mask;
    const char* shape;
  };
  const Case cases[] = {{Mask::allowed(b25), "[2, 5]"},  {Mask::blocked(b34), "[3, 4]"},
                        {Mask::allowed(b5), "[5]"},      {Mask::blocked(b124), "[1, 2, 4]"},
                        {Mask::additive(f41), "[4, 1]"}, {Mask::additive(d24t), "[4, 2]"}};
  for (const Case& c : cases) {
    SoftmaxOptions opts;
    opts.mask = c.mask;
    TESSERA_EXPECT_THROW_MSG(tessera::softmax(x, opts), tessera::ShapeError,
                             "tessera::softmax:", "argument 'mask'", c.shape,
                             "broadcastable to [2, 4]");
    TESSERA_EXPECT_THROW_MSG(tessera::log_softmax(x, opts), tessera::ShapeError,
                             "tessera::log_softmax:", "argument 'mask'", c.shape,
                             "broadcastable to [2, 4]");
    TESSERA_EXPECT_THROW_MSG(tessera::logsumexp(x, opts), tessera::ShapeError,
                             "tessera::logsumexp:", "argument 'mask'", c.shape,
                             "broadcastable to [2, 4]");
    Tensor<T, 2> out(2, 4);
    TESSERA_EXPECT_THROW_MSG(tessera::softmax_into(x, out, opts), tessera::ShapeError,
                             "tessera::softmax:", "argument 'mask'", c.shape);
  }
  // A rank-2 mask on a rank-3 input still has to match the trailing dimensions.
  Tensor<T, 3> x3(2, 3, 4);
  Tensor<bool, 2> b24(2, 4);
  SoftmaxOptions opts;
  opts.mask = Mask::allowed(b24);
  TESSERA_EXPECT_THROW_MSG(tessera::softmax(x3, opts), tessera::ShapeError,
                           "tessera::softmax:", "argument 'mask'", "[2, 4]",
                           "broadcastable to [2, 3, 4]");
}

}  // namespace softmax_test
