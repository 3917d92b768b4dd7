// tessera: sample-rate conversion (libsamplerate's best sinc converter) and mixing down to mono.
//
//   auto y = tessera::audio::resample(x, 44100, 16000);  // [channels, frames] ->
//                                                        // [channels, ceil(frames * 16/44.1)]
//   auto m = tessera::audio::downmix_to_mono(y);         // [channels, frames] -> [1, frames]
//
// libsamplerate (Erik de Castro Lopo, https://libsndfile.github.io/libsamplerate/) with
// SRC_SINC_BEST_QUALITY: a band-limited sinc interpolator with 97 dB of stop-band rejection and a
// pass band to 97% of the lower Nyquist frequency. It is not torchaudio.functional.resample's
// filter (a Hann-windowed sinc of 6 zero crossings, rolloff 0.99): results differ in the last
// few percent of the band and near the ends; see tests/audio/resample_test.cpp for the numbers.
#pragma once

#include <samplerate.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::audio {

namespace impl {

inline void check_rate(std::string_view fn, std::string_view arg, long long rate) {
  if (rate <= 0 || rate > std::numeric_limits<int>::max())
    detail::raise<ValueError>(fn, "argument '", arg, "' is ", rate,
                              " Hz, expected a rate in [1, 2^31 - 1]");
}

// ceil(frames * new_freq / orig_freq), the length torchaudio.functional.resample (0.13,
// _apply_sinc_resample_kernel: `int(math.ceil(new_freq * length / orig_freq))` after dividing
// both rates by their gcd, which leaves the quotient unchanged) gives, in exact integer
// arithmetic (torchaudio's float division could round differently only past 2^53).
inline Index resampled_length(std::string_view fn, Index frames, long long orig_freq,
                              long long new_freq) {
  long long num = 0;
  if (__builtin_mul_overflow(static_cast<long long>(frames), new_freq, &num) ||
      __builtin_add_overflow(num, orig_freq - 1, &num))
    detail::raise<ShapeError>(fn, "resampling ", frames, " frames from ", orig_freq, " Hz to ",
                              new_freq, " Hz gives more frames than an index can hold");
  return static_cast<Index>(num / orig_freq);
}

template <class T>
Tensor<T, 2> resample_impl(std::string_view fn, TensorMap<const T, 2> x, long long orig_freq,
                           long long new_freq) {
  check_rate(fn, "orig_freq", orig_freq);
  check_rate(fn, "new_freq", new_freq);
  const Index channels = x.dim(0), frames = x.dim(1);
  if (orig_freq == new_freq) return Tensor<T, 2>(x);
  const double ratio = static_cast<double>(new_freq) / static_cast<double>(orig_freq);
  if (!src_is_valid_ratio(ratio))
    detail::raise<ValueError>(fn, "arguments 'orig_freq' and 'new_freq' are ", orig_freq, " and ",
                              new_freq, " Hz, a ratio of ", ratio,
                              "; libsamplerate converts ratios in [1/256, 256]");
  if (channels > 1024)
    detail::raise<ValueError>(fn, "argument 'waveform' has ", channels,
                              " channels, more than the 1024 libsamplerate converts at once");
  const Index out_frames = resampled_length(fn, frames, orig_freq, new_freq);
  Tensor<T, 2> out(Shape<2>{channels, out_frames});
  if (channels == 0 || out_frames == 0) return out;

  // libsamplerate works on interleaved float frames. A few zero frames after the signal let it
  // produce ceil(frames * ratio) frames (with end_of_input alone it stops near the floor); the
  // signal is taken to be zero after its end either way.
  const Index extra = static_cast<Index>(std::ceil(1.0 / ratio)) + 2;
  const Index in_frames = frames + extra;
  std::vector<float> in(static_cast<std::size_t>(in_frames * channels), 0.0f);
  for (Index c = 0; c < channels; ++c)
    for (Index i = 0; i < frames; ++i)
      in[static_cast<std::size_t>(i * channels + c)] = static_cast<float>(x(c, i));
  std::vector<float> res(static_cast<std::size_t>((out_frames + 16) * channels), 0.0f);

  int err = 0;
  const std::unique_ptr<SRC_STATE, SRC_STATE* (*)(SRC_STATE*)> state(
      src_new(SRC_SINC_BEST_QUALITY, static_cast<int>(channels), &err), &src_delete);
  if (!state)
    detail::raise<ValueError>(fn, "libsamplerate could not start a converter for ", channels,
                              " channels: ", src_strerror(err));
  SRC_DATA d{};
  d.data_in = in.data();
  d.input_frames = static_cast<long>(in_frames);
  d.data_out = res.data();
  d.output_frames = static_cast<long>(out_frames + 16);
  d.end_of_input = 1;
  d.src_ratio = ratio;
  Index produced = 0;
  while (produced < out_frames) {
    if ((err = src_process(state.get(), &d)) != 0)
      detail::raise<ValueError>(fn, "libsamplerate failed converting ", orig_freq, " Hz to ",
                                new_freq, " Hz: ", src_strerror(err));
    if (d.output_frames_gen == 0) break;
    produced += d.output_frames_gen;
    d.data_in += d.input_frames_used * channels;
    d.input_frames -= d.input_frames_used;
    d.data_out += d.output_frames_gen * channels;
    d.output_frames -= d.output_frames_gen;
  }
  // Frames past what it produced (none seen in practice) stay zero.
  const Index have = std::min(produced, out_frames);
  for (Index c = 0; c < channels; ++c)
    for (Index i = 0; i < have; ++i)
      out(c, i) = static_cast<T>(res[static_cast<std::size_t>(i * channels + c)]);
  return out;
}

}  // namespace impl

// Resamples every channel of waveform [channels, frames] from orig_freq to new_freq Hz with
// libsamplerate's SRC_SINC_BEST_QUALITY converter; result [channels, ceil(frames * new_freq /
// orig_freq)], the length torchaudio.functional.resample gives (so the two line up frame for
// frame). The converter works in float32 whatever T is. Equal rates return a copy. Raises
// ValueError for a rate <= 0, a ratio outside libsamplerate's [1/256, 256] or more than 1024
// channels.
template <TensorLike X>
requires(rank_v<X> == 2) Tensor < std::remove_const_t<scalar_t<X>>,
2 > resample(const X& waveform, long long orig_freq, long long new_freq) {
  using T = std::remove_const_t<scalar_t<X>>;
  static_assert(std::is_floating_point_v<T>, "resample needs float or double samples");
  return impl::resample_impl<T>("tessera::audio::resample", cview(waveform), orig_freq, new_freq);
}

// The mean of the channels of waveform [channels, frames]: [1, frames] (waveform.mean(0,
// keepdim=True) in torch). Raises ValueError for a waveform of zero channels.
template <TensorLike X>
requires(rank_v<X> == 2) Tensor < std::remove_const_t<scalar_t<X>>,
2 > downmix_to_mono(const X& waveform) {
  using T = std::remove_const_t<scalar_t<X>>;
  const Index channels = waveform.shape()[0], frames = waveform.shape()[1];
  if (channels < 1)
    detail::raise<ValueError>("tessera::audio::downmix_to_mono", "argument 'waveform' has shape ",
                              detail::shape_string(waveform.shape()),
                              ", expected at least one channel");
  Tensor<T, 2> out(Shape<2>{1, frames});
  const T* x = waveform.data();
  T* y = out.data();
  for (Index c = 0; c < channels; ++c)
    for (Index i = 0; i < frames; ++i) y[i] += x[c * frames + i];
  const auto count = static_cast<T>(channels);
  for (Index i = 0; i < frames; ++i) y[i] /= count;
  return out;
}

}  // namespace tessera::audio
