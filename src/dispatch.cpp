// tessera's compiled library: chooses, once per process, the instruction-set level the dispatched
// kernels run with (kernels/dispatch.hpp).
// CMake compiles this file for the baseline of the target and defines TESSERA_HAVE_AVX2 and
// TESSERA_HAVE_AVX512 for the levels it built.
#include <cctype>
#include <cstdlib>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/kernels/dispatch.hpp"

#ifndef TESSERA_COMPILED
#error "src/dispatch.cpp is built with TESSERA_COMPILED"
#endif

using tessera::detail::IsaKernels;

extern "C" const IsaKernels* tessera_isa_kernels_default();
#ifdef TESSERA_HAVE_AVX2
extern "C" const IsaKernels* tessera_isa_kernels_avx2();
#endif
#ifdef TESSERA_HAVE_AVX512
extern "C" const IsaKernels* tessera_isa_kernels_avx512();
#endif

namespace tessera::detail {

// CPUID, and XGETBV for the operating system's register state, as libgcc's and compiler-rt's
// __builtin_cpu_supports check them. The flags each level is compiled with
// (cmake/tesseraCompiled.cmake) use nothing beyond these.
bool cpu_supports(std::string_view level) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (level == "avx2") return avx2;
  if (level == "avx512")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return level == "default";
}

namespace {

const IsaKernels* built(std::string_view level) {
  if (level == "default") return tessera_isa_kernels_default();
#ifdef TESSERA_HAVE_AVX2
  if (level == "avx2") return tessera_isa_kernels_avx2();
#endif
#ifdef TESSERA_HAVE_AVX512
  if (level == "avx512") return tessera_isa_kernels_avx512();
#endif
  return nullptr;
}

}  // namespace

const IsaKernels& choose_kernels(const char* env) {
  constexpr std::string_view fn = "tessera (environment variable TESSERA_CPU_CAPABILITY)";
  if (env && *env) {
    // Any case: PyTorch's ATEN_CPU_CAPABILITY is written in lower case, its
    // get_cpu_capability() answers in upper case.
    std::string lower(env);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const std::string_view want = lower;
    if (want != "default" && want != "avx2" && want != "avx512")
      raise<ValueError>(fn, "value is '", env, "', expected one of default, avx2, avx512");
    const IsaKernels* k = built(want);
    if (!k) {
      std::string held = "default";
      for (std::string_view level : {"avx2", "avx512"})
        if (built(level)) held += ", " + std::string(level);
      raise<ValueError>(fn, "asks for ", want,
                        ", which this build of the compiled library does not hold (it holds ", held,
                        ")");
    }
    if (!cpu_supports(want))
      raise<ValueError>(fn, "asks for ", want, ", which this CPU (or its operating system) lacks");
    return *k;
  }
  for (std::string_view level : {"avx512", "avx2"})
    if (const IsaKernels* k = built(level); k && cpu_supports(level)) return *k;
  return *tessera_isa_kernels_default();
}

const IsaKernels& selected_kernels() {
  // A throw leaves k unset: the next call tries again, and throws again.
  static const IsaKernels& k = choose_kernels(std::getenv("TESSERA_CPU_CAPABILITY"));
  return k;
}

void resolve_kernel_level() { (void)selected_kernels(); }

}  // namespace tessera::detail

namespace tessera {
TESSERA_BEGIN_MODE_NAMESPACE

std::string_view cpu_capability() { return detail::selected_kernels().name; }

int kernel_float_lanes() { return detail::selected_kernels().float_lanes; }

TESSERA_END_MODE_NAMESPACE
}  // namespace tessera
