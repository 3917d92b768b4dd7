// Helpers shared by the contrastive loss tests: the PyTorch fixtures written by
// tests/fixtures/make_contrastive_fixtures.py into tests/fixtures/contrastive/, parity checks
// that print the worst error reached, random embeddings, and central finite differences.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>

#include "fixture.hpp"
#include "tessera/contrastive/common.hpp"
#include "tessera/core/tensor.hpp"
#include "test_util.hpp"

namespace tessera::test {

// tests/fixtures/contrastive/<name>.safetensors. (Fixture reads from fixtures/nn/; these sit
// beside that directory.) Only float64 results are stored: "expected.f64.<name>".
struct ContrastiveFixture {
  Fixture fx;
  explicit ContrastiveFixture(const std::string& name) : fx("../contrastive/" + name) {}

  template <class T, int R>
  Tensor<T, R> input(const std::string& name) const {
    return fx.input<T, R>(name);
  }
  template <class T>
  T scalar(const std::string& name) const {
    return fx.input<T, 0>(name)();
  }
  bool has(const std::string& name) const { return fx.has_input(name); }
  template <int R>
  Tensor<double, R> expected(const std::string& name) const {
    return fx.dict.get<double, R>("expected.f64." + name);
  }
  double expected_scalar(const std::string& name) const { return expected<0>(name)(); }
  const nlohmann::json& options() const { return fx.options; }
  contrastive::Reduction reduction() const {
    return fx.options.at("reduction").get<std::string>() == "sum" ? contrastive::Reduction::sum
                                                                  : contrastive::Reduction::mean;
  }
};

// |a - e| / (1 + |e|), fixture.hpp's measure.
inline double parity_error(double a, double e) { return std::fabs(a - e) / (1.0 + std::fabs(e)); }

// Checks a tensor or a scalar against PyTorch's float64 result at parity_tol<T>() and prints the
// worst error, so a test run shows the parity reached.
template <class A, int R>
void expect_parity(const A& actual, const Tensor<double, R>& expected, const std::string& what) {
  using T = typename A::Scalar;
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  double worst = 0;
  for (Index i = 0; i < actual.size(); ++i) {
    ASSERT_TRUE(std::isfinite(double(actual.data()[i]))) << what << " at " << i;
    worst = std::max(worst, parity_error(double(actual.data()[i]), expected.data()[i]));
  }
  std::printf("[ parity   ] %s (%s): worst error %.3g\n", what.c_str(),
              std::is_same_v<T, float> ? "float" : "double", worst);
  EXPECT_LE(worst, double(parity_tol<T>())) << what;
}
template <class T>
void expect_parity_scalar(T actual, double expected, const std::string& what) {
  const double err = parity_error(double(actual), expected);
  std::printf("[ parity   ] %s (%s): error %.3g\n", what.c_str(),
              std::is_same_v<T, float> ? "float" : "double", err);
  EXPECT_TRUE(std::isfinite(double(actual))) << what;
  EXPECT_LE(err, double(parity_tol<T>())) << what << ": " << actual << " vs " << expected;
}

// Two results of the same loss (e.g. chunked and materialised): every element within `tol`
// in fixture.hpp's measure.
template <class A, class B>
void expect_close(const A& a, const B& b, double tol, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  double worst = 0;
  Index at = 0;
  for (Index i = 0; i < a.size(); ++i) {
    const double e = parity_error(double(a.data()[i]), double(b.data()[i]));
    ASSERT_FALSE(std::isnan(e)) << what << ": NaN at " << i;
    if (e > worst) worst = e, at = i;
  }
  EXPECT_LE(worst, tol) << what << ": worst at flat index " << at << ": " << a.data()[at] << " vs "
                        << b.data()[at];
}
inline void expect_close_scalar(double a, double b, double tol, const std::string& what) {
  EXPECT_LE(parity_error(a, b), tol) << what << ": " << a << " vs " << b;
}

// Bitwise equality of two tensors (thread-count invariance).
template <class A>
void expect_identical(const A& a, const A& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  for (Index i = 0; i < a.size(); ++i)
    ASSERT_EQ(a.data()[i], b.data()[i]) << what << " differs at flat index " << i;
}

// Chunked vs materialised, and float vs the same computation in double.
template <class T>
constexpr double agree_tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

template <class T>
Tensor<T, 2> random_rows(Index n, Index d, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor<T, 2> x(n, d);
  x.setRandom(seed, lo, hi);
  return x;
}

// Rows of unit L2 norm.
template <class T>
Tensor<T, 2> unit_rows(Index n, Index d, std::uint64_t seed) {
  Tensor<T, 2> x(n, d);
  x.setRandomNormal(seed);
  x.as_matrix().rowwise().normalize();
  return x;
}

template <class T, int R>
Tensor<double, R> to_double(const Tensor<T, R>& x) {
  Tensor<double, R> y(x.shape());
  for (Index i = 0; i < x.size(); ++i) y.data()[i] = static_cast<double>(x.data()[i]);
  return y;
}

// Central differences of f() with respect to every element of x (x is perturbed in place and
// restored).
template <int R, class F>
Tensor<double, R> numeric_grad(Tensor<double, R>& x, F&& f, double h = 1e-6) {
  Tensor<double, R> g(x.shape());
  for (Index i = 0; i < x.size(); ++i) {
    const double keep = x.data()[i];
    x.data()[i] = keep + h;
    const double up = f();
    x.data()[i] = keep - h;
    const double down = f();
    x.data()[i] = keep;
    g.data()[i] = (up - down) / (2 * h);
  }
  return g;
}
template <class F>
double numeric_derivative(double x, F&& f, double h = 1e-6) {
  return (f(x + h) - f(x - h)) / (2 * h);
}

// Finite differences against the analytic gradient.
inline constexpr double kGradCheckTol = 1e-7;

}  // namespace tessera::test
