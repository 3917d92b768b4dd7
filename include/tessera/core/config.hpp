// tessera: basic configuration shared by every header.
#pragma once

#include <cassert>
#include <cstddef>

#define TESSERA_VERSION_MAJOR 0
#define TESSERA_VERSION_MINOR 1
#define TESSERA_VERSION_PATCH 0

// Debug-only checks. They add to, and never replace, the checks that throw at the public boundary.
#ifdef NDEBUG
#define TESSERA_DEBUG_ASSERT(cond, msg) ((void)0)
#else
#define TESSERA_DEBUG_ASSERT(cond, msg) assert((cond) && (msg))
#endif

namespace tessera {

// Signed index type for sizes and offsets, the same as Eigen::Index.
using Index = std::ptrdiff_t;

// Alignment of every buffer a Tensor owns: one cache line, and one AVX-512 register.
inline constexpr std::size_t kTensorAlignment = 64;

}  // namespace tessera
