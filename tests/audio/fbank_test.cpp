// tessera::audio::fbank / Fbank against torchaudio.compliance.kaldi.fbank (torchaudio 0.13) on
// synthesised speech; fixtures from tests/fixtures/audio/make_audio_fixtures.py.
#include "tessera/audio/fbank.hpp"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <string>

#include "tessera/audio/audio_file.hpp"
#include "tessera/audio/mel_filterbank.hpp"
#include "tessera/audio/window.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace fbank_test {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::ValueError;
namespace audio = tessera::audio;

std::string fixture_path(const std::string& name) {
  return std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/audio/" + name;
}

const tessera::io::StateDict& expected() {
  static const auto sd = tessera::io::load_safetensors(fixture_path("audio_expected.safetensors"));
  return sd;
}

// Relative tolerance 1e-4 against torchaudio computed in float64 (stored as float32). Log
// features get an absolute floor of 1e-4: an error e in ln(E) is a relative error e in the
// energy E, so the floor is the same 1e-4 relative accuracy of the energies where ln(E) is near
// 0 (there a relative test of ln(E) itself would demand ever more of E). Linear energies get a
// floor of 1e-6 of the tensor's largest value: float32 FFT round-off is relative to a frame's
// largest bins, not to each quiet band's own energy.
template <class T, class A, class B>
void expect_features_near(const A& actual, const B& expected_t, bool log_domain,
                          const std::string& what) {
  ASSERT_EQ(actual.shape(), expected_t.shape()) << what;
  const T* a = actual.data();
  const T* e = expected_t.data();
  T peak = 0;
  for (Index i = 0; i < expected_t.size(); ++i) peak = std::max(peak, std::fabs(e[i]));
  const T atol = log_domain ? T(1e-4) : T(1e-6) * peak;
  const T rtol = T(1e-4);
  double max_abs = 0, used = 0, max_rel = 0;  // used: the largest |diff| / (atol + rtol |ref|)
  int failures = 0;
  for (Index i = 0; i < expected_t.size(); ++i) {
    const T d = std::fabs(a[i] - e[i]);
    max_abs = std::max(max_abs, static_cast<double>(d));
    if (e[i] != 0) max_rel = std::max(max_rel, static_cast<double>(d / std::fabs(e[i])));
    used = std::max(used, static_cast<double>(d / (atol + rtol * std::fabs(e[i]))));
    if (!(d <= atol + rtol * std::fabs(e[i])) && failures++ < 5)
      ADD_FAILURE() << what << " element " << i << ": " << a[i] << " vs " << e[i];
  }
  EXPECT_EQ(failures, 0) << what;
  std::printf(
      "    %s (%s): max |diff| %.3g, max |diff| / |ref| %.3g, max |diff| / (atol %.3g + 1e-4 "
      "|ref|) = %.3g\n",
      what.c_str(), sizeof(T) == 4 ? "float" : "double", max_abs, max_rel,
      static_cast<double>(atol), used);
}

template <class T>
Tensor<T, 2> speech_16k() {
  return audio::read_audio<T>(fixture_path("speech_16k.wav")).waveform;
}

template <class T>
class FbankTest : public ::testing::Test {};
TYPED_TEST_SUITE(FbankTest, tessera::test::Scalars);

TYPED_TEST(FbankTest, KaldiDefaultsMatchTorchaudio) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const auto out = audio::fbank(x);  // 23 bins, povey, 25 ms / 10 ms, preemphasis 0.97
  EXPECT_EQ(out.dim(0), 1 + (x.dim(1) - 400) / 160);
  expect_features_near<T>(out, expected().get<T, 2>("fbank.default"), true, "fbank.default");
}

// AST (Gong et al. 2021, "AST: Audio Spectrogram Transformer", src/dataloader.py): the waveform
// minus its mean, 128 bins, hanning window, 10 ms shift, htk_compat, no energy, no dither.
TYPED_TEST(FbankTest, AstConfigurationMatchesTorchaudio) {
  using T = TypeParam;
  auto x = speech_16k<T>();
  x.as_array() -= x.as_array().mean();
  const audio::Fbank<T> ast({.dither = 0.0,
                             .frame_shift = 10,
                             .htk_compat = true,
                             .num_mel_bins = 128,
                             .use_energy = false,
                             .window_type = "hanning"});
  const auto out = ast(x);
  EXPECT_EQ(out.dim(1), 128);
  expect_features_near<T>(out, expected().get<T, 2>("fbank.ast"), true, "fbank.ast");
}

TYPED_TEST(FbankTest, VariantsMatchTorchaudio) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  struct Case {
    const char* name;
    audio::FbankOptions options;
    bool log_domain;
  };
  const Case cases[] = {
      {"hamming_energy",
       {.energy_floor = 0.0,
        .high_freq = -400,
        .low_freq = 64,
        .num_mel_bins = 40,
        .snip_edges = false,
        .use_energy = true,
        .window_type = "hamming"},
       true},
      {"blackman_htk_energy",
       {.frame_length = 20,
        .frame_shift = 12.5,
        .htk_compat = true,
        .num_mel_bins = 30,
        .preemphasis_coefficient = 0.0,
        .raw_energy = false,
        .remove_dc_offset = false,
        .round_to_power_of_two = false,
        .use_energy = true,
        .window_type = "blackman"},
       true},
      {"rectangular_linear",
       {.frame_length = 32,
        .frame_shift = 8,
        .high_freq = 7000,
        .num_mel_bins = 24,
        .snip_edges = false,
        .use_log_fbank = false,
        .use_power = false,
        .window_type = "rectangular"},
       false},
      {"povey_subtract_mean", {.low_freq = 0, .num_mel_bins = 23, .subtract_mean = true}, true},
  };
  for (const auto& c : cases) {
    const auto out = audio::fbank(x, c.options);
    expect_features_near<T>(out, expected().get<T, 2>(std::string("fbank.") + c.name), c.log_domain,
                            std::string("fbank.") + c.name);
  }
}

TYPED_TEST(FbankTest, SelectsTheChannelOfAStereo44kFile) {
  using T = TypeParam;
  const auto a = audio::read_audio<T>(fixture_path("speech_44k_stereo.flac"));
  ASSERT_EQ(a.channels(), 2);
  const auto out =
      audio::fbank(a.waveform, {.channel = 1, .num_mel_bins = 40, .sample_frequency = 44100.0});
  expect_features_near<T>(out, expected().get<T, 2>("fbank.44k_channel1"), true,
                          "fbank.44k_channel1");
}

TYPED_TEST(FbankTest, FramingFollowsKaldi) {
  using T = TypeParam;
  const audio::Fbank<T> snip;
  EXPECT_EQ(snip.window_size(), 400);
  EXPECT_EQ(snip.window_shift(), 160);
  EXPECT_EQ(snip.padded_window_size(), 512);
  EXPECT_EQ(snip.num_frames(399), 0);
  EXPECT_EQ(snip.num_frames(400), 1);
  EXPECT_EQ(snip.num_frames(16000), 98);
  const audio::Fbank<T> centred({.snip_edges = false});
  EXPECT_EQ(centred.num_frames(16000), 100);
  EXPECT_EQ(centred.num_frames(16079), 100);
  EXPECT_EQ(centred.num_frames(16080), 101);
  const audio::Fbank<T> no_pow2({.round_to_power_of_two = false, .use_energy = true});
  EXPECT_EQ(no_pow2.padded_window_size(), 400);
  EXPECT_EQ(no_pow2.num_columns(), 24);
}

TYPED_TEST(FbankTest, WindowsFollowTheirFormulas) {
  using T = TypeParam;
  const Index n = 9;
  const auto povey = audio::kaldi_window<T>("povey", n);
  const auto hann = audio::kaldi_window<T>("hanning", n);
  const auto black = audio::kaldi_window<T>("blackman", n);
  const auto rect = audio::kaldi_window<T>("rectangular", n);
  const auto hamm = audio::kaldi_window<T>("hamming", n);
  const double a = 2 * M_PI / (n - 1);
  for (Index i = 0; i < n; ++i) {
    const double h = 0.5 - 0.5 * std::cos(a * i);
    EXPECT_NEAR(hann(i), h, 1e-7);
    EXPECT_NEAR(povey(i), std::pow(h, 0.85), 1e-7);
    EXPECT_NEAR(hamm(i), 0.54 - 0.46 * std::cos(a * i), 1e-7);
    EXPECT_NEAR(black(i), 0.42 - 0.5 * std::cos(a * i) + 0.08 * std::cos(2 * a * i), 1e-7);
    EXPECT_EQ(rect(i), T(1));
  }
  EXPECT_EQ(hann(0), T(0));
  EXPECT_NEAR(hann(4), 1.0, 1e-7);
}

TYPED_TEST(FbankTest, MelBanksAreTrianglesOnKaldisScale) {
  using T = TypeParam;
  const auto banks = audio::kaldi_mel_banks<T>(23, 512, 16000, 20, 0);
  ASSERT_EQ(banks.shape(), (Shape<2>{23, 256}));
  EXPECT_NEAR(audio::kaldi_mel_scale(700.0), 1127.0 * std::log(2.0), 1e-9);
  EXPECT_NEAR(audio::kaldi_inverse_mel_scale(audio::kaldi_mel_scale(1234.5)), 1234.5, 1e-9);
  for (Index b = 0; b < 23; ++b) {
    T peak = 0;
    for (Index k = 0; k < 256; ++k) {
      EXPECT_GE(banks(b, k), T(0));
      peak = std::max(peak, banks(b, k));
    }
    EXPECT_GT(peak, T(0.5)) << "bin " << b;
    EXPECT_LE(peak, T(1));
  }
}

TYPED_TEST(FbankTest, ResultDoesNotDependOnTheThreadCount) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const int before = tessera::num_threads();
  tessera::set_num_threads(1);
  const auto one = audio::fbank(x);
  tessera::set_num_threads(2);
  const auto two = audio::fbank(x);
  tessera::set_num_threads(before);
  EXPECT_TRUE(tessera::test::same_bits(one, two));
}

TYPED_TEST(FbankTest, RepeatedCallsUseNoNewScratch) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const audio::Fbank<T> f;
  tessera::set_num_threads(1);
  tessera::test::expect_repeat_allocates_nothing([&] { (void)f(x); });
}

TYPED_TEST(FbankTest, ShortInputWithMinDurationGivesNoFrames) {
  using T = TypeParam;
  Tensor<T, 2> x(Shape<2>{1, 1000});
  x.setRandom(3, -0.5, 0.5);
  const auto out = audio::fbank(x, {.min_duration = 1.0, .use_energy = true});
  EXPECT_EQ(out.shape(), (Shape<2>{0, 24}));
}

TYPED_TEST(FbankTest, SilenceIsFlooredAtLogEpsilon) {
  using T = TypeParam;
  const Tensor<T, 2> x(Shape<2>{1, 4000});
  const auto out = audio::fbank(x, {.use_energy = true});
  for (Index i = 0; i < out.size(); ++i) {
    if (i % 24 == 0)
      EXPECT_EQ(out.data()[i], T(0)) << "energy floored at ln(energy_floor = 1)";
    else
      EXPECT_EQ(out.data()[i], std::log(static_cast<T>(FLT_EPSILON)));
  }
}

TYPED_TEST(FbankTest, RejectsBadOptions) {
  using T = TypeParam;
  using O = audio::FbankOptions;
  const char* fn = "tessera::audio::fbank";
  const Tensor<T, 2> x(Shape<2>{1, 1600});
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.dither = 1.0}), ValueError, fn, "'dither'",
                           "not supported");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.vtln_warp = 0.9}), ValueError, fn, "'vtln_warp'",
                           "not supported");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.window_type = "kaiser"}), ValueError, fn,
                           "'window_type'", "'kaiser'", "'povey'");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.num_mel_bins = 3}), ValueError, fn,
                           "'num_mel_bins' is 3", "> 3");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.frame_length = 0.1}), ValueError, fn,
                           "'frame_length'", "at least 2 samples");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.frame_shift = 0.01}), ValueError, fn, "'frame_shift'",
                           "at least 1 sample");
  TESSERA_EXPECT_THROW_MSG(
      audio::fbank(x, O{.frame_length = 25.0625, .round_to_power_of_two = false}), ValueError, fn,
      "401 samples", "even");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.preemphasis_coefficient = 1.5}), ValueError, fn,
                           "'preemphasis_coefficient' is 1.5", "[0, 1]");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.sample_frequency = 0}), ValueError, fn,
                           "'sample_frequency' is 0");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.low_freq = 9000}), ValueError, fn, "'low_freq'",
                           "Nyquist = 8000");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.high_freq = -9000}), ValueError, fn, "'high_freq'");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.energy_floor = -1}), ValueError, fn,
                           "'energy_floor' is -1");
  TESSERA_EXPECT_THROW_MSG(audio::fbank(x, O{.min_duration = -1}), ValueError, fn,
                           "'min_duration' is -1");
  TESSERA_EXPECT_THROW_MSG(audio::Fbank<T>(O{.dither = 0.5}), ValueError,
                           "tessera::audio::Fbank:", "'dither'");
}

TYPED_TEST(FbankTest, RejectsBadWaveforms) {
  using T = TypeParam;
  const Tensor<T, 2> stereo(Shape<2>{2, 1600});
  TESSERA_EXPECT_THROW_MSG(audio::fbank(stereo, {.channel = 2}), ValueError,
                           "tessera::audio::fbank", "'waveform' has shape [2, 1600]",
                           "'channel' is 2", "[0, 2)");
  const Tensor<T, 2> short_one(Shape<2>{1, 399});
  TESSERA_EXPECT_THROW_MSG(audio::fbank(short_one), ValueError, "tessera::audio::fbank",
                           "399 samples", "400 samples");
  const audio::Fbank<T> f;
  TESSERA_EXPECT_THROW_MSG(f(short_one), ValueError, "tessera::audio::Fbank::operator()",
                           "399 samples");
  TESSERA_EXPECT_THROW_MSG(f.forward(short_one), ValueError, "tessera::audio::Fbank::forward",
                           "399 samples");
  const Tensor<T, 2> none(Shape<2>{0, 1600});
  TESSERA_EXPECT_THROW_MSG(f(none), ValueError, "'channel' is -1", "[0, 0)");
}

TEST(KaldiMelBanks, RejectsBadArguments) {
  TESSERA_EXPECT_THROW_MSG(audio::kaldi_mel_banks<float>(23, 511, 16000, 20, 0), ValueError,
                           "tessera::audio::kaldi_mel_banks", "'window_length_padded' is 511");
  TESSERA_EXPECT_THROW_MSG(audio::kaldi_mel_banks<float>(2, 512, 16000, 20, 0), ValueError,
                           "tessera::audio::kaldi_mel_banks", "'num_mel_bins' is 2");
  // An empty band: low_freq == high_freq (directly, or through the offset from Nyquist) would
  // give all-zero triangles; rejected, as Kaldi's MelBanks does (low_freq < high_freq).
  TESSERA_EXPECT_THROW_MSG(audio::kaldi_mel_banks<float>(23, 512, 16000, 4000, 4000), ValueError,
                           "tessera::audio::kaldi_mel_banks", "'low_freq' and 'high_freq' are 4000",
                           "and 4000", "0 <= low_freq < high_freq");
  TESSERA_EXPECT_THROW_MSG(audio::kaldi_mel_banks<float>(23, 512, 16000, 4000, -4000), ValueError,
                           "tessera::audio::kaldi_mel_banks", "(4000 Hz)");
  TESSERA_EXPECT_THROW_MSG(audio::kaldi_window<float>("povey", 1), ValueError,
                           "tessera::audio::kaldi_window", "'window_length' is 1");
}

}  // namespace fbank_test
