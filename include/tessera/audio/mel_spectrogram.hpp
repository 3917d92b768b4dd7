// tessera: mel spectrograms equal to torchaudio.transforms.MelSpectrogram (torchaudio 0.13), and
// their logarithm.
//
//   tessera::audio::MelSpectrogram<float> mel;  // 16 kHz, n_fft 400, hop 200, 128 mels
//   Tensor<float, 2> m = mel(waveform);          // [samples] -> [n_mels, time]
//   Tensor<float, 3> s = mel(stereo);            // [channels, samples] -> [channels, n_mels, time]
//   auto lm = tessera::audio::log_mel_spectrogram(mel, waveform);  // ln(m + 1e-6)
//
// The signal is padded with `pad` zeros at both ends and, with center, with n_fft / 2 samples
// more (pad_mode); frame t is samples [t hop, t hop + n_fft) of that, times the window
// (win_length samples of a periodic Hann window, centred in n_fft with zeros); its one-sided DFT
// |X[k]|^power (k = 0 .. n_fft / 2) is mapped to mels by melscale_fbanks (see
// mel_filterbank.hpp). This is torch.stft (return_complex, onesided) followed by abs().pow(power)
// and torchaudio's MelScale. The window and the filterbank are computed once, in double, when
// the object is built.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <optional>
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

// torchaudio.transforms.MelSpectrogram's arguments, with its names and defaults; std::nullopt
// stands for Python's None.
struct MelSpectrogramOptions {
  int sample_rate = 16000;          // Hz
  Index n_fft = 400;                // FFT length; n_fft / 2 + 1 frequency bins
  std::optional<Index> win_length;  // window length (<= n_fft); None: n_fft
  std::optional<Index> hop_length;  // samples between frames; None: win_length / 2
  double f_min = 0.0;               // Hz
  std::optional<double> f_max;      // Hz; None: sample_rate / 2 (integer division)
  Index pad = 0;                    // zeros added at both ends first
  Index n_mels = 128;
  std::string window_fn = "hann";    // "hann" (torch.hann_window) or "hamming", both periodic
  double power = 2.0;                // exponent of the magnitude: 2 power, 1 magnitude; > 0
  bool normalized = false;           // divide the spectrum by sqrt(sum window^2)
  bool center = true;                // pad n_fft / 2 at both ends so frame t is centred on t hop
  std::string pad_mode = "reflect";  // with center: "reflect", "constant", "replicate", "circular"
  bool onesided = true;              // must be true (MelScale needs n_fft / 2 + 1 bins)
  std::optional<std::string> norm;   // None or "slaney" (area-normalised triangles)
  std::string mel_scale = "htk";     // "htk" or "slaney"
};

// The default offset of log_mel_spectrogram: ln(mel + 1e-6), as in torchaudio's and many
// models' recipes (e.g. HuBERT's and wav2vec's feature examples), which keeps silent frames finite.
inline constexpr double kLogMelOffset = 1e-6;

template <class T>
class MelSpectrogram {
  static_assert(std::is_floating_point_v<T>,
                "tessera::audio::MelSpectrogram computes in float or double");

 public:
  // Raises ValueError for sample_rate <= 0, n_fft < 1, win_length outside [1, n_fft],
  // hop_length < 1, pad < 0, n_mels < 1, f_min < 0 or f_min >= f_max, a power that is not finite
  // and > 0, an unknown window_fn, pad_mode, norm or mel_scale, and onesided = false (torchaudio
  // cannot apply MelScale to a two-sided spectrum either). `caller` names the function in
  // messages.
  explicit MelSpectrogram(const MelSpectrogramOptions& options = {},
                          std::string_view caller = "tessera::audio::MelSpectrogram")
      : options_(options) {
    const std::string_view fn = caller;
    const auto& o = options_;
    if (o.sample_rate <= 0)
      detail::raise<ValueError>(fn, "argument 'sample_rate' is ", o.sample_rate,
                                ", expected a value > 0");
    if (o.n_fft < 1)
      detail::raise<ValueError>(fn, "argument 'n_fft' is ", o.n_fft, ", expected a value >= 1");
    win_length_ = o.win_length.value_or(o.n_fft);
    if (win_length_ < 1 || win_length_ > o.n_fft)
      detail::raise<ValueError>(fn, "argument 'win_length' is ", win_length_,
                                ", expected a value in [1, n_fft = ", o.n_fft, "]");
    hop_length_ = o.hop_length.value_or(win_length_ / 2);
    if (hop_length_ < 1)
      detail::raise<ValueError>(fn, "argument 'hop_length' is ", hop_length_,
                                ", expected a value >= 1");
    if (o.pad < 0)
      detail::raise<ValueError>(fn, "argument 'pad' is ", o.pad, ", expected a value >= 0");
    if (o.n_mels < 1)
      detail::raise<ValueError>(fn, "argument 'n_mels' is ", o.n_mels, ", expected a value >= 1");
    f_max_ = o.f_max.value_or(static_cast<double>(o.sample_rate / 2));
    if (!(o.f_min >= 0.0 && o.f_min < f_max_ && std::isfinite(f_max_)))
      detail::raise<ValueError>(
          fn, "arguments 'f_min' and 'f_max' are ", o.f_min, " and ", f_max_,
          ", expected finite 0 <= f_min < f_max (f_min == f_max leaves every triangle empty)");
    if (!(o.power > 0.0) || !std::isfinite(o.power))
      detail::raise<ValueError>(fn, "argument 'power' is ", o.power,
                                ", expected a finite value > 0 (a complex spectrogram is not "
                                "supported)");
    if (o.window_fn != "hann" && o.window_fn != "hamming")
      detail::raise<ValueError>(fn, "argument 'window_fn' is '", o.window_fn,
                                "', expected 'hann' or 'hamming'");
    if (o.pad_mode != "reflect" && o.pad_mode != "constant" && o.pad_mode != "replicate" &&
        o.pad_mode != "circular")
      detail::raise<ValueError>(fn, "argument 'pad_mode' is '", o.pad_mode,
                                "', expected 'reflect', 'constant', 'replicate' or 'circular'");
    if (!o.onesided)
      detail::raise<ValueError>(fn, "argument 'onesided' is false, expected true: the mel ",
                                "filterbank needs the n_fft / 2 + 1 bins of a one-sided spectrum");
    if (o.norm && *o.norm != "slaney")
      detail::raise<ValueError>(fn, "argument 'norm' is '", *o.norm,
                                "', expected no norm or 'slaney'");
    impl::check_mel_scale(fn, o.mel_scale);

    // torch.stft pads a window shorter than n_fft with zeros on both sides, (n_fft - win) / 2
    // on the left.
    const auto w = o.window_fn == "hann"
                       ? impl::cosine_window<double>(fn, win_length_, true, 0.5, 0.5)
                       : impl::cosine_window<double>(fn, win_length_, true, 0.54, 0.46);
    window_ = Tensor<T, 1>(Shape<1>{o.n_fft});
    const Index left = (o.n_fft - win_length_) / 2;
    double sum_sq = 0;
    for (Index i = 0; i < win_length_; ++i) {
      window_(left + i) = static_cast<T>(w(i));
      sum_sq += w(i) * w(i);
    }
    // normalized=True ("window"): spectrum / sqrt(sum window^2), applied to the magnitude.
    magnitude_scale_ = o.normalized ? 1.0 / std::sqrt(sum_sq) : 1.0;
    const Index n_freqs = o.n_fft / 2 + 1;
    fb_ = impl::melscale_fbanks_f64(n_freqs, o.f_min, f_max_, o.n_mels, o.sample_rate, o.norm,
                                    o.mel_scale);
    // fb_ is [n_freqs, n_mels]: filter m is column m.
    banks_ = impl::SparseFilterbank<T>::from_dense(fb_.data(), o.n_mels, n_freqs, 1, o.n_mels);
  }

  // waveform [samples] -> [n_mels, time]; [channels, samples] -> [channels, n_mels, time], with
  // time = num_frames(samples). Raises ValueError when there is no sample, when reflect padding
  // needs more samples than there are (n_fft / 2 >= samples + 2 pad; circular: >), or when
  // center = false and the padded signal is shorter than n_fft.
  template <TensorLike X>
  requires((rank_v<X> == 1 || rank_v<X> == 2) &&
           std::is_same_v<std::remove_const_t<scalar_t<X>>, T>) Tensor < T,
      rank_v<X>
  + 1 > operator()(const X& waveform)const {
    return compute(waveform, "tessera::audio::MelSpectrogram::operator()");
  }
  template <TensorLike X>
  requires((rank_v<X> == 1 || rank_v<X> == 2) &&
           std::is_same_v<std::remove_const_t<scalar_t<X>>, T>) Tensor < T,
      rank_v<X>
  + 1 > forward(const X& waveform)const {
    return compute(waveform, "tessera::audio::MelSpectrogram::forward");
  }

  // Frames of a signal of `samples` samples: 1 + (samples + 2 pad + (center ? 2 (n_fft / 2) :
  // 0) - n_fft) / hop_length (0 when that is negative).
  Index num_frames(Index samples) const noexcept {
    const Index padded = padded_length(samples);
    return padded < options_.n_fft ? 0 : 1 + (padded - options_.n_fft) / hop_length_;
  }
  Index n_fft() const noexcept { return options_.n_fft; }
  Index win_length() const noexcept { return win_length_; }
  Index hop_length() const noexcept { return hop_length_; }
  Index n_mels() const noexcept { return options_.n_mels; }
  // The window as used, [n_fft] (win_length samples centred, zeros around).
  const Tensor<T, 1>& window() const noexcept { return window_; }
  // torchaudio's MelScale.fb: [n_fft / 2 + 1, n_mels].
  Tensor<T, 2> fb() const {
    Tensor<T, 2> out(Shape<2>{options_.n_fft / 2 + 1, options_.n_mels}, uninitialized);
    for (Index i = 0; i < out.size(); ++i)
      out.data()[i] = static_cast<T>(fb_[static_cast<std::size_t>(i)]);
    return out;
  }
  const MelSpectrogramOptions& options() const noexcept { return options_; }

  // Implementation of the call operators; `fn` names the caller in messages.
  template <TensorLike X>
  Tensor<T, rank_v<X> + 1> compute(const X& waveform, std::string_view fn) const {
    const Index samples = waveform.shape()[rank_v<X> - 1];
    const Index channels = rank_v<X> == 2 ? waveform.shape()[0] : 1;
    check_length(fn, samples);
    const Index frames = num_frames(samples);
    Shape<rank_v<X> + 1> shape;
    if constexpr (rank_v<X> == 2) {
      shape = {channels, options_.n_mels, frames};
    } else {
      shape = {options_.n_mels, frames};
    }
    Tensor<T, rank_v<X> + 1> out(shape, uninitialized);
    for (Index c = 0; c < channels; ++c)
      channel_into(waveform.data() + c * samples, samples, frames,
                   out.data() + c * options_.n_mels * frames);
    return out;
  }

 private:
  Index padded_length(Index samples) const noexcept {
    return samples + 2 * options_.pad + (options_.center ? 2 * (options_.n_fft / 2) : 0);
  }

  void check_length(std::string_view fn, Index samples) const {
    const auto& o = options_;
    if (samples < 1)
      detail::raise<ValueError>(fn, "argument 'waveform' has no samples, expected at least 1");
    const Index with_pad = samples + 2 * o.pad, edge = o.n_fft / 2;
    if (o.center && o.pad_mode == "reflect" && edge >= with_pad)
      detail::raise<ValueError>(fn, "argument 'waveform' has ", samples, " samples (", with_pad,
                                " with pad); reflect padding by n_fft / 2 = ", edge,
                                " needs more than ", edge);
    if (o.center && o.pad_mode == "circular" && edge > with_pad)
      detail::raise<ValueError>(fn, "argument 'waveform' has ", samples, " samples (", with_pad,
                                " with pad); circular padding by n_fft / 2 = ", edge,
                                " needs at least ", edge);
    if (padded_length(samples) < o.n_fft)
      detail::raise<ValueError>(fn, "argument 'waveform' has ", samples, " samples, ",
                                padded_length(samples),
                                " after padding; expected at least n_fft = ", o.n_fft);
  }

  // One channel's [n_mels, frames] into out.
  void channel_into(const T* x, Index samples, Index frames, T* out) const {
    const auto& o = options_;
    const Index n_fft = o.n_fft, n_freqs = n_fft / 2 + 1;
    const Index pad = o.pad, edge = o.center ? n_fft / 2 : 0;
    const Index padded = padded_length(samples), inner = samples + 2 * pad;
    detail::ScratchFrame scratch;
    // The padded signal: `pad` zeros, then the centre padding (pad_mode) around those.
    T* sig = scratch.alloc<T>(padded);
    std::fill(sig, sig + padded, T(0));
    std::copy(x, x + samples, sig + edge + pad);
    T* core = sig + edge;  // [0, inner): the zero-padded signal
    for (Index j = 1; j <= edge; ++j) {
      const Index lo = -j, hi = inner - 1 + j;  // positions left and right of the core
      Index src_lo = 0, src_hi = 0;
      if (o.pad_mode == "reflect") {
        src_lo = -lo;
        src_hi = 2 * (inner - 1) - hi;
      } else if (o.pad_mode == "replicate") {
        src_lo = 0;
        src_hi = inner - 1;
      } else if (o.pad_mode == "circular") {
        src_lo = lo + inner;
        src_hi = hi - inner;
      } else {
        continue;  // constant: zeros
      }
      core[lo] = core[src_lo];
      core[hi] = core[src_hi];
    }
    const T scale = static_cast<T>(magnitude_scale_);
    const bool plain_power = o.power == 2.0 && !o.normalized;
    parallel_for(frames, 16, [&](Index begin, Index end) {
      detail::ScratchFrame frame_scratch;
      T* buf = frame_scratch.alloc<T>(n_fft);
      T* spec = frame_scratch.alloc<T>(n_freqs);
      auto* work = frame_scratch.alloc<std::complex<T>>(n_freqs);
      const T* win = window_.data();
      for (Index t = begin; t < end; ++t) {
        const T* s = sig + t * hop_length_;
        for (Index i = 0; i < n_fft; ++i) buf[i] = s[i] * win[i];
        if (plain_power) {
          impl::real_fft_spectrum(buf, n_fft, work, spec, /*power=*/true);
        } else {
          impl::real_fft_spectrum(buf, n_fft, work, spec, /*power=*/false);
          for (Index k = 0; k < n_freqs; ++k) {
            const T mag = spec[k] * scale;
            spec[k] = o.power == 1.0 ? mag : static_cast<T>(std::pow(mag, static_cast<T>(o.power)));
          }
        }
        banks_.apply(spec, out + t, frames);
      }
    });
  }

  MelSpectrogramOptions options_;
  Index win_length_ = 0, hop_length_ = 0;
  double f_max_ = 0, magnitude_scale_ = 1;
  Tensor<T, 1> window_;
  std::vector<double> fb_;
  impl::SparseFilterbank<T> banks_;
};

namespace impl {

inline void check_log_offset(std::string_view fn, double offset) {
  if (!(offset > 0.0) || !std::isfinite(offset))
    detail::raise<ValueError>(fn, "argument 'offset' is ", offset, ", expected a finite value > 0");
}

template <class T, int R>
Tensor<T, R> log_offset_in_place(Tensor<T, R>&& mel, double offset) {
  const T off = static_cast<T>(offset);
  T* p = mel.data();
  for (Index i = 0, n = mel.size(); i < n; ++i) p[i] = std::log(p[i] + off);
  return std::move(mel);
}

}  // namespace impl

// ln(mel(waveform) + offset): the log mel spectrogram with an additive offset (default 1e-6,
// kLogMelOffset; it bounds silent frames at ln(1e-6) = -13.8 instead of -inf). Shapes as
// MelSpectrogram's call. Raises ValueError for offset <= 0 or not finite, and as the call.
template <class T, TensorLike X>
requires((rank_v<X> == 1 || rank_v<X> == 2) &&
         std::is_same_v<std::remove_const_t<scalar_t<X>>, T>) Tensor < T,
    rank_v<X>
+ 1 > log_mel_spectrogram(const MelSpectrogram<T>& mel, const X& waveform,
                          double offset = kLogMelOffset) {
  constexpr std::string_view fn = "tessera::audio::log_mel_spectrogram";
  impl::check_log_offset(fn, offset);
  return impl::log_offset_in_place(mel.compute(waveform, fn), offset);
}

// The same with a MelSpectrogram built from `options` for this call.
template <TensorLike X>
requires(rank_v<X> == 1 || rank_v<X> == 2) Tensor < std::remove_const_t<scalar_t<X>>, rank_v<X>
+ 1 > log_mel_spectrogram(const X& waveform, const MelSpectrogramOptions& options = {},
                          double offset = kLogMelOffset) {
  constexpr std::string_view fn = "tessera::audio::log_mel_spectrogram";
  impl::check_log_offset(fn, offset);
  const MelSpectrogram<std::remove_const_t<scalar_t<X>>> mel(options, fn);
  return impl::log_offset_in_place(mel.compute(waveform, fn), offset);
}

}  // namespace tessera::audio
