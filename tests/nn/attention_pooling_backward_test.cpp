// nn::AttentionPooling's training forward and backward: central differences in double for h and
// every parameter, with and without a padding mask (a fully padded sequence too) and with a
// gradient of the weights; float against double, accumulation and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "backward_test_util.hpp"
#include "tessera/nn/attention_pooling.hpp"

namespace tessera::nn {
namespace attention_pooling_backward_test {

using test::random_tensor;

TEST(AttentionPoolingBackward, MatchesCentralDifferencesInDouble) {
  constexpr Index B = 3, L = 5, D = 4;
  Tensor<bool, 2> pad(Shape<2>{B, L});
  for (Index t = 3; t < L; ++t) pad(0, t) = true;  // sequence 0: 3 steps
  for (Index t = 0; t < L; ++t) pad(2, t) = true;  // sequence 2: all padding
  for (bool masked : {false, true})
    for (bool with_weights_grad : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "masked " << masked << " weights' gradient " << with_weights_grad);
      AttentionPooling<double> m({.input_dim = D, .attention_dim = 6, .seed = 2});
      m.proj.bias.value.setRandom(8, -0.5, 0.5);
      auto h = random_tensor<3>({B, L, D}, 1);
      AttentionPoolingForwardOptions fo;
      if (masked) fo.mask = Mask::blocked(pad);
      const auto f = m.forward_train(h, fo);
      const auto plain = m.forward(h, fo);
      EXPECT_TRUE(test::same_bits(f.output.context, plain.context));
      EXPECT_TRUE(test::same_bits(f.output.weights, plain.weights));
      const auto w = random_tensor<2>({B, D}, 4);
      const auto ww = random_tensor<2>({B, L}, 5);
      m.zero_grad();
      const auto dh =
          with_weights_grad ? m.backward(f.context, w, cview(ww)) : m.backward(f.context, w);
      ASSERT_EQ(dh.shape(), h.shape());
      const auto loss = [&] {
        const auto r = m.forward(h, fo);
        return test::weighted_sum(r.context, w) +
               (with_weights_grad ? test::weighted_sum(r.weights, ww) : 0.0);
      };
      test::expect_gradient("h", h.data(), dh.data(), h.size(), loss, {.max_entries = 1000});
      test::expect_parameter_gradients(m, loss);
      if (masked) {
        for (Index i = 0; i < L * D; ++i) EXPECT_EQ(dh[2].data()[i], 0.0);
      }
    }
}

TEST(AttentionPoolingBackward, FloatAgreesWithDoubleAndAccumulates) {
  const AttentionPoolingOptions o{.input_dim = 24, .attention_dim = 16, .seed = 4};
  AttentionPooling<float> mf(o);
  AttentionPooling<double> md(o);
  test::copy_parameters(mf, md);
  const auto hd = random_tensor<3>({4, 13, 24}, 1);
  const auto gd = random_tensor<2>({4, 24}, 2);
  const auto hf = test::cast_to<float>(hd);
  const auto gf = test::cast_to<float>(gd);
  const auto ff = mf.forward_train(hf);
  const auto fd = md.forward_train(hd);
  const auto dhf = mf.backward(ff.context, gf);
  const auto dhd = md.backward(fd.context, gd);
  test::expect_close_scaled("dh", dhf, dhd, 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
  std::map<std::string, Eigen::VectorXf> once;
  mf.for_each_parameter(
      [&](const std::string& name, const auto& p) { once[name] = test::owned_vector(p.grad); });
  const auto dhf2 = mf.backward(ff.context, gf);
  EXPECT_TRUE(test::same_bits(dhf, dhf2));
  mf.for_each_parameter([&](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i)
      EXPECT_NEAR(p.grad.data()[i], 2 * once[name](i), 1e-6 * (1 + std::fabs(2 * once[name](i))))
          << name;
  });
}

TEST(AttentionPoolingBackward, BadArgumentsAreNamedErrors) {
  AttentionPooling<float> m({.input_dim = 4, .attention_dim = 3});
  Tensor<float, 3> h(Shape<3>{2, 5, 4}), h3(Shape<3>{2, 5, 3});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(h3), ShapeError,
                           "tessera::nn::AttentionPooling::forward_train", "'h'", "[2, 5, 3]");
  Tensor<bool, 2> bad_mask(Shape<2>{2, 4});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(h, {.mask = Mask::blocked(bad_mask)}), ShapeError,
                           "tessera::nn::AttentionPooling::forward_train", "'mask'", "[2, 4]");
  const auto f = m.forward_train(h);
  Tensor<float, 2> g(Shape<2>{2, 4}), g3(Shape<2>{2, 3}), gw(Shape<2>{2, 4});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g3), ShapeError,
                           "tessera::nn::AttentionPooling::backward", "'grad_output'", "[2, 3]",
                           "[2, 4]");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g, cview(gw)), ShapeError,
                           "tessera::nn::AttentionPooling::backward", "'grad_weights'", "[2, 4]",
                           "[2, 5]");
  AttentionPooling<float> other({.input_dim = 3, .attention_dim = 3});
  const auto fo = other.forward_train(h3);
  TESSERA_EXPECT_THROW_MSG(m.backward(fo.context, g), ValueError,
                           "tessera::nn::AttentionPooling::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.backward(AttentionPooling<float>::Context{}, g), ValueError,
                           "tessera::nn::AttentionPooling::backward", "'ctx'");
  m.query.value = Tensor<float, 1>(Shape<1>{2});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::AttentionPooling::backward", "'query'", "[2]", "[3]");
}

template <class T>
class AttentionPoolingBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionPoolingBackwardTyped, test::Scalars);

// PyTorch autograd's gradients (tests/fixtures/training/nn_attention_pooling,
// make_nn_backward_fixtures.py), with a padding mask; the loss reads the context vector.
TYPED_TEST(AttentionPoolingBackwardTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  const test::Fixture fx("nn_attention_pooling", "training");
  AttentionPooling<T> m({.input_dim = fx.options.at("input_dim").get<Index>(),
                         .attention_dim = fx.options.at("attention_dim").get<Index>()});
  m.load_state_dict(fx.dict, "module.", /*strict=*/false);
  Tensor<bool, 2> mb;
  Tensor<T, 2> mf;
  const auto mask = fx.mask<T, 2>("mask", mb, mf);
  ASSERT_TRUE(mask.has_value());
  const auto f = m.forward_train(fx.input<T, 3>("h"), {.mask = mask});
  test::expect_tensor_near(f.output.context, fx.expected<T, 2>("output"), test::parity_tol<T>(),
                           "output");
  m.zero_grad();
  const auto dh = m.backward(f.context, fx.input<T, 2>("grad_output"));
  test::expect_tensor_near(dh, fx.expected<T, 3>("grad.h"), test::parity_tol<T>(), "grad.h");
  test::expect_fixture_parameter_grads<T>(m, fx, "nn_attention_pooling");
}

}  // namespace attention_pooling_backward_test
}  // namespace tessera::nn
