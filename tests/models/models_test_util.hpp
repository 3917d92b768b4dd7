// Helpers shared by the tests of tessera/models: fixture paths and a comparison scaled by the
// outputs' magnitude.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "tessera/core/tensor.hpp"

namespace tessera::test {

// tests/fixtures/models/<name>
inline std::string model_fixture(const std::string& name) {
  return std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/models/" + name;
}

// max |got - want| <= tol * max(1, max |want|): a bound relative to the outputs' scale.
template <class T, int R>
void expect_near_scaled(const Tensor<T, R>& got, const Tensor<T, R>& want, double tol,
                        const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  double scale = 1, err = 0;
  for (Index i = 0; i < want.size(); ++i)
    scale = std::max(scale, std::fabs(double(want.data()[i])));
  for (Index i = 0; i < want.size(); ++i)
    err = std::max(err, std::fabs(double(got.data()[i]) - double(want.data()[i])));
  EXPECT_LE(err, tol * scale) << what << ": max error " << err << ", scale " << scale;
}

}  // namespace tessera::test
