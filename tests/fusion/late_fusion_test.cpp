#include "tessera/fusion/late_fusion.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "fusion/fusion_test_util.hpp"
#include "test_util.hpp"

namespace late_fusion_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::fusion::Combine;
using tessera::fusion::LateFusion;
using tessera::fusion::Pooling;
using tessera::test::random_tokens;
using tessera::test::same;
using tessera::test::small_encoder;

template <class T>
class LateFusionTest : public ::testing::Test {};
TYPED_TEST_SUITE(LateFusionTest, tessera::test::Scalars);

template <class T>
void expect_close(const Tensor<T, 2>& a, const Tensor<T, 2>& b) {
  ASSERT_EQ(a.shape(), b.shape());
  for (Index i = 0; i < a.size(); ++i)
    EXPECT_TRUE(tessera::test::close(a.data()[i], b.data()[i], 4 * tessera::test::tol<T>(),
                                     4 * tessera::test::tol<T>()))
        << "flat index " << i;
}

TYPED_TEST(LateFusionTest, PooledIsEachEncoderAlone) {
  using T = TypeParam;
  const auto video = random_tokens<T>(2, 5, 1);
  const auto audio = random_tokens<T>(2, 4, 2);
  Tensor<bool, 2> pad(2, 4);
  pad(0, 3) = pad(1, 1) = pad(1, 2) = true;
  const tessera::fusion::KeyPaddingMasks masks = {std::nullopt, Mask::blocked(pad)};
  for (const Pooling pooling : {Pooling::cls, Pooling::mean}) {
    SCOPED_TRACE(pooling == Pooling::cls ? "cls" : "mean");
    const LateFusion<T> late({.encoder = small_encoder(2, true), .pooling = pooling});
    const auto out = late.forward({video, audio}, masks);
    const auto hv = late.encoders[0].forward(video);
    const auto ha = late.encoders[1].forward(audio, {.src_key_padding_mask = masks[1]});
    Tensor<T, 2> pv(2, 8), pa(2, 8);
    for (Index b = 0; b < 2; ++b) {
      if (pooling == Pooling::cls) {
        pv[b].as_matrix() = hv[b].as_matrix().row(0);
        pa[b].as_matrix() = ha[b].as_matrix().row(0);
        continue;
      }
      pv[b].as_matrix() = hv[b].as_matrix().colwise().mean();
      Index n = 0;
      for (Index t = 0; t < 4; ++t)
        if (!pad(b, t)) pa[b].as_matrix() += ha[b].as_matrix().row(t), ++n;
      pa[b].as_matrix() /= T(n);
    }
    expect_close(out.pooled[0], pv);
    expect_close(out.pooled[1], pa);
    // no token of one modality sees another's: the audio cannot change the video's features
    auto audio2 = audio;
    audio2(0, 0, 0) += T(1);
    EXPECT_TRUE(same(late.forward({video, audio2}, masks).pooled[0], out.pooled[0]));
  }
}

TYPED_TEST(LateFusionTest, CombinesByMeanWeightedSumOrConcatenation) {
  using T = TypeParam;
  const auto video = random_tokens<T>(3, 5, 3);
  const auto audio = random_tokens<T>(3, 2, 4);
  const LateFusion<T> mean({.encoder = small_encoder(2, true), .pooling = Pooling::mean});
  const auto m = mean.forward({video, audio});
  Tensor<T, 2> expected(3, 8);
  expected.as_array() = (m.pooled[0].as_array() + m.pooled[1].as_array()) / T(2);
  expect_close(m.fused, expected);

  LateFusion<T> weighted({.encoder = small_encoder(2, true), .combine = Combine::weighted_sum});
  ASSERT_EQ(weighted.fusion_weights.shape(), (Shape<1>{2}));
  EXPECT_TRUE(weighted.fusion_weights.value.as_vector().isZero(0));  // equal weights at first
  weighted.fusion_weights.value(0) = T(1.5);
  weighted.fusion_weights.value(1) = T(-0.5);
  const auto w = weighted.forward({video, audio});
  const double w0 = 1 / (1 + std::exp(-2.0));  // softmax([1.5, -0.5])
  expected.as_array() = T(w0) * w.pooled[0].as_array() + T(1 - w0) * w.pooled[1].as_array();
  expect_close(w.fused, expected);

  const LateFusion<T> concat(
      {.encoder = small_encoder(2, true), .combine = Combine::concat, .output_dim = 5, .seed = 2});
  EXPECT_EQ(concat.output_dim(), 5);
  ASSERT_EQ(concat.head.weight.shape(), (Shape<2>{5, 16}));
  const auto c = concat.forward({video, audio});
  Tensor<T, 2> features(3, 16);
  features.as_matrix().leftCols(8) = c.pooled[0].as_matrix();
  features.as_matrix().rightCols(8) = c.pooled[1].as_matrix();
  ASSERT_EQ(c.fused.shape(), (Shape<2>{3, 5}));
  EXPECT_TRUE(same(c.fused, concat.head.forward(features)));
}

TYPED_TEST(LateFusionTest, AllPaddingPoolsToZeros) {
  using T = TypeParam;
  const LateFusion<T> late({.encoder = small_encoder(2, true), .pooling = Pooling::mean});
  const auto video = random_tokens<T>(2, 3, 5);
  const auto audio = random_tokens<T>(2, 3, 6);
  Tensor<bool, 2> pad(2, 3);
  pad(1, 0) = pad(1, 1) = pad(1, 2) = true;  // batch 1's audio is padding only
  const auto out = late.forward({video, audio}, {std::nullopt, Mask::blocked(pad)});
  EXPECT_TRUE(out.pooled[1][1].as_matrix().isZero(0));
  EXPECT_FALSE(out.pooled[1][0].as_matrix().isZero(0));
  for (Index i = 0; i < out.fused.size(); ++i) EXPECT_FALSE(std::isnan(out.fused.data()[i]));
}

TYPED_TEST(LateFusionTest, StateDictKeysAndConcurrentForward) {
  using T = TypeParam;
  const LateFusion<T> concat(
      {.encoder = small_encoder(1, true), .num_modalities = 3, .combine = Combine::concat});
  const auto keys = concat.state_dict().keys();
  EXPECT_EQ(keys.size(), std::size_t{3 * (12 + 2) + 2});
  for (const char* k : {"encoders.0.layers.0.self_attn.in_proj_weight", "encoders.2.norm.bias",
                        "head.weight", "head.bias"})
    EXPECT_NE(std::find(keys.begin(), keys.end(), k), keys.end()) << k;
  EXPECT_EQ(concat.head.weight.shape(), (Shape<2>{8, 24}));  // output_dim 0: embed_dim
  const LateFusion<T> weighted(
      {.encoder = small_encoder(1, true), .combine = Combine::weighted_sum});
  const auto wkeys = weighted.state_dict().keys();
  EXPECT_NE(std::find(wkeys.begin(), wkeys.end(), "fusion_weights"), wkeys.end());
  EXPECT_EQ(LateFusion<T>({.encoder = small_encoder(1, true)}).state_dict().keys().size(),
            std::size_t{2 * 14});
  const auto a = random_tokens<T>(2, 4, 1), b = random_tokens<T>(2, 2, 2),
             c = random_tokens<T>(2, 3, 3);
  const auto single = concat.forward({a, b, c});
  std::vector<Tensor<T, 2>> outs(6);
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&, t] { outs[t] = concat.forward({a, b, c}).fused; });
  for (auto& th : threads) th.join();
  for (const auto& o : outs) EXPECT_TRUE(same(o, single.fused));
}

TYPED_TEST(LateFusionTest, ForwardFlopsRunEachEncoderOnItsOwnTokens) {
  using T = TypeParam;
  const auto enc = small_encoder(2);
  using tessera::fusion::encoder_layer_flops;
  const double encoders =
      2 * (encoder_layer_flops(5, enc.layer) + encoder_layer_flops(3, enc.layer));
  EXPECT_DOUBLE_EQ(LateFusion<T>({.encoder = enc}).forward_flops({5, 3}), encoders);
  const LateFusion<T> concat({.encoder = enc, .combine = Combine::concat, .output_dim = 4});
  EXPECT_DOUBLE_EQ(concat.forward_flops({5, 3}), encoders + 2 * 16 * 4);
  TESSERA_EXPECT_THROW_MSG(concat.forward_flops({}), ValueError,
                           "tessera::fusion::LateFusion::forward_flops",
                           "argument 'lengths' holds 0 lengths, expected 2");
  TESSERA_EXPECT_THROW_MSG(concat.forward_flops({1, -2}), ValueError,
                           "argument 'lengths[1]' is -2");
}

TYPED_TEST(LateFusionTest, RejectsBadOptionsAndInputs) {
  using T = TypeParam;
  constexpr const char* ctor = "tessera::fusion::LateFusion:";
  TESSERA_EXPECT_THROW_MSG(LateFusion<T>({.encoder = small_encoder(2, true), .num_modalities = -1}),
                           ValueError, ctor, "num_modalities is -1");
  TESSERA_EXPECT_THROW_MSG(LateFusion<T>({.encoder = {.layer = {.d_model = 0}}}), ValueError, ctor,
                           "encoder.layer.d_model is 0");
  TESSERA_EXPECT_THROW_MSG(
      LateFusion<T>(
          {.encoder = small_encoder(2, true), .combine = Combine::concat, .output_dim = -3}),
      ValueError, ctor, "output_dim is -3");
  constexpr const char* fn = "tessera::fusion::LateFusion::forward";
  const LateFusion<T> late({.encoder = small_encoder(2, true)});
  const auto video = random_tokens<T>(2, 5, 2);
  const Tensor<T, 3> empty(2, 0, 8), wide(2, 3, 7);
  TESSERA_EXPECT_THROW_MSG(late.forward({video, empty}), ShapeError, fn,
                           "argument 'inputs[1]' has shape [2, 0, 8]", "at least one token");
  TESSERA_EXPECT_THROW_MSG(late.forward({video}), ValueError, fn,
                           "argument 'inputs' holds 1 sequences, expected 2");
  TESSERA_EXPECT_THROW_MSG(late.forward({wide, video}), ShapeError, fn,
                           "argument 'inputs[0]' has shape [2, 3, 7]", "expected [2, L, 8]");
  Tensor<bool, 2> pad(5, 2);
  TESSERA_EXPECT_THROW_MSG(late.forward({video, video}, {Mask::blocked(pad), std::nullopt}),
                           ShapeError, fn, "argument 'key_padding_masks[0]' has shape [5, 2]",
                           "expected [2, 5]");
}

}  // namespace late_fusion_test
