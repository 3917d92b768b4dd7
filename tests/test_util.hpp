// Helpers shared by tessera's tests: the scalar types every typed test runs over, their
// tolerances, and checks that an exception's message names what went wrong.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "tessera/core/error.hpp"

namespace tessera::test {

using Scalars = ::testing::Types<float, double>;

// Absolute/relative tolerance for comparing a vectorised kernel with a plain scalar loop.
template <class T>
constexpr T tol() {
  return std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
}

// |a - b| <= atol + rtol * |b|, with NaN never close and equal infinities close.
template <class T>
::testing::AssertionResult close(T a, T b, T atol, T rtol) {
  if (std::isnan(a) || std::isnan(b)) return ::testing::AssertionFailure() << a << " vs " << b << " (NaN)";
  if (a == b) return ::testing::AssertionSuccess();
  if (std::fabs(a - b) <= atol + rtol * std::fabs(b)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << a << " vs " << b << " differ by " << std::fabs(a - b);
}

}  // namespace tessera::test

// Expects `stmt` to throw `Exc` whose what() contains every one of the given substrings.
#define TESSERA_EXPECT_THROW_MSG(stmt, Exc, ...)                                          \
  do {                                                                                    \
    bool tessera_thrown_ = false;                                                         \
    try {                                                                                 \
      stmt;                                                                               \
    } catch (const Exc& e) {                                                              \
      tessera_thrown_ = true;                                                             \
      const std::string what_ = e.what();                                                 \
      for (const char* part_ : {__VA_ARGS__})                                             \
        EXPECT_NE(what_.find(part_), std::string::npos)                                   \
            << "message \"" << what_ << "\" lacks \"" << part_ << "\"";                   \
    }                                                                                     \
    EXPECT_TRUE(tessera_thrown_) << "expected " #Exc " from " #stmt;                      \
  } while (0)
