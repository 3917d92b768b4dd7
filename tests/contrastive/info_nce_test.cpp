// Tests for tessera/contrastive/info_nce.hpp: InfoNCE against PyTorch autograd fixtures (with a
// temperature and with a scale, square and rectangular), central finite differences for a, b and
// the scale, chunked vs materialised for many block sizes, thread-count invariance, extreme
// scales and a large batch, both reductions and every error.
#include "tessera/contrastive/info_nce.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace info_nce_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::info_nce_loss;
using tessera::contrastive::InfoNceLossOptions;
using tessera::contrastive::Reduction;
namespace tt = tessera::test;

template <class T>
class InfoNceTest : public ::testing::Test {};
TYPED_TEST_SUITE(InfoNceTest, tessera::test::Scalars);

TYPED_TEST(InfoNceTest, MatchesPyTorch) {
  using T = TypeParam;
  for (const char* name : {"info_nce_temperature", "info_nce_scale_rect", "info_nce_sum"}) {
    const tt::ContrastiveFixture fx(name);
    const auto a = fx.input<T, 2>("a");
    const auto b = fx.input<T, 2>("b");
    const bool by_temperature = fx.has("temperature");
    for (int variant = 0; variant < 3; ++variant) {  // chunked default, chunked 2, materialised
      InfoNceLossOptions opts{.reduction = fx.reduction()};
      if (by_temperature)
        opts.temperature = fx.options().at("temperature").get<double>();
      else
        opts.scale = fx.options().at("scale").get<double>();
      if (variant == 1) opts.block_size = 2;
      if (variant == 2) opts.materialized = true;
      const std::string what = std::string(name) + (variant == 0   ? ""
                                                    : variant == 1 ? " block 2"
                                                                   : " materialized");
      const auto r = info_nce_loss(a, b, opts);
      tt::expect_parity_scalar(r.loss, fx.expected_scalar("loss"), what + " loss");
      tt::expect_parity(r.grad_a, fx.expected<2>("grad_a"), what + " grad_a");
      tt::expect_parity(r.grad_b, fx.expected<2>("grad_b"), what + " grad_b");
      if (by_temperature) {
        // PyTorch differentiates by tau = 1/s: dL/dtau = -s^2 dL/ds.
        const T tau = fx.scalar<T>("temperature");
        tt::expect_parity_scalar(-r.grad_scale / (tau * tau),
                                 fx.expected_scalar("grad_temperature"),
                                 what + " grad_temperature");
      } else {
        tt::expect_parity_scalar(r.grad_scale, fx.expected_scalar("grad_scale"),
                                 what + " grad_scale");
      }
    }
  }
}

// a, b and s against central differences, in double, for both reductions and both paths.
TEST(InfoNceGrad, FiniteDifferences) {
  for (auto reduction : {Reduction::mean, Reduction::sum})
    for (bool materialized : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "reduction " << int(reduction) << " materialized " << materialized);
      auto a = tt::random_rows<double>(5, 4, 201);
      auto b = tt::random_rows<double>(7, 4, 202);
      double s = 2.5;
      const auto opts = [&](double scale) {
        return InfoNceLossOptions{
            .scale = scale, .reduction = reduction, .block_size = 3, .materialized = materialized};
      };
      const auto r = info_nce_loss(a, b, opts(s));
      const auto f = [&] { return info_nce_loss(a, b, opts(s)).loss; };
      tt::expect_close(r.grad_a, tt::numeric_grad(a, f), tt::kGradCheckTol, "grad_a");
      tt::expect_close(r.grad_b, tt::numeric_grad(b, f), tt::kGradCheckTol, "grad_b");
      const double ds =
          tt::numeric_derivative(s, [&](double x) { return info_nce_loss(a, b, opts(x)).loss; });
      tt::expect_close_scalar(r.grad_scale, ds, tt::kGradCheckTol, "grad_scale");
    }
}

// The temperature is only another way to give s: the same loss as the scale 1 / tau, and the
// default is tau = 0.07.
TYPED_TEST(InfoNceTest, TemperatureIsTheInverseScale) {
  using T = TypeParam;
  const auto a = tt::unit_rows<T>(6, 5, 211);
  const auto b = tt::unit_rows<T>(6, 5, 212);
  const auto by_tau = info_nce_loss(a, b, {.temperature = 0.25});
  const auto by_scale = info_nce_loss(a, b, {.scale = 4.0});
  EXPECT_EQ(by_tau.loss, by_scale.loss);
  tt::expect_identical(by_tau.grad_a, by_scale.grad_a, "grad_a");
  const auto by_default = info_nce_loss(a, b);
  const auto by_007 = info_nce_loss(a, b, {.temperature = 0.07});
  EXPECT_EQ(by_default.loss, by_007.loss);
}

// The definition written out: -log softmax of row i at i, averaged.
TYPED_TEST(InfoNceTest, MatchesTheFormula) {
  using T = TypeParam;
  const Index n = 4, m = 6, d = 3;
  const auto a = tt::random_rows<T>(n, d, 221);
  const auto b = tt::random_rows<T>(m, d, 222);
  const double s = 1.7;
  long double total = 0;
  for (Index i = 0; i < n; ++i) {
    long double z = 0, pos = 0;
    for (Index j = 0; j < m; ++j) {
      long double l = 0;
      for (Index k = 0; k < d; ++k) l += (long double)a(i, k) * b(j, k);
      l *= s;
      z += std::exp(l);
      if (j == i) pos = l;
    }
    total += std::log(z) - pos;
  }
  const auto r = info_nce_loss(a, b, {.scale = s});
  tt::expect_close_scalar(r.loss, double(total / n), tt::agree_tol<T>(), "loss");
}

TYPED_TEST(InfoNceTest, ChunkedMatchesMaterialized) {
  using T = TypeParam;
  const Index n = 29, m = 37, d = 6;
  const auto a = tt::random_rows<T>(n, d, 231);
  const auto b = tt::random_rows<T>(m, d, 232);
  for (auto reduction : {Reduction::mean, Reduction::sum}) {
    const auto ref =
        info_nce_loss(a, b, {.scale = 3.0, .reduction = reduction, .materialized = true});
    for (Index block : {1, 2, 3, 5, 7, 16, 28, 29, 30, 37, 64, 256}) {
      SCOPED_TRACE(::testing::Message() << "reduction " << int(reduction) << " block " << block);
      const auto r =
          info_nce_loss(a, b, {.scale = 3.0, .reduction = reduction, .block_size = block});
      tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
      tt::expect_close(r.grad_a, ref.grad_a, tt::agree_tol<T>(), "grad_a");
      tt::expect_close(r.grad_b, ref.grad_b, tt::agree_tol<T>(), "grad_b");
      tt::expect_close_scalar(r.grad_scale, ref.grad_scale, tt::agree_tol<T>(), "grad_scale");
    }
  }
}

TYPED_TEST(InfoNceTest, SameResultForAnyThreadCount) {
  using T = TypeParam;
  const auto a = tt::random_rows<T>(70, 9, 241);
  const auto b = tt::random_rows<T>(75, 9, 242);
  const InfoNceLossOptions opts{.scale = 5.0, .block_size = 8};
  tessera::set_num_threads(1);
  const auto one = info_nce_loss(a, b, opts);
  tessera::set_num_threads(2);
  const auto two = info_nce_loss(a, b, opts);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_EQ(one.loss, two.loss);
  EXPECT_EQ(one.grad_scale, two.grad_scale);
  tt::expect_identical(one.grad_a, two.grad_a, "grad_a");
  tt::expect_identical(one.grad_b, two.grad_b, "grad_b");
}

// Scale 100 with unit vectors (exp(100) overflows float) and a scale of 1e4 (exp overflows
// double): everything finite and float agreeing with double.
TYPED_TEST(InfoNceTest, ExtremeScales) {
  using T = TypeParam;
  const Index n = 300, d = 8;
  const auto a = tt::unit_rows<T>(n, d, 251);
  const auto b = tt::unit_rows<T>(n, d, 252);
  for (double scale : {100.0, 1e4})
    for (bool materialized : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "scale " << scale << " materialized " << materialized);
      const InfoNceLossOptions opts{.scale = scale, .block_size = 64, .materialized = materialized};
      const auto r = info_nce_loss(a, b, opts);
      const auto rd = info_nce_loss(tt::to_double(a), tt::to_double(b), opts);
      ASSERT_TRUE(std::isfinite(r.loss));
      ASSERT_TRUE(std::isfinite(r.grad_scale));
      // Logits of size `scale` carry float's relative rounding times the scale.
      const double tol = std::is_same_v<T, float> ? 1e-6 * scale : 1e-12 * scale;
      tt::expect_close_scalar(r.loss, rd.loss, tol, "loss");
      tt::expect_close(r.grad_a, rd.grad_a, tol, "grad_a");
      tt::expect_close(r.grad_b, rd.grad_b, tol, "grad_b");
    }
}

// A batch far larger than a block, chunked and materialised agreeing.
TYPED_TEST(InfoNceTest, LargeBatch) {
  using T = TypeParam;
  const Index n = 3000, d = 16;
  const auto a = tt::unit_rows<T>(n, d, 261);
  const auto b = tt::unit_rows<T>(n, d, 262);
  const auto r = info_nce_loss(a, b, {.scale = 30.0});
  const auto ref = info_nce_loss(a, b, {.scale = 30.0, .materialized = true});
  ASSERT_TRUE(std::isfinite(r.loss));
  tt::expect_close_scalar(r.loss, ref.loss, tt::agree_tol<T>(), "loss");
  tt::expect_close(r.grad_a, ref.grad_a, tt::agree_tol<T>(), "grad_a");
  tt::expect_close(r.grad_b, ref.grad_b, tt::agree_tol<T>(), "grad_b");
}

TYPED_TEST(InfoNceTest, ReductionsDifferByN) {
  using T = TypeParam;
  const Index n = 12;
  const auto a = tt::random_rows<T>(n, 5, 271);
  const auto b = tt::random_rows<T>(n + 3, 5, 272);
  const auto mean = info_nce_loss(a, b, {.scale = 2.0});
  const auto sum = info_nce_loss(a, b, {.scale = 2.0, .reduction = Reduction::sum});
  tt::expect_close_scalar(sum.loss, n * double(mean.loss), tt::agree_tol<T>(), "loss");
  tt::expect_close_scalar(sum.grad_scale, n * double(mean.grad_scale), tt::agree_tol<T>(),
                          "grad_scale");
  for (Index i = 0; i < mean.grad_b.size(); ++i)
    EXPECT_TRUE(
        tt::close<double>(sum.grad_b.data()[i], n * double(mean.grad_b.data()[i]), 1e-6, 1e-5));
}

TEST(InfoNceErrors, Messages) {
  const auto a = tt::random_rows<double>(3, 2, 1);
  constexpr const char* fn = "tessera::contrastive::info_nce_loss";
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, Tensor<double, 2>(3, 3)), ShapeError, fn, "'b'",
                           "[3, 3]", "feature dimension of 'a'");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, Tensor<double, 2>(2, 2)), ShapeError, fn, "'b'",
                           "[2, 2]", "at least 3 rows");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(Tensor<double, 2>(0, 2), a), ShapeError, fn, "'a'",
                           "[0, 2]", "rows >= 1");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, Tensor<double, 2>(3, 0)), ShapeError, "'b'",
                           "dim >= 1");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.temperature = 0.1, .scale = 10.0}), ValueError, fn,
                           "'temperature'", "'scale'", "at most one");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.temperature = 0.0}), ValueError,
                           "'temperature' is 0", "> 0");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.temperature = -1.0}), ValueError,
                           "'temperature' is -1");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.temperature = NAN}), ValueError, "'temperature'");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.temperature = 1e-320}), ValueError,
                           "'temperature'", "inverse is finite");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.scale = 0.0}), ValueError, "'scale' is 0");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.scale = INFINITY}), ValueError, "'scale' is inf");
  EXPECT_THROW(info_nce_loss(tt::random_rows<float>(3, 2, 1), tt::random_rows<float>(3, 2, 2),
                             {.scale = 1e39}),
               ValueError);  // finite in double, not in float
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.reduction = static_cast<Reduction>(5)}),
                           ValueError, "'reduction' is 5");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(a, a, {.block_size = 0}), ValueError, "'block_size' is 0");
}

}  // namespace info_nce_test
