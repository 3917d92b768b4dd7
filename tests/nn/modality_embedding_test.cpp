#include "tessera/nn/modality_embedding.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace modality_embedding_test {

using tessera::Index;
using tessera::IndexError;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::ModalityEmbedding;
using tessera::test::owned_array;

template <class T>
class ModalityEmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(ModalityEmbeddingTest, tessera::test::Scalars);

template <class M, class X>
concept Forwardable = requires(const M& m, const X& x) {
  m.forward(x, Index{0});
};
static_assert(Forwardable<ModalityEmbedding<float>, Tensor<float, 3>>);
static_assert(!Forwardable<ModalityEmbedding<float>, Tensor<float, 2>>);

TYPED_TEST(ModalityEmbeddingTest, AddsTheModalitysRowToEveryToken) {
  using T = TypeParam;
  const ModalityEmbedding<T> me({.num_modalities = 3, .embed_dim = 5, .seed = 2});
  Tensor<T, 3> x(2, 4, 5);
  x.setRandom(1);
  for (Index m = 0; m < 3; ++m) {
    const auto out = me.forward(x, m);
    ASSERT_EQ(out.shape(), x.shape());
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 4; ++t)
        for (Index j = 0; j < 5; ++j)
          ASSERT_EQ(out(b, t, j), T(x(b, t, j) + me.weight.value(m, j)));
  }
  // different modalities are told apart: the difference of two outputs is the difference of rows
  const auto d = (owned_array(me.forward(x, 0)) - owned_array(me.forward(x, 2))).eval();
  for (Index j = 0; j < 5; ++j)
    EXPECT_NEAR(double(d(3, j)), double(me.weight.value(0, j) - me.weight.value(2, j)), 1e-6);
}

TYPED_TEST(ModalityEmbeddingTest, PerTokenIdsPickEachTokensRow) {
  using T = TypeParam;
  const ModalityEmbedding<T> me({.num_modalities = 2, .embed_dim = 3, .seed = 4});
  Tensor<T, 3> x(2, 3, 3);
  x.setRandom(3);
  const Tensor<std::int64_t, 2> ids{{0, 1, 1}, {1, 0, 0}};
  const auto out = me.forward(x, ids);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 3; ++t)
      for (Index j = 0; j < 3; ++j)
        ASSERT_EQ(out(b, t, j), T(x(b, t, j) + me.weight.value(ids(b, t), j)));
}

TYPED_TEST(ModalityEmbeddingTest, StateDictAndInitialisation) {
  using T = TypeParam;
  const ModalityEmbedding<T> me({.num_modalities = 2, .embed_dim = 400});
  EXPECT_EQ(me.state_dict().keys(), std::vector<std::string>{"weight"});
  EXPECT_EQ(me.weight.shape(), (Shape<2>{2, 400}));
  // N(0, 0.02): 800 samples
  const auto w = me.weight.value.as_vector().template cast<double>();
  EXPECT_NEAR(std::sqrt(w.squaredNorm() / 800.0), 0.02, 0.003);
}

TYPED_TEST(ModalityEmbeddingTest, RejectsBadOptionsAndInputs) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(ModalityEmbedding<T>({.num_modalities = 0, .embed_dim = 4}), ValueError,
                           "tessera::nn::ModalityEmbedding:", "num_modalities is 0");
  TESSERA_EXPECT_THROW_MSG(ModalityEmbedding<T>({.num_modalities = 2, .embed_dim = 0}), ValueError,
                           "tessera::nn::ModalityEmbedding:", "embed_dim is 0");
  const ModalityEmbedding<T> me({.num_modalities = 2, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(me.forward(Tensor<T, 3>(2, 3, 5), 0), ShapeError,
                           "tessera::nn::ModalityEmbedding::forward", "argument 'x'",
                           "has shape [2, 3, 5]", "expected [batch, L, 4]");
  TESSERA_EXPECT_THROW_MSG(me.forward(Tensor<T, 3>(2, 3, 4), 2), IndexError,
                           "tessera::nn::ModalityEmbedding::forward", "argument 'modality' is 2",
                           "[0, 2)");
  TESSERA_EXPECT_THROW_MSG(me.forward(Tensor<T, 3>(2, 3, 4), Tensor<int, 2>(2, 4)), ShapeError,
                           "'modality_ids'", "[2, 4]", "[2, 3]");
  Tensor<int, 2> ids(2, 3);
  ids(1, 2) = -1;
  TESSERA_EXPECT_THROW_MSG(me.forward(Tensor<T, 3>(2, 3, 4), ids), IndexError,
                           "argument 'modality_ids' holds -1", "position [1, 2]", "[0, 2)");
}

}  // namespace modality_embedding_test
