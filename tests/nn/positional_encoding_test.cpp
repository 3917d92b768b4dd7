#include "tessera/nn/positional_encoding.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "tessera/io/state_dict.hpp"
#include "test_util.hpp"

namespace positional_encoding_test {

using tessera::Index;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::LearnedPositionalEmbedding;
using tessera::nn::SinusoidalPositionalEncoding;
using tessera::test::owned_vector;

template <class T>
class PositionalEncodingTest : public ::testing::Test {};
TYPED_TEST_SUITE(PositionalEncodingTest, tessera::test::Scalars);

// Table values are computed in double and rounded once; sums add one rounding.
template <class T>
constexpr T tol() {
  return std::is_same_v<T, float> ? T(1e-6) : T(1e-14);
}

// Vaswani et al. 2017, written out: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] =
// cos(...).
double reference_pe(Index pos, Index j, Index d) {
  const Index i = j / 2;
  const double angle =
      static_cast<double>(pos) / std::pow(10000.0, 2.0 * i / static_cast<double>(d));
  return j % 2 == 0 ? std::sin(angle) : std::cos(angle);
}

template <class T>
Tensor<T, 3> random_input(Index b, Index l, Index d, std::uint64_t seed) {
  Tensor<T, 3> x(b, l, d);
  x.setRandom(seed);
  return x;
}

// out[b, t, j] == x[b, t, j] + table[start + t, j].
template <class T, class Table>
void expect_added(const Tensor<T, 3>& out, const Tensor<T, 3>& x, const Table& table, Index start) {
  ASSERT_EQ(out.shape(), x.shape());
  for (Index b = 0; b < x.dim(0); ++b)
    for (Index t = 0; t < x.dim(1); ++t)
      for (Index j = 0; j < x.dim(2); ++j)
        ASSERT_TRUE(tessera::test::close(out(b, t, j), T(x(b, t, j) + table(start + t, j)),
                                         tol<T>(), tol<T>()))
            << "at [" << b << ", " << t << ", " << j << "]";
}

TYPED_TEST(PositionalEncodingTest, SinusoidalTableMatchesFormula) {
  using T = TypeParam;
  for (Index d : {Index{1}, Index{2}, Index{7}, Index{8}, Index{64}}) {
    const SinusoidalPositionalEncoding<T> pe({.max_len = 50, .embed_dim = d});
    const auto& table = pe.table();
    ASSERT_EQ(table.shape(), (Shape<2>{50, d}));
    for (Index pos = 0; pos < 50; ++pos)
      for (Index j = 0; j < d; ++j)
        ASSERT_TRUE(tessera::test::close(table(pos, j), T(reference_pe(pos, j, d)), tol<T>(), T(0)))
            << "d=" << d << " pos=" << pos << " j=" << j;
  }
}

TYPED_TEST(PositionalEncodingTest, SinusoidalKnownValues) {
  using T = TypeParam;
  const SinusoidalPositionalEncoding<T> pe({.max_len = 4, .embed_dim = 5});  // odd d
  const auto& t = pe.table();
  // Position 0: sin(0) = 0 in even columns, cos(0) = 1 in odd ones.
  for (Index j = 0; j < 5; ++j) EXPECT_EQ(t(0, j), j % 2 == 0 ? T(0) : T(1));
  // Columns 0 and 1 have frequency 1.
  EXPECT_NEAR(t(1, 0), std::sin(1.0), tol<T>());
  EXPECT_NEAR(t(1, 1), std::cos(1.0), tol<T>());
  EXPECT_NEAR(t(3, 0), std::sin(3.0), tol<T>());
  // Columns 2 and 3: frequency 10000^(-2/5); the last column (4, odd d) is a sine of 10000^(-4/5).
  EXPECT_NEAR(t(2, 2), std::sin(2.0 * std::pow(10000.0, -0.4)), tol<T>());
  EXPECT_NEAR(t(2, 3), std::cos(2.0 * std::pow(10000.0, -0.4)), tol<T>());
  EXPECT_NEAR(t(3, 4), std::sin(3.0 * std::pow(10000.0, -0.8)), tol<T>());
  // Every value is in [-1, 1].
  const SinusoidalPositionalEncoding<T> big({.max_len = 1000, .embed_dim = 33});
  EXPECT_LE(big.table().as_vector().cwiseAbs().maxCoeff(), T(1));
}

TYPED_TEST(PositionalEncodingTest, SinusoidalForwardAddsTheFirstRows) {
  using T = TypeParam;
  const SinusoidalPositionalEncoding<T> pe({.max_len = 20, .embed_dim = 6});
  EXPECT_EQ(pe.max_len(), 20);
  EXPECT_EQ(pe.embed_dim(), 6);
  const auto x = random_input<T>(3, 7, 6, 1);
  expect_added(pe.forward(x), x, pe.table(), 0);
  // With an offset, as for the next tokens of an incremental decoder.
  expect_added(pe.forward(x, 13), x, pe.table(), 13);
  // The whole table fits: L == max_len.
  const auto full = random_input<T>(2, 20, 6, 2);
  expect_added(pe.forward(full), full, pe.table(), 0);
  // A view works too, and L = 0 gives an empty result.
  expect_added(pe.forward(tessera::cview(x)), x, pe.table(), 0);
  EXPECT_EQ(pe.forward(Tensor<T, 3>(2, 0, 6)).shape(), (Shape<3>{2, 0, 6}));
  EXPECT_EQ(pe.forward(Tensor<T, 3>(2, 0, 6), 20).shape(), (Shape<3>{2, 0, 6}));
  // Large enough to be split across threads.
  const SinusoidalPositionalEncoding<T> wide({.max_len = 30, .embed_dim = 300});
  const auto large = random_input<T>(16, 20, 300, 3);
  expect_added(wide.forward(large, 10), large, wide.table(), 10);
}

TYPED_TEST(PositionalEncodingTest, IncrementalForwardMatchesFullForward) {
  using T = TypeParam;
  const SinusoidalPositionalEncoding<T> pe({.max_len = 12, .embed_dim = 4});
  const LearnedPositionalEmbedding<T> lpe({.max_len = 12, .embed_dim = 4, .seed = 4});
  const auto x = random_input<T>(2, 9, 4, 5);
  const auto full = pe.forward(x);
  const auto full_l = lpe.forward(x);
  // Positions [0, 5) then [5, 9).
  Tensor<T, 3> head(2, 5, 4), tail(2, 4, 4);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 9; ++t)
      for (Index j = 0; j < 4; ++j) (t < 5 ? head(b, t, j) : tail(b, t - 5, j)) = x(b, t, j);
  const auto h = pe.forward(head), tl = pe.forward(tail, 5);
  const auto hl = lpe.forward(head), tll = lpe.forward(tail, 5);
  for (Index b = 0; b < 2; ++b)
    for (Index t = 0; t < 9; ++t)
      for (Index j = 0; j < 4; ++j) {
        EXPECT_EQ(full(b, t, j), t < 5 ? h(b, t, j) : tl(b, t - 5, j));
        EXPECT_EQ(full_l(b, t, j), t < 5 ? hl(b, t, j) : tll(b, t - 5, j));
      }
}

TYPED_TEST(PositionalEncodingTest, SinusoidalHasNoParameters) {
  using T = TypeParam;
  SinusoidalPositionalEncoding<T> pe({.max_len = 8, .embed_dim = 4});
  EXPECT_EQ(pe.num_parameters(), 0);
  EXPECT_TRUE(pe.state_dict("pos.").empty());
  // Loading an empty dict is fine; a key under the prefix is unexpected.
  pe.load_state_dict(tessera::io::StateDict{}, "pos.");
  tessera::io::StateDict sd;
  sd.insert("pos.pe", Tensor<T, 2>(8, 4));
  sd.insert("other.weight", Tensor<T, 2>(8, 4));  // outside the prefix: ignored
  TESSERA_EXPECT_THROW_MSG(pe.load_state_dict(sd, "pos."), ValueError,
                           "tessera::nn::Module::load_state_dict", "unexpected keys: 'pos.pe'");
  pe.load_state_dict(sd, "pos.", /*strict=*/false);
}

TYPED_TEST(PositionalEncodingTest, LearnedWeightShapeAndInitialisation) {
  using T = TypeParam;
  const LearnedPositionalEmbedding<T> lpe({.max_len = 200, .embed_dim = 64, .seed = 9});
  EXPECT_EQ(lpe.weight.shape(), (Shape<2>{200, 64}));
  EXPECT_EQ(lpe.max_len(), 200);
  EXPECT_EQ(lpe.embed_dim(), 64);
  EXPECT_EQ(lpe.num_parameters(), 200 * 64);
  // N(0, 0.02): 12800 samples.
  const auto w = lpe.weight.value.as_vector().template cast<double>();
  const double mean = w.mean();
  const double sd = std::sqrt((w.array() - mean).square().mean());
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_NEAR(sd, 0.02, 0.001);
  const LearnedPositionalEmbedding<T> same({.max_len = 200, .embed_dim = 64, .seed = 9});
  const LearnedPositionalEmbedding<T> other({.max_len = 200, .embed_dim = 64, .seed = 10});
  EXPECT_TRUE(lpe.weight.value.as_vector() == same.weight.value.as_vector());
  EXPECT_FALSE(lpe.weight.value.as_vector() == other.weight.value.as_vector());
}

TYPED_TEST(PositionalEncodingTest, LearnedForwardAddsRows) {
  using T = TypeParam;
  LearnedPositionalEmbedding<T> lpe({.max_len = 10, .embed_dim = 3, .seed = 2});
  lpe.weight.value.setRandom(77);  // make the rows large enough to see
  const auto x = random_input<T>(4, 6, 3, 8);
  expect_added(lpe.forward(x), x, lpe.weight.value, 0);
  expect_added(lpe.forward(x, 4), x, lpe.weight.value, 4);
  // Exact: one addition per element.
  const auto out = lpe.forward(x, 1);
  EXPECT_EQ(out(3, 5, 2), T(x(3, 5, 2) + lpe.weight.value(6, 2)));
}

TYPED_TEST(PositionalEncodingTest, ForwardShapeErrors) {
  using T = TypeParam;
  const SinusoidalPositionalEncoding<T> pe({.max_len = 10, .embed_dim = 8});
  const LearnedPositionalEmbedding<T> lpe({.max_len = 10, .embed_dim = 8});
  const std::string sfn = "tessera::nn::SinusoidalPositionalEncoding::forward";
  const std::string lfn = "tessera::nn::LearnedPositionalEmbedding::forward";
  for (const std::string& fn : {sfn, lfn}) {
    auto fwd = [&](const Tensor<T, 3>& x, Index start = 0) {
      return fn == sfn ? pe.forward(x, start) : lpe.forward(x, start);
    };
    // Wrong embedding size.
    TESSERA_EXPECT_THROW_MSG(fwd(Tensor<T, 3>(2, 5, 7)), ShapeError, fn.c_str(), "argument 'x'",
                             "has shape [2, 5, 7]", "expected [batch, L, 8]", "embed_dim = 8");
    // Longer than the table.
    TESSERA_EXPECT_THROW_MSG(fwd(Tensor<T, 3>(2, 11, 8)), ShapeError, fn.c_str(), "argument 'x'",
                             "has shape [2, 11, 8]", "positions [0, 11)", "max_len = 10");
    // Fits alone, not after the offset.
    TESSERA_EXPECT_THROW_MSG(fwd(Tensor<T, 3>(1, 4, 8), 7), ShapeError, fn.c_str(),
                             "has shape [1, 4, 8]", "positions [7, 11)", "max_len = 10",
                             "start = 7");
    TESSERA_EXPECT_THROW_MSG(fwd(Tensor<T, 3>(1, 1, 8), 10), ShapeError, fn.c_str(),
                             "positions [10, 11)", "max_len = 10");
    // Negative offset.
    TESSERA_EXPECT_THROW_MSG(fwd(Tensor<T, 3>(1, 4, 8), -1), ValueError, fn.c_str(),
                             "argument 'start' is -1", "expected a value >= 0");
  }
}

TYPED_TEST(PositionalEncodingTest, BadOptionsThrowValueError) {
  using T = TypeParam;
  using SO = tessera::nn::SinusoidalPositionalEncodingOptions;
  using LO = tessera::nn::LearnedPositionalEmbeddingOptions;
  TESSERA_EXPECT_THROW_MSG(SinusoidalPositionalEncoding<T>(SO{.max_len = 0, .embed_dim = 4}),
                           ValueError, "tessera::nn::SinusoidalPositionalEncoding", "max_len is 0",
                           "expected a value > 0");
  TESSERA_EXPECT_THROW_MSG(SinusoidalPositionalEncoding<T>(SO{.max_len = 5, .embed_dim = -1}),
                           ValueError, "tessera::nn::SinusoidalPositionalEncoding",
                           "embed_dim is -1", "expected a value > 0");
  TESSERA_EXPECT_THROW_MSG(LearnedPositionalEmbedding<T>(LO{.max_len = -3, .embed_dim = 4}),
                           ValueError, "tessera::nn::LearnedPositionalEmbedding", "max_len is -3");
  TESSERA_EXPECT_THROW_MSG(LearnedPositionalEmbedding<T>(LO{.max_len = 5, .embed_dim = 0}),
                           ValueError, "tessera::nn::LearnedPositionalEmbedding", "embed_dim is 0");
}

TYPED_TEST(PositionalEncodingTest, LearnedStateDictRoundTrip) {
  using T = TypeParam;
  const LearnedPositionalEmbedding<T> a({.max_len = 9, .embed_dim = 5, .seed = 1});
  const auto sd = a.state_dict("pos.");
  ASSERT_EQ(sd.keys(), std::vector<std::string>{"pos.weight"});
  EXPECT_EQ(sd.at("pos.weight").shape, (std::vector<Index>{9, 5}));
  LearnedPositionalEmbedding<T> b({.max_len = 9, .embed_dim = 5, .seed = 2});
  const auto x = random_input<T>(2, 6, 5, 3);
  EXPECT_FALSE(owned_vector(a.forward(x, 2)) == owned_vector(b.forward(x, 2)));
  b.load_state_dict(sd, "pos.");
  EXPECT_TRUE(owned_vector(a.forward(x, 2)) == owned_vector(b.forward(x, 2)));
}

TYPED_TEST(PositionalEncodingTest, LearnedStrictLoadingErrors) {
  using T = TypeParam;
  LearnedPositionalEmbedding<T> lpe({.max_len = 9, .embed_dim = 5});
  const Tensor<T, 2> before(lpe.weight.value);
  {
    tessera::io::StateDict sd;
    TESSERA_EXPECT_THROW_MSG(lpe.load_state_dict(sd, "pos."), ValueError,
                             "tessera::nn::Module::load_state_dict", "missing keys: 'pos.weight'");
  }
  {
    auto sd = lpe.state_dict("pos.");
    sd.insert("pos.pe", Tensor<T, 2>(9, 5));
    TESSERA_EXPECT_THROW_MSG(lpe.load_state_dict(sd, "pos."), ValueError,
                             "tessera::nn::Module::load_state_dict", "unexpected keys: 'pos.pe'");
  }
  {
    tessera::io::StateDict sd;
    sd.insert("pos.weight", Tensor<T, 2>(10, 5));
    TESSERA_EXPECT_THROW_MSG(lpe.load_state_dict(sd, "pos."), ShapeError,
                             "tessera::nn::Module::load_state_dict", "key 'pos.weight'",
                             "has shape [10, 5]", "expects [9, 5]");
  }
  EXPECT_TRUE(lpe.weight.value.as_vector() == before.as_vector());
}

TYPED_TEST(PositionalEncodingTest, ConcurrentForwardCallsAgree) {
  using T = TypeParam;
  const SinusoidalPositionalEncoding<T> pe({.max_len = 64, .embed_dim = 32});
  const auto x = random_input<T>(4, 64, 32, 6);
  const auto ref = pe.forward(x);
  std::vector<Tensor<T, 3>> outs(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < outs.size(); ++t)
    threads.emplace_back([&, t] { outs[t] = pe.forward(x); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs) EXPECT_TRUE(o.as_vector() == ref.as_vector());
}

}  // namespace positional_encoding_test
