// Training forward and backward of fusion::LateFusion: central differences in double for every
// input and parameter (cls and mean pooling; mean, weighted_sum and concat combinations; with and
// without gradients of the pooled features; a padded modality), float against double,
// accumulation, a context that owns its masks, errors.
#include "tessera/fusion/late_fusion.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nn/backward_test_util.hpp"

namespace tessera::fusion {
namespace late_fusion_backward_test {

using test::random_tensor;

LateFusionOptions small_options(Pooling pooling, Combine combine, bool norm_first = false) {
  return {.encoder = {.layer = {.d_model = 8,
                                .nhead = 2,
                                .dim_feedforward = 12,
                                .activation = Activation::gelu,
                                .norm_first = norm_first,
                                .seed = 3},
                      .num_layers = 2,
                      .final_norm = true},
          .num_modalities = 2,
          .pooling = pooling,
          .combine = combine,
          .output_dim = 6,
          .seed = 5};
}

// Random LayerNorm weights and biases, attention biases and fusion logits, so that no parameter
// is a plain 1 or 0 whose gradient errors could hide.
template <class M>
void randomize_affine(M& m) {
  std::uint64_t seed = 100;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("norm") != std::string::npos || name.find("bias") != std::string::npos ||
        name == "fusion_weights")
      p.value.setRandom(seed++, 0.5, 1.5);
  });
}

struct Case {
  Pooling pooling;
  Combine combine;
  bool norm_first;
  bool grad_pooled;
};

TEST(LateFusionBackward, MatchesCentralDifferencesInDouble) {
  const test::OneThread one_thread;
  for (const Case c : {Case{Pooling::cls, Combine::weighted_sum, false, false},
                       Case{Pooling::mean, Combine::concat, true, false},
                       Case{Pooling::mean, Combine::mean, false, true},
                       Case{Pooling::cls, Combine::concat, false, true},
                       Case{Pooling::mean, Combine::weighted_sum, true, true}}) {
    SCOPED_TRACE("pooling " + std::to_string(int(c.pooling)) + ", combine " +
                 std::to_string(int(c.combine)) + (c.norm_first ? ", pre-norm" : ", post-norm") +
                 (c.grad_pooled ? ", with grad_pooled" : ""));
    LateFusion<double> m(small_options(c.pooling, c.combine, c.norm_first));
    randomize_affine(m);
    auto x0 = random_tensor<3>({2, 3, 8}, 1);
    auto x1 = random_tensor<3>({2, 4, 8}, 2);
    // batch 1 of modality 1: two padded tokens; modality 0 unpadded
    Tensor<bool, 2> pad{{false, false, false, false}, {false, false, true, true}};
    const KeyPaddingMasks masks{std::nullopt, Mask::blocked(pad)};
    const auto f = m.forward_train({x0, x1}, masks);
    const auto ref = m.forward({x0, x1}, masks);
    test::expect_close_scaled("fused", f.output.fused, ref.fused, 1e-13);
    ASSERT_EQ(f.output.pooled.size(), 2u);
    for (int k = 0; k < 2; ++k)
      test::expect_close_scaled("pooled", f.output.pooled[k], ref.pooled[k], 1e-13);
    const auto w = random_tensor<2>({2, m.output_dim()}, 3);
    const auto wp0 = random_tensor<2>({2, 8}, 4), wp1 = random_tensor<2>({2, 8}, 5);
    m.zero_grad();
    const auto g = c.grad_pooled ? m.backward(f.context, w, {wp0, wp1}) : m.backward(f.context, w);
    const auto loss = [&] {
      const auto y = m.forward({x0, x1}, masks);
      double l = test::weighted_sum(y.fused, w);
      if (c.grad_pooled)
        l += test::weighted_sum(y.pooled[0], wp0) + test::weighted_sum(y.pooled[1], wp1);
      return l;
    };
    test::expect_gradient("inputs[0]", x0.data(), g.inputs[0].data(), x0.size(), loss);
    test::expect_gradient("inputs[1]", x1.data(), g.inputs[1].data(), x1.size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
}

TEST(LateFusionBackward, FloatAgreesWithDouble) {
  for (const Combine combine : {Combine::weighted_sum, Combine::concat}) {
    LateFusion<float> mf(small_options(Pooling::mean, combine));
    LateFusion<double> md(small_options(Pooling::mean, combine));
    randomize_affine(mf);
    test::copy_parameters(mf, md);
    const auto x0 = random_tensor<3>({2, 5, 8}, 1), x1 = random_tensor<3>({2, 6, 8}, 2);
    const auto w = random_tensor<2>({2, md.output_dim()}, 3);
    const auto x0f = test::cast_to<float>(x0), x1f = test::cast_to<float>(x1);
    Tensor<bool, 2> pad{{false, false, false, false, true}, {false, true, true, true, true}};
    const KeyPaddingMasks masks{Mask::blocked(pad), std::nullopt};
    auto ff = mf.forward_train({x0f, x1f}, masks);
    auto fd = md.forward_train({x0, x1}, masks);
    test::expect_close_scaled("fused", ff.output.fused, fd.output.fused, 1e-5);
    mf.zero_grad(), md.zero_grad();
    const auto gf = mf.backward(ff.context, test::cast_to<float>(w));
    const auto gd = md.backward(fd.context, w);
    test::expect_close_scaled("inputs[0]", gf.inputs[0], gd.inputs[0], 1e-5);
    test::expect_close_scaled("inputs[1]", gf.inputs[1], gd.inputs[1], 1e-5);
    test::expect_parameter_grads_close(mf, md, 1e-5);
  }
}

TEST(LateFusionBackward, AccumulatesAndTheContextOwnsItsMasks) {
  LateFusion<double> m(small_options(Pooling::mean, Combine::weighted_sum, true));
  randomize_affine(m);
  const auto x0 = random_tensor<3>({2, 3, 8}, 1), x1 = random_tensor<3>({2, 2, 8}, 2);
  const auto w = random_tensor<2>({2, 8}, 3);
  Tensor<bool, 2> pad{{false, false, true}, {false, true, true}};
  const auto f = m.forward_train({x0, x1}, {Mask::blocked(pad), std::nullopt});
  m.zero_grad();
  const auto g1 = m.backward(f.context, w);
  std::map<std::string, Tensor<double, 1>> once;
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    once[name] = Tensor<double, 1>(Shape<1>{p.grad.size()});
    std::copy_n(p.grad.data(), p.grad.size(), once[name].data());
  });
  pad.setZero();  // the caller's mask changes after the forward: backward must not see it
  const auto g2 = m.backward(f.context, w);
  EXPECT_TRUE(test::same_bits(g1.inputs[0], g2.inputs[0]));
  EXPECT_TRUE(test::same_bits(g1.inputs[1], g2.inputs[1]));
  // the padded tokens of modality 0 are not pooled: the mean reads none of them
  for (Index e = 0; e < 8; ++e) EXPECT_NE(g1.inputs[0](1, 0, e), 0.0);
  // Twice the first gradient, to rounding: a bias gradient sums rows onto what is there.
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i) {
      const double twice = 2 * once[name].data()[i];
      ASSERT_NEAR(p.grad.data()[i], twice, 1e-12 * std::max(1.0, std::fabs(twice)))
          << name << "[" << i << "]";
    }
  });
}

TEST(LateFusionBackward, BadArgumentsAreNamedErrors) {
  LateFusion<float> m(small_options(Pooling::cls, Combine::concat));
  Tensor<float, 3> x0(Shape<3>{1, 2, 8}), x1(Shape<3>{1, 3, 8}), empty(Shape<3>{1, 0, 8});
  const auto f = m.forward_train({x0, x1});
  Tensor<float, 2> g(Shape<2>{1, 6}), g_bad(Shape<2>{1, 8}), gp(Shape<2>{1, 8}),
      gp_bad(Shape<2>{2, 8});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g_bad), ShapeError,
                           "tessera::fusion::LateFusion::backward", "'grad_fused'", "[1, 8]",
                           "[1, 6]");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g, {gp}), ValueError,
                           "tessera::fusion::LateFusion::backward", "'grad_pooled'", "1", "2");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g, {gp, gp_bad}), ShapeError,
                           "tessera::fusion::LateFusion::backward", "'grad_pooled[1]'", "[2, 8]",
                           "[1, 8]");
  LateFusion<float> mean(small_options(Pooling::mean, Combine::concat));
  TESSERA_EXPECT_THROW_MSG(mean.backward(f.context, g), ValueError,
                           "tessera::fusion::LateFusion::backward", "'ctx'");
  LateFusion<float> ws(small_options(Pooling::cls, Combine::weighted_sum));
  TESSERA_EXPECT_THROW_MSG(ws.backward(f.context, gp), ValueError,
                           "tessera::fusion::LateFusion::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.forward_train({x0, empty}), ShapeError,
                           "tessera::fusion::LateFusion::forward_train", "'inputs[1]'",
                           "at least one token");
  m.encoders.pop_back();
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ValueError,
                           "tessera::fusion::LateFusion::backward", "encoders");
}

}  // namespace late_fusion_backward_test
}  // namespace tessera::fusion
