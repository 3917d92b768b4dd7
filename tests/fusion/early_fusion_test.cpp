#include "tessera/fusion/early_fusion.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "fusion/fusion_test_util.hpp"
#include "test_util.hpp"

namespace early_fusion_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::fusion::EarlyFusion;
using tessera::nn::TransformerEncoder;
using tessera::test::random_tokens;
using tessera::test::same;
using tessera::test::small_encoder;

template <class T>
class EarlyFusionTest : public ::testing::Test {};
TYPED_TEST_SUITE(EarlyFusionTest, tessera::test::Scalars);

TYPED_TEST(EarlyFusionTest, OneModalityIsItsEncoder) {
  using T = TypeParam;
  const EarlyFusion<T> early(
      {.encoder = small_encoder(3, true), .num_modalities = 1, .modality_embedding = false});
  TransformerEncoder<T> alone(small_encoder(3, true));
  alone.load_state_dict(early.state_dict(), "encoder.");
  const auto x = random_tokens<T>(2, 6, 1);
  EXPECT_TRUE(same(early.forward({x}), alone.forward(x)));
  Tensor<bool, 2> pad(2, 6);
  pad(0, 5) = pad(1, 1) = pad(1, 2) = true;
  EXPECT_TRUE(same(early.forward({x}, {Mask::blocked(pad)}),
                   alone.forward(x, {.src_key_padding_mask = Mask::blocked(pad)})));
  // with its modality embedding: the encoder of x + weight[0]
  const EarlyFusion<T> typed({.encoder = small_encoder(3, true), .num_modalities = 1, .seed = 2});
  alone.load_state_dict(typed.state_dict(), "encoder.", /*strict=*/false);
  EXPECT_TRUE(same(typed.forward({x}), alone.forward(typed.modality_embedding.forward(x, 0))));
}

// Two modalities: the shared encoder over [video + type 0 ; audio + type 1] with the padding
// masks concatenated, written out with the modules it is made of.
TYPED_TEST(EarlyFusionTest, IsTheEncoderOverTheConcatenatedTypedTokens) {
  using T = TypeParam;
  const EarlyFusion<T> early({.encoder = small_encoder(), .seed = 4});
  const auto video = random_tokens<T>(2, 5, 2);
  const auto audio = random_tokens<T>(2, 3, 3);
  Tensor<bool, 2> audio_pad(2, 3);
  audio_pad(1, 2) = true;
  const auto out = early.forward({video, audio}, {std::nullopt, Mask::blocked(audio_pad)});
  ASSERT_EQ(out.shape(), (Shape<3>{2, 8, 8}));
  const auto v = early.modality_embedding.forward(video, 0);
  const auto a = early.modality_embedding.forward(audio, 1);
  Tensor<T, 3> joint(2, 8, 8);
  Tensor<bool, 2> pad(2, 8);
  for (Index b = 0; b < 2; ++b) {
    joint[b].as_matrix().topRows(5) = v[b].as_matrix();
    joint[b].as_matrix().bottomRows(3) = a[b].as_matrix();
    for (Index t = 0; t < 3; ++t) pad(b, 5 + t) = audio_pad(b, t);
  }
  EXPECT_TRUE(
      same(out, early.encoder.forward(joint, {.src_key_padding_mask = Mask::blocked(pad)})));
  // every modality reaches every other: changing the audio changes the video tokens
  auto audio2 = audio;
  audio2(0, 1, 1) += T(1);
  const auto out2 = early.forward({video, audio2}, {std::nullopt, Mask::blocked(audio_pad)});
  EXPECT_FALSE(out[0].as_matrix().topRows(5) == out2[0].as_matrix().topRows(5));
}

TYPED_TEST(EarlyFusionTest, PaddedTokensOfAnyModalityAreNeverAttended) {
  using T = TypeParam;
  const EarlyFusion<T> early({.encoder = small_encoder(), .num_modalities = 3});
  auto x0 = random_tokens<T>(2, 4, 5);
  auto x1 = random_tokens<T>(2, 2, 6);
  auto x2 = random_tokens<T>(2, 3, 7);
  Tensor<bool, 2> pad0(2, 4);
  Tensor<float, 2> pad2(2, 3);  // an additive mask works the same
  pad0(0, 3) = true;
  pad2(1, 0) = -INFINITY;
  const tessera::fusion::KeyPaddingMasks masks = {Mask::blocked(pad0), std::nullopt,
                                                  Mask::additive(pad2)};
  const auto out = early.forward({x0, x1, x2}, masks);
  x0(0, 3, 2) = T(40);
  x2(1, 0, 5) = T(-40);
  const auto out2 = early.forward({x0, x1, x2}, masks);
  const Index padded[2] = {3, 4 + 2 + 0};  // token (0, 3) and token (1, 6)
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 9; ++t)
      if (t != padded[b]) {
        EXPECT_TRUE(out[b][t].as_matrix() == out2[b][t].as_matrix()) << b << ", " << t;
      }
}

TYPED_TEST(EarlyFusionTest, StateDictKeysAndConcurrentForward) {
  using T = TypeParam;
  const EarlyFusion<T> early({.encoder = small_encoder(2, true)});
  const auto keys = early.state_dict().keys();
  EXPECT_EQ(keys.front(), "encoder.layers.0.linear1.bias");
  EXPECT_EQ(keys.back(), "modality_embedding.weight");
  EXPECT_EQ(keys.size(), std::size_t{2 * 12 + 2 + 1});
  EXPECT_EQ(early.modality_embedding.weight.shape(), (Shape<2>{2, 8}));
  const EarlyFusion<T> untyped({.encoder = small_encoder(1), .modality_embedding = false});
  EXPECT_EQ(untyped.state_dict().keys().size(), 12u);
  const auto video = random_tokens<T>(2, 5, 2);
  const auto audio = random_tokens<T>(2, 3, 3);
  const auto single = early.forward({video, audio});
  std::vector<Tensor<T, 3>> outs(6);
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&, t] { outs[t] = early.forward({video, audio}); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs) EXPECT_TRUE(same(o, single));
}

TYPED_TEST(EarlyFusionTest, ForwardFlopsRunEveryLayerOnAllTokens) {
  using T = TypeParam;
  const auto enc = small_encoder(3);
  const EarlyFusion<T> early({.encoder = enc, .num_modalities = 3});
  EXPECT_DOUBLE_EQ(early.forward_flops({4, 0, 6}),
                   3 * tessera::fusion::encoder_layer_flops(10, enc.layer));
  TESSERA_EXPECT_THROW_MSG(early.forward_flops({4, 6}), ValueError,
                           "tessera::fusion::EarlyFusion::forward_flops",
                           "argument 'lengths' holds 2 lengths, expected 3");
  TESSERA_EXPECT_THROW_MSG(early.forward_flops({-4, 1, 1}), ValueError,
                           "argument 'lengths[0]' is -4");
}

TYPED_TEST(EarlyFusionTest, RejectsBadOptionsAndInputs) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(EarlyFusion<T>({.encoder = small_encoder(), .num_modalities = 0}),
                           ValueError, "tessera::fusion::EarlyFusion:", "num_modalities is 0");
  TESSERA_EXPECT_THROW_MSG(EarlyFusion<T>({.encoder = {.layer = {.d_model = -8}}}), ValueError,
                           "tessera::fusion::EarlyFusion:", "encoder.layer.d_model is -8");
  TESSERA_EXPECT_THROW_MSG(EarlyFusion<T>({.encoder = small_encoder(0)}), ValueError,
                           "num_layers is 0");
  constexpr const char* fn = "tessera::fusion::EarlyFusion::forward";
  const EarlyFusion<T> early({.encoder = small_encoder()});
  const auto video = random_tokens<T>(2, 5, 2);
  const auto audio = random_tokens<T>(2, 3, 3);
  const Tensor<T, 3> wide(2, 3, 9), other_batch(1, 3, 8);
  TESSERA_EXPECT_THROW_MSG(early.forward({video, audio, audio}), ValueError, fn,
                           "argument 'inputs' holds 3 sequences, expected 2 (num_modalities)");
  TESSERA_EXPECT_THROW_MSG(early.forward({video, wide}), ShapeError, fn,
                           "argument 'inputs[1]' has shape [2, 3, 9]", "expected [2, L, 8]");
  TESSERA_EXPECT_THROW_MSG(early.forward({other_batch, video}), ShapeError, fn,
                           "argument 'inputs[1]' has shape [2, 5, 8]", "expected [1, L, 8]");
  Tensor<bool, 2> pad(2, 5), wrong(2, 5);
  TESSERA_EXPECT_THROW_MSG(
      early.forward({video, audio}, {Mask::blocked(pad), std::nullopt, std::nullopt}), ValueError,
      fn, "argument 'key_padding_masks' holds 3 masks, expected none or 2");
  TESSERA_EXPECT_THROW_MSG(
      early.forward({video, audio}, {Mask::blocked(pad), Mask::blocked(wrong)}), ShapeError, fn,
      "argument 'key_padding_masks[1]' has shape [2, 5]", "expected [2, 3]");
}

}  // namespace early_fusion_test
