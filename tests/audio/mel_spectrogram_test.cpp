// tessera::audio::MelSpectrogram, log_mel_spectrogram, amplitude_to_db and melscale_fbanks
// against torchaudio 0.13 (transforms.MelSpectrogram, AmplitudeToDB, functional.melscale_fbanks)
// on synthesised speech; fixtures from tests/fixtures/audio/make_audio_fixtures.py.
#include "tessera/audio/mel_spectrogram.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <limits>
#include <string>

#include "tessera/audio/amplitude_to_db.hpp"
#include "tessera/audio/audio_file.hpp"
#include "tessera/audio/mel_filterbank.hpp"
#include "tessera/audio/window.hpp"
#include "tessera/io/safetensors.hpp"
#include "test_util.hpp"

namespace mel_spectrogram_test {

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

// Relative tolerance 1e-4 against torchaudio computed in float64 (stored as float32), with an
// absolute floor for values near zero: for power or magnitude spectrograms 1e-6 of the tensor's
// largest value (float32 FFT round-off is relative to a frame's largest bins, not to each quiet
// band: the quietest mel bins of this recording sit ~1e-12 below its peak); for logarithms
// (ln, dB) an error e in ln(E) is a relative error e in E, so 1e-4 in ln and 1e-4 * 10 / ln 10
// = 4.3e-4 dB (power) keep the same 1e-4 relative accuracy of the energies where the log is
// near 0.
enum class Domain { linear, ln, db_power, db_magnitude };

template <class T, class A, class B>
void expect_features_near(const A& actual, const B& expected_t, Domain domain,
                          const std::string& what) {
  ASSERT_EQ(actual.shape(), expected_t.shape()) << what;
  const T* a = actual.data();
  const T* e = expected_t.data();
  T peak = 0;
  for (Index i = 0; i < expected_t.size(); ++i) peak = std::max(peak, std::fabs(e[i]));
  const T atol = domain == Domain::linear     ? T(1e-6) * peak
                 : domain == Domain::ln       ? T(1e-4)
                 : domain == Domain::db_power ? T(1e-4 * 10 / std::log(10.0))
                                              : T(1e-4 * 20 / std::log(10.0));
  const T rtol = T(1e-4);
  double max_abs = 0, used = 0, max_rel = 0;
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
Tensor<T, 1> speech_16k() {
  const auto a = audio::read_audio<T>(fixture_path("speech_16k.wav"));
  return Tensor<T, 1>(a.waveform[0]);
}

template <class T>
class MelSpectrogramTest : public ::testing::Test {};
TYPED_TEST_SUITE(MelSpectrogramTest, tessera::test::Scalars);

TYPED_TEST(MelSpectrogramTest, DefaultsMatchTorchaudio) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const audio::MelSpectrogram<T> mel;  // 16 kHz, n_fft 400, hop 200, 128 HTK mels, power 2
  EXPECT_EQ(mel.win_length(), 400);
  EXPECT_EQ(mel.hop_length(), 200);
  const Tensor<T, 2> out = mel(x);
  EXPECT_EQ(out.shape(), (Shape<2>{128, 1 + x.dim(0) / 200}));
  expect_features_near<T>(out, expected().get<T, 2>("mel.default"), Domain::linear, "mel.default");
}

TYPED_TEST(MelSpectrogramTest, VariantsMatchTorchaudio) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  struct Case {
    const char* name;
    audio::MelSpectrogramOptions options;
  };
  const Case cases[] = {
      {"slaney",
       {.n_fft = 512,
        .win_length = 400,
        .hop_length = 160,
        .f_min = 20.0,
        .f_max = 7600.0,
        .n_mels = 64,
        .norm = "slaney",
        .mel_scale = "slaney"}},
      {"magnitude_nocenter",
       {.n_fft = 256,
        .hop_length = 128,
        .n_mels = 40,
        .power = 1.0,
        .normalized = true,
        .center = false}},
      {"constant_pad",
       {.n_fft = 400,
        .hop_length = 160,
        .f_min = 50.0,
        .pad = 100,
        .n_mels = 64,
        .pad_mode = "constant"}},
  };
  for (const auto& c : cases) {
    const audio::MelSpectrogram<T> mel(c.options);
    expect_features_near<T>(mel(x), expected().get<T, 2>(std::string("mel.") + c.name),
                            Domain::linear, std::string("mel.") + c.name);
  }
}

TYPED_TEST(MelSpectrogramTest, StereoInputGivesOneSpectrogramPerChannel) {
  using T = TypeParam;
  const auto a = audio::read_audio<T>(fixture_path("speech_44k_stereo.flac"));
  const audio::MelSpectrogram<T> mel(
      {.sample_rate = 44100, .n_fft = 1024, .hop_length = 512, .n_mels = 32});
  const Tensor<T, 3> out = mel(a.waveform);
  expect_features_near<T>(out, expected().get<T, 3>("mel.stereo_44k"), Domain::linear,
                          "mel.stereo_44k");
  // Each channel alone gives its slice.
  const Tensor<T, 1> right(a.waveform[1]);
  const Tensor<T, 2> one = mel(right);
  EXPECT_TRUE(tessera::test::same_bits(one, Tensor<T, 2>(out[1])));
}

TYPED_TEST(MelSpectrogramTest, LogMelMatchesTorchaudio) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const audio::MelSpectrogramOptions o{.n_fft = 512,
                                       .win_length = 400,
                                       .hop_length = 160,
                                       .f_min = 20.0,
                                       .f_max = 7600.0,
                                       .n_mels = 64,
                                       .norm = "slaney",
                                       .mel_scale = "slaney"};
  const auto ref = expected().get<T, 2>("log_mel.slaney");
  expect_features_near<T>(audio::log_mel_spectrogram(x, o), ref, Domain::ln, "log_mel.slaney");
  const audio::MelSpectrogram<T> mel(o);
  const Tensor<T, 2> again = audio::log_mel_spectrogram(mel, x);
  EXPECT_TRUE(tessera::test::same_bits(again, audio::log_mel_spectrogram(x, o)));
  // A silent signal stays finite: ln(0 + 1e-6).
  const Tensor<T, 1> silence(Shape<1>{800});
  const auto quiet = audio::log_mel_spectrogram(mel, silence);
  for (Index i = 0; i < quiet.size(); ++i)
    EXPECT_EQ(quiet.data()[i], std::log(static_cast<T>(audio::kLogMelOffset)));
}

TYPED_TEST(MelSpectrogramTest, AmplitudeToDbMatchesTorchaudio) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const audio::MelSpectrogram<T> mel({.n_fft = 400,
                                      .hop_length = 160,
                                      .f_min = 50.0,
                                      .pad = 100,
                                      .n_mels = 64,
                                      .pad_mode = "constant"});
  expect_features_near<T>(audio::amplitude_to_db(mel(x), {.top_db = 80.0}),
                          expected().get<T, 2>("db.constant_pad"), Domain::db_power,
                          "db.constant_pad");
  // Magnitude, rank 3: top_db is taken over both channels together.
  const auto a = audio::read_audio<T>(fixture_path("speech_44k_stereo.flac"));
  const audio::MelSpectrogram<T> mel44(
      {.sample_rate = 44100, .n_fft = 1024, .hop_length = 512, .n_mels = 32});
  Tensor<T, 3> mag = mel44(a.waveform);
  mag.as_array() = mag.as_array().sqrt();
  expect_features_near<T>(audio::amplitude_to_db(mag, {.stype = "magnitude", .top_db = 50.0}),
                          expected().get<T, 3>("db.stereo_44k"), Domain::db_magnitude,
                          "db.stereo_44k");
}

TYPED_TEST(MelSpectrogramTest, AmplitudeToDbFollowsItsFormula) {
  using T = TypeParam;
  const Tensor<T, 1> x{T(1), T(100), T(0), T(1e-3)};
  const auto p = audio::amplitude_to_db(x);
  EXPECT_NEAR(p(0), 0, 1e-6);
  EXPECT_NEAR(p(1), 20, 1e-4);
  EXPECT_NEAR(p(2), -100, 1e-4);  // amin = 1e-10
  EXPECT_NEAR(p(3), -30, 1e-4);
  const auto m =
      audio::amplitude_to_db(x, {.stype = "magnitude", .top_db = 50.0, .ref_value = 10.0});
  EXPECT_NEAR(m(1), 20, 1e-4);   // 40 dB - 20 dB (ref 10)
  EXPECT_NEAR(m(2), -30, 1e-4);  // clamped at max - 50
}

// torchaudio.functional.amplitude_to_DB (0.13) with top_db takes torch.amax over each block,
// which propagates NaN, then torch.max(x_db, floor): a NaN anywhere makes the whole block NaN,
// wherever it sits. Without top_db only the NaN's own position is NaN. (torchaudio gives
// [[nan, nan, nan]] for both [[nan, 1e-12, 1]] and [[1e-12, nan, 1]] with top_db = 80, and
// [[nan, -100, 0]] / [[-100, nan, 0]] without.)
TYPED_TEST(MelSpectrogramTest, AmplitudeToDbPropagatesNanOverTheTopDbBlock) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (Index at = 0; at < 3; ++at) {
    SCOPED_TRACE(testing::Message() << "NaN at " << at);
    Tensor<T, 2> x{{T(1e-12), T(1e-12), T(1)}};
    x(0, at) = nan;
    const auto clamped = audio::amplitude_to_db(x, {.top_db = 80.0});
    for (Index i = 0; i < 3; ++i) EXPECT_TRUE(std::isnan(clamped(0, i))) << i;
    const auto plain = audio::amplitude_to_db(x);
    for (Index i = 0; i < 3; ++i) {
      if (i == at)
        EXPECT_TRUE(std::isnan(plain(0, i)));
      else
        EXPECT_NEAR(plain(0, i), i == 2 ? 0.0 : -100.0, 1e-4) << i;
    }
  }
  // Rank >= 3: blocks are the last three dimensions; a NaN spoils only its own block.
  Tensor<T, 4> y(Shape<4>{2, 1, 2, 2});
  for (Index i = 0; i < y.size(); ++i) y.data()[i] = T(1);
  y(1, 0, 1, 0) = nan;
  const auto db = audio::amplitude_to_db(y, {.top_db = 80.0});
  for (Index i = 0; i < 4; ++i) EXPECT_EQ(db.data()[i], T(0)) << i;
  for (Index i = 4; i < 8; ++i) EXPECT_TRUE(std::isnan(db.data()[i])) << i;
}

TYPED_TEST(MelSpectrogramTest, FilterbankAndWindowMatchTheirDefinitions) {
  using T = TypeParam;
  const audio::MelSpectrogram<T> mel({.n_fft = 512, .win_length = 400});
  const auto w = mel.window();
  ASSERT_EQ(w.dim(0), 512);
  const auto hann = audio::hann_window<T>(400);
  for (Index i = 0; i < 512; ++i) EXPECT_EQ(w(i), i < 56 || i >= 456 ? T(0) : hann(i - 56)) << i;
  EXPECT_NEAR(hann(100), 0.5, 1e-7);  // periodic: 0.5 - 0.5 cos(2 pi 100 / 400)
  const auto fb = mel.fb();
  const auto direct = audio::melscale_fbanks<T>(257, 0.0, 8000.0, 128, 16000);
  EXPECT_TRUE(tessera::test::same_bits(fb, direct));
  EXPECT_NEAR(audio::hz_to_mel(1000.0, "slaney"), 15.0, 1e-12);
  EXPECT_NEAR(audio::hz_to_mel(700.0), 2595.0 * std::log10(2.0), 1e-9);
  for (const char* scale : {"htk", "slaney"})
    for (double f : {0.0, 300.0, 1000.0, 4321.0})
      EXPECT_NEAR(audio::mel_to_hz(audio::hz_to_mel(f, scale), scale), f, 1e-9);
}

// A plain DFT per frame (std::complex, O(n^2)) gives the same power spectrogram as the FFT path.
TYPED_TEST(MelSpectrogramTest, AgreesWithAPlainDft) {
  using T = TypeParam;
  const Index n = 3000, n_fft = 200, hop = 100, n_mels = 20;
  Tensor<T, 1> x(Shape<1>{n});
  x.setRandom(5);
  const audio::MelSpectrogram<T> mel(
      {.sample_rate = 8000, .n_fft = n_fft, .hop_length = hop, .n_mels = n_mels, .center = false});
  const Tensor<T, 2> out = mel(x);
  const auto fb = mel.fb();
  const auto win = mel.window();
  const Index frames = 1 + (n - n_fft) / hop;
  ASSERT_EQ(out.dim(1), frames);
  for (Index t = 0; t < frames; ++t) {
    std::vector<double> power(n_fft / 2 + 1);
    for (Index k = 0; k <= n_fft / 2; ++k) {
      std::complex<double> acc = 0;
      for (Index i = 0; i < n_fft; ++i)
        acc += static_cast<double>(x(t * hop + i)) * static_cast<double>(win(i)) *
               std::polar(1.0, -2 * M_PI * static_cast<double>(k * i) / n_fft);
      power[static_cast<std::size_t>(k)] = std::norm(acc);
    }
    for (Index m = 0; m < n_mels; ++m) {
      double ref = 0;
      for (Index k = 0; k <= n_fft / 2; ++k) ref += power[static_cast<std::size_t>(k)] * fb(k, m);
      EXPECT_NEAR(out(m, t), ref, (sizeof(T) == 4 ? 1e-4 : 1e-10) * (1 + std::fabs(ref)));
    }
  }
}

TYPED_TEST(MelSpectrogramTest, RepeatedCallsUseNoNewScratch) {
  using T = TypeParam;
  const auto x = speech_16k<T>();
  const audio::MelSpectrogram<T> mel;
  tessera::test::expect_repeat_allocates_nothing([&] { (void)mel(x); });
}

TYPED_TEST(MelSpectrogramTest, RejectsBadOptions) {
  using T = TypeParam;
  using O = audio::MelSpectrogramOptions;
  using M = audio::MelSpectrogram<T>;
  const char* fn = "tessera::audio::MelSpectrogram";
  TESSERA_EXPECT_THROW_MSG(M(O{.sample_rate = 0}), ValueError, fn, "'sample_rate' is 0");
  TESSERA_EXPECT_THROW_MSG(M(O{.n_fft = 0}), ValueError, fn, "'n_fft' is 0");
  TESSERA_EXPECT_THROW_MSG(M(O{.win_length = 401}), ValueError, fn, "'win_length' is 401",
                           "n_fft = 400");
  TESSERA_EXPECT_THROW_MSG(M(O{.hop_length = 0}), ValueError, fn, "'hop_length' is 0");
  TESSERA_EXPECT_THROW_MSG(M(O{.f_min = 9000.0}), ValueError, fn, "'f_min' and 'f_max'", "9000",
                           "8000");
  // f_min == f_max: every triangle would be empty (0/0 slopes) and the log-mel a constant.
  TESSERA_EXPECT_THROW_MSG(M(O{.f_min = 8000.0}), ValueError, fn, "'f_min' and 'f_max' are 8000",
                           "and 8000", "0 <= f_min < f_max");
  TESSERA_EXPECT_THROW_MSG(M(O{.f_min = 300.0, .f_max = 300.0}), ValueError, fn,
                           "'f_min' and 'f_max' are 300 and 300");
  TESSERA_EXPECT_THROW_MSG(audio::melscale_fbanks<T>(257, 100.0, 100.0, 10, 16000), ValueError,
                           "tessera::audio::melscale_fbanks", "'f_min' and 'f_max' are 100",
                           "and 100", "0 <= f_min < f_max");
  TESSERA_EXPECT_THROW_MSG(M(O{.pad = -1}), ValueError, fn, "'pad' is -1");
  TESSERA_EXPECT_THROW_MSG(M(O{.n_mels = 0}), ValueError, fn, "'n_mels' is 0");
  TESSERA_EXPECT_THROW_MSG(M(O{.window_fn = "kaiser"}), ValueError, fn, "'window_fn'", "'kaiser'");
  TESSERA_EXPECT_THROW_MSG(M(O{.power = 0.0}), ValueError, fn, "'power' is 0");
  TESSERA_EXPECT_THROW_MSG(M(O{.pad_mode = "wrap"}), ValueError, fn, "'pad_mode'", "'wrap'");
  TESSERA_EXPECT_THROW_MSG(M(O{.onesided = false}), ValueError, fn, "'onesided' is false");
  TESSERA_EXPECT_THROW_MSG(M(O{.norm = "l2"}), ValueError, fn, "'norm' is 'l2'");
  TESSERA_EXPECT_THROW_MSG(M(O{.mel_scale = "bark"}), ValueError, fn, "'mel_scale' is 'bark'");
  const Tensor<T, 1> x(Shape<1>{1000});
  TESSERA_EXPECT_THROW_MSG(audio::log_mel_spectrogram(x, {}, 0.0), ValueError,
                           "tessera::audio::log_mel_spectrogram", "'offset' is 0");
  TESSERA_EXPECT_THROW_MSG(audio::log_mel_spectrogram(x, O{.n_mels = 0}), ValueError,
                           "tessera::audio::log_mel_spectrogram", "'n_mels' is 0");
  TESSERA_EXPECT_THROW_MSG(audio::amplitude_to_db(x, {.stype = "energy"}), ValueError,
                           "tessera::audio::amplitude_to_db", "'stype' is 'energy'");
  TESSERA_EXPECT_THROW_MSG(audio::amplitude_to_db(x, {.top_db = -1.0}), ValueError,
                           "tessera::audio::amplitude_to_db", "'top_db' is -1");
  TESSERA_EXPECT_THROW_MSG(audio::amplitude_to_db(x, {.amin = 0.0}), ValueError,
                           "tessera::audio::amplitude_to_db", "'amin' and 'ref_value'");
  TESSERA_EXPECT_THROW_MSG(audio::melscale_fbanks<T>(1, 0, 8000, 10, 16000), ValueError,
                           "tessera::audio::melscale_fbanks", "'n_freqs' is 1");
  TESSERA_EXPECT_THROW_MSG(audio::hz_to_mel(100.0, "mel"), ValueError, "tessera::audio::hz_to_mel",
                           "'mel_scale' is 'mel'");
  TESSERA_EXPECT_THROW_MSG(audio::hann_window<T>(0), ValueError, "tessera::audio::hann_window",
                           "'window_length' is 0");
}

TYPED_TEST(MelSpectrogramTest, RejectsTooShortWaveforms) {
  using T = TypeParam;
  const audio::MelSpectrogram<T> mel;  // reflect padding by 200
  const Tensor<T, 1> empty(Shape<1>{0});
  TESSERA_EXPECT_THROW_MSG(mel(empty), ValueError, "tessera::audio::MelSpectrogram::operator()",
                           "no samples");
  const Tensor<T, 1> short_one(Shape<1>{200});
  TESSERA_EXPECT_THROW_MSG(mel(short_one), ValueError, "tessera::audio::MelSpectrogram::operator()",
                           "200 samples", "reflect padding by n_fft / 2 = 200");
  EXPECT_EQ(mel(Tensor<T, 1>(Shape<1>{201})).shape(), (Shape<2>{128, 2}));
  const audio::MelSpectrogram<T> no_center({.center = false});
  const Tensor<T, 2> stereo(Shape<2>{2, 399});
  TESSERA_EXPECT_THROW_MSG(no_center.forward(stereo), ValueError,
                           "tessera::audio::MelSpectrogram::forward", "399 samples", "n_fft = 400");
  const audio::MelSpectrogram<T> circ({.pad_mode = "circular"});
  TESSERA_EXPECT_THROW_MSG(circ(Tensor<T, 1>(Shape<1>{199})), ValueError, "circular");
  EXPECT_EQ(circ(Tensor<T, 1>(Shape<1>{200})).shape(), (Shape<2>{128, 2}));
}

// The pad modes other than reflect and constant, against torch.nn.functional.pad's definitions
// (replicate repeats the edge sample, circular wraps around), through a frame at the very start.
TYPED_TEST(MelSpectrogramTest, PadModesExtendTheSignalAsTorchDoes) {
  using T = TypeParam;
  const Index n = 64;
  Tensor<T, 1> x(Shape<1>{n});
  x.setRandom(9);
  for (const char* mode : {"replicate", "circular", "reflect", "constant"}) {
    const audio::MelSpectrogram<T> mel(
        {.sample_rate = 8000, .n_fft = 16, .hop_length = 4, .n_mels = 4, .pad_mode = mode});
    Tensor<T, 1> padded(Shape<1>{n + 16});
    for (Index j = 0; j < n + 16; ++j) {
      const Index s = j - 8;
      const std::string m = mode;
      T v = 0;
      if (s >= 0 && s < n)
        v = x(s);
      else if (m == "replicate")
        v = x(s < 0 ? 0 : n - 1);
      else if (m == "circular")
        v = x((s + n) % n);
      else if (m == "reflect")
        v = x(s < 0 ? -s : 2 * (n - 1) - s);
      padded(j) = v;
    }
    const audio::MelSpectrogram<T> plain(
        {.sample_rate = 8000, .n_fft = 16, .hop_length = 4, .n_mels = 4, .center = false});
    EXPECT_TRUE(tessera::test::same_bits(mel(x), plain(padded))) << mode;
  }
}

}  // namespace mel_spectrogram_test
