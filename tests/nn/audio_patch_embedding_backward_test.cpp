// nn::AudioPatchEmbedding's training forward and backward: central differences in double for the
// spectrogram and every parameter (conv1, class token, positions, ln_pre) under each option,
// float against double, accumulation and errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/audio_patch_embedding.hpp"

namespace tessera::nn {
namespace audio_patch_embedding_backward_test {

using test::random_tensor;

// 7 x 10 bins and frames, 3 x 4 patches: a 2 x 2 grid that drops a bin and two frames.
AudioPatchEmbeddingOptions options(bool bias, bool cls, bool pre_norm) {
  return {.mel_bins = 7,
          .frames = 10,
          .patch_size = {3, 4},
          .embed_dim = 5,
          .bias = bias,
          .cls_token = cls,
          .pre_norm = pre_norm,
          .seed = 3};
}

TEST(AudioPatchEmbeddingBackward, MatchesCentralDifferencesInDoubleForEveryOption) {
  for (bool bias : {true, false})
    for (bool cls : {false, true})
      for (bool pre_norm : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "bias " << bias << " cls " << cls << " pre_norm " << pre_norm);
        AudioPatchEmbedding<double> m(options(bias, cls, pre_norm));
        // non-trivial LayerNorm weights and biases (initialised to 1 and 0)
        m.for_each_parameter([](const std::string& name, auto& p) {
          if (name.find("ln_pre") != std::string::npos) p.value.setRandom(21, 0.5, 1.5);
        });
        auto x = random_tensor<3>({2, 7, 10}, 1);
        const auto f = m.forward_train(x);
        EXPECT_TRUE(test::same_bits(f.output, m.forward(x)));
        const auto w = random_tensor<3>({2, m.num_tokens(), 5}, 2);
        m.zero_grad();
        const auto dx = m.backward(f.context, w);
        ASSERT_EQ(dx.shape(), x.shape());
        const auto loss = [&] { return test::weighted_sum(m.forward(x), w); };
        test::expect_gradient("spectrogram", x.data(), dx.data(), x.size(), loss,
                              {.max_entries = 1000});
        test::expect_parameter_gradients(m, loss, {.max_entries = 1000});
        // the bin and the frames beyond the grid are not read: exactly zero
        for (Index b = 0; b < 2; ++b) {
          for (Index t = 0; t < 10; ++t) EXPECT_EQ(dx(b, 6, t), 0.0);
          for (Index f2 = 0; f2 < 7; ++f2) EXPECT_EQ(dx(b, f2, 8) + dx(b, f2, 9), 0.0);
        }
      }
}

TEST(AudioPatchEmbeddingBackward, FloatAgreesWithDouble) {
  const AudioPatchEmbeddingOptions o{.mel_bins = 32,
                                     .frames = 48,
                                     .patch_size = {8, 8},
                                     .embed_dim = 24,
                                     .cls_token = true,
                                     .pre_norm = true,
                                     .seed = 4};
  AudioPatchEmbedding<float> mf(o);
  AudioPatchEmbedding<double> md(o);
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<3>({3, 32, 48}, 5);
  const auto gd = random_tensor<3>({3, mf.num_tokens(), 24}, 6);
  const auto xf = test::cast_to<float>(xd);
  const auto gf = test::cast_to<float>(gd);
  const auto ff = mf.forward_train(xf);
  const auto fd = md.forward_train(xd);
  test::expect_close_scaled("output", ff.output, fd.output, 1e-5);
  const auto dxf = mf.backward(ff.context, gf);
  const auto dxd = md.backward(fd.context, gd);
  test::expect_close_scaled("dspectrogram", dxf, dxd, 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(AudioPatchEmbeddingBackward, TwoBackwardsAccumulateAndTheContextIsUnchanged) {
  AudioPatchEmbedding<double> m(options(true, true, true));
  const auto x = random_tensor<3>({2, 7, 10}, 1);
  const auto g = random_tensor<3>({2, m.num_tokens(), 5}, 2);
  const auto f = m.forward_train(x);
  m.zero_grad();
  const auto dx1 = m.backward(f.context, g);
  std::map<std::string, Eigen::VectorXd> once;
  m.for_each_parameter(
      [&](const std::string& name, const auto& p) { once[name] = test::owned_vector(p.grad); });
  const auto dx2 = m.backward(f.context, g);
  EXPECT_TRUE(test::same_bits(dx1, dx2));
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i)
      EXPECT_DOUBLE_EQ(p.grad.data()[i], 2 * once[name](i)) << name;
  });
}

template <class T>
class AudioPatchEmbeddingBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(AudioPatchEmbeddingBackwardTyped, test::Scalars);

// PyTorch autograd's gradients (tests/fixtures/training/nn_audio_patch_embedding,
// make_nn_backward_fixtures.py): Conv2d + class token + positions + LayerNorm, remainders dropped.
TYPED_TEST(AudioPatchEmbeddingBackwardTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  const test::Fixture fx("nn_audio_patch_embedding", "training");
  const auto& o = fx.options;
  AudioPatchEmbedding<T> m({.mel_bins = o.at("mel_bins").get<Index>(),
                            .frames = o.at("frames").get<Index>(),
                            .patch_size = o.at("patch_size").get<std::array<Index, 2>>(),
                            .embed_dim = o.at("embed_dim").get<Index>(),
                            .bias = o.at("bias").get<bool>(),
                            .cls_token = o.at("cls_token").get<bool>(),
                            .pre_norm = o.at("pre_norm").get<bool>()});
  m.load_state_dict(fx.dict, "module.", /*strict=*/false);
  const auto f = m.forward_train(fx.input<T, 3>("spectrogram"));
  test::expect_tensor_near(f.output, fx.expected<T, 3>("output"), test::parity_tol<T>(), "output");
  m.zero_grad();
  const auto dx = m.backward(f.context, fx.input<T, 3>("grad_output"));
  test::expect_tensor_near(dx, fx.expected<T, 3>("grad.spectrogram"), test::parity_tol<T>(),
                           "grad.spectrogram");
  test::expect_fixture_parameter_grads<T>(m, fx, "nn_audio_patch_embedding");
}

TEST(AudioPatchEmbeddingBackward, BadArgumentsAreNamedErrors) {
  AudioPatchEmbedding<float> m({.mel_bins = 8, .frames = 8, .patch_size = {4, 4}, .embed_dim = 3});
  Tensor<float, 3> x(Shape<3>{2, 8, 8}), x9(Shape<3>{2, 8, 9});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x9), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::forward_train", "'spectrogram'",
                           "[2, 8, 9]", "[2, 8, 8]");
  const auto f = m.forward_train(x);
  Tensor<float, 3> g(Shape<3>{2, 4, 3}), g5(Shape<3>{2, 5, 3});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g5), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::backward", "'grad_output'",
                           "[2, 5, 3]", "[2, 4, 3]");
  AudioPatchEmbedding<float> other(
      {.mel_bins = 8, .frames = 8, .patch_size = {2, 4}, .embed_dim = 3});
  const auto fo = other.forward_train(x);
  TESSERA_EXPECT_THROW_MSG(m.backward(fo.context, g), ValueError,
                           "tessera::nn::AudioPatchEmbedding::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.backward(AudioPatchEmbedding<float>::Context{}, g), ValueError,
                           "tessera::nn::AudioPatchEmbedding::backward", "'ctx'");
  AudioPatchEmbedding<float> normed(
      {.mel_bins = 8, .frames = 8, .patch_size = {4, 4}, .embed_dim = 3, .pre_norm = true});
  TESSERA_EXPECT_THROW_MSG(normed.backward(f.context, g), ValueError,
                           "tessera::nn::AudioPatchEmbedding::backward", "'ctx'");
  m.patch.conv1_weight.value = Tensor<float, 4>(Shape<4>{3, 1, 4, 3});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::backward", "'conv1.weight'",
                           "[3, 1, 4, 3]", "[3, 1, 4, 4]");
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::forward_train", "'conv1.weight'");
}

}  // namespace audio_patch_embedding_backward_test
}  // namespace tessera::nn
