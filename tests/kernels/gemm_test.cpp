// Tests for tessera/kernels/gemm.hpp: gemm (c = act(alpha op(a) op(b) [+ c] + bias) + residual)
// against a plain triple loop in double (float) or long double (double), for odd sizes, every
// transpose combination, padded leading dimensions whose padding holds NaN, sizes around the
// block boundaries (KC, MC, NC) and the tile edges (MR, NR), alpha and accumulate, an empty inner
// dimension, every epilogue, pre-packed b (PackedMatrix), and bitwise identical results at
// different thread counts.
#include "tessera/kernels/gemm.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/core/threading.hpp"
#include "test_util.hpp"

namespace gemm_test {

using tessera::Activation;
using tessera::GemmBlocking;
using tessera::GemmProblem;
using tessera::Index;
using tessera::PackedMatrix;
using tessera::Tensor;

template <class T>
class GemmTest : public ::testing::Test {};

// GemmBlocking<T>'s sizes, all as Index.
template <class T>
struct Blk {
  static constexpr Index W = GemmBlocking<T>::W, MR = GemmBlocking<T>::MR, NR = GemmBlocking<T>::NR,
                         KC = GemmBlocking<T>::KC, MC = GemmBlocking<T>::MC,
                         NC = GemmBlocking<T>::NC;
};
TYPED_TEST_SUITE(GemmTest, tessera::test::Scalars);

// The reference accumulates in double for float (the products of two floats are exact in double
// and the sum's own error, about 1e-16 k, is far below the bound) and in long double for double.
template <class T>
using Ref = std::conditional_t<std::is_same_v<T, float>, double, long double>;

// The bound every element is checked against, for inputs, c, bias and residual in [-1, 1]:
//
//   |got - want| <= tol * (2 (|alpha| sqrt(max(k, 1)) + |c_before| + |bias|) + |residual| + |want|)
//
// with tol = 1e-5 for float and 1e-12 for double. A sum of k products of values in [-1, 1] has a
// rounding error of a few eps * sqrt(k) in practice (about 4e-6 for float at k = 1000, the bound
// there is 6e-4); the factor 2 covers the activation's slope (at most about 1.13 for gelu and
// silu) applied to the error of its argument, and the |want| term the activation's own error and
// the final roundings.
template <class T>
constexpr double gemm_tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

template <class R>
R ref_activate(Activation act, R x) {
  switch (act) {
    case Activation::identity:
      return x;
    case Activation::relu:
      return x > 0 ? x : R(0);
    case Activation::gelu:
      return R(0.5) * x * (R(1) + std::erf(x / std::sqrt(R(2))));
    case Activation::gelu_tanh: {
      const R pi = std::acos(R(-1));
      return R(0.5) * x * (R(1) + std::tanh(std::sqrt(R(2) / pi) * (x + R(0.044715) * x * x * x)));
    }
    case Activation::silu:
      return x / (R(1) + std::exp(-x));
    case Activation::tanh:
      return std::tanh(x);
    case Activation::quick_gelu:
      return x / (R(1) + std::exp(R(-1.702) * x));
  }
  return x;
}

constexpr Activation kActivations[] = {Activation::identity,  Activation::relu, Activation::gelu,
                                       Activation::gelu_tanh, Activation::silu, Activation::tanh,
                                       Activation::quick_gelu};

// Where op(b) comes from: b itself, a PackedMatrix built from b with the constructor, or one built
// with PackedMatrix::from_weight from b's [n, k] values (trans_b only).
enum class BSource { plain, packed, from_weight };

struct Case {
  Index m = 1, n = 1, k = 1;
  bool trans_a = false, trans_b = false;
  Index pad_a = 0, pad_b = 0, pad_c = 0;  // elements past each row's logical width
  double alpha = 1.0;
  bool accumulate = false;
  bool bias = false;
  Activation act = Activation::identity;
  bool residual = false;
  Index pad_r = 0;
  BSource source = BSource::plain;

  std::string str() const {
    static constexpr const char* kSource[] = {"plain", "packed", "from_weight"};
    return "m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
           " trans_a=" + std::to_string(trans_a) + " trans_b=" + std::to_string(trans_b) +
           " pad_a=" + std::to_string(pad_a) + " pad_b=" + std::to_string(pad_b) +
           " pad_c=" + std::to_string(pad_c) + " alpha=" + std::to_string(alpha) +
           " accumulate=" + std::to_string(accumulate) + " bias=" + std::to_string(bias) +
           " act=" + std::string(tessera::to_string(act)) +
           " residual=" + std::to_string(residual) + " pad_r=" + std::to_string(pad_r) +
           " b=" + kSource[static_cast<int>(source)];
  }
};

// Elements past the last row of c, which must stay as they were.
constexpr Index kGuard = 67;

template <class T>
constexpr T nan_v() {
  return std::numeric_limits<T>::quiet_NaN();
}

// A row-major [rows, cols] matrix with row stride cols + pad, stored in exactly
// (rows - 1) * ld + cols elements (so that a read past its end is a heap overflow under ASan),
// padding NaN.
template <class T>
std::vector<T> strided_random(Index rows, Index cols, Index ld, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> v(rows == 0 ? 0 : static_cast<std::size_t>((rows - 1) * ld + cols), nan_v<T>());
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) v[static_cast<std::size_t>(i * ld + j)] = T(u(rng));
  return v;
}

// One problem: its inputs, c before and after the call, and the check against the reference.
template <class T>
struct Problem {
  using R = Ref<T>;
  Case cs;
  Index lda, ldb, ldc, ldr;
  std::vector<T> a, b, bias, residual, c0, c;
  mutable std::vector<R> want, bound;  // the reference, [m, n], filled by reference()

  Problem(const Case& cs_, std::uint64_t seed) : cs(cs_) {
    std::mt19937_64 rng(seed);
    const Index a_rows = cs.trans_a ? cs.k : cs.m, a_cols = cs.trans_a ? cs.m : cs.k;
    const Index b_rows = cs.trans_b ? cs.n : cs.k, b_cols = cs.trans_b ? cs.k : cs.n;
    lda = a_cols + cs.pad_a;
    ldb = b_cols + cs.pad_b;
    ldc = cs.n + cs.pad_c;
    ldr = cs.n + cs.pad_r;
    a = strided_random<T>(a_rows, a_cols, lda, rng);
    b = strided_random<T>(b_rows, b_cols, ldb, rng);
    if (cs.bias) bias = strided_random<T>(1, cs.n, cs.n, rng);
    if (cs.residual) residual = strided_random<T>(cs.m, cs.n, ldr, rng);
    // c: random where it is added to, NaN where it is overwritten (it must not leak), NaN in the
    // padding and the guard past the end (they must stay untouched).
    c0.assign(static_cast<std::size_t>(cs.m * ldc + kGuard), nan_v<T>());
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    if (cs.accumulate)
      for (Index i = 0; i < cs.m; ++i)
        for (Index j = 0; j < cs.n; ++j) c0[static_cast<std::size_t>(i * ldc + j)] = T(u(rng));
    c = c0;
  }

  GemmProblem<T> problem() {
    GemmProblem<T> p;
    p.m = cs.m;
    p.n = cs.n;
    p.k = cs.k;
    p.a = a.data();
    p.lda = lda;
    p.trans_a = cs.trans_a;
    p.b = b.data();
    p.ldb = ldb;
    p.trans_b = cs.trans_b;
    p.c = c.data();
    p.ldc = ldc;
    p.alpha = static_cast<T>(cs.alpha);
    p.accumulate = cs.accumulate;
    p.epilogue.bias = cs.bias ? bias.data() : nullptr;
    p.epilogue.activation = cs.act;
    p.epilogue.residual = cs.residual ? residual.data() : nullptr;
    p.epilogue.residual_stride = ldr;
    return p;
  }

  // op(b) packed as cs.source says.
  PackedMatrix<T> pack() const {
    if (cs.source == BSource::from_weight) {
      EXPECT_TRUE(cs.trans_b) << "from_weight packs a weight [n, k]";
      Tensor<T, 2> w(cs.n, cs.k);
      for (Index j = 0; j < cs.n; ++j)
        for (Index t = 0; t < cs.k; ++t) w(j, t) = b[static_cast<std::size_t>(j * ldb + t)];
      return PackedMatrix<T>::from_weight(w);
    }
    return PackedMatrix<T>(b.data(), ldb, cs.trans_b, cs.k, cs.n);
  }

  // c = c0, then the product.
  void run() {
    c = c0;
    GemmProblem<T> p = problem();
    if (cs.source == BSource::plain) {
      tessera::gemm(p);
      return;
    }
    const PackedMatrix<T> packed = pack();
    EXPECT_EQ(packed.rows(), cs.k);
    EXPECT_EQ(packed.cols(), cs.n);
    p.packed_b = &packed;
    p.b = nullptr;  // must not be read
    tessera::gemm(p);
  }

  // The reference values of c and their bounds (computed once; they do not depend on how b is
  // given).
  void reference() const {
    const Index m = cs.m, n = cs.n, k = cs.k;
    std::vector<R> opa(static_cast<std::size_t>(m * k)), opb(static_cast<std::size_t>(k * n));
    for (Index i = 0; i < m; ++i)
      for (Index t = 0; t < k; ++t)
        opa[static_cast<std::size_t>(i * k + t)] =
            a[static_cast<std::size_t>(cs.trans_a ? t * lda + i : i * lda + t)];
    for (Index t = 0; t < k; ++t)
      for (Index j = 0; j < n; ++j)
        opb[static_cast<std::size_t>(t * n + j)] =
            b[static_cast<std::size_t>(cs.trans_b ? j * ldb + t : t * ldb + j)];
    const R alpha = static_cast<R>(static_cast<T>(cs.alpha));
    const R product_scale = std::fabs(alpha) * std::sqrt(R(std::max<Index>(k, 1)));
    want.resize(static_cast<std::size_t>(m * n));
    bound.resize(want.size());
    std::vector<R> sum(static_cast<std::size_t>(n));
    for (Index i = 0; i < m; ++i) {
      std::fill(sum.begin(), sum.end(), R(0));
      for (Index t = 0; t < k; ++t) {
        const R x = opa[static_cast<std::size_t>(i * k + t)];
        const R* brow = opb.data() + t * n;
        for (Index j = 0; j < n; ++j) sum[static_cast<std::size_t>(j)] += x * brow[j];
      }
      for (Index j = 0; j < n; ++j) {
        const std::size_t e = static_cast<std::size_t>(i * n + j);
        const R before = cs.accumulate ? R(c0[static_cast<std::size_t>(i * ldc + j)]) : R(0);
        const R bj = cs.bias ? R(bias[static_cast<std::size_t>(j)]) : R(0);
        const R rj = cs.residual ? R(residual[static_cast<std::size_t>(i * ldr + j)]) : R(0);
        want[e] = ref_activate(cs.act, alpha * sum[static_cast<std::size_t>(j)] + before + bj) + rj;
        bound[e] = R(gemm_tol<T>()) * (2 * (product_scale + std::fabs(before) + std::fabs(bj)) +
                                       std::fabs(rj) + std::fabs(want[e]));
      }
    }
  }

  // c against the reference within the bound above, and every element of c outside [m, n]
  // bitwise as it was.
  ::testing::AssertionResult check() const {
    const Index m = cs.m, n = cs.n;
    if (want.empty() && m * n > 0) reference();
    Index bad = 0;
    std::string first;
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < n; ++j) {
        const std::size_t e = static_cast<std::size_t>(i * n + j);
        const T got = c[static_cast<std::size_t>(i * ldc + j)];
        const R err = std::fabs(R(got) - want[e]);
        if (std::isnan(got) || !(err <= bound[e])) {
          if (bad++ == 0) {
            std::ostringstream os;
            os.precision(9);
            os << "(" << i << ", " << j << "): got " << got << ", want "
               << static_cast<double>(want[e]) << ", differ by " << static_cast<double>(err)
               << ", allowed " << static_cast<double>(bound[e]);
            first = os.str();
          }
        }
      }
    if (bad)
      return ::testing::AssertionFailure()
             << bad << " of " << m * n << " elements of c differ; first at " << first;
    // Padding of every row and the guard past the end: untouched, bit for bit.
    for (Index i = 0; i < m; ++i) {
      const std::size_t off = static_cast<std::size_t>(i * ldc + n);
      if (std::memcmp(c.data() + off, c0.data() + off,
                      sizeof(T) * static_cast<std::size_t>(ldc - n)))
        return ::testing::AssertionFailure() << "the padding of row " << i << " of c was written";
    }
    const std::size_t end = static_cast<std::size_t>(m * ldc);
    if (std::memcmp(c.data() + end, c0.data() + end, sizeof(T) * kGuard))
      return ::testing::AssertionFailure() << "elements past the end of c were written";
    return ::testing::AssertionSuccess();
  }
};

// Runs the case and checks it against the reference.
template <class T>
void expect_matches_reference(const Case& cs, std::uint64_t seed) {
  SCOPED_TRACE(cs.str());
  Problem<T> p(cs, seed);
  p.run();
  EXPECT_TRUE(p.check());
}

template <class T>
bool bitwise_equal(const std::vector<T>& x, const std::vector<T>& y) {
  return x.size() == y.size() &&
         (x.empty() || std::memcmp(x.data(), y.data(), sizeof(T) * x.size()) == 0);
}

constexpr bool kTrans[2] = {false, true};

// Restores tessera's thread count when it goes out of scope.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(tessera::num_threads()) {}
  ~ThreadCountGuard() { tessera::set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int saved_;
};

// ---- blocking --------------------------------------------------------------------------------

TYPED_TEST(GemmTest, BlockingIsConsistent) {
  using T = TypeParam;
  using B = GemmBlocking<T>;
  EXPECT_EQ(B::NR % B::W, 0);
  EXPECT_EQ(B::MC % B::MR, 0) << "an MC block must hold whole MR tiles";
  EXPECT_EQ(B::NC % B::NR, 0) << "an NC panel must hold whole NR slivers";
  EXPECT_GT(B::KC, 0);
  std::cout << "[          ] " << (std::is_same_v<T, float> ? "float" : "double") << ": W=" << B::W
            << " MR=" << B::MR << " NR=" << B::NR << " KC=" << B::KC << " MC=" << B::MC
            << " NC=" << B::NC << "\n";
}

// ---- sizes -----------------------------------------------------------------------------------

// Every combination of m, n, k from {1, 3, 17, 255, 257}, plus 1000 on each axis with pairs of the
// others, for all four transpose combinations, with padded leading dimensions (NaN padding).
TYPED_TEST(GemmTest, OddSizesEveryTransposeWithPaddedStrides) {
  using T = TypeParam;
  constexpr Index kSizes[] = {1, 3, 17, 255, 257};
  struct Size {
    Index m, n, k;
  };
  std::vector<Size> sizes;
  for (Index m : kSizes)
    for (Index n : kSizes)
      for (Index k : kSizes) sizes.push_back({m, n, k});
  constexpr Index kPairs[][2] = {{1, 1},   {1, 257}, {3, 255},  {17, 17},
                                 {255, 3}, {257, 1}, {257, 257}};
  for (const auto& q : kPairs) {
    sizes.push_back({1000, q[0], q[1]});
    sizes.push_back({q[0], 1000, q[1]});
    sizes.push_back({q[0], q[1], 1000});
  }
  for (Index s : {Index{1}, Index{3}, Index{17}}) {
    sizes.push_back({1000, 1000, s});
    sizes.push_back({1000, s, 1000});
    sizes.push_back({s, 1000, 1000});
  }
  std::uint64_t seed = 1000;
  Index idx = 0;
  for (bool ta : kTrans)
    for (bool tb : kTrans)
      for (const Size& s : sizes) {
        Case cs;
        cs.m = s.m;
        cs.n = s.n;
        cs.k = s.k;
        cs.trans_a = ta;
        cs.trans_b = tb;
        cs.pad_a = 1 + idx % 7;
        cs.pad_b = 1 + (idx / 7) % 5;
        cs.pad_c = 1 + idx % 3;
        ++idx;
        expect_matches_reference<T>(cs, seed++);
      }
}

// k just below and above KC and 2 KC, n above NC, m above MC, and all of them at once.
TYPED_TEST(GemmTest, SizesAcrossBlockBoundaries) {
  using T = TypeParam;
  using B = Blk<T>;
  const Index KC = B::KC, MC = B::MC, NC = B::NC, MR = B::MR, NR = B::NR;
  std::uint64_t seed = 2000;
  for (bool ta : kTrans)
    for (bool tb : kTrans) {
      Case cs;
      cs.trans_a = ta;
      cs.trans_b = tb;
      cs.pad_a = 3;
      cs.pad_b = 5;
      cs.pad_c = 1;
      cs.m = 2 * MR + 1;
      cs.n = 3 * NR + 5;
      for (Index k : {KC - 1, KC, KC + 1, 2 * KC - 1, 2 * KC, 2 * KC + 1, 3 * KC + 7}) {
        cs.k = k;
        expect_matches_reference<T>(cs, seed++);
      }
      cs.m = MR + 1;
      cs.k = KC + 3;
      for (Index n : {NC - 1, NC, NC + 1, NC + NR + 1, 2 * NC + 3}) {
        cs.n = n;
        expect_matches_reference<T>(cs, seed++);
      }
      cs.n = NR + 1;
      cs.k = KC + 1;
      for (Index m : {MC - 1, MC, MC + 1, MC + MR + 1, 2 * MC + MR - 1, 3 * MC + 1}) {
        cs.m = m;
        expect_matches_reference<T>(cs, seed++);
      }
      cs.m = MC + MR + 1;
      cs.n = NC + NR + 1;
      cs.k = 2 * KC + 1;
      expect_matches_reference<T>(cs, seed++);
    }
}

// Every remainder of m modulo MR and several of n modulo NR (partial tiles at the bottom and
// right edges), through the packed path.
TYPED_TEST(GemmTest, EdgeTiles) {
  using T = TypeParam;
  using B = Blk<T>;
  std::uint64_t seed = 3000;
  for (bool ta : kTrans)
    for (bool tb : kTrans)
      for (Index rm = 0; rm < B::MR; ++rm)
        for (Index rn : {Index{0}, Index{1}, B::W - 1, B::W, B::W + 1, B::NR - 1}) {
          Case cs;
          cs.m = 2 * B::MR + rm;
          cs.n = 2 * B::NR + rn;
          cs.k = 37 + rm;
          cs.trans_a = ta;
          cs.trans_b = tb;
          cs.pad_a = 1 + rm % 4;
          cs.pad_b = 2;
          cs.pad_c = 1 + rn % 3;
          cs.alpha = rm % 2 ? -1.5 : 1.0;
          cs.accumulate = rn % 2;
          expect_matches_reference<T>(cs, seed++);
        }
}

// The packed path called directly for fewer than MR rows with an unpacked b (gemm() sends those to
// Eigen): partial a slivers in both layouts, one and several threads.
TYPED_TEST(GemmTest, PackedPathWithFewRows) {
  using T = TypeParam;
  using B = Blk<T>;
  ThreadCountGuard guard;
  std::uint64_t seed = 3500;
  for (bool ta : kTrans)
    for (bool tb : kTrans)
      for (Index m = 1; m < B::MR; m += 2)
        for (Index n : {Index{1}, B::W + 3, B::NR + 1})
          for (Index k : {Index{1}, B::W + 1, B::KC + 5}) {
            Case cs;
            cs.m = m;
            cs.n = n;
            cs.k = k;
            cs.trans_a = ta;
            cs.trans_b = tb;
            cs.pad_a = 2;
            cs.pad_b = 3;
            cs.pad_c = 1;
            cs.bias = true;
            cs.act = Activation::silu;
            SCOPED_TRACE(cs.str());
            Problem<T> p(cs, seed++);
            for (int threads : {1, 2}) {
              p.c = p.c0;
              tessera::detail::gemm_run(p.problem(), threads);
              EXPECT_TRUE(p.check()) << "threads=" << threads;
            }
          }
}

// ---- alpha, accumulate, k = 0 ----------------------------------------------------------------

TYPED_TEST(GemmTest, AlphaAndAccumulate) {
  using T = TypeParam;
  using B = Blk<T>;
  struct Size {
    Index m, n, k;
  };
  // Eigen's path (small, and m < MR), and the packed one with several k blocks and edge tiles.
  const Size sizes[] = {
      {5, 7, 3}, {B::MR - 1, 70, 300}, {3 * B::MR + 1, 2 * B::NR + 3, 2 * B::KC + 9}};
  std::uint64_t seed = 4000;
  for (bool ta : kTrans)
    for (bool tb : kTrans)
      for (const Size& s : sizes)
        for (double alpha : {1.0, 0.0, -1.0, -2.5, 0.5})
          for (bool acc : {false, true}) {
            Case cs;
            cs.m = s.m;
            cs.n = s.n;
            cs.k = s.k;
            cs.trans_a = ta;
            cs.trans_b = tb;
            cs.pad_a = 1;
            cs.pad_b = 2;
            cs.pad_c = 3;
            cs.alpha = alpha;
            cs.accumulate = acc;
            expect_matches_reference<T>(cs, seed++);
          }
}

// alpha = 0 without accumulate gives zeros, with accumulate leaves c as it was, exactly.
TYPED_TEST(GemmTest, AlphaZeroIsExact) {
  using T = TypeParam;
  using B = Blk<T>;
  for (BSource src : {BSource::plain, BSource::packed})
    for (Index m : {Index{3}, 2 * B::MR + 1})
      for (bool acc : {false, true}) {
        Case cs;
        cs.m = m;
        cs.n = B::NR + 3;
        cs.k = B::KC + 1;
        cs.pad_c = 2;
        cs.alpha = 0.0;
        cs.accumulate = acc;
        cs.source = src;
        SCOPED_TRACE(cs.str());
        Problem<T> p(cs, 4500);
        p.run();
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < cs.n; ++j) {
            const std::size_t e = static_cast<std::size_t>(i * p.ldc + j);
            if (acc)
              ASSERT_EQ(p.c[e], p.c0[e]) << "(" << i << ", " << j << ")";
            else
              ASSERT_EQ(p.c[e], T(0)) << "(" << i << ", " << j << ")";
          }
        EXPECT_TRUE(p.check());
      }
}

// k = 0: c is zeroed (or kept with accumulate), then the epilogue runs on it; with an unpacked b
// (Eigen's path) and a packed one (the packed path's own k = 0 branch).
TYPED_TEST(GemmTest, EmptyInnerDimension) {
  using T = TypeParam;
  std::uint64_t seed = 5000;
  for (BSource src : {BSource::plain, BSource::packed, BSource::from_weight})
    for (bool acc : {false, true})
      for (bool epi : {false, true})
        for (Index m : {Index{1}, Index{13}, Index{300}}) {
          Case cs;
          cs.m = m;
          cs.n = 37;
          cs.k = 0;
          cs.trans_b = src == BSource::from_weight;
          cs.pad_a = 1;
          cs.pad_b = 1;
          cs.pad_c = 2;
          cs.alpha = -2.0;
          cs.accumulate = acc;
          cs.source = src;
          if (epi) {
            cs.bias = true;
            cs.act = Activation::gelu;
            cs.residual = true;
            cs.pad_r = 3;
          }
          SCOPED_TRACE(cs.str());
          Problem<T> p(cs, seed++);
          p.run();
          EXPECT_TRUE(p.check());
          if (!epi)
            for (Index i = 0; i < m; ++i)
              for (Index j = 0; j < cs.n; ++j) {
                const std::size_t e = static_cast<std::size_t>(i * p.ldc + j);
                ASSERT_EQ(p.c[e], acc ? p.c0[e] : T(0)) << "(" << i << ", " << j << ")";
              }
        }
}

// m = 0 or n = 0: nothing is written.
TYPED_TEST(GemmTest, EmptyOutputWritesNothing) {
  using T = TypeParam;
  for (BSource src : {BSource::plain, BSource::packed})
    for (Index m : {Index{0}, Index{20}})
      for (Index n : {Index{0}, Index{20}}) {
        if (m != 0 && n != 0) continue;
        Case cs;
        cs.m = m;
        cs.n = n;
        cs.k = 300;
        cs.pad_c = 4;
        cs.bias = true;
        cs.act = Activation::tanh;
        cs.residual = true;
        cs.source = src;
        SCOPED_TRACE(cs.str());
        Problem<T> p(cs, 5500);
        p.run();
        EXPECT_TRUE(bitwise_equal(p.c, p.c0));
      }
}

// ---- epilogues -------------------------------------------------------------------------------

// Bias alone, each activation alone, the residual alone, and all of them together with alpha and
// accumulate, on Eigen's path and the packed one (with edge tiles and several k blocks).
TYPED_TEST(GemmTest, Epilogues) {
  using T = TypeParam;
  using B = Blk<T>;
  struct Size {
    Index m, n, k;
  };
  const Size sizes[] = {{4, 9, 5}, {2, 300, 70}, {2 * B::MR + 5, 3 * B::NR + 1, B::KC + 17}};
  struct Epi {
    bool bias;
    Activation act;
    bool residual;
    double alpha;
    bool accumulate;
  };
  std::vector<Epi> epis = {{true, Activation::identity, false, 1.0, false},
                           {false, Activation::identity, true, 1.0, false},
                           {true, Activation::identity, true, -0.5, true}};
  for (Activation act : kActivations) {
    epis.push_back({false, act, false, 1.0, false});
    epis.push_back({true, act, true, 1.0, false});
    epis.push_back({true, act, true, -1.75, true});
    epis.push_back({false, act, true, 0.5, true});
  }
  std::uint64_t seed = 6000;
  for (bool tb : kTrans)
    for (const Size& s : sizes)
      for (const Epi& e : epis) {
        Case cs;
        cs.m = s.m;
        cs.n = s.n;
        cs.k = s.k;
        cs.trans_a = !tb;
        cs.trans_b = tb;
        cs.pad_a = 2;
        cs.pad_b = 1;
        cs.pad_c = 3;
        cs.pad_r = 5;
        cs.bias = e.bias;
        cs.act = e.act;
        cs.residual = e.residual;
        cs.alpha = e.alpha;
        cs.accumulate = e.accumulate;
        expect_matches_reference<T>(cs, seed++);
        cs.source = BSource::packed;
        expect_matches_reference<T>(cs, seed++);
      }
}

// The order, on exactly representable values: c = relu(alpha a b + c + bias) + residual. With
// a = 1, k = 1, alpha = 2, c = 0.5, bias = -3, residual = 0.25 and b_j in {0, 1, 2} the result is
// relu(2 b_j - 2.5) + 0.25 = 0.25, 0.25, 1.75; every other order gives something else.
TYPED_TEST(GemmTest, EpilogueOrder) {
  using T = TypeParam;
  const Index m = 13, n = 40;  // 13 rows: the packed path for a packed b
  std::vector<T> a(m, T(1)), b(n), bias(n, T(-3)), residual(m * n, T(0.25));
  for (Index j = 0; j < n; ++j) b[static_cast<std::size_t>(j)] = T(j % 3);
  const PackedMatrix<T> packed(b.data(), n, false, 1, n);
  for (bool use_packed : {false, true}) {
    std::vector<T> c(m * n, T(0.5));
    GemmProblem<T> p;
    p.m = m;
    p.n = n;
    p.k = 1;
    p.a = a.data();
    p.lda = 1;
    p.b = b.data();
    p.ldb = n;
    p.packed_b = use_packed ? &packed : nullptr;
    p.c = c.data();
    p.ldc = n;
    p.alpha = T(2);
    p.accumulate = true;
    p.epilogue.bias = bias.data();
    p.epilogue.activation = Activation::relu;
    p.epilogue.residual = residual.data();
    p.epilogue.residual_stride = n;
    tessera::gemm(p);
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < n; ++j)
        EXPECT_EQ(c[static_cast<std::size_t>(i * n + j)], j % 3 == 2 ? T(1.75) : T(0.25))
            << "packed=" << use_packed << " (" << i << ", " << j << ")";
  }
}

// ---- pre-packed b ----------------------------------------------------------------------------

// A PackedMatrix (constructor, both layouts, padded ldb; and from_weight) gives c bitwise equal to
// the unpacked b wherever gemm() takes the packed path for both (m >= MR and enough work, and no
// TESSERA_USE_BLAS, which sends every unpacked b to the BLAS), and matches the reference
// everywhere, across several KC and NC blocks.
TYPED_TEST(GemmTest, PackedMatchesUnpacked) {
  using T = TypeParam;
  using B = Blk<T>;
  struct Size {
    Index m, n, k;
  };
  const Size sizes[] = {{1, 1, 1},
                        {1, 17, 3},
                        {1, B::NC + 1, 2 * B::KC + 1},
                        {3, 255, 257},
                        {B::MR - 1, 2 * B::NR + 1, B::KC + 1},
                        {B::MR, B::NR, B::KC},
                        {17, 255, 257},
                        {B::MR + 1, B::NC + B::NR + 1, 2 * B::KC + 1},
                        {B::MC + 1, 2 * B::NC + 5, B::KC - 1},
                        {B::MC + B::MR + 1, B::NC + 3, 3 * B::KC + 1}};
  std::uint64_t seed = 7000;
  for (bool tb : kTrans)
    for (const Size& s : sizes)
      for (BSource src : {BSource::packed, BSource::from_weight}) {
        if (src == BSource::from_weight && !tb) continue;
        Case cs;
        cs.m = s.m;
        cs.n = s.n;
        cs.k = s.k;
        cs.trans_a = s.m % 2 == 0;
        cs.trans_b = tb;
        cs.pad_a = 1;
        cs.pad_b = src == BSource::packed ? 3 : 0;
        cs.pad_c = 2;
        cs.bias = true;
        cs.residual = s.n % 2 == 1;
        cs.act = Activation::gelu_tanh;
        SCOPED_TRACE(cs.str());
        Problem<T> p(cs, seed++);
        p.run();
        const std::vector<T> plain = p.c;
        EXPECT_TRUE(p.check()) << "unpacked";
        p.cs.source = src;
        p.run();
        EXPECT_TRUE(p.check()) << "packed";
        const double work =
            static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k);
        // (The tile of the GEMM that runs: in the compiled mode, the dispatched level's.)
        if (!tessera::kGemmUsesBlas && s.m >= tessera::gemm_tile<T>().mr &&
            work >= 32.0 * 32.0 * 32.0) {
          EXPECT_TRUE(bitwise_equal(p.c, plain)) << "packed and unpacked b differ";
        }
      }
}

// One packing reused for several products (and a copy of it), and not following later changes to
// the matrix it was packed from.
TYPED_TEST(GemmTest, PackedMatrixIsReusableAndImmutable) {
  using T = TypeParam;
  using B = Blk<T>;
  Case cs;
  cs.m = B::MR + 3;
  cs.n = B::NR * 2 + 7;
  cs.k = B::KC + 9;
  cs.trans_b = true;
  cs.source = BSource::packed;
  Problem<T> p(cs, 8000);
  const std::vector<T> original_b = p.b;
  const PackedMatrix<T> packed = p.pack();
  const PackedMatrix<T> copy = packed;
  EXPECT_FALSE(packed.empty());
  EXPECT_TRUE(PackedMatrix<T>().empty());
  std::fill(p.b.begin(), p.b.end(), T(0));  // the packing keeps the values it was built from
  for (std::uint64_t seed : {8001, 8002, 8003}) {
    Problem<T> q(cs, seed);  // new a and c, b as packed
    q.b = original_b;
    q.c = q.c0;
    GemmProblem<T> g = q.problem();
    g.b = nullptr;
    g.packed_b = seed == 8002 ? &copy : &packed;
    tessera::gemm(g);
    EXPECT_TRUE(q.check()) << "seed " << seed;
  }
}

// Tiny products (m = 1, a few rows) against a packed b: the packed path, not Eigen's.
TYPED_TEST(GemmTest, TinyProblemsWithPackedB) {
  using T = TypeParam;
  std::uint64_t seed = 9000;
  for (bool ta : kTrans)
    for (bool tb : kTrans)
      for (Index m : {Index{1}, Index{2}, Index{5}})
        for (Index n : {Index{1}, Index{2}, Index{19}})
          for (Index k : {Index{1}, Index{3}, Index{20}})
            for (BSource src : {BSource::packed, BSource::from_weight}) {
              if (src == BSource::from_weight && !tb) continue;
              Case cs;
              cs.m = m;
              cs.n = n;
              cs.k = k;
              cs.trans_a = ta;
              cs.trans_b = tb;
              cs.pad_a = 1;
              cs.pad_b = src == BSource::packed ? 2 : 0;
              cs.pad_c = 1;
              cs.alpha = -1.5;
              cs.accumulate = (m + n) % 2 == 0;
              cs.bias = k % 2 == 1;
              cs.act = Activation::silu;
              cs.source = src;
              expect_matches_reference<T>(cs, seed++);
            }
}

// ---- threads ---------------------------------------------------------------------------------

// 1, 2 and 3 threads give bitwise identical c: a problem split over MC blocks and one with a
// single MC block whose slivers are split, with unpacked and packed b and a full epilogue.
TYPED_TEST(GemmTest, ThreadCountsGiveIdenticalResults) {
  using T = TypeParam;
  ThreadCountGuard guard;
  struct Size {
    Index m, n, k;
  };
  const Size sizes[] = {{700, 900, 600}, {13, 2000, 300}};
  std::uint64_t seed = 10000;
  for (const Size& s : sizes)
    for (bool trans : kTrans)
      for (BSource src : {BSource::plain, BSource::packed}) {
        Case cs;
        cs.m = s.m;
        cs.n = s.n;
        cs.k = s.k;
        cs.trans_a = trans;
        cs.trans_b = !trans;
        cs.pad_a = 1;
        cs.pad_b = 2;
        cs.pad_c = 3;
        cs.source = src;
        if (trans) {
          cs.alpha = 0.75;
          cs.accumulate = true;
          cs.bias = true;
          cs.act = Activation::gelu;
          cs.residual = true;
          cs.pad_r = 1;
        }
        SCOPED_TRACE(cs.str());
        Problem<T> p(cs, seed++);
        tessera::set_num_threads(1);
        p.run();
        const std::vector<T> one = p.c;
        if (s.m < 100) {
          EXPECT_TRUE(p.check());
        }
        for (int threads : {2, 3}) {
          tessera::set_num_threads(threads);
          p.run();
          EXPECT_TRUE(bitwise_equal(p.c, one)) << "threads=" << threads << " differs from 1";
        }
      }
}

// gemm called from inside an enclosing parallel region (as batched matmul_into and the contrastive
// losses' tiles do) runs serially on the calling thread and gives what it gives outside: here two
// threads each run their own product of the same shape at once (the same shape on every thread,
// so that a product whose work-sharing constructs bound to the enclosing team would give wrong
// results rather than hang).
TYPED_TEST(GemmTest, InsideAnEnclosingParallelRegion) {
  using T = TypeParam;
  using B = Blk<T>;
  ThreadCountGuard guard;
  tessera::set_num_threads(2);
  for (BSource src : {BSource::plain, BSource::packed})
    for (bool epi : {false, true}) {
      Case cs;
      cs.m = 2 * B::MR + 5;
      cs.n = 2 * B::NR + 3;
      cs.k = B::KC + 9;
      cs.pad_a = 1;
      cs.pad_c = 2;
      cs.source = src;
      cs.bias = epi;
      cs.act = epi ? Activation::gelu : Activation::identity;
      SCOPED_TRACE(cs.str());
      std::vector<Problem<T>> problems;
      std::vector<PackedMatrix<T>> packed;
      for (std::uint64_t q = 0; q < 2; ++q) {
        problems.emplace_back(cs, 11000 + q);
        packed.push_back(problems.back().pack());
      }
      int threads_seen = 0;
      tessera::parallel_for(2, 1, [&](Index q0, Index q1) {
#ifdef _OPENMP
#pragma omp atomic
        ++threads_seen;
#endif
        for (Index q = q0; q < q1; ++q) {
          Problem<T>& p = problems[static_cast<std::size_t>(q)];
          GemmProblem<T> g = p.problem();
          if (src != BSource::plain) {
            g.b = nullptr;
            g.packed_b = &packed[static_cast<std::size_t>(q)];
          }
          tessera::gemm(g);
        }
      });
      if (threads_seen < 2) GTEST_SKIP() << "needs OpenMP and two threads";
      for (std::size_t q = 0; q < problems.size(); ++q)
        EXPECT_TRUE(problems[q].check()) << "product " << q;
    }
}

// A default-constructed PackedMatrix holds no panels: an error, not a read through null.
TYPED_TEST(GemmTest, EmptyPackedMatrixIsAnError) {
  using T = TypeParam;
  const PackedMatrix<T> empty;
  EXPECT_TRUE(empty.empty());
  std::vector<T> a(4 * 8, T(1)), c(4 * 8);
  GemmProblem<T> g{.m = 4, .n = 8, .k = 8, .a = a.data(), .lda = 8, .c = c.data(), .ldc = 8};
  g.packed_b = &empty;
  TESSERA_EXPECT_THROW_MSG(tessera::gemm(g), tessera::ValueError,
                           "tessera::gemm: packed_b is empty (a default-constructed PackedMatrix)");
  // A packed matrix knows the width of its slivers: this build's (or the dispatched level's).
  std::vector<T> b(8 * 8, T(1));
  const PackedMatrix<T> packed(b.data(), 8, false, 8, 8);
#ifdef TESSERA_COMPILED
  EXPECT_EQ(packed.sliver_width() % (tessera::kernel_float_lanes() * 4 / Index(sizeof(T))), 0);
#else
  EXPECT_EQ(packed.sliver_width(), Index(GemmBlocking<T>::NR));
#endif
  g.packed_b = &packed;
  tessera::gemm(g);
  EXPECT_EQ(c[0], T(8));
}

}  // namespace gemm_test
