#include "tessera/nn/transformer_encoder.hpp"

#include <gtest/gtest.h>

#include "transformer_test_util.hpp"

namespace {

using tessera::Tensor;
using tessera::nn::TransformerEncoder;

template <class T>
class TransformerEncoderTest : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerEncoderTest, tessera::test::Scalars);

TYPED_TEST(TransformerEncoderTest, MatchesPyTorchFixtures) {
  using T = TypeParam;
  const auto names = tessera::test::fixtures_with_prefix("encoder_");
  std::size_t stacks = 0;
  for (const auto& name : names) {
    if (name.rfind("encoder_layer_", 0) == 0) continue;
    ++stacks;
    SCOPED_TRACE(name);
    const tessera::test::Fixture fx(name);
    TransformerEncoder<T> enc({.layer = tessera::test::layer_options_from(fx.options.at("layer")),
                               .num_layers = fx.options.at("num_layers").get<tessera::Index>(),
                               .final_norm = fx.options.at("final_norm").get<bool>()});
    tessera::io::StateDict module_only;
    for (const auto& [key, st] : fx.dict)
      if (key.rfind("module.", 0) == 0) module_only.insert(key, st);
    enc.load_state_dict(module_only, "module.");  // strict: exactly PyTorch's keys
    tessera::test::FixtureMasks<T> masks;
    const auto out =
        enc.forward(fx.input<T, 3>("src"), tessera::test::encoder_forward_from(fx, masks));
    tessera::test::expect_tensor_near(out, fx.expected<T, 3>("output"),
                                      tessera::test::parity_tol<T>(), name);
  }
  EXPECT_GE(stacks, 2u) << "PyTorch fixtures for TransformerEncoder are missing";
}

TYPED_TEST(TransformerEncoderTest, RejectsZeroLayers) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG(
      TransformerEncoder<T>({.layer = {.d_model = 8, .nhead = 2}, .num_layers = 0}),
      tessera::ValueError, "tessera::nn::TransformerEncoder", "num_layers is 0");
}

}  // namespace
