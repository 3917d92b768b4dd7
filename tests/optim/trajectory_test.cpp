// Trajectories of SGD, Adam and AdamW against PyTorch 1.13: 20 steps of a tiny least-squares
// problem with open_clip's cosine schedule, clip_grad_norm and two parameter groups, in float and
// double (tests/fixtures/make_optim_fixtures.py writes the reference).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tessera/io/safetensors.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/optim/adam.hpp"
#include "tessera/optim/adamw.hpp"
#include "tessera/optim/clip_grad_norm.hpp"
#include "tessera/optim/lr_schedule.hpp"
#include "tessera/optim/param_group.hpp"
#include "tessera/optim/sgd.hpp"
#include "test_util.hpp"

namespace trajectory_test {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::nn::Parameter;
namespace optim = tessera::optim;

constexpr int kSteps = 20, kWarmup = 3, kBatch = 5, kIn = 6, kOut = 4;

template <class T>
struct Affine : tessera::nn::Module<Affine<T>> {
  Parameter<T, 2> weight{Shape<2>{kOut, kIn}};
  Parameter<T, 1> bias{Shape<1>{kOut}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    f(prefix + "bias", self.bias);
  }
};

template <class T>
struct Case {
  std::string name;
  double lr, weight_decay, min_lr = 0;
  std::optional<double> bias_lr;
  std::function<std::unique_ptr<optim::Optimizer<T>>(std::vector<optim::ParamGroup<T>>)> make;
};

// The cases of make_optim_fixtures.py, with the same options.
template <class T>
std::vector<Case<T>> cases() {
  using G = std::vector<optim::ParamGroup<T>>;
  return {
      {"sgd_momentum", 0.1, 0.01, 0, std::nullopt,
       [](G g) {
         return std::make_unique<optim::SGD<T>>(
             std::move(g),
             optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01});
       }},
      {"sgd_nesterov", 0.05, 0.01, 0.005, std::nullopt,
       [](G g) {
         return std::make_unique<optim::SGD<T>>(
             std::move(g),
             optim::SGDOptions{
                 .lr = 0.05, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true});
       }},
      {"adam", 0.05, 0.01, 0, std::nullopt,
       [](G g) {
         return std::make_unique<optim::Adam<T>>(
             std::move(g), optim::AdamOptions{.lr = 0.05, .weight_decay = 0.01});
       }},
      {"adam_amsgrad", 0.05, 0.01, 0, std::nullopt,
       [](G g) {
         return std::make_unique<optim::Adam<T>>(
             std::move(g),
             optim::AdamOptions{
                 .lr = 0.05, .beta1 = 0.8, .beta2 = 0.99, .weight_decay = 0.01, .amsgrad = true});
       }},
      {"adamw", 0.05, 0.1, 0, std::nullopt,
       [](G g) {
         return std::make_unique<optim::AdamW<T>>(
             std::move(g), optim::AdamWOptions{.lr = 0.05, .weight_decay = 0.1});
       }},
      {"adamw_amsgrad", 0.05, 0.1, 0, 0.1,
       [](G g) {
         return std::make_unique<optim::AdamW<T>>(
             std::move(g), optim::AdamWOptions{.lr = 0.05, .weight_decay = 0.1, .amsgrad = true});
       }},
  };
}

// The gradient of 0.5 * sum_i ||W x_i + b - y_i||^2, computed in double from the parameters and
// rounded to T, as the fixture script computes it: dW = sum_i r_i x_i^T, db = sum_i r_i.
template <class T>
void set_gradient(Affine<T>& m, const std::vector<double>& x, const std::vector<double>& y, int t) {
  m.weight.zero_grad();
  m.bias.zero_grad();
  std::vector<double> dw(kOut * kIn, 0.0), db(kOut, 0.0);
  for (int i = 0; i < kBatch; ++i) {
    const double* xi = &x[(t * kBatch + i) * kIn];
    const double* yi = &y[(t * kBatch + i) * kOut];
    for (int o = 0; o < kOut; ++o) {
      double r = 0;
      for (int k = 0; k < kIn; ++k) r += static_cast<double>(m.weight.value(o, k)) * xi[k];
      r = r + static_cast<double>(m.bias.value(o)) - yi[o];
      for (int k = 0; k < kIn; ++k) dw[o * kIn + k] += r * xi[k];
      db[o] += r;
    }
  }
  for (int o = 0; o < kOut; ++o) {
    for (int k = 0; k < kIn; ++k) m.weight.grad(o, k) = static_cast<T>(dw[o * kIn + k]);
    m.bias.grad(o) = static_cast<T>(db[o]);
  }
}

template <class T>
class TrajectoryTest : public ::testing::Test {};
TYPED_TEST_SUITE(TrajectoryTest, tessera::test::Scalars);

TYPED_TEST(TrajectoryTest, MatchesPyTorch) {
  using T = TypeParam;
  constexpr bool is_float = std::is_same_v<T, float>;
  const std::string tag = is_float ? "f32" : "f64";
  // float: 1e-5 absolute and relative; double: 1e-12 relative (and absolute, for values near 0).
  const T tol = is_float ? T(1e-5) : T(1e-12);
  const auto fx = tessera::io::load_safetensors(std::string(TESSERA_TEST_DATA_DIR) +
                                                "/fixtures/optim/trajectories.safetensors");
  const auto x = fx.at("data.x").values<double>();
  const auto y = fx.at("data.y").values<double>();
  const auto w0 = fx.get<T, 2>("init.weight");
  const auto b0 = fx.get<T, 1>("init.bias");
  for (const auto& c : cases<T>()) {
    SCOPED_TRACE(c.name + " " + tag);
    Affine<T> model;
    model.weight.value = w0;
    model.bias.value = b0;
    auto groups = optim::open_clip_param_groups(model, c.weight_decay);  // {bias}, {weight}
    ASSERT_EQ(groups[0].params.size(), 1u);
    ASSERT_EQ(groups[0].params[0].name(), "bias");
    groups[0].lr = c.bias_lr;
    auto opt = c.make(groups);
    const optim::CosineWithWarmup schedule{
        .base_lr = c.lr, .warmup_steps = kWarmup, .total_steps = kSteps, .min_lr = c.min_lr};
    const auto lrs = fx.at(c.name + ".lr").template values<double>();
    const auto norms = fx.at(c.name + "." + tag + ".norm").template values<T>();
    double max_err = 0;
    for (int t = 0; t < kSteps; ++t) {
      schedule.apply(*opt, t);
      EXPECT_EQ(opt->lr(1), lrs[t]) << "step " << t;
      if (c.bias_lr) {
        EXPECT_EQ(opt->lr(0), lrs[t] * (*c.bias_lr / c.lr));
      }
      set_gradient(model, x, y, t);
      const T norm = optim::clip_grad_norm(*opt, 1.0);
      EXPECT_TRUE(tessera::test::close(norm, norms[t], T(0), tol)) << "step " << t;
      opt->step();
      const int done = t + 1;
      if (done != 1 && done != 10 && done != kSteps) continue;
      const std::string key = c.name + "." + tag + ".step" + std::to_string(done) + ".";
      const auto we = fx.get<T, 2>(key + "weight");
      const auto be = fx.get<T, 1>(key + "bias");
      for (Index i = 0; i < we.size(); ++i) {
        EXPECT_TRUE(tessera::test::close(model.weight.value.data()[i], we.data()[i], tol, tol))
            << "weight element " << i << " after step " << done;
        max_err = std::max(max_err,
                           std::abs(double(model.weight.value.data()[i]) - double(we.data()[i])));
      }
      for (Index i = 0; i < be.size(); ++i) {
        EXPECT_TRUE(tessera::test::close(model.bias.value.data()[i], be.data()[i], tol, tol))
            << "bias element " << i << " after step " << done;
        max_err =
            std::max(max_err, std::abs(double(model.bias.value.data()[i]) - double(be.data()[i])));
      }
    }
    std::cout << "[ trajectory ] " << c.name << " " << tag
              << ": max |tessera - torch| = " << max_err << "\n";
  }
}

}  // namespace trajectory_test
