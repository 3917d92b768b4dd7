// Reading the PyTorch golden fixtures written by tests/fixtures/make_fixtures.py.
//
// A fixture file tests/fixtures/nn/<case>.safetensors holds the module's parameters under
// "module.<PyTorch key>", the inputs under "input.<name>", PyTorch's outputs computed in float32
// under "expected.f32.<name>" and in float64 under "expected.f64.<name>", and JSON strings
// "options" and "forward" in its metadata.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "tessera/core/mask.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/kernels/activation.hpp"
#include "test_util.hpp"

namespace tessera::test {

struct Fixture {
  io::StateDict dict;
  nlohmann::json options;
  nlohmann::json forward;

  // tests/fixtures/<folder>/<name>.safetensors
  explicit Fixture(const std::string& name, const std::string& folder = "nn") {
    dict = io::load_safetensors(std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/" + folder + "/" +
                                name + ".safetensors");
    options = nlohmann::json::parse(meta("options", "{}"));
    forward = nlohmann::json::parse(meta("forward", "{}"));
  }

  std::string meta(const std::string& key, const std::string& fallback) const {
    const auto it = dict.metadata.find(key);
    return it == dict.metadata.end() ? fallback : it->second;
  }

  template <class T, int R>
  Tensor<T, R> input(const std::string& name) const {
    return dict.get<T, R>("input." + name);
  }
  bool has_input(const std::string& name) const { return dict.contains("input." + name); }

  template <class T, int R>
  Tensor<T, R> expected(const std::string& name) const {
    return dict.get<T, R>(
        std::string(std::is_same_v<T, float> ? "expected.f32." : "expected.f64.") + name);
  }

  // A mask input with the kind recorded in the forward options ("allowed", "blocked", "additive").
  // The tensor is kept in `storage` (the Mask is a view of it).
  template <class T, int R>
  std::optional<Mask> mask(const std::string& name, Tensor<bool, R>& bools,
                           Tensor<T, R>& floats) const {
    if (!has_input(name)) return std::nullopt;
    const std::string kind = forward.value(name, std::string());
    if (kind == "additive") {
      floats = input<T, R>(name);
      return Mask::additive(floats);
    }
    bools = input<bool, R>(name);
    if (kind == "allowed") return Mask::allowed(bools);
    if (kind == "blocked") return Mask::blocked(bools);
    ADD_FAILURE() << "fixture mask '" << name << "' has unknown kind '" << kind << "'";
    return std::nullopt;
  }
};

// Float parity with PyTorch: |a - b| <= 1e-5 + 1e-5 |b| (absolute and relative); double: 1e-10.
template <class T>
constexpr T parity_tol() {
  return std::is_same_v<T, float> ? T(1e-5) : T(1e-10);
}

template <class A, class B>
void expect_tensor_near(const A& actual, const B& expected, typename A::Scalar tol,
                        const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const auto* a = actual.data();
  const auto* e = expected.data();
  double worst = 0;
  Index worst_i = 0;
  for (Index i = 0; i < actual.size(); ++i) {
    ASSERT_FALSE(std::isnan(a[i])) << what << ": NaN at flat index " << i;
    const double err = std::fabs(double(a[i]) - double(e[i])) / (1.0 + std::fabs(double(e[i])));
    if (err > worst) worst = err, worst_i = i;
  }
  EXPECT_LE(worst, double(tol)) << what << ": worst relative error at flat index " << worst_i
                                << ": " << a[worst_i] << " vs " << e[worst_i];
}

// Every fixture in tests/fixtures/<folder> whose file name starts with `prefix` (e.g. "mha_"),
// sorted.
inline std::vector<std::string> fixtures_with_prefix(const std::string& prefix,
                                                     const std::string& folder = "nn") {
  std::vector<std::string> names;
  const std::filesystem::path dir =
      std::filesystem::path(TESSERA_TEST_DATA_DIR) / "fixtures" / folder;
  if (std::filesystem::exists(dir))
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      const std::string stem = entry.path().stem().string();
      if (entry.path().extension() == ".safetensors" && stem.rfind(prefix, 0) == 0)
        names.push_back(stem);
    }
  std::sort(names.begin(), names.end());
  return names;
}

inline Activation activation_from(const std::string& name) {
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "quick_gelu") return Activation::quick_gelu;
  ADD_FAILURE() << "unknown activation '" << name << "' in a fixture";
  return Activation::relu;
}

}  // namespace tessera::test
