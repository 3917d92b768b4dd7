// tessera: the one real-input FFT the audio features share (Eigen's FFT module, kissfft backend).
//
// kissfft factors any length (400 = 2^4 5^2 for torchaudio's default n_fft, 512 for Kaldi's
// padded 25 ms window, odd lengths too). Eigen::FFT caches its plans and work buffers inside the
// object, so each thread keeps its own (thread_local): concurrent calls never share one, and a
// repeated call with the same length allocates nothing.
#pragma once

#include <cmath>
#include <complex>
#include <unsupported/Eigen/FFT>

#include "tessera/core/config.hpp"
#include "tessera/core/eigen.hpp"

namespace tessera::audio::impl {

// This thread's forward FFT that returns only bins 0 .. n / 2 of a real input.
template <class T>
Eigen::FFT<T>& thread_real_fft() {
  thread_local Eigen::FFT<T> fft(typename Eigen::FFT<T>::impl_type(), Eigen::FFT<T>::HalfSpectrum);
  return fft;
}

// spectrum[k] = |X[k]| ^ 2 (power) or |X[k]| for k = 0 .. n / 2, X the DFT of frame[0 .. n).
// `work` holds n / 2 + 1 complex values.
template <class T>
void real_fft_spectrum(const T* frame, Index n, std::complex<T>* work, T* spectrum, bool power) {
  thread_real_fft<T>().fwd(work, frame, n);
  const Index bins = n / 2 + 1;
  for (Index k = 0; k < bins; ++k) {
    const T re = work[k].real(), im = work[k].imag();
    const T p = re * re + im * im;
    spectrum[k] = power ? p : std::sqrt(p);
  }
}

}  // namespace tessera::audio::impl
