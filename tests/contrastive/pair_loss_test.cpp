// Tests for tessera/contrastive/pair_loss.hpp: the margin contrastive loss on pairs, squared and
// hinge, with and without hardest-negative mining, against PyTorch autograd fixtures, central
// finite differences, an exact brute-force miner, chunked vs materialised mining for many block
// sizes, thread-count invariance, d = 0, large inputs, both reductions and every error.
#include "tessera/contrastive/pair_loss.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace pair_loss_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::pair_loss;
using tessera::contrastive::PairLossForm;
using tessera::contrastive::PairLossOptions;
using tessera::contrastive::PairMining;
using tessera::contrastive::Reduction;
namespace tt = tessera::test;

template <class T>
class PairLossTest : public ::testing::Test {};
TYPED_TEST_SUITE(PairLossTest, tessera::test::Scalars);

PairLossOptions options_from(const tt::ContrastiveFixture& fx) {
  const auto& o = fx.options();
  PairLossOptions opts;
  opts.form = o.at("form") == "hinge" ? PairLossForm::hinge : PairLossForm::squared;
  opts.margin = o.at("margin").get<double>();
  opts.pos_margin = o.at("pos_margin").get<double>();
  opts.mining =
      o.at("mining") == "hardest_negative" ? PairMining::hardest_negative : PairMining::none;
  opts.reduction = fx.reduction();
  return opts;
}

TYPED_TEST(PairLossTest, MatchesPyTorch) {
  using T = TypeParam;
  for (const char* name : {"pair_squared", "pair_squared_sum_pos_margin", "pair_hinge",
                           "pair_squared_mining", "pair_hinge_mining_sum"}) {
    const tt::ContrastiveFixture fx(name);
    const auto x1 = fx.input<T, 2>("x1");
    const auto x2 = fx.input<T, 2>("x2");
    const auto labels = fx.input<std::int64_t, 1>("labels");
    for (int variant = 0; variant < 3; ++variant) {  // chunked default, chunked 2, materialised
      PairLossOptions opts = options_from(fx);
      if (variant == 1) opts.block_size = 2;
      if (variant == 2) opts.materialized = true;
      const std::string what = std::string(name) + (variant == 0   ? ""
                                                    : variant == 1 ? " block 2"
                                                                   : " materialized");
      const auto r = pair_loss(x1, x2, labels, opts);
      tt::expect_parity_scalar(r.loss, fx.expected_scalar("loss"), what + " loss");
      tt::expect_parity(r.grad_x1, fx.expected<2>("grad_x1"), what + " grad_x1");
      tt::expect_parity(r.grad_x2, fx.expected<2>("grad_x2"), what + " grad_x2");
      EXPECT_EQ(r.hardest_negative.size(),
                opts.mining == PairMining::hardest_negative ? x1.dim(0) : 0);
    }
  }
}

// Every form x mining x reduction against central differences, in double.
TEST(PairLossGrad, FiniteDifferences) {
  for (auto form : {PairLossForm::squared, PairLossForm::hinge})
    for (auto mining : {PairMining::none, PairMining::hardest_negative})
      for (auto reduction : {Reduction::mean, Reduction::sum})
        for (double pos_margin : {0.0, 0.25}) {
          SCOPED_TRACE(::testing::Message()
                       << "form " << int(form) << " mining " << int(mining) << " reduction "
                       << int(reduction) << " pos_margin " << pos_margin);
          const Index n = 9, d = 4;
          auto x1 = tt::random_rows<double>(n, d, 101, -0.5, 0.5);
          auto x2 = tt::random_rows<double>(n, d, 102, -0.5, 0.5);
          const Tensor<int, 1> labels = mining == PairMining::none
                                            ? Tensor<int, 1>{1, 0, 0, 1, 0, 1, 1, 0, 0}
                                            : Tensor<int, 1>{0, 1, 2, 0, 1, 2, 0, 3, 3};
          const PairLossOptions opts{.form = form,
                                     .margin = 0.9,
                                     .pos_margin = pos_margin,
                                     .mining = mining,
                                     .reduction = reduction,
                                     .block_size = 4};
          const auto r = pair_loss(x1, x2, labels, opts);
          EXPECT_GT(r.loss, 0);
          const auto f = [&] { return pair_loss(x1, x2, labels, opts).loss; };
          tt::expect_close(r.grad_x1, tt::numeric_grad(x1, f), tt::kGradCheckTol, "grad_x1");
          tt::expect_close(r.grad_x2, tt::numeric_grad(x2, f), tt::kGradCheckTol, "grad_x2");
        }
}

// Several anchors share one hardest negative: its gradient row sums their contributions.
TEST(PairLossGrad, SharedHardestNegative) {
  const Index n = 6, d = 3;
  auto x1 = tt::random_rows<double>(n, d, 7, -1, 1);
  auto x2 = tt::random_rows<double>(n, d, 8, 3, 4);              // far from every anchor...
  for (Index k = 0; k < d; ++k) x2(0, k) = 0.1 * double(k + 1);  // ...but x2_0, near them all
  const Tensor<int, 1> cls{0, 1, 1, 2, 2, 1};
  const PairLossOptions opts{.margin = 2.5, .mining = PairMining::hardest_negative};
  const auto r = pair_loss(x1, x2, cls, opts);
  for (Index i = 1; i < n; ++i) EXPECT_EQ(r.hardest_negative(i), 0) << "anchor " << i;
  const auto f = [&] { return pair_loss(x1, x2, cls, opts).loss; };
  tt::expect_close(r.grad_x2, tt::numeric_grad(x2, f), tt::kGradCheckTol, "grad_x2");
  tt::expect_close(r.grad_x1, tt::numeric_grad(x1, f), tt::kGradCheckTol, "grad_x1");
}

// The miner picks the exact closest x2_j of another class (random data has no near ties).
TYPED_TEST(PairLossTest, MiningPicksTheClosestNegative) {
  using T = TypeParam;
  const Index n = 41, d = 7;
  const auto x1 = tt::random_rows<T>(n, d, 11);
  const auto x2 = tt::random_rows<T>(n, d, 12);
  Tensor<int, 1> cls(n);
  for (Index i = 0; i < n; ++i) cls(i) = int((i * 7) % 5);
  const auto r = pair_loss(x1, x2, cls, {.mining = PairMining::hardest_negative, .block_size = 8});
  for (Index i = 0; i < n; ++i) {
    Index best = -1;
    long double best_d = INFINITY;
    for (Index j = 0; j < n; ++j) {
      if (cls(j) == cls(i)) continue;
      long double dd = 0;
      for (Index k = 0; k < d; ++k) dd += std::pow((long double)x1(i, k) - x2(j, k), 2);
      if (dd < best_d) best_d = dd, best = j;
    }
    EXPECT_EQ(r.hardest_negative(i), best) << "anchor " << i;
  }
}

TYPED_TEST(PairLossTest, ChunkedMatchesMaterialized) {
  using T = TypeParam;
  const Index n = 29, d = 6;
  const auto x1 = tt::random_rows<T>(n, d, 21, -0.6, 0.6);
  const auto x2 = tt::random_rows<T>(n, d, 22, -0.6, 0.6);
  Tensor<int, 1> cls(n);
  for (Index i = 0; i < n; ++i) cls(i) = int((i * 3) % 4);
  for (auto form : {PairLossForm::squared, PairLossForm::hinge}) {
    const PairLossOptions base{
        .form = form, .margin = 1.5, .pos_margin = 0.1, .mining = PairMining::hardest_negative};
    auto mat_opts = base;
    mat_opts.materialized = true;
    const auto ref = pair_loss(x1, x2, cls, mat_opts);
    for (Index block : {1, 2, 3, 5, 7, 16, 28, 29, 30, 64, 256}) {
      SCOPED_TRACE(::testing::Message() << "form " << int(form) << " block " << block);
      auto opts = base;
      opts.block_size = block;
      const auto r = pair_loss(x1, x2, cls, opts);
      for (Index i = 0; i < n; ++i) ASSERT_EQ(r.hardest_negative(i), ref.hardest_negative(i));
      tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
      tt::expect_close(r.grad_x1, ref.grad_x1, tt::agree_tol<T>(), "grad_x1");
      tt::expect_close(r.grad_x2, ref.grad_x2, tt::agree_tol<T>(), "grad_x2");
    }
  }
}

TYPED_TEST(PairLossTest, SameResultForAnyThreadCount) {
  using T = TypeParam;
  const Index n = 70, d = 9;
  const auto x1 = tt::random_rows<T>(n, d, 31);
  const auto x2 = tt::random_rows<T>(n, d, 32);
  Tensor<int, 1> cls(n);
  for (Index i = 0; i < n; ++i) cls(i) = int(i % 6);
  const PairLossOptions opts{
      .margin = 2.0, .mining = PairMining::hardest_negative, .block_size = 8};
  tessera::set_num_threads(1);
  const auto one = pair_loss(x1, x2, cls, opts);
  tessera::set_num_threads(2);
  const auto two = pair_loss(x1, x2, cls, opts);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_EQ(one.loss, two.loss);
  tt::expect_identical(one.grad_x1, two.grad_x1, "grad_x1");
  tt::expect_identical(one.grad_x2, two.grad_x2, "grad_x2");
  tt::expect_identical(one.hardest_negative, two.hardest_negative, "hardest_negative");
}

// d = 0 (x1 == x2): the dissimilar term is at its largest, its gradient through the norm is 0.
TYPED_TEST(PairLossTest, IdenticalVectorsGiveZeroGradient) {
  using T = TypeParam;
  const auto x = tt::random_rows<T>(4, 3, 41);
  for (auto form : {PairLossForm::squared, PairLossForm::hinge})
    for (int label : {0, 1}) {
      const Tensor<int, 1> labels{label, label, label, label};
      const auto r = pair_loss(x, x, labels, {.form = form, .margin = 2.0});
      const T per = label == 1 ? T(0) : T(2);  // 1/2 (2 - 0)^2 or [2 - 0]_+
      EXPECT_EQ(r.loss, per);
      for (Index i = 0; i < x.size(); ++i) {
        EXPECT_EQ(r.grad_x1.data()[i], T(0));
        EXPECT_EQ(r.grad_x2.data()[i], T(0));
      }
    }
}

// The Hadsell et al. formula written out, and the hinge one.
TYPED_TEST(PairLossTest, MatchesTheFormulaPerPair) {
  using T = TypeParam;
  const Tensor<T, 2> x1{{0, 0}, {0, 0}, {0, 0}, {0, 0}};
  const Tensor<T, 2> x2{{3, 4}, {0.3f, 0.4f}, {0.3f, 0.4f}, {3, 4}};  // d = 5, 0.5, 0.5, 5
  const Tensor<int, 1> labels{1, 1, 0, 0};
  const auto sq = pair_loss(x1, x2, labels, {.margin = 2.0, .reduction = Reduction::sum});
  // 1/2 5^2 + 1/2 0.5^2 + 1/2 (2 - 0.5)^2 + 0
  EXPECT_NEAR(sq.loss, 12.5 + 0.125 + 1.125, 1e-5);
  const auto hi = pair_loss(
      x1, x2, labels,
      {.form = PairLossForm::hinge, .margin = 2.0, .pos_margin = 1.0, .reduction = Reduction::sum});
  // [5 - 1]_+ + [0.5 - 1]_+ + [2 - 0.5]_+ + [2 - 5]_+
  EXPECT_NEAR(hi.loss, 4 + 0 + 1.5 + 0, 1e-5);
}

TYPED_TEST(PairLossTest, ReductionsDifferByN) {
  using T = TypeParam;
  const Index n = 12, d = 5;
  const auto x1 = tt::random_rows<T>(n, d, 51, -0.5, 0.5);
  const auto x2 = tt::random_rows<T>(n, d, 52, -0.5, 0.5);
  Tensor<int, 1> labels(n);
  for (Index i = 0; i < n; ++i) labels(i) = int(i % 3 == 0);
  for (auto mining : {PairMining::none, PairMining::hardest_negative})
    for (auto form : {PairLossForm::squared, PairLossForm::hinge}) {
      const auto mean = pair_loss(x1, x2, labels, {.form = form, .mining = mining});
      const auto sum =
          pair_loss(x1, x2, labels, {.form = form, .mining = mining, .reduction = Reduction::sum});
      tt::expect_close_scalar(sum.loss, double(n) * mean.loss, tt::agree_tol<T>(), "loss");
      for (Index i = 0; i < mean.grad_x1.size(); ++i) {
        EXPECT_TRUE(tt::close<double>(sum.grad_x1.data()[i], n * double(mean.grad_x1.data()[i]),
                                      1e-6, 1e-5));
        EXPECT_TRUE(tt::close<double>(sum.grad_x2.data()[i], n * double(mean.grad_x2.data()[i]),
                                      1e-6, 1e-5));
      }
    }
}

TYPED_TEST(PairLossTest, AnyLabelType) {
  using T = TypeParam;
  const auto x1 = tt::random_rows<T>(3, 2, 61);
  const auto x2 = tt::random_rows<T>(3, 2, 62);
  const auto ref = pair_loss(x1, x2, Tensor<std::int64_t, 1>{1, 0, 1});
  EXPECT_EQ(pair_loss(x1, x2, Tensor<bool, 1>{true, false, true}).loss, ref.loss);
  EXPECT_EQ(pair_loss(x1, x2, Tensor<float, 1>{1, 0, 1}).loss, ref.loss);
  EXPECT_EQ(pair_loss(x1, x2, Tensor<double, 1>{1, 0, 1}).loss, ref.loss);
  // A view works as well as a tensor.
  const Tensor<int, 1> l{1, 0, 1};
  EXPECT_EQ(pair_loss(x1.view(), x2.view(), l.view()).loss, ref.loss);
}

// A class with no other class in the batch: no negative term.
TYPED_TEST(PairLossTest, NoNegativeInTheBatch) {
  using T = TypeParam;
  const auto x1 = tt::random_rows<T>(5, 3, 71);
  const auto x2 = tt::random_rows<T>(5, 3, 72);
  const Tensor<int, 1> same{4, 4, 4, 4, 4}, ones{1, 1, 1, 1, 1};
  const auto mined = pair_loss(x1, x2, same, {.mining = PairMining::hardest_negative});
  const auto positives = pair_loss(x1, x2, ones);
  for (Index i = 0; i < 5; ++i) EXPECT_EQ(mined.hardest_negative(i), -1);
  EXPECT_EQ(mined.loss, positives.loss);
  tt::expect_identical(mined.grad_x1, positives.grad_x1, "grad_x1");
}

// Inputs of +-1e3: finite, and float agrees with double.
TYPED_TEST(PairLossTest, LargeInputs) {
  using T = TypeParam;
  const Index n = 64, d = 16;
  const auto x1 = tt::random_rows<T>(n, d, 81, -1e3, 1e3);
  const auto x2 = tt::random_rows<T>(n, d, 82, -1e3, 1e3);
  Tensor<int, 1> labels(n);
  for (Index i = 0; i < n; ++i) labels(i) = int(i % 2);
  for (auto mining : {PairMining::none, PairMining::hardest_negative}) {
    const PairLossOptions opts{.margin = 3000.0, .mining = mining, .block_size = 16};
    const auto r = pair_loss(x1, x2, labels, opts);
    const auto rd = pair_loss(tt::to_double(x1), tt::to_double(x2), labels, opts);
    ASSERT_TRUE(std::isfinite(r.loss));
    tt::expect_close_scalar(r.loss, rd.loss, tt::agree_tol<T>(), "loss");
    for (Index i = 0; i < r.grad_x1.size(); ++i) {
      ASSERT_TRUE(std::isfinite(r.grad_x1.data()[i]));
      EXPECT_TRUE(tt::close<double>(r.grad_x1.data()[i], rd.grad_x1.data()[i], 1e-3, 1e-4));
    }
  }
}

TEST(PairLossErrors, Messages) {
  const auto x = tt::random_rows<double>(3, 2, 1);
  const Tensor<int, 1> labels{1, 0, 1};
  constexpr const char* fn = "tessera::contrastive::pair_loss";
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, Tensor<double, 2>(3, 3), labels), ShapeError, fn, "'x2'",
                           "[3, 3]", "expected [3, 2]");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, Tensor<double, 2>(2, 2), labels), ShapeError, "'x2'",
                           "[2, 2]");
  TESSERA_EXPECT_THROW_MSG(
      pair_loss(Tensor<double, 2>(0, 2), Tensor<double, 2>(0, 2), Tensor<int, 1>(0)), ShapeError,
      fn, "'x1'", "[0, 2]", "rows >= 1");
  TESSERA_EXPECT_THROW_MSG(pair_loss(Tensor<double, 2>(3, 0), Tensor<double, 2>(3, 0), labels),
                           ShapeError, "'x1'", "dim >= 1");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, Tensor<int, 1>{1, 0}), ShapeError, fn, "'labels'", "[2]",
                           "expected [3]");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, Tensor<int, 1>{1, 0, 2}), ValueError, fn,
                           "'labels' holds 2 at index 2", "0 (dissimilar) or 1 (similar)");
  TESSERA_EXPECT_THROW_MSG(
      pair_loss(x, x, Tensor<double, 1>{1, 0.5, 2}, {.mining = PairMining::hardest_negative}),
      ValueError, "'labels' holds 0.5 at index 1", "class id");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.margin = -1}), ValueError, fn,
                           "'margin' is -1", "finite value >= 0");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.margin = NAN}), ValueError, "'margin'");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.margin = INFINITY}), ValueError,
                           "'margin' is inf");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.pos_margin = -0.5}), ValueError,
                           "'pos_margin' is -0.5");
  EXPECT_THROW(pair_loss(tt::random_rows<float>(3, 2, 1), tt::random_rows<float>(3, 2, 2), labels,
                         {.margin = 1e39}),
               ValueError);  // finite in double, not in float
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.form = static_cast<PairLossForm>(5)}),
                           ValueError, "'form' is 5");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.mining = static_cast<PairMining>(5)}),
                           ValueError, "'mining' is 5");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.reduction = static_cast<Reduction>(5)}),
                           ValueError, "'reduction' is 5");
  TESSERA_EXPECT_THROW_MSG(pair_loss(x, x, labels, {.block_size = 0}), ValueError,
                           "'block_size' is 0");
}

}  // namespace pair_loss_test
