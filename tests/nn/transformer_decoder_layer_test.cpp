#include "tessera/nn/transformer_decoder_layer.hpp"

#include <gtest/gtest.h>

#include "transformer_test_util.hpp"

namespace transformer_decoder_layer_test {

using tessera::Index;
using tessera::Mask;
using tessera::Tensor;
using tessera::nn::TransformerDecoderLayer;
using tessera::test::owned_array;

template <class T>
class TransformerDecoderLayerTest : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerDecoderLayerTest, tessera::test::Scalars);

TYPED_TEST(TransformerDecoderLayerTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("decoder_layer_");
  ASSERT_GE(names.size(), 3u) << "PyTorch fixtures for TransformerDecoderLayer are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    TransformerDecoderLayer<T> layer(tessera::test::layer_options_from(fx.options));
    layer.load_state_dict(fx.dict, "module.", /*strict=*/false);
    tessera::test::FixtureMasks<T> masks;
    const auto fo = tessera::test::decoder_forward_from(fx, masks);
    const auto tgt = fx.input<T, 3>("tgt");
    const auto memory = fx.input<T, 3>("memory");
    const auto expected = fx.expected<T, 3>("output");
    tessera::test::expect_tensor_near(layer.forward(tgt, memory, fo), expected,
                                      tessera::test::parity_tol<T>(), name);
    if (fx.forward.value("tgt_is_causal", false)) {
      // The same result from tgt_is_causal in place of the stored causal mask.
      auto causal = fo;
      causal.tgt_mask.reset();
      causal.tgt_is_causal = true;
      tessera::test::expect_tensor_near(layer.forward(tgt, memory, causal), expected,
                                        tessera::test::parity_tol<T>(), name + " (tgt_is_causal)");
    }
  }
}

TYPED_TEST(TransformerDecoderLayerTest, StepByStepEqualsCausalForward) {
  using T = TypeParam;
  for (bool norm_first : {false, true}) {
    TransformerDecoderLayer<T> layer(
        {.d_model = 12, .nhead = 3, .dim_feedforward = 24, .norm_first = norm_first, .seed = 7});
    Tensor<T, 3> tgt(2, 6, 12), memory(2, 4, 12);
    tgt.setRandom(1);
    memory.setRandom(2);
    Tensor<bool, 2> mem_pad(2, 4);
    mem_pad(1, 3) = true;
    const auto full = layer.forward(
        tgt, memory, {.memory_key_padding_mask = Mask::blocked(mem_pad), .tgt_is_causal = true});
    auto cache = layer.make_cache(memory);
    for (Index t = 0; t < 6; ++t) {
      Tensor<T, 3> x(2, 1, 12);
      for (Index b = 0; b < 2; ++b)
        for (Index e = 0; e < 12; ++e) x(b, 0, e) = tgt(b, t, e);
      const auto y = layer.step(x, cache, Mask::blocked(mem_pad));
      for (Index b = 0; b < 2; ++b)
        for (Index e = 0; e < 12; ++e)
          EXPECT_NEAR(y(b, 0, e), full(b, t, e), 50 * tessera::test::tol<T>()) << "t=" << t;
    }
    EXPECT_EQ(cache.self_kv.length, 6);
    EXPECT_EQ(cache.memory_kv.length, 4);
  }
}

// prepack() (self-attention, cross-attention and feed-forward weights packed once) changes
// neither forward nor the cached step beyond rounding.
TYPED_TEST(TransformerDecoderLayerTest, PrepackedEqualsUnpacked) {
  using T = TypeParam;
  TransformerDecoderLayer<T> layer({.d_model = 48, .nhead = 4, .dim_feedforward = 96, .seed = 9});
  Tensor<T, 3> tgt(2, 20, 48), memory(2, 17, 48);
  tgt.setRandom(1);
  memory.setRandom(2);
  const auto step_all = [&] {
    auto cache = layer.make_cache(memory);
    Tensor<T, 3> x(2, 1, 48);
    x.setRandom(3);
    return layer.step(x, cache);
  };
  const auto want = layer.forward(tgt, memory, {.tgt_is_causal = true});
  const auto want_step = step_all();
  layer.prepack();
  const auto got = layer.forward(tgt, memory, {.tgt_is_causal = true});
  tessera::test::expect_tensor_near(got, want, 10 * tessera::test::tol<T>(), "forward");
  tessera::test::expect_tensor_near(step_all(), want_step, 10 * tessera::test::tol<T>(), "step");
}

TYPED_TEST(TransformerDecoderLayerTest, StateDictNames) {
  using T = TypeParam;
  TransformerDecoderLayer<T> layer({.d_model = 8, .nhead = 2, .dim_feedforward = 16});
  const auto keys = layer.state_dict().keys();
  EXPECT_EQ(keys.size(), 18u);
  for (const char* k : {"multihead_attn.in_proj_weight", "self_attn.out_proj.bias", "norm3.weight",
                        "linear2.weight"})
    EXPECT_NE(std::find(keys.begin(), keys.end(), k), keys.end()) << k;
}

TYPED_TEST(TransformerDecoderLayerTest, RejectsBadMemory) {
  using T = TypeParam;
  TransformerDecoderLayer<T> layer({.d_model = 8, .nhead = 2, .dim_feedforward = 16});
  TESSERA_EXPECT_THROW_MSG(layer.forward(Tensor<T, 3>(2, 3, 8), Tensor<T, 3>(2, 4, 6)),
                           tessera::ShapeError, "tessera::nn::TransformerDecoderLayer::forward",
                           "argument 'memory' has shape [2, 4, 6]", "expected [2, L, 8]");
  Tensor<bool, 2> bad_mask(3, 5);
  TESSERA_EXPECT_THROW_MSG(layer.forward(Tensor<T, 3>(2, 3, 8), Tensor<T, 3>(2, 4, 8),
                                         {.memory_mask = Mask::blocked(bad_mask)}),
                           tessera::ShapeError, "tessera::nn::TransformerDecoderLayer::forward",
                           "argument 'memory_mask' has shape [3, 5]", "expected [3, 4]");
}

// Decoder inputs shared by the tests below: target, memory and their masks.
template <class T>
struct DecoderInputs {
  Tensor<T, 3> tgt{2, 5, 12}, memory{2, 4, 12};
  Tensor<bool, 2> tgt_pad{2, 5}, mem_pad{2, 4}, mem_mask{5, 4};
  DecoderInputs() {
    tgt.setRandom(21);
    memory.setRandom(22);
    tgt_pad(0, 4) = mem_pad(1, 3) = mem_mask(2, 0) = true;
  }
  tessera::nn::TransformerDecoderLayerForwardOptions options() const {
    return {.memory_mask = Mask::blocked(mem_mask),
            .tgt_key_padding_mask = Mask::blocked(tgt_pad),
            .memory_key_padding_mask = Mask::blocked(mem_pad),
            .tgt_is_causal = true};
  }
};

TYPED_TEST(TransformerDecoderLayerTest, ForwardIntoEqualsForwardInPlaceToo) {
  using T = TypeParam;
  using tessera::test::same_bits;
  const DecoderInputs<T> in;
  const auto fo = in.options();
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerDecoderLayer<T> layer(
        {.d_model = 12, .nhead = 3, .dim_feedforward = 24, .norm_first = norm_first, .seed = 23});
    tessera::test::expect_into_equals(
        in.tgt, layer.forward(in.tgt, in.memory, fo), [&](const auto& tgt, auto& out) {
          layer.forward_into(tgt, in.memory, out, fo);  // out may be tgt
        });
    // ... or memory (read before out is written), here with as many positions as the target.
    Tensor<T, 3> mem(in.tgt), over_mem(in.tgt);
    const auto self_cross = layer.forward(in.tgt, mem);
    layer.forward_into(in.tgt, over_mem, over_mem);
    EXPECT_TRUE(same_bits(over_mem, self_cross));
  }
}

// The skip connections fused into the output projections and linear2 compute exactly what the
// unfused composition of the sublayers does.
TYPED_TEST(TransformerDecoderLayerTest, FusedSkipConnectionsEqualSeparateAdditions) {
  using T = TypeParam;
  const DecoderInputs<T> in;
  const auto fo = in.options();
  const tessera::nn::MultiheadAttentionForwardOptions sa{
      .key_padding_mask = fo.tgt_key_padding_mask, .is_causal = true};
  const tessera::nn::MultiheadAttentionForwardOptions ca{
      .key_padding_mask = fo.memory_key_padding_mask, .attn_mask = fo.memory_mask};
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerDecoderLayer<T> layer(
        {.d_model = 12, .nhead = 3, .dim_feedforward = 24, .norm_first = norm_first, .seed = 24});
    Tensor<T, 3> x(in.tgt);
    const auto& m = in.memory;
    if (norm_first) {
      auto h = layer.norm1.forward(x);
      x.as_array() += owned_array(layer.self_attn.forward(h, h, h, sa).output);
      h = layer.norm2.forward(x);
      x.as_array() += owned_array(layer.multihead_attn.forward(h, m, m, ca).output);
      x.as_array() += owned_array(layer.ff.forward(layer.norm3.forward(x)));
    } else {
      x.as_array() += owned_array(layer.self_attn.forward(x, x, x, sa).output);
      layer.norm1.forward_into(x, x);
      x.as_array() += owned_array(layer.multihead_attn.forward(x, m, m, ca).output);
      layer.norm2.forward_into(x, x);
      x.as_array() += owned_array(layer.ff.forward(x));
      layer.norm3.forward_into(x, x);
    }
    EXPECT_TRUE(tessera::test::same_bits(layer.forward(in.tgt, m, fo), x));
  }
}

TYPED_TEST(TransformerDecoderLayerTest, StepIntoEqualsStepAndRepeatsWithoutAllocating) {
  using T = TypeParam;
  const DecoderInputs<T> in;
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerDecoderLayer<T> layer(
        {.d_model = 12, .nhead = 3, .dim_feedforward = 24, .norm_first = norm_first, .seed = 25});
    auto cache_a = layer.make_cache(in.memory);
    auto cache_b = layer.make_cache(in.memory);
    cache_a.record_cross_attention = cache_b.record_cross_attention = true;
    for (Index t = 0; t < 3; ++t) {
      Tensor<T, 3> x(2, 1, 12);
      for (Index b = 0; b < 2; ++b)
        for (Index e = 0; e < 12; ++e) x(b, 0, e) = in.tgt(b, t, e);
      const auto y = layer.step(x, cache_a, Mask::blocked(in.mem_pad));
      layer.step_into(x, cache_b, x, Mask::blocked(in.mem_pad));  // in place
      EXPECT_TRUE(tessera::test::same_bits(x, y)) << "t=" << t;
      EXPECT_TRUE(tessera::test::same_bits(cache_b.cross_attention, cache_a.cross_attention));
    }
    const auto fo = in.options();
    tessera::test::expect_repeat_allocates_nothing(
        [&] { (void)layer.forward(in.tgt, in.memory, fo); });
  }
}

TYPED_TEST(TransformerDecoderLayerTest, ForwardIntoRejectsBadOut) {
  using T = TypeParam;
  TransformerDecoderLayer<T> layer({.d_model = 8, .nhead = 2, .dim_feedforward = 16});
  Tensor<T, 3> tgt(2, 3, 8), memory(2, 4, 8), bad(2, 3, 6);
  TESSERA_EXPECT_THROW_MSG(layer.forward_into(tgt, memory, bad), tessera::ShapeError,
                           "tessera::nn::TransformerDecoderLayer::forward_into", "'out'",
                           "[2, 3, 6]", "[2, 3, 8]");
  auto cache = layer.make_cache(memory);
  TESSERA_EXPECT_THROW_MSG(layer.step_into(tgt, cache, bad), tessera::ShapeError,
                           "tessera::nn::TransformerDecoderLayer::step_into", "'out'", "[2, 3, 6]");
  EXPECT_EQ(cache.self_kv.length, 0);  // nothing was appended
}

}  // namespace transformer_decoder_layer_test
