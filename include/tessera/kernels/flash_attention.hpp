// tessera: fused attention with an online softmax (Milakov & Gimelshein 2018; FlashAttention,
// Dao et al. 2022). For a few query rows at a time it streams over blocks of keys and values:
// computes the score tile, updates each row's running maximum m and sum l, rescales the output
// accumulator by exp(m_old - m_new), adds P V, and divides by l once at the end. The Lq x Lk score
// matrix never exists; the working memory is one packed copy of a head's K and V.
//
// Tiles: kRows query rows x kKeys keys. The score tile S = Q K^T is register-blocked as kRows x
// (kKeys / W) packets (W lanes: 16 floats with AVX-512), with K packed transposed per head so each
// step loads kKeys / W packets of K^T and broadcasts kRows query values. P V is blocked the same
// way over the value columns, with V packed and padded to whole packets. With AVX-512 and float
// that is 4 x 4 = 16 accumulators for each product, half the register file. The tile P (kRows x
// kKeys) lives in a small stack buffer; K^T and V for a head are (D + Dv) x Lk values, reused by
// every query block of that head.
//
// The per-row logsumexp (m + log l) is what a backward pass needs to recompute the tiles; it is
// returned through AttentionProblem::lse when requested.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/attention_problem.hpp"
#include "tessera/kernels/simd.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera::detail {

// Applies a problem's masks to a tile of one query row's scores: keys [j0, j0 + n).
template <class T>
struct MaskApplier {
  const AttentionProblem<T>& p;
  Index head;  // batch * heads + head
  void operator()(Index i, Index j0, Index n, T* srow) const {
    const Index cols = std::min(n, p.mask_lk - j0);
    if (cols <= 0) return;
    for (const MaskRows* m : p.masks)
      if (m) m->apply_range(head * p.lq + i, j0, srow, srow, cols);
  }
};

template <class T>
struct FlashTile {
  static constexpr Index W = simd::width<T>;
  static constexpr Index kRows = 4;  // query rows per micro tile
  static constexpr Index kKeyPackets = 4;
  static constexpr Index kKeys = kKeyPackets * W;  // keys per tile (64 floats with AVX-512)
  static constexpr Index kValuePackets = 4;        // value columns per P V pass: 4 packets
};

// A head's K packed transposed ([D, Lk_pad], keys contiguous) and V packed ([Lk_pad, Dv_pad]),
// both zero-padded: Lk to a multiple of kKeys, Dv to a multiple of the packet width.
template <class T>
struct PackedHead {
  std::vector<T> kt, v;
  Index lk_pad = 0, dv_pad = 0;
  Index packed_index = -1;  // which (batch * heads + head) is packed

  void pack(const T* k, Index k_row, const T* vv, Index v_row, Index lk, Index d, Index dv) {
    using Tile = FlashTile<T>;
    lk_pad = (lk + Tile::kKeys - 1) / Tile::kKeys * Tile::kKeys;
    dv_pad = (dv + Tile::W - 1) / Tile::W * Tile::W;
    kt.assign(static_cast<std::size_t>(d * lk_pad), T(0));
    v.assign(static_cast<std::size_t>(lk_pad * dv_pad), T(0));
    for (Index j = 0; j < lk; ++j) {
      const T* kr = k + j * k_row;
      for (Index c = 0; c < d; ++c) kt[static_cast<std::size_t>(c * lk_pad + j)] = kr[c];
      std::copy_n(vv + j * v_row, dv, v.data() + j * dv_pad);
    }
  }
};

// S[r][0..kKeys) = sum_d q[r][d] * KT[d][j0 + ...], for R <= kRows rows.
template <class T, int R>
EIGEN_STRONG_INLINE void score_tile(const T* const* q, const T* kt, Index lk_pad, Index d, T* s) {
  using P = simd::Packet<T>;
  using Tile = FlashTile<T>;
  constexpr Index W = Tile::W;
  P acc[R][Tile::kKeyPackets];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < Tile::kKeyPackets; ++p) acc[r][p] = simd::set1<T>(0);
  for (Index c = 0; c < d; ++c) {
    const T* krow = kt + c * lk_pad;
    P kp[Tile::kKeyPackets];
#pragma GCC unroll 16
    for (int p = 0; p < Tile::kKeyPackets; ++p) kp[p] = simd::load(krow + p * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const P qv = simd::set1<T>(q[r][c]);
#pragma GCC unroll 16
      for (int p = 0; p < Tile::kKeyPackets; ++p) acc[r][p] = simd::fmadd(qv, kp[p], acc[r][p]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < Tile::kKeyPackets; ++p) simd::store(s + r * Tile::kKeys + p * W, acc[r][p]);
}

// O[r][cols] += sum_j P[r][j] * V[j][cols] for a slab of NP packets of columns from col0. NP is
// a compile-time count so that the accumulators stay in registers.
template <class T, int R, int NP>
EIGEN_STRONG_INLINE void pv_tile(const T* p_tile, const T* v, Index dv_pad, Index col0, T* o,
                                 Index o_row) {
  using P = simd::Packet<T>;
  using Tile = FlashTile<T>;
  constexpr Index W = Tile::W;
  P acc[R][NP];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) acc[r][p] = simd::load(o + r * o_row + col0 + p * W);
  for (Index j = 0; j < Tile::kKeys; ++j) {
    const T* vrow = v + j * dv_pad + col0;
    P vp[NP];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) vp[p] = simd::load(vrow + p * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const P pr = simd::set1<T>(p_tile[r * Tile::kKeys + j]);
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) acc[r][p] = simd::fmadd(pr, vp[p], acc[r][p]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) simd::store(o + r * o_row + col0 + p * W, acc[r][p]);
}

template <class T, int R>
void pv_block(const T* p_tile, const T* v, Index dv_pad, T* o) {
  using Tile = FlashTile<T>;
  constexpr Index slab = Tile::kValuePackets * Tile::W;
  Index c0 = 0;
  for (; c0 + slab <= dv_pad; c0 += slab)
    pv_tile<T, R, Tile::kValuePackets>(p_tile, v, dv_pad, c0, o, dv_pad);
  switch ((dv_pad - c0) / Tile::W) {
    case 3:
      pv_tile<T, R, 3>(p_tile, v, dv_pad, c0, o, dv_pad);
      break;
    case 2:
      pv_tile<T, R, 2>(p_tile, v, dv_pad, c0, o, dv_pad);
      break;
    case 1:
      pv_tile<T, R, 1>(p_tile, v, dv_pad, c0, o, dv_pad);
      break;
    default:
      break;
  }
}

// Updates the running state of rows [i0, i0 + R) with the key block at j0: scores, masks,
// online softmax (m, l, rescaled accumulator), then acc += P V.
template <class T, int R, class ApplyMasks>
EIGEN_STRONG_INLINE void flash_tile(const AttentionProblem<T>& p, const PackedHead<T>& ph,
                                    const T* const* q, Index i0, Index j0, T* m, T* l, T* acc,
                                    const ApplyMasks& apply_masks) {
  using Tile = FlashTile<T>;
  constexpr Index W = Tile::W;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  alignas(64) T s[Tile::kRows * Tile::kKeys];
  score_tile<T, R>(q, ph.kt.data() + j0, ph.lk_pad, p.d, s);
  const Index valid = std::min(Tile::kKeys, p.lk - j0);
  const auto ps = simd::set1<T>(p.scale);
  bool any_visible = false;
  for (int r = 0; r < R; ++r) {
    T* srow = s + r * Tile::kKeys;
    // Scale (scores are formed unscaled so that q needs no copy), then padding and masks.
    for (Index j = 0; j < Tile::kKeys; j += W)
      simd::store(srow + j, simd::mul(simd::load(srow + j), ps));
    for (Index j = valid; j < Tile::kKeys; ++j) srow[j] = ninf;
    const Index i = i0 + r;
    apply_masks(i, j0, valid, srow);
    if (p.causal) {
      const Index first_hidden = i + 1 + p.causal_offset;  // real keys j >= this are hidden
      const Index stop = std::min(valid, p.mask_lk - j0);
      for (Index j = std::max<Index>(first_hidden - j0, 0); j < stop; ++j) srow[j] = ninf;
    }
    const T tile_max = row_max(srow, Tile::kKeys);
    if (tile_max == ninf) {  // nothing visible in this tile for this row
      std::fill(srow, srow + Tile::kKeys, T(0));
      continue;
    }
    any_visible = true;
    const T m_new = std::max(m[r], tile_max);
    const T alpha = m[r] == ninf ? T(0) : std::exp(m[r] - m_new);
    const T tile_sum = exp_shifted(srow, srow, Tile::kKeys, m_new);
    l[r] = l[r] * alpha + tile_sum;
    m[r] = m_new;
    if (alpha != T(1)) scale_row(acc + r * ph.dv_pad, ph.dv_pad, alpha);
  }
  if (any_visible) pv_block<T, R>(s, ph.v.data() + j0 * ph.dv_pad, ph.dv_pad, acc);
}

// Query rows [i_begin, i_end) of one head (at most kQueryBlock rows): key blocks outermost, so a
// block of K^T and V (2 x 64 x D values) stays in L1 while every row of the query block uses it.
template <class T, class ApplyMasks>
void flash_query_block(const AttentionProblem<T>& p, const PackedHead<T>& ph, Index b, Index h,
                       Index i_begin, Index i_end, T* m, T* l, T* acc, T* lse,
                       const ApplyMasks& apply_masks) {
  using Tile = FlashTile<T>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  const Index rows = i_end - i_begin;
  std::fill(m, m + rows, ninf);
  std::fill(l, l + rows, T(0));
  std::fill(acc, acc + rows * ph.dv_pad, T(0));
  // Causal: keys past the last row's horizon are hidden from every row of the block. (Keys
  // appended after the maskable ones, mask_lk < lk, stay visible: then nothing is skipped.)
  Index lk_end = p.lk;
  if (p.causal && p.mask_lk == p.lk)
    lk_end = std::min(p.lk, std::max<Index>(0, i_end + p.causal_offset));
  const T* q[Tile::kRows];
  for (Index j0 = 0; j0 < lk_end; j0 += Tile::kKeys) {
    for (Index r0 = 0; r0 < rows; r0 += Tile::kRows) {
      const Index i0 = i_begin + r0;
      const int R = static_cast<int>(std::min(Tile::kRows, rows - r0));
      // Rows whose horizon ends before this block see none of it.
      if (p.causal && p.mask_lk == p.lk && i0 + R - 1 + p.causal_offset < j0) continue;
      for (int r = 0; r < R; ++r) q[r] = p.q.at(b, h) + (i0 + r) * p.q.row;
      T* a = acc + r0 * ph.dv_pad;
      switch (R) {
        case 4:
          flash_tile<T, 4>(p, ph, q, i0, j0, m + r0, l + r0, a, apply_masks);
          break;
        case 3:
          flash_tile<T, 3>(p, ph, q, i0, j0, m + r0, l + r0, a, apply_masks);
          break;
        case 2:
          flash_tile<T, 2>(p, ph, q, i0, j0, m + r0, l + r0, a, apply_masks);
          break;
        default:
          flash_tile<T, 1>(p, ph, q, i0, j0, m + r0, l + r0, a, apply_masks);
          break;
      }
    }
  }
  for (Index r = 0; r < rows; ++r) {
    const T inv = l[r] > 0 ? T(1) / l[r] : T(0);  // a fully masked row gives zeros
    const T* a = acc + r * ph.dv_pad;
    T* out = p.out.at(b, h) + (i_begin + r) * p.out.row;
    for (Index c = 0; c < p.dv; ++c) out[c] = a[c] * inv;
    if (lse) lse[i_begin + r] = l[r] > 0 ? m[r] + std::log(l[r]) : ninf;
  }
}

// The fused path for a whole problem: work items are (batch, head, block of query rows), split
// across threads; each thread packs a head's K and V once and reuses them for consecutive items.
template <class T>
void attention_fused(const AttentionProblem<T>& p) {
  constexpr Index kQueryBlock = 64;
  const Index bh = p.batch * p.heads;
  const Index nqb = (p.lq + kQueryBlock - 1) / kQueryBlock;
  if (bh == 0 || p.lq == 0) return;
  parallel_for(bh * nqb, 1, [&](Index w0, Index w1) {
    PackedHead<T> ph;
    std::vector<T> acc, m(kQueryBlock), l(kQueryBlock);
    for (Index w = w0; w < w1; ++w) {
      const Index t = w / nqb, qb = w % nqb;
      const Index b = t / p.heads, h = t % p.heads;
      if (ph.packed_index != t) {
        ph.pack(p.k.at(b, h), p.k.row, p.v.at(b, h), p.v.row, p.lk, p.d, p.dv);
        ph.packed_index = t;
        acc.assign(static_cast<std::size_t>(kQueryBlock * ph.dv_pad), T(0));
      }
      const auto apply_masks = MaskApplier<T>{p, t};
      const Index i_begin = qb * kQueryBlock, i_end = std::min(p.lq, i_begin + kQueryBlock);
      T* lse = p.lse ? p.lse + t * p.lq : nullptr;
      flash_query_block(p, ph, b, h, i_begin, i_end, m.data(), l.data(), acc.data(), lse,
                        apply_masks);
    }
  });
}

}  // namespace tessera::detail
