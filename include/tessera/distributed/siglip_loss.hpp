// tessera::distributed::siglip_loss: SigLIP's pairwise sigmoid loss (Zhai, Mustafa, Kolesnikov &
// Beyer 2023) over a batch split across ranks, without gathering the batch: the text embeddings
// travel around a ring of ranks, as in the paper's section 3.3 ("chunked" implementation) and
// open_clip's SigLipLoss (neighbour exchange in both directions).
//
// The loss is that of contrastive::siglip_loss on the concatenated batch (N = sum N_r pairs):
//   z_ij = exp(t) a_i . b_j + bias, loss = -(1/N) sum_ij log sigmoid(label_ij z_ij),
// label +1 for i == j, else -1. Every rank returns the same loss, dL/dt and dL/dbias, and the
// gradients of its own rows, dL/da_r and dL/db_r [N_r, D], equal to rounding to those rows of the
// single-process gradients.
//
// How: each rank first scores its images against its own texts (the positives), while sending
// its texts to both neighbours. Then, round after round, it passes on the text blocks it just
// received (rightwards and leftwards, so that after ceil((P - 1) / 2) rounds every rank has seen
// every other rank's texts) and scores its images against them; the send of the next round is
// posted before the scoring of this one, so the two overlap. The gradient a rank computes for a
// visiting text block is sent straight back to the rank that owns it, which adds the
// contributions in a fixed order (results do not depend on timing). Per rank: (P - 1) N_r D text
// values in, as many gradient values back, three N_r x N x D products, and memory for four
// visiting blocks and four gradient blocks (two going out, two coming in):
// O(max_r N_r D), never the whole batch.
//
// With PyTorch-DDP-style training (gradients averaged over ranks), backpropagate P times these
// embedding gradients (see distributed/clip_loss.hpp).
#pragma once

#include <cmath>
#include <string_view>
#include <utility>
#include <vector>

#include "tessera/contrastive/siglip_loss.hpp"
#include "tessera/distributed/loss_common.hpp"

namespace tessera::distributed {

namespace impl {

// The tags of the ring's messages: text blocks and their gradients, per direction.
enum RingTag : int {
  kTextRightward = 101,
  kTextLeftward = 102,
  kGradRightward = 103,
  kGradLeftward = 104
};

// Scores this rank's images A [n, D] against one text block Bo [m, D] (the rank's own when
// `positives`), adding into gA [n, D] and gBo [m, D] and into `sums`, in a fixed order. The
// block's columns go in slices of `block` texts, and progress() runs between slices, so the
// messages in flight move while the tiles are computed.
template <class T, class Progress>
void siglip_block(MatrixMap<const T> A, MatrixMap<const T> Bo, bool positives, T s, T bias, T w,
                  Index block, MatrixMap<T> gA, MatrixMap<T> gBo,
                  contrastive::detail::SigLipTileSums& sums, Progress&& progress) {
  using namespace contrastive::detail;
  const Index n = A.rows(), m = Bo.rows(), d = A.cols();
  block = std::min(block, std::max<Index>({n, m, 1}));
  for (Index c0 = 0; c0 < m; c0 += block) {
    const Index cols = std::min(block, m - c0);
    const MatrixMap<const T> B_slice(Bo.data() + c0 * d, cols, d);
    MatrixMap<T> gB_slice(gBo.data() + c0 * d, cols, d);
    std::vector<SigLipTileSums> parts(static_cast<std::size_t>(ceil_div(n, block)));
    for_each_tile<SigLipWorkspace<T>>(n, cols, block, [&](const Tile& t, SigLipWorkspace<T>& ws) {
      tile_similarity<T>(A, B_slice, t, ws.S);
      // The positives are the pairs i == c0 + j of the rank's own block.
      const Index i0 = std::max(t.r0, c0 + t.c0), i1 = std::min(t.r1, c0 + t.c1);
      const auto span =
          positives && i0 < i1 ? std::pair<Index, Index>{i0, i1} : std::pair<Index, Index>{0, 0};
      Tile local = t;  // siglip_tile indexes its diagonal as (i - r0, i - c0)
      local.c0 += c0;
      local.c1 += c0;
      parts[static_cast<std::size_t>(t.row_block)] +=
          siglip_tile(ws.S, local, s, bias, w, ws, span);
      tile_backward<T>(A, B_slice, t, ws.G, s, gA, gB_slice);
    });
    for (const auto& p : parts) sums += p;
    progress();
  }
}

}  // namespace impl

// SigLIP's loss of this rank's pairs (a_i, b_i), a and b [N_r, D], against every rank's, with
// t = logit_scale and bias = logit_bias. A collective. Throws, on every rank alike, ShapeError
// when a rank's a and b differ in shape or are empty or the dimension differs between ranks,
// ValueError when t, bias or an option differ between ranks, and what
// contrastive::siglip_loss throws for t, bias and its options; CommunicationError when MPI fails.
// A NaN t or bias gives NaN everywhere.
template <TensorLike A, TensorLike B>
contrastive::SigLipLossResult<scalar_t<A>> siglip_loss(
    const Communicator& comm, const A& a, const B& b, std::type_identity_t<scalar_t<A>> logit_scale,
    std::type_identity_t<scalar_t<A>> logit_bias, const contrastive::SigLipLossOptions& opts = {}) {
  using T = scalar_t<A>;
  using contrastive::detail::SigLipTileSums;
  static_assert(std::is_floating_point_v<T>, "siglip_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<B>>, "siglip_loss: a and b scalar types differ");
  static_assert(rank_v<A> == 2 && rank_v<B> == 2, "siglip_loss takes matrices [N, D]");
  constexpr std::string_view fn = "tessera::distributed::siglip_loss";
  const auto av = cview(a);
  const auto bv = cview(b);
  const auto g = impl::gather_shapes(comm, fn, av, bv, /*same_rows=*/true,
                                     {{"logit_scale", static_cast<double>(logit_scale)},
                                      {"logit_bias", static_cast<double>(logit_bias)},
                                      {"opts.reduction", static_cast<double>(opts.reduction)},
                                      {"opts.block_size", static_cast<double>(opts.block_size)},
                                      {"opts.materialized", opts.materialized ? 1.0 : 0.0}});
  if (std::isinf(logit_scale) ||
      (!std::isnan(logit_scale) && !std::isfinite(std::exp(logit_scale))))
    tessera::detail::raise<ValueError>(
        fn, "argument 'logit_scale' is ", logit_scale,
        ", expected a value whose exp is finite (the log of the scale)");
  if (std::isinf(logit_bias))
    tessera::detail::raise<ValueError>(fn, "argument 'logit_bias' is ", logit_bias,
                                       ", expected a finite value");
  contrastive::detail::check_reduction(fn, opts.reduction);
  contrastive::detail::check_block_size(fn, opts.block_size);

  contrastive::SigLipLossResult<T> out;
  if (std::isnan(logit_scale) || std::isnan(logit_bias)) {
    contrastive::detail::fill_nan(out, av.shape(), bv.shape());
    out.grad_logit_scale = out.grad_logit_bias = std::numeric_limits<T>::quiet_NaN();
    return out;
  }
  const T s = std::exp(logit_scale);
  const T w =
      opts.reduction == contrastive::Reduction::mean ? T(1) / static_cast<T>(g.total_a) : T(1);
  const Index block = impl::effective_block(opts.block_size, opts.materialized);
  out.grad_a = Tensor<T, 2>(av.shape());
  out.grad_b = Tensor<T, 2>(bv.shape());
  const auto A_r = av.as_matrix();
  auto gA = out.grad_a.as_matrix();
  auto gB = out.grad_b.as_matrix();

  const int p = comm.size(), r = comm.rank();
  const int right = (r + 1) % p, left = (r + p - 1) % p;
  const int rounds_rightward = p / 2;       // blocks from r - 1, r - 2, ... arrive from the left
  const int rounds_leftward = (p - 1) / 2;  // blocks from r + 1, r + 2, ... from the right
  const Index d = g.dim;
  const auto origin = [&](int k) { return ((r - k) % p + p) % p; };
  const auto rows_of = [&](int o) { return g.rows_b[static_cast<std::size_t>(o)]; };
  const auto span_of = [](Tensor<T, 2>& x) {
    return std::span<T>(x.data(), static_cast<std::size_t>(x.size()));
  };
  const auto cspan_of = [](const Tensor<T, 2>& x) {
    return std::span<const T>(x.data(), static_cast<std::size_t>(x.size()));
  };

  // The text blocks held in each direction (this round's and the one arriving), the gradients
  // being sent back for them, and those arriving for this rank's own block.
  Tensor<T, 2> cur_r, next_r, cur_l, next_l, gsend_r, gsend_l, grecv_r, grecv_l;
  std::vector<Request> exchange, grads_out, grads_in;
  // Posts round k's exchange: the block held after round k - 1 goes on, the next one comes in.
  const auto post_exchange = [&](int k, std::span<const T> held_r, std::span<const T> held_l) {
    if (k <= rounds_rightward) {
      next_r = Tensor<T, 2>(Shape<2>{rows_of(origin(k)), d});
      exchange.push_back(comm.irecv(span_of(next_r), left, impl::kTextRightward));
      exchange.push_back(comm.isend(held_r, right, impl::kTextRightward));
    }
    if (k <= rounds_leftward) {
      next_l = Tensor<T, 2>(Shape<2>{rows_of(origin(-k)), d});
      exchange.push_back(comm.irecv(span_of(next_l), right, impl::kTextLeftward));
      exchange.push_back(comm.isend(held_l, left, impl::kTextLeftward));
    }
  };

  SigLipTileSums sums;
  // Lets MPI move the messages in flight between slices of the scoring.
  const auto progress = [&] {
    test_all(exchange);
    test_all(grads_out);
    test_all(grads_in);
  };
  // The rank's own texts go out as they are (a contiguous view of b).
  const std::span<const T> own(bv.data(), static_cast<std::size_t>(bv.size()));
  post_exchange(1, own, own);
  impl::siglip_block<T>(A_r, bv.as_matrix(), /*positives=*/true, s, logit_bias, w, block, gA, gB,
                        sums, progress);
  for (int k = 1; k <= rounds_rightward; ++k) {
    wait_all(exchange);
    exchange.clear();
    cur_r = std::move(next_r);
    if (k <= rounds_leftward) cur_l = std::move(next_l);
    post_exchange(k + 1, cspan_of(cur_r),
                  cspan_of(cur_l));  // the blocks just received go on while they are scored
    // The previous round's gradients must have left before their buffers are reused.
    wait_all(grads_out);
    grads_out.clear();
    // This rank's own block was scored by rank r + k (rightward) and r - k (leftward).
    grecv_r = Tensor<T, 2>(bv.shape());
    grads_in.push_back(comm.irecv(span_of(grecv_r), (r + k) % p, impl::kGradRightward));
    if (k <= rounds_leftward) {
      grecv_l = Tensor<T, 2>(bv.shape());
      grads_in.push_back(comm.irecv(span_of(grecv_l), origin(k), impl::kGradLeftward));
    }
    gsend_r = Tensor<T, 2>(cur_r.shape());
    impl::siglip_block<T>(A_r, std::as_const(cur_r).as_matrix(), false, s, logit_bias, w, block, gA,
                          gsend_r.as_matrix(), sums, progress);
    grads_out.push_back(comm.isend(cspan_of(gsend_r), origin(k), impl::kGradRightward));
    if (k <= rounds_leftward) {
      gsend_l = Tensor<T, 2>(cur_l.shape());
      impl::siglip_block<T>(A_r, std::as_const(cur_l).as_matrix(), false, s, logit_bias, w, block,
                            gA, gsend_l.as_matrix(), sums, progress);
      grads_out.push_back(comm.isend(cspan_of(gsend_l), origin(-k), impl::kGradLeftward));
    }
    wait_all(grads_in);
    grads_in.clear();
    gB += grecv_r.as_matrix();
    if (k <= rounds_leftward) gB += grecv_l.as_matrix();
  }
  wait_all(grads_out);
  wait_all(exchange);

  double total[3] = {sums.loss, sums.gs, sums.gb};
  comm.all_reduce_sum(std::span<double>(total));
  contrastive::detail::siglip_finish(SigLipTileSums{total[0], total[1], total[2]}, s, w, out);
  return out;
}

// siglip_loss with a LogitScaleBias module's t and bias.
template <TensorLike A, TensorLike B>
contrastive::SigLipLossResult<scalar_t<A>> siglip_loss(
    const Communicator& comm, const A& a, const B& b,
    const contrastive::LogitScaleBias<scalar_t<A>>& params,
    const contrastive::SigLipLossOptions& opts = {}) {
  return siglip_loss(comm, a, b, params.logit_scale.value(), params.logit_bias.value(), opts);
}

}  // namespace tessera::distributed
