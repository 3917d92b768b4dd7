// tessera/audio.hpp: audio input: sound files, resampling, spectrograms and filter banks (link
// tessera::audio). An area header: it includes the public headers of tessera/audio/ and nothing
// else.
#pragma once

#include "tessera/audio/amplitude_to_db.hpp"
#include "tessera/audio/audio_file.hpp"
#include "tessera/audio/fbank.hpp"
#include "tessera/audio/mel_filterbank.hpp"
#include "tessera/audio/mel_spectrogram.hpp"
#include "tessera/audio/real_fft.hpp"
#include "tessera/audio/resample.hpp"
#include "tessera/audio/window.hpp"
