// tessera: Eigen, as every tessera header includes it.
//
// Header-only, this is <Eigen/Core> and nothing more. In the compiled mode (TESSERA_COMPILED) the
// library and its consumers must agree on how Eigen allocates and indexes, because Eigen objects
// cross between them and the linker keeps one copy of each inline Eigen function for the whole
// program. By default Eigen aligns heap blocks to the widest packet the compiler flags give: with
// glibc on LP64 and no flags, plain malloc (16 bytes); with -mavx2 or -march=native, an offset
// block from its own aligned allocator. A block allocated by the library's baseline code and
// freed by a consumer's -march=native copy of the same destructor (or the other way round) is
// freed the wrong way. tessera::compiled therefore defines EIGEN_MAX_ALIGN_BYTES=64 and
// EIGEN_MAX_STATIC_ALIGN_BYTES=64 for the library and for its consumers
// (cmake/tesseraCompiled.cmake), and a translation unit that sees another configuration does not
// compile:
//   - EIGEN_DEFAULT_ALIGN_BYTES or EIGEN_MAX_STATIC_ALIGN_BYTES other than 64 (other values
//     defined, or Eigen included before the target's definitions were seen);
//   - EIGEN_MALLOC_ALREADY_ALIGNED defined as true (Eigen would then allocate with plain malloc);
//   - Eigen::Index other than std::ptrdiff_t (EIGEN_DEFAULT_DENSE_INDEX_TYPE redefined).
// Every other library in the same program that shares Eigen objects or inline Eigen functions with
// tessera is bound by the same configuration; see README, "Compiled mode".
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <type_traits>

#if defined(TESSERA_COMPILED)
#if EIGEN_DEFAULT_ALIGN_BYTES != 64 || EIGEN_MAX_STATIC_ALIGN_BYTES != 64
#error \
    "tessera::compiled: Eigen must be configured with EIGEN_MAX_ALIGN_BYTES=64 and EIGEN_MAX_STATIC_ALIGN_BYTES=64, as the CMake target tessera::compiled defines them; a translation unit that defines other values, or includes Eigen before these are defined, cannot share Eigen objects with the library"
#endif
#if EIGEN_MALLOC_ALREADY_ALIGNED
#error \
    "tessera::compiled: EIGEN_MALLOC_ALREADY_ALIGNED must not be true: the library allocates Eigen's blocks with Eigen's own aligned allocator"
#endif
static_assert(std::is_same_v<Eigen::Index, std::ptrdiff_t>,
              "tessera::compiled: Eigen::Index must be std::ptrdiff_t (Eigen's default) as in the "
              "library; EIGEN_DEFAULT_DENSE_INDEX_TYPE must not be redefined");
#endif
