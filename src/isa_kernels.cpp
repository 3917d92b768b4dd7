// tessera's compiled library: the dispatched kernels (kernels/dispatch.hpp) compiled for one
// instruction-set level. CMake builds this file once per level, with that level's flags and
// TESSERA_ISA_LEVEL naming it (default, avx2, avx512), and then renames every symbol the object
// defines except its entry point (cmake/tesseraIsolateObject.cmake), so that the inline and
// template functions each level compiles (tessera's, Eigen's and the standard library's) never
// replace another level's at link time.
#include "tessera/kernels/attention.hpp"
#include "tessera/kernels/attention_backward.hpp"
#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/kernels/softmax.hpp"

#include <string_view>

#ifndef TESSERA_ISA_LEVEL
#error "TESSERA_ISA_LEVEL (default, avx2 or avx512) must be defined"
#endif
#ifdef TESSERA_COMPILED
#error "the kernels of the compiled library are built header-only (without TESSERA_COMPILED)"
#endif

#define TESSERA_STRINGIFY_(x) #x
#define TESSERA_STRINGIFY(x) TESSERA_STRINGIFY_(x)
#define TESSERA_ENTRY_(level) tessera_isa_kernels_##level
#define TESSERA_ENTRY(level) TESSERA_ENTRY_(level)

namespace {

using namespace tessera;
using namespace tessera::detail;

// Constant-initialised (constinit below): the table is filled in when the program is loaded, not by
// a static initialiser, so a kernel called from another translation unit's static initialiser,
// which may run first, finds it complete.
template <class T>
constexpr KernelTable<T> table() {
  return {
      .gemm_mr = GemmBlocking<T>::MR,
      .gemm_nr = GemmBlocking<T>::NR,
      .gemm = &gemm_impl<T>,
      .pack_matrix = &PackedMatrixAccess::pack<T>,
      .attention_reference = &attention_reference_impl<T>,
      .attention_lse_reference = &attention_lse_reference_impl<T>,
      .attention_fused = &attention_fused_impl<T>,
      .attention_backward_reference = &attention_backward_reference_impl<T>,
      .attention_backward_fused = &attention_backward_fused_impl<T>,
      .softmax_row = &softmax_row_impl<T>,
      .log_softmax_row = &log_softmax_row_impl<T>,
      .logsumexp_row = &logsumexp_row_impl<T>,
      .layer_norm_row = &layer_norm_row_impl<T>,
      .rms_norm_row = &rms_norm_row_impl<T>,
      .layer_norm_backward_row = &layer_norm_backward_row_impl<T>,
      .activate = &activate_impl<T>,
      .activate_backward = &activate_backward_impl<T>,
  };
}

constinit const IsaKernels kKernels{TESSERA_STRINGIFY(TESSERA_ISA_LEVEL),
                                    static_cast<int>(simd::width<float>), table<float>(),
                                    table<double>()};

// The flags gave the level this object is named after: -m flags in CMAKE_CXX_FLAGS (-mavx2, say)
// are not undone by a level's -march=x86-64, and would otherwise leak into the baseline.
static_assert(compiled_capability() == TESSERA_STRINGIFY(TESSERA_ISA_LEVEL),
              "the flags of this level of tessera::compiled give another instruction set");

}  // namespace

// The one symbol of this object that keeps its name: src/dispatch.cpp calls it.
extern "C" const tessera::detail::IsaKernels* TESSERA_ENTRY(TESSERA_ISA_LEVEL)() {
  return &kKernels;
}
