// tessera/kernels.hpp: the kernels: GEMM, fused attention forward and backward, softmax, norms,
// activations, and their instruction-set dispatch. An area header: it includes the public headers
// of tessera/kernels/ and nothing else.
#pragma once

#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/attention.hpp"
#include "tessera/kernels/attention_backward.hpp"
#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/kernels/normalize.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"
