// tessera: nn::Attention, attention as a soft lookup with a choice of score function.
//
// Each query looks up every key at once: a score s(q, k_j) per key, weights a = softmax(s) (in
// [0, 1], summing to 1) and the answer sum_j a_j v_j. The score is one of
//
//   dot         s = q^T k                       (Luong et al. 2015)
//   scaled_dot  s = q^T k / sqrt(d)             (Vaswani et al. 2017)
//   general     s = q^T W k                     (Luong et al. 2015), W: [query_dim, key_dim]
//   additive    s = v^T tanh(W1 q + W2 k)       (Bahdanau et al. 2015), W1: [attention_dim,
//                                                query_dim], W2: [attention_dim, key_dim],
//                                                v: [1, attention_dim]
//
// on batches: query [B, Lq, query_dim], keys [B, Lk, key_dim], values [B, Lk, Dv] give the
// output [B, Lq, Dv] and the weights [B, Lq, Lk]. A mask (see Mask) broadcasts against the scores
// [B, Lq, Lk]; a query whose every key is masked out gets zero weights and a zero output.
//
// Parameters and their state dict keys: general: "weight" [query_dim, key_dim] (initialised as
// torch.nn.Linear(key_dim, query_dim, bias=False), whose weight it is); additive:
// "query_proj.weight" [attention_dim, query_dim], "key_proj.weight" [attention_dim, key_dim],
// "v.weight" [1, attention_dim] (three nn::Linear without bias). dot and scaled_dot have none.
// forward checks their shapes first and throws a ShapeError naming the parameter.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::nn {

enum class AttentionScore { dot, scaled_dot, general, additive };

inline std::string_view to_string(AttentionScore s) {
  switch (s) {
    case AttentionScore::dot:
      return "dot";
    case AttentionScore::scaled_dot:
      return "scaled_dot";
    case AttentionScore::general:
      return "general";
    case AttentionScore::additive:
      return "additive";
  }
  return "unknown";
}

struct AttentionOptions {
  AttentionScore score = AttentionScore::scaled_dot;
  Index query_dim = 0;      // > 0
  Index key_dim = 0;        // 0 means query_dim; dot and scaled_dot need key_dim == query_dim
  Index attention_dim = 0;  // additive only: size of the hidden layer, > 0
  std::uint64_t seed = 0;   // initialisation (general, additive): torch.nn.Linear's bounds
};

struct AttentionForwardOptions {
  // Broadcast against the scores [batch, Lq, Lk]. A key padding mask [batch, Lk] (true = padding)
  // is Mask::blocked(pad.reshape<3>({batch, 1, Lk})).
  std::optional<Mask> mask;
};

template <class T>
struct AttentionOutput {
  Tensor<T, 3> output;   // [batch, Lq, Dv]
  Tensor<T, 3> weights;  // [batch, Lq, Lk]
};

template <class T>
class Attention : public Module<Attention<T>> {
 public:
  Parameter<T, 2> weight;  // general: [query_dim, key_dim]; empty otherwise
  Linear<T> query_proj;    // additive: W1 [attention_dim, query_dim]; empty otherwise
  Linear<T> key_proj;      // additive: W2 [attention_dim, key_dim]
  Linear<T> v;             // additive: v [1, attention_dim]

  Attention() = default;
  explicit Attention(const AttentionOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::Attention";
    const std::string_view name = to_string(o.score);
    if (name == "unknown")
      detail::raise<ValueError>(fn, "score is ", static_cast<int>(o.score),
                                ", not a tessera::nn::AttentionScore value");
    if (o.query_dim <= 0)
      detail::raise<ValueError>(fn, "query_dim is ", o.query_dim, ", expected a value > 0");
    if (o.key_dim < 0)
      detail::raise<ValueError>(fn, "key_dim is ", o.key_dim,
                                ", expected a value > 0 (or 0 for query_dim)");
    options_.key_dim = o.key_dim ? o.key_dim : o.query_dim;
    const Index Dq = options_.query_dim, Dk = options_.key_dim;
    switch (o.score) {
      case AttentionScore::dot:
      case AttentionScore::scaled_dot:
        if (Dk != Dq)
          detail::raise<ValueError>(fn, "the ", name,
                                    " score needs query_dim == key_dim, got query_dim = ", Dq,
                                    " and key_dim = ", Dk);
        break;
      case AttentionScore::general: {
        weight = Parameter<T, 2>(Shape<2>{Dq, Dk});
        const double bound = 1.0 / std::sqrt(static_cast<double>(Dk));
        detail::init_uniform(weight, o.seed, -bound, bound);
        break;
      }
      case AttentionScore::additive:
        if (o.attention_dim <= 0)
          detail::raise<ValueError>(fn, "attention_dim is ", o.attention_dim,
                                    ", expected a value > 0 for the additive score");
        query_proj = Linear<T>({.in_features = Dq,
                                .out_features = o.attention_dim,
                                .bias = false,
                                .seed = o.seed + 1});
        key_proj = Linear<T>({.in_features = Dk,
                              .out_features = o.attention_dim,
                              .bias = false,
                              .seed = o.seed + 2});
        v = Linear<T>(
            {.in_features = o.attention_dim, .out_features = 1, .bias = false, .seed = o.seed + 3});
        break;
    }
  }

  const AttentionOptions& options() const noexcept { return options_; }
  AttentionScore score() const noexcept { return options_.score; }
  Index query_dim() const noexcept { return options_.query_dim; }
  Index key_dim() const noexcept { return options_.key_dim; }

  // query [B, Lq, query_dim], keys [B, Lk, key_dim], values [B, Lk, Dv] -> output [B, Lq, Dv],
  // weights [B, Lq, Lk].
  template <TensorLike Qx, TensorLike Kx, TensorLike Vx>
  AttentionOutput<T> forward(const Qx& query, const Kx& keys, const Vx& values,
                             const AttentionForwardOptions& fo = {}) const {
    static_assert(rank_v<Qx> == 3 && rank_v<Kx> == 3 && rank_v<Vx> == 3,
                  "nn::Attention takes [batch, seq, features] query, keys and values");
    static_assert(std::is_same_v<scalar_t<Qx>, T> && std::is_same_v<scalar_t<Kx>, T> &&
                      std::is_same_v<scalar_t<Vx>, T>,
                  "nn::Attention: input scalar types differ from the module's");
    constexpr std::string_view fn = "tessera::nn::Attention::forward";
    const auto qv = cview(query);
    const auto kv = cview(keys);
    const auto vv = cview(values);
    const Index Dq = options_.query_dim, Dk = options_.key_dim;
    const Index B = qv.dim(0), Lq = qv.dim(1), Lk = kv.dim(1);
    if (qv.dim(2) != Dq)
      detail::raise<ShapeError>(fn, "argument 'query' has shape ", detail::shape_string(qv.shape()),
                                ", expected [batch, Lq, ", Dq, "] (query_dim = ", Dq, ")");
    if (kv.dim(0) != B || kv.dim(2) != Dk)
      detail::raise<ShapeError>(fn, "argument 'keys' has shape ", detail::shape_string(kv.shape()),
                                ", expected [", B, ", Lk, ", Dk, "] (the batch of query ",
                                detail::shape_string(qv.shape()), ", key_dim = ", Dk, ")");
    if (vv.dim(0) != B || vv.dim(1) != Lk)
      detail::raise<ShapeError>(
          fn, "argument 'values' has shape ", detail::shape_string(vv.shape()), ", expected [", B,
          ", ", Lk, ", Dv] (the batch and length of keys ", detail::shape_string(kv.shape()), ")");
    const Index score_shape[] = {B, Lq, Lk};
    if (fo.mask)
      (void)detail::MaskRows(*fo.mask, score_shape, fn, "mask");  // shape check, names fn
    check_parameters(fn);

    AttentionOutput<T> r;
    r.weights = scores(qv, kv);  // [B, Lq, Lk]
    softmax_into(r.weights, r.weights, {.mask = fo.mask});
    // output: [B, Lq, Dv] = weights [B, Lq, Lk] x values [B, Lk, Dv]
    r.output = matmul(r.weights, vv);
    return r;
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // the parameters the score reads have the shapes the options give them. forward runs it.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    const Index Dq = options_.query_dim, Dk = options_.key_dim;
    if (options_.score == AttentionScore::general)
      detail::check_parameter(fn, prefix, "weight", weight, {Dq, Dk});
    if (options_.score == AttentionScore::additive) {
      query_proj.check_parameters(fn, detail::ParameterPrefix(prefix, "query_proj."));
      key_proj.check_parameters(fn, detail::ParameterPrefix(prefix, "key_proj."));
      v.check_parameters(fn, detail::ParameterPrefix(prefix, "v."));
    }
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    switch (self.options_.score) {
      case AttentionScore::general:
        f(prefix + "weight", self.weight);
        break;
      case AttentionScore::additive:
        Linear<T>::visit(self.query_proj, f, prefix + "query_proj.");
        Linear<T>::visit(self.key_proj, f, prefix + "key_proj.");
        Linear<T>::visit(self.v, f, prefix + "v.");
        break;
      default:
        break;
    }
  }

 private:
  // The raw scores [B, Lq, Lk] before the mask and the softmax.
  Tensor<T, 3> scores(TensorMap<const T, 3> q, TensorMap<const T, 3> k) const {
    switch (options_.score) {
      case AttentionScore::dot:
        // [B, Lq, Lk] = q [B, Lq, D] x k^T [B, D, Lk]
        return matmul(q, k, {.transpose_b = true});
      case AttentionScore::scaled_dot: {
        Tensor<T, 3> s = matmul(q, k, {.transpose_b = true});
        s.as_vector() /= static_cast<T>(std::sqrt(static_cast<double>(options_.query_dim)));
        return s;
      }
      case AttentionScore::general: {
        // Wk: [B, Lk, Dq] = k [B, Lk, Dk] x W^T [Dk, Dq]; then q [B, Lq, Dq] x Wk^T [B, Dq, Lk]
        const Tensor<T, 3> wk = linear(k, weight.value);
        return matmul(q, wk, {.transpose_b = true});
      }
      case AttentionScore::additive:
        return additive_scores(q, k);
    }
    return {};
  }

  // s[b, i, j] = v^T tanh(W1 q[b, i] + W2 k[b, j]), W1 q and W2 k projected once each.
  Tensor<T, 3> additive_scores(TensorMap<const T, 3> q, TensorMap<const T, 3> k) const {
    const Index B = q.dim(0), Lq = q.dim(1), Lk = k.dim(1), Da = options_.attention_dim;
    const Tensor<T, 3> wq = query_proj.forward(q);  // [B, Lq, Da]
    const Tensor<T, 3> wk = key_proj.forward(k);    // [B, Lk, Da]
    Tensor<T, 3> s(Shape<3>{B, Lq, Lk}, uninitialized);
    const VectorMap<const T> vw(v.weight.value.data(), Da);
    // One row (b, i) at a time: hidden [Lk, Da] = tanh(W2 k[b] + W1 q[b, i]), scores = hidden v.
    parallel_for(B * Lq, std::max<Index>(1, Index{16384} / std::max<Index>(Lk * Da, 1)),
                 [&](Index r0, Index r1) {
                   RowMajorMatrix<T> hidden(Lk, Da);
                   for (Index r = r0; r < r1; ++r) {
                     const Index b = r / Lq;
                     const MatrixMap<const T> K(wk.data() + b * Lk * Da, Lk, Da);
                     const VectorMap<const T> qrow(wq.data() + r * Da, Da);
                     hidden.noalias() = K.rowwise() + qrow.transpose();
                     detail::activate(Activation::tanh, hidden.data(), hidden.data(), Lk * Da);
                     VectorMap<T>(s.data() + r * Lk, Lk).noalias() = hidden * vw;
                   }
                 });
    return s;
  }

  AttentionOptions options_{};
};

}  // namespace tessera::nn
