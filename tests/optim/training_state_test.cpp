#include "tessera/optim/training_state.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "tessera/nn/module.hpp"
#include "tessera/optim/adam.hpp"
#include "tessera/optim/adamw.hpp"
#include "tessera/optim/clip_grad_norm.hpp"
#include "tessera/optim/lr_schedule.hpp"
#include "tessera/optim/sgd.hpp"
#include "test_util.hpp"

namespace training_state_test {

using tessera::Shape;
using tessera::Tensor;
using tessera::nn::Parameter;
namespace optim = tessera::optim;

template <class T>
struct TinyModel : tessera::nn::Module<TinyModel<T>> {
  Parameter<T, 2> weight{Shape<2>{3, 4}};
  Parameter<T, 1> bias{Shape<1>{3}};
  Parameter<T, 0> logit_scale{Shape<0>{}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    f(prefix + "bias", self.bias);
    f(prefix + "logit_scale", self.logit_scale);
  }
};

// A deterministic pseudo-gradient of step `t` (depends on the parameters, so a wrong state shows).
template <class T>
void fake_backward(TinyModel<T>& m, int t) {
  m.zero_grad();
  for (tessera::Index i = 0; i < m.weight.size(); ++i)
    m.weight.grad.data()[i] = m.weight.value.data()[i] * T(0.5) + T(std::sin(0.7 * t + i));
  for (tessera::Index i = 0; i < m.bias.size(); ++i)
    m.bias.grad.data()[i] = T(std::cos(1.3 * t - i)) - m.bias.value.data()[i];
  m.logit_scale.grad() = T(0.1) * T(t % 3) - T(0.05);
}

// TinyModel with a weight of another shape.
template <class T>
struct OtherModel : tessera::nn::Module<OtherModel<T>> {
  Parameter<T, 2> weight{Shape<2>{3, 5}};
  Parameter<T, 1> bias{Shape<1>{3}};
  Parameter<T, 0> logit_scale{Shape<0>{}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    f(prefix + "bias", self.bias);
    f(prefix + "logit_scale", self.logit_scale);
  }
};

// TinyModel's parameters (trained) plus one more (frozen: in no optimizer group).
template <class T>
struct WithFrozen : tessera::nn::Module<WithFrozen<T>> {
  TinyModel<T> trainable;
  Parameter<T, 1> frozen{Shape<1>{2}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    TinyModel<T>::visit(self.trainable, f, prefix);
    f(prefix + "frozen", self.frozen);
  }
};

template <class T>
std::unique_ptr<optim::Optimizer<T>> make(int kind, TinyModel<T>& m) {
  auto groups = optim::open_clip_param_groups(m, 0.1);
  if (kind == 0)
    return std::make_unique<optim::SGD<T>>(
        groups, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true});
  if (kind == 1)
    return std::make_unique<optim::Adam<T>>(groups,
                                            optim::AdamOptions{.lr = 0.01, .amsgrad = true});
  groups[0].lr = 0.03;
  return std::make_unique<optim::AdamW<T>>(groups, optim::AdamWOptions{.lr = 0.01});
}

template <class T>
void train(TinyModel<T>& m, optim::Optimizer<T>& opt, int from, int to) {
  const optim::CosineWithWarmup schedule{
      .base_lr = opt.initial_lr(1), .warmup_steps = 2, .total_steps = 12};
  for (int t = from; t < to; ++t) {
    schedule.apply(opt, t);
    fake_backward(m, t);
    optim::clip_grad_norm(opt, 1.0);
    opt.step();
  }
}

template <class T>
bool bit_equal(const Tensor<T, 2>& a, const Tensor<T, 2>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
class TrainingStateTest : public ::testing::Test {};
TYPED_TEST_SUITE(TrainingStateTest, tessera::test::Scalars);

TYPED_TEST(TrainingStateTest, ResumeIsBitIdentical) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  for (int kind = 0; kind < 3; ++kind) {
    SCOPED_TRACE(kind);
    const auto path = dir.path() / ("state" + std::to_string(kind) + ".safetensors");
    TinyModel<T> a;
    a.weight.value.setRandom(3);
    a.bias.value.setRandom(4);
    a.logit_scale.value() = T(2.5);
    auto opt_a = make(kind, a);
    train(a, *opt_a, 0, 5);
    optim::save_training_state(path, a, *opt_a, 5, {{"run", "test"}});
    train(a, *opt_a, 5, 10);

    TinyModel<T> b;  // zero parameters: everything comes from the file
    auto opt_b = make(kind, b);
    std::map<std::string, std::string> meta;
    EXPECT_EQ(optim::load_training_state(path, b, *opt_b, &meta), 5);
    EXPECT_EQ(meta.at("run"), "test");
    EXPECT_EQ(meta.at("optim.type"), std::string(opt_b->name()));
    train(b, *opt_b, 5, 10);
    EXPECT_TRUE(bit_equal(a.weight.value, b.weight.value));
    EXPECT_EQ(std::memcmp(a.bias.value.data(), b.bias.value.data(), 3 * sizeof(T)), 0);
    EXPECT_EQ(std::memcmp(a.logit_scale.value.data(), b.logit_scale.value.data(), sizeof(T)), 0);
    for (std::size_t g = 0; g < opt_a->num_groups(); ++g) EXPECT_EQ(opt_a->lr(g), opt_b->lr(g));
  }
}

TYPED_TEST(TrainingStateTest, FileLayout) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  const auto path = dir.path() / "s.safetensors";
  TinyModel<T> m;
  auto opt = make(2, m);
  train(m, *opt, 0, 1);
  optim::save_training_state(path, m, *opt, 1);
  const auto sd = tessera::io::load_safetensors(path);
  EXPECT_EQ(sd.metadata.at("tessera.step"), "1");
  EXPECT_TRUE(sd.contains("model.weight"));
  EXPECT_TRUE(sd.contains("model.logit_scale"));
  EXPECT_TRUE(sd.contains("optim.weight.exp_avg"));
  EXPECT_TRUE(sd.contains("optim.logit_scale.exp_avg_sq"));
  EXPECT_EQ(sd.at("optim.bias.step").template values<std::int64_t>()[0], 1);
  EXPECT_EQ(sd.at("model.weight").dtype, tessera::io::detail::dtype_of<T>());
}

TYPED_TEST(TrainingStateTest, Errors) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  const auto path = dir.path() / "s.safetensors";
  TinyModel<T> m;
  auto opt = make(1, m);
  const char* save = "tessera::optim::save_training_state";
  const char* load = "tessera::optim::load_training_state";
  TESSERA_EXPECT_THROW_MSG(optim::save_training_state(path, m, *opt, -1), tessera::ValueError, save,
                           "'step'", "-1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(optim::save_training_state(path, m, *opt, 0, {{"tessera.step", "9"}}),
                           tessera::ValueError, save, "'tessera.step'", "reserved");
  TESSERA_EXPECT_THROW_MSG(optim::save_training_state(path, m, *opt, 0, {{"optim.x", "9"}}),
                           tessera::ValueError, save, "'optim.x'", "reserved");
  TESSERA_EXPECT_THROW_MSG(optim::load_training_state(dir.path() / "missing.safetensors", m, *opt),
                           tessera::IoError, "tessera::io::load_safetensors", "missing");

  // A plain model file is not a training state.
  tessera::io::save_safetensors(path, m.state_dict());
  TESSERA_EXPECT_THROW_MSG(optim::load_training_state(path, m, *opt), tessera::ValueError, load,
                           "'tessera.step'", "not a training state");
  auto sd = m.state_dict();
  sd.metadata["tessera.step"] = "-4";
  tessera::io::save_safetensors(path, sd);
  TESSERA_EXPECT_THROW_MSG(optim::load_training_state(path, m, *opt), tessera::ValueError, load,
                           "'-4'", "integer >= 0");

  // Written for another optimizer: nothing changes.
  TinyModel<T> trained;
  trained.weight.value.setConstant(7);
  auto sgd = make(0, trained);
  train(trained, *sgd, 0, 2);
  optim::save_training_state(path, trained, *sgd, 2);
  TESSERA_EXPECT_THROW_MSG(optim::load_training_state(path, m, *opt), tessera::ValueError,
                           "tessera::optim::Adam::load_state_dict", "written by SGD");
  EXPECT_EQ(m.weight.value(0, 0), T(0));

  // A module of another shape: the module throws, the optimizer is restored.
  OtherModel<T> other;
  auto other_groups = optim::open_clip_param_groups<T>(other, 0.1);
  optim::SGD<T> other_sgd(other_groups, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  TESSERA_EXPECT_THROW_MSG(optim::load_training_state(path, other, other_sgd), tessera::ShapeError,
                           "'optim.weight.momentum_buffer'", "[3, 4]", "[3, 5]");
  EXPECT_FALSE(other_sgd.state(1, 0).initialized);

  // The optimizer loads but the module does not (a parameter the file lacks): the optimizer is
  // put back as it was.
  WithFrozen<T> frozen;
  auto frozen_groups = optim::open_clip_param_groups<T>(frozen.trainable, 0.1);
  optim::SGD<T> frozen_sgd(frozen_groups, {.lr = 0.5, .momentum = 0.9, .nesterov = true});
  TESSERA_EXPECT_THROW_MSG(optim::load_training_state(path, frozen, frozen_sgd),
                           tessera::ValueError, "tessera::nn::Module::load_state_dict",
                           "missing keys: 'model.frozen'");
  EXPECT_FALSE(frozen_sgd.state(1, 0).initialized);
  EXPECT_EQ(frozen_sgd.lr(1), 0.5);
  EXPECT_EQ(frozen.trainable.weight.value(0, 0), T(0));
}

}  // namespace training_state_test
