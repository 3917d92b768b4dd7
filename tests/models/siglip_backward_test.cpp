// Training a SigLIP: SigLIP::train_loss (both towers, the MAP head, the sigmoid loss with its
// learnable scale and bias) against central differences in double.
#include <gtest/gtest.h>

#include "../nn/backward_test_util.hpp"
#include "tessera/models/siglip.hpp"

namespace tessera::models {
namespace siglip_backward_test {

using test::random_tensor;

TEST(SigLipTrain, TrainLossMatchesCentralDifferencesInDouble) {
  SigLIPOptions o;
  o.vision = {.image_size = 8,
              .patch_size = 4,
              .in_channels = 3,
              .width = 8,
              .layers = 1,
              .heads = 2,
              .mlp_dim = 12,
              .patch_bias = true,
              .ln_pre = false,
              .class_token = false,
              .pooling = VisionPooling::map,
              .output_dim = 0,
              .seed = 1};
  o.text = {.vocab_size = 20,
            .context_length = 5,
            .width = 8,
            .layers = 1,
            .heads = 2,
            .mlp_dim = 12,
            .causal = false,
            .pooling = TextPooling::last,
            .output_dim = 8,
            .head_bias = true,
            .seed = 2};
  SigLIP<double> m(o);
  std::uint64_t seed = 90;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("norm") != std::string::npos || name.find("bias") != std::string::npos ||
        name.find("ln_") != std::string::npos || name.find("embedding") != std::string::npos ||
        name.find("probe") != std::string::npos)
      p.value.setRandom(seed++, -1, 1);
  });
  m.logit_bias.value.data()[0] = -1.0;  // near the scale's range, so that both matter
  const auto images = random_tensor<4>({3, 3, 8, 8}, 3);
  const Tensor<Index, 2> ids{{1, 4, 7, 2, 3}, {5, 5, 9, 0, 0}, {11, 3, 6, 8, 19}};
  m.zero_grad();
  const double loss = m.train_loss(images, ids);
  const auto loss_fn = [&] {
    const auto a = l2_normalize(m.encode_image(images));
    const auto b = l2_normalize(m.encode_text(ids));
    return static_cast<double>(
        contrastive::siglip_loss(a, b, m.logit_scale.value.data()[0], m.logit_bias.value.data()[0])
            .loss);
  };
  EXPECT_NEAR(loss, loss_fn(), 1e-12);
  test::GradCheckOptions go;
  go.max_entries = 16;
  test::expect_parameter_gradients(m, loss_fn, go);
  TESSERA_EXPECT_THROW_MSG(m.train_loss(random_tensor<4>({2, 3, 8, 8}, 1), ids), ShapeError,
                           "tessera::models::SigLIP::train_loss", "'images'", "'ids'");
  Tensor<Index, 2> no_ids(Shape<2>{0, 5});
  TESSERA_EXPECT_THROW_MSG(m.train_loss(random_tensor<4>({0, 3, 8, 8}, 1), no_ids), ShapeError,
                           "tessera::models::SigLIP::train_loss", "'images'", "no examples");
}

}  // namespace siglip_backward_test
}  // namespace tessera::models
