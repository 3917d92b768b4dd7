// tessera: nn::FeedForward, the transformer's position-wise block: linear1 -> activation ->
// linear2. Its parameters are named linear1.* and linear2.*, as in PyTorch's transformer layers,
// which hold it with an empty prefix. The hidden layer lives in the calling thread's scratch arena
// (core/scratch.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

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
      : linear1({.in_features = checked(o).d_model,
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
    constexpr std::string_view fn = "tessera::nn::FeedForward::forward";
    check_input(fn, x);
    Shape<rank_v<X>> s = x.shape();
    s[rank_v<X> - 1] = options_.d_model;
    Tensor<T, rank_v<X>> out(s, uninitialized);
    run(fn, x, TensorMap<T, rank_v<X>>(out), residual);
    return out;
  }
  // The same into `out` ([..., d_model]). out may be x (x is read before out is written); it must
  // not overlap `residual`.
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out,
                    std::optional<TensorMap<const T, 2>> residual = std::nullopt) const {
    static_assert(rank_v<Y> == rank_v<X>, "nn::FeedForward::forward_into: out must have x's rank");
    constexpr std::string_view fn = "tessera::nn::FeedForward::forward_into";
    check_input(fn, x);
    const auto outv = mview(out);
    detail::check_shape_equal(fn, "out", outv.shape(), x.shape());
    run(fn, x, outv, residual);
  }

  // What backward needs: the two Linear layers' contexts (x and the activation's input; the
  // hidden activations).
  struct Context {
    typename Linear<T>::Context linear1, linear2;
  };

  // The training forward: linear2(act(linear1(x))) and the context for backward.
  template <TensorLike X>
  Trained<Tensor<T, rank_v<X>>, Context> forward_train(const X& x) const {
    constexpr std::string_view fn = "tessera::nn::FeedForward::forward_train";
    check_input(fn, x);
    auto h = linear1.forward_train(x, options_.activation);
    auto y = linear2.forward_train(h.output);
    return {std::move(y.output), Context{std::move(h.context), std::move(y.context)}};
  }

  // Given forward_train's context and dL/dy (the output's shape): adds the gradients of both
  // layers' weights and biases and returns dL/dx.
  template <TensorLike G>
  Tensor<T, rank_v<G>> backward(const Context& ctx, const G& grad_output) {
    constexpr std::string_view fn = "tessera::nn::FeedForward::backward";
    check_parameters(fn);
    linear2.check_backward(fn, ctx.linear2, cview(grad_output).shape(), "linear2.");
    return linear1.backward(ctx.linear1, linear2.backward(ctx.linear2, grad_output));
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // linear1.weight is [dim_feedforward, d_model], linear2.weight [d_model, dim_feedforward] and
  // their biases (with bias) [dim_feedforward] and [d_model].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    linear1.check_parameters(fn, detail::ParameterPrefix(prefix, "linear1."));
    linear2.check_parameters(fn, detail::ParameterPrefix(prefix, "linear2."));
  }

  // Packs both weights for inference (nn::Linear::prepack).
  void prepack() {
    check_parameters("tessera::nn::FeedForward::prepack");
    linear1.prepack();
    linear2.prepack();
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    Linear<T>::visit(self.linear1, f, prefix + "linear1.");
    Linear<T>::visit(self.linear2, f, prefix + "linear2.");
  }

 private:
  // The options, checked before the Linear members are built from them, so that a bad value is
  // reported under this module's name and an activation outside the enum never runs as the
  // identity.
  static const FeedForwardOptions& checked(const FeedForwardOptions& o) {
    constexpr std::string_view fn = "tessera::nn::FeedForward";
    if (o.d_model < 0)
      detail::raise<ValueError>(fn, "d_model is ", o.d_model, ", expected a value >= 0");
    if (o.dim_feedforward < 0)
      detail::raise<ValueError>(fn, "dim_feedforward is ", o.dim_feedforward,
                                ", expected a value >= 0");
    detail::check_activation_enum(fn, "activation", o.activation);
    return o;
  }

  // The checks of every entry point: the parameters, then x's last dimension.
  template <class X>
  void check_input(std::string_view fn, const X& x) const {
    static_assert(rank_v<X> >= 1, "nn::FeedForward takes an input of rank >= 1, [..., d_model]");
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::FeedForward: input scalar type differs from the module's");
    check_parameters(fn);
    if (x.shape()[rank_v<X> - 1] != options_.d_model)
      detail::raise<ShapeError>(fn, "argument 'x' has shape ", detail::shape_string(x.shape()),
                                ", expected a last dimension of ", options_.d_model, " (d_model)");
  }

  // linear2(act(linear1(x))) + residual into out (x's shape, checked by the caller).
  template <class X, int R>
  void run(std::string_view fn, const X& x, TensorMap<T, R> out,
           std::optional<TensorMap<const T, 2>> residual) const {
    if (residual) {
      // rows: x's leading dimensions flattened
      const Index rows = detail::checked_shape_size(std::span<const Index>(x.shape().data(), R - 1),
                                                    fn, "argument 'x'");
      const Index expected[] = {rows, options_.d_model};
      detail::check_shape_equal(fn, "residual", residual->shape(), expected);
    }
    // hidden: [..., dim_feedforward]
    Shape<R> hidden_shape = x.shape();
    hidden_shape[R - 1] = options_.dim_feedforward;
    detail::ScratchFrame frame;
    const auto hidden = frame.tensor<T, R>(hidden_shape);
    linear1.forward_into(x, hidden, options_.activation);
    linear2.forward_into(hidden, out, Activation::identity, residual);
  }

  FeedForwardOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::FeedForward)
