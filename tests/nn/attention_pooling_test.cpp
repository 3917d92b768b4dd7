#include "tessera/nn/attention_pooling.hpp"

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

namespace attention_pooling_test {

using tessera::Index;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::AttentionPooling;
using tessera::nn::AttentionPoolingOptions;
using tessera::test::owned_vector;

constexpr double kInf = std::numeric_limits<double>::infinity();

template <class T>
class AttentionPoolingTest : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionPoolingTest, tessera::test::Scalars);

// Module vs the double-precision reference loop below.
template <class T>
constexpr T ref_tol() {
  return std::is_same_v<T, float> ? T(1e-5) : T(1e-12);
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

template <class T>
Tensor<T, 3> random_h(Index b, Index t, Index d, std::uint64_t seed) {
  Tensor<T, 3> h(b, t, d);
  h.setRandom(seed);
  return h;
}

struct Reference {
  Tensor<double, 2> context;  // [B, D]
  Tensor<double, 2> weights;  // [B, T]
};

// The five steps written out in double: u_t = tanh(W h_t + b), e_t = q^T u_t, a = softmax(e +
// mask), c = sum_t a_t h_t. `mask` is a dense additive [B, T] (0, finite or -inf) or null.
template <class T>
Reference reference(const AttentionPooling<T>& m, const Tensor<T, 3>& h,
                    const Tensor<double, 2>* mask = nullptr) {
  const Index B = h.dim(0), L = h.dim(1), D = h.dim(2), Da = m.attention_dim();
  const auto& W = m.proj.weight.value;
  const auto& bias = m.proj.bias.value;
  const auto& q = m.query.value;
  Reference r{Tensor<double, 2>(B, D), Tensor<double, 2>(B, L)};
  for (Index b = 0; b < B; ++b) {
    std::vector<double> e(static_cast<std::size_t>(L));
    double mx = -kInf;
    for (Index t = 0; t < L; ++t) {
      double et = 0;
      for (Index a = 0; a < Da; ++a) {
        double u = double(bias(a));
        for (Index c = 0; c < D; ++c) u += double(W(a, c)) * double(h(b, t, c));
        et += double(q(a)) * std::tanh(u);
      }
      e[static_cast<std::size_t>(t)] = et + (mask ? (*mask)(b, t) : 0.0);
      mx = std::max(mx, e[static_cast<std::size_t>(t)]);
    }
    if (mx == -kInf) continue;  // every step masked: zero weights, zero context
    double sum = 0;
    for (double& x : e) sum += (x = std::exp(x - mx));
    for (Index t = 0; t < L; ++t) {
      r.weights(b, t) = e[static_cast<std::size_t>(t)] / sum;
      for (Index c = 0; c < D; ++c) r.context(b, c) += r.weights(b, t) * double(h(b, t, c));
    }
  }
  return r;
}

template <class T>
void expect_close(const Tensor<T, 2>& actual, const Tensor<double, 2>& expected,
                  const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  for (Index i = 0; i < actual.size(); ++i)
    ASSERT_TRUE(
        tessera::test::close(actual.data()[i], T(expected.data()[i]), ref_tol<T>(), ref_tol<T>()))
        << what << " at flat index " << i;
}

template <class T>
void expect_matches_reference(const AttentionPooling<T>& m, const Tensor<T, 3>& h,
                              const tessera::nn::AttentionPoolingForwardOptions& fo,
                              const Tensor<double, 2>* dense_mask, const std::string& what) {
  const auto r = m.forward(h, fo);
  const auto ref = reference(m, h, dense_mask);
  expect_close(r.context, ref.context, what + " context");
  expect_close(r.weights, ref.weights, what + " weights");
}

TYPED_TEST(AttentionPoolingTest, ParametersAndInitialisation) {
  using T = TypeParam;
  const AttentionPooling<T> m({.input_dim = 8, .attention_dim = 5, .seed = 3});
  EXPECT_EQ(m.input_dim(), 8);
  EXPECT_EQ(m.attention_dim(), 5);
  EXPECT_EQ(m.proj.weight.shape(), (Shape<2>{5, 8}));
  EXPECT_EQ(m.proj.bias.shape(), (Shape<1>{5}));
  EXPECT_EQ(m.query.shape(), (Shape<1>{5}));
  EXPECT_EQ(m.num_parameters(), 40 + 5 + 5);
  EXPECT_EQ(m.state_dict("pool.").keys(),
            (std::vector<std::string>{"pool.proj.bias", "pool.proj.weight", "pool.query"}));
  // query ~ U(-1/sqrt(5), 1/sqrt(5)); not all zero.
  EXPECT_LE(m.query.value.as_vector().cwiseAbs().maxCoeff(), T(1 / std::sqrt(5.0)));
  EXPECT_GT(m.query.value.as_vector().cwiseAbs().maxCoeff(), T(0));
  const AttentionPooling<T> same({.input_dim = 8, .attention_dim = 5, .seed = 3});
  const AttentionPooling<T> other({.input_dim = 8, .attention_dim = 5, .seed = 4});
  EXPECT_TRUE(m.query.value.as_vector() == same.query.value.as_vector());
  EXPECT_FALSE(m.query.value.as_vector() == other.query.value.as_vector());
}

TYPED_TEST(AttentionPoolingTest, MatchesReference) {
  using T = TypeParam;
  const AttentionPooling<T> m({.input_dim = 6, .attention_dim = 4, .seed = 1});
  expect_matches_reference(m, random_h<T>(3, 7, 6, 1), {}, nullptr, "small");
  expect_matches_reference(m, random_h<T>(1, 1, 6, 2), {}, nullptr, "one step");
  const AttentionPooling<T> big({.input_dim = 40, .attention_dim = 24, .seed = 2});
  expect_matches_reference(big, random_h<T>(9, 65, 40, 3), {}, nullptr, "larger");
  // A view works as well as a tensor.
  const auto h = random_h<T>(2, 5, 6, 4);
  EXPECT_TRUE(owned_vector(m.forward(tessera::cview(h)).context) ==
              owned_vector(m.forward(h).context));
}

TYPED_TEST(AttentionPoolingTest, WeightsAreDistributionsAndContextIsAnAverage) {
  using T = TypeParam;
  AttentionPooling<T> m({.input_dim = 5, .attention_dim = 3, .seed = 8});
  m.query.value.as_array() *= T(40);  // sharp weights: the softmax must stay finite
  const auto h = random_h<T>(4, 9, 5, 5);
  const auto r = m.forward(h);
  EXPECT_EQ(r.weights.shape(), (Shape<2>{4, 9}));
  EXPECT_EQ(r.context.shape(), (Shape<2>{4, 5}));
  for (Index b = 0; b < 4; ++b) {
    const auto w = r.weights[b].as_vector();
    EXPECT_GE(w.minCoeff(), T(0));
    EXPECT_LE(w.maxCoeff(), T(1));
    EXPECT_NEAR(w.sum(), T(1), 16 * std::numeric_limits<T>::epsilon());
    // Each context feature lies between the smallest and largest h_t feature of its sequence.
    for (Index c = 0; c < 5; ++c) {
      T lo = h(b, 0, c), hi = h(b, 0, c);
      for (Index t = 1; t < 9; ++t) lo = std::min(lo, h(b, t, c)), hi = std::max(hi, h(b, t, c));
      EXPECT_GE(r.context(b, c), lo - 8 * std::numeric_limits<T>::epsilon());
      EXPECT_LE(r.context(b, c), hi + 8 * std::numeric_limits<T>::epsilon());
    }
  }
  // Identical steps: uniform weights, and the context is that step.
  Tensor<T, 3> same(1, 4, 5);
  for (Index t = 0; t < 4; ++t)
    for (Index c = 0; c < 5; ++c) same(0, t, c) = T(c) - T(1.5);
  const auto u = m.forward(same);
  for (Index t = 0; t < 4; ++t) EXPECT_EQ(u.weights(0, t), T(0.25));
  for (Index c = 0; c < 5; ++c)
    EXPECT_NEAR(u.context(0, c), T(c) - T(1.5), 4 * std::numeric_limits<T>::epsilon());
}

TYPED_TEST(AttentionPoolingTest, Masks) {
  using T = TypeParam;
  const Index B = 3, L = 6, D = 4;
  const AttentionPooling<T> m({.input_dim = D, .attention_dim = 5, .seed = 6});
  const auto h = random_h<T>(B, L, D, 7);
  Tensor<double, 2> dense(B, L);

  // Padding (true = padding, PyTorch's convention): batch 0 none, batch 1 the last two steps,
  // batch 2 every step.
  Tensor<bool, 2> pad(B, L);
  for (Index t = 0; t < L; ++t) pad(1, t) = t >= 4, pad(2, t) = true;
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < L; ++t) dense(b, t) = pad(b, t) ? -kInf : 0.0;
  expect_matches_reference(m, h, {.mask = Mask::blocked(pad)}, &dense, "padding");
  const auto r = m.forward(h, {.mask = Mask::blocked(pad)});
  EXPECT_EQ(r.weights(1, 4), T(0));
  EXPECT_EQ(r.weights(1, 5), T(0));
  // The fully padded sequence: zero weights and zero context, no NaN.
  EXPECT_TRUE(r.weights[2].as_vector().isZero(0));
  EXPECT_TRUE(r.context[2].as_vector().isZero(0));
  EXPECT_TRUE(r.context.as_vector().allFinite());
  // Padded steps do not change the result: batch 1 equals pooling its first four steps alone.
  Tensor<T, 3> first4(1, 4, D);
  for (Index t = 0; t < 4; ++t)
    for (Index c = 0; c < D; ++c) first4(0, t, c) = h(1, t, c);
  const auto r4 = m.forward(first4);
  for (Index c = 0; c < D; ++c)
    EXPECT_TRUE(
        tessera::test::close(r.context(1, c), r4.context(0, c), ref_tol<T>(), ref_tol<T>()));

  // An "allowed" mask [1, T] broadcast over the batch: only steps 1 and 3.
  Tensor<bool, 2> allowed(1, L);
  allowed(0, 1) = allowed(0, 3) = true;
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < L; ++t) dense(b, t) = allowed(0, t) ? 0.0 : -kInf;
  expect_matches_reference(m, h, {.mask = Mask::allowed(allowed)}, &dense, "allowed [1, T]");

  // A rank-1 [T] mask broadcasts too; an additive one with finite values and -inf.
  Tensor<T, 1> add(L);
  for (Index t = 0; t < L; ++t)
    add(t) = t == 2 ? -std::numeric_limits<T>::infinity() : T(0.3) * T(t);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < L; ++t) dense(b, t) = double(add(t));
  expect_matches_reference(m, h, {.mask = Mask::additive(add)}, &dense, "additive [T]");
}

TYPED_TEST(AttentionPoolingTest, EmptyInputs) {
  using T = TypeParam;
  const AttentionPooling<T> m({.input_dim = 4, .attention_dim = 3});
  // No steps: zero weights [B, 0] and zero context.
  const auto r = m.forward(Tensor<T, 3>(2, 0, 4));
  EXPECT_EQ(r.weights.shape(), (Shape<2>{2, 0}));
  EXPECT_EQ(r.context.shape(), (Shape<2>{2, 4}));
  EXPECT_TRUE(r.context.as_vector().isZero(0));
  // No sequences.
  const auto e = m.forward(Tensor<T, 3>(0, 5, 4));
  EXPECT_EQ(e.weights.shape(), (Shape<2>{0, 5}));
  EXPECT_EQ(e.context.shape(), (Shape<2>{0, 4}));
}

TYPED_TEST(AttentionPoolingTest, ForwardShapeErrors) {
  using T = TypeParam;
  const char* fn = "tessera::nn::AttentionPooling::forward";
  const AttentionPooling<T> m({.input_dim = 4, .attention_dim = 3});
  TESSERA_EXPECT_THROW_MSG(m.forward(Tensor<T, 3>(2, 5, 3)), ShapeError, fn, "argument 'h'",
                           "has shape [2, 5, 3]", "expected [batch, T, 4]", "input_dim = 4");
  const Tensor<T, 3> h(2, 5, 4);
  const Tensor<bool, 2> wrong_t(2, 6);
  TESSERA_EXPECT_THROW_MSG(m.forward(h, {.mask = Mask::blocked(wrong_t)}), ShapeError, fn,
                           "argument 'mask'", "has shape [2, 6]", "broadcastable to [2, 5]");
  const Tensor<bool, 2> wrong_b(3, 5);
  TESSERA_EXPECT_THROW_MSG(m.forward(h, {.mask = Mask::allowed(wrong_b)}), ShapeError, fn,
                           "argument 'mask'", "has shape [3, 5]", "broadcastable to [2, 5]");
  const Tensor<T, 3> too_many(2, 1, 5);
  TESSERA_EXPECT_THROW_MSG(m.forward(h, {.mask = Mask::additive(too_many)}), ShapeError, fn,
                           "argument 'mask'", "has shape [2, 1, 5]");
}

TYPED_TEST(AttentionPoolingTest, BadOptionsThrowValueError) {
  using T = TypeParam;
  const char* fn = "tessera::nn::AttentionPooling";
  TESSERA_EXPECT_THROW_MSG(
      AttentionPooling<T>(AttentionPoolingOptions{.input_dim = 0, .attention_dim = 3}), ValueError,
      fn, "input_dim is 0", "expected a value > 0");
  TESSERA_EXPECT_THROW_MSG(
      AttentionPooling<T>(AttentionPoolingOptions{.input_dim = -1, .attention_dim = 3}), ValueError,
      fn, "input_dim is -1");
  TESSERA_EXPECT_THROW_MSG(
      AttentionPooling<T>(AttentionPoolingOptions{.input_dim = 4, .attention_dim = 0}), ValueError,
      fn, "attention_dim is 0", "expected a value > 0");
}

TYPED_TEST(AttentionPoolingTest, StateDictRoundTrip) {
  using T = TypeParam;
  const AttentionPooling<T> a({.input_dim = 6, .attention_dim = 4, .seed = 1});
  AttentionPooling<T> b({.input_dim = 6, .attention_dim = 4, .seed = 2});
  const auto h = random_h<T>(3, 5, 6, 9);
  EXPECT_FALSE(owned_vector(a.forward(h).context) == owned_vector(b.forward(h).context));
  const auto sd = a.state_dict("enc.pool.");
  b.load_state_dict(sd, "enc.pool.");
  const auto ra = a.forward(h), rb = b.forward(h);
  EXPECT_TRUE(ra.context.as_vector() == rb.context.as_vector());
  EXPECT_TRUE(ra.weights.as_vector() == rb.weights.as_vector());
  AttentionPooling<T> c({.input_dim = 6, .attention_dim = 4, .seed = 3});
  c.load_state_dict(tessera::io::parse_safetensors(tessera::io::serialize_safetensors(sd)),
                    "enc.pool.");
  EXPECT_TRUE(owned_vector(c.forward(h).context) == ra.context.as_vector());
}

TYPED_TEST(AttentionPoolingTest, StrictLoadingErrors) {
  using T = TypeParam;
  const char* fn = "tessera::nn::Module::load_state_dict";
  AttentionPooling<T> m({.input_dim = 6, .attention_dim = 4});
  const Tensor<T, 1> before(m.query.value);
  {
    auto sd = AttentionPooling<T>({.input_dim = 6, .attention_dim = 4, .seed = 5}).state_dict("p.");
    ASSERT_TRUE(sd.erase("p.query"));
    ASSERT_TRUE(sd.erase("p.proj.bias"));
    sd.insert("p.context_vector", Tensor<T, 1>(4));
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd, "p."), ValueError, fn,
                             "missing keys: 'p.proj.bias', 'p.query'",
                             "unexpected keys: 'p.context_vector'");
  }
  {
    auto sd = m.state_dict("p.");
    sd.erase("p.query");
    sd.insert("p.query", Tensor<T, 1>(5));
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd, "p."), ShapeError, fn, "key 'p.query'",
                             "has shape [5]", "expects [4]");
    auto sd2 = m.state_dict("p.");
    sd2.erase("p.proj.weight");
    sd2.insert("p.proj.weight", Tensor<T, 2>(6, 4));
    TESSERA_EXPECT_THROW_MSG(m.load_state_dict(sd2, "p."), ShapeError, fn, "key 'p.proj.weight'",
                             "has shape [6, 4]", "expects [4, 6]");
  }
  EXPECT_TRUE(m.query.value.as_vector() == before.as_vector());
}

TYPED_TEST(AttentionPoolingTest, ConcurrentForwardCallsAgree) {
  using T = TypeParam;
  const AttentionPooling<T> m({.input_dim = 16, .attention_dim = 8, .seed = 2});
  const auto h = random_h<T>(6, 40, 16, 3);
  Tensor<bool, 2> pad(6, 40);
  for (Index t = 30; t < 40; ++t) pad(2, t) = true;
  const auto ref = m.forward(h, {.mask = Mask::blocked(pad)});
  std::vector<tessera::nn::AttentionPoolingOutput<T>> outs(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < outs.size(); ++t)
    threads.emplace_back([&, t] { outs[t] = m.forward(h, {.mask = Mask::blocked(pad)}); });
  for (auto& th : threads) th.join();
  for (const auto& r : outs) {
    EXPECT_TRUE(r.context.as_vector() == ref.context.as_vector());
    EXPECT_TRUE(r.weights.as_vector() == ref.weights.as_vector());
  }
}

// |a - e| <= tol + tol |e| (absolute plus relative), tol 1e-5 for float and 1e-10 for double.
template <class T>
void expect_parity(const Tensor<T, 2>& actual, const Tensor<T, 2>& expected,
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

// PyTorch parity (tests/fixtures/make_fixtures.py, class AttentionPooling): B = 2, T = 6, D = 8,
// attention_dim = 5, batch 1 padded after step 4 (a "blocked" mask).
TYPED_TEST(AttentionPoolingTest, MatchesPyTorch) {
  using T = TypeParam;
  const std::string path =
      std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/nn/attention_pooling.safetensors";
  ASSERT_TRUE(std::filesystem::exists(path))
      << "missing fixture " << path << " (regenerate with tests/fixtures/make_fixtures.py)";
  const tessera::test::Fixture fx("attention_pooling");
  AttentionPooling<T> m({.input_dim = fx.options.at("input_dim").get<Index>(),
                         .attention_dim = fx.options.at("attention_dim").get<Index>()});
  m.load_state_dict(fx.dict, "module.");
  Tensor<bool, 2> bools;
  Tensor<T, 2> floats;
  const auto mask = fx.mask<T, 2>("mask", bools, floats);
  ASSERT_TRUE(mask.has_value());
  EXPECT_EQ(mask->kind(), tessera::MaskKind::blocked);
  const auto r = m.forward(fx.input<T, 3>("h"), {.mask = mask});
  expect_parity(r.context, fx.expected<T, 2>("context"), "attention_pooling context");
  expect_parity(r.weights, fx.expected<T, 2>("weights"), "attention_pooling weights");
  EXPECT_EQ(r.weights(1, 4), T(0));  // padded steps
  EXPECT_EQ(r.weights(1, 5), T(0));
}

}  // namespace attention_pooling_test

namespace attention_pooling_test {

// Parameters replaced by tensors of the wrong shape: forward throws a ShapeError naming the
// parameter under its state-dict name.
TYPED_TEST(AttentionPoolingTest, ParametersOfTheWrongShapeAreNamed) {
  using T = TypeParam;
  const auto h = random_h<T>(2, 5, 6, 1);
  const std::string fn = "tessera::nn::AttentionPooling::forward";
  AttentionPooling<T> m({.input_dim = 6, .attention_dim = 4, .seed = 1});
  m.query.value = Tensor<T, 1>(3);
  TESSERA_EXPECT_THROW_MSG(m.forward(h), ShapeError, fn.c_str(),
                           "parameter 'query' has shape [3], expected [4]");
  m.query.value = Tensor<T, 1>(4);
  m.proj.weight.value = Tensor<T, 2>(6, 4);
  TESSERA_EXPECT_THROW_MSG(m.forward(h), ShapeError, fn.c_str(),
                           "parameter 'proj.weight' has shape [6, 4], expected [4, 6]");
  m.proj.weight.value = Tensor<T, 2>(4, 6);
  m.proj.bias.value = Tensor<T, 1>(6);
  TESSERA_EXPECT_THROW_MSG(m.forward(h), ShapeError, fn.c_str(),
                           "parameter 'proj.bias' has shape [6], expected [4]");
}

// NaN in, NaN out: a NaN in one step of one sequence makes that sequence's weights and context
// NaN; the other sequence stays finite.
TYPED_TEST(AttentionPoolingTest, NaNStepGivesNaNSequence) {
  using T = TypeParam;
  AttentionPooling<T> m({.input_dim = 6, .attention_dim = 4, .seed = 1});
  auto h = random_h<T>(2, 5, 6, 1);
  h(1, 3, 2) = std::numeric_limits<T>::quiet_NaN();
  const auto r = m.forward(h);
  for (Index t = 0; t < 5; ++t) {
    EXPECT_FALSE(std::isnan(r.weights(0, t)));
    EXPECT_TRUE(std::isnan(r.weights(1, t)));
  }
  for (Index d = 0; d < 6; ++d) {
    EXPECT_FALSE(std::isnan(r.context(0, d)));
    EXPECT_TRUE(std::isnan(r.context(1, d)));
  }
}

}  // namespace attention_pooling_test
