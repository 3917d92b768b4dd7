// Tests for tessera/models/clip.hpp (with vision_transformer.hpp, text_transformer.hpp and
// naming.hpp): small CLIPs in the OpenAI / open_clip layout, written by
// tests/fixtures/make_model_fixtures.py from a reference implementation in PyTorch, load
// unchanged and give its image features, text features and probabilities; presets that
// contradict a checkpoint, unknown layouts and missing or extra tensors are errors.
#include "tessera/models/clip.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "models/models_test_util.hpp"
#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace clip_test {

using tessera::Index;
using tessera::Tensor;
namespace models = tessera::models;
namespace io = tessera::io;

std::string fixture_path(const std::string& name) { return tessera::test::model_fixture(name); }

tessera::Activation activation_named(const std::string& s) {
  if (s == "gelu") return tessera::Activation::gelu;
  if (s == "quick_gelu") return tessera::Activation::quick_gelu;
  ADD_FAILURE() << "unknown activation '" << s << "' in a fixture";
  return tessera::Activation::gelu;
}

// The model options a fixture's metadata gives (C++ names).
models::CLIPOptions options_from(const io::StateDict& io_dict) {
  const auto j = nlohmann::json::parse(io_dict.metadata.at("options"));
  const auto& v = j.at("vision");
  const auto& t = j.at("text");
  models::CLIPOptions o;
  o.vision = {.image_size = v.at("image_size"),
              .patch_size = v.at("patch_size"),
              .width = v.at("width"),
              .layers = v.at("layers"),
              .heads = v.at("heads"),
              .mlp_dim = v.at("mlp_dim"),
              .activation = activation_named(v.at("activation")),
              .layer_norm_eps = v.at("layer_norm_eps"),
              .patch_bias = v.at("patch_bias"),
              .ln_pre = v.at("ln_pre"),
              .output_dim = v.at("output_dim")};
  o.text = {.vocab_size = t.at("vocab_size"),
            .context_length = t.at("context_length"),
            .width = t.at("width"),
            .layers = t.at("layers"),
            .heads = t.at("heads"),
            .mlp_dim = t.at("mlp_dim"),
            .activation = activation_named(t.at("activation")),
            .layer_norm_eps = t.at("layer_norm_eps"),
            .causal = t.at("causal"),
            .pooling = models::TextPooling::argmax,
            .output_dim = t.at("output_dim")};
  return o;
}

using tessera::test::expect_near_scaled;

template <class T>
class ClipTest : public ::testing::Test {};
TYPED_TEST_SUITE(ClipTest, tessera::test::Scalars);

TYPED_TEST(ClipTest, OpenAiLayoutMatchesTheReference) {
  using T = TypeParam;
  constexpr bool is_float = std::is_same_v<T, float>;
  const std::string tag = is_float ? "f32" : "f64";
  // float: 1e-5 of the outputs' magnitude (features reach ~10); double: 1e-11.
  const double tol = is_float ? 1e-5 : 1e-11;
  for (const std::string name : {"clip_openai_gelu", "clip_openai_quick_gelu"}) {
    SCOPED_TRACE(name);
    const io::StateDict io_dict = io::load_safetensors(fixture_path(name + ".io.safetensors"));
    const models::CLIPOptions o = options_from(io_dict);
    const auto clip =
        models::load_clip<T>(io::load_safetensors(fixture_path(name + ".safetensors")), o, name);
    const auto images = io_dict.get<T, 4>("input.images");
    const auto ids = io_dict.get<Index, 2>("input.ids");
    const Tensor<T, 2> img = clip.encode_image(images);
    const Tensor<T, 2> txt = clip.encode_text(ids);
    expect_near_scaled(img, io_dict.get<T, 2>("expected." + tag + ".image_features"), tol,
                       "image_features");
    expect_near_scaled(txt, io_dict.get<T, 2>("expected." + tag + ".text_features"), tol,
                       "text_features");
    expect_near_scaled(clip.probabilities(img, txt),
                       io_dict.get<T, 2>("expected." + tag + ".probabilities"), tol,
                       "probabilities");
    EXPECT_NEAR(double(clip.scale()), 30.0, 1e-5);  // read from the checkpoint's logit_scale
  }
}

// QuickGELU weights run with GELU give a plausible but wrong answer: the activation comes from
// the preset, and the two presets must stay distinct.
TEST(Clip, TheActivationMatters) {
  const std::string name = "clip_openai_quick_gelu";
  const io::StateDict io_dict = io::load_safetensors(fixture_path(name + ".io.safetensors"));
  models::CLIPOptions o = options_from(io_dict);
  o.vision.activation = o.text.activation = tessera::Activation::gelu;
  const auto clip =
      models::load_clip<double>(io::load_safetensors(fixture_path(name + ".safetensors")), o);
  const auto img = clip.encode_image(io_dict.get<double, 4>("input.images"));
  const auto want = io_dict.get<double, 2>("expected.f64.image_features");
  double err = 0;
  for (Index i = 0; i < want.size(); ++i)
    err = std::max(err, std::fabs(img.data()[i] - want.data()[i]));
  EXPECT_GT(err, 1e-3);
  EXPECT_EQ(models::clip_preset("ViT-B-32").options.vision.activation, tessera::Activation::gelu);
  EXPECT_EQ(models::clip_preset("ViT-B-32-quickgelu").options.vision.activation,
            tessera::Activation::quick_gelu);
  EXPECT_EQ(models::clip_preset("ViT-B-32-quickgelu").options.text.activation,
            tessera::Activation::quick_gelu);
}

// The zero-shot classifier built from the model uses the model's logit scale and text tower: its
// probabilities for single-template classes equal CLIP's own.
TEST(Clip, ZeroShotClassifierUsesTheModelsScaleAndTextTower) {
  const std::string name = "clip_openai_quick_gelu";
  const io::StateDict io_dict = io::load_safetensors(fixture_path(name + ".io.safetensors"));
  const auto clip = models::load_clip<double>(
      io::load_safetensors(fixture_path(name + ".safetensors")), options_from(io_dict));
  const auto ids = io_dict.get<Index, 2>("input.ids");
  // Three "class names" whose one prompt each tokenizes to a row of the fixture's ids.
  const std::vector<std::string> classes = {"0", "1", "2"};
  const auto classifier = models::zero_shot_classifier(
      clip, classes, {"{}"}, [&](const std::vector<std::string>& prompts) {
        Tensor<Index, 2> out(static_cast<Index>(prompts.size()), ids.dim(1));
        for (std::size_t p = 0; p < prompts.size(); ++p)
          out[static_cast<Index>(p)].as_vector() = ids[std::stoi(prompts[p])].as_vector();
        return out;
      });
  const auto img = clip.encode_image(io_dict.get<double, 4>("input.images"));
  const auto prediction = classifier.predict(img, 3);
  const auto want = io_dict.get<double, 2>("expected.f64.probabilities");
  for (Index b = 0; b < 2; ++b)
    for (Index j = 0; j < 3; ++j)
      EXPECT_NEAR(prediction.probabilities(b, j), want(b, prediction.indices(b, j)), 1e-10);
}

// What a hand port gets wrong and the options cannot express: the blocks are always pre-norm
// (there is no norm_first to set), and the presets' text towers are causal with CLIP's eps.
template <class O>
constexpr bool has_norm_first = requires(O o) {
  o.norm_first;
};
static_assert(!has_norm_first<models::VisionTransformerOptions>);
static_assert(!has_norm_first<models::TextTransformerOptions>);
static_assert(has_norm_first<tessera::nn::TransformerLayerOptions>);  // the check can fire

// OpenAI stores text_projection as [width, embed]: a square one (ViT-L/14: 768 x 768) has the
// right shape either way, so only the naming table's transpose keeps it right.
TEST(Clip, ASquareTextProjectionIsTransposed) {
  io::StateDict sd;
  Tensor<float, 2> p(3, 3);
  for (Index i = 0; i < 9; ++i) p.data()[i] = static_cast<float>(i);
  sd.insert("text_projection", p);
  const io::StateDict named =
      models::rename_state_dict("test", std::move(sd), models::openai_clip_naming());
  const auto w = named.get<float, 2>("text.head.weight");
  for (Index r = 0; r < 3; ++r)
    for (Index c = 0; c < 3; ++c) EXPECT_EQ(w(r, c), p(c, r));
}

// The model as a DualEncoder (what the CLIP loss trains) gives the same probabilities.
TEST(Clip, AsADualEncoderItGivesTheSameProbabilities) {
  const std::string name = "clip_openai_gelu";
  const io::StateDict io_dict = io::load_safetensors(fixture_path(name + ".io.safetensors"));
  const auto clip = models::load_clip<double>(
      io::load_safetensors(fixture_path(name + ".safetensors")), options_from(io_dict));
  const auto dual = models::dual_encoder(clip);
  EXPECT_EQ(dual.vision_model.output_features(), 64);  // the tower without its projection
  Tensor<double, 2> logits = dual.logits(dual.encode_image(io_dict.get<double, 4>("input.images")),
                                         dual.encode_text(io_dict.get<Index, 2>("input.ids")));
  tessera::softmax_into(logits, logits);
  const auto want = io_dict.get<double, 2>("expected.f64.probabilities");
  for (Index i = 0; i < want.size(); ++i) EXPECT_NEAR(logits.data()[i], want.data()[i], 1e-10);
}

// CLIPVisionModelWithProjection / CLIPVisionModel folders: vision_model.* (and the projection)
// with a CLIPVisionConfig at the top level of config.json.
TEST(Clip, HuggingFaceVisionModelAlone) {
  tessera::test::TempDir dir;
  const io::StateDict full = io::load_safetensors(fixture_path("clip_hf/model.safetensors"));
  io::StateDict vision;
  for (const auto& [key, t] : full)
    if (key.rfind("vision_model.", 0) == 0 || key == "visual_projection.weight")
      vision.insert(key, t);
  io::save_safetensors(dir / "model.safetensors", vision);
  std::ifstream in(fixture_path("clip_hf/config.json"));
  const auto clip_config = nlohmann::json::parse(in);
  nlohmann::json vision_config = clip_config.at("vision_config");
  vision_config["projection_dim"] = clip_config.at("projection_dim");
  vision_config["model_type"] = "clip_vision_model";
  std::ofstream(dir / "config.json") << vision_config.dump();

  const io::StateDict io_dict = io::load_safetensors(fixture_path("clip_hf.io.safetensors"));
  const auto tower = models::load_clip_vision<double>(dir / "model.safetensors");
  expect_near_scaled(tower.forward(io_dict.get<double, 4>("input.images")),
                     io_dict.get<double, 2>("expected.f64.image_features"), 1e-11,
                     "image_features");
  // Without the projection: the normalised class token, hidden_size wide.
  ASSERT_TRUE(vision.erase("visual_projection.weight"));
  io::save_safetensors(dir / "model.safetensors", vision);
  const auto bare = models::load_clip_vision<float>(dir / "model.safetensors");
  EXPECT_EQ(bare.output_features(), 64);
  // A whole CLIPModel given to it: the text tower's keys are not its layout.
  TESSERA_EXPECT_THROW_MSG(
      models::load_clip_vision<float>(
          io::load_safetensors(fixture_path("clip_hf/model.safetensors")), bare.options()),
      tessera::ValueError, "tessera::models::load_clip_vision", "text_model.",
      "load it with models::load_clip");
}

TEST(Clip, PresetsHaveOpenClipsSizes) {
  const auto& b16 = models::clip_preset("ViT-B-16").options;
  EXPECT_EQ(b16.vision.patch_size, 16);
  EXPECT_EQ(b16.vision.width, 768);
  EXPECT_EQ(b16.vision.heads, 12);
  EXPECT_EQ(b16.text.width, 512);
  EXPECT_EQ(b16.text.heads, 8);
  EXPECT_EQ(b16.vision.output_dim, 512);
  const auto& l14 = models::clip_preset("ViT-L-14").options;
  EXPECT_EQ(l14.vision.layers, 24);
  EXPECT_EQ(l14.vision.heads, 16);
  EXPECT_EQ(l14.text.width, 768);
  EXPECT_EQ(l14.text.heads, 12);
  EXPECT_EQ(l14.vision.output_dim, 768);
  for (const auto& p : models::clip_presets()) {
    EXPECT_TRUE(p.options.text.causal) << p.name;
    EXPECT_EQ(p.options.vision.layer_norm_eps, 1e-5) << p.name;
    EXPECT_EQ(p.options.text.context_length, 77) << p.name;
  }
}

// ---- errors ------------------------------------------------------------------------------------

io::StateDict fixture_checkpoint() {
  return io::load_safetensors(fixture_path("clip_openai_gelu.safetensors"));
}
models::CLIPOptions fixture_options() {
  return options_from(io::load_safetensors(fixture_path("clip_openai_gelu.io.safetensors")));
}

TEST(Clip, APresetThatContradictsTheCheckpointNamesBothValues) {
  models::CLIPOptions o = fixture_options();
  o.vision.patch_size = 16;
  o.text.layers = 3;
  TESSERA_EXPECT_THROW_MSG(
      models::load_clip<float>(fixture_checkpoint(), o, "mine"), tessera::ValueError,
      "tessera::models::load_clip", "preset 'mine'", "vision.patch_size: the preset says 16",
      "'visual.conv1.weight' [64, 3, 8, 8] says 8", "text.layers: the preset says 3", "says 2");
  // A full-size preset against the small checkpoint: every size it disagrees on is listed.
  TESSERA_EXPECT_THROW_MSG(
      models::load_clip<float>(fixture_checkpoint(), "ViT-B-32"), tessera::ValueError,
      "preset 'ViT-B-32'", "vision.width: the preset says 768", "vision.image_size",
      "text.vocab_size: the preset says 49408", "text.context_length: the preset says 77");
}

TEST(Clip, UnknownPresetListsTheKnownOnes) {
  TESSERA_EXPECT_THROW_MSG(models::clip_preset("ViT-B-33"), tessera::ValueError,
                           "tessera::models::clip_preset", "'ViT-B-33'", "'ViT-B-32'",
                           "'ViT-L-14-quickgelu'");
}

TEST(Clip, KeysOfAnotherLayoutAreListedAndCounted) {
  io::StateDict sd = fixture_checkpoint();
  // Hugging Face-style names for 30 tensors: at most 20 are listed, then the count.
  for (int i = 0; i < 30; ++i)
    sd.insert("vision_model.encoder.layers." + std::to_string(i) + ".mlp.fc1.weight",
              Tensor<float, 1>(2));
  try {
    (void)models::load_clip<float>(std::move(sd), fixture_options());
    ADD_FAILURE() << "expected a ValueError";
  } catch (const tessera::ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("none of the layouts 'openai_clip', 'hf_clip'; closest is openai_clip, "
                        "which has no rule for 30 of the 92 keys"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("(30 in all)"), std::string::npos) << what;
    EXPECT_LT(what.size(), 2500u) << what;
  }
}

TEST(Clip, MissingAndExtraTensorsAreErrors) {
  io::StateDict sd = fixture_checkpoint();
  ASSERT_TRUE(sd.erase("visual.ln_post.bias"));
  TESSERA_EXPECT_THROW_MSG(models::load_clip<float>(std::move(sd), fixture_options()),
                           tessera::Error, "visual.ln_post.bias");
  io::StateDict extra = fixture_checkpoint();
  extra.insert("transformer.resblocks.2.ln_1.weight", Tensor<float, 1>(64));
  TESSERA_EXPECT_THROW_MSG(models::load_clip<float>(std::move(extra), fixture_options()),
                           tessera::ValueError, "text.layers: the preset says 2",
                           "'transformer.resblocks.2.ln_1.weight' [64] says 3");
  io::StateDict wrong = fixture_checkpoint();
  ASSERT_TRUE(wrong.erase("text_projection"));
  wrong.insert("text_projection", Tensor<float, 2>(64, 40));  // embedding 40, not 48
  TESSERA_EXPECT_THROW_MSG(models::load_clip<float>(std::move(wrong), fixture_options()),
                           tessera::ValueError, "text.output_dim: the preset says 48",
                           "'text_projection' [40, 64] says 40");
}

TEST(Clip, LoadsFromAFileAndNamesAMissingOne) {
  TESSERA_EXPECT_THROW_MSG(
      models::load_clip<float>(fixture_path("no_such.safetensors"), "ViT-B-32"), tessera::IoError,
      "no_such.safetensors");
}

TEST(Clip, TextLongerThanTheContextOrWithoutAnEndTokenIsAnError) {
  const auto clip = models::load_clip<float>(fixture_checkpoint(), fixture_options());
  Tensor<Index, 2> too_long(1, 17);
  TESSERA_EXPECT_THROW_MSG(clip.encode_text(too_long), tessera::ShapeError,
                           "tessera::models::TextTransformer::forward", "[1, 17]",
                           "context_length = 16");
  Tensor<Index, 2> out_of_range(1, 4);
  out_of_range(0, 2) = 300;
  EXPECT_THROW(clip.encode_text(out_of_range), tessera::IndexError);

  models::TextTransformerOptions to = fixture_options().text;
  to.pooling = models::TextPooling::eos;
  to.eos_token_id = 299;
  models::TextTransformer<float> text(to);
  Tensor<Index, 2> ids(2, 4);
  ids(0, 3) = 299;  // row 1 has none
  TESSERA_EXPECT_THROW_MSG(text.forward(ids), tessera::ValueError, "row 1 of argument 'ids'",
                           "299");
}

TEST(Clip, InvalidOptionsAreErrors) {
  models::CLIPOptions o = fixture_options();
  o.text.output_dim = 40;
  TESSERA_EXPECT_THROW_MSG(models::CLIP<float>{o}, tessera::ValueError, "tessera::models::CLIP",
                           "48", "40");
  models::VisionTransformerOptions v = fixture_options().vision;
  v.image_size = 30;
  TESSERA_EXPECT_THROW_MSG(models::VisionTransformer<float>{v}, tessera::ValueError,
                           "image_size is 30 and patch_size 8");
  v = fixture_options().vision;
  v.heads = 5;
  TESSERA_EXPECT_THROW_MSG(models::VisionTransformer<float>{v}, tessera::ValueError,
                           "width is 64 and heads 5");
}

// Hugging Face's layout with its config.json beside the weights, no preset: q/k/v stacked,
// projections as Linear weights, the text pooled at the first eos_token_id (5 here, not the
// largest id, so OpenAI's argmax pooling would read the wrong token).
TYPED_TEST(ClipTest, HuggingFaceLayoutWithConfigJsonMatchesTheReference) {
  using T = TypeParam;
  constexpr bool is_float = std::is_same_v<T, float>;
  const std::string tag = is_float ? "f32" : "f64";
  const double tol = is_float ? 1e-5 : 1e-11;
  const io::StateDict io_dict = io::load_safetensors(fixture_path("clip_hf.io.safetensors"));
  const auto clip = models::load_clip<T>(fixture_path("clip_hf/model.safetensors"));
  EXPECT_EQ(clip.options().text.pooling, models::TextPooling::eos);
  EXPECT_EQ(clip.options().text.eos_token_id, 5);
  EXPECT_EQ(clip.options().vision.activation, tessera::Activation::quick_gelu);
  const auto img = clip.encode_image(io_dict.get<T, 4>("input.images"));
  const auto txt = clip.encode_text(io_dict.get<Index, 2>("input.ids"));
  expect_near_scaled(img, io_dict.get<T, 2>("expected." + tag + ".image_features"), tol,
                     "image_features");
  expect_near_scaled(txt, io_dict.get<T, 2>("expected." + tag + ".text_features"), tol,
                     "text_features");
  expect_near_scaled(clip.probabilities(img, txt),
                     io_dict.get<T, 2>("expected." + tag + ".probabilities"), tol, "probabilities");
  EXPECT_NEAR(double(clip.scale()), 20.0, 1e-5);
}

TEST(Clip, HuggingFaceConfigFields) {
  const auto o = models::clip_options_from_hf_config(nlohmann::json::parse(R"({
      "projection_dim": 768,
      "text_config": {"hidden_size": 768, "num_attention_heads": 12, "hidden_act": "gelu",
                      "eos_token_id": 2},
      "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14,
                        "num_attention_heads": 16, "intermediate_size": 4096,
                        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}})"));
  EXPECT_EQ(o.vision.width, 1024);
  EXPECT_EQ(o.vision.layers, 24);
  EXPECT_EQ(o.vision.patch_size, 14);
  EXPECT_EQ(o.vision.image_size, 224);  // transformers' default
  EXPECT_EQ(o.vision.activation, tessera::Activation::gelu_tanh);
  EXPECT_EQ(o.vision.layer_norm_eps, 1e-6);
  EXPECT_EQ(o.vision.output_dim, 768);
  EXPECT_EQ(o.text.width, 768);
  EXPECT_EQ(o.text.mlp_dim, 2048);  // default
  EXPECT_EQ(o.text.activation, tessera::Activation::gelu);
  EXPECT_EQ(o.text.pooling, models::TextPooling::argmax);  // eos_token_id 2: older configs
  EXPECT_TRUE(o.text.causal);
  // An empty config is transformers' defaults: ViT-B/32 with QuickGELU.
  const auto d = models::clip_options_from_hf_config(nlohmann::json::object());
  EXPECT_EQ(d.vision.patch_size, 32);
  EXPECT_EQ(d.text.activation, tessera::Activation::quick_gelu);
  EXPECT_EQ(d.text.pooling, models::TextPooling::eos);
  EXPECT_EQ(d.text.eos_token_id, 49407);
}

TEST(Clip, HuggingFaceConfigErrors) {
  TESSERA_EXPECT_THROW_MSG(models::clip_options_from_hf_config(nlohmann::json::parse(
                               R"({"vision_config": {"hidden_act": "relu"}})")),
                           tessera::ValueError, "tessera::models::clip_options_from_hf_config",
                           "'vision_config.hidden_act' is \"relu\"", "quick_gelu");
  TESSERA_EXPECT_THROW_MSG(models::clip_options_from_hf_config(
                               nlohmann::json::parse(R"({"text_config": {"hidden_size": "512"}})")),
                           tessera::ValueError, "'text_config.hidden_size' is \"512\"",
                           "expected a number");
  tessera::test::TempDir dir;
  TESSERA_EXPECT_THROW_MSG(models::read_hf_clip_config(dir / "config.json"), tessera::IoError,
                           "cannot open", "config.json");
  { std::ofstream(dir / "config.json") << "{\"projection_dim\": "; }
  TESSERA_EXPECT_THROW_MSG(models::read_hf_clip_config(dir / "config.json"), tessera::IoError,
                           "is not valid JSON");
  // Weights without a config.json and without a preset.
  std::filesystem::remove(dir / "config.json");
  TESSERA_EXPECT_THROW_MSG(models::load_clip<float>(dir / "model.safetensors"), tessera::ValueError,
                           "no preset given and no config.json", "'ViT-B-32'");
}

TEST(Clip, AHuggingFaceAttentionWithoutItsKeyProjectionIsNamed) {
  io::StateDict sd = io::load_safetensors(fixture_path("clip_hf/model.safetensors"));
  ASSERT_TRUE(sd.erase("text_model.encoder.layers.1.self_attn.k_proj.weight"));
  const auto o = models::read_hf_clip_config(fixture_path("clip_hf/config.json"));
  TESSERA_EXPECT_THROW_MSG(models::load_clip<float>(std::move(sd), o), tessera::ValueError,
                           "'text.encoder.layers.1.self_attn.in_proj_weight' is stacked from the "
                           "'q', 'k', 'v' tensors",
                           "'text_model.encoder.layers.1.self_attn.q_proj.weight'", "no 'k' part");
}

TEST(Clip, ACheckpointForAnotherLoaderSaysWhichOne) {
  TESSERA_EXPECT_THROW_MSG(
      models::load_clip<float>(
          io::load_safetensors(fixture_path("torchvision_vit_small.safetensors")), "ViT-B-32"),
      tessera::ValueError, "none of the layouts", "the keys are in the torchvision_vit layout",
      "load it with models::load_vit");
}

// The renaming moves every tensor's bytes: the checkpoint's buffers become the new dict's.
TEST(Naming, RenamingMovesTheBytes) {
  io::StateDict sd = fixture_checkpoint();
  const std::byte* before = sd.at("visual.transformer.resblocks.1.mlp.c_fc.weight").bytes.data();
  const io::StateDict named =
      models::rename_state_dict("test", std::move(sd), models::openai_clip_naming());
  EXPECT_EQ(named.at("visual.encoder.layers.1.linear1.weight").bytes.data(), before);
  EXPECT_EQ(named.at("visual.head.weight").shape, (std::vector<Index>{48, 64}));  // transposed
  EXPECT_FALSE(named.contains("visual.transformer.resblocks.1.mlp.c_fc.weight"));
}

TEST(Naming, PatternsMatchLayerNumbersAndTails) {
  const models::NameRule r{"a.#.b.*", "x.#.y.*"};
  EXPECT_EQ(tessera::detail::apply_name_rule("a.12.b.weight", r), "x.12.y.weight");
  EXPECT_FALSE(tessera::detail::apply_name_rule("a..b.weight", r));
  EXPECT_FALSE(tessera::detail::apply_name_rule("a.1.b.", r));
  EXPECT_FALSE(tessera::detail::apply_name_rule("a.1.c.weight", r));
  EXPECT_EQ(tessera::detail::apply_name_rule("logit_scale", {"logit_scale", "s"}), "s");
  EXPECT_FALSE(tessera::detail::apply_name_rule("logit_scale2", {"logit_scale", "s"}));
}

}  // namespace clip_test
