// tessera: the analysis windows of torch and Kaldi, as Tensor<T, 1>.
//
//   auto w = tessera::audio::hann_window<float>(400);             // periodic, torch's default
//   auto k = tessera::audio::kaldi_window<double>("povey", 400);  // Hann^0.85, Kaldi's default
//
// Every window is computed in double and rounded once to T.
#pragma once

#include <cmath>
#include <numbers>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::audio {

namespace impl {

inline void check_window_length(std::string_view fn, Index window_length) {
  if (window_length < 1)
    detail::raise<ValueError>(fn, "argument 'window_length' is ", window_length,
                              ", expected a value >= 1");
}

// w[i] = alpha - beta cos(2 pi i / N), N = n (periodic) or n - 1 (symmetric), as torch's
// hann_window (alpha = beta = 0.5) and hamming_window.
template <class T>
Tensor<T, 1> cosine_window(std::string_view fn, Index n, bool periodic, double alpha, double beta) {
  check_window_length(fn, n);
  Tensor<T, 1> w(Shape<1>{n}, uninitialized);
  if (n == 1) {
    w(0) = T(1);  // torch returns [1] for a window of one sample
    return w;
  }
  const double denom = static_cast<double>(periodic ? n : n - 1);
  for (Index i = 0; i < n; ++i)
    w(i) = static_cast<T>(alpha -
                          beta * std::cos(2.0 * std::numbers::pi * static_cast<double>(i) / denom));
  return w;
}

}  // namespace impl

// torch.hann_window(window_length, periodic): 0.5 - 0.5 cos(2 pi n / N), N = window_length when
// periodic (the default, as torchaudio's Spectrogram uses it) or window_length - 1.
// Shape [window_length]. Raises ValueError for window_length < 1.
template <class T>
Tensor<T, 1> hann_window(Index window_length, bool periodic = true) {
  return impl::cosine_window<T>("tessera::audio::hann_window", window_length, periodic, 0.5, 0.5);
}

// torch.hamming_window(window_length, periodic, alpha=0.54, beta=0.46):
// alpha - beta cos(2 pi n / N). Shape [window_length]. Raises ValueError for window_length < 1.
template <class T>
Tensor<T, 1> hamming_window(Index window_length, bool periodic = true, double alpha = 0.54,
                            double beta = 0.46) {
  return impl::cosine_window<T>("tessera::audio::hamming_window", window_length, periodic, alpha,
                                beta);
}

// Kaldi's frame windows (feature-window.cc, FeatureWindowFunction; torchaudio.compliance.kaldi's
// _feature_window_function), all symmetric over window_length samples:
//   "hanning"      0.5 - 0.5 cos(2 pi n / (N - 1))
//   "hamming"      0.54 - 0.46 cos(2 pi n / (N - 1))
//   "povey"        hanning ^ 0.85 (Dan Povey's window: like Hamming but going to zero at the edges)
//   "rectangular"  1
//   "blackman"     c - 0.5 cos(a n) + (0.5 - c) cos(2 a n), a = 2 pi / (N - 1), c = blackman_coeff
// Shape [window_length]. Raises ValueError for an unknown type or window_length < 2.
template <class T>
Tensor<T, 1> kaldi_window(std::string_view window_type, Index window_length,
                          double blackman_coeff = 0.42) {
  constexpr std::string_view fn = "tessera::audio::kaldi_window";
  if (window_length < 2)
    detail::raise<ValueError>(fn, "argument 'window_length' is ", window_length,
                              ", expected a value >= 2");
  if (window_type == "hanning") return impl::cosine_window<T>(fn, window_length, false, 0.5, 0.5);
  if (window_type == "hamming") return impl::cosine_window<T>(fn, window_length, false, 0.54, 0.46);
  Tensor<T, 1> w(Shape<1>{window_length}, uninitialized);
  const double a = 2.0 * std::numbers::pi / static_cast<double>(window_length - 1);
  if (window_type == "povey") {
    for (Index i = 0; i < window_length; ++i)
      w(i) = static_cast<T>(std::pow(0.5 - 0.5 * std::cos(a * static_cast<double>(i)), 0.85));
  } else if (window_type == "rectangular") {
    w.setConstant(1);
  } else if (window_type == "blackman") {
    for (Index i = 0; i < window_length; ++i) {
      const double x = a * static_cast<double>(i);
      w(i) = static_cast<T>(blackman_coeff - 0.5 * std::cos(x) +
                            (0.5 - blackman_coeff) * std::cos(2.0 * x));
    }
  } else {
    detail::raise<ValueError>(fn, "argument 'window_type' is '", window_type,
                              "', expected one of 'hamming', 'hanning', 'povey', 'rectangular', "
                              "'blackman'");
  }
  return w;
}

}  // namespace tessera::audio
