#include "tessera/optim/optimizer.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "tessera/nn/module.hpp"
#include "tessera/optim/adam.hpp"
#include "tessera/optim/adamw.hpp"
#include "tessera/optim/sgd.hpp"
#include "test_util.hpp"

namespace optimizer_test {

using tessera::Shape;
using tessera::Tensor;
using tessera::nn::Parameter;
using tessera::optim::ParameterRef;
using tessera::optim::ParamGroup;

template <class T>
struct TinyModel : tessera::nn::Module<TinyModel<T>> {
  Parameter<T, 2> weight{Shape<2>{3, 2}};
  Parameter<T, 1> bias{Shape<1>{3}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    f(prefix + "bias", self.bias);
  }
};

template <class T>
void fill_grads(TinyModel<T>& m, double scale) {
  m.zero_grad();
  for (tessera::Index i = 0; i < m.weight.size(); ++i)
    m.weight.grad.data()[i] = static_cast<T>(scale * (i + 1));
  for (tessera::Index i = 0; i < m.bias.size(); ++i)
    m.bias.grad.data()[i] = static_cast<T>(-scale * (i + 2));
}

template <class T>
class OptimizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model.weight.value.setRandom(1);
    model.bias.value.setRandom(2);
  }
  TinyModel<T> model;
};
TYPED_TEST_SUITE(OptimizerTest, tessera::test::Scalars);

TYPED_TEST(OptimizerTest, ZeroGradAllocatesAndZeroes) {
  using T = TypeParam;
  tessera::optim::Adam<T> opt(tessera::optim::parameters(this->model));
  EXPECT_FALSE(this->model.weight.has_grad());
  opt.zero_grad();
  EXPECT_TRUE(this->model.weight.has_grad());
  fill_grads(this->model, 1.0);
  opt.zero_grad();
  for (tessera::Index i = 0; i < 6; ++i) EXPECT_EQ(this->model.weight.grad.data()[i], T(0));
}

TYPED_TEST(OptimizerTest, LearningRatesPerGroup) {
  using T = TypeParam;
  auto groups = tessera::optim::open_clip_param_groups(this->model, 0.1);
  groups[0].lr = 0.5;
  tessera::optim::AdamW<T> opt(groups, {.lr = 0.01});
  ASSERT_EQ(opt.num_groups(), 2u);
  EXPECT_EQ(opt.lr(0), 0.5);
  EXPECT_TRUE(opt.has_own_lr(0));
  EXPECT_FALSE(opt.has_own_lr(1));
  EXPECT_EQ(opt.initial_lr(1), 0.01);
  EXPECT_EQ(opt.params(1)[0].name(), "weight");
  opt.set_lr(1, 0.02);
  EXPECT_EQ(opt.lr(1), 0.02);
  EXPECT_EQ(opt.initial_lr(1), 0.01);
  opt.set_lr(0.03);
  EXPECT_EQ(opt.lr(0), 0.03);
  EXPECT_EQ(opt.lr(1), 0.03);
  const char* fn = "tessera::optim::AdamW::set_lr";
  TESSERA_EXPECT_THROW_MSG(opt.set_lr(2, 0.1), tessera::ValueError, fn, "'group'", "2",
                           "2 parameter groups");
  TESSERA_EXPECT_THROW_MSG(opt.set_lr(0, -0.1), tessera::ValueError, fn, "'lr'", "-0.1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(opt.set_lr(std::numeric_limits<double>::quiet_NaN()),
                           tessera::ValueError, fn, "'lr'", "nan");
  TESSERA_EXPECT_THROW_MSG(opt.lr(5), tessera::ValueError, "tessera::optim::AdamW::lr", "'group'",
                           "5");
  TESSERA_EXPECT_THROW_MSG(opt.state(0, 7), tessera::ValueError, "tessera::optim::AdamW::state",
                           "'index'", "7", "1 parameters");
  EXPECT_EQ(opt.find_state("nope"), nullptr);
  ASSERT_NE(opt.find_state("bias"), nullptr);
  EXPECT_FALSE(opt.find_state("bias")->initialized);
}

TYPED_TEST(OptimizerTest, RejectsBadGroups) {
  using T = TypeParam;
  auto& m = this->model;
  const char* fn = "tessera::optim::Adam";
  using Groups = std::vector<ParamGroup<T>>;
  TESSERA_EXPECT_THROW_MSG(tessera::optim::Adam<T>(Groups{}), tessera::ValueError, fn, "'params'",
                           "empty");
  TESSERA_EXPECT_THROW_MSG(
      tessera::optim::Adam<T>(Groups{{{ParameterRef<T>("w", m.weight)}, -1.0, {}}}),
      tessera::ValueError, fn, "'groups[0].lr'", "-1", ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      tessera::optim::Adam<T>(Groups{{{ParameterRef<T>("w", m.weight)}, {}, {}},
                                     {{ParameterRef<T>("b", m.bias)}, {}, -0.5}}),
      tessera::ValueError, fn, "'groups[1].weight_decay'", "-0.5", ">= 0");
  TESSERA_EXPECT_THROW_MSG(
      tessera::optim::Adam<T>(Groups{{{ParameterRef<T>("w", m.weight)}, {}, {}},
                                     {{ParameterRef<T>("w2", m.weight)}, {}, {}}}),
      tessera::ValueError, fn, "'w2'", "more than once");
  TESSERA_EXPECT_THROW_MSG(tessera::optim::Adam<T>(std::vector<ParameterRef<T>>{
                               ParameterRef<T>("x", m.weight), ParameterRef<T>("x", m.bias)}),
                           tessera::ValueError, fn, "two parameters are named 'x'", "unique");
  // Empty groups are allowed, as in PyTorch.
  EXPECT_NO_THROW(tessera::optim::Adam<T>(Groups{{{}, {}, {}}}));
}

TYPED_TEST(OptimizerTest, StepChecksShapesBeforeChangingAnything) {
  using T = TypeParam;
  auto& m = this->model;
  tessera::optim::Adam<T> opt(tessera::optim::parameters(m));
  fill_grads(m, 1.0);
  opt.step();
  const Tensor<T, 2> w = m.weight.value;
  const Tensor<T, 1> b = m.bias.value;
  // A gradient of another shape.
  m.bias.grad = Tensor<T, 1>(Shape<1>{4});
  TESSERA_EXPECT_THROW_MSG(opt.step(), tessera::ShapeError, "tessera::optim::Adam::step", "'bias'",
                           "gradient of shape [4]", "[3]");
  // A parameter replaced by one of another shape since its state was created.
  m.bias.zero_grad();
  m.weight.value = Tensor<T, 2>(Shape<2>{2, 3});
  m.weight.zero_grad();
  TESSERA_EXPECT_THROW_MSG(opt.step(), tessera::ShapeError, "tessera::optim::Adam::step",
                           "'weight'", "[2, 3]", "created for shape [3, 2]");
  EXPECT_EQ(m.bias.value(0), b(0));  // bias (checked first in no order) untouched
  EXPECT_EQ(opt.state(0, 1).step, 1);
  (void)w;
}

TYPED_TEST(OptimizerTest, StepBumpsParameterVersions) {
  using T = TypeParam;
  auto& m = this->model;
  tessera::optim::SGD<T> opt(tessera::optim::parameters(m), {.lr = 0.1});
  const auto v = m.weight.version;
  opt.step();  // no gradients: nothing changes
  EXPECT_EQ(m.weight.version, v);
  fill_grads(m, 1.0);
  opt.step();
  EXPECT_EQ(m.weight.version, v + 1);
}

TYPED_TEST(OptimizerTest, StateDictRoundTripsExactly) {
  using T = TypeParam;
  auto& m = this->model;
  auto groups = tessera::optim::open_clip_param_groups(m, 0.1);
  groups[0].lr = 1.0 / 3;
  tessera::optim::AdamW<T> opt(groups, {.lr = 0.1, .amsgrad = true});
  fill_grads(m, 0.5);
  opt.step();
  fill_grads(m, -0.25);
  opt.step();
  opt.set_lr(1, 0.07);
  const auto sd = opt.state_dict("optim.");
  EXPECT_EQ(sd.metadata.at("optim.type"), "AdamW");
  EXPECT_EQ(sd.metadata.at("optim.option.amsgrad"), "true");
  EXPECT_EQ(sd.metadata.at("optim.group.1.lr"), "0.07");
  EXPECT_EQ(sd.metadata.at("optim.group.0.params"), "bias");
  EXPECT_EQ(sd.keys(),
            (std::vector<std::string>{"optim.bias.exp_avg", "optim.bias.exp_avg_sq",
                                      "optim.bias.max_exp_avg_sq", "optim.bias.step",
                                      "optim.weight.exp_avg", "optim.weight.exp_avg_sq",
                                      "optim.weight.max_exp_avg_sq", "optim.weight.step"}));
  EXPECT_EQ(sd.at("optim.weight.exp_avg").shape, (std::vector<tessera::Index>{3, 2}));
  EXPECT_EQ(sd.at("optim.weight.step").template values<std::int64_t>()[0], 2);

  TinyModel<T> m2;
  auto groups2 = tessera::optim::open_clip_param_groups(m2, 0.1);
  groups2[0].lr = 0.9;  // restored from the state dict
  tessera::optim::AdamW<T> opt2(groups2, {.lr = 0.1, .amsgrad = true});
  opt2.load_state_dict(sd, "optim.");
  EXPECT_EQ(opt2.lr(0), 1.0 / 3);
  EXPECT_EQ(opt2.initial_lr(0), 1.0 / 3);
  EXPECT_EQ(opt2.lr(1), 0.07);
  for (std::size_t g = 0; g < 2; ++g) {
    const auto& a = opt.state(g, 0);
    const auto& b = opt2.state(g, 0);
    EXPECT_TRUE(b.initialized);
    EXPECT_EQ(a.step, b.step);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(a.buffers, b.buffers);
  }
}

TYPED_TEST(OptimizerTest, LoadStateDictErrorsChangeNothing) {
  using T = TypeParam;
  auto& m = this->model;
  tessera::optim::Adam<T> opt(tessera::optim::parameters(m), {.lr = 0.1});
  fill_grads(m, 1.0);
  opt.step();
  const auto good = opt.state_dict();
  const char* fn = "tessera::optim::Adam::load_state_dict";

  TinyModel<T> m2;
  tessera::optim::Adam<T> fresh(tessera::optim::parameters(m2), {.lr = 0.5});
  auto expect_unchanged = [&] {
    EXPECT_FALSE(fresh.state(0, 0).initialized);
    EXPECT_EQ(fresh.lr(), 0.5);
  };

  tessera::optim::SGD<T> sgd(tessera::optim::parameters(m2), {.lr = 0.1});
  TESSERA_EXPECT_THROW_MSG(sgd.load_state_dict(good), tessera::ValueError,
                           "tessera::optim::SGD::load_state_dict", "written by Adam", "not by SGD");

  tessera::optim::Adam<T> amsgrad(tessera::optim::parameters(m2), {.amsgrad = true});
  TESSERA_EXPECT_THROW_MSG(amsgrad.load_state_dict(good), tessera::ValueError, fn, "'amsgrad'",
                           "false in the state dict", "true in this optimizer");

  auto bad = good;
  bad.metadata.erase("type");
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn, "'type'",
                           "missing");
  bad = good;
  bad.metadata["groups"] = "2";
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn,
                           "2 parameter groups", "this optimizer 1");
  bad = good;
  bad.metadata["group.0.params"] = "weight, other";
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn, "group 0",
                           "[weight, other]", "[weight, bias]");
  bad = good;
  bad.metadata["group.0.lr"] = "fast";
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn, "'group.0.lr'",
                           "'fast'", "number");
  bad = good;
  bad.metadata["group.0.lr"] = "nan";  // read, then refused as the constructor refuses it
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn, "'group.0.lr'",
                           "nan", "finite value >= 0");
  bad = good;
  bad.metadata["group.0.weight_decay"] = "-5";
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn,
                           "'group.0.weight_decay'", "-5", ">= 0");
  bad = good;
  bad.erase("bias.step");
  bad.insert("bias.step", Tensor<std::int64_t, 0>(Shape<0>{}));  // 0: Adam would divide by zero
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn, "'bias.step'",
                           "is 0", ">= 1");
  bad = good;
  bad.erase("bias.exp_avg_sq");
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn,
                           "'bias.exp_avg_sq' is missing");
  bad = good;
  bad.erase("bias.exp_avg");
  bad.insert("bias.exp_avg", Tensor<T, 1>(Shape<1>{5}));
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ShapeError, fn, "'bias.exp_avg'",
                           "[5]", "[3]");
  bad = good;
  bad.erase("bias.step");
  bad.insert("bias.step", Tensor<T, 1>(Shape<1>{1}));
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn, "'bias.step'",
                           "I64 scalar");
  bad = good;
  bad.insert("other.exp_avg", Tensor<T, 1>(Shape<1>{1}));
  TESSERA_EXPECT_THROW_MSG(fresh.load_state_dict(bad), tessera::ValueError, fn,
                           "unexpected tensors", "'other.exp_avg'");
  expect_unchanged();
  fresh.load_state_dict(good);
  EXPECT_EQ(fresh.lr(), 0.1);
  EXPECT_TRUE(fresh.state(0, 0).initialized);
}

}  // namespace optimizer_test
