// Training forward and backward of the vision tower (class-token and MAP pooling) and of the
// MAP head: central differences in double for the images and every parameter, float against
// double, errors.
#include <gtest/gtest.h>

#include "../nn/backward_test_util.hpp"
#include "tessera/models/vision_transformer.hpp"

namespace tessera::models {
namespace vision_transformer_backward_test {

using test::random_tensor;

VisionTransformerOptions small_vision(VisionPooling pooling, bool class_token) {
  return {.image_size = 8,
          .patch_size = 4,
          .in_channels = 2,
          .width = 8,
          .layers = 2,
          .heads = 2,
          .mlp_dim = 12,
          .activation = Activation::quick_gelu,
          .patch_bias = !class_token,
          .ln_pre = class_token,
          .class_token = class_token,
          .pooling = pooling,
          .output_dim = 6,
          .head_bias = pooling == VisionPooling::map,
          .seed = 3};
}

// LayerNorm weights, biases and embeddings away from their 1 / 0 / tiny initial values.
template <class M>
void randomize(M& m) {
  std::uint64_t seed = 50;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("ln") != std::string::npos || name.find("norm") != std::string::npos ||
        name.find("bias") != std::string::npos || name.find("embedding") != std::string::npos ||
        name.find("probe") != std::string::npos)
      p.value.setRandom(seed++, -1, 1);
  });
}

TEST(VisionTransformerBackward, MatchesCentralDifferencesInDouble) {
  for (const auto& [pooling, cls] :
       {std::pair{VisionPooling::class_token, true}, std::pair{VisionPooling::map, false}}) {
    SCOPED_TRACE(pooling == VisionPooling::map ? "map pooling" : "class token");
    VisionTransformer<double> m(small_vision(pooling, cls));
    randomize(m);
    auto images = random_tensor<4>({2, 2, 8, 8}, 1);
    const auto f = m.forward_train(images);
    test::expect_close_scaled("output", f.output, m.forward(images), 1e-13);
    const auto w = random_tensor<2>({2, 6}, 2);
    m.zero_grad();
    const auto dimages = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(images), w); };
    test::GradCheckOptions o;
    o.max_entries = 24;
    test::expect_gradient("images", images.data(), dimages.data(), images.size(), loss, o);
    test::expect_parameter_gradients(m, loss, o);
  }
}

TEST(VisionTransformerBackward, PixelsBeyondThePatchGridGetZeroGradient) {
  auto o = small_vision(VisionPooling::class_token, true);
  o.image_size = 10;  // 2 x 2 patches of 4 cover 8 x 8 of the 10 x 10 pixels
  o.drop_partial_patches = true;
  VisionTransformer<double> m(o);
  const auto images = random_tensor<4>({1, 2, 10, 10}, 1);
  const auto f = m.forward_train(images);
  const auto d = m.backward(f.context, random_tensor<2>({1, 6}, 2));
  for (Index c = 0; c < 2; ++c)
    for (Index i = 0; i < 10; ++i) {
      EXPECT_EQ(d(0, c, i, 8), 0.0);
      EXPECT_EQ(d(0, c, 9, i), 0.0);
    }
}

TEST(VisionTransformerBackward, FloatAgreesWithDouble) {
  VisionTransformer<float> mf(small_vision(VisionPooling::map, false));
  VisionTransformer<double> md(small_vision(VisionPooling::map, false));
  randomize(mf);
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<4>({3, 2, 8, 8}, 5);
  const auto gd = random_tensor<2>({3, 6}, 6);
  auto ff = mf.forward_train(test::cast_to<float>(xd));
  auto fd = md.forward_train(xd);
  test::expect_close_scaled("dimages", mf.backward(ff.context, test::cast_to<float>(gd)),
                            md.backward(fd.context, gd), 2e-5);
  test::expect_parameter_grads_close(mf, md, 2e-5);
}

TEST(VisionTransformerBackward, BadArgumentsAreNamedErrors) {
  VisionTransformer<float> m(small_vision(VisionPooling::class_token, true));
  Tensor<float, 4> x(Shape<4>{2, 2, 8, 8});
  const auto f = m.forward_train(x);
  Tensor<float, 2> g(Shape<2>{2, 5});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::models::VisionTransformer::backward", "'grad_output'",
                           "[2, 5]", "[2, 6]");
  Tensor<float, 4> wrong(Shape<4>{2, 3, 8, 8});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(wrong), ShapeError,
                           "tessera::models::VisionTransformer::forward_train", "'images'",
                           "[2, 3, 8, 8]", "[2, 2, 8, 8]");
  TESSERA_EXPECT_THROW_MSG(m.forward(wrong), ShapeError,
                           "tessera::models::VisionTransformer::forward", "'images'");
}

}  // namespace vision_transformer_backward_test
}  // namespace tessera::models
