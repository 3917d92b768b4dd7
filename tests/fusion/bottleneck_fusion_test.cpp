#include "tessera/fusion/bottleneck_fusion.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "fusion/fusion_test_util.hpp"
#include "fusion_fixture.hpp"
#include "nn/transformer_test_util.hpp"
#include "tessera/fusion/early_fusion.hpp"
#include "tessera/fusion/late_fusion.hpp"
#include "test_util.hpp"

namespace bottleneck_fusion_test {

using tessera::Index;
using tessera::IndexError;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::fusion::BottleneckFusion;
using tessera::fusion::BottleneckFusionOptions;
using tessera::fusion::BottleneckFusionState;
using tessera::test::random_tokens;
using tessera::test::same;
using tessera::test::small_encoder;

template <class T>
class BottleneckFusionTest : public ::testing::Test {};
TYPED_TEST_SUITE(BottleneckFusionTest, tessera::test::Scalars);

constexpr Index kVideo = 0, kAudio = 1;

TYPED_TEST(BottleneckFusionTest, MatchesPyTorchMBT) {
  using T = TypeParam;
  for (const std::string name :
       {"bottleneck_fusion_separate_padding", "bottleneck_fusion_shared_three_modalities"}) {
    SCOPED_TRACE(name);
    const auto fx = tessera::test::fusion_fixture(name);
    const auto& o = fx.options;
    const auto& eo = o.at("encoder");
    BottleneckFusion<T> mbt({.encoder = {.layer = tessera::test::layer_options_from(eo.at("layer")),
                                         .num_layers = eo.at("num_layers").get<Index>(),
                                         .final_norm = eo.at("final_norm").get<bool>()},
                             .num_modalities = o.at("num_modalities").get<Index>(),
                             .fusion_layer = o.at("fusion_layer").get<Index>(),
                             .n_bottlenecks = o.at("n_bottlenecks").get<Index>(),
                             .shared_weights = o.at("shared_weights").get<bool>()});
    mbt.load_state_dict(fx.dict, "module.");  // strict
    const Index M = mbt.num_modalities();
    std::vector<Tensor<T, 3>> xs;
    std::vector<Tensor<bool, 2>> storage(static_cast<std::size_t>(M));
    tessera::fusion::KeyPaddingMasks masks;
    for (Index m = 0; m < M; ++m) {
      xs.push_back(fx.input<T, 3>("x" + std::to_string(m)));
      masks.push_back(
          tessera::test::blocked_mask(fx, "key_padding_mask" + std::to_string(m), storage[m]));
    }
    const auto out = mbt.forward({xs.begin(), xs.end()}, masks);
    for (Index m = 0; m < M; ++m)
      tessera::test::expect_parity(out.tokens[m], fx.expected<T, 3>("tokens" + std::to_string(m)),
                                   name + " tokens" + std::to_string(m));
    tessera::test::expect_parity(out.bottleneck, fx.expected<T, 3>("bottleneck"),
                                 name + " bottleneck");
  }
}

// Video and audio streams, the audio perturbed in `perturbed`: layer by layer, the video tokens are
// untouched by the audio until the bottleneck carries it over.
TYPED_TEST(BottleneckFusionTest, AudioReachesVideoOnlyThroughTheBottleneck) {
  using T = TypeParam;
  const Index kLayers = 5, kFusion = 2;
  const BottleneckFusion<T> mbt(
      {.encoder = small_encoder(kLayers), .fusion_layer = kFusion, .n_bottlenecks = 3, .seed = 1});
  const auto video = random_tokens<T>(2, 6, 1);
  const auto audio = random_tokens<T>(2, 4, 2);
  auto audio2 = audio;
  audio2(1, 2, 3) += T(0.5);
  audio2(0, 0, 0) -= T(0.5);
  auto a = mbt.initial_state({video, audio});
  auto b = mbt.initial_state({video, audio2});
  for (Index l = 0; l < kLayers; ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    // The video half of layer l is a function of the video tokens and the bottleneck alone: run it
    // on b's audio with a's video and bottleneck, and it gives a's video output exactly.
    BottleneckFusionState<T> mixed{{a.tokens[kVideo], b.tokens[kAudio]}, a.bottleneck};
    mbt.forward_layer(l, a);
    mbt.forward_layer(l, b);
    mbt.forward_layer(l, mixed);
    EXPECT_TRUE(same(mixed.tokens[kVideo], a.tokens[kVideo]));
    EXPECT_FALSE(same(a.tokens[kAudio], b.tokens[kAudio]));
    if (l < kFusion) {
      // before fusion_layer: no path at all, and the bottleneck is still the learned one
      EXPECT_TRUE(same(a.tokens[kVideo], b.tokens[kVideo]));
      EXPECT_TRUE(same(a.bottleneck, b.bottleneck));
    } else if (l == kFusion) {
      // the first fusion layer: the audio enters the bottleneck, the video saw the learned one
      EXPECT_TRUE(same(a.tokens[kVideo], b.tokens[kVideo]));
      EXPECT_FALSE(same(a.bottleneck, b.bottleneck));
    } else {
      // from then on the video sees the bottleneck the audio changed
      EXPECT_FALSE(same(a.tokens[kVideo], b.tokens[kVideo]));
    }
  }
  // forward is these steps
  const auto out = mbt.forward({video, audio});
  EXPECT_TRUE(same(out.tokens[kVideo], a.tokens[kVideo]));
  EXPECT_TRUE(same(out.tokens[kAudio], a.tokens[kAudio]));
  EXPECT_TRUE(same(out.bottleneck, a.bottleneck));
}

TYPED_TEST(BottleneckFusionTest, WithoutBottleneckTokensTheModalitiesNeverMeet) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt(
      {.encoder = small_encoder(3, true), .fusion_layer = 0, .n_bottlenecks = 0});
  const auto video = random_tokens<T>(2, 5, 3);
  const auto audio = random_tokens<T>(2, 4, 4);
  auto audio2 = random_tokens<T>(2, 4, 5);
  Tensor<bool, 2> pad(2, 5);
  pad(1, 3) = pad(1, 4) = true;
  const tessera::fusion::KeyPaddingMasks masks = {Mask::blocked(pad), std::nullopt};
  const auto out = mbt.forward({video, audio}, masks);
  const auto out2 = mbt.forward({video, audio2}, masks);
  EXPECT_EQ(out.bottleneck.shape(), (Shape<3>{2, 0, 8}));
  EXPECT_TRUE(same(out.tokens[kVideo], out2.tokens[kVideo]));
  // ... and each stream is its encoder alone
  EXPECT_TRUE(same(out.tokens[kVideo],
                   mbt.encoder(kVideo).forward(video, {.src_key_padding_mask = masks[0]})));
  EXPECT_TRUE(same(out2.tokens[kAudio], mbt.encoder(kAudio).forward(audio2)));
}

TYPED_TEST(BottleneckFusionTest, FusionAtTheLastLayerIsLateFusion) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt(
      {.encoder = small_encoder(3, true), .fusion_layer = 3, .n_bottlenecks = 4, .seed = 5});
  const auto video = random_tokens<T>(3, 7, 6);
  const auto audio = random_tokens<T>(3, 5, 7);
  Tensor<bool, 2> pad(3, 5);
  pad(0, 4) = pad(2, 0) = pad(2, 1) = true;
  const tessera::fusion::KeyPaddingMasks masks = {std::nullopt, Mask::blocked(pad)};
  const auto out = mbt.forward({video, audio}, masks);
  EXPECT_TRUE(same(out.tokens[kVideo], mbt.encoder(kVideo).forward(video)));
  EXPECT_TRUE(same(out.tokens[kAudio],
                   mbt.encoder(kAudio).forward(audio, {.src_key_padding_mask = masks[1]})));
  // the bottleneck never ran: it is the learned tokens for every batch element
  ASSERT_EQ(out.bottleneck.shape(), (Shape<3>{3, 4, 8}));
  for (Index b = 0; b < 3; ++b) EXPECT_TRUE(same(out.bottleneck[b], mbt.bottleneck.value[0]));
}

// The same limit against fusion::LateFusion itself: with MBT's encoders loaded (the keys
// encoders.<m>.* are the same), its pooled class tokens are MBT's token 0 of each modality.
TYPED_TEST(BottleneckFusionTest, FusionAtTheLastLayerEqualsTheLateFusionModule) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt(
      {.encoder = small_encoder(2, true), .fusion_layer = 2, .n_bottlenecks = 2, .seed = 4});
  tessera::fusion::LateFusion<T> late({.encoder = small_encoder(2, true, 99)});
  late.load_state_dict(mbt.state_dict(), "", /*strict=*/false);  // all but `bottleneck`
  const auto video = random_tokens<T>(2, 6, 20);
  const auto audio = random_tokens<T>(2, 3, 21);
  const auto fused = mbt.forward({video, audio});
  const auto pooled = late.forward({video, audio}).pooled;
  for (Index m = 0; m < 2; ++m)
    for (Index b = 0; b < 2; ++b)
      EXPECT_TRUE(pooled[m][b].as_matrix() == fused.tokens[m][b].as_matrix().row(0)) << m << b;
}

// With one shared encoder and fusion from layer 0 with no bottleneck tokens there is nothing
// between the modalities; early fusion of a single modality is that same encoder.
TYPED_TEST(BottleneckFusionTest, OneModalityEqualsEarlyFusionOfThatModality) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt(
      {.encoder = small_encoder(2, true), .num_modalities = 1, .n_bottlenecks = 0});
  tessera::fusion::EarlyFusion<T> early(
      {.encoder = small_encoder(2, true, 5), .num_modalities = 1, .modality_embedding = false});
  early.encoder.load_state_dict(mbt.state_dict(), "encoders.0.", /*strict=*/false);
  const auto x = random_tokens<T>(2, 5, 22);
  EXPECT_TRUE(same(mbt.forward({x}).tokens[0], early.forward({x})));
}

TYPED_TEST(BottleneckFusionTest, ForwardFlopsCountEachLayerOnItsTokens) {
  using T = TypeParam;
  const auto enc = small_encoder(4);
  const BottleneckFusion<T> mbt({.encoder = enc, .fusion_layer = 3, .n_bottlenecks = 2});
  using tessera::fusion::encoder_layer_flops;
  const double expected =
      3 * (encoder_layer_flops(6, enc.layer) + encoder_layer_flops(4, enc.layer)) +
      encoder_layer_flops(8, enc.layer) + encoder_layer_flops(6, enc.layer);
  EXPECT_DOUBLE_EQ(mbt.forward_flops({6, 4}), expected);
  // one layer of d = 8, f = 16 on 6 tokens: 2*6*8*24 + 4*36*8 + 2*6*8*8 + 4*6*8*16
  EXPECT_DOUBLE_EQ(encoder_layer_flops(6, enc.layer), 2304 + 1152 + 768 + 3072);
  // bottlenecks make fusion cheaper than early fusion's joint attention once sequences are long
  const tessera::fusion::EarlyFusion<T> early({.encoder = enc});
  EXPECT_GT(early.forward_flops({196, 100}), mbt.forward_flops({196, 100}));
  TESSERA_EXPECT_THROW_MSG(mbt.forward_flops({6}), ValueError,
                           "tessera::fusion::BottleneckFusion::forward_flops",
                           "argument 'lengths' holds 1 lengths, expected 2");
  TESSERA_EXPECT_THROW_MSG(mbt.forward_flops({6, -1}), ValueError, "argument 'lengths[1]' is -1");
}

TYPED_TEST(BottleneckFusionTest, FusionAtLayerZeroMixesFromTheFirstLayer) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt({.encoder = small_encoder(2), .fusion_layer = 0});
  const auto video = random_tokens<T>(1, 5, 8);
  const auto audio = random_tokens<T>(1, 3, 9);
  const auto audio2 = random_tokens<T>(1, 3, 10);
  auto a = mbt.initial_state({video, audio});
  auto b = mbt.initial_state({video, audio2});
  mbt.forward_layer(0, a);
  mbt.forward_layer(0, b);
  EXPECT_TRUE(same(a.tokens[kVideo], b.tokens[kVideo]));
  EXPECT_FALSE(same(a.bottleneck, b.bottleneck));
  mbt.forward_layer(1, a);
  mbt.forward_layer(1, b);
  EXPECT_FALSE(same(a.tokens[kVideo], b.tokens[kVideo]));
}

// One fusion layer written out for three modalities: [x_m ; z] through layer m, the new z the mean.
TYPED_TEST(BottleneckFusionTest, NewBottleneckIsTheMeanOverModalities) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt({.encoder = small_encoder(1),
                                 .num_modalities = 3,
                                 .fusion_layer = 0,
                                 .n_bottlenecks = 2,
                                 .seed = 3});
  const std::vector<Tensor<T, 3>> xs = {random_tokens<T>(2, 3, 11), random_tokens<T>(2, 5, 12),
                                        random_tokens<T>(2, 1, 13)};
  const auto out = mbt.forward({xs.begin(), xs.end()});
  Tensor<T, 3> z(2, 2, 8);
  for (Index b = 0; b < 2; ++b) z[b].assign(mbt.bottleneck.value[0]);
  Tensor<double, 3> mean(2, 2, 8);
  for (Index m = 0; m < 3; ++m) {
    const Index L = xs[m].dim(1);
    Tensor<T, 3> joint(2, L + 2, 8);
    for (Index b = 0; b < 2; ++b) {
      joint[b].as_matrix().topRows(L) = xs[m][b].as_matrix();
      joint[b].as_matrix().bottomRows(2) = z[b].as_matrix();
    }
    const auto y = mbt.encoder(m).layers[0].forward(joint);
    for (Index b = 0; b < 2; ++b) {
      EXPECT_TRUE(y[b].as_matrix().topRows(L) == out.tokens[m][b].as_matrix()) << m;
      mean[b].as_matrix() += y[b].as_matrix().bottomRows(2).template cast<double>() / 3.0;
    }
  }
  for (Index i = 0; i < mean.size(); ++i)
    EXPECT_NEAR(double(out.bottleneck.data()[i]), mean.data()[i],
                4 * double(tessera::test::tol<T>()));
}

TYPED_TEST(BottleneckFusionTest, PaddedAudioTokensReachNothing) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt({.encoder = small_encoder(3), .fusion_layer = 1});
  const auto video = random_tokens<T>(2, 4, 14);
  auto audio = random_tokens<T>(2, 6, 15);
  Tensor<bool, 2> pad(2, 6);
  pad(0, 5) = pad(1, 2) = pad(1, 3) = true;
  const tessera::fusion::KeyPaddingMasks masks = {std::nullopt, Mask::blocked(pad)};
  const auto out = mbt.forward({video, audio}, masks);
  audio(0, 5, 1) = audio(1, 2, 0) = audio(1, 3, 7) = T(50);
  const auto out2 = mbt.forward({video, audio}, masks);
  EXPECT_TRUE(same(out.tokens[kVideo], out2.tokens[kVideo]));
  EXPECT_TRUE(same(out.bottleneck, out2.bottleneck));
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 6; ++t)
      if (!pad(b, t)) {
        EXPECT_TRUE(same(out.tokens[kAudio][b][t], out2.tokens[kAudio][b][t]));
      }
}

TYPED_TEST(BottleneckFusionTest, SharedWeightsRunOneEncoder) {
  using T = TypeParam;
  const BottleneckFusion<T> shared(
      {.encoder = small_encoder(2), .fusion_layer = 1, .shared_weights = true});
  const BottleneckFusion<T> separate({.encoder = small_encoder(2), .fusion_layer = 1});
  ASSERT_EQ(shared.encoders.size(), 1u);
  ASSERT_EQ(separate.encoders.size(), 2u);
  EXPECT_EQ(&shared.encoder(0), &shared.encoder(1));
  EXPECT_EQ(separate.num_parameters(), 2 * shared.num_parameters() - 4 * 8);
  // the same tokens in both streams: one encoder gives both the same outputs, two do not
  const auto x = random_tokens<T>(2, 5, 16);
  const auto s = shared.forward({x, x});
  EXPECT_TRUE(same(s.tokens[0], s.tokens[1]));
  const auto d = separate.forward({x, x});
  EXPECT_FALSE(same(d.tokens[0], d.tokens[1]));
}

TYPED_TEST(BottleneckFusionTest, StateDictKeysAndInitialisation) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt({.encoder = small_encoder(2, true), .n_bottlenecks = 200});
  const auto keys = mbt.state_dict().keys();
  EXPECT_EQ(keys.front(), "bottleneck");
  for (const char* k : {"encoders.0.layers.0.self_attn.in_proj_weight",
                        "encoders.1.layers.1.linear2.bias", "encoders.1.norm.weight"})
    EXPECT_NE(std::find(keys.begin(), keys.end(), k), keys.end()) << k;
  EXPECT_EQ(keys.size(), std::size_t{1 + 2 * (2 * 12 + 2)});
  EXPECT_EQ(mbt.bottleneck.shape(), (Shape<3>{1, 200, 8}));
  // N(0, 0.02), 1600 samples
  const auto w = mbt.bottleneck.value.as_vector().template cast<double>();
  EXPECT_NEAR(std::sqrt(w.squaredNorm() / 1600.0), 0.02, 0.002);
  // a state dict round trip reproduces the outputs
  BottleneckFusion<T> copy({.encoder = small_encoder(2, true), .n_bottlenecks = 200, .seed = 9});
  copy.load_state_dict(mbt.state_dict());
  const auto x = random_tokens<T>(1, 3, 1);
  EXPECT_TRUE(same(copy.forward({x, x}).tokens[1], mbt.forward({x, x}).tokens[1]));
}

TYPED_TEST(BottleneckFusionTest, ConcurrentForwardIsIdentical) {
  using T = TypeParam;
  const BottleneckFusion<T> mbt({.encoder = small_encoder(3), .fusion_layer = 1});
  const auto video = random_tokens<T>(2, 6, 2);
  const auto audio = random_tokens<T>(2, 3, 3);
  const auto single = mbt.forward({video, audio});
  std::vector<BottleneckFusionState<T>> outs(6);
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&, t] { outs[t] = mbt.forward({video, audio}); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs) {
    EXPECT_TRUE(same(o.tokens[0], single.tokens[0]));
    EXPECT_TRUE(same(o.tokens[1], single.tokens[1]));
    EXPECT_TRUE(same(o.bottleneck, single.bottleneck));
  }
}

TYPED_TEST(BottleneckFusionTest, RejectsBadOptions) {
  using T = TypeParam;
  constexpr const char* fn = "tessera::fusion::BottleneckFusion:";
  TESSERA_EXPECT_THROW_MSG(BottleneckFusion<T>({.encoder = small_encoder(2), .num_modalities = 0}),
                           ValueError, fn, "num_modalities is 0");
  TESSERA_EXPECT_THROW_MSG(BottleneckFusion<T>({.encoder = {.layer = {.d_model = 0}}}), ValueError,
                           fn, "encoder.layer.d_model is 0");
  TESSERA_EXPECT_THROW_MSG(BottleneckFusion<T>({.encoder = small_encoder(0)}), ValueError, fn,
                           "encoder.num_layers is 0");
  TESSERA_EXPECT_THROW_MSG(BottleneckFusion<T>({.encoder = small_encoder(2), .fusion_layer = 3}),
                           ValueError, fn, "fusion_layer is 3", "[0, 2]");
  TESSERA_EXPECT_THROW_MSG(BottleneckFusion<T>({.encoder = small_encoder(2), .fusion_layer = -1}),
                           ValueError, fn, "fusion_layer is -1");
  TESSERA_EXPECT_THROW_MSG(BottleneckFusion<T>({.encoder = small_encoder(2), .n_bottlenecks = -1}),
                           ValueError, fn, "n_bottlenecks is -1");
  TESSERA_EXPECT_THROW_MSG(
      BottleneckFusion<T>(
          {.encoder = {.layer = {.d_model = 8, .nhead = 3, .dim_feedforward = 16}}}),
      ValueError, fn, "nhead is 3");
}

TYPED_TEST(BottleneckFusionTest, RejectsBadInputs) {
  using T = TypeParam;
  constexpr const char* fn = "tessera::fusion::BottleneckFusion::forward";
  const BottleneckFusion<T> mbt({.encoder = small_encoder(2), .fusion_layer = 1});
  const auto video = random_tokens<T>(2, 5, 1);
  const auto audio = random_tokens<T>(2, 3, 2);
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video}), ValueError, fn,
                           "argument 'inputs' holds 1 sequences, expected 2");
  const Tensor<T, 3> narrow(2, 3, 6), other_batch(3, 3, 8);
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video, narrow}), ShapeError, fn,
                           "argument 'inputs[1]' has shape [2, 3, 6]", "expected [2, L, 8]");
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video, other_batch}), ShapeError, fn,
                           "argument 'inputs[1]' has shape [3, 3, 8]", "batch 2");
  Tensor<bool, 2> pad(2, 5), wrong(2, 4);
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video, audio}, {Mask::blocked(pad)}), ValueError, fn,
                           "argument 'key_padding_masks' holds 1 masks, expected none or 2");
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video, audio}, {Mask::blocked(pad), Mask::blocked(wrong)}),
                           ShapeError, fn, "argument 'key_padding_masks[1]' has shape [2, 4]",
                           "expected [2, 3]", "'inputs[1]' with shape [2, 3, 8]");
  constexpr const char* step = "tessera::fusion::BottleneckFusion::forward_layer";
  auto state = mbt.initial_state({video, audio});
  TESSERA_EXPECT_THROW_MSG(mbt.forward_layer(2, state), IndexError, step, "argument 'layer' is 2",
                           "[0, 2)");
  state.tokens.pop_back();
  TESSERA_EXPECT_THROW_MSG(mbt.forward_layer(0, state), ValueError, step,
                           "argument 'state.tokens' holds 1 sequences, expected 2");
  state = mbt.initial_state({video, audio});
  state.bottleneck = Tensor<T, 3>(2, 3, 8);
  TESSERA_EXPECT_THROW_MSG(mbt.forward_layer(1, state), ShapeError, step,
                           "argument 'state.bottleneck' has shape [2, 3, 8]", "[2, 4, 8]");
}

}  // namespace bottleneck_fusion_test
