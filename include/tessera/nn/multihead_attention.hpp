// tessera: nn::MultiheadAttention, torch.nn.MultiheadAttention with batch_first=True.
//
//   q = query W_q^T + b_q,  k = key W_k^T + b_k,  v = value W_v^T + b_v      (one product each,
//   head_i = attention(q_i, k_i, v_i)  for i < num_heads, q_i = columns [i*hd, (i+1)*hd)
//   out = concat(head_0, ..., head_{H-1}) W_o^T + b_o                        (Vaswani et al. 2017)
//
// Heads are never copied apart: attention reads head i of the projected [batch, seq, embed]
// tensors through strides and writes its output into the columns of head i of one
// [batch, seq, embed] buffer, which is the out projection's input. Self-attention (query, key and
// value the same tensor) projects all three with one [3E, E] product. The projections and the
// attention output live in the calling thread's scratch arena (core/scratch.hpp), so a repeated
// call allocates nothing but what it returns; forward_into allocates nothing at all.
//
// State dict names are PyTorch's: in_proj_weight [3E, E] when kdim == vdim == embed_dim, otherwise
// q_proj_weight [E, E], k_proj_weight [E, kdim], v_proj_weight [E, vdim]; in_proj_bias [3E];
// out_proj.weight [E, E], out_proj.bias [E]; bias_k, bias_v [1, 1, E] with add_bias_kv. Every
// entry point (forward, attend, append_kv, prepack) checks these shapes first and throws a
// ShapeError naming the parameter, so a replaced or wrongly loaded weight never reads past its end.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/attention.hpp"
#include "tessera/kernels/attention_backward.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/parameter.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

// What a MultiheadAttention serves, for prepack(): self-attention (query, key and value one
// tensor), cross-attention (the query from one sequence, key and value from another), or both.
enum class AttentionUse { self, cross, both };

struct MultiheadAttentionOptions {
  Index embed_dim = 0;
  Index num_heads = 1;
  bool bias = true;            // in_proj_bias and out_proj.bias
  bool add_bias_kv = false;    // learned bias_k, bias_v appended to the keys and values
  bool add_zero_attn = false;  // a zero key and value appended (after bias_kv)
  Index kdim = 0;              // key features; 0 means embed_dim
  Index vdim = 0;              // value features; 0 means embed_dim
  std::uint64_t seed = 0;      // initialisation, with PyTorch's distributions
};

struct MultiheadAttentionForwardOptions {
  // [batch, Lk]. PyTorch's boolean key_padding_mask (true = padding) is Mask::blocked(pad).
  std::optional<Mask> key_padding_mask;
  // [Lq, Lk] or [batch * num_heads, Lq, Lk]. PyTorch's boolean attn_mask (true = not allowed) is
  // Mask::blocked(m); a float attn_mask is Mask::additive(m).
  std::optional<Mask> attn_mask;
  bool need_weights = false;         // PyTorch defaults to true; weights cost O(Lq * Lk) memory
  bool average_attn_weights = true;  // weights averaged over heads: [batch, Lq, Lk]
  bool is_causal = false;            // also mask keys j > i (top-left aligned)
};

template <class T>
struct MultiheadAttentionOutput {
  Tensor<T, 3> output;                                // [batch, Lq, embed_dim]
  std::optional<Tensor<T, 3>> attn_weights;           // [batch, Lq, Lk'] when averaged
  std::optional<Tensor<T, 4>> attn_weights_per_head;  // [batch, heads, Lq, Lk'] otherwise
};

// What forward_into and attend_into return beside the output they write: the attention weights,
// when requested (as in MultiheadAttentionOutput).
template <class T>
struct MultiheadAttentionWeights {
  std::optional<Tensor<T, 3>> attn_weights;
  std::optional<Tensor<T, 4>> attn_weights_per_head;
};

// Projected keys and values kept between calls, for incremental decoding: generating token t
// projects only that token and attends over the t cached keys, O(t) work instead of O(t^2).
// attend and append_kv check a cache before they read it: k and v of one shape, their rows of
// embed_dim features, 0 <= length <= capacity.
template <class T>
struct KVCache {
  Tensor<T, 3> k;  // [batch, capacity, embed_dim], rows [0, length) in use
  Tensor<T, 3> v;
  Index length = 0;  // keys held
  void clear() noexcept { length = 0; }
};

// The gradients backward returns, one per input. When query, key and value were one tensor
// (self-attention), that tensor's gradient is the sum of the three.
template <class T>
struct MultiheadAttentionGrads {
  Tensor<T, 3> query;  // [batch, Lq, embed_dim]
  Tensor<T, 3> key;    // [batch, Lk, kdim]
  Tensor<T, 3> value;  // [batch, Lk, vdim]
};

template <class T>
class MultiheadAttention : public Module<MultiheadAttention<T>> {
 public:
  Parameter<T, 2> in_proj_weight;  // [3E, E] (packed) or empty
  Parameter<T, 2> q_proj_weight;   // [E, E] (separate) or empty
  Parameter<T, 2> k_proj_weight;   // [E, kdim]
  Parameter<T, 2> v_proj_weight;   // [E, vdim]
  Parameter<T, 1> in_proj_bias;    // [3E] or empty
  Parameter<T, 3> bias_k;          // [1, 1, E] with add_bias_kv
  Parameter<T, 3> bias_v;
  Linear<T> out_proj;  // [E, E] (+ [E])

  MultiheadAttention() = default;
  explicit MultiheadAttention(const MultiheadAttentionOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::MultiheadAttention";
    const Index E = o.embed_dim;
    if (E <= 0) detail::raise<ValueError>(fn, "embed_dim is ", E, ", expected a value > 0");
    if (o.num_heads <= 0 || E % o.num_heads != 0)
      detail::raise<ValueError>(fn, "num_heads is ", o.num_heads,
                                ", expected a positive divisor of embed_dim = ", E);
    if (o.kdim < 0 || o.vdim < 0)
      detail::raise<ValueError>(fn, "kdim and vdim are ", o.kdim, " and ", o.vdim,
                                ", expected values >= 0");
    options_.kdim = o.kdim ? o.kdim : E;
    options_.vdim = o.vdim ? o.vdim : E;
    // PyTorch: xavier_uniform_ on the projection weights, zero biases, xavier_normal_ on bias_k/v.
    auto xavier = [](Parameter<T, 2>& w, std::uint64_t seed) {
      const double bound = std::sqrt(6.0 / static_cast<double>(w.shape()[0] + w.shape()[1]));
      detail::init_uniform(w, seed, -bound, bound);
    };
    if (packed()) {
      in_proj_weight = Parameter<T, 2>(Shape<2>{3 * E, E});
      xavier(in_proj_weight, o.seed + 1);
    } else {
      q_proj_weight = Parameter<T, 2>(Shape<2>{E, E});
      k_proj_weight = Parameter<T, 2>(Shape<2>{E, options_.kdim});
      v_proj_weight = Parameter<T, 2>(Shape<2>{E, options_.vdim});
      xavier(q_proj_weight, o.seed + 1);
      xavier(k_proj_weight, o.seed + 2);
      xavier(v_proj_weight, o.seed + 3);
    }
    if (o.bias) in_proj_bias = Parameter<T, 1>(Shape<1>{3 * E});
    if (o.add_bias_kv) {
      bias_k = Parameter<T, 3>(Shape<3>{1, 1, E});
      bias_v = Parameter<T, 3>(Shape<3>{1, 1, E});
      const double std = std::sqrt(2.0 / static_cast<double>(E + 1));
      detail::init_normal(bias_k, o.seed + 4, 0.0, std);
      detail::init_normal(bias_v, o.seed + 5, 0.0, std);
    }
    out_proj = Linear<T>({.in_features = E, .out_features = E, .bias = o.bias, .seed = o.seed + 6});
    if (o.bias) detail::init_constant(out_proj.bias, 0);
  }

  const MultiheadAttentionOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.embed_dim; }
  Index num_heads() const noexcept { return options_.num_heads; }
  Index head_dim() const noexcept { return options_.embed_dim / options_.num_heads; }
  // Whether the projections are one packed in_proj_weight (kdim == vdim == embed_dim).
  bool packed() const noexcept {
    return options_.kdim == options_.embed_dim && options_.vdim == options_.embed_dim;
  }

  // query [batch, Lq, E], key [batch, Lk, kdim], value [batch, Lk, vdim] -> [batch, Lq, E].
  // With `residual` ([batch * Lq, E]), the output is out_proj(attention) + residual, the
  // addition fused into the output projection (a transformer layer's skip connection).
  template <TensorLike Qx, TensorLike Kx, TensorLike Vx>
  MultiheadAttentionOutput<T> forward(const Qx& query, const Kx& key, const Vx& value,
                                      const MultiheadAttentionForwardOptions& fo = {},
                                      std::optional<TensorMap<const T, 2>> residual = {}) const {
    MultiheadAttentionOutput<T> result{
        Tensor<T, 3>(Shape<3>{query.shape()[0], query.shape()[1], embed_dim()}, uninitialized),
        std::nullopt, std::nullopt};
    auto w = forward_into(query, key, value, result.output, fo, residual);
    result.attn_weights = std::move(w.attn_weights);
    result.attn_weights_per_head = std::move(w.attn_weights_per_head);
    return result;
  }
  // The same, writing the output into `out` [batch, Lq, E]. out may be query, key or value (they
  // are projected before out is written); it must not overlap `residual`.
  template <TensorLike Qx, TensorLike Kx, TensorLike Vx>
  MultiheadAttentionWeights<T> forward_into(
      const Qx& query, const Kx& key, const Vx& value, TensorMap<T, 3> out,
      const MultiheadAttentionForwardOptions& fo = {},
      std::optional<TensorMap<const T, 2>> residual = {}) const {
    static_assert(rank_v<Qx> == 3 && rank_v<Kx> == 3 && rank_v<Vx> == 3,
                  "nn::MultiheadAttention takes batch-first [batch, seq, features] tensors");
    static_assert(std::is_same_v<scalar_t<Qx>, T> && std::is_same_v<scalar_t<Kx>, T> &&
                      std::is_same_v<scalar_t<Vx>, T>,
                  "nn::MultiheadAttention: input scalar types differ from the module's");
    return forward_into_views(cview(query), cview(key), cview(value), out, fo, residual);
  }

  // What backward needs from forward_train: the inputs, the projected queries, keys and values
  // (with the bias_kv and zero-attention keys appended), each row's logsumexp of the attention,
  // the out projection's context (it holds the attention output), and copies of the masks.
  struct Context {
    Tensor<T, 3> query, key, value;  // the inputs
    Tensor<T, 3> q, k, v;            // [B, Lq, E], [B, Lk', E], [B, Lk', E]; Lk' = Lk + extra keys
    Tensor<T, 3> lse;                // [B, num_heads, Lq]
    typename Linear<T>::Context out_proj;
    std::optional<SavedMask> attn_mask, key_padding_mask;
    bool is_causal = false;
    bool self_attention = false;  // query, key and value were one tensor: only `query` is kept
    // versions of in_proj_weight, q_proj_weight, k_proj_weight, v_proj_weight at the forward
    std::array<std::uint64_t, 4> proj_versions{};
  };

  // The training forward: the output of forward (need_weights is refused: ValueError) and the
  // context for backward. Every option of forward is supported: packed or separate projections,
  // kdim/vdim, bias off, add_bias_kv, add_zero_attn, attn_mask, key_padding_mask, is_causal.
  // The attention runs on the fused kernel, which saves each row's logsumexp for backward.
  template <TensorLike Qx, TensorLike Kx, TensorLike Vx>
  Trained<Tensor<T, 3>, Context> forward_train(
      const Qx& query, const Kx& key, const Vx& value,
      const MultiheadAttentionForwardOptions& fo = {}) const {
    static_assert(rank_v<Qx> == 3 && rank_v<Kx> == 3 && rank_v<Vx> == 3,
                  "nn::MultiheadAttention takes batch-first [batch, seq, features] tensors");
    static_assert(std::is_same_v<scalar_t<Qx>, T> && std::is_same_v<scalar_t<Kx>, T> &&
                      std::is_same_v<scalar_t<Vx>, T>,
                  "nn::MultiheadAttention: input scalar types differ from the module's");
    return forward_train_views(cview(query), cview(key), cview(value), fo);
  }

  // Given forward_train's context and dL/dy [B, Lq, E]: adds the gradients of every parameter
  // (in_proj or q/k/v_proj weights, in_proj_bias, bias_k, bias_v, out_proj) and returns dL/dquery,
  // dL/dkey and dL/dvalue. The attention's backward recomputes each tile of probabilities from
  // the saved logsumexp (FlashAttention-2, Dao 2023) and never forms the Lq x Lk matrix; a query
  // row whose every key is masked gets zero gradients. No gradient flows into the masks.
  template <TensorLike G>
  MultiheadAttentionGrads<T> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "nn::MultiheadAttention::backward takes a [batch, Lq, embed_dim] gradient of the "
                  "module's scalar type");
    return backward_views(ctx, cview(grad_output));
  }

  // Packs the projection weights for inference (nn::Linear::prepack), in the slices forward
  // multiplies by: for self-attention (query, key and value the same tensor) the whole
  // in_proj_weight; for cross-attention the query's rows and the key's and value's (one [2E, E]
  // slice, used when key and value are the same tensor, as a decoder's memory is; with kdim or
  // vdim != embed_dim the three separate weights); and out_proj. `use` says which of the two the
  // module serves, so that a module used one way does not hold the other's copy (`both`: about
  // twice the projection weights). Call it again after changing the weights; unprepack() drops the
  // packed copies.
  void prepack(AttentionUse use = AttentionUse::both) {
    check_parameters("tessera::nn::MultiheadAttention::prepack");
    unprepack();
    const auto pack = [](const auto& w) {
      return std::make_shared<const PackedMatrix<T>>(PackedMatrix<T>::from_weight(w));
    };
    const bool self = use != AttentionUse::cross, cross = use != AttentionUse::self;
    if (packed() && self) packed_proj_[kQKV] = pack(in_proj_weight.value);
    if (cross) {
      packed_proj_[kQ] = pack(proj_slice(kQ));
      if (packed()) {
        packed_proj_[kKV] = pack(proj_slice(kKV));
      } else {
        packed_proj_[kK] = pack(proj_slice(kK));
        packed_proj_[kV] = pack(proj_slice(kV));
      }
    }
    out_proj.prepack();
    packed_from_ = {detail::PackStamp::of(in_proj_weight), detail::PackStamp::of(q_proj_weight),
                    detail::PackStamp::of(k_proj_weight), detail::PackStamp::of(v_proj_weight)};
  }
  void unprepack() noexcept {
    for (auto& p : packed_proj_) p.reset();
    packed_from_ = {};
    out_proj.unprepack();
  }
  // Whether forward reads packed copies that are current: after load_state_dict, a new weight
  // tensor or a copy of the module it falls back to the unpacked weights until prepack() is
  // called again (see nn::Linear).
  bool is_prepacked() const noexcept { return out_proj.is_prepacked() && packed_current(); }

  // Throws unless `cache` can be read (and appended to) as this module writes it: k and v of one
  // shape [batch, capacity, embed_dim] and 0 <= length <= capacity (an empty cache may hold any
  // shape: it is reallocated). The cache is named as `arg` + `member` in messages (a decoder
  // names the layer's cache: 'cache.layers[1].self_kv').
  void check_cache(std::string_view fn, const KVCache<T>& cache, std::string_view arg = "cache",
                   std::string_view member = "") const {
    if (cache.k.shape() != cache.v.shape())
      detail::raise<ShapeError>(fn, "argument '", arg, member, "' has k of shape ",
                                detail::shape_string(cache.k.shape()), " and v of shape ",
                                detail::shape_string(cache.v.shape()), ", expected one shape");
    if (cache.length < 0 || cache.length > cache.k.dim(1))
      detail::raise<ValueError>(fn, "argument '", arg, member, "' has length ", cache.length,
                                ", expected a value in [0, ", cache.k.dim(1),
                                "] (the capacity of its k, ", detail::shape_string(cache.k.shape()),
                                ")");
    if (cache.length > 0 && cache.k.dim(2) != options_.embed_dim)
      detail::raise<ShapeError>(fn, "argument '", arg, member, "' has k and v of shape ",
                                detail::shape_string(cache.k.shape()),
                                ", expected [batch, capacity, ", options_.embed_dim,
                                "] (embed_dim)");
  }

  // Projects key [batch, n, kdim] and value [batch, n, vdim] and appends them to `cache`.
  template <TensorLike Kx, TensorLike Vx>
  void append_kv(KVCache<T>& cache, const Kx& key, const Vx& value) const {
    static_assert(rank_v<Kx> == 3 && rank_v<Vx> == 3,
                  "append_kv takes [batch, n, features] tensors");
    return append_kv_views(cache, cview(key), cview(value));
  }

  // Attends query [batch, Lq, E] over every key in `cache`. Masks cover the cached keys
  // ([batch, length] padding, [Lq, length] attn_mask); with is_causal, query i sees the keys
  // j <= length - Lq + i, so a block of new tokens appended just before attends causally.
  template <TensorLike Qx>
  MultiheadAttentionOutput<T> attend(const Qx& query, const KVCache<T>& cache,
                                     const MultiheadAttentionForwardOptions& fo = {}) const {
    MultiheadAttentionOutput<T> result{
        Tensor<T, 3>(Shape<3>{query.shape()[0], query.shape()[1], embed_dim()}, uninitialized),
        std::nullopt, std::nullopt};
    auto w = attend_into(query, cache, result.output, fo);
    result.attn_weights = std::move(w.attn_weights);
    result.attn_weights_per_head = std::move(w.attn_weights_per_head);
    return result;
  }
  // The same into `out` [batch, Lq, E], plus `residual` ([batch * Lq, E]) fused into the output
  // projection as in forward. out may be query; it must not overlap `residual` or the cache.
  template <TensorLike Qx>
  MultiheadAttentionWeights<T> attend_into(
      const Qx& query, const KVCache<T>& cache, TensorMap<T, 3> out,
      const MultiheadAttentionForwardOptions& fo = {},
      std::optional<TensorMap<const T, 2>> residual = {}) const {
    static_assert(rank_v<Qx> == 3, "attend takes a [batch, Lq, embed_dim] query");
    return attend_into_views(cview(query), cache, out, fo, residual);
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // every parameter has the shape the options give it (a weight replaced or loaded by hand may
  // not; the projections read in_proj_weight through raw slices). Every entry point runs it.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    const Index E = options_.embed_dim;
    if (packed()) {
      detail::check_parameter(fn, prefix, "in_proj_weight", in_proj_weight, {3 * E, E});
    } else {
      detail::check_parameter(fn, prefix, "q_proj_weight", q_proj_weight, {E, E});
      detail::check_parameter(fn, prefix, "k_proj_weight", k_proj_weight, {E, options_.kdim});
      detail::check_parameter(fn, prefix, "v_proj_weight", v_proj_weight, {E, options_.vdim});
    }
    if (options_.bias) detail::check_parameter(fn, prefix, "in_proj_bias", in_proj_bias, {3 * E});
    if (options_.add_bias_kv) {
      detail::check_parameter(fn, prefix, "bias_k", bias_k, {1, 1, E});
      detail::check_parameter(fn, prefix, "bias_v", bias_v, {1, 1, E});
    }
    out_proj.check_parameters(fn, detail::ParameterPrefix(prefix, "out_proj."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    if (self.packed()) {
      f(prefix + "in_proj_weight", self.in_proj_weight);
    } else {
      f(prefix + "q_proj_weight", self.q_proj_weight);
      f(prefix + "k_proj_weight", self.k_proj_weight);
      f(prefix + "v_proj_weight", self.v_proj_weight);
    }
    if (self.options_.bias) f(prefix + "in_proj_bias", self.in_proj_bias);
    if (self.options_.add_bias_kv) {
      f(prefix + "bias_k", self.bias_k);
      f(prefix + "bias_v", self.bias_v);
    }
    Linear<T>::visit(self.out_proj, f, prefix + "out_proj.");
  }

 private:
  // The public entry points that take any TensorLike run these on views: members that are not
  // templates, instantiated once per T (in tessera::compiled's library in the compiled mode).
  MultiheadAttentionGrads<T> backward_views(const Context& ctx, TensorMap<const T, 3> grad_output);
  Trained<Tensor<T, 3>, Context> forward_train_views(
      TensorMap<const T, 3> query, TensorMap<const T, 3> key, TensorMap<const T, 3> value,
      const MultiheadAttentionForwardOptions& fo) const;
  MultiheadAttentionWeights<T> attend_into_views(
      TensorMap<const T, 3> query, const KVCache<T>& cache, TensorMap<T, 3> out,
      const MultiheadAttentionForwardOptions& fo,
      std::optional<TensorMap<const T, 2>> residual) const;
  void append_kv_views(KVCache<T>& cache, TensorMap<const T, 3> key,
                       TensorMap<const T, 3> value) const;
  MultiheadAttentionWeights<T> forward_into_views(
      TensorMap<const T, 3> query, TensorMap<const T, 3> key, TensorMap<const T, 3> value,
      TensorMap<T, 3> out, const MultiheadAttentionForwardOptions& fo,
      std::optional<TensorMap<const T, 2>> residual) const;
  // Slices of the input projection that forward multiplies by, and their packed copies.
  enum ProjSlice { kQ = 0, kK = 1, kV = 2, kKV = 3, kQKV = 4 };
  // The weight of a slice: rows of in_proj_weight, or (kQ, kK, kV) the separate weights.
  TensorMap<const T, 2> proj_slice(int part) const {
    if (part == kKV && packed()) {
      const Index E = options_.embed_dim;
      return TensorMap<const T, 2>(in_proj_weight.value.data() + E * E, {2 * E, E});
    }
    if (part == kKV) return {};  // separate weights: no [2E, E] slice
    return proj_weight(part);
  }
  // x [B, n, features] times the slice's weight^T plus its bias, into out [B, n, rows of slice]:
  // from the packed copy when prepack() made one.
  template <class X>
  void project(const X& x, int part, TensorMap<T, 3> out) const {
    const Index parts = part == kQKV ? 3 : part == kKV ? 2 : 1;
    const int first = part == kQKV ? 0 : part == kKV ? 1 : part;
    const auto& packed_w = packed_proj_[part];
    if (packed_w && packed_w->cols() == out.dim(2) && packed_current())
      linear_into(x, *packed_w, out, proj_bias(first, parts));
    else if (part == kQKV)
      linear_into(x, in_proj_weight.value, out, proj_bias(0, 3));
    else
      linear_into(x, proj_slice(part), out, proj_bias(first, parts));
  }

  // Rows [part*E, (part+1)*E) of the packed weight (or the separate weight), and its bias slice.
  TensorMap<const T, 2> proj_weight(int part) const {
    const Index E = options_.embed_dim;
    if (packed()) return TensorMap<const T, 2>(in_proj_weight.value.data() + part * E * E, {E, E});
    const auto& w = part == 0 ? q_proj_weight : part == 1 ? k_proj_weight : v_proj_weight;
    return cview(w.value);
  }
  tessera::LinearOptions<T> proj_bias(int part, Index parts = 1) const {
    tessera::LinearOptions<T> lo;
    if (options_.bias)
      lo.bias = TensorMap<const T, 1>(in_proj_bias.value.data() + part * options_.embed_dim,
                                      {parts * options_.embed_dim});
    return lo;
  }

  // Throws ShapeError unless out is [B, Lq, E].
  void check_out(std::string_view fn, const TensorMap<T, 3>& out, Index B, Index Lq) const {
    const Index expected[] = {B, Lq, options_.embed_dim};
    detail::check_shape_equal(fn, "out", out.shape(), expected);
  }

  // The masks, checked and resolved against the scores [B, H, Lq, Lk].
  void resolve_masks(std::string_view fn, const std::optional<Mask>& attn_mask,
                     const std::optional<Mask>& key_padding_mask, Index B, Index Lq, Index Lk,
                     std::optional<detail::MaskRows>& attn_rows,
                     std::optional<detail::MaskRows>& pad_rows) const {
    const Index H = options_.num_heads;
    const Index target[] = {B, H, Lq, Lk};
    if (attn_mask) {
      const auto s = attn_mask->shape();
      const bool two_d = s.size() == 2 && s[0] == Lq && s[1] == Lk;
      const bool three_d = s.size() == 3 && s[0] == B * H && s[1] == Lq && s[2] == Lk;
      if (!two_d && !three_d)
        detail::raise<ShapeError>(fn, "argument 'attn_mask' has shape ", detail::shape_string(s),
                                  ", expected [", Lq, ", ", Lk, "] or [", B * H, ", ", Lq, ", ", Lk,
                                  "] ([Lq, Lk] or [batch * num_heads, Lq, Lk])");
      attn_rows.emplace(three_d ? attn_mask->with_shape({B, H, Lq, Lk}, fn) : *attn_mask, target,
                        fn, "attn_mask");
    }
    if (key_padding_mask) {
      const auto s = key_padding_mask->shape();
      if (s.size() != 2 || s[0] != B || s[1] != Lk)
        detail::raise<ShapeError>(fn, "argument 'key_padding_mask' has shape ",
                                  detail::shape_string(s), ", expected [", B, ", ", Lk,
                                  "] ([batch, Lk])");
      pad_rows.emplace(key_padding_mask->with_shape({B, 1, 1, Lk}, fn), target, fn,
                       "key_padding_mask");
    }
  }

  // The attention problem of a training forward or backward over a context's q, k, v (every
  // tensor contiguous, heads in column blocks), writing or reading the attention output `attn`.
  detail::AttentionProblem<T> train_problem(const Context& c, const T* attn,
                                            const std::optional<detail::MaskRows>& attn_rows,
                                            const std::optional<detail::MaskRows>& pad_rows,
                                            Index Lk) const {
    const Index E = options_.embed_dim, hd = head_dim();
    const Index B = c.q.dim(0), Lq = c.q.dim(1), Lk2 = c.k.dim(1);
    detail::AttentionProblem<T> p;
    p.batch = B, p.heads = options_.num_heads, p.lq = Lq, p.lk = Lk2, p.d = hd, p.dv = hd;
    p.q = {c.q.data(), Lq * E, hd, E};
    p.k = {c.k.data(), Lk2 * E, hd, E};
    p.v = {c.v.data(), Lk2 * E, hd, E};
    p.out = {const_cast<T*>(attn), Lq * E, hd, E};
    p.scale = hd > 0 ? static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd))) : T(1);
    p.causal = c.is_causal;
    p.masks[0] = attn_rows ? &*attn_rows : nullptr;
    p.masks[1] = pad_rows ? &*pad_rows : nullptr;
    p.mask_lk = Lk;
    p.lse = const_cast<T*>(c.lse.data());
    return p;
  }

  // Masks, attention over already projected q/k/v (read through strides), output projection into
  // out. Lk keys can be masked; Lk2 >= Lk keys are attended (the rest were appended).
  MultiheadAttentionWeights<T> attend_projected(
      std::string_view fn, const detail::Strided<const T>& qs, const detail::Strided<const T>& ks,
      const detail::Strided<const T>& vs, Index B, Index Lq, Index Lk, Index Lk2,
      Index causal_offset, const MultiheadAttentionForwardOptions& fo,
      std::optional<TensorMap<const T, 2>> residual, TensorMap<T, 3> out) const;

  MultiheadAttentionOptions options_{};
  // The projection weights' packed copies are current: made from these buffers and versions.
  bool packed_current() const noexcept {
    if (packed()) return packed_from_[0].matches(in_proj_weight);
    return packed_from_[1].matches(q_proj_weight) && packed_from_[2].matches(k_proj_weight) &&
           packed_from_[3].matches(v_proj_weight);
  }

  std::shared_ptr<const PackedMatrix<T>> packed_proj_[5];  // prepack(): by ProjSlice
  std::array<detail::PackStamp, 4> packed_from_{};         // in_proj, q, k, v weights at prepack()
};

template <class T>
MultiheadAttentionWeights<T> MultiheadAttention<T>::forward_into_views(
    TensorMap<const T, 3> query, TensorMap<const T, 3> key, TensorMap<const T, 3> value,
    TensorMap<T, 3> out, const MultiheadAttentionForwardOptions& fo,
    std::optional<TensorMap<const T, 2>> residual) const {
  constexpr std::string_view fn = "tessera::nn::MultiheadAttention::forward";
  const auto qv = cview(query);
  const auto kv = cview(key);
  const auto vv = cview(value);
  const Index E = options_.embed_dim, hd = head_dim();
  const Index B = qv.dim(0), Lq = qv.dim(1), Lk = kv.dim(1);
  if (qv.dim(2) != E)
    detail::raise<ShapeError>(fn, "argument 'query' has shape ", detail::shape_string(qv.shape()),
                              ", expected [batch, Lq, ", E, "] (embed_dim)");
  const Index k_expected[] = {B, Lk, options_.kdim};
  detail::check_shape_equal(fn, "key", kv.shape(), k_expected);
  const Index v_expected[] = {B, Lk, options_.vdim};
  detail::check_shape_equal(fn, "value", vv.shape(), v_expected);
  check_out(fn, out, B, Lq);
  check_parameters(fn);

  // ---- projections: [batch * seq, E] each, one product for all heads, into scratch ----
  detail::ScratchFrame frame;
  const bool self_attention = packed() && qv.data() == kv.data() && kv.data() == vv.data() &&
                              qv.shape() == kv.shape() && kv.shape() == vv.shape();
  // Column c of a projection buffer; an empty buffer (B, Lq or Lk zero) has no columns to offset.
  const auto column = [](const T* base, Index c) { return base ? base + c : base; };
  detail::Strided<const T> qs, ks, vs;
  if (self_attention) {
    // qkv: [B, L, 3E] = x [B, L, E] x in_proj_weight^T [E, 3E]
    const auto qkv = frame.tensor<T, 3>({B, Lq, 3 * E});
    project(qv, kQKV, qkv);
    qs = {qkv.data(), Lq * 3 * E, hd, 3 * E};
    ks = {column(qkv.data(), E), Lk * 3 * E, hd, 3 * E};
    vs = {column(qkv.data(), 2 * E), Lk * 3 * E, hd, 3 * E};
  } else {
    // q: [B, Lq, E]
    const auto q = frame.tensor<T, 3>({B, Lq, E});
    project(qv, kQ, q);
    qs = {q.data(), Lq * E, hd, E};
    if (packed() && kv.data() == vv.data() && kv.shape() == vv.shape()) {
      // kv: [B, Lk, 2E] = key x (rows E..3E of in_proj_weight)^T
      const auto kv_proj = frame.tensor<T, 3>({B, Lk, 2 * E});
      project(kv, kKV, kv_proj);
      ks = {kv_proj.data(), Lk * 2 * E, hd, 2 * E};
      vs = {column(kv_proj.data(), E), Lk * 2 * E, hd, 2 * E};
    } else {
      // k: [B, Lk, E], v: [B, Lk, E]
      const auto k = frame.tensor<T, 3>({B, Lk, E});
      const auto v = frame.tensor<T, 3>({B, Lk, E});
      project(kv, kK, k);
      project(vv, kV, v);
      ks = {k.data(), Lk * E, hd, E};
      vs = {v.data(), Lk * E, hd, E};
    }
  }

  // ---- extra keys: bias_k / bias_v, then a zero key and value (PyTorch's order) ----
  const Index extra = (options_.add_bias_kv ? 1 : 0) + (options_.add_zero_attn ? 1 : 0);
  const Index Lk2 = Lk + extra;
  if (extra) {
    // k_ext, v_ext: [B, Lk + extra, E]; the appended rows hold bias_k / bias_v, then zeros.
    auto k_ext = frame.tensor<T, 3>({B, Lk2, E}).setZero();
    auto v_ext = frame.tensor<T, 3>({B, Lk2, E}).setZero();
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < Lk; ++j) {
        std::copy_n(ks.base + b * ks.batch + j * ks.row, E, &k_ext(b, j, 0));
        std::copy_n(vs.base + b * vs.batch + j * vs.row, E, &v_ext(b, j, 0));
      }
      if (options_.add_bias_kv) {
        std::copy_n(bias_k.value.data(), E, &k_ext(b, Lk, 0));
        std::copy_n(bias_v.value.data(), E, &v_ext(b, Lk, 0));
      }
    }
    ks = {k_ext.data(), Lk2 * E, hd, E};
    vs = {v_ext.data(), Lk2 * E, hd, E};
  }

  return attend_projected(fn, qs, ks, vs, B, Lq, Lk, Lk2, 0, fo, residual, out);
}

template <class T>
void MultiheadAttention<T>::append_kv_views(KVCache<T>& cache, TensorMap<const T, 3> key,
                                            TensorMap<const T, 3> value) const {
  constexpr std::string_view fn = "tessera::nn::MultiheadAttention::append_kv";
  if (options_.add_bias_kv || options_.add_zero_attn)
    detail::raise<ValueError>(fn,
                              "a key/value cache does not support add_bias_kv or add_zero_attn");
  const auto kv = cview(key);
  const auto vv = cview(value);
  const Index B = kv.dim(0), n = kv.dim(1), E = options_.embed_dim;
  if (kv.dim(2) != options_.kdim)
    detail::raise<ShapeError>(fn, "argument 'key' has shape ", detail::shape_string(kv.shape()),
                              ", expected [batch, n, ", options_.kdim, "] (kdim)");
  const Index v_expected[] = {B, n, options_.vdim};
  detail::check_shape_equal(fn, "value", vv.shape(), v_expected);
  check_parameters(fn);
  check_cache(fn, cache);
  if (cache.length > 0 && cache.k.dim(0) != B)
    detail::raise<ShapeError>(fn, "argument 'key' has batch ", B, ", the cache holds batch ",
                              cache.k.dim(0));
  if (n == 0) {
    // Nothing to append, but an empty cache takes the batch, so that a decoder's cache over an
    // empty memory still knows its batch.
    if (cache.length == 0 && (cache.k.dim(0) != B || cache.k.dim(2) != E)) {
      cache.k = Tensor<T, 3>(B, Index(0), E);
      cache.v = Tensor<T, 3>(B, Index(0), E);
    }
    return;
  }
  // k_new, v_new: [B, n, E]
  const auto k_new = linear(kv, proj_weight(1), proj_bias(1));
  const auto v_new = linear(vv, proj_weight(2), proj_bias(2));
  Index need = 0;
  if (__builtin_add_overflow(cache.length, n, &need))
    detail::raise<ShapeError>(fn, "argument 'cache' holds ", cache.length, " keys; ", n,
                              " more do not fit an index");
  if (cache.k.dim(0) != B || cache.k.dim(1) < need || cache.k.dim(2) != E) {
    // Grow geometrically so that appending one token at a time costs O(1) amortised copies.
    const Index cap = std::max<Index>(need, std::max<Index>(16, 2 * cache.k.dim(1)));
    Tensor<T, 3> k2(Shape<3>{B, cap, E}, uninitialized), v2(Shape<3>{B, cap, E}, uninitialized);
    if (cache.k.dim(0) == B && cache.k.dim(2) == E)
      for (Index b = 0; b < B; ++b) {
        std::copy_n(&cache.k(b, 0, 0), cache.length * E, &k2(b, 0, 0));
        std::copy_n(&cache.v(b, 0, 0), cache.length * E, &v2(b, 0, 0));
      }
    cache.k = std::move(k2);
    cache.v = std::move(v2);
  }
  for (Index b = 0; b < B; ++b) {
    std::copy_n(&k_new(b, 0, 0), n * E, &cache.k(b, cache.length, 0));
    std::copy_n(&v_new(b, 0, 0), n * E, &cache.v(b, cache.length, 0));
  }
  cache.length = need;
}

template <class T>
MultiheadAttentionWeights<T> MultiheadAttention<T>::attend_into_views(
    TensorMap<const T, 3> query, const KVCache<T>& cache, TensorMap<T, 3> out,
    const MultiheadAttentionForwardOptions& fo,
    std::optional<TensorMap<const T, 2>> residual) const {
  constexpr std::string_view fn = "tessera::nn::MultiheadAttention::attend";
  const auto qv = cview(query);
  const Index E = options_.embed_dim, hd = head_dim();
  const Index B = qv.dim(0), Lq = qv.dim(1), Lk = cache.length;
  if (qv.dim(2) != E)
    detail::raise<ShapeError>(fn, "argument 'query' has shape ", detail::shape_string(qv.shape()),
                              ", expected [batch, Lq, ", E, "] (embed_dim)");
  check_parameters(fn);
  check_cache(fn, cache);
  if (Lk > 0 && cache.k.dim(0) != B)
    detail::raise<ShapeError>(fn, "argument 'query' has batch ", B, ", the cache holds batch ",
                              cache.k.dim(0));
  check_out(fn, out, B, Lq);
  // q: [B, Lq, E]
  detail::ScratchFrame frame;
  const auto q = frame.tensor<T, 3>({B, Lq, E});
  project(qv, kQ, q);
  const Index cap = cache.k.dim(1);
  const detail::Strided<const T> qs{q.data(), Lq * E, hd, E};
  const detail::Strided<const T> ks{cache.k.data(), cap * E, hd, E};
  const detail::Strided<const T> vs{cache.v.data(), cap * E, hd, E};
  return attend_projected(fn, qs, ks, vs, B, Lq, Lk, Lk, Lk - Lq, fo, residual, out);
}

template <class T>
MultiheadAttentionWeights<T> MultiheadAttention<T>::attend_projected(
    std::string_view fn, const detail::Strided<const T>& qs, const detail::Strided<const T>& ks,
    const detail::Strided<const T>& vs, Index B, Index Lq, Index Lk, Index Lk2, Index causal_offset,
    const MultiheadAttentionForwardOptions& fo, std::optional<TensorMap<const T, 2>> residual,
    TensorMap<T, 3> out) const {
  const Index E = options_.embed_dim, H = options_.num_heads, hd = head_dim();
  std::optional<detail::MaskRows> attn_rows, pad_rows;
  resolve_masks(fn, fo.attn_mask, fo.key_padding_mask, B, Lq, Lk, attn_rows, pad_rows);

  // ---- attention per (batch, head), written into the heads' columns of attn [B, Lq, E] ----
  detail::ScratchFrame frame;
  const auto attn = frame.tensor<T, 3>({B, Lq, E});
  // weights: [B, H, Lq, Lk'], returned per head or only read to average them
  MultiheadAttentionWeights<T> result;
  TensorMap<T, 4> weights;
  if (fo.need_weights) {
    const Index w_shape[] = {B, H, Lq, Lk2};
    (void)detail::checked_shape_size(w_shape, fn, "the attention weights");
  }
  if (fo.need_weights && fo.average_attn_weights) {
    weights = frame.tensor<T, 4>({B, H, Lq, Lk2});
  } else if (fo.need_weights) {
    result.attn_weights_per_head.emplace(Shape<4>{B, H, Lq, Lk2}, uninitialized);
    weights = *result.attn_weights_per_head;
  }
  detail::AttentionProblem<T> p;
  p.batch = B, p.heads = H, p.lq = Lq, p.lk = Lk2, p.d = hd, p.dv = hd;
  p.q = qs, p.k = ks, p.v = vs;
  p.out = {attn.data(), Lq * E, hd, E};
  p.scale = hd > 0 ? static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)))
                   : T(1);  // hd 0: a default-constructed module
  p.causal = fo.is_causal;
  p.causal_offset = causal_offset;
  p.masks[0] = attn_rows ? &*attn_rows : nullptr;
  p.masks[1] = pad_rows ? &*pad_rows : nullptr;
  p.mask_lk = Lk;
  p.weights = fo.need_weights ? weights.data() : nullptr;
  detail::attention_run(p);  // fused unless the weights are requested

  // ---- output projection: [B, Lq, E] ----
  out_proj.forward_into(attn, out, Activation::identity, residual);
  if (fo.need_weights && fo.average_attn_weights) {
    // mean over heads: [B, Lq, Lk']
    Tensor<T, 3> avg(Shape<3>{B, Lq, Lk2});
    for (Index b = 0; b < B; ++b) {
      auto a = avg[b].as_matrix();
      for (Index h = 0; h < H; ++h) a += weights[b][h].as_matrix();
      a /= static_cast<T>(H);
    }
    result.attn_weights = std::move(avg);
  }
  return result;
}

template <class T>
Trained<Tensor<T, 3>, typename MultiheadAttention<T>::Context>
MultiheadAttention<T>::forward_train_views(TensorMap<const T, 3> query, TensorMap<const T, 3> key,
                                           TensorMap<const T, 3> value,
                                           const MultiheadAttentionForwardOptions& fo) const {
  constexpr std::string_view fn = "tessera::nn::MultiheadAttention::forward_train";
  const auto qv = cview(query);
  const auto kv = cview(key);
  const auto vv = cview(value);
  const Index E = options_.embed_dim;
  const Index B = qv.dim(0), Lq = qv.dim(1), Lk = kv.dim(1);
  if (qv.dim(2) != E)
    detail::raise<ShapeError>(fn, "argument 'query' has shape ", detail::shape_string(qv.shape()),
                              ", expected [batch, Lq, ", E, "] (embed_dim)");
  const Index k_expected[] = {B, Lk, options_.kdim};
  detail::check_shape_equal(fn, "key", kv.shape(), k_expected);
  const Index v_expected[] = {B, Lk, options_.vdim};
  detail::check_shape_equal(fn, "value", vv.shape(), v_expected);
  if (fo.need_weights)
    detail::raise<ValueError>(fn,
                              "option 'need_weights' is true; the training forward does not return "
                              "the attention weights (forward does)");
  check_parameters(fn);
  std::optional<detail::MaskRows> attn_rows, pad_rows;
  resolve_masks(fn, fo.attn_mask, fo.key_padding_mask, B, Lq, Lk, attn_rows, pad_rows);

  Trained<Tensor<T, 3>, Context> r;
  Context& c = r.context;
  const auto copy = [](const auto& x) {
    Tensor<T, 3> t(x.shape(), uninitialized);
    std::copy_n(x.data(), x.size(), t.data());
    return t;
  };
  c.self_attention = qv.data() == kv.data() && kv.data() == vv.data() && qv.shape() == kv.shape() &&
                     kv.shape() == vv.shape();
  c.query = copy(qv);
  if (!c.self_attention) c.key = copy(kv), c.value = copy(vv);
  if (fo.attn_mask) c.attn_mask.emplace(*fo.attn_mask);
  if (fo.key_padding_mask) c.key_padding_mask.emplace(*fo.key_padding_mask);
  c.is_causal = fo.is_causal;
  c.proj_versions = {in_proj_weight.version, q_proj_weight.version, k_proj_weight.version,
                     v_proj_weight.version};
  // q [B, Lq, E], k and v [B, Lk, E]: one product each
  c.q = linear(qv, proj_weight(kQ), proj_bias(kQ));
  auto k = linear(kv, proj_weight(kK), proj_bias(kK));
  auto v = linear(vv, proj_weight(kV), proj_bias(kV));
  // bias_k / bias_v, then a zero key and value, appended to every batch's keys (PyTorch's order)
  const Index extra = (options_.add_bias_kv ? 1 : 0) + (options_.add_zero_attn ? 1 : 0);
  const Index Lk2 = Lk + extra;
  if (extra) {
    c.k = Tensor<T, 3>(Shape<3>{B, Lk2, E});
    c.v = Tensor<T, 3>(Shape<3>{B, Lk2, E});
    for (Index b = 0; b < B; ++b) {
      std::copy_n(k.data() + b * Lk * E, Lk * E, c.k.data() + b * Lk2 * E);
      std::copy_n(v.data() + b * Lk * E, Lk * E, c.v.data() + b * Lk2 * E);
      if (options_.add_bias_kv) {
        std::copy_n(bias_k.value.data(), E, c.k.data() + (b * Lk2 + Lk) * E);
        std::copy_n(bias_v.value.data(), E, c.v.data() + (b * Lk2 + Lk) * E);
      }
    }
  } else {
    c.k = std::move(k);
    c.v = std::move(v);
  }
  // attention [B, Lq, E] (heads in column blocks) and each row's logsumexp [B, H, Lq]
  Tensor<T, 3> attn(Shape<3>{B, Lq, E}, uninitialized);
  c.lse = Tensor<T, 3>(Shape<3>{B, options_.num_heads, Lq}, uninitialized);
  detail::attention_fused(train_problem(c, attn.data(), attn_rows, pad_rows, Lk));
  auto o = out_proj.forward_train(attn);
  r.output = std::move(o.output);
  c.out_proj = std::move(o.context);
  return r;
}

template <class T>
MultiheadAttentionGrads<T> MultiheadAttention<T>::backward_views(
    const Context& ctx, TensorMap<const T, 3> grad_output) {
  constexpr std::string_view fn = "tessera::nn::MultiheadAttention::backward";
  check_parameters(fn);
  const Index E = options_.embed_dim, hd = head_dim();
  const Index extra = (options_.add_bias_kv ? 1 : 0) + (options_.add_zero_attn ? 1 : 0);
  const Index B = ctx.q.dim(0), Lq = ctx.q.dim(1), Lk2 = ctx.k.dim(1), Lk = Lk2 - extra;
  const Tensor<T, 3>& key_in = ctx.self_attention ? ctx.query : ctx.key;
  const Tensor<T, 3>& value_in = ctx.self_attention ? ctx.query : ctx.value;
  const bool consistent = ctx.q.dim(2) == E && ctx.k.shape() == Shape<3>{B, Lk2, E} &&
                          ctx.v.shape() == ctx.k.shape() && Lk >= 0 &&
                          ctx.query.shape() == Shape<3>{B, Lq, E} &&
                          key_in.shape() == Shape<3>{B, Lk, options_.kdim} &&
                          value_in.shape() == Shape<3>{B, Lk, options_.vdim} &&
                          ctx.lse.shape() == Shape<3>{B, options_.num_heads, Lq} &&
                          ctx.out_proj.input.shape() == Shape<2>{B * Lq, E};
  if (!consistent)
    detail::raise<ValueError>(fn, "argument 'ctx' does not come from this module's forward_train");
  const Index g_expected[] = {B, Lq, E};
  detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), g_expected);
  if (packed()) {
    detail::check_unchanged_since_forward(fn, "in_proj_weight", in_proj_weight,
                                          ctx.proj_versions[0]);
  } else {
    detail::check_unchanged_since_forward(fn, "q_proj_weight", q_proj_weight, ctx.proj_versions[1]);
    detail::check_unchanged_since_forward(fn, "k_proj_weight", k_proj_weight, ctx.proj_versions[2]);
    detail::check_unchanged_since_forward(fn, "v_proj_weight", v_proj_weight, ctx.proj_versions[3]);
  }
  out_proj.check_backward(fn, ctx.out_proj, cview(grad_output).shape(), "out_proj.");
  std::optional<Mask> attn_mask, pad_mask;
  if (ctx.attn_mask) attn_mask = ctx.attn_mask->mask();
  if (ctx.key_padding_mask) pad_mask = ctx.key_padding_mask->mask();
  std::optional<detail::MaskRows> attn_rows, pad_rows;
  resolve_masks(fn, attn_mask, pad_mask, B, Lq, Lk, attn_rows, pad_rows);

  // d_attn [B, Lq, E] = dy W_o; out_proj's gradients added
  const Tensor<T, 3> d_attn = out_proj.backward(ctx.out_proj, grad_output);
  // dq [B, Lq, E], dk and dv [B, Lk', E]: the attention's backward, per head
  Tensor<T, 3> dq(Shape<3>{B, Lq, E}, uninitialized), dk(Shape<3>{B, Lk2, E}, uninitialized),
      dv(Shape<3>{B, Lk2, E}, uninitialized);
  detail::AttentionBackwardProblem<T> bp;
  bp.forward = train_problem(ctx, ctx.out_proj.input.data(), attn_rows, pad_rows, Lk);
  bp.lse = ctx.lse.data();
  bp.dout = {d_attn.data(), Lq * E, hd, E};
  bp.dq = {dq.data(), Lq * E, hd, E};
  bp.dk = {dk.data(), Lk2 * E, hd, E};
  bp.dv = {dv.data(), Lk2 * E, hd, E};
  detail::attention_backward_run(bp);
  // The appended keys: bias_k and bias_v collect their rows' gradients; the zero key has none.
  if (extra) {
    if (options_.add_bias_kv) {
      auto gk = detail::grad_of(bias_k).as_vector();
      auto gv = detail::grad_of(bias_v).as_vector();
      for (Index b = 0; b < B; ++b) {
        gk += Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(dk.data() + (b * Lk2 + Lk) * E,
                                                                    E);
        gv += Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(dv.data() + (b * Lk2 + Lk) * E,
                                                                    E);
      }
    }
    Tensor<T, 3> dk2(Shape<3>{B, Lk, E}, uninitialized), dv2(Shape<3>{B, Lk, E}, uninitialized);
    for (Index b = 0; b < B; ++b) {
      std::copy_n(dk.data() + b * Lk2 * E, Lk * E, dk2.data() + b * Lk * E);
      std::copy_n(dv.data() + b * Lk2 * E, Lk * E, dv2.data() + b * Lk * E);
    }
    dk = std::move(dk2);
    dv = std::move(dv2);
  }
  // The input projections: dW_part += d^T x, db_part += sum of d's rows, dx = d W_part.
  const auto project_back = [&](int part, const Tensor<T, 3>& d, const Tensor<T, 3>& x) {
    const Index rows = d.dim(0) * d.dim(1), features = x.dim(2);
    const auto d2 = TensorMap<const T, 2>(d.data(), {rows, E});
    const auto x2 = TensorMap<const T, 2>(x.data(), {rows, features});
    // the weight's gradient: rows [part E, (part + 1) E) of in_proj_weight's, or q/k/v_proj's
    T* gw = packed() ? detail::grad_of(in_proj_weight).data() + part * E * E
                     : detail::grad_of(part == kQ   ? q_proj_weight
                                       : part == kK ? k_proj_weight
                                                    : v_proj_weight)
                           .data();
    matmul_into(d2, x2, TensorMap<T, 2>(gw, {E, features}),
                {.transpose_a = true, .accumulate = true});
    if (options_.bias) {
      Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> gb(
          detail::grad_of(in_proj_bias).data() + part * E, E);
      for (Index r = 0; r < rows; ++r)
        gb += Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(d.data() + r * E, E);
    }
    Tensor<T, 3> dx(Shape<3>{d.dim(0), d.dim(1), features}, uninitialized);
    matmul_into(d2, proj_weight(part), dx.template reshape<2>({rows, features}));
    return dx;
  };
  MultiheadAttentionGrads<T> g;
  g.query = project_back(kQ, dq, ctx.query);
  g.key = project_back(kK, dk, key_in);
  g.value = project_back(kV, dv, value_in);
  return g;
}

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::MultiheadAttention)
