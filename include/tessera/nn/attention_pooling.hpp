// tessera: nn::AttentionPooling, a learned weighted average of a sequence of encoder outputs,
// as in hierarchical attention networks (Yang et al. 2016):
//
//   u_t = tanh(W h_t + b)        proj: input_dim -> attention_dim, with bias
//   e_t = q^T u_t                q: a learned query (context vector) [attention_dim]
//   a   = softmax(e)             over t; padded steps masked out
//   c   = sum_t a_t h_t          the context vector [input_dim]
//
// h: [B, T, input_dim] gives context [B, input_dim] and weights [B, T]. A mask (see Mask)
// broadcasts against [B, T]; PyTorch's padding mask (true = padding) is Mask::blocked(pad). A
// sequence whose every step is masked out gets zero weights and a zero context (never NaN).
//
// State dict keys: "proj.weight" [attention_dim, input_dim], "proj.bias" [attention_dim],
// "query" [attention_dim]. Initialisation: proj as torch.nn.Linear, query U(-1/sqrt(attention_dim),
// 1/sqrt(attention_dim)). forward checks their shapes first and throws a ShapeError naming the
// parameter.
//
// Training: forward_train keeps h (as proj's context), u and the weights a; backward(ctx, dL/dc[,
// dL/da]) follows the chain rule back: da_t = h_t . dc (+ dL/da), de = a * (da - sum_t a_t da_t)
// (the softmax's backward; masked steps, a_t = 0, get none), dq = sum_{b,t} de u_t,
// dz = de q^T * (1 - u^2) through tanh, then proj's backward; dh_t = a_t dc + dz_t W.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/parameter.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct AttentionPoolingOptions {
  Index input_dim = 0;      // D, features of each h_t, > 0
  Index attention_dim = 0;  // size of u_t and q, > 0
  std::uint64_t seed = 0;
};

struct AttentionPoolingForwardOptions {
  // Broadcast against [batch, T]; masked-out steps get weight 0.
  std::optional<Mask> mask;
};

template <class T>
struct AttentionPoolingOutput {
  Tensor<T, 2> context;  // [batch, input_dim]
  Tensor<T, 2> weights;  // [batch, T]
};

template <class T>
class AttentionPooling : public Module<AttentionPooling<T>> {
 public:
  Linear<T> proj;         // W [attention_dim, input_dim], b [attention_dim]
  Parameter<T, 1> query;  // q [attention_dim]

  AttentionPooling() = default;
  explicit AttentionPooling(const AttentionPoolingOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::AttentionPooling";
    if (o.input_dim <= 0)
      detail::raise<ValueError>(fn, "input_dim is ", o.input_dim, ", expected a value > 0");
    if (o.attention_dim <= 0)
      detail::raise<ValueError>(fn, "attention_dim is ", o.attention_dim, ", expected a value > 0");
    proj = Linear<T>({.in_features = o.input_dim,
                      .out_features = o.attention_dim,
                      .bias = true,
                      .seed = o.seed + 1});
    query = Parameter<T, 1>(Shape<1>{o.attention_dim});
    const double bound = 1.0 / std::sqrt(static_cast<double>(o.attention_dim));
    detail::init_uniform(query, o.seed + 2, -bound, bound);
  }

  const AttentionPoolingOptions& options() const noexcept { return options_; }
  Index input_dim() const noexcept { return options_.input_dim; }
  Index attention_dim() const noexcept { return options_.attention_dim; }

  // h: [B, T, input_dim] -> context [B, input_dim], weights [B, T].
  template <TensorLike H>
  AttentionPoolingOutput<T> forward(const H& h,
                                    const AttentionPoolingForwardOptions& fo = {}) const {
    static_assert(rank_v<H> == 3, "nn::AttentionPooling takes h of shape [batch, T, input_dim]");
    static_assert(std::is_same_v<scalar_t<H>, T>,
                  "nn::AttentionPooling: input scalar type differs from the module's");
    return run("tessera::nn::AttentionPooling::forward", cview(h), fo, nullptr);
  }

  // What backward needs from forward_train.
  struct Context {
    typename Linear<T>::Context proj;  // proj's: h as [B * T, input_dim]
    Tensor<T, 3> u;                    // tanh(h W^T + b): [B, T, attention_dim]
    Tensor<T, 2> weights;              // a: [B, T], 0 where masked
  };

  // The training forward: forward's context and weights (the same operations, bit for bit) and the
  // context for backward. Errors as forward's, naming
  // "tessera::nn::AttentionPooling::forward_train".
  template <TensorLike H>
  Trained<AttentionPoolingOutput<T>, Context> forward_train(
      const H& h, const AttentionPoolingForwardOptions& fo = {}) const {
    static_assert(rank_v<H> == 3, "nn::AttentionPooling takes h of shape [batch, T, input_dim]");
    static_assert(std::is_same_v<scalar_t<H>, T>,
                  "nn::AttentionPooling: input scalar type differs from the module's");
    Trained<AttentionPoolingOutput<T>, Context> r;
    r.output = run("tessera::nn::AttentionPooling::forward_train", cview(h), fo, &r.context);
    r.context.weights = r.output.weights;
    return r;
  }

  // Given forward_train's context, dL/dcontext [B, input_dim] and optionally dL/dweights [B, T]
  // (when the loss also reads the weights): adds the gradients of proj.weight, proj.bias and query
  // and returns dL/dh [B, T, input_dim]. Throws ShapeError when a gradient's shape is not its
  // output's or a parameter's shape changed, ValueError for a context of another module.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output,
                        std::optional<TensorMap<const T, 2>> grad_weights = std::nullopt) {
    static_assert(rank_v<G> == 2 && std::is_same_v<scalar_t<G>, T>,
                  "nn::AttentionPooling::backward takes a [batch, input_dim] gradient of the "
                  "module's scalar type");
    constexpr std::string_view fn = "tessera::nn::AttentionPooling::backward";
    check_parameters(fn);
    const Index D = options_.input_dim, Da = options_.attention_dim;
    const Index B = ctx.weights.dim(0), L = ctx.weights.dim(1);
    if (ctx.proj.input.shape() != Shape<2>{B * L, D} || ctx.u.shape() != Shape<3>{B, L, Da} ||
        ctx.proj.shape != std::vector<Index>{B, L, D})
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    const auto dc = cview(grad_output);
    const Index c_shape[] = {B, D}, w_shape[] = {B, L};
    detail::check_shape_equal(fn, "grad_output", dc.shape(), c_shape);
    if (grad_weights) detail::check_shape_equal(fn, "grad_weights", grad_weights->shape(), w_shape);
    const T* h = ctx.proj.input.data();
    // da: [B, T] = h [B, T, D] x dc [B, D] (+ dL/dweights); de = a * (da - sum_t a_t da_t)
    Tensor<T, 2> de(Shape<2>{B, L}, uninitialized);
    for (Index b = 0; b < B; ++b) {
      auto d = VectorMap<T>(de.data() + b * L, L);
      d.noalias() =
          MatrixMap<const T>(h + b * L * D, L, D) * VectorMap<const T>(dc.data() + b * D, D);
      if (grad_weights) d += VectorMap<const T>(grad_weights->data() + b * L, L);
      const auto a = VectorMap<const T>(ctx.weights.data() + b * L, L);
      const T dot = a.dot(d);
      d = a.cwiseProduct((d.array() - dot).matrix());
    }
    // dq [Da] += u^T [Da, B * T] x de [B * T]; dz [B * T, Da] = (de q^T) * (1 - u^2)
    const auto u = MatrixMap<const T>(ctx.u.data(), B * L, Da);
    const auto e = VectorMap<const T>(de.data(), B * L);
    detail::grad_of(query).as_vector().noalias() += u.transpose() * e;
    Tensor<T, 3> dz(Shape<3>{B, L, Da}, uninitialized);
    dz.as_matrix() =
        ((e * query.value.as_vector().transpose()).array() * (T(1) - u.array().square())).matrix();
    // dh [B, T, D] = dz x W (proj's backward, which adds dW and db) + a_t dc
    Tensor<T, 3> dh = proj.backward(ctx.proj, dz);
    for (Index b = 0; b < B; ++b)
      MatrixMap<T>(dh.data() + b * L * D, L, D).noalias() +=
          VectorMap<const T>(ctx.weights.data() + b * L, L) *
          VectorMap<const T>(dc.data() + b * D, D).transpose();
    return dh;
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // proj and query have the shapes the options give them. forward runs it.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    proj.check_parameters(fn, detail::ParameterPrefix(prefix, "proj."));
    detail::check_parameter(fn, prefix, "query", query, {options_.attention_dim});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    Linear<T>::visit(self.proj, f, prefix + "proj.");
    f(prefix + "query", self.query);
  }

 private:
  // forward's checks and computation, naming `fn`; with `ctx`, h and u are kept in it.
  AttentionPoolingOutput<T> run(std::string_view fn, TensorMap<const T, 3> hv,
                                const AttentionPoolingForwardOptions& fo, Context* ctx) const {
    const Index B = hv.dim(0), L = hv.dim(1), D = options_.input_dim, Da = options_.attention_dim;
    if (hv.dim(2) != D)
      detail::raise<ShapeError>(fn, "argument 'h' has shape ", detail::shape_string(hv.shape()),
                                ", expected [batch, T, ", D, "] (input_dim = ", D, ")");
    const Index weight_shape[] = {B, L};
    if (fo.mask) (void)detail::MaskRows(*fo.mask, weight_shape, fn, "mask");  // shape check
    check_parameters(fn);

    // u: [B, T, Da] = tanh(h W^T + b)
    Tensor<T, 3> u;
    if (ctx) {
      auto p = proj.forward_train(hv);  // keeps h
      u = std::move(p.output);
      ctx->proj = std::move(p.context);
    } else {
      u = proj.forward(hv);
    }
    tanh_into(u, u);
    // e: [B, T] = u [B, T, Da] x q [Da]  (as a linear layer with weight q^T: [1, Da])
    AttentionPoolingOutput<T> r{Tensor<T, 2>(Shape<2>{B, D}, uninitialized),
                                Tensor<T, 2>(Shape<2>{B, L}, uninitialized)};
    linear_into(u, TensorMap<const T, 2>(query.value.data(), {1, Da}),
                r.weights.template reshape<3>({B, L, 1}));
    // a = softmax(e) over T, masked
    softmax_into(r.weights, r.weights, {.mask = fo.mask});
    // c: [B, 1, D] = a [B, 1, T] x h [B, T, D]
    matmul_into(r.weights.template reshape<3>({B, 1, L}), hv,
                r.context.template reshape<3>({B, 1, D}));
    if (ctx) ctx->u = std::move(u);
    return r;
  }

  AttentionPoolingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::AttentionPooling)
