// Tests for tessera/contrastive/siglip_loss.hpp: SigLIP's pairwise sigmoid loss against PyTorch
// autograd fixtures (at SigLIP's initial scale and bias, trained-like values, and summed over raw
// vectors), central finite differences for a, b, t and the bias, chunked vs materialised for many
// block sizes, thread-count invariance, extreme scales and biases, a large batch, both
// reductions, the LogitScaleBias module and every error.
#include "tessera/contrastive/siglip_loss.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace siglip_loss_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::LogitScaleBias;
using tessera::contrastive::Reduction;
using tessera::contrastive::siglip_loss;
using tessera::contrastive::SigLipLossOptions;
namespace tt = tessera::test;

template <class T>
class SigLipLossTest : public ::testing::Test {};
TYPED_TEST_SUITE(SigLipLossTest, tessera::test::Scalars);

TYPED_TEST(SigLipLossTest, MatchesPyTorch) {
  using T = TypeParam;
  for (const char* name : {"siglip_init", "siglip_trained", "siglip_sum_raw"}) {
    const tt::ContrastiveFixture fx(name);
    const auto a = fx.input<T, 2>("a");
    const auto b = fx.input<T, 2>("b");
    const T t = fx.scalar<T>("logit_scale");
    const T bias = fx.scalar<T>("logit_bias");
    for (int variant = 0; variant < 3; ++variant) {  // chunked default, chunked 2, materialised
      SigLipLossOptions opts{.reduction = fx.reduction()};
      if (variant == 1) opts.block_size = 2;
      if (variant == 2) opts.materialized = true;
      const std::string what = std::string(name) + (variant == 0   ? ""
                                                    : variant == 1 ? " block 2"
                                                                   : " materialized");
      const auto r = siglip_loss(a, b, t, bias, opts);
      tt::expect_parity_scalar(r.loss, fx.expected_scalar("loss"), what + " loss");
      tt::expect_parity(r.grad_a, fx.expected<2>("grad_a"), what + " grad_a");
      tt::expect_parity(r.grad_b, fx.expected<2>("grad_b"), what + " grad_b");
      tt::expect_parity_scalar(r.grad_logit_scale, fx.expected_scalar("grad_logit_scale"),
                               what + " grad_logit_scale");
      tt::expect_parity_scalar(r.grad_logit_bias, fx.expected_scalar("grad_logit_bias"),
                               what + " grad_logit_bias");
    }
  }
}

// a, b, t and bias against central differences, in double, for both reductions and both paths.
TEST(SigLipLossGrad, FiniteDifferences) {
  for (auto reduction : {Reduction::mean, Reduction::sum})
    for (bool materialized : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "reduction " << int(reduction) << " materialized " << materialized);
      auto a = tt::random_rows<double>(7, 4, 401);
      auto b = tt::random_rows<double>(7, 4, 402);
      const double t = 1.1, bias = -0.7;
      const SigLipLossOptions opts{
          .reduction = reduction, .block_size = 3, .materialized = materialized};
      const auto r = siglip_loss(a, b, t, bias, opts);
      const auto f = [&] { return siglip_loss(a, b, t, bias, opts).loss; };
      tt::expect_close(r.grad_a, tt::numeric_grad(a, f), tt::kGradCheckTol, "grad_a");
      tt::expect_close(r.grad_b, tt::numeric_grad(b, f), tt::kGradCheckTol, "grad_b");
      const double dt = tt::numeric_derivative(
          t, [&](double x) { return siglip_loss(a, b, x, bias, opts).loss; });
      tt::expect_close_scalar(r.grad_logit_scale, dt, tt::kGradCheckTol, "grad_logit_scale");
      const double db = tt::numeric_derivative(
          bias, [&](double x) { return siglip_loss(a, b, t, x, opts).loss; });
      tt::expect_close_scalar(r.grad_logit_bias, db, tt::kGradCheckTol, "grad_logit_bias");
    }
}

// The definition written out: -(1/N) sum_ij log sigmoid(label_ij z_ij).
TYPED_TEST(SigLipLossTest, MatchesTheFormula) {
  using T = TypeParam;
  const Index n = 5, d = 3;
  const auto a = tt::random_rows<T>(n, d, 411);
  const auto b = tt::random_rows<T>(n, d, 412);
  const T t = T(0.9), bias = T(-1.5);
  long double total = 0;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) {
      long double z = 0;
      for (Index k = 0; k < d; ++k) z += (long double)a(i, k) * b(j, k);
      z = std::exp((long double)t) * z + bias;
      const long double label = i == j ? 1 : -1;
      total += std::log1p(std::exp(-label * z));
    }
  tt::expect_close_scalar(siglip_loss(a, b, t, bias).loss, double(total / n), tt::agree_tol<T>(),
                          "loss");
}

TYPED_TEST(SigLipLossTest, ChunkedMatchesMaterialized) {
  using T = TypeParam;
  const Index n = 37, d = 6;
  const auto a = tt::random_rows<T>(n, d, 421);
  const auto b = tt::random_rows<T>(n, d, 422);
  for (auto reduction : {Reduction::mean, Reduction::sum}) {
    const SigLipLossOptions mat{.reduction = reduction, .materialized = true};
    const auto ref = siglip_loss(a, b, T(1), T(-2), mat);
    for (Index block : {1, 2, 3, 5, 7, 16, 36, 37, 38, 64, 256}) {
      SCOPED_TRACE(::testing::Message() << "reduction " << int(reduction) << " block " << block);
      const auto r = siglip_loss(a, b, T(1), T(-2), {.reduction = reduction, .block_size = block});
      tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
      tt::expect_close(r.grad_a, ref.grad_a, tt::agree_tol<T>(), "grad_a");
      tt::expect_close(r.grad_b, ref.grad_b, tt::agree_tol<T>(), "grad_b");
      tt::expect_close_scalar(r.grad_logit_scale, ref.grad_logit_scale, tt::agree_tol<T>(),
                              "grad_logit_scale");
      tt::expect_close_scalar(r.grad_logit_bias, ref.grad_logit_bias, tt::agree_tol<T>(),
                              "grad_logit_bias");
    }
  }
}

TYPED_TEST(SigLipLossTest, SameResultForAnyThreadCount) {
  using T = TypeParam;
  const auto a = tt::random_rows<T>(70, 9, 431);
  const auto b = tt::random_rows<T>(70, 9, 432);
  const SigLipLossOptions opts{.block_size = 8};
  tessera::set_num_threads(1);
  const auto one = siglip_loss(a, b, T(2), T(-3), opts);
  tessera::set_num_threads(2);
  const auto two = siglip_loss(a, b, T(2), T(-3), opts);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_EQ(one.loss, two.loss);
  EXPECT_EQ(one.grad_logit_scale, two.grad_logit_scale);
  EXPECT_EQ(one.grad_logit_bias, two.grad_logit_bias);
  tt::expect_identical(one.grad_a, two.grad_a, "grad_a");
  tt::expect_identical(one.grad_b, two.grad_b, "grad_b");
}

// Scales of 100 and 1e4 and biases of +-1e3 (sigmoids saturated both ways, exp(|z|) overflowing):
// finite, float agreeing with double.
TYPED_TEST(SigLipLossTest, ExtremeScalesAndBiases) {
  using T = TypeParam;
  const Index n = 200, d = 8;
  const auto a = tt::unit_rows<T>(n, d, 441);
  const auto b = tt::unit_rows<T>(n, d, 442);
  for (double scale : {100.0, 1e4})
    for (double bias : {-1e3, 0.0, 1e3}) {
      SCOPED_TRACE(::testing::Message() << "scale " << scale << " bias " << bias);
      const SigLipLossOptions opts{.block_size = 64};
      const auto r = siglip_loss(a, b, std::log(T(scale)), T(bias), opts);
      const auto rd = siglip_loss(tt::to_double(a), tt::to_double(b), std::log(double(T(scale))),
                                  double(T(bias)), opts);
      ASSERT_TRUE(std::isfinite(r.loss));
      ASSERT_TRUE(std::isfinite(r.grad_logit_scale));
      ASSERT_TRUE(std::isfinite(r.grad_logit_bias));
      const double tol = std::is_same_v<T, float> ? 1e-6 * scale : 1e-12 * scale;
      tt::expect_close_scalar(r.loss, rd.loss, tol, "loss");
      tt::expect_close_scalar(r.grad_logit_bias, rd.grad_logit_bias, tol, "grad_logit_bias");
      tt::expect_close(r.grad_a, rd.grad_a, tol, "grad_a");
      tt::expect_close(r.grad_b, rd.grad_b, tol, "grad_b");
    }
}

TYPED_TEST(SigLipLossTest, LargeBatch) {
  using T = TypeParam;
  const Index n = 3000, d = 16;
  const auto a = tt::unit_rows<T>(n, d, 451);
  const auto b = tt::unit_rows<T>(n, d, 452);
  const auto r = siglip_loss(a, b, std::log(T(10)), T(-10));
  const auto ref = siglip_loss(a, b, std::log(T(10)), T(-10), {.materialized = true});
  ASSERT_TRUE(std::isfinite(r.loss));
  tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
  tt::expect_close_scalar(r.grad_logit_bias, ref.grad_logit_bias, tt::agree_tol<T>(),
                          "grad_logit_bias");
  tt::expect_close(r.grad_a, ref.grad_a, tt::agree_tol<T>(), "grad_a");
  tt::expect_close(r.grad_b, ref.grad_b, tt::agree_tol<T>(), "grad_b");
}

// mean divides by N (SigLIP's convention), not by the N^2 pairs.
TYPED_TEST(SigLipLossTest, ReductionsDifferByN) {
  using T = TypeParam;
  const Index n = 12;
  const auto a = tt::random_rows<T>(n, 5, 461);
  const auto b = tt::random_rows<T>(n, 5, 462);
  const auto mean = siglip_loss(a, b, T(0.5), T(-1));
  const auto sum = siglip_loss(a, b, T(0.5), T(-1), {.reduction = Reduction::sum});
  tt::expect_close_scalar(sum.loss, n * double(mean.loss), tt::agree_tol<T>(), "loss");
  tt::expect_close_scalar(sum.grad_logit_bias, n * double(mean.grad_logit_bias), tt::agree_tol<T>(),
                          "grad_logit_bias");
  for (Index i = 0; i < mean.grad_a.size(); ++i)
    EXPECT_TRUE(
        tt::close<double>(sum.grad_a.data()[i], n * double(mean.grad_a.data()[i]), 1e-6, 1e-5));
}

TYPED_TEST(SigLipLossTest, LogitScaleBiasModule) {
  using T = TypeParam;
  LogitScaleBias<T> lsb;
  EXPECT_NEAR(double(lsb.logit_scale.value()), std::log(10.0), 1e-6);
  EXPECT_EQ(lsb.logit_bias.value(), T(-10));
  EXPECT_EQ(lsb.num_parameters(), 2);
  const auto dict = lsb.state_dict();
  EXPECT_TRUE(dict.contains("logit_scale"));
  EXPECT_TRUE(dict.contains("logit_bias"));
  const auto a = tt::unit_rows<T>(6, 4, 471);
  const auto b = tt::unit_rows<T>(6, 4, 472);
  const auto r = siglip_loss(a, b, lsb);
  EXPECT_EQ(r.loss, siglip_loss(a, b, lsb.logit_scale.value(), lsb.logit_bias.value()).loss);
  lsb.accumulate_grad(r);
  EXPECT_EQ(lsb.logit_scale.grad(), r.grad_logit_scale);
  EXPECT_EQ(lsb.logit_bias.grad(), r.grad_logit_bias);
  LogitScaleBias<T> other({.init_scale = 2.0, .init_bias = 0.5});
  EXPECT_NEAR(double(other.logit_scale.value()), std::log(2.0), 1e-6);
  other.load_state_dict(dict);
  EXPECT_EQ(other.logit_bias.value(), T(-10));
}

TEST(SigLipLossErrors, Messages) {
  const auto a = tt::random_rows<double>(3, 2, 1);
  constexpr const char* fn = "tessera::contrastive::siglip_loss";
  TESSERA_EXPECT_THROW_MSG(siglip_loss(a, Tensor<double, 2>(3, 3), 1.0, 0.0), ShapeError, fn, "'b'",
                           "[3, 3]", "expected [3, 2]");
  TESSERA_EXPECT_THROW_MSG(siglip_loss(Tensor<double, 2>(3, 0), Tensor<double, 2>(3, 0), 1.0, 0.0),
                           ShapeError, fn, "'a'", "dim >= 1");
  EXPECT_TRUE(std::isnan(siglip_loss(a, a, NAN, 0.0).loss));  // NaN in, NaN out
  TESSERA_EXPECT_THROW_MSG(siglip_loss(a, a, 800.0, 0.0), ValueError, "'logit_scale' is 800",
                           "exp is finite");
  EXPECT_THROW(
      siglip_loss(tt::random_rows<float>(3, 2, 1), tt::random_rows<float>(3, 2, 2), 100.0f, 0.0f),
      ValueError);  // exp(100) overflows float
  TESSERA_EXPECT_THROW_MSG(siglip_loss(a, a, 1.0, INFINITY), ValueError, "'logit_bias' is inf");
  TESSERA_EXPECT_THROW_MSG(siglip_loss(a, a, 1.0, 0.0, {.reduction = static_cast<Reduction>(5)}),
                           ValueError, "'reduction' is 5");
  TESSERA_EXPECT_THROW_MSG(siglip_loss(a, a, 1.0, 0.0, {.block_size = 0}), ValueError,
                           "'block_size' is 0");
  TESSERA_EXPECT_THROW_MSG(LogitScaleBias<double>({.init_scale = -1.0}), ValueError,
                           "tessera::contrastive::LogitScaleBias", "'init_scale' is -1");
  TESSERA_EXPECT_THROW_MSG(LogitScaleBias<double>({.init_bias = NAN}), ValueError, "'init_bias'");
}

}  // namespace siglip_loss_test
