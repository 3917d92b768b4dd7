// tessera::audio::resample (libsamplerate, SRC_SINC_BEST_QUALITY) on analytic signals, and
// downmix_to_mono. libsamplerate's filter is not torchaudio's, so parity with
// torchaudio.functional.resample is reported, not required (see audio_file_test.cpp).
#include "tessera/audio/resample.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "test_util.hpp"

namespace resample_test {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::ValueError;
namespace audio = tessera::audio;

// amplitude * sin(2 pi f i / rate + phase) for each channel's (f, amplitude).
template <class T>
Tensor<T, 2> sines(Index frames, double rate, std::initializer_list<std::pair<double, double>> fa,
                   double phase = 0.3) {
  Tensor<T, 2> x(Shape<2>{static_cast<Index>(fa.size()), frames});
  Index c = 0;
  for (const auto& [f, a] : fa) {
    for (Index i = 0; i < frames; ++i)
      x(c, i) = static_cast<T>(a * std::sin(2 * std::numbers::pi * f * i / rate + phase));
    ++c;
  }
  return x;
}

template <class T>
class ResampleTest : public ::testing::Test {};
TYPED_TEST_SUITE(ResampleTest, tessera::test::Scalars);

// A sine well inside the pass band comes out as the same sine sampled at the new rate: away from
// the ends (where the signal starts and stops abruptly) the error is libsamplerate's -97 dB
// stop-band rejection and float32 round-off, under 1e-4 of the amplitude.
TYPED_TEST(ResampleTest, PreservesASinesFrequencyAndAmplitude) {
  using T = TypeParam;
  struct Case {
    int from, to;
    double f1, f2;
  };
  for (const Case c : {Case{44100, 16000, 1000.0, 3100.0}, Case{16000, 44100, 440.0, 5000.0},
                       Case{16000, 48000, 2500.0, 7000.0}, Case{48000, 16000, 60.0, 7000.0},
                       Case{22050, 16000, 1234.5, 6000.0}}) {
    const Index n = c.from;  // one second
    const auto x = sines<T>(n, c.from, {{c.f1, 0.5}, {c.f2, 0.25}});
    const auto y = audio::resample(x, c.from, c.to);
    ASSERT_EQ(y.dim(0), 2);
    ASSERT_EQ(y.dim(1), c.to);
    const auto ref = sines<double>(c.to, c.to, {{c.f1, 0.5}, {c.f2, 0.25}});
    double worst = 0;
    for (Index ch = 0; ch < 2; ++ch)
      for (Index i = c.to / 10; i < c.to - c.to / 10; ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(y(ch, i)) - ref(ch, i)));
    EXPECT_LT(worst, 0.5e-4) << c.from << " -> " << c.to;
    std::printf("    %d -> %d Hz: max |error| vs the analytic sines (middle 80%%) %.3g\n", c.from,
                c.to, worst);
  }
}

// A tone above the new Nyquist frequency is removed, not aliased.
TYPED_TEST(ResampleTest, RemovesToneAboveTheNewNyquist) {
  using T = TypeParam;
  const auto x = sines<T>(48000, 48000, {{12000.0, 0.5}});
  const auto y = audio::resample(x, 48000, 16000);
  double peak = 0;
  for (Index i = 1600; i < 14400; ++i)
    peak = std::max(peak, std::fabs(static_cast<double>(y(0, i))));
  EXPECT_LT(peak, 1e-3);
}

// The output length is torchaudio.functional.resample's, ceil(frames * new / orig): every
// expected value below is what torchaudio 0.13 returned for a waveform of that many frames
// (1000 frames 16 -> 44.1 kHz: 2756.25 -> 2757, where rounding would give 2756; 7 frames: 19.3 ->
// 20).
TYPED_TEST(ResampleTest, LengthIsTorchaudiosCeilOfFramesTimesRatio) {
  using T = TypeParam;
  struct Case {
    Index frames;
    int from, to;
    Index expected;
  };
  for (const Case c :
       {Case{16000, 16000, 44100, 44100}, Case{1000, 16000, 44100, 2757}, Case{7, 16000, 44100, 20},
        Case{16000, 44100, 16000, 5805}, Case{48000, 44100, 16000, 17415}, Case{7, 44100, 16000, 3},
        Case{3, 16000, 8000, 2}, Case{64190, 44100, 16000, 23289}, Case{1, 16000, 8000, 1},
        Case{2, 16000, 8000, 1}, Case{5, 48000, 16000, 2}}) {
    Tensor<T, 2> x(Shape<2>{1, c.frames});
    x.setRandom(1);
    EXPECT_EQ(audio::resample(x, c.from, c.to).dim(1), c.expected)
        << c.frames << " frames " << c.from << " -> " << c.to;
  }
}

TYPED_TEST(ResampleTest, EqualRatesCopy) {
  using T = TypeParam;
  Tensor<T, 2> x(Shape<2>{2, 100});
  x.setRandom(2);
  EXPECT_TRUE(tessera::test::same_bits(audio::resample(x, 16000, 16000), x));
}

TYPED_TEST(ResampleTest, DownmixIsTheChannelMean) {
  using T = TypeParam;
  const Tensor<T, 2> x{{T(1), T(-2), T(0.5)}, {T(3), T(2), T(0.25)}, {T(2), T(3), T(0)}};
  const auto m = audio::downmix_to_mono(x);
  ASSERT_EQ(m.shape(), (Shape<2>{1, 3}));
  EXPECT_EQ(m(0, 0), T(2));
  EXPECT_EQ(m(0, 1), T(1));
  EXPECT_EQ(m(0, 2), T(0.75) / T(3));
  const Tensor<T, 2> mono{{T(0.1), T(0.2)}};
  EXPECT_TRUE(tessera::test::same_bits(audio::downmix_to_mono(mono), mono));
}

TYPED_TEST(ResampleTest, RejectsBadArguments) {
  using T = TypeParam;
  const Tensor<T, 2> x(Shape<2>{1, 100});
  TESSERA_EXPECT_THROW_MSG(audio::resample(x, 0, 16000), ValueError, "tessera::audio::resample",
                           "'orig_freq' is 0");
  TESSERA_EXPECT_THROW_MSG(audio::resample(x, 16000, -8000), ValueError, "tessera::audio::resample",
                           "'new_freq' is -8000");
  TESSERA_EXPECT_THROW_MSG(audio::resample(x, 100, 100000), ValueError, "tessera::audio::resample",
                           "ratio of 1000", "[1/256, 256]");
  TESSERA_EXPECT_THROW_MSG(audio::resample(x, 16000, 5'000'000'000LL), ValueError,
                           "tessera::audio::resample", "'new_freq' is 5000000000");
  const Tensor<T, 2> none(Shape<2>{0, 100});
  TESSERA_EXPECT_THROW_MSG(audio::downmix_to_mono(none), ValueError,
                           "tessera::audio::downmix_to_mono", "shape [0, 100]",
                           "at least one channel");
}

}  // namespace resample_test
