// Shared by tests/distributed: the job's communicator, a global batch every rank builds alike,
// and each rank's share of it. Every rank runs every test; a test must make the same collective
// calls on every rank, so checks use EXPECT_* (never an ASSERT_* that would return early on one
// rank and leave the others waiting).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tessera/core/tensor.hpp"
#include "tessera/distributed/communicator.hpp"

namespace tessera::test {

// MPI_COMM_WORLD's duplicate, made once (main.cpp starts MPI first).
inline const distributed::Communicator& world() {
  static const distributed::Communicator comm = distributed::Communicator::world();
  return comm;
}

// Rank r holds rows [offset(r), offset(r) + rows(r)) of a global batch; the shards differ in size
// (2, 3, 4, ... rows), as the last batch of an epoch may.
struct Shards {
  std::vector<Index> rows, offset;
  Index total = 0;
  explicit Shards(int ranks, Index base = 2) {
    for (int r = 0; r < ranks; ++r) {
      offset.push_back(total);
      rows.push_back(base + r);
      total += base + r;
    }
  }
};

// Deterministic values in [-1, 1), the same on every rank.
template <class T>
Tensor<T, 2> global_matrix(Index rows, Index cols, double seed) {
  Tensor<T, 2> x(Shape<2>{rows, cols});
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = static_cast<T>(std::sin(seed + 0.7131 * static_cast<double>(i) +
                                          0.0173 * static_cast<double>(i * i % 97)));
  return x;
}

// Rows [r0, r0 + n) of x.
template <class T>
Tensor<T, 2> rows_of(const Tensor<T, 2>& x, Index r0, Index n) {
  Tensor<T, 2> out(Shape<2>{n, x.dim(1)});
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < x.dim(1); ++j) out(i, j) = x(r0 + i, j);
  return out;
}

// |actual - expected| <= tol * max(1, |expected|), entry by entry.
template <class T>
void expect_rows_close(const char* what, const Tensor<T, 2>& actual, const Tensor<T, 2>& expected,
                       Index r0, double tol) {
  EXPECT_EQ(actual.dim(1), expected.dim(1)) << what;
  if (actual.dim(1) != expected.dim(1)) return;
  double worst = 0;
  for (Index i = 0; i < actual.dim(0); ++i)
    for (Index j = 0; j < actual.dim(1); ++j) {
      const double e = static_cast<double>(expected(r0 + i, j));
      const double err =
          std::abs(static_cast<double>(actual(i, j)) - e) / std::max(1.0, std::abs(e));
      if (!(err <= worst)) worst = err;
    }
  EXPECT_LE(worst, tol) << what << " on rank " << world().rank();
}

inline void expect_scalar_close(const char* what, double actual, double expected, double tol) {
  EXPECT_LE(std::abs(actual - expected), tol * std::max(1.0, std::abs(expected)))
      << what << " on rank " << world().rank() << ": " << actual << " vs " << expected;
}

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-10;
}

}  // namespace tessera::test
