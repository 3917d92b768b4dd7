// nn::Attention's training forward and backward: central differences in double for query, keys,
// values and the parameters of each score function, with and without masks and with a gradient
// of the weights; float against double, accumulation and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "backward_test_util.hpp"
#include "tessera/nn/attention.hpp"

namespace tessera::nn {
namespace attention_backward_test {

using test::random_tensor;

constexpr Index B = 2, Lq = 3, Lk = 4, Dv = 3;

AttentionOptions options_for(AttentionScore s) {
  const bool same = s == AttentionScore::dot || s == AttentionScore::scaled_dot;
  return {.score = s, .query_dim = 4, .key_dim = same ? 0 : 5, .attention_dim = 6, .seed = 7};
}

enum class MaskCase { none, blocked, additive };

TEST(AttentionBackward, MatchesCentralDifferencesInDoubleForEveryScoreAndMask) {
  // blocked [B, Lq, Lk]: query row (1, 2) has every key masked (zero weights, zero gradients)
  Tensor<bool, 3> blocked(Shape<3>{B, Lq, Lk});
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j) blocked(b, i, j) = (b == 1 && i == 2) || (i + j + b) % 3 == 0;
  const auto additive = random_tensor<3>({1, Lq, Lk}, 9, -2, 2);  // broadcast over the batch
  for (AttentionScore s : {AttentionScore::dot, AttentionScore::scaled_dot, AttentionScore::general,
                           AttentionScore::additive})
    for (MaskCase mc : {MaskCase::none, MaskCase::blocked, MaskCase::additive})
      for (bool with_weights_grad : {false, true}) {
        SCOPED_TRACE(::testing::Message() << to_string(s) << " mask " << static_cast<int>(mc)
                                          << " weights' gradient " << with_weights_grad);
        Attention<double> m(options_for(s));
        const Index Dk = m.key_dim();
        auto q = random_tensor<3>({B, Lq, 4}, 1);
        auto k = random_tensor<3>({B, Lk, Dk}, 2);
        auto v = random_tensor<3>({B, Lk, Dv}, 3);
        AttentionForwardOptions fo;
        if (mc == MaskCase::blocked) fo.mask = Mask::blocked(blocked);
        if (mc == MaskCase::additive) fo.mask = Mask::additive(additive);
        const auto f = m.forward_train(q, k, v, fo);
        const auto plain = m.forward(q, k, v, fo);
        EXPECT_TRUE(test::same_bits(f.output.output, plain.output));
        EXPECT_TRUE(test::same_bits(f.output.weights, plain.weights));
        const auto w = random_tensor<3>({B, Lq, Dv}, 4);
        const auto ww = random_tensor<3>({B, Lq, Lk}, 5);
        m.zero_grad();
        const auto g =
            with_weights_grad ? m.backward(f.context, w, cview(ww)) : m.backward(f.context, w);
        const auto loss = [&] {
          const auto r = m.forward(q, k, v, fo);
          return test::weighted_sum(r.output, w) +
                 (with_weights_grad ? test::weighted_sum(r.weights, ww) : 0.0);
        };
        test::expect_gradient("query", q.data(), g.query.data(), q.size(), loss);
        test::expect_gradient("keys", k.data(), g.keys.data(), k.size(), loss);
        test::expect_gradient("values", v.data(), g.values.data(), v.size(), loss);
        test::expect_parameter_gradients(m, loss);
        if (mc == MaskCase::blocked) {
          for (Index d = 0; d < 4; ++d) EXPECT_EQ(g.query(1, 2, d), 0.0);
        }
      }
}

template <class T>
class AttentionBackwardTyped : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionBackwardTyped, test::Scalars);

// The float run against the double one (the double module's parameters are the float ones'), and
// two backwards accumulate.
TYPED_TEST(AttentionBackwardTyped, AgreesWithDoubleAndAccumulates) {
  using T = TypeParam;
  for (AttentionScore s : {AttentionScore::dot, AttentionScore::scaled_dot, AttentionScore::general,
                           AttentionScore::additive}) {
    SCOPED_TRACE(to_string(s));
    const AttentionOptions o{
        .score = s, .query_dim = 16, .key_dim = 0, .attention_dim = 12, .seed = 3};
    Attention<T> m(o);
    Attention<double> md(o);
    test::copy_parameters(m, md);
    const auto qd = random_tensor<3>({3, 9, 16}, 1);
    const auto kd = random_tensor<3>({3, 11, 16}, 2);
    const auto vd = random_tensor<3>({3, 11, 7}, 3);
    const auto gd = random_tensor<3>({3, 9, 7}, 4);
    const auto fm =
        m.forward_train(test::cast_to<T>(qd), test::cast_to<T>(kd), test::cast_to<T>(vd));
    const auto fd = md.forward_train(qd, kd, vd);
    const auto gm = test::cast_to<T>(gd);
    const auto a = m.backward(fm.context, gm);
    const auto ad = md.backward(fd.context, gd);
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
    test::expect_close_scaled("query", a.query, ad.query, tol);
    test::expect_close_scaled("keys", a.keys, ad.keys, tol);
    test::expect_close_scaled("values", a.values, ad.values, tol);
    if (s == AttentionScore::general || s == AttentionScore::additive) {
      test::expect_parameter_grads_close(m, md, tol);
      std::map<std::string, Eigen::Matrix<T, Eigen::Dynamic, 1>> once;
      m.for_each_parameter(
          [&](const std::string& name, const auto& p) { once[name] = test::owned_vector(p.grad); });
      const auto a2 = m.backward(fm.context, gm);
      EXPECT_TRUE(test::same_bits(a.query, a2.query));
      m.for_each_parameter([&](const std::string& name, const auto& p) {
        for (Index i = 0; i < p.grad.size(); ++i)
          EXPECT_NEAR(p.grad.data()[i], 2 * once[name](i), tol * (1 + std::fabs(2 * once[name](i))))
              << name;
      });
    }
  }
}

// PyTorch autograd's gradients (tests/fixtures/training/nn_attention_general with a mask, and
// nn_attention_additive; make_nn_backward_fixtures.py).
TYPED_TEST(AttentionBackwardTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  for (const std::string name : {"nn_attention_general", "nn_attention_additive"}) {
    SCOPED_TRACE(name);
    const test::Fixture fx(name, "training");
    const std::string score = fx.options.at("score").get<std::string>();
    Attention<T> m(
        {.score = score == "general" ? AttentionScore::general : AttentionScore::additive,
         .query_dim = fx.options.at("query_dim").get<Index>(),
         .key_dim = fx.options.at("key_dim").get<Index>(),
         .attention_dim = fx.options.at("attention_dim").get<Index>()});
    m.load_state_dict(fx.dict, "module.", /*strict=*/false);
    Tensor<bool, 3> mb;
    Tensor<T, 3> mf;
    AttentionForwardOptions fo;
    fo.mask = fx.mask<T, 3>("mask", mb, mf);
    EXPECT_EQ(fo.mask.has_value(), score == "general");
    const auto f = m.forward_train(fx.input<T, 3>("query"), fx.input<T, 3>("key"),
                                   fx.input<T, 3>("value"), fo);
    test::expect_tensor_near(f.output.output, fx.expected<T, 3>("output"), test::parity_tol<T>(),
                             name + " output");
    m.zero_grad();
    const auto g = m.backward(f.context, fx.input<T, 3>("grad_output"));
    test::expect_tensor_near(g.query, fx.expected<T, 3>("grad.query"), test::parity_tol<T>(),
                             name + " grad.query");
    test::expect_tensor_near(g.keys, fx.expected<T, 3>("grad.key"), test::parity_tol<T>(),
                             name + " grad.key");
    test::expect_tensor_near(g.values, fx.expected<T, 3>("grad.value"), test::parity_tol<T>(),
                             name + " grad.value");
    test::expect_fixture_parameter_grads<T>(m, fx, name);
  }
}

TEST(AttentionBackward, BadArgumentsAreNamedErrors) {
  Attention<float> m({.score = AttentionScore::general, .query_dim = 4, .key_dim = 5});
  Tensor<float, 3> q(Shape<3>{2, 3, 4}), k(Shape<3>{2, 6, 5}), v(Shape<3>{2, 6, 2}),
      k4(Shape<3>{2, 6, 4});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(q, k4, v), ShapeError,
                           "tessera::nn::Attention::forward_train", "'keys'", "[2, 6, 4]");
  Tensor<bool, 3> bad_mask(Shape<3>{2, 3, 5});
  TESSERA_EXPECT_THROW_MSG(m.forward_train(q, k, v, {.mask = Mask::blocked(bad_mask)}), ShapeError,
                           "tessera::nn::Attention::forward_train", "'mask'", "[2, 3, 5]");
  const auto f = m.forward_train(q, k, v);
  Tensor<float, 3> g(Shape<3>{2, 3, 2}), g3(Shape<3>{2, 3, 3}), gw(Shape<3>{2, 3, 5});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g3), ShapeError,
                           "tessera::nn::Attention::backward", "'grad_output'", "[2, 3, 3]",
                           "[2, 3, 2]");
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g, cview(gw)), ShapeError,
                           "tessera::nn::Attention::backward", "'grad_weights'", "[2, 3, 5]",
                           "[2, 3, 6]");
  Attention<float> dot({.score = AttentionScore::dot, .query_dim = 4});
  const auto fdot = dot.forward_train(q, k4, v);
  TESSERA_EXPECT_THROW_MSG(m.backward(fdot.context, g), ValueError,
                           "tessera::nn::Attention::backward", "'ctx'");
  Attention<float> additive(
      {.score = AttentionScore::additive, .query_dim = 4, .key_dim = 5, .attention_dim = 3});
  TESSERA_EXPECT_THROW_MSG(additive.backward(f.context, g), ValueError,
                           "tessera::nn::Attention::backward", "'ctx'");
  TESSERA_EXPECT_THROW_MSG(m.backward(Attention<float>::Context{}, g), ValueError,
                           "tessera::nn::Attention::backward", "'ctx'");
  m.weight.value = Tensor<float, 2>(Shape<2>{4, 4});
  TESSERA_EXPECT_THROW_MSG(m.backward(f.context, g), ShapeError, "tessera::nn::Attention::backward",
                           "'weight'", "[4, 4]", "[4, 5]");
}

}  // namespace attention_backward_test
}  // namespace tessera::nn
