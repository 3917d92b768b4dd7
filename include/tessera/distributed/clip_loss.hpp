// tessera::distributed::clip_loss: CLIP's symmetric contrastive loss (Radford et al. 2021) over a
// batch split across ranks, each rank holding N_r matching pairs.
//
// The loss is that of contrastive::clip_loss on the concatenated batch (all ranks' a, then all
// ranks' b, in rank order; N = sum N_r pairs):
//   l = s A B^T [N, N], loss = 1/2 (CE(l, arange) + CE(l^T, arange)), s = exp(min(t, log max)).
// Every rank returns the same loss and dL/dt, and the gradients of ITS OWN rows, dL/da_r and
// dL/db_r [N_r, D] — equal, to rounding, to the rows of the single-process gradients.
//
//   tessera::distributed::Communicator comm = tessera::distributed::Communicator::world();
//   auto r = tessera::distributed::clip_loss(comm, img_local, txt_local, logit_scale);
//   r.loss;        // the global loss, on every rank
//   r.grad_a;      // [N_r, D]
//
// How (open_clip's gather_features + local_loss, https://github.com/mlfoundations/open_clip):
// every rank all-gathers every rank's b (N D values) and sweeps its own rows of l twice, in the
// tiles of contrastive::clip_loss: first the rows' logsumexps and its share of the columns'
// (merged over the ranks: two all-reduces of N scalars), then the gradients, each logit
// recomputed bit for bit as the statistics saw it. Its image gradients are whole; its share of
// every text's gradient is summed onto the text's owner (reduce-scatter, N D values). Per rank:
// four N_r x N x D products, 1/P of the single-process work; memory O(N D + threads block^2).
//
// Training with data parallelism (PyTorch DDP, distributed::DataParallel), where parameter
// gradients are AVERAGED over the ranks: the towers must be backpropagated with P times these
// embedding gradients, as open_clip's gather_with_grad does, and logit_scale's gradient used as it
// is; distributed::clip_train_loss does exactly that.
#pragma once

#include <cmath>
#include <string_view>

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/distributed/loss_common.hpp"

namespace tessera::distributed {

// CLIP's loss of this rank's pairs (a_i, b_i), a and b [N_r, D], against every rank's, with
// t = logit_scale. A collective: every rank of `comm` calls it. Throws, on every rank alike,
// ShapeError when any rank's a and b differ in shape or are empty or the feature dimension
// differs between ranks, ValueError when t or an option (max_logit_scale, reduction, block size,
// materialized) differs between ranks (bit for bit), and what contrastive::clip_loss throws for
// its options and t; CommunicationError when MPI fails. A NaN t gives NaN everywhere.
template <TensorLike A, TensorLike B>
contrastive::ClipLossResult<scalar_t<A>> clip_loss(const Communicator& comm, const A& a, const B& b,
                                                   std::type_identity_t<scalar_t<A>> logit_scale,
                                                   const contrastive::ClipLossOptions& opts = {}) {
  using T = scalar_t<A>;
  static_assert(std::is_floating_point_v<T>, "clip_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<B>>, "clip_loss: a and b scalar types differ");
  static_assert(rank_v<A> == 2 && rank_v<B> == 2, "clip_loss takes matrices [N, D]");
  constexpr std::string_view fn = "tessera::distributed::clip_loss";
  const auto av = cview(a);
  const auto bv = cview(b);
  const auto g = impl::gather_shapes(comm, fn, av, bv, /*same_rows=*/true,
                                     {{"logit_scale", static_cast<double>(logit_scale)},
                                      {"opts.max_logit_scale", opts.max_logit_scale},
                                      {"opts.reduction", static_cast<double>(opts.reduction)},
                                      {"opts.block_size", static_cast<double>(opts.block_size)},
                                      {"opts.materialized", opts.materialized ? 1.0 : 0.0}});
  if (std::isinf(logit_scale))
    tessera::detail::raise<ValueError>(fn, "argument 'logit_scale' is ", logit_scale,
                                       ", expected a finite value (the log of the scale)");
  contrastive::detail::check_option<T>(fn, "max_logit_scale", opts.max_logit_scale, true);
  contrastive::detail::check_reduction(fn, opts.reduction);
  contrastive::detail::check_block_size(fn, opts.block_size);

  contrastive::ClipLossResult<T> out;
  if (std::isnan(logit_scale)) {
    contrastive::detail::fill_nan(out, av.shape(), bv.shape());
    out.grad_logit_scale = out.scale = logit_scale;
    return out;
  }
  const T t_max = std::log(static_cast<T>(opts.max_logit_scale));
  const bool clamped = logit_scale > t_max;
  const T s = std::exp(clamped ? t_max : logit_scale);
  if (!std::isfinite(s))
    tessera::detail::raise<ValueError>(fn, "option 'max_logit_scale' is ", opts.max_logit_scale,
                                       ", and the scale exp(min(logit_scale, log max_logit_scale)) "
                                       "is ",
                                       s, "; expected a bound whose scale is finite");
  const T w =
      opts.reduction == contrastive::Reduction::mean ? T(1) / static_cast<T>(g.total_a) : T(1);
  const Index block = impl::effective_block(opts.block_size, opts.materialized);

  const auto A_r = av.as_matrix();
  const Tensor<T, 2> B_all = impl::gather_rows<T>(comm, bv.as_matrix(), g.rows_b, g.dim);
  // Sweep 1: this rank's rows of l (its images against every text): the rows' logsumexps, and
  // its share of every column's, merged over the ranks.
  impl::ColumnStats<T> cols;
  const auto rows = impl::block_stats<T>(A_r, B_all.as_matrix(), g.offset_a, s, block, &cols);
  impl::combine_columns(comm, cols);

  // Sweep 2: dL/dl_ij = w/2 (softmax over row i + softmax over column j) - w [i == j]; this
  // rank's image gradients whole, its share of every text's, summed onto their owners.
  out.grad_a = Tensor<T, 2>(av.shape());
  Tensor<T, 2> grad_b_all(B_all.shape());
  out.scale = s;
  const T half_w = w / 2;
  // The loss: this rank's rows' cross-entropies and its own columns' (a column's positive is on
  // the row of the same index, this rank's too).
  const auto own = [&](const impl::Vector<T>& v) {
    return impl::Vector<T>(v.segment(g.offset_a, av.dim(0)));
  };
  double sums[2] = {
      static_cast<double>(half_w) *
          (impl::cross_entropy_sum(rows.max, rows.positive, rows.log) +
           impl::cross_entropy_sum(own(cols.max), rows.positive, own(cols.log))),
      impl::block_gradient<T>(A_r, B_all.as_matrix(), g.offset_a, s, half_w, rows, half_w, &cols,
                              block, out.grad_a.as_matrix(), grad_b_all.as_matrix())};
  out.grad_b = impl::sum_own_rows(comm, grad_b_all, g.rows_b, g.dim);
  comm.all_reduce_sum(std::span<double>(sums));
  out.loss = static_cast<T>(sums[0]);
  out.grad_logit_scale = clamped ? T(0) : static_cast<T>(static_cast<double>(s) * sums[1]);
  return out;
}

// clip_loss with a LogitScale module's t.
template <TensorLike A, TensorLike B>
contrastive::ClipLossResult<scalar_t<A>> clip_loss(
    const Communicator& comm, const A& a, const B& b,
    const contrastive::LogitScale<scalar_t<A>>& logit_scale,
    const contrastive::ClipLossOptions& opts = {}) {
  return clip_loss(comm, a, b, logit_scale.logit_scale.value(), opts);
}

}  // namespace tessera::distributed
