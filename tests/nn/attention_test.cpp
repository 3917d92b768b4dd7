#include "tessera/nn/attention.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "fixture.hpp"
#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace attention_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::Attention;
using tessera::nn::AttentionOptions;
using tessera::nn::AttentionScore;
using tessera::test::owned_vector;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr AttentionScore kScores[] = {AttentionScore::dot, AttentionScore::scaled_dot,
                                      AttentionScore::general, AttentionScore::additive};

template <class T>
class AttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionTest, tessera::test::Scalars);

// Module vs the double-precision reference loop below: float rounds every product and the exp.
template <class T>
constexpr T ref_tol() {
  return std::is_same_v<T, float> ? T(1e-5) : T(1e-12);
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// Options for a score with the test's usual sizes: query_dim 5, key_dim 5 (dot) or 3.
AttentionOptions options_for(AttentionScore s, std::uint64_t seed = 1) {
  const bool dot = s == AttentionScore::dot || s == AttentionScore::scaled_dot;
  return {.score = s, .query_dim = 5, .key_dim = dot ? 5 : 3, .attention_dim = 4, .seed = seed};
}

template <class T>
Tensor<T, 3> random3(Index a, Index b, Index c, std::uint64_t seed) {
  Tensor<T, 3> x(a, b, c);
  x.setRandom(seed);
  return x;
}

struct Reference {
  Tensor<double, 3> output;   // [B, Lq, Dv]
  Tensor<double, 3> weights;  // [B, Lq, Lk]
};

// The score, softmax and weighted sum written out as plain loops in double. `mask` is a dense
// additive mask [B, Lq, Lk] (0, a finite value or -inf) or null.
template <class T>
Reference reference(const Attention<T>& m, const Tensor<T, 3>& q, const Tensor<T, 3>& k,
                    const Tensor<T, 3>& v, const Tensor<double, 3>* mask = nullptr) {
  const Index B = q.dim(0), Lq = q.dim(1), Dq = q.dim(2), Lk = k.dim(1), Dk = k.dim(2),
              Dv = v.dim(2);
  Reference r{Tensor<double, 3>(B, Lq, Dv), Tensor<double, 3>(B, Lq, Lk)};
  for (Index b = 0; b < B; ++b)
    for (Index i = 0; i < Lq; ++i) {
      std::vector<double> s(static_cast<std::size_t>(Lk));
      for (Index j = 0; j < Lk; ++j) {
        double score = 0;
        switch (m.score()) {
          case AttentionScore::dot:
          case AttentionScore::scaled_dot:
            for (Index c = 0; c < Dq; ++c) score += double(q(b, i, c)) * double(k(b, j, c));
            if (m.score() == AttentionScore::scaled_dot) score /= std::sqrt(double(Dq));
            break;
          case AttentionScore::general:  // q^T W k
            for (Index a = 0; a < Dq; ++a)
              for (Index c = 0; c < Dk; ++c)
                score += double(q(b, i, a)) * double(m.weight.value(a, c)) * double(k(b, j, c));
            break;
          case AttentionScore::additive: {  // v^T tanh(W1 q + W2 k)
            const Index Da = m.options().attention_dim;
            for (Index a = 0; a < Da; ++a) {
              double h = 0;
              for (Index c = 0; c < Dq; ++c)
                h += double(m.query_proj.weight.value(a, c)) * double(q(b, i, c));
              for (Index c = 0; c < Dk; ++c)
                h += double(m.key_proj.weight.value(a, c)) * double(k(b, j, c));
              score += double(m.v.weight.value(0, a)) * std::tanh(h);
            }
            break;
          }
        }
        s[static_cast<std::size_t>(j)] = score + (mask ? (*mask)(b, i, j) : 0.0);
      }
      double mx = -kInf;
      for (double x : s) mx = std::max(mx, x);
      if (mx == -kInf) continue;  // every key masked: zero weights, zero output
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (Index j = 0; j < Lk; ++j) {
        const double w = s[static_cast<std::size_t>(j)] / sum;
        r.weights(b, i, j) = w;
        for (Index c = 0; c < Dv; ++c) r.output(b, i, c) += w * double(v(b, j, c));
      }
    }
  return r;
}

template <class T>
void expect_close(const Tensor<T, 3>& actual, const Tensor<double, 3>& expected, T tol,
                  const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  for (Index i = 0; i < actual.size(); ++i)
    ASSERT_TRUE(tessera::test::close(actual.data()[i], T(expected.data()[i]), tol, tol))
        << what << " at flat index " << i;
}

template <class T>
void expect_matches_reference(const Attention<T>& m, const Tensor<T, 3>& q, const Tensor<T, 3>& k,
                              const Tensor<T, 3>& v, const tessera::nn::AttentionForwardOptions& fo,
                              const Tensor<double, 3>* dense_mask, const std::string& what) {
  const auto r = m.forward(q, k, v, fo);
  const auto ref = reference(m, q, k, v, dense_mask);
  expect_close(r.output, ref.output, ref_tol<T>(), what + " output");
  expect_close(r.weights, ref.weights, ref_tol<T>(), what + " weights");
}

TYPED_TEST(AttentionTest, MatchesReferenceForEveryScore) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    const auto o = options_for(s);
    const Attention<T> m(o);
    const auto q = random3<T>(3, 4, o.query_dim, 1);
    const auto k = random3<T>(3, 6, o.key_dim, 2);
    const auto v = random3<T>(3, 6, 7, 3);
    expect_matches_reference(m, q, k, v, {}, nullptr, std::string(to_string(s)));
    // Views are accepted as well as tensors.
    const auto r = m.forward(tessera::cview(q), tessera::cview(k), tessera::cview(v));
    EXPECT_TRUE(r.output.as_vector() == owned_vector(m.forward(q, k, v).output));
    // One batch, one query, one key: the weight is 1 and the output is the value.
    const auto one = m.forward(random3<T>(1, 1, o.query_dim, 4), random3<T>(1, 1, o.key_dim, 5),
                               random3<T>(1, 1, 3, 6));
    EXPECT_EQ(one.weights(0, 0, 0), T(1));
    EXPECT_TRUE(one.output.as_vector() == owned_vector(random3<T>(1, 1, 3, 6)));
  }
}

TYPED_TEST(AttentionTest, LargerProblemsMatchReference) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    auto o = options_for(s, 7);
    o.query_dim = 24;
    o.key_dim = s == AttentionScore::general || s == AttentionScore::additive ? 16 : 24;
    o.attention_dim = 12;
    const Attention<T> m(o);
    const auto q = random3<T>(4, 17, o.query_dim, 11);
    const auto k = random3<T>(4, 40, o.key_dim, 12);
    const auto v = random3<T>(4, 40, 9, 13);
    expect_matches_reference(m, q, k, v, {}, nullptr, std::string(to_string(s)) + " (larger)");
  }
}

TYPED_TEST(AttentionTest, WeightsAreDistributions) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    const auto o = options_for(s, 3);
    const Attention<T> m(o);
    // Large inputs make some scores large: the softmax must stay finite and normalised.
    auto q = random3<T>(2, 5, o.query_dim, 21);
    q.as_array() *= T(30);
    const auto r = m.forward(q, random3<T>(2, 8, o.key_dim, 22), random3<T>(2, 8, 4, 23));
    EXPECT_EQ(r.weights.shape(), (Shape<3>{2, 5, 8}));
    EXPECT_EQ(r.output.shape(), (Shape<3>{2, 5, 4}));
    for (Index row = 0; row < 10; ++row) {
      const auto w = r.weights.template reshape<2>({10, 8})[row].as_vector();
      EXPECT_GE(w.minCoeff(), T(0));
      EXPECT_LE(w.maxCoeff(), T(1));
      EXPECT_NEAR(w.sum(), T(1), 8 * std::numeric_limits<T>::epsilon()) << to_string(s);
    }
    EXPECT_TRUE(r.output.as_vector().allFinite());
  }
}

TYPED_TEST(AttentionTest, MasksOfEveryKindAndBroadcastShape) {
  using T = TypeParam;
  const Index B = 2, Lq = 4, Lk = 5;
  for (AttentionScore s : kScores) {
    const auto o = options_for(s, 5);
    const Attention<T> m(o);
    const auto q = random3<T>(B, Lq, o.query_dim, 31);
    const auto k = random3<T>(B, Lk, o.key_dim, 32);
    const auto v = random3<T>(B, Lk, 6, 33);
    const std::string name(to_string(s));

    // Full [B, Lq, Lk] boolean mask (true = blocked); query (1, 2) has every key blocked.
    Tensor<bool, 3> blocked(B, Lq, Lk);
    Tensor<double, 3> dense(B, Lq, Lk);
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < Lq; ++i)
        for (Index j = 0; j < Lk; ++j) {
          blocked(b, i, j) = (b == 1 && i == 2) || (b + i + j) % 3 == 0;
          dense(b, i, j) = blocked(b, i, j) ? -kInf : 0.0;
        }
    expect_matches_reference(m, q, k, v, {.mask = Mask::blocked(blocked)}, &dense,
                             name + " blocked");
    const auto r = m.forward(q, k, v, {.mask = Mask::blocked(blocked)});
    for (Index j = 0; j < Lk; ++j) EXPECT_EQ(r.weights(1, 2, j), T(0));
    for (Index c = 0; c < 6; ++c) EXPECT_EQ(r.output(1, 2, c), T(0));
    EXPECT_TRUE(r.output.as_vector().allFinite());
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < Lq; ++i)
        for (Index j = 0; j < Lk; ++j)
          if (blocked(b, i, j)) {
            EXPECT_EQ(r.weights(b, i, j), T(0));
          }

    // Key padding [B, 1, Lk]: batch 0 pads its last 2 keys, batch 1 pads every key.
    Tensor<bool, 2> pad(B, Lk);
    for (Index j = 0; j < Lk; ++j) pad(0, j) = j >= 3, pad(1, j) = true;
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < Lq; ++i)
        for (Index j = 0; j < Lk; ++j) dense(b, i, j) = pad(b, j) ? -kInf : 0.0;
    const auto pad3 = pad.template reshape<3>({B, 1, Lk});
    expect_matches_reference(m, q, k, v, {.mask = Mask::blocked(pad3)}, &dense, name + " padding");
    const auto rp = m.forward(q, k, v, {.mask = Mask::blocked(pad3)});
    EXPECT_TRUE(rp.weights[1].as_vector().isZero(0));  // fully padded batch: zeros, no NaN
    EXPECT_TRUE(rp.output[1].as_vector().isZero(0));

    // A causal [Lq, Lk] "allowed" mask, broadcast over the batch.
    Tensor<bool, 2> causal(Lq, Lk);
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j) causal(i, j) = j <= i;
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < Lq; ++i)
        for (Index j = 0; j < Lk; ++j) dense(b, i, j) = causal(i, j) ? 0.0 : -kInf;
    expect_matches_reference(m, q, k, v, {.mask = Mask::allowed(causal)}, &dense, name + " causal");

    // An additive [1, Lq, Lk] mask of the module's scalar type, with finite values and -inf.
    Tensor<T, 3> add(1, Lq, Lk);
    for (Index i = 0; i < Lq; ++i)
      for (Index j = 0; j < Lk; ++j) {
        add(0, i, j) = j == i ? -std::numeric_limits<T>::infinity() : T(0.25) * T(j - i);
        for (Index b = 0; b < B; ++b) dense(b, i, j) = double(add(0, i, j));
      }
    expect_matches_reference(m, q, k, v, {.mask = Mask::additive(add)}, &dense, name + " additive");
  }
}

TYPED_TEST(AttentionTest, EmptySequences) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    const auto o = options_for(s);
    const Attention<T> m(o);
    // No keys: every query row is empty, so its output is zero.
    const auto no_keys = m.forward(random3<T>(2, 3, o.query_dim, 1), Tensor<T, 3>(2, 0, o.key_dim),
                                   Tensor<T, 3>(2, 0, 4));
    EXPECT_EQ(no_keys.weights.shape(), (Shape<3>{2, 3, 0}));
    EXPECT_EQ(no_keys.output.shape(), (Shape<3>{2, 3, 4}));
    EXPECT_TRUE(no_keys.output.as_vector().isZero(0));
    // No queries.
    const auto no_queries = m.forward(Tensor<T, 3>(2, 0, o.query_dim),
                                      random3<T>(2, 3, o.key_dim, 2), random3<T>(2, 3, 4, 3));
    EXPECT_EQ(no_queries.weights.shape(), (Shape<3>{2, 0, 3}));
    EXPECT_EQ(no_queries.output.shape(), (Shape<3>{2, 0, 4}));
  }
}

TYPED_TEST(AttentionTest, ForwardShapeErrors) {
  using T = TypeParam;
  const char* fn = "tessera::nn::Attention::forward";
  for (AttentionScore s : kScores) {
    const auto o = options_for(s);  // query_dim 5, key_dim 5 or 3
    const Index Dk = o.key_dim;
    // (Expected message parts that depend on key_dim, named: the macro keeps char pointers.)
    const std::string dk = std::to_string(Dk), dk1 = std::to_string(Dk + 1);
    const std::string keys_batch_shape = "has shape [3, 4, " + dk + "]",
                      keys_expected = "expected [2, Lk, " + dk + "]",
                      keys_dim_shape = "has shape [2, 4, " + dk1 + "]",
                      key_dim_is = "key_dim = " + dk, keys_shape = "keys [2, 4, " + dk + "]";
    const Attention<T> m(o);
    const Tensor<T, 3> q(2, 3, 5), k(2, 4, Dk), v(2, 4, 6);
    // query: wrong feature size.
    TESSERA_EXPECT_THROW_MSG(m.forward(Tensor<T, 3>(2, 3, 6), k, v), ShapeError, fn,
                             "argument 'query'", "has shape [2, 3, 6]", "expected [batch, Lq, 5]",
                             "query_dim = 5");
    // keys: wrong batch, wrong feature size.
    TESSERA_EXPECT_THROW_MSG(m.forward(q, Tensor<T, 3>(3, 4, Dk), v), ShapeError, fn,
                             "argument 'keys'", keys_batch_shape.c_str(), keys_expected.c_str(),
                             "query [2, 3, 5]");
    TESSERA_EXPECT_THROW_MSG(m.forward(q, Tensor<T, 3>(2, 4, Dk + 1), v), ShapeError, fn,
                             "argument 'keys'", keys_dim_shape.c_str(), key_dim_is.c_str());
    // values: wrong batch, wrong length.
    TESSERA_EXPECT_THROW_MSG(m.forward(q, k, Tensor<T, 3>(1, 4, 6)), ShapeError, fn,
                             "argument 'values'", "has shape [1, 4, 6]", "expected [2, 4, Dv]",
                             keys_shape.c_str());
    TESSERA_EXPECT_THROW_MSG(m.forward(q, k, Tensor<T, 3>(2, 5, 6)), ShapeError, fn,
                             "argument 'values'", "has shape [2, 5, 6]", "expected [2, 4, Dv]");
    // mask: not broadcastable to the scores [2, 3, 4].
    const Tensor<bool, 2> bad(3, 5);
    TESSERA_EXPECT_THROW_MSG(m.forward(q, k, v, {.mask = Mask::blocked(bad)}), ShapeError, fn,
                             "argument 'mask'", "has shape [3, 5]", "broadcastable to [2, 3, 4]");
    const Tensor<bool, 4> too_many(2, 2, 3, 4);
    TESSERA_EXPECT_THROW_MSG(m.forward(q, k, v, {.mask = Mask::allowed(too_many)}), ShapeError, fn,
                             "argument 'mask'", "has shape [2, 2, 3, 4]");
    const Tensor<T, 2> pad_not_reshaped(2, 4);  // [B, Lk] aligns with [Lq, Lk], not [B, Lk]
    TESSERA_EXPECT_THROW_MSG(m.forward(q, k, v, {.mask = Mask::additive(pad_not_reshaped)}),
                             ShapeError, fn, "argument 'mask'", "has shape [2, 4]");
  }
}

TYPED_TEST(AttentionTest, BadOptionsThrowValueError) {
  using T = TypeParam;
  const char* fn = "tessera::nn::Attention";
  TESSERA_EXPECT_THROW_MSG(Attention<T>(AttentionOptions{.query_dim = 0}), ValueError, fn,
                           "query_dim is 0", "expected a value > 0");
  TESSERA_EXPECT_THROW_MSG(
      Attention<T>(AttentionOptions{.score = AttentionScore::general, .query_dim = -2}), ValueError,
      fn, "query_dim is -2");
  TESSERA_EXPECT_THROW_MSG(Attention<T>(AttentionOptions{.query_dim = 4, .key_dim = -1}),
                           ValueError, fn, "key_dim is -1");
  TESSERA_EXPECT_THROW_MSG(
      Attention<T>(AttentionOptions{.score = AttentionScore::dot, .query_dim = 4, .key_dim = 3}),
      ValueError, fn, "the dot score needs query_dim == key_dim", "query_dim = 4", "key_dim = 3");
  TESSERA_EXPECT_THROW_MSG(Attention<T>(AttentionOptions{
                               .score = AttentionScore::scaled_dot, .query_dim = 2, .key_dim = 6}),
                           ValueError, fn, "the scaled_dot score needs query_dim == key_dim",
                           "query_dim = 2", "key_dim = 6");
  TESSERA_EXPECT_THROW_MSG(
      Attention<T>(AttentionOptions{.score = AttentionScore::additive, .query_dim = 4}), ValueError,
      fn, "attention_dim is 0", "additive");
  TESSERA_EXPECT_THROW_MSG(
      Attention<T>(
          AttentionOptions{.score = AttentionScore::additive, .query_dim = 4, .attention_dim = -3}),
      ValueError, fn, "attention_dim is -3");
  TESSERA_EXPECT_THROW_MSG(
      Attention<T>(AttentionOptions{.score = static_cast<AttentionScore>(9), .query_dim = 4}),
      ValueError, fn, "score is 9", "AttentionScore");
}

TYPED_TEST(AttentionTest, OptionsAndParameters) {
  using T = TypeParam;
  // key_dim 0 means query_dim.
  const Attention<T> dot({.score = AttentionScore::dot, .query_dim = 6});
  EXPECT_EQ(dot.key_dim(), 6);
  EXPECT_EQ(dot.options().key_dim, 6);
  EXPECT_EQ(dot.num_parameters(), 0);
  EXPECT_TRUE(dot.state_dict().empty());
  // attention_dim is ignored by every score but additive.
  const Attention<T> sd({.score = AttentionScore::scaled_dot, .query_dim = 6, .attention_dim = 9});
  EXPECT_EQ(sd.num_parameters(), 0);

  const Attention<T> gen({.score = AttentionScore::general, .query_dim = 6, .key_dim = 4});
  EXPECT_EQ(gen.weight.shape(), (Shape<2>{6, 4}));
  EXPECT_EQ(gen.state_dict().keys(), std::vector<std::string>{"weight"});
  // Initialised like torch.nn.Linear(key_dim, query_dim): U(-1/sqrt(key_dim), 1/sqrt(key_dim)).
  EXPECT_LE(gen.weight.value.as_vector().cwiseAbs().maxCoeff(), T(0.5));
  EXPECT_GT(gen.weight.value.as_vector().cwiseAbs().maxCoeff(), T(0));

  const Attention<T> add(
      {.score = AttentionScore::additive, .query_dim = 6, .key_dim = 4, .attention_dim = 5});
  EXPECT_EQ(add.query_proj.weight.shape(), (Shape<2>{5, 6}));
  EXPECT_EQ(add.key_proj.weight.shape(), (Shape<2>{5, 4}));
  EXPECT_EQ(add.v.weight.shape(), (Shape<2>{1, 5}));
  EXPECT_EQ(add.num_parameters(), 30 + 20 + 5);
  const auto keys = add.state_dict("att.").keys();
  EXPECT_EQ(keys, (std::vector<std::string>{"att.key_proj.weight", "att.query_proj.weight",
                                            "att.v.weight"}));
}

TYPED_TEST(AttentionTest, StateDictRoundTrip) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    const Attention<T> a(options_for(s, 1));
    Attention<T> b(options_for(s, 2));
    const auto q = random3<T>(2, 3, a.query_dim(), 1);
    const auto k = random3<T>(2, 4, a.key_dim(), 2);
    const auto v = random3<T>(2, 4, 3, 3);
    const auto sd = a.state_dict("layer.att.");
    if (a.num_parameters() > 0) {
      EXPECT_FALSE(owned_vector(a.forward(q, k, v).output) ==
                   owned_vector(b.forward(q, k, v).output));
    }
    b.load_state_dict(sd, "layer.att.");
    const auto ra = a.forward(q, k, v), rb = b.forward(q, k, v);
    EXPECT_TRUE(ra.output.as_vector() == rb.output.as_vector()) << to_string(s);
    EXPECT_TRUE(ra.weights.as_vector() == rb.weights.as_vector()) << to_string(s);
    // Through the bytes of a safetensors file as well.
    Attention<T> c(options_for(s, 3));
    c.load_state_dict(tessera::io::parse_safetensors(tessera::io::serialize_safetensors(sd)),
                      "layer.att.");
    EXPECT_TRUE(owned_vector(c.forward(q, k, v).output) == ra.output.as_vector()) << to_string(s);
  }
}

TYPED_TEST(AttentionTest, StrictLoadingErrors) {
  using T = TypeParam;
  const char* fn = "tessera::nn::Module::load_state_dict";
  // dot: no parameters, so any key under the prefix is unexpected.
  {
    Attention<T> m(options_for(AttentionScore::dot));
    tessera::io::StateDict sd;
    sd.insert("att.weight", Tensor<T, 2>(5, 5));
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd, "att."), ValueError, fn,
                             "unexpected keys: 'att.weight'");
  }
  // general: missing weight; weight transposed.
  {
    Attention<T> m(options_for(AttentionScore::general));  // weight [5, 3]
    const Tensor<T, 2> before(m.weight.value);
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(tessera::io::StateDict{}, "att."), ValueError, fn,
                             "missing keys: 'att.weight'");
    tessera::io::StateDict sd;
    sd.insert("att.weight", Tensor<T, 2>(3, 5));
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd, "att."), ShapeError, fn, "key 'att.weight'",
                             "has shape [3, 5]", "expects [5, 3]");
    EXPECT_TRUE(m.weight.value.as_vector() == before.as_vector());
  }
  // additive: v.weight missing and a bias that the module does not have, listed together.
  {
    Attention<T> m(options_for(AttentionScore::additive));
    auto sd = Attention<T>(options_for(AttentionScore::additive, 9)).state_dict("att.");
    ASSERT_TRUE(sd.erase("att.v.weight"));
    sd.insert("att.v.bias", Tensor<T, 1>(1));
    const Tensor<T, 2> before(m.query_proj.weight.value);
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd, "att."), ValueError, fn,
                             "missing keys: 'att.v.weight'", "unexpected keys: 'att.v.bias'");
    EXPECT_TRUE(m.query_proj.weight.value.as_vector() == before.as_vector());  // unchanged
    // key_proj.weight with query_proj's shape.
    auto sd2 = m.state_dict("att.");
    sd2.erase("att.key_proj.weight");
    sd2.insert("att.key_proj.weight", Tensor<T, 2>(4, 5));
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd2, "att."), ShapeError, fn,
                             "key 'att.key_proj.weight'", "has shape [4, 5]", "expects [4, 3]");
  }
}

TYPED_TEST(AttentionTest, ConcurrentForwardCallsAgree) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    const auto o = options_for(s, 4);
    const Attention<T> m(o);
    const auto q = random3<T>(3, 20, o.query_dim, 1);
    const auto k = random3<T>(3, 30, o.key_dim, 2);
    const auto v = random3<T>(3, 30, 8, 3);
    const auto ref = m.forward(q, k, v);
    std::vector<tessera::nn::AttentionOutput<T>> outs(4);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < outs.size(); ++t)
      threads.emplace_back([&, t] { outs[t] = m.forward(q, k, v); });
    for (auto& th : threads) th.join();
    for (const auto& r : outs) {
      EXPECT_TRUE(r.output.as_vector() == ref.output.as_vector()) << to_string(s);
      EXPECT_TRUE(r.weights.as_vector() == ref.weights.as_vector()) << to_string(s);
    }
  }
}

// ---- PyTorch parity (tests/fixtures/make_fixtures.py, class ScoredAttention) ----

AttentionScore parse_score(const std::string& s) {
  for (AttentionScore a : kScores)
    if (to_string(a) == s) return a;
  ADD_FAILURE() << "unknown score '" << s << "' in a fixture";
  return AttentionScore::dot;
}

// |a - e| <= tol + tol |e| (absolute plus relative), tol 1e-5 for float and 1e-10 for double.
template <class T>
void expect_parity(const Tensor<T, 3>& actual, const Tensor<T, 3>& expected,
                   const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const T tol = tessera::test::parity_tol<T>();
  double max_abs = 0;
  for (Index i = 0; i < actual.size(); ++i) {
    const T a = actual.data()[i], e = expected.data()[i];
    max_abs = std::max(max_abs, std::fabs(double(a) - double(e)));
    ASSERT_TRUE(tessera::test::close(a, e, tol, tol)) << what << " at flat index " << i;
  }
  std::printf("[parity] %s (%s): max abs error %.3g\n", what.c_str(), type_name<T>(), max_abs);
}

template <class T>
void check_fixture(const std::string& name, AttentionScore want) {
  const std::string path =
      std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/nn/" + name + ".safetensors";
  ASSERT_TRUE(std::filesystem::exists(path))
      << "missing fixture " << path << " (regenerate with tests/fixtures/make_fixtures.py)";
  const tessera::test::Fixture fx(name);
  const auto& o = fx.options;
  const AttentionScore score = parse_score(o.at("score").get<std::string>());
  ASSERT_EQ(score, want) << name;
  Attention<T> m({.score = score,
                  .query_dim = o.at("query_dim").get<Index>(),
                  .key_dim = o.at("key_dim").get<Index>(),
                  .attention_dim = o.at("attention_dim").get<Index>()});
  m.load_state_dict(fx.dict, "module.");
  const auto r = m.forward(fx.input<T, 3>("query"), fx.input<T, 3>("key"), fx.input<T, 3>("value"));
  expect_parity(r.output, fx.expected<T, 3>("output"), name + " output");
  expect_parity(r.weights, fx.expected<T, 3>("weights"), name + " weights");
}

TYPED_TEST(AttentionTest, MatchesPyTorchDot) {
  check_fixture<TypeParam>("attention_scores_dot", AttentionScore::dot);
}
TYPED_TEST(AttentionTest, MatchesPyTorchScaledDot) {
  check_fixture<TypeParam>("attention_scores_scaled_dot", AttentionScore::scaled_dot);
}
TYPED_TEST(AttentionTest, MatchesPyTorchGeneral) {
  check_fixture<TypeParam>("attention_scores_general", AttentionScore::general);
}
TYPED_TEST(AttentionTest, MatchesPyTorchAdditive) {
  check_fixture<TypeParam>("attention_scores_additive", AttentionScore::additive);
}

}  // namespace attention_test

namespace attention_test {

// Parameters replaced by tensors of the wrong shape: forward throws a ShapeError naming the
// parameter under its state-dict name, for each score that reads one.
TYPED_TEST(AttentionTest, ParametersOfTheWrongShapeAreNamed) {
  using T = TypeParam;
  const auto q = random3<T>(2, 4, 5, 1);
  const auto k = random3<T>(2, 6, 3, 2);
  const auto v = random3<T>(2, 6, 2, 3);
  Attention<T> general(options_for(AttentionScore::general));
  general.weight.value = Tensor<T, 2>(3, 5);
  TESSERA_EXPECT_THROW_MSG(general.forward(q, k, v), ShapeError, "tessera::nn::Attention::forward",
                           "parameter 'weight' has shape [3, 5], expected [5, 3]");
  Attention<T> additive(options_for(AttentionScore::additive));
  additive.query_proj.weight.value = Tensor<T, 2>(4, 3);
  TESSERA_EXPECT_THROW_MSG(additive.forward(q, k, v), ShapeError, "tessera::nn::Attention::forward",
                           "parameter 'query_proj.weight' has shape [4, 3], expected [4, 5]");
  additive.query_proj.weight.value = Tensor<T, 2>(4, 5);
  additive.key_proj.weight.value = Tensor<T, 2>(2, 3);
  TESSERA_EXPECT_THROW_MSG(additive.forward(q, k, v), ShapeError,
                           "parameter 'key_proj.weight' has shape [2, 3], expected [4, 3]");
  additive.key_proj.weight.value = Tensor<T, 2>(4, 3);
  additive.v.weight.value = Tensor<T, 2>(4, 1);
  TESSERA_EXPECT_THROW_MSG(additive.forward(q, k, v), ShapeError,
                           "parameter 'v.weight' has shape [4, 1], expected [1, 4]");
}

// NaN in, NaN out: a NaN in one query row gives that row NaN weights and a NaN output, for every
// score; the other rows stay finite.
TYPED_TEST(AttentionTest, NaNQueryRowGivesNaNRow) {
  using T = TypeParam;
  for (AttentionScore s : kScores) {
    Attention<T> m(options_for(s));
    auto q = random3<T>(2, 4, 5, 1);
    const auto k = random3<T>(2, 6, m.key_dim(), 2);
    const auto v = random3<T>(2, 6, 2, 3);
    q(1, 2, 0) = std::numeric_limits<T>::quiet_NaN();
    const auto r = m.forward(q, k, v);
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < 4; ++i) {
        for (Index j = 0; j < 6; ++j)
          EXPECT_EQ(std::isnan(r.weights(b, i, j)), b == 1 && i == 2) << to_string(s);
        for (Index e = 0; e < 2; ++e)
          EXPECT_EQ(std::isnan(r.output(b, i, e)), b == 1 && i == 2) << to_string(s);
      }
  }
}

}  // namespace attention_test
