#include "tessera/nn/transformer_decoder_layer.hpp"

#include <gtest/gtest.h>

#include "transformer_test_util.hpp"

namespace {

using tessera::Index;
using tessera::Mask;
using tessera::Tensor;
using tessera::nn::TransformerDecoderLayer;

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
                           tessera::ShapeError, "'key'", "[2, 4, 6]", "[2, 4, 8]");
  Tensor<bool, 2> bad_mask(3, 5);
  TESSERA_EXPECT_THROW_MSG(layer.forward(Tensor<T, 3>(2, 3, 8), Tensor<T, 3>(2, 4, 8),
                                         {.memory_mask = Mask::blocked(bad_mask)}),
                           tessera::ShapeError, "'attn_mask'", "[3, 5]", "[3, 4]");
}

}  // namespace
