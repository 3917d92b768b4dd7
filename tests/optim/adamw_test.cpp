#include "tessera/optim/adamw.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "test_util.hpp"

namespace adamw_test {

using tessera::Shape;
using tessera::nn::Parameter;
using tessera::optim::AdamW;
using tessera::optim::AdamWOptions;
using tessera::optim::ParameterRef;

template <class T>
class AdamWTest : public ::testing::Test {
 protected:
  static T tol() { return std::is_same_v<T, float> ? T(2e-6) : T(1e-14); }
};
TYPED_TEST_SUITE(AdamWTest, tessera::test::Scalars);

// torch/optim/adamw.py _single_tensor_adamw, in double: decoupled decay, then Adam without L2.
std::vector<double> reference(std::vector<double> p, const std::vector<std::vector<double>>& grads,
                              const AdamWOptions& o) {
  const std::size_t n = p.size();
  std::vector<double> m(n, 0), v(n, 0), vmax(n, 0);
  int t = 0;
  for (const auto& g0 : grads) {
    ++t;
    const double bc1 = 1 - std::pow(o.beta1, t), bc2 = 1 - std::pow(o.beta2, t);
    for (std::size_t j = 0; j < n; ++j) {
      const double g = o.maximize ? -g0[j] : g0[j];
      p[j] *= 1 - o.lr * o.weight_decay;
      m[j] = o.beta1 * m[j] + (1 - o.beta1) * g;
      v[j] = o.beta2 * v[j] + (1 - o.beta2) * g * g;
      vmax[j] = std::max(vmax[j], v[j]);
      const double denom = std::sqrt(o.amsgrad ? vmax[j] : v[j]) / std::sqrt(bc2) + o.eps;
      p[j] -= o.lr / bc1 * m[j] / denom;
    }
  }
  return p;
}

TYPED_TEST(AdamWTest, MatchesTheUpdateRuleOfPyTorch) {
  using T = TypeParam;
  // Shrinking gradients, so that AMSGrad's maximum differs from the running average.
  const std::vector<std::vector<double>> grads = {{2.0, -1.0, 0.5, 0.0},
                                                  {0.1, -0.05, 1.5, 0.0},
                                                  {0.01, 0.3, -0.2, 0.0},
                                                  {0.02, 0.01, 0.1, 0.0}};
  const std::vector<double> p0 = {1.0, -2.0, 0.5, 0.25};
  for (const AdamWOptions& o :
       {AdamWOptions{}, AdamWOptions{.lr = 0.01, .weight_decay = 0.1},
        AdamWOptions{.lr = 0.02, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-3, .amsgrad = true},
        AdamWOptions{.lr = 0.01, .weight_decay = 0.0, .maximize = true},
        AdamWOptions{.lr = 0.05, .weight_decay = 0.5, .amsgrad = true}}) {
    SCOPED_TRACE(::testing::Message() << "amsgrad " << o.amsgrad << " wd " << o.weight_decay
                                      << " maximize " << o.maximize);
    Parameter<T, 2> p(Shape<2>{2, 2});
    for (int j = 0; j < 4; ++j) p.value.data()[j] = T(p0[j]);
    AdamW<T> opt({ParameterRef<T>("p", p)}, o);
    EXPECT_EQ(opt.name(), "AdamW");
    for (const auto& g : grads) {
      p.zero_grad();
      for (int j = 0; j < 4; ++j) p.grad.data()[j] = T(g[j]);
      opt.step();
    }
    const auto want = reference(p0, grads, o);
    for (int j = 0; j < 4; ++j)
      EXPECT_TRUE(tessera::test::close(p.value.data()[j], T(want[j]), this->tol(), this->tol()))
          << j;
    const auto& st = opt.state(0, 0);
    EXPECT_EQ(st.step, 4);
    EXPECT_EQ(st.find("max_exp_avg_sq") != nullptr, o.amsgrad);
    ASSERT_NE(st.find("exp_avg"), nullptr);
    EXPECT_EQ(st.find("exp_avg")->size(), 4u);
  }
}

TYPED_TEST(AdamWTest, AmsgradKeepsTheMaximumAndPropagatesNaN) {
  using T = TypeParam;
  Parameter<T, 1> p(Shape<1>{1});
  AdamW<T> opt({ParameterRef<T>("p", p)}, {.amsgrad = true});
  p.zero_grad();
  p.grad(0) = T(3);
  opt.step();
  const T first = (*opt.state(0, 0).find("max_exp_avg_sq"))[0];
  p.grad(0) = T(0);
  opt.step();
  EXPECT_EQ((*opt.state(0, 0).find("max_exp_avg_sq"))[0], first);
  EXPECT_LT((*opt.state(0, 0).find("exp_avg_sq"))[0], first);
  p.grad(0) = std::numeric_limits<T>::quiet_NaN();
  opt.step();
  EXPECT_TRUE(std::isnan((*opt.state(0, 0).find("max_exp_avg_sq"))[0]));
  EXPECT_TRUE(std::isnan(p.value(0)));
}

TYPED_TEST(AdamWTest, DecayIsDecoupledFromTheGradient) {
  using T = TypeParam;
  // A zero gradient leaves Adam's moments at 0 and the update at 0: only the decay moves p.
  Parameter<T, 1> p(Shape<1>{2});
  p.value.setConstant(2);
  AdamW<T> opt({ParameterRef<T>("p", p)}, {.lr = 0.1, .weight_decay = 0.5});
  p.zero_grad();
  opt.step();
  EXPECT_EQ(p.value(0), T(2) * static_cast<T>(1.0 - 0.1 * 0.5));
  EXPECT_EQ(opt.weight_decay(), 0.5);
  EXPECT_EQ(AdamWOptions{}.weight_decay, 1e-2);  // PyTorch's default
}

TYPED_TEST(AdamWTest, RejectsBadOptions) {
  using T = TypeParam;
  Parameter<T, 1> p(Shape<1>{2});
  const std::vector<ParameterRef<T>> ps = {ParameterRef<T>("p", p)};
  const char* fn = "tessera::optim::AdamW";
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.lr = -1e-3}), tessera::ValueError, fn, "'lr'", "-0.001",
                           ">= 0");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.eps = -1e-8}), tessera::ValueError, fn, "'eps'", "-1e-08",
                           ">= 0");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.beta1 = 1.0}), tessera::ValueError, fn, "'beta1'",
                           "betas[0]", "1", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.beta1 = -0.1}), tessera::ValueError, fn, "'beta1'",
                           "-0.1", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.beta2 = 1.5}), tessera::ValueError, fn, "'beta2'",
                           "betas[1]", "1.5", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.beta2 = std::numeric_limits<double>::quiet_NaN()}),
                           tessera::ValueError, fn, "'beta2'", "nan", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(ps, {.weight_decay = -0.01}), tessera::ValueError, fn,
                           "'weight_decay'", "-0.01", ">= 0");
  TESSERA_EXPECT_THROW_MSG(AdamW<T>(std::vector<ParameterRef<T>>{}), tessera::ValueError, fn,
                           "'params'", "empty");
}

}  // namespace adamw_test
