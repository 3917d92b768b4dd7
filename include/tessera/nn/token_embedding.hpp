// tessera: nn::TokenEmbedding, token ids to a sequence of embeddings with learned positions, as
// the text towers of CLIP (Radford et al. 2021) and BERT (Devlin et al. 2019):
//
//   out[b, t] = token_embedding.weight[ids[b, t]] + positional_embedding[start + t]
//   out = norm(out)                                   with layer_norm (BERT's embeddings.LayerNorm)
//
// State dict keys (CLIP's): token_embedding.weight [vocab_size, embed_dim],
// positional_embedding [max_len, embed_dim], norm.weight / norm.bias (with layer_norm).
// Initialisation: token_embedding N(0, 1) (torch.nn.Embedding), positions N(0, 0.02).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/embedding.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/positional_encoding.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct TokenEmbeddingOptions {
  Index vocab_size = 0;              // > 0
  Index max_len = 0;                 // positions available (CLIP's context_length), > 0
  Index embed_dim = 0;               // > 0
  std::optional<Index> padding_idx;  // token_embedding row initialised to zero
  bool layer_norm = false;           // LayerNorm after the sum
  double layer_norm_eps = 1e-5;
  std::uint64_t seed = 0;
};

template <class T>
class TokenEmbedding : public Module<TokenEmbedding<T>> {
 public:
  Embedding<T> token_embedding;          // weight [vocab_size, embed_dim]
  Parameter<T, 2> positional_embedding;  // [max_len, embed_dim]
  LayerNorm<T> norm;                     // used with layer_norm

  TokenEmbedding() = default;
  explicit TokenEmbedding(const TokenEmbeddingOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::TokenEmbedding";
    if (o.vocab_size <= 0)
      detail::raise<ValueError>(fn, "vocab_size is ", o.vocab_size, ", expected a value > 0");
    if (o.max_len <= 0)
      detail::raise<ValueError>(fn, "max_len is ", o.max_len, ", expected a value > 0");
    if (o.embed_dim <= 0)
      detail::raise<ValueError>(fn, "embed_dim is ", o.embed_dim, ", expected a value > 0");
    token_embedding = Embedding<T>({.num_embeddings = o.vocab_size,
                                    .embedding_dim = o.embed_dim,
                                    .padding_idx = o.padding_idx,
                                    .seed = o.seed});
    positional_embedding = Parameter<T, 2>(Shape<2>{o.max_len, o.embed_dim});
    detail::init_normal(positional_embedding, o.seed + 1, 0.0, 0.02);
    if (o.layer_norm)
      norm = LayerNorm<T>({.normalized_shape = o.embed_dim, .eps = o.layer_norm_eps});
  }

  const TokenEmbeddingOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.embed_dim; }
  Index max_len() const noexcept { return options_.max_len; }

  // ids: [batch, L] integers in [0, vocab_size) -> [batch, L, embed_dim], with the positions
  // [start, start + L) (start > 0 for tokens that follow `start` earlier ones).
  template <TensorLike I>
  requires(rank_v<I> == 2) Tensor<T, 3> forward(const I& ids, Index start = 0)
  const {
    constexpr std::string_view fn = "tessera::nn::TokenEmbedding::forward";
    check_parameters(fn);
    const Index L = ids.shape()[1];
    detail::check_positions(fn, "ids", ids.shape(), start, L, options_.max_len);
    // out: [batch, L, E]; an id out of range throws IndexError naming this function
    Tensor<T, 3> out = token_embedding.lookup(fn, ids);
    const auto pos = positional_embedding.value.as_matrix().middleRows(start, L);
    for (Index b = 0; b < out.dim(0); ++b) out[b].as_matrix() += pos;
    if (options_.layer_norm) norm.forward_into(out, out);
    return out;
  }

  // What backward needs: the ids [batch, L], the first position, and the norm's context.
  struct Context {
    Tensor<Index, 2> ids;
    Index start = 0;
    typename LayerNorm<T>::template Context<3> norm;
  };

  // The training forward: forward's embeddings [batch, L, embed_dim] and the context.
  template <TensorLike I>
  requires(rank_v<I> == 2) Trained<Tensor<T, 3>, Context> forward_train(const I& ids,
                                                                        Index start = 0)
  const {
    constexpr std::string_view fn = "tessera::nn::TokenEmbedding::forward_train";
    check_parameters(fn);
    const Index L = ids.shape()[1];
    detail::check_positions(fn, "ids", ids.shape(), start, L, options_.max_len);
    Trained<Tensor<T, 3>, Context> r;
    r.output = token_embedding.lookup(fn, ids);
    const auto pos = positional_embedding.value.as_matrix().middleRows(start, L);
    for (Index b = 0; b < r.output.dim(0); ++b) r.output[b].as_matrix() += pos;
    const auto iv = cview(ids);
    r.context.ids = Tensor<Index, 2>(iv.shape(), uninitialized);
    for (Index i = 0; i < iv.size(); ++i)
      r.context.ids.data()[i] = static_cast<Index>(iv.data()[i]);
    r.context.start = start;
    if (options_.layer_norm) {
      auto n = norm.forward_train(r.output);
      r.output = std::move(n.output);
      r.context.norm = std::move(n.context);
    }
    return r;
  }

  // Given forward_train's context and dL/dout [batch, L, embed_dim]: adds the gradients of the
  // rows of token_embedding.weight the ids read (none into padding_idx's row, as
  // torch.nn.Embedding), of the positions used, and of the norm. Ids have no gradient.
  template <TensorLike G>
  void backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "TokenEmbedding::backward takes a [batch, L, embed_dim] gradient");
    constexpr std::string_view fn = "tessera::nn::TokenEmbedding::backward";
    check_parameters(fn);
    const Index B = ctx.ids.dim(0), L = ctx.ids.dim(1), E = options_.embed_dim;
    const Index g_expected[] = {B, L, E};
    detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), g_expected);
    if (ctx.start < 0 || ctx.start + L > options_.max_len)
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    Tensor<T, 3> d;
    if (options_.layer_norm) {
      d = norm.backward(ctx.norm, grad_output);
    } else {
      d = Tensor<T, 3>(Shape<3>{B, L, E}, uninitialized);
      std::copy_n(cview(grad_output).data(), d.size(), d.data());
    }
    auto gpos = detail::grad_of(positional_embedding).as_matrix().middleRows(ctx.start, L);
    for (Index b = 0; b < B; ++b) gpos += d[b].as_matrix();
    auto gw = detail::grad_of(token_embedding.weight).as_matrix();
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < L; ++t) {
        const Index id = ctx.ids(b, t);
        if (id < 0 || id >= options_.vocab_size)
          detail::raise<ValueError>(fn, "argument 'ctx' holds id ", id, ", outside [0, ",
                                    options_.vocab_size, ")");
        if (const auto pad = token_embedding.options().padding_idx; pad && id == *pad) continue;
        gw.row(id) += d[b][t].as_vector().transpose();
      }
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // token_embedding.weight is [vocab_size, embed_dim], positional_embedding [max_len, embed_dim]
  // and (with layer_norm) norm.weight and norm.bias [embed_dim].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    token_embedding.check_parameters(fn, detail::ParameterPrefix(prefix, "token_embedding."));
    detail::check_parameter(fn, prefix, "positional_embedding", positional_embedding,
                            {options_.max_len, options_.embed_dim});
    if (options_.layer_norm) norm.check_parameters(fn, detail::ParameterPrefix(prefix, "norm."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    Embedding<T>::visit(self.token_embedding, f, prefix + "token_embedding.");
    f(prefix + "positional_embedding", self.positional_embedding);
    if (self.options_.layer_norm) LayerNorm<T>::visit(self.norm, f, prefix + "norm.");
  }

 private:
  TokenEmbeddingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::TokenEmbedding)
