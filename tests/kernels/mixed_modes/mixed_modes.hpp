// One program, two modes: header_only.cpp includes tessera's kernels header-only (compiled for
// this build's flags) and compiled.cpp, the test, in the compiled mode (TESSERA_COMPILED, linked
// with tessera::compiled). kernels/dispatch.hpp names the modes' entry points after the mode, so
// each translation unit keeps its own; these are what the header-only side computes and reports.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tessera/kernels/gemm.hpp"

namespace mixed_modes {

// The product's shapes: c [kM, kN] = a [kM, kK] times w [kN, kK] transposed (a Linear's layout).
inline constexpr tessera::Index kM = 24, kN = 48, kK = 64;

inline std::vector<float> input_a() {
  std::vector<float> a(kM * kK);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(std::sin(0.37 * i));
  return a;
}
inline std::vector<float> weight_w() {
  std::vector<float> w(kN * kK);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(std::cos(0.11 * i));
  return w;
}

struct Report {
  std::string capability;      // cpu_capability()
  int float_lanes = 0;         // kernel_float_lanes()
  tessera::Index tile_nr = 0;  // gemm_tile<float>().nr
  std::vector<float> softmax;  // softmax over the rows of input_a() [kM, kK]
  std::vector<float> product;  // input_a() times weight_w()^T, unpacked [kM, kN]
};

Report header_only_report();
// weight_w()^T packed by the header-only side's PackedMatrix.
tessera::PackedMatrix<float> header_only_pack();
// The header-only side's product input_a() times `packed` (packed by either side).
std::vector<float> header_only_product(const tessera::PackedMatrix<float>& packed);

}  // namespace mixed_modes
