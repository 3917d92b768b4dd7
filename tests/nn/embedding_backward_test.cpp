// nn::Embedding's training forward and backward: the weight's gradient (a scatter-add by id)
// against central differences in double, padding_idx rows left without gradient (as PyTorch),
// float against double, accumulation, determinism and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>

#include "backward_test_util.hpp"
#include "tessera/nn/embedding.hpp"

namespace tessera::nn {
namespace embedding_backward_test {

using test::random_tensor;

// ids [2, 3] with repeats (7 three times, 0 twice), so the scatter-add sums rows
Tensor<std::int64_t, 2> repeated_ids() {
  Tensor<std::int64_t, 2> ids(Shape<2>{2, 3});
  const std::int64_t v[] = {7, 0, 7, 3, 0, 7};
  std::copy(std::begin(v), std::end(v), ids.data());
  return ids;
}

TEST(EmbeddingBackward, MatchesCentralDifferencesInDouble) {
  Embedding<double> m({.num_embeddings = 9, .embedding_dim = 4, .seed = 1});
  const auto ids = repeated_ids();
  const auto f = m.forward_train(ids);
  EXPECT_TRUE(test::same_bits(f.output, m.forward(ids)));
  const auto w = random_tensor<3>({2, 3, 4}, 2);
  m.zero_grad();
  m.backward(f.context, w);
  const auto loss = [&] { return test::weighted_sum(m.forward(ids), w); };
  test::expect_parameter_gradients(m, loss, {.max_entries = 1000});
  // rows never looked up get exactly zero
  for (Index d = 0; d < 4; ++d) EXPECT_EQ(m.weight.grad(1, d), 0.0);
  // row 7 is the sum of the three output rows that read it
  for (Index d = 0; d < 4; ++d)
    EXPECT_DOUBLE_EQ(m.weight.grad(7, d), w(0, 0, d) + w(0, 2, d) + w(1, 2, d));
}

TEST(EmbeddingBackward, ThePaddingRowGetsNoGradientAsInPyTorch) {
  // padding_idx = -2 resolves to row 7, which the ids read three times
  Embedding<double> m({.num_embeddings = 9, .embedding_dim = 4, .padding_idx = -2, .seed = 3});
  ASSERT_EQ(*m.padding_idx(), 7);
  m.weight.value.setRandom(4, -1, 1);  // a non-zero padding row: the forward reads it
  const auto ids = repeated_ids();
  const auto f = m.forward_train(ids);
  const auto w = random_tensor<3>({2, 3, 4}, 5);
  m.zero_grad();
  m.backward(f.context, w);
  for (Index d = 0; d < 4; ++d) EXPECT_EQ(m.weight.grad(7, d), 0.0);
  // every other row: central differences
  const auto loss = [&] { return test::weighted_sum(m.forward(ids), w); };
  for (Index row : {0, 1, 3, 8}) {
    SCOPED_TRACE(row);
    test::expect_gradient("weight row", &m.weight.value(row, 0), &m.weight.grad(row, 0), 4, loss);
  }
}

TEST(EmbeddingBackward, FloatAgreesWithDoubleAndIdsOfAnyIntegerType) {
  Embedding<float> mf({.num_embeddings = 50, .embedding_dim = 16, .seed = 6});
  Embedding<double> md({.num_embeddings = 50, .embedding_dim = 16});
  test::copy_parameters(mf, md);
  Tensor<int, 1> ids(Shape<1>{40});
  for (Index i = 0; i < 40; ++i) ids(i) = static_cast<int>((i * 7) % 13);
  const auto gd = random_tensor<2>({40, 16}, 7);
  const auto gf = test::cast_to<float>(gd);
  const auto ff = mf.forward_train(ids);
  const auto fd = md.forward_train(ids);
  mf.backward(ff.context, gf);
  md.backward(fd.context, gd);
  test::expect_parameter_grads_close(mf, md, 1e-6);
}

TEST(EmbeddingBackward, TwoBackwardsAccumulateDeterministically) {
  Embedding<float> m({.num_embeddings = 5, .embedding_dim = 3, .seed = 1});
  const auto ids = repeated_ids();
  Tensor<std::int64_t, 2> ids5 = ids;
  for (Index i = 0; i < ids5.size(); ++i) ids5.data()[i] %= 5;
  const auto f = m.forward_train(ids5);
  const auto g = test::cast_to<float>(random_tensor<3>({2, 3, 3}, 2));
  ASSERT_FALSE(m.weight.has_grad());
  m.backward(f.context, g);  // allocates the gradient
  const auto once = test::owned_vector(m.weight.grad);
  m.backward(f.context, g);
  // the second backward adds the rows onto the first's sums: equal to rounding
  for (Index i = 0; i < once.size(); ++i)
    EXPECT_NEAR(m.weight.grad.data()[i], 2 * once(i), 1e-6 * (1 + std::fabs(2 * once(i))));
  m.zero_grad();
  m.backward(f.context, g);
  for (Index i = 0; i < once.size(); ++i)
    EXPECT_EQ(m.weight.grad.data()[i], once(i));  // bit for bit
}

TEST(EmbeddingBackward, BadArgumentsAreNamedErrors) {
  Embedding<float> m({.num_embeddings = 5, .embedding_dim = 3});
  Tensor<std::int64_t, 1> ids(Shape<1>{4}), bad(Shape<1>{4});
  bad(2) = 5;
  TESSERA_EXPECT_THROW_MSG(m.forward_train(bad), IndexError,
                           "tessera::nn::Embedding::forward_train", "'ids'", "5", "[2]");
  const auto f = m.forward_train(ids);
  Tensor<float, 2> g(Shape<2>{4, 2}), g3(Shape<2>{4, 3});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError, "tessera::nn::Embedding::backward",
                           "'grad_output'", "[4, 2]", "[4, 3]");
  // a context whose ids do not fit this table
  Embedding<float> big({.num_embeddings = 9, .embedding_dim = 3});
  Tensor<std::int64_t, 1> ids8(Shape<1>{4});
  ids8(0) = 8;
  const auto fb = big.forward_train(ids8);
  TESSERA_EXPECT_THROW_MSG(m.backward(fb.context, g3), ValueError,
                           "tessera::nn::Embedding::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.backward(Embedding<float>::Context{}, g3), ValueError,
                           "tessera::nn::Embedding::backward", "'ctx'");
  m.weight.value = Tensor<float, 2>(Shape<2>{5, 2});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g3), ShapeError,
                           "tessera::nn::Embedding::backward", "'weight'", "[5, 2]", "[5, 3]");
}

template <class T>
class EmbeddingBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(EmbeddingBackwardTyped, test::Scalars);

// PyTorch autograd's gradient (tests/fixtures/training/nn_embedding, make_nn_backward_fixtures.py):
// torch.nn.Embedding with padding_idx and repeated ids.
TYPED_TEST(EmbeddingBackwardTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  const test::Fixture fx("nn_embedding", "training");
  Embedding<T> m({.num_embeddings = fx.options.at("num_embeddings").get<Index>(),
                  .embedding_dim = fx.options.at("embedding_dim").get<Index>(),
                  .padding_idx = fx.options.at("padding_idx").get<Index>()});
  m.load_state_dict(fx.dict, "module.", /*strict=*/false);
  const auto ids = fx.input<std::int64_t, 2>("ids");
  const auto f = m.forward_train(ids);
  test::expect_tensor_near(f.output, fx.expected<T, 3>("output"), test::parity_tol<T>(), "output");
  m.zero_grad();
  m.backward(f.context, fx.input<T, 3>("grad_output"));
  test::expect_fixture_parameter_grads<T>(m, fx, "nn_embedding");
}

}  // namespace embedding_backward_test
}  // namespace tessera::nn
