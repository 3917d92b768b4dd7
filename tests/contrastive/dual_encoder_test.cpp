// Tests for tessera/contrastive/dual_encoder.hpp: embeddings of both towers through their heads,
// the similarity logits and the clamped scale, the CLIP loss and its gradients for both heads, the
// logit scale and the tower features against central differences, the state dict keys (Hugging
// Face CLIPModel's), and every error.
#include "tessera/contrastive/dual_encoder.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "contrastive_test_util.hpp"
#include "tessera/nn/linear.hpp"
#include "test_util.hpp"

namespace dual_encoder_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::clip_loss;
using tessera::contrastive::DualEncoder;
using tessera::contrastive::DualEncoderOptions;
namespace tt = tessera::test;

// Towers: linear maps of 6 image features to 5, and of 4 text features to 3.
template <class T>
using Model = DualEncoder<T, tessera::nn::Linear<T>, tessera::nn::Linear<T>>;

template <class T>
Model<T> make_model(DualEncoderOptions o = {.image_width = 5, .text_width = 3, .embed_dim = 4}) {
  o.seed = 77;
  return Model<T>(tessera::nn::Linear<T>({.in_features = 6, .out_features = 5, .seed = 1}),
                  tessera::nn::Linear<T>({.in_features = 4, .out_features = 3, .seed = 2}), o);
}

template <class T>
class DualEncoderTest : public ::testing::Test {};
TYPED_TEST_SUITE(DualEncoderTest, tessera::test::Scalars);

TYPED_TEST(DualEncoderTest, EmbeddingsAndLogits) {
  using T = TypeParam;
  const auto model = make_model<T>();
  const auto images = tt::random_rows<T>(3, 6, 601);
  const auto texts = tt::random_rows<T>(2, 4, 602);
  const auto ie = model.encode_image(images);
  const auto te = model.encode_text(texts);
  const auto ie_ref = model.visual_projection.forward(model.vision_model.forward(images));
  tt::expect_identical(ie, ie_ref, "image embeddings");
  ASSERT_EQ(te.shape(), (tessera::Shape<2>{2, 4}));
  for (Index i = 0; i < 2; ++i)
    EXPECT_NEAR(double(te.as_matrix().row(i).norm()), 1.0, tt::agree_tol<T>());
  EXPECT_NEAR(double(model.logit_scale()), 1 / 0.07, 1e-4);
  const auto l = model.logits(ie, te);
  ASSERT_EQ(l.shape(), (tessera::Shape<2>{3, 2}));
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 2; ++j)
      EXPECT_TRUE(tt::close<T>(
          l(i, j), model.logit_scale() * ie.as_matrix().row(i).dot(te.as_matrix().row(j)),
          tt::tol<T>(), tt::tol<T>()));
}

TYPED_TEST(DualEncoderTest, ScaleIsClamped) {
  using T = TypeParam;
  auto model = make_model<T>({.image_width = 5,
                              .text_width = 3,
                              .embed_dim = 4,
                              .logit_scale_init = 1000.0,
                              .max_logit_scale = 50.0});
  EXPECT_NEAR(double(model.logit_scale()), 50.0, 1e-4);
  model.zero_grad();
  const auto r = model.loss_and_grad(tt::random_rows<T>(4, 5, 611), tt::random_rows<T>(4, 3, 612));
  EXPECT_NEAR(double(r.scale), 50.0, 1e-4);
  EXPECT_EQ(r.grad_logit_scale, T(0));
}

// The loss is clip_loss of the two heads' embeddings; its gradients for both projection weights,
// t and the tower features against central differences, in double.
TEST(DualEncoderGrad, FiniteDifferences) {
  auto model = make_model<double>();
  model.temperature.logit_scale.value() = 1.3;
  auto fi = tt::random_rows<double>(6, 5, 621);
  auto ft = tt::random_rows<double>(6, 3, 622);
  const auto f = [&] {
    return clip_loss(model.visual_projection.forward(fi), model.text_projection.forward(ft),
                     model.temperature)
        .loss;
  };
  // No zero_grad first: loss_and_grad allocates the gradients it writes, and only those.
  const auto r = model.loss_and_grad(fi, ft);
  EXPECT_DOUBLE_EQ(r.loss, f());
  tt::expect_close(model.visual_projection.proj.weight.grad,
                   tt::numeric_grad(model.visual_projection.proj.weight.value, f),
                   tt::kGradCheckTol, "visual_projection.weight");
  tt::expect_close(model.text_projection.proj.weight.grad,
                   tt::numeric_grad(model.text_projection.proj.weight.value, f), tt::kGradCheckTol,
                   "text_projection.weight");
  tt::expect_close(r.grad_image_features, tt::numeric_grad(fi, f), tt::kGradCheckTol,
                   "grad_image_features");
  tt::expect_close(r.grad_text_features, tt::numeric_grad(ft, f), tt::kGradCheckTol,
                   "grad_text_features");
  double& t = model.temperature.logit_scale.value();
  const double keep = t;
  const double dt = tt::numeric_derivative(keep, [&](double x) {
    t = x;
    return f();
  });
  t = keep;
  tt::expect_close_scalar(model.temperature.logit_scale.grad(), dt, tt::kGradCheckTol,
                          "logit_scale");
  EXPECT_EQ(model.temperature.logit_scale.grad(), r.grad_logit_scale);
  // The towers, not trained here, have no gradient.
  EXPECT_FALSE(model.vision_model.weight.has_grad());
}

TEST(DualEncoderModule, StateDictKeys) {
  const auto model = make_model<float>();
  const auto dict = model.state_dict();
  for (const char* key :
       {"vision_model.weight", "vision_model.bias", "text_model.weight", "text_model.bias",
        "visual_projection.weight", "text_projection.weight", "logit_scale"})
    EXPECT_TRUE(dict.contains(key)) << key;
  EXPECT_EQ(model.num_parameters(), 6 * 5 + 5 + 4 * 3 + 3 + 5 * 4 + 3 * 4 + 1);
  auto other = make_model<float>();
  other.temperature.logit_scale.value() = 0;
  other.load_state_dict(dict);
  EXPECT_EQ(other.temperature.logit_scale.value(), model.temperature.logit_scale.value());
}

TEST(DualEncoderErrors, Messages) {
  constexpr const char* fn = "tessera::contrastive::DualEncoder";
  TESSERA_EXPECT_THROW_MSG(make_model<double>({.image_width = 0, .text_width = 3, .embed_dim = 4}),
                           ValueError, fn,
                           "'image_width', 'text_width' and 'embed_dim' are 0, 3 "
                           "and 4");
  TESSERA_EXPECT_THROW_MSG(
      make_model<double>({.image_width = 5, .text_width = 3, .embed_dim = 4, .max_logit_scale = 0}),
      ValueError, "'max_logit_scale' is 0");
  TESSERA_EXPECT_THROW_MSG(
      make_model<double>(
          {.image_width = 5, .text_width = 3, .embed_dim = 4, .logit_scale_init = -1}),
      ValueError, fn, "option 'logit_scale_init' is -1");
  // The image tower gives 5 features where 7 are declared.
  const auto wide = make_model<double>({.image_width = 7, .text_width = 3, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(wide.encode_image(Tensor<double, 2>(2, 6)), ShapeError,
                           "DualEncoder::image_features", "returned shape [2, 5]",
                           "expected [2, 7]");
  const auto model = make_model<double>();
  // The text tower (an nn::Linear here) reports its own shape error.
  TESSERA_EXPECT_THROW_MSG(model.encode_text(Tensor<double, 2>(2, 5)), ShapeError,
                           "tessera::nn::Linear::forward", "[2, 5]");
  TESSERA_EXPECT_THROW_MSG(model.logits(Tensor<double, 2>(2, 3), Tensor<double, 2>(2, 4)),
                           ShapeError, "DualEncoder::logits", "'image_embeds' has shape [2, 3]");
  TESSERA_EXPECT_THROW_MSG(model.logits(Tensor<double, 2>(2, 4), Tensor<double, 2>(1, 5)),
                           ShapeError, "'text_embeds' has shape [1, 5]", "expected [1, 4]");
  auto trainable = make_model<double>();
  TESSERA_EXPECT_THROW_MSG(
      trainable.loss_and_grad(Tensor<double, 2>(3, 5), Tensor<double, 2>(2, 3)), ShapeError,
      "clip_loss", "'b'");
}

}  // namespace dual_encoder_test
