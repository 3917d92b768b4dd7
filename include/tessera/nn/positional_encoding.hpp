// tessera: position information added to a sequence of embeddings [batch, L, d].
//
// nn::SinusoidalPositionalEncoding, fixed (Vaswani et al. 2017, "Attention is all you need"):
//
//   PE[pos, 2i]     = sin(pos / 10000^(2i / d))
//   PE[pos, 2i + 1] = cos(pos / 10000^(2i / d))
//
// computed once in double for positions [0, max_len) and rounded to T. An odd d is handled: the
// last column, 2i = d - 1, is a sine. There are no parameters (an empty state dict).
//
// nn::LearnedPositionalEmbedding, learned (as BERT and GPT-2): a parameter `weight`
// [max_len, d] initialised N(0, 0.02). State dict key: "weight".
//
// Both add positions [start, start + L) to x: out[b, t, :] = x[b, t, :] + table[start + t, :].
// `start` (default 0) is for incremental decoding, where the new tokens follow `start` earlier
// ones. start + L > max_len throws ShapeError.
//
// Training: forward_train(x, start) returns forward's output and a Context (x's shape and start);
// backward(ctx, dy) returns dL/dx = dy (the table is added) and, for the learned table, adds
// dL/dweight[start + t, :] += sum over the batch of dy[b, t, :] to weight.grad.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::detail {

// Helpers of nn::SinusoidalPositionalEncoding and nn::LearnedPositionalEmbedding.

inline void check_positional_options(std::string_view fn, Index max_len, Index embed_dim) {
  if (max_len <= 0) raise<ValueError>(fn, "max_len is ", max_len, ", expected a value > 0");
  if (embed_dim <= 0) raise<ValueError>(fn, "embed_dim is ", embed_dim, ", expected a value > 0");
}

// Throws ValueError for start < 0 and ShapeError when the positions [start, start + L) do not fit
// in max_len, naming `arg` (of shape `shape`) and the range. start + L is never formed unless it
// fits an Index: start may be near INT64_MAX.
inline void check_positions(std::string_view fn, std::string_view arg, std::span<const Index> shape,
                            Index start, Index L, Index max_len) {
  if (start < 0) raise<ValueError>(fn, "argument 'start' is ", start, ", expected a value >= 0");
  if (L <= max_len - start) return;
  std::ostringstream range;
  Index end = 0;
  if (__builtin_add_overflow(start, L, &end))
    range << "positions [" << start << ", " << start << " + " << L << ")";
  else
    range << "positions [" << start << ", " << end << ")";
  raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(shape), ": ", range.str(),
                    " do not fit in max_len = ", max_len, " (start = ", start, ", L = ", L, ")");
}

// out = x + table[start : start + L] broadcast over the batch. x: [batch, L, d], table:
// [max_len, d].
template <class T, TensorLike X>
Tensor<T, 3> add_positional_table(std::string_view fn, const X& x, TensorMap<const T, 2> table,
                                  Index start) {
  static_assert(rank_v<X> == 3, "positional encodings take [batch, L, embed_dim] inputs");
  static_assert(std::is_same_v<scalar_t<X>, T>,
                "positional encoding: input scalar type differs from the module's");
  const auto xv = cview(x);
  const Index max_len = table.dim(0), d = table.dim(1);
  const Index B = xv.dim(0), L = xv.dim(1);
  if (xv.dim(2) != d)
    raise<ShapeError>(fn, "argument 'x' has shape ", shape_string(xv.shape()),
                      ", expected [batch, L, ", d, "] (embed_dim = ", d, ")");
  check_positions(fn, "x", xv.shape(), start, L, max_len);
  Tensor<T, 3> out(xv.shape(), uninitialized);
  const T* xp = xv.data();
  const T* pp = table.data() + start * d;
  T* op = out.data();
  parallel_for(B * L, std::max<Index>(1, Index{16384} / d), [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      const Index t = r % L;
      VectorMap<T>(op + r * d, d) =
          VectorMap<const T>(xp + r * d, d) + VectorMap<const T>(pp + t * d, d);
    }
  });
  return out;
}

// What the positional encodings' backward needs: the input's shape and the first position.
struct PositionalContext {
  Shape<3> shape{};  // x's: [batch, L, embed_dim]
  Index start = -1;  // -1: not from a forward_train
};

// Checks backward's arguments for a table of [max_len, d]: a context of a forward_train with
// positions that fit, and dy of the input's shape. Returns dy's view.
template <class T, TensorLike G>
TensorMap<const T, 3> check_positional_backward(std::string_view fn, const PositionalContext& ctx,
                                                const G& grad_output, Index max_len, Index d) {
  static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                "positional encodings' backward takes a [batch, L, embed_dim] gradient of the "
                "module's scalar type");
  if (ctx.start < 0 || ctx.shape[2] != d || ctx.shape[1] > max_len - ctx.start ||
      ctx.shape[0] < 0 || ctx.shape[1] < 0)
    raise<ValueError>(fn, "argument 'ctx' does not come from this module's forward_train");
  const auto gv = cview(grad_output);
  check_shape_equal(fn, "grad_output", gv.shape(), ctx.shape);
  return gv;
}

// A copy of dy: the gradient of x, which the table is added to.
template <class T>
Tensor<T, 3> positional_input_grad(TensorMap<const T, 3> gv) {
  Tensor<T, 3> dx(gv.shape(), uninitialized);
  std::copy_n(gv.data(), gv.size(), dx.data());
  return dx;
}

}  // namespace tessera::detail

namespace tessera::nn {

struct SinusoidalPositionalEncodingOptions {
  Index max_len = 0;    // positions available, > 0
  Index embed_dim = 0;  // d, > 0
};

struct LearnedPositionalEmbeddingOptions {
  Index max_len = 0;       // positions available, > 0
  Index embed_dim = 0;     // d, > 0
  std::uint64_t seed = 0;  // initialisation: N(0, 0.02)
};

template <class T>
class SinusoidalPositionalEncoding : public Module<SinusoidalPositionalEncoding<T>> {
 public:
  SinusoidalPositionalEncoding() = default;
  explicit SinusoidalPositionalEncoding(const SinusoidalPositionalEncodingOptions& o)
      : options_(o) {
    detail::check_positional_options("tessera::nn::SinusoidalPositionalEncoding", o.max_len,
                                     o.embed_dim);
    table_ = Tensor<T, 2>(Shape<2>{o.max_len, o.embed_dim}, uninitialized);
    const double d = static_cast<double>(o.embed_dim);
    for (Index j = 0; j < o.embed_dim; ++j) {
      // 1 / 10000^(2i / d) for the pair (2i, 2i + 1) that column j belongs to.
      const double freq = std::pow(10000.0, -static_cast<double>(j - j % 2) / d);
      for (Index pos = 0; pos < o.max_len; ++pos) {
        const double angle = static_cast<double>(pos) * freq;
        table_(pos, j) = static_cast<T>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
      }
    }
  }

  const SinusoidalPositionalEncodingOptions& options() const noexcept { return options_; }
  Index max_len() const noexcept { return options_.max_len; }
  Index embed_dim() const noexcept { return options_.embed_dim; }

  // The whole table PE: [max_len, embed_dim].
  const Tensor<T, 2>& table() const noexcept { return table_; }

  // x: [batch, L, embed_dim] -> x + PE[start : start + L].
  template <TensorLike X>
  Tensor<T, 3> forward(const X& x, Index start = 0) const {
    return detail::add_positional_table<T>("tessera::nn::SinusoidalPositionalEncoding::forward", x,
                                           cview(table_), start);
  }

  using Context = detail::PositionalContext;

  // The training forward: forward's output (bit for bit) and the context for backward.
  template <TensorLike X>
  Trained<Tensor<T, 3>, Context> forward_train(const X& x, Index start = 0) const {
    Trained<Tensor<T, 3>, Context> r;
    r.output = detail::add_positional_table<T>(
        "tessera::nn::SinusoidalPositionalEncoding::forward_train", x, cview(table_), start);
    r.context.shape = cview(x).shape();
    r.context.start = start;
    return r;
  }

  // Given forward_train's context and dL/dy [batch, L, embed_dim]: returns dL/dx = dL/dy (the
  // fixed table has no parameters). Throws ShapeError when grad_output's shape is not x's and
  // ValueError for a context whose positions this module does not have.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) const {
    return detail::positional_input_grad(detail::check_positional_backward<T>(
        "tessera::nn::SinusoidalPositionalEncoding::backward", ctx, grad_output, options_.max_len,
        options_.embed_dim));
  }

  // No parameters.
  template <class Self, class F>
  static void visit(Self&, F&&, const std::string&) {}

 private:
  SinusoidalPositionalEncodingOptions options_{};
  Tensor<T, 2> table_;
};

template <class T>
class LearnedPositionalEmbedding : public Module<LearnedPositionalEmbedding<T>> {
 public:
  Parameter<T, 2> weight;  // [max_len, embed_dim]

  LearnedPositionalEmbedding() = default;
  explicit LearnedPositionalEmbedding(const LearnedPositionalEmbeddingOptions& o) : options_(o) {
    detail::check_positional_options("tessera::nn::LearnedPositionalEmbedding", o.max_len,
                                     o.embed_dim);
    weight = Parameter<T, 2>(Shape<2>{o.max_len, o.embed_dim});
    detail::init_normal(weight, o.seed, 0.0, 0.02);
  }

  const LearnedPositionalEmbeddingOptions& options() const noexcept { return options_; }
  Index max_len() const noexcept { return options_.max_len; }
  Index embed_dim() const noexcept { return options_.embed_dim; }

  // x: [batch, L, embed_dim] -> x + weight[start : start + L].
  template <TensorLike X>
  Tensor<T, 3> forward(const X& x, Index start = 0) const {
    constexpr std::string_view fn = "tessera::nn::LearnedPositionalEmbedding::forward";
    check_parameters(fn);
    return detail::add_positional_table<T>(fn, x, cview(weight.value), start);
  }

  using Context = detail::PositionalContext;

  // The training forward: forward's output (bit for bit) and the context for backward.
  template <TensorLike X>
  Trained<Tensor<T, 3>, Context> forward_train(const X& x, Index start = 0) const {
    constexpr std::string_view fn = "tessera::nn::LearnedPositionalEmbedding::forward_train";
    check_parameters(fn);
    Trained<Tensor<T, 3>, Context> r;
    r.output = detail::add_positional_table<T>(fn, x, cview(weight.value), start);
    r.context.shape = cview(x).shape();
    r.context.start = start;
    return r;
  }

  // Given forward_train's context and dL/dy [batch, L, embed_dim]: adds
  // weight.grad[start + t, :] += sum_b dL/dy[b, t, :] (only the rows used) and returns
  // dL/dx = dL/dy. Throws ShapeError when grad_output's shape is not x's or the weight's shape
  // changed, ValueError for a context whose positions this module does not have.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) {
    constexpr std::string_view fn = "tessera::nn::LearnedPositionalEmbedding::backward";
    check_parameters(fn);
    const auto gv = detail::check_positional_backward<T>(fn, ctx, grad_output, options_.max_len,
                                                         options_.embed_dim);
    const Index B = ctx.shape[0], L = ctx.shape[1], d = options_.embed_dim;
    // rows [start, start + L) of the gradient [max_len, d] += sum over b of dy[b]: [L, d]
    auto gw = MatrixMap<T>(detail::grad_of(weight).data() + ctx.start * d, L, d);
    for (Index b = 0; b < B; ++b) gw += MatrixMap<const T>(gv.data() + b * L * d, L, d);
    return detail::positional_input_grad(gv);
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + "weight", unless weight is
  // [max_len, embed_dim].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_parameter(fn, prefix, "weight", weight, {options_.max_len, options_.embed_dim});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
  }

 private:
  LearnedPositionalEmbeddingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::SinusoidalPositionalEncoding)
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::LearnedPositionalEmbedding)
