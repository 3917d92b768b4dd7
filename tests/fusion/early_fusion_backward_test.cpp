// Training forward and backward of fusion::EarlyFusion: central differences in double for every
// input and parameter (with and without modality embeddings, post- and pre-norm, a padded
// modality), float against double, accumulation, a context that owns its masks, errors.
#include "tessera/fusion/early_fusion.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>

#include "nn/backward_test_util.hpp"

namespace tessera::fusion {
namespace early_fusion_backward_test {

using test::random_tensor;

EarlyFusionOptions small_options(bool norm_first, bool modality_embedding) {
  return {.encoder = {.layer = {.d_model = 8,
                                .nhead = 2,
                                .dim_feedforward = 12,
                                .activation = Activation::gelu,
                                .norm_first = norm_first,
                                .seed = 3},
                      .num_layers = 2,
                      .final_norm = true},
          .num_modalities = 2,
          .modality_embedding = modality_embedding,
          .seed = 5};
}

// Random LayerNorm weights and biases, attention biases and modality embeddings, so that no
// parameter is a plain 1 or 0 (or a tiny N(0, 0.02)) whose gradient errors could hide.
template <class M>
void randomize_affine(M& m) {
  std::uint64_t seed = 100;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("norm") != std::string::npos || name.find("bias") != std::string::npos ||
        name.find("modality_embedding") != std::string::npos)
      p.value.setRandom(seed++, 0.5, 1.5);
  });
}

TEST(EarlyFusionBackward, MatchesCentralDifferencesInDouble) {
  const test::OneThread one_thread;
  for (bool norm_first : {false, true})
    for (bool embedding : {true, false}) {
      SCOPED_TRACE(std::string(norm_first ? "pre-norm" : "post-norm") +
                   (embedding ? ", modality embedding" : ", no modality embedding"));
      EarlyFusion<double> m(small_options(norm_first, embedding));
      randomize_affine(m);
      auto x0 = random_tensor<3>({2, 3, 8}, 1);
      auto x1 = random_tensor<3>({2, 4, 8}, 2);
      Tensor<bool, 2> pad{{false, false, false, false}, {false, false, true, true}};
      const KeyPaddingMasks masks{std::nullopt, Mask::blocked(pad)};
      const auto f = m.forward_train({x0, x1}, masks);
      test::expect_close_scaled("output", f.output, m.forward({x0, x1}, masks), 1e-13);
      const auto w = random_tensor<3>({2, 7, 8}, 3);
      m.zero_grad();
      const auto g = m.backward(f.context, w);
      ASSERT_EQ(g.inputs.size(), 2u);
      EXPECT_EQ(g.inputs[0].shape(), x0.shape());
      EXPECT_EQ(g.inputs[1].shape(), x1.shape());
      const auto loss = [&] { return test::weighted_sum(m.forward({x0, x1}, masks), w); };
      test::expect_gradient("inputs[0]", x0.data(), g.inputs[0].data(), x0.size(), loss);
      test::expect_gradient("inputs[1]", x1.data(), g.inputs[1].data(), x1.size(), loss);
      test::expect_parameter_gradients(m, loss);
    }
}

TEST(EarlyFusionBackward, FloatAgreesWithDouble) {
  EarlyFusion<float> mf(small_options(false, true));
  EarlyFusion<double> md(small_options(false, true));
  randomize_affine(mf);
  test::copy_parameters(mf, md);
  const auto x0 = random_tensor<3>({2, 5, 8}, 1), x1 = random_tensor<3>({2, 6, 8}, 2);
  const auto w = random_tensor<3>({2, 11, 8}, 3);
  const auto x0f = test::cast_to<float>(x0), x1f = test::cast_to<float>(x1);
  Tensor<bool, 2> pad{{false, false, false, false, true}, {false, true, true, true, true}};
  const KeyPaddingMasks masks{Mask::blocked(pad), std::nullopt};
  auto ff = mf.forward_train({x0f, x1f}, masks);
  auto fd = md.forward_train({x0, x1}, masks);
  test::expect_close_scaled("output", ff.output, fd.output, 1e-5);
  mf.zero_grad(), md.zero_grad();
  const auto gf = mf.backward(ff.context, test::cast_to<float>(w));
  const auto gd = md.backward(fd.context, w);
  test::expect_close_scaled("inputs[0]", gf.inputs[0], gd.inputs[0], 1e-5);
  test::expect_close_scaled("inputs[1]", gf.inputs[1], gd.inputs[1], 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(EarlyFusionBackward, AccumulatesAndTheContextOwnsItsMasks) {
  EarlyFusion<double> m(small_options(true, true));
  randomize_affine(m);
  const auto x0 = random_tensor<3>({2, 3, 8}, 1), x1 = random_tensor<3>({2, 2, 8}, 2);
  const auto w = random_tensor<3>({2, 5, 8}, 3);
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
  // Twice the first gradient, to rounding: a bias gradient sums rows onto what is there.
  m.for_each_parameter([&](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i) {
      const double twice = 2 * once[name].data()[i];
      ASSERT_NEAR(p.grad.data()[i], twice, 1e-12 * std::max(1.0, std::fabs(twice)))
          << name << "[" << i << "]";
    }
  });
}

TEST(EarlyFusionBackward, BadArgumentsAreNamedErrors) {
  EarlyFusion<float> m(small_options(false, true));
  Tensor<float, 3> x0(Shape<3>{1, 2, 8}), x1(Shape<3>{1, 3, 8}), g(Shape<3>{1, 4, 8});
  const auto f = m.forward_train({x0, x1});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::fusion::EarlyFusion::backward", "'grad_output'", "[1, 4, 8]",
                           "[1, 5, 8]");
  EarlyFusion<float> three({.encoder = small_options(false, true).encoder, .num_modalities = 3});
  Tensor<float, 3> g5(Shape<3>{1, 5, 8});
  TESSERA_EXPECT_THROW_MSG(three.backward(f.context, g5), ValueError,
                           "tessera::fusion::EarlyFusion::backward", "'ctx'");
  EarlyFusion<float> plain(small_options(false, false));
  TESSERA_EXPECT_THROW_MSG(plain.backward(f.context, g5), ValueError,
                           "tessera::fusion::EarlyFusion::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.forward_train({x0}), ValueError,
                           "tessera::fusion::EarlyFusion::forward_train", "'inputs'");
  m.modality_embedding.weight.value = Tensor<float, 2>(Shape<2>{1, 8});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g5), ShapeError,
                           "tessera::fusion::EarlyFusion::backward", "modality_embedding.weight");
}

}  // namespace early_fusion_backward_test
}  // namespace tessera::fusion
