// tessera's compiled library: tessera/optim/'s classes instantiated for float and double, once
// (TESSERA_INSTANTIATE, core/config.hpp); consumers' translation units declare them extern.
#include "tessera/core/config.hpp"

#ifndef TESSERA_COMPILED
#error "src/instantiate_*.cpp belong to tessera::compiled, which defines TESSERA_COMPILED"
#endif

// The areas optim builds on first, as declarations (their own files instantiate them); then
// this file's area as definitions. Its headers must not have been included before.
#include "tessera/nn.hpp"

#undef TESSERA_INSTANTIATE_AS
#define TESSERA_INSTANTIATE_AS
#include "tessera/optim.hpp"
