// Training forward and backward of the transformer layers and stacks: central differences in
// double (post- and pre-norm, masks, causal), PyTorch autograd fixtures in float and double,
// float against double, errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "transformer_test_util.hpp"

namespace tessera::nn {
namespace transformer_backward_test {

using test::random_tensor;

TransformerLayerOptions small_layer(bool norm_first, Activation act, std::uint64_t seed) {
  return {.d_model = 8,
          .nhead = 2,
          .dim_feedforward = 12,
          .activation = act,
          .norm_first = norm_first,
          .seed = seed};
}

// Random LayerNorm weights and biases and attention biases, so that no parameter is a plain 1
// or 0 whose gradient errors could hide.
template <class M>
void randomize_affine(M& m) {
  std::uint64_t seed = 100;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("norm") != std::string::npos || name.find("bias") != std::string::npos)
      p.value.setRandom(seed++, 0.5, 1.5);
  });
}

TEST(TransformerEncoderLayerBackward, MatchesCentralDifferencesInDouble) {
  for (bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerEncoderLayer<double> m(small_layer(norm_first, Activation::gelu, 3));
    randomize_affine(m);
    auto x = random_tensor<3>({2, 5, 8}, 1);
    Tensor<bool, 2> pad{{false, false, false, false, false}, {false, false, false, true, true}};
    const TransformerEncoderLayerForwardOptions fo{.src_key_padding_mask = Mask::blocked(pad),
                                                   .is_causal = norm_first};
    const auto f = m.forward_train(x, fo);
    test::expect_close_scaled("output", f.output, m.forward(x, fo), 1e-13);
    const auto w = random_tensor<3>({2, 5, 8}, 2);
    m.zero_grad();
    const auto dx = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(x, fo), w); };
    test::expect_gradient("src", x.data(), dx.data(), x.size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
}

TEST(TransformerDecoderLayerBackward, MatchesCentralDifferencesInDouble) {
  for (bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    TransformerDecoderLayer<double> m(small_layer(norm_first, Activation::relu, 4));
    randomize_affine(m);
    auto tgt = random_tensor<3>({2, 4, 8}, 1);
    auto mem = random_tensor<3>({2, 6, 8}, 2);
    Tensor<bool, 2> pad{{false, false, false, false, false, false},
                        {false, false, false, false, true, true}};
    const TransformerDecoderLayerForwardOptions fo{.memory_key_padding_mask = Mask::blocked(pad),
                                                   .tgt_is_causal = true};
    const auto f = m.forward_train(tgt, mem, fo);
    test::expect_close_scaled("output", f.output, m.forward(tgt, mem, fo), 1e-13);
    const auto w = random_tensor<3>({2, 4, 8}, 3);
    m.zero_grad();
    const auto g = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(m.forward(tgt, mem, fo), w); };
    test::expect_gradient("tgt", tgt.data(), g.tgt.data(), tgt.size(), loss);
    test::expect_gradient("memory", mem.data(), g.memory.data(), mem.size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
}

TEST(TransformerStackBackward, MatchesCentralDifferencesInDouble) {
  TransformerEncoder<double> enc(
      {.layer = small_layer(true, Activation::gelu, 5), .num_layers = 2, .final_norm = true});
  randomize_affine(enc);
  auto x = random_tensor<3>({2, 3, 8}, 1);
  auto f = enc.forward_train(x);
  const auto w = random_tensor<3>({2, 3, 8}, 2);
  enc.zero_grad();
  const auto dx = enc.backward(f.context, w);
  const auto enc_loss = [&] { return test::weighted_sum(enc.forward(x), w); };
  test::expect_gradient("src", x.data(), dx.data(), x.size(), enc_loss);
  test::expect_parameter_gradients(enc, enc_loss);

  TransformerDecoder<double> dec(
      {.layer = small_layer(false, Activation::relu, 6), .num_layers = 2, .final_norm = true});
  randomize_affine(dec);
  auto tgt = random_tensor<3>({2, 3, 8}, 3);
  auto mem = random_tensor<3>({2, 4, 8}, 4);
  auto fd = dec.forward_train(tgt, mem, {.tgt_is_causal = true});
  dec.zero_grad();
  const auto g = dec.backward(fd.context, w);
  const auto dec_loss = [&] {
    return test::weighted_sum(dec.forward(tgt, mem, {.tgt_is_causal = true}), w);
  };
  test::expect_gradient("tgt", tgt.data(), g.tgt.data(), tgt.size(), dec_loss);
  test::expect_gradient("memory", mem.data(), g.memory.data(), mem.size(), dec_loss);
  test::expect_parameter_gradients(dec, dec_loss);
}

template <class T>
class TransformerBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerBackwardTyped, test::Scalars);

// PyTorch autograd (tests/fixtures/training, make_training_fixtures.py).
TYPED_TEST(TransformerBackwardTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  for (const std::string name :
       {"encoder_layer_post_norm_relu_padding", "encoder_layer_pre_norm_gelu_causal"}) {
    SCOPED_TRACE(name);
    const test::Fixture fx(name, "training");
    TransformerEncoderLayer<T> m(test::layer_options_from(fx.options));
    m.load_state_dict(fx.dict, "module.", false);
    test::FixtureMasks<T> masks;
    auto fo = test::encoder_forward_from(fx, masks);
    fo.is_causal = fx.forward.value("is_causal", false);
    const auto f = m.forward_train(fx.input<T, 3>("src"), fo);
    test::expect_tensor_near(f.output, fx.expected<T, 3>("output"), test::parity_tol<T>(), name);
    m.zero_grad();
    const auto dx = m.backward(f.context, fx.input<T, 3>("grad_output"));
    test::expect_tensor_near(dx, fx.expected<T, 3>("grad.src"), test::parity_tol<T>(), name);
    test::expect_fixture_parameter_grads<T>(m, fx, name);
  }
  {
    const std::string name = "encoder_final_norm_padding";
    SCOPED_TRACE(name);
    const test::Fixture fx(name, "training");
    TransformerEncoder<T> m({.layer = test::layer_options_from(fx.options.at("layer")),
                             .num_layers = fx.options.at("num_layers").get<Index>(),
                             .final_norm = fx.options.at("final_norm").get<bool>()});
    m.load_state_dict(fx.dict, "module.", false);
    test::FixtureMasks<T> masks;
    const auto fo = test::encoder_forward_from(fx, masks);
    const auto f = m.forward_train(fx.input<T, 3>("src"), fo);
    test::expect_tensor_near(f.output, fx.expected<T, 3>("output"), test::parity_tol<T>(), name);
    m.zero_grad();
    const auto dx = m.backward(f.context, fx.input<T, 3>("grad_output"));
    test::expect_tensor_near(dx, fx.expected<T, 3>("grad.src"), test::parity_tol<T>(), name);
    test::expect_fixture_parameter_grads<T>(m, fx, name);
  }
  for (const std::string name : {"decoder_layer_post_norm_relu_causal_padding",
                                 "decoder_layer_pre_norm_gelu_causal_padding"}) {
    SCOPED_TRACE(name);
    const test::Fixture fx(name, "training");
    TransformerDecoderLayer<T> m(test::layer_options_from(fx.options));
    m.load_state_dict(fx.dict, "module.", false);
    test::FixtureMasks<T> masks;
    auto fo = test::decoder_forward_from(fx, masks);
    fo.tgt_is_causal = fx.forward.value("tgt_is_causal", false);
    const auto f = m.forward_train(fx.input<T, 3>("tgt"), fx.input<T, 3>("memory"), fo);
    test::expect_tensor_near(f.output, fx.expected<T, 3>("output"), test::parity_tol<T>(), name);
    m.zero_grad();
    const auto g = m.backward(f.context, fx.input<T, 3>("grad_output"));
    test::expect_tensor_near(g.tgt, fx.expected<T, 3>("grad.tgt"), test::parity_tol<T>(), name);
    test::expect_tensor_near(g.memory, fx.expected<T, 3>("grad.memory"), test::parity_tol<T>(),
                             name);
    test::expect_fixture_parameter_grads<T>(m, fx, name);
  }
}

TEST(TransformerBackward, BadArgumentsAreNamedErrors) {
  TransformerEncoderLayer<float> enc(small_layer(false, Activation::relu, 1));
  Tensor<float, 3> x(Shape<3>{1, 3, 8}), g(Shape<3>{1, 4, 8});
  const auto f = enc.forward_train(x);
  TESSERA_EXPECT_THROW_MSG(enc.backward(f.context, g), ShapeError,
                           "tessera::nn::TransformerEncoderLayer::backward", "'grad_output'",
                           "[1, 4, 8]", "[1, 3, 8]");
  TransformerEncoderLayer<float> pre(small_layer(true, Activation::relu, 1));
  TESSERA_EXPECT_THROW_MSG(pre.backward(f.context, x), ValueError,
                           "tessera::nn::TransformerEncoderLayer::backward", "'ctx'");
  TransformerEncoder<float> stack(
      {.layer = small_layer(false, Activation::relu, 1), .num_layers = 2});
  const auto fs = stack.forward_train(x);
  stack.layers.pop_back();
  TESSERA_EXPECT_THROW_MSG(stack.backward(fs.context, x), ValueError,
                           "tessera::nn::TransformerEncoder::backward", "layers");
  TransformerDecoderLayer<float> dec(small_layer(false, Activation::relu, 1));
  Tensor<float, 3> mem(Shape<3>{1, 2, 8});
  const auto fd = dec.forward_train(x, mem);
  TESSERA_EXPECT_THROW_MSG(dec.backward(fd.context, g), ShapeError,
                           "tessera::nn::TransformerDecoderLayer::backward", "'grad_output'");
}

}  // namespace transformer_backward_test
}  // namespace tessera::nn
