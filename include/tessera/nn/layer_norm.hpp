// tessera: nn::LayerNorm over the last dimension, as torch.nn.LayerNorm(normalized_shape=[n]).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct LayerNormOptions {
  Index normalized_shape = 0;  // size of the last dimension
  double eps = 1e-5;
  bool elementwise_affine = true;  // learnable weight (initialised to 1)
  bool bias = true;                // learnable bias (initialised to 0); needs elementwise_affine
};

template <class T>
class LayerNorm : public Module<LayerNorm<T>> {
 public:
  Parameter<T, 1> weight;  // [n], empty without elementwise_affine
  Parameter<T, 1> bias;    // [n], empty without bias

  LayerNorm() = default;
  explicit LayerNorm(const LayerNormOptions& o) : options_(o) {
    if (o.normalized_shape < 0)
      detail::raise<ValueError>("tessera::nn::LayerNorm", "normalized_shape is ",
                                o.normalized_shape, ", expected a value >= 0");
    // Checked in T, the type the kernel adds it in: 1e-50 is 0 in float.
    if (!(o.eps > 0) || !(static_cast<T>(o.eps) > 0) || !std::isfinite(static_cast<T>(o.eps)))
      detail::raise<ValueError>("tessera::nn::LayerNorm", "eps is ", o.eps, ", which is ",
                                static_cast<T>(o.eps),
                                " in the module's scalar type; expected a finite value > 0");
    if (o.elementwise_affine) {
      weight = Parameter<T, 1>(Shape<1>{o.normalized_shape});
      detail::init_constant(weight, 1);
      if (o.bias) bias = Parameter<T, 1>(Shape<1>{o.normalized_shape});
    }
  }

  const LayerNormOptions& options() const noexcept { return options_; }

  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x) const {
    constexpr std::string_view fn = "tessera::nn::LayerNorm::forward";
    check_input(fn, x);
    Tensor<T, rank_v<X>> out(x.shape(), uninitialized);
    run(x, out);
    return out;
  }
  // out (x's shape) may be x.
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out) const {
    constexpr std::string_view fn = "tessera::nn::LayerNorm::forward_into";
    check_input(fn, x);
    detail::check_shape_equal(fn, "out", mview(out).shape(), x.shape());
    run(x, std::forward<Y>(out));
  }

  // What backward needs: the input (the statistics are recomputed from it).
  template <int R>
  struct Context {
    Tensor<T, R> input;
    std::uint64_t weight_version = 0;  // weight.version at the forward (backward reads weight)
  };

  // The training forward: forward's output and the context for backward.
  template <TensorLike X>
  Trained<Tensor<T, rank_v<X>>, Context<rank_v<X>>> forward_train(const X& x) const {
    constexpr std::string_view fn = "tessera::nn::LayerNorm::forward_train";
    check_input(fn, x);
    Trained<Tensor<T, rank_v<X>>, Context<rank_v<X>>> r;
    r.context.input = Tensor<T, rank_v<X>>(x.shape(), uninitialized);
    std::copy_n(cview(x).data(), cview(x).size(), r.context.input.data());
    r.context.weight_version = weight.version;
    r.output = Tensor<T, rank_v<X>>(x.shape(), uninitialized);
    run(x, r.output);
    return r;
  }

  // Given forward_train's context and dL/dy (x's shape): adds dL/dweight and dL/dbias to the
  // parameters' gradients and returns dL/dx (layer_norm_backward in kernels/norm.hpp). Throws
  // ShapeError when grad_output's shape is not x's.
  template <int R, TensorLike G>
  Tensor<T, R> backward(const Context<R>& ctx, const G& grad_output) {
    static_assert(std::is_same_v<scalar_t<G>, T> && rank_v<G> == R,
                  "nn::LayerNorm::backward: the gradient must have the input's type and rank");
    constexpr std::string_view fn = "tessera::nn::LayerNorm::backward";
    check_parameters(fn);
    detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), ctx.input.shape());
    if (ctx.input.shape()[R - 1] != options_.normalized_shape)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    if (has_weight())
      detail::check_unchanged_since_forward(fn, "weight", weight, ctx.weight_version);
    Tensor<T, R> dx(ctx.input.shape(), uninitialized);
    tessera::LayerNormOptions<T> lo{.eps = options_.eps};
    std::optional<TensorMap<T, 1>> gw, gb;
    if (has_weight()) lo.weight = cview(weight.value), gw = mview(detail::grad_of(weight));
    if (has_bias()) lo.bias = cview(bias.value), gb = mview(detail::grad_of(bias));
    layer_norm_backward_into(ctx.input, grad_output, dx, lo, gw, gb);
    return dx;
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its name, unless weight and
  // bias (those the options ask for) are [normalized_shape].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    if (has_weight())
      detail::check_parameter(fn, prefix, "weight", weight, {options_.normalized_shape});
    if (has_bias()) detail::check_parameter(fn, prefix, "bias", bias, {options_.normalized_shape});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    if (self.has_weight()) f(prefix + "weight", self.weight);
    if (self.has_bias()) f(prefix + "bias", self.bias);
  }

 private:
  template <class X>
  void check_input(std::string_view fn, const X& x) const {
    static_assert(rank_v<X> >= 1, "nn::LayerNorm takes an input of rank >= 1");
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::LayerNorm: input scalar type differs from the module's");
    check_parameters(fn);
    if (x.shape()[rank_v<X> - 1] != options_.normalized_shape)
      detail::raise<ShapeError>(fn, "argument 'x' has shape ", detail::shape_string(x.shape()),
                                ", expected a last dimension of ", options_.normalized_shape,
                                " (normalized_shape)");
  }
  template <class X, class Y>
  void run(const X& x, Y&& out) const {
    tessera::LayerNormOptions<T> lo{.eps = options_.eps};
    if (has_weight()) lo.weight = cview(weight.value);
    if (has_bias()) lo.bias = cview(bias.value);
    layer_norm_into(x, std::forward<Y>(out), lo);
  }
  bool has_weight() const noexcept { return options_.elementwise_affine; }
  bool has_bias() const noexcept { return options_.elementwise_affine && options_.bias; }
  LayerNormOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::LayerNorm)
