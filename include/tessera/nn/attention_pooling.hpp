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
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/kernels/softmax.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/parameter.hpp"

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
    constexpr std::string_view fn = "tessera::nn::AttentionPooling::forward";
    const auto hv = cview(h);
    const Index B = hv.dim(0), L = hv.dim(1), D = options_.input_dim, Da = options_.attention_dim;
    if (hv.dim(2) != D)
      detail::raise<ShapeError>(fn, "argument 'h' has shape ", detail::shape_string(hv.shape()),
                                ", expected [batch, T, ", D, "] (input_dim = ", D, ")");
    const Index weight_shape[] = {B, L};
    if (fo.mask) (void)detail::MaskRows(*fo.mask, weight_shape, fn, "mask");  // shape check
    check_parameters(fn);

    // u: [B, T, Da] = tanh(h W^T + b)
    Tensor<T, 3> u = proj.forward(hv);
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
    return r;
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
  AttentionPoolingOptions options_{};
};

}  // namespace tessera::nn
