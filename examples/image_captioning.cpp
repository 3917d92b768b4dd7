// Image captioning, the vision -> language direction: a ViT-style image encoder turns an image
// into patch tokens (Dosovitskiy et al. 2021), and a transformer decoder writes a caption one word
// at a time, cross-attending to those tokens. Decoding is greedy and uses the key/value cache:
// each step runs only the newest word through the decoder and reads the earlier words' keys and
// values, and the image's keys and values, from the cache.
//
// The weights are untrained (seeded), so the words are arbitrary; the mechanism is the point. The
// program checks it: the cached steps give the same logits as one causal forward over the whole
// caption, and it prints which image patch each word looked at most.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <tessera/tessera.hpp>

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
  for (Index t = 0; t < kMaxLen - 1; ++t) {
    Tensor<std::int64_t, 2> id(1, 1);
    id(0, 0) = caption.back();
    // y: [1, 1, d_model], the newest position only; logits: [1, V]
    const auto y = decoder.step(words.forward(id, /*start=*/t), cache);
    const auto logits = lm_head.forward(y.reshape<2>({1, kDModel}));
    step_logits.push_back(logits);
    const auto& w = cache.layers.back().cross_attention;  // [1, 1, Lm]
    looked_at.push_back(argmax(w.data(), Lm));
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
  return diff < 1e-3f ? 0 : 1;
}
