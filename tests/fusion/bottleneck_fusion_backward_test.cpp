// Training forward and backward of fusion::BottleneckFusion (MBT): central differences in double
// for every input and parameter, the shared bottleneck included (separate and shared weights,
// fusion from a middle layer, from the first and never, two and three modalities, with and
// without a gradient of the last bottleneck, a padded modality), float against double,
// accumulation, a context that owns its masks, errors.
#include "tessera/fusion/bottleneck_fusion.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nn/backward_test_util.hpp"

namespace tessera::fusion {
namespace bottleneck_fusion_backward_test {

using test::random_tensor;

BottleneckFusionOptions small_options(Index num_modalities, Index num_layers, Index fusion_layer,
                                      Index n_bottlenecks, bool shared_weights, bool norm_first) {
  return {.encoder = {.layer = {.d_model = 8,
                                .nhead = 2,
                                .dim_feedforward = 12,
                                .activation = Activation::gelu,
                                .norm_first = norm_first,
                                .seed = 3},
                      .num_layers = num_layers,
                      .final_norm = true},
          .num_modalities = num_modalities,
          .fusion_layer = fusion_layer,
          .n_bottlenecks = n_bottlenecks,
          .shared_weights = shared_weights,
          .seed = 5};
}

// Random LayerNorm weights and biases, attention biases and bottleneck tokens, so that no
// parameter is a plain 1 or 0 (or a tiny N(0, 0.02)) whose gradient errors could hide.
template <class M>
void randomize_affine(M& m) {
  std::uint64_t seed = 100;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("norm") != std::string::npos || name.find("bias") != std::string::npos ||
        name == "bottleneck")
      p.value.setRandom(seed++, 0.5, 1.5);
  });
}

struct Case {
  Index num_modalities, num_layers, fusion_layer, n_bottlenecks;
  bool shared_weights, norm_first, grad_bottleneck;
};

TEST(BottleneckFusionBackward, MatchesCentralDifferencesInDouble) {
  const test::OneThread one_thread;
  for (const Case c :
       {Case{2, 3, 1, 2, false, false, true}, Case{3, 2, 0, 3, true, true, false},
        Case{2, 2, 2, 2, false, true, true}, Case{2, 2, 0, 0, false, false, false}}) {
    SCOPED_TRACE("modalities " + std::to_string(c.num_modalities) + ", layers " +
                 std::to_string(c.num_layers) + ", fusion_layer " + std::to_string(c.fusion_layer) +
                 ", bottlenecks " + std::to_string(c.n_bottlenecks) +
                 (c.shared_weights ? ", shared" : ", separate") +
                 (c.norm_first ? ", pre-norm" : ", post-norm") +
                 (c.grad_bottleneck ? ", with grad_bottleneck" : ""));
    BottleneckFusion<double> m(small_options(c.num_modalities, c.num_layers, c.fusion_layer,
                                             c.n_bottlenecks, c.shared_weights, c.norm_first));
    randomize_affine(m);
    const Index M = c.num_modalities, nb = c.n_bottlenecks;
    std::vector<Tensor<double, 3>> xs, ws;
    for (Index k = 0; k < M; ++k) {
      xs.push_back(random_tensor<3>({2, 2 + k, 8}, 1 + k));
      ws.push_back(random_tensor<3>({2, 2 + k, 8}, 11 + k));
    }
    const auto wz = random_tensor<3>({2, nb, 8}, 21);
    // modality 1, batch 1: its last token is padding
    Tensor<bool, 2> pad{{false, false, false}, {false, false, true}};
    KeyPaddingMasks masks(static_cast<std::size_t>(M));
    masks[1] = Mask::blocked(pad);
    const TokenSequences<double> inputs(xs.begin(), xs.end());
    const auto f = m.forward_train(inputs, masks);
    const auto ref = m.forward(inputs, masks);
    for (Index k = 0; k < M; ++k)
      test::expect_close_scaled("tokens", f.output.tokens[k], ref.tokens[k], 1e-13);
    test::expect_close_scaled("bottleneck", f.output.bottleneck, ref.bottleneck, 1e-13);
    m.zero_grad();
    const TokenSequences<double> grads(ws.begin(), ws.end());
    const auto g =
        c.grad_bottleneck ? m.backward(f.context, grads, wz) : m.backward(f.context, grads);
    ASSERT_EQ(static_cast<Index>(g.inputs.size()), M);
    const auto loss = [&] {
      const auto y = m.forward(inputs, masks);
      double l = c.grad_bottleneck ? test::weighted_sum(y.bottleneck, wz) : 0.0;
      for (Index k = 0; k < M; ++k) l += test::weighted_sum(y.tokens[k], ws[k]);
      return l;
    };
    for (Index k = 0; k < M; ++k)
      test::expect_gradient("inputs[" + std::to_string(k) + "]", xs[k].data(), g.inputs[k].data(),
                            xs[k].size(), loss);
    test::expect_parameter_gradients(m, loss);
  }
}

TEST(BottleneckFusionBackward, FloatAgreesWithDouble) {
  BottleneckFusion<float> mf(small_options(2, 3, 1, 4, false, false));
  BottleneckFusion<double> md(small_options(2, 3, 1, 4, false, false));
  randomize_affine(mf);
  test::copy_parameters(mf, md);
  const auto x0 = random_tensor<3>({2, 6, 8}, 1), x1 = random_tensor<3>({2, 9, 8}, 2);
  const auto w0 = random_tensor<3>({2, 6, 8}, 3), w1 = random_tensor<3>({2, 9, 8}, 4);
  const auto wz = random_tensor<3>({2, 4, 8}, 5);
  const auto x0f = test::cast_to<float>(x0), x1f = test::cast_to<float>(x1);
  const auto w0f = test::cast_to<float>(w0), w1f = test::cast_to<float>(w1);
  const auto wzf = test::cast_to<float>(wz);
  Tensor<bool, 2> pad{{false, false, false, false, true, true},
                      {false, true, true, true, true, true}};
  const KeyPaddingMasks masks{Mask::blocked(pad), std::nullopt};
  auto ff = mf.forward_train({x0f, x1f}, masks);
  auto fd = md.forward_train({x0, x1}, masks);
  test::expect_close_scaled("tokens[0]", ff.output.tokens[0], fd.output.tokens[0], 1e-5);
  test::expect_close_scaled("bottleneck", ff.output.bottleneck, fd.output.bottleneck, 1e-5);
  mf.zero_grad(), md.zero_grad();
  const auto gf = mf.backward(ff.context, {w0f, w1f}, wzf);
  const auto gd = md.backward(fd.context, {w0, w1}, wz);
  test::expect_close_scaled("inputs[0]", gf.inputs[0], gd.inputs[0], 1e-5);
  test::expect_close_scaled("inputs[1]", gf.inputs[1], gd.inputs[1], 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(BottleneckFusionBackward, AccumulatesAndTheContextOwnsItsMasks) {
  BottleneckFusion<double> m(small_options(2, 2, 1, 2, true, false));
  randomize_affine(m);
  const auto x0 = random_tensor<3>({2, 3, 8}, 1), x1 = random_tensor<3>({2, 2, 8}, 2);
  const auto w0 = random_tensor<3>({2, 3, 8}, 3), w1 = random_tensor<3>({2, 2, 8}, 4);
  const auto wz = random_tensor<3>({2, 2, 8}, 5);
  Tensor<bool, 2> pad{{false, false, true}, {false, true, true}};
  const auto f = m.forward_train({x0, x1}, {Mask::blocked(pad), std::nullopt});
  m.zero_grad();
  const auto g1 = m.backward(f.context, {w0, w1}, wz);
  std::map<std::string, Tensor<double, 1>> once;
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    once[name] = Tensor<double, 1>(Shape<1>{p.grad.size()});
    std::copy_n(p.grad.data(), p.grad.size(), once[name].data());
  });
  pad.setZero();  // the caller's mask changes after the forward: backward must not see it
  const auto g2 = m.backward(f.context, {w0, w1}, wz);
  EXPECT_TRUE(test::same_bits(g1.inputs[0], g2.inputs[0]));
  EXPECT_TRUE(test::same_bits(g1.inputs[1], g2.inputs[1]));
  // Twice the first gradient, to rounding: a bias gradient sums rows onto what is there.
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i) {
      const double twice = 2 * once[name].data()[i];
      ASSERT_NEAR(p.grad.data()[i], twice, 1e-12 * std::max(1.0, std::fabs(twice)))
          << name << "[" << i << "]";
    }
  });
}

TEST(BottleneckFusionBackward, BadArgumentsAreNamedErrors) {
  BottleneckFusion<float> m(small_options(2, 2, 1, 2, false, false));
  Tensor<float, 3> x0(Shape<3>{1, 2, 8}), x1(Shape<3>{1, 3, 8}), z(Shape<3>{1, 2, 8}),
      z_bad(Shape<3>{1, 3, 8});
  const auto f = m.forward_train({x0, x1});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, {x0}), ValueError,
                           "tessera::fusion::BottleneckFusion::backward", "'grad_tokens'", "1",
                           "2");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, {x0, x0}), ShapeError,
                           "tessera::fusion::BottleneckFusion::backward", "'grad_tokens[1]'",
                           "[1, 2, 8]", "[1, 3, 8]");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, {x0, x1}, z_bad), ShapeError,
                           "tessera::fusion::BottleneckFusion::backward", "'grad_bottleneck'",
                           "[1, 3, 8]", "[1, 2, 8]");
  BottleneckFusion<float> early(small_options(2, 2, 0, 2, false, false));
  TESSERA_EXPECT_THROW_MSG(early.backward(f.context, {x0, x1}, z), ValueError,
                           "tessera::fusion::BottleneckFusion::backward", "'ctx'");
  BottleneckFusion<float> three(small_options(3, 2, 1, 2, false, false));
  TESSERA_EXPECT_THROW_MSG(three.backward(f.context, {x0, x1, x1}, z), ValueError,
                           "tessera::fusion::BottleneckFusion::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.forward_train({x0, x1}, {std::nullopt}), ValueError,
                           "tessera::fusion::BottleneckFusion::forward_train",
                           "'key_padding_masks'");
  m.bottleneck.value = Tensor<float, 3>(Shape<3>{1, 3, 8});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, {x0, x1}, z), ShapeError,
                           "tessera::fusion::BottleneckFusion::backward", "bottleneck");
}

}  // namespace bottleneck_fusion_backward_test
}  // namespace tessera::fusion
