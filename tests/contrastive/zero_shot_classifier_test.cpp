// Tests for tessera/contrastive/zero_shot_classifier.hpp: prompts from templates, class
// embeddings as normalised averages of normalised prompt embeddings, top-k prediction with
// softmax probabilities, accuracy, and every error.
#include "tessera/contrastive/zero_shot_classifier.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace zero_shot_classifier_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::format_prompt;
using tessera::contrastive::ZeroShotClassifier;
namespace tt = tessera::test;

// A stand-in text encoder: a fixed random vector per prompt (seeded by its position in a
// dictionary of every prompt seen), recording the prompts it was asked for.
template <class T>
struct FakeTextEncoder {
  std::vector<std::string>* seen;
  Index dim = 6;
  Tensor<T, 2> operator()(const std::vector<std::string>& prompts) const {
    *seen = prompts;
    Tensor<T, 2> out(static_cast<Index>(prompts.size()), dim);
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the prompt
      for (char c : prompts[p]) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
      const auto row = tt::random_rows<T>(1, dim, h);
      out[static_cast<Index>(p)].assign(row[0]);
    }
    return out;
  }
};

TEST(ZeroShotPrompts, Format) {
  EXPECT_EQ(format_prompt("a photo of a {}", "cat"), "a photo of a cat");
  EXPECT_EQ(format_prompt("{}", "dog"), "dog");
  EXPECT_EQ(format_prompt("{}, a type of pet.", "dog"), "dog, a type of pet.");
  TESSERA_EXPECT_THROW_MSG(format_prompt("a photo", "cat"), ValueError,
                           "tessera::contrastive::format_prompt", "\"a photo\"",
                           "exactly one \"{}\"");
  TESSERA_EXPECT_THROW_MSG(format_prompt("{} and {}", "cat"), ValueError, "exactly one");
}

template <class T>
class ZeroShotTest : public ::testing::Test {};
TYPED_TEST_SUITE(ZeroShotTest, tessera::test::Scalars);

TYPED_TEST(ZeroShotTest, ClassEmbeddingsAverageNormalisedPrompts) {
  using T = TypeParam;
  std::vector<std::string> seen;
  const FakeTextEncoder<T> enc{&seen};
  const ZeroShotClassifier<T> zs({"cat", "dog", "car"}, {"a photo of a {}", "a sketch of a {}"},
                                 enc);
  EXPECT_EQ(seen, (std::vector<std::string>{"a photo of a cat", "a sketch of a cat",
                                            "a photo of a dog", "a sketch of a dog",
                                            "a photo of a car", "a sketch of a car"}));
  const auto raw = enc(seen);
  ASSERT_EQ(zs.class_embeddings().shape(), (tessera::Shape<2>{3, 6}));
  EXPECT_EQ(zs.num_classes(), 3);
  EXPECT_EQ(zs.embed_dim(), 6);
  for (Index c = 0; c < 3; ++c) {
    Eigen::Matrix<double, 1, Eigen::Dynamic> avg = Eigen::Matrix<double, 1, 6>::Zero();
    for (Index j = 0; j < 2; ++j) {
      const auto row = raw.as_matrix().row(c * 2 + j).template cast<double>();
      avg += row / row.norm();
    }
    avg /= avg.norm();
    for (Index k = 0; k < 6; ++k)
      EXPECT_NEAR(double(zs.class_embeddings()(c, k)), avg(k), tt::agree_tol<T>());
  }
}

TYPED_TEST(ZeroShotTest, PredictTopKWithProbabilities) {
  using T = TypeParam;
  std::vector<std::string> seen;
  const ZeroShotClassifier<T> zs({"a", "b", "c", "d"}, {"{}"}, FakeTextEncoder<T>{&seen},
                                 {.logit_scale = 10.0});
  // Images: class 2's embedding, class 0's scaled by 3 (normalised anyway), a mix of 1 and 3.
  Tensor<T, 2> images(3, 6);
  const auto& ce = zs.class_embeddings();
  images[0].assign(ce[2]);
  images.as_matrix().row(1) = 3 * ce.as_matrix().row(0);
  images.as_matrix().row(2) = 0.6 * ce.as_matrix().row(1) + 0.4 * ce.as_matrix().row(3);
  const auto pred = zs.predict(images, 3);
  ASSERT_EQ(pred.indices.shape(), (tessera::Shape<2>{3, 3}));
  EXPECT_EQ(pred.indices(0, 0), 2);
  EXPECT_EQ(pred.indices(1, 0), 0);
  EXPECT_EQ(pred.labels[0][0], "c");
  EXPECT_EQ(pred.labels[1][0], "a");
  const auto logits = zs.logits(images);
  for (Index i = 0; i < 3; ++i) {
    // Probabilities: softmax over all four classes, in decreasing order.
    double z = 0;
    for (Index c = 0; c < 4; ++c) z += std::exp(double(logits(i, c)) - double(logits(i, 0)));
    for (Index j = 0; j < 3; ++j) {
      const Index c = pred.indices(i, j);
      EXPECT_EQ(pred.labels[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)],
                zs.class_names()[static_cast<std::size_t>(c)]);
      const double p = std::exp(double(logits(i, c)) - double(logits(i, 0))) / z;
      EXPECT_NEAR(double(pred.probabilities(i, j)), p, 1e-6);
      if (j > 0) {
        EXPECT_GE(pred.probabilities(i, j - 1), pred.probabilities(i, j));
      }
    }
  }
  // logits: scale times the cosine.
  const auto unit0 = ce.as_matrix().row(0);
  EXPECT_NEAR(double(logits(1, 0)), 10.0 * double(unit0.squaredNorm()), 1e-4);
  EXPECT_DOUBLE_EQ(zs.accuracy(images, Tensor<int, 1>{2, 0, 1}),
                   pred.indices(2, 0) == 1 ? 1.0 : 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(zs.accuracy(images, Tensor<int, 1>{2, 0, 5}), 2.0 / 3.0);
}

TEST(ZeroShotErrors, Messages) {
  std::vector<std::string> seen;
  const FakeTextEncoder<double> enc{&seen};
  constexpr const char* fn = "tessera::contrastive::ZeroShotClassifier";
  TESSERA_EXPECT_THROW_MSG(ZeroShotClassifier<double>({}, {"{}"}, enc), ValueError, fn,
                           "'class_names' is empty");
  TESSERA_EXPECT_THROW_MSG(ZeroShotClassifier<double>({"a"}, {}, enc), ValueError,
                           "'templates' is empty");
  TESSERA_EXPECT_THROW_MSG(ZeroShotClassifier<double>({"a"}, {"no slot"}, enc), ValueError,
                           "format_prompt", "\"no slot\"");
  TESSERA_EXPECT_THROW_MSG(ZeroShotClassifier<double>({"a"}, {"{}"}, enc, {.logit_scale = 0}),
                           ValueError, "'logit_scale' is 0");
  const auto short_encoder = [](const std::vector<std::string>&) {
    return Tensor<double, 2>(1, 4);
  };
  TESSERA_EXPECT_THROW_MSG(ZeroShotClassifier<double>({"a", "b"}, {"{}"}, short_encoder),
                           ShapeError, fn, "encode_text returned shape [1, 4] for 2 prompts");
  const ZeroShotClassifier<double> zs({"a", "b"}, {"{}"}, enc);
  TESSERA_EXPECT_THROW_MSG(zs.predict(Tensor<double, 2>(1, 6), 0), ValueError, "predict",
                           "'k' is 0", "[1, 2]");
  TESSERA_EXPECT_THROW_MSG(zs.predict(Tensor<double, 2>(1, 6), 3), ValueError, "'k' is 3");
  TESSERA_EXPECT_THROW_MSG(zs.logits(Tensor<double, 2>(1, 5)), ShapeError, "logits",
                           "'image_embeds' has shape [1, 5]", "expected [1, 6]");
  TESSERA_EXPECT_THROW_MSG(zs.accuracy(Tensor<double, 2>(2, 6), Tensor<int, 1>{0}), ShapeError,
                           "accuracy", "'labels' has shape [1]", "expected [2]");
}

}  // namespace zero_shot_classifier_test
