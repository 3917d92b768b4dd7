// tessera's compiled library: tessera/nn/'s modules instantiated for float and double, once
// (TESSERA_INSTANTIATE, core/config.hpp); consumers' translation units declare them extern.
#include "tessera/core/config.hpp"

#ifndef TESSERA_COMPILED
#error "src/instantiate_*.cpp belong to tessera::compiled, which defines TESSERA_COMPILED"
#endif

// This file's area as definitions.
#undef TESSERA_INSTANTIATE_AS
#define TESSERA_INSTANTIATE_AS
#include "tessera/nn.hpp"
