#include "tessera/nn/token_embedding.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace token_embedding_test {

using tessera::Index;
using tessera::IndexError;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::TokenEmbedding;

template <class T>
class TokenEmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(TokenEmbeddingTest, tessera::test::Scalars);

template <class M, class X>
concept Forwardable = requires(const M& m, const X& x) {
  m.forward(x);
};
static_assert(Forwardable<TokenEmbedding<float>, Tensor<std::int64_t, 2>>);
static_assert(!Forwardable<TokenEmbedding<float>, Tensor<std::int64_t, 1>>);
static_assert(!Forwardable<TokenEmbedding<float>, Tensor<std::int64_t, 3>>);

Tensor<std::int64_t, 2> ids_2x4() { return Tensor<std::int64_t, 2>{{3, 0, 9, 3}, {1, 1, 5, 2}}; }

TYPED_TEST(TokenEmbeddingTest, IsTheTokensRowPlusItsPosition) {
  using T = TypeParam;
  const TokenEmbedding<T> te({.vocab_size = 10, .max_len = 7, .embed_dim = 6, .seed = 3});
  const auto ids = ids_2x4();
  for (const Index start : {Index{0}, Index{3}}) {
    const auto out = te.forward(ids, start);
    ASSERT_EQ(out.shape(), (Shape<3>{2, 4, 6}));
    for (Index b = 0; b < 2; ++b)
      for (Index t = 0; t < 4; ++t)
        for (Index j = 0; j < 6; ++j)
          ASSERT_EQ(out(b, t, j), T(te.token_embedding.weight.value(ids(b, t), j) +
                                    te.positional_embedding.value(start + t, j)))
              << b << ", " << t << ", " << j << " (start " << start << ")";
  }
}

TYPED_TEST(TokenEmbeddingTest, LayerNormIsAppliedAfterTheSum) {
  using T = TypeParam;
  TokenEmbedding<T> plain({.vocab_size = 10, .max_len = 8, .embed_dim = 6, .seed = 5});
  TokenEmbedding<T> normed(
      {.vocab_size = 10, .max_len = 8, .embed_dim = 6, .layer_norm = true, .layer_norm_eps = 1e-3});
  normed.norm.weight.value.setRandom(1, 0.5, 1.5);
  normed.norm.bias.value.setRandom(2);
  normed.load_state_dict(plain.state_dict(), "", /*strict=*/false);
  const auto ids = ids_2x4();
  const auto expected = normed.norm.forward(plain.forward(ids, 2));
  const auto out = normed.forward(ids, 2);
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], expected.data()[i]);
}

TYPED_TEST(TokenEmbeddingTest, StateDictKeysPaddingRowAndConcurrentForward) {
  using T = TypeParam;
  const TokenEmbedding<T> te(
      {.vocab_size = 12, .max_len = 9, .embed_dim = 4, .padding_idx = 0, .layer_norm = true});
  const std::vector<std::string> keys = {"norm.bias", "norm.weight", "positional_embedding",
                                         "token_embedding.weight"};
  EXPECT_EQ(te.state_dict().keys(), keys);
  EXPECT_EQ(te.num_parameters(), 12 * 4 + 9 * 4 + 2 * 4);
  EXPECT_TRUE(te.token_embedding.weight.value[0].as_matrix().isZero(0));
  const std::vector<std::string> clip = {"positional_embedding", "token_embedding.weight"};
  EXPECT_EQ(TokenEmbedding<T>({.vocab_size = 3, .max_len = 2, .embed_dim = 2}).state_dict().keys(),
            clip);
  const auto ids = ids_2x4();
  const auto single = te.forward(ids);
  std::vector<Tensor<T, 3>> outs(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { outs[t] = te.forward(ids); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs)
    for (Index i = 0; i < single.size(); ++i) ASSERT_EQ(o.data()[i], single.data()[i]);
}

TYPED_TEST(TokenEmbeddingTest, RejectsBadOptionsAndIds) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(TokenEmbedding<T>({.vocab_size = 0, .max_len = 4, .embed_dim = 4}),
                           ValueError, "tessera::nn::TokenEmbedding:", "vocab_size is 0");
  TESSERA_EXPECT_THROW_MSG(TokenEmbedding<T>({.vocab_size = 4, .max_len = -2, .embed_dim = 4}),
                           ValueError, "tessera::nn::TokenEmbedding:", "max_len is -2");
  TESSERA_EXPECT_THROW_MSG(TokenEmbedding<T>({.vocab_size = 4, .max_len = 4, .embed_dim = 0}),
                           ValueError, "tessera::nn::TokenEmbedding:", "embed_dim is 0");
  TESSERA_EXPECT_THROW_MSG(
      TokenEmbedding<T>({.vocab_size = 4, .max_len = 4, .embed_dim = 4, .padding_idx = 4}),
      ValueError, "padding_idx is 4");
  const TokenEmbedding<T> te({.vocab_size = 10, .max_len = 5, .embed_dim = 4});
  const auto ids = ids_2x4();
  TESSERA_EXPECT_THROW_MSG(te.forward(ids, 2), ShapeError, "tessera::nn::TokenEmbedding::forward",
                           "argument 'ids' has shape [2, 4]", "positions [2, 6)", "max_len = 5");
  TESSERA_EXPECT_THROW_MSG(te.forward(Tensor<std::int64_t, 2>(1, 6)), ShapeError, "'ids'", "[1, 6]",
                           "positions [0, 6)");
  TESSERA_EXPECT_THROW_MSG(te.forward(ids, -1), ValueError, "tessera::nn::TokenEmbedding::forward",
                           "argument 'start' is -1");
  Tensor<std::int64_t, 2> bad = ids_2x4();
  bad(1, 2) = 10;
  TESSERA_EXPECT_THROW_MSG(te.forward(bad), IndexError, "argument 'ids' holds id 10",
                           "position [1, 2]", "[0, 10)");
}

}  // namespace token_embedding_test
