// libFuzzer target: what a program does with a safetensors file after parsing it —
// tessera::io::StateDict::get<T, R> on every tensor at every rank 0..4 and scalar type, and
// Module::load_state_dict into small modules (strict and not, with and without a prefix).
//
// Acceptable outcomes are tessera's typed errors: IoError from the parser, ShapeError for a
// rank or shape that does not fit, ValueError for a value with no representation in the target
// type or for missing/unexpected keys. Any other exception escapes and aborts; a crash, a
// sanitizer report, a timeout or an overlong message (a message over 4 KB means a list or a
// shape was not capped) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/linear.hpp"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Runs f; a typed error is fine if its message is short, anything else escapes.
template <class F>
void typed(F&& f) {
  try {
    f();
  } catch (const tessera::ShapeError& e) {
    check(std::strlen(e.what()) < 4096);
  } catch (const tessera::ValueError& e) {
    check(std::strlen(e.what()) < 4096);
  }
}

template <class T, int R>
void get_as(const tessera::io::StateDict& sd, const std::string& name) {
  typed([&] {
    const auto t = sd.get<T, R>(name);
    check(static_cast<std::size_t>(t.size()) == static_cast<std::size_t>(sd.at(name).numel()));
  });
}

template <class T>
void get_every_rank(const tessera::io::StateDict& sd, const std::string& name) {
  get_as<T, 0>(sd, name);
  get_as<T, 1>(sd, name);
  get_as<T, 2>(sd, name);
  get_as<T, 3>(sd, name);
  get_as<T, 4>(sd, name);
}

template <class M>
void load_into(M& m, const tessera::io::StateDict& sd) {
  for (const char* prefix : {"", "model.", "l."}) {
    typed([&] { m.load_state_dict(sd, prefix); });
    typed([&] { m.load_state_dict(sd, prefix, /*strict=*/false); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  tessera::io::StateDict sd;
  try {
    sd = tessera::io::parse_safetensors(file);
  } catch (const tessera::IoError& e) {
    check(std::strlen(e.what()) < 4096);
    return 0;
  }
  for (const auto& [name, t] : sd) {
    get_every_rank<float>(sd, name);
    get_every_rank<double>(sd, name);
    get_every_rank<std::int64_t>(sd, name);
    get_as<bool, 1>(sd, name);
  }
  typed([&] { (void)sd.at("no such tensor"); });

  // Modules of each kind of parameter: matrices and vectors (Linear, LayerNorm), a scalar
  // (LogitScale). Keys: weight, bias, logit_scale (the seeds use these names).
  tessera::nn::Linear<float> linear({.in_features = 2, .out_features = 3});
  tessera::nn::Linear<double> linear_nobias({.in_features = 1, .out_features = 2, .bias = false});
  tessera::nn::LayerNorm<float> norm({.normalized_shape = 3});
  tessera::contrastive::LogitScale<double> scale;
  load_into(linear, sd);
  load_into(linear_nobias, sd);
  load_into(norm, sd);
  load_into(scale, sd);
  return 0;
}
