// tessera: nn::Embedding, a lookup table of learned vectors, as torch.nn.Embedding.
//
//   out[..., :] = weight[ids[...], :]     weight: [num_embeddings, embedding_dim]
//
// ids of any rank R (integers: std::int64_t, Index, int...) give a tensor of rank R + 1. The
// weight is initialised N(0, 1), as PyTorch does; the row `padding_idx`, when given, starts at
// zero and, as in PyTorch, backward gives it no gradient. A negative padding_idx counts from the
// end, as in PyTorch, and options().padding_idx holds the resolved, non-negative row. There is no
// max_norm option (PyTorch's renormalises the rows looked up in place during the forward and does
// not differentiate through that), so backward is the plain scatter-add.
//
// State dict key: "weight".
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct EmbeddingOptions {
  Index num_embeddings = 0;  // rows of the table, > 0
  Index embedding_dim = 0;   // size of each vector, > 0
  std::optional<Index>
      padding_idx;         // row initialised to zero; in [-num_embeddings, num_embeddings)
  std::uint64_t seed = 0;  // initialisation: N(0, 1)
};

template <class T>
class Embedding : public Module<Embedding<T>> {
 public:
  Parameter<T, 2> weight;  // [num_embeddings, embedding_dim]

  Embedding() = default;
  explicit Embedding(const EmbeddingOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::Embedding";
    if (o.num_embeddings <= 0)
      detail::raise<ValueError>(fn, "num_embeddings is ", o.num_embeddings,
                                ", expected a value > 0");
    if (o.embedding_dim <= 0)
      detail::raise<ValueError>(fn, "embedding_dim is ", o.embedding_dim, ", expected a value > 0");
    if (o.padding_idx) {
      const Index p = *o.padding_idx;
      if (p < -o.num_embeddings || p >= o.num_embeddings)
        detail::raise<ValueError>(fn, "padding_idx is ", p, ", expected a value in [",
                                  -o.num_embeddings, ", ", o.num_embeddings,
                                  ") (num_embeddings = ", o.num_embeddings, ")");
      options_.padding_idx = p < 0 ? p + o.num_embeddings : p;
    }
    weight = Parameter<T, 2>(Shape<2>{o.num_embeddings, o.embedding_dim});
    detail::init_normal(weight, o.seed, 0.0, 1.0);
    if (options_.padding_idx && !detail::skip_init_flag())
      weight.value[*options_.padding_idx].setZero();
  }

  const EmbeddingOptions& options() const noexcept { return options_; }
  Index num_embeddings() const noexcept { return options_.num_embeddings; }
  Index embedding_dim() const noexcept { return options_.embedding_dim; }
  std::optional<Index> padding_idx() const noexcept { return options_.padding_idx; }

  // ids: any shape [...] of integers in [0, num_embeddings) -> [..., embedding_dim].
  // An id out of range throws IndexError naming the id, its position and num_embeddings.
  template <TensorLike I>
  Tensor<T, rank_v<I> + 1> forward(const I& ids) const {
    return lookup("tessera::nn::Embedding::forward", ids);
  }

  // What backward needs from forward_train: the ids (checked, as Index) and their shape.
  struct Context {
    std::vector<Index> ids;    // flattened, row-major
    std::vector<Index> shape;  // the shape of ids
  };

  // The training forward: forward's output (bit for bit) and the context for backward. Errors as
  // forward's, naming "tessera::nn::Embedding::forward_train".
  template <TensorLike I>
  Trained<Tensor<T, rank_v<I> + 1>, Context> forward_train(const I& ids) const {
    Trained<Tensor<T, rank_v<I> + 1>, Context> r;
    r.output = lookup("tessera::nn::Embedding::forward_train", ids);  // checks every id
    const auto iv = cview(ids);
    r.context.shape.assign(iv.shape().begin(), iv.shape().end());
    r.context.ids.resize(static_cast<std::size_t>(iv.size()));
    std::transform(iv.data(), iv.data() + iv.size(), r.context.ids.begin(),
                   [](auto id) { return static_cast<Index>(id); });
    return r;
  }

  // Given forward_train's context and dL/dout ([ids..., embedding_dim]): adds dL/dweight, the
  // scatter-add weight.grad[ids[n], :] += grad_output[n, :] (torch.nn.Embedding's backward with
  // sparse=False, scale_grad_by_freq=False), to weight.grad. The row padding_idx gets nothing.
  // Rows are added in the order of the ids, by one thread, so the result is deterministic. Token
  // ids have no gradient: nothing is returned. Throws ShapeError when grad_output's shape is not
  // the output's or the weight's shape changed, ValueError for a context of another module (an
  // id out of range for this one).
  template <TensorLike G>
  void backward(const Context& ctx, const G& grad_output) {
    static_assert(std::is_same_v<scalar_t<G>, T>,
                  "nn::Embedding::backward: gradient scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::Embedding::backward";
    check_parameters(fn);
    const Index N = options_.num_embeddings, D = options_.embedding_dim;
    Index n = 1;
    for (Index d : ctx.shape) n *= d;
    if (n != static_cast<Index>(ctx.ids.size()) ||
        std::any_of(ctx.ids.begin(), ctx.ids.end(), [&](Index id) { return id < 0 || id >= N; }))
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    const auto gv = cview(grad_output);
    std::vector<Index> expected = ctx.shape;
    expected.push_back(D);
    detail::check_shape_equal(fn, "grad_output", gv.shape(), expected);
    T* gw = detail::grad_of(weight).data();
    const T* g = gv.data();
    const Index pad = options_.padding_idx ? *options_.padding_idx : Index{-1};
    for (Index i = 0; i < n; ++i) {
      const Index id = ctx.ids[static_cast<std::size_t>(i)];
      if (id == pad) continue;
      VectorMap<T>(gw + id * D, D) += VectorMap<const T>(g + i * D, D);
    }
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + "weight", unless weight is
  // [num_embeddings, embedding_dim].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    detail::check_parameter(fn, prefix, "weight", weight,
                            {options_.num_embeddings, options_.embedding_dim});
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "weight", self.weight);
  }

 private:
  template <class>
  friend class TokenEmbedding;

  // forward, with the errors naming `fn` (TokenEmbedding's forward looks up through it).
  template <TensorLike I>
  Tensor<T, rank_v<I> + 1> lookup(std::string_view fn, const I& ids) const {
    using Id = scalar_t<I>;
    static_assert(std::is_integral_v<Id> && !std::is_same_v<Id, bool>,
                  "nn::Embedding::forward takes a tensor of integer ids (std::int64_t, Index...)");
    constexpr int R = rank_v<I>;
    check_parameters(fn);
    const auto iv = cview(ids);
    const Index n = iv.size(), N = options_.num_embeddings, D = options_.embedding_dim;
    const Id* p = iv.data();
    // Check every id before writing anything: a bad id is an error, never a partial result.
    for (Index i = 0; i < n; ++i)
      if (std::cmp_less(p[i], 0) || std::cmp_greater_equal(p[i], N))
        bad_id(fn, iv.shape(), i, p[i]);
    Shape<R + 1> s;
    std::copy(iv.shape().begin(), iv.shape().end(), s.begin());
    s[R] = D;
    Tensor<T, R + 1> out(s, uninitialized);
    const T* w = weight.value.data();
    T* o = out.data();
    parallel_for(n, std::max<Index>(1, Index{16384} / D), [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) std::copy_n(w + static_cast<Index>(p[r]) * D, D, o + r * D);
    });
    return out;
  }

  template <std::size_t R, class Id>
  [[noreturn]] void bad_id(std::string_view fn, const std::array<Index, R>& shape, Index flat,
                           Id id) const {
    // Position as a multi-index into ids, e.g. [1, 2].
    std::array<Index, R> pos{};
    for (std::size_t a = R; a-- > 0;) {
      pos[a] = flat % shape[a];
      flat /= shape[a];
    }
    std::ostringstream os;
    os << +id;
    detail::raise<IndexError>(fn, "argument 'ids' holds id ", os.str(), " at position ",
                              detail::shape_string(pos), ", expected an id in [0, ",
                              options_.num_embeddings,
                              ") (num_embeddings = ", options_.num_embeddings, ")");
  }

  EmbeddingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::Embedding)
