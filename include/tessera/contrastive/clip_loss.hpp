// tessera::contrastive::clip_loss: CLIP's symmetric contrastive loss (Radford et al. 2021,
// Learning Transferable Visual Models From Natural Language Supervision), with its gradients,
// and LogitScale, the module that holds CLIP's learnable temperature.
//
//   a [N, D] (e.g. image embeddings), b [N, D] (text embeddings), row i of each a matching pair;
//   t = logit_scale, the learnable log of the scale, clamped so the scale is at most
//   max_logit_scale (100, as open_clip clamps it): s = exp(min(t, log max_logit_scale));
//   logits l = s a b^T [N, N];
//   loss = 1/2 (CE(l, arange) + CE(l^T, arange)), CE_i(x) = logsumexp_j(x_ij) - x_ii
//   Reduction::mean: each CE averaged over the N rows (CLIP); Reduction::sum: summed.
//   dL/dt = s dL/ds while t <= log max_logit_scale and 0 above it, as torch.clamp.
//
// The embeddings are used as given; CLIP L2-normalises them first (tessera::l2_normalize).
//
//   tessera::contrastive::LogitScale<float> scale;        // t = log(1 / 0.07)
//   auto r = tessera::contrastive::clip_loss(img, txt, scale);
//   r.loss; r.grad_a; r.grad_b; r.grad_logit_scale;       // dL/dt
//   scale.accumulate_grad(r);                             // scale.logit_scale.grad += dL/dt
//
// The chunked path (the default) holds one block x block tile of logits per thread. A first
// sweep folds every tile into running logsumexps of the rows and of the columns; a second
// recomputes each tile and turns it into gradients (four N x N x D products; the materialised
// path, `.materialized = true`, builds the full N x N logits and does three).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "tessera/contrastive/common.hpp"
#include "tessera/contrastive/dispatch.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::contrastive {

struct ClipLossOptions {
  double max_logit_scale = 100.0;         // the scale exp(t) is clamped to at most this (> 0)
  Reduction reduction = Reduction::mean;  // mean divides by N
  Index block_size = kDefaultBlockSize;   // rows and columns of a tile of logits
  bool materialized = false;              // build the full N x N logits instead
};

template <class T>
struct ClipLossResult {
  T loss{};
  Tensor<T, 2> grad_a;   // dL/da [N, D]
  Tensor<T, 2> grad_b;   // dL/db [N, D]
  T grad_logit_scale{};  // dL/dt (0 when t is clamped)
  T scale{};             // s = exp(min(t, log max_logit_scale)), the scale the logits used
};

namespace detail {

// Logsumexps of the rows and of the columns of the logits: max and log(sum exp(l - max)).
template <class T>
struct ClipStats {
  Vector<T> row_max, row_log, col_max, col_log, diag;
  explicit ClipStats(Index n)
      : row_max(Vector<T>::Constant(n, -std::numeric_limits<T>::infinity())),
        row_log(Vector<T>::Zero(n)),
        col_max(row_max),
        col_log(row_log),
        diag(n) {}
  // Folds the tile t of raw similarities S in (before finish()).
  void fold(const Matrix<T>& S, const Tile& t, T s) {
    fold_row_logsumexp(S, s, row_max.data() + t.r0, row_log.data() + t.r0);
    fold_col_logsumexp(S, s, col_max.data() + t.c0, col_log.data() + t.c0);
    const auto [d0, d1] = diagonal_span(t);
    for (Index i = d0; i < d1; ++i) diag[i] = s * S(i - t.r0, i - t.c0);
  }
  // The running sums become log(sum); returns the loss. Each CE term is (max - l_ii) + log_sum:
  // the large terms cancel before the small one is added.
  double finish(T w) {
    row_log = row_log.array().log().matrix();
    col_log = col_log.array().log().matrix();
    return static_cast<double>(w / 2) * (sum_double((row_max - diag).array() + row_log.array()) +
                                         sum_double((col_max - diag).array() + col_log.array()));
  }

  // G = dL/dl on the tile t: w/2 (softmax over the row + softmax over the column) - w [i == j].
  void logit_grad(const Matrix<T>& S, const Tile& t, T s, T w, Matrix<T>& G) const {
    G.resize(S.rows(), S.cols());
    const auto cm = col_max.segment(t.c0, t.cols()).transpose().array();
    const auto cl = col_log.segment(t.c0, t.cols()).transpose().array();
    const T half_w = w / 2;
    for (Index i = 0; i < S.rows(); ++i) {
      const auto l = s * S.row(i).array();
      G.row(i).array() =
          half_w * (((l - row_max[t.r0 + i]) - row_log[t.r0 + i]).exp() + ((l - cm) - cl).exp());
    }
    const auto [d0, d1] = diagonal_span(t);
    for (Index i = d0; i < d1; ++i) G(i - t.r0, i - t.c0) -= w;
  }
};

template <class T>
void clip_tiled(MatrixMap<const T> A, MatrixMap<const T> B, T s, T w, Index block,
                ClipLossResult<T>& out) {
  const Index n = A.rows();
  ClipStats<T> stats(n);
  // Sweep 1: the logsumexp of every row (a_i against all of b) and every column (b_j against
  // all of a), folded tile by tile.
  for_each_tile<LogitTileWorkspace<T>>(n, n, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(A, B, t, ws.S);
    stats.fold(ws.S, t, s);
  });
  out.loss = static_cast<T>(stats.finish(w));

  // Sweep 2: the tile again, turned into G; grad_a = s G b, grad_b = s G^T a.
  auto gA = out.grad_a.as_matrix();
  auto gB = out.grad_b.as_matrix();
  std::vector<double> gs(static_cast<std::size_t>(ceil_div(n, block)), 0.0);
  for_each_tile<LogitTileWorkspace<T>>(n, n, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(A, B, t, ws.S);
    stats.logit_grad(ws.S, t, s, w, ws.G);
    gs[static_cast<std::size_t>(t.row_block)] += sum_double(ws.G.array() * ws.S.array());
    tile_backward<T>(A, B, t, ws.G, s, gA, gB);
  });
  // dL/dt = s dL/ds = s sum G S
  out.grad_logit_scale = static_cast<T>(static_cast<double>(s) * ordered_sum(gs));
}

// The reference: the full [N, N] logits, built once (three products).
template <class T>
void clip_materialized(MatrixMap<const T> A, MatrixMap<const T> B, T s, T w,
                       ClipLossResult<T>& out) {
  const Index n = A.rows();
  const Tile all{0, 0, 0, n, 0, n};
  Matrix<T> S;  // [N, N]
  tile_similarity<T>(A, B, all, S);
  ClipStats<T> stats(n);
  stats.fold(S, all, s);
  out.loss = static_cast<T>(stats.finish(w));
  Matrix<T> G;
  stats.logit_grad(S, all, s, w, G);
  out.grad_logit_scale = static_cast<T>(static_cast<double>(s) * sum_double(G.array() * S.array()));
  tile_backward<T>(A, B, all, G, s, out.grad_a.as_matrix(), out.grad_b.as_matrix());
}

}  // namespace detail

// CLIP's loss of matching pairs (a_i, b_i), a and b [N, D], with t = logit_scale (the log of
// the scale); returns dL/da, dL/db and dL/dt. Throws ShapeError for mismatched or empty shapes
// (N = 0 or D = 0), ValueError for an infinite t, a max_logit_scale that is not finite and > 0
// in T, or a block size < 1 (one larger than N means a single tile). A NaN t gives NaN
// everywhere (loss, gradients, scale), as NaN in a or b gives a NaN loss.
template <TensorLike A, TensorLike B>
ClipLossResult<scalar_t<A>> clip_loss(const A& a, const B& b,
                                      std::type_identity_t<scalar_t<A>> logit_scale,
                                      const ClipLossOptions& opts = {}) {
  using T = scalar_t<A>;
  static_assert(std::is_floating_point_v<T>, "clip_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<B>>, "clip_loss: a and b scalar types differ");
  static_assert(rank_v<A> == 2 && rank_v<B> == 2, "clip_loss takes matrices [N, D]");
  constexpr std::string_view fn = "tessera::contrastive::clip_loss";
  const auto av = cview(a);
  const auto bv = cview(b);
  detail::check_embeddings(fn, "a", av);
  detail::check_same_shape(fn, "a", av, "b", bv);
  if (std::isinf(logit_scale))
    detail::raise<ValueError>(fn, "argument 'logit_scale' is ", logit_scale,
                              ", expected a finite value (the log of the scale)");
  detail::check_option<T>(fn, "max_logit_scale", opts.max_logit_scale, /*positive=*/true);
  detail::check_reduction(fn, opts.reduction);
  detail::check_block_size(fn, opts.block_size);

  ClipLossResult<T> out;
  if (std::isnan(logit_scale)) {
    detail::fill_nan(out, av.shape(), bv.shape());
    out.grad_logit_scale = out.scale = logit_scale;
    return out;
  }
  // torch.clamp(t, max=log(max_logit_scale)).exp(): the gradient passes where t <= the bound.
  const T t_max = std::log(static_cast<T>(opts.max_logit_scale));
  const bool clamped = logit_scale > t_max;
  const T s = std::exp(clamped ? t_max : logit_scale);
  if (!std::isfinite(s))  // max_logit_scale within an ulp of the type's largest value
    detail::raise<ValueError>(fn, "option 'max_logit_scale' is ", opts.max_logit_scale,
                              ", and the scale exp(min(logit_scale, log max_logit_scale)) is ", s,
                              "; expected a bound whose scale is finite");
  const T w = opts.reduction == Reduction::mean ? T(1) / static_cast<T>(av.dim(0)) : T(1);
  out.grad_a = Tensor<T, 2>(av.shape());
  out.grad_b = Tensor<T, 2>(bv.shape());
  out.scale = s;
  // In the compiled mode, the sweeps run at the kernels' level (contrastive/dispatch.hpp).
  if constexpr (tessera::detail::kDispatched<T>) {
    const auto& k = detail::loss_kernels<T>();
    if (opts.materialized)
      k.clip_materialized(av.as_matrix(), bv.as_matrix(), s, w, out);
    else
      k.clip_tiled(av.as_matrix(), bv.as_matrix(), s, w, opts.block_size, out);
  } else if (opts.materialized) {
    detail::clip_materialized<T>(av.as_matrix(), bv.as_matrix(), s, w, out);
  } else {
    detail::clip_tiled<T>(av.as_matrix(), bv.as_matrix(), s, w, opts.block_size, out);
  }
  if (clamped) out.grad_logit_scale = T(0);
  return out;
}

struct LogitScaleOptions {
  double init = 1.0 / 0.07;  // the initial scale; the parameter holds its log (CLIP: 1/0.07)
};

// CLIP's learnable temperature: one parameter "logit_scale", a scalar (shape []) holding
// t = log(scale), as CLIP's and open_clip's model.logit_scale.
template <class T>
class LogitScale : public nn::Module<LogitScale<T>> {
 public:
  nn::Parameter<T, 0> logit_scale;  // [] (a scalar), t

  explicit LogitScale(const LogitScaleOptions& o = {}) : logit_scale(Shape<0>{}) {
    if (!(o.init > 0) || !std::isfinite(std::log(static_cast<T>(o.init))))
      tessera::detail::raise<ValueError>("tessera::contrastive::LogitScale", "option 'init' is ",
                                         o.init, ", expected a finite value > 0");
    logit_scale.value() = std::log(static_cast<T>(o.init));
  }

  // logit_scale.grad += dL/dt from a loss computed with this t (allocated and zeroed first if
  // there is no gradient yet).
  void accumulate_grad(const ClipLossResult<T>& r) {
    if (!logit_scale.has_grad()) logit_scale.zero_grad();
    logit_scale.grad() += r.grad_logit_scale;
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "logit_scale", self.logit_scale);
  }
};

// clip_loss with the module's t.
template <TensorLike A, TensorLike B>
ClipLossResult<scalar_t<A>> clip_loss(const A& a, const B& b,
                                      const LogitScale<scalar_t<A>>& logit_scale,
                                      const ClipLossOptions& opts = {}) {
  return clip_loss(a, b, logit_scale.logit_scale.value(), opts);
}

}  // namespace tessera::contrastive

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::contrastive::LogitScale)
