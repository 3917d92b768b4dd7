// tessera: a packed, cache-blocked matrix product with fused epilogues (header-only).
//
//   c = act(alpha op(a) op(b) [+ c] + bias) + residual      op(x) = x or x^T
//
// The design is GotoBLAS's and BLIS's (Goto & van de Geijn 2008, "Anatomy of high-performance
// matrix multiplication"; Van Zee & van de Geijn 2015, "BLIS"): five loops around a
// register-blocked micro-kernel, with both operands copied ("packed") into contiguous buffers
// laid out in the order the micro-kernel reads them.
//
//   jc over n, step NC        b's panel [KC x NC] packed in NR-wide slivers      (L3 / L2)
//    pc over k, step KC
//     ic over m, step MC      a's block [MC x KC] packed in MR-tall slivers      (L2)
//      jr over NC, step NR    one b sliver [KC x NR], reused for the whole block (L1)
//       ir over MC, step MR   micro-kernel: an MR x NR tile of c in registers
//
// The micro-kernel keeps MR x NR accumulators in vector registers; per step of k it loads NR/W
// packets of b and broadcasts MR values of a, which is MR * NR/W fused multiply-adds for
// MR + NR/W loads. With 32 vector registers (AVX-512) the tile is 12 x 2 packets (24
// accumulators: 12 x 32 floats), with 16 (AVX2, SSE, ...) it is 6 x 2 packets, and without SIMD
// 4 x 4 scalars. It is written once against Eigen's packet functions, so the consumer's compiler
// flags choose the instruction set.
//
// Block sizes, for the tile above (float, AVX-512; bytes scale with sizeof(T) and W):
//   KC = 256: one b sliver is KC x NR x 4 B = 32 KiB, which with the a sliver (12 KiB) fits a
//             48 KiB L1d; the c tile is read and written once per KC steps of k.
//   MC = 16 MR: the packed a block is 192 x 256 x 4 B = 192 KiB, well inside a 1-2 MiB L2.
//   NC = 64 NR: the packed b panel is 256 x 2048 x 4 B = 2 MiB, in L2 / L3.
//
// The epilogue (bias, activation, residual) runs on each tile right after its last KC step,
// while the tile is still in L1, so a Linear + GELU + residual sweeps its output once.
//
// Threads (OpenMP): the b panel is packed by all threads together; the (MC block, sliver range)
// work items are then handed out dynamically. Every element of c is computed by the same
// sequence of operations whatever the thread count or the partition, so results are identical
// at every thread count.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "tessera/core/config.hpp"
#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/simd.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

// Block sizes, overridable at compile time for tuning on another machine.
#ifndef TESSERA_GEMM_KC
#define TESSERA_GEMM_KC 256
#endif
#ifndef TESSERA_GEMM_MC_TILES
#define TESSERA_GEMM_MC_TILES 16
#endif
#ifndef TESSERA_GEMM_NC_SLIVERS
#define TESSERA_GEMM_NC_SLIVERS 64
#endif

namespace tessera {

// What is applied to the product before it is stored for good:
//   c = act(alpha op(a) op(b) [+ c] + bias) + residual
template <class T>
struct GemmEpilogue {
  const T* bias = nullptr;  // [n], added to every row
  Activation activation = Activation::identity;
  const T* residual = nullptr;  // [m, n] with row stride residual_stride, added last
  Index residual_stride = 0;
};

// Tile and block sizes of the GEMM for scalar type T on the compile target (see the top of
// this file).
template <class T>
struct GemmBlocking {
  static constexpr int W = static_cast<int>(simd::width<T>);
  static constexpr int NRP = W > 1 ? 2 : 4;  // packets across one row of the tile
  static constexpr int NR = NRP * W;
  static constexpr int MR = W == 1 ? 4 : (EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 12 : 6);
  static constexpr Index KC = TESSERA_GEMM_KC;
  static constexpr Index MC = TESSERA_GEMM_MC_TILES * MR;
  static constexpr Index NC = TESSERA_GEMM_NC_SLIVERS * NR;
};

// The register tile (MR rows by NR columns) of the GEMM that runs for scalar type T: GemmBlocking
// on the compile target, or in the compiled mode that of the level chosen at run time. Products
// with fewer than MR rows and an unpacked b go through Eigen (see gemm below).
struct GemmTile {
  Index mr, nr;
};
TESSERA_BEGIN_MODE_NAMESPACE
template <class T>
GemmTile gemm_tile() {
  if constexpr (detail::kDispatched<T>)
    return {detail::kernels<T>().gemm_mr, detail::kernels<T>().gemm_nr};
  else
    return {GemmBlocking<T>::MR, GemmBlocking<T>::NR};
}
TESSERA_END_MODE_NAMESPACE

namespace detail {

// One aligned scratch buffer per thread and slot, grown on demand and kept for the next call.
template <class T, int Slot>
T* gemm_scratch(Index n) {
  struct Buffer {
    T* p = nullptr;
    Index cap = 0;
    ~Buffer() { aligned_delete(p); }
  };
  thread_local Buffer buf;
  if (buf.cap < n) {
    aligned_delete(buf.p);
    buf.p = nullptr;
    buf.cap = 0;
    buf.p = aligned_new<T>(n);
    buf.cap = n;
  }
  return buf.p;
}

// Eigen's PacketBlock of __m512 (etc.) as a template argument: GCC notes that the vector type's
// alignment attribute is not part of the template argument, which is harmless here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

// Loads rows [0, W) of a W x W block (row r at src + r ld; rows from `valid` on read as zero)
// and transposes it: afterwards blk.packet[c] holds column c.
template <class T>
EIGEN_STRONG_INLINE void gemm_load_transposed(
    const T* src, Index ld, Index valid,
    Eigen::internal::PacketBlock<simd::Packet<T>, static_cast<int>(simd::width<T>)>& blk) {
  constexpr int W = static_cast<int>(simd::width<T>);
  for (int r = 0; r < W; ++r)
    blk.packet[r] = r < valid ? simd::load(src + r * ld) : simd::set1<T>(T(0));
  Eigen::internal::ptranspose(blk);
}

// Extra elements a packed-a buffer needs past its end (the vector stores of the last sliver may
// spill up to one packet beyond it; the spilled lanes are zeros that later stores overwrite).
template <class T>
inline constexpr Index kGemmPackPad = simd::width<T>;

// Packs rows [i0, i0 + mc) x columns [p0, p0 + kc) of op(a) into MR-tall slivers: sliver s holds
// element (s MR + r, k) at s MR kc + k MR + r; rows past mc are zero. A row-major a is packed W
// columns at a time through a W x W register transpose.
template <class T, int MR>
void gemm_pack_a(const T* a, Index lda, bool trans, Index i0, Index p0, Index mc, Index kc,
                 T* dst) {
  constexpr int W = static_cast<int>(simd::width<T>);
  for (Index ir = 0; ir < mc; ir += MR) {
    const Index mr = std::min<Index>(MR, mc - ir);
    const T* base = a + (trans ? p0 * lda + i0 + ir : (i0 + ir) * lda + p0);
    if (!trans) {
      Index k = 0;
      if constexpr (W > 1) {
        constexpr int G = (MR + W - 1) / W;  // groups of W rows
        Eigen::internal::PacketBlock<simd::Packet<T>, W> blk[G];
        for (; k + W <= kc; k += W) {
          for (int g = 0; g < G; ++g)
            gemm_load_transposed<T>(base + g * W * lda + k, lda, mr - g * W, blk[g]);
          // In increasing address order, so a group's lanes past MR (zeros) are overwritten by
          // the next column's first rows.
          for (int c = 0; c < W; ++c)
            for (int g = 0; g < G; ++g) simd::store(dst + (k + c) * MR + g * W, blk[g].packet[c]);
        }
      }
      for (; k < kc; ++k)
        for (Index r = 0; r < MR; ++r) dst[k * MR + r] = r < mr ? base[r * lda + k] : T(0);
    } else {
      for (Index k = 0; k < kc; ++k) {
        const T* src = base + k * lda;
        T* d = dst + k * MR;
        for (Index r = 0; r < mr; ++r) d[r] = src[r];
        for (Index r = mr; r < MR; ++r) d[r] = T(0);
      }
    }
    dst += MR * kc;
  }
}

// Packs rows [p0, p0 + kc) x columns [j0, j0 + nr) of op(b), nr <= NR, into one NR-wide sliver:
// element (k, j) at k NR + j; columns past nr are zero. A transposed b (a weight [n, k]) is
// packed W x W blocks at a time through a register transpose.
template <class T, int NR>
void gemm_pack_b_sliver(const T* b, Index ldb, bool trans, Index p0, Index j0, Index kc, Index nr,
                        T* dst) {
  constexpr int W = static_cast<int>(simd::width<T>);
  if (!trans) {
    for (Index k = 0; k < kc; ++k) {
      const T* src = b + (p0 + k) * ldb + j0;
      T* d = dst + k * NR;
      for (Index j = 0; j < nr; ++j) d[j] = src[j];
      for (Index j = nr; j < NR; ++j) d[j] = T(0);
    }
    return;
  }
  const T* base = b + j0 * ldb + p0;
  Index k = 0;
  if constexpr (W > 1) {
    Eigen::internal::PacketBlock<simd::Packet<T>, W> blk;
    for (; k + W <= kc; k += W)
      for (Index g = 0; g < NR / W; ++g) {
        gemm_load_transposed<T>(base + g * W * ldb + k, ldb, nr - g * W, blk);
        for (int c = 0; c < W; ++c) simd::store(dst + (k + c) * NR + g * W, blk.packet[c]);
      }
  }
  for (; k < kc; ++k)
    for (Index j = 0; j < NR; ++j) dst[k * NR + j] = j < nr ? base[j * ldb + k] : T(0);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// The micro-kernel: tile = sum over k of a sliver's column k times b sliver's row k, then
// c = alpha tile (+ c when `add`). c is an MR x NR tile with row stride ldc.
template <class T, int MR, int NRP>
EIGEN_DONT_INLINE void gemm_micro_kernel(Index kc, const T* __restrict ap, const T* __restrict bp,
                                         T* __restrict c, Index ldc, T alpha, bool add) {
  using P = simd::Packet<T>;
  constexpr int W = static_cast<int>(simd::width<T>);
  constexpr int NR = NRP * W;
  P acc[MR][NRP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    Eigen::internal::prefetch(c + r * ldc);
    if constexpr (NR * sizeof(T) > 64) Eigen::internal::prefetch(c + r * ldc + NR - 1);
#pragma GCC unroll 4
    for (int j = 0; j < NRP; ++j) acc[r][j] = simd::set1<T>(T(0));
  }
#pragma GCC unroll 2
  for (Index k = 0; k < kc; ++k) {
    P bv[NRP];
#pragma GCC unroll 4
    for (int j = 0; j < NRP; ++j) bv[j] = Eigen::internal::pload<P>(bp + j * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const P av = simd::set1<T>(ap[r]);
#pragma GCC unroll 4
      for (int j = 0; j < NRP; ++j) acc[r][j] = simd::fmadd(av, bv[j], acc[r][j]);
    }
    ap += MR;
    bp += NR;
  }
  const P al = simd::set1<T>(alpha);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    T* cr = c + r * ldc;
#pragma GCC unroll 4
    for (int j = 0; j < NRP; ++j) {
      const P v =
          add ? simd::fmadd(al, acc[r][j], simd::load(cr + j * W)) : simd::mul(al, acc[r][j]);
      simd::store(cr + j * W, v);
    }
  }
}

// The epilogue on rows [i0, i0 + mr) x columns [j0, j0 + nr) of the finished c.
template <class T>
void gemm_epilogue_tile(const GemmEpilogue<T>& e, T* c, Index ldc, Index i0, Index j0, Index mr,
                        Index nr) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  for (Index r = 0; r < mr; ++r) {
    T* row = c + (i0 + r) * ldc + j0;
    Eigen::Map<Arr> y(row, nr);
    if (e.bias) y += Eigen::Map<const Arr>(e.bias + j0, nr);
    if (e.activation != Activation::identity) activate(e.activation, row, row, nr);
    if (e.residual) y += Eigen::Map<const Arr>(e.residual + (i0 + r) * e.residual_stride + j0, nr);
  }
}

template <class T>
bool gemm_has_epilogue(const GemmEpilogue<T>& e) {
  return e.bias || e.residual || e.activation != Activation::identity;
}

}  // namespace detail

namespace detail {
// The compiled library's entry to PackedMatrix's packing (KernelTable::pack_matrix).
struct PackedMatrixAccess {
  template <class T>
  static void pack(PackedMatrix<T>& m, const T* b, Index ldb, bool trans, Index k, Index n) {
    m.pack(b, ldb, trans, k, n);
  }
};
}  // namespace detail

// op(b) ([k, n]) packed once into the GEMM's slivers, for a right-hand operand that is reused
// across many products (a layer's weight: b = W^T for y = x W^T). Immutable once built; it does
// not follow later changes to the matrix it was packed from.
template <class T>
class PackedMatrix {
 public:
  using Blk = GemmBlocking<T>;

  PackedMatrix() = default;
  // Packs op(b): b is [k, n] with row stride ldb, or, with trans, [n, k] (a weight W gives
  // op(b) = W^T with trans = true and ldb = k).
  //
  // The slivers are as wide as the GEMM's tile on the instruction set the packing runs with; in
  // the compiled mode (kernels/dispatch.hpp) that is the level chosen at run time, the same as the
  // products that read it.
  TESSERA_MODE_TAG PackedMatrix(const T* b, Index ldb, bool trans, Index k, Index n) {
    if constexpr (detail::kDispatched<T>)
      detail::kernels<T>().pack_matrix(*this, b, ldb, trans, k, n);
    else
      pack(b, ldb, trans, k, n);
  }
  // Packs a weight W [n, k] (PyTorch's Linear layout) as op(b) = W^T.
  template <TensorLike Wt>
  static PackedMatrix from_weight(const Wt& w) {
    static_assert(rank_v<Wt> == 2, "PackedMatrix::from_weight takes a matrix [out, in]");
    const auto v = cview(w);
    return PackedMatrix(v.data(), v.dim(1), true, v.dim(1), v.dim(0));
  }

  Index rows() const noexcept { return k_; }  // k
  Index cols() const noexcept { return n_; }  // n
  bool empty() const noexcept { return data_ == nullptr; }
  // Columns per packed sliver (the GEMM tile's NR on the instruction set that packed it).
  Index sliver_width() const noexcept { return nr_; }
  // The packed panel of column block jc and row block pc.
  const T* panel(Index jc, Index pc) const noexcept {
    return data_.get() + offsets_[static_cast<std::size_t>(jc * blocks(k_, Blk::KC) + pc)];
  }

 private:
  friend struct detail::PackedMatrixAccess;
  void pack(const T* b, Index ldb, bool trans, Index k, Index n) {
    k_ = k;
    n_ = n;
    nr_ = Blk::NR;
    const Index njc = blocks(n, Blk::NC), npc = blocks(k, Blk::KC);
    offsets_.resize(static_cast<std::size_t>(njc * npc));
    Index total = 0;
    for (Index jc = 0; jc < njc; ++jc)
      for (Index pc = 0; pc < npc; ++pc) {
        offsets_[static_cast<std::size_t>(jc * npc + pc)] = total;
        const Index nc = std::min(Blk::NC, n - jc * Blk::NC);
        const Index kc = std::min(Blk::KC, k - pc * Blk::KC);
        total += blocks(nc, Blk::NR) * Blk::NR * kc;
      }
    data_.reset(detail::aligned_new<T>(std::max<Index>(total, 1)), Deleter{});
    for (Index jc = 0; jc < njc; ++jc)
      for (Index pc = 0; pc < npc; ++pc) {
        const Index nc = std::min(Blk::NC, n - jc * Blk::NC);
        const Index kc = std::min(Blk::KC, k - pc * Blk::KC);
        T* dst = data_.get() + offsets_[static_cast<std::size_t>(jc * npc + pc)];
        const Index ns = blocks(nc, Blk::NR);
        parallel_for(ns, 8, [&](Index s0, Index s1) {
          for (Index s = s0; s < s1; ++s)
            detail::gemm_pack_b_sliver<T, Blk::NR>(
                b, ldb, trans, pc * Blk::KC, jc * Blk::NC + s * Blk::NR, kc,
                std::min<Index>(Blk::NR, nc - s * Blk::NR), dst + s * Blk::NR * kc);
        });
      }
  }
  static Index blocks(Index n, Index b) { return (n + b - 1) / b; }
  struct Deleter {
    void operator()(T* p) const { detail::aligned_delete(p); }
  };
  Index k_ = 0, n_ = 0, nr_ = 0;
  std::vector<Index> offsets_;
  std::shared_ptr<T> data_{nullptr, Deleter{}};
};

// One product c = act(alpha op(a) op(b) [+ c] + bias) + residual on raw row-major storage.
template <class T>
struct GemmProblem {
  Index m = 0, n = 0, k = 0;
  const T* a = nullptr;  // op(a) is [m, k]; a is [m, k] (or [k, m] with trans_a), row stride lda
  Index lda = 0;
  bool trans_a = false;
  const T* b = nullptr;  // op(b) is [k, n]; b is [k, n] (or [n, k] with trans_b), row stride ldb
  Index ldb = 0;
  bool trans_b = false;
  const PackedMatrix<T>* packed_b = nullptr;  // used in place of b when set
  T* c = nullptr;                             // [m, n], row stride ldc
  Index ldc = 0;
  T alpha = T(1);
  bool accumulate = false;  // c += ... instead of c = ...
  GemmEpilogue<T> epilogue{};
};

namespace detail {

// Runs the product; `threads` > 1 only outside a parallel region.
template <class T>
void gemm_run(const GemmProblem<T>& p, int threads) {
  using Blk = GemmBlocking<T>;
  constexpr int MR = Blk::MR, NR = Blk::NR;
  const Index m = p.m, n = p.n, k = p.k;
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!p.accumulate)
      for (Index i = 0; i < m; ++i) std::fill_n(p.c + i * p.ldc, n, T(0));
    if (gemm_has_epilogue(p.epilogue)) gemm_epilogue_tile(p.epilogue, p.c, p.ldc, 0, 0, m, n);
    return;
  }
  const bool epi = gemm_has_epilogue(p.epilogue);
  const Index njc = (n + Blk::NC - 1) / Blk::NC;
  const Index npc = (k + Blk::KC - 1) / Blk::KC;
  const Index nic = (m + Blk::MC - 1) / Blk::MC;
  T* bshared = p.packed_b
                   ? nullptr
                   : gemm_scratch<T, 1>(Blk::KC * std::min<Index>(Blk::NC, (n + NR - 1) / NR * NR));

  // The block [ic, ic + mc) x slivers [s0, s1) of the panel (jc, pc).
  const auto macro = [&](const T* apack, const T* bpanel, Index ic, Index mc, Index jc, Index pc,
                         Index kc, Index s0, Index s1) {
    const bool first = pc == 0, last = pc == npc - 1;
    const bool add = !first || p.accumulate;
    const Index nc = std::min(Blk::NC, n - jc);
    alignas(64) T tmp[MR * NR];
    for (Index s = s0; s < s1; ++s) {
      const Index j0 = jc + s * NR;
      const Index nr = std::min<Index>(NR, nc - s * NR);
      const T* bs = bpanel + s * NR * kc;
      for (Index ir = 0; ir < mc; ir += MR) {
        const Index mr = std::min<Index>(MR, mc - ir);
        const T* as = apack + ir * kc;
        T* ct = p.c + (ic + ir) * p.ldc + j0;
        if (mr == MR && nr == NR) {
          gemm_micro_kernel<T, MR, Blk::NRP>(kc, as, bs, ct, p.ldc, p.alpha, add);
        } else {
          gemm_micro_kernel<T, MR, Blk::NRP>(kc, as, bs, tmp, NR, p.alpha, false);
          for (Index r = 0; r < mr; ++r)
            for (Index j = 0; j < nr; ++j)
              ct[r * p.ldc + j] = add ? ct[r * p.ldc + j] + tmp[r * NR + j] : tmp[r * NR + j];
        }
        if (last && epi) gemm_epilogue_tile(p.epilogue, p.c, p.ldc, ic + ir, j0, mr, nr);
      }
    }
  };

  const auto body = [&](int nt) {
    // f(0) ... f(n - 1), shared among the team when there is one (each worksharing loop ends in
    // a barrier). Serially there is no `omp for` at all: an orphaned one would bind to an
    // enclosing parallel region (a batched product's) that this call is not the whole of.
    const auto share = [&](Index n_items, bool dynamic, auto&& f) {
#ifdef _OPENMP
      if (nt > 1) {
        if (dynamic) {
#pragma omp for schedule(dynamic, 1)
          for (Index i = 0; i < n_items; ++i) f(i);
        } else {
#pragma omp for schedule(static)
          for (Index i = 0; i < n_items; ++i) f(i);
        }
        return;
      }
#endif
      for (Index i = 0; i < n_items; ++i) f(i);
    };
    T* apack = gemm_scratch<T, 0>(Blk::MC * Blk::KC + kGemmPackPad<T>);
    for (Index jb = 0; jb < njc; ++jb) {
      const Index jc = jb * Blk::NC;
      const Index nc = std::min(Blk::NC, n - jc);
      const Index ns = (nc + NR - 1) / NR;
      for (Index pb = 0; pb < npc; ++pb) {
        const Index pc = pb * Blk::KC;
        const Index kc = std::min(Blk::KC, k - pc);
        const T* bpanel = bshared;
        if (p.packed_b) {
          bpanel = p.packed_b->panel(jb, pb);
        } else {
          share(ns, false, [&](Index s) {
            gemm_pack_b_sliver<T, NR>(p.b, p.ldb, p.trans_b, pc, jc + s * NR, kc,
                                      std::min<Index>(NR, nc - s * NR), bshared + s * NR * kc);
          });
        }
        // Work items: (MC block, range of slivers); the slivers are split only when there are
        // too few blocks to go round the threads.
        const Index splits = nic >= 2 * nt ? 1 : std::min<Index>(ns, (2 * nt + nic - 1) / nic);
        const Index items = nic * splits;
        share(items, true, [&](Index it) {
          const Index ib = it / splits, part = it % splits;
          const Index ic = ib * Blk::MC;
          const Index mc = std::min(Blk::MC, m - ic);
          gemm_pack_a<T, MR>(p.a, p.lda, p.trans_a, ic, pc, mc, kc, apack);
          macro(apack, bpanel, ic, mc, jc, pb, kc, ns * part / splits, ns * (part + 1) / splits);
        });
      }
    }
  };

#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    body(omp_get_num_threads());
    return;
  }
#endif
  (void)threads;
  body(1);
}

// Small products, and matrix-vector-like ones with an unpacked b, where packing would cost more
// than it saves: Eigen's coefficient-based product or its GEMV, then the same epilogue.
template <class T>
void gemm_small(const GemmProblem<T>& p) {
  using Stride = Eigen::OuterStride<>;
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Stride>;
  Eigen::Map<Mat, 0, Stride> C(p.c, p.m, p.n, Stride(p.ldc));
  if (p.k == 0) {
    if (!p.accumulate) C.setZero();
  } else {
    const CMap A(p.a, p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k, Stride(p.lda));
    const CMap B(p.b, p.trans_b ? p.n : p.k, p.trans_b ? p.k : p.n, Stride(p.ldb));
    const auto run = [&](const auto& lhs, const auto& rhs) {
      if (p.accumulate)
        C.noalias() += p.alpha * lhs * rhs;
      else
        C.noalias() = p.alpha * lhs * rhs;
    };
    if (!p.trans_a && !p.trans_b)
      run(A, B);
    else if (!p.trans_a)
      run(A, B.transpose());
    else if (!p.trans_b)
      run(A.transpose(), B);
    else
      run(A.transpose(), B.transpose());
  }
  if (gemm_has_epilogue(p.epilogue)) gemm_epilogue_tile(p.epilogue, p.c, p.ldc, 0, 0, p.m, p.n);
}

}  // namespace detail

#ifdef TESSERA_USE_BLAS
inline constexpr bool kGemmUsesBlas = true;
#else
inline constexpr bool kGemmUsesBlas = false;
#endif

namespace detail {

template <class T>
void gemm_impl(const GemmProblem<T>& p) {
  check_activation("tessera::gemm", "epilogue.activation", p.epilogue.activation);
  if (p.packed_b && p.packed_b->empty())
    raise<ValueError>("tessera::gemm", "packed_b is empty (a default-constructed PackedMatrix)");
  if (p.packed_b && p.packed_b->sliver_width() != GemmBlocking<T>::NR)
    raise<ValueError>("tessera::gemm", "packed_b has slivers of ", p.packed_b->sliver_width(),
                      " columns, expected ", GemmBlocking<T>::NR,
                      ": it was packed by code built for another instruction set");
  if (p.m == 0 || p.n == 0) return;
  const double work =
      static_cast<double>(p.m) * static_cast<double>(p.n) * static_cast<double>(p.k);
  if (!p.packed_b && (kGemmUsesBlas || work < 32.0 * 32.0 * 32.0 || p.m < GemmBlocking<T>::MR)) {
    detail::gemm_small(p);
    return;
  }
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && work >= 64.0 * 64.0 * 64.0) threads = num_threads();
#endif
  gemm_run(p, threads);
}

}  // namespace detail

// Runs one product on tessera's threads (serially inside an enclosing parallel region or when the
// product is small). Tiny products and those with fewer than MR rows of a (a matrix-vector
// product, one decoding step) against an unpacked b go through Eigen instead of packing.
//
// Built with TESSERA_USE_BLAS (CMake option of the same name, which also defines EIGEN_USE_BLAS
// and links a BLAS), every product whose b is not prepacked goes to Eigen's product and from
// there to the BLAS's ?gemm, with the epilogue applied afterwards.
// In the compiled mode the product runs in the library, on the instruction set chosen at run time
// (kernels/dispatch.hpp). Throws ValueError when packed_b is empty, or was packed for slivers of
// another width (by code compiled for another instruction set).
TESSERA_BEGIN_MODE_NAMESPACE
template <class T>
void gemm(const GemmProblem<T>& p) {
  if constexpr (detail::kDispatched<T>)
    detail::kernels<T>().gemm(p);
  else
    detail::gemm_impl(p);
}
TESSERA_END_MODE_NAMESPACE

}  // namespace tessera
