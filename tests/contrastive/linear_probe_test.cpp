// Tests for tessera/contrastive/linear_probe.hpp: the loss and its gradient (with weight decay)
// against the formula and central differences, full-batch and mini-batch training on separable
// data, weight decay shrinking the weight, predictions, accuracy, the state dict and every error.
#include "tessera/contrastive/linear_probe.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace linear_probe_test {

using tessera::Index;
using tessera::IndexError;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::LinearProbe;
namespace tt = tessera::test;

// Three well-separated Gaussian blobs in 4 dimensions.
template <class T>
void blobs(Index n, std::uint64_t seed, Tensor<T, 2>& x, Tensor<int, 1>& y) {
  x = tt::random_rows<T>(n, 4, seed, -0.3, 0.3);
  y = Tensor<int, 1>(n);
  for (Index i = 0; i < n; ++i) {
    y(i) = int(i % 3);
    x(i, y(i)) += T(2);
  }
}

// The loss written out and its gradient against central differences, in double.
TEST(LinearProbeGrad, FormulaAndFiniteDifferences) {
  for (double wd : {0.0, 0.3}) {
    SCOPED_TRACE(::testing::Message() << "weight_decay " << wd);
    LinearProbe<double> probe({.in_features = 4, .num_classes = 3, .seed = 5});
    Tensor<double, 2> x;
    Tensor<int, 1> y;
    blobs<double>(7, 701, x, y);
    const auto f = [&] {
      const auto l = probe.logits(x);
      double loss = 0;
      for (Index i = 0; i < 7; ++i) {
        double z = 0;
        for (Index c = 0; c < 3; ++c) z += std::exp(l(i, c));
        loss += std::log(z) - l(i, y(i));
      }
      return loss / 7 + wd / 2 * probe.linear.weight.value.as_matrix().squaredNorm();
    };
    probe.zero_grad();
    const double loss = probe.loss_and_grad(x, y, wd);
    EXPECT_NEAR(loss, f(), 1e-12);
    tt::expect_close(probe.linear.weight.grad, tt::numeric_grad(probe.linear.weight.value, f),
                     tt::kGradCheckTol, "grad_weight");
    tt::expect_close(probe.linear.bias.grad, tt::numeric_grad(probe.linear.bias.value, f),
                     tt::kGradCheckTol, "grad_bias");
  }
}

template <class T>
class LinearProbeTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearProbeTest, tessera::test::Scalars);

TYPED_TEST(LinearProbeTest, LearnsSeparableClassesFullAndMiniBatch) {
  using T = TypeParam;
  Tensor<T, 2> x, xt;
  Tensor<int, 1> y, yt;
  blobs<T>(90, 711, x, y);
  blobs<T>(30, 712, xt, yt);
  for (Index batch : {0, 16}) {
    SCOPED_TRACE(::testing::Message() << "batch_size " << batch);
    LinearProbe<T> probe({.in_features = 4, .num_classes = 3, .seed = 1});
    const double before = probe.accuracy(xt, yt);
    const auto history =
        probe.fit(x, y, {.epochs = 60, .learning_rate = 0.5, .batch_size = batch, .seed = 3});
    ASSERT_EQ(history.size(), 60u);
    EXPECT_LT(history.back(), 0.2 * history.front());
    for (T h : history) ASSERT_TRUE(std::isfinite(h));
    EXPECT_EQ(probe.accuracy(x, y), 1.0);
    EXPECT_EQ(probe.accuracy(xt, yt), 1.0);
    EXPECT_LT(before, 1.0);
    const auto p = probe.predict(xt);
    for (Index i = 0; i < 30; ++i) EXPECT_EQ(p(i), yt(i));
  }
}

// Full-batch fit is plain gradient descent: one epoch is one loss_and_grad and one step.
TYPED_TEST(LinearProbeTest, OneEpochIsOneGradientStep) {
  using T = TypeParam;
  Tensor<T, 2> x;
  Tensor<int, 1> y;
  blobs<T>(12, 721, x, y);
  LinearProbe<T> a({.in_features = 4, .num_classes = 3, .seed = 2});
  LinearProbe<T> b({.in_features = 4, .num_classes = 3, .seed = 2});
  const auto h = a.fit(x, y, {.epochs = 1, .learning_rate = 0.25, .weight_decay = 0.1});
  b.zero_grad();
  const T loss = b.loss_and_grad(x, y, 0.1);
  EXPECT_EQ(h[0], loss);
  // fit's gradient and this test's loss_and_grad run the same arithmetic, but in the compiled
  // mode one is compiled in the library (x86-64 baseline) and the other here (-march=native,
  // where GCC contracts products and sums into FMAs): they agree to rounding, a few ulps, far
  // less than the step itself (which the last check requires to be taken, and only once).
  T largest_step = 0;
  for (Index i = 0; i < b.linear.weight.value.size(); ++i) {
    const T w = b.linear.weight.value.data()[i];
    const T step = T(0.25) * b.linear.weight.grad.data()[i];
    const T rounding = 16 * std::numeric_limits<T>::epsilon() * (std::abs(w) + std::abs(step));
    EXPECT_NEAR(a.linear.weight.value.data()[i], w - step, rounding) << "weight element " << i;
    largest_step = std::max(largest_step, std::abs(step));
  }
  EXPECT_GT(largest_step, 1e-3);
}

TYPED_TEST(LinearProbeTest, WeightDecayShrinksTheWeight) {
  using T = TypeParam;
  Tensor<T, 2> x;
  Tensor<int, 1> y;
  blobs<T>(60, 731, x, y);
  LinearProbe<T> plain({.in_features = 4, .num_classes = 3});
  LinearProbe<T> decayed({.in_features = 4, .num_classes = 3});
  plain.fit(x, y, {.epochs = 100, .learning_rate = 0.5});
  decayed.fit(x, y, {.epochs = 100, .learning_rate = 0.5, .weight_decay = 0.05});
  EXPECT_LT(decayed.linear.weight.value.as_matrix().norm(),
            0.8 * plain.linear.weight.value.as_matrix().norm());
  EXPECT_EQ(decayed.accuracy(x, y), 1.0);
}

TEST(LinearProbeModule, StateDict) {
  const LinearProbe<float> probe({.in_features = 4, .num_classes = 3});
  const auto dict = probe.state_dict("probe.");
  EXPECT_TRUE(dict.contains("probe.weight"));
  EXPECT_TRUE(dict.contains("probe.bias"));
  EXPECT_EQ(probe.num_parameters(), 15);
}

TEST(LinearProbeErrors, Messages) {
  constexpr const char* fn = "tessera::contrastive::LinearProbe";
  TESSERA_EXPECT_THROW_MSG(LinearProbe<double>({.in_features = 0, .num_classes = 3}), ValueError,
                           fn, "'in_features' and 'num_classes' are 0 and 3");
  TESSERA_EXPECT_THROW_MSG(LinearProbe<double>({.in_features = 2, .num_classes = 1}), ValueError,
                           "are 2 and 1");
  LinearProbe<double> probe({.in_features = 2, .num_classes = 3});
  const Tensor<double, 2> x(4, 2);
  const Tensor<int, 1> y{0, 1, 2, 1};
  TESSERA_EXPECT_THROW_MSG(probe.logits(Tensor<double, 2>(4, 3)), ShapeError, "LinearProbe::logits",
                           "'x' has shape [4, 3]", "expected [4, 2]");
  TESSERA_EXPECT_THROW_MSG(probe.accuracy(x, Tensor<int, 1>{0, 1}), ShapeError,
                           "LinearProbe::accuracy", "'labels' has shape [2]");
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, Tensor<int, 1>{0, 1, 3, 0}), IndexError, "LinearProbe::fit",
                           "'labels' holds 3 at index 2", "[0, 3)");
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, Tensor<int, 1>{0, -1, 1, 0}), IndexError, "holds -1");
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, y, {.epochs = 0}), ValueError, "'epochs' is 0");
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, y, {.learning_rate = 0}), ValueError,
                           "'learning_rate' is 0");
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, y, {.weight_decay = -1}), ValueError,
                           "'weight_decay' is -1");
  TESSERA_EXPECT_THROW_MSG(probe.fit(x, y, {.batch_size = -2}), ValueError, "'batch_size' is -2");
  TESSERA_EXPECT_THROW_MSG(probe.fit(Tensor<double, 2>(0, 2), Tensor<int, 1>(0)), ShapeError,
                           "LinearProbe::fit", "at least one row");
  TESSERA_EXPECT_THROW_MSG(probe.loss_and_grad(Tensor<double, 2>(0, 2), Tensor<int, 1>(0)),
                           ShapeError, "LinearProbe::loss_and_grad", "at least one row");
  TESSERA_EXPECT_THROW_MSG(probe.loss_and_grad(x, y, NAN), ValueError, "'weight_decay' is nan");
}

}  // namespace linear_probe_test
