// An encoder-decoder transformer, decoded one token at a time with a key/value cache, and the
// cross-attention weights that show which source word each target word looks at.
//
// The task is to read a sentence and write it backwards. The weights are random (seeded) except
// for the decoder's cross-attention projections, which are set so that a query matches the keys
// of the same word (W_q = 2 I, W_k = I): an untrained network with one hand-built "alignment"
// head. The cross-attention map then shows the alignment a trained translation model learns:
// here an anti-diagonal, with the repeated word split between its two occurrences.
//
// Prints the weights as a table and writes them as cross_attention.png (a labelled heatmap with a
// colour scale).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <tessera/image/heatmap.hpp>
#include <tessera/image/write.hpp>
#include <tessera/tessera.hpp>

using tessera::Index;
using tessera::Tensor;
namespace nn = tessera::nn;

namespace {

constexpr Index kDModel = 32;
constexpr Index kHeads = 4;

const std::vector<std::string> kVocab = {"<bos>", "the", "cat", "sat", "on", "mat", "a", "dog"};

Index token_id(const std::string& w) {
  return std::find(kVocab.begin(), kVocab.end(), w) - kVocab.begin();
}

// ids [1, n] -> embeddings * sqrt(d_model) + sinusoidal positions, [1, n, d_model]
Tensor<float, 3> embed(const nn::Embedding<float>& emb,
                       const nn::SinusoidalPositionalEncoding<float>& pos,
                       const std::vector<std::string>& words, Index start = 0) {
  Tensor<std::int64_t, 2> ids(1, static_cast<Index>(words.size()));
  for (std::size_t i = 0; i < words.size(); ++i) ids(0, static_cast<Index>(i)) = token_id(words[i]);
  auto x = emb.forward(ids);
  x.as_array() *= std::sqrt(static_cast<float>(kDModel));  // as in Vaswani et al. 2017
  return pos.forward(x, start);
}

}  // namespace

int main() {
  const std::vector<std::string> source = {"the", "cat", "sat", "on", "the", "mat"};
  std::vector<std::string> target(source.rbegin(), source.rend());
  const Index Ls = static_cast<Index>(source.size()), Lt = static_cast<Index>(target.size());

  nn::Embedding<float> emb(
      {.num_embeddings = static_cast<Index>(kVocab.size()), .embedding_dim = kDModel, .seed = 1});
  nn::SinusoidalPositionalEncoding<float> pos({.max_len = 64, .embed_dim = kDModel});
  const nn::TransformerLayerOptions layer{
      .d_model = kDModel, .nhead = kHeads, .dim_feedforward = 64, .seed = 2};
  nn::TransformerEncoder<float> encoder({.layer = layer, .num_layers = 1});
  nn::TransformerDecoder<float> decoder({.layer = layer, .num_layers = 1});

  // An untrained network whose attention and feed-forward blocks are small next to the residual
  // stream, and one cross-attention built to align equal words.
  auto shrink = [](auto& p) { p.value.as_array() *= 0.1f; };
  shrink(encoder.layers[0].self_attn.out_proj.weight);
  shrink(encoder.layers[0].ff.linear2.weight);
  shrink(decoder.layers[0].self_attn.out_proj.weight);
  shrink(decoder.layers[0].ff.linear2.weight);
  auto& cross = decoder.layers[0].multihead_attn;
  auto w = cross.in_proj_weight.value.as_matrix();  // [3E, E]: W_q; W_k; W_v
  w.topRows(kDModel).setIdentity();
  w.topRows(kDModel) *= 2.0f;
  w.middleRows(kDModel, kDModel).setIdentity();
  cross.in_proj_bias.value.setZero();

  // memory: [1, Ls, d_model]
  const auto memory = encoder.forward(embed(emb, pos, source));

  // Decode with the cache: each step runs one target position against the cached keys/values.
  auto cache = decoder.make_cache(memory);
  cache.record_cross_attention(true);
  Tensor<float, 2> attention(Lt, Ls);  // [target step, source position]
  Tensor<float, 3> stepped(1, Lt, kDModel);
  for (Index t = 0; t < Lt; ++t) {
    const auto y = decoder.step(embed(emb, pos, {target[t]}, t), cache);  // [1, 1, d_model]
    const auto& weights = cache.layers[0].cross_attention;                // [1, 1, Ls]
    for (Index j = 0; j < Ls; ++j) attention(t, j) = weights(0, 0, j);
    std::copy_n(y.data(), kDModel, &stepped(0, t, 0));
  }

  // The cached steps equal one causal forward over the whole target.
  const auto full = decoder.forward(embed(emb, pos, target), memory, {.tgt_is_causal = true});
  const float diff = (full.as_vector() - stepped.as_vector()).cwiseAbs().maxCoeff();

  std::printf("Source:  %s", "");
  for (const auto& s : source) std::printf("%s ", s.c_str());
  std::printf("\nTarget:  ");
  for (const auto& s : target) std::printf("%s ", s.c_str());
  std::printf(
      "\n\nCross-attention weights, one row per decoding step (averaged over %td heads):\n\n",
      kHeads);
  std::printf("  %-8s", "step");
  for (Index j = 0; j < Ls; ++j) std::printf(" %6s", source[j].c_str());
  std::printf("\n");
  const char* shades = " .:-=+*#%@";
  for (Index t = 0; t < Lt; ++t) {
    std::printf("  %td %-6s", t, target[t].c_str());
    for (Index j = 0; j < Ls; ++j) std::printf(" %6.3f", attention(t, j));
    std::printf("   |");
    for (Index j = 0; j < Ls; ++j)
      std::printf("%c%c", shades[std::min(9, static_cast<int>(attention(t, j) * 10))],
                  shades[std::min(9, static_cast<int>(attention(t, j) * 10))]);
    std::printf("|\n");
  }
  const Index step = 1;
  std::printf(
      "\nStep %td writes '%s'; its query puts %.0f%% of its attention on source position %td"
      " ('%s').\n",
      step, target[step].c_str(), 100 * attention(step, Ls - 1 - step), Ls - 1 - step,
      source[Ls - 1 - step].c_str());
  std::printf("The repeated word 'the' splits its attention between its two occurrences.\n");
  std::printf("Cached step-by-step decoding vs. full causal forward: max |difference| = %.2g\n",
              diff);
  // The same weights as a picture: decoding steps down, source words across, a colour scale.
  std::vector<std::string> rows;
  for (Index t = 0; t < Lt; ++t) rows.push_back(std::to_string(t) + " " + target[t]);
  tessera::image::write_png("cross_attention.png",
                            tessera::image::heatmap(attention, rows, source,
                                                    {.title = "cross-attention, mean of 4 heads",
                                                     .x_label = "source word",
                                                     .y_label = "decoding step",
                                                     .vmin = 0.0,
                                                     .vmax = 1.0}));
  std::printf("Wrote cross_attention.png (%td steps x %td source words, with a colour scale).\n",
              Lt, Ls);
  return diff < 1e-4f ? 0 : 1;
}
