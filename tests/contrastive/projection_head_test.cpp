// Tests for tessera/contrastive/projection_head.hpp: the forward (a linear map, then unit rows),
// the backward against central differences for x, the weight and the bias, a zero row, the state
// dict keys and every error.
#include "tessera/contrastive/projection_head.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace projection_head_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::contrastive::ProjectionHead;
namespace tt = tessera::test;

template <class T>
class ProjectionHeadTest : public ::testing::Test {};
TYPED_TEST_SUITE(ProjectionHeadTest, tessera::test::Scalars);

TYPED_TEST(ProjectionHeadTest, ForwardIsALinearMapToUnitRows) {
  using T = TypeParam;
  for (bool bias : {false, true}) {
    ProjectionHead<T> head({.in_features = 5, .embed_dim = 3, .bias = bias, .seed = 9});
    const auto x = tt::random_rows<T>(4, 5, 501);
    const auto e = head.forward(x);
    const auto y = head.proj.forward(x);
    ASSERT_EQ(e.shape(), (tessera::Shape<2>{4, 3}));
    for (Index i = 0; i < 4; ++i) {
      EXPECT_NEAR(double(e.as_matrix().row(i).norm()), 1.0, tt::agree_tol<T>());
      for (Index j = 0; j < 3; ++j)
        EXPECT_TRUE(tt::close<T>(e(i, j), y(i, j) / y.as_matrix().row(i).norm(), tt::tol<T>(),
                                 tt::tol<T>()));
    }
  }
}

// L = sum(e * R) for a fixed R: the backward's dL/dx, dL/dW and dL/db against central
// differences, in double.
TEST(ProjectionHeadGrad, FiniteDifferences) {
  for (bool bias : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "bias " << bias);
    ProjectionHead<double> head({.in_features = 4, .embed_dim = 3, .bias = bias, .seed = 3});
    auto x = tt::random_rows<double>(5, 4, 511);
    const auto R = tt::random_rows<double>(5, 3, 512);
    const auto f = [&] {
      return (tessera::test::owned_array(head.forward(x)) * R.as_array()).sum();
    };
    head.zero_grad();
    const auto fwd = head.forward_train(x);
    const auto gx = head.backward(x, fwd, R);
    tt::expect_close(gx, tt::numeric_grad(x, f), tt::kGradCheckTol, "grad_x");
    tt::expect_close(head.proj.weight.grad, tt::numeric_grad(head.proj.weight.value, f),
                     tt::kGradCheckTol, "grad_weight");
    if (bias)
      tt::expect_close(head.proj.bias.grad, tt::numeric_grad(head.proj.bias.value, f),
                       tt::kGradCheckTol, "grad_bias");
    // A second backward adds to the gradients.
    const Tensor<double, 2> once = head.proj.weight.grad;
    head.backward(x, fwd, R);
    for (Index i = 0; i < once.size(); ++i)
      EXPECT_DOUBLE_EQ(head.proj.weight.grad.data()[i], 2 * once.data()[i]);
  }
}

// A zero input row (no bias) stays a zero embedding, and its gradients are finite.
TYPED_TEST(ProjectionHeadTest, ZeroRow) {
  using T = TypeParam;
  ProjectionHead<T> head({.in_features = 3, .embed_dim = 2});
  Tensor<T, 2> x(2, 3);
  x(1, 0) = T(1);
  const auto fwd = head.forward_train(x);
  EXPECT_EQ(fwd.embedding(0, 0), T(0));
  EXPECT_EQ(fwd.embedding(0, 1), T(0));
  Tensor<T, 2> g(2, 2);
  g.setConstant(T(1e-20));
  head.zero_grad();
  const auto gx = head.backward(x, fwd, g);
  for (Index i = 0; i < gx.size(); ++i) EXPECT_TRUE(std::isfinite(gx.data()[i]));
}

TEST(ProjectionHeadModule, StateDictKeys) {
  ProjectionHead<float> head({.in_features = 3, .embed_dim = 2, .bias = true});
  const auto dict = head.state_dict("visual_projection.");
  EXPECT_TRUE(dict.contains("visual_projection.weight"));
  EXPECT_TRUE(dict.contains("visual_projection.bias"));
  EXPECT_EQ(head.num_parameters(), 8);
  ProjectionHead<float> no_bias({.in_features = 3, .embed_dim = 2});
  EXPECT_EQ(no_bias.num_parameters(), 6);
}

TEST(ProjectionHeadErrors, Messages) {
  constexpr const char* fn = "tessera::contrastive::ProjectionHead";
  TESSERA_EXPECT_THROW_MSG(ProjectionHead<double>({.in_features = 0, .embed_dim = 2}), ValueError,
                           fn, "'in_features' and 'embed_dim' are 0 and 2");
  TESSERA_EXPECT_THROW_MSG(ProjectionHead<double>({.in_features = 2, .embed_dim = -1}), ValueError,
                           "are 2 and -1");
  TESSERA_EXPECT_THROW_MSG(ProjectionHead<double>({.in_features = 2, .embed_dim = 2, .eps = 0}),
                           ValueError, "'eps' is 0");
  ProjectionHead<double> head({.in_features = 3, .embed_dim = 2});
  TESSERA_EXPECT_THROW_MSG(head.forward(Tensor<double, 2>(4, 2)), ShapeError,
                           "ProjectionHead::forward", "'x' has shape [4, 2]", "expected [4, 3]");
  const Tensor<double, 2> x(4, 3);
  const auto fwd = head.forward_train(x);
  TESSERA_EXPECT_THROW_MSG(head.backward(Tensor<double, 2>(4, 2), fwd, Tensor<double, 2>(4, 2)),
                           ShapeError, "ProjectionHead::backward", "'x'");
  TESSERA_EXPECT_THROW_MSG(head.backward(x, fwd, Tensor<double, 2>(4, 3)), ShapeError,
                           "'grad_embedding' has shape [4, 3]", "expected [4, 2]");
  TESSERA_EXPECT_THROW_MSG(head.backward(Tensor<double, 2>(5, 3), fwd, Tensor<double, 2>(5, 2)),
                           ShapeError, "'fwd.embedding' has shape [4, 2]", "expected [5, 2]");
}

}  // namespace projection_head_test
