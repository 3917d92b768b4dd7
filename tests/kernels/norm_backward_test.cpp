// layer_norm_backward: dx, dweight and dbias against central differences of layer_norm in double,
// float against double, thread-count invariance, rows the forward rescales, and errors.
#include <gtest/gtest.h>

#include <cmath>

#include "../gradient_check.hpp"
#include "../test_util.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/norm.hpp"

namespace tessera {
namespace norm_backward_test {

struct Case {
  bool weight, bias;
  double shift;  // added to x: a large mean tests the centred statistics
};

void check_case(const Case& c) {
  const Index rows = 6, n = 13;
  Tensor<double, 2> x(Shape<2>{rows, n}), dy(Shape<2>{rows, n});
  x.setRandom(11, -2, 2), dy.setRandom(12);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] += c.shift;
  Tensor<double, 1> w(Shape<1>{n}), b(Shape<1>{n});
  w.setRandom(13, 0.5, 1.5), b.setRandom(14);
  LayerNormOptions<double> o{.eps = 1e-5};
  if (c.weight) o.weight = cview(w);
  if (c.bias) o.bias = cview(b);
  Tensor<double, 2> dx(x.shape());
  Tensor<double, 1> gw(Shape<1>{n}), gb(Shape<1>{n});
  layer_norm_backward_into(x, dy, dx, o, mview(gw), mview(gb));
  const auto loss = [&] { return test::weighted_sum(layer_norm(x, o), dy); };
  test::GradCheckOptions go;
  go.rtol =
      1e-6 * (1 + std::fabs(c.shift));  // the difference of L at x +- h loses log10(shift) digits
  go.atol = 1e-8 * (1 + std::fabs(c.shift));
  test::expect_gradient("x", x.data(), dx.data(), x.size(), loss, go);
  if (c.weight) test::expect_gradient("weight", w.data(), gw.data(), n, loss, go);
  if (c.bias) test::expect_gradient("bias", b.data(), gb.data(), n, loss, go);
}

TEST(LayerNormBackward, MatchesCentralDifferencesInDouble) {
  check_case({true, true, 0.0});
  check_case({true, false, 0.0});
  check_case({false, false, 0.0});
  check_case({true, true, 1e3});
}

TEST(LayerNormBackward, AccumulatesIntoTheParameterGradients) {
  Tensor<double, 2> x(Shape<2>{3, 5}), dy(Shape<2>{3, 5}), dx(Shape<2>{3, 5});
  x.setRandom(1), dy.setRandom(2);
  Tensor<double, 1> w(Shape<1>{5}), b(Shape<1>{5}), gw(Shape<1>{5}), gb(Shape<1>{5});
  w.setRandom(3), b.setRandom(4);
  const LayerNormOptions<double> o{.weight = cview(w), .bias = cview(b)};
  layer_norm_backward_into(x, dy, dx, o, mview(gw), mview(gb));
  const auto once_w = test::owned_vector(gw), once_b = test::owned_vector(gb);
  layer_norm_backward_into(x, dy, dx, o, mview(gw), mview(gb));
  for (Index i = 0; i < 5; ++i) {
    EXPECT_DOUBLE_EQ(gw(i), 2 * once_w(i));
    EXPECT_DOUBLE_EQ(gb(i), 2 * once_b(i));
  }
}

TEST(LayerNormBackward, RowsWhoseSquaresOverflowAreRescaledAsInTheForward) {
  // float: 1e20^2 overflows, so the forward rescales the row; the backward must agree with the
  // gradient of the same row scaled down by 2^-k (layer norm is scale-invariant, eps aside).
  Tensor<float, 2> x{{1e20f, -3e20f, 2e20f, 5e19f}}, dy{{0.3f, -0.1f, 0.7f, 0.2f}};
  Tensor<float, 2> dx(x.shape());
  layer_norm_backward_into(x, dy, dx);
  Tensor<double, 2> xd(x.shape()), dyd(x.shape()), dxd(x.shape());
  for (Index i = 0; i < 4; ++i) xd.data()[i] = x.data()[i], dyd.data()[i] = dy.data()[i];
  layer_norm_backward_into(xd, dyd, dxd);
  for (Index i = 0; i < 4; ++i) {
    ASSERT_TRUE(std::isfinite(dx.data()[i]));
    EXPECT_NEAR(dx.data()[i], dxd.data()[i], 1e-5 * std::fabs(dxd.data()[i]) + 1e-30);
  }
}

TEST(LayerNormBackward, FloatAgreesWithDoubleAndThreadsGiveTheSameBits) {
  const Index rows = 300, n = 96;
  Tensor<float, 2> x(Shape<2>{rows, n}), dy(Shape<2>{rows, n});
  x.setRandom(7, -3, 3), dy.setRandom(8);
  Tensor<float, 1> w(Shape<1>{n}), b(Shape<1>{n});
  w.setRandom(9), b.setRandom(10);
  const LayerNormOptions<float> o{.weight = cview(w), .bias = cview(b)};
  const auto run = [&](int threads) {
    set_num_threads(threads);
    Tensor<float, 2> dx(x.shape());
    Tensor<float, 1> gw(Shape<1>{n}), gb(Shape<1>{n});
    layer_norm_backward_into(x, dy, dx, o, mview(gw), mview(gb));
    return std::tuple{dx, gw, gb};
  };
  const int saved = num_threads();
  const auto [dx1, gw1, gb1] = run(1);
  const auto [dx3, gw3, gb3] = run(3);
  set_num_threads(saved);
  EXPECT_TRUE(test::same_bits(dx1, dx3));
  EXPECT_TRUE(test::same_bits(gw1, gw3));
  EXPECT_TRUE(test::same_bits(gb1, gb3));
  Tensor<double, 2> xd(x.shape()), dyd(x.shape()), dxd(x.shape());
  Tensor<double, 1> wd(w.shape()), bd(b.shape()), gwd(w.shape()), gbd(b.shape());
  for (Index i = 0; i < x.size(); ++i) xd.data()[i] = x.data()[i], dyd.data()[i] = dy.data()[i];
  for (Index i = 0; i < n; ++i) wd(i) = w(i), bd(i) = b(i);
  layer_norm_backward_into(xd, dyd, dxd, {.weight = cview(wd), .bias = cview(bd)}, mview(gwd),
                           mview(gbd));
  for (Index i = 0; i < x.size(); ++i)
    ASSERT_NEAR(dx1.data()[i], dxd.data()[i], 1e-4 * (1 + std::fabs(dxd.data()[i])));
  for (Index i = 0; i < n; ++i) {
    EXPECT_NEAR(gw1(i), gwd(i), 1e-4 * (1 + std::fabs(gwd(i))));
    EXPECT_NEAR(gb1(i), gbd(i), 1e-4 * (1 + std::fabs(gbd(i))));
  }
}

TEST(LayerNormBackward, NaNIsNeverHidden) {
  Tensor<double, 2> x{{1.0, std::nan(""), 2.0}}, dy{{1.0, 1.0, 1.0}}, dx(Shape<2>{1, 3});
  layer_norm_backward_into(x, dy, dx);
  for (Index i = 0; i < 3; ++i) EXPECT_TRUE(std::isnan(dx.data()[i]));
  Tensor<double, 2> x2{{1.0, 3.0, 2.0}}, dy2{{1.0, std::nan(""), 1.0}};
  layer_norm_backward_into(x2, dy2, dx);
  for (Index i = 0; i < 3; ++i) EXPECT_TRUE(std::isnan(dx.data()[i]));
}

TEST(LayerNormBackward, BadArgumentsAreNamedErrors) {
  Tensor<float, 2> x(Shape<2>{2, 4}), dy(Shape<2>{2, 4}), dx(Shape<2>{2, 4}), bad(Shape<2>{2, 5});
  Tensor<float, 1> w3(Shape<1>{3}), g3(Shape<1>{3});
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, bad, dx), ShapeError,
                           "tessera::layer_norm_backward", "'dy'", "[2, 5]", "[2, 4]");
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, dy, bad), ShapeError,
                           "tessera::layer_norm_backward", "'dx'", "[2, 5]", "[2, 4]");
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, dy, dx, {.weight = cview(w3)}), ShapeError,
                           "tessera::layer_norm_backward", "'weight'", "[3]", "[4]");
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, dy, dx, {}, mview(g3)), ShapeError,
                           "tessera::layer_norm_backward", "'grad_weight'", "[3]", "[4]");
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, dy, dx, {}, std::nullopt, mview(g3)),
                           ShapeError, "tessera::layer_norm_backward", "'grad_bias'", "[3]");
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, dy, dx, {.eps = 0.0}), ValueError,
                           "tessera::layer_norm_backward", "'eps'");
  TESSERA_EXPECT_THROW_MSG(layer_norm_backward_into(x, dy, x), ValueError,
                           "tessera::layer_norm_backward", "'dx'", "'x'");
}

}  // namespace norm_backward_test
}  // namespace tessera
