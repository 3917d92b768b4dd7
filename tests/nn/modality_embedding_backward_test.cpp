// Training forward and backward of nn::ModalityEmbedding: central differences in double for the
// input and the weight (one modality, and a modality per token), float against double,
// accumulation, a context that owns its ids, errors.
#include "tessera/nn/modality_embedding.hpp"

#include <gtest/gtest.h>

#include <cstdint>

#include "backward_test_util.hpp"

namespace tessera::nn {
namespace modality_embedding_backward_test {

using test::random_tensor;

TEST(ModalityEmbeddingBackward, MatchesCentralDifferencesInDouble) {
  ModalityEmbedding<double> m({.num_modalities = 3, .embed_dim = 5, .seed = 1});
  m.weight.value.setRandom(2);
  auto x = random_tensor<3>({2, 4, 5}, 3);
  const auto w = random_tensor<3>({2, 4, 5}, 4);
  {
    SCOPED_TRACE("one modality");
    const auto f = m.forward_train(x, 2);
    EXPECT_TRUE(test::same_bits(f.output, m.forward(x, 2)));
    m.zero_grad();
    const auto dx = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(x, 2), w); };
    test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
  {
    SCOPED_TRACE("a modality per token");
    const Tensor<std::int64_t, 2> ids{{0, 0, 1, 2}, {2, 1, 1, 0}};
    const auto f = m.forward_train(x, ids);
    EXPECT_TRUE(test::same_bits(f.output, m.forward(x, ids)));
    m.zero_grad();
    const auto dx = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(x, ids), w); };
    test::expect_gradient("x", x.data(), dx.data(), x.size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
}

TEST(ModalityEmbeddingBackward, FloatAgreesWithDouble) {
  ModalityEmbedding<float> mf({.num_modalities = 2, .embed_dim = 16, .seed = 1});
  ModalityEmbedding<double> md({.num_modalities = 2, .embed_dim = 16});
  test::copy_parameters(mf, md);
  const auto x = random_tensor<3>({3, 7, 16}, 1), w = random_tensor<3>({3, 7, 16}, 2);
  Tensor<int, 2> ids(Shape<2>{3, 7});
  for (Index i = 0; i < ids.size(); ++i) ids.data()[i] = static_cast<int>(i % 3 == 0);
  auto ff = mf.forward_train(test::cast_to<float>(x), ids);
  auto fd = md.forward_train(x, ids);
  test::expect_close_scaled("output", ff.output, fd.output, 1e-6);
  mf.zero_grad(), md.zero_grad();
  test::expect_close_scaled("dx", mf.backward(ff.context, test::cast_to<float>(w)),
                            md.backward(fd.context, w), 1e-6);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(ModalityEmbeddingBackward, AccumulatesAndTheContextOwnsItsIds) {
  ModalityEmbedding<double> m({.num_modalities = 3, .embed_dim = 4, .seed = 1});
  const auto x = random_tensor<3>({2, 3, 4}, 1), w = random_tensor<3>({2, 3, 4}, 2);
  Tensor<std::int32_t, 2> ids{{0, 1, 2}, {2, 2, 0}};
  const auto f = m.forward_train(x, ids);
  m.zero_grad();
  (void)m.backward(f.context, w);
  const Tensor<double, 2> once = m.weight.grad;
  ids.setZero();  // the caller's ids change after the forward: backward must not see them
  const auto dx = m.backward(f.context, w);
  EXPECT_TRUE(test::same_bits(dx, w));
  for (Index i = 0; i < once.size(); ++i)
    EXPECT_NEAR(m.weight.grad.data()[i], 2 * once.data()[i], 1e-15) << i;
}

TEST(ModalityEmbeddingBackward, BadArgumentsAreNamedErrors) {
  ModalityEmbedding<float> m({.num_modalities = 3, .embed_dim = 4});
  Tensor<float, 3> x(Shape<3>{1, 2, 4}), g(Shape<3>{1, 3, 4});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x, 3), IndexError,
                           "tessera::nn::ModalityEmbedding::forward_train", "'modality'", "3");
  const Tensor<int, 2> bad_ids{{0, 5}};
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x, bad_ids), IndexError,
                           "tessera::nn::ModalityEmbedding::forward_train", "'modality_ids'", "5");
  const auto f = m.forward_train(x, 2);
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::ModalityEmbedding::backward", "'grad_output'", "[1, 3, 4]",
                           "[1, 2, 4]");
  ModalityEmbedding<float> two({.num_modalities = 2, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(two.backward(f.context, x), ValueError,
                           "tessera::nn::ModalityEmbedding::backward", "'ctx'");
  ModalityEmbedding<float> wide({.num_modalities = 3, .embed_dim = 8});
  TESSERA_EXPECT_THROW_MSG(wide.backward(f.context, x), ValueError,
                           "tessera::nn::ModalityEmbedding::backward", "'ctx'");
  const Tensor<int, 2> ids{{0, 2}};
  const auto fi = m.forward_train(x, ids);
  TESSERA_EXPECT_THROW_MSG(two.backward(fi.context, x), ValueError,
                           "tessera::nn::ModalityEmbedding::backward", "'ctx'");
}

}  // namespace modality_embedding_backward_test
}  // namespace tessera::nn
