// tessera: nn::FeedForward, the transformer's position-wise block: linear1 -> activation ->
// linear2. Its parameters are named linear1.* and linear2.*, as in PyTorch's transformer layers,
// which hold it with an empty prefix. The hidden layer lives in the calling thread's scratch arena
// (core/scratch.hpp).
#pragma once

#include <cstdint>
#include <optional>

#include "tessera/core/error.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::nn {

struct FeedForwardOptions {
  Index d_model = 0;
  Index dim_feedforward = 0;
  Activation activation = Activation::relu;
  bool bias = true;
  std::uint64_t seed = 0;
};

template <class T>
class FeedForward : public Module<FeedForward<T>> {
 public:
  Linear<T> linear1;  // [dim_feedforward, d_model]
  Linear<T> linear2;  // [d_model, dim_feedforward]

  FeedForward() = default;
  explicit FeedForward(const FeedForwardOptions& o)
      : linear1({.in_features = o.d_model,
                 .out_features = o.dim_feedforward,
                 .bias = o.bias,
                 .seed = o.seed}),
        linear2({.in_features = o.dim_feedforward,
                 .out_features = o.d_model,
                 .bias = o.bias,
                 .seed = o.seed + 1}),
        options_(o) {}

  const FeedForwardOptions& options() const noexcept { return options_; }

  // x: [..., d_model] -> [..., d_model]
  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x) const {
    return forward(x, std::nullopt);
  }
  // linear2(act(linear1(x))) + residual (residual: [rows, d_model], x's shape flattened), with the
  // activation fused into the first product and the addition into the second.
  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x, std::optional<TensorMap<const T, 2>> residual) const {
    Shape<rank_v<X>> s = x.shape();
    s[rank_v<X> - 1] = options_.d_model;
    Tensor<T, rank_v<X>> out(s, uninitialized);
    forward_into(x, out, residual);
    return out;
  }
  // The same into `out` ([..., d_model]). out may be x (x is read before out is written); it must not
  // overlap `residual`.
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out,
                    std::optional<TensorMap<const T, 2>> residual = std::nullopt) const {
    static_assert(rank_v<X> >= 1 && rank_v<Y> == rank_v<X>,
                  "nn::FeedForward::forward_into: out must have x's rank");
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::FeedForward: input scalar type differs from the module's");
    constexpr int R = rank_v<X>;
    const auto outv = mview(out);
    Shape<R> out_expected = x.shape();
    out_expected[R - 1] = options_.d_model;
    detail::check_shape_equal("tessera::nn::FeedForward::forward_into", "out", outv.shape(),
                              out_expected);
    // hidden: [..., dim_feedforward]
    Shape<R> hidden_shape = x.shape();
    hidden_shape[R - 1] = options_.dim_feedforward;
    detail::ScratchFrame frame;
    const auto hidden = frame.tensor<T, R>(hidden_shape);
    linear1.forward_into(x, hidden, options_.activation);
    linear2.forward_into(hidden, outv, Activation::identity, residual);
  }

  // Packs both weights for inference (nn::Linear::prepack).
  void prepack() {
    linear1.prepack();
    linear2.prepack();
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    Linear<T>::visit(self.linear1, f, prefix + "linear1.");
    Linear<T>::visit(self.linear2, f, prefix + "linear2.");
  }

 private:
  FeedForwardOptions options_{};
};

}  // namespace tessera::nn
