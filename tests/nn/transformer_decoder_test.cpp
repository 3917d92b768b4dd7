#include "tessera/nn/transformer_decoder.hpp"

#include <gtest/gtest.h>

#include "transformer_test_util.hpp"

namespace transformer_decoder_test {

using tessera::Index;
using tessera::Tensor;
using tessera::nn::TransformerDecoder;

template <class T>
class TransformerDecoderTest : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerDecoderTest, tessera::test::Scalars);

template <class T>
TransformerDecoder<T> decoder_from(const tessera::test::Fixture& fx) {
  TransformerDecoder<T> dec({.layer = tessera::test::layer_options_from(fx.options.at("layer")),
                             .num_layers = fx.options.at("num_layers").get<Index>(),
                             .final_norm = fx.options.at("final_norm").get<bool>()});
  tessera::io::StateDict module_only;
  for (const auto& [key, st] : fx.dict)
    if (key.rfind("module.", 0) == 0) module_only.insert(key, st);
  dec.load_state_dict(module_only, "module.");
  return dec;
}

TYPED_TEST(TransformerDecoderTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("decoder_");
  std::size_t stacks = 0;
  for (const auto& name : names) {
    if (name.rfind("decoder_layer_", 0) == 0) continue;
    ++stacks;
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    const auto dec = decoder_from<T>(fx);
    tessera::test::FixtureMasks<T> masks;
    const auto fo = tessera::test::decoder_forward_from(fx, masks);
    const auto out = dec.forward(fx.input<T, 3>("tgt"), fx.input<T, 3>("memory"), fo);
    tessera::test::expect_tensor_near(out, fx.expected<T, 3>("output"),
                                      tessera::test::parity_tol<T>(), name);
  }
  EXPECT_GE(stacks, 2u) << "PyTorch fixtures for TransformerDecoder are missing";
}

// Cached incremental decoding equals the full causal forward, on PyTorch's weights and outputs.
TYPED_TEST(TransformerDecoderTest, CachedGreedyStepsEqualFullForward) {
  using T = TypeParam;
  const tessera::test::Fixture fx("decoder_greedy");
  const auto dec = decoder_from<T>(fx);
  const auto tgt = fx.input<T, 3>("tgt");
  const auto memory = fx.input<T, 3>("memory");
  const auto expected = fx.expected<T, 3>("output");
  tessera::test::FixtureMasks<T> masks;
  auto fo = tessera::test::decoder_forward_from(fx, masks);
  auto cache = dec.make_cache(memory, fo.memory_key_padding_mask);
  const Index B = tgt.dim(0), L = tgt.dim(1), E = tgt.dim(2);
  Tensor<T, 3> stepped(B, L, E);
  for (Index t = 0; t < L; ++t) {
    Tensor<T, 3> x(B, 1, E);
    for (Index b = 0; b < B; ++b)
      for (Index e = 0; e < E; ++e) x(b, 0, e) = tgt(b, t, e);
    const auto y = dec.step(x, cache);
    EXPECT_EQ(cache.length(), t + 1);
    for (Index b = 0; b < B; ++b)
      for (Index e = 0; e < E; ++e) stepped(b, t, e) = y(b, 0, e);
  }
  tessera::test::expect_tensor_near(stepped, expected, tessera::test::parity_tol<T>(),
                                    "cached steps");
}

TYPED_TEST(TransformerDecoderTest, SquareSubsequentMask) {
  using T = TypeParam;
  const auto m = tessera::nn::generate_square_subsequent_mask<T>(4);
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 4; ++j)
      if (j > i)
        EXPECT_TRUE(std::isinf(m(i, j)) && m(i, j) < 0);
      else
        EXPECT_EQ(m(i, j), T(0));
  TESSERA_EXPECT_THROW_MSG(tessera::nn::generate_square_subsequent_mask<T>(-1), tessera::ValueError,
                           "generate_square_subsequent_mask", "'n' is -1");
}

TYPED_TEST(TransformerDecoderTest, StepRejectsForeignCache) {
  using T = TypeParam;
  TransformerDecoder<T> dec(
      {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16}, .num_layers = 2});
  tessera::nn::DecoderCache<T> empty;
  TESSERA_EXPECT_THROW_MSG(dec.step(Tensor<T, 3>(1, 1, 8), empty), tessera::ValueError,
                           "the cache has 0 layers");
}

TYPED_TEST(TransformerDecoderTest, ForwardIntoEqualsForwardAndRepeatsWithoutAllocating) {
  using T = TypeParam;
  Tensor<T, 3> tgt(2, 5, 8), memory(2, 3, 8);
  tgt.setRandom(41);
  memory.setRandom(42);
  Tensor<bool, 2> mem_pad(2, 3);
  mem_pad(0, 2) = true;
  const tessera::nn::TransformerDecoderLayerForwardOptions fo{
      .memory_key_padding_mask = tessera::Mask::blocked(mem_pad), .tgt_is_causal = true};
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerDecoder<T> dec(
        {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16, .norm_first = norm_first},
         .num_layers = 3,
         .final_norm = true});
    Tensor<T, 3> expected = dec.layers[0].forward(tgt, memory, fo);
    for (std::size_t i = 1; i < dec.layers.size(); ++i)
      expected = dec.layers[i].forward(expected, memory, fo);
    dec.norm.forward_into(expected, expected);
    EXPECT_TRUE(tessera::test::same_bits(dec.forward(tgt, memory, fo), expected));
    tessera::test::expect_into_equals(
        tgt, expected, [&](const auto& in, auto& out) { dec.forward_into(in, memory, out, fo); });
    tessera::test::expect_repeat_allocates_nothing([&] { (void)dec.forward(tgt, memory, fo); });
  }
  TransformerDecoder<T> dec({.layer = {.d_model = 8, .nhead = 2}, .num_layers = 2});
  Tensor<T, 3> bad(2, 5, 4);
  TESSERA_EXPECT_THROW_MSG(dec.forward_into(tgt, memory, bad), tessera::ShapeError,
                           "tessera::nn::TransformerDecoder::forward_into", "'out'", "[2, 5, 4]",
                           "[2, 5, 8]");
  // Every layer after the first reads memory after out was written: they must not overlap.
  Tensor<T, 3> shared(tgt);
  TESSERA_EXPECT_THROW_MSG(dec.forward_into(tgt, shared, shared), tessera::ValueError,
                           "'out' overlaps argument 'memory'");
}

}  // namespace transformer_decoder_test
