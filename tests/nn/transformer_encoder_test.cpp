#include "tessera/nn/transformer_encoder.hpp"

#include <gtest/gtest.h>

#include "transformer_test_util.hpp"

namespace transformer_encoder_test {

using tessera::Tensor;
using tessera::nn::TransformerEncoder;

template <class T>
class TransformerEncoderTest : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerEncoderTest, tessera::test::Scalars);

TYPED_TEST(TransformerEncoderTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("encoder_");
  std::size_t stacks = 0;
  for (const auto& name : names) {
    if (name.rfind("encoder_layer_", 0) == 0) continue;
    ++stacks;
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    TransformerEncoder<T> enc({.layer = tessera::test::layer_options_from(fx.options.at("layer")),
                               .num_layers = fx.options.at("num_layers").get<tessera::Index>(),
                               .final_norm = fx.options.at("final_norm").get<bool>()});
    tessera::io::StateDict module_only;
    for (const auto& [key, st] : fx.dict)
      if (key.rfind("module.", 0) == 0) module_only.insert(key, st);
    enc.load_state_dict(module_only, "module.");  // strict: exactly PyTorch's keys
    tessera::test::FixtureMasks<T> masks;
    const auto out =
        enc.forward(fx.input<T, 3>("src"), tessera::test::encoder_forward_from(fx, masks));
    tessera::test::expect_tensor_near(out, fx.expected<T, 3>("output"),
                                      tessera::test::parity_tol<T>(), name);
  }
  EXPECT_GE(stacks, 2u) << "PyTorch fixtures for TransformerEncoder are missing";
}

TYPED_TEST(TransformerEncoderTest, RejectsZeroLayers) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(
      TransformerEncoder<T>({.layer = {.d_model = 8, .nhead = 2}, .num_layers = 0}),
      tessera::ValueError, "tessera::nn::TransformerEncoder", "num_layers is 0");
}

TYPED_TEST(TransformerEncoderTest, ForwardIntoEqualsForwardAndRepeatsWithoutAllocating) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 6, 8);
  x.setRandom(31);
  Tensor<bool, 2> pad(2, 6);
  pad(1, 5) = true;
  const tessera::nn::TransformerEncoderLayerForwardOptions fo{
      .src_key_padding_mask = tessera::Mask::blocked(pad), .is_causal = true};
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerEncoder<T> enc(
        {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16, .norm_first = norm_first},
         .num_layers = 3,
         .final_norm = true});
    // The layers one after the other, each into a tensor of its own.
    Tensor<T, 3> expected = enc.layers[0].forward(x, fo);
    for (std::size_t i = 1; i < enc.layers.size(); ++i)
      expected = enc.layers[i].forward(expected, fo);
    enc.norm.forward_into(expected, expected);
    EXPECT_TRUE(tessera::test::same_bits(enc.forward(x, fo), expected));
    tessera::test::expect_into_equals(
        x, expected, [&](const auto& in, auto& out) { enc.forward_into(in, out, fo); });
    tessera::test::expect_repeat_allocates_nothing([&] { (void)enc.forward(x, fo); });
  }
  TransformerEncoder<T> enc({.layer = {.d_model = 8, .nhead = 2}, .num_layers = 2});
  Tensor<T, 3> bad(2, 6, 4);
  TESSERA_EXPECT_THROW_MSG(enc.forward_into(x, bad), tessera::ShapeError,
                           "tessera::nn::TransformerEncoder::forward_into", "'out'", "[2, 6, 4]",
                           "[2, 6, 8]");
}

}  // namespace transformer_encoder_test
