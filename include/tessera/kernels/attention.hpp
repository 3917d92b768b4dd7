// tessera: scaled dot-product attention (Vaswani et al. 2017),
//
//   attention(Q, K, V) = softmax(scale * Q K^T + mask) V,   scale = 1 / sqrt(head_dim) by default
//
// on [batch, heads, seq, head_dim] tensors. Lq may differ from Lk, and the value dimension Dv from
// the query/key dimension D. This is the reference path: it forms the scores for a block of query
// rows at a time (so memory is O(block * Lk), never O(Lq * Lk) unless the weights are asked for),
// applies the masks, takes the softmax and multiplies by V with Eigen's products.
//
// Masks: see Mask. `causal` lets query i see keys j <= i, aligned top-left as in PyTorch's
// F.scaled_dot_product_attention(is_causal=True). A query row whose every key is masked out gives
// a zero output row (and zero weights); PyTorch gives NaN there. A NaN in a visible score (from
// the query, a key or an additive mask) gives a NaN output row, on every path.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/attention_problem.hpp"
#include "tessera/kernels/flash_attention.hpp"
#include "tessera/kernels/softmax.hpp"

namespace tessera {

// Which implementation computes attention. `automatic` takes the fused kernel unless the weights
// are requested (they need the materialised scores).
enum class AttentionImpl { automatic, fused, reference };

struct SDPAOptions {
  std::optional<Mask> mask;     // broadcast against the scores [batch, heads, Lq, Lk]
  bool causal = false;          // key j visible to query i only when j <= i
  std::optional<double> scale;  // default 1 / sqrt(head_dim); must be finite in the scalar type
  AttentionImpl impl = AttentionImpl::automatic;
};

namespace detail {

// Query rows per block: enough rows for an efficient product, few enough that the score block
// ([rows, Lk]) stays in L2 for moderate Lk.
inline constexpr Index kAttentionQueryBlock = 64;

template <class T>
void attention_reference_impl(const AttentionProblem<T>& p) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  using MMap = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
  if (attention_empty(p)) return;
  const Index bh = p.batch * p.heads;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  parallel_for(bh, 1, [&](Index t0, Index t1) {
    const Index block = std::min<Index>(kAttentionQueryBlock, std::max<Index>(p.lq, 1));
    Mat scores(block, p.lk);
    for (Index t = t0; t < t1; ++t) {
      const Index b = t / p.heads, h = t % p.heads;
      const CMap K(p.k.at(b, h), p.lk, p.d, Eigen::OuterStride<>(p.k.row));
      const CMap V(p.v.at(b, h), p.lk, p.dv, Eigen::OuterStride<>(p.v.row));
      for (Index i0 = 0; i0 < p.lq; i0 += block) {
        const Index rows = std::min(block, p.lq - i0);
        const CMap Q(p.q.at(b, h) + i0 * p.q.row, rows, p.d, Eigen::OuterStride<>(p.q.row));
        // scores: [rows, Lk] = scale * Q [rows, D] x K^T [D, Lk]
        auto S = scores.topRows(rows);
        if (p.d > 0)
          S.noalias() = (p.scale * Q) * K.transpose();
        else
          S.setZero();
        for (Index r = 0; r < rows; ++r) {
          const Index i = i0 + r;
          T* srow = S.row(r).data();
          const Index global_row = t * p.lq + i;
          for (const MaskRows* m : p.masks)
            if (m) m->apply(global_row, srow, srow, p.mask_lk);
          if (p.causal)  // only the real keys: appended ones stay visible, as PyTorch pads masks
            for (Index j = std::max<Index>(0, i + 1 + p.causal_offset); j < p.mask_lk; ++j)
              srow[j] = ninf;
          softmax_row(srow, srow, p.lk);
          if (p.weights) std::copy(srow, srow + p.lk, p.weights + global_row * p.lk);
        }
        // out: [rows, Dv] = P [rows, Lk] x V [Lk, Dv]
        MMap O(p.out.at(b, h) + i0 * p.out.row, rows, p.dv, Eigen::OuterStride<>(p.out.row));
        O.noalias() = S * V;
      }
    }
  });
}

TESSERA_BEGIN_MODE_NAMESPACE
// attention_reference_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void attention_reference(const AttentionProblem<T>& p) {
  if constexpr (kDispatched<T>)
    kernels<T>().attention_reference(p);
  else
    attention_reference_impl(p);
}
TESSERA_END_MODE_NAMESPACE

// Runs the problem on the fused kernel when it can (no weights requested), else the reference.
template <class T>
void attention_run(const AttentionProblem<T>& p, AttentionImpl impl = AttentionImpl::automatic) {
  if (p.weights || impl == AttentionImpl::reference)
    attention_reference(p);
  else
    attention_fused(p);
}

}  // namespace detail

// Attention over [batch, heads, Lq, D] queries, [batch, heads, Lk, D] keys and
// [batch, heads, Lk, Dv] values into `out` [batch, heads, Lq, Dv]. When `weights` is given it
// receives the softmax weights [batch, heads, Lq, Lk].
template <TensorLike Q, TensorLike K, TensorLike V, class O>
void scaled_dot_product_attention_into(const Q& q, const K& k, const V& v, O&& out,
                                       const SDPAOptions& opts = {},
                                       TensorMap<scalar_t<Q>, 4>* weights = nullptr) {
  using T = scalar_t<Q>;
  static_assert(rank_v<Q> == 4 && rank_v<K> == 4 && rank_v<V> == 4 && rank_v<O> == 4,
                "scaled_dot_product_attention takes [batch, heads, seq, dim] tensors");
  static_assert(std::is_same_v<T, scalar_t<K>> && std::is_same_v<T, scalar_t<V>> &&
                    std::is_same_v<T, scalar_t<O>>,
                "scaled_dot_product_attention: q, k, v and out scalar types differ");
  constexpr std::string_view fn = "tessera::scaled_dot_product_attention";
  const auto qv = cview(q);
  const auto kv = cview(k);
  const auto vv = cview(v);
  auto ov = mview(out);
  const Index B = qv.dim(0), H = qv.dim(1), Lq = qv.dim(2), D = qv.dim(3);
  const Index Lk = kv.dim(2), Dv = vv.dim(3);
  const Index k_expected[] = {B, H, Lk, D};
  detail::check_shape_equal(fn, "key", kv.shape(), k_expected);
  const Index v_expected[] = {B, H, Lk, Dv};
  if (vv.dim(0) != B || vv.dim(1) != H || vv.dim(2) != Lk)
    detail::raise<ShapeError>(fn, "argument 'value' has shape ", detail::shape_string(vv.shape()),
                              ", expected ", detail::shape_string(v_expected),
                              " (batch, heads and length of the keys)");
  const Index o_expected[] = {B, H, Lq, Dv};
  detail::check_shape_equal(fn, "out", ov.shape(), o_expected);
  if (weights) {
    const Index w_expected[] = {B, H, Lq, Lk};
    detail::check_shape_equal(fn, "weights", weights->shape(), w_expected);
  }
  if (opts.scale) detail::check_finite_in<T>(fn, "scale", *opts.scale);

  detail::AttentionProblem<T> p;
  p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk, p.d = D, p.dv = Dv;
  p.q = {qv.data(), H * Lq * D, Lq * D, D};
  p.k = {kv.data(), H * Lk * D, Lk * D, D};
  p.v = {vv.data(), H * Lk * Dv, Lk * Dv, Dv};
  p.out = {ov.data(), H * Lq * Dv, Lq * Dv, Dv};
  p.scale =
      static_cast<T>(opts.scale.value_or(D > 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0));
  p.causal = opts.causal;
  p.mask_lk = Lk;
  p.weights = weights ? weights->data() : nullptr;
  std::optional<detail::MaskRows> mrows;
  if (opts.mask) {
    const Index target[] = {B, H, Lq, Lk};
    mrows.emplace(*opts.mask, target, fn, "mask");
    p.masks[0] = &*mrows;
  }
  if (weights && opts.impl == AttentionImpl::fused)
    detail::raise<ValueError>(fn,
                              "the fused path cannot return the attention weights; use "
                              "AttentionImpl::automatic or ::reference with weights");
  detail::attention_run(p, opts.impl);
}

template <TensorLike Q, TensorLike K, TensorLike V>
Tensor<scalar_t<Q>, 4> scaled_dot_product_attention(const Q& q, const K& k, const V& v,
                                                    const SDPAOptions& opts = {}) {
  const auto& qs = q.shape();
  Tensor<scalar_t<Q>, 4> out(Shape<4>{qs[0], qs[1], qs[2], v.shape()[3]}, uninitialized);
  scaled_dot_product_attention_into(q, k, v, out, opts);
  return out;
}

// The output and the attention weights [batch, heads, Lq, Lk].
template <class T>
struct AttentionWithWeights {
  Tensor<T, 4> output;
  Tensor<T, 4> weights;
};

template <TensorLike Q, TensorLike K, TensorLike V>
AttentionWithWeights<scalar_t<Q>> scaled_dot_product_attention_with_weights(
    const Q& q, const K& k, const V& v, const SDPAOptions& opts = {}) {
  const auto& qs = q.shape();
  // weights: [B, H, Lq, Lk], checked before it is allocated (Lq * Lk may not fit an index)
  const Index w_shape[] = {qs[0], qs[1], qs[2], k.shape()[2]};
  (void)detail::checked_shape_size(w_shape, "tessera::scaled_dot_product_attention_with_weights",
                                   "the attention weights");
  AttentionWithWeights<scalar_t<Q>> r{
      Tensor<scalar_t<Q>, 4>(Shape<4>{qs[0], qs[1], qs[2], v.shape()[3]}, uninitialized),
      Tensor<scalar_t<Q>, 4>(Shape<4>{qs[0], qs[1], qs[2], k.shape()[2]}, uninitialized)};
  TensorMap<scalar_t<Q>, 4> w(r.weights);
  scaled_dot_product_attention_into(q, k, v, r.output, opts, &w);
  return r;
}

}  // namespace tessera
