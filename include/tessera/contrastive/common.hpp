// tessera::contrastive: what the contrastive losses share — the Reduction, the checks of their
// arguments, and the tile schedule that keeps only blocks of the N x M similarity matrix alive.
//
// The losses over a batch of embeddings (InfoNCE, CLIP, SigLIP, hard-negative mining) all need
// every similarity a_i . b_j. Built in full, that matrix is N^2 scalars: 4 GB in float for
// N = 32768. The chunked paths cut it into tiles of block x block and only ever hold one tile per
// thread, so memory stays O(N D + threads block^2).
//
// Tiles run in steps (detail::for_each_tile): at step k, row block r is paired with column block
// (r + k) mod L, L = max(row blocks, column blocks). No two tiles of a step share a row block or
// a column block, so each tile updates the state of its rows and of its columns (running
// maxima, sums, gradient rows) without locks, and every row block meets its column blocks, and
// every column block its row blocks, in one fixed order whatever the thread count: results do
// not depend on how many threads ran.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/linear.hpp"

namespace tessera::contrastive {

// How per-example losses are combined. Each loss states what `mean` divides by.
enum class Reduction { mean, sum };

// Rows per block of the similarity matrix in the chunked paths (each tile is block x block).
inline constexpr Index kDefaultBlockSize = 256;

namespace detail {

using tessera::detail::raise;
using tessera::detail::shape_string;

template <class T>
using Matrix = RowMajorMatrix<T>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

// ceil(a / b) for a >= 0, b >= 1, without overflow for any b (a block size may be INT64_MAX).
inline Index ceil_div(Index a, Index b) { return a / b + (a % b != 0); }

// ---- argument checks -----------------------------------------------------------------------

// An embedding matrix [rows, dim] needs at least one row and one feature.
template <class X>
void check_embeddings(std::string_view fn, std::string_view arg, const X& x) {
  if (x.dim(0) < 1 || x.dim(1) < 1)
    raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(x.shape()),
                      ", expected [rows >= 1, dim >= 1]");
}

// b's feature dimension must equal a's.
template <class A, class B>
void check_same_dim(std::string_view fn, std::string_view a_name, const A& a,
                    std::string_view b_name, const B& b) {
  if (b.dim(1) != a.dim(1))
    raise<ShapeError>(fn, "argument '", b_name, "' has shape ", shape_string(b.shape()),
                      ", expected [", b.dim(0), ", ", a.dim(1), "] (the feature dimension of '",
                      a_name, "' ", shape_string(a.shape()), ")");
}

template <class A, class B>
void check_same_shape(std::string_view fn, std::string_view a_name, const A& a,
                      std::string_view b_name, const B& b) {
  if (b.shape() != a.shape())
    raise<ShapeError>(fn, "argument '", b_name, "' has shape ", shape_string(b.shape()),
                      ", expected ", shape_string(a.shape()), " (the shape of '", a_name, "')");
}

// A block size may be anything >= 1; one larger than the matrix means one tile (the tile
// schedule clamps it, so no product of a block index and a block size can overflow).
inline void check_block_size(std::string_view fn, Index block) {
  if (block < 1) raise<ValueError>(fn, "option 'block_size' is ", block, ", expected a value >= 1");
}

// An option that must be finite (and, with `positive`, > 0) in the scalar type T the loss
// computes in: 1e39 passes a check in double and is inf in float.
template <class T>
void check_option(std::string_view fn, std::string_view option, double v, bool positive) {
  const T t = static_cast<T>(v);
  if (!std::isfinite(t) || (positive && !(t > 0)))
    raise<ValueError>(
        fn, "option '", option, "' is ", v,
        positive ? ", expected a finite value > 0" : ", expected a finite value",
        std::isfinite(v) && !std::isfinite(t) ? " in the scalar type computed in" : "");
}

// A result whose every number is NaN: what a loss returns for a NaN parameter (a diverged
// logit scale, say), so the NaN shows instead of being hidden or turned into an error about an
// internal argument.
template <class Result, class X>
void fill_nan(Result& r, const X& shape_a, const X& shape_b) {
  using T = decltype(r.loss);
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  r.loss = nan;
  r.grad_a = Tensor<T, 2>(shape_a);
  r.grad_b = Tensor<T, 2>(shape_b);
  r.grad_a.as_array().setConstant(nan);
  r.grad_b.as_array().setConstant(nan);
}

inline void check_reduction(std::string_view fn, Reduction r) {
  if (r != Reduction::mean && r != Reduction::sum)
    raise<ValueError>(fn, "option 'reduction' is ", static_cast<int>(r),
                      ", expected Reduction::mean or Reduction::sum");
}

// A scalar argument that must be finite in the tensors' scalar type T.
template <class T>
void check_finite(std::string_view fn, std::string_view arg, double v) {
  if (!std::isfinite(static_cast<T>(v)))
    raise<ValueError>(fn, "argument '", arg, "' is ", v, ", expected a finite value");
}

// Integer labels out of any arithmetic tensor of rank 1 with `n` entries. Floating-point labels
// must hold whole numbers; with `binary` every label must be 0 or 1.
template <class L>
std::vector<std::int64_t> integer_labels(std::string_view fn, std::string_view arg, const L& labels,
                                         Index n, bool binary) {
  using S = scalar_t<L>;
  static_assert(rank_v<L> == 1, "labels are a vector [N]");
  static_assert(std::is_arithmetic_v<S>, "labels hold bool, integer or floating-point values");
  if (labels.dim(0) != n)
    raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(labels.shape()),
                      ", expected [", n, "]");
  std::vector<std::int64_t> out(static_cast<std::size_t>(n));
  const S* p = labels.data();
  for (Index i = 0; i < n; ++i) {
    const S v = p[i];
    bool ok = true;
    if constexpr (std::is_floating_point_v<S>)
      ok = std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 9.0e15;
    if (ok) out[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(v);
    if (ok && binary)
      ok = out[static_cast<std::size_t>(i)] == 0 || out[static_cast<std::size_t>(i)] == 1;
    if (!ok)
      raise<ValueError>(fn, "argument '", arg, "' holds ", +v, " at index ", i, ", expected ",
                        binary ? "0 (dissimilar) or 1 (similar)" : "a whole number (a class id)");
  }
  return out;
}

// ---- the tile schedule ---------------------------------------------------------------------

// One tile: rows [r0, r1) of the left operand against rows [c0, c1) of the right one.
struct Tile {
  Index row_block, col_block;
  Index r0, r1, c0, c1;
  Index rows() const noexcept { return r1 - r0; }
  Index cols() const noexcept { return c1 - c0; }
};

// Calls f(tile, workspace) once for every tile of an [n_rows, n_cols] matrix cut into blocks of
// `block`, step by step as described at the top of this file; the tiles of one step run on
// tessera's threads. Each thread default-constructs one `Workspace` per step and passes it to
// every tile it runs, so scratch buffers are reused from tile to tile.
template <class Workspace, class F>
void for_each_tile(Index n_rows, Index n_cols, Index block, F&& f) {
  block = std::min(block, std::max<Index>({n_rows, n_cols, 1}));
  const Index nr = ceil_div(n_rows, block), nc = ceil_div(n_cols, block);
  const Index steps = std::max(nr, nc);
  for (Index k = 0; k < steps; ++k) {
    parallel_for(nr, 1, [&](Index rb0, Index rb1) {
      Workspace ws;
      for (Index r = rb0; r < rb1; ++r) {
        const Index c = (r + k) % steps;
        if (c >= nc) continue;
        const Tile t{r,         c,
                     r * block, std::min(n_rows, (r + 1) * block),
                     c * block, std::min(n_cols, (c + 1) * block)};
        f(t, ws);
      }
    });
  }
}

// Per-thread scratch of the similarity losses: one tile of raw similarities a_i . b_j and one of
// dL/dlogit.
template <class T>
struct LogitTileWorkspace {
  Matrix<T> S, G;
};

// Rows [r0, r0 + rows) of a row-major matrix, as a tensor view for tessera::matmul_into.
template <class E>
TensorMap<E, 2> row_range(E* data, Index cols, Index r0, Index rows) {
  return TensorMap<E, 2>(data + r0 * cols, Shape<2>{rows, cols});
}

// S = X[r0:r1] Y[c0:c1]^T for the tile t (S resized to [rows, cols]); X and Y are [*, D].
// (Called as tile_similarity<T>: T cannot be deduced through the Eigen aliases.)
template <class T>
void tile_similarity(MatrixMap<const T> X, MatrixMap<const T> Y, const Tile& t, Matrix<T>& S) {
  const Index d = X.cols();
  S.resize(t.rows(), t.cols());
  // S: [rows, cols] = x[r0:r1] [rows, D] x (y[c0:c1] [cols, D])^T
  matmul_into(row_range(X.data(), d, t.r0, t.rows()), row_range(Y.data(), d, t.c0, t.cols()),
              TensorMap<T, 2>(S.data(), Shape<2>{t.rows(), t.cols()}), {.transpose_b = true});
}

// The backward of the tile's logits l = s X Y^T given G = dL/dl [rows, cols]:
// gX[r0:r1] += s G Y[c0:c1] and gY[c0:c1] += s G^T X[r0:r1].
template <class T>
void tile_backward(MatrixMap<const T> X, MatrixMap<const T> Y, const Tile& t, const Matrix<T>& G,
                   T s, MatrixMap<T> gX, MatrixMap<T> gY) {
  const Index d = X.cols();
  const TensorMap<const T, 2> g(G.data(), Shape<2>{t.rows(), t.cols()});
  // gX rows: [rows, D] += s [rows, cols] x [cols, D]
  matmul_into(g, row_range(Y.data(), d, t.c0, t.cols()), row_range(gX.data(), d, t.r0, t.rows()),
              {.alpha = static_cast<double>(s), .accumulate = true});
  // gY rows: [cols, D] += s [rows, cols]^T x [rows, D]
  matmul_into(g, row_range(X.data(), d, t.r0, t.rows()), row_range(gY.data(), d, t.c0, t.cols()),
              {.transpose_a = true, .alpha = static_cast<double>(s), .accumulate = true});
}

// A tile's share of the diagonal i == j: the global indices [begin, end) it holds.
inline std::pair<Index, Index> diagonal_span(const Tile& t) {
  const Index begin = std::max(t.r0, t.c0), end = std::min(t.r1, t.c1);
  return {begin, std::max(begin, end)};
}

// Sums in double of a float or double Eigen expression (the losses' scalar reductions run over
// up to N^2 terms).
template <class E>
double sum_double(const E& e) {
  return e.template cast<double>().sum();
}

// Online log-sum-exp (Milakov & Gimelshein 2018) of the logits s * S of one tile, folded into
// running per-row (or per-column) maxima and sums of exp(logit - max). `max` starts at -inf and
// `sum` at 0; once every tile is folded, logsumexp = max + log(sum). s >= 0, so the maximum of
// s * S is s times the maximum of S (rounding is monotone).
template <class T>
void fold_row_logsumexp(const Matrix<T>& S, T s, T* max, T* sum) {
  for (Index i = 0; i < S.rows(); ++i) {
    const auto row = S.row(i).array();
    const T m = std::max(max[i], s * row.maxCoeff());
    sum[i] = sum[i] * std::exp(max[i] - m) + (s * row - m).exp().sum();
    max[i] = m;
  }
}
template <class T>
void fold_col_logsumexp(const Matrix<T>& S, T s, T* max, T* sum) {
  using Arr = Eigen::Array<T, 1, Eigen::Dynamic>;
  const Index c = S.cols();
  Eigen::Map<Arr> mx(max, c), sm(sum, c);
  // Row by row, so every operation runs along contiguous memory.
  Arr tile_max = S.row(0).array();
  for (Index i = 1; i < S.rows(); ++i) tile_max = tile_max.max(S.row(i).array());
  const Arr m = mx.max(s * tile_max);
  for (Index j = 0; j < c; ++j) sm[j] *= std::exp(mx[j] - m[j]);
  for (Index i = 0; i < S.rows(); ++i) sm += (s * S.row(i).array() - m).exp();
  mx = m;
}

// Ordered sum of per-block partials: the same value for any thread count.
inline double ordered_sum(const std::vector<double>& parts) {
  double s = 0;
  for (double p : parts) s += p;
  return s;
}

}  // namespace detail
}  // namespace tessera::contrastive
