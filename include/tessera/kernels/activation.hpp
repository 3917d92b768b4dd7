// tessera: element-wise activations, vectorised through Eigen's array expressions.
//
//   relu(x)       = max(x, 0)
//   gelu(x)       = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))        (Hendrycks & Gimpel 2016)
//   gelu_tanh(x)  = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (PyTorch approximate='tanh')
//   silu(x)       = x * sigmoid(x)                                   (Elfwing et al. 2018)
//   tanh(x)
//   quick_gelu(x) = x * sigmoid(1.702 x)   (Hendrycks & Gimpel 2016, section 2; the activation of
//                   OpenAI's CLIP checkpoints, open_clip's QuickGELU)
//
// Every function has a returning form, f(x), and an `_into(x, out)` form that writes into a
// tensor of the same shape (which may be x itself).
#pragma once

#include <algorithm>
#include <string_view>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>

#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/dispatch.hpp"

namespace tessera {

// New enumerators go at the end: the values of the others stay what they were.
enum class Activation { identity, relu, gelu, gelu_tanh, silu, tanh, quick_gelu };

inline std::string_view to_string(Activation a) {
  switch (a) {
    case Activation::identity:
      return "identity";
    case Activation::relu:
      return "relu";
    case Activation::gelu:
      return "gelu";
    case Activation::gelu_tanh:
      return "gelu_tanh";
    case Activation::silu:
      return "silu";
    case Activation::tanh:
      return "tanh";
    case Activation::quick_gelu:
      return "quick_gelu";
  }
  return "unknown";
}

namespace detail {

inline constexpr Index kElementwiseGrain = 1 << 15;

inline std::string_view activation_fn_name(Activation a) {
  switch (a) {
    case Activation::identity:
      return "tessera::identity";
    case Activation::relu:
      return "tessera::relu";
    case Activation::gelu:
      return "tessera::gelu";
    case Activation::gelu_tanh:
      return "tessera::gelu_tanh";
    case Activation::silu:
      return "tessera::silu";
    case Activation::tanh:
      return "tessera::tanh";
    case Activation::quick_gelu:
      return "tessera::quick_gelu";
  }
  return "tessera::activate";
}

inline bool is_valid(Activation a) {
  switch (a) {
    case Activation::identity:
    case Activation::relu:
    case Activation::gelu:
    case Activation::gelu_tanh:
    case Activation::silu:
    case Activation::tanh:
    case Activation::quick_gelu:
      return true;
  }
  return false;
}

// Throws ValueError unless `act` is one of Activation's enumerators (an Activation(42) cast from
// an integer would otherwise leave the output unwritten or apply the identity).
inline void check_activation(std::string_view fn, std::string_view arg, Activation act) {
  if (!is_valid(act))
    raise<ValueError>(fn, "argument '", arg, "' is Activation(",
                      static_cast<std::underlying_type_t<Activation>>(act),
                      "), expected one of identity, relu, gelu, gelu_tanh, silu, tanh, quick_gelu");
}

// out = act(x) over n contiguous elements; out may alias x. act must be valid (check_activation).
template <class T>
void activate_impl(Activation act, const T* x, T* out, Index n) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> a(x, n);
  Eigen::Map<Arr> y(out, n);
  switch (act) {
    case Activation::identity:
      if (out != x) y = a;
      break;
    case Activation::relu:
      y = a.max(T(0));
      break;
    case Activation::gelu:
      y = T(0.5) * a * (T(1) + (a * T(0.70710678118654752440)).erf());
      break;
    case Activation::gelu_tanh:
      y = T(0.5) * a * (T(1) + (T(0.79788456080286535588) * (a + T(0.044715) * a.cube())).tanh());
      break;
    case Activation::silu:
      y = a * a.logistic();
      break;
    case Activation::tanh:
      y = a.tanh();
      break;
    case Activation::quick_gelu:
      y = a * (a * T(1.702)).logistic();
      break;
  }
}

TESSERA_BEGIN_MODE_NAMESPACE
// activate_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void activate(Activation act, const T* x, T* out, Index n) {
  if constexpr (kDispatched<T>)
    kernels<T>().activate(act, x, out, n);
  else
    activate_impl(act, x, out, n);
}
TESSERA_END_MODE_NAMESPACE

// dx = dy * act'(x) over n contiguous elements (x: the activation's input); dx may alias dy.
// The derivatives are PyTorch's backward formulas (torch/csrc/autograd/FunctionsManual.cpp,
// aten GeluBackward): relu' is 0 at x = 0 and where x is NaN the gradient is dy, as
// threshold_backward gives (the forward's output is NaN there, so the loss is NaN already).
template <class T>
void activate_backward_impl(Activation act, const T* x, const T* dy, T* dx, Index n) {
  using Arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  Eigen::Map<const Arr> a(x, n), g(dy, n);
  Eigen::Map<Arr> out(dx, n);
  switch (act) {
    case Activation::identity:
      if (dx != dy) out = g;
      break;
    case Activation::relu:
      out = (a <= T(0)).select(T(0), g);
      break;
    case Activation::gelu: {
      // d/dx x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
      const T inv_sqrt2 = T(0.70710678118654752440), inv_sqrt_2pi = T(0.39894228040143267794);
      out = g * (T(0.5) * (T(1) + (a * inv_sqrt2).erf()) +
                 a * inv_sqrt_2pi * (T(-0.5) * a.square()).exp());
      break;
    }
    case Activation::gelu_tanh: {
      // u = sqrt(2/pi) (x + 0.044715 x^3); d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u'
      const T k = T(0.79788456080286535588), c = T(0.044715);
      const Arr t = (k * (a + c * a.cube())).tanh();
      out = g * (T(0.5) * (T(1) + t) +
                 T(0.5) * a * (T(1) - t.square()) * k * (T(1) + T(3) * c * a.square()));
      break;
    }
    case Activation::silu: {
      const Arr s = a.logistic();
      out = g * s * (T(1) + a * (T(1) - s));
      break;
    }
    case Activation::tanh: {
      const Arr t = a.tanh();
      out = g * (T(1) - t.square());
      break;
    }
    case Activation::quick_gelu: {
      const Arr s = (a * T(1.702)).logistic();
      out = g * (s + T(1.702) * a * s * (T(1) - s));
      break;
    }
  }
}

TESSERA_BEGIN_MODE_NAMESPACE
// activate_backward_impl, or in the compiled mode its build for the level chosen at run time.
template <class T>
void activate_backward(Activation act, const T* x, const T* dy, T* dx, Index n) {
  if constexpr (kDispatched<T>)
    kernels<T>().activate_backward(act, x, dy, dx, n);
  else
    activate_backward_impl(act, x, dy, dx, n);
}
TESSERA_END_MODE_NAMESPACE

}  // namespace detail

// out = act(x), element-wise; out has x's shape and may be x.
template <TensorLike X, class Y>
void activate_into(Activation act, const X& x, Y&& out) {
  static_assert(std::is_same_v<scalar_t<X>, scalar_t<Y>>, "input and output scalar types differ");
  static_assert(std::is_floating_point_v<scalar_t<X>>, "activations need a floating-point tensor");
  detail::check_activation("tessera::activate", "act", act);
  const std::string_view fn = detail::activation_fn_name(act);
  detail::check_shape_equal(fn, "out", out.shape(), x.shape());
  const auto* xp = x.data();
  auto* yp = out.data();
  const auto bytes = static_cast<std::size_t>(cview(x).size()) * sizeof(scalar_t<X>);
  // Element-wise, so out may be x itself; a partial overlap would read elements already written.
  if (detail::ranges_partially_overlap(xp, bytes, yp, bytes))
    detail::raise<ValueError>(fn,
                              "argument 'out' partially overlaps argument 'x'; it must be x "
                              "itself or not overlap it");
  // Split into 64-element blocks so that every thread count cuts the data at the same packet
  // boundaries: the vector and scalar-tail code paths then see the same elements every time.
  constexpr Index kBlock = 64;
  const Index n = cview(x).size();
  parallel_for((n + kBlock - 1) / kBlock, detail::kElementwiseGrain / kBlock,
               [&](Index b, Index e) {
                 const Index begin = b * kBlock, end = std::min(n, e * kBlock);
                 detail::activate(act, xp + begin, yp + begin, end - begin);
               });
}

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> activate(Activation act, const X& x) {
  Tensor<scalar_t<X>, rank_v<X>> out(x.shape(), uninitialized);
  activate_into(act, x, out);
  return out;
}

// The activation's backward: dx = dy * act'(x), element-wise, with x the activation's INPUT (its
// pre-activation), dy the gradient of the loss with respect to act(x); x, dy and dx of one
// shape. dx may be dy itself (not x). Throws ShapeError (dy or dx of another shape) and
// ValueError (an invalid act, or dx partially overlapping dy or overlapping x), naming
// tessera::activation_backward.
template <TensorLike X, TensorLike G, class Y>
void activation_backward_into(Activation act, const X& x, const G& dy, Y&& dx) {
  static_assert(
      std::is_same_v<scalar_t<X>, scalar_t<G>> && std::is_same_v<scalar_t<X>, scalar_t<Y>>,
      "activation_backward: x, dy and dx scalar types differ");
  static_assert(std::is_floating_point_v<scalar_t<X>>, "activations need a floating-point tensor");
  using T = scalar_t<X>;
  constexpr std::string_view fn = "tessera::activation_backward";
  detail::check_activation(fn, "act", act);
  const auto xv = cview(x);
  const auto gv = cview(dy);
  auto ov = mview(dx);
  detail::check_shape_equal(fn, "dy", gv.shape(), xv.shape());
  detail::check_shape_equal(fn, "dx", ov.shape(), xv.shape());
  const auto bytes = static_cast<std::size_t>(xv.size()) * sizeof(T);
  if (detail::ranges_partially_overlap(gv.data(), bytes, ov.data(), bytes))
    detail::raise<ValueError>(fn, "argument 'dx' partially overlaps argument 'dy'");
  if (ov.size() > 0 && detail::ranges_overlap(xv.data(), bytes, ov.data(), bytes))
    detail::raise<ValueError>(fn, "argument 'dx' overlaps argument 'x', which is read after it");
  constexpr Index kBlock = 64;
  const Index n = xv.size();
  parallel_for((n + kBlock - 1) / kBlock, detail::kElementwiseGrain / kBlock,
               [&](Index b, Index e) {
                 const Index begin = b * kBlock, end = std::min(n, e * kBlock);
                 detail::activate_backward(act, xv.data() + begin, gv.data() + begin,
                                           ov.data() + begin, end - begin);
               });
}

template <TensorLike X, TensorLike G>
Tensor<scalar_t<X>, rank_v<X>> activation_backward(Activation act, const X& x, const G& dy) {
  Tensor<scalar_t<X>, rank_v<X>> dx(x.shape(), uninitialized);
  activation_backward_into(act, x, dy, dx);
  return dx;
}

#define TESSERA_DEFINE_ACTIVATION(name, act)                 \
  template <TensorLike X>                                    \
  Tensor<scalar_t<X>, rank_v<X>> name(const X& x) {          \
    return activate(Activation::act, x);                     \
  }                                                          \
  template <TensorLike X, class Y>                           \
  void name##_into(const X& x, Y&& out) {                    \
    activate_into(Activation::act, x, std::forward<Y>(out)); \
  }

TESSERA_DEFINE_ACTIVATION(relu, relu)
TESSERA_DEFINE_ACTIVATION(gelu, gelu)
TESSERA_DEFINE_ACTIVATION(gelu_tanh, gelu_tanh)
TESSERA_DEFINE_ACTIVATION(silu, silu)
TESSERA_DEFINE_ACTIVATION(tanh, tanh)
TESSERA_DEFINE_ACTIVATION(quick_gelu, quick_gelu)
#undef TESSERA_DEFINE_ACTIVATION

}  // namespace tessera
