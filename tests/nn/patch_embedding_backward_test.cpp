// nn::PatchEmbedding's training forward and backward: central differences in double for the
// images and every parameter (with and without class token, bias and ln_pre, and a grid that
// drops pixels), float against double, errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/patch_embedding.hpp"

namespace tessera::nn {
namespace patch_embedding_backward_test {

using test::random_tensor;

TEST(PatchEmbeddingBackward, MatchesCentralDifferencesInDouble) {
  for (int variant = 0; variant < 4; ++variant) {
    const bool cls = variant & 1, pre = variant & 2;
    SCOPED_TRACE(variant);
    PatchEmbedding<double> m(
        {.image_size = {7, 9},  // 3 x 4 patches of 2; a row and a column dropped
         .patch_size = {2, 2},
         .in_channels = 2,
         .embed_dim = 5,
         .bias = !cls,
         .cls_token = cls,
         .pre_norm = pre,
         .seed = 3});
    m.for_each_parameter([](const std::string&, auto& p) { p.value.setRandom(8, -1, 1); });
    auto x = random_tensor<4>({2, 2, 7, 9}, 1);
    const auto f = m.forward_train(x);
    test::expect_close_scaled("output", f.output, m.forward(x), 1e-14);
    const auto w = random_tensor<3>(f.output.shape(), 2);
    m.zero_grad();
    const auto dx = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(x), w); };
    test::expect_gradient("images", x.data(), dx.data(), x.size(), loss);
    test::expect_parameter_gradients(m, loss);
    for (Index c = 0; c < 2; ++c)
      for (Index j = 0; j < 9; ++j) EXPECT_EQ(dx(1, c, 6, j), 0.0) << "a dropped pixel";
  }
}

TEST(PatchEmbeddingBackward, FloatAgreesWithDouble) {
  const PatchEmbeddingOptions o{.image_size = {16, 16},
                                .patch_size = {4, 4},
                                .in_channels = 3,
                                .embed_dim = 24,
                                .cls_token = true,
                                .pre_norm = true};
  PatchEmbedding<float> mf(o);
  PatchEmbedding<double> md(o);
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<4>({3, 3, 16, 16}, 5);
  auto ff = mf.forward_train(test::cast_to<float>(xd));
  auto fd = md.forward_train(xd);
  const auto gd = random_tensor<3>(fd.output.shape(), 6);
  test::expect_close_scaled("dimages", mf.backward(ff.context, test::cast_to<float>(gd)),
                            md.backward(fd.context, gd), 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(PatchEmbeddingBackward, BadArgumentsAreNamedErrors) {
  PatchEmbedding<float> m({.image_size = {4, 4},
                           .patch_size = {2, 2},
                           .in_channels = 1,
                           .embed_dim = 3,
                           .pre_norm = true});
  Tensor<float, 4> x(Shape<4>{1, 1, 4, 4});
  const auto f = m.forward_train(x);
  Tensor<float, 3> g(Shape<3>{1, 5, 3});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::PatchEmbedding::backward", "'grad_output'", "[1, 5, 3]",
                           "[1, 4, 3]");
  TESSERA_EXPECT_THROW_MSG(m.backward(PatchEmbedding<float>::Context{}, g), ValueError,
                           "tessera::nn::PatchEmbedding::backward", "'ctx'");
  Tensor<float, 4> bad(Shape<4>{1, 2, 4, 4});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(bad), ShapeError,
                           "tessera::nn::PatchEmbedding::forward_train", "'images'");
}

}  // namespace patch_embedding_backward_test
}  // namespace tessera::nn
