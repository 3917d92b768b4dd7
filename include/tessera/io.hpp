// tessera/io.hpp: state dicts, and safetensors files where nlohmann-json is installed.
// An area header: it includes the public headers of tessera/io/ and nothing else.
#pragma once

#include "tessera/io/state_dict.hpp"
// Parts that read or write JSON need nlohmann-json; without it they are left out.
#if __has_include(<nlohmann/json.hpp>)
#include "tessera/io/safetensors.hpp"
#endif
