// Audio-visual classification with attention bottlenecks (MBT; Nagrani et al. 2021, Attention
// Bottlenecks for Multimodal Fusion): video-frame patches and audio-spectrogram patches become
// two token sequences, each modality runs its own transformer layers, and from `fusion_layer` on
// they exchange information only through 4 shared bottleneck tokens.
//
// Synthetic clips of 4 classes: the video shows stripes, horizontal or vertical, that move
// between the two frames; the audio is a tone and its harmonic, at a random pitch, either a
// steady hum or beeps (on and off every 4 steps). The class is (sound, stripe direction), so it
// needs both modalities. The networks are untrained (seeded): each clip's features are the two
// modalities' class tokens after fusion, and a nearest-class-mean classifier is fitted on 128
// clips and scored on 64 others (random transformer features and class means: no gradient step
// anywhere).
//
// Then the same clips through early fusion (one encoder over all tokens), late fusion (the
// encoders apart) and the bottleneck model, with the same weights (the bottleneck model's two
// encoders serve late fusion; early fusion runs the video encoder over all tokens): the cost of
// each (FLOPs counted by forward_flops, and time), its accuracy, and how often it agrees with
// the bottleneck model.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <tessera/tessera.hpp>

using tessera::Index;
using tessera::Tensor;
namespace nn = tessera::nn;
namespace fusion = tessera::fusion;

namespace {

constexpr Index kFrames = 2, kImage = 32, kMel = 32, kSteps = 64, kPatch = 8, kE = 64;
constexpr Index kClasses = 4, kTrainPerClass = 32, kTestPerClass = 16;
const char* kClassNames[] = {"hum, horizontal", "hum, vertical", "beeps, horizontal",
                             "beeps, vertical"};

struct Clip {
  Tensor<float, 4> video;  // [1, 3 * kFrames, 32, 32]: the frames' channels stacked
  Tensor<float, 3> audio;  // [1, kMel, kSteps]
  Index label;
};

Clip make_clip(Index label, std::uint64_t seed) {
  const bool vertical = label % 2 == 1, beeps = label >= 2;
  Clip c{Tensor<float, 4>(1, 3 * kFrames, kImage, kImage), Tensor<float, 3>(1, kMel, kSteps),
         label};
  c.video.setRandom(seed, 0.0, 0.4);
  c.audio.setRandom(seed + 1, 0.0, 0.4);
  Tensor<float, 1> jitter(3);
  jitter.setRandom(seed + 2, 0.0, 1.0);
  const Index phase = static_cast<Index>(jitter(0) * 2);
  for (Index f = 0; f < kFrames; ++f)  // stripes of period 8, moving 2 pixels a frame
    for (Index y = 0; y < kImage; ++y)
      for (Index x = 0; x < kImage; ++x)
        if (((vertical ? x : y) + phase + 2 * f) % 8 < 3)
          for (Index ch = 0; ch < 3; ++ch) c.video(0, 3 * f + ch, y, x) += 0.8f;
  // A tone 4 bins wide and its harmonic, each in one of the 4 rows of mel-bin patches; the pitch
  // is random.
  const Index row = static_cast<Index>(jitter(1) * (kMel / kPatch));
  for (const Index r : {row, (row + 2) % (kMel / kPatch)})
    for (Index m = kPatch * r + 2; m < kPatch * r + 6; ++m)
      for (Index t = 0; t < kSteps; ++t)
        if (!beeps || (t + phase) % 8 < 4) c.audio(0, m, t) += 0.8f * (0.9f + 0.2f * jitter(2));
  return c;
}

// The tokens of both modalities, with their class tokens first: video [1, 17, E], audio [1, 33, E].
struct Tokenizers {
  nn::PatchEmbedding<float> video;       // tubelets: a patch spans both frames (ViViT)
  nn::AudioPatchEmbedding<float> audio;  // AST's 2-D patches over mel bins and time
};

// Features of a clip: the two class tokens after fusion, [2 E].
using FeatureFn =
    std::function<std::vector<float>(const Tensor<float, 3>&, const Tensor<float, 3>&)>;

// The two class-token rows, each [E], side by side: [2 E].
std::vector<float> concat_rows(const float* video_cls, const float* audio_cls) {
  std::vector<float> f(2 * kE);
  std::copy_n(video_cls, kE, f.begin());
  std::copy_n(audio_cls, kE, f.begin() + kE);
  return f;
}

float dist2(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d += (a[i] - b[i]) * (a[i] - b[i]);
  return d;
}

struct Result {
  double accuracy = 0, ms_per_clip = 0;
  std::vector<Index> predictions;
  std::vector<std::vector<float>> scores;  // per test clip, softmax over -distance
};

Result evaluate(const FeatureFn& features, const Tokenizers& tok, const std::vector<Clip>& train,
                const std::vector<Clip>& test) {
  auto run = [&](const Clip& c) {
    return features(tok.video.forward(c.video), tok.audio.forward(c.audio));
  };
  // Class means of the fitting clips' features, and their spread around them: sigma^2, the mean
  // squared distance per feature of a clip to its class mean.
  std::vector<std::vector<float>> fit;
  for (const auto& c : train) fit.push_back(run(c));
  std::vector<std::vector<float>> means(kClasses, std::vector<float>(2 * kE, 0.0f));
  for (std::size_t n = 0; n < train.size(); ++n)
    for (Index i = 0; i < 2 * kE; ++i) means[train[n].label][i] += fit[n][i] / kTrainPerClass;
  float sigma2 = 0;
  for (std::size_t n = 0; n < train.size(); ++n)
    sigma2 += dist2(fit[n], means[train[n].label]) / static_cast<float>(train.size() * 2 * kE);
  Result r;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& c : test) {
    const auto f = run(c);
    std::vector<float> s(kClasses);
    // scores: softmax of -|f - mean_k|^2 / (2 sigma^2 dims), each class a Gaussian around its mean
    for (Index k = 0; k < kClasses; ++k) s[k] = -dist2(f, means[k]) / (2 * sigma2 * 2 * kE);
    const float top = *std::max_element(s.begin(), s.end());
    float sum = 0;
    for (auto& v : s) sum += v = std::exp(v - top);
    for (auto& v : s) v /= sum;
    r.predictions.push_back(std::max_element(s.begin(), s.end()) - s.begin());
    r.accuracy += (r.predictions.back() == c.label) / static_cast<double>(test.size());
    r.scores.push_back(s);
  }
  r.ms_per_clip =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() /
      static_cast<double>(test.size());
  return r;
}

double agreement(const Result& a, const Result& b) {
  Index same = 0;
  for (std::size_t i = 0; i < a.predictions.size(); ++i)
    same += a.predictions[i] == b.predictions[i];
  return static_cast<double>(same) / static_cast<double>(a.predictions.size());
}

}  // namespace

int main() {
  tessera::set_num_threads(1);  // steady timings on a shared machine
  const Tokenizers tok{nn::PatchEmbedding<float>({.image_size = {kImage, kImage},
                                                  .patch_size = {kPatch, kPatch},
                                                  .in_channels = 3 * kFrames,
                                                  .embed_dim = kE,
                                                  .cls_token = true,
                                                  .seed = 1}),
                       nn::AudioPatchEmbedding<float>({.mel_bins = kMel,
                                                       .frames = kSteps,
                                                       .patch_size = {kPatch, kPatch},
                                                       .embed_dim = kE,
                                                       .cls_token = true,
                                                       .seed = 2})};
  const Index Lv = tok.video.num_tokens(), La = tok.audio.num_tokens();
  const nn::TransformerEncoderOptions encoder{.layer = {.d_model = kE,
                                                        .nhead = 4,
                                                        .dim_feedforward = 2 * kE,
                                                        .norm_first = true,
                                                        .seed = 3},
                                              .num_layers = 4,
                                              .final_norm = true};

  // The bottleneck model, and the two limits with the same per-modality encoders.
  const fusion::BottleneckFusion<float> mbt(
      {.encoder = encoder, .fusion_layer = 2, .n_bottlenecks = 4, .seed = 4});
  fusion::LateFusion<float> late({.encoder = encoder});
  late.load_state_dict(mbt.state_dict(), "", /*strict=*/false);  // encoders.<m>.*
  fusion::EarlyFusion<float> early({.encoder = encoder, .seed = 5});
  early.encoder.load_state_dict(mbt.state_dict(), "encoders.0.", /*strict=*/false);

  std::vector<Clip> train, test;
  for (Index k = 0; k < kClasses; ++k) {
    for (Index i = 0; i < kTrainPerClass; ++i)
      train.push_back(make_clip(k, 1000 + 10 * (k * 100 + i)));
    for (Index i = 0; i < kTestPerClass; ++i)
      test.push_back(make_clip(k, 9000 + 10 * (k * 100 + i)));
  }
  std::printf(
      "Clips: video %td frames of %td x %td (%td tubelet tokens + class token), audio %td"
      " mel bins x %td steps (%td patch tokens + class token); %td classes, %zu clips to"
      " fit the class means, %zu to test.\n\n",
      kFrames, kImage, kImage, Lv - 1, kMel, kSteps, La - 1, kClasses, train.size(), test.size());

  const Result r_mbt = evaluate(
      [&](const auto& v, const auto& a) {
        const auto out = mbt.forward({v, a});
        return concat_rows(out.tokens[0].data(), out.tokens[1].data());
      },
      tok, train, test);
  const Result r_late = evaluate(
      [&](const auto& v, const auto& a) {
        const auto out = late.forward({v, a});
        return concat_rows(out.pooled[0].data(), out.pooled[1].data());
      },
      tok, train, test);
  const Result r_early = evaluate(
      [&](const auto& v, const auto& a) {
        const auto out = early.forward({v, a});  // [1, Lv + La, E]
        return concat_rows(&out(0, 0, 0), &out(0, Lv, 0));
      },
      tok, train, test);

  std::printf(
      "Bottleneck fusion (fusion_layer 2 of 4, 4 bottleneck tokens), class scores of the"
      " first test clip of each class:\n\n  %-22s",
      "true class");
  for (Index k = 0; k < kClasses; ++k) std::printf("  %9s%td", "class ", k);
  std::printf("\n");
  for (Index k = 0; k < kClasses; ++k) {
    const auto& s = r_mbt.scores[k * kTestPerClass];
    std::printf("  %td %-20s", k, kClassNames[k]);
    for (Index j = 0; j < kClasses; ++j) std::printf("  %10.3f", s[j]);
    std::printf("   -> class %td\n", r_mbt.predictions[k * kTestPerClass]);
  }

  const std::vector<Index> lengths = {Lv, La};
  std::printf(
      "\nThe three fusion styles on the same clips (%td video + %td audio tokens, width %td,"
      " 4 layers):\n\n  %-34s %12s %12s %9s %22s\n",
      Lv, La, kE, "style", "MFLOP/clip", "ms/clip", "accuracy", "agrees with bottleneck");
  auto row = [&](const char* name, double flops, const Result& r) {
    std::printf("  %-34s %12.2f %12.3f %8.0f%% %21.0f%%\n", name, flops / 1e6, r.ms_per_clip,
                100 * r.accuracy, 100 * agreement(r, r_mbt));
  };
  row("early (one encoder, all tokens)", early.forward_flops(lengths), r_early);
  row("bottleneck (fusion from layer 2)", mbt.forward_flops(lengths), r_mbt);
  row("late (encoders apart)", late.forward_flops(lengths), r_late);
  std::printf("\n(Time is for the whole forward per clip on this machine, one clip at a time.)\n");
  return 0;
}
