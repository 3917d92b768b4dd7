#include "tessera/nn/embedding.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "fixture.hpp"
#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace embedding_test {

using tessera::Index;
using tessera::IndexError;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::nn::Embedding;
using tessera::test::owned_vector;

template <class T>
class EmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(EmbeddingTest, tessera::test::Scalars);

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// Plain reference: out[p, :] = weight[ids[p], :] for every flat position p.
template <class T, class Ids>
std::vector<T> reference_lookup(const Tensor<T, 2>& weight, const Ids& ids) {
  const Index D = weight.dim(1);
  std::vector<T> out;
  for (Index p = 0; p < ids.size(); ++p)
    for (Index j = 0; j < D; ++j) out.push_back(weight(static_cast<Index>(ids.data()[p]), j));
  return out;
}

template <class Out>
void expect_equal_to(const Out& out, const std::vector<typename Out::Scalar>& ref) {
  ASSERT_EQ(out.size(), static_cast<Index>(ref.size()));
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], ref[i]) << "flat index " << i;
}

TYPED_TEST(EmbeddingTest, WeightShapeAndInitialisation) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 400, .embedding_dim = 50, .seed = 3});
  EXPECT_EQ(e.weight.shape(), (Shape<2>{400, 50}));
  EXPECT_EQ(e.num_embeddings(), 400);
  EXPECT_EQ(e.embedding_dim(), 50);
  EXPECT_FALSE(e.padding_idx().has_value());
  EXPECT_EQ(e.num_parameters(), 400 * 50);
  // N(0, 1), as torch.nn.Embedding: 20000 samples, so the mean is within ~0.03 and the std ~0.02.
  const auto w = e.weight.value.as_vector().template cast<double>();
  const double mean = w.mean();
  const double var = (w.array() - mean).square().mean();
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(std::sqrt(var), 1.0, 0.05);
  // The same seed gives the same table, another seed another one.
  const Embedding<T> same({.num_embeddings = 400, .embedding_dim = 50, .seed = 3});
  const Embedding<T> other({.num_embeddings = 400, .embedding_dim = 50, .seed = 4});
  EXPECT_TRUE(e.weight.value.as_vector() == same.weight.value.as_vector());
  EXPECT_FALSE(e.weight.value.as_vector() == other.weight.value.as_vector());
}

TYPED_TEST(EmbeddingTest, PaddingRowStartsAtZero) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 6, .embedding_dim = 4, .padding_idx = 2, .seed = 1});
  ASSERT_EQ(e.padding_idx(), Index{2});
  for (Index i = 0; i < 6; ++i)
    for (Index j = 0; j < 4; ++j) {
      if (i == 2)
        EXPECT_EQ(e.weight.value(i, j), T(0));
      else
        EXPECT_NE(e.weight.value(i, j), T(0));
    }
  // A negative padding_idx counts from the end, as in PyTorch: -1 is the last row.
  const Embedding<T> last({.num_embeddings = 6, .embedding_dim = 4, .padding_idx = -1});
  ASSERT_EQ(last.padding_idx(), Index{5});
  EXPECT_EQ(last.options().padding_idx, Index{5});
  EXPECT_TRUE(last.weight.value[5].as_vector().isZero(0));
  EXPECT_FALSE(last.weight.value[0].as_vector().isZero(0));
  const Embedding<T> first({.num_embeddings = 6, .embedding_dim = 4, .padding_idx = -6});
  EXPECT_EQ(first.padding_idx(), Index{0});
  // Looking the padding id up gives zeros.
  const Tensor<std::int64_t, 1> ids{2, 0, 2};
  const auto out = e.forward(ids);
  EXPECT_TRUE(out[0].as_vector().isZero(0));
  EXPECT_TRUE(out[2].as_vector().isZero(0));
}

TYPED_TEST(EmbeddingTest, ForwardMatchesReferenceForEveryRank) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 9, .embedding_dim = 5, .seed = 11});
  const auto& w = e.weight.value;

  // Rank 0: one id -> one vector.
  Tensor<std::int64_t, 0> id0;
  id0() = 7;
  const Tensor<T, 1> out0 = e.forward(id0);
  EXPECT_EQ(out0.shape(), (Shape<1>{5}));
  expect_equal_to(out0, reference_lookup(w, id0));

  // Rank 1.
  const Tensor<std::int64_t, 1> id1{0, 8, 3, 3, 1};
  const Tensor<T, 2> out1 = e.forward(id1);
  EXPECT_EQ(out1.shape(), (Shape<2>{5, 5}));
  expect_equal_to(out1, reference_lookup(w, id1));

  // Rank 2, and each row of the output is the row of the weight.
  const Tensor<std::int64_t, 2> id2{{4, 0, 8}, {2, 2, 6}};
  const Tensor<T, 3> out2 = e.forward(id2);
  EXPECT_EQ(out2.shape(), (Shape<3>{2, 3, 5}));
  expect_equal_to(out2, reference_lookup(w, id2));
  for (Index j = 0; j < 5; ++j) EXPECT_EQ(out2(1, 2, j), w(6, j));

  // Rank 3, large enough to be split across threads.
  Tensor<std::int64_t, 3> id3(4, 50, 30);
  for (Index i = 0; i < id3.size(); ++i) id3.data()[i] = (i * 7 + 3) % 9;
  const Tensor<T, 4> out3 = e.forward(id3);
  EXPECT_EQ(out3.shape(), (Shape<4>{4, 50, 30, 5}));
  expect_equal_to(out3, reference_lookup(w, id3));
}

TYPED_TEST(EmbeddingTest, AcceptsOtherIntegerIdTypesAndViews) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 9, .embedding_dim = 3, .seed = 2});
  const Tensor<Index, 2> ids_index{{1, 2}, {8, 0}};
  const Tensor<std::int32_t, 2> ids_i32{{1, 2}, {8, 0}};
  const Tensor<std::uint8_t, 2> ids_u8{{1, 2}, {8, 0}};
  const auto a = e.forward(ids_index);
  const auto b = e.forward(ids_i32);
  const auto c = e.forward(ids_u8);
  const auto d = e.forward(tessera::cview(ids_index));  // a TensorMap
  expect_equal_to(a, reference_lookup(e.weight.value, ids_index));
  EXPECT_TRUE(a.as_vector() == b.as_vector());
  EXPECT_TRUE(a.as_vector() == c.as_vector());
  EXPECT_TRUE(a.as_vector() == d.as_vector());
}

TYPED_TEST(EmbeddingTest, EmptyIds) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 4, .embedding_dim = 3});
  const Tensor<std::int64_t, 1> none(0);
  EXPECT_EQ(e.forward(none).shape(), (Shape<2>{0, 3}));
  const Tensor<std::int64_t, 2> no_steps(2, 0);
  EXPECT_EQ(e.forward(no_steps).shape(), (Shape<3>{2, 0, 3}));
}

TYPED_TEST(EmbeddingTest, OutOfRangeIdsThrowIndexError) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 5, .embedding_dim = 3});
  const Tensor<std::int64_t, 2> too_big{{0, 1, 2}, {3, 4, 5}};
  TESSERA_EXPECT_THROW_MSG(e.forward(too_big), IndexError, "tessera::nn::Embedding::forward",
                           "argument 'ids'", "id 5", "position [1, 2]", "[0, 5)",
                           "num_embeddings = 5");
  const Tensor<std::int64_t, 1> negative{0, -1, 2};
  TESSERA_EXPECT_THROW_MSG(e.forward(negative), IndexError, "tessera::nn::Embedding::forward",
                           "argument 'ids'", "id -1", "position [1]", "num_embeddings = 5");
  Tensor<std::int64_t, 0> scalar;
  scalar() = 100;
  TESSERA_EXPECT_THROW_MSG(e.forward(scalar), IndexError, "id 100", "position []",
                           "num_embeddings = 5");
  const Tensor<std::uint8_t, 1> small{200};
  TESSERA_EXPECT_THROW_MSG(e.forward(small), IndexError, "id 200", "position [0]");
  // The first bad id (in row-major order) is the one named.
  const Tensor<std::int64_t, 2> two_bad{{0, 9}, {-4, 1}};
  TESSERA_EXPECT_THROW_MSG(e.forward(two_bad), IndexError, "id 9", "position [0, 1]");
}

TYPED_TEST(EmbeddingTest, BadOptionsThrowValueError) {
  using T = TypeParam;
  using O = tessera::nn::EmbeddingOptions;
  TESSERA_EXPECT_THROW_MSG(Embedding<T>(O{.num_embeddings = 0, .embedding_dim = 3}), ValueError,
                           "tessera::nn::Embedding", "num_embeddings is 0", "expected a value > 0");
  TESSERA_EXPECT_THROW_MSG(Embedding<T>(O{.num_embeddings = -2, .embedding_dim = 3}), ValueError,
                           "tessera::nn::Embedding", "num_embeddings is -2");
  TESSERA_EXPECT_THROW_MSG(Embedding<T>(O{.num_embeddings = 4, .embedding_dim = 0}), ValueError,
                           "tessera::nn::Embedding", "embedding_dim is 0", "expected a value > 0");
  TESSERA_EXPECT_THROW_MSG(
      Embedding<T>(O{.num_embeddings = 4, .embedding_dim = 3, .padding_idx = 4}), ValueError,
      "tessera::nn::Embedding", "padding_idx is 4", "[-4, 4)", "num_embeddings = 4");
  TESSERA_EXPECT_THROW_MSG(
      Embedding<T>(O{.num_embeddings = 4, .embedding_dim = 3, .padding_idx = -5}), ValueError,
      "tessera::nn::Embedding", "padding_idx is -5", "[-4, 4)");
}

TYPED_TEST(EmbeddingTest, StateDictRoundTrip) {
  using T = TypeParam;
  const Embedding<T> a({.num_embeddings = 7, .embedding_dim = 4, .seed = 5});
  const auto sd = a.state_dict("emb.");
  ASSERT_EQ(sd.keys(), std::vector<std::string>{"emb.weight"});
  EXPECT_EQ(sd.at("emb.weight").shape, (std::vector<Index>{7, 4}));

  Embedding<T> b({.num_embeddings = 7, .embedding_dim = 4, .seed = 99});
  const Tensor<std::int64_t, 2> ids{{0, 6, 3}, {2, 2, 5}};
  EXPECT_FALSE(owned_vector(a.forward(ids)) == owned_vector(b.forward(ids)));
  b.load_state_dict(sd, "emb.");
  EXPECT_TRUE(owned_vector(a.forward(ids)) == owned_vector(b.forward(ids)));
  EXPECT_TRUE(a.weight.value.as_vector() == b.weight.value.as_vector());

  // Through a safetensors file's bytes too (in the other scalar type: converted on load).
  using U = std::conditional_t<std::is_same_v<T, float>, double, float>;
  Embedding<U> c({.num_embeddings = 7, .embedding_dim = 4, .seed = 1});
  c.load_state_dict(tessera::io::parse_safetensors(tessera::io::serialize_safetensors(sd)), "emb.");
  for (Index i = 0; i < a.weight.size(); ++i)
    EXPECT_EQ(c.weight.value.data()[i], static_cast<U>(a.weight.value.data()[i]));
}

TYPED_TEST(EmbeddingTest, StrictLoadingErrors) {
  using T = TypeParam;
  Embedding<T> e({.num_embeddings = 7, .embedding_dim = 4});
  const Tensor<T, 2> before(e.weight.value);
  {
    tessera::io::StateDict sd;  // nothing under "emb."
    sd.insert("other.weight", Tensor<T, 2>(7, 4));
    TESSERA_EXPECT_THROW_MSG(e.load_state_dict(sd, "emb."), ValueError,
                             "tessera::nn::Module::load_state_dict", "missing keys: 'emb.weight'");
  }
  {
    auto sd = e.state_dict("emb.");
    sd.insert("emb.bias", Tensor<T, 1>(4));
    TESSERA_EXPECT_THROW_MSG(e.load_state_dict(sd, "emb."), ValueError,
                             "tessera::nn::Module::load_state_dict", "unexpected keys: 'emb.bias'");
    e.load_state_dict(sd, "emb.", /*strict=*/false);  // non-strict: extra keys are ignored
  }
  {
    tessera::io::StateDict sd;
    sd.insert("emb.weight", Tensor<T, 2>(4, 7));
    TESSERA_EXPECT_THROW_MSG(e.load_state_dict(sd, "emb."), ShapeError,
                             "tessera::nn::Module::load_state_dict", "key 'emb.weight'",
                             "has shape [4, 7]", "expects [7, 4]");
  }
  EXPECT_TRUE(e.weight.value.as_vector() == before.as_vector());  // failed loads changed nothing
}

TYPED_TEST(EmbeddingTest, ConcurrentForwardCallsAgree) {
  using T = TypeParam;
  const Embedding<T> e({.num_embeddings = 50, .embedding_dim = 16, .seed = 8});
  Tensor<std::int64_t, 2> ids(8, 40);
  for (Index i = 0; i < ids.size(); ++i) ids.data()[i] = (i * 13) % 50;
  const auto ref = e.forward(ids);
  std::vector<Tensor<T, 3>> outs(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < outs.size(); ++t)
    threads.emplace_back([&, t] { outs[t] = e.forward(ids); });
  for (auto& th : threads) th.join();
  for (const auto& o : outs) EXPECT_TRUE(o.as_vector() == ref.as_vector());
}

// PyTorch parity: torch.nn.Embedding(11, 6) with a random table, ids [2, 5].
TYPED_TEST(EmbeddingTest, MatchesPyTorch) {
  using T = TypeParam;
  const std::string path =
      std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/nn/embedding.safetensors";
  ASSERT_TRUE(std::filesystem::exists(path))
      << "missing fixture " << path << " (regenerate with tests/fixtures/make_fixtures.py)";
  const tessera::test::Fixture fx("embedding");
  Embedding<T> e({.num_embeddings = fx.options.at("num_embeddings").get<Index>(),
                  .embedding_dim = fx.options.at("embedding_dim").get<Index>()});
  e.load_state_dict(fx.dict, "module.");
  const auto ids = fx.input<std::int64_t, 2>("ids");
  const auto out = e.forward(ids);
  const auto expected = fx.expected<T, 3>("output");
  ASSERT_EQ(out.shape(), expected.shape());
  // A lookup copies: the result is exact (the parameters are float32-representable).
  double max_err = 0;
  for (Index i = 0; i < out.size(); ++i)
    max_err = std::max(max_err, std::fabs(double(out.data()[i]) - double(expected.data()[i])));
  EXPECT_EQ(max_err, 0.0);
  std::printf("[parity] embedding %s output: max abs error %.3g\n", type_name<T>(), max_err);
}

}  // namespace embedding_test
