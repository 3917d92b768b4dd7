// A program that mixes the modes (mixed_modes.hpp): this translation unit is in the compiled
// mode, header_only.cpp is not. Each keeps its own mode-named entry points (cpu_capability,
// kernel_float_lanes, gemm_tile, the softmax row and GEMM routers, PackedMatrix's packing
// constructor), both compute right, and a matrix packed on one side is read by the other only
// where their tiles agree (a ValueError otherwise). The public wrappers (tessera::softmax, ...),
// parallel_for and the modules are not named after the mode, so a mixed program runs one copy of
// each; this test calls the routers. CTest runs it
// at the level the library picks and, as kernels.MixedModes.at_default, with the library forced to
// the baseline, where a build for AVX2 or AVX-512 makes the two sides' levels differ.
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/mixed_modes/mixed_modes.hpp"
#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/softmax.hpp"
#include "test_util.hpp"

#if !defined(TESSERA_COMPILED)
#error "mixed_modes/compiled.cpp must be compiled in the compiled mode"
#endif

namespace mixed_modes {
namespace {

using tessera::Index;

// header_only_report's body, repeated on purpose: a shared inline function would be one symbol,
// which the linker would keep once for both sides.
Report compiled_report() {
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
  const auto w = weight_w();
  r.product.resize(kM * kN);
  tessera::GemmProblem<float> p{.m = kM, .n = kN, .k = kK, .a = a.data(), .lda = kK};
  p.b = w.data();
  p.ldb = kK;
  p.trans_b = true;
  p.c = r.product.data();
  p.ldc = kN;
  tessera::gemm(p);
  return r;
}

std::vector<float> compiled_product(const tessera::PackedMatrix<float>& packed) {
  const auto a = input_a();
  std::vector<float> c(kM * kN);
  tessera::GemmProblem<float> p{.m = kM, .n = kN, .k = kK, .a = a.data(), .lda = kK};
  p.packed_b = &packed;
  p.c = c.data();
  p.ldc = kN;
  tessera::gemm(p);
  return c;
}

// Long-double references.
std::vector<long double> reference_softmax() {
  const auto a = input_a();
  std::vector<long double> y(a.size());
  for (Index r = 0; r < kM; ++r) {
    long double m = a[r * kK], sum = 0;
    for (Index j = 0; j < kK; ++j) m = std::max<long double>(m, a[r * kK + j]);
    for (Index j = 0; j < kK; ++j) sum += std::exp(static_cast<long double>(a[r * kK + j]) - m);
    for (Index j = 0; j < kK; ++j)
      y[r * kK + j] = std::exp(static_cast<long double>(a[r * kK + j]) - m) / sum;
  }
  return y;
}
std::vector<long double> reference_product() {
  const auto a = input_a();
  const auto w = weight_w();
  std::vector<long double> c(kM * kN);
  for (Index i = 0; i < kM; ++i)
    for (Index j = 0; j < kN; ++j) {
      long double s = 0;
      for (Index k = 0; k < kK; ++k) s += static_cast<long double>(a[i * kK + k]) * w[j * kK + k];
      c[i * kN + j] = s;
    }
  return c;
}

void expect_near_all(const std::vector<float>& got, const std::vector<long double>& want,
                     long double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(static_cast<long double>(got[i]), want[i], tol * (1 + std::abs(want[i])))
        << what << " at " << i;
}

int lanes_of(const std::string& level) {
  if (level == "avx512") return 16;
  if (level == "avx2") return 8;
  return 4;
}

TEST(MixedModes, EachSideReportsItsOwnMode) {
  const Report h = header_only_report();
  const Report c = compiled_report();
  // The header-only side runs what this build's flags give, the compiled side the library's level.
  EXPECT_EQ(h.capability, tessera::detail::compiled_capability());
  EXPECT_EQ(h.float_lanes, static_cast<int>(tessera::simd::width<float>));
  EXPECT_EQ(h.tile_nr, tessera::GemmBlocking<float>::NR);
  if (const char* forced = std::getenv("TESSERA_CPU_CAPABILITY"); forced && *forced) {
    std::string want(forced);
    for (char& ch : want) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    EXPECT_EQ(c.capability, want);
  }
#if defined(__x86_64__)
  EXPECT_EQ(c.float_lanes, lanes_of(c.capability));
#endif
  if (c.capability != h.capability) {
    EXPECT_NE(c.float_lanes, h.float_lanes) << "the two sides ran one copy of kernel_float_lanes";
  }
}

TEST(MixedModes, BothSidesComputeTheSameResults) {
  const Report h = header_only_report();
  const Report c = compiled_report();
  const auto softmax = reference_softmax();
  const auto product = reference_product();
  constexpr long double tol = 1e-5L;
  expect_near_all(h.softmax, softmax, tol, "header-only softmax");
  expect_near_all(c.softmax, softmax, tol, "compiled softmax");
  expect_near_all(h.product, product, tol, "header-only product");
  expect_near_all(c.product, product, tol, "compiled product");
}

TEST(MixedModes, APackedMatrixCrossesModesOnlyWhereTheTilesAgree) {
  const Report h = header_only_report();
  const Report c = compiled_report();
  const auto product = reference_product();
  constexpr long double tol = 1e-5L;
  const auto w = weight_w();
  const tessera::PackedMatrix<float> from_header_only = header_only_pack();
  const tessera::PackedMatrix<float> from_compiled(w.data(), kK, true, kK, kN);
  EXPECT_EQ(from_header_only.sliver_width(), h.tile_nr);
  EXPECT_EQ(from_compiled.sliver_width(), c.tile_nr);
  // Each side reads its own packing.
  expect_near_all(header_only_product(from_header_only), product, tol, "header-only, own packing");
  expect_near_all(compiled_product(from_compiled), product, tol, "compiled, own packing");
  // And the other side's where the slivers are as wide as its tile.
  if (h.tile_nr == c.tile_nr) {
    expect_near_all(header_only_product(from_compiled), product, tol, "header-only, compiled's");
    expect_near_all(compiled_product(from_header_only), product, tol, "compiled, header-only's");
    return;
  }
  const auto message = [](Index got, Index want) {
    return "tessera::gemm: packed_b has slivers of " + std::to_string(got) + " columns, expected " +
           std::to_string(want);
  };
  const std::string header_only_reads = message(c.tile_nr, h.tile_nr);
  const std::string compiled_reads = message(h.tile_nr, c.tile_nr);
  TESSERA_EXPECT_THROW_MSG(header_only_product(from_compiled), tessera::ValueError,
                           header_only_reads.c_str());
  TESSERA_EXPECT_THROW_MSG(compiled_product(from_header_only), tessera::ValueError,
                           compiled_reads.c_str());
}

}  // namespace
}  // namespace mixed_modes
