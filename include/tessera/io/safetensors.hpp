// tessera: reading and writing safetensors files (https://github.com/huggingface/safetensors).
//
// The format: an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON, then the
// data region. The JSON is an object mapping each tensor name to
//   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// (offsets into the data region) plus an optional "__metadata__" object of strings.
//
//   auto sd = tessera::io::load_safetensors("model.safetensors");
//   auto w = sd.get<float, 2>("encoder.layer.0.weight");     // F16/BF16/F32/... -> float
//   tessera::io::save_safetensors("out.safetensors", sd);
//
// The reader trusts nothing: a malformed file of any kind is an IoError saying what is wrong and
// naming the tensor concerned. Like the reference implementation it also rejects tensors whose
// byte ranges overlap and data regions with bytes no tensor covers. Entry fields other than
// dtype, shape and data_offsets are ignored. The writer stores tensors contiguously in name
// order and pads the header with spaces to a multiple of 8 bytes.
//
// Needs nlohmann_json, for the header's JSON only. Header-only, this header brings in the reader
// and writer (io/safetensors_impl.hpp); in the compiled mode they are the library's, and this
// header is declarations (core/config.hpp, TESSERA_JSON_FUNCTION).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "tessera/core/config.hpp"
#include "tessera/io/state_dict.hpp"

namespace tessera::io {

// Largest header the reader accepts, as the reference implementation does.
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

TESSERA_BEGIN_MODE_NAMESPACE

// Parses a whole safetensors file held in memory. Throws IoError for any malformed input.
TESSERA_JSON_FUNCTION StateDict parse_safetensors(std::span<const std::byte> file);

// Reads a safetensors file. Throws IoError naming the path if it cannot be read, is not a
// regular file (a directory, a FIFO or a device: reading one could block forever or never
// end), or is malformed. Tensor bytes are read straight into the result: memory use is the file
// size, once.
TESSERA_JSON_FUNCTION StateDict load_safetensors(const std::filesystem::path& path);

// The bytes of a safetensors file holding `sd`. Throws ValueError if a name or metadata string
// is not valid UTF-8.
TESSERA_JSON_FUNCTION std::vector<std::byte> serialize_safetensors(const StateDict& sd);

// Writes `sd` to `path` (replacing it). Throws IoError naming the path if writing fails, and
// ValueError as serialize_safetensors does.
TESSERA_JSON_FUNCTION void save_safetensors(const std::filesystem::path& path, const StateDict& sd);

TESSERA_END_MODE_NAMESPACE

}  // namespace tessera::io

#ifndef TESSERA_JSON_IN_LIBRARY
#include "tessera/io/safetensors_impl.hpp"
#endif
