// tessera::contrastive: where the losses' computations run in the compiled mode.
//
// Header-only, each loss compiles its sweeps into the program that calls it, for the instruction
// set of that program's flags. In the compiled mode (TESSERA_COMPILED), the sweeps of clip_loss,
// siglip_loss and info_nce_loss (chunked and materialised) and the computation of pair_loss are
// held by the library once per instruction-set level, like the kernels of kernels/dispatch.hpp,
// and run at the level those kernels run at (TESSERA_CPU_CAPABILITY forces both): their
// exponentials, logarithms and reductions are element-wise work outside the dispatched kernels,
// and a portable program built without -march would otherwise run them at the baseline. The
// checks of the arguments stay in the headers, compiled with the caller's flags.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "tessera/core/tensor.hpp"
#include "tessera/kernels/dispatch.hpp"

namespace tessera::contrastive {

template <class T>
struct ClipLossResult;
template <class T>
struct SigLipLossResult;
template <class T>
struct InfoNceLossResult;
template <class T>
struct PairLossResult;
struct PairLossOptions;

namespace detail {

// The computations the compiled mode dispatches, for scalar type T: each entry is the
// header-only function of the same name (clip_loss.hpp, siglip_loss.hpp, info_nce.hpp,
// pair_loss.hpp), compiled for one instruction set. The result's gradients are allocated by the
// caller (but pair_loss's, which the computation allocates).
template <class T>
struct LossKernelTable {
  void (*clip_tiled)(MatrixMap<const T> a, MatrixMap<const T> b, T s, T w, Index block,
                     ClipLossResult<T>& out);
  void (*clip_materialized)(MatrixMap<const T> a, MatrixMap<const T> b, T s, T w,
                            ClipLossResult<T>& out);
  void (*siglip_tiled)(MatrixMap<const T> a, MatrixMap<const T> b, T s, T bias, T w, Index block,
                       SigLipLossResult<T>& out);
  void (*siglip_materialized)(MatrixMap<const T> a, MatrixMap<const T> b, T s, T bias, T w,
                              SigLipLossResult<T>& out);
  void (*info_nce_tiled)(MatrixMap<const T> a, MatrixMap<const T> b, T s, T w, Index block,
                         InfoNceLossResult<T>& out);
  void (*info_nce_materialized)(MatrixMap<const T> a, MatrixMap<const T> b, T s, T w,
                                InfoNceLossResult<T>& out);
  PairLossResult<T> (*pair_loss_compute)(MatrixMap<const T> x1, MatrixMap<const T> x2,
                                         const std::vector<std::int64_t>& labels,
                                         const PairLossOptions& opts);
};

// One instruction-set level of the library's losses (src/isa_losses.cpp).
struct IsaLossKernels {
  const char* name;  // "default", "avx2", "avx512": the level of kernels/dispatch.hpp
  LossKernelTable<float> f32;
  LossKernelTable<double> f64;
};

#if defined(TESSERA_COMPILED)
// The losses of the level of `kernels` (one of tessera::detail::choose_kernels' answers).
const IsaLossKernels& loss_kernels_of(const tessera::detail::IsaKernels& kernels);
// The losses of the level tessera::detail::selected_kernels() chose (src/dispatch_losses.cpp);
// throws as it does.
const IsaLossKernels& selected_loss_kernels();

template <class T>
const LossKernelTable<T>& loss_kernels() {
  static_assert(tessera::detail::kDispatched<T>, "the library holds float and double losses");
  if constexpr (std::is_same_v<T, float>)
    return selected_loss_kernels().f32;
  else
    return selected_loss_kernels().f64;
}
#else
// Declared for the losses' discarded branches; never called in this mode.
template <class T>
const LossKernelTable<T>& loss_kernels();
#endif

}  // namespace detail
}  // namespace tessera::contrastive
