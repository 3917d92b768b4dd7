#include "tessera/fusion/cross_modal_attention.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "fusion/fusion_test_util.hpp"
#include "fusion_fixture.hpp"
#include "test_util.hpp"

namespace cross_modal_attention_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::fusion::CrossModalAttention;
using tessera::fusion::CrossModalAttentionOutput;
using tessera::test::random_tokens;
using tessera::test::same;

template <class T>
class CrossModalAttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(CrossModalAttentionTest, tessera::test::Scalars);

template <class M, class A, class B>
concept Forwardable = requires(const M& m, const A& a, const B& b) {
  m.forward(a, b);
};
static_assert(Forwardable<CrossModalAttention<float>, Tensor<float, 3>, Tensor<float, 3>>);
static_assert(!Forwardable<CrossModalAttention<float>, Tensor<float, 2>, Tensor<float, 3>>);

template <class A, class B>
bool near(const A& a, const B& b) {
  using T = typename A::Scalar;
  const T tol = 8 * tessera::test::tol<T>();
  if (a.shape() != b.shape()) return false;
  for (Index i = 0; i < a.size(); ++i)
    if (!tessera::test::close(a.data()[i], b.data()[i], tol, tol)) return false;
  return true;
}

template <class X>
bool has_nan(const X& x) {
  return std::any_of(x.data(), x.data() + x.size(), [](auto v) { return std::isnan(v); });
}

// The projection biases start at zero (PyTorch's initialisation); these tests want them not to.
template <class T>
void with_random_biases(CrossModalAttention<T>& co) {
  co.attn_a.in_proj_bias.value.setRandom(21);
  co.attn_a.out_proj.bias.value.setRandom(22);
  co.attn_b.in_proj_bias.value.setRandom(23);
  co.attn_b.out_proj.bias.value.setRandom(24);
}

TYPED_TEST(CrossModalAttentionTest, MatchesPyTorchCoAttention) {
  using T = TypeParam;
  for (const std::string name :
       {"cross_modal_attention_post_norm_padding", "cross_modal_attention_pre_norm"}) {
    SCOPED_TRACE(name);
    const auto fx = tessera::test::fusion_fixture(name);
    const auto& o = fx.options;
    CrossModalAttention<T> co({.embed_dim = o.at("embed_dim").get<Index>(),
                               .embed_dim_b = o.at("embed_dim_b").get<Index>(),
                               .num_heads = o.at("num_heads").get<Index>(),
                               .norm_first = o.at("norm_first").get<bool>(),
                               .layer_norm_eps = o.at("layer_norm_eps").get<double>()});
    co.load_state_dict(fx.dict, "module.");
    Tensor<bool, 2> sa, sb;
    const auto out = co.forward(
        fx.input<T, 3>("a"), fx.input<T, 3>("b"),
        {.key_padding_mask_a = tessera::test::blocked_mask(fx, "key_padding_mask_a", sa),
         .key_padding_mask_b = tessera::test::blocked_mask(fx, "key_padding_mask_b", sb)});
    tessera::test::expect_parity(out.a, fx.expected<T, 3>("a"), name + " a");
    tessera::test::expect_parity(out.b, fx.expected<T, 3>("b"), name + " b");
  }
}

// A partner of padding only (or of no tokens) leaves nothing to attend to: the residual alone
// passes (normalised in post-norm). PyTorch gives NaN there.
TYPED_TEST(CrossModalAttentionTest, FullyPaddedPartnerGivesTheResidualAndNoNaN) {
  using T = TypeParam;
  for (const bool norm_first : {false, true}) {
    SCOPED_TRACE(norm_first ? "pre-norm" : "post-norm");
    CrossModalAttention<T> co(
        {.embed_dim = 8, .embed_dim_b = 4, .num_heads = 2, .norm_first = norm_first, .seed = 3});
    // Non-zero biases: attention over nothing must add nothing, not out_proj's bias.
    with_random_biases(co);
    const auto a = random_tokens<T>(2, 5, 1, 8);
    const auto b = random_tokens<T>(2, 3, 2, 4);
    Tensor<bool, 2> pad_b(2, 3);
    pad_b(0, 0) = pad_b(0, 1) = pad_b(0, 2) = true;  // batch 0: b is all padding
    pad_b(1, 2) = true;
    const auto out = co.forward(a, b, {.key_padding_mask_b = Mask::blocked(pad_b)});
    EXPECT_FALSE(has_nan(out.a));
    EXPECT_FALSE(has_nan(out.b));
    const auto residual = norm_first ? Tensor<T, 3>(a) : co.norm_a.forward(a);
    EXPECT_TRUE(same(out.a[0], residual[0]));
    EXPECT_FALSE(same(out.a[1], residual[1]));
    // batch 1 is as if alone
    const auto a1 = a[1], b1 = b[1];
    const Tensor<T, 3> a_alone(a1.template reshape<3>({1, 5, 8}));
    const Tensor<T, 3> b_alone(b1.template reshape<3>({1, 3, 4}));
    Tensor<bool, 2> pad1(1, 3);
    pad1(0, 2) = true;
    const auto alone = co.forward(a_alone, b_alone, {.key_padding_mask_b = Mask::blocked(pad1)});
    // (not bit for bit: the products see another number of rows)
    EXPECT_TRUE(near(out.a[1], alone.a[0]));
    EXPECT_TRUE(near(out.b[1], alone.b[0]));
    // b itself still attends to a
    const Tensor<T, 3> b_in = norm_first ? Tensor<T, 3>(b) : co.norm_b.forward(b);
    EXPECT_FALSE(same(out.b[0], b_in[0]));
    // a partner without tokens
    const Tensor<T, 3> none(2, 0, 4);
    const auto empty = co.forward(a, none);
    EXPECT_TRUE(same(empty.a, residual));
    EXPECT_EQ(empty.b.shape(), (Shape<3>{2, 0, 4}));
  }
}

TYPED_TEST(CrossModalAttentionTest, WeightsAreEachQuerysDistributionOverThePartner) {
  using T = TypeParam;
  CrossModalAttention<T> co({.embed_dim = 8, .embed_dim_b = 4, .num_heads = 2, .seed = 6});
  with_random_biases(co);
  const auto a = random_tokens<T>(3, 5, 1, 8);
  const auto b = random_tokens<T>(3, 4, 2, 4);
  Tensor<bool, 2> pad_a(3, 5), pad_b(3, 4);
  pad_b(0, 3) = true;
  pad_b(2, 0) = pad_b(2, 1) = pad_b(2, 2) = pad_b(2, 3) = true;  // batch 2: nothing to attend to
  pad_a(1, 0) = true;
  const auto out = co.forward(a, b,
                              {.key_padding_mask_a = Mask::blocked(pad_a),
                               .key_padding_mask_b = Mask::blocked(pad_b),
                               .need_weights = true});
  ASSERT_TRUE(out.weights_a && out.weights_b);
  ASSERT_EQ(out.weights_a->shape(), (Shape<3>{3, 5, 4}));
  ASSERT_EQ(out.weights_b->shape(), (Shape<3>{3, 4, 5}));
  EXPECT_FALSE(has_nan(*out.weights_a));
  for (Index i = 0; i < 5; ++i) {
    EXPECT_EQ((*out.weights_a)(0, i, 3), T(0));  // a padded key gets no weight
    EXPECT_NEAR(double((*out.weights_a)[0][i].as_matrix().sum()), 1.0, 1e-5);
    EXPECT_TRUE((*out.weights_a)[2][i].as_matrix().isZero(0));  // batch 2: zero rows
  }
  for (Index j = 0; j < 4; ++j) EXPECT_EQ((*out.weights_b)(1, j, 0), T(0));
  // the same weights as the attention module's own (post-norm: the raw tokens attend)
  Tensor<bool, 2> pad_b01(3, 4);
  pad_b01(0, 3) = true;
  const auto ref = co.attn_a.forward(
      a, b, b, {.key_padding_mask = Mask::blocked(pad_b01), .need_weights = true});
  for (Index bi = 0; bi < 2; ++bi) EXPECT_TRUE(same((*out.weights_a)[bi], (*ref.attn_weights)[bi]));
  // without need_weights none are made; the outputs agree (not bit for bit:
  // attention without weights takes the fused kernel)
  const auto plain = co.forward(
      a, b,
      {.key_padding_mask_a = Mask::blocked(pad_a), .key_padding_mask_b = Mask::blocked(pad_b)});
  EXPECT_FALSE(plain.weights_a || plain.weights_b);
  EXPECT_TRUE(near(plain.a, out.a) && near(plain.b, out.b));
  // a partner without tokens: empty weights
  const auto empty = co.forward(a, Tensor<T, 3>(3, 0, 4), {.need_weights = true});
  EXPECT_EQ(empty.weights_a->shape(), (Shape<3>{3, 5, 0}));
  EXPECT_EQ(empty.weights_b->shape(), (Shape<3>{3, 0, 5}));
}

TYPED_TEST(CrossModalAttentionTest, PaddedPartnerTokensAreIgnored) {
  using T = TypeParam;
  const CrossModalAttention<T> co({.embed_dim = 8, .num_heads = 4, .seed = 5});
  const auto a = random_tokens<T>(2, 4, 3, 8);
  auto b = random_tokens<T>(2, 6, 4, 8);
  Tensor<bool, 2> pad_a(2, 4), pad_b(2, 6);
  pad_a(1, 3) = true;
  pad_b(0, 4) = pad_b(0, 5) = true;
  const tessera::fusion::CrossModalAttentionForwardOptions fo{
      .key_padding_mask_a = Mask::blocked(pad_a), .key_padding_mask_b = Mask::blocked(pad_b)};
  const auto out = co.forward(a, b, fo);
  b(0, 4, 1) = T(30);
  b(0, 5, 6) = T(-30);
  const auto out2 = co.forward(a, b, fo);
  EXPECT_TRUE(same(out.a, out2.a));  // a never sees b's padding
  for (Index t = 0; t < 4; ++t) EXPECT_TRUE(same(out.b[0][t], out2.b[0][t]));
  // and a's padding is hidden from b: changing a's padded token leaves b' as it was
  auto a2 = a;
  a2(1, 3, 0) = T(30);
  EXPECT_TRUE(same(co.forward(a2, b, fo).b, out2.b));
  // without the masks the padded tokens do count
  EXPECT_FALSE(same(co.forward(a, b).a, out.a));
}

TYPED_TEST(CrossModalAttentionTest, StateDictKeysAndConcurrentForward) {
  using T = TypeParam;
  const CrossModalAttention<T> same_width({.embed_dim = 8, .num_heads = 2});
  const std::vector<std::string> keys = {"attn_a.in_proj_bias",  "attn_a.in_proj_weight",
                                         "attn_a.out_proj.bias", "attn_a.out_proj.weight",
                                         "attn_b.in_proj_bias",  "attn_b.in_proj_weight",
                                         "attn_b.out_proj.bias", "attn_b.out_proj.weight",
                                         "norm_a.bias",          "norm_a.weight",
                                         "norm_b.bias",          "norm_b.weight"};
  EXPECT_EQ(same_width.state_dict().keys(), keys);
  const CrossModalAttention<T> co({.embed_dim = 8, .embed_dim_b = 6, .num_heads = 2});
  EXPECT_EQ(co.options().embed_dim_b, 6);
  EXPECT_EQ(co.attn_a.k_proj_weight.shape(), (Shape<2>{8, 6}));
  EXPECT_EQ(co.attn_b.k_proj_weight.shape(), (Shape<2>{6, 8}));
  EXPECT_EQ(co.norm_b.weight.shape(), (Shape<1>{6}));
  const auto ckeys = co.state_dict().keys();
  EXPECT_NE(std::find(ckeys.begin(), ckeys.end(), "attn_a.q_proj_weight"), ckeys.end());
  const auto a = random_tokens<T>(2, 5, 1, 8);
  const auto b = random_tokens<T>(2, 3, 2, 6);
  const auto single = co.forward(a, b);
  EXPECT_EQ(single.a.shape(), (Shape<3>{2, 5, 8}));
  EXPECT_EQ(single.b.shape(), (Shape<3>{2, 3, 6}));
  std::vector<CrossModalAttentionOutput<T>> outs(6);
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) threads.emplace_back([&, t] { outs[t] = co.forward(a, b); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs) EXPECT_TRUE(same(o.a, single.a) && same(o.b, single.b));
}

TYPED_TEST(CrossModalAttentionTest, RejectsBadOptionsAndInputs) {
  using T = TypeParam;
  constexpr const char* ctor = "tessera::fusion::CrossModalAttention:";
  TESSERA_EXPECT_THROW_MSG(CrossModalAttention<T>({.embed_dim = 0}), ValueError, ctor,
                           "embed_dim is 0");
  TESSERA_EXPECT_THROW_MSG(CrossModalAttention<T>({.embed_dim = 8, .embed_dim_b = -1}), ValueError,
                           ctor, "embed_dim_b is -1");
  TESSERA_EXPECT_THROW_MSG(
      CrossModalAttention<T>({.embed_dim = 8, .embed_dim_b = 6, .num_heads = 4}), ValueError, ctor,
      "num_heads is 4", "embed_dim = 8 and embed_dim_b = 6");
  TESSERA_EXPECT_THROW_MSG(CrossModalAttention<T>({.embed_dim = 8, .num_heads = 0}), ValueError,
                           ctor, "num_heads is 0");
  TESSERA_EXPECT_THROW_MSG(
      CrossModalAttention<T>({.embed_dim = 8, .num_heads = 2, .layer_norm_eps = -1}), ValueError,
      "eps is -1");
  constexpr const char* fn = "tessera::fusion::CrossModalAttention::forward";
  const CrossModalAttention<T> co({.embed_dim = 8, .embed_dim_b = 4, .num_heads = 2});
  const auto a = random_tokens<T>(2, 5, 1, 8);
  const auto b = random_tokens<T>(2, 3, 2, 4);
  TESSERA_EXPECT_THROW_MSG(co.forward(b, b), ShapeError, fn, "argument 'a' has shape [2, 3, 4]",
                           "expected [2, L, 8]");
  TESSERA_EXPECT_THROW_MSG(co.forward(a, a), ShapeError, fn, "argument 'b' has shape [2, 5, 8]",
                           "expected [2, L, 4]");
  const auto b3 = random_tokens<T>(3, 3, 2, 4);
  TESSERA_EXPECT_THROW_MSG(co.forward(a, b3), ShapeError, fn, "argument 'b' has shape [3, 3, 4]",
                           "batch 2");
  Tensor<bool, 2> pad(2, 5);
  TESSERA_EXPECT_THROW_MSG(co.forward(a, b, {.key_padding_mask_b = Mask::blocked(pad)}), ShapeError,
                           fn, "argument 'key_padding_mask_b' has shape [2, 5]", "expected [2, 3]",
                           "'b' with shape [2, 3, 4]");
  Tensor<bool, 2> pad_a(1, 5);
  TESSERA_EXPECT_THROW_MSG(co.forward(a, b, {.key_padding_mask_a = Mask::blocked(pad_a)}),
                           ShapeError, fn, "argument 'key_padding_mask_a' has shape [1, 5]",
                           "expected [2, 5]");
}

}  // namespace cross_modal_attention_test
