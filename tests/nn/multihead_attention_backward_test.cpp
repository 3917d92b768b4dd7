// nn::MultiheadAttention's training forward and backward: central differences in double for the
// inputs and every parameter under each option, float against double, masked rows, errors.
#include <gtest/gtest.h>

#include "backward_test_util.hpp"
#include "tessera/nn/multihead_attention.hpp"

namespace tessera::nn {
namespace multihead_attention_backward_test {

using test::random_tensor;

struct Case {
  std::string name;
  MultiheadAttentionOptions options;
  Index lq = 4, lk = 5;
  bool self = false;
  bool padding = false, bool_mask = false, float_mask3d = false, causal = false;
};

std::vector<Case> cases() {
  return {
      {"self", {.embed_dim = 8, .num_heads = 2, .seed = 1}, 5, 5, true},
      {"cross", {.embed_dim = 8, .num_heads = 2, .seed = 2}, 4, 6},
      {"kdim_vdim", {.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 7, .seed = 3}, 4, 6},
      {"no_bias", {.embed_dim = 6, .num_heads = 3, .bias = false, .seed = 4}, 3, 3, true},
      {"bias_kv", {.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .seed = 5}, 4, 6},
      {"zero_attn", {.embed_dim = 8, .num_heads = 2, .add_zero_attn = true, .seed = 6}, 5, 5, true},
      {"bias_kv_zero_attn_padding",
       {.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .add_zero_attn = true, .seed = 7},
       4,
       6,
       false,
       true},
      {"padding", {.embed_dim = 8, .num_heads = 2, .seed = 8}, 5, 5, true, true},
      {"bool_mask", {.embed_dim = 8, .num_heads = 2, .seed = 9}, 4, 6, false, false, true},
      {"float_mask_3d",
       {.embed_dim = 8, .num_heads = 2, .seed = 10},
       4,
       6,
       false,
       false,
       false,
       true},
      {"causal",
       {.embed_dim = 8, .num_heads = 2, .seed = 11},
       6,
       6,
       true,
       false,
       false,
       false,
       true},
  };
}

// Masks for a case, owned here (a Mask views its tensor).
struct Masks {
  Tensor<bool, 2> padding, blocked;
  Tensor<double, 3> additive;
  MultiheadAttentionForwardOptions options(const Case& c) const {
    MultiheadAttentionForwardOptions fo;
    if (c.padding) fo.key_padding_mask = Mask::blocked(padding);
    if (c.bool_mask) fo.attn_mask = Mask::blocked(blocked);
    if (c.float_mask3d) fo.attn_mask = Mask::additive(additive);
    fo.is_causal = c.causal;
    return fo;
  }
};

Masks make_masks(const Case& c, Index B, Index H) {
  Masks m;
  m.padding = Tensor<bool, 2>(Shape<2>{B, c.lk});
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < c.lk; ++j) m.padding(b, j) = (j + b) % 4 == 3;  // never a whole row
  m.blocked = Tensor<bool, 2>(Shape<2>{c.lq, c.lk});
  for (Index i = 0; i < c.lq; ++i)
    for (Index j = 0; j < c.lk; ++j) m.blocked(i, j) = (i + 2 * j) % 5 == 1;
  m.additive = random_tensor<3>({B * H, c.lq, c.lk}, 77, -1, 1);
  return m;
}

TEST(MultiheadAttentionBackward, MatchesCentralDifferencesInDoubleForEveryOption) {
  const Index B = 2;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    MultiheadAttention<double> m(c.options);
    // random biases (PyTorch initialises them to zero, which would hide their gradients' errors)
    m.for_each_parameter([](const std::string& name, auto& p) {
      if (name.find("bias") != std::string::npos) p.value.setRandom(21, -0.5, 0.5);
    });
    const Index E = c.options.embed_dim;
    const Index kd = c.options.kdim ? c.options.kdim : E, vd = c.options.vdim ? c.options.vdim : E;
    auto q = random_tensor<3>({B, c.lq, E}, 1);
    auto k = random_tensor<3>({B, c.lk, kd}, 2);
    auto v = random_tensor<3>({B, c.lk, vd}, 3);
    const Masks masks = make_masks(c, B, c.options.num_heads);
    const auto fo = masks.options(c);
    const auto run = [&] {
      return c.self ? m.forward(q, q, q, fo).output : m.forward(q, k, v, fo).output;
    };
    auto f = c.self ? m.forward_train(q, q, q, fo) : m.forward_train(q, k, v, fo);
    test::expect_close_scaled("output", f.output, run(), 1e-13);
    const auto w = random_tensor<3>({B, c.lq, E}, 4);
    m.zero_grad();
    const auto g = m.backward(f.context, w);
    const auto loss = [&] { return test::weighted_sum(run(), w); };
    if (c.self) {
      Tensor<double, 3> total = g.query;
      total.as_array() += g.key.as_array() + g.value.as_array();
      test::expect_gradient("x", q.data(), total.data(), q.size(), loss);
    } else {
      test::expect_gradient("query", q.data(), g.query.data(), q.size(), loss);
      test::expect_gradient("key", k.data(), g.key.data(), k.size(), loss);
      test::expect_gradient("value", v.data(), g.value.data(), v.size(), loss);
    }
    test::expect_parameter_gradients(m, loss);
  }
}

template <class T>
class MultiheadAttentionBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(MultiheadAttentionBackwardTyped, test::Scalars);

// PyTorch autograd's gradients (tests/fixtures/training, make_training_fixtures.py): every input
// and every parameter, for each option.
TYPED_TEST(MultiheadAttentionBackwardTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  const auto names = test::fixtures_with_prefix("mha_", "training");
  ASSERT_GE(names.size(), 11u) << "the training fixtures for MultiheadAttention are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const test::Fixture fx(name, "training");
    const auto& j = fx.options;
    MultiheadAttention<T> m({.embed_dim = j.at("embed_dim").get<Index>(),
                             .num_heads = j.at("num_heads").get<Index>(),
                             .bias = j.value("bias", true),
                             .add_bias_kv = j.value("add_bias_kv", false),
                             .add_zero_attn = j.value("add_zero_attn", false),
                             .kdim = j.value("kdim", Index{0}),
                             .vdim = j.value("vdim", Index{0})});
    m.load_state_dict(fx.dict, "module.", /*strict=*/false);
    const auto query = fx.input<T, 3>("query");
    const bool self = fx.forward.value("self_attention", false);
    const auto key = self ? query : fx.input<T, 3>("key");
    const auto value = self ? query : fx.input<T, 3>("value");
    Tensor<bool, 2> pad_b, am_b2;
    Tensor<T, 2> pad_f, am_f2;
    Tensor<bool, 3> am_b3;
    Tensor<T, 3> am_f3;
    MultiheadAttentionForwardOptions fo;
    fo.key_padding_mask = fx.mask<T, 2>("key_padding_mask", pad_b, pad_f);
    if (fx.has_input("attn_mask")) {
      if (fx.dict.at("input.attn_mask").shape.size() == 3)
        fo.attn_mask = fx.mask<T, 3>("attn_mask", am_b3, am_f3);
      else
        fo.attn_mask = fx.mask<T, 2>("attn_mask", am_b2, am_f2);
    }
    fo.is_causal = fx.forward.value("is_causal", false);
    auto f =
        self ? m.forward_train(query, query, query, fo) : m.forward_train(query, key, value, fo);
    test::expect_tensor_near(f.output, fx.expected<T, 3>("output"), test::parity_tol<T>(),
                             name + " output");
    m.zero_grad();
    const auto g = m.backward(f.context, fx.input<T, 3>("grad_output"));
    if (self) {
      Tensor<T, 3> total = g.query;
      total.as_array() += g.key.as_array() + g.value.as_array();
      test::expect_tensor_near(total, fx.expected<T, 3>("grad.query"), test::parity_tol<T>(),
                               name + " grad of the input");
    } else {
      test::expect_tensor_near(g.query, fx.expected<T, 3>("grad.query"), test::parity_tol<T>(),
                               name + " grad.query");
      test::expect_tensor_near(g.key, fx.expected<T, 3>("grad.key"), test::parity_tol<T>(),
                               name + " grad.key");
      test::expect_tensor_near(g.value, fx.expected<T, 3>("grad.value"), test::parity_tol<T>(),
                               name + " grad.value");
    }
    test::expect_fixture_parameter_grads<T>(m, fx, name);
  }
}

TEST(MultiheadAttentionBackward, FloatAgreesWithDouble) {
  MultiheadAttention<float> mf({.embed_dim = 32, .num_heads = 4, .seed = 3});
  MultiheadAttention<double> md({.embed_dim = 32, .num_heads = 4});
  test::copy_parameters(mf, md);
  const auto xd = random_tensor<3>({2, 70, 32}, 5);
  const auto gd = random_tensor<3>({2, 70, 32}, 6);
  const auto xf = test::cast_to<float>(xd);
  auto ff = mf.forward_train(xf, xf, xf, {.is_causal = true});
  auto fd = md.forward_train(xd, xd, xd, {.is_causal = true});
  const auto gf = mf.backward(ff.context, test::cast_to<float>(gd));
  const auto gdd = md.backward(fd.context, gd);
  test::expect_close_scaled("dquery", gf.query, gdd.query, 1e-5);
  test::expect_close_scaled("dkey", gf.key, gdd.key, 1e-5);
  test::expect_close_scaled("dvalue", gf.value, gdd.value, 1e-5);
  test::expect_parameter_grads_close(mf, md, 1e-5);
}

TEST(MultiheadAttentionBackward, FullyMaskedRowsGiveZeroGradientsNotNaN) {
  MultiheadAttention<double> m({.embed_dim = 4, .num_heads = 2, .seed = 1});
  const auto q = random_tensor<3>({1, 3, 4}, 1);
  const auto kv = random_tensor<3>({1, 2, 4}, 2);
  Tensor<bool, 2> blocked{{true, true}, {false, true}, {false, false}};  // row 0 sees nothing
  const MultiheadAttentionForwardOptions fo{.attn_mask = Mask::blocked(blocked)};
  auto f = m.forward_train(q, kv, kv, fo);
  const auto w = random_tensor<3>({1, 3, 4}, 3);
  m.zero_grad();
  const auto g = m.backward(f.context, w);
  for (Index e = 0; e < 4; ++e) EXPECT_EQ(g.query(0, 0, e), 0.0);
  m.for_each_parameter([](const std::string& name, const auto& p) {
    for (Index i = 0; i < p.grad.size(); ++i) ASSERT_TRUE(std::isfinite(p.grad.data()[i])) << name;
  });
}

TEST(MultiheadAttentionBackward, TheContextOwnsItsMasks) {
  MultiheadAttention<double> m({.embed_dim = 4, .num_heads = 1, .seed = 2});
  const auto x = random_tensor<3>({1, 3, 4}, 1);
  const auto w = random_tensor<3>({1, 3, 4}, 2);
  Tensor<bool, 2> pad{{false, true, false}};
  auto f = m.forward_train(x, x, x, {.key_padding_mask = Mask::blocked(pad)});
  m.zero_grad();
  const auto expected = m.backward(f.context, w);
  pad.setZero();  // the caller's mask changes after the forward: backward must not see it
  const auto again = m.backward(f.context, w);
  EXPECT_TRUE(test::same_bits(expected.query, again.query));
}

TEST(MultiheadAttentionBackward, AWeightChangedSinceTheForwardIsRefused) {
  MultiheadAttention<float> m({.embed_dim = 4, .num_heads = 2});
  Tensor<float, 3> x(Shape<3>{1, 3, 4});
  const auto f = m.forward_train(x, x, x);
  ++m.in_proj_weight.version;
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, x), ValueError,
                           "tessera::nn::MultiheadAttention::backward", "'in_proj_weight'",
                           "changed since forward_train");
  --m.in_proj_weight.version;
  ++m.out_proj.weight.version;
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, x), ValueError,
                           "tessera::nn::MultiheadAttention::backward", "'out_proj.weight'");
}

TEST(MultiheadAttentionBackward, BadArgumentsAreNamedErrors) {
  MultiheadAttention<float> m({.embed_dim = 4, .num_heads = 2});
  Tensor<float, 3> x(Shape<3>{1, 3, 4}), g(Shape<3>{1, 2, 4});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(x, x, x, {.need_weights = true}), ValueError,
                           "tessera::nn::MultiheadAttention::forward_train", "'need_weights'");
  const auto f = m.forward_train(x, x, x);
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError,
                           "tessera::nn::MultiheadAttention::backward", "'grad_output'",
                           "[1, 2, 4]", "[1, 3, 4]");
  MultiheadAttention<float> other({.embed_dim = 8, .num_heads = 2});
  Tensor<float, 3> g8(Shape<3>{1, 3, 8});
  TESSERA_EXPECT_THROW_MSG(other.backward(f.context, g8), ValueError,
                           "tessera::nn::MultiheadAttention::backward", "'ctx'");
}

}  // namespace multihead_attention_backward_test
}  // namespace tessera::nn
