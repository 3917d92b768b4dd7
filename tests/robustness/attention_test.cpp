// Adversarial inputs to attention (issue 15): each case is a bad input a user can reach through
// the public API (SDPA, nn::MultiheadAttention and its KVCache) together with the right answer: a
// typed error naming the entry point and the argument, NaN out for NaN in, zeros for empty
// attention, the same bits on any thread count. They ran as heap overflows, silent zeros or
// thread-dependent results before. To add a case, write one more TYPED_TEST below (float and
// double): build the input, then assert the exact error (TESSERA_EXPECT_THROW_MSG with the
// message's parts) or the exact value; a case that must not compile goes in a static_assert on a
// requires-expression. The module and kernel tests (tests/nn, tests/kernels) cover each check in
// breadth; these are the reported instances.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "tessera/kernels/attention.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "test_util.hpp"

namespace attention_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::KVCache;
using tessera::nn::MultiheadAttention;

template <class T>
class AttentionRobustness : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionRobustness, tessera::test::Scalars);

template <class T, int R>
Tensor<T, R> random_tensor(const Shape<R>& s, std::uint64_t seed) {
  Tensor<T, R> t(s);
  t.setRandom(seed);
  return t;
}

// Kind 4: options that keep a view of a mask refuse a temporary tensor, which would dangle by the
// time forward reads it (heap-use-after-free in MultiheadAttention::forward); a named tensor is
// fine. (Templates, so that the requires-expressions test the call instead of failing it.)
template <class M>
constexpr bool padding_mask_accepts = requires(M&& m) {
  tessera::nn::MultiheadAttentionForwardOptions{.key_padding_mask =
                                                    Mask::blocked(std::forward<M>(m))};
};
template <class M>
constexpr bool sdpa_mask_accepts = requires(M&& m) {
  tessera::SDPAOptions{.mask = Mask::additive(std::forward<M>(m))};
};
static_assert(!padding_mask_accepts<Tensor<bool, 2>>);
static_assert(padding_mask_accepts<const Tensor<bool, 2>&>);
static_assert(!sdpa_mask_accepts<Tensor<float, 4>>);
static_assert(sdpa_mask_accepts<Tensor<float, 4>&>);

// Kind 2: E = 8 with in_proj_weight replaced by an 8 x 8 tensor, then cross-attention (was a heap
// overflow: the key/value slice was read at rows 8..24).
TYPED_TEST(AttentionRobustness, ReplacedInProjWeightThenCrossAttention) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 1});
  mha.in_proj_weight.value = Tensor<T, 2>(8, 8);
  const auto q = random_tensor<T, 3>({1, 3, 8}, 1);
  const auto mem = random_tensor<T, 3>({1, 5, 8}, 2);
  TESSERA_EXPECT_THROW_MSG(
      mha.forward(q, mem, mem), ShapeError,
      "tessera::nn::MultiheadAttention::forward: parameter 'in_proj_weight' has shape [8, 8], "
      "expected [24, 8]");
}

// Kind 3: KVCache{k, v = [1, 16, 8], length = 1000}, then attend (was a heap overflow).
TYPED_TEST(AttentionRobustness, CacheLengthPastItsCapacity) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 1});
  const KVCache<T> cache{Tensor<T, 3>(1, 16, 8), Tensor<T, 3>(1, 16, 8), 1000};
  TESSERA_EXPECT_THROW_MSG(mha.attend(random_tensor<T, 3>({1, 1, 8}, 1), cache), ValueError,
                           "tessera::nn::MultiheadAttention::attend: argument 'cache' has length "
                           "1000, expected a value in [0, 16]");
}

// Kind 6: a NaN in a query row gave a zero row; one NaN in in_proj_weight gave a finite output.
TYPED_TEST(AttentionRobustness, NaNQueryRowAndNaNWeight) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto q = random_tensor<T, 4>({1, 2, 4, 8}, 1);
  const auto k = random_tensor<T, 4>({1, 2, 6, 8}, 2);
  const auto v = random_tensor<T, 4>({1, 2, 6, 8}, 3);
  for (Index d = 0; d < 8; ++d) q(0, 1, 2, d) = nan;
  for (auto impl : {tessera::AttentionImpl::fused, tessera::AttentionImpl::reference}) {
    const auto out = tessera::scaled_dot_product_attention(q, k, v, {.impl = impl});
    for (Index h = 0; h < 2; ++h)
      for (Index i = 0; i < 4; ++i)
        for (Index e = 0; e < 8; ++e) EXPECT_EQ(std::isnan(out(0, h, i, e)), h == 1 && i == 2);
  }
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 1});
  mha.in_proj_weight.value(0, 0) = nan;
  const auto x = random_tensor<T, 3>({1, 3, 8}, 4);
  const auto y = mha.forward(x, x, x).output;
  for (Index i = 0; i < y.size(); ++i) EXPECT_TRUE(std::isnan(y.data()[i])) << i;
}

// Kind 8: .scale = 1e39 passed a check done in double and gave 48/48 NaN in float.
TYPED_TEST(AttentionRobustness, ScaleFiniteInDoubleButNotInFloat) {
  using T = TypeParam;
  const auto q = random_tensor<T, 4>({1, 2, 3, 8}, 1);
  const auto k = random_tensor<T, 4>({1, 2, 4, 8}, 2);
  const auto v = random_tensor<T, 4>({1, 2, 4, 8}, 3);
  if constexpr (std::is_same_v<T, float>) {
    TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(q, k, v, {.scale = 1e39}),
                             ValueError, "tessera::scaled_dot_product_attention: argument 'scale'");
  } else {
    const auto out = tessera::scaled_dot_product_attention(q, k, v, {.scale = 1e39});
    for (Index i = 0; i < out.size(); ++i) EXPECT_TRUE(std::isfinite(out.data()[i]));
  }
}

// Kind 15: zero-size MultiheadAttention and SDPA inputs (null-pointer arithmetic under UBSan).
TYPED_TEST(AttentionRobustness, ZeroSizeInputs) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 1});
  const Tensor<T, 3> empty(0, 0, 8), none(2, 0, 8);
  EXPECT_EQ(mha.forward(empty, empty, empty).output.size(), 0);
  const auto x = random_tensor<T, 3>({2, 3, 8}, 1);
  const auto y = mha.forward(x, none, none).output;  // no keys: out_proj's bias (zero)
  for (Index i = 0; i < y.size(); ++i) EXPECT_EQ(y.data()[i], T(0));
  const Tensor<T, 4> q(1, 1, 0, 4), k(1, 1, 0, 4);
  EXPECT_EQ(tessera::scaled_dot_product_attention(q, k, k).size(), 0);
  const Tensor<T, 4> q2(1, 2, 3, 4), k2(1, 2, 0, 4);
  const auto z = tessera::scaled_dot_product_attention(q2, k2, k2);
  for (Index i = 0; i < z.size(); ++i) EXPECT_EQ(z.data()[i], T(0));
}

// Kind 16: fused decoding over 8,192 keys differed by up to 4e-8 between thread counts.
TYPED_TEST(AttentionRobustness, DecodingOver8192KeysOnAnyThreadCount) {
  using T = TypeParam;
  if (tessera::max_threads() < 2) GTEST_SKIP() << "built without OpenMP: one thread only";
  const auto q = random_tensor<T, 4>({1, 1, 1, 64}, 1);
  const auto k = random_tensor<T, 4>({1, 1, 8192, 64}, 2);
  const auto v = random_tensor<T, 4>({1, 1, 8192, 64}, 3);
  tessera::set_num_threads(1);
  const auto one = tessera::scaled_dot_product_attention(q, k, v);
  for (int threads : {2, 3}) {
    tessera::set_num_threads(threads);
    EXPECT_TRUE(tessera::test::same_bits(tessera::scaled_dot_product_attention(q, k, v), one))
        << threads << " threads";
  }
  tessera::set_num_threads(tessera::max_threads());
}

// prepack() then load_state_dict (or a copy of the module): the packed copies of the old
// projection weights must not be used; forward falls back to the current weights.
TYPED_TEST(AttentionRobustness, PackedProjectionsNeverOutliveTheirWeights) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 4, 8);
  x.setRandom(3);
  MultiheadAttention<T> a({.embed_dim = 8, .num_heads = 2, .seed = 1});
  const MultiheadAttention<T> b({.embed_dim = 8, .num_heads = 2, .seed = 77});
  a.prepack();
  EXPECT_TRUE(a.is_prepacked());
  a.load_state_dict(b.state_dict());
  EXPECT_FALSE(a.is_prepacked());
  EXPECT_TRUE(tessera::test::same_bits(a.forward(x, x, x).output, b.forward(x, x, x).output));

  // Separate q/k/v weights (kdim, vdim != embed_dim) and cross-attention slices as well.
  MultiheadAttention<T> c({.embed_dim = 8, .num_heads = 2, .kdim = 6, .vdim = 5, .seed = 1});
  const MultiheadAttention<T> d({.embed_dim = 8, .num_heads = 2, .kdim = 6, .vdim = 5, .seed = 5});
  Tensor<T, 3> k(2, 3, 6), v(2, 3, 5);
  k.setRandom(4);
  v.setRandom(5);
  c.prepack();
  c.load_state_dict(d.state_dict());
  EXPECT_TRUE(tessera::test::same_bits(c.forward(x, k, v).output, d.forward(x, k, v).output));

  // A copy of a prepacked module with a NaN in its in_proj_weight: NaN out.
  a.prepack();
  MultiheadAttention<T> e = a;
  e.in_proj_weight.value(0, 0) = std::numeric_limits<T>::quiet_NaN();
  const auto y = e.forward(x, x, x).output;
  bool any = false;
  for (Index i = 0; i < y.size(); ++i) any = any || std::isnan(y.data()[i]);
  EXPECT_TRUE(any);
}

}  // namespace attention_test
