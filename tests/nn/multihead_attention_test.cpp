#include "tessera/nn/multihead_attention.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fixture.hpp"
#include "test_util.hpp"

namespace multihead_attention_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::Tensor;
using tessera::nn::MultiheadAttention;
using tessera::nn::MultiheadAttentionOptions;

template <class T>
class MultiheadAttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(MultiheadAttentionTest, tessera::test::Scalars);

MultiheadAttentionOptions options_from(const nlohmann::json& j) {
  return {.embed_dim = j.at("embed_dim").get<Index>(),
          .num_heads = j.at("num_heads").get<Index>(),
          .bias = j.value("bias", true),
          .add_bias_kv = j.value("add_bias_kv", false),
          .add_zero_attn = j.value("add_zero_attn", false),
          .kdim = j.value("kdim", Index{0}),
          .vdim = j.value("vdim", Index{0})};
}

// Plain-loop multi-head attention in long double, for tests that have no fixture.
template <class T>
Tensor<T, 3> reference_mha(const MultiheadAttention<T>& m, const Tensor<T, 3>& q,
                           const Tensor<T, 3>& kv, const Tensor<bool, 2>* pad_blocked,
                           bool causal) {
  const Index E = m.embed_dim(), H = m.num_heads(), hd = m.head_dim();
  const Index B = q.dim(0), Lq = q.dim(1), Lk = kv.dim(1);
  auto proj = [&](const Tensor<T, 3>& x, int part) {
    Tensor<long double, 3> y(x.dim(0), x.dim(1), E);
    for (Index b = 0; b < x.dim(0); ++b)
      for (Index i = 0; i < x.dim(1); ++i)
        for (Index o = 0; o < E; ++o) {
          long double acc = m.options().bias ? m.in_proj_bias.value(part * E + o) : 0;
          for (Index c = 0; c < E; ++c)
            acc += (long double)m.in_proj_weight.value(part * E + o, c) * x(b, i, c);
          y(b, i, o) = acc;
        }
    return y;
  };
  const auto Q = proj(q, 0), K = proj(kv, 1), V = proj(kv, 2);
  Tensor<long double, 3> heads(B, Lq, E);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < Lq; ++i) {
        std::vector<long double> s(Lk);
        long double mx = -INFINITY;
        for (Index j = 0; j < Lk; ++j) {
          long double a = 0;
          for (Index d = 0; d < hd; ++d) a += Q(b, i, h * hd + d) * K(b, j, h * hd + d);
          a /= std::sqrt((long double)hd);
          if ((pad_blocked && (*pad_blocked)(b, j)) || (causal && j > i)) a = -INFINITY;
          s[j] = a;
          mx = std::max(mx, a);
        }
        long double z = 0;
        for (auto& v : s) z += (v = (mx == -INFINITY ? 0 : std::exp(v - mx)));
        for (Index d = 0; d < hd; ++d) {
          long double acc = 0;
          for (Index j = 0; j < Lk; ++j) acc += (z > 0 ? s[j] / z : 0) * V(b, j, h * hd + d);
          heads(b, i, h * hd + d) = acc;
        }
      }
  Tensor<T, 3> out(B, Lq, E);
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < Lq; ++i)
      for (Index o = 0; o < E; ++o) {
        long double acc = m.options().bias ? m.out_proj.bias.value(o) : 0;
        for (Index c = 0; c < E; ++c)
          acc += (long double)m.out_proj.weight.value(o, c) * heads(b, i, c);
        out(b, i, o) = static_cast<T>(acc);
      }
  return out;
}

TYPED_TEST(MultiheadAttentionTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("mha_");
  ASSERT_GE(names.size(), 10u) << "PyTorch fixtures for MultiheadAttention are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    MultiheadAttention<T> mha(options_from(fx.options));
    mha.load_state_dict(fx.dict, "module.", /*strict=*/false);
    // Strict loading of exactly the module's keys must also succeed.
    tessera::io::StateDict only_module;
    for (const auto& [key, st] : fx.dict)
      if (key.rfind("module.", 0) == 0) only_module.insert(key, st);
    mha.load_state_dict(only_module, "module.");

    const auto query = fx.input<T, 3>("query");
    const bool self = fx.forward.value("self_attention", false);
    const auto key = self ? query : fx.input<T, 3>("key");
    const auto value = self ? query : fx.input<T, 3>("value");
    Tensor<bool, 2> pad_b;
    Tensor<T, 2> pad_f;
    Tensor<bool, 3> am_b3;
    Tensor<T, 3> am_f3;
    Tensor<bool, 2> am_b2;
    Tensor<T, 2> am_f2;
    tessera::nn::MultiheadAttentionForwardOptions fo;
    fo.key_padding_mask = fx.mask<T, 2>("key_padding_mask", pad_b, pad_f);
    if (fx.has_input("attn_mask")) {
      if (fx.dict.at("input.attn_mask").shape.size() == 3)
        fo.attn_mask = fx.mask<T, 3>("attn_mask", am_b3, am_f3);
      else
        fo.attn_mask = fx.mask<T, 2>("attn_mask", am_b2, am_f2);
    }
    fo.need_weights = fx.forward.value("need_weights", false);
    fo.average_attn_weights = fx.forward.value("average_attn_weights", true);
    fo.is_causal = fx.forward.value("is_causal", false);

    const auto out =
        self ? mha.forward(query, query, query, fo) : mha.forward(query, key, value, fo);
    tessera::test::expect_tensor_near(out.output, fx.expected<T, 3>("output"),
                                      tessera::test::parity_tol<T>(), name + " output");
    if (fo.need_weights) {
      if (fo.average_attn_weights) {
        ASSERT_TRUE(out.attn_weights.has_value());
        tessera::test::expect_tensor_near(*out.attn_weights, fx.expected<T, 3>("attn_weights"),
                                          tessera::test::parity_tol<T>(), name + " weights");
      } else {
        ASSERT_TRUE(out.attn_weights_per_head.has_value());
        tessera::test::expect_tensor_near(*out.attn_weights_per_head,
                                          fx.expected<T, 4>("attn_weights"),
                                          tessera::test::parity_tol<T>(), name + " weights");
      }
    }
  }
}

TYPED_TEST(MultiheadAttentionTest, MatchesPlainLoopWithPaddingAndCausal) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 12, .num_heads = 3, .seed = 5});
  mha.in_proj_bias.value.setRandom(6);
  mha.out_proj.bias.value.setRandom(7);
  Tensor<T, 3> x(2, 6, 12);
  x.setRandom(8);
  Tensor<bool, 2> pad(2, 6);
  pad(1, 4) = pad(1, 5) = true;
  const auto ref = reference_mha(mha, x, x, &pad, /*causal=*/true);
  const auto out =
      mha.forward(x, x, x, {.key_padding_mask = Mask::blocked(pad), .is_causal = true});
  tessera::test::expect_tensor_near(out.output, ref, T(50) * tessera::test::tol<T>(),
                                    "padded causal");
}

TYPED_TEST(MultiheadAttentionTest, SelfAttentionPathEqualsSeparateProjections) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 16, .num_heads = 4, .seed = 1});
  mha.in_proj_bias.value.setRandom(2);
  Tensor<T, 3> x(3, 5, 16);
  x.setRandom(3);
  const Tensor<T, 3> k_copy(x), v_copy(x);
  const auto fused = mha.forward(x, x, x).output;                // one [3E, E] product
  const auto kv_shared = mha.forward(x, k_copy, k_copy).output;  // q alone, then [2E, E]
  const auto separate = mha.forward(x, k_copy, v_copy).output;   // three products
  tessera::test::expect_tensor_near(kv_shared, fused, tessera::test::tol<T>() * 10, "kv shared");
  tessera::test::expect_tensor_near(separate, fused, tessera::test::tol<T>() * 10, "separate");
}

// prepack() for each use gives what the unpacked weights give on every projection path: the
// fused [3E, E] product, the [2E, E] key-value slice, separate key and value, separate weights
// (kdim, vdim != embed_dim); a path whose slice was not packed falls back to the weight itself.
TYPED_TEST(MultiheadAttentionTest, PrepackedProjectionsEqualUnpacked) {
  using T = TypeParam;
  using tessera::nn::AttentionUse;
  const auto tol = tessera::test::tol<T>() * 10;
  for (Index kdim : {Index{0}, Index{24}}) {
    MultiheadAttention<T> mha(
        {.embed_dim = 64, .num_heads = 4, .kdim = kdim, .vdim = kdim, .seed = 3});
    const Index kd = kdim ? kdim : 64;
    Tensor<T, 3> x(2, 37, 64), mem(2, 29, kd), val(2, 29, kd);
    x.setRandom(4);
    mem.setRandom(5);
    val.setRandom(6);
    const auto run = [&] {
      std::vector<Tensor<T, 3>> outs;
      if (!kdim) outs.push_back(mha.forward(x, x, x).output);
      outs.push_back(mha.forward(x, mem, mem).output);
      outs.push_back(mha.forward(x, mem, val).output);
      return outs;
    };
    const auto want = run();
    for (AttentionUse use : {AttentionUse::self, AttentionUse::cross, AttentionUse::both}) {
      mha.prepack(use);
      EXPECT_TRUE(mha.is_prepacked());
      const auto got = run();
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t i = 0; i < got.size(); ++i)
        tessera::test::expect_tensor_near(got[i], want[i], tol,
                                          "use " + std::to_string(int(use)) + " path " +
                                              std::to_string(i) + " kdim " + std::to_string(kdim));
    }
    mha.unprepack();
    EXPECT_FALSE(mha.is_prepacked());
    const auto again = run();
    for (std::size_t i = 0; i < again.size(); ++i)
      EXPECT_TRUE(tessera::test::same_bits(again[i], want[i])) << "after unprepack, path " << i;
  }
}

TYPED_TEST(MultiheadAttentionTest, WeightsAverageEqualsMeanOfHeads) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 4});
  Tensor<T, 3> q(2, 3, 8), kv(2, 5, 8);
  q.setRandom(1);
  kv.setRandom(2);
  const auto avg = mha.forward(q, kv, kv, {.need_weights = true});
  const auto per = mha.forward(q, kv, kv, {.need_weights = true, .average_attn_weights = false});
  ASSERT_TRUE(avg.attn_weights && per.attn_weights_per_head);
  EXPECT_FALSE(avg.attn_weights_per_head.has_value());
  for (Index b = 0; b < 2; ++b)
    for (Index i = 0; i < 3; ++i) {
      T row_sum = 0;
      for (Index j = 0; j < 5; ++j) {
        const T mean =
            ((*per.attn_weights_per_head)(b, 0, i, j) + (*per.attn_weights_per_head)(b, 1, i, j)) /
            2;
        EXPECT_NEAR((*avg.attn_weights)(b, i, j), mean, tessera::test::tol<T>());
        row_sum += (*avg.attn_weights)(b, i, j);
      }
      EXPECT_NEAR(row_sum, T(1), 10 * tessera::test::tol<T>());
    }
}

TYPED_TEST(MultiheadAttentionTest, FullyMaskedQueryGivesBiasOnlyNoNaN) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 4});
  mha.out_proj.bias.value.setRandom(9);
  Tensor<T, 3> x(2, 4, 8);
  x.setRandom(1);
  Tensor<bool, 2> pad(2, 4);
  pad.setConstant(true);  // batch 0 and 1: every key is padding
  const auto out =
      mha.forward(x, x, x, {.key_padding_mask = Mask::blocked(pad), .need_weights = true});
  for (Index b = 0; b < 2; ++b)
    for (Index i = 0; i < 4; ++i)
      for (Index o = 0; o < 8; ++o) {
        // Zero attention output, so only the output projection's bias remains.
        EXPECT_NEAR(out.output(b, i, o), mha.out_proj.bias.value(o), tessera::test::tol<T>());
      }
  for (Index k = 0; k < out.attn_weights->size(); ++k) EXPECT_EQ(out.attn_weights->data()[k], T(0));
}

TYPED_TEST(MultiheadAttentionTest, CachedAttendEqualsCausalForward) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 12, .num_heads = 3, .seed = 11});
  mha.in_proj_bias.value.setRandom(12);
  Tensor<T, 3> x(2, 7, 12);
  x.setRandom(13);
  const auto full = mha.forward(x, x, x, {.is_causal = true}).output;
  tessera::nn::KVCache<T> cache;
  // Prefill three tokens at once, then one at a time.
  Index t = 0;
  for (Index n : {3, 1, 1, 1, 1}) {
    Tensor<T, 3> chunk(2, n, 12);
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < n; ++i)
        for (Index e = 0; e < 12; ++e) chunk(b, i, e) = x(b, t + i, e);
    mha.append_kv(cache, chunk, chunk);
    const auto y = mha.attend(chunk, cache, {.is_causal = true}).output;
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < n; ++i)
        for (Index e = 0; e < 12; ++e)
          EXPECT_NEAR(y(b, i, e), full(b, t + i, e), 20 * tessera::test::tol<T>()) << "t=" << t + i;
    t += n;
  }
  EXPECT_EQ(cache.length, 7);
}

TYPED_TEST(MultiheadAttentionTest, ConcurrentForwardIsIdenticalToSingleCall) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 32, .num_heads = 4, .seed = 21});
  Tensor<T, 3> x(2, 33, 32);
  x.setRandom(22);
  Tensor<bool, 2> pad(2, 33);
  pad(0, 30) = true;
  const tessera::nn::MultiheadAttentionForwardOptions fo{.key_padding_mask = Mask::blocked(pad),
                                                         .need_weights = true};
  const auto single = mha.forward(x, x, x, fo);
  std::vector<std::thread> threads;
  std::vector<Tensor<T, 3>> outs(8);
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] { outs[t] = mha.forward(x, x, x, fo).output; });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) {
    ASSERT_EQ(outs[t].shape(), single.output.shape());
    for (Index i = 0; i < single.output.size(); ++i)
      ASSERT_EQ(outs[t].data()[i], single.output.data()[i]) << "thread " << t;
  }
}

TYPED_TEST(MultiheadAttentionTest, RejectsBadShapesAndOptions) {
  using T = TypeParam;
  using tessera::ShapeError;
  using tessera::ValueError;
  TESSERA_EXPECT_THROW_MSG(MultiheadAttention<T>({.embed_dim = 0, .num_heads = 1}), ValueError,
                           "tessera::nn::MultiheadAttention", "embed_dim is 0");
  TESSERA_EXPECT_THROW_MSG(MultiheadAttention<T>({.embed_dim = 10, .num_heads = 3}), ValueError,
                           "num_heads is 3", "divisor of embed_dim = 10");
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2});
  Tensor<T, 3> q(2, 3, 8), k(2, 5, 8), bad_q(2, 3, 7), bad_k(2, 5, 6), bad_v(2, 4, 8);
  TESSERA_EXPECT_THROW_MSG(mha.forward(bad_q, k, k), ShapeError, "'query'", "[2, 3, 7]",
                           "[batch, Lq, 8]");
  TESSERA_EXPECT_THROW_MSG(mha.forward(q, bad_k, k), ShapeError, "'key'", "[2, 5, 6]", "[2, 5, 8]");
  TESSERA_EXPECT_THROW_MSG(mha.forward(q, k, bad_v), ShapeError, "'value'", "[2, 4, 8]",
                           "[2, 5, 8]");
  Tensor<bool, 2> pad(2, 4), am(3, 4);
  TESSERA_EXPECT_THROW_MSG(mha.forward(q, k, k, {.key_padding_mask = Mask::blocked(pad)}),
                           ShapeError, "'key_padding_mask'", "[2, 4]", "[2, 5]");
  TESSERA_EXPECT_THROW_MSG(mha.forward(q, k, k, {.attn_mask = Mask::blocked(am)}), ShapeError,
                           "'attn_mask'", "[3, 4]", "[3, 5]", "[4, 3, 5]");
  MultiheadAttention<T> with_bias_kv({.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  tessera::nn::KVCache<T> cache;
  TESSERA_EXPECT_THROW_MSG(with_bias_kv.append_kv(cache, k, k), ValueError, "append_kv",
                           "add_bias_kv");
  Tensor<T, 3> k1(1, 5, 8);
  mha.append_kv(cache, k, k);
  TESSERA_EXPECT_THROW_MSG(mha.append_kv(cache, k1, k1), ShapeError, "batch 1", "batch 2");
  TESSERA_EXPECT_THROW_MSG(mha.attend(Tensor<T, 3>(1, 1, 8), cache), ShapeError, "batch 1",
                           "batch 2");
}

TYPED_TEST(MultiheadAttentionTest, ForwardIntoEqualsForwardBitwise) {
  using T = TypeParam;
  using tessera::test::same_bits;
  using Fo = tessera::nn::MultiheadAttentionForwardOptions;
  MultiheadAttention<T> packed({.embed_dim = 12, .num_heads = 3, .seed = 31});
  MultiheadAttention<T> bias_kv(
      {.embed_dim = 12, .num_heads = 3, .add_bias_kv = true, .add_zero_attn = true, .seed = 32});
  MultiheadAttention<T> separate({.embed_dim = 12, .num_heads = 3, .kdim = 5, .vdim = 7});
  packed.in_proj_bias.value.setRandom(33);
  Tensor<T, 3> q(2, 4, 12), kv(2, 6, 12), k5(2, 6, 5), v7(2, 6, 7), res(2, 4, 12);
  q.setRandom(34), kv.setRandom(35), k5.setRandom(36), v7.setRandom(37), res.setRandom(38);
  Tensor<bool, 2> pad_q(2, 4), pad_kv(2, 6), am(4, 6);
  pad_q(1, 3) = pad_kv(0, 5) = am(2, 1) = true;
  const auto rows = res.template reshape<2>({-1, 12});
  struct Case {
    const MultiheadAttention<T>* m;
    const Tensor<T, 3>*k, *v;
    Fo fo;
    bool residual;
  };
  const Case cases[] = {
      {&packed, &q, &q, {.key_padding_mask = Mask::blocked(pad_q), .is_causal = true}, false},
      {&packed, &q, &q, {.need_weights = true}, true},
      {&packed, &kv, &kv, {.attn_mask = Mask::blocked(am), .need_weights = true}, true},
      {&packed,
       &kv,
       &kv,
       {.key_padding_mask = Mask::blocked(pad_kv),
        .need_weights = true,
        .average_attn_weights = false},
       false},
      {&bias_kv, &kv, &kv, {.key_padding_mask = Mask::blocked(pad_kv)}, true},
      {&separate, &k5, &v7, {.attn_mask = Mask::blocked(am), .need_weights = true}, false},
  };
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE("case " + std::to_string(i++));
    const std::optional<tessera::TensorMap<const T, 2>> r =
        c.residual ? std::optional(rows) : std::nullopt;
    const auto expected = c.m->forward(q, *c.k, *c.v, c.fo, r);
    Tensor<T, 3> out(2, 4, 12);
    const auto w = c.m->forward_into(q, *c.k, *c.v, out, c.fo, r);
    EXPECT_TRUE(same_bits(out, expected.output));
    ASSERT_EQ(w.attn_weights.has_value(), expected.attn_weights.has_value());
    ASSERT_EQ(w.attn_weights_per_head.has_value(), expected.attn_weights_per_head.has_value());
    if (w.attn_weights) {
      EXPECT_TRUE(same_bits(*w.attn_weights, *expected.attn_weights));
    }
    if (w.attn_weights_per_head) {
      EXPECT_TRUE(same_bits(*w.attn_weights_per_head, *expected.attn_weights_per_head));
    }
    if (c.k == &q) {
      // out may be the query: it is projected before out is written.
      Tensor<T, 3> in_place(q);
      c.m->forward_into(in_place, in_place, in_place, in_place, c.fo, r);
      EXPECT_TRUE(same_bits(in_place, expected.output));
    }
  }
}

TYPED_TEST(MultiheadAttentionTest, AttendIntoEqualsAttend) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 12, .num_heads = 3, .seed = 41});
  Tensor<T, 3> x(2, 5, 12), res(2, 5, 12);
  x.setRandom(42), res.setRandom(43);
  tessera::nn::KVCache<T> cache;
  mha.append_kv(cache, x, x);
  const tessera::nn::MultiheadAttentionForwardOptions fo{.need_weights = true, .is_causal = true};
  const auto expected = mha.attend(x, cache, fo);
  Tensor<T, 3> out(2, 5, 12);
  const auto w = mha.attend_into(x, cache, out, fo);
  EXPECT_TRUE(tessera::test::same_bits(out, expected.output));
  ASSERT_TRUE(w.attn_weights.has_value());
  EXPECT_TRUE(tessera::test::same_bits(*w.attn_weights, *expected.attn_weights));
  // With a residual: the output projection plus the residual, added in the same order.
  mha.attend_into(x, cache, out, fo, res.template reshape<2>({-1, 12}));
  Tensor<T, 3> sum(expected.output);
  sum.as_array() = res.as_array() + sum.as_array();
  EXPECT_TRUE(tessera::test::same_bits(out, sum));
}

TYPED_TEST(MultiheadAttentionTest, RepeatedForwardMakesNoScratchAllocation) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 16, .num_heads = 4, .add_bias_kv = true, .seed = 51});
  Tensor<T, 3> q(2, 7, 16), kv(2, 9, 16);
  q.setRandom(52), kv.setRandom(53);
  const tessera::nn::MultiheadAttentionForwardOptions fo{.need_weights = true};
  tessera::test::expect_repeat_allocates_nothing([&] { (void)mha.forward(q, kv, kv, fo); });
}

TYPED_TEST(MultiheadAttentionTest, ForwardIntoRejectsBadOut) {
  using T = TypeParam;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2});
  Tensor<T, 3> q(2, 3, 8), k(2, 5, 8), bad(2, 3, 7), wrong_len(2, 5, 8);
  TESSERA_EXPECT_THROW_MSG(mha.forward_into(q, k, k, bad), tessera::ShapeError,
                           "tessera::nn::MultiheadAttention::forward", "'out'", "[2, 3, 7]",
                           "[2, 3, 8]");
  TESSERA_EXPECT_THROW_MSG(mha.forward_into(q, k, k, wrong_len), tessera::ShapeError, "'out'",
                           "[2, 5, 8]", "[2, 3, 8]");
  tessera::nn::KVCache<T> cache;
  mha.append_kv(cache, k, k);
  TESSERA_EXPECT_THROW_MSG(mha.attend_into(q, cache, bad), tessera::ShapeError,
                           "tessera::nn::MultiheadAttention::attend", "'out'", "[2, 3, 7]");
  EXPECT_EQ(tessera::detail::scratch().live_frames(), 0);
}

TYPED_TEST(MultiheadAttentionTest, StateDictNamesAndStrictLoading) {
  using T = TypeParam;
  MultiheadAttention<T> packed({.embed_dim = 8, .num_heads = 2, .add_bias_kv = true});
  const auto keys = packed.state_dict().keys();
  const std::vector<std::string> expected = {"bias_k",         "bias_v",        "in_proj_bias",
                                             "in_proj_weight", "out_proj.bias", "out_proj.weight"};
  EXPECT_EQ(keys, expected);
  MultiheadAttention<T> separate(
      {.embed_dim = 8, .num_heads = 2, .bias = false, .kdim = 5, .vdim = 3});
  const std::vector<std::string> expected_sep = {"k_proj_weight", "out_proj.weight",
                                                 "q_proj_weight", "v_proj_weight"};
  EXPECT_EQ(separate.state_dict().keys(), expected_sep);
  EXPECT_EQ(separate.k_proj_weight.shape(), (Shape<2>{8, 5}));
  TESSERA_EXPECT_THROW_MSG(separate.load_state_dict(packed.state_dict()), tessera::ValueError,
                           "missing keys:", "'q_proj_weight'",
                           "unexpected keys:", "'in_proj_weight'");
  auto sd = packed.state_dict("attn.");
  ASSERT_TRUE(sd.erase("attn.in_proj_bias"));
  sd.insert("attn.in_proj_bias", Tensor<T, 1>(23));
  TESSERA_EXPECT_THROW_MSG(packed.load_state_dict(sd, "attn."), tessera::ShapeError,
                           "'attn.in_proj_bias'", "[23]", "[24]");
}

}  // namespace multihead_attention_test

namespace multihead_attention_test {

// Every parameter replaced by a tensor of the wrong shape: each entry point (forward on the
// self- and cross-attention paths, attend, append_kv, prepack) throws a ShapeError naming itself
// and the parameter, before any projection reads past the end of the replacement.
TYPED_TEST(MultiheadAttentionTest, ParametersOfTheWrongShapeAreNamed) {
  using T = TypeParam;
  using tessera::ShapeError;
  using tessera::nn::KVCache;
  Tensor<T, 3> x(2, 3, 8), mem(2, 5, 8);
  x.setRandom(1);
  mem.setRandom(2);
  const std::string forward = "tessera::nn::MultiheadAttention::forward",
                    attend = "tessera::nn::MultiheadAttention::attend",
                    append_kv = "tessera::nn::MultiheadAttention::append_kv",
                    prepack = "tessera::nn::MultiheadAttention::prepack";
  {
    MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 1});
    mha.in_proj_weight.value = Tensor<T, 2>(8, 8);
    const std::string msg = "parameter 'in_proj_weight' has shape [8, 8], expected [24, 8]";
    TESSERA_EXPECT_THROW_MSG(mha.forward(x, mem, mem), ShapeError, forward.c_str(), msg.c_str());
    TESSERA_EXPECT_THROW_MSG(mha.forward(x, x, x), ShapeError, msg.c_str());
    KVCache<T> cache;
    TESSERA_EXPECT_THROW_MSG(mha.append_kv(cache, mem, mem), ShapeError, append_kv.c_str(),
                             msg.c_str());
    EXPECT_EQ(cache.length, 0);
    TESSERA_EXPECT_THROW_MSG(mha.attend(x, cache), ShapeError, attend.c_str(), msg.c_str());
    TESSERA_EXPECT_THROW_MSG(mha.prepack(), ShapeError, prepack.c_str(), msg.c_str());
  }
  struct Case {
    const char* name;
    const char* message;
    std::function<void(MultiheadAttention<T>&)> replace;
  };
  const std::vector<Case> cases = {
      {"in_proj_bias", "parameter 'in_proj_bias' has shape [8], expected [24]",
       [](auto& m) { m.in_proj_bias.value = Tensor<T, 1>(8); }},
      {"bias_k", "parameter 'bias_k' has shape [1, 1, 4], expected [1, 1, 8]",
       [](auto& m) { m.bias_k.value = Tensor<T, 3>(1, 1, 4); }},
      {"bias_v", "parameter 'bias_v' has shape [8], expected [1, 1, 8]",
       [](auto& m) { m.bias_v.value = Tensor<T, 3>(8, 1, 1); }},
      {"out_proj.weight", "parameter 'out_proj.weight' has shape [8, 4], expected [8, 8]",
       [](auto& m) { m.out_proj.weight.value = Tensor<T, 2>(8, 4); }},
      {"out_proj.bias", "parameter 'out_proj.bias' has shape [0], expected [8]",
       [](auto& m) { m.out_proj.bias.value = Tensor<T, 1>(0); }},
  };
  for (const auto& c : cases) {
    MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .add_bias_kv = true, .seed = 1});
    c.replace(mha);
    std::string message = c.message;
    if (std::string(c.name) == "bias_v") message = "parameter 'bias_v' has shape [8, 1, 1]";
    TESSERA_EXPECT_THROW_MSG(mha.forward(x, mem, mem), ShapeError, forward.c_str(),
                             message.c_str());
    TESSERA_EXPECT_THROW_MSG(mha.forward(x, x, x, {.need_weights = true}), ShapeError,
                             message.c_str());
    TESSERA_EXPECT_THROW_MSG(mha.prepack(), ShapeError, prepack.c_str(), message.c_str());
  }
  // Separate projection weights (kdim, vdim != embed_dim).
  MultiheadAttention<T> sep({.embed_dim = 8, .num_heads = 2, .kdim = 5, .vdim = 3, .seed = 1});
  Tensor<T, 3> k(2, 4, 5), v(2, 4, 3);
  sep.k_proj_weight.value = Tensor<T, 2>(8, 3);
  TESSERA_EXPECT_THROW_MSG(sep.forward(x, k, v), ShapeError, forward.c_str(),
                           "parameter 'k_proj_weight' has shape [8, 3], expected [8, 5]");
  KVCache<T> cache;
  TESSERA_EXPECT_THROW_MSG(sep.append_kv(cache, k, v), ShapeError, "'k_proj_weight'");
  sep.k_proj_weight.value = Tensor<T, 2>(8, 5);
  sep.q_proj_weight.value = Tensor<T, 2>(4, 8);
  TESSERA_EXPECT_THROW_MSG(sep.attend(x, cache), ShapeError, attend.c_str(),
                           "parameter 'q_proj_weight' has shape [4, 8], expected [8, 8]");
  sep.q_proj_weight.value = Tensor<T, 2>(8, 8);
  sep.v_proj_weight.value = Tensor<T, 2>(8, 8);
  TESSERA_EXPECT_THROW_MSG(sep.forward(x, k, v), ShapeError,
                           "parameter 'v_proj_weight' has shape [8, 8], expected [8, 3]");
  // Named under a prefix when a composing module checks them.
  TESSERA_EXPECT_THROW_MSG(sep.check_parameters("outer", "layers.0.self_attn."), ShapeError,
                           "outer: parameter 'layers.0.self_attn.v_proj_weight'");
}

// A cache is checked before it is read or appended to: a length past its capacity (the issue's
// KVCache{k, v = [1, 16, 8], length = 1000}), a negative length, k and v of different shapes, rows
// of the wrong width.
TYPED_TEST(MultiheadAttentionTest, InvalidCachesAreRejected) {
  using T = TypeParam;
  using tessera::ShapeError;
  using tessera::ValueError;
  using tessera::nn::KVCache;
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 3});
  Tensor<T, 3> q(1, 1, 8), kv(1, 2, 8);
  q.setRandom(1);
  kv.setRandom(2);
  KVCache<T> too_long{Tensor<T, 3>(1, 16, 8), Tensor<T, 3>(1, 16, 8), 1000};
  TESSERA_EXPECT_THROW_MSG(mha.attend(q, too_long), ValueError,
                           "tessera::nn::MultiheadAttention::attend",
                           "argument 'cache' has length 1000, expected a value in [0, 16]");
  TESSERA_EXPECT_THROW_MSG(mha.append_kv(too_long, kv, kv), ValueError,
                           "tessera::nn::MultiheadAttention::append_kv", "length 1000");
  KVCache<T> negative{Tensor<T, 3>(1, 16, 8), Tensor<T, 3>(1, 16, 8), -1};
  TESSERA_EXPECT_THROW_MSG(mha.attend(q, negative), ValueError, "length -1");
  KVCache<T> mismatched{Tensor<T, 3>(1, 16, 8), Tensor<T, 3>(1, 4, 8), 2};
  TESSERA_EXPECT_THROW_MSG(mha.attend(q, mismatched), ShapeError,
                           "k of shape [1, 16, 8] and v of shape [1, 4, 8]");
  // Even empty, a cache whose v is smaller than its k would be written past v's end.
  KVCache<T> mismatched_empty{Tensor<T, 3>(1, 16, 8), Tensor<T, 3>(1, 1, 8), 0};
  TESSERA_EXPECT_THROW_MSG(mha.append_kv(mismatched_empty, kv, kv), ShapeError,
                           "and v of shape [1, 1, 8]");
  KVCache<T> narrow{Tensor<T, 3>(1, 16, 4), Tensor<T, 3>(1, 16, 4), 3};
  TESSERA_EXPECT_THROW_MSG(mha.attend(q, narrow), ShapeError, "[1, 16, 4]",
                           "expected [batch, capacity, 8]");
  TESSERA_EXPECT_THROW_MSG(mha.append_kv(narrow, kv, kv), ShapeError, "[1, 16, 4]");
  // An empty cache of any shape is fine: append_kv reallocates it.
  KVCache<T> empty_narrow{Tensor<T, 3>(3, 2, 4), Tensor<T, 3>(3, 2, 4), 0};
  mha.append_kv(empty_narrow, kv, kv);
  EXPECT_EQ(empty_narrow.length, 2);
  EXPECT_EQ(empty_narrow.k.dim(2), 8);
}

// NaN in, NaN out: a NaN in one query row makes that row NaN on the fused path, with the weights
// (the reference path) and when attending over a cache; one NaN in in_proj_weight makes the whole
// output NaN (its head's scores are all NaN and out_proj mixes the heads).
TYPED_TEST(MultiheadAttentionTest, NaNInputsAndWeightsGiveNaN) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .seed = 5});
  Tensor<T, 3> x(2, 5, 8), mem(2, 300, 8);
  x.setRandom(1);
  mem.setRandom(2);
  x(1, 2, 3) = nan;
  const auto expect_row_nan = [&](const Tensor<T, 3>& y, const std::string& what) {
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < 5; ++i)
        for (Index e = 0; e < 8; ++e)
          ASSERT_EQ(std::isnan(y(b, i, e)), b == 1 && i == 2) << what << " b=" << b << " i=" << i;
  };
  expect_row_nan(mha.forward(x, mem, mem).output, "fused");
  const auto w = mha.forward(x, mem, mem, {.need_weights = true});
  expect_row_nan(w.output, "with weights");
  for (Index j = 0; j < 300; ++j) EXPECT_TRUE(std::isnan((*w.attn_weights)(1, 2, j)));
  tessera::nn::KVCache<T> cache;
  mha.append_kv(cache, mem, mem);
  expect_row_nan(mha.attend(x, cache).output, "attend");

  Tensor<T, 3> clean(2, 5, 8);
  clean.setRandom(3);
  for (Index row : {1, 9, 20}) {  // a query, a key and a value row of in_proj_weight
    MultiheadAttention<T> poisoned({.embed_dim = 8, .num_heads = 2, .seed = 5});
    poisoned.in_proj_weight.value(row, 4) = nan;
    for (const auto& y :
         {poisoned.forward(clean, mem, mem).output, poisoned.forward(clean, clean, clean).output,
          poisoned.forward(clean, mem, mem, {.need_weights = true}).output})
      for (Index i = 0; i < y.size(); ++i)
        ASSERT_TRUE(std::isnan(y.data()[i])) << "in_proj_weight row " << row << " flat " << i;
  }
}

// Empty batches, sequences and caches: no pointer arithmetic on an empty buffer (UBSan), and
// with no keys the attention is zero, leaving out_proj's bias.
TYPED_TEST(MultiheadAttentionTest, EmptyInputs) {
  using T = TypeParam;
  for (bool bias_kv : {false, true}) {
    MultiheadAttention<T> mha({.embed_dim = 8, .num_heads = 2, .add_bias_kv = bias_kv, .seed = 7});
    mha.out_proj.bias.value.setRandom(8);
    for (const auto& [B, Lq, Lk] :
         {std::tuple<Index, Index, Index>{0, 3, 4}, {2, 0, 4}, {2, 3, 0}, {0, 0, 0}, {2, 0, 0}}) {
      Tensor<T, 3> q(B, Lq, 8), kv(B, Lk, 8);
      q.setRandom(1);
      kv.setRandom(2);
      const std::string what = "B=" + std::to_string(B) + " Lq=" + std::to_string(Lq) +
                               " Lk=" + std::to_string(Lk) + (bias_kv ? " bias_kv" : "");
      for (bool weights : {false, true}) {
        const auto y = mha.forward(q, kv, kv, {.need_weights = weights});
        ASSERT_EQ(y.output.shape(), (Shape<3>{B, Lq, 8})) << what;
        if (weights) {
          EXPECT_EQ(y.attn_weights->shape(), (Shape<3>{B, Lq, Lk + bias_kv})) << what;
        }
        if (!bias_kv) {
          for (Index b = 0; b < B; ++b)
            for (Index i = 0; i < Lq; ++i)
              for (Index e = 0; e < 8; ++e)
                EXPECT_NEAR(y.output(b, i, e), mha.out_proj.bias.value(e), tessera::test::tol<T>())
                    << what;
        }
      }
      if (Lq == Lk) (void)mha.forward(q, q, q);  // self-attention on an empty sequence
      if (bias_kv) continue;
      tessera::nn::KVCache<T> cache;
      mha.append_kv(cache, kv, kv);
      EXPECT_EQ(cache.length, Lk);
      const auto y = mha.attend(q, cache);
      EXPECT_EQ(y.output.shape(), (Shape<3>{B, Lq, 8})) << what;
    }
  }
}

// A default-constructed module (embed_dim 0): empty features, equal (zero) scores, uniform weights.
TYPED_TEST(MultiheadAttentionTest, DefaultConstructedModuleOnZeroFeatures) {
  using T = TypeParam;
  const MultiheadAttention<T> mha;
  const Tensor<T, 3> x(2, 3, 0);
  const auto y = mha.forward(x, x, x, {.need_weights = true});
  EXPECT_EQ(y.output.shape(), (Shape<3>{2, 3, 0}));
  for (Index i = 0; i < y.attn_weights->size(); ++i)
    EXPECT_NEAR(y.attn_weights->data()[i], T(1) / T(3), tessera::test::tol<T>());
}

// Decoding one token over 8192 cached keys (the key split) gives bit-identical results on 1, 2
// and 3 threads.
TYPED_TEST(MultiheadAttentionTest, DecodingIsBitIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  if (tessera::max_threads() < 2) GTEST_SKIP() << "built without OpenMP: one thread only";
  MultiheadAttention<T> mha({.embed_dim = 64, .num_heads = 2, .seed = 9});
  Tensor<T, 3> q(1, 1, 64), mem(1, 8192, 64);
  q.setRandom(1);
  mem.setRandom(2);
  tessera::nn::KVCache<T> cache;
  mha.append_kv(cache, mem, mem);
  tessera::set_num_threads(1);
  const auto one = mha.attend(q, cache).output;
  for (int threads : {2, 3}) {
    tessera::set_num_threads(threads);
    EXPECT_TRUE(tessera::test::same_bits(mha.attend(q, cache).output, one)) << threads;
  }
  tessera::set_num_threads(tessera::max_threads());
}

}  // namespace multihead_attention_test
