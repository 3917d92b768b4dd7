// tessera: tensors and attention for multimodal models, header-only, on Eigen.
// The umbrella header: including it gives every public part of the library but the input layers
// (tessera/text.hpp, image.hpp, audio.hpp), which link system libraries of their own. A
// translation unit that needs less includes an area header (tessera/nn.hpp, contrastive.hpp, ...)
// or single headers, and compiles faster.
#pragma once

#include "tessera/contrastive.hpp"
#include "tessera/core.hpp"
#include "tessera/fusion.hpp"
#include "tessera/io.hpp"
#include "tessera/kernels.hpp"
#include "tessera/nn.hpp"
#include "tessera/optim.hpp"
// The safetensors reader parses its JSON header with nlohmann-json; without it the rest of
// tessera works and io/safetensors.hpp, models/ (which loads checkpoints from safetensors files),
// optim/training_state.hpp and distributed/ are simply not included here.
#if __has_include(<nlohmann/json.hpp>)
#include "tessera/models.hpp"
// Data-parallel training over MPI (one process when built without tessera::mpi).
#include "tessera/distributed.hpp"
#endif
