#include "tessera/nn/patch_embedding.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "fusion_fixture.hpp"
#include "test_util.hpp"

namespace patch_embedding_test {

using tessera::Index;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::PatchEmbedding;
using tessera::nn::PatchEmbeddingOptions;

template <class T>
class PatchEmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(PatchEmbeddingTest, tessera::test::Scalars);

// Ranks are part of forward's signature: anything but [batch, C, H, W] does not compile.
template <class M, class X>
concept Forwardable = requires(const M& m, const X& x) {
  m.forward(x);
};
static_assert(Forwardable<PatchEmbedding<float>, Tensor<float, 4>>);
static_assert(!Forwardable<PatchEmbedding<float>, Tensor<float, 3>>);
static_assert(!Forwardable<PatchEmbedding<double>, Tensor<double, 5>>);

PatchEmbeddingOptions options_from(const nlohmann::json& j) {
  return {.image_size = tessera::test::pair_from(j.at("image_size")),
          .patch_size = tessera::test::pair_from(j.at("patch_size")),
          .in_channels = j.at("in_channels").get<Index>(),
          .embed_dim = j.at("embed_dim").get<Index>(),
          .bias = j.at("bias").get<bool>(),
          .cls_token = j.at("cls_token").get<bool>(),
          .pre_norm = j.at("pre_norm").get<bool>(),
          .layer_norm_eps = j.at("layer_norm_eps").get<double>()};
}

TYPED_TEST(PatchEmbeddingTest, MatchesPyTorchConv2dClassTokenPositionsAndLnPre) {
  using T = TypeParam;
  for (const std::string name :
       {"patch_embedding_vit", "patch_embedding_clip", "patch_embedding_remainder"}) {
    SCOPED_TRACE(name);
    const auto fx = tessera::test::fusion_fixture(name);
    PatchEmbedding<T> pe(options_from(fx.options));
    pe.load_state_dict(fx.dict, "module.");  // strict: the keys are CLIP's
    tessera::test::expect_parity(pe.forward(fx.input<T, 4>("images")), fx.expected<T, 3>("output"),
                                 name);
  }
}

// Conv2d written out, in double: out[b, t, e] = bias[e] + sum_{c,i,j} W[e, c, i, j]
// x[b, c, gy ph + i, gx pw + j] for patch t = gy * gw + gx (after the class token), plus the
// position; the class token is class_embedding + position 0.
template <class T>
Tensor<double, 3> direct_convolution(const PatchEmbedding<T>& pe, const Tensor<T, 4>& x) {
  const auto& o = pe.options();
  const Index B = x.dim(0), C = o.in_channels, E = o.embed_dim, ph = o.patch_size[0],
              pw = o.patch_size[1], first = o.cls_token ? 1 : 0;
  const auto [gh, gw] = pe.grid();
  Tensor<double, 3> out(B, pe.num_tokens(), E);
  for (Index b = 0; b < B; ++b)
    for (Index e = 0; e < E; ++e) {
      if (first) out(b, 0, e) = double(pe.class_embedding.value(e));
      for (Index gy = 0; gy < gh; ++gy)
        for (Index gx = 0; gx < gw; ++gx) {
          double acc = o.bias ? double(pe.conv1_bias.value(e)) : 0.0;
          for (Index c = 0; c < C; ++c)
            for (Index i = 0; i < ph; ++i)
              for (Index j = 0; j < pw; ++j)
                acc += double(pe.conv1_weight.value(e, c, i, j)) *
                       double(x(b, c, gy * ph + i, gx * pw + j));
          out(b, first + gy * gw + gx, e) = acc;
        }
      for (Index t = 0; t < pe.num_tokens(); ++t)
        out(b, t, e) += double(pe.positional_embedding.value(t, e));
    }
  return out;
}

TYPED_TEST(PatchEmbeddingTest, OneProductEqualsTheDirectConvolution) {
  using T = TypeParam;
  for (const bool cls : {false, true}) {
    SCOPED_TRACE(cls ? "cls_token" : "no cls_token");
    // 9 x 14 pixels, 4 x 3 patches: a 2 x 4 grid, the last row and the last 2 columns dropped
    const PatchEmbedding<T> pe({.image_size = {9, 14},
                                .patch_size = {4, 3},
                                .in_channels = 2,
                                .embed_dim = 5,
                                .cls_token = cls,
                                .seed = 11});
    ASSERT_EQ(pe.grid(), (std::array<Index, 2>{2, 4}));
    ASSERT_EQ(pe.num_tokens(), 8 + (cls ? 1 : 0));
    Tensor<T, 4> x(3, 2, 9, 14);
    x.setRandom(5);
    const auto out = pe.forward(x);
    const auto ref = direct_convolution(pe, x);
    ASSERT_EQ(out.shape(), (Shape<3>{3, pe.num_tokens(), 5}));
    for (Index i = 0; i < out.size(); ++i)
      ASSERT_TRUE(tessera::test::close(double(out.data()[i]), ref.data()[i],
                                       double(tessera::test::tol<T>()) * 4,
                                       double(tessera::test::tol<T>()) * 4))
          << "flat index " << i;
  }
}

TYPED_TEST(PatchEmbeddingTest, PixelsBeyondTheGridAreDropped) {
  using T = TypeParam;
  const PatchEmbedding<T> pe(
      {.image_size = {10, 9}, .patch_size = {4, 4}, .in_channels = 3, .embed_dim = 6});
  Tensor<T, 4> x(2, 3, 10, 9);
  x.setRandom(1);
  const auto before = pe.forward(x);
  // rows 8, 9 and column 8 lie outside the 2 x 2 grid of 4 x 4 patches
  for (Index b = 0; b < 2; ++b)
    for (Index c = 0; c < 3; ++c) {
      for (Index w = 0; w < 9; ++w) x(b, c, 8, w) = x(b, c, 9, w) = T(100);
      for (Index h = 0; h < 10; ++h) x(b, c, h, 8) = T(-100);
    }
  const auto after = pe.forward(x);
  for (Index i = 0; i < before.size(); ++i) ASSERT_EQ(before.data()[i], after.data()[i]);
  // A pixel inside the grid changes exactly the token of its patch: (5, 6) is in patch (1, 1).
  x(1, 2, 5, 6) += T(1);
  const auto moved = pe.forward(x);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 4; ++t) {
      const bool same = moved[b][t].as_matrix() == after[b][t].as_matrix();
      EXPECT_EQ(same, !(b == 1 && t == 3)) << "image " << b << ", token " << t;
    }
}

TYPED_TEST(PatchEmbeddingTest, ClassTokenIsTheSameForEveryImage) {
  using T = TypeParam;
  const PatchEmbedding<T> pe({.image_size = {8, 8},
                              .patch_size = {4, 4},
                              .in_channels = 3,
                              .embed_dim = 6,
                              .cls_token = true,
                              .seed = 2});
  Tensor<T, 4> x(3, 3, 8, 8);
  x.setRandom(4, -10, 10);
  const auto out = pe.forward(x);
  ASSERT_EQ(out.dim(1), 5);
  for (Index b = 0; b < 3; ++b)
    for (Index e = 0; e < 6; ++e)
      EXPECT_EQ(out(b, 0, e), T(pe.class_embedding.value(e) + pe.positional_embedding.value(0, e)));
}

TYPED_TEST(PatchEmbeddingTest, PreNormIsLayerNormOfTheTokens) {
  using T = TypeParam;
  PatchEmbedding<T> plain({.image_size = {8, 12},
                           .patch_size = {4, 4},
                           .in_channels = 3,
                           .embed_dim = 8,
                           .bias = false,
                           .cls_token = true,
                           .seed = 3});
  PatchEmbedding<T> normed({.image_size = {8, 12},
                            .patch_size = {4, 4},
                            .in_channels = 3,
                            .embed_dim = 8,
                            .bias = false,
                            .cls_token = true,
                            .pre_norm = true,
                            .seed = 9});
  normed.ln_pre.weight.value.setRandom(1, 0.5, 1.5);
  normed.ln_pre.bias.value.setRandom(2);
  normed.load_state_dict(plain.state_dict(), "", /*strict=*/false);  // all but ln_pre
  Tensor<T, 4> x(2, 3, 8, 12);
  x.setRandom(6);
  const auto expected = normed.ln_pre.forward(plain.forward(x));
  const auto out = normed.forward(x);
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], expected.data()[i]);
}

TYPED_TEST(PatchEmbeddingTest, StateDictKeysAreClipsAndInitialisation) {
  using T = TypeParam;
  const PatchEmbedding<T> clip({.image_size = {32, 32},
                                .patch_size = {8, 8},
                                .in_channels = 3,
                                .embed_dim = 16,
                                .bias = false,
                                .cls_token = true,
                                .pre_norm = true});
  const std::vector<std::string> clip_keys = {"class_embedding", "conv1.weight", "ln_pre.bias",
                                              "ln_pre.weight", "positional_embedding"};
  EXPECT_EQ(clip.state_dict().keys(), clip_keys);
  EXPECT_EQ(clip.conv1_weight.shape(), (Shape<4>{16, 3, 8, 8}));
  EXPECT_EQ(clip.positional_embedding.shape(), (Shape<2>{17, 16}));
  EXPECT_EQ(clip.num_patches(), 16);
  EXPECT_EQ(clip.num_tokens(), 17);
  EXPECT_EQ(clip.patch_features(), 192);
  EXPECT_EQ(clip.num_parameters(), 16 * 192 + 16 + 17 * 16 + 2 * 16);
  const PatchEmbedding<T> vit(
      {.image_size = {32, 32}, .patch_size = {8, 8}, .in_channels = 3, .embed_dim = 16});
  const std::vector<std::string> vit_keys = {"conv1.bias", "conv1.weight", "positional_embedding"};
  EXPECT_EQ(vit.state_dict().keys(), vit_keys);
  // conv1 as torch.nn.Conv2d: U(-1/sqrt(192), 1/sqrt(192)); positions N(0, 0.02)
  const T bound = T(1 / std::sqrt(192.0));
  EXPECT_LE(vit.conv1_weight.value.as_vector().cwiseAbs().maxCoeff(), bound);
  EXPECT_LE(vit.conv1_bias.value.as_vector().cwiseAbs().maxCoeff(), bound);
  EXPECT_LT(vit.positional_embedding.value.as_vector().cwiseAbs().maxCoeff(), T(0.1));
}

TYPED_TEST(PatchEmbeddingTest, ConcurrentForwardIsIdentical) {
  using T = TypeParam;
  const PatchEmbedding<T> pe({.image_size = {16, 16},
                              .patch_size = {4, 4},
                              .in_channels = 3,
                              .embed_dim = 12,
                              .cls_token = true,
                              .pre_norm = true});
  Tensor<T, 4> x(2, 3, 16, 16);
  x.setRandom(8);
  const auto single = pe.forward(x);
  std::vector<Tensor<T, 3>> outs(6);
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) threads.emplace_back([&, t] { outs[t] = pe.forward(x); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs)
    for (Index i = 0; i < single.size(); ++i) ASSERT_EQ(o.data()[i], single.data()[i]);
}

TYPED_TEST(PatchEmbeddingTest, RejectsBadOptions) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(
      PatchEmbedding<T>({.image_size = {0, 8}, .patch_size = {4, 4}, .embed_dim = 8}), ValueError,
      "tessera::nn::PatchEmbedding:", "image_size is (0, 8)", "expected sizes > 0");
  TESSERA_EXPECT_THROW_MSG(
      PatchEmbedding<T>({.image_size = {8, 8}, .patch_size = {9, 4}, .embed_dim = 8}), ValueError,
      "tessera::nn::PatchEmbedding:", "patch_size is (9, 4) for image_size (8, 8)",
      "0 < patch_size <= size");
  TESSERA_EXPECT_THROW_MSG(
      PatchEmbedding<T>({.image_size = {8, 8}, .patch_size = {4, 0}, .embed_dim = 8}), ValueError,
      "patch_size is (4, 0)");
  TESSERA_EXPECT_THROW_MSG(
      PatchEmbedding<T>(
          {.image_size = {8, 8}, .patch_size = {4, 4}, .in_channels = 0, .embed_dim = 8}),
      ValueError, "tessera::nn::PatchEmbedding:", "in_channels is 0");
  TESSERA_EXPECT_THROW_MSG(
      PatchEmbedding<T>({.image_size = {8, 8}, .patch_size = {4, 4}, .embed_dim = -1}), ValueError,
      "tessera::nn::PatchEmbedding:", "embed_dim is -1");
  TESSERA_EXPECT_THROW_MSG(PatchEmbedding<T>({.image_size = {8, 8},
                                              .patch_size = {4, 4},
                                              .embed_dim = 8,
                                              .pre_norm = true,
                                              .layer_norm_eps = 0}),
                           ValueError, "eps is 0");
}

TYPED_TEST(PatchEmbeddingTest, RejectsBadImages) {
  using T = TypeParam;
  const PatchEmbedding<T> pe(
      {.image_size = {8, 12}, .patch_size = {4, 4}, .in_channels = 3, .embed_dim = 8});
  // wrong channels
  TESSERA_EXPECT_THROW_MSG(pe.forward(Tensor<T, 4>(2, 4, 8, 12)), ShapeError,
                           "tessera::nn::PatchEmbedding::forward", "argument 'images'",
                           "has shape [2, 4, 8, 12]", "expected [2, 3, 8, 12]", "in_channels = 3");
  // wrong height / width (the grid would be the same, the image is not the configured one)
  TESSERA_EXPECT_THROW_MSG(pe.forward(Tensor<T, 4>(1, 3, 9, 12)), ShapeError, "'images'",
                           "[1, 3, 9, 12]", "[1, 3, 8, 12]", "image_size = (8, 12)");
  TESSERA_EXPECT_THROW_MSG(pe.forward(Tensor<T, 4>(1, 3, 12, 8)), ShapeError, "'images'",
                           "[1, 3, 12, 8]", "[1, 3, 8, 12]");
  // an empty batch is fine
  EXPECT_EQ(pe.forward(Tensor<T, 4>(0, 3, 8, 12)).shape(), (Shape<3>{0, 6, 8}));
  // a state dict made for another grid does not load
  PatchEmbedding<T> other(
      {.image_size = {8, 8}, .patch_size = {4, 4}, .in_channels = 3, .embed_dim = 8});
  TESSERA_EXPECT_THROW_MSG(other.load_state_dict(pe.state_dict()), ShapeError,
                           "'positional_embedding'", "[6, 8]", "[4, 8]");
}

}  // namespace patch_embedding_test
