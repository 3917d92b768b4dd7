// tessera's compiled library: the losses' computations (contrastive/dispatch.hpp) compiled for
// one instruction-set level. CMake builds this file once per level, as src/isa_kernels.cpp, with
// that level's flags and TESSERA_ISA_LEVEL naming it, and renames every symbol the object defines
// but its entry point (cmake/tesseraIsolateObject.cmake). Unlike the kernels, it is compiled in
// the compiled mode (TESSERA_COMPILED): the matrix products inside the losses call the library's
// dispatched kernels, which run at the same level, instead of compiling them again here.
#include <string_view>

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/contrastive/dispatch.hpp"
#include "tessera/contrastive/info_nce.hpp"
#include "tessera/contrastive/pair_loss.hpp"
#include "tessera/contrastive/siglip_loss.hpp"
#include "tessera/kernels/dispatch.hpp"

#ifndef TESSERA_ISA_LEVEL
#error "TESSERA_ISA_LEVEL (default, avx2 or avx512) must be defined"
#endif
#ifndef TESSERA_COMPILED
#error "the losses of the compiled library are built in the compiled mode (TESSERA_COMPILED)"
#endif

#define TESSERA_STRINGIFY_(x) #x
#define TESSERA_STRINGIFY(x) TESSERA_STRINGIFY_(x)
#define TESSERA_ENTRY_(level) tessera_isa_losses_##level
#define TESSERA_ENTRY(level) TESSERA_ENTRY_(level)

namespace {

using namespace tessera::contrastive::detail;

// Constant-initialised, as the kernels' table (src/isa_kernels.cpp).
template <class T>
constexpr LossKernelTable<T> table() {
  return {
      .clip_tiled = &clip_tiled<T>,
      .clip_materialized = &clip_materialized<T>,
      .siglip_tiled = &siglip_tiled<T>,
      .siglip_materialized = &siglip_materialized<T>,
      .info_nce_tiled = &info_nce_tiled<T>,
      .info_nce_materialized = &info_nce_materialized<T>,
      .pair_loss_compute = &pair_loss_compute<T>,
  };
}

constinit const IsaLossKernels kLosses{TESSERA_STRINGIFY(TESSERA_ISA_LEVEL), table<float>(),
                                       table<double>()};

static_assert(tessera::detail::compiled_capability() == TESSERA_STRINGIFY(TESSERA_ISA_LEVEL),
              "the flags of this level of tessera::compiled give another instruction set");

}  // namespace

// The one symbol of this object that keeps its name: src/dispatch_losses.cpp calls it.
extern "C" const tessera::contrastive::detail::IsaLossKernels* TESSERA_ENTRY(TESSERA_ISA_LEVEL)() {
  return &kLosses;
}
