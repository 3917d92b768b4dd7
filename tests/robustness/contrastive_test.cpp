// Adversarial inputs to tessera::contrastive (issue 15): block sizes and counts near the integer
// limits, options that are finite in double but not in float, errors that must name the function
// and the option the caller wrote, NaN in embeddings and parameters (NaN out, never a plausible
// number), and empty batches (a typed error or a documented value, UBSan-clean).
//
// To add a case: put it in the section of its kind as a TYPED_TEST (float and double) with the
// exact value or the exception type and the message parts expected; a loss added to
// tessera::contrastive gets a line in each section.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "contrastive/contrastive_test_util.hpp"
#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/contrastive/dual_encoder.hpp"
#include "tessera/contrastive/info_nce.hpp"
#include "tessera/contrastive/linear_probe.hpp"
#include "tessera/contrastive/pair_loss.hpp"
#include "tessera/contrastive/projection_head.hpp"
#include "tessera/contrastive/siglip_loss.hpp"
#include "tessera/contrastive/zero_shot_classifier.hpp"
#include "tessera/nn/linear.hpp"
#include "test_util.hpp"

namespace contrastive_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
namespace tc = tessera::contrastive;
namespace tt = tessera::test;

constexpr Index kMax = std::numeric_limits<Index>::max();

template <class T>
class RobustContrastive : public ::testing::Test {};
TYPED_TEST_SUITE(RobustContrastive, tessera::test::Scalars);

template <class T>
bool all_nan(const Tensor<T, 2>& t) {
  for (Index i = 0; i < t.size(); ++i)
    if (!std::isnan(t.data()[i])) return false;
  return t.size() > 0;
}
template <class T>
bool any_nan(const Tensor<T, 2>& t) {
  for (Index i = 0; i < t.size(); ++i)
    if (std::isnan(t.data()[i])) return true;
  return false;
}

template <class T>
Tensor<T, 2> with_nan(Tensor<T, 2> x, Index r, Index c) {
  x(r, c) = std::numeric_limits<T>::quiet_NaN();
  return x;
}

// ---- kind 12: block sizes near INT64_MAX mean one tile ----

TYPED_TEST(RobustContrastive, HugeBlockSizesGiveTheMaterializedResult) {
  using T = TypeParam;
  const auto a = tt::unit_rows<T>(7, 3, 11), b = tt::unit_rows<T>(7, 3, 12);
  const double tol = tt::agree_tol<T>();
  const auto clip_ref = tc::clip_loss(a, b, T(2), {.materialized = true});
  const auto sig_ref = tc::siglip_loss(a, b, T(1), T(-2), {.materialized = true});
  const auto nce_ref = tc::info_nce_loss(a, b, {.temperature = 0.5, .materialized = true});
  const Tensor<int, 1> cls{0, 1, 0, 2, 1, 2, 0};
  const auto pair_ref =
      tc::pair_loss(a, b, cls, {.mining = tc::PairMining::hardest_negative, .materialized = true});
  for (Index block : {kMax, kMax - 1, kMax / 2 + 1, Index(8), Index(7)}) {
    SCOPED_TRACE(block);
    const auto clip = tc::clip_loss(a, b, T(2), {.block_size = block});
    tt::expect_close_scalar(clip.loss, clip_ref.loss, tol, "clip_loss");
    tt::expect_close(clip.grad_a, clip_ref.grad_a, tol, "clip_loss grad_a");
    const auto sig = tc::siglip_loss(a, b, T(1), T(-2), {.block_size = block});
    tt::expect_close_scalar(sig.loss, sig_ref.loss, tol, "siglip_loss");
    tt::expect_close(sig.grad_b, sig_ref.grad_b, tol, "siglip_loss grad_b");
    const auto nce = tc::info_nce_loss(a, b, {.temperature = 0.5, .block_size = block});
    tt::expect_close_scalar(nce.loss, nce_ref.loss, tol, "info_nce_loss");
    const auto pair =
        tc::pair_loss(a, b, cls, {.mining = tc::PairMining::hardest_negative, .block_size = block});
    tt::expect_close_scalar(pair.loss, pair_ref.loss, tol, "pair_loss");
    for (Index i = 0; i < 7; ++i) EXPECT_EQ(pair.hardest_negative(i), pair_ref.hardest_negative(i));
  }
}

TYPED_TEST(RobustContrastive, HugeCountsInConstructorsAreTypedErrors) {
  using T = TypeParam;
  const Index big = Index(1) << 40;
  TESSERA_EXPECT_THROW_MSG((tc::LinearProbe<T>({.in_features = big, .num_classes = big})),
                           ShapeError, "tessera::contrastive::LinearProbe",
                           "the weight [num_classes, in_features]");
  TESSERA_EXPECT_THROW_MSG((tc::ProjectionHead<T>({.in_features = big, .embed_dim = big})),
                           ShapeError, "tessera::contrastive::ProjectionHead",
                           "the weight [embed_dim, in_features]");
  // Epochs and batch sizes at the limit: a batch larger than the data is the full batch.
  tc::LinearProbe<T> probe({.in_features = 2, .num_classes = 2});
  const auto x = tt::random_rows<T>(4, 2, 5);
  const Tensor<int, 1> y{0, 1, 1, 0};
  const auto h = probe.fit(x, y, {.epochs = 1, .batch_size = kMax});
  ASSERT_EQ(h.size(), 1u);
  EXPECT_TRUE(std::isfinite(h[0]));
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, y, {.epochs = 1, .batch_size = -kMax}), ValueError,
                           "tessera::contrastive::LinearProbe::fit", "option 'batch_size'");
}

// ---- kinds 14 and 8: options checked in T, named as the caller wrote them ----

TYPED_TEST(RobustContrastive, ClipMaxLogitScaleIsCheckedAndNamed) {
  using T = TypeParam;
  const auto a = tt::unit_rows<T>(3, 2, 1);
  constexpr const char* fn = "tessera::contrastive::clip_loss";
  for (double bad : {std::numeric_limits<double>::infinity(), 0.0, -1.0,
                     std::numeric_limits<double>::quiet_NaN()}) {
    SCOPED_TRACE(bad);
    TESSERA_EXPECT_THROW_MSG(tc::clip_loss(a, a, T(1), {.max_logit_scale = bad}), ValueError, fn,
                             "option 'max_logit_scale'");
  }
  // 1e39: finite in double, inf in float.
  if constexpr (std::is_same_v<T, float>) {
    TESSERA_EXPECT_THROW_MSG(tc::clip_loss(a, a, T(1), {.max_logit_scale = 1e39}), ValueError, fn,
                             "option 'max_logit_scale' is 1e+39", "in the scalar type");
  } else {
    const auto r = tc::clip_loss(a, a, T(1), {.max_logit_scale = 1e39});
    EXPECT_EQ(r.scale, std::exp(T(1)));
  }
  // The largest finite bound: its log rounds up, and exp of that would overflow.
  const double top = static_cast<double>(std::numeric_limits<T>::max());
  try {
    const auto r = tc::clip_loss(a, a, T(1000), {.max_logit_scale = top});
    EXPECT_TRUE(std::isfinite(r.scale));
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(fn), std::string::npos) << msg;
    EXPECT_NE(msg.find("option 'max_logit_scale'"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("alpha"), std::string::npos) << msg;
  }
  TESSERA_EXPECT_THROW_MSG(tc::clip_loss(a, a, std::numeric_limits<T>::infinity()), ValueError, fn,
                           "argument 'logit_scale' is inf");
}

TYPED_TEST(RobustContrastive, OptionsFiniteInDoubleButNotInFloat) {
  using T = TypeParam;
  if constexpr (!std::is_same_v<T, float>) GTEST_SKIP() << "1e39 is finite in double";
  const auto a = tt::unit_rows<T>(3, 2, 1);
  const Tensor<int, 1> same{1, 0, 1};
  TESSERA_EXPECT_THROW_MSG(tc::info_nce_loss(a, a, {.scale = 1e39}), ValueError,
                           "tessera::contrastive::info_nce_loss", "option 'scale' is 1e+39");
  TESSERA_EXPECT_THROW_MSG(tc::info_nce_loss(a, a, {.temperature = 1e-39}), ValueError,
                           "tessera::contrastive::info_nce_loss", "option 'temperature' is 1e-39");
  TESSERA_EXPECT_THROW_MSG(tc::pair_loss(a, a, same, {.margin = 1e39}), ValueError,
                           "tessera::contrastive::pair_loss", "option 'margin' is 1e+39");
  TESSERA_EXPECT_THROW_MSG(tc::pair_loss(a, a, same, {.pos_margin = 1e39}), ValueError,
                           "tessera::contrastive::pair_loss", "option 'pos_margin' is 1e+39");
  // exp(100) is finite in double, not in float.
  TESSERA_EXPECT_THROW_MSG(tc::siglip_loss(a, a, T(100), T(0)), ValueError,
                           "tessera::contrastive::siglip_loss", "argument 'logit_scale' is 100");
  tc::LinearProbe<T> probe({.in_features = 2, .num_classes = 2});
  const Tensor<int, 1> y{0, 1, 1};
  TESSERA_EXPECT_THROW_MSG(probe.fit(a, y, {.learning_rate = 1e39}), ValueError,
                           "tessera::contrastive::LinearProbe::fit", "option 'learning_rate'");
  TESSERA_EXPECT_THROW_MSG(probe.fit(a, y, {.weight_decay = 1e39}), ValueError,
                           "tessera::contrastive::LinearProbe::fit",
                           "option 'weight_decay' is 1e+39");
  TESSERA_EXPECT_THROW_MSG(probe.loss_and_grad(a, y, 1e39), ValueError,
                           "tessera::contrastive::LinearProbe::loss_and_grad",
                           "argument 'weight_decay' is 1e+39");
  auto encode = [](const std::vector<std::string>& p) {
    return tt::unit_rows<T>(static_cast<Index>(p.size()), 2, 3);
  };
  TESSERA_EXPECT_THROW_MSG(
      (tc::ZeroShotClassifier<T>({"a", "b"}, {"{}"}, encode, {.logit_scale = 1e39})), ValueError,
      "tessera::contrastive::ZeroShotClassifier", "option 'logit_scale' is 1e+39");
  using Tower = tessera::nn::Linear<T>;
  auto model = [](tc::DualEncoderOptions o) {
    return tc::DualEncoder<T, Tower, Tower>(Tower({.in_features = 2, .out_features = 2}),
                                            Tower({.in_features = 2, .out_features = 2}), o);
  };
  TESSERA_EXPECT_THROW_MSG(
      model({.image_width = 2, .text_width = 2, .embed_dim = 2, .max_logit_scale = 1e39}),
      ValueError, "tessera::contrastive::DualEncoder", "option 'max_logit_scale' is 1e+39");
  TESSERA_EXPECT_THROW_MSG(
      model({.image_width = 2, .text_width = 2, .embed_dim = 2, .logit_scale_init = 1e39}),
      ValueError, "tessera::contrastive::DualEncoder", "option 'logit_scale_init' is 1e+39");
}

TYPED_TEST(RobustContrastive, DualEncoderOptionsNamedAsWritten) {
  using T = TypeParam;
  using Tower = tessera::nn::Linear<T>;
  auto model = [](tc::DualEncoderOptions o) {
    return tc::DualEncoder<T, Tower, Tower>(Tower({.in_features = 2, .out_features = 2}),
                                            Tower({.in_features = 2, .out_features = 2}), o);
  };
  TESSERA_EXPECT_THROW_MSG(model({.image_width = 2,
                                  .text_width = 2,
                                  .embed_dim = 2,
                                  .max_logit_scale = std::numeric_limits<double>::infinity()}),
                           ValueError, "tessera::contrastive::DualEncoder",
                           "option 'max_logit_scale' is inf");
  TESSERA_EXPECT_THROW_MSG(
      model({.image_width = 2, .text_width = 2, .embed_dim = 2, .logit_scale_init = -1}),
      ValueError, "tessera::contrastive::DualEncoder", "option 'logit_scale_init' is -1");
}

// ---- kind 6: NaN in, NaN out ----

TYPED_TEST(RobustContrastive, NanEmbeddingsGiveNanLosses) {
  using T = TypeParam;
  const auto a = tt::unit_rows<T>(5, 3, 21), b = tt::unit_rows<T>(5, 3, 22);
  const auto an = with_nan(a, 2, 1);
  for (bool mat : {false, true}) {
    SCOPED_TRACE(mat ? "materialized" : "chunked");
    const auto clip = tc::clip_loss(an, b, T(2), {.block_size = 2, .materialized = mat});
    EXPECT_TRUE(std::isnan(clip.loss));
    EXPECT_TRUE(any_nan(clip.grad_a) && any_nan(clip.grad_b));
    EXPECT_TRUE(std::isnan(clip.grad_logit_scale));
    const auto sig =
        tc::siglip_loss(a, with_nan(b, 4, 0), T(1), T(-1), {.block_size = 2, .materialized = mat});
    EXPECT_TRUE(std::isnan(sig.loss));
    EXPECT_TRUE(any_nan(sig.grad_a) && any_nan(sig.grad_b));
    EXPECT_TRUE(std::isnan(sig.grad_logit_scale) && std::isnan(sig.grad_logit_bias));
    const auto nce = tc::info_nce_loss(an, b, {.block_size = 2, .materialized = mat});
    EXPECT_TRUE(std::isnan(nce.loss));
    EXPECT_TRUE(any_nan(nce.grad_a) && any_nan(nce.grad_b));
    EXPECT_TRUE(std::isnan(nce.grad_scale));
  }
}

TYPED_TEST(RobustContrastive, NanPairsGiveNanLossNotZero) {
  using T = TypeParam;
  // Far-apart dissimilar pairs: the hinge [m - d]_+ is 0 for every finite d, so a NaN hidden by
  // the clamp would read as a plausible 0.
  Tensor<T, 2> x1(3, 2), x2(3, 2);
  x1.as_array().setConstant(T(0));
  x2.as_array().setConstant(T(10));
  x1(1, 0) = std::numeric_limits<T>::quiet_NaN();
  const Tensor<int, 1> dissimilar{0, 0, 0};
  for (auto form : {tc::PairLossForm::squared, tc::PairLossForm::hinge}) {
    const auto r = tc::pair_loss(x1, x2, dissimilar, {.form = form});
    EXPECT_TRUE(std::isnan(r.loss));
    EXPECT_TRUE(std::isnan(r.grad_x1(1, 0)) && std::isnan(r.grad_x2(1, 1)));
    EXPECT_EQ(r.grad_x1(0, 0), T(0));  // the finite pairs keep their (zero) gradient
  }
  const Tensor<int, 1> classes{0, 1, 2};
  const auto mined = tc::pair_loss(x1, x2, classes, {.mining = tc::PairMining::hardest_negative});
  EXPECT_TRUE(std::isnan(mined.loss));
}

TYPED_TEST(RobustContrastive, NanParametersGiveNanLosses) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const auto a = tt::unit_rows<T>(4, 3, 31), b = tt::unit_rows<T>(4, 3, 32);
  const auto clip = tc::clip_loss(a, b, nan);
  EXPECT_TRUE(std::isnan(clip.loss) && std::isnan(clip.grad_logit_scale) && std::isnan(clip.scale));
  EXPECT_TRUE(all_nan(clip.grad_a) && all_nan(clip.grad_b));
  for (auto [s, bias] : {std::pair<T, T>{nan, T(0)}, std::pair<T, T>{T(1), nan}}) {
    const auto sig = tc::siglip_loss(a, b, s, bias);
    EXPECT_TRUE(std::isnan(sig.loss) && std::isnan(sig.grad_logit_scale) &&
                std::isnan(sig.grad_logit_bias));
    EXPECT_TRUE(all_nan(sig.grad_a) && all_nan(sig.grad_b));
  }
  // A DualEncoder whose logit_scale parameter diverged: NaN logits and loss, no error about
  // an internal 'alpha'.
  using Tower = tessera::nn::Linear<T>;
  tc::DualEncoder<T, Tower, Tower> model(Tower({.in_features = 3, .out_features = 3}),
                                         Tower({.in_features = 3, .out_features = 3}),
                                         {.image_width = 3, .text_width = 3, .embed_dim = 3});
  model.temperature.logit_scale.value() = nan;
  EXPECT_TRUE(all_nan(model.logits(a, b)));
  EXPECT_TRUE(std::isnan(model.loss_and_grad(a, b).loss));
  // A NaN in a projection weight: NaN embeddings and gradients, not the eps branch's g / eps.
  tc::ProjectionHead<T> head({.in_features = 3, .embed_dim = 2});
  head.proj.weight.value(0, 1) = nan;
  const auto fwd = head.forward_train(a);
  Tensor<T, 2> g(4, 2);
  g.as_array().setConstant(T(1));
  const auto dx = head.backward(a, fwd, g);
  EXPECT_TRUE(all_nan(fwd.embedding));
  EXPECT_TRUE(all_nan(dx));
}

TYPED_TEST(RobustContrastive, NanEmbeddingsGiveNanAccuracyAndRankFirst) {
  using T = TypeParam;
  tc::LinearProbe<T> probe({.in_features = 2, .num_classes = 3});
  auto x = tt::random_rows<T>(3, 2, 41);
  x(1, 0) = std::numeric_limits<T>::quiet_NaN();
  const Tensor<int, 1> y{0, 1, 2};
  EXPECT_TRUE(std::isnan(probe.accuracy(x, y)));
  EXPECT_EQ(probe.predict(x)(1), 0);  // torch.argmax: the first NaN
  EXPECT_TRUE(std::isnan(probe.loss_and_grad(x, y)));

  auto encode = [](const std::vector<std::string>& p) {
    return tt::unit_rows<T>(static_cast<Index>(p.size()), 2, 3);
  };
  tc::ZeroShotClassifier<T> zs({"a", "b", "c"}, {"{}"}, encode);
  const auto pred = zs.predict(x, 3);  // must not be undefined behaviour in the sort
  for (Index j = 0; j < 3; ++j) EXPECT_TRUE(std::isnan(pred.probabilities(1, j))) << j;
  for (Index j = 0; j < 3; ++j) EXPECT_EQ(pred.indices(1, j), j);  // all NaN: by class id
  EXPECT_FALSE(std::isnan(pred.probabilities(0, 0)));
}

// ---- kind 15: empty batches ----

TYPED_TEST(RobustContrastive, EmptyBatchesAreShapeErrorsNamingTheArgument) {
  using T = TypeParam;
  const Tensor<T, 2> none(0, 3), flat(3, 0);
  const Tensor<int, 1> no_labels(0), labels{1, 0, 1};
  TESSERA_EXPECT_THROW_MSG(tc::clip_loss(none, none, T(1)), ShapeError,
                           "tessera::contrastive::clip_loss", "argument 'a'", "[0, 3]");
  TESSERA_EXPECT_THROW_MSG(tc::clip_loss(flat, flat, T(1)), ShapeError, "argument 'a'", "[3, 0]");
  TESSERA_EXPECT_THROW_MSG(tc::siglip_loss(none, none, T(1), T(0)), ShapeError,
                           "tessera::contrastive::siglip_loss", "argument 'a'");
  TESSERA_EXPECT_THROW_MSG(tc::info_nce_loss(none, none), ShapeError,
                           "tessera::contrastive::info_nce_loss", "argument 'a'");
  TESSERA_EXPECT_THROW_MSG(tc::info_nce_loss(tt::unit_rows<T>(3, 3, 1), none), ShapeError,
                           "argument 'b'");
  TESSERA_EXPECT_THROW_MSG(tc::pair_loss(none, none, no_labels), ShapeError,
                           "tessera::contrastive::pair_loss", "argument 'x1'");
  TESSERA_EXPECT_THROW_MSG(tc::pair_loss(flat, flat, labels), ShapeError, "argument 'x1'");
  tc::LinearProbe<T> probe({.in_features = 3, .num_classes = 2});
  TESSERA_EXPECT_THROW_MSG(probe.fit(none, no_labels), ShapeError,
                           "tessera::contrastive::LinearProbe::fit", "argument 'x'");
  TESSERA_EXPECT_THROW_MSG(probe.loss_and_grad(none, no_labels), ShapeError,
                           "tessera::contrastive::LinearProbe::loss_and_grad", "argument 'x'");
}

TYPED_TEST(RobustContrastive, EmptyBatchesForInferenceGiveEmptyResults) {
  using T = TypeParam;
  const Tensor<T, 2> none(0, 3);
  const Tensor<int, 1> no_labels(0);
  tc::LinearProbe<T> probe({.in_features = 3, .num_classes = 2});
  EXPECT_EQ(probe.logits(none).shape(), (tessera::Shape<2>{0, 2}));
  EXPECT_EQ(probe.predict(none).dim(0), 0);
  EXPECT_EQ(probe.accuracy(none, no_labels), 0.0);  // documented: 0 for no rows

  auto encode = [](const std::vector<std::string>& p) {
    return tt::unit_rows<T>(static_cast<Index>(p.size()), 3, 3);
  };
  tc::ZeroShotClassifier<T> zs({"a", "b"}, {"{}"}, encode);
  EXPECT_EQ(zs.logits(none).shape(), (tessera::Shape<2>{0, 2}));
  const auto pred = zs.predict(none, 2);
  EXPECT_EQ(pred.indices.shape(), (tessera::Shape<2>{0, 2}));
  EXPECT_TRUE(pred.labels.empty());

  tc::ProjectionHead<T> head({.in_features = 3, .embed_dim = 2});
  const auto fwd = head.forward_train(none);
  EXPECT_EQ(fwd.embedding.shape(), (tessera::Shape<2>{0, 2}));
  const auto dx = head.backward(none, fwd, Tensor<T, 2>(0, 2));
  EXPECT_EQ(dx.shape(), (tessera::Shape<2>{0, 3}));
  ASSERT_TRUE(head.proj.weight.has_grad());
  EXPECT_EQ(head.proj.weight.grad.as_array().abs().maxCoeff(), T(0));
}

// A replaced weight is reported by the probe's entry point, not by the Linear inside it.
TYPED_TEST(RobustContrastive, LinearProbeNamesItselfForAReplacedWeight) {
  using T = TypeParam;
  tc::LinearProbe<T> probe({.in_features = 4, .num_classes = 3});
  probe.linear.weight.value = Tensor<T, 2>(3, 2);
  const Tensor<T, 2> x(2, 4);
  const Tensor<std::int64_t, 1> labels{0, 1};
  TESSERA_EXPECT_THROW_MSG(probe.accuracy(x, labels), ShapeError,
                           "tessera::contrastive::LinearProbe::accuracy", "parameter 'weight'",
                           "[3, 2]", "[3, 4]");
  TESSERA_EXPECT_THROW_MSG(probe.predict(x), ShapeError,
                           "tessera::contrastive::LinearProbe::predict", "parameter 'weight'");
}

}  // namespace contrastive_test
