// Tests for tessera/kernels/dispatch.hpp: which instruction-set level the kernels run with, in
// the header-only mode (the compiler's flags) and in the compiled mode (chosen at run time, or
// forced with TESSERA_CPU_CAPABILITY), and the errors of a bad request. The kernels themselves
// are tested by every other test of the suite, which CI runs once per forced level in the
// compiled mode.
#include "tessera/kernels/dispatch.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"
#include "test_util.hpp"

namespace dispatch_test {

using tessera::Index;

Index lanes_of(std::string_view level) { return level == "avx512" ? 16 : level == "avx2" ? 8 : 4; }

// A kernel called from a static initialiser, which may run before the compiled library's own:
// the library's tables are constant-initialised, so this finds them complete.
float static_softmax_value() {
  std::vector<float> x{1.0f, 2.0f, 3.0f}, y(3);
  tessera::detail::softmax_row(x.data(), y.data(), Index{3});
  return y[2];
}
const float kStaticSoftmax = static_softmax_value();

TEST(Dispatch, KernelsWorkInStaticInitialisers) {
  EXPECT_NEAR(kStaticSoftmax, std::exp(3.0f) / (std::exp(1.0f) + std::exp(2.0f) + std::exp(3.0f)),
              1e-6f);
}

#ifndef TESSERA_COMPILED

TEST(Dispatch, HeaderOnlyRunsWhatTheCompilerFlagsGive) {
  EXPECT_EQ(tessera::cpu_capability(), tessera::detail::compiled_capability());
  EXPECT_EQ(tessera::kernel_float_lanes(), tessera::simd::width<float>);
  EXPECT_EQ(tessera::gemm_tile<float>().mr, tessera::GemmBlocking<float>::MR);
  EXPECT_EQ(tessera::gemm_tile<double>().nr, tessera::GemmBlocking<double>::NR);
#if defined(__x86_64__)
  EXPECT_EQ(tessera::kernel_float_lanes(), lanes_of(tessera::cpu_capability()));
#endif
}

#else

using tessera::detail::choose_kernels;
using tessera::detail::cpu_supports;

TEST(Dispatch, CompiledRunsTheRequestedOrTheBestLevel) {
  const std::string_view level = tessera::cpu_capability();
  std::printf("compiled mode: kernels run at level %s (%d float lanes)\n",
              std::string(level).c_str(), tessera::kernel_float_lanes());
  const char* want = std::getenv("TESSERA_CPU_CAPABILITY");
  if (want && *want) {
    EXPECT_EQ(level, want);
  } else {
    EXPECT_EQ(level, choose_kernels(nullptr).name);
#if defined(__x86_64__)
    if (cpu_supports("avx512"))
      EXPECT_EQ(level, "avx512");
    else if (cpu_supports("avx2"))
      EXPECT_EQ(level, "avx2");
    else
      EXPECT_EQ(level, "default");
#endif
  }
  EXPECT_TRUE(cpu_supports(level));
#if defined(__x86_64__)
  EXPECT_EQ(tessera::kernel_float_lanes(), lanes_of(level));
  // The GEMM tile of the level: two packets wide, 12 rows with AVX-512's 32 registers, else 6.
  EXPECT_EQ(tessera::gemm_tile<float>().nr, 2 * lanes_of(level));
  EXPECT_EQ(tessera::gemm_tile<double>().nr, lanes_of(level));
  EXPECT_EQ(tessera::gemm_tile<float>().mr, level == "avx512" ? 12 : 6);
#endif
}

TEST(Dispatch, EveryLevelTheCpuSupportsCanBeChosen) {
  for (const char* level : {"default", "avx2", "avx512"}) {
#if !defined(__x86_64__)
    if (std::string_view(level) != "default") continue;
#endif
    if (!cpu_supports(level)) continue;
    const auto& k = choose_kernels(level);
    EXPECT_EQ(std::string_view(k.name), level);
    EXPECT_EQ(k.float_lanes, lanes_of(level));
    EXPECT_NE(k.f32.gemm, nullptr);
    EXPECT_NE(k.f64.attention_fused, nullptr);
  }
  // An empty value is no request; any case is accepted.
  EXPECT_EQ(std::string_view(choose_kernels("").name), choose_kernels(nullptr).name);
  EXPECT_EQ(std::string_view(choose_kernels("DEFAULT").name), "default");
}

// Every level the CPU runs gives the same results as the others, up to rounding, on a softmax
// row and a product (called through each level's table, in one process).
TEST(Dispatch, EveryLevelComputesTheSameResults) {
  const Index n = 37, m = 13, k = 29;
  std::vector<double> x(static_cast<std::size_t>(n)), y0, c0;
  std::vector<double> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7 * double(i));
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::cos(0.3 * double(i));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::sin(0.11 * double(i) + 1.0);
  for (const char* level : {"default", "avx2", "avx512"}) {
    if (!cpu_supports(level)) continue;
    SCOPED_TRACE(level);
    const auto& t = choose_kernels(level).f64;
    std::vector<double> y(x.size()), c(static_cast<std::size_t>(m * n));
    t.softmax_row(x.data(), y.data(), n);
    tessera::GemmProblem<double> p{.m = m,
                                   .n = n,
                                   .k = k,
                                   .a = a.data(),
                                   .lda = k,
                                   .b = b.data(),
                                   .ldb = n,
                                   .c = c.data(),
                                   .ldc = n};
    t.gemm(p);
    if (y0.empty()) {
      y0 = y;
      c0 = c;
      continue;
    }
    for (std::size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], y0[i], 1e-15) << "softmax " << i;
    for (std::size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], c0[i], 1e-12) << "gemm " << i;
  }
}

TEST(Dispatch, BadRequestsAreErrors) {
  TESSERA_EXPECT_THROW_MSG(
      choose_kernels("AVX-2"), tessera::ValueError,
      "TESSERA_CPU_CAPABILITY): value is 'AVX-2', expected one of default, avx2, "
      "avx512");
  TESSERA_EXPECT_THROW_MSG(choose_kernels("sse4"), tessera::ValueError, "value is 'sse4'");
  for (const char* level : {"avx2", "avx512"})
    if (!cpu_supports(level)) {
      const std::string want = std::string("asks for ") + level;
      TESSERA_EXPECT_THROW_MSG(choose_kernels(level), tessera::ValueError, want.c_str(),
                               "which this CPU (or its operating system) lacks");
    }
}

// A PackedMatrix packed by the dispatched level, read by a product compiled into this test for
// another level, is an error, not a product with the wrong slivers.
TEST(Dispatch, PackedMatrixOfAnotherLevelIsAnError) {
  const Index nr = tessera::GemmBlocking<float>::NR;  // this translation unit's tile
  std::vector<float> b(64 * 48, 1.0f), c(16 * 48);
  const tessera::PackedMatrix<float> packed(b.data(), 48, false, 64, 48);
  tessera::GemmProblem<float> p{.m = 16, .n = 48, .k = 64, .c = c.data(), .ldc = 48};
  std::vector<float> a(16 * 64, 1.0f);
  p.a = a.data();
  p.lda = 64;
  p.packed_b = &packed;
  tessera::gemm(p);  // the dispatched product reads what the dispatched packing wrote
  EXPECT_EQ(c[0], 64.0f);
  if (packed.sliver_width() == nr)
    GTEST_SKIP() << "the dispatched level packs slivers of " << nr
                 << " columns, as this test's own build does";
  const std::string want = "tessera::gemm: packed_b has slivers of " +
                           std::to_string(packed.sliver_width()) + " columns, expected " +
                           std::to_string(nr);
  TESSERA_EXPECT_THROW_MSG(tessera::detail::gemm_impl(p), tessera::ValueError, want.c_str(),
                           "packed by code built for another instruction set");
}

#endif

}  // namespace dispatch_test
