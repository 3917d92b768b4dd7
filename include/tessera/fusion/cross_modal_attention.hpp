// tessera: fusion::CrossModalAttention, co-attention between two modalities (ViLBERT's
// co-attentional transformer layer without its feed-forward blocks; Lu et al. 2019): each
// modality's tokens attend to the other's, both from the inputs as given.
//
//   norm_first = false:  a' = norm_a(a + attn_a(a, b, b));   b' = norm_b(b + attn_b(b, a, a))
//   norm_first = true:   a' = a + attn_a(norm_a(a), norm_b(b), norm_b(b))
//                        b' = b + attn_b(norm_b(b), norm_a(a), norm_a(a))
//
// attn_a is a MultiheadAttention with a's queries (embed_dim = E_a) over b's keys and values
// (kdim = vdim = E_b); attn_b the reverse. The modalities may have different widths.
//
// Ragged inputs: key_padding_mask_b hides b's padding from a's queries and key_padding_mask_a
// hides a's from b's. When every token of a partner is padding (or it has no tokens), there is
// nothing to attend to: the attention term of that batch element is exactly zero (the residual
// alone passes, with the norm in post-norm), never NaN (PyTorch gives NaN there).
//
// With need_weights the attention weights come back averaged over the heads: weights_a
// [batch, L_a, L_b] (row i: how a's token i spreads over b's tokens) and weights_b
// [batch, L_b, L_a]; a batch element with nothing to attend to has rows of zeros.
//
// State dict keys: attn_a.*, attn_b.* (nn::MultiheadAttention's: in_proj_weight when E_a = E_b,
// else q_proj_weight, k_proj_weight, v_proj_weight), norm_a.*, norm_b.*.
//
// Training (nn/training.hpp): forward_train returns forward's a' and b' (need_weights is refused)
// and a Context; backward(ctx, grad_a, grad_b) returns dL/da and dL/db. Each modality's gradient
// gathers its own path (the residual, attn's query) and the other attention's keys and values:
//   post-norm:  da = r_a + attn_a'_query(r_a) + attn_b'_key,value(r_b),  r_a = norm_a'(dL/da')
//   pre-norm:   da = dL/da' + norm_a'(attn_a'_query(dL/da') + attn_b'_key,value(dL/db'))
// (and symmetrically for b). A batch element whose attention term forward set to zero (its
// partner all padding) passes no gradient through that attention.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/fusion/token_sequences.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/multihead_attention.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::fusion {

struct CrossModalAttentionOptions {
  Index embed_dim = 0;    // E_a, features of modality a's tokens, > 0
  Index embed_dim_b = 0;  // E_b, features of modality b's tokens; 0 means E_a
  Index num_heads = 1;    // divides E_a and E_b
  bool bias = true;       // attention and LayerNorm biases
  bool norm_first = false;
  double layer_norm_eps = 1e-5;
  std::uint64_t seed = 0;
};

struct CrossModalAttentionForwardOptions {
  std::optional<Mask> key_padding_mask_a;  // [batch, L_a]; PyTorch's bool = Mask::blocked
  std::optional<Mask> key_padding_mask_b;  // [batch, L_b]
  bool need_weights = false;               // return weights_a and weights_b
};

template <class T>
struct CrossModalAttentionOutput {
  Tensor<T, 3> a;                         // [batch, L_a, E_a]
  Tensor<T, 3> b;                         // [batch, L_b, E_b]
  std::optional<Tensor<T, 3>> weights_a;  // [batch, L_a, L_b] with need_weights
  std::optional<Tensor<T, 3>> weights_b;  // [batch, L_b, L_a] with need_weights
};

// The gradients backward returns, one per input.
template <class T>
struct CrossModalAttentionGrads {
  Tensor<T, 3> a;  // dL/da [batch, L_a, E_a]
  Tensor<T, 3> b;  // dL/db [batch, L_b, E_b]
};

template <class T>
class CrossModalAttention : public nn::Module<CrossModalAttention<T>> {
 public:
  nn::MultiheadAttention<T> attn_a;  // a's queries over b's keys and values
  nn::MultiheadAttention<T> attn_b;  // b's queries over a's keys and values
  nn::LayerNorm<T> norm_a, norm_b;

  CrossModalAttention() = default;
  explicit CrossModalAttention(const CrossModalAttentionOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::fusion::CrossModalAttention";
    if (o.embed_dim <= 0)
      detail::raise<ValueError>(fn, "embed_dim is ", o.embed_dim, ", expected a value > 0");
    if (o.embed_dim_b < 0)
      detail::raise<ValueError>(fn, "embed_dim_b is ", o.embed_dim_b, ", expected a value >= 0");
    options_.embed_dim_b = o.embed_dim_b ? o.embed_dim_b : o.embed_dim;
    const Index Ea = options_.embed_dim, Eb = options_.embed_dim_b;
    if (o.num_heads <= 0 || Ea % o.num_heads != 0 || Eb % o.num_heads != 0)
      detail::raise<ValueError>(fn, "num_heads is ", o.num_heads,
                                ", expected a positive divisor of embed_dim = ", Ea,
                                " and embed_dim_b = ", Eb);
    attn_a = nn::MultiheadAttention<T>({.embed_dim = Ea,
                                        .num_heads = o.num_heads,
                                        .bias = o.bias,
                                        .kdim = Eb,
                                        .vdim = Eb,
                                        .seed = o.seed});
    attn_b = nn::MultiheadAttention<T>({.embed_dim = Eb,
                                        .num_heads = o.num_heads,
                                        .bias = o.bias,
                                        .kdim = Ea,
                                        .vdim = Ea,
                                        .seed = o.seed + 10});
    norm_a = nn::LayerNorm<T>({.normalized_shape = Ea, .eps = o.layer_norm_eps, .bias = o.bias});
    norm_b = nn::LayerNorm<T>({.normalized_shape = Eb, .eps = o.layer_norm_eps, .bias = o.bias});
  }

  const CrossModalAttentionOptions& options() const noexcept { return options_; }

  // a: [batch, L_a, E_a], b: [batch, L_b, E_b] -> a' [batch, L_a, E_a], b' [batch, L_b, E_b].
  template <TensorLike A, TensorLike B>
  requires(rank_v<A> == 3 && rank_v<B> == 3) CrossModalAttentionOutput<T> forward(
      const A& a, const B& b, const CrossModalAttentionForwardOptions& fo = {})
  const {
    static_assert(std::is_same_v<scalar_t<A>, T> && std::is_same_v<scalar_t<B>, T>,
                  "fusion::CrossModalAttention: input scalar types differ from the module's");
    constexpr std::string_view fn = "tessera::fusion::CrossModalAttention::forward";
    check_parameters(fn);
    const TensorMap<const T, 3> av = cview(a), bv = cview(b);
    const Index batch = av.dim(0);
    detail::check_token_sequence<T>(fn, "a", av, batch, options_.embed_dim, fo.key_padding_mask_a,
                                    "key_padding_mask_a");
    detail::check_token_sequence<T>(fn, "b", bv, batch, options_.embed_dim_b, fo.key_padding_mask_b,
                                    "key_padding_mask_b");
    // pre-norm: queries, keys and values are the normalised tokens
    Tensor<T, 3> na, nb;
    TensorMap<const T, 3> xa = av, xb = bv;
    if (options_.norm_first) {
      na = norm_a.forward(av);
      nb = norm_b.forward(bv);
      xa = cview(na);
      xb = cview(nb);
    }
    CrossModalAttentionOutput<T> r{Tensor<T, 3>(av), Tensor<T, 3>(bv), std::nullopt, std::nullopt};
    auto to_a = attend(fn, attn_a, xa, xb, fo.key_padding_mask_b, fo.need_weights);
    auto to_b = attend(fn, attn_b, xb, xa, fo.key_padding_mask_a, fo.need_weights);
    r.a.as_array() += to_a.output.as_array();
    r.b.as_array() += to_b.output.as_array();
    r.weights_a = std::move(to_a.attn_weights);
    r.weights_b = std::move(to_b.attn_weights);
    if (!options_.norm_first) {
      norm_a.forward_into(r.a, r.a);
      norm_b.forward_into(r.b, r.b);
    }
    return r;
  }

  // What backward needs: both norms' and attentions' contexts (the attentions' hold copies of the
  // masks), and which batch elements' attention terms forward set to zero.
  struct Context {
    // pre-norm: the norms of a and b; post-norm: of a + attn_a(...) and b + attn_b(...)
    typename nn::LayerNorm<T>::template Context<3> norm_a, norm_b;
    // absent when the partner has no tokens (the attention term is zero)
    std::optional<typename nn::MultiheadAttention<T>::Context> attn_a, attn_b;
    std::vector<char> silent_a, silent_b;  // [batch]: 1 where attn_a's (attn_b's) term is zero
    Shape<3> a_shape{}, b_shape{};
    bool norm_first = false;
  };

  // The training forward: forward's a' and b' (to rounding; weights_a and weights_b absent) and the
  // context for backward. Same arguments and errors as forward, and ValueError for need_weights.
  template <TensorLike A, TensorLike B>
  requires(rank_v<A> == 3 && rank_v<B> == 3)
      nn::Trained<CrossModalAttentionOutput<T>, Context> forward_train(
          const A& a, const B& b, const CrossModalAttentionForwardOptions& fo = {})
  const {
    static_assert(std::is_same_v<scalar_t<A>, T> && std::is_same_v<scalar_t<B>, T>,
                  "fusion::CrossModalAttention: input scalar types differ from the module's");
    constexpr std::string_view fn = "tessera::fusion::CrossModalAttention::forward_train";
    check_parameters(fn);
    const TensorMap<const T, 3> av = cview(a), bv = cview(b);
    const Index batch = av.dim(0);
    detail::check_token_sequence<T>(fn, "a", av, batch, options_.embed_dim, fo.key_padding_mask_a,
                                    "key_padding_mask_a");
    detail::check_token_sequence<T>(fn, "b", bv, batch, options_.embed_dim_b, fo.key_padding_mask_b,
                                    "key_padding_mask_b");
    if (fo.need_weights)
      detail::raise<ValueError>(
          fn,
          "option 'need_weights' is true; the training forward does not return "
          "the attention weights (forward does)");
    nn::Trained<CrossModalAttentionOutput<T>, Context> t;
    Context& c = t.context;
    c.a_shape = av.shape(), c.b_shape = bv.shape(), c.norm_first = options_.norm_first;
    CrossModalAttentionOutput<T>& r = t.output;
    r.a = Tensor<T, 3>(av);
    r.b = Tensor<T, 3>(bv);
    if (options_.norm_first) {
      // a' = a + attn_a(norm_a(a), norm_b(b), norm_b(b)); b' likewise
      auto na = norm_a.forward_train(av);
      auto nb = norm_b.forward_train(bv);
      detail::add_into(r.a, attend_train(fn, attn_a, na.output, nb.output, fo.key_padding_mask_b,
                                         c.attn_a, c.silent_a));
      detail::add_into(r.b, attend_train(fn, attn_b, nb.output, na.output, fo.key_padding_mask_a,
                                         c.attn_b, c.silent_b));
      c.norm_a = std::move(na.context), c.norm_b = std::move(nb.context);
      return t;
    }
    // a' = norm_a(a + attn_a(a, b, b)); b' likewise
    detail::add_into(r.a,
                     attend_train(fn, attn_a, av, bv, fo.key_padding_mask_b, c.attn_a, c.silent_a));
    detail::add_into(r.b,
                     attend_train(fn, attn_b, bv, av, fo.key_padding_mask_a, c.attn_b, c.silent_b));
    auto na = norm_a.forward_train(r.a);
    auto nb = norm_b.forward_train(r.b);
    r.a = std::move(na.output), r.b = std::move(nb.output);
    c.norm_a = std::move(na.context), c.norm_b = std::move(nb.context);
    return t;
  }

  // Given forward_train's context, dL/da' [batch, L_a, E_a] and dL/db' [batch, L_b, E_b]: adds the
  // gradient of every parameter (attn_a.*, attn_b.*, norm_a.*, norm_b.*) and returns dL/da and
  // dL/db. Throws ShapeError when a gradient's shape is not its output's, ValueError for a context
  // this module's forward_train cannot have made.
  template <TensorLike GA, TensorLike GB>
  requires(rank_v<GA> == 3 && rank_v<GB> == 3)
      CrossModalAttentionGrads<T> backward(const Context& ctx, const GA& grad_a, const GB& grad_b) {
    static_assert(std::is_same_v<scalar_t<GA>, T> && std::is_same_v<scalar_t<GB>, T>,
                  "fusion::CrossModalAttention::backward: gradient scalar types differ from the "
                  "module's");
    constexpr std::string_view fn = "tessera::fusion::CrossModalAttention::backward";
    check_parameters(fn);
    const Index Ea = options_.embed_dim, Eb = options_.embed_dim_b;
    const Index B = ctx.a_shape[0], La = ctx.a_shape[1], Lb = ctx.b_shape[1];
    const auto attn_ok = [&](const auto& attn, Index Lq, Index Eq, Index Lk) {
      return attn->q.shape() == Shape<3>{B, Lq, Eq} && attn->k.dim(1) == Lk;
    };
    const bool ok =
        ctx.norm_first == options_.norm_first && ctx.a_shape[2] == Ea && ctx.b_shape[2] == Eb &&
        ctx.b_shape[0] == B && ctx.norm_a.input.shape() == ctx.a_shape &&
        ctx.norm_b.input.shape() == ctx.b_shape && static_cast<Index>(ctx.silent_a.size()) == B &&
        static_cast<Index>(ctx.silent_b.size()) == B && ctx.attn_a.has_value() == (Lb > 0) &&
        ctx.attn_b.has_value() == (La > 0) && (!ctx.attn_a || attn_ok(ctx.attn_a, La, Ea, Lb)) &&
        (!ctx.attn_b || attn_ok(ctx.attn_b, Lb, Eb, La));
    if (!ok)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    detail::check_shape_equal(fn, "grad_a", cview(grad_a).shape(), ctx.a_shape);
    detail::check_shape_equal(fn, "grad_b", cview(grad_b).shape(), ctx.b_shape);
    // Every parameter gets a gradient, also an attention that had no partner tokens.
    this->for_each_parameter([](const std::string&, auto& p) { detail::grad_of(p); });

    CrossModalAttentionGrads<T> g;
    // d_sum_a, d_sum_b: the gradients at the attention outputs' sums (the residual branch)
    Tensor<T, 3> d_sum_a =
        options_.norm_first ? Tensor<T, 3>(cview(grad_a)) : norm_a.backward(ctx.norm_a, grad_a);
    Tensor<T, 3> d_sum_b =
        options_.norm_first ? Tensor<T, 3>(cview(grad_b)) : norm_b.backward(ctx.norm_b, grad_b);
    // dx_a, dx_b: the gradients of the attentions' inputs (a and b, or their norms)
    Tensor<T, 3> dx_a(ctx.a_shape), dx_b(ctx.b_shape);
    if (ctx.attn_a) {
      auto ga = attn_a.backward(*ctx.attn_a, without_silent(d_sum_a, ctx.silent_a));
      detail::add_into(dx_a, ga.query);
      detail::add_into(dx_b, ga.key);
      detail::add_into(dx_b, ga.value);
    }
    if (ctx.attn_b) {
      auto gb = attn_b.backward(*ctx.attn_b, without_silent(d_sum_b, ctx.silent_b));
      detail::add_into(dx_b, gb.query);
      detail::add_into(dx_a, gb.key);
      detail::add_into(dx_a, gb.value);
    }
    if (options_.norm_first) {
      detail::add_into(d_sum_a, norm_a.backward(ctx.norm_a, dx_a));
      detail::add_into(d_sum_b, norm_b.backward(ctx.norm_b, dx_b));
    } else {
      detail::add_into(d_sum_a, dx_a);
      detail::add_into(d_sum_b, dx_b);
    }
    g.a = std::move(d_sum_a);
    g.b = std::move(d_sum_b);
    return g;
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name (attn_a.*,
  // attn_b.*, norm_a.*, norm_b.*), unless every parameter has the shape the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    attn_a.check_parameters(fn, detail::ParameterPrefix(prefix, "attn_a."));
    attn_b.check_parameters(fn, detail::ParameterPrefix(prefix, "attn_b."));
    norm_a.check_parameters(fn, detail::ParameterPrefix(prefix, "norm_a."));
    norm_b.check_parameters(fn, detail::ParameterPrefix(prefix, "norm_b."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::MultiheadAttention<T>::visit(self.attn_a, f, prefix + "attn_a.");
    nn::MultiheadAttention<T>::visit(self.attn_b, f, prefix + "attn_b.");
    nn::LayerNorm<T>::visit(self.norm_a, f, prefix + "norm_a.");
    nn::LayerNorm<T>::visit(self.norm_b, f, prefix + "norm_b.");
  }

 private:
  // attn(query, partner, partner) with the partner's padding: output [batch, Lq, E_query] (and
  // with need_weights attn_weights [batch, Lq, Lk]); both zero for a batch element whose partner
  // tokens are all padding.
  static nn::MultiheadAttentionOutput<T> attend(std::string_view fn,
                                                const nn::MultiheadAttention<T>& attn,
                                                TensorMap<const T, 3> query,
                                                TensorMap<const T, 3> partner,
                                                const std::optional<Mask>& partner_padding,
                                                bool need_weights) {
    const Index batch = query.dim(0), Lq = query.dim(1), Lk = partner.dim(1);
    if (Lk == 0) {
      nn::MultiheadAttentionOutput<T> none{Tensor<T, 3>(Shape<3>{batch, Lq, attn.embed_dim()}),
                                           std::nullopt, std::nullopt};
      if (need_weights) none.attn_weights.emplace(Shape<3>{batch, Lq, 0});
      return none;
    }
    auto r = attn.forward(query, partner, partner,
                          {.key_padding_mask = partner_padding, .need_weights = need_weights});
    const Index lengths[] = {Lk};
    if (const auto pad =
            detail::concat_key_padding<T>(fn, std::span(&partner_padding, 1), lengths, batch))
      for (Index i = 0; i < batch; ++i)
        if (detail::all_masked(*pad, i)) {
          r.output[i].setZero();
          if (r.attn_weights) (*r.attn_weights)[i].setZero();
        }
    return r;
  }

  // attend's training forward: the attention term [batch, Lq, E_query] (zero for a batch element
  // whose partner tokens are all padding, marked in `silent`), its context in `ctx` (none when the
  // partner has no tokens).
  static Tensor<T, 3> attend_train(std::string_view fn, const nn::MultiheadAttention<T>& attn,
                                   TensorMap<const T, 3> query, TensorMap<const T, 3> partner,
                                   const std::optional<Mask>& partner_padding,
                                   std::optional<typename nn::MultiheadAttention<T>::Context>& ctx,
                                   std::vector<char>& silent) {
    const Index batch = query.dim(0), Lq = query.dim(1), Lk = partner.dim(1);
    silent.assign(static_cast<std::size_t>(batch), Lk == 0 ? 1 : 0);
    if (Lk == 0) return Tensor<T, 3>(Shape<3>{batch, Lq, attn.embed_dim()});
    auto r = attn.forward_train(query, partner, partner, {.key_padding_mask = partner_padding});
    const Index lengths[] = {Lk};
    if (const auto pad =
            detail::concat_key_padding<T>(fn, std::span(&partner_padding, 1), lengths, batch))
      for (Index i = 0; i < batch; ++i)
        if (detail::all_masked(*pad, i)) {
          r.output[i].setZero();
          silent[static_cast<std::size_t>(i)] = 1;
        }
    ctx = std::move(r.context);
    return std::move(r.output);
  }

  // g [batch, L, E] with the batch elements marked in `silent` set to zero.
  static Tensor<T, 3> without_silent(const Tensor<T, 3>& g, const std::vector<char>& silent) {
    Tensor<T, 3> out(g);
    for (std::size_t i = 0; i < silent.size(); ++i)
      if (silent[i]) out[static_cast<Index>(i)].setZero();
    return out;
  }

  CrossModalAttentionOptions options_{};
};

}  // namespace tessera::fusion

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::fusion::CrossModalAttention)
