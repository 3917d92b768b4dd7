// Tests for tessera/models/vit.hpp: torchvision's own VisionTransformer class (reduced size,
// random weights; tests/fixtures/make_model_fixtures.py) loads from its unchanged state dict and
// gives its logits; a full-size vit_b_16 state dict, built here under torchvision's names with
// the shapes torchvision lists, loads with no renaming; wrong presets and layouts are errors.
#include "tessera/models/vit.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "models/models_test_util.hpp"
#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace vit_test {

using tessera::Index;
using tessera::Tensor;
namespace models = tessera::models;
namespace io = tessera::io;

std::string fixture_path(const std::string& name) { return tessera::test::model_fixture(name); }

models::VisionTransformerOptions small_options(const io::StateDict& io_dict) {
  const auto v = nlohmann::json::parse(io_dict.metadata.at("options"));
  EXPECT_EQ(v.at("activation"), "gelu");
  return {.image_size = v.at("image_size"),
          .patch_size = v.at("patch_size"),
          .width = v.at("width"),
          .layers = v.at("layers"),
          .heads = v.at("heads"),
          .mlp_dim = v.at("mlp_dim"),
          .activation = tessera::Activation::gelu,
          .layer_norm_eps = v.at("layer_norm_eps"),
          .patch_bias = v.at("patch_bias"),
          .ln_pre = v.at("ln_pre"),
          .output_dim = v.at("output_dim"),
          .head_bias = v.at("head_bias")};
}

template <class T>
class VitTest : public ::testing::Test {};
TYPED_TEST_SUITE(VitTest, tessera::test::Scalars);

TYPED_TEST(VitTest, TorchvisionsVisionTransformerLoadsUnchangedAndMatches) {
  using T = TypeParam;
  constexpr bool is_float = std::is_same_v<T, float>;
  const std::string tag = is_float ? "f32" : "f64";
  const io::StateDict io_dict =
      io::load_safetensors(fixture_path("torchvision_vit_small.io.safetensors"));
  const auto vit =
      models::load_vit<T>(io::load_safetensors(fixture_path("torchvision_vit_small.safetensors")),
                          small_options(io_dict), "small");
  const Tensor<T, 2> logits = vit.forward(io_dict.get<T, 4>("input.images"));
  const auto want = io_dict.get<T, 2>("expected." + tag + ".logits");
  ASSERT_EQ(logits.shape(), want.shape());
  double scale = 1, err = 0;
  for (Index i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(double(want.data()[i])));
    err = std::max(err, std::fabs(double(logits.data()[i]) - double(want.data()[i])));
  }
  EXPECT_LE(err, (is_float ? 1e-5 : 1e-11) * scale) << "max error " << err << ", scale " << scale;
}

// Packed weights give the reference's logits too; a load after packing drops the packed copies.
TEST(Vit, PrepackedMatchesTheReference) {
  const io::StateDict io_dict =
      io::load_safetensors(fixture_path("torchvision_vit_small.io.safetensors"));
  auto vit = models::load_vit<float>(
      io::load_safetensors(fixture_path("torchvision_vit_small.safetensors")),
      small_options(io_dict), "small");
  const auto images = io_dict.get<float, 4>("input.images");
  const auto plain = vit.forward(images);
  vit.prepack();
  EXPECT_TRUE(vit.head.is_prepacked());
  const auto packed = vit.forward(images);
  const auto want = io_dict.get<float, 2>("expected.f32.logits");
  for (Index i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(packed.data()[i], want.data()[i], 1e-5);
    EXPECT_NEAR(packed.data()[i], plain.data()[i], 1e-5);
  }
  vit.load_state_dict(vit.state_dict());
  EXPECT_FALSE(vit.head.is_prepacked());
}

// torchvision's vit_b_16 state dict (152 tensors, 86.6M parameters), every key and shape from
// torchvision 0.14's own listing, zero-valued: loads into the "vit_b_16" preset as it is.
io::StateDict vit_b_16_state_dict() {
  std::ifstream in(fixture_path("torchvision_vit_b_16_shapes.json"));
  const auto listing = nlohmann::json::parse(in).at("keys");
  io::StateDict sd;
  for (const auto& entry : listing) {
    io::StoredTensor t;
    t.dtype = io::DType::F32;
    t.shape = entry.at(1).get<std::vector<Index>>();
    Index n = 1;
    for (Index d : t.shape) n *= d;
    t.bytes.resize(static_cast<std::size_t>(n) * 4);
    sd.insert(entry.at(0).get<std::string>(), std::move(t));
  }
  return sd;
}

TEST(Vit, FullSizeVitB16LoadsWithNoRenaming) {
  io::StateDict sd = vit_b_16_state_dict();
  ASSERT_EQ(sd.size(), 152u);
  const auto vit = models::load_vit<float>(std::move(sd), "vit_b_16");
  EXPECT_EQ(vit.num_parameters(), 86567656);
  EXPECT_EQ(vit.options().layer_norm_eps, 1e-6);
  EXPECT_EQ(vit.num_tokens(), 197);
  EXPECT_EQ(vit.output_features(), 1000);
}

TEST(Vit, APresetThatContradictsTheCheckpointNamesBothValues) {
  TESSERA_EXPECT_THROW_MSG(models::load_vit<float>(vit_b_16_state_dict(), "vit_b_32"),
                           tessera::ValueError, "tessera::models::load_vit", "preset 'vit_b_32'",
                           "patch_size: the preset says 32",
                           "'conv_proj.weight' [768, 3, 16, 16] says 16");
  TESSERA_EXPECT_THROW_MSG(models::load_vit<float>(vit_b_16_state_dict(), "vit_l_16"),
                           tessera::ValueError, "width: the preset says 1024",
                           "layers: the preset says 24",
                           "'encoder.layers.encoder_layer_11.ln_1.weight' [768] says 12");
  io::StateDict no_head = vit_b_16_state_dict();
  ASSERT_TRUE(no_head.erase("heads.head.bias"));
  TESSERA_EXPECT_THROW_MSG(models::load_vit<float>(std::move(no_head), "vit_b_16"),
                           tessera::ValueError,
                           "head_bias: the preset says true, the checkpoint has no "
                           "'heads.head.bias'");
}

TEST(Vit, AnotherLayoutIsListedNotLoaded) {
  TESSERA_EXPECT_THROW_MSG(
      models::load_vit<float>(io::load_safetensors(fixture_path("clip_openai_gelu.safetensors")),
                              "vit_b_16"),
      tessera::ValueError, "tessera::models::load_vit",
      "none of the layouts 'torchvision_vit'; closest is torchvision_vit, which has no rule for 62 "
      "of the 62 keys",
      "(62 in all)", "the keys are in the openai_clip layout", "load it with models::load_clip");
  TESSERA_EXPECT_THROW_MSG(models::vit_preset("vit_b_8"), tessera::ValueError,
                           "no ViT preset named 'vit_b_8'", "'vit_h_14'");
}

TEST(Vit, OlderTorchvisionMlpNamesLoadToo) {
  io::StateDict sd = io::load_safetensors(fixture_path("torchvision_vit_small.safetensors"));
  for (int i = 0; i < 2; ++i) {
    const std::string p = "encoder.layers.encoder_layer_" + std::to_string(i) + ".mlp.";
    sd.rename(p + "0.weight", p + "linear_1.weight");
    sd.rename(p + "3.bias", p + "linear_2.bias");
  }
  const io::StateDict io_dict =
      io::load_safetensors(fixture_path("torchvision_vit_small.io.safetensors"));
  const auto vit = models::load_vit<double>(std::move(sd), small_options(io_dict));
  const auto logits = vit.forward(io_dict.get<double, 4>("input.images"));
  const auto want = io_dict.get<double, 2>("expected.f64.logits");
  for (Index i = 0; i < want.size(); ++i) EXPECT_NEAR(logits.data()[i], want.data()[i], 1e-10);
}

}  // namespace vit_test
