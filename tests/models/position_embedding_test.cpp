// Tests for tessera/models/position_embedding.hpp: position embeddings resampled as PyTorch's
// antialiased bicubic interpolate (open_clip's resize_pos_embed), golden values from
// tests/fixtures/make_position_embedding_fixture.py; models rebuilt for another image size.
#include "tessera/models/position_embedding.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace position_embedding_test {

using tessera::Index;
using tessera::Tensor;
namespace models = tessera::models;
namespace io = tessera::io;

template <class T>
class PositionEmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(PositionEmbeddingTest, tessera::test::Scalars);

io::StateDict fixture() {
  return io::load_safetensors(std::string(TESSERA_TEST_DATA_DIR) +
                              "/fixtures/models/position_embedding.safetensors");
}

TYPED_TEST(PositionEmbeddingTest, MatchesPyTorchsAntialiasedBicubic) {
  using T = TypeParam;
  const io::StateDict fx = fixture();
  const auto pos = fx.get<T, 2>("input.pos");
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-12;
  for (const auto& [h, w] : {std::pair<Index, Index>{5, 5}, {10, 12}, {7, 7}}) {
    SCOPED_TRACE(std::to_string(h) + "x" + std::to_string(w));
    const auto want = fx.get<T, 2>("expected." + std::to_string(h) + "x" + std::to_string(w));
    const auto got = models::resize_position_embedding(pos, 1, 7, 7, h, w);
    ASSERT_EQ(got.shape(), want.shape());
    double err = 0;
    for (Index i = 0; i < want.size(); ++i)
      err = std::max(err, std::fabs(double(got.data()[i]) - double(want.data()[i])));
    EXPECT_LE(err, tol);
  }
}

TYPED_TEST(PositionEmbeddingTest, AModelRebuiltForAnotherSizeKeepsEverythingElse) {
  using T = TypeParam;
  const models::VisionTransformerOptions o{.image_size = 32,
                                           .patch_size = 8,
                                           .width = 16,
                                           .layers = 1,
                                           .heads = 2,
                                           .mlp_dim = 32,
                                           .output_dim = 4,
                                           .seed = 3};
  const models::VisionTransformer<T> vit(o);
  const auto big = models::with_image_size(vit, 48);
  EXPECT_EQ(big.options().image_size, 48);
  EXPECT_EQ(big.num_tokens(), 1 + 36);
  EXPECT_TRUE(tessera::test::same_bits(big.head.weight.value, vit.head.weight.value));
  EXPECT_TRUE(tessera::test::same_bits(big.patch_embed.class_embedding.value,
                                       vit.patch_embed.class_embedding.value));
  Tensor<T, 4> x(2, 3, 48, 48);
  x.setRandom(5);
  EXPECT_EQ(big.forward(x).shape(), (tessera::Shape<2>{2, 4}));
  // Back to the original size: the grid is the same, so the embeddings are unchanged.
  const auto same = models::with_image_size(vit, 32);
  const auto a = same.patch_embed.positional_embedding.value;
  const auto b = vit.patch_embed.positional_embedding.value;
  for (Index i = 0; i < a.size(); ++i) EXPECT_NEAR(a.data()[i], b.data()[i], 1e-6);
}

TEST(PositionEmbedding, ErrorsNameTheArgument) {
  Tensor<float, 2> pos(50, 8);
  TESSERA_EXPECT_THROW_MSG(models::resize_position_embedding(pos, 1, 6, 6, 5, 5),
                           tessera::ShapeError, "tessera::models::resize_position_embedding",
                           "[50, 8]", "[37, width]");
  TESSERA_EXPECT_THROW_MSG(models::resize_position_embedding(pos, 1, 7, 7, 0, 5),
                           tessera::ValueError, "0 x 5");
  const models::VisionTransformer<float> vit({.image_size = 32,
                                              .patch_size = 8,
                                              .width = 16,
                                              .layers = 1,
                                              .heads = 2,
                                              .mlp_dim = 32,
                                              .output_dim = 4});
  TESSERA_EXPECT_THROW_MSG(models::with_image_size(vit, 36), tessera::ValueError,
                           "tessera::models::with_image_size", "image_size is 36",
                           "multiple of the patch size 8");
}

}  // namespace position_embedding_test
