#include "tessera/kernels/attention.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "fixture.hpp"
#include "test_util.hpp"

namespace attention_test {

using tessera::AttentionImpl;
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
  // The "masked" fill of many exporters is the lowest finite value, not -inf: a row masked by it
  // everywhere attends uniformly (as PyTorch computes it), and finite scores beside it win.
  Tensor<T, 4> lowest_fill(2, 3, 70, 90);
  lowest_fill.setZero();
  for (Index j = 0; j < 90; ++j) {
    lowest_fill(0, 1, 7, j) = std::numeric_limits<T>::lowest();             // all of row 7
    if (j % 3) lowest_fill(1, 0, 9, j) = std::numeric_limits<T>::lowest();  // two keys in three
  }
  check(q, k, v, {.mask = Mask::additive(lowest_fill)}, "additive, lowest() fill");
  const auto uniform = tessera::scaled_dot_product_attention(
      q, k, v, {.mask = Mask::additive(lowest_fill), .impl = AttentionImpl::fused});
  for (Index e = 0; e < 16; ++e) {
    double mean = 0;
    for (Index j = 0; j < 90; ++j) mean += double(v(0, 1, j, e)) / 90;
    EXPECT_NEAR(double(uniform(0, 1, 7, e)), mean, 1e-5) << "column " << e;
  }
  // Masks and scores near the float range: the fused kernel keeps them in natural units, so a
  // mask of -3e38 on three keys still beats lowest() on the others, and scores of +-2.6e38 stay
  // finite (scaled by log2 e they would not).
  Tensor<T, 4> near_range(2, 3, 70, 90);
  near_range.setConstant(std::numeric_limits<T>::lowest());
  for (Index j = 0; j < 3; ++j) near_range(0, 0, 4, j) = T(-3e38);
  for (Index i = 0; i < 70; ++i) near_range(1, 2, i, i % 90) = T(0);
  check(q, k, v, {.mask = Mask::additive(near_range)}, "additive, -3e38 against lowest()");
  for (Index e = 0; e < 16; ++e) {
    const double mean3 = (double(v(0, 0, 0, e)) + v(0, 0, 1, e) + v(0, 0, 2, e)) / 3;
    EXPECT_NEAR(double(tessera::scaled_dot_product_attention(
                    q, k, v, {.mask = Mask::additive(near_range), .impl = AttentionImpl::fused})(
                    0, 0, 4, e)),
                mean3, 1e-5)
        << "column " << e;
  }
  for (Index L : {1, 8}) {  // the direct (decoding) and the packed path
    Tensor<T, 4> hq(1, 1, L, 1), hk(1, 1, 3, 1), hv(1, 1, 3, 1);
    hq.setConstant(T(1.6e19));
    hq(0, 0, 0, 0) = T(-1.6e19);
    hk(0, 0, 0, 0) = T(1.6e19);
    hk(0, 0, 1, 0) = T(1.5e19);
    hk(0, 0, 2, 0) = T(1.55e19);
    for (Index j = 0; j < 3; ++j) hv(0, 0, j, 0) = T(j + 1);
    check(hq, hk, hv, {.scale = 1.0}, "scores near FLT_MAX, Lq=" + std::to_string(L));
  }
  // The fused path cannot hand out weights.
  tessera::Tensor<T, 4> out(2, 3, 70, 16), w(2, 3, 70, 90);
  tessera::TensorMap<T, 4> wv(w);
  TESSERA_EXPECT_THROW_MSG(
      tessera::scaled_dot_product_attention_into(q, k, v, out, {.impl = AttentionImpl::fused}, &wv),
      tessera::ValueError, "fused path cannot return the attention weights");
}

// On a causal diagonal a group of rows forms only the packets of keys its last row sees. A NaN in
// a query row stays in that row, a NaN key reaches exactly the rows at and below it, and every
// other row keeps the reference's values (rows 0-19 of the first block see 1-20 keys: partial
// tiles of one and two packets).
TYPED_TEST(AttentionKernelTest, CausalDiagonalKeepsNaNInTheRowsThatSeeIt) {
  using T = TypeParam;
  const T tol = std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const Index L = 130, D = 64;
  Tensor<T, 4> q(1, 2, L, D), k(1, 2, L, D), v(1, 2, L, D);
  q.setRandom(5);
  k.setRandom(6);
  v.setRandom(7);
  q(0, 0, 2, 5) = nan;
  k(0, 1, 70, 3) = nan;
  const auto ref = tessera::scaled_dot_product_attention(
      q, k, v, {.causal = true, .impl = AttentionImpl::reference});
  const auto fused = tessera::scaled_dot_product_attention(
      q, k, v, {.causal = true, .impl = AttentionImpl::fused});
  for (Index h = 0; h < 2; ++h)
    for (Index i = 0; i < L; ++i) {
      const bool nan_row = (h == 0 && i == 2) || (h == 1 && i >= 70);
      for (Index c = 0; c < D; ++c) {
        if (nan_row) {
          EXPECT_TRUE(std::isnan(fused(0, h, i, c))) << "head " << h << " row " << i;
        } else {
          ASSERT_FALSE(std::isnan(fused(0, h, i, c))) << "head " << h << " row " << i;
          EXPECT_NEAR(fused(0, h, i, c), ref(0, h, i, c), tol) << "head " << h << " row " << i;
        }
      }
    }
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
  for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
    tessera::set_num_threads(1);
    const auto one = tessera::scaled_dot_product_attention(q, k, v, {.causal = true, .impl = impl});
    for (int threads : {2, 3}) {
      tessera::set_num_threads(threads);
      const auto many =
          tessera::scaled_dot_product_attention(q, k, v, {.causal = true, .impl = impl});
      EXPECT_TRUE(tessera::test::same_bits(many, one)) << "threads=" << threads;
    }
    tessera::set_num_threads(tessera::max_threads());
  }
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
      for (const tessera::detail::MaskRows* mask :
           {static_cast<decltype(&mrows)>(nullptr), &mrows}) {
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
        const std::string what =
            "lq=" + std::to_string(lq) + (causal ? " causal" : "") + (mask ? " padded" : "");
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

// Decoding: one query over a long cache splits the keys into ranges fixed by the problem's size
// (never by the thread count), so 1, 2 and 3 threads give bit-identical results (README: results
// do not depend on the thread count). Also a few query rows (the direct path) and a prefill.
TYPED_TEST(AttentionKernelTest, DecodingIsBitIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  if (tessera::max_threads() < 2) GTEST_SKIP() << "built without OpenMP: one thread only";
  for (const auto& [H, Lq] : {std::pair<Index, Index>{1, 1}, {8, 1}, {2, 3}, {1, 200}}) {
    const Index Lk = 8192;
    Tensor<T, 4> q(1, H, Lq, 64), k(1, H, Lk, 64), v(1, H, Lk, 64);
    q.setRandom(1);
    k.setRandom(2);
    v.setRandom(3);
    const std::string what = "H=" + std::to_string(H) + " Lq=" + std::to_string(Lq);
    tessera::set_num_threads(1);
    const auto one = tessera::scaled_dot_product_attention(q, k, v);
    const auto ref = reference(
        q, k, v, 1.0 / 8.0, [](auto...) { return true; }, [](auto...) { return 0.0; });
    tessera::test::expect_tensor_near(one, ref, kernel_tol<T>(), what);
    for (int threads : {2, 3}) {
      tessera::set_num_threads(threads);
      const auto many = tessera::scaled_dot_product_attention(q, k, v);
      EXPECT_TRUE(tessera::test::same_bits(many, one)) << what << " threads=" << threads;
    }
    tessera::set_num_threads(tessera::max_threads());
  }
}

// The key split depends on the problem only: decoding one head over 8192 keys is split, 64 or
// more work items are not, and short key lists never are.
TYPED_TEST(AttentionKernelTest, KeySplitsDependOnTheProblemOnly) {
  using T = TypeParam;
  EXPECT_GT(tessera::detail::flash_key_splits<T>(1, 8192), 1);
  EXPECT_LE(
      tessera::detail::flash_key_splits<T>(1, 8192) * tessera::detail::FlashTile<T>::kKeys * 4,
      8192);  // each range at least four key tiles
  EXPECT_EQ(tessera::detail::flash_key_splits<T>(64, 8192), 1);
  // Fewer than two ranges of four key tiles: never split.
  EXPECT_EQ(tessera::detail::flash_key_splits<T>(1, 8 * tessera::detail::FlashTile<T>::kKeys - 1),
            1);
}

// NaN in, NaN out: a NaN in one query row makes that output row NaN (and only it), on the fused,
// decoding (split keys) and reference paths, for key counts below, at and above a tile; a row
// whose every key is masked out still gives zeros, NaN query or not.
TYPED_TEST(AttentionKernelTest, NaNQueryRowGivesNaNRow) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (Index lq : {1, 3, 9})
    for (Index lk : {1, 5, 17, 64, 100, 4096}) {
      Tensor<T, 4> q(1, 2, lq, 16), k(1, 2, lk, 16), v(1, 2, lk, 8);
      q.setRandom(1);
      k.setRandom(2);
      v.setRandom(3);
      const Index nan_row = lq - 1;
      for (Index d = 0; d < 16; ++d) q(0, 1, nan_row, d) = nan;
      // Row 0 of head 0 sees no key (when lq > 1 it is not the NaN row's head anyway).
      Tensor<bool, 4> blocked(1, 2, lq, lk);
      for (Index j = 0; j < lk; ++j) blocked(0, 0, 0, j) = blocked(0, 1, nan_row, j) = lq > 1;
      for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
        const std::string what = "lq=" + std::to_string(lq) + " lk=" + std::to_string(lk) +
                                 (impl == AttentionImpl::fused ? " fused" : " reference");
        const auto out = tessera::scaled_dot_product_attention(q, k, v, {.impl = impl});
        for (Index i = 0; i < lq; ++i)
          for (Index e = 0; e < 8; ++e) {
            EXPECT_FALSE(std::isnan(out(0, 0, i, e))) << what << " head 0 row " << i;
            EXPECT_EQ(std::isnan(out(0, 1, i, e)), i == nan_row) << what << " head 1 row " << i;
          }
        if (lq == 1) continue;
        // Masked out completely, the NaN row gives zeros, as does the masked row of head 0.
        const auto masked = tessera::scaled_dot_product_attention(
            q, k, v, {.mask = Mask::blocked(blocked), .impl = impl});
        for (Index e = 0; e < 8; ++e) {
          EXPECT_EQ(masked(0, 1, nan_row, e), T(0)) << what << " masked NaN row";
          EXPECT_EQ(masked(0, 0, 0, e), T(0)) << what << " masked row";
          EXPECT_FALSE(std::isnan(masked(0, 0, 1, e))) << what;
        }
      }
    }
}

// A NaN in one key, in one value of a visible key, or in an additive mask entry reaches the
// output. (A NaN value of a key that every row masks out may too, as in PyTorch: 0 * NaN.)
TYPED_TEST(AttentionKernelTest, NaNInKeysValuesAndMasksReachesTheOutput) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (Index lq : {1, 70})
    for (Index lk : {7, 300}) {
      Tensor<T, 4> q(1, 1, lq, 16), k(1, 1, lk, 16), v(1, 1, lk, 8);
      q.setRandom(1);
      k.setRandom(2);
      v.setRandom(3);
      for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
        const std::string what = "lq=" + std::to_string(lq) + " lk=" + std::to_string(lk) +
                                 (impl == AttentionImpl::fused ? " fused" : " reference");
        Tensor<T, 4> k_nan = k;
        k_nan(0, 0, lk / 2, 3) = nan;
        const auto a = tessera::scaled_dot_product_attention(q, k_nan, v, {.impl = impl});
        for (Index i = 0; i < a.size(); ++i) ASSERT_TRUE(std::isnan(a.data()[i])) << what << " key";
        Tensor<T, 4> v_nan = v;
        v_nan(0, 0, lk / 2, 5) = nan;
        const auto b = tessera::scaled_dot_product_attention(q, k, v_nan, {.impl = impl});
        for (Index i = 0; i < lq; ++i)
          for (Index e = 0; e < 8; ++e) ASSERT_EQ(std::isnan(b(0, 0, i, e)), e == 5) << what;
        Tensor<T, 2> add(lq, lk);
        add(0, lk - 1) = nan;
        const auto c = tessera::scaled_dot_product_attention(
            q, k, v, {.mask = Mask::additive(add), .impl = impl});
        for (Index i = 0; i < lq; ++i)
          for (Index e = 0; e < 8; ++e) ASSERT_EQ(std::isnan(c(0, 0, i, e)), i == 0) << what;
      }
    }
}

// With the weights returned (the reference path), a NaN query row gives NaN weights and output.
TYPED_TEST(AttentionKernelTest, NaNQueryRowGivesNaNWeights) {
  using T = TypeParam;
  Tensor<T, 4> q(1, 1, 2, 4), k(1, 1, 3, 4), v(1, 1, 3, 2);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  q(0, 0, 1, 2) = std::numeric_limits<T>::quiet_NaN();
  const auto r = tessera::scaled_dot_product_attention_with_weights(q, k, v);
  for (Index j = 0; j < 3; ++j) {
    EXPECT_FALSE(std::isnan(r.weights(0, 0, 0, j)));
    EXPECT_TRUE(std::isnan(r.weights(0, 0, 1, j)));
  }
  for (Index e = 0; e < 2; ++e) EXPECT_TRUE(std::isnan(r.output(0, 0, 1, e)));
}

// The scale is checked in the scalar type computed in: 1e39 is finite as a double but inf as a
// float (which made every output NaN).
TYPED_TEST(AttentionKernelTest, ScaleMustBeFiniteInTheScalarType) {
  using T = TypeParam;
  Tensor<T, 4> q(1, 2, 3, 8), k(1, 2, 4, 8), v(1, 2, 4, 8);
  q.setRandom(1);
  k.setRandom(2);
  v.setRandom(3);
  if constexpr (std::is_same_v<T, float>) {
    TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(q, k, v, {.scale = 1e39}),
                             tessera::ValueError, "tessera::scaled_dot_product_attention",
                             "'scale'", "1e+39", "inf");
  } else {
    const auto out = tessera::scaled_dot_product_attention(q, k, v, {.scale = 1e39});
    for (Index i = 0; i < out.size(); ++i) EXPECT_TRUE(std::isfinite(out.data()[i]));
  }
  TESSERA_EXPECT_THROW_MSG(tessera::scaled_dot_product_attention(
                               q, k, v, {.scale = std::numeric_limits<double>::quiet_NaN()}),
                           tessera::ValueError, "'scale'");
}

// Every empty extent, on both paths and with the weights: no pointer arithmetic on an empty
// operand (UBSan), zeros where there are query rows but no keys.
TYPED_TEST(AttentionKernelTest, EveryEmptyExtent) {
  using T = TypeParam;
  const Shape<4> shapes[][3] = {
      {{0, 2, 3, 4}, {0, 2, 5, 4}, {0, 2, 5, 6}}, {{2, 0, 3, 4}, {2, 0, 5, 4}, {2, 0, 5, 6}},
      {{2, 2, 0, 4}, {2, 2, 5, 4}, {2, 2, 5, 6}}, {{2, 2, 3, 4}, {2, 2, 0, 4}, {2, 2, 0, 6}},
      {{2, 2, 3, 0}, {2, 2, 5, 0}, {2, 2, 5, 6}}, {{2, 2, 3, 4}, {2, 2, 5, 4}, {2, 2, 5, 0}},
      {{2, 2, 3, 0}, {2, 2, 0, 0}, {2, 2, 0, 0}}};
  for (const auto& s : shapes) {
    Tensor<T, 4> q(s[0]), k(s[1]), v(s[2]);
    q.setConstant(1);
    k.setConstant(2);
    v.setRandom(3);
    const std::string what = tessera::detail::shape_string(s[0]) + " " +
                             tessera::detail::shape_string(s[1]) + " " +
                             tessera::detail::shape_string(s[2]);
    for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
      const auto out = tessera::scaled_dot_product_attention(q, k, v, {.impl = impl});
      ASSERT_EQ(out.shape(), (Shape<4>{s[0][0], s[0][1], s[0][2], s[2][3]})) << what;
      for (Index b = 0; b < out.dim(0); ++b)
        for (Index h = 0; h < out.dim(1); ++h)
          for (Index i = 0; i < out.dim(2); ++i)
            for (Index e = 0; e < out.dim(3); ++e) {
              T mean = 0;  // equal scores: the mean of the values
              for (Index j = 0; j < v.dim(2); ++j) mean += v(b, h, j, e);
              if (v.dim(2) > 0) mean /= T(v.dim(2));
              EXPECT_NEAR(out(b, h, i, e), mean, kernel_tol<T>()) << what;
            }
    }
    const auto r = tessera::scaled_dot_product_attention_with_weights(q, k, v);
    EXPECT_EQ(r.weights.shape(), (Shape<4>{s[0][0], s[0][1], s[0][2], s[1][2]})) << what;
  }
}

// Weights of 2^32 x 2^32 per head do not fit an index: a ShapeError, not an allocation of a
// wrapped size.
TYPED_TEST(AttentionKernelTest, WeightsTooLargeForAnIndex) {
  using T = TypeParam;
  const Index n = Index(1) << 32;
  Tensor<T, 4> q(1, 1, n, 0), k(1, 1, n, 0), v(1, 1, n, 0);
  TESSERA_EXPECT_THROW_MSG(
      tessera::scaled_dot_product_attention_with_weights(q, k, v), tessera::ShapeError,
      "tessera::scaled_dot_product_attention_with_weights", "the attention weights");
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

}  // namespace attention_test
