#include "tessera/nn/audio_patch_embedding.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "fusion_fixture.hpp"
#include "test_util.hpp"

namespace audio_patch_embedding_test {

using tessera::Index;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::AudioPatchEmbedding;
using tessera::nn::AudioPatchEmbeddingOptions;
using tessera::nn::PatchEmbedding;

template <class T>
class AudioPatchEmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(AudioPatchEmbeddingTest, tessera::test::Scalars);

template <class M, class X>
concept Forwardable = requires(const M& m, const X& x) {
  m.forward(x);
};
static_assert(Forwardable<AudioPatchEmbedding<float>, Tensor<float, 3>>);
static_assert(!Forwardable<AudioPatchEmbedding<float>, Tensor<float, 4>>);
static_assert(!Forwardable<AudioPatchEmbedding<double>, Tensor<double, 2>>);

AudioPatchEmbeddingOptions options_from(const nlohmann::json& j) {
  return {.mel_bins = j.at("mel_bins").get<Index>(),
          .frames = j.at("frames").get<Index>(),
          .patch_size = tessera::test::pair_from(j.at("patch_size")),
          .embed_dim = j.at("embed_dim").get<Index>(),
          .bias = j.at("bias").get<bool>(),
          .cls_token = j.at("cls_token").get<bool>(),
          .pre_norm = j.at("pre_norm").get<bool>(),
          .layer_norm_eps = j.at("layer_norm_eps").get<double>()};
}

TYPED_TEST(AudioPatchEmbeddingTest, MatchesPyTorchConv2dWithOneChannel) {
  using T = TypeParam;
  for (const std::string name : {"audio_patch_embedding_ast", "audio_patch_embedding_ln_pre"}) {
    SCOPED_TRACE(name);
    const auto fx = tessera::test::fusion_fixture(name);
    AudioPatchEmbedding<T> ae(options_from(fx.options));
    ae.load_state_dict(fx.dict, "module.");
    tessera::test::expect_parity(ae.forward(fx.input<T, 3>("spectrogram")),
                                 fx.expected<T, 3>("output"), name);
  }
}

TYPED_TEST(AudioPatchEmbeddingTest, IsPatchEmbeddingOfTheOneChannelImage) {
  using T = TypeParam;
  const AudioPatchEmbedding<T> ae({.mel_bins = 16,
                                   .frames = 30,
                                   .patch_size = {4, 8},
                                   .embed_dim = 6,
                                   .cls_token = true,
                                   .pre_norm = true,
                                   .seed = 4});
  PatchEmbedding<T> pe({.image_size = {16, 30},
                        .patch_size = {4, 8},
                        .in_channels = 1,
                        .embed_dim = 6,
                        .cls_token = true,
                        .pre_norm = true});
  pe.load_state_dict(ae.state_dict());  // the same keys, strictly
  Tensor<T, 3> spec(3, 16, 30);
  spec.setRandom(2);
  const auto out = ae.forward(spec);
  const auto expected = pe.forward(spec.template reshape<4>({3, 1, 16, 30}));
  ASSERT_EQ(out.shape(), (Shape<3>{3, 1 + 4 * 3, 6}));
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], expected.data()[i]);
}

TYPED_TEST(AudioPatchEmbeddingTest, TokensAreFrequencyMajorPatches) {
  using T = TypeParam;
  // 12 mel bins x 18 frames, patches 4 x 4: a 3 x 4 grid (frames 16, 17 dropped)
  const AudioPatchEmbedding<T> ae(
      {.mel_bins = 12, .frames = 18, .patch_size = {4, 4}, .embed_dim = 5});
  ASSERT_EQ(ae.grid(), (std::array<Index, 2>{3, 4}));
  ASSERT_EQ(ae.num_patches(), 12);
  ASSERT_EQ(ae.num_tokens(), 12);
  Tensor<T, 3> spec(2, 12, 18);
  spec.setRandom(7);
  const auto base = ae.forward(spec);
  // bin 9, frame 5 is in frequency patch 2, time patch 1: token 2 * 4 + 1
  Tensor<T, 3> moved_spec(spec);
  moved_spec(0, 9, 5) += T(1);
  moved_spec(1, 3, 17) += T(1);  // a dropped frame: no token changes
  const auto moved = ae.forward(moved_spec);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 12; ++t)
      EXPECT_EQ(moved[b][t].as_matrix() == base[b][t].as_matrix(), !(b == 0 && t == 9))
          << "batch " << b << ", token " << t;
}

TYPED_TEST(AudioPatchEmbeddingTest, StateDictKeysAndConcurrentForward) {
  using T = TypeParam;
  const AudioPatchEmbedding<T> ae({.mel_bins = 16,
                                   .frames = 16,
                                   .patch_size = {4, 4},
                                   .embed_dim = 8,
                                   .bias = false,
                                   .cls_token = true});
  const std::vector<std::string> keys = {"class_embedding", "conv1.weight", "positional_embedding"};
  EXPECT_EQ(ae.state_dict().keys(), keys);
  EXPECT_EQ(ae.patch.conv1_weight.shape(), (Shape<4>{8, 1, 4, 4}));
  EXPECT_EQ(ae.num_parameters(), 8 * 16 + 8 + 17 * 8);
  EXPECT_EQ(ae.state_dict("audio.").keys().front(), "audio.class_embedding");
  Tensor<T, 3> spec(2, 16, 16);
  spec.setRandom(1);
  const auto single = ae.forward(spec);
  std::vector<Tensor<T, 3>> outs(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { outs[t] = ae.forward(spec); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs)
    for (Index i = 0; i < single.size(); ++i) ASSERT_EQ(o.data()[i], single.data()[i]);
}

TYPED_TEST(AudioPatchEmbeddingTest, RejectsBadOptionsAndSpectrograms) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(
      AudioPatchEmbedding<T>({.mel_bins = 0, .frames = 10, .patch_size = {4, 4}, .embed_dim = 8}),
      ValueError, "tessera::nn::AudioPatchEmbedding:", "(mel_bins, frames) is (0, 10)");
  TESSERA_EXPECT_THROW_MSG(
      AudioPatchEmbedding<T>({.mel_bins = 8, .frames = 10, .patch_size = {4, 16}, .embed_dim = 8}),
      ValueError, "tessera::nn::AudioPatchEmbedding:", "patch_size is (4, 16)",
      "(mel_bins, frames) (8, 10)");
  TESSERA_EXPECT_THROW_MSG(
      AudioPatchEmbedding<T>({.mel_bins = 8, .frames = 10, .patch_size = {4, 4}, .embed_dim = 0}),
      ValueError, "tessera::nn::AudioPatchEmbedding:", "embed_dim is 0");
  const AudioPatchEmbedding<T> ae(
      {.mel_bins = 8, .frames = 10, .patch_size = {4, 4}, .embed_dim = 8});
  TESSERA_EXPECT_THROW_MSG(ae.forward(Tensor<T, 3>(2, 10, 8)), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::forward", "argument 'spectrogram'",
                           "has shape [2, 10, 8]", "expected [2, 8, 10]",
                           "[batch, mel_bins, frames]");
  TESSERA_EXPECT_THROW_MSG(ae.forward(Tensor<T, 3>(1, 8, 11)), ShapeError, "'spectrogram'",
                           "[1, 8, 11]", "[1, 8, 10]");
}

}  // namespace audio_patch_embedding_test
