// tessera::contrastive::siglip_loss: SigLIP's pairwise sigmoid loss (Zhai, Mustafa, Kolesnikov &
// Beyer 2023, Sigmoid Loss for Language Image Pre-Training), with its gradients, and
// LogitScaleBias, the module that holds its learnable scale and bias.
//
//   a [N, D], b [N, D], row i of each a matching pair; t = logit_scale (the log of the scale),
//   bias = logit_bias;
//   z_ij = exp(t) a_i . b_j + bias, label_ij = +1 if i == j else -1;
//   loss = -(1/N) sum_ij log sigmoid(label_ij z_ij)
//   Reduction::mean divides by N, the batch size, as SigLIP does (not by the N^2 pairs);
//   Reduction::sum leaves the sum over all N^2 pairs.
//   -log sigmoid(x) = softplus(-x) = max(-x, 0) + log1p(exp(-|x|)): no overflow for any x.
//
//   tessera::contrastive::LogitScaleBias<float> lsb;           // t = log 10, bias = -10
//   auto r = tessera::contrastive::siglip_loss(img, txt, lsb);
//   r.loss; r.grad_a; r.grad_b; r.grad_logit_scale; r.grad_logit_bias;
//   lsb.accumulate_grad(r);
//
// Every pair's term is independent of the others, so one sweep over block x block tiles of
// logits gives the loss and all gradients (three N x N x D products, as the materialised path,
// `.materialized = true`, which builds the full N x N logits).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "tessera/contrastive/common.hpp"
#include "tessera/contrastive/dispatch.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::contrastive {

struct SigLipLossOptions {
  Reduction reduction = Reduction::mean;  // mean divides by N (SigLIP), sum leaves the N^2 terms
  Index block_size = kDefaultBlockSize;   // rows and columns of a tile of logits
  bool materialized = false;              // build the full N x N logits instead
};

template <class T>
struct SigLipLossResult {
  T loss{};
  Tensor<T, 2> grad_a;   // dL/da [N, D]
  Tensor<T, 2> grad_b;   // dL/db [N, D]
  T grad_logit_scale{};  // dL/dt
  T grad_logit_bias{};   // dL/dbias
};

namespace detail {

template <class T>
struct SigLipWorkspace {
  Matrix<T> S, G, E;  // raw similarities, dL/dz, exp(-|y|)
};

// Sums one tile contributes: the loss (before the factor w), sum G S and sum G.
struct SigLipTileSums {
  double loss = 0, gs = 0, gb = 0;
  SigLipTileSums& operator+=(const SigLipTileSums& o) {
    loss += o.loss, gs += o.gs, gb += o.gb;
    return *this;
  }
};

// G = dL/dz on the tile t of raw similarities S, whose positive pairs (label +1) are the global
// indices [positives.first, positives.second) of the diagonal i == j (an empty range: every pair
// is negative); returns the tile's sums.
template <class T>
SigLipTileSums siglip_tile(const Matrix<T>& S, const Tile& t, T s, T bias, T w,
                           SigLipWorkspace<T>& ws, std::pair<Index, Index> positives) {
  // y = -label z: z off the diagonal, -z on it; the pair's loss is softplus(y).
  ws.G = ((s * S.array()) + bias).matrix();
  auto Y = ws.G.array();
  const auto [d0, d1] = positives;
  for (Index i = d0; i < d1; ++i) ws.G(i - t.r0, i - t.c0) = -ws.G(i - t.r0, i - t.c0);
  ws.E = (-Y.abs()).exp().matrix();
  const auto E = ws.E.array();
  SigLipTileSums sums;
  sums.loss = sum_double(Y.max(T(0)) + E.log1p());
  // dL/dz = -label sigmoid(y) w; sigmoid(y) from the same exp(-|y|).
  Y = w * (Y >= T(0)).select((T(1) + E).inverse(), E / (T(1) + E));
  for (Index i = d0; i < d1; ++i) ws.G(i - t.r0, i - t.c0) = -ws.G(i - t.r0, i - t.c0);
  sums.gs = sum_double(Y * S.array());
  sums.gb = sum_double(Y);
  return sums;
}

template <class T>
void siglip_finish(const SigLipTileSums& sums, T s, T w, SigLipLossResult<T>& out) {
  out.loss = static_cast<T>(static_cast<double>(w) * sums.loss);
  out.grad_logit_scale = static_cast<T>(static_cast<double>(s) * sums.gs);  // dz/dt = s S
  out.grad_logit_bias = static_cast<T>(sums.gb);
}

template <class T>
void siglip_tiled(MatrixMap<const T> A, MatrixMap<const T> B, T s, T bias, T w, Index block,
                  SigLipLossResult<T>& out) {
  const Index n = A.rows();
  auto gA = out.grad_a.as_matrix();
  auto gB = out.grad_b.as_matrix();
  std::vector<SigLipTileSums> parts(static_cast<std::size_t>(ceil_div(n, block)));
  for_each_tile<SigLipWorkspace<T>>(n, n, block, [&](const Tile& t, SigLipWorkspace<T>& ws) {
    tile_similarity<T>(A, B, t, ws.S);
    parts[static_cast<std::size_t>(t.row_block)] +=
        siglip_tile(ws.S, t, s, bias, w, ws, diagonal_span(t));
    tile_backward<T>(A, B, t, ws.G, s, gA, gB);
  });
  SigLipTileSums total;
  for (const auto& p : parts) total += p;  // in row-block order
  siglip_finish(total, s, w, out);
}

// The reference: the full [N, N] logits.
template <class T>
void siglip_materialized(MatrixMap<const T> A, MatrixMap<const T> B, T s, T bias, T w,
                         SigLipLossResult<T>& out) {
  const Index n = A.rows();
  const Tile all{0, 0, 0, n, 0, n};
  SigLipWorkspace<T> ws;
  tile_similarity<T>(A, B, all, ws.S);  // [N, N]
  siglip_finish(siglip_tile(ws.S, all, s, bias, w, ws, diagonal_span(all)), s, w, out);
  tile_backward<T>(A, B, all, ws.G, s, out.grad_a.as_matrix(), out.grad_b.as_matrix());
}

}  // namespace detail

// SigLIP's loss of matching pairs (a_i, b_i), a and b [N, D], with t = logit_scale (the log of
// the scale) and bias = logit_bias; returns dL/da, dL/db, dL/dt and dL/dbias. Throws ShapeError
// for mismatched or empty shapes (N = 0 or D = 0), ValueError for an infinite t or bias, an exp(t)
// that is not finite in T, or a block size < 1 (one larger than N means a single tile). A NaN t
// or bias gives NaN everywhere, as NaN in a or b gives a NaN loss.
template <TensorLike A, TensorLike B>
SigLipLossResult<scalar_t<A>> siglip_loss(const A& a, const B& b,
                                          std::type_identity_t<scalar_t<A>> logit_scale,
                                          std::type_identity_t<scalar_t<A>> logit_bias,
                                          const SigLipLossOptions& opts = {}) {
  using T = scalar_t<A>;
  static_assert(std::is_floating_point_v<T>, "siglip_loss needs float or double embeddings");
  static_assert(std::is_same_v<T, scalar_t<B>>, "siglip_loss: a and b scalar types differ");
  static_assert(rank_v<A> == 2 && rank_v<B> == 2, "siglip_loss takes matrices [N, D]");
  constexpr std::string_view fn = "tessera::contrastive::siglip_loss";
  const auto av = cview(a);
  const auto bv = cview(b);
  detail::check_embeddings(fn, "a", av);
  detail::check_same_shape(fn, "a", av, "b", bv);
  if (std::isinf(logit_scale) ||
      (!std::isnan(logit_scale) && !std::isfinite(std::exp(logit_scale))))
    detail::raise<ValueError>(fn, "argument 'logit_scale' is ", logit_scale,
                              ", expected a value whose exp is finite (the log of the scale)");
  if (std::isinf(logit_bias))
    detail::raise<ValueError>(fn, "argument 'logit_bias' is ", logit_bias,
                              ", expected a finite value");
  detail::check_reduction(fn, opts.reduction);
  detail::check_block_size(fn, opts.block_size);

  SigLipLossResult<T> out;
  if (std::isnan(logit_scale) || std::isnan(logit_bias)) {
    detail::fill_nan(out, av.shape(), bv.shape());
    out.grad_logit_scale = out.grad_logit_bias = std::numeric_limits<T>::quiet_NaN();
    return out;
  }
  const T s = std::exp(logit_scale);
  const T w = opts.reduction == Reduction::mean ? T(1) / static_cast<T>(av.dim(0)) : T(1);
  out.grad_a = Tensor<T, 2>(av.shape());
  out.grad_b = Tensor<T, 2>(bv.shape());
  // In the compiled mode, the sweeps run at the kernels' level (contrastive/dispatch.hpp).
  if constexpr (tessera::detail::kDispatched<T>) {
    const auto& k = detail::loss_kernels<T>();
    if (opts.materialized)
      k.siglip_materialized(av.as_matrix(), bv.as_matrix(), s, logit_bias, w, out);
    else
      k.siglip_tiled(av.as_matrix(), bv.as_matrix(), s, logit_bias, w, opts.block_size, out);
  } else if (opts.materialized) {
    detail::siglip_materialized<T>(av.as_matrix(), bv.as_matrix(), s, logit_bias, w, out);
  } else {
    detail::siglip_tiled<T>(av.as_matrix(), bv.as_matrix(), s, logit_bias, w, opts.block_size, out);
  }
  return out;
}

struct LogitScaleBiasOptions {
  double init_scale = 10.0;  // the initial scale; the parameter holds its log (SigLIP: 10)
  double init_bias = -10.0;  // SigLIP: -10
};

// SigLIP's learnable scale and bias: "logit_scale" holding t = log(scale) and "logit_bias", scalars
// (shape []) as open_clip's model.logit_scale and model.logit_bias.
template <class T>
class LogitScaleBias : public nn::Module<LogitScaleBias<T>> {
 public:
  nn::Parameter<T, 0> logit_scale;  // [] (a scalar), t
  nn::Parameter<T, 0> logit_bias;   // [] (a scalar)

  explicit LogitScaleBias(const LogitScaleBiasOptions& o = {})
      : logit_scale(Shape<0>{}), logit_bias(Shape<0>{}) {
    constexpr std::string_view fn = "tessera::contrastive::LogitScaleBias";
    if (!(o.init_scale > 0) || !std::isfinite(std::log(static_cast<T>(o.init_scale))))
      tessera::detail::raise<ValueError>(fn, "option 'init_scale' is ", o.init_scale,
                                         ", expected a finite value > 0");
    detail::check_finite<T>(fn, "init_bias", o.init_bias);
    logit_scale.value() = std::log(static_cast<T>(o.init_scale));
    logit_bias.value() = static_cast<T>(o.init_bias);
  }

  // The parameters' gradients += dL/dt and dL/dbias (allocated and zeroed first if needed).
  void accumulate_grad(const SigLipLossResult<T>& r) {
    if (!logit_scale.has_grad()) logit_scale.zero_grad();
    if (!logit_bias.has_grad()) logit_bias.zero_grad();
    logit_scale.grad() += r.grad_logit_scale;
    logit_bias.grad() += r.grad_logit_bias;
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "logit_scale", self.logit_scale);
    f(prefix + "logit_bias", self.logit_bias);
  }
};

// siglip_loss with the module's t and bias.
template <TensorLike A, TensorLike B>
SigLipLossResult<scalar_t<A>> siglip_loss(const A& a, const B& b,
                                          const LogitScaleBias<scalar_t<A>>& params,
                                          const SigLipLossOptions& opts = {}) {
  return siglip_loss(a, b, params.logit_scale.value(), params.logit_bias.value(), opts);
}

}  // namespace tessera::contrastive

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::contrastive::LogitScaleBias)
