// Tests for tessera/contrastive/clip_loss.hpp: CLIP's symmetric loss against PyTorch autograd
// fixtures (at the initial scale, just under the clamp, clamped, and summed over raw vectors),
// central finite differences for a, b and the log scale t, the clamp, chunked vs materialised for
// many block sizes, thread-count invariance, scale 100 with unit vectors and a large batch, both
// reductions, the LogitScale module and every error.
#include "tessera/contrastive/clip_loss.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace clip_loss_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::clip_loss;
using tessera::contrastive::ClipLossOptions;
using tessera::contrastive::LogitScale;
using tessera::contrastive::Reduction;
namespace tt = tessera::test;

template <class T>
class ClipLossTest : public ::testing::Test {};
TYPED_TEST_SUITE(ClipLossTest, tessera::test::Scalars);

TYPED_TEST(ClipLossTest, MatchesPyTorch) {
  using T = TypeParam;
  for (const char* name : {"clip_init", "clip_scale_near_100", "clip_clamped", "clip_sum_raw"}) {
    const tt::ContrastiveFixture fx(name);
    const auto a = fx.input<T, 2>("a");
    const auto b = fx.input<T, 2>("b");
    const T t = fx.scalar<T>("logit_scale");
    for (int variant = 0; variant < 3; ++variant) {  // chunked default, chunked 2, materialised
      ClipLossOptions opts{.max_logit_scale = fx.options().at("max_logit_scale").get<double>(),
                           .reduction = fx.reduction()};
      if (variant == 1) opts.block_size = 2;
      if (variant == 2) opts.materialized = true;
      const std::string what = std::string(name) + (variant == 0   ? ""
                                                    : variant == 1 ? " block 2"
                                                                   : " materialized");
      const auto r = clip_loss(a, b, t, opts);
      tt::expect_parity_scalar(r.loss, fx.expected_scalar("loss"), what + " loss");
      tt::expect_parity(r.grad_a, fx.expected<2>("grad_a"), what + " grad_a");
      tt::expect_parity(r.grad_b, fx.expected<2>("grad_b"), what + " grad_b");
      tt::expect_parity_scalar(r.grad_logit_scale, fx.expected_scalar("grad_logit_scale"),
                               what + " grad_logit_scale");
    }
  }
}

// a, b and t against central differences, in double, for both reductions and both paths.
TEST(ClipLossGrad, FiniteDifferences) {
  for (auto reduction : {Reduction::mean, Reduction::sum})
    for (bool materialized : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "reduction " << int(reduction) << " materialized " << materialized);
      auto a = tt::random_rows<double>(7, 4, 301);
      auto b = tt::random_rows<double>(7, 4, 302);
      const double t = 0.8;
      const ClipLossOptions opts{
          .reduction = reduction, .block_size = 3, .materialized = materialized};
      const auto r = clip_loss(a, b, t, opts);
      const auto f = [&] { return clip_loss(a, b, t, opts).loss; };
      tt::expect_close(r.grad_a, tt::numeric_grad(a, f), tt::kGradCheckTol, "grad_a");
      tt::expect_close(r.grad_b, tt::numeric_grad(b, f), tt::kGradCheckTol, "grad_b");
      const double dt =
          tt::numeric_derivative(t, [&](double x) { return clip_loss(a, b, x, opts).loss; });
      tt::expect_close_scalar(r.grad_logit_scale, dt, tt::kGradCheckTol, "grad_logit_scale");
    }
}

// Above log(max_logit_scale) the scale stays at the bound and t gets no gradient (torch.clamp).
TYPED_TEST(ClipLossTest, ClampsTheScale) {
  using T = TypeParam;
  const auto a = tt::unit_rows<T>(5, 4, 311);
  const auto b = tt::unit_rows<T>(5, 4, 312);
  const auto at_bound = clip_loss(a, b, std::log(T(100)));
  const auto above = clip_loss(a, b, T(7));
  EXPECT_EQ(above.scale, at_bound.scale);
  EXPECT_NEAR(double(above.scale), 100.0, 1e-4);
  EXPECT_EQ(above.loss, at_bound.loss);
  EXPECT_EQ(above.grad_logit_scale, T(0));
  EXPECT_NE(at_bound.grad_logit_scale, T(0));
  tt::expect_identical(above.grad_a, at_bound.grad_a, "grad_a");
  // Another bound.
  const auto low = clip_loss(a, b, T(3), {.max_logit_scale = 5.0});
  EXPECT_NEAR(double(low.scale), 5.0, 1e-5);
  EXPECT_EQ(low.grad_logit_scale, T(0));
}

// The definition written out: the mean of the two cross-entropies.
TYPED_TEST(ClipLossTest, MatchesTheFormula) {
  using T = TypeParam;
  const Index n = 5, d = 3;
  const auto a = tt::random_rows<T>(n, d, 321);
  const auto b = tt::random_rows<T>(n, d, 322);
  const T t = T(1.2);
  const long double s = std::exp((long double)t);
  long double l[5][5];
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) {
      l[i][j] = 0;
      for (Index k = 0; k < d; ++k) l[i][j] += (long double)a(i, k) * b(j, k);
      l[i][j] *= s;
    }
  long double total = 0;
  for (Index i = 0; i < n; ++i) {
    long double zr = 0, zc = 0;
    for (Index j = 0; j < n; ++j) zr += std::exp(l[i][j]), zc += std::exp(l[j][i]);
    total += 0.5L * ((std::log(zr) - l[i][i]) + (std::log(zc) - l[i][i]));
  }
  tt::expect_close_scalar(clip_loss(a, b, t).loss, double(total / n), tt::agree_tol<T>(), "loss");
}

TYPED_TEST(ClipLossTest, ChunkedMatchesMaterialized) {
  using T = TypeParam;
  const Index n = 37, d = 6;
  const auto a = tt::random_rows<T>(n, d, 331);
  const auto b = tt::random_rows<T>(n, d, 332);
  for (auto reduction : {Reduction::mean, Reduction::sum}) {
    const auto ref = clip_loss(a, b, T(1), {.reduction = reduction, .materialized = true});
    for (Index block : {1, 2, 3, 5, 7, 16, 36, 37, 38, 64, 256}) {
      SCOPED_TRACE(::testing::Message() << "reduction " << int(reduction) << " block " << block);
      const auto r = clip_loss(a, b, T(1), {.reduction = reduction, .block_size = block});
      tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
      tt::expect_close(r.grad_a, ref.grad_a, tt::agree_tol<T>(), "grad_a");
      tt::expect_close(r.grad_b, ref.grad_b, tt::agree_tol<T>(), "grad_b");
      tt::expect_close_scalar(r.grad_logit_scale, ref.grad_logit_scale, tt::agree_tol<T>(),
                              "grad_logit_scale");
    }
  }
}

TYPED_TEST(ClipLossTest, SameResultForAnyThreadCount) {
  using T = TypeParam;
  const auto a = tt::random_rows<T>(70, 9, 341);
  const auto b = tt::random_rows<T>(70, 9, 342);
  const ClipLossOptions opts{.block_size = 8};
  tessera::set_num_threads(1);
  const auto one = clip_loss(a, b, T(2), opts);
  tessera::set_num_threads(2);
  const auto two = clip_loss(a, b, T(2), opts);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_EQ(one.loss, two.loss);
  EXPECT_EQ(one.grad_logit_scale, two.grad_logit_scale);
  tt::expect_identical(one.grad_a, two.grad_a, "grad_a");
  tt::expect_identical(one.grad_b, two.grad_b, "grad_b");
}

// CLIP's largest scale, 100, with unit vectors (exp(100) overflows float), and a batch of
// nearly identical vectors where every logit is close to 100: finite, float agreeing with double.
TYPED_TEST(ClipLossTest, ScaleOneHundredWithUnitVectors) {
  using T = TypeParam;
  const Index n = 300, d = 8;
  auto a = tt::unit_rows<T>(n, d, 351);
  auto b = tt::unit_rows<T>(n, d, 352);
  Tensor<T, 2> same(n, d);
  for (Index i = 0; i < n; ++i) same(i, 0) = T(1);  // every logit exactly 100
  for (bool materialized : {false, true})
    for (const auto* pair : {&a, &same}) {
      SCOPED_TRACE(::testing::Message()
                   << "materialized " << materialized << " identical " << (pair == &same));
      const Tensor<T, 2>& x = *pair;
      const Tensor<T, 2>& y = pair == &same ? same : b;
      const ClipLossOptions opts{.block_size = 64, .materialized = materialized};
      const auto r = clip_loss(x, y, std::log(T(100)), opts);
      const auto rd = clip_loss(tt::to_double(x), tt::to_double(y), std::log(100.0), opts);
      ASSERT_TRUE(std::isfinite(r.loss));
      const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;  // logits of size 100
      tt::expect_close_scalar(r.loss, rd.loss, tol, "loss");
      tt::expect_close_scalar(r.grad_logit_scale, rd.grad_logit_scale, tol, "grad_logit_scale");
      tt::expect_close(r.grad_a, rd.grad_a, tol, "grad_a");
      tt::expect_close(r.grad_b, rd.grad_b, tol, "grad_b");
      if (pair == &same)  // uniform softmax: loss log N
        tt::expect_close_scalar(r.loss, std::log(double(n)), tol, "loss log N");
    }
}

TYPED_TEST(ClipLossTest, LargeBatch) {
  using T = TypeParam;
  const Index n = 3000, d = 16;
  const auto a = tt::unit_rows<T>(n, d, 361);
  const auto b = tt::unit_rows<T>(n, d, 362);
  const T t = std::log(T(1) / T(0.07));
  const auto r = clip_loss(a, b, t);
  const auto ref = clip_loss(a, b, t, {.materialized = true});
  ASSERT_TRUE(std::isfinite(r.loss));
  tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
  tt::expect_close_scalar(r.grad_logit_scale, ref.grad_logit_scale, tt::agree_tol<T>(),
                          "grad_logit_scale");
  tt::expect_close(r.grad_a, ref.grad_a, tt::agree_tol<T>(), "grad_a");
  tt::expect_close(r.grad_b, ref.grad_b, tt::agree_tol<T>(), "grad_b");
}

TYPED_TEST(ClipLossTest, ReductionsDifferByN) {
  using T = TypeParam;
  const Index n = 12;
  const auto a = tt::random_rows<T>(n, 5, 371);
  const auto b = tt::random_rows<T>(n, 5, 372);
  const auto mean = clip_loss(a, b, T(0.5));
  const auto sum = clip_loss(a, b, T(0.5), {.reduction = Reduction::sum});
  tt::expect_close_scalar(sum.loss, n * double(mean.loss), tt::agree_tol<T>(), "loss");
  tt::expect_close_scalar(sum.grad_logit_scale, n * double(mean.grad_logit_scale),
                          tt::agree_tol<T>(), "grad_logit_scale");
  for (Index i = 0; i < mean.grad_a.size(); ++i)
    EXPECT_TRUE(
        tt::close<double>(sum.grad_a.data()[i], n * double(mean.grad_a.data()[i]), 1e-6, 1e-5));
}

TYPED_TEST(ClipLossTest, LogitScaleModule) {
  using T = TypeParam;
  LogitScale<T> scale;
  EXPECT_NEAR(double(scale.logit_scale.value()), std::log(1 / 0.07), 1e-6);
  EXPECT_EQ(scale.num_parameters(), 1);
  const auto dict = scale.state_dict("model.");
  ASSERT_TRUE(dict.contains("model.logit_scale"));
  EXPECT_TRUE(dict.find("model.logit_scale")->shape.empty());  // a scalar, as CLIP's
  const auto a = tt::unit_rows<T>(6, 4, 381);
  const auto b = tt::unit_rows<T>(6, 4, 382);
  const auto r = clip_loss(a, b, scale);
  EXPECT_EQ(r.loss, clip_loss(a, b, scale.logit_scale.value()).loss);
  scale.accumulate_grad(r);
  scale.accumulate_grad(r);
  EXPECT_EQ(scale.logit_scale.grad(), 2 * r.grad_logit_scale);
  scale.zero_grad();
  EXPECT_EQ(scale.logit_scale.grad(), T(0));
  LogitScale<T> other({.init = 20.0});
  EXPECT_NEAR(double(other.logit_scale.value()), std::log(20.0), 1e-6);
  other.load_state_dict(dict, "model.");
  EXPECT_EQ(other.logit_scale.value(), scale.logit_scale.value());
}

TEST(ClipLossErrors, Messages) {
  const auto a = tt::random_rows<double>(3, 2, 1);
  constexpr const char* fn = "tessera::contrastive::clip_loss";
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, Tensor<double, 2>(3, 3), 1.0), ShapeError, fn, "'b'",
                           "[3, 3]", "expected [3, 2]");
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, Tensor<double, 2>(4, 2), 1.0), ShapeError, "'b'", "[4, 2]");
  TESSERA_EXPECT_THROW_MSG(clip_loss(Tensor<double, 2>(0, 2), Tensor<double, 2>(0, 2), 1.0),
                           ShapeError, fn, "'a'", "rows >= 1");
  // A NaN t (a diverged parameter) is not an error: it gives NaN (tests/robustness).
  EXPECT_TRUE(std::isnan(clip_loss(a, a, NAN).loss));
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, a, INFINITY), ValueError, "'logit_scale' is inf");
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, a, 1.0, {.max_logit_scale = 0.0}), ValueError,
                           "'max_logit_scale' is 0", "> 0");
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, a, 1.0, {.max_logit_scale = NAN}), ValueError,
                           "'max_logit_scale'");
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, a, 1.0, {.reduction = static_cast<Reduction>(5)}),
                           ValueError, "'reduction' is 5");
  TESSERA_EXPECT_THROW_MSG(clip_loss(a, a, 1.0, {.block_size = -1}), ValueError,
                           "'block_size' is -1");
  TESSERA_EXPECT_THROW_MSG(LogitScale<double>({.init = 0.0}), ValueError,
                           "tessera::contrastive::LogitScale", "'init' is 0");
  TESSERA_EXPECT_THROW_MSG(LogitScale<float>({.init = INFINITY}), ValueError, "'init' is inf");
}

}  // namespace clip_loss_test
