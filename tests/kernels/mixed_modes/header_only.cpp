// The header-only half of the mixed-mode program (mixed_modes.hpp): built without
// TESSERA_COMPILED, so every kernel here is compiled for this build's flags.
#include "kernels/mixed_modes/mixed_modes.hpp"

#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/softmax.hpp"

#if defined(TESSERA_COMPILED)
#error "mixed_modes/header_only.cpp must be compiled header-only"
#endif

namespace mixed_modes {

namespace {
std::vector<float> product_with(const tessera::PackedMatrix<float>* packed) {
  const auto a = input_a();
  const auto w = weight_w();
  std::vector<float> c(kM * kN);
  tessera::GemmProblem<float> p{.m = kM, .n = kN, .k = kK, .a = a.data(), .lda = kK};
  if (packed) {
    p.packed_b = packed;
  } else {
    p.b = w.data();
    p.ldb = kK;
    p.trans_b = true;
  }
  p.c = c.data();
  p.ldc = kN;
  tessera::gemm(p);
  return c;
}
}  // namespace

Report header_only_report() {
  Report r;
  r.capability = std::string(tessera::cpu_capability());
  r.float_lanes = tessera::kernel_float_lanes();
  r.tile_nr = tessera::gemm_tile<float>().nr;
  // Row by row through the mode-named router: tessera::softmax itself, like the other public
  // wrappers and parallel_for, is not named after the mode, so a mixed program keeps one copy.
  const auto a = input_a();
  r.softmax.resize(a.size());
  for (tessera::Index row = 0; row < kM; ++row)
    tessera::detail::softmax_row(a.data() + row * kK, r.softmax.data() + row * kK, kK);
  r.product = product_with(nullptr);
  return r;
}

tessera::PackedMatrix<float> header_only_pack() {
  const auto w = weight_w();
  return tessera::PackedMatrix<float>(w.data(), kK, true, kK, kN);
}

std::vector<float> header_only_product(const tessera::PackedMatrix<float>& packed) {
  return product_with(&packed);
}

}  // namespace mixed_modes
