// Helpers for the modules' backward tests: converting tensors and parameters between float and
// double, and comparing a float run with a double run of the same module.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "../fixture.hpp"
#include "../gradient_check.hpp"
#include "../test_util.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::test {

template <class U, class T, int R>
Tensor<U, R> cast_to(const Tensor<T, R>& t) {
  Tensor<U, R> out(t.shape(), uninitialized);
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<U>(t.data()[i]);
  return out;
}

// A random tensor rounded through float, so that a float and a double run see the same values.
template <int R>
Tensor<double, R> random_tensor(const Shape<R>& shape, std::uint64_t seed, double lo = -1,
                                double hi = 1) {
  Tensor<double, R> t(shape);
  t.setRandom(seed, lo, hi);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(t.data()[i]);
  return t;
}

// Copies every parameter of `from` into the parameter of `to` with the same name (converting the
// scalar type); both modules must have the same parameters.
template <class From, class To>
void copy_parameters(const From& from, To& to) {
  std::map<std::string, std::vector<double>> values;
  from.for_each_parameter([&](const std::string& name, const auto& p) {
    values[name].assign(p.value.data(), p.value.data() + p.value.size());
  });
  to.for_each_parameter([&](const std::string& name, auto& p) {
    ASSERT_TRUE(values.count(name)) << name;
    ASSERT_EQ(static_cast<Index>(values[name].size()), p.value.size()) << name;
    using S = std::remove_reference_t<decltype(*p.value.data())>;
    std::transform(values[name].begin(), values[name].end(), p.value.data(),
                   [](double v) { return static_cast<S>(v); });
    ++p.version;
  });
}

// max |a - b| <= tol * max(1, max |b|): a float result against the double one.
template <class A, class B>
void expect_close_scaled(const std::string& what, const A& a, const B& b, double tol) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double scale = 1, worst = 0;
  Index at = 0;
  for (Index i = 0; i < b.size(); ++i) scale = std::max(scale, std::fabs(double(b.data()[i])));
  for (Index i = 0; i < b.size(); ++i) {
    const double d = std::fabs(double(a.data()[i]) - double(b.data()[i]));
    if (!(d <= worst)) worst = d, at = i;  // NaN lands here
  }
  EXPECT_LE(worst, tol * scale) << what << ": largest difference at " << at << " ("
                                << double(a.data()[at]) << " vs " << double(b.data()[at]) << ")";
}

// Compares every parameter gradient of a float module with the double module's.
template <class MF, class MD>
void expect_parameter_grads_close(MF& f, MD& d, double tol) {
  std::map<std::string, std::vector<double>> grads;
  d.for_each_parameter([&](const std::string& name, const auto& p) {
    grads[name].assign(p.grad.data(), p.grad.data() + p.grad.size());
  });
  f.for_each_parameter([&](const std::string& name, const auto& p) {
    ASSERT_TRUE(p.has_grad()) << name;
    const auto& g = grads[name];
    Tensor<double, 1> ref(Shape<1>{static_cast<Index>(g.size())});
    std::copy(g.begin(), g.end(), ref.data());
    Tensor<double, 1> got(Shape<1>{p.grad.size()});
    std::copy(p.grad.data(), p.grad.data() + p.grad.size(), got.data());
    expect_close_scaled("grad of '" + name + "'", got, ref, tol);
  });
}

// Every parameter's gradient (as backward accumulated it from zero) against a training fixture's
// expected.<dt>.grad.param.<key> (tests/fixtures/training), within the fixtures' parity tolerance.
template <class T, class M>
void expect_fixture_parameter_grads(M& m, const Fixture& fx, const std::string& name) {
  int checked = 0;
  m.for_each_parameter([&](const std::string& key, const auto& p) {
    constexpr int R = std::remove_cvref_t<decltype(p)>::rank;
    expect_tensor_near(p.grad, fx.expected<T, R>("grad.param." + key), parity_tol<T>(),
                       name + " grad of " + key);
    ++checked;
  });
  EXPECT_GT(checked, 0) << name;
}

}  // namespace tessera::test
