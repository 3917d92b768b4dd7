// tessera's compiled library: the functions that read or write JSON (TESSERA_JSON_FUNCTION,
// core/config.hpp), defined once here; the compiled mode's consumers see their declarations only.
#include "tessera/core/config.hpp"

#ifndef TESSERA_COMPILED
#error "src/json_functions.cpp belongs to tessera::compiled, which defines TESSERA_COMPILED"
#endif
#ifdef TESSERA_COMPILED_WITHOUT_MODELS
#error \
    "src/json_functions.cpp needs nlohmann_json, which TESSERA_COMPILED_WITHOUT_MODELS says is absent"
#endif

#define TESSERA_BUILDING_JSON_FUNCTIONS
#include "tessera/io/safetensors_impl.hpp"
#include "tessera/models/clip_impl.hpp"
#include "tessera/models/siglip_impl.hpp"
