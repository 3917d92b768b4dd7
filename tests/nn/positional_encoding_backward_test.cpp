// The positional encodings' training forward and backward: the input's gradient passes through,
// the learned table's rows [start, start + L) collect the batch's gradients; central differences in
// double, float against double, accumulation and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "backward_test_util.hpp"
#include "tessera/nn/positional_encoding.hpp"

namespace tessera::nn {
namespace positional_encoding_backward_test {

using test::random_tensor;

TEST(PositionalEncodingBackward, SinusoidalPassesTheGradientThrough) {
  SinusoidalPositionalEncoding<double> m({.max_len = 10, .embed_dim = 5});
  for (Index start : {0, 3}) {
    SCOPED_TRACE(start);
    auto x = random_tensor<3>({2, 4, 5}, 1);
    const auto f = m.forward_train(x, start);
    EXPECT_TRUE(test::same_bits(f.output, m.forward(x, start)));
    const auto w = random_tensor<3>({2, 4, 5}, 2);
    const auto dx = m.backward(f.context, w);
    EXPECT_TRUE(test::same_bits(dx, w));
    const auto loss = [&] { return test::weighted_sum(m.forward(x, start), w); };
    test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
  }
}

TEST(PositionalEncodingBackward, LearnedMatchesCentralDifferencesInDouble) {
  LearnedPositionalEmbedding<double> m({.max_len = 9, .embed_dim = 3, .seed = 4});
  for (Index start : {0, 2, 5}) {
    SCOPED_TRACE(start);
    auto x = random_tensor<3>({3, 4, 3}, 1);
    const auto f = m.forward_train(x, start);
    EXPECT_TRUE(test::same_bits(f.output, m.forward(x, start)));
    const auto w = random_tensor<3>({3, 4, 3}, 2);
    m.zero_grad();
    const auto dx = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(x, start), w); };
    test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
    // every row, the unused ones (zero gradient) too
    test::expect_parameter_gradients(m, loss, {.max_entries = 1000});
    for (Index p = 0; p < 9; ++p) {
      if (p >= start && p < start + 4) continue;
      for (Index d = 0; d < 3; ++d) EXPECT_EQ(m.weight.grad(p, d), 0.0) << p;
    }
  }
}

TEST(PositionalEncodingBackward, LearnedFloatAgreesWithDoubleAndAccumulates) {
  LearnedPositionalEmbedding<float> mf({.max_len = 40, .embed_dim = 24, .seed = 5});
  LearnedPositionalEmbedding<double> md({.max_len = 40, .embed_dim = 24});
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<3>({5, 31, 24}, 6);
  const auto gd = random_tensor<3>({5, 31, 24}, 7);
  const auto xf = test::cast_to<float>(xd);
  const auto gf = test::cast_to<float>(gd);
  const auto ff = mf.forward_train(xf, 7);
  const auto fd = md.forward_train(xd, 7);
  const auto dxf = mf.backward(ff.context, gf);
  md.backward(fd.context, gd);
  EXPECT_TRUE(test::same_bits(dxf, gf));
  test::expect_parameter_grads_close(mf, md, 1e-6);
  const auto once = test::owned_vector(mf.weight.grad);
  (void)mf.backward(ff.context, gf);
  // the second backward adds the batch's rows onto the first's sum: equal to rounding
  for (Index i = 0; i < once.size(); ++i)
    EXPECT_NEAR(mf.weight.grad.data()[i], 2 * once(i), 1e-6 * (1 + std::fabs(2 * once(i))));
}

TEST(PositionalEncodingBackward, BadArgumentsAreNamedErrors) {
  SinusoidalPositionalEncoding<float> s({.max_len = 6, .embed_dim = 4});
  LearnedPositionalEmbedding<float> l({.max_len = 6, .embed_dim = 4});
  Tensor<float, 3> x(Shape<3>{2, 3, 4}), x5(Shape<3>{2, 3, 5}), g(Shape<3>{2, 2, 4});
  TESSERA_EXPECT_THROW_MSG(s.forward_train(x5), ShapeError,
                           "tessera::nn::SinusoidalPositionalEncoding::forward_train", "'x'",
                           "[2, 3, 5]");
  TESSERA_EXPECT_THROW_MSG(l.forward_train(x, 4), ShapeError,
                           "tessera::nn::LearnedPositionalEmbedding::forward_train", "[4, 7)",
                           "max_len = 6");
  TESSERA_EXPECT_THROW_MSG(l.forward_train(x, -1), ValueError,
                           "tessera::nn::LearnedPositionalEmbedding::forward_train", "'start'");
  const auto fs = s.forward_train(x, 1);
  const auto fl = l.forward_train(x, 1);
  TESSERA_EXPECT_THROW_MSG(s.backward(fs.context, g), ShapeError,
                           "tessera::nn::SinusoidalPositionalEncoding::backward", "'grad_output'",
                           "[2, 2, 4]", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(l.backward(fl.context, g), ShapeError,
                           "tessera::nn::LearnedPositionalEmbedding::backward", "'grad_output'",
                           "[2, 2, 4]", "[2, 3, 4]");
  // contexts of other modules: positions beyond max_len, another embed_dim, none at all
  LearnedPositionalEmbedding<float> longer({.max_len = 20, .embed_dim = 4});
  const auto far = longer.forward_train(x, 10);
  TESSERA_EXPECT_THROW_MSG(l.backward(far.context, x), ValueError,
                           "tessera::nn::LearnedPositionalEmbedding::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(s.backward(far.context, x), ValueError,
                           "tessera::nn::SinusoidalPositionalEncoding::backward", "'ctx'");
  LearnedPositionalEmbedding<float> wide({.max_len = 6, .embed_dim = 5});
  const auto fw = wide.forward_train(x5);
  TESSERA_EXPECT_THROW_MSG(l.backward(fw.context, x5), ValueError,
                           "tessera::nn::LearnedPositionalEmbedding::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(l.backward(LearnedPositionalEmbedding<float>::Context{}, x), ValueError,
                           "tessera::nn::LearnedPositionalEmbedding::backward", "'ctx'");
  l.weight.value = Tensor<float, 2>(Shape<2>{5, 4});
  TESSERA_EXPECT_THROW_MSG(l.backward(fl.context, x), ShapeError,
                           "tessera::nn::LearnedPositionalEmbedding::backward", "'weight'",
                           "[5, 4]", "[6, 4]");
  TESSERA_EXPECT_THROW_MSG(l.forward_train(x), ShapeError,
                           "tessera::nn::LearnedPositionalEmbedding::forward_train", "'weight'");
}

}  // namespace positional_encoding_backward_test
}  // namespace tessera::nn
