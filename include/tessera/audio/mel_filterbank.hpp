// tessera: mel scales and triangular mel filterbanks, torchaudio's and Kaldi's.
//
//   auto fb = tessera::audio::melscale_fbanks<float>(201, 0, 8000, 128, 16000);  // [201, 128]
//   auto kb = tessera::audio::kaldi_mel_banks<float>(23, 512, 16000, 20, 0);     // [23, 256]
//
// The filterbanks are computed in double and rounded once to T. MelSpectrogram and Fbank keep
// them as impl::SparseFilterbank: each triangle covers a few FFT bins, so applying only the
// non-zero run of each filter costs about 2 multiply-adds per FFT bin instead of n_mels.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::audio {

namespace impl {

inline void check_mel_scale(std::string_view fn, std::string_view mel_scale) {
  if (mel_scale != "htk" && mel_scale != "slaney")
    detail::raise<ValueError>(fn, "argument 'mel_scale' is '", mel_scale,
                              "', expected 'htk' or 'slaney'");
}

// Slaney's Auditory Toolbox scale (as librosa and torchaudio): linear below 1 kHz at 200/3 Hz
// per mel, logarithmic above with 27 mels per factor 6.4.
inline constexpr double kSlaneyHzPerMel = 200.0 / 3.0;
inline constexpr double kSlaneyMinLogHz = 1000.0;
inline constexpr double kSlaneyMinLogMel = kSlaneyMinLogHz / kSlaneyHzPerMel;  // 15
inline double slaney_log_step() { return std::log(6.4) / 27.0; }

// torch.linspace(start, end, steps)[i]: CPU torch fills the first half from start and the second
// half back from end, so the last point is `end` exactly.
inline double linspace_at(double start, double end, Index steps, Index i) {
  if (steps == 1) return start;
  const double step = (end - start) / static_cast<double>(steps - 1);
  return i < steps / 2 ? start + step * static_cast<double>(i)
                       : end - step * static_cast<double>(steps - 1 - i);
}

// A filterbank [n_filters, n_freqs] stored as each filter's run of non-zero weights.
template <class T>
struct SparseFilterbank {
  Index n_filters = 0, n_freqs = 0;
  std::vector<Index> first;   // first non-zero bin of each filter
  std::vector<Index> offset;  // where each filter's weights start in `weights` (n_filters + 1)
  std::vector<T> weights;

  // From a dense bank: element (f, k) at dense[f * filter_stride + k * freq_stride].
  static SparseFilterbank from_dense(const double* dense, Index n_filters, Index n_freqs,
                                     Index filter_stride, Index freq_stride) {
    SparseFilterbank s;
    s.n_filters = n_filters;
    s.n_freqs = n_freqs;
    s.first.resize(static_cast<std::size_t>(n_filters));
    s.offset.resize(static_cast<std::size_t>(n_filters) + 1);
    for (Index f = 0; f < n_filters; ++f) {
      const double* row = dense + f * filter_stride;
      Index lo = 0, hi = n_freqs;
      while (lo < n_freqs && row[lo * freq_stride] == 0.0) ++lo;
      while (hi > lo && row[(hi - 1) * freq_stride] == 0.0) --hi;
      s.first[static_cast<std::size_t>(f)] = lo;
      s.offset[static_cast<std::size_t>(f)] = static_cast<Index>(s.weights.size());
      for (Index k = lo; k < hi; ++k) s.weights.push_back(static_cast<T>(row[k * freq_stride]));
    }
    s.offset[static_cast<std::size_t>(n_filters)] = static_cast<Index>(s.weights.size());
    return s;
  }

  // out[f * out_stride] = sum_k bank(f, k) spectrum[k].
  void apply(const T* spectrum, T* out, Index out_stride) const {
    for (Index f = 0; f < n_filters; ++f) {
      const auto fi = static_cast<std::size_t>(f);
      const T* w = weights.data() + offset[fi];
      const T* x = spectrum + first[fi];
      const Index n = offset[fi + 1] - offset[fi];
      T acc = 0;
      for (Index k = 0; k < n; ++k) acc += w[k] * x[k];
      out[f * out_stride] = acc;
    }
  }
};

// torchaudio.functional.melscale_fbanks in double: [n_freqs, n_mels], row-major.
inline std::vector<double> melscale_fbanks_f64(Index n_freqs, double f_min, double f_max,
                                               Index n_mels, int sample_rate,
                                               const std::optional<std::string>& norm,
                                               std::string_view mel_scale);

}  // namespace impl

// Hz to mels, torchaudio.functional's _hz_to_mel: "htk" 2595 log10(1 + f / 700) (O'Shaughnessy
// 1987, as HTK), "slaney" linear below 1 kHz and logarithmic above (Slaney's Auditory Toolbox).
// Raises ValueError for another mel_scale.
inline double hz_to_mel(double freq, std::string_view mel_scale = "htk") {
  impl::check_mel_scale("tessera::audio::hz_to_mel", mel_scale);
  if (mel_scale == "htk") return 2595.0 * std::log10(1.0 + freq / 700.0);
  if (freq >= impl::kSlaneyMinLogHz)
    return impl::kSlaneyMinLogMel +
           std::log(freq / impl::kSlaneyMinLogHz) / impl::slaney_log_step();
  return freq / impl::kSlaneyHzPerMel;
}

// Mels to Hz, the inverse of hz_to_mel (torchaudio.functional's _mel_to_hz).
inline double mel_to_hz(double mel, std::string_view mel_scale = "htk") {
  impl::check_mel_scale("tessera::audio::mel_to_hz", mel_scale);
  if (mel_scale == "htk") return 700.0 * (std::pow(10.0, mel / 2595.0) - 1.0);
  if (mel >= impl::kSlaneyMinLogMel)
    return impl::kSlaneyMinLogHz *
           std::exp(impl::slaney_log_step() * (mel - impl::kSlaneyMinLogMel));
  return impl::kSlaneyHzPerMel * mel;
}

// Kaldi's mel scale (mel-computations.h, MelScale): 1127 ln(1 + f / 700).
inline double kaldi_mel_scale(double freq) { return 1127.0 * std::log(1.0 + freq / 700.0); }
inline double kaldi_inverse_mel_scale(double mel) { return 700.0 * (std::exp(mel / 1127.0) - 1.0); }

namespace impl {

inline std::vector<double> melscale_fbanks_f64(Index n_freqs, double f_min, double f_max,
                                               Index n_mels, int sample_rate,
                                               const std::optional<std::string>& norm,
                                               std::string_view mel_scale) {
  // all_freqs = linspace(0, sample_rate // 2, n_freqs); f_pts = mel_to_hz(linspace(m_min, m_max,
  // n_mels + 2)); each filter rises from f_pts[m] to f_pts[m + 1] and falls to f_pts[m + 2].
  const double nyquist = static_cast<double>(sample_rate / 2);
  const double m_min = hz_to_mel(f_min, mel_scale), m_max = hz_to_mel(f_max, mel_scale);
  std::vector<double> f_pts(static_cast<std::size_t>(n_mels + 2));
  for (Index i = 0; i < n_mels + 2; ++i)
    f_pts[static_cast<std::size_t>(i)] =
        mel_to_hz(linspace_at(m_min, m_max, n_mels + 2, i), mel_scale);
  std::vector<double> fb(static_cast<std::size_t>(n_freqs * n_mels));
  for (Index k = 0; k < n_freqs; ++k) {
    const double freq = linspace_at(0.0, nyquist, n_freqs, k);
    for (Index m = 0; m < n_mels; ++m) {
      const auto mi = static_cast<std::size_t>(m);
      const double down = (freq - f_pts[mi]) / (f_pts[mi + 1] - f_pts[mi]);
      const double up = (f_pts[mi + 2] - freq) / (f_pts[mi + 2] - f_pts[mi + 1]);
      double w = std::max(0.0, std::min(down, up));
      if (norm) w *= 2.0 / (f_pts[mi + 2] - f_pts[mi]);  // Slaney: constant energy per channel
      fb[static_cast<std::size_t>(k * n_mels + m)] = w;
    }
  }
  return fb;
}

// Kaldi's MelBanks (mel-computations.cc) without VTLN warping, as torchaudio's get_mel_banks:
// [num_bins, window_length_padded / 2], row-major. high_freq <= 0 is an offset from Nyquist.
inline std::vector<double> kaldi_mel_banks_f64(Index num_bins, Index window_length_padded,
                                               double sample_freq, double low_freq,
                                               double high_freq) {
  const Index num_fft_bins = window_length_padded / 2;
  const double nyquist = 0.5 * sample_freq;
  if (high_freq <= 0.0) high_freq += nyquist;
  const double fft_bin_width = sample_freq / static_cast<double>(window_length_padded);
  const double mel_low = kaldi_mel_scale(low_freq), mel_high = kaldi_mel_scale(high_freq);
  // num_bins + 1 intervals: the outer filters reach low_freq and high_freq.
  const double mel_delta = (mel_high - mel_low) / static_cast<double>(num_bins + 1);
  std::vector<double> banks(static_cast<std::size_t>(num_bins * num_fft_bins));
  for (Index b = 0; b < num_bins; ++b) {
    const double left = mel_low + static_cast<double>(b) * mel_delta;
    const double center = mel_low + (static_cast<double>(b) + 1.0) * mel_delta;
    const double right = mel_low + (static_cast<double>(b) + 2.0) * mel_delta;
    for (Index k = 0; k < num_fft_bins; ++k) {
      const double mel = kaldi_mel_scale(fft_bin_width * static_cast<double>(k));
      const double up = (mel - left) / (center - left), down = (right - mel) / (right - center);
      banks[static_cast<std::size_t>(b * num_fft_bins + k)] = std::max(0.0, std::min(up, down));
    }
  }
  return banks;
}

inline void check_kaldi_mel_options(std::string_view fn, Index num_bins, double sample_freq,
                                    double low_freq, double high_freq) {
  if (num_bins <= 3)
    detail::raise<ValueError>(fn, "argument 'num_mel_bins' is ", num_bins,
                              ", expected a value > 3 (Kaldi needs at least 4 mel bins)");
  if (!(sample_freq > 0) || !std::isfinite(sample_freq))
    detail::raise<ValueError>(fn, "argument 'sample_frequency' is ", sample_freq,
                              ", expected a finite value > 0");
  const double nyquist = 0.5 * sample_freq;
  const double high = high_freq <= 0.0 ? high_freq + nyquist : high_freq;
  if (!(0.0 <= low_freq && low_freq < nyquist && 0.0 < high && high <= nyquist && low_freq < high))
    detail::raise<ValueError>(fn, "arguments 'low_freq' and 'high_freq' are ", low_freq, " and ",
                              high_freq, " (", high,
                              " Hz), expected 0 <= low_freq < high_freq <= ", "Nyquist = ", nyquist,
                              " Hz (high_freq <= 0 is an offset from Nyquist)");
}

}  // namespace impl

// torchaudio.functional.melscale_fbanks: the triangular filterbank that maps n_freqs linear
// frequency bins (0 .. sample_rate // 2 Hz) to n_mels mel bins between f_min and f_max, on the
// "htk" or "slaney" mel scale, optionally area-normalised (norm "slaney"). Shape [n_freqs,
// n_mels], so spectrum [.., n_freqs] times it gives [.., n_mels]. Raises ValueError for n_freqs
// < 2, n_mels < 1, sample_rate <= 0, f_min < 0, f_min >= f_max, a norm other than "slaney" or an
// unknown mel_scale.
template <class T>
Tensor<T, 2> melscale_fbanks(Index n_freqs, double f_min, double f_max, Index n_mels,
                             int sample_rate, const std::optional<std::string>& norm = std::nullopt,
                             std::string_view mel_scale = "htk") {
  constexpr std::string_view fn = "tessera::audio::melscale_fbanks";
  if (n_freqs < 2)
    detail::raise<ValueError>(fn, "argument 'n_freqs' is ", n_freqs, ", expected a value >= 2");
  if (n_mels < 1)
    detail::raise<ValueError>(fn, "argument 'n_mels' is ", n_mels, ", expected a value >= 1");
  if (sample_rate <= 0)
    detail::raise<ValueError>(fn, "argument 'sample_rate' is ", sample_rate,
                              ", expected a value > 0");
  if (!(f_min >= 0.0 && f_min < f_max && std::isfinite(f_max)))
    detail::raise<ValueError>(
        fn, "arguments 'f_min' and 'f_max' are ", f_min, " and ", f_max,
        ", expected finite 0 <= f_min < f_max (f_min == f_max leaves every triangle empty)");
  if (norm && *norm != "slaney")
    detail::raise<ValueError>(fn, "argument 'norm' is '", *norm, "', expected no norm or 'slaney'");
  impl::check_mel_scale(fn, mel_scale);
  const auto fb =
      impl::melscale_fbanks_f64(n_freqs, f_min, f_max, n_mels, sample_rate, norm, mel_scale);
  Tensor<T, 2> out(Shape<2>{n_freqs, n_mels}, uninitialized);
  for (Index i = 0; i < out.size(); ++i)
    out.data()[i] = static_cast<T>(fb[static_cast<std::size_t>(i)]);
  return out;
}

// Kaldi's mel filterbank (torchaudio.compliance.kaldi.get_mel_banks without VTLN): num_bins
// triangles equally spaced on Kaldi's mel scale between low_freq and high_freq (<= 0: offset
// from Nyquist) over the window_length_padded / 2 FFT bins below Nyquist. Shape [num_bins,
// window_length_padded / 2]. Raises ValueError for num_bins <= 3, an odd or too small
// window_length_padded, sample_freq <= 0 or frequencies outside 0 <= low < high <= Nyquist.
template <class T>
Tensor<T, 2> kaldi_mel_banks(Index num_bins, Index window_length_padded, double sample_freq,
                             double low_freq, double high_freq) {
  constexpr std::string_view fn = "tessera::audio::kaldi_mel_banks";
  if (window_length_padded < 2 || window_length_padded % 2 != 0)
    detail::raise<ValueError>(fn, "argument 'window_length_padded' is ", window_length_padded,
                              ", expected an even value >= 2");
  impl::check_kaldi_mel_options(fn, num_bins, sample_freq, low_freq, high_freq);
  const auto banks =
      impl::kaldi_mel_banks_f64(num_bins, window_length_padded, sample_freq, low_freq, high_freq);
  Tensor<T, 2> out(Shape<2>{num_bins, window_length_padded / 2}, uninitialized);
  for (Index i = 0; i < out.size(); ++i)
    out.data()[i] = static_cast<T>(banks[static_cast<std::size_t>(i)]);
  return out;
}

}  // namespace tessera::audio
