// activation_backward: dx = dy * act'(x), checked against central differences of the forward in
// double and between float and double.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "../gradient_check.hpp"
#include "../test_util.hpp"
#include "tessera/kernels/activation.hpp"

namespace tessera {
namespace activation_backward_test {

constexpr Activation kAll[] = {Activation::identity,  Activation::relu, Activation::gelu,
                               Activation::gelu_tanh, Activation::silu, Activation::tanh,
                               Activation::quick_gelu};

TEST(ActivationBackward, MatchesCentralDifferencesInDouble) {
  // x spans both signs and the tails; no x within 1e-3 of 0, where relu has its kink.
  Tensor<double, 1> x(Shape<1>{200});
  for (Index i = 0; i < 200; ++i) x(i) = -6.0 + 12.0 * (i + 0.37) / 200.0;
  Tensor<double, 1> dy(Shape<1>{200});
  dy.setRandom(3);
  for (Activation act : kAll) {
    const auto dx = activation_backward(act, x, dy);
    for (Index i = 0; i < 200; ++i) {
      const double h = 1e-6;
      Tensor<double, 1> p(Shape<1>{1}), m(Shape<1>{1});
      p(0) = x(i) + h, m(0) = x(i) - h;
      const double numeric = (activate(act, p)(0) - activate(act, m)(0)) / (2 * h) * dy(i);
      EXPECT_NEAR(dx(i), numeric, 1e-8 + 1e-7 * std::fabs(numeric))
          << to_string(act) << " at x = " << x(i);
    }
  }
}

TEST(ActivationBackward, FloatAgreesWithDouble) {
  Tensor<double, 2> xd(Shape<2>{7, 33}), gd(Shape<2>{7, 33});
  xd.setRandom(5, -5, 5), gd.setRandom(6);
  Tensor<float, 2> xf(xd.shape()), gf(gd.shape());
  for (Index i = 0; i < xd.size(); ++i)
    xf.data()[i] = static_cast<float>(xd.data()[i]),
    gf.data()[i] = static_cast<float>(gd.data()[i]);
  for (Activation act : kAll) {
    Tensor<double, 2> xr(xd.shape()), gr(gd.shape());  // the float inputs, exactly, in double
    for (Index i = 0; i < xd.size(); ++i) xr.data()[i] = xf.data()[i], gr.data()[i] = gf.data()[i];
    const auto d = activation_backward(act, xr, gr);
    const auto f = activation_backward(act, xf, gf);
    // Where tanh saturates (gelu_tanh at x near -5) float's 1 + tanh(u) is exactly 0 while the
    // true derivative is about -3e-6: an absolute error float cannot avoid (PyTorch's float
    // formula has it too), hence the absolute part of the tolerance.
    for (Index i = 0; i < d.size(); ++i)
      EXPECT_NEAR(f.data()[i], d.data()[i], 5e-6 + 2e-6 * std::fabs(d.data()[i])) << to_string(act);
  }
}

TEST(ActivationBackward, ReluFollowsPyTorchAtZeroAndNaNPropagates) {
  Tensor<double, 1> x{0.0, -0.0, 1.0, -1.0};
  Tensor<double, 1> dy{2.0, 2.0, 2.0, 2.0};
  const auto dx = activation_backward(Activation::relu, x, dy);
  EXPECT_EQ(dx(0), 0.0);  // threshold_backward: x <= 0 gives 0
  EXPECT_EQ(dx(1), 0.0);
  EXPECT_EQ(dx(2), 2.0);
  EXPECT_EQ(dx(3), 0.0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor<double, 1> gn{nan};
  for (Activation act : kAll) {
    Tensor<double, 1> one{0.5};
    EXPECT_TRUE(std::isnan(activation_backward(act, one, gn)(0))) << to_string(act);
  }
  Tensor<double, 1> xn{nan}, g1{1.0};
  for (Activation act : {Activation::gelu, Activation::gelu_tanh, Activation::silu,
                         Activation::tanh, Activation::quick_gelu})
    EXPECT_TRUE(std::isnan(activation_backward(act, xn, g1)(0))) << to_string(act);
}

TEST(ActivationBackward, DxMayBeDyItself) {
  Tensor<float, 1> x(Shape<1>{100}), g(Shape<1>{100});
  x.setRandom(1), g.setRandom(2);
  const auto expected = activation_backward(Activation::gelu, x, g);
  activation_backward_into(Activation::gelu, x, g, g);
  EXPECT_TRUE(test::same_bits(g, expected));
}

TEST(ActivationBackward, BadArgumentsAreNamedErrors) {
  Tensor<float, 1> x(Shape<1>{4}), g(Shape<1>{4}), g5(Shape<1>{5});
  TESSERA_EXPECT_THROW_MSG(activation_backward(static_cast<Activation>(42), x, g), ValueError,
                           "tessera::activation_backward", "'act'", "Activation(42)");
  TESSERA_EXPECT_THROW_MSG(activation_backward(Activation::relu, x, g5), ShapeError,
                           "tessera::activation_backward", "'dy'", "[5]", "[4]");
  TESSERA_EXPECT_THROW_MSG(activation_backward_into(Activation::relu, x, g, g5), ShapeError,
                           "tessera::activation_backward", "'dx'", "[5]", "[4]");
  TESSERA_EXPECT_THROW_MSG(activation_backward_into(Activation::relu, x, g, x), ValueError,
                           "tessera::activation_backward", "'dx'", "'x'");
  Tensor<float, 1> big(Shape<1>{8});
  TESSERA_EXPECT_THROW_MSG(
      activation_backward_into(Activation::relu, x, TensorMap<float, 1>(big.data(), {4}),
                               TensorMap<float, 1>(big.data() + 2, {4})),
      ValueError, "tessera::activation_backward", "partially overlaps");
}

}  // namespace activation_backward_test
}  // namespace tessera
