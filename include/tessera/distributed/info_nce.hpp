// tessera::distributed::info_nce_loss: InfoNCE (van den Oord, Li & Vinyals 2018) over a batch
// split across ranks: rank r holds anchors a_r and their positives b_r, [N_r, D] each, and every
// other rank's candidates are negatives too.
//
// The loss is that of contrastive::info_nce_loss on the concatenated batch (all ranks' anchors
// against all ranks' candidates, in rank order; N = sum N_r):
//   l = s A B^T [N, N], loss_i = logsumexp_j l_ij - l_ii, mean over the N anchors (or the sum).
// Every rank returns the same loss and dL/ds, and the gradients of its own rows, dL/da_r and
// dL/db_r [N_r, D] — equal, to rounding, to those rows of the single-process gradients.
//
// How (open_clip's gather_features + local loss): every rank all-gathers the candidates (N D
// values), sweeps its anchors' rows of the logits twice in block x block tiles (logsumexps, then
// gradients), and sums its share of every candidate's gradient onto the candidate's owner
// (reduce-scatter, N D values). Per rank: three N_r x N x D products and one recomputation.
//
// With PyTorch-DDP-style training (gradients averaged over ranks), backpropagate P times these
// embedding gradients (see distributed/clip_loss.hpp).
#pragma once

#include <string_view>

#include "tessera/contrastive/info_nce.hpp"
#include "tessera/distributed/loss_common.hpp"

namespace tessera::distributed {

// InfoNCE of this rank's anchors a [N_r, D] (positives b [N_r, D], row for row) against every
// rank's candidates. A collective. Throws, on every rank alike, ShapeError when a rank's a and b
// differ in shape or are empty or the dimension differs between ranks, ValueError when the
// options differ between ranks, and what
// contrastive::info_nce_loss throws for its options. Unlike the single-process loss, each rank
// brings exactly one candidate per anchor: extra negatives come from the other ranks.
template <TensorLike A, TensorLike B>
contrastive::InfoNceLossResult<scalar_t<A>> info_nce_loss(
    const Communicator& comm, const A& a, const B& b,
    const contrastive::InfoNceLossOptions& opts = {}) {
  using T = scalar_t<A>;
  static_assert(std::is_floating_point_v<T>, "info_nce_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<B>>, "info_nce_loss: a and b scalar types differ");
  static_assert(rank_v<A> == 2 && rank_v<B> == 2, "info_nce_loss takes matrices [N, D]");
  constexpr std::string_view fn = "tessera::distributed::info_nce_loss";
  const auto av = cview(a);
  const auto bv = cview(b);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto g = impl::gather_shapes(comm, fn, av, bv, /*same_rows=*/true,
                                     {{"opts.temperature", opts.temperature.value_or(nan)},
                                      {"opts.scale", opts.scale.value_or(nan)},
                                      {"opts.reduction", static_cast<double>(opts.reduction)},
                                      {"opts.block_size", static_cast<double>(opts.block_size)},
                                      {"opts.materialized", opts.materialized ? 1.0 : 0.0}});
  const T s = contrastive::detail::info_nce_scale<T>(fn, opts);
  const T w =
      opts.reduction == contrastive::Reduction::mean ? T(1) / static_cast<T>(g.total_a) : T(1);
  const Index block = impl::effective_block(opts.block_size, opts.materialized);

  const auto A_r = av.as_matrix();
  const Tensor<T, 2> B_all = impl::gather_rows<T>(comm, bv.as_matrix(), g.rows_b, g.dim);
  const auto rows = impl::block_stats<T>(A_r, B_all.as_matrix(), g.offset_a, s, block, nullptr);

  contrastive::InfoNceLossResult<T> out;
  out.grad_a = Tensor<T, 2>(av.shape());
  Tensor<T, 2> grad_b_all(B_all.shape());
  // dL/dl_ij = w (softmax over row i - [i == j]): the anchors' gradients whole, this rank's share
  // of every candidate's, summed onto their owners.
  double sums[2] = {
      static_cast<double>(w) * impl::cross_entropy_sum(rows.max, rows.positive, rows.log),
      impl::block_gradient<T>(A_r, B_all.as_matrix(), g.offset_a, s, w, rows, T(0), nullptr, block,
                              out.grad_a.as_matrix(), grad_b_all.as_matrix())};
  out.grad_b = impl::sum_own_rows(comm, grad_b_all, g.rows_b, g.dim);
  comm.all_reduce_sum(std::span<double>(sums));
  out.loss = static_cast<T>(sums[0]);
  out.grad_scale = static_cast<T>(sums[1]);
  return out;
}

}  // namespace tessera::distributed
