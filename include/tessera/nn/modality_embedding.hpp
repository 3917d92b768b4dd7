// tessera: nn::ModalityEmbedding, a learned vector per modality (token type) added to every token
// of that modality, so tokens of several modalities can share one sequence and still be told
// apart (ViLT's token_type_embeddings, BERT's segment embeddings; Kim et al. 2021, Devlin et al.
// 2019):
//
//   out[b, t] = x[b, t] + weight[modality]            one modality for the whole sequence
//   out[b, t] = x[b, t] + weight[modality_ids[b, t]]  a modality per token
//
// State dict key: weight [num_modalities, embed_dim]. Initialisation N(0, 0.02).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/module.hpp"

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
    if (modality < 0 || modality >= options_.num_modalities)
      detail::raise<IndexError>(fn, "argument 'modality' is ", modality,
                                ", expected a value in [0, ", options_.num_modalities,
                                ") (num_modalities = ", options_.num_modalities, ")");
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
    const Index expected[] = {x.shape()[0], x.shape()[1]};
    detail::check_shape_equal(fn, "modality_ids", modality_ids.shape(), expected);
    const auto idv = cview(modality_ids);
    const Id* ids = idv.data();
    const Index n = expected[0] * expected[1];
    for (Index i = 0; i < n; ++i)
      if (std::cmp_less(ids[i], 0) || std::cmp_greater_equal(ids[i], options_.num_modalities))
        detail::raise<IndexError>(fn, "argument 'modality_ids' holds ", +ids[i], " at position [",
                                  i / expected[1], ", ", i % expected[1],
                                  "], expected a value in [0, ", options_.num_modalities, ")");
    Tensor<T, 3> out(cview(x));
    auto rows = out.as_matrix();
    for (Index i = 0; i < n; ++i) rows.row(i) += weight.value.as_matrix().row(ids[i]);
    return out;
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

  ModalityEmbeddingOptions options_{};
};

}  // namespace tessera::nn
