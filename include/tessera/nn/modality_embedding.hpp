// tessera: nn::ModalityEmbedding, a learned vector per modality (token type) added to every token
// of that modality, so tokens of several modalities can share one sequence and still be told
// apart (ViLT's token_type_embeddings, BERT's segment embeddings; Kim et al. 2021, Devlin et al.
// 2019):
//
//   out[b, t] = x[b, t] + weight[modality]            one modality for the whole sequence
//   out[b, t] = x[b, t] + weight[modality_ids[b, t]]  a modality per token
//
// State dict key: weight [num_modalities, embed_dim]. Initialisation N(0, 0.02).
//
// Training: forward_train gives forward's output and a Context (the modality, or a copy of the
// ids); backward adds to weight.grad, row by row, the sum of the output gradient's tokens of each
// modality, and returns dL/dx = dL/dout (the addition's gradient).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct ModalityEmbeddingOptions {
  Index num_modalities = 0;  // > 0
  Index embed_dim = 0;       // > 0
  std::uint64_t seed = 0;
};

template <class T>
class ModalityEmbedding : public Module<ModalityEmbedding<T>> {
 public:
  Parameter<T, 2> weight;  // [num_modalities, embed_dim]

  ModalityEmbedding() = default;
  explicit ModalityEmbedding(const ModalityEmbeddingOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::ModalityEmbedding";
    if (o.num_modalities <= 0)
      detail::raise<ValueError>(fn, "num_modalities is ", o.num_modalities,
                                ", expected a value > 0");
    if (o.embed_dim <= 0)
      detail::raise<ValueError>(fn, "embed_dim is ", o.embed_dim, ", expected a value > 0");
    weight = Parameter<T, 2>(Shape<2>{o.num_modalities, o.embed_dim});
    detail::init_normal(weight, o.seed, 0.0, 0.02);
  }

  const ModalityEmbeddingOptions& options() const noexcept { return options_; }
  Index num_modalities() const noexcept { return options_.num_modalities; }
  Index embed_dim() const noexcept { return options_.embed_dim; }

  // x: [batch, L, embed_dim] -> x + weight[modality] on every token.
  template <TensorLike X>
  requires(rank_v<X> == 3) Tensor<T, 3> forward(const X& x, Index modality)
  const {
    constexpr std::string_view fn = "tessera::nn::ModalityEmbedding::forward";
    check_input(fn, x);
    check_modality(fn, modality);
    Tensor<T, 3> out(cview(x));
    out.as_matrix().rowwise() += weight.value.as_matrix().row(modality);
    return out;
  }

  // x: [batch, L, embed_dim], modality_ids: [batch, L] integers in [0, num_modalities)
  //   -> x + weight[modality_ids[b, t]] on token (b, t).
  template <TensorLike X, TensorLike I>
  requires(rank_v<X> == 3 && rank_v<I> == 2) Tensor<T, 3> forward(const X& x, const I& modality_ids)
  const {
    using Id = scalar_t<I>;
    static_assert(std::is_integral_v<Id> && !std::is_same_v<Id, bool>,
                  "nn::ModalityEmbedding::forward takes integer modality ids");
    constexpr std::string_view fn = "tessera::nn::ModalityEmbedding::forward";
    check_input(fn, x);
    check_ids(fn, x, modality_ids);
    const Id* ids = cview(modality_ids).data();
    Tensor<T, 3> out(cview(x));
    auto rows = out.as_matrix();
    for (Index i = 0; i < out.dim(0) * out.dim(1); ++i)
      rows.row(i) += weight.value.as_matrix().row(ids[i]);
    return out;
  }

  // What backward needs: x's shape and the modality of every token (one for the whole sequence,
  // or a copy of the ids).
  struct Context {
    Shape<3> shape{};                 // x's shape [batch, L, embed_dim]
    Index modality = -1;              // the one modality, or -1 with per-token ids
    std::vector<Index> modality_ids;  // [batch * L] with per-token ids
  };

  // The training forward: forward(x, modality)'s output, bit for bit, and the context.
  template <TensorLike X>
  requires(rank_v<X> == 3) Trained<Tensor<T, 3>, Context> forward_train(const X& x, Index modality)
  const {
    constexpr std::string_view fn = "tessera::nn::ModalityEmbedding::forward_train";
    check_input(fn, x);
    check_modality(fn, modality);
    Trained<Tensor<T, 3>, Context> r{Tensor<T, 3>(cview(x)), Context{x.shape(), modality, {}}};
    r.output.as_matrix().rowwise() += weight.value.as_matrix().row(modality);
    return r;
  }
  // The training forward of forward(x, modality_ids).
  template <TensorLike X, TensorLike I>
  requires(rank_v<X> == 3 &&
           rank_v<I> == 2) Trained<Tensor<T, 3>, Context> forward_train(const X& x,
                                                                        const I& modality_ids)
  const {
    using Id = scalar_t<I>;
    static_assert(std::is_integral_v<Id> && !std::is_same_v<Id, bool>,
                  "nn::ModalityEmbedding::forward_train takes integer modality ids");
    constexpr std::string_view fn = "tessera::nn::ModalityEmbedding::forward_train";
    check_input(fn, x);
    check_ids(fn, x, modality_ids);
    const Id* ids = cview(modality_ids).data();
    Trained<Tensor<T, 3>, Context> r{Tensor<T, 3>(cview(x)), Context{x.shape(), -1, {}}};
    const Index n = r.output.dim(0) * r.output.dim(1);
    r.context.modality_ids.assign(ids, ids + n);
    auto rows = r.output.as_matrix();
    for (Index i = 0; i < n; ++i) rows.row(i) += weight.value.as_matrix().row(ids[i]);
    return r;
  }

  // Given forward_train's context and dL/dout [batch, L, embed_dim]: adds to weight.grad row k
  // the sum of dL/dout over the tokens of modality k, and returns dL/dx (= dL/dout). Throws
  // ShapeError when grad_output's shape is not x's, ValueError for a context this module's
  // forward_train cannot have made.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "nn::ModalityEmbedding::backward takes a [batch, L, embed_dim] gradient of the "
                  "module's scalar type");
    constexpr std::string_view fn = "tessera::nn::ModalityEmbedding::backward";
    check_backward(fn, ctx, cview(grad_output).shape());
    Tensor<T, 3> dx(cview(grad_output));
    const auto g = dx.as_matrix();  // [batch * L, embed_dim]
    auto dw = detail::grad_of(weight).as_matrix();
    if (ctx.modality >= 0) {
      dw.row(ctx.modality) += g.colwise().sum();
    } else {
      for (Index i = 0; i < g.rows(); ++i) dw.row(ctx.modality_ids[i]) += g.row(i);
    }
    return dx;
  }

  // The checks of backward, under the name `fn` of the entry point the user called: the
  // parameter, a context this module's forward_train could have made (ValueError naming 'ctx'),
  // and a grad_output of x's shape (ShapeError).
  void check_backward(std::string_view fn, const Context& ctx, std::span<const Index> grad_shape,
                      std::string_view prefix = "") const {
    check_parameters(fn, prefix);
    const Index n = ctx.shape[0] * ctx.shape[1];
    const bool ids_ok =
        ctx.modality >= 0
            ? ctx.modality < options_.num_modalities && ctx.modality_ids.empty()
            : static_cast<Index>(ctx.modality_ids.size()) == n &&
                  std::all_of(ctx.modality_ids.begin(), ctx.modality_ids.end(),
                              [&](Index k) { return k >= 0 && k < options_.num_modalities; });
    if (ctx.shape[2] != options_.embed_dim || !ids_ok)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    detail::check_shape_equal(fn, "grad_output", grad_shape, ctx.shape);
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + "weight", unless weight is
  // [num_modalities, embed_dim].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_parameter(fn, prefix, "weight", weight,
                            {options_.num_modalities, options_.embed_dim});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
  }

 private:
  template <class X>
  void check_input(std::string_view fn, const X& x) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::ModalityEmbedding: input scalar type differs from the module's");
    check_parameters(fn);
    if (x.shape()[2] != options_.embed_dim)
      detail::raise<ShapeError>(fn, "argument 'x' has shape ", detail::shape_string(x.shape()),
                                ", expected [batch, L, ", options_.embed_dim,
                                "] (embed_dim = ", options_.embed_dim, ")");
  }
  void check_modality(std::string_view fn, Index modality) const {
    if (modality < 0 || modality >= options_.num_modalities)
      detail::raise<IndexError>(fn, "argument 'modality' is ", modality,
                                ", expected a value in [0, ", options_.num_modalities,
                                ") (num_modalities = ", options_.num_modalities, ")");
  }
  // modality_ids [batch, L] of x's batch and length, every id in [0, num_modalities).
  template <class X, class I>
  void check_ids(std::string_view fn, const X& x, const I& modality_ids) const {
    const Index expected[] = {x.shape()[0], x.shape()[1]};
    detail::check_shape_equal(fn, "modality_ids", modality_ids.shape(), expected);
    const auto* ids = cview(modality_ids).data();
    const Index n = expected[0] * expected[1];
    for (Index i = 0; i < n; ++i)
      if (std::cmp_less(ids[i], 0) || std::cmp_greater_equal(ids[i], options_.num_modalities))
        detail::raise<IndexError>(fn, "argument 'modality_ids' holds ", +ids[i], " at position [",
                                  i / expected[1], ", ", i % expected[1],
                                  "], expected a value in [0, ", options_.num_modalities, ")");
  }

  ModalityEmbeddingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::ModalityEmbedding)
