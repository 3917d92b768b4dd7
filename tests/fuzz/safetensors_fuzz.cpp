// libFuzzer target: tessera::io::parse_safetensors on arbitrary bytes.
//
// The only acceptable outcome for malformed input is tessera::IoError; any other exception
// escapes and aborts, and a crash, a sanitizer report or a timeout is a finding. Inputs that
// parse are checked further: serializing and re-parsing them gives the same tensors, and every
// tensor converts to double and bool (and, where representable, int64) without error.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "tessera/io/safetensors.hpp"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void exercise(const tessera::io::StateDict& sd) {
  for (const auto& [name, t] : sd) {
    check(t.bytes.size() == static_cast<std::size_t>(t.numel()) * tessera::io::dtype_size(t.dtype));
    const auto d = t.values<double>();
    const auto b = t.values<bool>();
    check(d.size() == b.size());
    try {
      (void)t.values<std::int64_t>();
    } catch (const tessera::ValueError&) {
      // NaN, infinity or out of int64 range: reported, as it should be.
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  tessera::io::StateDict sd;
  try {
    sd = tessera::io::parse_safetensors(file);
  } catch (const tessera::IoError&) {
    return 0;
  }
  exercise(sd);
  const std::vector<std::byte> again = tessera::io::serialize_safetensors(sd);
  const tessera::io::StateDict sd2 = tessera::io::parse_safetensors(again);
  check(sd2.size() == sd.size() && sd2.metadata == sd.metadata);
  auto it = sd2.begin();
  for (const auto& [name, t] : sd) {
    check(it->first == name && it->second.dtype == t.dtype && it->second.shape == t.shape &&
          it->second.bytes == t.bytes);
    ++it;
  }
  return 0;
}
