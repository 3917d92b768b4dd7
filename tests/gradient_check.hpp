// Finite-difference checks of backward passes, in double.
//
// A module's output y is reduced to the scalar loss L = sum(y * w) with a fixed random w, so
// dL/dy = w is what backward is given, and every analytic gradient (inputs and parameters) is
// compared with the central difference (L(x + h e_i) - L(x - h e_i)) / 2h, entry by entry. For a
// tensor of more than `max_entries` entries a fixed, evenly spread subset is checked (the count is
// in the message). The tolerance is |analytic - numeric| <= atol + rtol * |numeric|; the central
// difference's error is O(h^2 f''') plus rounding O(eps / h), about 1e-8 relative at h = 1e-5 for
// the smooth functions here.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"

namespace tessera::test {

struct GradCheckOptions {
  double h = 1e-5;         // the step of the central difference
  double atol = 1e-7;      // tolerance, absolute
  double rtol = 1e-5;      // and relative to the numerical gradient
  Index max_entries = 64;  // entries checked per tensor (evenly spread beyond that)
};

// Runs what is in its scope on one thread, restoring the setting after. The central differences
// run thousands of small forwards, for which OpenMP's fork and join cost more than the work, and
// on a machine whose cores are busy (ctest -j, other builds) far more; results do not depend on
// the thread count (core/threading.hpp), so the checks below take one thread.
struct OneThread {
  int saved = num_threads();
  OneThread() { set_num_threads(1); }
  ~OneThread() { set_num_threads(saved); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;
};

// Indices of `n` entries to check: all of them, or max evenly spread ones (first and last too).
inline std::vector<Index> entries_to_check(Index n, Index max) {
  std::vector<Index> idx;
  if (n <= max) {
    for (Index i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  for (Index k = 0; k < max; ++k) idx.push_back(k * (n - 1) / (max - 1));
  return idx;
}

// Checks `analytic` (n values) against the central difference of `loss` over the n doubles at
// `x`, which it perturbs and restores. `what` names the tensor in failures.
inline void expect_gradient(const std::string& what, double* x, const double* analytic, Index n,
                            const std::function<double()>& loss, const GradCheckOptions& o = {}) {
  const OneThread one_thread;
  int failures = 0;
  const auto idx = entries_to_check(n, o.max_entries);
  for (Index i : idx) {
    const double saved = x[i];
    x[i] = saved + o.h;
    const double up = loss();
    x[i] = saved - o.h;
    const double down = loss();
    x[i] = saved;
    const double numeric = (up - down) / (2 * o.h);
    const double err = std::fabs(analytic[i] - numeric);
    if (!(err <= o.atol + o.rtol * std::fabs(numeric)) && failures++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << ", numeric " << numeric
                    << " (error " << err << "; " << idx.size() << " of " << n
                    << " entries checked)";
  }
  if (failures > 5) ADD_FAILURE() << what << ": " << failures << " entries differ in all";
}

// sum(y * w) in double.
template <class Y, class W>
double weighted_sum(const Y& y, const W& w) {
  double s = 0;
  for (Index i = 0; i < y.size(); ++i) s += y.data()[i] * w.data()[i];
  return s;
}

// Checks every parameter's gradient of a module: `loss` runs the forward and reduces it (with
// the module's current parameter values). The parameters' .grad must hold the analytic gradient.
template <class M>
void expect_parameter_gradients(M& module, const std::function<double()>& loss,
                                const GradCheckOptions& o = {}) {
  module.for_each_parameter([&](const std::string& name, auto& p) {
    ASSERT_TRUE(p.has_grad()) << name << " has no gradient";
    expect_gradient("parameter '" + name + "'", p.value.data(), p.grad.data(), p.value.size(), loss,
                    o);
  });
}

}  // namespace tessera::test
