// tessera: Kaldi-compatible log mel filterbank features, equal to
// torchaudio.compliance.kaldi.fbank (torchaudio 0.13), itself a port of Kaldi's compute-fbank-feats
// (feature-window.cc: framing, dc removal, pre-emphasis, windowing; mel-computations.cc: the mel
// banks; feature-fbank.cc: log energies).
//
//   tessera::audio::Fbank<float> ast({.htk_compat = true, .num_mel_bins = 128,
//                                     .window_type = "hanning"});  // AST (Gong et al. 2021)
//   Tensor<float, 2> feats = ast(waveform);                     // waveform [channels, samples]
//   auto f23 = tessera::audio::fbank(waveform);                 // Kaldi's defaults: [frames, 23]
//
// A frame of window_size = int(sample_frequency * frame_length / 1000) samples starts every
// window_shift = int(sample_frequency * frame_shift / 1000) samples; each is made zero-mean
// (remove_dc_offset), pre-emphasised (x[n] - c x[n - 1], x[-1] = x[0]), windowed, zero-padded to
// the next power of two (round_to_power_of_two), and its power (or magnitude) spectrum is summed
// by num_mel_bins triangular filters equally spaced on the mel scale 1127 ln(1 + f / 700)
// between low_freq and high_freq; the features are ln(max(energy, FLT_EPSILON)).
//
// Differences from torchaudio: dither is not supported (only 0, the default: features are
// deterministic), nor VTLN (vtln_warp must be 1, the default); a waveform shorter than
// min_duration gives [0, columns] rather than an empty 1-D tensor.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <complex>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/audio/mel_filterbank.hpp"
#include "tessera/audio/real_fft.hpp"
#include "tessera/audio/window.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"

namespace tessera::audio {

// torchaudio.compliance.kaldi.fbank's keyword arguments, with its names and defaults. Times in
// milliseconds, frequencies in Hz.
struct FbankOptions {
  double blackman_coeff = 0.42;  // c of the "blackman" window
  int channel = -1;              // channel of the [channels, samples] input; -1 means 0
  double dither = 0.0;           // must be 0: dithering is not supported
  double energy_floor = 1.0;     // floor on the log-energy column: ln(energy_floor); 0 = none
  double frame_length = 25.0;    // ms
  double frame_shift = 10.0;     // ms
  double high_freq = 0.0;        // upper edge of the mel bins; <= 0: offset from Nyquist
  bool htk_compat = false;       // energy column last (true) or first (false)
  double low_freq = 20.0;        // lower edge of the mel bins
  double min_duration = 0.0;     // s: a shorter waveform gives no frames
  int num_mel_bins = 23;
  double preemphasis_coefficient = 0.97;
  bool raw_energy = true;             // energy before pre-emphasis and windowing
  bool remove_dc_offset = true;       // subtract each frame's mean
  bool round_to_power_of_two = true;  // zero-pad each frame to a power of two for the FFT
  double sample_frequency = 16000.0;  // Hz
  bool snip_edges = true;             // only whole frames; false: frames centred on k * shift,
                                      // the signal reflected at both ends
  bool subtract_mean = false;         // subtract each column's mean over the frames
  bool use_energy = false;            // add a log-energy column
  bool use_log_fbank = true;          // ln of the mel energies (false: the energies)
  bool use_power = true;              // power spectrum (false: magnitude)
  double vtln_high = -500.0;          // unused: VTLN is not supported
  double vtln_low = 100.0;            // unused
  double vtln_warp = 1.0;             // must be 1: VTLN is not supported
  std::string window_type = "povey";  // "hamming", "hanning", "povey", "rectangular", "blackman"
};

// The fbank of FbankOptions with its window and mel banks computed once. Calls are const and may
// run concurrently; a call allocates its result and nothing else after the first on a thread.
template <class T>
class Fbank {
  static_assert(std::is_floating_point_v<T>, "tessera::audio::Fbank computes in float or double");

 public:
  // Raises ValueError for options torchaudio rejects (window of fewer than 2 samples, shift of
  // 0, odd padded window, pre-emphasis outside [0, 1], sample_frequency <= 0, num_mel_bins <= 3,
  // frequencies outside 0 <= low_freq < high_freq <= Nyquist, an unknown window_type) and for
  // those tessera does not support (dither != 0, vtln_warp != 1), and for a negative
  // energy_floor or min_duration. `caller` names the function in messages.
  explicit Fbank(const FbankOptions& options = {},
                 std::string_view caller = "tessera::audio::Fbank")
      : options_(options) {
    const std::string_view fn = caller;
    const auto& o = options_;
    if (!(o.sample_frequency > 0) || !std::isfinite(o.sample_frequency))
      detail::raise<ValueError>(fn, "argument 'sample_frequency' is ", o.sample_frequency,
                                ", expected a finite value > 0");
    window_size_ = samples_of(fn, "frame_length", o.frame_length);
    window_shift_ = samples_of(fn, "frame_shift", o.frame_shift);
    if (window_size_ < 2)
      detail::raise<ValueError>(fn, "argument 'frame_length' is ", o.frame_length, " ms, ",
                                window_size_, " samples at ", o.sample_frequency,
                                " Hz; expected a window of at least 2 samples");
    if (window_shift_ < 1)
      detail::raise<ValueError>(fn, "argument 'frame_shift' is ", o.frame_shift, " ms, ",
                                window_shift_, " samples at ", o.sample_frequency,
                                " Hz; expected a shift of at least 1 sample");
    padded_size_ = window_size_;
    if (o.round_to_power_of_two) {
      padded_size_ = 1;
      while (padded_size_ < window_size_) padded_size_ *= 2;
    }
    if (padded_size_ % 2 != 0)
      detail::raise<ValueError>(fn, "argument 'frame_length' gives a window of ", window_size_,
                                " samples; expected an even number (or round_to_power_of_two)");
    if (!(o.preemphasis_coefficient >= 0.0 && o.preemphasis_coefficient <= 1.0))
      detail::raise<ValueError>(fn, "argument 'preemphasis_coefficient' is ",
                                o.preemphasis_coefficient, ", expected a value in [0, 1]");
    if (o.dither != 0.0)
      detail::raise<ValueError>(fn, "argument 'dither' is ", o.dither,
                                ", expected 0: dithering is not supported (features are "
                                "deterministic)");
    if (o.vtln_warp != 1.0)
      detail::raise<ValueError>(fn, "argument 'vtln_warp' is ", o.vtln_warp,
                                ", expected 1: VTLN warping is not supported");
    if (!(o.energy_floor >= 0.0) || !std::isfinite(o.energy_floor))
      detail::raise<ValueError>(fn, "argument 'energy_floor' is ", o.energy_floor,
                                ", expected a finite value >= 0");
    if (!(o.min_duration >= 0.0) || !std::isfinite(o.min_duration))
      detail::raise<ValueError>(fn, "argument 'min_duration' is ", o.min_duration,
                                ", expected a finite value >= 0");
    impl::check_kaldi_mel_options(fn, o.num_mel_bins, o.sample_frequency, o.low_freq, o.high_freq);
    if (o.window_type != "hamming" && o.window_type != "hanning" && o.window_type != "povey" &&
        o.window_type != "rectangular" && o.window_type != "blackman")
      detail::raise<ValueError>(fn, "argument 'window_type' is '", o.window_type,
                                "', expected one of 'hamming', 'hanning', 'povey', "
                                "'rectangular', 'blackman'");
    window_ = kaldi_window<T>(o.window_type, window_size_, o.blackman_coeff);
    const auto banks = impl::kaldi_mel_banks_f64(o.num_mel_bins, padded_size_, o.sample_frequency,
                                                 o.low_freq, o.high_freq);
    banks_ = impl::SparseFilterbank<T>::from_dense(banks.data(), o.num_mel_bins, padded_size_ / 2,
                                                   padded_size_ / 2, 1);
  }

  // waveform [channels, samples] -> features [frames, num_mel_bins (+ 1 with use_energy)], the
  // energy column first, or last with htk_compat. frames = 1 + (samples - window_size) /
  // window_shift with snip_edges, (samples + window_shift / 2) / window_shift without.
  // Raises ValueError when `channel` is not a channel of the waveform or the selected channel is
  // shorter than one window.
  template <TensorLike X>
  requires(rank_v<X> == 2 && std::is_same_v<std::remove_const_t<scalar_t<X>>, T>) Tensor<T, 2>
  operator()(const X& waveform) const {
    return compute(cview(waveform), "tessera::audio::Fbank::operator()");
  }
  template <TensorLike X>
  requires(rank_v<X> == 2 && std::is_same_v<std::remove_const_t<scalar_t<X>>, T>)
      Tensor<T, 2> forward(const X& waveform)
  const { return compute(cview(waveform), "tessera::audio::Fbank::forward"); }

  // Frames for a signal of num_samples samples (0 when it is shorter than one window with
  // snip_edges).
  Index num_frames(Index num_samples) const noexcept {
    if (options_.snip_edges)
      return num_samples < window_size_ ? 0 : 1 + (num_samples - window_size_) / window_shift_;
    return (num_samples + window_shift_ / 2) / window_shift_;
  }
  Index num_columns() const noexcept {
    return options_.num_mel_bins + (options_.use_energy ? 1 : 0);
  }
  Index window_size() const noexcept { return window_size_; }
  Index window_shift() const noexcept { return window_shift_; }
  Index padded_window_size() const noexcept { return padded_size_; }
  const Tensor<T, 1>& window() const noexcept { return window_; }
  const FbankOptions& options() const noexcept { return options_; }

  // Implementation of the call operators; `fn` names the caller in messages.
  Tensor<T, 2> compute(TensorMap<const T, 2> waveform, std::string_view fn) const;

 private:
  // int(sample_frequency * ms * 0.001), as torchaudio (truncation toward zero).
  Index samples_of(std::string_view fn, std::string_view arg, double ms) const {
    const double s = options_.sample_frequency * ms * 0.001;
    if (!(s >= 0.0) || !(s < 1e15))
      detail::raise<ValueError>(fn, "argument '", arg, "' is ", ms, " ms, ", s, " samples at ",
                                options_.sample_frequency, " Hz; expected a finite value >= 0");
    return static_cast<Index>(s);
  }

  void frame_features(const T* x, Index n, Index frame, T* buf, std::complex<T>* work, T* spec,
                      T* out) const;

  FbankOptions options_;
  Index window_size_ = 0, window_shift_ = 0, padded_size_ = 0;
  Tensor<T, 1> window_;
  impl::SparseFilterbank<T> banks_;
};

// torchaudio.compliance.kaldi.fbank(waveform, **options): see Fbank. waveform [channels,
// samples] of float or double (the features' type); result [frames, num_mel_bins (+1)]. Builds
// the window and mel banks on each call: keep an Fbank to reuse them. Raises ValueError as
// Fbank's constructor and call operator.
template <TensorLike X>
requires(rank_v<X> == 2) Tensor < std::remove_const_t<scalar_t<X>>,
2 > fbank(const X& waveform, const FbankOptions& options = {}) {
  using T = std::remove_const_t<scalar_t<X>>;
  constexpr std::string_view fn = "tessera::audio::fbank";
  return Fbank<T>(options, fn).compute(cview(waveform), fn);
}

// ------------------------------------------------------------------------------ implementation

template <class T>
void Fbank<T>::frame_features(const T* x, Index n, Index frame, T* buf, std::complex<T>* work,
                              T* spec, T* out) const {
  const auto& o = options_;
  const Index w = window_size_;
  // Frame `frame` starts at frame * shift (snip_edges) or frame * shift - (w / 2 - shift / 2);
  // samples before 0 or after n - 1 are mirrored: s < 0 -> -s - 1, s >= n -> 2n - 1 - s
  // (Kaldi's ExtractWindow; torchaudio concatenates the reversed signal on both sides).
  const Index start =
      frame * window_shift_ - (o.snip_edges ? 0 : window_size_ / 2 - window_shift_ / 2);
  if (start >= 0 && start + w <= n) {
    std::copy(x + start, x + start + w, buf);
  } else {
    for (Index k = 0; k < w; ++k) {
      Index s = start + k;
      if (s < 0) s = -s - 1;
      if (s >= n) s = 2 * n - 1 - s;
      buf[k] = x[s];
    }
  }
  if (o.remove_dc_offset) {
    T sum = 0;
    for (Index k = 0; k < w; ++k) sum += buf[k];
    const T mean = sum / static_cast<T>(w);
    for (Index k = 0; k < w; ++k) buf[k] -= mean;
  }
  // ln(max(sum x^2, FLT_EPSILON)), floored at ln(energy_floor) unless that is 0.
  const auto log_energy = [&](Index len) {
    T e = 0;
    for (Index k = 0; k < len; ++k) e += buf[k] * buf[k];
    T le = std::log(std::max(e, static_cast<T>(FLT_EPSILON)));
    if (o.energy_floor != 0.0) le = std::max(le, static_cast<T>(std::log(o.energy_floor)));
    return le;
  };
  T energy = 0;
  if (o.raw_energy) energy = log_energy(w);
  if (o.preemphasis_coefficient != 0.0) {
    const T c = static_cast<T>(o.preemphasis_coefficient);
    for (Index k = w - 1; k > 0; --k) buf[k] -= c * buf[k - 1];
    buf[0] -= c * buf[0];
  }
  const T* win = window_.data();
  for (Index k = 0; k < w; ++k) buf[k] *= win[k];
  std::fill(buf + w, buf + padded_size_, T(0));
  if (!o.raw_energy) energy = log_energy(padded_size_);

  impl::real_fft_spectrum(buf, padded_size_, work, spec, o.use_power);
  const bool energy_first = o.use_energy && !o.htk_compat;
  T* mel = out + (energy_first ? 1 : 0);
  banks_.apply(spec, mel, 1);  // the Nyquist bin has no weight in Kaldi's banks
  if (o.use_log_fbank)
    for (Index b = 0; b < o.num_mel_bins; ++b)
      mel[b] = std::log(std::max(mel[b], static_cast<T>(FLT_EPSILON)));
  if (o.use_energy) out[energy_first ? 0 : o.num_mel_bins] = energy;
}

template <class T>
Tensor<T, 2> Fbank<T>::compute(TensorMap<const T, 2> waveform, std::string_view fn) const {
  const auto& o = options_;
  const Index channels = waveform.dim(0), n = waveform.dim(1);
  const Index channel = std::max<Index>(o.channel, 0);
  if (channel >= channels)
    detail::raise<ValueError>(fn, "argument 'waveform' has shape ",
                              detail::shape_string(waveform.shape()), ": option 'channel' is ",
                              o.channel, ", expected a channel in [0, ", channels, ")");
  if (n < window_size_)
    detail::raise<ValueError>(fn, "argument 'waveform' has ", n,
                              " samples per channel, fewer than one window of ", window_size_,
                              " samples (frame_length ", o.frame_length, " ms at ",
                              o.sample_frequency, " Hz)");
  const Index cols = num_columns();
  if (static_cast<double>(n) < o.min_duration * o.sample_frequency)
    return Tensor<T, 2>(Shape<2>{0, cols});
  const Index frames = num_frames(n);
  Tensor<T, 2> out(Shape<2>{frames, cols}, uninitialized);
  const T* x = waveform.data() + channel * n;
  // Frames are independent: split them across threads; each is computed the same way whatever
  // thread runs it.
  parallel_for(frames, 16, [&](Index begin, Index end) {
    detail::ScratchFrame scratch;
    T* buf = scratch.alloc<T>(padded_size_);
    T* spec = scratch.alloc<T>(padded_size_ / 2 + 1);
    auto* work = scratch.alloc<std::complex<T>>(padded_size_ / 2 + 1);
    for (Index f = begin; f < end; ++f)
      frame_features(x, n, f, buf, work, spec, out.data() + f * cols);
  });
  if (o.subtract_mean && frames > 0) {
    // Kaldi's cepstral mean subtraction over the whole utterance, every column.
    auto m = out.as_matrix();
    m.rowwise() -= m.colwise().mean();
  }
  return out;
}

}  // namespace tessera::audio
