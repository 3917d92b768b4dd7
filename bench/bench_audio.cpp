// tessera benchmarks: the audio front ends, single-threaded, on synthetic 16 kHz audio (a chirp
// plus noise), each beside a naive reference that computes the same features with a plain DFT
// per frame (a precomputed cos/sin table, O(n^2) per frame) and a dense mel matrix.
//
// Counters: "x_realtime" is seconds of audio processed per second of wall time (the real-time
// factor's inverse: 1000 means 1 s of audio takes 1 ms), items/s is samples per second.
//
//   ./bench_audio --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//       --benchmark_min_time=0.2

#include <cmath>
#include <complex>
#include <numbers>
#include <tessera/audio/fbank.hpp>
#include <tessera/audio/mel_spectrogram.hpp>
#include <tessera/audio/resample.hpp>
#include <vector>

#include "bench_common.hpp"

namespace {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using namespace tessera_bench;
namespace audio = tessera::audio;

// `seconds` of a 100 Hz .. 7 kHz chirp at 0.3 plus uniform noise at 0.05, at `rate` Hz.
template <class T>
Tensor<T, 2> test_signal(double seconds, int rate) {
  const auto n = static_cast<Index>(seconds * rate);
  Tensor<T, 2> x = random_tensor<T, 2>({1, n}, 42, -0.05, 0.05);
  const double f0 = 100, f1 = 7000;
  for (Index i = 0; i < n; ++i) {
    const double t = static_cast<double>(i) / rate;
    const double phase = 2 * std::numbers::pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds));
    x(0, i) += static_cast<T>(0.3 * std::sin(phase));
  }
  return x;
}

void set_realtime(benchmark::State& state, double seconds, Index samples) {
  const auto it = static_cast<double>(state.iterations());
  state.SetItemsProcessed(static_cast<std::int64_t>(it * static_cast<double>(samples)));
  state.counters["x_realtime"] = benchmark::Counter(it * seconds, benchmark::Counter::kIsRate);
}

// ---------------------------------------------------------------- Kaldi fbank, AST's options

audio::FbankOptions ast_options() {
  return {.dither = 0.0,
          .frame_shift = 10,
          .htk_compat = true,
          .num_mel_bins = 128,
          .use_energy = false,
          .window_type = "hanning"};
}

template <class T>
void BM_Fbank_AST(benchmark::State& state) {
  single_thread();
  const double seconds = static_cast<double>(state.range(0));
  const auto x = test_signal<T>(seconds, 16000);
  const audio::Fbank<T> fbank(ast_options());
  for (auto _ : state) {
    auto out = fbank(x);
    benchmark::DoNotOptimize(out.data());
  }
  set_realtime(state, seconds, x.dim(1));
}

// The same features with a plain DFT per frame and a dense [frames, bins] x [bins, mels] sum.
void BM_Fbank_AST_NaiveDft(benchmark::State& state) {
  single_thread();
  const double seconds = static_cast<double>(state.range(0));
  const auto x = test_signal<double>(seconds, 16000);
  const audio::Fbank<double> ref(ast_options());
  const Index w = ref.window_size(), shift = ref.window_shift(), n = ref.padded_window_size();
  const Index bins = n / 2, mels = 128, frames = ref.num_frames(x.dim(1));
  const auto banks = audio::kaldi_mel_banks<double>(mels, n, 16000, 20, 0);
  std::vector<double> cos_t(static_cast<std::size_t>(n)), sin_t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    cos_t[static_cast<std::size_t>(i)] = std::cos(2 * std::numbers::pi * i / n);
    sin_t[static_cast<std::size_t>(i)] = std::sin(2 * std::numbers::pi * i / n);
  }
  const auto& win = ref.window();
  std::vector<double> frame(static_cast<std::size_t>(n)), power(static_cast<std::size_t>(bins));
  Tensor<double, 2> out(Shape<2>{frames, mels});
  for (auto _ : state) {
    for (Index f = 0; f < frames; ++f) {
      double mean = 0;
      for (Index k = 0; k < w; ++k) mean += x(0, f * shift + k);
      mean /= static_cast<double>(w);
      for (Index k = 0; k < w; ++k) frame[static_cast<std::size_t>(k)] = x(0, f * shift + k) - mean;
      for (Index k = w - 1; k > 0; --k)
        frame[static_cast<std::size_t>(k)] -= 0.97 * frame[static_cast<std::size_t>(k - 1)];
      frame[0] -= 0.97 * frame[0];
      for (Index k = 0; k < w; ++k) frame[static_cast<std::size_t>(k)] *= win(k);
      for (Index k = w; k < n; ++k) frame[static_cast<std::size_t>(k)] = 0;
      for (Index b = 0; b < bins; ++b) {
        double re = 0, im = 0;
        for (Index k = 0; k < n; ++k) {
          const auto idx = static_cast<std::size_t>((b * k) % n);
          re += frame[static_cast<std::size_t>(k)] * cos_t[idx];
          im -= frame[static_cast<std::size_t>(k)] * sin_t[idx];
        }
        power[static_cast<std::size_t>(b)] = re * re + im * im;
      }
      for (Index m = 0; m < mels; ++m) {
        double e = 0;
        for (Index b = 0; b < bins; ++b) e += banks(m, b) * power[static_cast<std::size_t>(b)];
        out(f, m) = std::log(std::max(e, 1.1920928955078125e-07));
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  set_realtime(state, seconds, x.dim(1));
}

// ---------------------------------------------------------------- MelSpectrogram (defaults)

template <class T>
void BM_MelSpectrogram(benchmark::State& state) {
  single_thread();
  const double seconds = static_cast<double>(state.range(0));
  const auto x2 = test_signal<T>(seconds, 16000);
  const Tensor<T, 1> x(x2[0]);
  const audio::MelSpectrogram<T> mel;  // n_fft 400, hop 200, 128 mels, power 2
  for (auto _ : state) {
    auto out = mel(x);
    benchmark::DoNotOptimize(out.data());
  }
  set_realtime(state, seconds, x.dim(0));
}

template <class T>
void BM_LogMelSpectrogram(benchmark::State& state) {
  single_thread();
  const double seconds = static_cast<double>(state.range(0));
  const auto x2 = test_signal<T>(seconds, 16000);
  const Tensor<T, 1> x(x2[0]);
  const audio::MelSpectrogram<T> mel;
  for (auto _ : state) {
    auto out = audio::log_mel_spectrogram(mel, x);
    benchmark::DoNotOptimize(out.data());
  }
  set_realtime(state, seconds, x.dim(0));
}

// The same spectrogram with a plain DFT (std::complex sums over a twiddle table) per frame and
// a dense [n_freqs, n_mels] filterbank.
void BM_MelSpectrogram_NaiveDft(benchmark::State& state) {
  single_thread();
  const double seconds = static_cast<double>(state.range(0));
  const auto x2 = test_signal<double>(seconds, 16000);
  const Index n = x2.dim(1), n_fft = 400, hop = 200, n_freqs = 201, n_mels = 128;
  const audio::MelSpectrogram<double> mel;
  const auto fb = mel.fb();
  const auto& win = mel.window();
  std::vector<std::complex<double>> tw(static_cast<std::size_t>(n_fft));
  for (Index i = 0; i < n_fft; ++i)
    tw[static_cast<std::size_t>(i)] = std::polar(1.0, -2 * std::numbers::pi * i / n_fft);
  // Reflect-padded signal.
  std::vector<double> sig(static_cast<std::size_t>(n + n_fft));
  for (Index j = 0; j < n + n_fft; ++j) {
    Index s = j - n_fft / 2;
    if (s < 0) s = -s;
    if (s >= n) s = 2 * (n - 1) - s;
    sig[static_cast<std::size_t>(j)] = x2(0, s);
  }
  const Index frames = 1 + n / hop;
  std::vector<double> power(static_cast<std::size_t>(n_freqs));
  Tensor<double, 2> out(Shape<2>{n_mels, frames});
  for (auto _ : state) {
    for (Index t = 0; t < frames; ++t) {
      for (Index k = 0; k < n_freqs; ++k) {
        std::complex<double> acc = 0;
        for (Index i = 0; i < n_fft; ++i)
          acc += sig[static_cast<std::size_t>(t * hop + i)] * win(i) *
                 tw[static_cast<std::size_t>((k * i) % n_fft)];
        power[static_cast<std::size_t>(k)] = std::norm(acc);
      }
      for (Index m = 0; m < n_mels; ++m) {
        double e = 0;
        for (Index k = 0; k < n_freqs; ++k) e += fb(k, m) * power[static_cast<std::size_t>(k)];
        out(m, t) = e;
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  set_realtime(state, seconds, n);
}

// ---------------------------------------------------------------- resampling 44.1 -> 16 kHz

template <class T>
void BM_Resample_44k_16k(benchmark::State& state) {
  single_thread();
  const double seconds = static_cast<double>(state.range(0));
  const auto x = test_signal<T>(seconds, 44100);
  for (auto _ : state) {
    auto out = audio::resample(x, 44100, 16000);
    benchmark::DoNotOptimize(out.data());
  }
  set_realtime(state, seconds, x.dim(1));
}

}  // namespace

BENCHMARK_TEMPLATE(BM_Fbank_AST, float)->ArgName("seconds")->Arg(10)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Fbank_AST, double)
    ->ArgName("seconds")
    ->Arg(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Fbank_AST_NaiveDft)->ArgName("seconds")->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_MelSpectrogram, float)
    ->ArgName("seconds")
    ->Arg(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_MelSpectrogram, double)
    ->ArgName("seconds")
    ->Arg(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_LogMelSpectrogram, float)
    ->ArgName("seconds")
    ->Arg(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MelSpectrogram_NaiveDft)->ArgName("seconds")->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Resample_44k_16k, float)
    ->ArgName("seconds")
    ->Arg(10)
    ->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  tessera::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
