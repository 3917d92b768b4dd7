// tessera's compiled library: the losses of the level the kernels run at
// (contrastive/dispatch.hpp). A file of its own, so that a program that calls no loss does not
// link the losses' objects. CMake defines TESSERA_HAVE_AVX2 and TESSERA_HAVE_AVX512 for the
// levels it built.
#include <string_view>

#include "tessera/contrastive/dispatch.hpp"
#include "tessera/kernels/dispatch.hpp"

#ifndef TESSERA_COMPILED
#error "src/dispatch_losses.cpp is built with TESSERA_COMPILED"
#endif

using tessera::contrastive::detail::IsaLossKernels;

extern "C" const IsaLossKernels* tessera_isa_losses_default();
#ifdef TESSERA_HAVE_AVX2
extern "C" const IsaLossKernels* tessera_isa_losses_avx2();
#endif
#ifdef TESSERA_HAVE_AVX512
extern "C" const IsaLossKernels* tessera_isa_losses_avx512();
#endif

namespace tessera::contrastive::detail {

const IsaLossKernels& loss_kernels_of(const tessera::detail::IsaKernels& kernels) {
  const std::string_view level = kernels.name;
#ifdef TESSERA_HAVE_AVX2
  if (level == "avx2") return *tessera_isa_losses_avx2();
#endif
#ifdef TESSERA_HAVE_AVX512
  if (level == "avx512") return *tessera_isa_losses_avx512();
#endif
  (void)level;  // "default", the only level left
  return *tessera_isa_losses_default();
}

const IsaLossKernels& selected_loss_kernels() {
  static const IsaLossKernels& k = loss_kernels_of(tessera::detail::selected_kernels());
  return k;
}

}  // namespace tessera::contrastive::detail
