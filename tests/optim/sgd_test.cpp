#include "tessera/optim/sgd.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "test_util.hpp"

namespace sgd_test {

using tessera::Shape;
using tessera::nn::Parameter;
using tessera::optim::ParameterRef;
using tessera::optim::SGD;
using tessera::optim::SGDOptions;

template <class T>
class SGDTest : public ::testing::Test {
 protected:
  static T tol() { return std::is_same_v<T, float> ? T(1e-6) : T(1e-14); }
};
TYPED_TEST_SUITE(SGDTest, tessera::test::Scalars);

// torch/optim/sgd.py _single_tensor_sgd, in double, for three steps of fixed gradients.
std::vector<double> reference(std::vector<double> p, const std::vector<std::vector<double>>& grads,
                              const SGDOptions& o) {
  std::vector<double> buf;
  for (const auto& g0 : grads) {
    std::vector<double> d(p.size());
    for (std::size_t j = 0; j < p.size(); ++j) {
      d[j] = o.maximize ? -g0[j] : g0[j];
      d[j] += o.weight_decay * p[j];
    }
    if (o.momentum != 0) {
      if (buf.empty())
        buf = d;
      else
        for (std::size_t j = 0; j < p.size(); ++j)
          buf[j] = buf[j] * o.momentum + (1 - o.dampening) * d[j];
      for (std::size_t j = 0; j < p.size(); ++j)
        d[j] = o.nesterov ? d[j] + o.momentum * buf[j] : buf[j];
    }
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= o.lr * d[j];
  }
  return p;
}

TYPED_TEST(SGDTest, MatchesTheUpdateRuleOfPyTorch) {
  using T = TypeParam;
  const std::vector<std::vector<double>> grads = {
      {0.5, -1.0, 2.0}, {0.25, 0.75, -0.5}, {-1.5, 0.125, 1.0}};
  const std::vector<double> p0 = {1.0, -2.0, 0.5};
  for (const SGDOptions& o :
       {SGDOptions{.lr = 0.1}, SGDOptions{.lr = 0.1, .momentum = 0.9},
        SGDOptions{.lr = 0.05, .momentum = 0.8, .dampening = 0.3, .weight_decay = 0.1},
        SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true},
        SGDOptions{.lr = 0.2, .momentum = 0.5, .maximize = true}}) {
    SCOPED_TRACE(::testing::Message() << "momentum " << o.momentum << " nesterov " << o.nesterov
                                      << " maximize " << o.maximize);
    Parameter<T, 1> p(Shape<1>{3});
    for (int j = 0; j < 3; ++j) p.value(j) = T(p0[j]);
    SGD<T> opt({ParameterRef<T>("p", p)}, o);
    EXPECT_EQ(opt.name(), "SGD");
    for (const auto& g : grads) {
      p.zero_grad();
      for (int j = 0; j < 3; ++j) p.grad(j) = T(g[j]);
      opt.step();
    }
    const auto want = reference(p0, grads, o);
    for (int j = 0; j < 3; ++j)
      EXPECT_TRUE(tessera::test::close(p.value(j), T(want[j]), this->tol(), this->tol()));
    EXPECT_EQ(opt.state(0, 0).step, 3);
    EXPECT_EQ(opt.state(0, 0).find("momentum_buffer") != nullptr, o.momentum != 0);
  }
}

TYPED_TEST(SGDTest, SkipsParametersWithoutGradientAndUsesGroupOptions) {
  using T = TypeParam;
  Parameter<T, 1> a(Shape<1>{2}), b(Shape<1>{2});
  a.value.setConstant(1);
  b.value.setConstant(1);
  SGD<T> opt(
      std::vector<tessera::optim::ParamGroup<T>>{
          {{ParameterRef<T>("a", a)}, 0.5, 0.0},
          {{ParameterRef<T>("b", b)}, std::nullopt, std::nullopt}},
      {.lr = 0.1, .weight_decay = 0.5});
  EXPECT_EQ(opt.lr(0), 0.5);
  EXPECT_EQ(opt.lr(1), 0.1);
  EXPECT_EQ(opt.weight_decay(0), 0.0);
  EXPECT_EQ(opt.weight_decay(1), 0.5);
  a.zero_grad();
  a.grad.setConstant(1);
  opt.step();  // b has no gradient: untouched, no state
  EXPECT_EQ(a.value(0), T(1) - T(0.5));
  EXPECT_EQ(b.value(0), T(1));
  EXPECT_FALSE(opt.state(1, 0).initialized);
  b.zero_grad();
  b.grad.setConstant(1);
  opt.step();  // b: d = 1 + 0.5 * 1
  EXPECT_TRUE(tessera::test::close(b.value(0), T(1 - 0.1 * 1.5), this->tol(), this->tol()));
}

TYPED_TEST(SGDTest, RejectsBadOptions) {
  using T = TypeParam;
  Parameter<T, 1> p(Shape<1>{2});
  const std::vector<ParameterRef<T>> ps = {ParameterRef<T>("p", p)};
  const char* fn = "tessera::optim::SGD";
  TESSERA_EXPECT_THROW_MSG(SGD<T>(ps, {}), tessera::ValueError, fn, "'lr'", "nan", "no default");
  TESSERA_EXPECT_THROW_MSG(SGD<T>(ps, {.lr = -0.1}), tessera::ValueError, fn, "'lr'", "-0.1",
                           ">= 0");
  TESSERA_EXPECT_THROW_MSG(SGD<T>(ps, {.lr = std::numeric_limits<double>::infinity()}),
                           tessera::ValueError, fn, "'lr'", "inf", "finite");
  TESSERA_EXPECT_THROW_MSG(SGD<T>(ps, {.lr = 0.1, .momentum = -0.5}), tessera::ValueError, fn,
                           "'momentum'", "-0.5", ">= 0");
  TESSERA_EXPECT_THROW_MSG(SGD<T>(ps, {.lr = 0.1, .weight_decay = -1}), tessera::ValueError, fn,
                           "'weight_decay'", "-1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      SGD<T>(ps, {.lr = 0.1, .dampening = std::numeric_limits<double>::quiet_NaN()}),
      tessera::ValueError, fn, "'dampening'", "nan", "finite");
  TESSERA_EXPECT_THROW_MSG(SGD<T>(ps, {.lr = 0.1, .nesterov = true}), tessera::ValueError, fn,
                           "'nesterov'", "momentum 0", "momentum > 0 and dampening 0");
  TESSERA_EXPECT_THROW_MSG(
      SGD<T>(ps, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}),
      tessera::ValueError, fn, "'nesterov'", "dampening 0.1", "momentum > 0 and dampening 0");
  TESSERA_EXPECT_THROW_MSG(SGD<T>(std::vector<ParameterRef<T>>{}, {.lr = 0.1}), tessera::ValueError,
                           fn, "'params'", "empty");
}

}  // namespace sgd_test
