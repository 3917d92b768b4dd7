// tessera: tensors and attention for multimodal models, header-only, on Eigen.
// The umbrella header: including it gives every public part of the library.
#pragma once

#include "tessera/core/config.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"
