#include "tessera/nn/transformer_encoder_layer.hpp"

#include <gtest/gtest.h>

#include <thread>

#include "transformer_test_util.hpp"

namespace transformer_encoder_layer_test {

using tessera::Index;
using tessera::Mask;
using tessera::Tensor;
using tessera::nn::TransformerEncoderLayer;

template <class T>
class TransformerEncoderLayerTest : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerEncoderLayerTest, tessera::test::Scalars);

TYPED_TEST(TransformerEncoderLayerTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("encoder_layer_");
  ASSERT_GE(names.size(), 4u) << "PyTorch fixtures for TransformerEncoderLayer are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    TransformerEncoderLayer<T> layer(tessera::test::layer_options_from(fx.options));
    layer.load_state_dict(fx.dict, "module.", /*strict=*/false);
    tessera::test::FixtureMasks<T> masks;
    const auto fo = tessera::test::encoder_forward_from(fx, masks);
    const auto out = layer.forward(fx.input<T, 3>("src"), fo);
    tessera::test::expect_tensor_near(out, fx.expected<T, 3>("output"),
                                      tessera::test::parity_tol<T>(), name);
  }
}

TYPED_TEST(TransformerEncoderLayerTest, NoBiasHasNoBiasParameters) {
  using T = TypeParam;
  TransformerEncoderLayer<T> layer(
      {.d_model = 8, .nhead = 2, .dim_feedforward = 16, .bias = false});
  for (const auto& key : layer.state_dict().keys())
    EXPECT_EQ(key.find("bias"), std::string::npos) << key;
  TransformerEncoderLayer<T> with({.d_model = 8, .nhead = 2, .dim_feedforward = 16});
  const std::vector<std::string> expected = {"linear1.bias",
                                             "linear1.weight",
                                             "linear2.bias",
                                             "linear2.weight",
                                             "norm1.bias",
                                             "norm1.weight",
                                             "norm2.bias",
                                             "norm2.weight",
                                             "self_attn.in_proj_bias",
                                             "self_attn.in_proj_weight",
                                             "self_attn.out_proj.bias",
                                             "self_attn.out_proj.weight"};
  EXPECT_EQ(with.state_dict().keys(), expected);
  EXPECT_EQ(with.num_parameters(),
            3 * 8 * 8 + 3 * 8 + 8 * 8 + 8 + 16 * 8 + 16 + 8 * 16 + 8 + 4 * 8);
}

TYPED_TEST(TransformerEncoderLayerTest, ConcurrentForwardIsIdentical) {
  using T = TypeParam;
  TransformerEncoderLayer<T> layer({.d_model = 16,
                                    .nhead = 4,
                                    .dim_feedforward = 32,
                                    .activation = tessera::Activation::gelu,
                                    .norm_first = true});
  Tensor<T, 3> x(2, 9, 16);
  x.setRandom(3);
  const auto single = layer.forward(x);
  std::vector<Tensor<T, 3>> outs(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) threads.emplace_back([&, t] { outs[t] = layer.forward(x); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs)
    for (Index i = 0; i < single.size(); ++i) ASSERT_EQ(o.data()[i], single.data()[i]);
}

TYPED_TEST(TransformerEncoderLayerTest, RejectsBadOptionsAndInputs) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(TransformerEncoderLayer<T>({.d_model = 8, .nhead = 3}),
                           tessera::ValueError,
                           "tessera::nn::TransformerEncoderLayer:", "nhead is 3");
  TESSERA_EXPECT_THROW_MSG(TransformerEncoderLayer<T>(
                               {.d_model = 8, .nhead = 2, .activation = tessera::Activation::tanh}),
                           tessera::ValueError, "tessera::nn::TransformerEncoderLayer",
                           "activation is tanh");
  TESSERA_EXPECT_THROW_MSG(
      TransformerEncoderLayer<T>({.d_model = 8, .nhead = 2, .dim_feedforward = 0}),
      tessera::ValueError, "dim_feedforward is 0");
  TransformerEncoderLayer<T> layer({.d_model = 8, .nhead = 2, .dim_feedforward = 16});
  // The errors name the layer's entry point and its arguments, not the attention's.
  TESSERA_EXPECT_THROW_MSG(layer.forward(Tensor<T, 3>(2, 3, 7)), tessera::ShapeError,
                           "tessera::nn::TransformerEncoderLayer::forward",
                           "argument 'src' has shape [2, 3, 7]");
  Tensor<bool, 2> pad(3, 3);
  TESSERA_EXPECT_THROW_MSG(
      layer.forward(Tensor<T, 3>(2, 3, 8), {.src_key_padding_mask = Mask::blocked(pad)}),
      tessera::ShapeError, "tessera::nn::TransformerEncoderLayer::forward",
      "argument 'src_key_padding_mask' has shape [3, 3]", "[2, 3]");
}

TYPED_TEST(TransformerEncoderLayerTest, ForwardIntoEqualsForwardInPlaceToo) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 5, 8);
  x.setRandom(11);
  Tensor<bool, 2> pad(2, 5), causal(5, 5);
  pad(1, 4) = true;
  for (Index i = 0; i < 5; ++i)
    for (Index j = i + 1; j < 5; ++j) causal(i, j) = true;
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerEncoderLayer<T> layer({.d_model = 8,
                                      .nhead = 2,
                                      .dim_feedforward = 16,
                                      .activation = tessera::Activation::gelu,
                                      .norm_first = norm_first,
                                      .seed = 12});
    const tessera::nn::TransformerEncoderLayerForwardOptions fo{
        .src_mask = Mask::blocked(causal), .src_key_padding_mask = Mask::blocked(pad)};
    tessera::test::expect_into_equals(x, layer.forward(x, fo), [&](const auto& in, auto& out) {
      layer.forward_into(in, out, fo);  // out may be src
    });
  }
}

TYPED_TEST(TransformerEncoderLayerTest, RepeatedForwardMakesNoScratchAllocation) {
  using T = TypeParam;
  for (const bool norm_first : {false, true}) {
    TransformerEncoderLayer<T> layer(
        {.d_model = 16, .nhead = 4, .dim_feedforward = 64, .norm_first = norm_first});
    Tensor<T, 3> x(3, 11, 16);
    x.setRandom(13);
    tessera::test::expect_repeat_allocates_nothing([&] { (void)layer.forward(x); });
  }
}

TYPED_TEST(TransformerEncoderLayerTest, ForwardIntoRejectsBadOut) {
  using T = TypeParam;
  TransformerEncoderLayer<T> layer({.d_model = 8, .nhead = 2, .dim_feedforward = 16});
  Tensor<T, 3> x(2, 3, 8), bad(2, 4, 8);
  TESSERA_EXPECT_THROW_MSG(layer.forward_into(x, bad), tessera::ShapeError,
                           "tessera::nn::TransformerEncoderLayer::forward_into", "'out'",
                           "[2, 4, 8]", "[2, 3, 8]");
}

}  // namespace transformer_encoder_layer_test
