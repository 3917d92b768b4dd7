#include "tessera/optim/clip_grad_norm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "tessera/optim/sgd.hpp"
#include "test_util.hpp"

namespace clip_grad_norm_test {

using tessera::Shape;
using tessera::nn::Parameter;
using tessera::optim::clip_grad_norm;
using tessera::optim::ClipGradNormOptions;
using tessera::optim::ParameterRef;

template <class T>
class ClipGradNormTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a.zero_grad();
    b.zero_grad();
    // a: [3, 4] -> norm 5; b: [12] -> norm 12; joint 2-norm 13, inf-norm 12, 1-norm 19.
    a.grad(0, 0) = T(3);
    a.grad(0, 1) = T(-4);
    b.grad(0) = T(12);
    params = {ParameterRef<T>("a", a), ParameterRef<T>("b", b), ParameterRef<T>("c", c)};
  }
  static T tol() { return std::is_same_v<T, float> ? T(1e-6) : T(1e-14); }
  Parameter<T, 2> a{Shape<2>{2, 2}};
  Parameter<T, 1> b{Shape<1>{1}};
  Parameter<T, 1> c{Shape<1>{3}};  // no gradient: ignored
  std::vector<ParameterRef<T>> params;
};
TYPED_TEST_SUITE(ClipGradNormTest, tessera::test::Scalars);

TYPED_TEST(ClipGradNormTest, ScalesToMaxNormAndReturnsTheTotal) {
  using T = TypeParam;
  const T total = clip_grad_norm(this->params, 6.5);
  EXPECT_TRUE(tessera::test::close(total, T(13), this->tol(), this->tol()));
  // PyTorch: coef = max_norm / (total + 1e-6), computed in T.
  const T coef = T(1) / (T(13) + static_cast<T>(1e-6)) * T(6.5);
  EXPECT_EQ(this->a.grad(0, 0), T(3) * coef);
  EXPECT_EQ(this->b.grad(0), T(12) * coef);
  EXPECT_FALSE(this->c.has_grad());
}

TYPED_TEST(ClipGradNormTest, BelowMaxNormMultipliesByOne) {
  using T = TypeParam;
  const T total = clip_grad_norm(this->params, 100.0);
  EXPECT_TRUE(tessera::test::close(total, T(13), this->tol(), this->tol()));
  EXPECT_EQ(this->a.grad(0, 1), T(-4));
  EXPECT_EQ(this->b.grad(0), T(12));
}

TYPED_TEST(ClipGradNormTest, OtherNorms) {
  using T = TypeParam;
  const T inf_total =
      clip_grad_norm(this->params, 100.0, {.norm_type = std::numeric_limits<double>::infinity()});
  EXPECT_EQ(inf_total, T(12));
  EXPECT_TRUE(tessera::test::close(clip_grad_norm(this->params, 100.0, {.norm_type = 1.0}), T(19),
                                   this->tol(), this->tol()));
  // p = 3: (5-norm... ) || (||a||_3, ||b||_3) ||_3 = (27 + 64 + 1728)^(1/3)
  EXPECT_TRUE(tessera::test::close(clip_grad_norm(this->params, 100.0, {.norm_type = 3.0}),
                                   T(std::cbrt(27.0 + 64.0 + 1728.0)), this->tol(), this->tol()));
}

TYPED_TEST(ClipGradNormTest, GroupsAndOptimizerOverloads) {
  using T = TypeParam;
  std::vector<tessera::optim::ParamGroup<T>> groups(2);
  groups[0].params = {this->params[0]};
  groups[1].params = {this->params[1], this->params[2]};
  EXPECT_TRUE(tessera::test::close(clip_grad_norm(groups, 1e9), T(13), this->tol(), this->tol()));
  tessera::optim::SGD<T> opt(groups, {.lr = 0.1});
  EXPECT_TRUE(tessera::test::close(clip_grad_norm(opt, 1e9), T(13), this->tol(), this->tol()));
}

TYPED_TEST(ClipGradNormTest, NoGradientsGiveZero) {
  using T = TypeParam;
  Parameter<T, 1> p(Shape<1>{2});
  EXPECT_EQ(clip_grad_norm(std::vector<ParameterRef<T>>{ParameterRef<T>("p", p)}, 1.0), T(0));
  EXPECT_EQ(clip_grad_norm(std::vector<ParameterRef<T>>{}, 1.0), T(0));
}

TYPED_TEST(ClipGradNormTest, NonFiniteNormPropagatesOrThrows) {
  using T = TypeParam;
  this->b.grad(0) = std::numeric_limits<T>::quiet_NaN();
  TESSERA_EXPECT_THROW_MSG(clip_grad_norm(this->params, 1.0, {.error_if_nonfinite = true}),
                           tessera::ValueError, "tessera::optim::clip_grad_norm", "order 2", "nan",
                           "finite", "error_if_nonfinite");
  EXPECT_EQ(this->a.grad(0, 0), T(3));  // unchanged by the failed call
  const T total = clip_grad_norm(this->params, 1.0);
  EXPECT_TRUE(std::isnan(total));
  EXPECT_TRUE(std::isnan(this->a.grad(0, 0)));  // scaled by NaN, as PyTorch: never hidden

  this->SetUp();
  this->b.grad(0) = std::numeric_limits<T>::infinity();
  TESSERA_EXPECT_THROW_MSG(clip_grad_norm(this->params, 1.0, {.error_if_nonfinite = true}),
                           tessera::ValueError, "tessera::optim::clip_grad_norm", "inf");
  EXPECT_TRUE(std::isinf(clip_grad_norm(this->params, 1.0)));
  EXPECT_EQ(this->a.grad(0, 0), T(0));       // coef 1 / inf = 0
  EXPECT_TRUE(std::isnan(this->b.grad(0)));  // inf * 0
}

TYPED_TEST(ClipGradNormTest, RejectsBadArguments) {
  using T = TypeParam;
  const char* fn = "tessera::optim::clip_grad_norm";
  TESSERA_EXPECT_THROW_MSG(clip_grad_norm(this->params, std::numeric_limits<double>::quiet_NaN()),
                           tessera::ValueError, fn, "'max_norm'", "nan");
  TESSERA_EXPECT_THROW_MSG(clip_grad_norm(this->params, 1.0, {.norm_type = 0.0}),
                           tessera::ValueError, fn, "'norm_type'", "0", "> 0");
  TESSERA_EXPECT_THROW_MSG(clip_grad_norm(this->params, 1.0, {.norm_type = -2.0}),
                           tessera::ValueError, fn, "'norm_type'", "-2", "> 0");
  this->a.grad = tessera::Tensor<T, 2>(Shape<2>{3, 2});
  TESSERA_EXPECT_THROW_MSG(clip_grad_norm(this->params, 1.0), tessera::ShapeError, fn, "'a'",
                           "[3, 2]", "[2, 2]");
  EXPECT_EQ(this->b.grad(0), T(12));  // nothing scaled
}

}  // namespace clip_grad_norm_test
