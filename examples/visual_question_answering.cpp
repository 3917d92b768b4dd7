// Visual question answering: image patches and question words meet in cross-modal attention
// (co-attention; the question's words attend to the image's patches and the patches to the
// words), and the question's attended tokens are pooled into a distribution over answers.
//
// The task: "where is the <colour> square?" about an image with coloured squares on black; the
// answer is one of the four quadrants. The network is untrained but a few weights are set by hand
// so that the mechanism can be seen doing its job:
//   - the patch embedding writes each patch's mean colour into features 0-2, and its learned
//     positions write the patch's quadrant (one-hot) into features 3-6;
//   - the colour words' embeddings are one-hot in features 0-2, the other words are near zero;
//   - in the question-to-image attention, queries and keys compare colours (W_q, W_k on features
//     0-2) and values carry the quadrant (W_v on features 3-6);
//   - the answer head reads the pooled quadrant features.
// A colour word thus attends to the patches of its colour and brings back where they are; the
// other words, matching no colour, attend evenly and bring back no preference.
//
// Prints the answer distributions and the question-to-patch attention map of one example, as a
// table and as two pictures, and checks every answer:
//   vqa_attention.png  the map as a labelled heatmap: question words x image patches
//   vqa_overlays.png   each word's attention over the 4 x 4 patch grid, drawn over the image
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <tessera/tessera.hpp>

#include "tessera/image/heatmap.hpp"
#include "tessera/image/write.hpp"

using tessera::Index;
using tessera::Tensor;
using tessera::TensorMap;
namespace nn = tessera::nn;
namespace fusion = tessera::fusion;

namespace {

constexpr Index kImage = 32, kPatch = 8, kGrid = kImage / kPatch, kE = 16, kHeads = 2;
const std::vector<std::string> kVocab = {"where", "is",   "the",    "red",
                                         "green", "blue", "square", "?"};
const std::vector<std::string> kAnswers = {"top-left", "top-right", "bottom-left", "bottom-right"};

struct Square {
  int colour;  // 0 red, 1 green, 2 blue
  Index y, x, size;
};

// [1, 3, 32, 32]: black with a little noise, and the squares.
Tensor<float, 4> make_image(const std::vector<Square>& squares, std::uint64_t seed) {
  Tensor<float, 4> img(1, 3, kImage, kImage);
  img.setRandom(seed, 0.0, 0.1);
  for (const auto& s : squares)
    for (Index y = s.y; y < s.y + s.size; ++y)
      for (Index x = s.x; x < s.x + s.size; ++x) img(0, s.colour, y, x) = 0.9f;
  return img;
}

Index quadrant(Index patch) {
  const Index gy = patch / kGrid, gx = patch % kGrid;
  return (gy >= kGrid / 2 ? 2 : 0) + (gx >= kGrid / 2 ? 1 : 0);
}

Tensor<std::int64_t, 2> tokenize(const std::string& question) {
  std::istringstream in(question);
  std::vector<std::int64_t> ids;
  for (std::string w; in >> w;)
    ids.push_back(std::find(kVocab.begin(), kVocab.end(), w) - kVocab.begin());
  Tensor<std::int64_t, 2> t(1, static_cast<Index>(ids.size()));
  std::copy(ids.begin(), ids.end(), t.data());
  return t;
}

// The [1, 3, H, W] image in [0, 1] as an RGB picture [H * scale, W * scale, 3], each pixel
// repeated scale x scale times so that the patches stay sharp.
Tensor<std::uint8_t, 3> to_picture(const Tensor<float, 4>& img, Index scale) {
  const Index h = img.dim(2), w = img.dim(3);
  Tensor<std::uint8_t, 3> out(h * scale, w * scale, 3);
  for (Index y = 0; y < h * scale; ++y)
    for (Index x = 0; x < w * scale; ++x)
      for (Index c = 0; c < 3; ++c)
        out(y, x, c) = static_cast<std::uint8_t>(
            std::lround(255 * std::clamp(img(0, c, y / scale, x / scale), 0.0f, 1.0f)));
  return out;
}

// The two pictures of example 0: the heatmap of `map` [words, 16 patches] and one overlay per
// word on the image.
void write_pictures(const Tensor<float, 2>& map, const std::vector<std::string>& words,
                    const Tensor<float, 4>& img) {
  namespace image = tessera::image;
  std::vector<std::string> patch_names;
  for (Index t = 0; t < kGrid * kGrid; ++t) patch_names.push_back(std::to_string(t));
  image::write_png("vqa_attention.png",
                   image::heatmap(map, words, patch_names,
                                  {.title = "Question-to-patch attention (mean of " +
                                            std::to_string(kHeads) + " heads)",
                                   .x_label = "image patch (row by row over the 4 x 4 grid)",
                                   .y_label = "question word",
                                   .cell_size = 36}));
  // One overlay per word, all on the same colour scale (0 to the largest weight).
  const auto photo = to_picture(img, 8);  // [256, 256, 3]
  const float top = map.as_matrix().maxCoeff();
  std::vector<Tensor<std::uint8_t, 3>> tiles = {photo};  // the image itself first
  std::vector<std::string> titles = {"image"};
  for (Index i = 0; i < map.dim(0); ++i) {
    const TensorMap<const float, 2> grid(&map(i, 0), {kGrid, kGrid});  // [4, 4] patches
    tiles.push_back(image::overlay(photo, grid, {.alpha = 0.5, .vmin = 0.0, .vmax = top}));
    titles.push_back(words[static_cast<std::size_t>(i)]);
  }
  image::write_png("vqa_overlays.png",
                   image::make_grid(tiles, titles,
                                    {.nrow = 4,
                                     .title = "Each word's attention over the image"
                                              " (dark: 0, yellow: the largest weight)"}));
}

// The hand-set weights described above; everything else keeps its seeded initialisation.
void set_weights(nn::PatchEmbedding<float>& patches, nn::TokenEmbedding<float>& words,
                 fusion::CrossModalAttention<float>& co, nn::Linear<float>& head) {
  // conv1: feature c = mean of channel c over the patch; positions: the quadrant, one-hot
  patches.conv1_weight.value.setZero();
  for (Index c = 0; c < 3; ++c)
    for (Index i = 0; i < kPatch; ++i)
      for (Index j = 0; j < kPatch; ++j)
        patches.conv1_weight.value(c, c, i, j) = 1.0f / (kPatch * kPatch);
  patches.conv1_bias.value.setZero();
  patches.positional_embedding.value.setZero();
  for (Index t = 0; t < patches.num_patches(); ++t)
    patches.positional_embedding.value(t, 3 + quadrant(t)) = 1.0f;
  // words: colours one-hot in 0-2; every word keeps a little of its random vector in 7-15
  auto emb = words.token_embedding.weight.value.as_matrix();  // [vocab, E]
  emb.leftCols(7).setZero();
  emb.rightCols(kE - 7) *= 0.1f;
  for (Index c = 0; c < 3; ++c) emb(3 + c, c) = 1.0f;
  words.positional_embedding.value.setZero();
  // question -> image attention: W_q = 20 I and W_k = I on colours, W_v = I on quadrants
  auto w = co.attn_a.in_proj_weight.value.as_matrix();  // [3E, E]: W_q; W_k; W_v
  w.setZero();
  for (Index c = 0; c < 3; ++c) {
    w(c, c) = 20.0f;
    w(kE + c, c) = 1.0f;
  }
  for (Index q = 3; q < 7; ++q) w(2 * kE + q, q) = 1.0f;
  co.attn_a.in_proj_bias.value.setZero();
  co.attn_a.out_proj.weight.value.as_matrix().setIdentity();
  co.attn_a.out_proj.bias.value.setZero();
  // answer head: the pooled quadrant features, sharpened
  head.weight.value.setZero();
  head.bias.value.setZero();
  for (Index a = 0; a < 4; ++a) head.weight.value(a, 3 + a) = 8.0f;
}

}  // namespace

int main() {
  nn::PatchEmbedding<float> patches({.image_size = {kImage, kImage},
                                     .patch_size = {kPatch, kPatch},
                                     .in_channels = 3,
                                     .embed_dim = kE,
                                     .seed = 1});
  nn::TokenEmbedding<float> words(
      {.vocab_size = static_cast<Index>(kVocab.size()), .max_len = 16, .embed_dim = kE, .seed = 2});
  fusion::CrossModalAttention<float> co({.embed_dim = kE, .num_heads = kHeads, .seed = 3});
  nn::Linear<float> head({.in_features = kE, .out_features = 4, .seed = 4});
  set_weights(patches, words, co, head);

  struct Example {
    std::vector<Square> squares;
    std::string question;
    Index answer;
  };
  const std::vector<Square> scene1 = {{0, 0, 16, 16}, {1, 16, 0, 16}};  // red TR, green BL
  const std::vector<Square> scene2 = {{2, 24, 24, 8}, {0, 8, 0, 8}};    // blue BR, red TL
  const std::vector<Example> examples = {{scene1, "where is the red square ?", 1},
                                         {scene1, "where is the green square ?", 2},
                                         {scene2, "where is the blue square ?", 3},
                                         {scene2, "where is the red square ?", 0}};

  std::printf(
      "Image: 32 x 32, 8 x 8 patches -> 16 image tokens; question words -> tokens;\n"
      "co-attention between them, then the question's tokens mean-pooled -> 4 answers.\n\n");
  int correct = 0;
  for (std::size_t e = 0; e < examples.size(); ++e) {
    const auto& ex = examples[e];
    const auto ids = tokenize(ex.question);
    const Index Lq = ids.dim(1);
    // q: [1, Lq, E] question tokens; v: [1, 16, E] patch tokens
    const auto q = words.forward(ids);
    const auto img = make_image(ex.squares, 10 + e);
    const auto v = patches.forward(img);
    const auto out = co.forward(q, v, {.need_weights = true});
    // pooled: [1, E], the mean of the question's tokens after attending to the image
    Tensor<float, 2> pooled(1, kE);
    pooled.as_matrix() = out.a.as_matrix().colwise().mean();
    const auto p = tessera::softmax(head.forward(pooled));  // [1, 4]
    const Index answer = std::max_element(p.data(), p.data() + 4) - p.data();
    correct += answer == ex.answer;
    std::printf("Scene %d, \"%s\"\n  answer distribution:", e < 2 ? 1 : 2, ex.question.c_str());
    for (Index a = 0; a < 4; ++a) std::printf("  %s %.3f", kAnswers[a].c_str(), p(0, a));
    std::printf("\n  -> %s (%s)\n", kAnswers[answer].c_str(),
                answer == ex.answer ? "correct" : "wrong");

    if (e != 0) continue;
    // weights_a: [1, Lq, 16], each word's attention over the patches (averaged over the heads)
    const auto& w = *out.weights_a;
    std::printf(
        "\n  Question-to-patch attention (averaged over %td heads; patches row by row"
        " over the 4 x 4 grid):\n\n  %-8s",
        kHeads, "word");
    for (Index t = 0; t < 16; ++t) std::printf(" %4td", t);
    std::printf("\n");
    Tensor<float, 2> map(Lq, 16);
    std::vector<std::string> question_words;
    for (Index i = 0; i < Lq; ++i) {
      question_words.push_back(kVocab[ids(0, i)]);
      std::printf("  %-8s", kVocab[ids(0, i)].c_str());
      for (Index t = 0; t < 16; ++t) std::printf(" %4.2f", map(i, t) = w(0, i, t));
      std::printf("\n");
    }
    std::printf("\n  'red' on the image grid (the red square fills the top-right quadrant):\n");
    for (Index gy = 0; gy < kGrid; ++gy) {
      std::printf("   ");
      for (Index gx = 0; gx < kGrid; ++gx) std::printf(" %5.3f", w(0, 3, gy * kGrid + gx));
      std::printf("\n");
    }
    std::printf(
        "  (head 0 compares colours and puts about 1/4 on each red patch; head 1, with no query\n"
        "  weights, attends evenly, 1/16 each; the table shows their average)\n");
    write_pictures(map, question_words, img);
    std::printf(
        "  Wrote vqa_attention.png (heatmap, %td words x 16 patches) and vqa_overlays.png"
        " (each word's attention over the image).\n\n",
        Lq);
  }
  std::printf(
      "\n%d of %zu questions answered correctly; the same image gives different answers"
      " to different questions.\n",
      correct, examples.size());
  return correct == static_cast<int>(examples.size()) ? 0 : 1;
}
