// What tessera's distributed contrastive losses share: the exchange of every rank's shapes and
// scalars, checked the same way on every rank, and the tiled passes of one rank's rows against
// the embeddings gathered from all ranks.
//
// The gathered losses (CLIP, InfoNCE) follow open_clip's `gather_features` + local loss
// (https://github.com/mlfoundations/open_clip, src/open_clip/loss.py): every rank gathers every
// rank's embeddings and computes the loss terms of its own rows against the global batch. Here
// each rank also computes its own rows' gradients in full (the column statistics it needs are
// gathered too, a few scalars per example), so no gradient is sent back: the gradients a rank
// returns are exactly those its rows get in the single-process loss over the concatenated batch.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
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
  Index offset_a = 0, offset_b = 0;  // this rank's first row in the concatenation
  Index total_a = 0, total_b = 0;
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
      if (std::bit_cast<std::uint64_t>(at(r, i)) != std::bit_cast<std::uint64_t>(at(0, i)))
        tessera::detail::raise<ValueError>(fn, "argument '", s.first, "' is ", at(r, i),
                                           " on rank ", r, " and ", at(0, i),
                                           " on rank 0, expected the same value on every rank");
      ++i;
    }
    g.rows_a.push_back(ra);
    g.rows_b.push_back(rb);
    if (r < static_cast<std::size_t>(comm.rank())) g.offset_a += ra, g.offset_b += rb;
    g.total_a += ra;
    g.total_b += rb;
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

// A vector of one value per local row, gathered from every rank: [sum rows].
template <class T>
Vector<T> gather_vector(const Communicator& comm, const Vector<T>& v,
                        const std::vector<Index>& rows) {
  Index total = 0;
  for (Index r : rows) total += r;
  Vector<T> out(total);
  comm.all_gather(std::span<const T>(v.data(), static_cast<std::size_t>(v.size())),
                  std::span<T>(out.data(), static_cast<std::size_t>(out.size())),
                  std::span<const Index>(rows));
  return out;
}

// The logsumexp of each local row of the logits l = s X Y^T, as max + log (kept apart so the
// large terms cancel first), and the positive's logit l_{i, offset + i}.
template <class T>
struct RowStats {
  Vector<T> max, log, positive;
};

// X [n, D] this rank's rows, Y [M, D] every rank's; row i's positive is Y's row offset + i.
template <class T>
RowStats<T> row_stats(MatrixMap<const T> X, MatrixMap<const T> Y, Index offset, T s, Index block) {
  using namespace contrastive::detail;
  const Index n = X.rows(), m = Y.rows();
  RowStats<T> st{Vector<T>::Constant(n, -std::numeric_limits<T>::infinity()), Vector<T>::Zero(n),
                 Vector<T>::Zero(n)};
  for_each_tile<LogitTileWorkspace<T>>(n, m, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(X, Y, t, ws.S);
    fold_row_logsumexp(ws.S, s, st.max.data() + t.r0, st.log.data() + t.r0);
    // Local rows whose positive column offset + i lies in this tile.
    const Index i0 = std::max(t.r0, t.c0 - offset), i1 = std::min(t.r1, t.c1 - offset);
    for (Index i = i0; i < i1; ++i) st.positive[i] = s * ws.S(i - t.r0, offset + i - t.c0);
  });
  st.log = st.log.array().log().matrix();
  return st;
}

// sum_i (max_i - positive_i) + log_i: each row's cross-entropy, summed in double.
template <class T>
double cross_entropy_sum(const RowStats<T>& st) {
  return contrastive::detail::sum_double((st.max - st.positive).array() + st.log.array());
}

// gX += s G Y for the local rows X [n, D] against Y [M, D] (every rank's), with
//   G_ij = alpha softmax over the row (from `rows`, local) + beta softmax over the column
//          (col_max, col_log: [M], every rank's) - (alpha + beta) [j == offset + i];
// returns sum_ij G_ij (X Y^T)_ij in double, per row block and then in order (so the same for
// any thread count). alpha = 0 leaves the row term out (`rows` unused), beta = 0 the column
// term (col_max and col_log unused).
template <class T>
double row_gradient(MatrixMap<const T> X, MatrixMap<const T> Y, Index offset, T s, T alpha,
                    const RowStats<T>& rows, T beta, const Vector<T>* col_max,
                    const Vector<T>* col_log, Index block, MatrixMap<T> gX) {
  using namespace contrastive::detail;
  const Index n = X.rows(), m = Y.rows(), d = X.cols();
  block = std::min(block, std::max<Index>({n, m, 1}));
  std::vector<double> gs(static_cast<std::size_t>(ceil_div(n, block)), 0.0);
  for_each_tile<LogitTileWorkspace<T>>(n, m, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(X, Y, t, ws.S);
    ws.G.resize(ws.S.rows(), ws.S.cols());
    for (Index i = 0; i < ws.S.rows(); ++i) {
      const auto l = s * ws.S.row(i).array();
      if (alpha != T(0))
        ws.G.row(i).array() = alpha * ((l - rows.max[t.r0 + i]) - rows.log[t.r0 + i]).exp();
      else
        ws.G.row(i).setZero();
      if (beta != T(0)) {
        const auto cm = col_max->segment(t.c0, t.cols()).transpose().array();
        const auto cl = col_log->segment(t.c0, t.cols()).transpose().array();
        ws.G.row(i).array() += beta * ((l - cm) - cl).exp();
      }
    }
    const Index i0 = std::max(t.r0, t.c0 - offset), i1 = std::min(t.r1, t.c1 - offset);
    for (Index i = i0; i < i1; ++i) ws.G(i - t.r0, offset + i - t.c0) -= alpha + beta;
    gs[static_cast<std::size_t>(t.row_block)] += sum_double(ws.G.array() * ws.S.array());
    const TensorMap<const T, 2> g(ws.G.data(), Shape<2>{t.rows(), t.cols()});
    matmul_into(g, row_range(Y.data(), d, t.c0, t.cols()), row_range(gX.data(), d, t.r0, t.rows()),
                {.alpha = static_cast<double>(s), .accumulate = true});
  });
  return ordered_sum(gs);
}

// The block size a loss's options ask for: the given one, or a single tile when materialized.
inline Index effective_block(Index block, bool materialized) {
  return materialized ? std::numeric_limits<Index>::max() : block;
}

}  // namespace tessera::distributed::impl
