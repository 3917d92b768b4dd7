// tessera: reading sound files into [channels, frames] tensors, through libsndfile.
//
//   auto a = tessera::audio::read_audio<float>("speech.flac");  // a.waveform: [channels, frames]
//   auto b = tessera::audio::read_audio<float>("a.wav", 16000); // resampled to 16 kHz
//   auto info = tessera::audio::audio_info("a.wav");            // frames, rate, format
//
// Every format libsndfile reads (https://libsndfile.github.io/libsndfile/formats.html: WAV,
// FLAC, AIFF, OGG/Vorbis, Opus and MP3 where the library was built with them, ...). Samples come
// back in [-1, 1] as torchaudio.load(normalize=True) gives them: integer PCM divided by 2^(bits -
// 1) (16-bit: x / 32768), unsigned 8-bit as (x - 128) / 128, float files as stored.
#pragma once

#include <sndfile.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/audio/resample.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::audio {

// A decoded sound: waveform [channels, frames] in [-1, 1] and its sample rate.
template <class T>
struct AudioData {
  Tensor<T, 2> waveform;
  int sample_rate = 0;  // Hz

  Index channels() const noexcept { return waveform.shape()[0]; }
  Index frames() const noexcept { return waveform.shape()[1]; }
  double duration_seconds() const noexcept {
    return sample_rate > 0 ? static_cast<double>(frames()) / sample_rate : 0.0;
  }
};

// What a file holds, without decoding it.
struct AudioInfo {
  Index frames = 0;
  int sample_rate = 0;  // Hz
  int channels = 0;
  std::string format;   // libsndfile's name of the container, e.g. "WAV (Microsoft)", "FLAC ..."
  std::string subtype;  // the encoding, e.g. "Signed 16 bit PCM"
};

namespace impl {

struct SndFileCloser {
  void operator()(SNDFILE* f) const noexcept { sf_close(f); }
};
using SndFilePtr = std::unique_ptr<SNDFILE, SndFileCloser>;

// Opens `path` for reading or raises IoError naming it and libsndfile's reason.
inline SndFilePtr open_sound_file(std::string_view fn, const std::filesystem::path& path,
                                  SF_INFO& info) {
  info = SF_INFO{};
  SNDFILE* f = sf_open(path.c_str(), SFM_READ, &info);
  if (!f)
    detail::raise<IoError>(fn, "cannot read '", path.string(),
                           "' as a sound file: libsndfile says \"", sf_strerror(nullptr), "\"");
  return SndFilePtr(f);
}

inline std::string format_name(SNDFILE* f, int format) {
  SF_FORMAT_INFO fi{};
  fi.format = format;
  if (sf_command(f, SFC_GET_FORMAT_INFO, &fi, sizeof fi) != 0 || !fi.name) return {};
  return fi.name;
}

// Bytes per sample of the fixed-width encodings, 0 for the others (compressed, ADPCM, ...).
inline int fixed_sample_bytes(int format) {
  switch (format & SF_FORMAT_SUBMASK) {
    case SF_FORMAT_PCM_S8:
    case SF_FORMAT_PCM_U8:
    case SF_FORMAT_ULAW:
    case SF_FORMAT_ALAW:
      return 1;
    case SF_FORMAT_PCM_16:
      return 2;
    case SF_FORMAT_PCM_24:
      return 3;
    case SF_FORMAT_PCM_32:
    case SF_FORMAT_FLOAT:
      return 4;
    case SF_FORMAT_DOUBLE:
      return 8;
    default:
      return 0;
  }
}

// libsndfile opens a WAV or AIFF file cut short without complaint: it reads the frames that are
// there. The sample chunk's declared size (libsndfile's chunk API) tells a truncated file apart.
// Returns the declared sample bytes when they exceed what the file holds.
inline std::optional<std::uint64_t> truncated_sample_bytes(SNDFILE* f, const SF_INFO& info) {
  const int major = info.format & SF_FORMAT_TYPEMASK;
  const char* id = nullptr;
  std::uint64_t header = 0;
  if (major == SF_FORMAT_WAV || major == SF_FORMAT_WAVEX) {
    id = "data";
  } else if (major == SF_FORMAT_AIFF) {
    id = "SSND";
    header = 8;  // the SSND chunk starts with its offset and block size
  } else {
    return std::nullopt;
  }
  const int bytes = fixed_sample_bytes(info.format);
  if (bytes == 0) return std::nullopt;
  SF_CHUNK_INFO want{};
  std::strncpy(want.id, id, sizeof want.id - 1);
  want.id_size = static_cast<unsigned>(std::strlen(id));
  SF_CHUNK_ITERATOR* it = sf_get_chunk_iterator(f, &want);
  if (!it) return std::nullopt;
  SF_CHUNK_INFO got{};
  if (sf_get_chunk_size(it, &got) != SF_ERR_NO_ERROR) return std::nullopt;
  // A writer that cannot seek back (ffmpeg to a pipe: libavformat's ff_start_tag) leaves the
  // RIFF and data sizes at their placeholder 0xFFFFFFFF. libsndfile then reads the samples up to
  // the end of the file, so the size is unknown rather than a promise the file breaks.
  if (got.datalen == 0xFFFFFFFFu) return std::nullopt;
  const std::uint64_t frame_bytes =
      static_cast<std::uint64_t>(bytes) * static_cast<std::uint64_t>(info.channels);
  const std::uint64_t declared = got.datalen >= header ? got.datalen - header : 0;
  const std::uint64_t present = static_cast<std::uint64_t>(info.frames) * frame_bytes;
  if (declared >= present + frame_bytes) return declared;
  return std::nullopt;
}

template <class T>
AudioData<T> read_audio_impl(std::string_view fn, const std::filesystem::path& path) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "tessera::audio::read_audio reads float or double samples");
  SF_INFO info;
  const SndFilePtr file = open_sound_file(fn, path, info);
  SNDFILE* f = file.get();
  const std::string where = "'" + path.string() + "'";
  if (info.channels < 1 || info.samplerate < 1)
    detail::raise<IoError>(fn, where, " declares ", info.channels, " channels at ", info.samplerate,
                           " Hz, expected at least one channel and a rate > 0");
  if (info.frames < 0 || info.frames == SF_COUNT_MAX)
    detail::raise<IoError>(fn, where,
                           " does not say how many frames it holds (libsndfile "
                           "reports ",
                           info.frames, ")");
  if (const auto declared = truncated_sample_bytes(f, info))
    detail::raise<IoError>(fn, where, " is truncated: its header declares ", *declared,
                           " bytes of samples but the file holds ", info.frames,
                           " whole frames (libsndfile says \"", sf_strerror(f), "\")");
  if (info.frames == 0)
    detail::raise<ValueError>(fn, where, " holds zero frames, expected at least one");
  const Index channels = info.channels;
  const auto frames = static_cast<Index>(info.frames);
  const Index count = detail::checked_mul(frames, channels, fn, where);
  std::vector<T> interleaved(static_cast<std::size_t>(count));
  sf_count_t got = 0;
  if constexpr (std::is_same_v<T, float>) {
    got = sf_readf_float(f, interleaved.data(), info.frames);
  } else {
    got = sf_readf_double(f, interleaved.data(), info.frames);
  }
  if (got != info.frames)
    detail::raise<IoError>(fn, where, " ends after ", got, " of the ", info.frames,
                           " frames its header declares (truncated or corrupt): libsndfile says \"",
                           sf_strerror(f), "\"");
  AudioData<T> out{Tensor<T, 2>(Shape<2>{channels, frames}, uninitialized), info.samplerate};
  T* y = out.waveform.data();
  for (Index c = 0; c < channels; ++c)
    for (Index i = 0; i < frames; ++i)
      y[c * frames + i] = interleaved[static_cast<std::size_t>(i * channels + c)];
  return out;
}

}  // namespace impl

// The frames, rate, channels and format of a sound file, without decoding its samples. Raises
// IoError when libsndfile cannot open it (missing, unreadable, not a sound file it knows),
// naming the path and libsndfile's reason.
inline AudioInfo audio_info(const std::filesystem::path& path) {
  SF_INFO info;
  const auto file = impl::open_sound_file("tessera::audio::audio_info", path, info);
  return AudioInfo{static_cast<Index>(info.frames), info.samplerate, info.channels,
                   impl::format_name(file.get(), info.format & SF_FORMAT_TYPEMASK),
                   impl::format_name(file.get(), info.format & SF_FORMAT_SUBMASK)};
}

// Decodes a sound file (torchaudio.load with normalize=True, channels_first=True): waveform
// [channels, frames] in [-1, 1] and the file's sample rate. T is float or double.
// Raises IoError when the file is missing, unreadable, not in a format libsndfile reads,
// truncated (a WAV or AIFF shorter than its header declares; any file whose decoding stops
// early) or declares no channel or rate, each naming the path and libsndfile's text
// (sf_strerror); ValueError when it holds zero frames. A sample-chunk size of 0xFFFFFFFF (the
// placeholder a streaming writer such as ffmpeg on a pipe leaves) means "up to the end of the
// file", as libsndfile reads it. A data size of 0 is read by libsndfile as an empty chunk, so such
// a file is reported as holding zero frames.
template <class T>
AudioData<T> read_audio(const std::filesystem::path& path) {
  return impl::read_audio_impl<T>("tessera::audio::read_audio", path);
}

// The same, resampled to `sample_rate` Hz with libsamplerate (see resample.hpp) when the file's
// rate differs. Raises as read_audio, and ValueError for sample_rate <= 0 or a ratio
// libsamplerate cannot convert ([1/256, 256]).
template <class T>
AudioData<T> read_audio(const std::filesystem::path& path, int sample_rate) {
  constexpr std::string_view fn = "tessera::audio::read_audio";
  impl::check_rate(fn, "sample_rate", sample_rate);
  AudioData<T> a = impl::read_audio_impl<T>(fn, path);
  if (a.sample_rate != sample_rate) {
    a.waveform = impl::resample_impl<T>(fn, cview(a.waveform), a.sample_rate, sample_rate);
    a.sample_rate = sample_rate;
  }
  return a;
}

}  // namespace tessera::audio
