#include "tessera/optim/adam.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "test_util.hpp"

namespace adam_test {

using tessera::Shape;
using tessera::nn::Parameter;
using tessera::optim::Adam;
using tessera::optim::AdamOptions;
using tessera::optim::ParameterRef;

template <class T>
class AdamTest : public ::testing::Test {
 protected:
  static T tol() { return std::is_same_v<T, float> ? T(2e-6) : T(1e-14); }
};
TYPED_TEST_SUITE(AdamTest, tessera::test::Scalars);

// torch/optim/adam.py _single_tensor_adam, in double.
std::vector<double> reference(std::vector<double> p, const std::vector<std::vector<double>>& grads,
                              const AdamOptions& o) {
  const std::size_t n = p.size();
  std::vector<double> m(n, 0), v(n, 0), vmax(n, 0);
  int t = 0;
  for (const auto& g0 : grads) {
    ++t;
    const double bc1 = 1 - std::pow(o.beta1, t), bc2 = 1 - std::pow(o.beta2, t);
    for (std::size_t j = 0; j < n; ++j) {
      double g = o.maximize ? -g0[j] : g0[j];
      g += o.weight_decay * p[j];
      m[j] = o.beta1 * m[j] + (1 - o.beta1) * g;
      v[j] = o.beta2 * v[j] + (1 - o.beta2) * g * g;
      vmax[j] = std::max(vmax[j], v[j]);
      const double denom = std::sqrt(o.amsgrad ? vmax[j] : v[j]) / std::sqrt(bc2) + o.eps;
      p[j] -= o.lr / bc1 * m[j] / denom;
    }
  }
  return p;
}

TYPED_TEST(AdamTest, MatchesTheUpdateRuleOfPyTorch) {
  using T = TypeParam;
  // Shrinking gradients, so that AMSGrad's maximum differs from the running average.
  const std::vector<std::vector<double>> grads = {{2.0, -1.0, 0.5, 0.0},
                                                  {0.1, -0.05, 1.5, 0.0},
                                                  {0.01, 0.3, -0.2, 0.0},
                                                  {0.02, 0.01, 0.1, 0.0}};
  const std::vector<double> p0 = {1.0, -2.0, 0.5, 0.25};
  for (const AdamOptions& o :
       {AdamOptions{}, AdamOptions{.lr = 0.01, .weight_decay = 0.1},
        AdamOptions{.lr = 0.02, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-3, .amsgrad = true},
        AdamOptions{.lr = 0.01, .maximize = true}}) {
    SCOPED_TRACE(::testing::Message() << "amsgrad " << o.amsgrad << " wd " << o.weight_decay
                                      << " maximize " << o.maximize);
    Parameter<T, 2> p(Shape<2>{2, 2});
    for (int j = 0; j < 4; ++j) p.value.data()[j] = T(p0[j]);
    Adam<T> opt({ParameterRef<T>("p", p)}, o);
    EXPECT_EQ(opt.name(), "Adam");
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

TYPED_TEST(AdamTest, AmsgradKeepsTheMaximumAndPropagatesNaN) {
  using T = TypeParam;
  Parameter<T, 1> p(Shape<1>{1});
  Adam<T> opt({ParameterRef<T>("p", p)}, {.amsgrad = true});
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

TYPED_TEST(AdamTest, RejectsBadOptions) {
  using T = TypeParam;
  Parameter<T, 1> p(Shape<1>{2});
  const std::vector<ParameterRef<T>> ps = {ParameterRef<T>("p", p)};
  const char* fn = "tessera::optim::Adam";
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.lr = -1e-3}), tessera::ValueError, fn, "'lr'", "-0.001",
                           ">= 0");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.eps = -1e-8}), tessera::ValueError, fn, "'eps'", "-1e-08",
                           ">= 0");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.beta1 = 1.0}), tessera::ValueError, fn, "'beta1'",
                           "betas[0]", "1", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.beta1 = -0.1}), tessera::ValueError, fn, "'beta1'", "-0.1",
                           "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.beta2 = 1.5}), tessera::ValueError, fn, "'beta2'",
                           "betas[1]", "1.5", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.beta2 = std::numeric_limits<double>::quiet_NaN()}),
                           tessera::ValueError, fn, "'beta2'", "nan", "[0, 1)");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(ps, {.weight_decay = -0.01}), tessera::ValueError, fn,
                           "'weight_decay'", "-0.01", ">= 0");
  TESSERA_EXPECT_THROW_MSG(Adam<T>(std::vector<ParameterRef<T>>{}), tessera::ValueError, fn,
                           "'params'", "empty");
}

}  // namespace adam_test
