// Tests for tessera/models/siglip.hpp (with map_head.hpp, the VisionTransformer without a class
// token and with attention pooling, and the hf_siglip naming table): a small SigLIP in Hugging
// Face's SiglipModel layout, written by tests/fixtures/make_model_fixtures.py from a reference
// implementation of transformers' architecture in PyTorch, loads from its folder (config.json
// beside model.safetensors) and gives the reference's image features, text features, logits and
// sigmoid probabilities; presets or configs that contradict the checkpoint, wrong layouts and
// bad configs are errors.
#include "tessera/models/siglip.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "models/models_test_util.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/clip.hpp"
#include "tessera/models/vit.hpp"
#include "test_util.hpp"

namespace siglip_test {

using tessera::Index;
using tessera::Tensor;
namespace models = tessera::models;
namespace io = tessera::io;

std::string fixture_path(const std::string& name) { return tessera::test::model_fixture(name); }

const std::string kWeights = "siglip_hf/model.safetensors";

using tessera::test::expect_near_scaled;

models::SigLIPOptions fixture_options() {
  return models::read_hf_siglip_config(fixture_path("siglip_hf/config.json"));
}
io::StateDict fixture_checkpoint() { return io::load_safetensors(fixture_path(kWeights)); }

template <class T>
class SiglipTest : public ::testing::Test {};
TYPED_TEST_SUITE(SiglipTest, tessera::test::Scalars);

// The folder as save_pretrained writes it: the architecture from config.json, every tensor under
// transformers' names.
TYPED_TEST(SiglipTest, HuggingFaceCheckpointMatchesTheReference) {
  using T = TypeParam;
  constexpr bool is_float = std::is_same_v<T, float>;
  const std::string tag = is_float ? "f32" : "f64";
  // float: 1e-5 of the outputs' magnitude; double: 1e-11.
  const double tol = is_float ? 1e-5 : 1e-11;
  const io::StateDict io_dict = io::load_safetensors(fixture_path("siglip_hf.io.safetensors"));
  const auto m = models::load_siglip<T>(fixture_path(kWeights));
  EXPECT_EQ(m.options().vision.pooling, models::VisionPooling::map);
  EXPECT_FALSE(m.options().vision.class_token);
  EXPECT_EQ(m.visual.num_tokens(), 16);  // a 4 x 4 grid, no class token
  EXPECT_EQ(m.embed_dim(), 64);
  const auto img = m.encode_image(io_dict.get<T, 4>("input.images"));
  const auto txt = m.encode_text(io_dict.get<Index, 2>("input.ids"));
  expect_near_scaled(img, io_dict.get<T, 2>("expected." + tag + ".image_features"), tol,
                     "image_features");
  expect_near_scaled(txt, io_dict.get<T, 2>("expected." + tag + ".text_features"), tol,
                     "text_features");
  expect_near_scaled(m.logits(img, txt), io_dict.get<T, 2>("expected." + tag + ".logits"), tol,
                     "logits");
  const Tensor<T, 2> p = m.probabilities(img, txt);
  expect_near_scaled(p, io_dict.get<T, 2>("expected." + tag + ".probabilities"), tol,
                     "probabilities");
  // Read from the checkpoint: logit_scale log 10, logit_bias -1.
  EXPECT_NEAR(double(m.scale()), 10.0, 1e-5);
  EXPECT_NEAR(double(m.bias()), -1.0, 1e-6);
  // A sigmoid per pair, not a softmax: the first row does not sum to 1.
  double row = 0;
  for (Index j = 0; j < p.dim(1); ++j) row += double(p(0, j));
  EXPECT_GT(std::fabs(row - 1.0), 0.01) << row;
}

// The same tensors through a StateDict and explicit options, and through the preset path with
// options built by hand: one architecture, three ways in.
TEST(Siglip, LoadsFromAStateDictWithOptions) {
  const io::StateDict io_dict = io::load_safetensors(fixture_path("siglip_hf.io.safetensors"));
  const auto m = models::load_siglip<double>(fixture_checkpoint(), fixture_options(), "fixture");
  expect_near_scaled(m.encode_image(io_dict.get<double, 4>("input.images")),
                     io_dict.get<double, 2>("expected.f64.image_features"), 1e-11,
                     "image_features");
  // The options the fixture's metadata records match what config.json gives.
  const auto meta = nlohmann::json::parse(io_dict.metadata.at("options"));
  const auto o = fixture_options();
  EXPECT_EQ(o.vision.width, meta["vision"]["width"].get<Index>());
  EXPECT_EQ(o.vision.mlp_dim, meta["vision"]["mlp_dim"].get<Index>());
  EXPECT_EQ(o.text.context_length, meta["text"]["context_length"].get<Index>());
  EXPECT_EQ(o.text.output_dim, meta["text"]["output_dim"].get<Index>());
  EXPECT_EQ(o.vision.layer_norm_eps, 1e-6);
  EXPECT_EQ(o.vision.activation, tessera::Activation::gelu_tanh);
  EXPECT_FALSE(o.text.causal);
  EXPECT_EQ(o.text.pooling, models::TextPooling::last);
  EXPECT_TRUE(o.text.head_bias);
}

// Each of the SigLIP-specific pieces changes the answer: the causal mask, the pooled position and
// the attention pooling's layernorm are not details a hand port may get wrong silently.
TEST(Siglip, TheTextMaskAndPoolingMatter) {
  const io::StateDict io_dict = io::load_safetensors(fixture_path("siglip_hf.io.safetensors"));
  const auto ids = io_dict.get<Index, 2>("input.ids");
  const auto want = io_dict.get<double, 2>("expected.f64.text_features");
  auto max_diff = [&](const Tensor<double, 2>& got) {
    double err = 0;
    for (Index i = 0; i < want.size(); ++i)
      err = std::max(err, std::fabs(got.data()[i] - want.data()[i]));
    return err;
  };
  models::SigLIPOptions causal = fixture_options();
  causal.text.causal = true;
  EXPECT_GT(max_diff(models::load_siglip<double>(fixture_checkpoint(), causal).encode_text(ids)),
            1e-3);
  models::SigLIPOptions argmax = fixture_options();
  argmax.text.pooling = models::TextPooling::argmax;
  EXPECT_GT(max_diff(models::load_siglip<double>(fixture_checkpoint(), argmax).encode_text(ids)),
            1e-3);
}

TEST(Siglip, PresetHasTheBaseCheckpointsSizes) {
  const auto& o = models::siglip_preset("siglip-base-patch16-224").options;
  EXPECT_EQ(o.vision.image_size, 224);
  EXPECT_EQ(o.vision.patch_size, 16);
  EXPECT_EQ(o.vision.width, 768);
  EXPECT_EQ(o.vision.layers, 12);
  EXPECT_EQ(o.vision.heads, 12);
  EXPECT_EQ(o.vision.mlp_dim, 3072);
  EXPECT_EQ(o.vision.activation, tessera::Activation::gelu_tanh);
  EXPECT_EQ(o.vision.layer_norm_eps, 1e-6);
  EXPECT_TRUE(o.vision.patch_bias);
  EXPECT_FALSE(o.vision.ln_pre);
  EXPECT_FALSE(o.vision.class_token);
  EXPECT_EQ(o.vision.pooling, models::VisionPooling::map);
  EXPECT_EQ(o.vision.output_dim, 0);
  EXPECT_EQ(o.text.vocab_size, 32000);
  EXPECT_EQ(o.text.context_length, 64);
  EXPECT_EQ(o.text.width, 768);
  EXPECT_EQ(o.text.layers, 12);
  EXPECT_EQ(o.text.heads, 12);
  EXPECT_EQ(o.text.mlp_dim, 3072);
  EXPECT_EQ(o.text.activation, tessera::Activation::gelu_tanh);
  EXPECT_EQ(o.text.layer_norm_eps, 1e-6);
  EXPECT_FALSE(o.text.causal);
  EXPECT_EQ(o.text.pooling, models::TextPooling::last);
  EXPECT_EQ(o.text.output_dim, 768);
  EXPECT_TRUE(o.text.head_bias);
  // An empty config.json is transformers' defaults, which are this checkpoint's architecture.
  const auto d = models::siglip_options_from_hf_config(nlohmann::json::object());
  EXPECT_EQ(d.vision.width, o.vision.width);
  EXPECT_EQ(d.vision.patch_size, o.vision.patch_size);
  EXPECT_EQ(d.vision.mlp_dim, o.vision.mlp_dim);
  EXPECT_EQ(d.text.vocab_size, o.text.vocab_size);
  EXPECT_EQ(d.text.context_length, o.text.context_length);
  EXPECT_EQ(d.text.output_dim, o.text.output_dim);
  EXPECT_EQ(d.text.layer_norm_eps, o.text.layer_norm_eps);
  TESSERA_EXPECT_THROW_MSG(models::siglip_preset("siglip-base-patch16-225"), tessera::ValueError,
                           "tessera::models::siglip_preset", "'siglip-base-patch16-225'",
                           "'siglip-base-patch16-224'");
}

// A full-size model built from the preset without drawing weights: its parameters are the names
// and shapes the loader writes (and the sizes check_parameters wants).
TEST(Siglip, ThePresetBuildsWithTheCheckpointsTokenCount) {
  tessera::nn::SkipInit skip;
  const models::SigLIP<float> m(models::siglip_preset("siglip-base-patch16-224").options);
  EXPECT_EQ(m.visual.num_tokens(), 196);  // 14 x 14, no class token
  EXPECT_EQ(m.visual.map_head.probe.value.shape()[0], 768);
  EXPECT_EQ(m.visual.map_head.attention.in_proj_weight.value.shape()[0], 3 * 768);
  EXPECT_EQ(m.visual.map_head.fc1.weight.value.shape()[0], 3072);
  EXPECT_EQ(m.text.head.bias.value.shape()[0], 768);
  EXPECT_EQ(m.embed_dim(), 768);
}

// ---- errors ------------------------------------------------------------------------------------

TEST(Siglip, APresetThatContradictsTheCheckpointNamesBothValues) {
  models::SigLIPOptions o = fixture_options();
  o.vision.patch_size = 16;
  o.text.layers = 3;
  o.vision.class_token = true;
  o.vision.pooling = models::VisionPooling::class_token;
  TESSERA_EXPECT_THROW_MSG(
      models::load_siglip<float>(fixture_checkpoint(), o, "mine"), tessera::ValueError,
      "tessera::models::load_siglip", "preset 'mine'", "vision.patch_size: the preset says 16",
      "'vision_model.embeddings.patch_embedding.weight' [64, 3, 8, 8] says 8",
      "vision.class_token: the preset says true, the checkpoint has no "
      "'visual.patch_embed.class_embedding'",
      "vision.pooling: the preset says class_token, the checkpoint has 'vision_model.head.probe'",
      "text.layers: the preset says 3", "says 2");
  // The full-size preset against the small checkpoint: every size it disagrees on is listed.
  TESSERA_EXPECT_THROW_MSG(
      models::load_siglip<float>(fixture_checkpoint(), "siglip-base-patch16-224"),
      tessera::ValueError, "preset 'siglip-base-patch16-224'", "vision.width: the preset says 768",
      "vision.image_size: the preset says 224", "vision.mlp_dim: the preset says 3072",
      "'vision_model.head.mlp.fc1.weight' [128, 64] says 128",
      "text.vocab_size: the preset says 32000", "text.context_length: the preset says 64",
      "text.output_dim: the preset says 768");
}

TEST(Siglip, TheHeadsSizesAreChecked) {
  // A head whose MLP is narrower than the encoder's: named by the head's own tensor.
  io::StateDict sd = fixture_checkpoint();
  ASSERT_TRUE(sd.erase("vision_model.head.mlp.fc1.weight"));
  sd.insert("vision_model.head.mlp.fc1.weight", Tensor<float, 2>(96, 64));
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(std::move(sd), fixture_options()),
                           tessera::ValueError, "vision.mlp_dim: the preset says 128",
                           "'vision_model.head.mlp.fc1.weight' [96, 64] says 96");
  // A checkpoint without the head, for a preset that pools with one.
  io::StateDict no_head = fixture_checkpoint();
  for (const std::string k :
       {"probe", "attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight",
        "attention.out_proj.bias", "layernorm.weight", "layernorm.bias", "mlp.fc1.weight",
        "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"})
    ASSERT_TRUE(no_head.erase("vision_model.head." + k)) << k;
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(std::move(no_head), fixture_options()),
                           tessera::ValueError,
                           "vision.pooling: the preset says map, the checkpoint has no "
                           "'vision_model.head.probe'");
  // Positions that are not a square grid (no class token: grid^2 exactly).
  io::StateDict pos = fixture_checkpoint();
  ASSERT_TRUE(pos.erase("vision_model.embeddings.position_embedding.weight"));
  pos.insert("vision_model.embeddings.position_embedding.weight", Tensor<float, 2>(17, 64));
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(std::move(pos), fixture_options()),
                           tessera::ValueError,
                           "'vision_model.embeddings.position_embedding.weight'", "[17, 64]",
                           "expected a square number of positions", "no class token");
}

TEST(Siglip, MissingAndExtraTensorsAreErrors) {
  io::StateDict sd = fixture_checkpoint();
  ASSERT_TRUE(sd.erase("logit_bias"));
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(std::move(sd), fixture_options()),
                           tessera::Error, "logit_bias");
  io::StateDict v_missing = fixture_checkpoint();
  ASSERT_TRUE(v_missing.erase("vision_model.head.attention.in_proj_bias"));
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(std::move(v_missing), fixture_options()),
                           tessera::Error, "in_proj_bias");
  // position_ids buffers, which some exports keep, are dropped.
  io::StateDict ids = fixture_checkpoint();
  ids.insert("vision_model.embeddings.position_ids", Tensor<Index, 2>(1, 16));
  ids.insert("text_model.embeddings.position_ids", Tensor<Index, 2>(1, 16));
  EXPECT_NO_THROW((void)models::load_siglip<float>(std::move(ids), fixture_options()));
  // A stray key: not in the layout, listed.
  io::StateDict extra = fixture_checkpoint();
  extra.insert("vision_model.head.extra", Tensor<float, 1>(64));
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(std::move(extra), fixture_options()),
                           tessera::ValueError, "closest is hf_siglip", "1 of the 89 keys",
                           "'vision_model.head.extra'");
}

// A SigLIP checkpoint given to load_clip says to use load_siglip, and the reverse.
TEST(Siglip, ACheckpointForAnotherLoaderSaysWhichOne) {
  TESSERA_EXPECT_THROW_MSG(models::load_clip<float>(fixture_checkpoint(), "ViT-B-32"),
                           tessera::ValueError, "tessera::models::load_clip",
                           "the keys are in the hf_siglip layout",
                           "load it with models::load_siglip");
  TESSERA_EXPECT_THROW_MSG(
      models::load_siglip<float>(io::load_safetensors(fixture_path("clip_hf/model.safetensors")),
                                 fixture_options()),
      tessera::ValueError, "tessera::models::load_siglip", "none of the layouts 'hf_siglip'",
      "the keys are in the hf_clip layout", "load it with models::load_clip");
  TESSERA_EXPECT_THROW_MSG(
      models::load_siglip<float>(io::load_safetensors(fixture_path("clip_openai_gelu.safetensors")),
                                 fixture_options()),
      tessera::ValueError, "the keys are in the openai_clip layout",
      "load it with models::load_clip");
  TESSERA_EXPECT_THROW_MSG(models::load_vit<float>(fixture_checkpoint(), "vit_b_16"),
                           tessera::ValueError, "load it with models::load_siglip");
}

TEST(Siglip, HuggingFaceConfigFields) {
  const auto o = models::siglip_options_from_hf_config(nlohmann::json::parse(R"({
      "model_type": "siglip",
      "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                      "num_hidden_layers": 27, "projection_size": 1152},
      "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "image_size": 384,
                        "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                        "vision_use_head": true}})"));
  EXPECT_EQ(o.vision.width, 1152);
  EXPECT_EQ(o.vision.layers, 27);
  EXPECT_EQ(o.vision.patch_size, 14);
  EXPECT_EQ(o.vision.image_size, 384);
  EXPECT_EQ(o.vision.mlp_dim, 4304);
  EXPECT_EQ(o.text.width, 1152);
  EXPECT_EQ(o.text.heads, 16);
  EXPECT_EQ(o.text.output_dim, 1152);
  EXPECT_EQ(o.text.vocab_size, 32000);   // default
  EXPECT_EQ(o.text.context_length, 64);  // default
  const models::SigLIP<float> unused = [&] {
    tessera::nn::SkipInit skip;
    return models::SigLIP<float>(o);
  }();
  EXPECT_EQ(unused.embed_dim(), 1152);
  // 384 / 14: a 27 x 27 grid, the last 6 rows and columns of pixels dropped as Conv2d does.
  EXPECT_TRUE(o.vision.drop_partial_patches);
  EXPECT_EQ(unused.visual.num_tokens(), 729);
}

// drop_partial_patches: an image up to a patch larger than the grid loads (the checkpoint's 4 x 4
// grid of 8-pixel patches takes 32 to 39 pixels), one a patch larger does not; without the option
// the image must be a multiple of the patch.
TEST(Siglip, ImagesThePatchDoesNotDivide) {
  models::SigLIPOptions o = fixture_options();
  o.vision.image_size = 39;
  const auto m = models::load_siglip<float>(fixture_checkpoint(), o);
  EXPECT_EQ(m.visual.num_tokens(), 16);
  Tensor<float, 4> images(1, 3, 39, 39);
  EXPECT_EQ(m.encode_image(images).shape(), (tessera::Shape<2>{1, 64}));
  o.vision.image_size = 40;
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(fixture_checkpoint(), o), tessera::ValueError,
                           "vision.image_size: the preset says 40",
                           "'vision_model.embeddings.position_embedding.weight' [16, 64] says 32");
  o.vision.image_size = 39;
  o.vision.drop_partial_patches = false;
  TESSERA_EXPECT_THROW_MSG(models::VisionTransformer<float>{o.vision}, tessera::ValueError,
                           "image_size is 39 and patch_size 8", "drop_partial_patches");
}

TEST(Siglip, HuggingFaceConfigErrors) {
  TESSERA_EXPECT_THROW_MSG(models::siglip_options_from_hf_config(nlohmann::json::parse(
                               R"({"vision_config": {"hidden_act": "relu"}})")),
                           tessera::ValueError, "tessera::models::siglip_options_from_hf_config",
                           "'vision_config.hidden_act' is \"relu\"", "gelu_pytorch_tanh");
  TESSERA_EXPECT_THROW_MSG(models::siglip_options_from_hf_config(
                               nlohmann::json::parse(R"({"text_config": {"hidden_size": "768"}})")),
                           tessera::ValueError, "'text_config.hidden_size' is \"768\"",
                           "expected a number");
  TESSERA_EXPECT_THROW_MSG(
      models::siglip_options_from_hf_config(
          nlohmann::json::parse(R"({"vision_config": {"vision_use_head": 1}})")),
      tessera::ValueError, "'vision_config.vision_use_head' is 1", "expected a boolean");
  TESSERA_EXPECT_THROW_MSG(models::siglip_options_from_hf_config(nlohmann::json::parse(
                               R"({"vision_config": {"vision_use_head": false}})")),
                           tessera::ValueError, "'vision_config.vision_use_head' is false");
  // A CLIP's config.json is not a SigLIP's.
  TESSERA_EXPECT_THROW_MSG(models::read_hf_siglip_config(fixture_path("clip_hf/config.json")),
                           tessera::ValueError, "tessera::models::siglip_options_from_hf_config",
                           "'model_type' is \"clip\"", "\"siglip\"");
  TESSERA_EXPECT_THROW_MSG(models::siglip_options_from_hf_config(nlohmann::json::array()),
                           tessera::ValueError, "the config is array, expected an object");
  // projection_size differing from the vision width: the two embeddings could not be compared.
  TESSERA_EXPECT_THROW_MSG(models::SigLIP<float>(models::siglip_options_from_hf_config(
                               nlohmann::json::parse(R"({"text_config": {"projection_size": 512},
                                   "vision_config": {"hidden_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 4, "intermediate_size": 64,
                                   "image_size": 32}})"))),
                           tessera::ValueError, "tessera::models::SigLIP", "64", "512");
  tessera::test::TempDir dir;
  TESSERA_EXPECT_THROW_MSG(models::read_hf_siglip_config(dir / "config.json"), tessera::IoError,
                           "tessera::models::read_hf_siglip_config", "cannot open", "config.json");
  { std::ofstream(dir / "config.json") << "{\"text_config\": "; }
  TESSERA_EXPECT_THROW_MSG(models::read_hf_siglip_config(dir / "config.json"), tessera::IoError,
                           "is not valid JSON");
  { std::ofstream(dir / "config.json") << "[1, 2]"; }
  TESSERA_EXPECT_THROW_MSG(models::read_hf_siglip_config(dir / "config.json"), tessera::IoError,
                           "is not a JSON object");
  std::filesystem::remove(dir / "config.json");
  TESSERA_EXPECT_THROW_MSG(models::load_siglip<float>(dir / "model.safetensors"),
                           tessera::ValueError, "tessera::models::load_siglip",
                           "no preset given and no config.json", "'siglip-base-patch16-224'");
  TESSERA_EXPECT_THROW_MSG(
      models::load_siglip<float>(fixture_path("no_such.safetensors"), "siglip-base-patch16-224"),
      tessera::IoError, "no_such.safetensors");
}

TEST(Siglip, BadInputsAreErrors) {
  const auto m = models::load_siglip<float>(fixture_path(kWeights));
  Tensor<Index, 2> too_long(1, 17);
  TESSERA_EXPECT_THROW_MSG(m.encode_text(too_long), tessera::ShapeError,
                           "tessera::models::TextTransformer::forward", "[1, 17]",
                           "context_length = 16");
  Tensor<float, 4> wrong_size(1, 3, 16, 16);
  EXPECT_THROW(m.encode_image(wrong_size), tessera::ShapeError);
  Tensor<float, 2> img(2, 64), txt(3, 32);
  TESSERA_EXPECT_THROW_MSG(m.logits(img, txt), tessera::ShapeError,
                           "tessera::models::SigLIP::logits", "text_features", "[3, 32]",
                           "[3, 64]");
  TESSERA_EXPECT_THROW_MSG(m.probabilities(txt, img), tessera::ShapeError, "image_features");
}

// ---- the towers' new options
// ---------------------------------------------------------------------

TEST(Siglip, VisionOptionsAreChecked) {
  models::VisionTransformerOptions v = fixture_options().vision;
  v.pooling = models::VisionPooling::class_token;  // but class_token is false
  TESSERA_EXPECT_THROW_MSG(models::VisionTransformer<float>{v}, tessera::ValueError,
                           "tessera::models::VisionTransformer", "pooling is class_token",
                           "class_token is false");
  v = fixture_options().vision;
  v.pooling = static_cast<models::VisionPooling>(7);
  TESSERA_EXPECT_THROW_MSG(models::VisionTransformer<float>{v}, tessera::ValueError,
                           "VisionPooling(7)");
  TESSERA_EXPECT_THROW_MSG(models::MAPHead<float>({.width = 64, .heads = 5}), tessera::ValueError,
                           "tessera::models::MAPHead", "width is 64 and heads 5");
  TESSERA_EXPECT_THROW_MSG(models::MAPHead<float>({.width = 64, .heads = 4, .mlp_dim = 0}),
                           tessera::ValueError, "mlp_dim is 0");
}

// The MAP head on its own: one token attended by the probe gives that token's value projection,
// so the head's output is closed-form; wrong input shapes are named.
TEST(Siglip, MapHeadOfOneTokenIsItsValueThroughTheMlp) {
  const models::MAPHead<double> head({.width = 8, .heads = 2, .mlp_dim = 16, .seed = 5});
  Tensor<double, 3> tokens(2, 1, 8);
  tokens.setRandom(11, -1.0, 1.0);
  const Tensor<double, 2> got = head.forward(tokens);
  // x = out_proj(W_v t + b_v) (softmax over one key is 1); out = x + fc2(gelu_tanh(fc1(ln(x)))).
  const auto& a = head.attention;
  for (Index b = 0; b < 2; ++b) {
    Eigen::VectorXd t = Eigen::Map<const Eigen::VectorXd>(&tokens(b, 0, 0), 8);
    Eigen::MatrixXd w = a.in_proj_weight.value.as_matrix().middleRows(16, 8);
    Eigen::VectorXd bv = Eigen::Map<const Eigen::VectorXd>(a.in_proj_bias.value.data() + 16, 8);
    Eigen::VectorXd v = w * t + bv;
    Eigen::VectorXd x = a.out_proj.weight.value.as_matrix() * v +
                        Eigen::Map<const Eigen::VectorXd>(a.out_proj.bias.value.data(), 8);
    const double mean = x.mean();
    const double var = (x.array() - mean).square().mean();
    Eigen::VectorXd ln = (x.array() - mean) / std::sqrt(var + 1e-6);
    ln = ln.cwiseProduct(Eigen::Map<const Eigen::VectorXd>(head.layernorm.weight.value.data(), 8)) +
         Eigen::Map<const Eigen::VectorXd>(head.layernorm.bias.value.data(), 8);
    Eigen::VectorXd h = head.fc1.weight.value.as_matrix() * ln +
                        Eigen::Map<const Eigen::VectorXd>(head.fc1.bias.value.data(), 16);
    for (Index i = 0; i < 16; ++i) {
      const double z = h[i];
      h[i] = 0.5 * z * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)));
    }
    Eigen::VectorXd out = x + head.fc2.weight.value.as_matrix() * h +
                          Eigen::Map<const Eigen::VectorXd>(head.fc2.bias.value.data(), 8);
    for (Index i = 0; i < 8; ++i) EXPECT_NEAR(got(b, i), out[i], 1e-12) << b << ", " << i;
  }
  Tensor<double, 3> wrong(2, 3, 7);
  TESSERA_EXPECT_THROW_MSG(head.forward(wrong), tessera::ShapeError,
                           "tessera::models::MAPHead::forward", "tokens", "[2, 3, 7]");
}

}  // namespace siglip_test
