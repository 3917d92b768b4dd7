// nn::LayerNorm's training forward and backward: central differences in double, float against
// double, errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/layer_norm.hpp"

namespace tessera::nn {
namespace layer_norm_backward_test {

using test::random_tensor;

TEST(LayerNormModuleBackward, MatchesCentralDifferencesInDouble) {
  for (const LayerNormOptions& o :
       {LayerNormOptions{.normalized_shape = 6},
        LayerNormOptions{.normalized_shape = 6, .bias = false},
        LayerNormOptions{.normalized_shape = 6, .elementwise_affine = false}}) {
    LayerNorm<double> m(o);
    m.for_each_parameter([](const std::string&, auto& p) { p.value.setRandom(5, 0.5, 1.5); });
    auto x = random_tensor<3>({2, 3, 6}, 1, -2, 2);
    const auto f = m.forward_train(x);
    EXPECT_TRUE(test::same_bits(f.output, m.forward(x)));
    const auto w = random_tensor<3>({2, 3, 6}, 2);
    m.zero_grad();
    const auto dx = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(x), w); };
    test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
    if (o.elementwise_affine) test::expect_parameter_gradients(m, loss);
  }
}

TEST(LayerNormModuleBackward, FloatAgreesWithDouble) {
  LayerNorm<float> mf({.normalized_shape = 40});
  LayerNorm<double> md({.normalized_shape = 40});
  mf.weight.value.setRandom(3), mf.bias.value.setRandom(4);
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<2>({17, 40}, 5, -3, 3);
  const auto gd = random_tensor<2>({17, 40}, 6);
  auto ff = mf.forward_train(test::cast_to<float>(xd));
  auto fd = md.forward_train(xd);
  test::expect_close_scaled("dx", mf.backward(ff.context, test::cast_to<float>(gd)),
                            md.backward(fd.context, gd), 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(LayerNormModuleBackward, BadArgumentsAreNamedErrors) {
  LayerNorm<float> m({.normalized_shape = 4});
  Tensor<float, 2> x(Shape<2>{2, 4}), g(Shape<2>{2, 3});
  const auto f = m.forward_train(x);
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError, "tessera::nn::LayerNorm::backward",
                           "'grad_output'", "[2, 3]", "[2, 4]");
  TESSERA_EXPECT_THROW_MSG(m.forward_train(g), ShapeError, "tessera::nn::LayerNorm::forward_train",
                           "'x'", "[2, 3]");
  LayerNorm<float> other({.normalized_shape = 3});
  TESSERA_EXPECT_THROW_MSG(other.backward(f.context, x), ValueError,
                           "tessera::nn::LayerNorm::backward", "'ctx'");
}

}  // namespace layer_norm_backward_test
}  // namespace tessera::nn
