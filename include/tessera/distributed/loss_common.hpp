// What tessera's distributed contrastive losses share: the exchange of every rank's shapes and
// scalars, checked the same way on every rank, and the tiled passes of one rank's rows against
// the embeddings gathered from all ranks.
//
// The gathered losses (CLIP, InfoNCE) follow open_clip's `gather_features` + local loss
// (https://github.com/mlfoundations/open_clip, src/open_clip/loss.py): every rank gathers every
// rank's candidates (texts) and computes its own rows of the logits against the global batch, in
// the single-process losses' tiles, twice (statistics, then gradients, each logit recomputed bit
// for bit). The columns' statistics are merged over the ranks (two all-reduces of N scalars), and
// each rank's share of the candidates' gradients is summed onto their owners (reduce-scatter), as
// open_clip's gather_with_grad backward does.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/contrastive/common.hpp"
#include "tessera/distributed/communicator.hpp"

namespace tessera::distributed::impl {

using contrastive::detail::Matrix;
using contrastive::detail::Tile;
using contrastive::detail::Vector;

// Every rank's rows of the two operands, the shared feature dimension, and where this rank's rows
// start in the concatenated batch.
struct GatheredShapes {
  std::vector<Index> rows_a, rows_b;  // per rank
  Index dim = 0;
  Index offset_a = 0;  // this rank's first row in the concatenation (a and b alike)
  Index total_a = 0;
};

// Exchanges (rows, dim) of a and b and the loss's scalars between the ranks, then checks them;
// every rank sees every rank's values, so every rank throws the same error and none is left
// waiting in a later collective. Checks: each rank's a and b non-empty with the same feature
// dimension on every rank, a and b the same shape on each rank when `same_rows`, and each scalar
// bit-identical on every rank (a model whose parameters differ between ranks is an error, not a
// silently averaged answer).
template <class AV, class BV>
GatheredShapes gather_shapes(const Communicator& comm, std::string_view fn, const AV& a,
                             const BV& b, bool same_rows,
                             std::initializer_list<std::pair<std::string_view, double>> scalars) {
  const std::size_t k = 4 + scalars.size();
  std::vector<double> mine{static_cast<double>(a.dim(0)), static_cast<double>(a.dim(1)),
                           static_cast<double>(b.dim(0)), static_cast<double>(b.dim(1))};
  for (const auto& s : scalars) mine.push_back(s.second);
  const auto p = static_cast<std::size_t>(comm.size());
  std::vector<double> all(k * p);
  const std::vector<Index> counts(p, static_cast<Index>(k));
  comm.all_gather(std::span<const double>(mine), std::span<double>(all), counts);

  GatheredShapes g;
  const auto at = [&](std::size_t r, std::size_t i) { return all[r * k + i]; };
  for (std::size_t r = 0; r < p; ++r) {
    const Index ra = static_cast<Index>(at(r, 0)), ca = static_cast<Index>(at(r, 1));
    const Index rb = static_cast<Index>(at(r, 2)), cb = static_cast<Index>(at(r, 3));
    if (ra < 1 || ca < 1 || rb < 1 || cb < 1)
      tessera::detail::raise<ShapeError>(fn, "rank ", r, " has arguments 'a' [", ra, ", ", ca,
                                         "] and 'b' [", rb, ", ", cb,
                                         "], expected [rows >= 1, dim >= 1] on every rank");
    if (cb != ca || (same_rows && rb != ra))
      tessera::detail::raise<ShapeError>(
          fn, "rank ", r, " has arguments 'a' [", ra, ", ", ca, "] and 'b' [", rb, ", ", cb,
          "], expected ", same_rows ? "the same shape" : "the same feature dimension");
    if (ca != static_cast<Index>(at(0, 1)))
      tessera::detail::raise<ShapeError>(fn, "rank ", r, " has embeddings of dimension ", ca,
                                         ", expected ", static_cast<Index>(at(0, 1)),
                                         " (rank 0's): every rank embeds into the same space");
    std::size_t i = 4;
    for (const auto& s : scalars) {
      if (std::bit_cast<std::uint64_t>(at(r, i)) != std::bit_cast<std::uint64_t>(at(0, i))) {
        // Options are "opts.<name>"; an unset optional one travels as NaN.
        const bool option = s.first.starts_with("opts.");
        const auto show = [&](double v) {
          std::ostringstream os;
          if (option && std::isnan(v))
            os << "unset";
          else
            os << v;
          return os.str();
        };
        tessera::detail::raise<ValueError>(fn, option ? "option '" : "argument '", s.first, "' is ",
                                           show(at(r, i)), " on rank ", r, " and ", show(at(0, i)),
                                           " on rank 0, expected the same value on every rank");
      }
      ++i;
    }
    g.rows_a.push_back(ra);
    g.rows_b.push_back(rb);
    if (r < static_cast<std::size_t>(comm.rank())) g.offset_a += ra;
    g.total_a += ra;
  }
  g.dim = static_cast<Index>(at(0, 1));
  return g;
}

// Every rank's rows [rows[r], dim] of x, concatenated in rank order: [sum rows, dim].
template <class T>
Tensor<T, 2> gather_rows(const Communicator& comm, MatrixMap<const T> x,
                         const std::vector<Index>& rows, Index dim) {
  Index total = 0;
  std::vector<Index> counts;
  for (Index r : rows) counts.push_back(r * dim), total += r;
  Tensor<T, 2> out(Shape<2>{total, dim});
  comm.all_gather(std::span<const T>(x.data(), static_cast<std::size_t>(x.size())),
                  std::span<T>(out.data(), static_cast<std::size_t>(out.size())), counts);
  return out;
}

// The logsumexp of each local row of the logits l = s X Y^T, as max + log (kept apart so the
// large terms cancel first), and the positive's logit l_{i, offset + i}.
template <class T>
struct RowStats {
  Vector<T> max, log, positive;
};

// The logsumexp of every column of l over ALL ranks' rows, as max + log: each rank folds its
// own rows into `max` and `sum` (sweep 1), then combine_columns() merges the ranks'.
template <class T>
struct ColumnStats {
  Vector<T> max, log;
};

// Sweep 1 over this rank's block of the logits, X [n, D] (its rows) against Y [M, D] (every
// rank's): the rows' logsumexps and positives (row i's positive is Y's row offset + i) and, when
// `cols` is given, this rank's share of every column's (max and sum of exp, not yet logged).
template <class T>
RowStats<T> block_stats(MatrixMap<const T> X, MatrixMap<const T> Y, Index offset, T s, Index block,
                        ColumnStats<T>* cols) {
  using namespace contrastive::detail;
  const Index n = X.rows(), m = Y.rows();
  constexpr T inf = std::numeric_limits<T>::infinity();
  RowStats<T> st{Vector<T>::Constant(n, -inf), Vector<T>::Zero(n), Vector<T>::Zero(n)};
  if (cols) *cols = ColumnStats<T>{Vector<T>::Constant(m, -inf), Vector<T>::Zero(m)};
  // The schedule never runs two tiles of one row block or one column block at once.
  for_each_tile<LogitTileWorkspace<T>>(n, m, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(X, Y, t, ws.S);
    fold_row_logsumexp(ws.S, s, st.max.data() + t.r0, st.log.data() + t.r0);
    if (cols) fold_col_logsumexp(ws.S, s, cols->max.data() + t.c0, cols->log.data() + t.c0);
    // Local rows whose positive column offset + i lies in this tile.
    const Index i0 = std::max(t.r0, t.c0 - offset), i1 = std::min(t.r1, t.c1 - offset);
    for (Index i = i0; i < i1; ++i) st.positive[i] = s * ws.S(i - t.r0, offset + i - t.c0);
  });
  st.log = st.log.array().log().matrix();
  return st;
}

// Merges the ranks' shares of the column statistics, the same on every rank: the maximum is
// exact (MPI_MAX), each rank rescales its sum of exp to it, and the sums are added
// (MPI_SUM). `cols.log` holds the sums on entry, their logs on return.
template <class T>
void combine_columns(const Communicator& comm, ColumnStats<T>& cols) {
  Vector<T> global_max = cols.max;
  comm.all_reduce_max(std::span<T>(global_max.data(), static_cast<std::size_t>(global_max.size())));
  for (Index j = 0; j < cols.max.size(); ++j)
    cols.log[j] = cols.max[j] == -std::numeric_limits<T>::infinity()
                      ? T(0)
                      : cols.log[j] * std::exp(cols.max[j] - global_max[j]);
  comm.all_reduce_sum(std::span<T>(cols.log.data(), static_cast<std::size_t>(cols.log.size())));
  cols.max = global_max;
  cols.log = cols.log.array().log().matrix();
}

// sum_i (max_i - positive_i) + log_i over the given rows, in double.
template <class T>
double cross_entropy_sum(const Vector<T>& max, const Vector<T>& positive, const Vector<T>& log) {
  return contrastive::detail::sum_double((max - positive).array() + log.array());
}

// Sweep 2 over this rank's block of the logits (X [n, D] its rows, Y [M, D] every rank's):
// gX += s G Y (this rank's rows, whole) and gY += s G^T X (every column, this rank's share) with
//   G_ij = alpha softmax over row i (`rows`) + beta softmax over column j (`cols`, merged)
//          - (alpha + beta) [j == offset + i];
// the tiles are those of sweep 1, so every logit is recomputed bit for bit as its statistics
// saw it (a softmax whose terms sum to 1 to rounding, on which the positive's G = p - 1
// depends). Returns sum_ij G_ij (X Y^T)_ij in double, per row block and then in order (the
// same for any thread count). beta = 0 leaves the column term out (`cols` unused).
template <class T>
double block_gradient(MatrixMap<const T> X, MatrixMap<const T> Y, Index offset, T s, T alpha,
                      const RowStats<T>& rows, T beta, const ColumnStats<T>* cols, Index block,
                      MatrixMap<T> gX, MatrixMap<T> gY) {
  using namespace contrastive::detail;
  const Index n = X.rows(), m = Y.rows();
  block = std::min(block, std::max<Index>({n, m, 1}));
  std::vector<double> gs(static_cast<std::size_t>(ceil_div(n, block)), 0.0);
  for_each_tile<LogitTileWorkspace<T>>(n, m, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(X, Y, t, ws.S);
    ws.G.resize(ws.S.rows(), ws.S.cols());
    for (Index i = 0; i < ws.S.rows(); ++i) {
      const auto l = s * ws.S.row(i).array();
      ws.G.row(i).array() = alpha * ((l - rows.max[t.r0 + i]) - rows.log[t.r0 + i]).exp();
      if (beta != T(0)) {
        const auto cm = cols->max.segment(t.c0, t.cols()).transpose().array();
        const auto cl = cols->log.segment(t.c0, t.cols()).transpose().array();
        ws.G.row(i).array() += beta * ((l - cm) - cl).exp();
      }
    }
    const Index i0 = std::max(t.r0, t.c0 - offset), i1 = std::min(t.r1, t.c1 - offset);
    for (Index i = i0; i < i1; ++i) ws.G(i - t.r0, offset + i - t.c0) -= alpha + beta;
    gs[static_cast<std::size_t>(t.row_block)] += sum_double(ws.G.array() * ws.S.array());
    tile_backward<T>(X, Y, t, ws.G, s, gX, gY);
  });
  return ordered_sum(gs);
}

// The rows of a gradient over every rank's rows [sum rows, dim] that belong to this rank, summed
// over the ranks' shares (MPI_Reduce_scatter).
template <class T>
Tensor<T, 2> sum_own_rows(const Communicator& comm, const Tensor<T, 2>& shares,
                          const std::vector<Index>& rows, Index dim) {
  std::vector<Index> counts;
  for (Index r : rows) counts.push_back(r * dim);
  Tensor<T, 2> out(Shape<2>{rows[static_cast<std::size_t>(comm.rank())], dim});
  comm.reduce_scatter_sum(
      std::span<const T>(shares.data(), static_cast<std::size_t>(shares.size())),
      std::span<T>(out.data(), static_cast<std::size_t>(out.size())), counts);
  return out;
}

// The block size a loss's options ask for: the given one, or a single tile when materialized.
inline Index effective_block(Index block, bool materialized) {
  return materialized ? std::numeric_limits<Index>::max() : block;
}

}  // namespace tessera::distributed::impl
