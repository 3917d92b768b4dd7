// tessera: fused attention with an online softmax (Milakov & Gimelshein 2018; FlashAttention,
// Dao et al. 2022). For a few query rows at a time it streams over blocks of keys and values:
// computes the score tile, updates each row's running maximum m and sum l, rescales the output
// accumulator by exp(m_old - m_new), adds P V, and divides by l once at the end. The Lq x Lk score
// matrix never exists; the working memory is one packed copy of a head's K and V.
//
// Tiles: kRows query rows x kKeys keys per online-softmax step. The score tile S = Q K^T is
// register-blocked as kRows x kScorePackets packets (W lanes: 16 floats with AVX-512, 8 with AVX2),
// with K packed transposed per head so each step of D loads kScorePackets packets of K^T and
// broadcasts kRows query values. P V is blocked the same way over the value columns, with V packed
// and padded to whole packets.
//   32 vector registers (AVX-512): 6 rows x 4 packets = 24 accumulators for each product, 10 loads
//     per 24 FMAs; the whole 6 x 64 score tile stays in registers, where its row maxima are taken.
//   16 registers (AVX2, SSE): 6 x 2 = 12 accumulators, 2 loads of K and a broadcast (15
//     registers; 4 x 4 spilled and ran at 40-45 % of the FMA peak on a Zen 3 core). The 6 x 64
//     tile is formed in four 16-key blocks stored to L1 (1.5 KiB), and the online softmax runs over
//     all 64 keys at once: its per-row work (maxima, sums, the rescale) is paid once per 64 keys,
//     not once per 16, which is what a 16-key step lost.
// The probabilities of all kRows rows are formed together; in float e^x is taken as 2^(x log2 e)
// for x <= 0 (see flash_exp; 2-7 % faster than exp_fast with AVX2, level with it with AVX-512).
// The tile P (kRows x kKeys) lives in a small buffer; K^T and V for a head are (D + Dv) x Lk
// values, reused by every query block of that head. Under a causal mask the score blocks past a row
// group's horizon are skipped, and P V runs only over the keys the group's last row sees.
//
// Work is split across threads by (batch, head, block of 64 query rows); when that gives few
// items (decoding one token over a long cache), each item's keys are split too and the partial
// (m, l, acc) merged in a fixed order. How the keys are split depends on the problem's size only,
// never on the thread count, so every thread count gives bit-identical results. With at most
// kDirectMaxRows queries K and V are read in place instead of packed.
//
// NaN in, NaN out: a NaN score (from a NaN in a query, key or additive mask) makes its row's
// maximum or sum NaN, and the row's output NaN; a NaN value reaches the output through P V. A row
// whose every key is masked out still gives zeros, whatever its query holds.
//
// Where the time goes (float, AVX-512, D = 64, L = 1024, perf record): the 6-row score tiles
// 49 % (two thirds their product, one third the online softmax: row maxima and sums with their
// horizontal reductions, the exps, the rescaling), the 6-row P V tiles 37 %, the 4-row group
// that ends each 64-row block 6 %, packing K and V 2 %, the final division 1 %. The two products
// do the same FMAs, yet P V takes 37 % against the score product's 32 %; query blocks of 36, 48
// and 96 rows (TESSERA_FLASH_QUERY_BLOCK), which change what shares L1 with it, were no faster.
// Larger head dims spend more time in the products per exp. Masked keys reach the exp as -inf; it
// flushes what would be subnormal results to zero, because producing one costs a microcode assist
// (it made causal attention run at half speed).
//
// The per-row logsumexp (m + log l) is what a backward pass needs to recompute the tiles; it is
// returned through AttentionProblem::lse when requested.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/attention_problem.hpp"
#include "tessera/kernels/dispatch.hpp"
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

#ifdef TESSERA_FLASH_QUERY_BLOCK
inline constexpr Index kFlashQueryBlock = TESSERA_FLASH_QUERY_BLOCK;
#else
inline constexpr Index kFlashQueryBlock = 64;  // query rows per work item
#endif
inline constexpr Index kDirectMaxRows = 4;  // at most this many queries: no packing

// Buffers the kernels read and write whole packets of: 64-byte aligned, so that no packet load
// or store straddles two cache lines (std::vector's 16-byte alignment made every 512-bit access
// to K^T, V, P and the accumulators a split one).
template <class T>
using AlignedVector = std::vector<T, Eigen::aligned_allocator<T>>;

// Tile shapes (see the top of this file). Each can be overridden at compile time
// (-DTESSERA_FLASH_ROWS=...) for tuning on another machine.
inline constexpr bool kFlashWideRegisterFile = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32;
template <class T>
struct FlashTile {
  static constexpr Index W = simd::width<T>;
#ifdef TESSERA_FLASH_ROWS
  static constexpr Index kRows = TESSERA_FLASH_ROWS;
#else
  static constexpr Index kRows = 6;            // query rows per micro tile
#endif
#ifdef TESSERA_FLASH_KEY_PACKETS
  static constexpr Index kKeyPackets = TESSERA_FLASH_KEY_PACKETS;
#else
  static constexpr Index kKeyPackets = kFlashWideRegisterFile ? 4 : 8;
#endif
  static constexpr Index kKeys = kKeyPackets * W;  // keys per online-softmax step
  // Packets of keys the score product keeps in registers at once: the whole tile (6 x 4 = 24
  // accumulators) with 32 vector registers; with 16, 6 x 2 = 12 accumulators, 2 loads of K and a
  // broadcast, and the tile is formed in kKeyPackets / kScorePackets blocks stored to L1.
#ifdef TESSERA_FLASH_SCORE_PACKETS
  static constexpr Index kScorePackets = TESSERA_FLASH_SCORE_PACKETS;
#else
  static constexpr Index kScorePackets = kFlashWideRegisterFile ? kKeyPackets : 2;
#endif
  static constexpr bool kScoresInRegisters = kScorePackets == kKeyPackets;
  // Packets of value columns per P V pass: 6 x 4 accumulators with 32 registers, 6 x 2 with 16.
#ifdef TESSERA_FLASH_VALUE_PACKETS
  static constexpr Index kValuePackets = TESSERA_FLASH_VALUE_PACKETS;
#else
  static constexpr Index kValuePackets = kFlashWideRegisterFile ? 4 : 2;
#endif
  static_assert(kKeyPackets % kScorePackets == 0, "a tile is whole score blocks");
};

// The running softmax's exponential e^x of x = s - m <= 0 (or NaN, or -inf). Float packets take
// it as 2^(x log2 e) (simd::exp2_nonpositive: with the multiply, 11 vector instructions a packet
// with AVX-512 and 16 with AVX2, where exp_fast takes 14 and 21). The factor log2 e is applied
// here, not folded into the scores' scale: scores, maxima and additive masks stay in natural
// units, where values up to FLT_MAX keep their meaning (times log2 e, those beyond 2.4e38 would
// overflow to infinities).
template <class T>
EIGEN_ALWAYS_INLINE simd::Packet<T> flash_exp(const simd::Packet<T>& x) {
  if constexpr (std::is_same_v<T, float> && 1 < simd::width<T>)
    return simd::exp2_nonpositive(simd::mul(x, simd::set1<T>(T(1.44269504088896340736))));
  else
    return simd::exp_fast(x);
}

// Keys [key_begin, key_end) of one head: K packed transposed in panels of kKeys keys
// ([n_pad / kKeys][D][kKeys], keys contiguous within a panel) and V packed ([n_pad, Dv_pad]), both
// zero-padded: the key count n to a multiple of kKeys, Dv to a multiple of the packet width. A
// panel is contiguous (16 KiB for D = 64 in float): with one [D, n_pad] matrix instead, the D rows
// a tile reads would lie n_pad values apart, a multiple of 4 KiB for long sequences, and fall into
// the same few L1 sets (measured: the score product ran at half the speed of P V).
// Eigen's PacketBlock of __m512 (etc.) as a template argument: GCC notes that the vector type's
// alignment attribute is not part of the template argument, which is harmless here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
template <class T>
struct PackedHead {
  AlignedVector<T> kt, v;
  Index lk_pad = 0, dv_pad = 0;
  Index key_begin = 0, key_end = 0;
  Index packed_index = -1;  // which (batch * heads + head) * splits + range is packed; -1 none

  // k and vv point at key 0 of the head; rows k_row and v_row apart. K is transposed W keys x W
  // dims at a time in registers; the buffers keep their size from head to head, and only the
  // padding is zeroed (at L = 256 a scalar transpose and zero-filling both buffers took a tenth
  // of the kernel's time).
  void pack(const T* k, Index k_row, const T* vv, Index v_row, Index kb, Index ke, Index d,
            Index dv) {
    using Tile = FlashTile<T>;
    constexpr Index K = Tile::kKeys, W = Tile::W;
    key_begin = kb;
    key_end = ke;
    const Index n = ke - kb;
    lk_pad = (n + K - 1) / K * K;
    dv_pad = padded_value_dim(dv);
    kt.resize(static_cast<std::size_t>(d * lk_pad));
    v.resize(static_cast<std::size_t>(lk_pad * dv_pad));
    // Key j, dim c of the head lands at panel j / K, row c, column j % K.
    const auto at = [&](Index j) { return kt.data() + (j / K) * d * K + j % K; };
    const Index n_whole = n / W * W;  // keys in whole groups of W (never straddling a panel)
    for (Index j0 = 0; j0 < n_whole; j0 += W) {
      const T* kr = k + (kb + j0) * k_row;
      T* panel = at(j0);
      Index c0 = 0;
      if constexpr (W > 1) {
        Eigen::internal::PacketBlock<simd::Packet<T>, static_cast<int>(W)> blk;
        for (; c0 + W <= d; c0 += W) {
          for (Index r = 0; r < W; ++r) blk.packet[r] = simd::load(kr + r * k_row + c0);
          Eigen::internal::ptranspose(blk);
          for (Index c = 0; c < W; ++c) simd::store(panel + (c0 + c) * K, blk.packet[c]);
        }
      }
      for (; c0 < d; ++c0)
        for (Index r = 0; r < W; ++r) panel[c0 * K + r] = kr[r * k_row + c0];
    }
    for (Index j = n_whole; j < lk_pad; ++j) {  // the last partial group, then zero padding
      T* panel = at(j);
      if (j < n)
        for (Index c = 0; c < d; ++c) panel[c * K] = k[(kb + j) * k_row + c];
      else
        for (Index c = 0; c < d; ++c) panel[c * K] = T(0);
    }
    for (Index j = 0; j < n; ++j) {
      T* row = v.data() + j * dv_pad;
      std::copy_n(vv + (kb + j) * v_row, dv, row);
      std::fill(row + dv, row + dv_pad, T(0));
    }
    std::fill(v.data() + n * dv_pad, v.data() + lk_pad * dv_pad, T(0));
  }

  static Index padded_value_dim(Index dv) {
    constexpr Index W = FlashTile<T>::W;
    return (dv + W - 1) / W * W;
  }
};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// A block of the score tile of R <= kRows query rows in registers: NP packets of keys per row
// (kKeyPackets when the whole tile fits the registers).
template <class T, int R, int NP = FlashTile<T>::kKeyPackets>
struct ScoreTile {
  simd::Packet<T> v[R][NP];
};

// S[r][first..first + NP W) = scale * sum_d q[r][d] * KT[d][first..] over one packed panel
// (rows of kKeys keys), left in registers. With `visible`, row r sees only the first visible[r]
// keys of the tile (a causal horizon): the others are set to -inf.
template <class T, int R, int NP = FlashTile<T>::kKeyPackets>
EIGEN_ALWAYS_INLINE void score_product(const T* const* q, const T* kt, Index d, T scale,
                                       const Index* visible, ScoreTile<T, R, NP>& t,
                                       Index first = 0) {
  using P = simd::Packet<T>;
  using Tile = FlashTile<T>;
  constexpr Index W = Tile::W;
  auto& acc = t.v;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) acc[r][p] = simd::set1<T>(0);
  kt += first;
  for (Index c = 0; c < d; ++c) {
    const T* krow = kt + c * Tile::kKeys;
    P kp[NP];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) kp[p] = simd::load(krow + p * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const P qv = simd::set1<T>(q[r][c]);
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) acc[r][p] = simd::fmadd(qv, kp[p], acc[r][p]);
    }
  }
  const P ps = simd::set1<T>(scale);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) acc[r][p] = simd::mul(acc[r][p], ps);
  if (visible) {
    // Lane k of packet p is key first + p W + k: hidden where that index >= visible[r].
    namespace ei = Eigen::internal;
    const P ninf = simd::set1<T>(-std::numeric_limits<T>::infinity());
    for (int r = 0; r < R; ++r) {
      const P horizon = simd::set1<T>(static_cast<T>(visible[r]));
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p)
        acc[r][p] = ei::pselect(ei::pcmp_lt(ei::plset<P>(static_cast<T>(first + p * W)), horizon),
                                acc[r][p], ninf);
    }
  }
}

// The whole score tile of R rows (kKeys keys) into s [R, kKeys], formed kScorePackets packets of
// keys at a time: for register files too small to hold the tile. Under a causal horizon the
// blocks that no row sees (the last row sees the most) are set to -inf without a product.
template <class T, int R>
EIGEN_STRONG_INLINE void score_tile_to(const T* const* q, const T* kt, Index d, T scale,
                                       const Index* visible, T* s) {
  using Tile = FlashTile<T>;
  constexpr int NP = static_cast<int>(Tile::kScorePackets);
  const Index seen = visible ? visible[R - 1] : Tile::kKeys;
  for (Index first = 0; first < Tile::kKeys; first += NP * Tile::W) {
    if (first >= seen) {
      for (int r = 0; r < R; ++r)
        std::fill(s + r * Tile::kKeys + first, s + r * Tile::kKeys + Tile::kKeys,
                  -std::numeric_limits<T>::infinity());
      break;
    }
    ScoreTile<T, R, NP> t;
    score_product<T, R, NP>(q, kt, d, scale, visible, t, first);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < NP; ++c)
        simd::store(s + r * Tile::kKeys + first + c * Tile::W, t.v[r][c]);
  }
}

// The maximum of one row's kKeyPackets packets of scores, or NaN when the row holds a NaN where
// nothing else is visible. simd::max may drop a NaN (it keeps its first argument); a NaN beside a
// visible score is then caught by exp(NaN - m), which makes the row's sum NaN. Only when the
// maximum found is -inf, every other score masked, is the row scanned: rarely, and cheaply.
template <class T, int NP = FlashTile<T>::kKeyPackets>
EIGEN_ALWAYS_INLINE T tile_row_max(const simd::Packet<T>* v) {
  using Tile = FlashTile<T>;
  simd::Packet<T> mx = v[0];
#pragma GCC unroll 16
  for (int c = 1; c < NP; ++c) mx = simd::max(mx, v[c]);
  const T m = simd::reduce_max(mx);
  if (m == -std::numeric_limits<T>::infinity()) {
    alignas(64) T row[Tile::kKeys];
    for (int c = 0; c < NP; ++c) simd::store(row + c * Tile::W, v[c]);
    for (Index j = 0; j < NP * Tile::W; ++j)
      if (std::isnan(row[j])) return row[j];
  }
  return m;
}

// The online-softmax bookkeeping both paths share, for R rows of one tile.
template <class T, int R>
struct SoftmaxStep {
  bool seen[R];   // the row sees at least one key of the tile
  T m_new[R];     // its new running maximum
  T alpha[R];     // exp(m_old - m_new): what the earlier sum and accumulator are scaled by
  T tile_sum[R];  // sum over the tile of exp(s - m_new)

  // From each row's maximum over the tile; returns whether any row sees a key. The alphas of all
  // rows come from one vector exp; a row whose maximum did not move keeps alpha = 1 exactly. A
  // NaN maximum counts as seen and becomes the row's m, so that alpha, l and acc turn NaN.
  EIGEN_ALWAYS_INLINE bool begin(const T* tile_max, const T* m) {
    constexpr T ninf = -std::numeric_limits<T>::infinity();
    constexpr Index W = simd::width<T>;
    constexpr Index RW = (R + W - 1) / W * W;
    alignas(64) T diff[RW] = {};
    bool any = false, moved = false;
    for (int r = 0; r < R; ++r) {
      seen[r] = tile_max[r] != ninf;
      any = any || seen[r];
      m_new[r] = !seen[r] || m[r] >= tile_max[r] ? m[r] : tile_max[r];  // NaN tile_max: NaN
      diff[r] = seen[r] ? m[r] - m_new[r] : T(0);  // -inf for a row's first visible tile
      moved = moved || diff[r] != T(0);
    }
    if (moved)
      for (Index c = 0; c < RW; c += W) simd::store(diff + c, flash_exp<T>(simd::load(diff + c)));
    for (int r = 0; r < R; ++r) alpha[r] = moved ? diff[r] : T(1);
    return any;
  }

  // s = exp(score - m_new) for every row at once (zeros for a row that sees nothing), summing
  // each row: R x NP independent exps in flight, their constants loaded once. score(r, c) gives
  // packet c of row r's scores; with NP < kKeyPackets the rest of each row of s is left as it is.
  template <int NP = FlashTile<T>::kKeyPackets, class Score>
  EIGEN_ALWAYS_INLINE void exponentiate(const Score& score, T* s) {
    using P = simd::Packet<T>;
    using Tile = FlashTile<T>;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      T* srow = s + r * Tile::kKeys;
      if (!seen[r]) {
        std::fill(srow, srow + Tile::kKeys, T(0));
        continue;
      }
      const P pm = simd::set1<T>(m_new[r]);
      P sum = simd::set1<T>(0);
#pragma GCC unroll 16
      for (int c = 0; c < NP; ++c) {
        const P e = flash_exp<T>(simd::sub(score(r, c), pm));
        simd::store(srow + c * Tile::W, e);
        sum = simd::add(sum, e);
      }
      tile_sum[r] = simd::reduce_sum(sum);
    }
  }

  // l = l alpha + tile sum, m = m_new, and the accumulator rows rescaled by alpha.
  void finish(T* m, T* l, T* acc, Index acc_row) const {
    for (int r = 0; r < R; ++r) {
      if (!seen[r]) continue;
      l[r] = l[r] * alpha[r] + tile_sum[r];
      m[r] = m_new[r];
      if (alpha[r] != T(1)) scale_row(acc + r * acc_row, acc_row, alpha[r]);
    }
  }
};

// A whole online-softmax step on a score tile that nothing but (optionally) a causal horizon
// hides keys of, without the scores leaving registers (or L1, where the tile is formed in
// blocks): score product, row maxima, probabilities into s, running state updated. Returns how
// many of the tile's keys P V needs (those some row sees; 0 when none does). With the tile in
// registers, NP < kKeyPackets forms only its first NP packets of keys: a causal horizon that
// hides the rest from every row (the first NP W keys of s are then written, the rest left).
template <class T, int R, int NP = FlashTile<T>::kKeyPackets>
EIGEN_ALWAYS_INLINE Index fused_tile(const T* const* q, const T* kt, Index d, T scale,
                                     const Index* visible, T* m, T* l, T* acc, Index acc_row,
                                     T* s) {
  using Tile = FlashTile<T>;
  using P = simd::Packet<T>;
  T tile_max[R];
  SoftmaxStep<T, R> step;
  if constexpr (Tile::kScoresInRegisters) {
    ScoreTile<T, R, NP> t;
    score_product<T, R, NP>(q, kt, d, scale, visible, t);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) tile_max[r] = tile_row_max<T, NP>(t.v[r]);
    if (!step.begin(tile_max, m)) {
      std::fill(s, s + R * Tile::kKeys, T(0));
      return 0;
    }
    step.template exponentiate<NP>([&](int r, int c) { return t.v[r][c]; }, s);
  } else {
    static_assert(NP == Tile::kKeyPackets, "a partial tile needs the tile in registers");
    score_tile_to<T, R>(q, kt, d, scale, visible, s);
    for (int r = 0; r < R; ++r) {
      P row[Tile::kKeyPackets];
#pragma GCC unroll 16
      for (int c = 0; c < Tile::kKeyPackets; ++c)
        row[c] = simd::load(s + r * Tile::kKeys + c * Tile::W);
      tile_max[r] = tile_row_max<T>(row);
    }
    if (!step.begin(tile_max, m)) {
      std::fill(s, s + R * Tile::kKeys, T(0));
      return 0;
    }
    step.exponentiate([&](int r, int c) { return simd::load(s + r * Tile::kKeys + c * Tile::W); },
                      s);
  }
  step.finish(m, l, acc, acc_row);
  return visible ? visible[R - 1] : Tile::kKeys;
}

// fused_tile on the first np packets of keys (1 <= np <= kKeyPackets), np known at run time.
template <class T, int R, int NP = 1>
EIGEN_ALWAYS_INLINE Index fused_tile_upto(Index np, const T* const* q, const T* kt, Index d,
                                          T scale, const Index* visible, T* m, T* l, T* acc,
                                          Index acc_row, T* s) {
  if constexpr (NP < FlashTile<T>::kKeyPackets) {
    if (np <= NP) return fused_tile<T, R, NP>(q, kt, d, scale, visible, m, l, acc, acc_row, s);
    return fused_tile_upto<T, R, NP + 1>(np, q, kt, d, scale, visible, m, l, acc, acc_row, s);
  } else {
    return fused_tile<T, R>(q, kt, d, scale, visible, m, l, acc, acc_row, s);
  }
}

// O[r][cols] += sum_{j < keys} P[r][j] * V[j][cols] for a slab of NP packets of columns from
// col0. NP is a compile-time count so that the accumulators stay in registers.
template <class T, int R, int NP>
EIGEN_STRONG_INLINE void pv_tile(const T* p_tile, const T* v, Index keys, Index dv_pad, Index col0,
                                 T* o, Index o_row) {
  using P = simd::Packet<T>;
  using Tile = FlashTile<T>;
  constexpr Index W = Tile::W;
  P acc[R][NP];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) acc[r][p] = simd::load(o + r * o_row + col0 + p * W);
  for (Index j = 0; j < keys; ++j) {
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
void pv_block(const T* p_tile, const T* v, Index keys, Index dv_pad, T* o) {
  using Tile = FlashTile<T>;
  constexpr Index slab = Tile::kValuePackets * Tile::W;
  Index c0 = 0;
  for (; c0 + slab <= dv_pad; c0 += slab)
    pv_tile<T, R, Tile::kValuePackets>(p_tile, v, keys, dv_pad, c0, o, dv_pad);
  switch ((dv_pad - c0) / Tile::W) {
    case 3:
      pv_tile<T, R, 3>(p_tile, v, keys, dv_pad, c0, o, dv_pad);
      break;
    case 2:
      pv_tile<T, R, 2>(p_tile, v, keys, dv_pad, c0, o, dv_pad);
      break;
    case 1:
      pv_tile<T, R, 1>(p_tile, v, keys, dv_pad, c0, o, dv_pad);
      break;
    default:
      break;
  }
}

// How the score tile of rows [i0, i0 + R) and keys [j0, j0 + valid) is finished:
//   plain:   nothing hides a key; the tile's row maxima are final.
//   horizon: only the causal horizon hides keys, applied in registers (visible[r] keys per row),
//            after which the maxima are final too.
//   general: padding or masks: online_softmax_tile applies them to the stored scores.
enum class TileKind { plain, horizon, general };

template <class T, int R>
TileKind classify_tile(const AttentionProblem<T>& p, Index i0, Index j0, Index valid,
                       Index* visible) {
  constexpr Index K = FlashTile<T>::kKeys;
  if (valid != K) return TileKind::general;
  if (j0 < p.mask_lk)
    for (const MaskRows* m : p.masks)
      if (m) return TileKind::general;
  // Row i sees keys j < i + 1 + causal_offset. Row i0 sees the fewest.
  if (!p.causal || j0 + K <= i0 + 1 + p.causal_offset) return TileKind::plain;
  if (j0 + K > p.mask_lk) return TileKind::general;  // keys appended past mask_lk stay visible
  for (int r = 0; r < R; ++r)
    visible[r] = std::clamp<Index>(i0 + r + 1 + p.causal_offset - j0, 0, K);
  return TileKind::horizon;
}

// The online-softmax step for rows [i0, i0 + R) on a stored tile of scaled scores s (R x kKeys,
// keys j0..; `valid` of them real): padding, masks and causal horizon applied to s, then per row
// the new maximum, the rescale of l and of the accumulator by exp(m_old - m_new), and s replaced
// by the probabilities exp(s - m_new) (zeros for a row that sees nothing here). Returns whether
// any row saw a key, i.e. whether acc += P V is needed.
template <class T, int R, class ApplyMasks>
bool online_softmax_tile(const AttentionProblem<T>& p, T* s, Index i0, Index j0, Index valid, T* m,
                         T* l, T* acc, Index acc_row, const ApplyMasks& apply_masks) {
  using Tile = FlashTile<T>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  T tile_max[R];
  for (int r = 0; r < R; ++r) {
    T* srow = s + r * Tile::kKeys;
    for (Index j = valid; j < Tile::kKeys; ++j) srow[j] = ninf;  // padding
    const Index i = i0 + r;
    apply_masks(i, j0, valid, srow);
    if (p.causal) {
      const Index first_hidden = i + 1 + p.causal_offset;  // real keys j >= this are hidden
      const Index stop = std::min(valid, p.mask_lk - j0);
      for (Index j = std::max<Index>(first_hidden - j0, 0); j < stop; ++j) srow[j] = ninf;
    }
    simd::Packet<T> packets[Tile::kKeyPackets];
    for (int c = 0; c < Tile::kKeyPackets; ++c) packets[c] = simd::load(srow + c * Tile::W);
    tile_max[r] = tile_row_max<T>(packets);
  }
  SoftmaxStep<T, R> step;
  if (!step.begin(tile_max, m)) {
    std::fill(s, s + R * Tile::kKeys, T(0));
    return false;
  }
  step.exponentiate([&](int r, int c) { return simd::load(s + r * Tile::kKeys + c * Tile::W); }, s);
  step.finish(m, l, acc, acc_row);
  return true;
}

// Calls f(std::integral_constant<int, R>{}) for a row count 1 <= R <= kRows known at run time, so
// that the micro-kernels see it at compile time.
template <class F, int... Rm1>
EIGEN_STRONG_INLINE void with_rows_of(int R, F& f, std::integer_sequence<int, Rm1...>) {
  (void)((R == Rm1 + 1 && (f(std::integral_constant<int, Rm1 + 1>{}), true)) || ...);
}
template <class T, class F>
EIGEN_STRONG_INLINE void with_rows(int R, F&& f) {
  with_rows_of(R, f, std::make_integer_sequence<int, int(FlashTile<T>::kRows)>{});
}

// The packed path, split in two phases per key block so that each phase keeps one operand in L1:
// scores(): the score tile of R rows from the packed K^T panel and the online-softmax step,
// leaving the probabilities in s; returns whether P V is needed. pv(): acc += P V from the packed
// V block.
template <class T, class ApplyMasks>
struct PackedStep {
  const AttentionProblem<T>& p;
  const PackedHead<T>& ph;
  const ApplyMasks& apply_masks;

  // One call per tile, kept out of flash_rows, with everything it calls forced inline: the score
  // tile (24 zmm accumulators on AVX-512) must stay in registers from the product to the exp.
  // Inlined into flash_rows, GCC 12 left tile_row_max and SoftmaxStep::begin as calls, so the
  // tile went through the stack around them: 95 instead of 165 GFLOPS (L1024 D64, AVX-512).
  template <int R>
  EIGEN_DONT_INLINE Index scores(const T* const* q, Index i0, Index j0, T* m, T* l, T* acc,
                                 T* s) const {
    using Tile = FlashTile<T>;
    const Index local = j0 - ph.key_begin;     // the block's offset in the packed range
    const T* kt = ph.kt.data() + local * p.d;  // panel local / kKeys
    const Index valid = std::min(Tile::kKeys, ph.key_end - j0);
    Index visible[R];
    const TileKind kind = classify_tile<T, R>(p, i0, j0, valid, visible);
    if constexpr (Tile::kScoresInRegisters && R == Tile::kRows) {
      // On a causal diagonal, a group of rows near the top of the tile sees only its first few
      // packets of keys: form those alone (at L = 256, 4 of 10 tiles lie on the diagonal).
      if (kind == TileKind::horizon)
        return fused_tile_upto<T, R>((visible[R - 1] + Tile::W - 1) / Tile::W, q, kt, p.d, p.scale,
                                     visible, m, l, acc, ph.dv_pad, s);
    }
    if (kind != TileKind::general)
      return fused_tile<T, R>(q, kt, p.d, p.scale, kind == TileKind::horizon ? visible : nullptr, m,
                              l, acc, ph.dv_pad, s);
    score_tile_to<T, R>(q, kt, p.d, p.scale, nullptr, s);
    return online_softmax_tile<T, R>(p, s, i0, j0, valid, m, l, acc, ph.dv_pad, apply_masks)
               ? Tile::kKeys
               : 0;
  }
  template <int R>
  void pv(Index j0, const T* s, Index keys, T* acc) const {
    pv_block<T, R>(s, ph.v.data() + (j0 - ph.key_begin) * ph.dv_pad, keys, ph.dv_pad, acc);
  }
};

// The same step reading K and V where they are, without packing: for a handful of query rows
// (decoding) packing a head would cost as much as attending over it. Scores are dot products
// along D; acc += P V runs along the rows of V.
template <class T, int R, class ApplyMasks>
void direct_tile(const AttentionProblem<T>& p, Index b, Index h, const T* const* q, Index i0,
                 Index j0, Index j_end, T* m, T* l, T* acc, Index acc_row,
                 const ApplyMasks& apply_masks) {
  using Tile = FlashTile<T>;
  using P = simd::Packet<T>;
  constexpr Index W = Tile::W;
  alignas(64) T s[Tile::kRows * Tile::kKeys];
  const Index valid = std::min(Tile::kKeys, j_end - j0);
  const Index d_vec = p.d / W * W, dv_vec = p.dv / W * W;
  const T* kh = p.k.at(b, h);
  for (Index j = 0; j < valid; ++j) {
    const T* kr = kh + (j0 + j) * p.k.row;
    P a[R];
    for (int r = 0; r < R; ++r) a[r] = simd::set1<T>(0);
    for (Index c = 0; c < d_vec; c += W) {
      const P kp = simd::load(kr + c);
      for (int r = 0; r < R; ++r) a[r] = simd::fmadd(simd::load(q[r] + c), kp, a[r]);
    }
    for (int r = 0; r < R; ++r) {
      T dot = simd::reduce_sum(a[r]);
      for (Index c = d_vec; c < p.d; ++c) dot += q[r][c] * kr[c];
      s[r * Tile::kKeys + j] = dot * p.scale;
    }
  }
  for (int r = 0; r < R; ++r)
    std::fill(s + r * Tile::kKeys + valid, s + (r + 1) * Tile::kKeys, T(0));
  if (!online_softmax_tile<T, R>(p, s, i0, j0, valid, m, l, acc, acc_row, apply_masks)) return;
  const T* vh = p.v.at(b, h);
  for (Index j = 0; j < valid; ++j) {
    const T* vr = vh + (j0 + j) * p.v.row;
    for (int r = 0; r < R; ++r) {
      const T pj = s[r * Tile::kKeys + j];
      if (pj == T(0)) continue;
      const P pp = simd::set1<T>(pj);
      T* ar = acc + r * acc_row;
      for (Index c = 0; c < dv_vec; c += W)
        simd::store(ar + c, simd::fmadd(pp, simd::load(vr + c), simd::load(ar + c)));
      for (Index c = dv_vec; c < p.dv; ++c) ar[c] += pj * vr[c];
    }
  }
}

// The unpacked path as a step: all of its work happens in scores(), pv() is never needed.
template <class T, class ApplyMasks>
struct DirectStep {
  const AttentionProblem<T>& p;
  Index b, h, key_end, acc_row;
  const ApplyMasks& apply_masks;

  template <int R>
  Index scores(const T* const* q, Index i0, Index j0, T* m, T* l, T* acc, T*) const {
    direct_tile<T, R>(p, b, h, q, i0, j0, key_end, m, l, acc, acc_row, apply_masks);
    return 0;
  }
  template <int R>
  void pv(Index, const T*, Index, T*) const {}
};

// Streams keys [key_begin, key_end) through the running softmax state of query rows
// [i_begin, i_end) of one head (at most kFlashQueryBlock rows): row maxima m, row sums l and the
// unnormalised output acc [rows, acc_row], all reset first. Key blocks are outermost. For each,
// every group of kRows rows first forms its scores and probabilities (K^T panel in L1, P into
// `probs`, [kFlashQueryBlock, kKeys]), then every group adds P V (V block in L1): doing both per
// group would need K^T and V in L1 at once, 64 KiB at head_dim 128.
template <class T, class Step>
void flash_rows(const AttentionProblem<T>& p, Index b, Index h, Index i_begin, Index i_end,
                Index key_begin, Index key_end, Index acc_row, T* m, T* l, T* acc, T* probs,
                const Step& step) {
  using Tile = FlashTile<T>;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  const Index rows = i_end - i_begin;
  std::fill(m, m + rows, ninf);
  std::fill(l, l + rows, T(0));
  std::fill(acc, acc + rows * acc_row, T(0));
  // Causal: keys past the last row's horizon are hidden from every row of the block. (Keys
  // appended after the maskable ones, mask_lk < lk, stay visible: then nothing is skipped.)
  const bool causal_skip = p.causal && p.mask_lk == p.lk;
  Index lk_end = key_end;
  if (causal_skip) lk_end = std::min(lk_end, std::max<Index>(0, i_end + p.causal_offset));
  constexpr Index kGroups = (kFlashQueryBlock + Tile::kRows - 1) / Tile::kRows;
  Index pv_keys[kGroups];  // keys of the block whose P V each group needs (0: none)
  const T* q[Tile::kRows];
  for (Index j0 = key_begin; j0 < lk_end; j0 += Tile::kKeys) {
    for (Index r0 = 0, g = 0; r0 < rows; r0 += Tile::kRows, ++g) {
      const Index i0 = i_begin + r0;
      const int R = static_cast<int>(std::min(Tile::kRows, rows - r0));
      // Rows whose horizon ends before this block see none of it.
      pv_keys[g] = 0;
      if (causal_skip && i0 + R - 1 + p.causal_offset < j0) continue;
      for (int r = 0; r < R; ++r) q[r] = p.q.at(b, h) + (i0 + r) * p.q.row;
      with_rows<T>(R, [&](auto rc) {
        pv_keys[g] = step.template scores<rc()>(q, i0, j0, m + r0, l + r0, acc + r0 * acc_row,
                                                probs + r0 * Tile::kKeys);
      });
    }
    for (Index r0 = 0, g = 0; r0 < rows; r0 += Tile::kRows, ++g) {
      if (pv_keys[g] == 0) continue;
      with_rows<T>(static_cast<int>(std::min(Tile::kRows, rows - r0)), [&](auto rc) {
        step.template pv<rc()>(j0, probs + r0 * Tile::kKeys, pv_keys[g], acc + r0 * acc_row);
      });
    }
  }
}

// Writes one output row from a finished state: acc / l, and its logsumexp m + log l when the
// problem asks for it. l == 0 means every key was masked: zeros (and -inf), written as such, so
// that a NaN value of a masked key (0 * NaN in acc) does not leak into them. A NaN l gives NaN.
template <class T>
void flash_write_row(const AttentionProblem<T>& p, Index b, Index h, Index i, T m, T l,
                     const T* acc) {
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  T* out = p.out.at(b, h) + i * p.out.row;
  if (l == T(0)) {
    std::fill(out, out + p.dv, T(0));
    if (p.lse) p.lse[(b * p.heads + h) * p.lq + i] = ninf;
    return;
  }
  const T inv = T(1) / l;
  constexpr Index W = simd::width<T>;
  const auto pinv = simd::set1<T>(inv);
  Index c = 0;
  for (; c + W <= p.dv; c += W) simd::store(out + c, simd::mul(simd::load(acc + c), pinv));
  for (; c < p.dv; ++c) out[c] = acc[c] * inv;
  if (p.lse) p.lse[(b * p.heads + h) * p.lq + i] = m + std::log(l);
}

// Work items (with their key ranges) that keep this many threads busy.
inline constexpr Index kFlashMinWork = 64;

// How many ranges each item's keys are split into: a function of the problem's size only, never
// of the thread count, so that any number of threads adds the same partial states in the same
// order and gives bit-identical results. Work items are (batch, head, query block); when there
// are fewer than kFlashMinWork of them (single-token decoding over a long cache is the extreme:
// one item per head), each item's keys are split so that up to kFlashMinWork threads have work,
// each range at least four key tiles long; the partial states are merged afterwards.
template <class T>
Index flash_key_splits(Index items, Index lk) {
  if (items >= kFlashMinWork) return 1;
  const Index want = (kFlashMinWork + items - 1) / items;
  const Index most = std::max<Index>(1, lk / (4 * FlashTile<T>::kKeys));
  return std::min(want, most);
}

// Problems with nothing to attend over: no query rows (nothing to write) or no keys (every row
// fully masked: zeros). Returns whether it handled the problem; the kernels then never form a
// pointer into an empty operand.
template <class T>
bool attention_empty(const AttentionProblem<T>& p) {
  if (p.batch == 0 || p.heads == 0 || p.lq == 0) return true;
  if (p.lk > 0) return false;
  for (Index b = 0; b < p.batch; ++b)
    for (Index h = 0; h < p.heads; ++h)
      for (Index i = 0; i < p.lq; ++i) {
        if (p.dv > 0) std::fill_n(p.out.at(b, h) + i * p.out.row, p.dv, T(0));
        if (p.lse) p.lse[(b * p.heads + h) * p.lq + i] = -std::numeric_limits<T>::infinity();
      }
  return true;
}

// The fused path for a whole problem. Work items are (batch, head, query block[, key range]),
// handed to threads one at a time from a shared counter (causal items differ in cost); a thread
// packs a head's K and V once and reuses them while its items stay on that head. With key splits
// each item leaves its partial (m, l, acc) in a buffer, and a second pass merges the ranges:
// m = max_s m_s, l = sum_s l_s exp(m_s - m), acc = sum_s acc_s exp(m_s - m).
template <class T>
void attention_fused_impl(const AttentionProblem<T>& p) {
  constexpr Index QB = kFlashQueryBlock;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  if (attention_empty(p)) return;
  const Index bh = p.batch * p.heads;
  const Index nqb = (p.lq + QB - 1) / QB;
  const Index items = bh * nqb;
  const Index splits =
      p.key_splits > 0 ? std::min(p.key_splits, p.lk) : flash_key_splits<T>(items, p.lk);
  const Index tiles = (p.lk + FlashTile<T>::kKeys - 1) / FlashTile<T>::kKeys;
  const Index chunk = (tiles + splits - 1) / splits * FlashTile<T>::kKeys;  // keys per range
  const Index dv_pad = PackedHead<T>::padded_value_dim(p.dv);
  // A few query rows (decoding) read K and V in place; more rows amortise packing the head.
  const bool direct = p.lq <= kDirectMaxRows;
  const Index QR = std::min(QB, p.lq);         // query rows of the largest item
  const Index state_size = QR * (2 + dv_pad);  // m, l, acc of one item and key range
  AlignedVector<T> partial(splits > 1 ? static_cast<std::size_t>(items * splits * state_size) : 0);

  // Work w is key range w / items of item w % items: consecutive items of one range share a
  // head's packed K and V.
  const Index n_work = items * splits;
  std::atomic<Index> next{0};
  parallel_for(std::min<Index>(num_threads(), n_work), 1, [&](Index, Index) {
    PackedHead<T> ph;
    AlignedVector<T> own(splits > 1 ? 0 : static_cast<std::size_t>(state_size));
    AlignedVector<T> probs(static_cast<std::size_t>(QB * FlashTile<T>::kKeys));
    for (Index w; (w = next.fetch_add(1, std::memory_order_relaxed)) < n_work;) {
      const Index item = w % items, s = w / items;
      const Index t = item / nqb, qb = item % nqb;
      const Index b = t / p.heads, h = t % p.heads;
      const Index kb = std::min(p.lk, s * chunk), ke = std::min(p.lk, kb + chunk);
      T* state = splits > 1 ? partial.data() + (item * splits + s) * state_size : own.data();
      T *m = state, *l = state + QR, *acc = state + 2 * QR;
      const Index i_begin = qb * QB, i_end = std::min(p.lq, i_begin + QB);
      const MaskApplier<T> masks{p, t};
      if (direct) {
        flash_rows(p, b, h, i_begin, i_end, kb, ke, dv_pad, m, l, acc, probs.data(),
                   DirectStep<T, MaskApplier<T>>{p, b, h, ke, dv_pad, masks});
      } else {
        if (ph.packed_index != t * splits + s) {
          ph.pack(p.k.at(b, h), p.k.row, p.v.at(b, h), p.v.row, kb, ke, p.d, p.dv);
          ph.packed_index = t * splits + s;
        }
        flash_rows(p, b, h, i_begin, i_end, kb, ke, dv_pad, m, l, acc, probs.data(),
                   PackedStep<T, MaskApplier<T>>{p, ph, masks});
      }
      if (splits == 1)
        for (Index r = 0; r < i_end - i_begin; ++r)
          flash_write_row(p, b, h, i_begin + r, m[r], l[r], acc + r * dv_pad);
    }
  });
  if (splits == 1) return;

  parallel_for(items, 1, [&](Index w0, Index w1) {
    std::vector<T> merged(static_cast<std::size_t>(dv_pad));
    for (Index item = w0; item < w1; ++item) {
      const Index t = item / nqb, qb = item % nqb;
      const Index b = t / p.heads, h = t % p.heads;
      const Index i_begin = qb * QB, rows = std::min(p.lq, i_begin + QB) - i_begin;
      const T* first = partial.data() + item * splits * state_size;
      for (Index r = 0; r < rows; ++r) {
        T m = ninf;  // the largest m of the ranges, NaN when one is NaN
        for (Index s = 0; s < splits; ++s) {
          const T ms = first[s * state_size + r];
          if (std::isnan(ms)) {
            m = ms;
            break;
          }
          m = std::max(m, ms);
        }
        T l = 0;
        std::fill(merged.begin(), merged.end(), T(0));
        for (Index s = 0; s < splits; ++s) {
          const T* st = first + s * state_size;
          if (st[QR + r] == T(0)) continue;  // this range saw no visible key
          const T f = std::exp(st[r] - m);
          l += st[QR + r] * f;
          const T* a = st + 2 * QR + r * dv_pad;
          for (Index c = 0; c < p.dv; ++c) merged[c] += a[c] * f;
        }
        flash_write_row(p, b, h, i_begin + r, m, l, merged.data());
      }
    }
  });
}

TESSERA_BEGIN_MODE_NAMESPACE
// attention_fused_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void attention_fused(const AttentionProblem<T>& p) {
  if constexpr (kDispatched<T>)
    kernels<T>().attention_fused(p);
  else
    attention_fused_impl(p);
}
TESSERA_END_MODE_NAMESPACE

}  // namespace tessera::detail
