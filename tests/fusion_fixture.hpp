// Reading the PyTorch golden fixtures of the multimodal embeddings and fusion modules, written by
// tests/fixtures/make_fusion_fixtures.py into tests/fixtures/fusion/ (same layout as
// fixture.hpp's).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string>

#include "fixture.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::test {

// tests/fixtures/fusion/<name>.safetensors. (Fixture reads from fixtures/nn/; the fusion fixtures
// sit beside that directory.)
inline Fixture fusion_fixture(const std::string& name) { return Fixture("../fusion/" + name); }

inline std::array<Index, 2> pair_from(const nlohmann::json& j) {
  return {j.at(0).get<Index>(), j.at(1).get<Index>()};
}

// A bool key-padding mask input of a fixture (kind "blocked"), kept alive in `storage`.
inline std::optional<Mask> blocked_mask(const Fixture& fx, const std::string& name,
                                        Tensor<bool, 2>& storage) {
  if (!fx.has_input(name)) return std::nullopt;
  EXPECT_EQ(fx.forward.value(name, std::string()), "blocked") << name;
  storage = fx.input<bool, 2>(name);
  return Mask::blocked(storage);
}

// Checks `actual` against a fixture's expected output at parity_tol<T>() (fixture.hpp's measure:
// |a - e| / (1 + |e|)) and prints the worst error, so a run shows the parity reached.
template <class A, class E>
void expect_parity(const A& actual, const E& expected, const std::string& what) {
  using T = typename A::Scalar;
  double worst = 0;
  if (actual.shape() == expected.shape())
    for (Index i = 0; i < actual.size(); ++i)
      worst = std::max(worst, std::fabs(double(actual.data()[i]) - double(expected.data()[i])) /
                                  (1.0 + std::fabs(double(expected.data()[i]))));
  std::printf("[ parity   ] %s (%s): worst error %.3g\n", what.c_str(),
              std::is_same_v<T, float> ? "float" : "double", worst);
  expect_tensor_near(actual, expected, parity_tol<T>(), what);
}

}  // namespace tessera::test
