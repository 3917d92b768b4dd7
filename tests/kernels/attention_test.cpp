#include "tessera/kernels/attention.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "fixture.hpp"
#include "test_util.hpp"

namespace {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::Tensor;

template <class T>
class AttentionKernelTest : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionKernelTest, tessera::test::Scalars);

// softmax(scale q k^T + mask) v with plain loops in long double; `keep(b, h, i, j)` says whether
// key j takes part for query i, `add` adds to the score.
template <class T, class Keep, class Add>
Tensor<T, 4> reference(const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                       double scale, Keep keep, Add add, Tensor<T, 4>* weights = nullptr) {
  const Index B = q.dim(0), H = q.dim(1), Lq = q.dim(2), D = q.dim(3), Lk = k.dim(2), Dv = v.dim(3);
  Tensor<T, 4> out(B, H, Lq, Dv);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < Lq; ++i) {
        std::vector<long double> s(Lk);
        long double mx = -INFINITY;
        for (Index j = 0; j < Lk; ++j) {
          long double a = 0;
          for (Index d = 0; d < D; ++d) a += (long double)q(b, h, i, d) * k(b, h, j, d);
          a = a * scale + add(b, h, i, j);
          if (!keep(b, h, i, j)) a = -INFINITY;
          s[j] = a;
          mx = std::max(mx, a);
        }
        long double z = 0;
        for (auto& x : s) z += (x = (mx == -INFINITY ? 0.0L : std::exp(x - mx)));
        for (Index j = 0; j < Lk; ++j) {
          s[j] = z > 0 ? s[j] / z : 0;
          if (weights) (*weights)(b, h, i, j) = static_cast<T>(s[j]);
        }
        for (Index e = 0; e < Dv; ++e) {
          long double acc = 0;
          for (Index j = 0; j < Lk; ++j) acc += s[j] * v(b, h, j, e);
          out(b, h, i, e) = static_cast<T>(acc);
        }
      }
  return out;
}

template <class T>
T kernel_tol() {
  return std::is_same_v<T, float> ? T(1e-5) : T(1e-12);
}

TYPED_TEST(AttentionKernelTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("sdpa_");
  ASSERT_GE(names.size(), 6u) << "PyTorch fixtures for scaled_dot_product_attention are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    tessera::SDPAOptions opts;
    opts.causal = fx.forward.value("causal", false);
    if (fx.forward.contains("scale")) opts.scale = fx.forward.at("scale").get<double>();
    Tensor<bool, 2> b2;
    Tensor<T, 2> f2;
    Tensor<bool, 4> b4;
    Tensor<T, 4> f4;
    if (fx.has_input("mask")) {
      if (fx.dict.at("input.mask").shape.size() == 4)
        opts.mask = fx.mask<T, 4>("mask", b4, f4);
      else
        opts.mask = fx.mask<T, 2>("mask", b2, f2);
    }
    const auto r = tessera::scaled_dot_product_attention_with_weights(
        fx.input<T, 4>("q"), fx.input<T, 4>("k"), fx.input<T, 4>("v"), opts);
    tessera::test::expect_tensor_near(r.output, fx.expected<T, 4>("output"),
                                      tessera::test::parity_tol<T>(), name);
    tessera::test::expect_tensor_near(r.weights, fx.expected<T, 4>("weights"),
                                      tessera::test::parity_tol<T>(), name + " weights");
    // The output alone (no weights requested) comes from the fused kernel; it matches too.
    const auto o = tessera::scaled_dot_product_attention(fx.input<T, 4>("q"), fx.input<T, 4>("k"),
                                                         fx.input<T, 4>("v"), opts);
    tessera::test::expect_tensor_near(o, fx.expected<T, 4>("output"),
                                      tessera::test::parity_tol<T>(), name + " fused");
  }
}

TYPED_TEST(AttentionKernelTest, OddSizesAgainstReference) {
  using T = TypeParam;
  for (Index L : {1, 7, 63, 65, 130}) {
    for (Index D : {1, 8, 33}) {
      Tensor<T, 4> q(2, 2, L, D), k(2, 2, L + 3, D), v(2, 2, L + 3, 5);
      q.setRandom(L * 7 + D);
      k.setRandom(L * 11 + D);
      v.setRandom(L * 13 + D);
      const double scale = 1.0 / std::sqrt(double(D));
      const auto ref = reference(
          q, k, v, scale, [](auto...) { return true; }, [](auto...) { return 0.0; });
      const auto out = tessera::scaled_dot_product_attention(q, k, v);
      tessera::test::expect_tensor_near(out, ref, kernel_tol<T>(),
                                        "L=" + std::to_string(L) + " D=" + std::to_string(D));
      // Causal (top-left aligned: query i sees keys j <= i).
      const auto ref_c = reference(
          q, k, v, scale, [](Index, Index, Index i, Index j) { return j <= i; },
          [](auto...) { return 0.0; });
      const auto out_c = tessera::scaled_dot_product_attention(q, k, v, {.causal = true});
      tessera::test::expect_tensor_near(out_c, ref_c, kernel_tol<T>(),
                                        "causal L=" + std::to_string(L));
    }
  }
}

TYPED_TEST(AttentionKernelTest, MasksOfEveryKindAndBroadcast) {
  using T = TypeParam;
  const Index B = 2, H = 3, Lq = 5, Lk = 9, D = 4;
  Tensor<T, 4> q(B, H, Lq, D), k(B, H, Lk, D), v(B, H, Lk, 6);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  const double scale = 0.5;
  // allowed [Lq, Lk]
  Tensor<bool, 2> allow(Lq, Lk);
  for (Index i = 0; i < Lq; ++i)
    for (Index j = 0; j < Lk; ++j) allow(i, j) = (i * 3 + j) % 4 != 0;
  auto ref = reference(
      q, k, v, scale, [&](Index, Index, Index i, Index j) { return allow(i, j); },
      [](auto...) { return 0.0; });
  tessera::test::expect_tensor_near(tessera::scaled_dot_product_attention(
                                        q, k, v, {.mask = Mask::allowed(allow), .scale = scale}),
                                    ref, kernel_tol<T>(), "allowed");
  // blocked [B, 1, 1, Lk] (key padding)
  Tensor<bool, 4> pad(B, 1, 1, Lk);
  pad(1, 0, 0, 7) = pad(1, 0, 0, 8) = pad(0, 0, 0, 0) = true;
  ref = reference(
      q, k, v, scale, [&](Index b, Index, Index, Index j) { return !pad(b, 0, 0, j); },
      [](auto...) { return 0.0; });
  tessera::test::expect_tensor_near(
      tessera::scaled_dot_product_attention(q, k, v, {.mask = Mask::blocked(pad), .scale = scale}),
      ref, kernel_tol<T>(), "blocked");
  // additive per batch and head, in double even for float scores
  Tensor<double, 4> add(B, H, Lq, Lk);
  add.setRandom(9, -2.0, 2.0);
  add(0, 1, 2, 3) = -INFINITY;
  ref = reference(
      q, k, v, scale, [](auto...) { return true; },
      [&](Index b, Index h, Index i, Index j) { return add(b, h, i, j); });
  tessera::test::expect_tensor_near(
      tessera::scaled_dot_product_attention(q, k, v, {.mask = Mask::additive(add), .scale = scale}),
      ref, kernel_tol<T>(), "additive");
}

TYPED_TEST(AttentionKernelTest, FullyMaskedRowsGiveZerosNotNaN) {
  using T = TypeParam;
  Tensor<T, 4> q(1, 2, 4, 8), k(1, 2, 6, 8), v(1, 2, 6, 3);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  Tensor<bool, 2> allow(4, 6);
  allow.setConstant(true);
  for (Index j = 0; j < 6; ++j) allow(2, j) = false;  // query 2 sees nothing
  const auto r =
      tessera::scaled_dot_product_attention_with_weights(q, k, v, {.mask = Mask::allowed(allow)});
  for (Index h = 0; h < 2; ++h) {
    for (Index e = 0; e < 3; ++e) EXPECT_EQ(r.output(0, h, 2, e), T(0));
    for (Index j = 0; j < 6; ++j) EXPECT_EQ(r.weights(0, h, 2, j), T(0));
    for (Index e = 0; e < 3; ++e) EXPECT_FALSE(std::isnan(r.output(0, h, 1, e)));
  }
}

// The fused kernel against the reference path on every mask kind, causal with Lq != Lk, odd
// lengths and head dims 32-256 with Dv != D.
TYPED_TEST(AttentionKernelTest, FusedEqualsReference) {
  using T = TypeParam;
  using tessera::AttentionImpl;
  const T tol = std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
  auto check = [&](const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                   tessera::SDPAOptions o, const std::string& what) {
    o.impl = AttentionImpl::reference;
    const auto ref = tessera::scaled_dot_product_attention(q, k, v, o);
    o.impl = AttentionImpl::fused;
    const auto fused = tessera::scaled_dot_product_attention(q, k, v, o);
    tessera::test::expect_tensor_near(fused, ref, tol, what);
  };
  for (Index L : {1, 7, 63, 65, 1000}) {
    const Index D = L == 1000 ? 64 : 32;
    Tensor<T, 4> q(1, 2, L, D), k(1, 2, L, D), v(1, 2, L, D + 8);
    q.setRandom(L);
    k.setRandom(L + 1);
    v.setRandom(L + 2);
    check(q, k, v, {}, "L=" + std::to_string(L));
    check(q, k, v, {.causal = true}, "causal L=" + std::to_string(L));
  }
  for (Index D : {32, 64, 80, 128, 256}) {
    Tensor<T, 4> q(2, 1, 37, D), k(2, 1, 129, D), v(2, 1, 129, D / 2 + 3);
    q.setRandom(D);
    k.setRandom(D + 1);
    v.setRandom(D + 2);
    check(q, k, v, {}, "D=" + std::to_string(D));
    check(q, k, v, {.causal = true}, "causal Lq<Lk D=" + std::to_string(D));
  }
  Tensor<T, 4> q(2, 3, 70, 16), k(2, 3, 90, 16), v(2, 3, 90, 16);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  Tensor<bool, 2> allow(70, 90);
  for (Index i = 0; i < 70; ++i)
    for (Index j = 0; j < 90; ++j)
      allow(i, j) = (i + 2 * j) % 5 != 0 && i != 13;  // row 13: nothing
  check(q, k, v, {.mask = Mask::allowed(allow)}, "allowed with a fully masked row");
  Tensor<bool, 4> pad(2, 1, 1, 90);
  for (Index j = 60; j < 90; ++j) pad(1, 0, 0, j) = true;
  check(q, k, v, {.mask = Mask::blocked(pad), .causal = true}, "key padding + causal");
  Tensor<float, 4> add(2, 3, 70, 90);
  add.setRandom(4, -3.0, 3.0);
  for (Index j = 0; j < 90; j += 7) add(1, 2, 5, j) = -INFINITY;
  check(q, k, v, {.mask = Mask::additive(add), .scale = 0.2}, "additive");
  // The fused path cannot hand out weights.
  tessera::Tensor<T, 4> out(2, 3, 70, 16), w(2, 3, 70, 90);
  tessera::TensorMap<T, 4> wv(w);
  TESSERA_EXPECT_THROW_MSG(
      tessera::scaled_dot_product_attention_into(q, k, v, out, {.impl = AttentionImpl::fused}, &wv),
      tessera::ValueError, "fused path cannot return the attention weights");
}

TYPED_TEST(AttentionKernelTest, EmptyKeysAndQueries) {
  using T = TypeParam;
  Tensor<T, 4> q(1, 1, 3, 4), k(1, 1, 0, 4), v(1, 1, 0, 2);
  q.setRandom(1);
  const auto out = tessera::scaled_dot_product_attention(q, k, v);
  for (Index i = 0; i < out.size(); ++i) EXPECT_EQ(out.data()[i], T(0));
  Tensor<T, 4> q0(1, 1, 0, 4), k1(1, 1, 5, 4), v1(1, 1, 5, 2);
  EXPECT_EQ(tessera::scaled_dot_product_attention(q0, k1, v1).size(), 0);
}

TYPED_TEST(AttentionKernelTest, SameResultAcrossThreadCounts) {
  using T = TypeParam;
  Tensor<T, 4> q(2, 4, 100, 16), k(2, 4, 120, 16), v(2, 4, 120, 16);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  tessera::set_num_threads(1);
  const auto one = tessera::scaled_dot_product_attention(q, k, v, {.causal = true});
  tessera::set_num_threads(2);
  const auto two = tessera::scaled_dot_product_attention(q, k, v, {.causal = true});
  tessera::set_num_threads(tessera::max_threads());
  for (Index i = 0; i < one.size(); ++i) ASSERT_EQ(one.data()[i], two.data()[i]);
}

// Runs the fused kernel directly on [B, H, L, D] tensors with the keys split into `splits`
// ranges (1: no split), optionally with a key-padding mask and a causal offset; returns the output
// and fills `lse` [B, H, Lq].
template <class T>
Tensor<T, 4> fused_with_splits(const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                               Index splits, bool causal, Index causal_offset,
                               const tessera::detail::MaskRows* mask, std::vector<T>& lse) {
  const Index B = q.dim(0), H = q.dim(1), Lq = q.dim(2), D = q.dim(3), Lk = k.dim(2);
  const Index Dv = v.dim(3);
  Tensor<T, 4> out(B, H, Lq, Dv);
  lse.assign(static_cast<std::size_t>(B * H * Lq), T(0));
  tessera::detail::AttentionProblem<T> p;
  p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk, p.d = D, p.dv = Dv;
  p.q = {q.data(), H * Lq * D, Lq * D, D};
  p.k = {k.data(), H * Lk * D, Lk * D, D};
  p.v = {v.data(), H * Lk * Dv, Lk * Dv, Dv};
  p.out = {out.data(), H * Lq * Dv, Lq * Dv, Dv};
  p.scale = T(1) / std::sqrt(T(D));
  p.causal = causal;
  p.causal_offset = causal_offset;
  p.masks[0] = mask;
  p.mask_lk = Lk;
  p.lse = lse.data();
  p.key_splits = splits;
  tessera::detail::attention_fused(p);
  return out;
}

// Split keys (the decoding path: few query rows, long keys, partial softmax states merged
// afterwards) give what one pass over the keys gives, with and without masks and causal offsets,
// including ranges that see no visible key; the merged logsumexp matches a direct one.
TYPED_TEST(AttentionKernelTest, KeySplitsMatchOnePass) {
  using T = TypeParam;
  const T tol = std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
  for (Index lq : {1, 3, 70}) {
    const Index lk = 640, D = 32;
    Tensor<T, 4> q(2, 2, lq, D), k(2, 2, lk, D), v(2, 2, lk, 24);
    q.setRandom(lq);
    k.setRandom(lq + 1);
    v.setRandom(lq + 2);
    // Batch 1 pads away its last 440 keys: most key ranges of that batch see nothing.
    Tensor<bool, 2> pad(2, lk);
    for (Index j = 200; j < lk; ++j) pad(1, j) = true;
    const Index target[] = {2, 2, lq, lk};
    const tessera::detail::MaskRows mrows(Mask::blocked(pad).with_shape({2, 1, 1, lk}), target,
                                          "test", "mask");
    for (bool causal : {false, true})
      for (const tessera::detail::MaskRows* mask : {static_cast<decltype(&mrows)>(nullptr), &mrows}) {
        const Index offset = causal ? lk - lq : 0;  // queries are the last lq positions
        std::vector<T> lse1, lse_s;
        const auto one = fused_with_splits(q, k, v, 1, causal, offset, mask, lse1);
        // Reference for the output (long double loops).
        const auto ref = reference(
            q, k, v, 1.0 / std::sqrt(double(D)),
            [&](Index b, Index, Index i, Index j) {
              return (!causal || j <= i + offset) && !(mask && pad(b, j));
            },
            [](auto...) { return 0.0; });
        const std::string what = "lq=" + std::to_string(lq) + (causal ? " causal" : "") +
                                 (mask ? " padded" : "");
        tessera::test::expect_tensor_near(one, ref, kernel_tol<T>(), what);
        for (Index splits : {2, 3, 7, 16, 5000}) {
          const auto split = fused_with_splits(q, k, v, splits, causal, offset, mask, lse_s);
          tessera::test::expect_tensor_near(split, one, tol,
                                            what + " splits=" + std::to_string(splits));
          for (std::size_t r = 0; r < lse1.size(); ++r)
            ASSERT_TRUE(tessera::test::close(lse_s[r], lse1[r], tol, tol))
                << what << " splits=" << splits << " lse row " << r;
        }
      }
  }
}

// Decoding: one query over a long cache uses the key split when there are more threads than
// heads; the result matches the single-thread one.
TYPED_TEST(AttentionKernelTest, DecodingAcrossThreadCounts) {
  using T = TypeParam;
  const T tol = std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
  Tensor<T, 4> q(1, 1, 1, 64), k(1, 1, 4096, 64), v(1, 1, 4096, 64);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  tessera::set_num_threads(1);
  const auto one = tessera::scaled_dot_product_attention(q, k, v);
  tessera::set_num_threads(2);
  const auto two = tessera::scaled_dot_product_attention(q, k, v);
  tessera::set_num_threads(tessera::max_threads());
  tessera::test::expect_tensor_near(two, one, tol, "decoding on 2 threads");
  EXPECT_EQ(tessera::detail::flash_key_splits<T>(1, 4096, 2), 2);
  EXPECT_EQ(tessera::detail::flash_key_splits<T>(8, 4096, 2), 1);
  EXPECT_EQ(tessera::detail::flash_key_splits<T>(1, 100, 8), 1);  // too few keys to split
}

TYPED_TEST(AttentionKernelTest, RejectsBadShapes) {
  using T = TypeParam;
  using tessera::ShapeError;
  Tensor<T, 4> q(2, 3, 5, 8), k(2, 3, 7, 8), v(2, 3, 7, 4);
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(q, Tensor<T, 4>(2, 3, 7, 6), v),
                           ShapeError, "tessera::scaled_dot_product_attention", "'key'",
                           "[2, 3, 7, 6]", "[2, 3, 7, 8]");
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(q, k, Tensor<T, 4>(2, 3, 6, 4)),
                           ShapeError, "'value'", "[2, 3, 6, 4]", "[2, 3, 7, 4]");
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(q, Tensor<T, 4>(1, 3, 7, 8), v),
                           ShapeError, "'key'", "[1, 3, 7, 8]");
  Tensor<T, 4> out(2, 3, 5, 5);
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention_into(q, k, v, out), ShapeError,
                           "'out'", "[2, 3, 5, 5]", "[2, 3, 5, 4]");
  Tensor<bool, 2> m(5, 6);
  TESSERA_EXPECT_THROW_MSG(
      tessera::scaled_dot_product_attention(q, k, v, {.mask = Mask::allowed(m)}), ShapeError,
      "'mask'", "[5, 6]", "[2, 3, 5, 7]");
  Tensor<T, 4> o2(2, 3, 5, 4);
  Tensor<T, 4> w(2, 3, 5, 6);
  tessera::TensorMap<T, 4> wv(w);
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention_into(q, k, v, o2, {}, &wv),
                           ShapeError, "'weights'", "[2, 3, 5, 6]", "[2, 3, 5, 7]");
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(
                               q, k, v, {.scale = std::numeric_limits<double>::infinity()}),
                           tessera::ValueError, "'scale'", "finite");
}

}  // namespace
