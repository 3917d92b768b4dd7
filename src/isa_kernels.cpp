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

template <class T>
KernelTable<T> table() {
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

const IsaKernels kKernels{TESSERA_STRINGIFY(TESSERA_ISA_LEVEL),
                          static_cast<int>(simd::width<float>), table<float>(), table<double>()};

}  // namespace

// The one symbol of this object that keeps its name: src/dispatch.cpp calls it.
extern "C" const tessera::detail::IsaKernels* TESSERA_ENTRY(TESSERA_ISA_LEVEL)() {
  return &kKernels;
}
