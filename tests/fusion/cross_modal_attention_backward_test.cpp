// Training forward and backward of fusion::CrossModalAttention: central differences in double
// for both inputs and every parameter (post- and pre-norm, equal and different widths, padding on
// both sides, a batch element whose partner is all padding, a partner with no tokens), float
// against double, accumulation, a context that owns its masks, errors.
#include "tessera/fusion/cross_modal_attention.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>

#include "nn/backward_test_util.hpp"

namespace tessera::fusion {
namespace cross_modal_attention_backward_test {

using test::random_tensor;

CrossModalAttentionOptions small_options(bool norm_first, Index embed_dim_b) {
  return {.embed_dim = 8,
          .embed_dim_b = embed_dim_b,
          .num_heads = 2,
          .norm_first = norm_first,
          .seed = 3};
}

// Random LayerNorm weights and biases and attention biases, so that no parameter is a plain 1 or
// 0 whose gradient errors could hide.
template <class M>
void randomize_affine(M& m) {
  std::uint64_t seed = 100;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("norm") != std::string::npos || name.find("bias") != std::string::npos)
      p.value.setRandom(seed++, 0.5, 1.5);
  });
}

TEST(CrossModalAttentionBackward, MatchesCentralDifferencesInDouble) {
  const test::OneThread one_thread;
  for (bool norm_first : {false, true})
    for (Index eb : {Index(8), Index(4)}) {
      SCOPED_TRACE(std::string(norm_first ? "pre-norm" : "post-norm") + ", E_b " +
                   std::to_string(eb));
      CrossModalAttention<double> m(small_options(norm_first, eb));
      randomize_affine(m);
      auto a = random_tensor<3>({3, 3, 8}, 1);
      auto b = random_tensor<3>({3, 4, eb}, 2);
      // a: batch 1 has a padded token; b: batch 1 two padded tokens, batch 2 all padding (a's
      // attention term is zero there)
      Tensor<bool, 2> pad_a{{false, false, false}, {false, false, true}, {false, false, false}};
      Tensor<bool, 2> pad_b{
          {false, false, false, false}, {false, true, false, true}, {true, true, true, true}};
      const CrossModalAttentionForwardOptions fo{.key_padding_mask_a = Mask::blocked(pad_a),
                                                 .key_padding_mask_b = Mask::blocked(pad_b)};
      const auto f = m.forward_train(a, b, fo);
      const auto ref = m.forward(a, b, fo);
      test::expect_close_scaled("a'", f.output.a, ref.a, 1e-13);
      test::expect_close_scaled("b'", f.output.b, ref.b, 1e-13);
      EXPECT_FALSE(f.output.weights_a || f.output.weights_b);
      const auto wa = random_tensor<3>({3, 3, 8}, 3), wb = random_tensor<3>({3, 4, eb}, 4);
      m.zero_grad();
      const auto g = m.backward(f.context, wa, wb);
      const auto loss = [&] {
        const auto y = m.forward(a, b, fo);
        return test::weighted_sum(y.a, wa) + test::weighted_sum(y.b, wb);
      };
      test::expect_gradient("a", a.data(), g.a.data(), a.size(), loss);
      test::expect_gradient("b", b.data(), g.b.data(), b.size(), loss);
      test::expect_parameter_gradients(m, loss);
    }
}

TEST(CrossModalAttentionBackward, APartnerWithoutTokensPassesOnlyTheResidual) {
  const test::OneThread one_thread;
  for (bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    CrossModalAttention<double> m(small_options(norm_first, 4));
    randomize_affine(m);
    auto a = random_tensor<3>({2, 3, 8}, 1);
    auto b = random_tensor<3>({2, 0, 4}, 2);
    const auto f = m.forward_train(a, b);
    test::expect_close_scaled("a'", f.output.a, m.forward(a, b).a, 1e-13);
    const auto wa = random_tensor<3>({2, 3, 8}, 3);
    const Tensor<double, 3> wb(Shape<3>{2, 0, 4});
    m.zero_grad();
    const auto g = m.backward(f.context, wa, wb);
    EXPECT_EQ(g.b.shape(), b.shape());
    const auto loss = [&] { return test::weighted_sum(m.forward(a, b).a, wa); };
    test::expect_gradient("a", a.data(), g.a.data(), a.size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
}

TEST(CrossModalAttentionBackward, FloatAgreesWithDouble) {
  for (bool norm_first : {false, true}) {
    CrossModalAttention<float> mf(small_options(norm_first, 4));
    CrossModalAttention<double> md(small_options(norm_first, 4));
    randomize_affine(mf);
    test::copy_parameters(mf, md);
    const auto a = random_tensor<3>({2, 9, 8}, 1), b = random_tensor<3>({2, 7, 4}, 2);
    const auto wa = random_tensor<3>({2, 9, 8}, 3), wb = random_tensor<3>({2, 7, 4}, 4);
    Tensor<bool, 2> pad_b{{false, false, false, false, false, true, true},
                          {false, true, true, true, true, true, true}};
    const CrossModalAttentionForwardOptions fo{.key_padding_mask_b = Mask::blocked(pad_b)};
    auto ff = mf.forward_train(test::cast_to<float>(a), test::cast_to<float>(b), fo);
    auto fd = md.forward_train(a, b, fo);
    test::expect_close_scaled("a'", ff.output.a, fd.output.a, 1e-5);
    test::expect_close_scaled("b'", ff.output.b, fd.output.b, 1e-5);
    mf.zero_grad(), md.zero_grad();
    const auto gf = mf.backward(ff.context, test::cast_to<float>(wa), test::cast_to<float>(wb));
    const auto gd = md.backward(fd.context, wa, wb);
    test::expect_close_scaled("a", gf.a, gd.a, 1e-5);
    test::expect_close_scaled("b", gf.b, gd.b, 1e-5);
    test::expect_parameter_grads_close(mf, md, 1e-5);
  }
}

TEST(CrossModalAttentionBackward, AccumulatesAndTheContextOwnsItsMasks) {
  CrossModalAttention<double> m(small_options(false, 8));
  randomize_affine(m);
  const auto a = random_tensor<3>({2, 3, 8}, 1), b = random_tensor<3>({2, 2, 8}, 2);
  const auto wa = random_tensor<3>({2, 3, 8}, 3), wb = random_tensor<3>({2, 2, 8}, 4);
  Tensor<bool, 2> pad_a{{false, false, true}, {false, true, true}};
  Tensor<bool, 2> pad_b{{false, true}, {true, true}};
  const auto f = m.forward_train(
      a, b,
      {.key_padding_mask_a = Mask::blocked(pad_a), .key_padding_mask_b = Mask::blocked(pad_b)});
  m.zero_grad();
  const auto g1 = m.backward(f.context, wa, wb);
  std::map<std::string, Tensor<double, 1>> once;
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    once[name] = Tensor<double, 1>(Shape<1>{p.grad.size()});
    std::copy_n(p.grad.data(), p.grad.size(), once[name].data());
  });
  pad_a.setZero();  // the caller's masks change after the forward: backward must not see them
  pad_b.setZero();
  const auto g2 = m.backward(f.context, wa, wb);
  EXPECT_TRUE(test::same_bits(g1.a, g2.a));
  EXPECT_TRUE(test::same_bits(g1.b, g2.b));
  // Twice the first gradient, to rounding: a bias gradient sums rows onto what is there.
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i) {
      const double twice = 2 * once[name].data()[i];
      ASSERT_NEAR(p.grad.data()[i], twice, 1e-12 * std::max(1.0, std::fabs(twice)))
          << name << "[" << i << "]";
    }
  });
}

TEST(CrossModalAttentionBackward, BadArgumentsAreNamedErrors) {
  CrossModalAttention<float> m(small_options(false, 4));
  Tensor<float, 3> a(Shape<3>{1, 3, 8}), b(Shape<3>{1, 2, 4}), bad(Shape<3>{1, 2, 8});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(a, b, {.need_weights = true}), ValueError,
                           "tessera::fusion::CrossModalAttention::forward_train", "'need_weights'");
  TESSERA_EXPECT_THROW_MSG(m.forward_train(a, bad), ShapeError,
                           "tessera::fusion::CrossModalAttention::forward_train", "'b'");
  const auto f = m.forward_train(a, b);
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, bad, b), ShapeError,
                           "tessera::fusion::CrossModalAttention::backward", "'grad_a'",
                           "[1, 2, 8]", "[1, 3, 8]");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, a, bad), ShapeError,
                           "tessera::fusion::CrossModalAttention::backward", "'grad_b'",
                           "[1, 2, 8]", "[1, 2, 4]");
  CrossModalAttention<float> pre(small_options(true, 4));
  TESSERA_EXPECT_THROW_MSG(pre.backward(f.context, a, b), ValueError,
                           "tessera::fusion::CrossModalAttention::backward", "'ctx'");
  CrossModalAttention<float> wide(small_options(false, 8));
  TESSERA_EXPECT_THROW_MSG(wide.backward(f.context, a, b), ValueError,
                           "tessera::fusion::CrossModalAttention::backward", "'ctx'");
}

}  // namespace cross_modal_attention_backward_test
}  // namespace tessera::fusion
