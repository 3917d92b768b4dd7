// tessera: what a training forward returns — the output and an explicit saved context.
//
// Every differentiable module offers, beside its const forward,
//
//   auto [y, ctx] = module.forward_train(x);   // const and thread-safe, as forward
//   auto dx = module.backward(ctx, dy);        // dL/dx returned; dL/dparam ADDED to param.grad
//
// There is no tape: the context is a plain value that owns what backward needs (the inputs,
// saved statistics), so a forward may be kept, moved, or dropped, and several forwards of one
// module may be in flight at once. backward adds into Parameter::grad (allocating a zero gradient
// first where there is none), so a module used twice in one graph accumulates both uses, as
// PyTorch's autograd does; zero the gradients (Module::zero_grad) before each step. backward never
// changes the context: it may be called more than once.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/parameter.hpp"

namespace tessera::nn {

// The result of forward_train: the output, as forward returns it, and the context backward takes.
template <class Output, class Context>
struct Trained {
  Output output;
  Context context;
};

}  // namespace tessera::nn

namespace tessera::detail {

// The parameter's gradient, allocated and zeroed first if it has none (or one of another shape).
template <class T, int R>
Tensor<T, R>& grad_of(nn::Parameter<T, R>& p) {
  if (!p.has_grad()) p.zero_grad();
  return p.grad;
}

// Throws ValueError, naming `fn` and the parameter, unless `p` is at the version a training
// forward saw: backward reads the weights, and an optimizer step or a load between the two would
// give the gradients of weights the forward never used (PyTorch refuses the same with "modified
// by an inplace operation").
template <class T, int R>
void check_unchanged_since_forward(std::string_view fn, std::string_view name,
                                   const nn::Parameter<T, R>& p, std::uint64_t version) {
  if (p.version != version)
    raise<ValueError>(fn, "parameter '", name, "' changed since forward_train (version ", version,
                      " then, ", p.version,
                      " now: an optimizer step or a load came between them); run forward_train "
                      "again with the current weights");
}

// a += b, element-wise, for tensors of one shape: the skip connections' gradients.
template <class T, int R>
void add_into(Tensor<T, R>& a, const Tensor<T, R>& b) {
  a.as_array() += b.as_array();
}

// query + key + value of an attention's input gradients: the gradient of one tensor that was the
// attention's query, key and value (self-attention).
template <class Grads>
auto self_attention_grad(Grads&& g) {
  add_into(g.query, g.key);
  add_into(g.query, g.value);
  return std::move(g.query);
}

}  // namespace tessera::detail
