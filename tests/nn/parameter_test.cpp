// Tests for tessera/nn/parameter.hpp and the loading in nn/module.hpp: nn::SkipInit scopes, and
// load_state_dict consuming a state dict it is given as an rvalue.
#include "tessera/nn/parameter.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tessera/nn/linear.hpp"
#include "tessera/nn/transformer_encoder.hpp"
#include "test_util.hpp"

namespace parameter_test {

using tessera::Index;
using tessera::Tensor;
namespace nn = tessera::nn;

template <class T>
class ParameterTest : public ::testing::Test {};
TYPED_TEST_SUITE(ParameterTest, tessera::test::Scalars);

TEST(SkipInit, ScopesNestAndRestore) {
  EXPECT_FALSE(tessera::detail::skip_init_flag());
  {
    nn::SkipInit outer;
    EXPECT_TRUE(tessera::detail::skip_init_flag());
    {
      nn::SkipInit inner;
      EXPECT_TRUE(tessera::detail::skip_init_flag());
    }
    EXPECT_TRUE(tessera::detail::skip_init_flag());
  }
  EXPECT_FALSE(tessera::detail::skip_init_flag());
}

// A module built in a SkipInit scope and then loaded strictly equals one built normally and
// loaded the same way; outside the scope construction draws the same weights as before.
TYPED_TEST(ParameterTest, SkippedInitialisationIsOverwrittenByAStrictLoad) {
  using T = TypeParam;
  const nn::TransformerEncoderOptions o{
      .layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16, .norm_first = true, .seed = 3},
      .num_layers = 2};
  const nn::TransformerEncoder<T> source(
      {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16, .norm_first = true, .seed = 9},
       .num_layers = 2});
  nn::TransformerEncoder<T> skipped = [&] {
    nn::SkipInit skip;
    return nn::TransformerEncoder<T>(o);
  }();
  skipped.load_state_dict(source.state_dict());
  nn::TransformerEncoder<T> drawn(o);
  drawn.load_state_dict(source.state_dict());
  Tensor<T, 3> x(2, 3, 8);
  x.setRandom(4);
  EXPECT_TRUE(tessera::test::same_bits(skipped.forward(x), drawn.forward(x)));
  // Outside any scope the seeds still decide the weights.
  const nn::Linear<T> a({.in_features = 4, .out_features = 3, .seed = 5});
  const nn::Linear<T> b({.in_features = 4, .out_features = 3, .seed = 5});
  EXPECT_TRUE(tessera::test::same_bits(a.weight.value, b.weight.value));
  EXPECT_NE(a.weight.value(0, 0), T(0));
}

TYPED_TEST(ParameterTest, LoadingFromAnRvalueReleasesEachTensor) {
  using T = TypeParam;
  const nn::Linear<T> source({.in_features = 4, .out_features = 3, .seed = 1});
  tessera::io::StateDict dict = source.state_dict("proj.");
  dict.insert("other.weight", Tensor<T, 1>(2));  // outside the prefix: not the module's
  nn::Linear<T> target({.in_features = 4, .out_features = 3, .seed = 2});
  target.load_state_dict(std::move(dict), "proj.", /*strict=*/true);
  EXPECT_TRUE(tessera::test::same_bits(target.weight.value, source.weight.value));
  EXPECT_TRUE(tessera::test::same_bits(target.bias.value, source.bias.value));
  // NOLINTNEXTLINE(bugprone-use-after-move): load_state_dict leaves what it did not use
  EXPECT_EQ(dict.keys(), std::vector<std::string>{"other.weight"});
}

TYPED_TEST(ParameterTest, AFailedLoadFromAnRvalueKeepsEveryTensor) {
  using T = TypeParam;
  tessera::io::StateDict dict;
  dict.insert("weight", Tensor<T, 2>(3, 4));
  dict.insert("bias", Tensor<T, 1>(5));  // misshapen
  nn::Linear<T> target({.in_features = 4, .out_features = 3, .seed = 2});
  const Tensor<T, 2> before = target.weight.value;
  TESSERA_EXPECT_THROW_MSG(target.load_state_dict(std::move(dict)), tessera::ShapeError,
                           "tessera::nn::Module::load_state_dict", "'bias'", "[5]", "[3]");
  EXPECT_EQ(dict.size(), 2u);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(tessera::test::same_bits(target.weight.value, before));
}

}  // namespace parameter_test
