// tessera::contrastive::info_nce_loss: InfoNCE (van den Oord, Li & Vinyals 2018, Representation
// Learning with Contrastive Predictive Coding), with its gradients.
//
//   anchors a [N, D], candidates b [M, D], M >= N; the positive of anchor i is b_i, every other
//   b_j is a negative. logits l_ij = s a_i . b_j, s = 1 / temperature or a given scale;
//   loss_i = -log softmax_j(l_i)_i = logsumexp_j(l_ij) - l_ii
//   Reduction::mean: (1/N) sum_i loss_i; Reduction::sum: sum_i loss_i.
//
//   auto r = tessera::contrastive::info_nce_loss(a, b, {.temperature = 0.1});
//   r.loss; r.grad_a;  // [N, D]   r.grad_b;  // [M, D]   r.grad_scale;  // dL/ds
//
// The chunked path (the default) holds one block x block tile of logits per thread: a first
// sweep of the tiles builds every row's logsumexp online, a second recomputes each tile and
// turns it into gradients. That is four N x M x D products where the materialised path
// (`.materialized = true`, the full N x M matrix, for tests and benchmarks) does three.
#pragma once

#include <cmath>
#include <optional>
#include <vector>

#include "tessera/contrastive/common.hpp"
#include "tessera/contrastive/dispatch.hpp"

namespace tessera::contrastive {

// Temperature when neither `temperature` nor `scale` is given (MoCo's and CLIP's initial value).
inline constexpr double kDefaultInfoNceTemperature = 0.07;

struct InfoNceLossOptions {
  // Give at most one: s = 1 / temperature, or s = scale. Neither: temperature 0.07.
  std::optional<double> temperature;
  std::optional<double> scale;
  Reduction reduction = Reduction::mean;  // mean divides by N, the number of anchors
  Index block_size = kDefaultBlockSize;   // rows and columns of a tile of logits
  bool materialized = false;              // build the full N x M logits instead
};

template <class T>
struct InfoNceLossResult {
  T loss{};
  Tensor<T, 2> grad_a;  // dL/da [N, D]
  Tensor<T, 2> grad_b;  // dL/db [M, D]
  T grad_scale{};       // dL/ds; with a temperature tau = 1/s, dL/dtau = -s^2 dL/ds
};

namespace detail {

// G = dL/dl for the tile t of raw similarities S: w (softmax_j(l_i) - [j == i]), from the rows'
// logsumexps max_i + log_sum_i (global arrays).
template <class T>
void info_nce_logit_grad(const Matrix<T>& S, const Tile& t, T s, T w, const T* row_max,
                         const T* row_log, Matrix<T>& G) {
  G.resize(S.rows(), S.cols());
  for (Index i = 0; i < S.rows(); ++i)
    G.row(i).array() = w * ((s * S.row(i).array() - row_max[t.r0 + i]) - row_log[t.r0 + i]).exp();
  const auto [d0, d1] = diagonal_span(t);
  for (Index i = d0; i < d1; ++i) G(i - t.r0, i - t.c0) -= w;
}

// loss = w sum_i (max_i - l_ii) + log_sum_i: the large terms cancel before the small one is added.
template <class T>
double info_nce_value(const Vector<T>& row_max, const Vector<T>& row_log, const Vector<T>& diag,
                      T w) {
  return static_cast<double>(w) * sum_double((row_max - diag).array() + row_log.array());
}

template <class T>
void info_nce_tiled(MatrixMap<const T> A, MatrixMap<const T> B, T s, T w, Index block,
                    InfoNceLossResult<T>& out) {
  const Index n = A.rows(), m = B.rows();
  Vector<T> row_max = Vector<T>::Constant(n, -std::numeric_limits<T>::infinity());
  Vector<T> row_log = Vector<T>::Zero(n), diag(n);
  // Sweep 1: each row's logsumexp, folded tile by tile; the positives' logits l_ii.
  for_each_tile<LogitTileWorkspace<T>>(n, m, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(A, B, t, ws.S);
    fold_row_logsumexp(ws.S, s, row_max.data() + t.r0, row_log.data() + t.r0);
    const auto [d0, d1] = diagonal_span(t);
    for (Index i = d0; i < d1; ++i) diag[i] = s * ws.S(i - t.r0, i - t.c0);
  });
  row_log = row_log.array().log().matrix();  // the running sums become log(sum)
  out.loss = static_cast<T>(info_nce_value(row_max, row_log, diag, w));

  // Sweep 2: the tile again, turned into G; grad_a = s G b, grad_b = s G^T a.
  auto gA = out.grad_a.as_matrix();
  auto gB = out.grad_b.as_matrix();
  std::vector<double> gs(static_cast<std::size_t>(ceil_div(n, block)), 0.0);
  for_each_tile<LogitTileWorkspace<T>>(n, m, block, [&](const Tile& t, LogitTileWorkspace<T>& ws) {
    tile_similarity<T>(A, B, t, ws.S);
    info_nce_logit_grad(ws.S, t, s, w, row_max.data(), row_log.data(), ws.G);
    gs[static_cast<std::size_t>(t.row_block)] += sum_double(ws.G.array() * ws.S.array());
    tile_backward<T>(A, B, t, ws.G, s, gA, gB);
  });
  out.grad_scale = static_cast<T>(ordered_sum(gs));
}

// The reference: the full [N, M] logits, built once (three products).
template <class T>
void info_nce_materialized(MatrixMap<const T> A, MatrixMap<const T> B, T s, T w,
                           InfoNceLossResult<T>& out) {
  const Index n = A.rows(), m = B.rows();
  const Tile all{0, 0, 0, n, 0, m};
  Matrix<T> S;  // [N, M]
  tile_similarity<T>(A, B, all, S);
  Vector<T> row_max = Vector<T>::Constant(n, -std::numeric_limits<T>::infinity());
  Vector<T> row_log = Vector<T>::Zero(n);
  fold_row_logsumexp(S, s, row_max.data(), row_log.data());
  row_log = row_log.array().log().matrix();
  const Vector<T> diag = s * S.diagonal();
  out.loss = static_cast<T>(info_nce_value(row_max, row_log, diag, w));
  Matrix<T> G;
  info_nce_logit_grad(S, all, s, w, row_max.data(), row_log.data(), G);
  out.grad_scale = static_cast<T>(sum_double(G.array() * S.array()));
  tile_backward<T>(A, B, all, G, s, out.grad_a.as_matrix(), out.grad_b.as_matrix());
}

// The scale s of the logits from the options (1 / temperature, the scale, or 1 / 0.07), after
// checking them and the reduction and block size; errors name `fn`.
template <class T>
T info_nce_scale(std::string_view fn, const InfoNceLossOptions& opts) {
  if (opts.temperature && opts.scale)
    detail::raise<ValueError>(fn, "options 'temperature' (", *opts.temperature, ") and 'scale' (",
                              *opts.scale, ") are both set, expected at most one");
  double s_in = 1.0 / kDefaultInfoNceTemperature;
  if (opts.temperature) {
    const T tau = static_cast<T>(*opts.temperature);
    if (!(tau > 0) || !std::isfinite(tau) || !std::isfinite(T(1) / tau))
      detail::raise<ValueError>(fn, "option 'temperature' is ", *opts.temperature,
                                ", expected a finite value > 0 whose inverse is finite");
    s_in = 1.0 / *opts.temperature;
  }
  if (opts.scale) {
    if (!(static_cast<T>(*opts.scale) > 0) || !std::isfinite(static_cast<T>(*opts.scale)))
      detail::raise<ValueError>(fn, "option 'scale' is ", *opts.scale,
                                ", expected a finite value > 0");
    s_in = *opts.scale;
  }
  detail::check_reduction(fn, opts.reduction);
  detail::check_block_size(fn, opts.block_size);
  return static_cast<T>(s_in);
}

}  // namespace detail

// InfoNCE of anchors a [N, D] against candidates b [M, D] (M >= N, b_i the positive of a_i), with
// dL/da, dL/db and dL/ds. Throws ShapeError for mismatched or empty shapes (N = 0, M = 0 or
// D = 0), ValueError for a temperature or scale that is not finite and > 0 in T, both given, or a
// block size < 1 (one larger than M means a single tile). NaN in a or b gives a NaN loss.
template <TensorLike A, TensorLike B>
InfoNceLossResult<scalar_t<A>> info_nce_loss(const A& a, const B& b,
                                             const InfoNceLossOptions& opts = {}) {
  using T = scalar_t<A>;
  static_assert(std::is_floating_point_v<T>, "info_nce_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<B>>, "info_nce_loss: a and b scalar types differ");
  static_assert(rank_v<A> == 2 && rank_v<B> == 2, "info_nce_loss takes matrices [N, D], [M, D]");
  constexpr std::string_view fn = "tessera::contrastive::info_nce_loss";
  const auto av = cview(a);
  const auto bv = cview(b);
  detail::check_embeddings(fn, "a", av);
  detail::check_embeddings(fn, "b", bv);
  detail::check_same_dim(fn, "a", av, "b", bv);
  if (bv.dim(0) < av.dim(0))
    detail::raise<ShapeError>(
        fn, "argument 'b' has shape ", detail::shape_string(bv.shape()), ", expected at least ",
        av.dim(0), " rows (one positive per row of 'a' ", detail::shape_string(av.shape()), ")");
  const T s = detail::info_nce_scale<T>(fn, opts);
  const T w = opts.reduction == Reduction::mean ? T(1) / static_cast<T>(av.dim(0)) : T(1);
  InfoNceLossResult<T> out;
  out.grad_a = Tensor<T, 2>(av.shape());
  out.grad_b = Tensor<T, 2>(bv.shape());
  // In the compiled mode, the sweeps run at the kernels' level (contrastive/dispatch.hpp).
  if constexpr (tessera::detail::kDispatched<T>) {
    const auto& k = detail::loss_kernels<T>();
    if (opts.materialized)
      k.info_nce_materialized(av.as_matrix(), bv.as_matrix(), s, w, out);
    else
      k.info_nce_tiled(av.as_matrix(), bv.as_matrix(), s, w, opts.block_size, out);
  } else if (opts.materialized) {
    detail::info_nce_materialized<T>(av.as_matrix(), bv.as_matrix(), s, w, out);
  } else {
    detail::info_nce_tiled<T>(av.as_matrix(), bv.as_matrix(), s, w, opts.block_size, out);
  }
  return out;
}

}  // namespace tessera::contrastive
