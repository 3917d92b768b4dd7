// nn::Linear's training forward and backward: central differences in double for the input, the
// weight and the bias, with each activation; float against double; accumulation; errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/linear.hpp"

namespace tessera::nn {
namespace linear_backward_test {

using test::random_tensor;

TEST(LinearBackward, MatchesCentralDifferencesInDoubleForEveryActivation) {
  for (Activation act :
       {Activation::identity, Activation::relu, Activation::gelu, Activation::gelu_tanh,
        Activation::silu, Activation::tanh, Activation::quick_gelu})
    for (bool bias : {true, false}) {
      SCOPED_TRACE(std::string(to_string(act)) + (bias ? " with bias" : " without bias"));
      Linear<double> m({.in_features = 5, .out_features = 4, .bias = bias, .seed = 3});
      auto x = random_tensor<3>({2, 3, 5}, 1);
      auto f = m.forward_train(x, act);
      // The forward fuses the activation into the product's tiles, where Eigen's vectorised
      // sigmoid may round the last bit differently from the whole-row pass forward_train takes.
      test::expect_close_scaled("output", f.output, m.forward(x, act), 1e-15);
      const auto w = random_tensor<3>({2, 3, 4}, 2);
      m.zero_grad();
      const auto dx = m.backward(f.context, w);
      ASSERT_EQ(dx.shape(), x.shape());
      const auto loss = [&] { return test::weighted_sum(m.forward(x, act), w); };
      test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
      test::expect_parameter_gradients(m, loss);
    }
}

TEST(LinearBackward, FloatAgreesWithDouble) {
  Linear<float> mf({.in_features = 37, .out_features = 19, .seed = 5});
  Linear<double> md({.in_features = 37, .out_features = 19});
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<2>({23, 37}, 6);
  const auto gd = random_tensor<2>({23, 19}, 7);
  const auto xf = test::cast_to<float>(xd);
  const auto gf = test::cast_to<float>(gd);
  auto ff = mf.forward_train(xf, Activation::gelu);
  auto fd = md.forward_train(xd, Activation::gelu);
  const auto dxf = mf.backward(ff.context, gf);
  const auto dxd = md.backward(fd.context, gd);
  test::expect_close_scaled("dx", dxf, dxd, 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(LinearBackward, TwoBackwardsAccumulateAndTheContextIsUnchanged) {
  Linear<double> m({.in_features = 3, .out_features = 2, .seed = 1});
  const auto x = random_tensor<2>({4, 3}, 1);
  const auto g = random_tensor<2>({4, 2}, 2);
  const auto f = m.forward_train(x);
  m.zero_grad();
  const auto dx1 = m.backward(f.context, g);
  const auto once = test::owned_vector(m.weight.grad);
  const auto once_b = test::owned_vector(m.bias.grad);
  const auto dx2 = m.backward(f.context, g);
  EXPECT_TRUE(test::same_bits(dx1, dx2));
  for (Index i = 0; i < once.size(); ++i) EXPECT_DOUBLE_EQ(m.weight.grad.data()[i], 2 * once(i));
  for (Index i = 0; i < once_b.size(); ++i) EXPECT_DOUBLE_EQ(m.bias.grad.data()[i], 2 * once_b(i));
}

// A module used twice in one graph, y = m(m(x)): two contexts, and backward through both adds
// both uses into the parameters' gradients, as autograd does.
TEST(LinearBackward, AModuleUsedTwiceInOneGraphAccumulatesBothUses) {
  Linear<double> m({.in_features = 4, .out_features = 4, .seed = 6});
  auto x = random_tensor<2>({3, 4}, 1);
  const auto w = random_tensor<2>({3, 4}, 2);
  const auto f1 = m.forward_train(x, Activation::tanh);
  const auto f2 = m.forward_train(f1.output, Activation::tanh);
  m.zero_grad();
  const auto dx = m.backward(f1.context, m.backward(f2.context, w));
  const auto loss = [&] {
    return test::weighted_sum(m.forward(m.forward(x, Activation::tanh), Activation::tanh), w);
  };
  test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
  test::expect_parameter_gradients(m, loss);
}

TEST(LinearBackward, AMissingGradientIsAllocatedAndAPrepackedWeightIsUsed) {
  Linear<float> m({.in_features = 8, .out_features = 6, .seed = 2});
  const auto x = test::cast_to<float>(random_tensor<2>({5, 8}, 3));
  const auto g = test::cast_to<float>(random_tensor<2>({5, 6}, 4));
  const auto plain = m.forward_train(x);
  m.prepack();
  const auto packed = m.forward_train(x);
  EXPECT_TRUE(m.is_prepacked());
  test::expect_close_scaled("output", packed.output, plain.output, 1e-6);
  ASSERT_FALSE(m.weight.has_grad());
  (void)m.backward(packed.context, g);
  EXPECT_TRUE(m.weight.has_grad());
  EXPECT_TRUE(m.bias.has_grad());
}

// An optimizer step (or a load) between forward_train and backward changes the weight backward
// would multiply by: refused, as PyTorch refuses a tensor "modified by an inplace operation".
TEST(LinearBackward, AWeightChangedSinceTheForwardIsRefused) {
  Linear<float> m({.in_features = 3, .out_features = 2});
  Tensor<float, 2> x(Shape<2>{4, 3}), g(Shape<2>{4, 2});
  const auto f = m.forward_train(x);
  m.weight.value(0, 0) += 1;
  ++m.weight.version;  // what every optimizer step and load_state_dict do
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ValueError, "tessera::nn::Linear::backward",
                           "'weight'", "changed since forward_train", "version 0", "1 now");
}

TEST(LinearBackward, BadArgumentsAreNamedErrors) {
  Linear<float> m({.in_features = 3, .out_features = 2});
  Tensor<float, 2> x(Shape<2>{4, 3}), x5(Shape<2>{4, 5});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x5), ShapeError, "tessera::nn::Linear::forward_train",
                           "'x'", "[4, 5]", "3");
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x, static_cast<Activation>(9)), ValueError,
                           "tessera::nn::Linear::forward_train", "'act'", "Activation(9)");
  const auto f = m.forward_train(x);
  Tensor<float, 2> g(Shape<2>{4, 3});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError, "tessera::nn::Linear::backward",
                           "'grad_output'", "[4, 3]", "[4, 2]");
  Linear<float> other({.in_features = 7, .out_features = 2});
  Tensor<float, 2> g2(Shape<2>{4, 2});
  TESSERA_EXPECT_THROW_MSG(other.backward(f.context, g2), ValueError,
                           "tessera::nn::Linear::backward", "'ctx'");
  m.weight.value = Tensor<float, 2>(Shape<2>{2, 2});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g2), ShapeError, "tessera::nn::Linear::backward",
                           "'weight'", "[2, 2]", "[2, 3]");
}

}  // namespace linear_backward_test
}  // namespace tessera::nn
