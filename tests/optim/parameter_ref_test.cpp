#include "tessera/optim/parameter_ref.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/optim/sgd.hpp"
#include "test_util.hpp"

namespace parameter_ref_test {

using tessera::Index;
using tessera::Shape;
using tessera::nn::Parameter;
using tessera::optim::ParameterRef;

template <class T>
struct TinyModel : tessera::nn::Module<TinyModel<T>> {
  Parameter<T, 2> weight{Shape<2>{4, 6}};
  Parameter<T, 1> bias{Shape<1>{4}};
  Parameter<T, 0> scale{Shape<0>{}};
  Parameter<T, 3> kernel{Shape<3>{2, 1, 3}};
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    f(prefix + "bias", self.bias);
    f(prefix + "scale", self.scale);
    f(prefix + "conv.kernel", self.kernel);
  }
};

template <class T>
class ParameterRefTest : public ::testing::Test {};
TYPED_TEST_SUITE(ParameterRefTest, tessera::test::Scalars);

TYPED_TEST(ParameterRefTest, ViewsValueAndGradientOfAnyRank) {
  using T = TypeParam;
  Parameter<T, 3> p(Shape<3>{2, 3, 4});
  p.value.setRandom(7);
  ParameterRef<T> ref("blocks.0.weight", p);
  EXPECT_EQ(ref.name(), "blocks.0.weight");
  EXPECT_EQ(ref.rank(), 3);
  EXPECT_EQ(std::vector<Index>(ref.shape().begin(), ref.shape().end()),
            (std::vector<Index>{2, 3, 4}));
  EXPECT_EQ(ref.size(), 24);
  ASSERT_EQ(ref.value().size(), 24u);
  EXPECT_EQ(ref.value().data(), p.value.data());
  ref.value()[5] = T(2.5);
  EXPECT_EQ(p.value(0, 1, 1), T(2.5));
  EXPECT_EQ(ref.address(), &p);

  // No gradient until zero_grad (PyTorch: p.grad is None).
  EXPECT_FALSE(ref.has_grad());
  EXPECT_TRUE(ref.grad().empty());
  EXPECT_FALSE(ref.grad_mismatched());
  ref.zero_grad();
  EXPECT_TRUE(ref.has_grad());
  ASSERT_EQ(ref.grad().size(), 24u);
  EXPECT_EQ(ref.grad().data(), p.grad.data());
  for (T g : ref.grad()) EXPECT_EQ(g, T(0));
  ref.grad()[3] = T(1);
  EXPECT_EQ(p.grad(0, 0, 3), T(1));

  // A gradient of another shape is reported, not taken for the parameter's.
  p.grad = tessera::Tensor<T, 3>(Shape<3>{2, 3, 5});
  EXPECT_FALSE(ref.has_grad());
  EXPECT_TRUE(ref.grad_mismatched());
  EXPECT_EQ(std::vector<Index>(ref.grad_shape().begin(), ref.grad_shape().end()),
            (std::vector<Index>{2, 3, 5}));

  const auto v = p.version;
  ref.bump_version();
  EXPECT_EQ(p.version, v + 1);
}

TYPED_TEST(ParameterRefTest, ScalarParameter) {
  using T = TypeParam;
  Parameter<T, 0> p(Shape<0>{});
  ParameterRef<T> ref("logit_scale", p);
  EXPECT_EQ(ref.rank(), 0);
  EXPECT_TRUE(ref.shape().empty());
  EXPECT_EQ(ref.size(), 1);
  ref.value()[0] = T(4.6);
  EXPECT_EQ(p.value(), T(4.6));
  ref.zero_grad();
  EXPECT_TRUE(ref.has_grad());
  EXPECT_EQ(ref.grad().size(), 1u);
}

TYPED_TEST(ParameterRefTest, ParametersOfAModuleInVisitingOrderWithNames) {
  using T = TypeParam;
  TinyModel<T> m;
  auto params = tessera::optim::parameters(m);  // T deduced from TinyModel<T>
  static_assert(std::is_same_v<decltype(params), std::vector<ParameterRef<T>>>);
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].name(), "weight");
  EXPECT_EQ(params[1].name(), "bias");
  EXPECT_EQ(params[2].name(), "scale");
  EXPECT_EQ(params[3].name(), "conv.kernel");
  EXPECT_EQ(params[0].address(), &m.weight);
  EXPECT_EQ(params[3].rank(), 3);
  EXPECT_EQ(params[2].rank(), 0);

  const auto prefixed = tessera::optim::parameters<T>(m, "model.");
  ASSERT_EQ(prefixed.size(), 4u);
  EXPECT_EQ(prefixed[1].name(), "model.bias");
  EXPECT_EQ(prefixed[3].name(), "model.conv.kernel");

  // Module::zero_grad and the references agree.
  m.zero_grad();
  for (const auto& p : params) EXPECT_TRUE(p.has_grad()) << p.name();
}

TYPED_TEST(ParameterRefTest, WorksOnNnModulesAndKeepsPackedWeightsFresh) {
  using T = TypeParam;
  tessera::nn::Linear<T> lin({.in_features = 3, .out_features = 2, .seed = 5});
  auto params = tessera::optim::parameters(lin);  // T deduced from nn::Linear<T>
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].name(), "weight");
  EXPECT_EQ(params[1].name(), "bias");
  lin.prepack();
  tessera::Tensor<T, 2> x(Shape<2>{1, 3});
  x.setConstant(1);
  const T before = lin.forward(x)(0, 0);
  tessera::optim::SGD<T> opt(params, {.lr = 0.5});
  lin.zero_grad();
  lin.bias.grad.setConstant(1);    // moves bias[0] by -0.5
  lin.weight.grad.setConstant(1);  // moves each weight by -0.5: output -1.5 more
  opt.step();
  // The step bumped the versions, so the packed copy made before is not used.
  EXPECT_NEAR(double(lin.forward(x)(0, 0)), double(before) - 2.0, 1e-5);
}

}  // namespace parameter_ref_test
