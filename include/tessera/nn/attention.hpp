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
//
// Training: forward_train returns forward's output and weights and a Context holding the inputs,
// the weights a and the score's projections; backward(ctx, dL/doutput[, dL/dweights]) returns
// the gradients of query, keys and values and adds the parameters'. The weights are returned by
// forward anyway (O(Lq Lk)), so backward reads them instead of recomputing them: with
// dP = dO V^T (+ dL/dweights), the softmax's backward is dS = a * (dP - rowsum(a * dP)), and a
// masked-out score (a = 0) gets no gradient (nor does the mask). The score functions are then
// differentiated by hand (the chain rule through q^T k, q^T W k, v^T tanh(W1 q + W2 k)). The fused
// FlashAttention-2 backward of kernels/attention_backward.hpp (which MultiheadAttention uses) does
// not fit here: the general and additive scores are not scaled dot products of the inputs, and
// with the weights materialised there is no memory to save by recomputing them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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
#include "tessera/nn/training.hpp"

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

// The gradients nn::Attention::backward returns, one per input.
template <class T>
struct AttentionGrads {
  Tensor<T, 3> query;   // [batch, Lq, query_dim]
  Tensor<T, 3> keys;    // [batch, Lk, key_dim]
  Tensor<T, 3> values;  // [batch, Lk, Dv]
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
    return run(fn, cview(query), cview(keys), cview(values), fo, nullptr);
  }

  // What backward needs from forward_train: the inputs, the weights and the score's projections.
  struct Context {
    Tensor<T, 3> query, keys, values;  // the inputs
    Tensor<T, 3> weights;              // a: [B, Lq, Lk], 0 where masked
    Tensor<T, 3> wq;                   // additive: W1 q [B, Lq, attention_dim]; empty otherwise
    Tensor<T, 3> wk;  // general: k W^T [B, Lk, query_dim]; additive: W2 k [B, Lk, attention_dim]
  };

  // The training forward: forward's output and weights (the same operations, bit for bit) and the
  // context for backward. Errors as forward's, naming "tessera::nn::Attention::forward_train".
  template <TensorLike Qx, TensorLike Kx, TensorLike Vx>
  Trained<AttentionOutput<T>, Context> forward_train(const Qx& query, const Kx& keys,
                                                     const Vx& values,
                                                     const AttentionForwardOptions& fo = {}) const {
    static_assert(rank_v<Qx> == 3 && rank_v<Kx> == 3 && rank_v<Vx> == 3,
                  "nn::Attention takes [batch, seq, features] query, keys and values");
    static_assert(std::is_same_v<scalar_t<Qx>, T> && std::is_same_v<scalar_t<Kx>, T> &&
                      std::is_same_v<scalar_t<Vx>, T>,
                  "nn::Attention: input scalar types differ from the module's");
    constexpr std::string_view fn = "tessera::nn::Attention::forward_train";
    Trained<AttentionOutput<T>, Context> r;
    Context& c = r.context;
    r.output = run(fn, cview(query), cview(keys), cview(values), fo, &c);
    const auto copy = [](const auto& x) {
      Tensor<T, 3> t(x.shape(), uninitialized);
      std::copy_n(x.data(), x.size(), t.data());
      return t;
    };
    c.query = copy(cview(query));
    c.keys = copy(cview(keys));
    c.values = copy(cview(values));
    c.weights = r.output.weights;
    return r;
  }

  // Given forward_train's context, dL/doutput [B, Lq, Dv] and optionally dL/dweights [B, Lq, Lk]
  // (when the loss also reads the weights): adds the gradients of the score's parameters (general:
  // weight; additive: query_proj, key_proj and v weights) and returns dL/dquery, dL/dkeys and
  // dL/dvalues. Throws ShapeError when a gradient's shape is not its output's or a parameter's
  // shape changed, ValueError for a context of another module.
  template <TensorLike G>
  AttentionGrads<T> backward(const Context& ctx, const G& grad_output,
                             std::optional<TensorMap<const T, 3>> grad_weights = std::nullopt);

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
  // forward's checks and computation, naming `fn`; with `ctx`, the score's projections are kept.
  AttentionOutput<T> run(std::string_view fn, TensorMap<const T, 3> qv, TensorMap<const T, 3> kv,
                         TensorMap<const T, 3> vv, const AttentionForwardOptions& fo,
                         Context* ctx) const {
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
    r.weights = scores(qv, kv, ctx);  // [B, Lq, Lk]
    softmax_into(r.weights, r.weights, {.mask = fo.mask});
    // output: [B, Lq, Dv] = weights [B, Lq, Lk] x values [B, Lk, Dv]
    r.output = matmul(r.weights, vv);
    return r;
  }

  // The raw scores [B, Lq, Lk] before the mask and the softmax; with `ctx`, the projections the
  // general and additive scores make are kept in it.
  Tensor<T, 3> scores(TensorMap<const T, 3> q, TensorMap<const T, 3> k, Context* ctx) const {
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
        Tensor<T, 3> wk = linear(k, weight.value);
        Tensor<T, 3> s = matmul(q, wk, {.transpose_b = true});
        if (ctx) ctx->wk = std::move(wk);
        return s;
      }
      case AttentionScore::additive:
        return additive_scores(q, k, ctx);
    }
    return {};
  }

  // s[b, i, j] = v^T tanh(W1 q[b, i] + W2 k[b, j]), W1 q and W2 k projected once each.
  Tensor<T, 3> additive_scores(TensorMap<const T, 3> q, TensorMap<const T, 3> k,
                               Context* ctx) const {
    const Index B = q.dim(0), Lq = q.dim(1), Lk = k.dim(1), Da = options_.attention_dim;
    Tensor<T, 3> wq = query_proj.forward(q);  // [B, Lq, Da]
    Tensor<T, 3> wk = key_proj.forward(k);    // [B, Lk, Da]
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
    if (ctx) ctx->wq = std::move(wq), ctx->wk = std::move(wk);
    return s;
  }

  AttentionOptions options_{};
};

template <class T>
template <TensorLike G>
AttentionGrads<T> Attention<T>::backward(const Context& ctx, const G& grad_output,
                                         std::optional<TensorMap<const T, 3>> grad_weights) {
  static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                "nn::Attention::backward takes a [batch, Lq, Dv] gradient of the module's scalar "
                "type");
  constexpr std::string_view fn = "tessera::nn::Attention::backward";
  check_parameters(fn);
  const Index Dq = options_.query_dim, Dk = options_.key_dim, Da = options_.attention_dim;
  const Index B = ctx.query.dim(0), Lq = ctx.query.dim(1), Lk = ctx.keys.dim(1);
  const Index Dv = ctx.values.dim(2);
  const AttentionScore sc = options_.score;
  const bool consistent =
      ctx.query.dim(2) == Dq && ctx.keys.shape() == Shape<3>{B, Lk, Dk} && ctx.values.dim(0) == B &&
      ctx.values.dim(1) == Lk && ctx.weights.shape() == Shape<3>{B, Lq, Lk} &&
      (sc != AttentionScore::general || ctx.wk.shape() == Shape<3>{B, Lk, Dq}) &&
      (sc != AttentionScore::additive ||
       (ctx.wq.shape() == Shape<3>{B, Lq, Da} && ctx.wk.shape() == Shape<3>{B, Lk, Da}));
  if (!consistent)
    detail::raise<ValueError>(fn, "argument 'ctx' does not come from this module's forward_train");
  const auto dout = cview(grad_output);
  const Index out_shape[] = {B, Lq, Dv}, weight_shape[] = {B, Lq, Lk};
  detail::check_shape_equal(fn, "grad_output", dout.shape(), out_shape);
  if (grad_weights)
    detail::check_shape_equal(fn, "grad_weights", grad_weights->shape(), weight_shape);

  AttentionGrads<T> g;
  // dvalues: [B, Lk, Dv] = a^T [B, Lk, Lq] x dout [B, Lq, Dv]
  g.values = matmul(ctx.weights, dout, {.transpose_a = true});
  // ds: [B, Lq, Lk] = dout [B, Lq, Dv] x values^T [B, Dv, Lk] (+ dL/dweights), then the softmax's
  // backward row by row: ds = a * (ds - sum_j a_j ds_j)
  Tensor<T, 3> ds = matmul(dout, ctx.values, {.transpose_b = true});
  if (grad_weights) ds.as_vector() += VectorMap<const T>(grad_weights->data(), ds.size());
  for (Index r = 0; r < B * Lq; ++r) {
    auto d = VectorMap<T>(ds.data() + r * Lk, Lk);
    const auto a = VectorMap<const T>(ctx.weights.data() + r * Lk, Lk);
    const T dot = a.dot(d);
    d = a.cwiseProduct((d.array() - dot).matrix());
  }
  switch (sc) {
    case AttentionScore::dot:
    case AttentionScore::scaled_dot:
      if (sc == AttentionScore::scaled_dot)
        ds.as_vector() /= static_cast<T>(std::sqrt(static_cast<double>(Dq)));
      // dquery [B, Lq, D] = ds x keys; dkeys [B, Lk, D] = ds^T x query
      g.query = matmul(ds, ctx.keys);
      g.keys = matmul(ds, ctx.query, {.transpose_a = true});
      break;
    case AttentionScore::general: {
      // s = q (k W^T)^T: dquery = ds x wk [B, Lq, Dq]; dwk [B, Lk, Dq] = ds^T x query
      g.query = matmul(ds, ctx.wk);
      const Tensor<T, 3> dwk = matmul(ds, ctx.query, {.transpose_a = true});
      const auto dwk2 = TensorMap<const T, 2>(dwk.data(), {B * Lk, Dq});
      // dW [Dq, Dk] += dwk^T [Dq, B * Lk] x keys [B * Lk, Dk]; dkeys [B * Lk, Dk] = dwk x W
      matmul_into(dwk2, TensorMap<const T, 2>(ctx.keys.data(), {B * Lk, Dk}),
                  detail::grad_of(weight), {.transpose_a = true, .accumulate = true});
      g.keys = Tensor<T, 3>(Shape<3>{B, Lk, Dk}, uninitialized);
      matmul_into(dwk2, weight.value, g.keys.template reshape<2>({B * Lk, Dk}));
      break;
    }
    case AttentionScore::additive: {
      // s[b, i, j] = v^T h, h = tanh(wq[b, i] + wk[b, j]): per row (b, i), with g = ds[b, i, :],
      // dv += h^T g, dpre = (g v^T) * (1 - h^2), dwq[b, i] = sum_j dpre[j], dwk[b] += dpre. One
      // thread per batch element (dwk[b] sums over that element's rows), dv summed in order.
      Tensor<T, 3> dwq(Shape<3>{B, Lq, Da}), dwk(Shape<3>{B, Lk, Da});
      const VectorMap<const T> vw(v.weight.value.data(), Da);
      std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> dv_part(
          static_cast<std::size_t>(B), Eigen::Matrix<T, Eigen::Dynamic, 1>::Zero(Da));
      parallel_for(B, 1, [&](Index b0, Index b1) {
        RowMajorMatrix<T> hidden(Lk, Da);
        for (Index b = b0; b < b1; ++b) {
          const MatrixMap<const T> K(ctx.wk.data() + b * Lk * Da, Lk, Da);
          MatrixMap<T> dK(dwk.data() + b * Lk * Da, Lk, Da);
          for (Index i = 0; i < Lq; ++i) {
            const Index r = b * Lq + i;
            const VectorMap<const T> qrow(ctx.wq.data() + r * Da, Da);
            const VectorMap<const T> gs(ds.data() + r * Lk, Lk);
            hidden.noalias() = K.rowwise() + qrow.transpose();
            detail::activate(Activation::tanh, hidden.data(), hidden.data(), Lk * Da);
            dv_part[static_cast<std::size_t>(b)].noalias() += hidden.transpose() * gs;
            // hidden := dpre = (g v^T) * (1 - h^2)
            hidden = ((gs * vw.transpose()).array() * (T(1) - hidden.array().square())).matrix();
            VectorMap<T>(dwq.data() + r * Da, Da) = hidden.colwise().sum().transpose();
            dK += hidden;
          }
        }
      });
      auto gv = VectorMap<T>(detail::grad_of(v.weight).data(), Da);
      for (const auto& part : dv_part) gv += part;
      // the projections: dW1 [Da, Dq] += dwq^T x query, dquery = dwq x W1; likewise keys and W2
      const auto project_back = [&](Linear<T>& proj, const Tensor<T, 3>& d, const Tensor<T, 3>& x) {
        const Index rows = d.dim(0) * d.dim(1), features = x.dim(2);
        const auto d2 = TensorMap<const T, 2>(d.data(), {rows, Da});
        matmul_into(d2, TensorMap<const T, 2>(x.data(), {rows, features}),
                    detail::grad_of(proj.weight), {.transpose_a = true, .accumulate = true});
        Tensor<T, 3> dx(Shape<3>{d.dim(0), d.dim(1), features}, uninitialized);
        matmul_into(d2, proj.weight.value, dx.template reshape<2>({rows, features}));
        return dx;
      };
      g.query = project_back(query_proj, dwq, ctx.query);
      g.keys = project_back(key_proj, dwk, ctx.keys);
      break;
    }
  }
  return g;
}

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::Attention)
