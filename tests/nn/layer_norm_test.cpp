#include "tessera/nn/layer_norm.hpp"

#include <gtest/gtest.h>

#include "fixture.hpp"
#include "test_util.hpp"

namespace layer_norm_test {

using tessera::Index;
using tessera::Tensor;
using tessera::nn::LayerNorm;

template <class T>
class LayerNormModuleTest : public ::testing::Test {};
TYPED_TEST_SUITE(LayerNormModuleTest, tessera::test::Scalars);

TYPED_TEST(LayerNormModuleTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("layer_norm_");
  ASSERT_GE(names.size(), 2u) << "PyTorch fixtures for LayerNorm are missing";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    LayerNorm<T> ln({.normalized_shape = fx.options.at("normalized_shape").get<Index>(),
                     .eps = fx.options.at("eps").get<double>(),
                     .elementwise_affine = fx.options.value("elementwise_affine", true),
                     .bias = fx.options.value("bias", true)});
    ln.load_state_dict(fx.dict, "module.", /*strict=*/false);
    tessera::test::expect_tensor_near(ln.forward(fx.input<T, 3>("input")),
                                      fx.expected<T, 3>("output"), tessera::test::parity_tol<T>(),
                                      name);
  }
}

TYPED_TEST(LayerNormModuleTest, ParametersFollowOptions) {
  using T = TypeParam;
  EXPECT_EQ(LayerNorm<T>({.normalized_shape = 4}).state_dict().keys(),
            (std::vector<std::string>{"bias", "weight"}));
  EXPECT_EQ(LayerNorm<T>({.normalized_shape = 4, .bias = false}).state_dict().keys(),
            std::vector<std::string>{"weight"});
  EXPECT_TRUE(
      LayerNorm<T>({.normalized_shape = 4, .elementwise_affine = false}).state_dict().empty());
  // Without affine parameters the output is the plain normalisation.
  LayerNorm<T> plain({.normalized_shape = 3, .elementwise_affine = false});
  const Tensor<T, 2> x{{1, 2, 3}};
  const auto y = plain.forward(x);
  EXPECT_NEAR(y(0, 0), T(-1.224744871391589) * std::sqrt(T(2) / 3 / (T(2) / 3 + T(1e-5))), 1e-5);
  EXPECT_NEAR(y(0, 1), T(0), 1e-6);
}

TYPED_TEST(LayerNormModuleTest, ErrorsNameTheProblem) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(LayerNorm<T>({.normalized_shape = 4, .eps = 0}), tessera::ValueError,
                           "tessera::nn::LayerNorm", "eps is 0");
  TESSERA_EXPECT_THROW_MSG(LayerNorm<T>({.normalized_shape = -2}), tessera::ValueError,
                           "normalized_shape is -2");
  LayerNorm<T> ln({.normalized_shape = 4});
  TESSERA_EXPECT_THROW_MSG(ln.forward(Tensor<T, 2>(2, 5)), tessera::ShapeError,
                           "tessera::nn::LayerNorm::forward", "[2, 5]", "last dimension of 4");
}

}  // namespace layer_norm_test
