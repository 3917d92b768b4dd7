// tessera: where the hot kernels run, and which instruction set they run with.
//
// Header-only (the default), every kernel is compiled into the program that includes it, for the
// instruction set that program's compiler flags give (-march=native: AVX-512 or AVX2 packets; no
// flag: SSE2 on x86-64). cpu_capability() then names that set.
//
// In the compiled mode (the CMake target tessera::compiled, which defines TESSERA_COMPILED for
// its consumers), the kernels listed in KernelTable are not compiled into the consumer at all: a
// library holds them once per instruction-set level (x86-64 baseline, AVX2 + FMA, AVX-512), and
// the first kernel call picks the best level this CPU and its operating system support, from
// CPUID (GCC's and Clang's __builtin_cpu_supports). The environment variable
// TESSERA_CPU_CAPABILITY forces a level (default, avx2 or avx512, in any case, as PyTorch's
// ATEN_CPU_CAPABILITY does); a level the CPU lacks, or one the library was built without, is an
// error raised by that first call (before any thread starts when the call is a parallel one). The
// consumer's own flags then only set how its non-kernel code (module bookkeeping, Eigen expressions
// outside the kernels) is compiled.
//
// A program uses one mode throughout: its translation units either all define TESSERA_COMPILED
// or none does. The entry points that differ between the modes (the kernels' routers below, in
// each kernel header, PackedMatrix's packing constructor, cpu_capability) are declared in an
// inline namespace named after the mode (or carry an ABI tag), so a program that mixes modes
// holds both versions side by side instead of one chosen by the linker for both.
//
// In the compiled mode the library's build decides what its kernels are: tuning macros
// (TESSERA_GEMM_KC, ...), TESSERA_USE_BLAS and NDEBUG given to a consumer do not reach them, and
// the library and its consumers must agree on the standard library's ABI (_GLIBCXX_DEBUG, which
// changes the layout of std::vector, is refused below).
#pragma once

#include <string_view>
#include <type_traits>

#include "tessera/core/config.hpp"
#include "tessera/kernels/simd.hpp"

#if defined(TESSERA_COMPILED) && defined(_GLIBCXX_DEBUG)
#error \
    "tessera's compiled mode (TESSERA_COMPILED) cannot be used with _GLIBCXX_DEBUG: the library's containers have the release layout"
#endif

namespace tessera {

enum class Activation;
template <class T>
struct GemmProblem;
template <class T>
class PackedMatrix;

namespace detail {

template <class T>
struct AttentionProblem;
template <class T>
struct AttentionBackwardProblem;

// The kernels the compiled mode dispatches, for scalar type T: each entry is the header-only
// function of the same name (the `_impl` behind it), compiled for one instruction set.
template <class T>
struct KernelTable {
  Index gemm_mr, gemm_nr;  // the GEMM's register tile at this level (GemmBlocking<T>::MR, NR)
  void (*gemm)(const GemmProblem<T>&);
  void (*pack_matrix)(PackedMatrix<T>&, const T* b, Index ldb, bool trans, Index k, Index n);
  void (*attention_reference)(const AttentionProblem<T>&);
  void (*attention_lse_reference)(const AttentionProblem<T>&);
  void (*attention_fused)(const AttentionProblem<T>&);
  void (*attention_backward_reference)(const AttentionBackwardProblem<T>&);
  void (*attention_backward_fused)(const AttentionBackwardProblem<T>&);
  void (*softmax_row)(const T* x, T* y, Index n);
  void (*log_softmax_row)(const T* x, T* y, Index n);
  T (*logsumexp_row)(const T* x, Index n);
  void (*layer_norm_row)(const T* x, T* y, Index n, T eps, const T* w, const T* b,
                         bool may_rescale);
  void (*rms_norm_row)(const T* x, T* y, Index n, T eps, const T* w, bool may_rescale);
  void (*layer_norm_backward_row)(const T* x, const T* dy, T* dx, Index n, T eps, const T* w, T* gw,
                                  T* gb, T* tmp);
  void (*activate)(Activation act, const T* x, T* out, Index n);
  void (*activate_backward)(Activation act, const T* x, const T* dy, T* dx, Index n);
};

// One instruction-set level of the compiled library.
struct IsaKernels {
  const char* name;  // "default", "avx2", "avx512"
  int float_lanes;   // floats per packet at this level (4, 8, 16)
  KernelTable<float> f32;
  KernelTable<double> f64;
};

#if defined(TESSERA_COMPILED)
// True for the scalar types whose kernels the compiled library holds.
template <class T>
inline constexpr bool kDispatched = std::is_same_v<T, float> || std::is_same_v<T, double>;

// The level chosen for this process (src/dispatch.cpp). Throws ValueError, naming
// TESSERA_CPU_CAPABILITY, when that variable asks for a level this CPU or library lacks.
const IsaKernels& selected_kernels();
// The level for a value of TESSERA_CPU_CAPABILITY (null or empty: the best this CPU supports),
// without caching it. Throws ValueError for an unknown value, a level the library was built
// without or one the CPU lacks.
const IsaKernels& choose_kernels(const char* request);
// Whether this CPU and its operating system support a level ("default", "avx2", "avx512").
bool cpu_supports(std::string_view level);
// (resolve_kernel_level(), which parallel_for calls, is declared in core/threading.hpp.)

template <class T>
const KernelTable<T>& kernels() {
  if constexpr (std::is_same_v<T, float>)
    return selected_kernels().f32;
  else
    return selected_kernels().f64;
}
#else
template <class T>
inline constexpr bool kDispatched = false;
// Declared for the routers' discarded branches; never called in this mode.
template <class T>
const KernelTable<T>& kernels();
#endif

// The level the header-only kernels were compiled for, from the compiler's flags.
inline constexpr std::string_view compiled_capability() {
#if defined(EIGEN_VECTORIZE_AVX512)
  return "avx512";
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(EIGEN_VECTORIZE_FMA)
  return "avx2";
#else
  return "default";
#endif
}

}  // namespace detail

TESSERA_BEGIN_MODE_NAMESPACE
#if defined(TESSERA_COMPILED)
// The instruction-set level the kernels run with: "default" (the x86-64 baseline, SSE2, or the
// non-x86 build), "avx2" (AVX2 + FMA) or "avx512" (AVX-512 F, CD, BW, DQ, VL). Throws ValueError
// as selected_kernels() does.
std::string_view cpu_capability();
// Floats per SIMD packet in the kernels that run (4, 8 or 16 on x86).
int kernel_float_lanes();
#else
inline std::string_view cpu_capability() { return detail::compiled_capability(); }
inline int kernel_float_lanes() { return static_cast<int>(simd::width<float>); }
#endif
TESSERA_END_MODE_NAMESPACE

}  // namespace tessera
