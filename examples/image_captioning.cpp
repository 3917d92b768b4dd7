// Image captioning, the vision -> language direction: a ViT-style image encoder turns an image
// into patch tokens (Dosovitskiy et al. 2021), and a transformer decoder writes a caption one word
// at a time, cross-attending to those tokens. Decoding is greedy and uses the key/value cache:
// each step runs only the newest word through the decoder and reads the earlier words' keys and
// values, and the image's keys and values, from the cache.
//
// The weights are untrained (seeded), so the words are arbitrary; the mechanism is the point. The
// program checks it: the cached steps give the same logits as one causal forward over the whole
// caption, and it prints which image patch each word looked at most. It draws the last decoder
// layer's cross-attention (averaged over its heads) in two pictures:
//   captioning_attention.png  caption words x image tokens (class token + 16 patches), labelled
//   captioning_overlays.png   each word's attention over the 4 x 4 patches, drawn over the image
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <tessera/tessera.hpp>

#include "tessera/image/heatmap.hpp"
#include "tessera/image/write.hpp"

using tessera::Index;
using tessera::Tensor;
namespace nn = tessera::nn;

namespace {

constexpr Index kImage = 32, kPatch = 8, kDModel = 64, kHeads = 4, kMaxLen = 12;
const std::vector<std::string> kVocab = {"<bos>",  "<eos>",  "a",  "red",   "blue",       "green",
                                         "circle", "square", "on", "small", "background", "large"};

// A red disc on a blue background, [1, 3, 32, 32], values in [0, 1].
Tensor<float, 4> make_image() {
  Tensor<float, 4> img(1, 3, kImage, kImage);
  for (Index y = 0; y < kImage; ++y)
    for (Index x = 0; x < kImage; ++x) {
      const float dy = static_cast<float>(y) - 12.5f, dx = static_cast<float>(x) - 19.5f;
      const bool disc = dy * dy + dx * dx < 49.0f;
      img(0, 0, y, x) = disc ? 0.9f : 0.1f;
      img(0, 1, y, x) = 0.1f;
      img(0, 2, y, x) = disc ? 0.1f : 0.8f;
    }
  return img;
}

Index argmax(const float* p, Index n) { return std::max_element(p, p + n) - p; }

// The [1, 3, H, W] image in [0, 1] as an RGB picture [H * scale, W * scale, 3], each pixel
// repeated scale x scale times.
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

// attention: [steps, 1 + 16], row t the cross-attention of the step that wrote words[t].
void write_pictures(const Tensor<float, 2>& attention, const std::vector<std::string>& words,
                    const Tensor<float, 4>& img) {
  namespace image = tessera::image;
  const Index grid = kImage / kPatch, n = attention.dim(0);
  std::vector<std::string> tokens = {"cls"};
  for (Index p = 0; p < grid * grid; ++p)
    tokens.push_back(std::to_string(p / grid) + "," + std::to_string(p % grid));
  image::write_png("captioning_attention.png",
                   image::heatmap(attention, words, tokens,
                                  {.title = "Cross-attention of the last decoder layer",
                                   .x_label = "image token (class token, then patch row,col)",
                                   .y_label = "word written",
                                   .cell_size = 32}));
  // One overlay per word over the 16 patches (the class token has no place on the image), all on
  // one colour scale: the smallest to the largest patch weight of any word. The image itself,
  // alone, comes first.
  float lo = attention(0, 1), hi = attention(0, 1);
  for (Index t = 0; t < n; ++t)
    for (Index p = 1; p <= grid * grid; ++p) {
      lo = std::min(lo, attention(t, p));
      hi = std::max(hi, attention(t, p));
    }
  const auto photo = to_picture(img, 6);  // [192, 192, 3]
  std::vector<Tensor<std::uint8_t, 3>> tiles = {photo};
  for (Index t = 0; t < n; ++t) {
    const tessera::TensorMap<const float, 2> patches(&attention(t, 1), {grid, grid});
    tiles.push_back(image::overlay(photo, patches, {.alpha = 0.5, .vmin = lo, .vmax = hi}));
  }
  std::vector<std::string> titles = {"image"};
  for (Index t = 0; t < n; ++t) titles.push_back(std::to_string(t + 1) + ". " + words[t]);
  image::write_png(
      "captioning_overlays.png",
      image::make_grid(
          tiles, titles,
          {.nrow = 4,
           .title = "Where each word looked (dark: least, yellow: most; one scale for all)"}));
}

}  // namespace

int main() {
  tessera::set_num_threads(1);  // a small model: one thread, and steady timings
  const Index V = static_cast<Index>(kVocab.size());
  // Image encoder: patch tokens with a class token and ln_pre (CLIP's stem), two pre-norm layers.
  const nn::PatchEmbedding<float> patches({.image_size = {kImage, kImage},
                                           .patch_size = {kPatch, kPatch},
                                           .in_channels = 3,
                                           .embed_dim = kDModel,
                                           .cls_token = true,
                                           .pre_norm = true,
                                           .seed = 1});
  const nn::TransformerLayerOptions layer{.d_model = kDModel,
                                          .nhead = kHeads,
                                          .dim_feedforward = 4 * kDModel,
                                          .activation = tessera::Activation::gelu,
                                          .norm_first = true,
                                          .seed = 2};
  const nn::TransformerEncoder<float> encoder(
      {.layer = layer, .num_layers = 2, .final_norm = true});
  // Text decoder: word + learned position embeddings, two layers, a linear head over the words.
  const nn::TokenEmbedding<float> words(
      {.vocab_size = V, .max_len = kMaxLen, .embed_dim = kDModel, .seed = 3});
  const nn::TransformerDecoder<float> decoder(
      {.layer = layer, .num_layers = 2, .final_norm = true});
  const nn::Linear<float> lm_head({.in_features = kDModel, .out_features = V, .seed = 4});

  // memory: [1, 1 + 16, d_model], the class token and the 4 x 4 patches
  const auto image = make_image();
  const auto memory = encoder.forward(patches.forward(image));
  const Index Lm = memory.dim(1);
  std::printf(
      "Image %td x %td, %td x %td patches -> %td image tokens (class token + %td patches)"
      " of width %td.\n\n",
      kImage, kImage, kPatch, kPatch, Lm, patches.num_patches(), kDModel);

  // Greedy decoding with the cache: the image's keys and values are projected once here.
  const auto start = std::chrono::steady_clock::now();
  auto cache = decoder.make_cache(memory);
  cache.record_cross_attention(true);
  std::vector<Index> caption = {0};  // <bos>
  std::vector<Tensor<float, 2>> step_logits;
  std::vector<Index> looked_at;  // per step: the memory token the last layer attended to most
  std::vector<std::vector<float>> attention;  // per step: the last layer's weights over memory
  for (Index t = 0; t < kMaxLen - 1; ++t) {
    Tensor<std::int64_t, 2> id(1, 1);
    id(0, 0) = caption.back();
    // y: [1, 1, d_model], the newest position only; logits: [1, V]
    const auto y = decoder.step(words.forward(id, /*start=*/t), cache);
    const auto logits = lm_head.forward(y.reshape<2>({1, kDModel}));
    step_logits.push_back(logits);
    const auto& w = cache.layers.back().cross_attention;  // [1, 1, Lm]
    looked_at.push_back(argmax(w.data(), Lm));
    attention.emplace_back(w.data(), w.data() + Lm);
    caption.push_back(argmax(logits.data(), V));
    if (caption.back() == 1) break;  // <eos>
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  std::printf(
      "Greedy decoding, one word per step (untrained weights, so the words are arbitrary):"
      "\n\n  step  input        next word    p(next)  most-attended image token\n");
  for (std::size_t t = 0; t < step_logits.size(); ++t) {
    const auto p = tessera::softmax(step_logits[t]);
    const Index next = caption[t + 1], tok = looked_at[t];
    const std::string where = tok == 0 ? "class token"
                                       : "patch (" + std::to_string((tok - 1) / 4) + ", " +
                                             std::to_string((tok - 1) % 4) + ")";
    std::printf("  %4zu  %-11s  %-11s  %7.3f  %s\n", t, kVocab[caption[t]].c_str(),
                kVocab[next].c_str(), p(0, next), where.c_str());
  }
  std::printf("\nCaption: ");
  for (std::size_t i = 1; i < caption.size(); ++i) std::printf("%s ", kVocab[caption[i]].c_str());
  std::printf("\n(%zu steps in %.2f ms with the key/value cache)\n", step_logits.size(), ms);

  // The cache changes nothing: one causal forward over the caption gives the same logits.
  const Index n = static_cast<Index>(step_logits.size());
  Tensor<std::int64_t, 2> ids(1, n);
  for (Index t = 0; t < n; ++t) ids(0, t) = caption[t];
  const auto full = decoder.forward(words.forward(ids), memory, {.tgt_is_causal = true});
  const auto full_logits = lm_head.forward(full.reshape<2>({n, kDModel}));
  float diff = 0;
  for (Index t = 0; t < n; ++t)
    for (Index v = 0; v < V; ++v)
      diff = std::max(diff, std::fabs(full_logits(t, v) - step_logits[t](0, v)));
  std::printf(
      "Cached steps vs. one causal forward over the caption: max |logit difference| = %.2g\n",
      diff);

  // The pictures: rows are the words written, in order.
  const Index steps = static_cast<Index>(attention.size());
  Tensor<float, 2> weights(steps, Lm);
  std::vector<std::string> written;
  for (Index t = 0; t < steps; ++t) {
    std::copy(attention[t].begin(), attention[t].end(), &weights(t, 0));
    written.push_back(kVocab[caption[t + 1]]);
  }
  write_pictures(weights, written, image);
  std::printf(
      "Wrote captioning_attention.png (%td words x %td image tokens) and captioning_overlays.png"
      " (each word's attention over the image).\n",
      steps, Lm);
  return diff < 1e-3f ? 0 : 1;
}
