// Training a CLIP: the text tower's backward (central differences), CLIP::train_loss against
// PyTorch autograd on a small OpenAI-layout CLIP (tests/fixtures/training/clip_quick_gelu, every
// parameter's gradient), and central differences of train_loss itself.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../fixture.hpp"
#include "../nn/backward_test_util.hpp"
#include "tessera/models/clip.hpp"

namespace tessera::models {
namespace clip_backward_test {

using test::random_tensor;

TextTransformerOptions small_text() {
  return {.vocab_size = 20,
          .context_length = 6,
          .width = 8,
          .layers = 2,
          .heads = 2,
          .mlp_dim = 12,
          .activation = Activation::gelu,
          .output_dim = 6,
          .seed = 4};
}

template <class M>
void randomize(M& m) {
  std::uint64_t seed = 70;
  m.for_each_parameter([&](const std::string& name, auto& p) {
    if (name.find("ln") != std::string::npos || name.find("norm") != std::string::npos ||
        name.find("bias") != std::string::npos || name.find("positional") != std::string::npos)
      p.value.setRandom(seed++, -1, 1);
  });
}

Tensor<Index, 2> some_ids() {
  // the largest id of each row is its end token, pooled by argmax
  return Tensor<Index, 2>{{18, 3, 7, 19, 0, 0}, {18, 5, 19, 0, 0, 0}, {18, 2, 2, 9, 11, 19}};
}

TEST(TextTransformerBackward, MatchesCentralDifferencesInDouble) {
  TextTransformer<double> m(small_text());
  randomize(m);
  const auto ids = some_ids();
  const auto f = m.forward_train(ids);
  test::expect_close_scaled("output", f.output, m.forward(ids), 1e-13);
  const auto w = random_tensor<2>({3, 6}, 2);
  m.zero_grad();
  m.backward(f.context, w);
  const auto loss = [&] { return test::weighted_sum(m.forward(ids), w); };
  test::GradCheckOptions o;
  o.max_entries = 32;
  test::expect_parameter_gradients(m, loss, o);
  // Rows of ids that never occur get nothing.
  for (Index e = 0; e < 8; ++e) EXPECT_EQ(m.embed.token_embedding.weight.grad(1, e), 0.0);
}

CLIPOptions clip_options_from(const nlohmann::json& j) {
  const auto act = [](const nlohmann::json& v) {
    return v.at("activation") == "quick_gelu" ? Activation::quick_gelu : Activation::gelu;
  };
  const auto& v = j.at("vision");
  const auto& t = j.at("text");
  CLIPOptions o;
  o.vision = {.image_size = v.at("image_size"),
              .patch_size = v.at("patch_size"),
              .width = v.at("width"),
              .layers = v.at("layers"),
              .heads = v.at("heads"),
              .mlp_dim = v.at("mlp_dim"),
              .activation = act(v),
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
            .activation = act(t),
            .layer_norm_eps = t.at("layer_norm_eps"),
            .causal = t.at("causal"),
            .pooling = TextPooling::argmax,
            .output_dim = t.at("output_dim")};
  return o;
}

template <class T>
class ClipTrainTyped : public ::testing::Test {};
TYPED_TEST_SUITE(ClipTrainTyped, test::Scalars);

// The loss and every parameter's gradient of a small OpenAI-layout CLIP against PyTorch autograd
// (tests/fixtures/make_training_fixtures.py). The expected gradients are stored under OpenAI's
// names; they go through the same renaming (and transposes) as the checkpoint.
TYPED_TEST(ClipTrainTyped, MatchesPyTorchAutograd) {
  using T = TypeParam;
  const test::Fixture fx("clip_quick_gelu", "training");
  io::StateDict weights, grads;
  const std::string tag =
      std::is_same_v<T, float> ? "expected.f32.grad.param." : "expected.f64.grad.param.";
  for (const auto& [key, st] : fx.dict) {
    if (key.rfind("module.", 0) == 0) weights.insert(key.substr(7), st);
    if (key.rfind(tag, 0) == 0) grads.insert(key.substr(tag.size()), st);
  }
  ASSERT_EQ(weights.size(), grads.size());
  auto clip = load_clip<T>(std::move(weights), clip_options_from(fx.options));
  clip.zero_grad();
  const T loss = clip.train_loss(fx.input<T, 4>("images"), fx.input<Index, 2>("ids"));
  const T expected_loss = fx.expected<T, 0>("loss")();
  EXPECT_NEAR(loss, expected_loss, test::parity_tol<T>() * (1 + std::fabs(expected_loss)));
  const io::StateDict renamed = rename_state_dict("test", std::move(grads), openai_clip_naming());
  int checked = 0;
  clip.for_each_parameter([&](const std::string& name, const auto& p) {
    constexpr int R = std::remove_cvref_t<decltype(p)>::rank;
    ASSERT_TRUE(renamed.contains(name)) << name;
    test::expect_tensor_near(p.grad, renamed.get<T, R>(name), test::parity_tol<T>(),
                             "grad of " + name);
    ++checked;
  });
  EXPECT_GT(checked, 50);
}

TEST(ClipTrain, TrainLossMatchesCentralDifferencesInDouble) {
  CLIPOptions o;
  o.vision = {.image_size = 8,
              .patch_size = 4,
              .in_channels = 3,
              .width = 8,
              .layers = 1,
              .heads = 2,
              .mlp_dim = 12,
              .output_dim = 6,
              .seed = 1};
  o.text = small_text();
  o.text.layers = 1;
  CLIP<double> clip(o);
  randomize(clip);
  const auto images = random_tensor<4>({3, 3, 8, 8}, 3);
  const auto ids = some_ids();
  clip.zero_grad();
  (void)clip.train_loss(images, ids);
  const auto loss = [&] {
    const auto a = l2_normalize(clip.encode_image(images));
    const auto b = l2_normalize(clip.encode_text(ids));
    return static_cast<double>(contrastive::clip_loss(a, b, clip.logit_scale.value()).loss);
  };
  test::GradCheckOptions go;
  go.max_entries = 16;
  test::expect_parameter_gradients(clip, loss, go);
  Tensor<Index, 2> two = some_ids();
  TESSERA_EXPECT_THROW_MSG(clip.train_loss(random_tensor<4>({2, 3, 8, 8}, 1), two), ShapeError,
                           "tessera::models::CLIP::train_loss", "'images'", "'ids'");
  Tensor<Index, 2> no_ids(Shape<2>{0, 5});
  TESSERA_EXPECT_THROW_MSG(clip.train_loss(random_tensor<4>({0, 3, 8, 8}, 1), no_ids), ShapeError,
                           "tessera::models::CLIP::train_loss", "'images'", "no examples");
}

}  // namespace clip_backward_test
}  // namespace tessera::models
