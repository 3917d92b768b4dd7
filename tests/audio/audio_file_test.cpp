// tessera::audio::read_audio and audio_info against torchaudio.load (torchaudio 0.13) on the
// fixtures of tests/fixtures/audio/ (synthesised speech from espeak-ng), on files written here
// with libsndfile in each encoding, and on every error path.
#include "tessera/audio/audio_file.hpp"

#include <gtest/gtest.h>
#include <sndfile.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace audio_file_test {

using tessera::Index;
using tessera::IoError;
using tessera::Shape;
using tessera::Tensor;
using tessera::ValueError;
namespace audio = tessera::audio;
namespace fs = std::filesystem;

std::string fixture_path(const std::string& name) {
  return std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/audio/" + name;
}

const tessera::io::StateDict& expected() {
  static const auto sd = tessera::io::load_safetensors(fixture_path("audio_expected.safetensors"));
  return sd;
}

// Writes interleaved 16-bit samples (or 32-bit ints, or floats) with libsndfile.
template <class S>
void write_sound(const fs::path& path, int format, int channels, int rate,
                 const std::vector<S>& interleaved) {
  SF_INFO info{};
  info.channels = channels;
  info.samplerate = rate;
  info.format = format;
  SNDFILE* f = sf_open(path.c_str(), SFM_WRITE, &info);
  ASSERT_NE(f, nullptr) << sf_strerror(nullptr);
  const sf_count_t frames = static_cast<sf_count_t>(interleaved.size()) / channels;
  sf_count_t wrote = 0;
  if constexpr (std::is_same_v<S, short>) wrote = sf_writef_short(f, interleaved.data(), frames);
  if constexpr (std::is_same_v<S, int>) wrote = sf_writef_int(f, interleaved.data(), frames);
  if constexpr (std::is_same_v<S, float>) wrote = sf_writef_float(f, interleaved.data(), frames);
  EXPECT_EQ(wrote, frames);
  sf_close(f);
}

void copy_prefix(const fs::path& from, const fs::path& to, std::size_t bytes) {
  std::ifstream in(from, std::ios::binary);
  std::vector<char> buf(bytes);
  in.read(buf.data(), static_cast<std::streamsize>(bytes));
  ASSERT_EQ(static_cast<std::size_t>(in.gcount()), bytes);
  std::ofstream(to, std::ios::binary).write(buf.data(), static_cast<std::streamsize>(bytes));
}

template <class T>
class AudioFileTest : public ::testing::Test {};
TYPED_TEST_SUITE(AudioFileTest, tessera::test::Scalars);

TYPED_TEST(AudioFileTest, ReadsTheWavAsTorchaudioLoadDoes) {
  using T = TypeParam;
  const auto a = audio::read_audio<T>(fixture_path("speech_16k.wav"));
  const auto facts = expected().get<double, 1>("load.facts");
  EXPECT_EQ(a.sample_rate, 16000);
  ASSERT_EQ(a.waveform.shape(), (Shape<2>{1, static_cast<Index>(facts(0))}));
  EXPECT_NEAR(a.duration_seconds(), facts(0) / 16000, 1e-12);
  // int16 / 32768 is exact in float and double: every sample equals torchaudio's.
  const auto every7 = expected().get<T, 2>("load.speech_16k");
  for (Index j = 0; j < every7.dim(1); ++j) ASSERT_EQ(a.waveform(0, 7 * j), every7(0, j)) << j;
  double sum = 0, sum_sq = 0;
  for (Index i = 0; i < a.frames(); ++i) {
    sum += a.waveform(0, i);
    sum_sq += static_cast<double>(a.waveform(0, i)) * a.waveform(0, i);
  }
  EXPECT_NEAR(sum, facts(4), 1e-9);
  EXPECT_NEAR(sum_sq, facts(5), 1e-9);
}

TYPED_TEST(AudioFileTest, ReadsTheStereoFlacAsTorchaudioLoadDoes) {
  using T = TypeParam;
  const auto a = audio::read_audio<T>(fixture_path("speech_44k_stereo.flac"));
  const auto facts = expected().get<double, 1>("load.facts");
  EXPECT_EQ(a.sample_rate, 44100);
  ASSERT_EQ(a.waveform.shape(), (Shape<2>{2, static_cast<Index>(facts(2))}));
  const auto every50 = expected().get<T, 2>("load.speech_44k_stereo");
  for (Index c = 0; c < 2; ++c)
    for (Index j = 0; j < every50.dim(1); ++j)
      ASSERT_EQ(a.waveform(c, 50 * j), every50(c, j)) << c << ", " << j;
  // The right channel is the left at half amplitude (sox's remix 1v0.5), to one 16-bit step.
  for (Index i = 0; i < a.frames(); ++i)
    ASSERT_NEAR(a.waveform(1, i), 0.5 * a.waveform(0, i), 1.0 / 32768) << i;
}

TYPED_TEST(AudioFileTest, InfoDescribesTheFileWithoutDecoding) {
  const auto wav = audio::audio_info(fixture_path("speech_16k.wav"));
  EXPECT_EQ(wav.sample_rate, 16000);
  EXPECT_EQ(wav.channels, 1);
  EXPECT_EQ(wav.frames, 23289);
  EXPECT_NE(wav.format.find("WAV"), std::string::npos) << wav.format;
  EXPECT_NE(wav.subtype.find("16 bit"), std::string::npos) << wav.subtype;
  const auto flac = audio::audio_info(fixture_path("speech_44k_stereo.flac"));
  EXPECT_EQ(flac.sample_rate, 44100);
  EXPECT_EQ(flac.channels, 2);
  EXPECT_NE(flac.format.find("FLAC"), std::string::npos) << flac.format;
}

// Resampling on read, compared with torchaudio.functional.resample for information only: the
// two use different filters (libsamplerate's best sinc vs a Hann-windowed sinc of width 6 and
// rolloff 0.99), so they agree on the speech band and differ near 8 kHz and at the ends.
TYPED_TEST(AudioFileTest, ResamplesOnReadAndReportsTheDifferenceFromTorchaudio) {
  using T = TypeParam;
  const auto a = audio::read_audio<T>(fixture_path("speech_44k_stereo.flac"), 16000);
  EXPECT_EQ(a.sample_rate, 16000);
  ASSERT_EQ(a.waveform.shape(), (Shape<2>{2, 23289}));  // ceil(64190 * 16000 / 44100)
  const auto ta = expected().get<T, 2>("resample.44k_to_16k");
  ASSERT_EQ(ta.dim(1), a.frames());
  double diff_sq = 0, ref_sq = 0, max_diff = 0, peak = 0;
  for (Index i = 0; i < a.frames(); ++i) {
    const double d = static_cast<double>(a.waveform(0, i)) - ta(0, i);
    diff_sq += d * d;
    ref_sq += static_cast<double>(ta(0, i)) * ta(0, i);
    max_diff = std::max(max_diff, std::fabs(d));
    peak = std::max(peak, std::fabs(static_cast<double>(ta(0, i))));
  }
  const double rel_rms = std::sqrt(diff_sq / ref_sq);
  std::printf(
      "    libsamplerate vs torchaudio.functional.resample, 44.1 -> 16 kHz speech: "
      "relative RMS difference %.3g (%.1f dB), max |diff| %.3g (peak %.3g)\n",
      rel_rms, 20 * std::log10(rel_rms), max_diff, peak);
  EXPECT_LT(rel_rms, 0.05) << "not a parity bound: a sanity check that both resample the same "
                              "signal";
  // Same rate: no resampling, the samples as stored.
  const auto same = audio::read_audio<T>(fixture_path("speech_16k.wav"), 16000);
  EXPECT_TRUE(tessera::test::same_bits(
      same.waveform, audio::read_audio<T>(fixture_path("speech_16k.wav")).waveform));
}

// Each encoding libsndfile writes comes back normalised as torchaudio.load normalises it.
TYPED_TEST(AudioFileTest, NormalisesEachEncoding) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  {
    const std::vector<short> s{-32768, -1, 0, 1, 32767, 16384};
    write_sound(dir / "pcm16.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 2, 8000, s);
    const auto a = audio::read_audio<T>(dir / "pcm16.wav");
    ASSERT_EQ(a.waveform.shape(), (Shape<2>{2, 3}));
    EXPECT_EQ(a.sample_rate, 8000);
    const T want[2][3] = {{T(-1), T(0), T(32767.0 / 32768)},
                          {T(-1.0 / 32768), T(1.0 / 32768), T(0.5)}};
    for (Index c = 0; c < 2; ++c)
      for (Index i = 0; i < 3; ++i) EXPECT_EQ(a.waveform(c, i), want[c][i]) << c << i;
  }
  {
    // 24-bit: libsndfile's int interface is left-aligned 32-bit; x / 2^23 comes back.
    const std::vector<int> s{-8388608 * 256, 4194304 * 256, 1 * 256};
    write_sound(dir / "pcm24.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_24, 1, 16000, s);
    const auto a = audio::read_audio<T>(dir / "pcm24.wav");
    EXPECT_EQ(a.waveform(0, 0), T(-1));
    EXPECT_EQ(a.waveform(0, 1), T(0.5));
    EXPECT_EQ(a.waveform(0, 2), static_cast<T>(1.0 / 8388608));
  }
  {
    const std::vector<short> s{-32768, 0, 16384};  // unsigned 8-bit: (u - 128) / 128
    write_sound(dir / "u8.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_U8, 1, 16000, s);
    const auto a = audio::read_audio<T>(dir / "u8.wav");
    EXPECT_EQ(a.waveform(0, 0), T(-1));
    EXPECT_EQ(a.waveform(0, 1), T(0));
    EXPECT_EQ(a.waveform(0, 2), T(0.5));
  }
  {
    const std::vector<float> s{0.25f, -0.75f, 1.5f};  // float files are as stored, unclipped
    write_sound(dir / "float.wav", SF_FORMAT_WAV | SF_FORMAT_FLOAT, 1, 16000, s);
    const auto a = audio::read_audio<T>(dir / "float.wav");
    EXPECT_EQ(a.waveform(0, 0), T(0.25));
    EXPECT_EQ(a.waveform(0, 1), T(-0.75));
    EXPECT_EQ(a.waveform(0, 2), T(1.5));
  }
  {
    const std::vector<short> s{100, -200, 300, -400};
    write_sound(dir / "x.aiff", SF_FORMAT_AIFF | SF_FORMAT_PCM_16, 1, 22050, s);
    const auto a = audio::read_audio<T>(dir / "x.aiff");
    ASSERT_EQ(a.frames(), 4);
    EXPECT_EQ(a.sample_rate, 22050);
    EXPECT_EQ(a.waveform(0, 3), T(-400.0 / 32768));
  }
}

TYPED_TEST(AudioFileTest, MissingFileIsAnIoErrorNamingThePath) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  const auto path = dir / "no_such_file.wav";
  const std::string quoted = "'" + path.string() + "'";
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(path), IoError, "tessera::audio::read_audio",
                           quoted.c_str(), "libsndfile says", "No such file");
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(path, 16000), IoError, "tessera::audio::read_audio",
                           "no_such_file.wav");
  TESSERA_EXPECT_THROW_MSG(audio::audio_info(path), IoError, "tessera::audio::audio_info",
                           "no_such_file.wav");
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir.path()), IoError, "tessera::audio::read_audio",
                           "libsndfile says");
}

TYPED_TEST(AudioFileTest, UnsupportedFormatIsAnIoError) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  const auto path = dir / "notes.wav";
  std::ofstream(path) << "These are notes, not sound. They go on for a while to pass any "
                         "minimum size check a reader may have.\n";
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(path), IoError, "tessera::audio::read_audio",
                           "notes.wav", "libsndfile says", "Format not recognised");
}

TYPED_TEST(AudioFileTest, TruncatedFilesAreIoErrors) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  // A WAV cut inside its samples: libsndfile alone would read what is left without a word.
  copy_prefix(fixture_path("speech_16k.wav"), dir / "cut.wav", 20000);
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "cut.wav"), IoError,
                           "tessera::audio::read_audio", "cut.wav", "truncated",
                           "declares 46578 bytes", "libsndfile says");
  // Cut by one byte: half a sample is missing.
  copy_prefix(fixture_path("speech_16k.wav"), dir / "cut1.wav",
              static_cast<std::size_t>(fs::file_size(fixture_path("speech_16k.wav"))) - 1);
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "cut1.wav"), IoError, "truncated");
  // Cut right after the header: no sample at all, still truncated (not "zero frames").
  copy_prefix(fixture_path("speech_16k.wav"), dir / "header.wav", 44);
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "header.wav"), IoError, "truncated");
  // Cut inside the header.
  copy_prefix(fixture_path("speech_16k.wav"), dir / "half_header.wav", 20);
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "half_header.wav"), IoError,
                           "half_header.wav", "libsndfile says");
  // A FLAC cut short fails while decoding.
  copy_prefix(fixture_path("speech_44k_stereo.flac"), dir / "cut.flac", 30000);
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "cut.flac"), IoError,
                           "tessera::audio::read_audio", "cut.flac", "ends after",
                           "of the 64190 frames", "libsndfile says");
  // An AIFF cut short.
  const std::vector<short> s(1000, 1234);
  write_sound(dir / "x.aiff", SF_FORMAT_AIFF | SF_FORMAT_PCM_16, 1, 16000, s);
  copy_prefix(dir / "x.aiff", dir / "cut.aiff",
              static_cast<std::size_t>(fs::file_size(dir / "x.aiff")) - 100);
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "cut.aiff"), IoError, "cut.aiff",
                           "truncated");
}

// The 16-bit mono PCM WAV a streaming writer produces when it cannot seek back to fill in the
// sizes (ffmpeg writing to a pipe): RIFF and data sizes are `riff_size` and `data_size`
// placeholders, the samples run to the end of the file.
void write_streamed_wav(const fs::path& path, std::uint32_t riff_size, std::uint32_t data_size,
                        const std::vector<short>& samples) {
  std::string b;
  auto u32 = [&](std::uint32_t x) {
    for (int i = 0; i < 4; ++i) b += static_cast<char>((x >> (8 * i)) & 0xFF);
  };
  auto u16 = [&](std::uint16_t x) {
    for (int i = 0; i < 2; ++i) b += static_cast<char>((x >> (8 * i)) & 0xFF);
  };
  b += "RIFF";
  u32(riff_size);
  b += "WAVEfmt ";
  u32(16);     // fmt chunk size
  u16(1);      // PCM
  u16(1);      // channels
  u32(16000);  // sample rate
  u32(32000);  // bytes per second
  u16(2);      // block align
  u16(16);     // bits per sample
  b += "data";
  u32(data_size);
  for (short s : samples) u16(static_cast<std::uint16_t>(s));
  std::ofstream(path, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
}

TYPED_TEST(AudioFileTest, StreamingPlaceholderSizesMeanUpToTheEndOfTheFile) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  std::vector<short> samples(1000);
  for (std::size_t i = 0; i < samples.size(); ++i)
    samples[i] = static_cast<short>(static_cast<int>(i) * 37 - 16000);
  const std::uint32_t riff_true = 36 + 2 * 1000, data_true = 2 * 1000;
  for (const auto& [riff, data] :
       {std::pair{0xFFFFFFFFu, 0xFFFFFFFFu}, std::pair{riff_true, 0xFFFFFFFFu},
        std::pair{0xFFFFFFFFu, data_true}, std::pair{0u, data_true}}) {
    SCOPED_TRACE(testing::Message() << "RIFF size " << riff << ", data size " << data);
    write_streamed_wav(dir / "piped.wav", riff, data, samples);
    const auto a = audio::read_audio<T>(dir / "piped.wav");
    ASSERT_EQ(a.waveform.shape(), (Shape<2>{1, 1000}));
    EXPECT_EQ(a.sample_rate, 16000);
    for (Index i = 0; i < 1000; ++i)
      ASSERT_EQ(a.waveform(0, i), static_cast<T>(samples[static_cast<std::size_t>(i)]) / T(32768))
          << i;
  }
  // The placeholder with no sample after the header: nothing to read, not a truncation.
  write_streamed_wav(dir / "no_samples.wav", 0xFFFFFFFFu, 0xFFFFFFFFu, {});
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "no_samples.wav"), ValueError,
                           "tessera::audio::read_audio", "no_samples.wav", "zero frames");
  // A true size is still checked: 2000 bytes declared, 1000 present.
  write_streamed_wav(dir / "short.wav", riff_true, data_true,
                     std::vector<short>(samples.begin(), samples.begin() + 500));
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "short.wav"), IoError, "short.wav",
                           "truncated", "declares 2000 bytes");
}

TYPED_TEST(AudioFileTest, ZeroFramesIsAValueError) {
  using T = TypeParam;
  tessera::test::TempDir dir;
  write_sound(dir / "empty.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 1, 16000, std::vector<short>{});
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "empty.wav"), ValueError,
                           "tessera::audio::read_audio", "empty.wav", "zero frames");
  write_sound(dir / "empty.aiff", SF_FORMAT_AIFF | SF_FORMAT_PCM_24, 2, 16000, std::vector<int>{});
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(dir / "empty.aiff"), ValueError, "empty.aiff",
                           "zero frames");
}

TYPED_TEST(AudioFileTest, BadTargetRateIsAValueError) {
  using T = TypeParam;
  const auto wav = fixture_path("speech_16k.wav");
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(wav, 0), ValueError, "tessera::audio::read_audio",
                           "'sample_rate' is 0");
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(wav, -16000), ValueError,
                           "'sample_rate' is -16000");
  TESSERA_EXPECT_THROW_MSG(audio::read_audio<T>(wav, 16000 * 300), ValueError,
                           "tessera::audio::read_audio", "ratio of 300", "[1/256, 256]");
}

}  // namespace audio_file_test
