#include "tessera/kernels/attention_backward.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "fixture.hpp"
#include "test_util.hpp"

namespace attention_backward_test {

using tessera::AttentionImpl;
using tessera::Index;
using tessera::Mask;
using tessera::Tensor;
using tessera::detail::AttentionBackwardProblem;
using tessera::detail::AttentionProblem;
using tessera::detail::MaskRows;

template <class T>
class AttentionBackwardTest : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionBackwardTest, tessera::test::Scalars);

// Fused and reference backward against the plain formula in long double: |a - e| / (1 + |e|).
template <class T>
T grad_tol() {
  return std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
}

template <class T>
struct Grads {
  Tensor<T, 4> dq, dk, dv;
};

// PyTorch's autograd through softmax(scale q k^T + add) v, written out in long double with the
// probabilities materialised: softmax's backward is y o (g - sum(g o y)) (torch's
// _softmax_backward_data). keep(b, h, i, j) says whether key j takes part for query i. A row that
// sees no key has zero gradients here (PyTorch would give NaN).
template <class T, class Keep, class Add>
Grads<T> formula(const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                 const Tensor<T, 4>& dout, double scale, Keep keep, Add add) {
  using LD = long double;
  const Index B = q.dim(0), H = q.dim(1), Lq = q.dim(2), D = q.dim(3), Lk = k.dim(2), Dv = v.dim(3);
  Grads<T> g{Tensor<T, 4>(B, H, Lq, D), Tensor<T, 4>(B, H, Lk, D), Tensor<T, 4>(B, H, Lk, Dv)};
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      std::vector<LD> dk(Lk * D, 0), dv(Lk * Dv, 0);
      for (Index i = 0; i < Lq; ++i) {
        std::vector<LD> p(Lk), dp(Lk);
        LD mx = -INFINITY;
        for (Index j = 0; j < Lk; ++j) {
          LD a = 0;
          for (Index c = 0; c < D; ++c) a += (LD)q(b, h, i, c) * k(b, h, j, c);
          a = a * scale + add(b, h, i, j);
          if (!keep(b, h, i, j)) a = -INFINITY;
          p[j] = a;
          mx = std::max(mx, a);
        }
        if (mx == -INFINITY) continue;  // no visible key: zero gradients
        LD z = 0;
        for (auto& x : p) z += (x = std::exp(x - mx));
        for (auto& x : p) x /= z;
        LD sum_gy = 0;
        for (Index j = 0; j < Lk; ++j) {
          LD a = 0;
          for (Index e = 0; e < Dv; ++e) a += (LD)dout(b, h, i, e) * v(b, h, j, e);
          dp[j] = a;
          sum_gy += a * p[j];
        }
        for (Index j = 0; j < Lk; ++j) {
          for (Index e = 0; e < Dv; ++e) dv[j * Dv + e] += p[j] * dout(b, h, i, e);
          const LD ds = p[j] * (dp[j] - sum_gy) * scale;
          for (Index c = 0; c < D; ++c) dk[j * D + c] += ds * q(b, h, i, c);
        }
        for (Index c = 0; c < D; ++c) {
          LD a = 0;
          for (Index j = 0; j < Lk; ++j) a += p[j] * (dp[j] - sum_gy) * scale * k(b, h, j, c);
          g.dq(b, h, i, c) = static_cast<T>(a);
        }
      }
      for (Index j = 0; j < Lk; ++j) {
        for (Index c = 0; c < D; ++c) g.dk(b, h, j, c) = static_cast<T>(dk[j * D + c]);
        for (Index e = 0; e < Dv; ++e) g.dv(b, h, j, e) = static_cast<T>(dv[j * Dv + e]);
      }
    }
  return g;
}

// A problem on [B, H, L, D] tensors with every detail option reachable (causal_offset, mask_lk).
template <class T>
struct Setup {
  Tensor<T, 4> q, k, v, dout;
  T scale = 1;
  bool causal = false;
  Index causal_offset = 0;
  Index mask_lk = -1;  // -1: all keys
  const MaskRows* masks[2] = {nullptr, nullptr};

  Setup(Index B, Index H, Index Lq, Index Lk, Index D, Index Dv, std::uint64_t seed)
      : q(B, H, Lq, D), k(B, H, Lk, D), v(B, H, Lk, Dv), dout(B, H, Lq, Dv) {
    q.setRandom(seed);
    k.setRandom(seed + 1);
    v.setRandom(seed + 2);
    dout.setRandom(seed + 3);
    scale = static_cast<T>(D > 0 ? 1.0 / std::sqrt(double(D)) : 1.0);
  }

  AttentionProblem<T> problem(T* out, T* lse) const {
    const Index B = q.dim(0), H = q.dim(1), Lq = q.dim(2), D = q.dim(3);
    const Index Lk = k.dim(2), Dv = v.dim(3);
    AttentionProblem<T> p;
    p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk, p.d = D, p.dv = Dv;
    p.q = {q.data(), H * Lq * D, Lq * D, D};
    p.k = {k.data(), H * Lk * D, Lk * D, D};
    p.v = {v.data(), H * Lk * Dv, Lk * Dv, Dv};
    p.out = {out, H * Lq * Dv, Lq * Dv, Dv};
    p.scale = scale;
    p.causal = causal;
    p.causal_offset = causal_offset;
    p.masks[0] = masks[0];
    p.masks[1] = masks[1];
    p.mask_lk = mask_lk < 0 ? Lk : mask_lk;
    p.lse = lse;
    return p;
  }

  // Forward (fused, writing the lse), then the backward on `impl`.
  struct Result {
    Tensor<T, 4> out;
    Tensor<T, 3> lse;
    Grads<T> g;
  };
  // eigen_tiles: the fused kernel with Eigen's products for its tiles (the measured alternative).
  Result run(AttentionImpl impl, bool eigen_tiles = false) const {
    const Index B = q.dim(0), H = q.dim(1), Lq = q.dim(2), D = q.dim(3);
    const Index Lk = k.dim(2), Dv = v.dim(3);
    Result r{
        Tensor<T, 4>(B, H, Lq, Dv), Tensor<T, 3>(B, H, Lq),
        Grads<T>{Tensor<T, 4>(B, H, Lq, D), Tensor<T, 4>(B, H, Lk, D), Tensor<T, 4>(B, H, Lk, Dv)}};
    // Poison the outputs: the backward must overwrite every element.
    r.g.dq.setConstant(std::numeric_limits<T>::quiet_NaN());
    r.g.dk.setConstant(std::numeric_limits<T>::quiet_NaN());
    r.g.dv.setConstant(std::numeric_limits<T>::quiet_NaN());
    const AttentionProblem<T> p = problem(r.out.data(), r.lse.data());
    tessera::detail::attention_fused(p);
    AttentionBackwardProblem<T> bp;
    bp.forward = p;
    bp.lse = r.lse.data();
    bp.dout = {dout.data(), H * Lq * Dv, Lq * Dv, Dv};
    bp.dq = {r.g.dq.data(), H * Lq * D, Lq * D, D};
    bp.dk = {r.g.dk.data(), H * Lk * D, Lk * D, D};
    bp.dv = {r.g.dv.data(), H * Lk * Dv, Lk * Dv, Dv};
    if (eigen_tiles)
      tessera::detail::attention_backward_fused_with<T, tessera::detail::AttentionTileGemm::eigen>(
          bp);
    else
      tessera::detail::attention_backward_run(bp, impl);
    return r;
  }

  template <class Keep, class Add>
  Grads<T> expected(Keep keep, Add add) const {
    return formula(q, k, v, dout, scale, keep, add);
  }
  // keep() of the causal horizon alone.
  bool causal_keep(Index i, Index j) const {
    const Index mlk = mask_lk < 0 ? k.dim(2) : mask_lk;
    return !causal || j >= mlk || j <= i + causal_offset;
  }
};

// The largest errors seen against the formula (float, double), reported at the end.
double worst_error[2] = {0, 0};

template <class T>
void expect_grads_near(const Grads<T>& a, const Grads<T>& e, T tol, const std::string& what) {
  tessera::test::expect_tensor_near(a.dq, e.dq, tol, what + " dq");
  tessera::test::expect_tensor_near(a.dk, e.dk, tol, what + " dk");
  tessera::test::expect_tensor_near(a.dv, e.dv, tol, what + " dv");
  const std::pair<const Tensor<T, 4>*, const Tensor<T, 4>*> pairs[] = {
      {&a.dq, &e.dq}, {&a.dk, &e.dk}, {&a.dv, &e.dv}};
  double& worst = worst_error[std::is_same_v<T, float> ? 0 : 1];
  for (const auto& [x, y] : pairs)
    for (Index i = 0; i < x->size(); ++i)
      worst = std::max(worst, std::fabs(double(x->data()[i]) - double(y->data()[i])) /
                                  (1.0 + std::fabs(double(y->data()[i]))));
}

// Checks fused and reference against the formula for one setup.
template <class T, class Keep, class Add>
void check_setup(const Setup<T>& s, Keep keep, Add add, const std::string& what) {
  const auto e = s.expected(keep, add);
  expect_grads_near(s.run(AttentionImpl::fused).g, e, grad_tol<T>(), what + " fused");
  expect_grads_near(s.run(AttentionImpl::reference).g, e, grad_tol<T>(), what + " reference");
  expect_grads_near(s.run(AttentionImpl::fused, /*eigen_tiles=*/true).g, e, grad_tol<T>(),
                    what + " fused, Eigen tiles");
}

auto keep_all = [](auto...) { return true; };
auto add_none = [](auto...) { return 0.0; };

TYPED_TEST(AttentionBackwardTest, ManyShapesAgainstTheFormula) {
  using T = TypeParam;
  struct S {
    Index B, H, Lq, Lk, D, Dv;
  };
  // Lq != Lk, D != Dv, odd sizes across the tile edges (64), one and two heads per batch (key
  // ranges split across threads when batch * heads < 8 and the keys span at least four
  // blocks: the last two shapes), head_dim 1..33.
  for (const S c :
       {S{1, 1, 1, 1, 1, 1}, S{2, 3, 5, 9, 4, 6}, S{1, 2, 7, 63, 8, 3}, S{1, 1, 65, 130, 33, 16},
        S{2, 1, 130, 65, 16, 33}, S{1, 1, 64, 300, 8, 8}, S{1, 1, 129, 257, 5, 7},
        S{3, 3, 17, 31, 2, 1}, S{1, 1, 50, 800, 8, 8}, S{1, 2, 40, 1200, 4, 4}}) {
    const std::string what = "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " Lq" +
                             std::to_string(c.Lq) + " Lk" + std::to_string(c.Lk) + " D" +
                             std::to_string(c.D) + " Dv" + std::to_string(c.Dv);
    Setup<T> s(c.B, c.H, c.Lq, c.Lk, c.D, c.Dv, static_cast<std::uint64_t>(c.Lq * 7 + c.Lk));
    if (c.B * c.H < 8) {
      EXPECT_EQ(tessera::detail::attention_backward_splits(c.B * c.H, c.Lk) > 1, c.Lk >= 800);
    }
    check_setup(s, keep_all, add_none, what);
    s.causal = true;
    check_setup(
        s, [&](Index, Index, Index i, Index j) { return s.causal_keep(i, j); }, add_none,
        what + " causal");
  }
}

TYPED_TEST(AttentionBackwardTest, CausalWithOffsetsAndAppendedKeys) {
  using T = TypeParam;
  for (Index offset : {-3, 0, 5, 70}) {
    for (Index mask_lk : {Index(-1), Index(140)}) {
      Setup<T> s(1, 2, 75, 150, 12, 10, 40 + offset);
      s.causal = true;
      s.causal_offset = offset;
      s.mask_lk = mask_lk;  // 140: keys 140..149 are appended (add_bias_kv), never hidden
      check_setup(
          s, [&](Index, Index, Index i, Index j) { return s.causal_keep(i, j); }, add_none,
          "offset " + std::to_string(offset) + " mask_lk " + std::to_string(mask_lk));
    }
  }
}

TYPED_TEST(AttentionBackwardTest, BooleanAdditiveAndKeyPaddingMasks) {
  using T = TypeParam;
  const Index B = 2, H = 3, Lq = 70, Lk = 90, D = 8, Dv = 5;
  Setup<T> s(B, H, Lq, Lk, D, Dv, 7);
  s.scale = T(0.3);
  // allowed [Lq, Lk]
  Tensor<bool, 2> allow(Lq, Lk);
  for (Index i = 0; i < Lq; ++i)
    for (Index j = 0; j < Lk; ++j) allow(i, j) = (i * 3 + j) % 5 != 0;
  const Index target[] = {B, H, Lq, Lk};
  const MaskRows allow_rows(Mask::allowed(allow), target, "test", "mask");
  s.masks[0] = &allow_rows;
  check_setup(
      s, [&](Index, Index, Index i, Index j) { return bool(allow(i, j)); }, add_none, "allowed");
  // additive [B, H, Lq, Lk] in float and double, with -inf entries
  Tensor<T, 4> add(B, H, Lq, Lk);
  add.setRandom(9, -2.0, 2.0);
  for (Index i = 0; i < add.size(); i += 7) add.data()[i] = -std::numeric_limits<T>::infinity();
  const MaskRows add_rows(Mask::additive(add), target, "test", "mask");
  s.masks[0] = &add_rows;
  check_setup(
      s, keep_all, [&](Index b, Index h, Index i, Index j) { return double(add(b, h, i, j)); },
      "additive");
  // key padding [B, 1, 1, Lk] blocked, together with causal and the additive mask
  Tensor<bool, 4> pad(B, 1, 1, Lk);
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < Lk; ++j) pad(b, 0, 0, j) = j >= Lk - 11 * (b + 1);
  const MaskRows pad_rows(Mask::blocked(pad), target, "test", "key_padding_mask");
  s.masks[1] = &pad_rows;
  s.causal = true;
  check_setup(
      s, [&](Index b, Index, Index i, Index j) { return !pad(b, 0, 0, j) && s.causal_keep(i, j); },
      [&](Index b, Index h, Index i, Index j) { return double(add(b, h, i, j)); },
      "additive + key padding + causal");
}

TYPED_TEST(AttentionBackwardTest, FullyMaskedRowsGiveZeroGradients) {
  using T = TypeParam;
  const Index B = 1, H = 2, Lq = 9, Lk = 70, D = 4, Dv = 3;
  Setup<T> s(B, H, Lq, Lk, D, Dv, 3);
  // Rows 2 and 7 see no key; their query and grad_output rows hold NaN and inf, which must not
  // leak into dK and dV (their probabilities are zero) nor into their own dQ.
  Tensor<bool, 2> blocked(Lq, Lk);
  for (Index j = 0; j < Lk; ++j) blocked(2, j) = blocked(7, j) = true;
  for (Index h = 0; h < H; ++h)
    for (Index i : {2, 7}) {
      s.q(0, h, i, 1) = std::numeric_limits<T>::quiet_NaN();
      s.dout(0, h, i, 0) = std::numeric_limits<T>::infinity();
      s.dout(0, h, i, 2) = std::numeric_limits<T>::quiet_NaN();
    }
  const Index target[] = {B, H, Lq, Lk};
  const MaskRows rows(Mask::blocked(blocked), target, "test", "mask");
  s.masks[0] = &rows;
  for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
    const auto r = s.run(impl);
    for (Index h = 0; h < H; ++h)
      for (Index i : {2, 7}) {
        EXPECT_EQ(r.lse(0, h, i), -std::numeric_limits<T>::infinity());
        for (Index c = 0; c < D; ++c) EXPECT_EQ(r.g.dq(0, h, i, c), T(0));
      }
    // Everything else as if those rows were not there.
    Setup<T> clean = s;
    for (Index h = 0; h < H; ++h)
      for (Index i : {2, 7}) {
        for (Index c = 0; c < D; ++c) clean.q(0, h, i, c) = 0;
        for (Index c = 0; c < Dv; ++c) clean.dout(0, h, i, c) = 0;
      }
    const auto e =
        clean.expected([&](Index, Index, Index i, Index j) { return !blocked(i, j); }, add_none);
    expect_grads_near(r.g, e, grad_tol<T>(), "fully masked rows");
  }
  // Causal with a negative offset hides every key from the first rows.
  Setup<T> c(1, 1, 8, 8, 4, 4, 5);
  c.causal = true;
  c.causal_offset = -3;
  for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
    const auto r = c.run(impl);
    for (Index i = 0; i < 3; ++i)
      for (Index d = 0; d < 4; ++d) EXPECT_EQ(r.g.dq(0, 0, i, d), T(0));
    expect_grads_near(
        r.g,
        c.expected([&](Index, Index, Index i, Index j) { return c.causal_keep(i, j); }, add_none),
        grad_tol<T>(), "causal offset -3");
  }
}

TYPED_TEST(AttentionBackwardTest, NaNInputsGiveNaNGradients) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const auto all_nan = [](const Tensor<T, 4>& t) {
    for (Index i = 0; i < t.size(); ++i)
      if (!std::isnan(t.data()[i])) return false;
    return true;
  };
  for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
    // A NaN query element: its row's dQ, and every dK and dV row it attends to.
    Setup<T> s(1, 1, 70, 80, 4, 3, 11);
    s.q(0, 0, 5, 2) = nan;
    auto r = s.run(impl);
    for (Index c = 0; c < 4; ++c) EXPECT_TRUE(std::isnan(r.g.dq(0, 0, 5, c)));
    EXPECT_TRUE(all_nan(r.g.dk));
    EXPECT_TRUE(all_nan(r.g.dv));
    EXPECT_FALSE(std::isnan(r.g.dq(0, 0, 4, 0)));
    // A NaN in grad_output column 1: that column of dV for every key, the row's dQ and (through
    // dS) every dK.
    Setup<T> g(1, 1, 70, 80, 4, 3, 12);
    g.dout(0, 0, 66, 1) = nan;
    r = g.run(impl);
    for (Index j = 0; j < 80; ++j) {
      EXPECT_TRUE(std::isnan(r.g.dv(0, 0, j, 1)));
      EXPECT_FALSE(std::isnan(r.g.dv(0, 0, j, 0)));
    }
    EXPECT_TRUE(all_nan(r.g.dk));
    EXPECT_TRUE(std::isnan(r.g.dq(0, 0, 66, 0)));
    EXPECT_TRUE(std::isnan(r.g.dk(0, 0, 79, 0)));
    // A NaN value: every dQ row (through dP), and that key's dK.
    Setup<T> v(1, 1, 70, 80, 4, 3, 13);
    v.v(0, 0, 77, 0) = nan;
    r = v.run(impl);
    EXPECT_TRUE(all_nan(r.g.dq));
    EXPECT_TRUE(std::isnan(r.g.dk(0, 0, 77, 0)));
    EXPECT_FALSE(std::isnan(r.g.dv(0, 0, 77, 0)));
  }
}

TYPED_TEST(AttentionBackwardTest, FiniteDifferences) {
  if constexpr (std::is_same_v<TypeParam, double>) {
    // loss = sum(O o G) for a random G, so dL/dO = G; central differences with h = 1e-6 through
    // the public forward (reference path: plain exp) agree with the analytic gradients to 1e-7
    // absolute (truncation ~ h^2, rounding ~ 1e-16 / h).
    const Index B = 1, H = 2, Lq = 5, Lk = 7, D = 3, Dv = 4;
    Tensor<double, 2> pad_add(Lq, Lk);
    pad_add.setRandom(4, -1.0, 1.0);
    pad_add(1, 6) = -std::numeric_limits<double>::infinity();
    for (int variant = 0; variant < 3; ++variant) {
      Tensor<double, 4> q(B, H, Lq, D), k(B, H, Lk, D), v(B, H, Lk, Dv), g(B, H, Lq, Dv);
      q.setRandom(1), k.setRandom(2), v.setRandom(3), g.setRandom(4);
      tessera::SDPAOptions opts{.causal = variant == 1, .impl = AttentionImpl::reference};
      if (variant == 2) opts.mask = Mask::additive(pad_add), opts.scale = 0.7;
      const auto loss = [&]() {
        const auto o = tessera::scaled_dot_product_attention(q, k, v, opts);
        double s = 0;
        for (Index i = 0; i < o.size(); ++i) s += o.data()[i] * g.data()[i];
        return s;
      };
      const auto fw = tessera::scaled_dot_product_attention_train(q, k, v, opts);
      for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
        opts.impl = impl;
        const auto grads =
            tessera::scaled_dot_product_attention_backward(q, k, v, fw.output, fw.lse, g, opts);
        opts.impl = AttentionImpl::reference;
        const std::pair<Tensor<double, 4>*, const Tensor<double, 4>*> params[] = {
            {&q, &grads.grad_query}, {&k, &grads.grad_key}, {&v, &grads.grad_value}};
        for (const auto& [x, dx] : params)
          for (Index i = 0; i < x->size(); ++i) {
            const double h = 1e-6, x0 = x->data()[i];
            x->data()[i] = x0 + h;
            const double up = loss();
            x->data()[i] = x0 - h;
            const double down = loss();
            x->data()[i] = x0;
            EXPECT_NEAR(dx->data()[i], (up - down) / (2 * h), 1e-7)
                << "variant " << variant << " element " << i;
          }
      }
    }
  } else {
    GTEST_SKIP() << "finite differences run in double only";
  }
}

TYPED_TEST(AttentionBackwardTest, PublicApiMatchesDetailAndFormula) {
  using T = TypeParam;
  const Index B = 2, H = 2, Lq = 33, Lk = 45, D = 7, Dv = 9;
  Setup<T> s(B, H, Lq, Lk, D, Dv, 21);
  Tensor<bool, 4> allow(B, 1, Lq, Lk);
  for (Index i = 0; i < allow.size(); ++i) allow.data()[i] = i % 7 != 3;
  for (bool causal : {false, true})
    for (AttentionImpl impl :
         {AttentionImpl::automatic, AttentionImpl::fused, AttentionImpl::reference}) {
      tessera::SDPAOptions opts{.mask = Mask::allowed(allow), .causal = causal, .impl = impl};
      const auto fw = tessera::scaled_dot_product_attention_train(s.q, s.k, s.v, opts);
      // The output is the plain forward's, bit for bit on the same path.
      EXPECT_TRUE(tessera::test::same_bits(
          fw.output, tessera::scaled_dot_product_attention(s.q, s.k, s.v, opts)));
      const auto r = tessera::scaled_dot_product_attention_backward(s.q, s.k, s.v, fw.output,
                                                                    fw.lse, s.dout, opts);
      const auto keep = [&](Index b, Index, Index i, Index j) {
        return bool(allow(b, 0, i, j)) && (!causal || j <= i);
      };
      const auto e = s.expected(keep, add_none);
      expect_grads_near(Grads<T>{r.grad_query, r.grad_key, r.grad_value}, e, grad_tol<T>(),
                        "public");
    }
  // The reference forward's lse equals the fused forward's.
  const auto a = tessera::scaled_dot_product_attention_train(s.q, s.k, s.v, {.causal = true});
  const auto b = tessera::scaled_dot_product_attention_train(
      s.q, s.k, s.v, {.causal = true, .impl = AttentionImpl::reference});
  for (Index i = 0; i < a.lse.size(); ++i)
    EXPECT_TRUE(tessera::test::close(a.lse.data()[i], b.lse.data()[i], tessera::test::tol<T>(),
                                     tessera::test::tol<T>()));
}

// Rows masked by lowest() everywhere, or whose only finite key is lowest(): the fused forward's
// lse is the reference's (about -FLT_MAX, not a rescaled value), and so are the gradients. (For
// the row masked everywhere both paths give each key P = exp(S - lse) = 1, not 1 / Lk: at that
// magnitude lse = m + log(l) rounds to m.)
TYPED_TEST(AttentionBackwardTest, LowestFillRowsMatchTheReference) {
  using T = TypeParam;
  const Index B = 1, H = 2, Lq = 9, Lk = 70, D = 8, Dv = 8;
  Setup<T> s(B, H, Lq, Lk, D, Dv, 31);
  Tensor<T, 4> add(B, H, Lq, Lk);
  add.setZero();
  for (Index j = 0; j < Lk; ++j) {
    add(0, 0, 2, j) = std::numeric_limits<T>::lowest();                       // everywhere
    add(0, 1, 3, j) = j == 5 ? std::numeric_limits<T>::lowest() : -INFINITY;  // key 5 alone
  }
  const tessera::SDPAOptions fused{.mask = Mask::additive(add), .impl = AttentionImpl::fused};
  const tessera::SDPAOptions ref{.mask = Mask::additive(add), .impl = AttentionImpl::reference};
  const auto fa = tessera::scaled_dot_product_attention_train(s.q, s.k, s.v, fused);
  const auto fr = tessera::scaled_dot_product_attention_train(s.q, s.k, s.v, ref);
  for (Index i = 0; i < fa.lse.size(); ++i)
    EXPECT_TRUE(tessera::test::close(fa.lse.data()[i], fr.lse.data()[i], tessera::test::tol<T>(),
                                     tessera::test::tol<T>()))
        << i << ": " << fa.lse.data()[i] << " vs " << fr.lse.data()[i];
  const auto a = tessera::scaled_dot_product_attention_backward(s.q, s.k, s.v, fa.output, fa.lse,
                                                                s.dout, fused);
  const auto b =
      tessera::scaled_dot_product_attention_backward(s.q, s.k, s.v, fr.output, fr.lse, s.dout, ref);
  expect_grads_near(Grads<T>{a.grad_query, a.grad_key, a.grad_value},
                    Grads<T>{b.grad_query, b.grad_key, b.grad_value}, grad_tol<T>(), "lowest()");
}

// MultiheadAttention's layout: heads side by side in [B, L, H * hd] buffers (head h = columns
// [h hd, (h + 1) hd)), read and written in place.
TYPED_TEST(AttentionBackwardTest, StridedHeadsSideBySide) {
  using T = TypeParam;
  const Index B = 2, H = 3, L = 70, hd = 8, E = H * hd;
  Setup<T> s(B, H, L, L, hd, hd, 31);
  s.causal = true;
  const auto r = s.run(AttentionImpl::fused);
  // [B, H, L, hd] -> [B, L, E]
  const auto to_ble = [&](const Tensor<T, 4>& x) {
    Tensor<T, 3> y(B, L, E);
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h)
        for (Index i = 0; i < L; ++i)
          for (Index c = 0; c < hd; ++c) y(b, i, h * hd + c) = x(b, h, i, c);
    return y;
  };
  const auto q = to_ble(s.q), k = to_ble(s.k), v = to_ble(s.v), o = to_ble(r.out),
             g = to_ble(s.dout);
  Tensor<T, 3> dq(B, L, E), dk(B, L, E), dv(B, L, E);
  AttentionBackwardProblem<T> bp;
  AttentionProblem<T>& p = bp.forward;
  p.batch = B, p.heads = H, p.lq = L, p.lk = L, p.d = hd, p.dv = hd;
  p.q = {q.data(), L * E, hd, E};
  p.k = {k.data(), L * E, hd, E};
  p.v = {v.data(), L * E, hd, E};
  p.out = {const_cast<T*>(o.data()), L * E, hd, E};
  p.scale = s.scale;
  p.causal = true;
  p.mask_lk = L;
  bp.lse = r.lse.data();
  bp.dout = {g.data(), L * E, hd, E};
  bp.dq = {dq.data(), L * E, hd, E};
  bp.dk = {dk.data(), L * E, hd, E};
  bp.dv = {dv.data(), L * E, hd, E};
  tessera::detail::attention_backward_fused(bp);
  EXPECT_TRUE(tessera::test::same_bits(dq, to_ble(r.g.dq)));
  EXPECT_TRUE(tessera::test::same_bits(dk, to_ble(r.g.dk)));
  EXPECT_TRUE(tessera::test::same_bits(dv, to_ble(r.g.dv)));
}

TYPED_TEST(AttentionBackwardTest, BitIdenticalAcrossThreadCounts) {
  using T = TypeParam;
  if (tessera::max_threads() < 2) GTEST_SKIP() << "built without OpenMP: one thread only";
  struct S {
    Index B, H, L;
  };
  // One head (keys split into ranges), three heads, and sixteen heads (no split).
  for (const S c : {S{1, 1, 600}, S{1, 3, 200}, S{2, 8, 70}}) {
    Setup<T> s(c.B, c.H, c.L, c.L, 16, 16, 77);
    s.causal = c.H == 3;
    tessera::set_num_threads(1);
    const auto one = s.run(AttentionImpl::fused);
    for (int threads : {2, 3, 5}) {
      tessera::set_num_threads(threads);
      const auto r = s.run(AttentionImpl::fused);
      EXPECT_TRUE(tessera::test::same_bits(r.g.dq, one.g.dq)) << threads << " threads";
      EXPECT_TRUE(tessera::test::same_bits(r.g.dk, one.g.dk)) << threads << " threads";
      EXPECT_TRUE(tessera::test::same_bits(r.g.dv, one.g.dv)) << threads << " threads";
    }
    tessera::set_num_threads(tessera::max_threads());
  }
  // The first case above splits one head's keys into ranges; the split ignores the thread count.
  const Index split = tessera::detail::attention_backward_splits(1, 600);
  EXPECT_GT(split, 1);
  tessera::set_num_threads(1);
  EXPECT_EQ(tessera::detail::attention_backward_splits(1, 600), split);
  tessera::set_num_threads(tessera::max_threads());
  EXPECT_EQ(tessera::detail::attention_backward_splits(8, 600), 1);
}

TYPED_TEST(AttentionBackwardTest, EmptyExtents) {
  using T = TypeParam;
  struct S {
    Index B, H, Lq, Lk, D, Dv;
  };
  for (const S c :
       {S{1, 2, 0, 5, 3, 4}, S{1, 2, 5, 0, 3, 4}, S{1, 2, 5, 6, 0, 4}, S{1, 2, 5, 6, 3, 0},
        S{0, 2, 5, 6, 3, 4}, S{2, 0, 5, 6, 3, 4}, S{1, 1, 70, 90, 0, 5}}) {
    const std::string what = "Lq" + std::to_string(c.Lq) + " Lk" + std::to_string(c.Lk) + " D" +
                             std::to_string(c.D) + " Dv" + std::to_string(c.Dv);
    Setup<T> s(c.B, c.H, c.Lq, c.Lk, c.D, c.Dv, 5);
    check_setup(s, keep_all, add_none, what);
    const auto fw = tessera::scaled_dot_product_attention_train(s.q, s.k, s.v);
    const auto r =
        tessera::scaled_dot_product_attention_backward(s.q, s.k, s.v, fw.output, fw.lse, s.dout);
    EXPECT_EQ(r.grad_key.shape(), s.k.shape());
    EXPECT_EQ(r.grad_value.shape(), s.v.shape());
    EXPECT_EQ(r.grad_query.shape(), s.q.shape());
  }
}

// Golden gradients from PyTorch autograd (tests/fixtures/make_attention_backward_fixture.py).
TYPED_TEST(AttentionBackwardTest, MatchesPyTorchAutograd) {
  using T = TypeParam;
  const auto dict = tessera::io::load_safetensors(
      std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/kernels/attention_backward.safetensors");
  for (const std::string name : {"plain", "causal_additive", "bool_mask"}) {
    SCOPED_TRACE(name);
    const auto get = [&](const std::string& what) { return dict.get<T, 4>(name + "." + what); };
    const auto q = get("q"), k = get("k"), v = get("v"), dout = get("dout");
    tessera::SDPAOptions opts;
    opts.scale = std::stod(dict.metadata.at(name + ".scale"));
    opts.causal = dict.metadata.at(name + ".causal") == "true";
    Tensor<T, 4> add;
    Tensor<bool, 4> allowed;
    if (dict.contains(name + ".additive_mask")) {
      add = get("additive_mask");
      opts.mask = Mask::additive(add);
    }
    if (dict.contains(name + ".allowed_mask")) {
      allowed = dict.get<bool, 4>(name + ".allowed_mask");
      opts.mask = Mask::allowed(allowed);
    }
    const T tol = tessera::test::parity_tol<T>();
    const auto fw = tessera::scaled_dot_product_attention_train(q, k, v, opts);
    tessera::test::expect_tensor_near(fw.output, get("out"), tol, name + " out");
    for (auto impl : {AttentionImpl::fused, AttentionImpl::reference}) {
      opts.impl = impl;
      const auto r =
          tessera::scaled_dot_product_attention_backward(q, k, v, fw.output, fw.lse, dout, opts);
      tessera::test::expect_tensor_near(r.grad_query, get("dq"), tol, name + " dq");
      tessera::test::expect_tensor_near(r.grad_key, get("dk"), tol, name + " dk");
      tessera::test::expect_tensor_near(r.grad_value, get("dv"), tol, name + " dv");
    }
  }
}

TYPED_TEST(AttentionBackwardTest, RejectsBadShapesAndScales) {
  using T = TypeParam;
  constexpr const char* fn = "tessera::scaled_dot_product_attention_backward";
  const Index B = 2, H = 3, Lq = 4, Lk = 5, D = 6, Dv = 7;
  Tensor<T, 4> q(B, H, Lq, D), k(B, H, Lk, D), v(B, H, Lk, Dv), o(B, H, Lq, Dv), g(B, H, Lq, Dv);
  Tensor<T, 3> lse(B, H, Lq);
  Tensor<T, 4> bad_k(B, H, Lk, D + 1), bad_v(B, H, Lk + 1, Dv), bad_o(B, H, Lq, Dv + 1),
      bad_g(B, H, Lq + 1, Dv);
  Tensor<T, 3> bad_lse(B, H, Lq + 2);
  const auto call = [&](const auto& kk, const auto& vv, const auto& oo, const auto& ll,
                        const auto& gg, const tessera::SDPAOptions& opts = {}) {
    (void)tessera::scaled_dot_product_attention_backward(q, kk, vv, oo, ll, gg, opts);
  };
  TESSERA_EXPECT_THROW_MSG(call(bad_k, v, o, lse, g), tessera::ShapeError, fn, "'key'",
                           "[2, 3, 5, 7]", "[2, 3, 5, 6]");
  TESSERA_EXPECT_THROW_MSG(call(k, bad_v, o, lse, g), tessera::ShapeError, fn, "'value'",
                           "[2, 3, 6, 7]", "[2, 3, 5, 7]");
  TESSERA_EXPECT_THROW_MSG(call(k, v, bad_o, lse, g), tessera::ShapeError, fn, "'out'",
                           "[2, 3, 4, 8]", "[2, 3, 4, 7]");
  TESSERA_EXPECT_THROW_MSG(call(k, v, o, bad_lse, g), tessera::ShapeError, fn, "'lse'", "[2, 3, 6]",
                           "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(call(k, v, o, lse, bad_g), tessera::ShapeError, fn, "'grad_out'",
                           "[2, 3, 5, 7]", "[2, 3, 4, 7]");
  Tensor<bool, 2> bad_mask(Lq, Lk + 1);
  TESSERA_EXPECT_THROW_MSG(call(k, v, o, lse, g, {.mask = Mask::allowed(bad_mask)}),
                           tessera::ShapeError, fn, "'mask'", "[4, 6]", "[2, 3, 4, 5]");
  TESSERA_EXPECT_THROW_MSG(
      call(k, v, o, lse, g, {.scale = std::numeric_limits<double>::infinity()}),
      tessera::ValueError, fn, "'scale'", "finite");
  TESSERA_EXPECT_THROW_MSG(
      call(k, v, o, lse, g, {.scale = std::numeric_limits<double>::quiet_NaN()}),
      tessera::ValueError, fn, "'scale'", "finite");
  // The training forward checks the same.
  constexpr const char* fn_train = "tessera::scaled_dot_product_attention_train";
  TESSERA_EXPECT_THROW_MSG((void)tessera::scaled_dot_product_attention_train(q, bad_k, v),
                           tessera::ShapeError, fn_train, "'key'", "[2, 3, 5, 7]");
  TESSERA_EXPECT_THROW_MSG((void)tessera::scaled_dot_product_attention_train(q, k, bad_v),
                           tessera::ShapeError, fn_train, "'value'", "[2, 3, 6, 7]");
  TESSERA_EXPECT_THROW_MSG(
      (void)tessera::scaled_dot_product_attention_train(q, k, v, {.mask = Mask::allowed(bad_mask)}),
      tessera::ShapeError, fn_train, "'mask'", "[4, 6]");
  TESSERA_EXPECT_THROW_MSG((void)tessera::scaled_dot_product_attention_train(
                               q, k, v, {.scale = std::numeric_limits<double>::infinity()}),
                           tessera::ValueError, fn_train, "'scale'");
}

// The errors against the long-double formula, printed once (for the record).
TEST(AttentionBackwardReport, WorstFloatError) {
  std::cout << "worst |a - e| / (1 + |e|) of the gradients against the formula: float "
            << worst_error[0] << ", double " << worst_error[1] << std::endl;
}

}  // namespace attention_backward_test
