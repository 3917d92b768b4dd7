#include "tessera/nn/linear.hpp"

#include <gtest/gtest.h>

#include "fixture.hpp"
#include "test_util.hpp"

namespace linear_test {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::nn::Linear;

template <class T>
class LinearModuleTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearModuleTest, tessera::test::Scalars);

TYPED_TEST(LinearModuleTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("linear_");
  ASSERT_GE(names.size(), 2u) << "PyTorch fixtures for Linear are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    Linear<T> lin({.in_features = fx.options.at("in_features").get<Index>(),
                   .out_features = fx.options.at("out_features").get<Index>(),
                   .bias = fx.options.at("bias").get<bool>()});
    lin.load_state_dict(fx.dict, "module.", /*strict=*/false);
    tessera::test::expect_tensor_near(lin.forward(fx.input<T, 3>("input")),
                                      fx.expected<T, 3>("output"), tessera::test::parity_tol<T>(),
                                      name);
  }
}

TYPED_TEST(LinearModuleTest, InitialisationBoundsAndParameters) {
  using T = TypeParam;
  Linear<T> lin({.in_features = 16, .out_features = 5, .seed = 3});
  EXPECT_EQ(lin.weight.shape(), (Shape<2>{5, 16}));
  EXPECT_EQ(lin.bias.shape(), (Shape<1>{5}));
  EXPECT_EQ(lin.num_parameters(), 5 * 16 + 5);
  EXPECT_LE(lin.weight.value.as_vector().cwiseAbs().maxCoeff(), T(0.25));
  EXPECT_GT(lin.weight.value.as_vector().cwiseAbs().maxCoeff(), T(0.1));
  Linear<T> same({.in_features = 16, .out_features = 5, .seed = 3});
  EXPECT_EQ(same.weight.value(2, 7), lin.weight.value(2, 7));
  Linear<T> nobias({.in_features = 4, .out_features = 2, .bias = false});
  EXPECT_EQ(nobias.state_dict().keys(), std::vector<std::string>{"weight"});
  EXPECT_FALSE(lin.weight.has_grad());
  lin.zero_grad();
  EXPECT_TRUE(lin.weight.has_grad());
  EXPECT_EQ(lin.weight.grad.as_vector().cwiseAbs().sum(), T(0));
}

TYPED_TEST(LinearModuleTest, ErrorsNameTheProblem) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(Linear<T>({.in_features = -1, .out_features = 2}), tessera::ValueError,
                           "tessera::nn::Linear", "-1");
  Linear<T> lin({.in_features = 4, .out_features = 2});
  TESSERA_EXPECT_THROW_MSG(lin.forward(Tensor<T, 2>(3, 5)), tessera::ShapeError,
                           "tessera::nn::Linear::forward", "argument 'x' has shape [3, 5]",
                           "last dimension of 4 (in_features)");
  tessera::io::StateDict sd;
  sd.insert("weight", Tensor<T, 2>(2, 4));
  TESSERA_EXPECT_THROW_MSG(lin.load_state_dict(sd), tessera::ValueError, "missing keys:", "'bias'");
  sd.insert("extra", Tensor<T, 1>(1));
  sd.insert("bias", Tensor<T, 1>(2));
  TESSERA_EXPECT_THROW_MSG(lin.load_state_dict(sd), tessera::ValueError,
                           "unexpected keys:", "'extra'");
  lin.load_state_dict(sd, "", /*strict=*/false);  // non-strict ignores the extra key
  EXPECT_EQ(lin.weight.value(1, 3), T(0));
}

}  // namespace linear_test
