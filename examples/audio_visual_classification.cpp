// Audio-visual classification with attention bottlenecks (MBT; Nagrani et al. 2021, Attention
// Bottlenecks for Multimodal Fusion): video-frame patches and audio-spectrogram patches become
// two token sequences, each modality runs its own transformer layers, and from `fusion_layer` on
// they exchange information only through 4 shared bottleneck tokens.
//
// What is synthetic: the clips of 4 classes. The video shows stripes, horizontal or vertical,
// that move between the two frames (pixels written directly). The sound is a waveform, 0.655 s
// of 16 kHz mono: a tone at a random pitch (200 - 1000 Hz) and its second harmonic, either a
// steady hum or beeps (80 ms on, 80 ms off), over a little white noise. The class is (sound,
// stripe direction), so it needs both modalities.
//
// What is real: the audio front end. Each waveform goes through tessera's audio layer as AST
// (Gong et al. 2021, AST: Audio Spectrogram Transformer) prepares its input: Kaldi log mel
// filterbank features (audio::Fbank, equal to torchaudio.compliance.kaldi.fbank), 32 mel bins
// every 10 ms (64 frames), normalised by the fitting clips' mean and twice their standard
// deviation. At the end one real recording (tests/fixtures/audio/speech_16k.wav, or a sound file
// given as the first argument) goes through the same front end and the audio tower, to show the
// pipeline on real sound; it is speech, none of the 4 classes, and the model is untrained.
//
// The networks are untrained (seeded): each clip's features are the two modalities' class tokens
// after fusion, and a nearest-class-mean classifier is fitted on 128 clips and scored on 64
// others (random transformer features and class means: no gradient step anywhere).
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
#include <exception>
#include <filesystem>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include <tessera/audio/audio_file.hpp>
#include <tessera/audio/fbank.hpp>
#include <tessera/tessera.hpp>

using tessera::Index;
using tessera::Tensor;
namespace audio = tessera::audio;
namespace nn = tessera::nn;
namespace fusion = tessera::fusion;

namespace {

constexpr Index kFrames = 2, kImage = 32, kMel = 32, kSteps = 64, kPatch = 8, kE = 64;
constexpr Index kClasses = 4, kTrainPerClass = 32, kTestPerClass = 16;
const char* kClassNames[] = {"hum, horizontal", "hum, vertical", "beeps, horizontal",
                             "beeps, vertical"};

// The audio front end. Kaldi fbank rather than audio::MelSpectrogram + log_mel_spectrogram
// because it is the input AudioPatchEmbedding's model, AST, was trained on (its dataloader calls
// torchaudio.compliance.kaldi.fbank with htk_compat, a Hann window, no energy column, 10 ms
// shift); AST uses 128 mel bins over 1024 frames, this small model 32 over 64. Frames of 25 ms
// every 10 ms without padding at the edges (snip_edges): 64 frames take 400 + 63 * 160 samples.
constexpr int kSampleRate = 16000;
constexpr Index kWindow = 400, kShift = 160, kSamples = kWindow + (kSteps - 1) * kShift;

audio::FbankOptions ast_fbank_options() {
  return {.frame_length = 1000.0 * kWindow / kSampleRate,  // 25 ms
          .frame_shift = 1000.0 * kShift / kSampleRate,    // 10 ms
          .htk_compat = true,
          .num_mel_bins = kMel,
          .sample_frequency = kSampleRate,
          .use_energy = false,
          .window_type = "hanning"};
}

// Log mel features [frames, kMel] of a mono waveform [1, samples]; AST removes the waveform's
// mean first.
Tensor<float, 2> log_fbank(const audio::Fbank<float>& front, Tensor<float, 2> waveform) {
  float mean = 0;
  for (Index i = 0; i < waveform.size(); ++i) mean += waveform.data()[i];
  mean /= static_cast<float>(waveform.size());
  for (Index i = 0; i < waveform.size(); ++i) waveform.data()[i] -= mean;
  return front(waveform);
}

// AST's input normalisation (Gong et al. 2021; ast/src/dataloader.py and get_norm_stats.py):
// (fbank - mean) / (2 std), mean and std taken once over every value of the training set's
// features (AudioSet: -4.27 and 4.57), so that the input has mean 0 and std 0.5. Here the
// statistics are the fitting clips', and the recording at the end is normalised with them too,
// as AST normalises any input with its training set's.
struct FbankStats {
  double mean = 0, stddev = 1;
};

FbankStats fbank_stats(const std::vector<const Tensor<float, 2>*>& features) {
  double sum = 0, sum_sq = 0, n = 0;
  for (const auto* f : features)
    for (Index i = 0; i < f->size(); ++i) {
      sum += f->data()[i];
      sum_sq += static_cast<double>(f->data()[i]) * f->data()[i];
      n += 1;
    }
  const double mean = sum / n;
  return {mean, std::sqrt(std::max(sum_sq / n - mean * mean, 0.0))};
}

// fbank [frames, kMel] -> the spectrogram AudioPatchEmbedding takes, [1, kMel, kSteps]: frames
// [first, first + kSteps), zero rows past the end (AST pads its fbank with zeros to its target
// length, then normalises), minus the mean, over 2 std.
Tensor<float, 3> normalised_spectrogram(const Tensor<float, 2>& fbank, Index first,
                                        const FbankStats& s) {
  Tensor<float, 3> spec(1, kMel, kSteps);  // [1, mel, time]: the transpose of fbank's rows
  for (Index t = 0; t < kSteps; ++t)
    for (Index m = 0; m < kMel; ++m) {
      const float v = first + t < fbank.shape()[0] ? fbank(first + t, m) : 0.0f;
      spec(0, m, t) = static_cast<float>((v - s.mean) / (2 * s.stddev));
    }
  return spec;
}

struct Clip {
  Tensor<float, 4> video;  // [1, 3 * kFrames, 32, 32]: the frames' channels stacked
  Tensor<float, 2> fbank;  // [kSteps, kMel]: log mel features of the sound
  Tensor<float, 3> audio;  // [1, kMel, kSteps]: fbank normalised (set once the statistics exist)
  Index label;
};

// The sound of a clip, [1, kSamples] at 16 kHz: a tone at pitch f0 (log-uniform in 200 - 1000 Hz)
// and its second harmonic 2 f0 at half its amplitude, steady (hum) or switched on and off every
// 80 ms with 5 ms raised-cosine edges (beeps, at a random phase), plus white Gaussian noise 27 dB
// below the tone. Beeps every 40 ms, as the earlier version wrote into its spectrograms, leave
// barely two quiet 25 ms frames per gap; the untrained model then told hum from beeps hardly
// better than chance (bottleneck accuracy 64 %, against 77 % with 80 ms).
Tensor<float, 2> clip_sound(bool beeps, const Tensor<float, 1>& jitter, std::uint64_t seed) {
  constexpr double kPi = std::numbers::pi;
  constexpr Index kHalfPeriod = kSampleRate * 80 / 1000, kRamp = kSampleRate * 5 / 1000;
  const double f0 = 200.0 * std::pow(5.0, jitter(1));
  const double amplitude = 0.3 * (0.9 + 0.2 * jitter(2));
  const auto offset = static_cast<Index>(jitter(3) * 2 * kHalfPeriod);
  Tensor<float, 2> x(1, kSamples);
  x.setRandomNormal(seed, 0.0, 0.01);
  for (Index n = 0; n < kSamples; ++n) {
    double gate = 1;
    if (beeps) {
      const Index p = (n + offset) % (2 * kHalfPeriod);  // on for p < kHalfPeriod
      const double edge = std::min<double>(
          {1.0, static_cast<double>(p) / kRamp, static_cast<double>(kHalfPeriod - p) / kRamp});
      gate = p < kHalfPeriod ? 0.5 - 0.5 * std::cos(kPi * edge) : 0.0;
    }
    const double t = static_cast<double>(n) / kSampleRate;
    x(0, n) += static_cast<float>(gate * amplitude *
                                  (std::sin(2 * kPi * f0 * t) + 0.5 * std::sin(4 * kPi * f0 * t)));
  }
  return x;
}

Clip make_clip(const audio::Fbank<float>& front, Index label, std::uint64_t seed) {
  const bool vertical = label % 2 == 1, beeps = label >= 2;
  Clip c{Tensor<float, 4>(1, 3 * kFrames, kImage, kImage), {}, {}, label};
  c.video.setRandom(seed, 0.0, 0.4);
  Tensor<float, 1> jitter(4);
  jitter.setRandom(seed + 2, 0.0, 1.0);
  const Index phase = static_cast<Index>(jitter(0) * 2);
  for (Index f = 0; f < kFrames; ++f)  // stripes of period 8, moving 2 pixels a frame
    for (Index y = 0; y < kImage; ++y)
      for (Index x = 0; x < kImage; ++x)
        if (((vertical ? x : y) + phase + 2 * f) % 8 < 3)
          for (Index ch = 0; ch < 3; ++ch) c.video(0, 3 * f + ch, y, x) += 0.8f;
  c.fbank = log_fbank(front, clip_sound(beeps, jitter, seed + 1));  // [kSteps, kMel]
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

// Spectrograms [1, kMel, kSteps] side by side as text, 2 mel bins by 2 frames a character, high
// frequencies on top, on one shared scale from the lowest value to the highest.
void print_spectrograms(const std::vector<const Tensor<float, 3>*>& panels,
                        const std::vector<std::string>& titles) {
  constexpr const char* kRamp = " .:-=+*#%@";
  float lo = panels[0]->data()[0], hi = lo;
  for (const auto* p : panels)
    for (Index i = 0; i < p->size(); ++i) {
      lo = std::min(lo, p->data()[i]);
      hi = std::max(hi, p->data()[i]);
    }
  std::printf("  ");
  for (const auto& t : titles) std::printf("%-*s  ", static_cast<int>(kSteps / 2), t.c_str());
  std::printf("\n");
  for (Index r = kMel / 2 - 1; r >= 0; --r) {
    std::printf("  ");
    for (const auto* p : panels) {
      for (Index c = 0; c < kSteps / 2; ++c) {
        const float v = ((*p)(0, 2 * r, 2 * c) + (*p)(0, 2 * r + 1, 2 * c) +
                         (*p)(0, 2 * r, 2 * c + 1) + (*p)(0, 2 * r + 1, 2 * c + 1)) /
                        4;
        std::putchar(kRamp[std::clamp(static_cast<int>((v - lo) / (hi - lo) * 10), 0, 9)]);
      }
      std::printf("  ");
    }
    std::printf("\n");
  }
  std::printf(
      "  (scale '%s' from %.2f to %.2f; mel bins 20 Hz - 8 kHz bottom to top, time left to"
      " right)\n",
      kRamp, lo, hi);
}

// Cosine similarity of two [E] vectors.
float cosine(const float* a, const float* b) {
  float ab = 0, aa = 0, bb = 0;
  for (Index i = 0; i < kE; ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

// A real recording through the same front end and the audio tower: the bottleneck model's audio
// tokenizer and encoder, run alone (no video, no bottleneck), window by window. `fit` are the
// fitting clips: the tower's class tokens of their hums and beeps are averaged for comparison.
void show_recording(const std::filesystem::path& path, const audio::Fbank<float>& front,
                    const FbankStats& stats, const Tokenizers& tok,
                    const nn::TransformerEncoder<float>& audio_encoder,
                    const std::vector<Clip>& fit) {
  std::printf(
      "\nA real recording through the same front end (a demonstration of the pipeline on real"
      " sound:\nit is not one of the 4 classes and the model is untrained, so its outputs carry"
      " no meaning).\n\n");
  const audio::AudioInfo file = audio::audio_info(path);
  const auto rec = audio::read_audio<float>(path, kSampleRate);  // resampled if not 16 kHz
  Tensor<float, 2> mono(1, rec.frames());                        // its first channel
  std::copy_n(rec.waveform.data(), rec.frames(), mono.data());
  const Tensor<float, 2> fbank = log_fbank(front, mono);  // [frames, kMel]
  const Index frames = fbank.shape()[0], windows = (frames + kSteps - 1) / kSteps;
  std::printf("  %s (%s): %td channel(s), %td samples at %d Hz (%.2f s)\n", path.filename().c_str(),
              file.format.c_str(), rec.channels(), file.frames, file.sample_rate,
              rec.duration_seconds());
  if (file.sample_rate != kSampleRate || rec.channels() > 1)
    std::printf("  -> %td samples at %d Hz (libsamplerate where the rate differs), channel 0\n",
                rec.frames(), kSampleRate);
  std::printf("  -> Kaldi fbank (as AST's): [%td frames, %td mel bins], 10 ms a frame\n", frames,
              kMel);
  std::printf(
      "  -> %td windows of %td frames (the last padded with zeros, as AST pads to its target"
      " length),\n     normalised with the synthetic fitting clips' statistics: [1, %td, %td]"
      " each\n",
      windows, kSteps, kMel, kSteps);
  std::printf(
      "  -> audio patch embedding: [1, %td, %td] (%td patches of %td x %td + class token)\n",
      tok.audio.num_tokens(), kE, tok.audio.num_tokens() - 1, kPatch, kPatch);
  std::printf(
      "  -> audio encoder (%zu layers): [1, %td, %td]; its class token is compared with"
      " the\n     mean class token of the fitting clips' hums and of their beeps\n\n",
      audio_encoder.layers.size(), tok.audio.num_tokens(), kE);

  // The audio tower's class token of each sound, averaged over the fitting hums and beeps: [E].
  std::vector<float> hum_mean(kE, 0.0f), beeps_mean(kE, 0.0f);
  const Clip *hum = nullptr, *beeps = nullptr;
  for (const auto& c : fit) {
    const Tensor<float, 3> out = audio_encoder.forward(tok.audio.forward(c.audio));  // [1, 33, E]
    auto& mean = c.label >= 2 ? beeps_mean : hum_mean;
    for (Index i = 0; i < kE; ++i) mean[i] += out(0, 0, i) / static_cast<float>(fit.size() / 2);
    (c.label >= 2 ? beeps : hum) = &c;
  }

  std::printf("  %-8s %-18s %-12s %11s %10s %22s %24s\n", "window", "frames", "seconds",
              "input mean", "input std", "class token: cos hum", "cos beeps (no meaning)");
  Tensor<float, 3> first_window;
  for (Index w = 0; w < windows; ++w) {
    const Index begin = w * kSteps, end = std::min(begin + kSteps, frames);
    const Tensor<float, 3> spec = normalised_spectrogram(fbank, begin, stats);  // [1, kMel, kSteps]
    if (w == 0) first_window = spec;
    double mean = 0, sq = 0;
    for (Index i = 0; i < spec.size(); ++i) {
      mean += spec.data()[i] / static_cast<double>(spec.size());
      sq += static_cast<double>(spec.data()[i]) * spec.data()[i] / static_cast<double>(spec.size());
    }
    const Tensor<float, 3> out = audio_encoder.forward(tok.audio.forward(spec));  // [1, 33, E]
    const std::string span = std::to_string(begin) + " - " + std::to_string(end - 1) +
                             (end - begin < kSteps ? " (+pad)" : "");
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%.2f - %.2f", begin * 0.01, (end - 1) * 0.01 + 0.025);
    std::printf("  %-8td %-18s %-12s %11.3f %10.3f %22.3f %24.3f\n", w, span.c_str(), seconds, mean,
                std::sqrt(std::max(sq - mean * mean, 0.0)), cosine(&out(0, 0, 0), hum_mean.data()),
                cosine(&out(0, 0, 0), beeps_mean.data()));
  }
  std::printf("\nThe audio tower's inputs, [1, %td, %td] each, normalised:\n\n", kMel, kSteps);
  print_spectrograms(
      {&hum->audio, &beeps->audio, &first_window},
      {"synthetic hum (class " + std::to_string(hum->label) + ")",
       "synthetic beeps (class " + std::to_string(beeps->label) + ")", "recording, window 0"});
}

}  // namespace

int main(int argc, char** argv) {
  tessera::set_num_threads(1);  // steady timings on a shared machine
  const audio::Fbank<float> front(ast_fbank_options());
  if (front.num_frames(kSamples) != kSteps) {
    std::fprintf(stderr, "fbank gives %td frames for %td samples, expected %td\n",
                 front.num_frames(kSamples), kSamples, kSteps);
    return 1;
  }
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
      train.push_back(make_clip(front, k, 1000 + 10 * (k * 100 + i)));
    for (Index i = 0; i < kTestPerClass; ++i)
      test.push_back(make_clip(front, k, 9000 + 10 * (k * 100 + i)));
  }
  // AST's normalisation, with the fitting clips' statistics for every clip.
  std::vector<const Tensor<float, 2>*> fit_features;
  for (const auto& c : train) fit_features.push_back(&c.fbank);
  const FbankStats stats = fbank_stats(fit_features);
  for (auto* clips : {&train, &test})
    for (auto& c : *clips) c.audio = normalised_spectrogram(c.fbank, 0, stats);
  std::printf(
      "Clips: video %td frames of %td x %td (%td tubelet tokens + class token); audio %.3f s"
      " at %d Hz -> Kaldi fbank as AST's, %td mel bins x %td frames of 10 ms (%td patch"
      " tokens + class token), normalised as AST: (fbank - (%.2f)) / (2 x %.2f), the fitting"
      " clips' mean and std; %td classes, %zu clips to fit the class means, %zu to test.\n\n",
      kFrames, kImage, kImage, Lv - 1, static_cast<double>(kSamples) / kSampleRate, kSampleRate,
      kMel, kSteps, La - 1, stats.mean, stats.stddev, kClasses, train.size(), test.size());

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

  const std::filesystem::path recording =
      argc > 1 ? std::filesystem::path(argv[1])
               : std::filesystem::path(__FILE__).parent_path().parent_path() / "tests" /
                     "fixtures" / "audio" / "speech_16k.wav";
  try {
    show_recording(recording, front, stats, tok, mbt.encoders[1], train);
  } catch (const std::exception& e) {
    std::printf("\n(No recording shown: %s)\n", e.what());
  }
  return 0;
}
