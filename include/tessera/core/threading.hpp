// tessera: the number of threads tessera's kernels use, and the one parallel loop they share.
//
// With OpenMP (CMake option TESSERA_OPENMP, on by default when found) row-wise kernels split their
// rows across threads; without it everything runs on the calling thread. Each row is computed
// the same way whichever thread runs it, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>

#include "tessera/core/config.hpp"
#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tessera {

namespace detail {
#if defined(TESSERA_COMPILED)
// Chooses the kernels' instruction-set level now if it is not chosen yet (src/dispatch.cpp;
// kernels/dispatch.hpp), throwing ValueError for a bad TESSERA_CPU_CAPABILITY: parallel_for calls
// it before it starts threads, because an exception cannot leave an OpenMP region.
void resolve_kernel_level();
#endif

inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{0};  // 0: not set, use the OpenMP default
  return n;
}
}  // namespace detail

// Threads available when nothing was set: OpenMP's default (OMP_NUM_THREADS or the core count).
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Sets how many threads tessera's kernels (and Eigen's matrix products) use. n >= 1.
inline void set_num_threads(int n) {
  if (n < 1)
    detail::raise<ValueError>("tessera::set_num_threads", "argument 'n' is ", n,
                              ", expected a value >= 1");
  detail::thread_setting().store(n, std::memory_order_relaxed);
  Eigen::setNbThreads(n);
}

// The number of threads tessera's kernels use (1 without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
  const int n = detail::thread_setting().load(std::memory_order_relaxed);
  return n > 0 ? n : max_threads();
#else
  return 1;
#endif
}

// Calls body(begin, end) over [0, n) split into contiguous ranges, one per thread, when each
// thread gets at least `grain` items of work; otherwise calls body(0, n) on this thread. Inside
// an enclosing parallel region it always runs serially.
template <class Body>
void parallel_for(Index n, Index grain, Body&& body) {
  if (n <= 0) return;
  (void)grain;  // unused without OpenMP
#ifdef _OPENMP
  const Index threads =
      std::min<Index>(num_threads(), std::max<Index>(1, n / std::max<Index>(grain, 1)));
  if (threads > 1 && !omp_in_parallel()) {
#if defined(TESSERA_COMPILED)
    detail::resolve_kernel_level();
#endif
#pragma omp parallel num_threads(static_cast <int>(threads))
    {
      const Index t = omp_get_thread_num();
      const Index nt = omp_get_num_threads();
      const Index begin = n * t / nt;
      const Index end = n * (t + 1) / nt;
      if (begin < end) body(begin, end);
    }
    return;
  }
#endif
  body(Index{0}, n);
}

}  // namespace tessera
