// nn::TokenEmbedding's training forward and backward: central differences in double for every
// parameter (token rows, positions from an offset, the norm), padding_idx, errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/token_embedding.hpp"

namespace tessera::nn {
namespace token_embedding_backward_test {

using test::random_tensor;

TEST(TokenEmbeddingBackward, MatchesCentralDifferencesInDouble) {
  for (bool norm : {false, true}) {
    SCOPED_TRACE(norm ? "with layer_norm" : "without");
    TokenEmbedding<double> m({.vocab_size = 9,
                              .max_len = 7,
                              .embed_dim = 4,
                              .padding_idx = 0,
                              .layer_norm = norm,
                              .seed = 2});
    m.for_each_parameter([](const std::string&, auto& p) { p.value.setRandom(4, -1, 1); });
    const Tensor<int, 2> ids{{3, 5, 3, 0}, {8, 1, 0, 0}};  // repeated ids and padding
    const auto f = m.forward_train(ids, /*start=*/2);
    test::expect_close_scaled("output", f.output, m.forward(ids, 2), 1e-15);
    const auto w = random_tensor<3>({2, 4, 4}, 3);
    m.zero_grad();
    m.backward(f.context, w);
    // padding_idx's row gets nothing (torch.nn.Embedding), the rest as the central differences
    for (Index e = 0; e < 4; ++e) EXPECT_EQ(m.token_embedding.weight.grad(0, e), 0.0);
    m.token_embedding.weight.grad.as_matrix().row(0).setZero();
    const auto loss = [&] { return test::weighted_sum(m.forward(ids, 2), w); };
    // the padding row is excluded from the check: its numeric gradient is not zero
    m.for_each_parameter([&](const std::string& name, auto& p) {
      if (name == "token_embedding.weight")
        test::expect_gradient(name, p.value.data() + 4, p.grad.data() + 4, p.value.size() - 4,
                              loss);
      else
        test::expect_gradient(name, p.value.data(), p.grad.data(), p.value.size(), loss);
    });
    for (Index r : {0, 1})
      for (Index e = 0; e < 4; ++e) EXPECT_EQ(m.positional_embedding.grad(r, e), 0.0) << "unused";
  }
}

TEST(TokenEmbeddingBackward, BadArgumentsAreNamedErrors) {
  TokenEmbedding<float> m({.vocab_size = 5, .max_len = 4, .embed_dim = 3});
  const Tensor<int, 2> ids{{1, 2}};
  const auto f = m.forward_train(ids);
  Tensor<float, 3> g(Shape<3>{1, 3, 3});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::TokenEmbedding::backward", "'grad_output'", "[1, 3, 3]",
                           "[1, 2, 3]");
  const Tensor<int, 2> bad{{1, 7}};
  TESSERA_EXPECT_THROW_MSG(m.forward_train(bad), IndexError,
                           "tessera::nn::TokenEmbedding::forward_train");
}

}  // namespace token_embedding_backward_test
}  // namespace tessera::nn
