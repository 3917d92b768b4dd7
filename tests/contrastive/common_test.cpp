// Tests for tessera/contrastive/common.hpp: the tile schedule (every tile once, no two tiles of a
// step sharing a row or a column block, the same order per block for any thread count), the
// online logsumexp folds, the label conversion and the argument checks with their messages.
#include "tessera/contrastive/common.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "contrastive_test_util.hpp"
#include "test_util.hpp"

namespace common_test {

using tessera::Index;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
namespace cd = tessera::contrastive::detail;

struct NoWorkspace {};

// Every (row block, column block) visited once; per row block the column order c = r, r+1, ...
// (mod max(blocks)), per column block the row order r = c, c-1, ...; concurrently running tiles
// never share a block.
void check_schedule(Index n_rows, Index n_cols, Index block, int threads) {
  tessera::set_num_threads(threads);
  const Index nr = cd::ceil_div(n_rows, block), nc = cd::ceil_div(n_cols, block);
  const Index steps = std::max(nr, nc);
  std::vector<std::atomic<int>> row_busy(static_cast<std::size_t>(nr)),
      col_busy(static_cast<std::size_t>(nc));
  std::vector<std::vector<Index>> row_order(static_cast<std::size_t>(nr)),
      col_order(static_cast<std::size_t>(nc));
  std::mutex mu;
  std::atomic<int> conflicts{0};
  std::vector<int> seen(static_cast<std::size_t>(nr * nc), 0);
  cd::for_each_tile<NoWorkspace>(n_rows, n_cols, block, [&](const cd::Tile& t, NoWorkspace&) {
    if (row_busy[static_cast<std::size_t>(t.row_block)].fetch_add(1) != 0) ++conflicts;
    if (col_busy[static_cast<std::size_t>(t.col_block)].fetch_add(1) != 0) ++conflicts;
    std::this_thread::sleep_for(std::chrono::microseconds(50));  // let tiles overlap
    {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(t.r0, t.row_block * block);
      EXPECT_EQ(t.r1, std::min(n_rows, t.r0 + block));
      EXPECT_EQ(t.c0, t.col_block * block);
      EXPECT_EQ(t.c1, std::min(n_cols, t.c0 + block));
      ++seen[static_cast<std::size_t>(t.row_block * nc + t.col_block)];
      row_order[static_cast<std::size_t>(t.row_block)].push_back(t.col_block);
      col_order[static_cast<std::size_t>(t.col_block)].push_back(t.row_block);
    }
    row_busy[static_cast<std::size_t>(t.row_block)].fetch_sub(1);
    col_busy[static_cast<std::size_t>(t.col_block)].fetch_sub(1);
  });
  EXPECT_EQ(conflicts.load(), 0);
  for (int s : seen) EXPECT_EQ(s, 1);
  for (Index r = 0; r < nr; ++r) {
    std::vector<Index> want;
    for (Index k = 0; k < steps; ++k)
      if ((r + k) % steps < nc) want.push_back((r + k) % steps);
    EXPECT_EQ(row_order[static_cast<std::size_t>(r)], want) << "row block " << r;
  }
  for (Index c = 0; c < nc; ++c) {
    std::vector<Index> want;
    for (Index k = 0; k < steps; ++k) {
      const Index r = ((c - k) % steps + steps) % steps;
      if (r < nr) want.push_back(r);
    }
    EXPECT_EQ(col_order[static_cast<std::size_t>(c)], want) << "column block " << c;
  }
  tessera::set_num_threads(tessera::max_threads());
}

TEST(ContrastiveTiles, EveryTileOnceWithoutConflictsInAFixedOrder) {
  for (int threads : {1, 2, 4})
    for (auto [r, c, b] : {std::tuple<Index, Index, Index>{10, 10, 3},
                           {10, 10, 10},
                           {10, 10, 64},
                           {7, 23, 4},
                           {23, 7, 4},
                           {1, 1, 1},
                           {16, 16, 4}}) {
      SCOPED_TRACE(::testing::Message()
                   << r << "x" << c << " block " << b << ", " << threads << " threads");
      check_schedule(r, c, b, threads);
    }
}

TEST(ContrastiveTiles, WorkspaceIsReusedWithinAStep) {
  // One workspace per thread and step: with one thread, the tiles of a step share it.
  tessera::set_num_threads(1);
  struct Counter {
    int uses = 0;
  };
  std::vector<int> uses;
  cd::for_each_tile<Counter>(12, 12, 4,
                             [&](const cd::Tile&, Counter& c) { uses.push_back(++c.uses); });
  EXPECT_EQ(uses, (std::vector<int>{1, 2, 3, 1, 2, 3, 1, 2, 3}));
  tessera::set_num_threads(tessera::max_threads());
}

TEST(ContrastiveTiles, DiagonalSpan) {
  EXPECT_EQ(cd::diagonal_span(cd::Tile{0, 0, 0, 4, 0, 4}), (std::pair<Index, Index>{0, 4}));
  EXPECT_EQ(cd::diagonal_span(cd::Tile{1, 0, 4, 8, 0, 4}).first,
            cd::diagonal_span(cd::Tile{1, 0, 4, 8, 0, 4}).second);  // empty
  EXPECT_EQ(cd::diagonal_span(cd::Tile{0, 0, 0, 4, 0, 3}), (std::pair<Index, Index>{0, 3}));
  EXPECT_EQ(cd::diagonal_span(cd::Tile{1, 1, 3, 6, 2, 4}), (std::pair<Index, Index>{3, 4}));
}

template <class T>
class ContrastiveFoldTest : public ::testing::Test {};
TYPED_TEST_SUITE(ContrastiveFoldTest, tessera::test::Scalars);

// Folding column slices one at a time gives the logsumexp of the whole rows (and columns).
TYPED_TEST(ContrastiveFoldTest, OnlineLogSumExpMatchesDirect) {
  using T = TypeParam;
  const Index rows = 5, cols = 23;
  const T s = T(7.5);
  const auto x = tessera::test::random_rows<T>(rows, cols, 3, -20, 20);
  const cd::Matrix<T> S = x.as_matrix();
  cd::Vector<T> rmax = cd::Vector<T>::Constant(rows, -std::numeric_limits<T>::infinity());
  cd::Vector<T> rsum = cd::Vector<T>::Zero(rows);
  for (Index c0 = 0; c0 < cols; c0 += 4) {
    const Index w = std::min<Index>(4, cols - c0);
    const cd::Matrix<T> part = S.middleCols(c0, w);
    cd::fold_row_logsumexp(part, s, rmax.data(), rsum.data());
  }
  cd::Vector<T> cmax = cd::Vector<T>::Constant(cols, -std::numeric_limits<T>::infinity());
  cd::Vector<T> csum = cd::Vector<T>::Zero(cols);
  for (Index r0 = 0; r0 < rows; r0 += 2) {
    const cd::Matrix<T> part = S.middleRows(r0, std::min<Index>(2, rows - r0));
    cd::fold_col_logsumexp(part, s, cmax.data(), csum.data());
  }
  // logsumexp of s * v in long double, v a row or a column of S.
  const auto direct = [&](const auto& v) {
    long double m = -INFINITY, z = 0;
    for (Index k = 0; k < v.size(); ++k) m = std::max<long double>(m, (long double)s * v[k]);
    for (Index k = 0; k < v.size(); ++k) z += std::exp((long double)s * v[k] - m);
    return double(m + std::log(z));
  };
  for (Index i = 0; i < rows; ++i)
    EXPECT_TRUE(tessera::test::close<double>(double(rmax[i] + std::log(rsum[i])), direct(S.row(i)),
                                             0, tessera::test::agree_tol<T>()));
  for (Index j = 0; j < cols; ++j)
    EXPECT_TRUE(tessera::test::close<double>(double(cmax[j] + std::log(csum[j])), direct(S.col(j)),
                                             0, tessera::test::agree_tol<T>()));
}

TEST(ContrastiveLabels, ConvertsAndChecks) {
  constexpr std::string_view fn = "tessera::contrastive::f";
  EXPECT_EQ(cd::integer_labels(fn, "labels", Tensor<bool, 1>{true, false}, 2, true),
            (std::vector<std::int64_t>{1, 0}));
  EXPECT_EQ(cd::integer_labels(fn, "labels", Tensor<float, 1>{1.0f, 0.0f, 1.0f}, 3, true),
            (std::vector<std::int64_t>{1, 0, 1}));
  EXPECT_EQ(cd::integer_labels(fn, "labels", Tensor<std::int64_t, 1>{-3, 7}, 2, false),
            (std::vector<std::int64_t>{-3, 7}));
  TESSERA_EXPECT_THROW_MSG(cd::integer_labels(fn, "labels", Tensor<int, 1>{1, 0}, 3, true),
                           ShapeError, "tessera::contrastive::f", "'labels'", "[2]",
                           "expected [3]");
  TESSERA_EXPECT_THROW_MSG(cd::integer_labels(fn, "labels", Tensor<int, 1>{1, 2}, 2, true),
                           ValueError, "'labels'", "holds 2 at index 1", "0 (dissimilar) or 1");
  TESSERA_EXPECT_THROW_MSG(cd::integer_labels(fn, "labels", Tensor<double, 1>{0.5}, 1, false),
                           ValueError, "holds 0.5 at index 0", "a whole number");
  TESSERA_EXPECT_THROW_MSG(
      cd::integer_labels(fn, "labels", Tensor<double, 1>{0, std::nan("")}, 2, false), ValueError,
      "at index 1");
  TESSERA_EXPECT_THROW_MSG(cd::integer_labels(fn, "labels", Tensor<float, 1>{INFINITY}, 1, false),
                           ValueError, "at index 0");
}

TEST(ContrastiveChecks, Messages) {
  constexpr std::string_view fn = "tessera::contrastive::f";
  const Tensor<float, 2> a(3, 4), empty_rows(0, 4), empty_dim(3, 0), b(3, 5);
  EXPECT_NO_THROW(cd::check_embeddings(fn, "a", a));
  TESSERA_EXPECT_THROW_MSG(cd::check_embeddings(fn, "a", empty_rows), ShapeError, "'a'", "[0, 4]",
                           "rows >= 1");
  TESSERA_EXPECT_THROW_MSG(cd::check_embeddings(fn, "a", empty_dim), ShapeError, "[3, 0]",
                           "dim >= 1");
  TESSERA_EXPECT_THROW_MSG(cd::check_same_dim(fn, "a", a, "b", b), ShapeError, "'b'", "[3, 5]",
                           "expected [3, 4]");
  TESSERA_EXPECT_THROW_MSG(cd::check_same_shape(fn, "a", a, "b", b), ShapeError, "'b'", "[3, 5]",
                           "expected [3, 4]");
  TESSERA_EXPECT_THROW_MSG(cd::check_block_size(fn, 0), ValueError, "'block_size' is 0", ">= 1");
  TESSERA_EXPECT_THROW_MSG(cd::check_reduction(fn, static_cast<tessera::contrastive::Reduction>(7)),
                           ValueError, "'reduction' is 7");
  TESSERA_EXPECT_THROW_MSG(cd::check_finite<float>(fn, "t", 1e39), ValueError, "'t'", "finite");
  EXPECT_NO_THROW(cd::check_finite<double>(fn, "t", 1e39));
}

}  // namespace common_test
