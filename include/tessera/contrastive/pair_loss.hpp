// tessera::contrastive::pair_loss: the margin contrastive loss on pairs (Hadsell, Chopra & LeCun
// 2006, Dimensionality Reduction by Learning an Invariant Mapping), with its gradients, and an
// option that mines each anchor's hardest negative in the batch.
//
//   x1, x2 [N, D]; d_i = ||x1_i - x2_i||_2.
//   PairLossForm::squared (Hadsell et al., with m_pos = 0):
//     similar pair:    1/2 [d - m_pos]_+^2        dissimilar pair: 1/2 [m - d]_+^2
//   PairLossForm::hinge (pytorch-metric-learning's ContrastiveLoss):
//     similar pair:    [d - m_pos]_+              dissimilar pair: [m - d]_+
//   with m = options.margin and m_pos = options.pos_margin.
//
// PairMining::none: labels [N] says which pairs are similar: 1 (similar) or 0 (dissimilar);
//   L_i = y_i similar(d_i) + (1 - y_i) dissimilar(d_i).
// PairMining::hardest_negative: labels [N] are class ids; x1_i (the anchor) and x2_i (its
//   positive) both belong to class labels_i. The negatives of anchor i are the rows x2_j of
//   another class (labels_j != labels_i); its hardest negative j*(i) is the closest of them,
//   found as the smallest ||x2_j||^2 - 2 x1_i . x2_j (the squared distance less the anchor's own
//   ||x1_i||^2, from an Eigen product), ties going to the smallest j. Then
//   L_i = similar(||x1_i - x2_i||) + dissimilar(||x1_i - x2_j*||),
//   the second term left out when anchor i has no negative in the batch. The selection is
//   treated as a constant, as argmin + gather in PyTorch; distances in the loss are computed
//   from the differences, not from the product.
//
// Reduction::mean divides the sum of the L_i by N, Reduction::sum does not.
// The gradient of a term through d is f'(d) (x1 - x2) / d, taken as 0 at d = 0 (PyTorch's norm
// gives 0 there too), so identical vectors never give NaN.
//
//   auto r = tessera::contrastive::pair_loss(x1, x2, labels, {.margin = 2.0});
//   r.loss; r.grad_x1; r.grad_x2;  // [N, D]
//
// Mining needs every distance x1_i to x2_j; the chunked path (the default) keeps one block x
// block tile of them per thread, `.materialized = true` builds all N x N.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "tessera/contrastive/common.hpp"
#include "tessera/contrastive/dispatch.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera::contrastive {

enum class PairLossForm { squared, hinge };
enum class PairMining { none, hardest_negative };

struct PairLossOptions {
  PairLossForm form = PairLossForm::squared;
  double margin = 1.0;      // m: dissimilar pairs closer than this are pushed apart (>= 0)
  double pos_margin = 0.0;  // m_pos: similar pairs further apart are pulled together (>= 0)
  PairMining mining = PairMining::none;
  Reduction reduction = Reduction::mean;  // mean divides by N
  Index block_size = kDefaultBlockSize;   // hardest_negative: tile of the distance matrix
  bool materialized = false;              // hardest_negative: the full N x N distances instead
};

template <class T>
struct PairLossResult {
  T loss{};
  Tensor<T, 2> grad_x1;  // dL/dx1 [N, D]
  Tensor<T, 2> grad_x2;  // dL/dx2 [N, D]
  // hardest_negative: j*(i) for every anchor, -1 where it has no negative. Empty otherwise.
  Tensor<Index, 1> hardest_negative;
};

namespace detail {

// The two branches of one form: each returns (loss, dloss/dd) at distance d.
template <class T>
struct PairTerms {
  PairLossForm form;
  T margin, pos_margin;

  std::pair<T, T> similar(T d) const {
    const T e = d - pos_margin;
    if (!(e > 0)) return {T(0), T(0)};
    return form == PairLossForm::squared ? std::pair<T, T>{e * e / 2, e} : std::pair<T, T>{e, 1};
  }
  std::pair<T, T> dissimilar(T d) const {
    const T e = margin - d;
    if (!(e > 0)) return {T(0), T(0)};
    return form == PairLossForm::squared ? std::pair<T, T>{e * e / 2, -e}
                                         : std::pair<T, T>{e, T(-1)};
  }
};

// One term f(||u - v||): returns f and adds w f'(d) (u - v) / d to gu and subtracts it from gv
// (nothing at d = 0). A NaN in u or v makes d NaN, and then the term and both gradient rows NaN:
// the hinge's [x]_+ must not turn it into a plausible 0.
template <class T, class U, class V, class GU, class GV>
T pair_term(const U& u, const V& v, bool similar, const PairTerms<T>& terms, T w, GU&& gu,
            GV&& gv) {
  const auto diff = (u - v).eval();
  const T d = diff.norm();
  if (std::isnan(d)) {
    gu.setConstant(std::numeric_limits<T>::quiet_NaN());
    gv.setConstant(std::numeric_limits<T>::quiet_NaN());
    return d;
  }
  const auto [f, df] = similar ? terms.similar(d) : terms.dissimilar(d);
  if (df != 0 && d > 0) {
    const T c = w * df / d;
    gu += c * diff;
    gv -= c * diff;
  }
  return f;
}

// Running hardest negative of each anchor: the smallest ||x2_j||^2 - 2 x1_i . x2_j over the
// negatives seen so far, and its j (-1: none yet).
template <class T>
struct HardestNegatives {
  std::vector<T> key;
  std::vector<Index> index;
  explicit HardestNegatives(Index n)
      : key(static_cast<std::size_t>(n), std::numeric_limits<T>::infinity()),
        index(static_cast<std::size_t>(n), -1) {}

  // Folds the tile t of products S = x1[r0:r1] x2[c0:c1]^T in; sq2 holds ||x2_j||^2.
  void fold(const Matrix<T>& S, const Tile& t, const std::vector<std::int64_t>& cls,
            const Vector<T>& sq2) {
    for (Index i = t.r0; i < t.r1; ++i) {
      T best = key[static_cast<std::size_t>(i)];
      Index best_j = index[static_cast<std::size_t>(i)];
      const auto ci = cls[static_cast<std::size_t>(i)];
      for (Index j = t.c0; j < t.c1; ++j) {
        if (cls[static_cast<std::size_t>(j)] == ci) continue;
        const T v = sq2[j] - 2 * S(i - t.r0, j - t.c0);
        if (v < best || (v == best && (best_j < 0 || j < best_j))) best = v, best_j = j;
      }
      key[static_cast<std::size_t>(i)] = best;
      index[static_cast<std::size_t>(i)] = best_j;
    }
  }
};

template <class T>
HardestNegatives<T> mine_hardest_negatives(MatrixMap<const T> X1, MatrixMap<const T> X2,
                                           const std::vector<std::int64_t>& cls, Index block,
                                           bool materialized) {
  const Index n = X1.rows();
  const Vector<T> sq2 = X2.rowwise().squaredNorm();
  HardestNegatives<T> hn(n);
  if (materialized) {
    const Tile all{0, 0, 0, n, 0, n};
    Matrix<T> S;  // [N, N]
    tile_similarity<T>(X1, X2, all, S);
    hn.fold(S, all, cls, sq2);
    return hn;
  }
  struct Workspace {
    Matrix<T> S;
  };
  for_each_tile<Workspace>(n, n, block, [&](const Tile& t, Workspace& ws) {
    tile_similarity<T>(X1, X2, t, ws.S);
    hn.fold(ws.S, t, cls, sq2);
  });
  return hn;
}

// The loss of checked inputs: x1 and x2 [N, D] as matrices and the labels as integers (0/1, or
// class ids when mining).
template <class T>
PairLossResult<T> pair_loss_compute(MatrixMap<const T> M1, MatrixMap<const T> M2,
                                    const std::vector<std::int64_t>& lab,
                                    const PairLossOptions& opts) {
  const PairTerms<T> terms{opts.form, static_cast<T>(opts.margin), static_cast<T>(opts.pos_margin)};
  const bool mining = opts.mining == PairMining::hardest_negative;
  const Index n = M1.rows();
  const T w = opts.reduction == Reduction::mean ? T(1) / static_cast<T>(n) : T(1);
  PairLossResult<T> out;
  out.grad_x1 = Tensor<T, 2>(Shape<2>{n, M1.cols()});
  out.grad_x2 = Tensor<T, 2>(Shape<2>{n, M2.cols()});
  auto G1 = out.grad_x1.as_matrix();
  auto G2 = out.grad_x2.as_matrix();

  // The pairs (x1_i, x2_i): similar by label, or every one a positive when mining.
  std::vector<double> per_row(static_cast<std::size_t>(n));
  parallel_for(n, tessera::detail::row_grain(M1.cols()), [&](Index i0, Index i1) {
    for (Index i = i0; i < i1; ++i)
      per_row[static_cast<std::size_t>(i)] = static_cast<double>(
          pair_term(M1.row(i), M2.row(i), mining || lab[static_cast<std::size_t>(i)] == 1, terms, w,
                    G1.row(i), G2.row(i)));
  });
  if (mining) {
    const auto hn = mine_hardest_negatives<T>(M1, M2, lab, opts.block_size, opts.materialized);
    out.hardest_negative = Tensor<Index, 1>(Shape<1>{n});
    // In anchor order: several anchors may share a hardest negative, whose gradient row they
    // all add to.
    for (Index i = 0; i < n; ++i) {
      const Index j = hn.index[static_cast<std::size_t>(i)];
      out.hardest_negative(i) = j;
      if (j >= 0)
        per_row[static_cast<std::size_t>(i)] += static_cast<double>(
            pair_term(M1.row(i), M2.row(j), false, terms, w, G1.row(i), G2.row(j)));
    }
  }
  out.loss = static_cast<T>(static_cast<double>(w) * ordered_sum(per_row));
  return out;
}

}  // namespace detail

// The pair loss of x1 and x2 [N, D] with labels [N] (any arithmetic type holding whole numbers;
// 0/1 similarity, or class ids with hardest_negative); returns dL/dx1 and dL/dx2. Throws
// ShapeError for mismatched or empty shapes (N = 0 or D = 0), ValueError for labels out of
// range, a margin that is not finite and >= 0 in T, an unknown form, mining or reduction, or a
// block size < 1 (one larger than N means a single tile). NaN in x1 or x2 gives a NaN loss and
// NaN gradient rows for the pairs it touches.
template <TensorLike X1, TensorLike X2, TensorLike L>
PairLossResult<scalar_t<X1>> pair_loss(const X1& x1, const X2& x2, const L& labels,
                                       const PairLossOptions& opts = {}) {
  using T = scalar_t<X1>;
  static_assert(std::is_floating_point_v<T>, "pair_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<X2>>, "pair_loss: x1 and x2 scalar types differ");
  static_assert(rank_v<X1> == 2 && rank_v<X2> == 2, "pair_loss takes matrices [N, D]");
  constexpr std::string_view fn = "tessera::contrastive::pair_loss";
  const auto v1 = cview(x1);
  const auto v2 = cview(x2);
  detail::check_embeddings(fn, "x1", v1);
  detail::check_same_shape(fn, "x1", v1, "x2", v2);
  if (opts.form != PairLossForm::squared && opts.form != PairLossForm::hinge)
    detail::raise<ValueError>(fn, "option 'form' is ", static_cast<int>(opts.form),
                              ", expected PairLossForm::squared or PairLossForm::hinge");
  if (opts.mining != PairMining::none && opts.mining != PairMining::hardest_negative)
    detail::raise<ValueError>(fn, "option 'mining' is ", static_cast<int>(opts.mining),
                              ", expected PairMining::none or PairMining::hardest_negative");
  const auto check_margin = [&](std::string_view name, double m) {
    if (!(static_cast<T>(m) >= 0) || !std::isfinite(static_cast<T>(m)))
      detail::raise<ValueError>(fn, "option '", name, "' is ", m, ", expected a finite value >= 0");
  };
  check_margin("margin", opts.margin);
  check_margin("pos_margin", opts.pos_margin);
  detail::check_reduction(fn, opts.reduction);
  detail::check_block_size(fn, opts.block_size);
  const bool mining = opts.mining == PairMining::hardest_negative;
  const Index n = v1.dim(0);
  const auto lab = detail::integer_labels(fn, "labels", labels, n, /*binary=*/!mining);

  // In the compiled mode, the computation runs at the kernels' level (contrastive/dispatch.hpp).
  if constexpr (tessera::detail::kDispatched<T>)
    return detail::loss_kernels<T>().pair_loss_compute(v1.as_matrix(), v2.as_matrix(), lab, opts);
  else
    return detail::pair_loss_compute<T>(v1.as_matrix(), v2.as_matrix(), lab, opts);
}

}  // namespace tessera::contrastive
