// tessera: power or magnitude spectrograms to decibels, equal to
// torchaudio.transforms.AmplitudeToDB (torchaudio 0.13; torchaudio.functional.amplitude_to_DB).
//
//   auto db = tessera::audio::amplitude_to_db(mel, {.top_db = 80.0});  // 10 log10(max(mel, amin))
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::audio {

struct AmplitudeToDBOptions {
  std::string stype = "power";   // "power" (10 log10) or "magnitude" (20 log10)
  std::optional<double> top_db;  // clamp at (max - top_db) dB; None: no clamp; >= 0
  double amin = 1e-10;           // values below are raised to amin first; > 0
  double ref_value = 1.0;        // 0 dB reference: subtracts multiplier * log10(max(amin, ref))
};

// x_db = m log10(max(x, amin)) - m log10(max(amin, ref_value)), m = 10 for "power", 20 for
// "magnitude"; with top_db, x_db = max(x_db, max(x_db) - top_db), the maximum taken over the
// whole tensor for rank <= 2 and over each [..., channel, freq, time] block of the last three
// dimensions for rank >= 3 (as torchaudio, which packs the channels together). Same shape as x.
// NaN: without top_db a NaN input gives NaN there only (std::max(NaN, amin) is NaN, as
// torch.clamp); with top_db a NaN makes the whole block NaN, as torch.amax propagates it and
// torch.max(x_db, NaN) is NaN.
// Raises ValueError for an unknown stype, a negative or non-finite top_db, or amin <= 0 or
// ref_value <= 0.
template <TensorLike X>
Tensor<std::remove_const_t<scalar_t<X>>, rank_v<X>> amplitude_to_db(
    const X& x, const AmplitudeToDBOptions& options = {}) {
  using T = std::remove_const_t<scalar_t<X>>;
  static_assert(std::is_floating_point_v<T>, "amplitude_to_db needs float or double");
  constexpr std::string_view fn = "tessera::audio::amplitude_to_db";
  constexpr int R = rank_v<X>;
  if (options.stype != "power" && options.stype != "magnitude")
    detail::raise<ValueError>(fn, "argument 'stype' is '", options.stype,
                              "', expected 'power' or 'magnitude'");
  if (options.top_db && (!(*options.top_db >= 0.0) || !std::isfinite(*options.top_db)))
    detail::raise<ValueError>(fn, "argument 'top_db' is ", *options.top_db,
                              ", expected a finite value >= 0");
  if (!(options.amin > 0.0) || !(options.ref_value > 0.0))
    detail::raise<ValueError>(fn, "arguments 'amin' and 'ref_value' are ", options.amin, " and ",
                              options.ref_value, ", expected values > 0");
  const T mult = options.stype == "power" ? T(10) : T(20);
  const T amin = static_cast<T>(options.amin);
  const T ref_db = mult * static_cast<T>(std::log10(std::max(options.amin, options.ref_value)));
  Tensor<T, R> out(x.shape(), uninitialized);
  const T* in = x.data();
  T* y = out.data();
  const Index n = out.size();
  for (Index i = 0; i < n; ++i) y[i] = mult * std::log10(std::max(in[i], amin)) - ref_db;
  if (options.top_db && n > 0) {
    Index block = n;  // rank <= 2: one block
    if constexpr (R >= 3) block = x.shape()[R - 3] * x.shape()[R - 2] * x.shape()[R - 1];
    if (block > 0) {
      for (Index b0 = 0; b0 < n; b0 += block) {
        // torch.amax propagates NaN: a NaN anywhere in the block makes its maximum, hence its
        // floor and (through torch.max(x_db, floor)) every value of the block, NaN.
        T peak = y[b0];
        for (Index i = b0; i < b0 + block && !std::isnan(peak); ++i)
          peak = std::isnan(y[i]) ? y[i] : std::max(peak, y[i]);
        if (std::isnan(peak)) {
          std::fill(y + b0, y + b0 + block, peak);
          continue;
        }
        const T floor = peak - static_cast<T>(*options.top_db);
        for (Index i = b0; i < b0 + block; ++i) y[i] = std::max(y[i], floor);
      }
    }
  }
  return out;
}

}  // namespace tessera::audio
