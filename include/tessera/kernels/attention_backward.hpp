// tessera: the backward pass of scaled dot-product attention, fused as in FlashAttention-2
// (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
// Algorithm 2). With S = scale Q K^T + mask, P = softmax(S) (rows), O = P V and the gradient dO:
//
//   dV = P^T dO,   dP = dO V^T,   dS = P o (dP - D),   D_i = rowsum(dO_i o O_i),
//   dQ = scale dS K,   dK = scale dS^T Q.
//
// D_i = sum_j P_ij dP_ij because P's rows sum to one, so it comes from O and dO alone. The
// forward saves only each row's logsumexp lse_i (AttentionProblem::lse); the backward recomputes
// every tile P_ij = exp(S_ij - lse_i) and never forms the Lq x Lk matrix. Per (batch, head) the
// keys are walked in blocks (outer loop) whose dK, dV accumulate in per-thread tiles, and for each
// the query blocks (inner loop) add their share of dQ directly into the output. Extra memory: the
// D vector ([batch, heads, Lq]) and a few tiles per thread, plus partial dQ buffers when the
// keys of a head are split across threads (below).
//
// Masks and causal are applied exactly as in the forward (core/mask.hpp's MaskRows; causal hides
// keys j > i + causal_offset among the first mask_lk keys); tiles entirely above the causal
// diagonal are skipped. A row whose every key is masked (lse = -inf: the forward wrote zeros) has
// zero gradients and contributes nothing to dK and dV, whatever its query or grad_output hold. A
// NaN in a visible score, in V or in grad_output reaches the gradients as NaN, as in PyTorch's
// autograd. The gradient with respect to an additive mask is not computed.
//
// Tiles: 96 query rows x 192 keys (multiples of the GEMM micro-kernel's 12 x 32 register tile
// with AVX-512 float, 6 x 16 with AVX2). The five products of a tile run on kernels/gemm.hpp's
// micro-kernel with operands packed here: the key block's K^T, V^T and K once for all of its
// query blocks; Q, dO, P^T, dS and dS^T per tile, P and dS straight from the row-major tiles the
// exp and dS passes write. Measured in bench_attention_backward (float, AVX-512, B 1, H 8, D 64,
// one thread): 130 / 144 GFLOPS at L = 1024 / 4096 against 103 / 111 with Eigen's products on the
// same tiles, which repack both operands of every product (AttentionTileGemm::eigen).
//
// Threads: work items are (batch, head, range of key blocks). When batch * heads is below
// kAttentionBackwardMinWork, each head's key blocks are split into ranges, the ranges after the
// first write their dQ into buffers ([ranges - 1, Lq, D] per head), and the buffers are added to
// dQ afterwards in range order. The split depends on the problem's size only, never on the
// thread count, so results are bit-identical for every thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/attention.hpp"
#include "tessera/kernels/attention_problem.hpp"
#include "tessera/kernels/flash_attention.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera {

// The gradients of scaled_dot_product_attention with respect to its three inputs.
template <class T>
struct SDPABackwardResult {
  Tensor<T, 4> grad_query;  // [batch, heads, Lq, D]
  Tensor<T, 4> grad_key;    // [batch, heads, Lk, D]
  Tensor<T, 4> grad_value;  // [batch, heads, Lk, Dv]
};

// The forward's output and what the backward needs of it: the per-row logsumexp of the masked,
// scaled scores (-inf for a row whose every key is masked).
template <class T>
struct SDPATrainResult {
  Tensor<T, 4> output;  // [batch, heads, Lq, Dv]
  Tensor<T, 3> lse;     // [batch, heads, Lq]
};

namespace detail {

// One attention backward computation. `forward` describes the forward exactly as it ran (q, k,
// v, masks, causal, scale; forward.out is its output O); its weights, lse and key_splits fields
// are not read. lse is [batch, heads, lq] contiguous, as the forward wrote it. dq, dk, dv are
// overwritten; they are laid out like q, k, v (strided, so [B, L, H * D] buffers work too).
template <class T>
struct AttentionBackwardProblem {
  AttentionProblem<T> forward;
  const T* lse = nullptr;
  Strided<const T> dout;  // [batch, heads, lq, dv]
  Strided<T> dq, dk, dv;  // [batch, heads, lq, d], [.., lk, d], [.., lk, dv]
};

inline constexpr Index kAttentionBackwardQueryBlock = 96;  // query rows per tile
inline constexpr Index kAttentionBackwardKeyBlock = 192;   // keys per tile
// Work items that keep this many threads busy without splitting a head's keys.
inline constexpr Index kAttentionBackwardMinWork = 8;

// Into how many ranges each head's key blocks are split: a function of the problem's size only.
inline Index attention_backward_splits(Index heads_total, Index lk) {
  if (heads_total >= kAttentionBackwardMinWork) return 1;
  const Index want = (kAttentionBackwardMinWork + heads_total - 1) / heads_total;
  const Index blocks = (lk + kAttentionBackwardKeyBlock - 1) / kAttentionBackwardKeyBlock;
  return std::max<Index>(1, std::min(want, blocks / 2));  // ranges of at least two blocks
}

// Problems with nothing to recompute: zero gradients where there are any. Returns whether it
// handled the problem.
template <class T>
bool attention_backward_empty(const AttentionBackwardProblem<T>& bp) {
  const AttentionProblem<T>& p = bp.forward;
  if (p.batch > 0 && p.heads > 0 && p.lq > 0 && p.lk > 0) return false;
  for (Index b = 0; b < p.batch; ++b)
    for (Index h = 0; h < p.heads; ++h) {
      if (p.d > 0) {
        for (Index i = 0; i < p.lq; ++i) std::fill_n(bp.dq.at(b, h) + i * bp.dq.row, p.d, T(0));
        for (Index j = 0; j < p.lk; ++j) std::fill_n(bp.dk.at(b, h) + j * bp.dk.row, p.d, T(0));
      }
      if (p.dv > 0)
        for (Index j = 0; j < p.lk; ++j) std::fill_n(bp.dv.at(b, h) + j * bp.dv.row, p.dv, T(0));
    }
  return true;
}

// Whether query row i of head t has no visible key: its lse is -inf.
template <class T>
bool attention_row_dead(const AttentionBackwardProblem<T>& bp, Index t, Index i) {
  return bp.lse[t * bp.forward.lq + i] == -std::numeric_limits<T>::infinity();
}

// D_i = rowsum(dO_i o O_i) for every row ([batch * heads * lq]); 0 for rows with no visible key.
template <class T, class Alloc>
void attention_backward_delta(const AttentionBackwardProblem<T>& bp, std::vector<T, Alloc>& delta) {
  const AttentionProblem<T>& p = bp.forward;
  const Index bh = p.batch * p.heads;
  delta.assign(static_cast<std::size_t>(bh * p.lq), T(0));
  parallel_for(bh, 1, [&](Index t0, Index t1) {
    using Vec = Eigen::Matrix<T, 1, Eigen::Dynamic>;
    for (Index t = t0; t < t1; ++t) {
      const Index b = t / p.heads, h = t % p.heads;
      for (Index i = 0; i < p.lq; ++i) {
        if (attention_row_dead(bp, t, i) || p.dv == 0) continue;
        const Eigen::Map<const Vec> o(p.out.at(b, h) + i * p.out.row, p.dv);
        const Eigen::Map<const Vec> g(bp.dout.at(b, h) + i * bp.dout.row, p.dv);
        delta[static_cast<std::size_t>(t * p.lq + i)] = o.dot(g);
      }
    }
  });
}

// The scaled, masked scores of query rows [i0, i0 + rows) and keys [j0, j0 + cols) of head t
// (batch b, head h) given in s ([rows, cols], row stride ld, holding Q K^T on entry): scaled by
// p.scale, masks added, causal keys set to -inf, exactly as the forward does.
template <class T>
void attention_mask_scores(const AttentionProblem<T>& p, Index t, Index i0, Index rows, Index j0,
                           Index cols, T* s, Index ld) {
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  const MaskApplier<T> masks{p, t};
  for (Index r = 0; r < rows; ++r) {
    T* srow = s + r * ld;
    for (Index c = 0; c < cols; ++c) srow[c] *= p.scale;
    masks(i0 + r, j0, cols, srow);
    if (p.causal) {
      const Index hide_from = std::max(j0, i0 + r + 1 + p.causal_offset);
      const Index hide_to = std::min(j0 + cols, p.mask_lk);
      for (Index j = hide_from; j < hide_to; ++j) srow[j - j0] = ninf;
    }
  }
}

// P = exp(S - lse) in place on one row of n scores (vectorised, scalar tail).
template <class T>
void attention_exp_row(T* s, Index n, T lse) {
  constexpr Index W = simd::width<T>;
  const auto pl = simd::set1<T>(lse);
  Index c = 0;
  for (; c + W <= n; c += W) simd::store(s + c, simd::exp_fast(simd::sub(simd::load(s + c), pl)));
  for (; c < n; ++c) s[c] = std::exp(s[c] - lse);
}

// The same on unscaled scores q.k with nothing masked: P = exp(scale s - lse).
template <class T>
void attention_scaled_exp_row(T* s, Index n, T scale, T lse) {
  constexpr Index W = simd::width<T>;
  const auto ps = simd::set1<T>(scale), pl = simd::set1<T>(-lse);
  Index c = 0;
  for (; c + W <= n; c += W)
    simd::store(s + c, simd::exp_fast(simd::fmadd(simd::load(s + c), ps, pl)));
  for (; c < n; ++c) s[c] = std::exp(s[c] * scale - lse);
}

// dS = scale P o (dP - delta) in place over dP, on one row.
template <class T>
void attention_ds_row(const T* prob, T* dp, Index n, T scale, T delta) {
  constexpr Index W = simd::width<T>;
  const auto ps = simd::set1<T>(scale), pd = simd::set1<T>(delta);
  Index c = 0;
  for (; c + W <= n; c += W)
    simd::store(dp + c,
                simd::mul(simd::mul(simd::load(prob + c), ps), simd::sub(simd::load(dp + c), pd)));
  for (; c < n; ++c) dp[c] = prob[c] * scale * (dp[c] - delta);
}

// Per-thread tiles of the fused backward.
template <class T>
struct AttentionBackwardTiles {
  static constexpr Index BR = kAttentionBackwardQueryBlock, BC = kAttentionBackwardKeyBlock;
  AlignedVector<T> s, ds, dk, dv, q, dout;
  AttentionBackwardTiles(Index d, Index dv_)
      : s(static_cast<std::size_t>(BR * BC)),
        ds(static_cast<std::size_t>(BR * BC)),
        dk(static_cast<std::size_t>(BC * d)),
        dv(static_cast<std::size_t>(BC * dv_)),
        q(static_cast<std::size_t>(BR * d)),
        dout(static_cast<std::size_t>(BR * dv_)) {}
};

// How the tile products run: on tessera's GEMM micro-kernel (kernels/gemm.hpp) with the
// operands packed here, or on Eigen's products (the alternative, measured slower in
// bench_attention_backward).
enum class AttentionTileGemm { tessera, eigen };

// One key block of one head: where its keys and values are.
template <class T>
struct AttentionKeyBlock {
  Index j0 = 0, bc = 0;
  const T* k = nullptr;  // key j0's row
  const T* v = nullptr;
  Index k_row = 0, v_row = 0;
};

// Per-thread buffers of the packed tile products: the key block's K^T [D, bc] and V^T [Dv, bc]
// (right-hand sides of S and dP) and K [bc, D] (of dQ) in the GEMM's NR-wide slivers, packed once
// per key block; a and b for the operands packed per tile.
template <class T>
struct AttentionPackBuffers {
  using Blk = GemmBlocking<T>;
  static constexpr Index BR = kAttentionBackwardQueryBlock, BC = kAttentionBackwardKeyBlock;
  static Index up(Index n, Index m) { return (n + m - 1) / m * m; }
  AlignedVector<T> kt, vt, kn, a, b;
  AttentionPackBuffers(Index d, Index dv, bool used) {
    if (!used) return;
    const Index wide = std::max({d, dv, BR, BC});
    kt.resize(static_cast<std::size_t>(d * up(BC, Blk::NR)));
    vt.resize(static_cast<std::size_t>(dv * up(BC, Blk::NR)));
    kn.resize(static_cast<std::size_t>(BC * up(d, Blk::NR)));
    a.resize(static_cast<std::size_t>(up(std::max(BR, BC), Blk::MR) * wide + kGemmPackPad<T>));
    b.resize(static_cast<std::size_t>(std::max(BR, BC) * up(wide, Blk::NR)));
  }
};

// Packs op(b) = x [k, n] (row stride ldx), or x^T for x [n, k] with trans, into NR-wide slivers.
template <class T>
void attention_pack_b(const T* x, Index ldx, bool trans, Index k, Index n, T* dst) {
  constexpr Index NR = GemmBlocking<T>::NR;
  for (Index j0 = 0; j0 < n; j0 += NR) {
    const Index nr = std::min<Index>(NR, n - j0);
    T* d = dst + j0 * k;
    if (!trans && nr == NR) {
      for (Index kk = 0; kk < k; ++kk) {
        const T* src = x + kk * ldx + j0;
#pragma GCC unroll 32
        for (Index j = 0; j < NR; ++j) d[kk * NR + j] = src[j];
      }
    } else {
      gemm_pack_b_sliver<T, NR>(x, ldx, trans, 0, j0, k, nr, d);
    }
  }
}

// Packs op(a) = x^T, x [k, m] row-major (row stride ldx), into MR-tall slivers: sliver s holds
// x[kk][s MR + r] at kk MR + r, a contiguous copy of MR values per row of x.
template <class T>
void attention_pack_a_transposed(const T* x, Index ldx, Index k, Index m, T* dst) {
  constexpr Index MR = GemmBlocking<T>::MR;
  for (Index s0 = 0; s0 < m; s0 += MR, dst += MR * k) {
    const Index mr = std::min(MR, m - s0);
    if (mr == MR) {
      for (Index kk = 0; kk < k; ++kk) {
        const T* src = x + kk * ldx + s0;
        T* d = dst + kk * MR;
#pragma GCC unroll 16
        for (Index r = 0; r < MR; ++r) d[r] = src[r];  // a few vector moves, not a memmove call
      }
    } else {
      for (Index kk = 0; kk < k; ++kk) {
        std::copy_n(x + kk * ldx + s0, mr, dst + kk * MR);
        std::fill_n(dst + kk * MR + mr, MR - mr, T(0));
      }
    }
  }
}

// c [m, n] (row stride ldc) = (or += with add) A B from packed operands over depth k.
template <class T>
void attention_packed_product(Index m, Index n, Index k, const T* ap, const T* bp, T* c, Index ldc,
                              bool add) {
  using Blk = GemmBlocking<T>;
  constexpr Index MR = Blk::MR, NR = Blk::NR;
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!add)
      for (Index i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, T(0));
    return;
  }
  alignas(64) T tmp[MR * NR];
  for (Index j0 = 0; j0 < n; j0 += NR) {
    const Index nr = std::min(NR, n - j0);
    const T* bs = bp + j0 * k;
    for (Index i0 = 0; i0 < m; i0 += MR) {
      const Index mr = std::min(MR, m - i0);
      const T* as = ap + i0 * k;
      T* ct = c + i0 * ldc + j0;
      if (mr == MR && nr == NR) {
        gemm_micro_kernel<T, Blk::MR, Blk::NRP>(k, as, bs, ct, ldc, T(1), add);
      } else {
        gemm_micro_kernel<T, Blk::MR, Blk::NRP>(k, as, bs, tmp, NR, T(1), false);
        for (Index r = 0; r < mr; ++r)
          for (Index j = 0; j < nr; ++j)
            ct[r * ldc + j] = add ? ct[r * ldc + j] + tmp[r * NR + j] : tmp[r * NR + j];
      }
    }
  }
}

// c [m, n] (row stride ldc) = (or += with accumulate) op(a) op(b) on Eigen's products: a is
// [m, k] (row stride lda) or [k, m] with trans_a; b likewise.
template <class T>
void attention_eigen_product(Index m, Index n, Index k, const T* a, Index lda, bool trans_a,
                             const T* b, Index ldb, bool trans_b, T* c, Index ldc,
                             bool accumulate) {
  if (m == 0 || n == 0) return;
  GemmProblem<T> g;
  g.m = m, g.n = n, g.k = k;
  g.a = a, g.lda = lda, g.trans_a = trans_a;
  g.b = b, g.ldb = ldb, g.trans_b = trans_b;
  g.c = c, g.ldc = ldc, g.accumulate = accumulate;
  gemm_small(g);  // Eigen's product on the maps
}

// One tile: query rows [i0, i0 + br) x the keys of `kb`, head t; adds to dQ (rows i0.. of dq,
// row stride dq_row) and to the key block's dK, dV tiles. With tessera products, `pk` holds the
// key block's packed K^T, V^T and K.
template <class T, AttentionTileGemm G>
void attention_backward_tile(const AttentionBackwardProblem<T>& bp, Index t, Index i0, Index br,
                             const AttentionKeyBlock<T>& kb, const T* delta, T* dq, Index dq_row,
                             AttentionBackwardTiles<T>& w, AttentionPackBuffers<T>& pk) {
  using Tiles = AttentionBackwardTiles<T>;
  constexpr Index BC = Tiles::BC;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  constexpr bool packed = G == AttentionTileGemm::tessera;
  const AttentionProblem<T>& p = bp.forward;
  const Index b = t / p.heads, h = t % p.heads, j0 = kb.j0, bc = kb.bc;
  const T* lse = bp.lse + t * p.lq + i0;

  // Rows with no visible key take no part: their Q and dO rows are read as zeros (a NaN there
  // must not reach dK or dV through a zero probability) and their dS rows are zero.
  bool any_dead = false;
  for (Index r = 0; r < br && !any_dead; ++r) any_dead = lse[r] == ninf;
  const T* qp = p.q.at(b, h) + i0 * p.q.row;
  Index q_row = p.q.row;
  const T* gp = bp.dout.at(b, h) + i0 * bp.dout.row;
  Index g_row = bp.dout.row;
  if (any_dead) {
    for (Index r = 0; r < br; ++r) {
      const bool dead = lse[r] == ninf;
      for (Index c = 0; c < p.d; ++c) w.q[r * p.d + c] = dead ? T(0) : qp[r * q_row + c];
      for (Index c = 0; c < p.dv; ++c) w.dout[r * p.dv + c] = dead ? T(0) : gp[r * g_row + c];
    }
    qp = w.q.data(), q_row = p.d, gp = w.dout.data(), g_row = p.dv;
  }
  T* S = w.s.data();
  T* dS = w.ds.data();

  // S: [br, bc] = Q [br, D] x K^T [D, bc]
  if constexpr (packed) {
    if (p.d > 0) gemm_pack_a<T, GemmBlocking<T>::MR>(qp, q_row, false, 0, 0, br, p.d, pk.a.data());
    attention_packed_product(br, bc, p.d, pk.a.data(), pk.kt.data(), S, BC, false);
  } else {
    attention_eigen_product(br, bc, p.d, qp, q_row, false, kb.k, kb.k_row, true, S, BC, false);
  }
  // Does anything but the lse shape this tile? (masks over its keys, or a causal horizon in it)
  const bool masked_keys = j0 < p.mask_lk && (p.masks[0] || p.masks[1]);
  const bool cut = p.causal && j0 < p.mask_lk && j0 + bc - 1 > i0 + p.causal_offset;
  if (masked_keys || cut) attention_mask_scores(p, t, i0, br, j0, bc, S, BC);
  // P = exp(S - lse), in place
  for (Index r = 0; r < br; ++r) {
    T* prow = S + r * BC;
    if (lse[r] == ninf)
      std::fill_n(prow, bc, T(0));
    else if (masked_keys || cut)
      attention_exp_row(prow, bc, lse[r]);
    else
      attention_scaled_exp_row(prow, bc, p.scale, lse[r]);
  }
  // dV_blk: [bc, Dv] += P^T [bc, br] x dO [br, Dv]
  if constexpr (packed) {
    if (p.dv > 0) {
      attention_pack_a_transposed(S, BC, br, bc, pk.a.data());
      attention_pack_b(gp, g_row, false, br, p.dv, pk.b.data());
      attention_packed_product(bc, p.dv, br, pk.a.data(), pk.b.data(), w.dv.data(), p.dv, true);
    }
  } else {
    attention_eigen_product(bc, p.dv, br, S, BC, true, gp, g_row, false, w.dv.data(), p.dv, true);
  }
  // dP: [br, bc] = dO [br, Dv] x V^T [Dv, bc]
  if constexpr (packed) {
    if (p.dv > 0)
      gemm_pack_a<T, GemmBlocking<T>::MR>(gp, g_row, false, 0, 0, br, p.dv, pk.a.data());
    attention_packed_product(br, bc, p.dv, pk.a.data(), pk.vt.data(), dS, BC, false);
  } else {
    attention_eigen_product(br, bc, p.dv, gp, g_row, false, kb.v, kb.v_row, true, dS, BC, false);
  }
  // dS = scale P o (dP - D), in place over dP: the scale of dQ and dK folded in once here.
  for (Index r = 0; r < br; ++r) {
    T* dsrow = dS + r * BC;
    if (lse[r] == ninf)
      std::fill_n(dsrow, bc, T(0));
    else
      attention_ds_row(S + r * BC, dsrow, bc, p.scale, delta[r]);
  }
  if (p.d == 0) return;
  if constexpr (packed) {
    // dQ: [br, D] += dS [br, bc] x K [bc, D]
    gemm_pack_a<T, GemmBlocking<T>::MR>(dS, BC, false, 0, 0, br, bc, pk.a.data());
    attention_packed_product(br, p.d, bc, pk.a.data(), pk.kn.data(), dq, dq_row, true);
    // dK_blk: [bc, D] += dS^T [bc, br] x Q [br, D]
    attention_pack_a_transposed(dS, BC, br, bc, pk.a.data());
    attention_pack_b(qp, q_row, false, br, p.d, pk.b.data());
    attention_packed_product(bc, p.d, br, pk.a.data(), pk.b.data(), w.dk.data(), p.d, true);
  } else {
    attention_eigen_product(br, p.d, bc, dS, BC, false, kb.k, kb.k_row, false, dq, dq_row, true);
    attention_eigen_product(bc, p.d, br, dS, BC, true, qp, q_row, false, w.dk.data(), p.d, true);
  }
}

// The fused backward (see the top of this file), its tile products on G.
template <class T, AttentionTileGemm G>
void attention_backward_fused_with(const AttentionBackwardProblem<T>& bp) {
  constexpr Index BR = kAttentionBackwardQueryBlock, BC = kAttentionBackwardKeyBlock;
  const AttentionProblem<T>& p = bp.forward;
  if (attention_backward_empty(bp)) return;
  const Index bh = p.batch * p.heads;
  AlignedVector<T> delta;
  attention_backward_delta(bp, delta);

  const Index splits = attention_backward_splits(bh, p.lk);
  const Index nkb = (p.lk + BC - 1) / BC;
  const Index chunk = (nkb + splits - 1) / splits;  // key blocks per range
  // dQ of ranges 1.. of each head: [splits - 1][bh][lq, d]
  AlignedVector<T> partial(static_cast<std::size_t>((splits - 1) * bh * p.lq * p.d));

  const Index n_work = bh * splits;
  std::atomic<Index> next{0};
  parallel_for(std::min<Index>(num_threads(), n_work), 1, [&](Index, Index) {
    AttentionBackwardTiles<T> w(p.d, p.dv);
    AttentionPackBuffers<T> pk(p.d, p.dv, G == AttentionTileGemm::tessera);
    for (Index item; (item = next.fetch_add(1, std::memory_order_relaxed)) < n_work;) {
      const Index t = item / splits, s = item % splits;
      const Index b = t / p.heads, h = t % p.heads;
      T* dq;
      Index dq_row;
      if (s == 0) {
        dq = bp.dq.at(b, h), dq_row = bp.dq.row;
      } else {
        dq = partial.data() + ((s - 1) * bh + t) * p.lq * p.d, dq_row = p.d;
      }
      if (p.d > 0)
        for (Index i = 0; i < p.lq; ++i) std::fill_n(dq + i * dq_row, p.d, T(0));
      const Index kb_end = std::min(nkb, (s + 1) * chunk);
      for (Index kbi = s * chunk; kbi < kb_end; ++kbi) {
        AttentionKeyBlock<T> kb;
        kb.j0 = kbi * BC, kb.bc = std::min(BC, p.lk - kb.j0);
        kb.k = p.k.at(b, h) + kb.j0 * p.k.row, kb.k_row = p.k.row;
        kb.v = p.v.at(b, h) + kb.j0 * p.v.row, kb.v_row = p.v.row;
        // Causal: query blocks whose last row sees none of these keys are skipped (only keys
        // among the first mask_lk can be hidden).
        const bool causal_skip = p.causal && kb.j0 + kb.bc <= p.mask_lk;
        const Index i_first =
            causal_skip ? std::max<Index>(0, kb.j0 - p.causal_offset) / BR * BR : 0;
        std::fill(w.dk.begin(), w.dk.end(), T(0));
        std::fill(w.dv.begin(), w.dv.end(), T(0));
        if (i_first < p.lq) {
          if constexpr (G == AttentionTileGemm::tessera) {
            attention_pack_b(kb.k, kb.k_row, true, p.d, kb.bc, pk.kt.data());
            attention_pack_b(kb.v, kb.v_row, true, p.dv, kb.bc, pk.vt.data());
            attention_pack_b(kb.k, kb.k_row, false, kb.bc, p.d, pk.kn.data());
          }
          for (Index i0 = i_first; i0 < p.lq; i0 += BR) {
            const Index br = std::min(BR, p.lq - i0);
            if (causal_skip && i0 + br - 1 + p.causal_offset < kb.j0) continue;
            attention_backward_tile<T, G>(bp, t, i0, br, kb, delta.data() + t * p.lq + i0,
                                          dq + i0 * dq_row, dq_row, w, pk);
          }
        }
        for (Index j = 0; j < kb.bc; ++j) {
          if (p.d > 0)
            std::copy_n(w.dk.data() + j * p.d, p.d, bp.dk.at(b, h) + (kb.j0 + j) * bp.dk.row);
          if (p.dv > 0)
            std::copy_n(w.dv.data() + j * p.dv, p.dv, bp.dv.at(b, h) + (kb.j0 + j) * bp.dv.row);
        }
      }
    }
  });

  // dQ = range 0 + range 1 + ... in that order; rows with no visible key are zero.
  parallel_for(bh, 1, [&](Index t0, Index t1) {
    for (Index t = t0; t < t1; ++t) {
      const Index b = t / p.heads, h = t % p.heads;
      for (Index i = 0; i < p.lq; ++i) {
        T* row = bp.dq.at(b, h) + i * bp.dq.row;
        if (attention_row_dead(bp, t, i)) {
          std::fill_n(row, p.d, T(0));
          continue;
        }
        for (Index s = 1; s < splits; ++s) {
          const T* part = partial.data() + (((s - 1) * bh + t) * p.lq + i) * p.d;
          for (Index c = 0; c < p.d; ++c) row[c] += part[c];
        }
      }
    }
  });
}

// The fused backward on the faster tile products (measured in bench_attention_backward).
template <class T>
void attention_backward_fused_impl(const AttentionBackwardProblem<T>& bp) {
  attention_backward_fused_with<T, AttentionTileGemm::tessera>(bp);
}

TESSERA_BEGIN_MODE_NAMESPACE
// attention_backward_fused_impl, or in the compiled mode its build for the level chosen at run
// time.
template <class T>
void attention_backward_fused(const AttentionBackwardProblem<T>& bp) {
  if constexpr (kDispatched<T>)
    kernels<T>().attention_backward_fused(bp);
  else
    attention_backward_fused_impl(bp);
}
TESSERA_END_MODE_NAMESPACE

// The logsumexp of every row of the problem's masked, scaled scores, into p.lse (which must be
// set): blocks of query rows at a time, for the reference forward, which does not write it.
template <class T>
void attention_lse_reference_impl(const AttentionProblem<T>& p) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return;
  parallel_for(p.batch * p.heads, 1, [&](Index t0, Index t1) {
    const Index block = std::min<Index>(kAttentionQueryBlock, p.lq);
    Mat scores(block, p.lk);
    for (Index t = t0; t < t1; ++t) {
      const Index b = t / p.heads, h = t % p.heads;
      const CMap K(p.k.at(b, h), p.lk, p.d, Eigen::OuterStride<>(p.k.row));
      for (Index i0 = 0; i0 < p.lq; i0 += block) {
        const Index rows = std::min(block, p.lq - i0);
        const CMap Q(p.q.at(b, h) + i0 * p.q.row, rows, p.d, Eigen::OuterStride<>(p.q.row));
        auto S = scores.topRows(rows);
        if (p.d > 0 && p.lk > 0)
          S.noalias() = Q * K.transpose();
        else
          S.setZero();
        attention_mask_scores(p, t, i0, rows, 0, p.lk, scores.data(), p.lk);
        for (Index r = 0; r < rows; ++r)
          p.lse[t * p.lq + i0 + r] = logsumexp_row(scores.data() + r * p.lk, p.lk);
      }
    }
  });
}

TESSERA_BEGIN_MODE_NAMESPACE
// attention_lse_reference_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void attention_lse_reference(const AttentionProblem<T>& p) {
  if constexpr (kDispatched<T>)
    kernels<T>().attention_lse_reference(p);
  else
    attention_lse_reference_impl(p);
}
TESSERA_END_MODE_NAMESPACE

// The backward with each head's Lq x Lk probabilities materialised (Eigen products): for tests
// and as a fallback. The same formulas as the fused path, P = exp(S - lse).
template <class T>
void attention_backward_reference_impl(const AttentionBackwardProblem<T>& bp) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  using MMap = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  const AttentionProblem<T>& p = bp.forward;
  if (attention_backward_empty(bp)) return;
  parallel_for(p.batch * p.heads, 1, [&](Index t0, Index t1) {
    Mat P(p.lq, p.lk), dS(p.lq, p.lk), Q(p.lq, p.d), dO(p.lq, p.dv);
    for (Index t = t0; t < t1; ++t) {
      const Index b = t / p.heads, h = t % p.heads;
      const T* lse = bp.lse + t * p.lq;
      // Q and dO with the rows that see no key zeroed: those rows take no part.
      Q = CMap(p.q.at(b, h), p.lq, p.d, Eigen::OuterStride<>(p.q.row));
      dO = CMap(bp.dout.at(b, h), p.lq, p.dv, Eigen::OuterStride<>(bp.dout.row));
      const CMap O(p.out.at(b, h), p.lq, p.dv, Eigen::OuterStride<>(p.out.row));
      const CMap K(p.k.at(b, h), p.lk, p.d, Eigen::OuterStride<>(p.k.row));
      const CMap V(p.v.at(b, h), p.lk, p.dv, Eigen::OuterStride<>(p.v.row));
      for (Index i = 0; i < p.lq; ++i)
        if (lse[i] == ninf) Q.row(i).setZero(), dO.row(i).setZero();
      // S: [Lq, Lk] = scale Q K^T + masks; P = exp(S - lse)
      if (p.d > 0)
        P.noalias() = Q * K.transpose();
      else
        P.setZero();
      attention_mask_scores(p, t, 0, p.lq, 0, p.lk, P.data(), p.lk);
      for (Index i = 0; i < p.lq; ++i)
        if (lse[i] == ninf)
          P.row(i).setZero();
        else
          P.row(i) = (P.row(i).array() - lse[i]).exp().matrix();
      MMap dV(bp.dv.at(b, h), p.lk, p.dv, Eigen::OuterStride<>(bp.dv.row));
      MMap dK(bp.dk.at(b, h), p.lk, p.d, Eigen::OuterStride<>(bp.dk.row));
      MMap dQ(bp.dq.at(b, h), p.lq, p.d, Eigen::OuterStride<>(bp.dq.row));
      // dV: [Lk, Dv] = P^T dO;  dP: [Lq, Lk] = dO V^T
      if (p.dv > 0) {
        dV.noalias() = P.transpose() * dO;
        dS.noalias() = dO * V.transpose();
      } else {
        dS.setZero();
      }
      for (Index i = 0; i < p.lq; ++i) {
        const T delta = lse[i] == ninf || p.dv == 0 ? T(0) : O.row(i).dot(dO.row(i));
        if (lse[i] == ninf)
          dS.row(i).setZero();
        else
          dS.row(i) = (P.row(i).array() * (dS.row(i).array() - delta)).matrix();
      }
      if (p.d == 0) continue;
      // dQ: [Lq, D] = scale dS K;  dK: [Lk, D] = scale dS^T Q
      dQ.noalias() = p.scale * (dS * K);
      dK.noalias() = p.scale * (dS.transpose() * Q);
      for (Index i = 0; i < p.lq; ++i)
        if (lse[i] == ninf) dQ.row(i).setZero();
    }
  });
}

TESSERA_BEGIN_MODE_NAMESPACE
// attention_backward_reference_impl, or in the compiled mode its build for the level chosen at run
// time.
template <class T>
void attention_backward_reference(const AttentionBackwardProblem<T>& bp) {
  if constexpr (kDispatched<T>)
    kernels<T>().attention_backward_reference(bp);
  else
    attention_backward_reference_impl(bp);
}
TESSERA_END_MODE_NAMESPACE

// Runs the backward on the fused kernel, or on the reference with AttentionImpl::reference.
template <class T>
void attention_backward_run(const AttentionBackwardProblem<T>& bp,
                            AttentionImpl impl = AttentionImpl::automatic) {
  if (impl == AttentionImpl::reference)
    attention_backward_reference(bp);
  else
    attention_backward_fused(bp);
}

// The problem of a [B, H, L, D] call, shapes checked, naming `fn` in errors. The mask rows are
// built into `mrows` (which the problem points at).
template <class T, class Q, class K, class V>
AttentionProblem<T> sdpa_problem(std::string_view fn, const Q& qv, const K& kv, const V& vv,
                                 const SDPAOptions& opts, std::optional<MaskRows>& mrows) {
  const Index B = qv.dim(0), H = qv.dim(1), Lq = qv.dim(2), D = qv.dim(3);
  const Index Lk = kv.dim(2), Dv = vv.dim(3);
  const Index k_expected[] = {B, H, Lk, D};
  check_shape_equal(fn, "key", kv.shape(), k_expected);
  const Index v_expected[] = {B, H, Lk, Dv};
  if (vv.dim(0) != B || vv.dim(1) != H || vv.dim(2) != Lk)
    raise<ShapeError>(fn, "argument 'value' has shape ", shape_string(vv.shape()), ", expected ",
                      shape_string(v_expected), " (batch, heads and length of the keys)");
  if (opts.scale) check_finite_in<T>(fn, "scale", *opts.scale);
  AttentionProblem<T> p;
  p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk, p.d = D, p.dv = Dv;
  p.q = {qv.data(), H * Lq * D, Lq * D, D};
  p.k = {kv.data(), H * Lk * D, Lk * D, D};
  p.v = {vv.data(), H * Lk * Dv, Lk * Dv, Dv};
  p.scale =
      static_cast<T>(opts.scale.value_or(D > 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0));
  p.causal = opts.causal;
  p.mask_lk = Lk;
  if (opts.mask) {
    const Index target[] = {B, H, Lq, Lk};
    mrows.emplace(*opts.mask, target, fn, "mask");
    p.masks[0] = &*mrows;
  }
  return p;
}

}  // namespace detail

// scaled_dot_product_attention for training: the output [batch, heads, Lq, Dv] and the per-row
// logsumexp of the masked, scaled scores [batch, heads, Lq] that the backward needs (-inf for a
// row whose every key is masked). Same arguments, options and errors as
// scaled_dot_product_attention; the output is the same. The fused path writes the lse as it goes
// (AttentionProblem::lse); with AttentionImpl::reference it is computed from blocks of scores.
template <TensorLike Q, TensorLike K, TensorLike V>
SDPATrainResult<scalar_t<Q>> scaled_dot_product_attention_train(const Q& q, const K& k, const V& v,
                                                                const SDPAOptions& opts = {}) {
  using T = scalar_t<Q>;
  static_assert(rank_v<Q> == 4 && rank_v<K> == 4 && rank_v<V> == 4,
                "scaled_dot_product_attention_train takes [batch, heads, seq, dim] tensors");
  static_assert(std::is_same_v<T, scalar_t<K>> && std::is_same_v<T, scalar_t<V>>,
                "scaled_dot_product_attention_train: q, k and v scalar types differ");
  constexpr std::string_view fn = "tessera::scaled_dot_product_attention_train";
  const auto qv = cview(q);
  const auto kv = cview(k);
  const auto vv = cview(v);
  std::optional<detail::MaskRows> mrows;
  detail::AttentionProblem<T> p = detail::sdpa_problem<T>(fn, qv, kv, vv, opts, mrows);
  SDPATrainResult<T> r{Tensor<T, 4>(Shape<4>{p.batch, p.heads, p.lq, p.dv}, uninitialized),
                       Tensor<T, 3>(Shape<3>{p.batch, p.heads, p.lq}, uninitialized)};
  p.out = {r.output.data(), p.heads * p.lq * p.dv, p.lq * p.dv, p.dv};
  p.lse = r.lse.data();
  if (opts.impl == AttentionImpl::reference) {
    detail::attention_reference(p);
    detail::attention_lse_reference(p);
  } else {
    detail::attention_fused(p);
  }
  return r;
}

// The gradients of scaled_dot_product_attention(query, key, value, opts) with respect to query
// [batch, heads, Lq, D], key [batch, heads, Lk, D] and value [batch, heads, Lk, Dv], given the
// forward's output `out` [batch, heads, Lq, Dv], its logsumexp `lse` [batch, heads, Lq] (from
// scaled_dot_product_attention_train) and the gradient of the loss with respect to the output,
// `grad_out` [batch, heads, Lq, Dv]. `opts` must be the forward's (mask, causal, scale); impl
// chooses the fused kernel (automatic, fused) or the materialised reference.
//
// Math: FlashAttention-2's backward (Dao 2023, Algorithm 2), see the top of this file; it equals
// PyTorch autograd through softmax(scale Q K^T + mask) V. Rows whose every key is masked get
// zero gradients (PyTorch would give NaN). The gradient with respect to an additive mask is not
// provided.
//
// Errors: ShapeError naming "tessera::scaled_dot_product_attention_backward", the argument
// ('key', 'value', 'out', 'lse', 'grad_out', 'mask'), the expected and the actual shape;
// ValueError for a scale that is not finite in the scalar type.
template <TensorLike Q, TensorLike K, TensorLike V, TensorLike O, TensorLike L, TensorLike G>
SDPABackwardResult<scalar_t<Q>> scaled_dot_product_attention_backward(
    const Q& query, const K& key, const V& value, const O& out, const L& lse, const G& grad_out,
    const SDPAOptions& opts = {}) {
  using T = scalar_t<Q>;
  static_assert(
      rank_v<Q> == 4 && rank_v<K> == 4 && rank_v<V> == 4 && rank_v<O> == 4 && rank_v<G> == 4,
      "scaled_dot_product_attention_backward takes [batch, heads, seq, dim] tensors");
  static_assert(rank_v<L> == 3, "scaled_dot_product_attention_backward: lse is [batch, heads, Lq]");
  static_assert(std::is_same_v<T, scalar_t<K>> && std::is_same_v<T, scalar_t<V>> &&
                    std::is_same_v<T, scalar_t<O>> && std::is_same_v<T, scalar_t<L>> &&
                    std::is_same_v<T, scalar_t<G>>,
                "scaled_dot_product_attention_backward: the scalar types differ");
  constexpr std::string_view fn = "tessera::scaled_dot_product_attention_backward";
  const auto qv = cview(query);
  const auto kv = cview(key);
  const auto vv = cview(value);
  const auto ov = cview(out);
  const auto lv = cview(lse);
  const auto gv = cview(grad_out);
  std::optional<detail::MaskRows> mrows;
  const detail::AttentionProblem<T> fp = detail::sdpa_problem<T>(fn, qv, kv, vv, opts, mrows);
  const Index B = fp.batch, H = fp.heads, Lq = fp.lq, Lk = fp.lk, D = fp.d, Dv = fp.dv;
  const Index o_expected[] = {B, H, Lq, Dv};
  detail::check_shape_equal(fn, "out", ov.shape(), o_expected);
  const Index l_expected[] = {B, H, Lq};
  detail::check_shape_equal(fn, "lse", lv.shape(), l_expected);
  detail::check_shape_equal(fn, "grad_out", gv.shape(), o_expected);

  SDPABackwardResult<T> r{Tensor<T, 4>(Shape<4>{B, H, Lq, D}, uninitialized),
                          Tensor<T, 4>(Shape<4>{B, H, Lk, D}, uninitialized),
                          Tensor<T, 4>(Shape<4>{B, H, Lk, Dv}, uninitialized)};
  detail::AttentionBackwardProblem<T> bp;
  bp.forward = fp;
  bp.forward.out = {const_cast<T*>(ov.data()), H * Lq * Dv, Lq * Dv, Dv};  // read only
  bp.lse = lv.data();
  bp.dout = {gv.data(), H * Lq * Dv, Lq * Dv, Dv};
  bp.dq = {r.grad_query.data(), H * Lq * D, Lq * D, D};
  bp.dk = {r.grad_key.data(), H * Lk * D, Lk * D, D};
  bp.dv = {r.grad_value.data(), H * Lk * Dv, Lk * Dv, Dv};
  detail::attention_backward_run(bp, opts.impl);
  return r;
}

}  // namespace tessera
