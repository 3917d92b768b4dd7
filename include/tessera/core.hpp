// tessera/core.hpp: tensors, masks, errors, threads and scratch memory.
// An area header: it includes the public headers of tessera/core/ and nothing else.
#pragma once

#include "tessera/core/config.hpp"
#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
