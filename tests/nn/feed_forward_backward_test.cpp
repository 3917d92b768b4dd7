// nn::FeedForward's training forward and backward: central differences in double with each
// activation, float against double.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/feed_forward.hpp"

namespace tessera::nn {
namespace feed_forward_backward_test {

using test::random_tensor;

TEST(FeedForwardBackward, MatchesCentralDifferencesInDouble) {
  for (Activation act : {Activation::relu, Activation::gelu, Activation::quick_gelu})
    for (bool bias : {true, false}) {
      SCOPED_TRACE(to_string(act));
      FeedForward<double> m(
          {.d_model = 6, .dim_feedforward = 10, .activation = act, .bias = bias, .seed = 4});
      auto x = random_tensor<3>({2, 3, 6}, 1);
      const auto f = m.forward_train(x);
      test::expect_close_scaled("output", f.output, m.forward(x), 1e-15);
      const auto w = random_tensor<3>({2, 3, 6}, 2);
      m.zero_grad();
      const auto dx = m.backward(f.context, w);
      const auto loss = [&] { return test::weighted_sum(m.forward(x), w); };
      test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
      test::expect_parameter_gradients(m, loss);
    }
}

TEST(FeedForwardBackward, FloatAgreesWithDouble) {
  FeedForward<float> mf({.d_model = 32, .dim_feedforward = 64, .activation = Activation::gelu});
  FeedForward<double> md({.d_model = 32, .dim_feedforward = 64, .activation = Activation::gelu});
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<2>({9, 32}, 5);
  const auto gd = random_tensor<2>({9, 32}, 6);
  auto ff = mf.forward_train(test::cast_to<float>(xd));
  auto fd = md.forward_train(xd);
  test::expect_close_scaled("dx", mf.backward(ff.context, test::cast_to<float>(gd)),
                            md.backward(fd.context, gd), 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(FeedForwardBackward, BadArgumentsAreNamedErrors) {
  FeedForward<float> m({.d_model = 4, .dim_feedforward = 8});
  Tensor<float, 2> x(Shape<2>{2, 4}), g(Shape<2>{2, 5});
  const auto f = m.forward_train(x);
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::FeedForward::backward", "'grad_output'", "[2, 5]",
                           "[2, 4]");
}

}  // namespace feed_forward_backward_test
}  // namespace tessera::nn
