// tessera: nn::Linear, y = x W^T + b, as torch.nn.Linear (weight [out_features, in_features]).
//
// For inference, prepack() copies the weight once into the GEMM's packed layout, and every later
// forward reads that copy instead of re-packing the weight. The copy is used only while it is
// current: load_state_dict, a new `weight.value` tensor, or a copy of the module (whose weight is
// another buffer) make forward fall back to the unpacked weight, correct but slower, until
// prepack() is called again. Writes into the elements of `weight.value` itself are not seen:
// call prepack() again after them (or unprepack() to drop the copy).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::detail {

// Throws ValueError unless `act` is one of Activation's enumerators (kernels' is_valid): an enum
// holds any value of its underlying type, and Activation(42) must not run as the identity. `what`
// names it as the user wrote it: "argument 'act'", or "activation" for an option.
inline void check_activation_enum(std::string_view fn, std::string_view what, Activation act) {
  if (!is_valid(act))
    raise<ValueError>(fn, what, " is Activation(", static_cast<long long>(act),
                      "), expected identity, relu, gelu, gelu_tanh, silu, tanh or quick_gelu");
}

}  // namespace tessera::detail

namespace tessera::nn {

struct LinearOptions {
  Index in_features = 0;
  Index out_features = 0;
  bool bias = true;
  std::uint64_t seed = 0;  // initialisation: U(-1/sqrt(in), 1/sqrt(in)), PyTorch's bounds
};

template <class T>
class Linear : public Module<Linear<T>> {
 public:
  Parameter<T, 2> weight;  // [out_features, in_features]
  Parameter<T, 1> bias;    // [out_features], empty when options.bias is false

  Linear() = default;
  explicit Linear(const LinearOptions& o) : options_(o) {
    if (o.in_features < 0 || o.out_features < 0)
      detail::raise<ValueError>("tessera::nn::Linear", "in_features and out_features are ",
                                o.in_features, " and ", o.out_features, ", expected values >= 0");
    weight = Parameter<T, 2>(Shape<2>{o.out_features, o.in_features});
    const double bound =
        o.in_features > 0 ? 1.0 / std::sqrt(static_cast<double>(o.in_features)) : 0.0;
    if (bound > 0) detail::init_uniform(weight, o.seed, -bound, bound);
    if (o.bias) {
      bias = Parameter<T, 1>(Shape<1>{o.out_features});
      if (bound > 0) detail::init_uniform(bias, o.seed ^ 0x9e3779b97f4a7c15ull, -bound, bound);
    }
  }

  const LinearOptions& options() const noexcept { return options_; }
  Index in_features() const noexcept { return options_.in_features; }
  Index out_features() const noexcept { return options_.out_features; }

  // x: [..., in_features] -> [..., out_features]
  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x) const {
    return forward(x, Activation::identity);
  }
  // act(x W^T + b) (+ residual, [rows, out_features]), the activation and the addition applied to
  // each output tile inside the product.
  template <TensorLike X>
  Tensor<T, rank_v<X>> forward(const X& x, Activation act,
                               std::optional<TensorMap<const T, 2>> residual = {}) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::Linear: input scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::Linear::forward";
    check_input(fn, x);
    Shape<rank_v<X>> s = x.shape();
    s[rank_v<X> - 1] = options_.out_features;
    Tensor<T, rank_v<X>> out(s, uninitialized);
    run(fn, x, out, act, residual);
    return out;
  }
  template <TensorLike X, class Y>
  void forward_into(const X& x, Y&& out, Activation act = Activation::identity,
                    std::optional<TensorMap<const T, 2>> residual = {}) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::Linear: input scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::Linear::forward_into";
    check_input(fn, x);
    Shape<rank_v<X>> expected = x.shape();
    expected[rank_v<X> - 1] = options_.out_features;
    detail::check_shape_equal(fn, "out", mview(out).shape(), expected);
    run(fn, x, std::forward<Y>(out), act, residual);
  }

  // What backward needs from forward_train: the input flattened to [rows, in_features], its
  // leading dimensions, and with an activation the activation's input z = x W^T + b.
  struct Context {
    Tensor<T, 2> input;           // [rows, in_features]
    std::vector<Index> shape;     // x's shape
    Tensor<T, 2> pre_activation;  // [rows, out_features]; empty for the identity
    Activation activation = Activation::identity;
    std::uint64_t weight_version = 0;  // weight.version at the forward (backward checks it)
  };

  // The training forward: act(x W^T + b) as forward computes it (the activation applied after the
  // product, not inside its tiles, so the last bit may differ), and the context for backward.
  template <TensorLike X>
  Trained<Tensor<T, rank_v<X>>, Context> forward_train(
      const X& x, Activation act = Activation::identity) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::Linear: input scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::Linear::forward_train";
    check_input(fn, x);
    detail::check_activation_enum(fn, "argument 'act'", act);
    const auto xv = cview(x);
    Trained<Tensor<T, rank_v<X>>, Context> r;
    r.context.shape.assign(xv.shape().begin(), xv.shape().end());
    const Index rows = detail::checked_shape_size(
        std::span<const Index>(xv.shape().data(), rank_v<X> - 1), fn, "argument 'x'");
    r.context.input = Tensor<T, 2>(Shape<2>{rows, options_.in_features}, uninitialized);
    std::copy_n(xv.data(), xv.size(), r.context.input.data());
    r.context.activation = act;
    r.context.weight_version = weight.version;
    Shape<rank_v<X>> s = xv.shape();
    s[rank_v<X> - 1] = options_.out_features;
    r.output = Tensor<T, rank_v<X>>(s, uninitialized);
    // Always the weight itself, never a packed copy: training changes the weight every step, and
    // backward multiplies by these same values.
    const auto out2 = r.output.template reshape<2>({rows, options_.out_features});
    if (act == Activation::identity) {
      linear_into(r.context.input, weight.value, out2, bias_options());
    } else {
      r.context.pre_activation = Tensor<T, 2>(Shape<2>{rows, options_.out_features}, uninitialized);
      linear_into(r.context.input, weight.value, r.context.pre_activation, bias_options());
      activate_into(act, r.context.pre_activation, out2);
    }
    return r;
  }

  // Given forward_train's context and dL/dy (the output's shape): adds dL/dW = dz^T x and
  // dL/db = sum over rows of dz to weight.grad and bias.grad (dz = dL/dy * act'(z)), and returns
  // dL/dx = dz W in x's shape. Throws ShapeError when grad_output's shape is not the output's,
  // or a parameter's shape changed since the forward.
  template <TensorLike G>
  Tensor<T, rank_v<G>> backward(const Context& ctx, const G& grad_output) {
    static_assert(std::is_same_v<scalar_t<G>, T>,
                  "nn::Linear::backward: gradient scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::Linear::backward";
    const auto gv = cview(grad_output);
    check_backward(fn, ctx, gv.shape());
    const Index rows = ctx.input.dim(0);
    const auto g2 = TensorMap<const T, 2>(gv.data(), {rows, options_.out_features});
    Tensor<T, 2> dz_buf;
    TensorMap<const T, 2> dz = g2;
    if (ctx.activation != Activation::identity) {
      dz_buf = activation_backward(ctx.activation, ctx.pre_activation, g2);
      dz = cview(dz_buf);
    }
    // dW [out, in] += dz^T [out, rows] x [rows, in]
    matmul_into(dz, ctx.input, detail::grad_of(weight), {.transpose_a = true, .accumulate = true});
    if (options_.bias) {
      auto db = detail::grad_of(bias).as_vector();
      for (Index r = 0; r < rows; ++r) db += dz.as_matrix().row(r).transpose();
    }
    Shape<rank_v<G>> s = gv.shape();
    s[rank_v<G> - 1] = options_.in_features;
    Tensor<T, rank_v<G>> dx(s, uninitialized);
    // dx [rows, in] = dz [rows, out] x W [out, in]
    matmul_into(dz, weight.value, dx.template reshape<2>({rows, options_.in_features}));
    return dx;
  }

  // The checks of backward, under the name of the entry point `fn` the user called: the
  // parameters' shapes, a context from a forward_train of this module's sizes, and a
  // grad_output of the output's shape (ShapeError, ValueError).
  void check_backward(std::string_view fn, const Context& ctx, std::span<const Index> grad_shape,
                      std::string_view prefix = "") const {
    check_parameters(fn, prefix);
    std::vector<Index> expected = ctx.shape;
    if (expected.empty() || ctx.input.dim(1) != options_.in_features)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    expected.back() = options_.out_features;
    detail::check_shape_equal(fn, "grad_output", grad_shape, expected);
    detail::check_unchanged_since_forward(fn, detail::ParameterPrefix(prefix, "weight"), weight,
                                          ctx.weight_version);
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its name, unless weight is
  // [out_features, in_features] and bias (with options.bias) [out_features]. Every entry point
  // runs it; modules that hold a Linear run it under their own name and path.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_parameter(fn, prefix, "weight", weight,
                            {options_.out_features, options_.in_features});
    if (options_.bias) detail::check_parameter(fn, prefix, "bias", bias, {options_.out_features});
  }

  // Packs the weight for inference (see the top of this file); unprepack() drops the packed copy.
  void prepack() {
    check_parameters("tessera::nn::Linear::prepack");
    packed_ = std::make_shared<const PackedMatrix<T>>(PackedMatrix<T>::from_weight(weight.value));
    packed_from_ = detail::PackStamp::of(weight);
  }
  void unprepack() noexcept {
    packed_.reset();
    packed_from_ = {};
  }
  // Whether forward reads a packed copy that is current (see the top of this file).
  bool is_prepacked() const noexcept { return packed_ != nullptr && packed_from_.matches(weight); }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
    if (self.options_.bias) f(prefix + "bias", self.bias);
  }

 private:
  // The checks of every entry point: the parameters, then x's last dimension.
  template <class X>
  void check_input(std::string_view fn, const X& x) const {
    static_assert(rank_v<X> >= 1, "nn::Linear takes an input of rank >= 1, [..., in_features]");
    check_parameters(fn);
    if (x.shape()[rank_v<X> - 1] != options_.in_features)
      detail::raise<ShapeError>(fn, "argument 'x' has shape ", detail::shape_string(x.shape()),
                                ", expected a last dimension of ", options_.in_features,
                                " (in_features)");
  }
  // act(x W^T + b) + residual into out, whose shape the caller has checked.
  template <class X, class Y>
  void run(std::string_view fn, const X& x, Y&& out, Activation act,
           std::optional<TensorMap<const T, 2>> residual) const {
    detail::check_activation_enum(fn, "argument 'act'", act);
    if (residual) {
      // rows: x's leading dimensions flattened (checked: a TensorLike's shape need not fit).
      const Index rows = detail::checked_shape_size(
          std::span<const Index>(x.shape().data(), rank_v<X> - 1), fn, "argument 'x'");
      const Index expected[] = {rows, options_.out_features};
      detail::check_shape_equal(fn, "residual", residual->shape(), expected);
    }
    auto lo = bias_options();
    lo.activation = act;
    lo.residual = residual;
    if (is_prepacked())
      linear_into(x, *packed_, std::forward<Y>(out), lo);
    else
      linear_into(x, weight.value, std::forward<Y>(out), lo);
  }
  tessera::LinearOptions<T> bias_options() const {
    tessera::LinearOptions<T> lo;
    if (options_.bias) lo.bias = cview(bias.value);
    return lo;
  }
  LinearOptions options_{};
  std::shared_ptr<const PackedMatrix<T>> packed_;
  detail::PackStamp packed_from_;  // the weight the packed copy was made from
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::Linear)
