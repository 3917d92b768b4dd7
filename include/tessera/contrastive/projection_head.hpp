// tessera::contrastive::ProjectionHead: the linear map from a tower's features into the joint
// embedding space, followed by L2 normalisation, as CLIP's visual/text projections (Radford et
// al. 2021), with the backward that training the heads needs.
//
//   x [B, in_features] -> y = x W^T (+ b) [B, embed_dim] -> e = y / max(||y||, eps)
//
// State dict keys: "weight" [embed_dim, in_features] and, with a bias, "bias" [embed_dim]: the
// keys of Hugging Face's CLIPModel.visual_projection / text_projection (bias-free there).
//
//   tessera::contrastive::ProjectionHead<float> head({.in_features = 64, .embed_dim = 32});
//   auto fwd = head.forward_train(features);             // fwd.embedding: [B, 32], unit rows
//   head.zero_grad();
//   auto grad_features = head.backward(features, fwd, grad_embedding);  // head.weight.grad +=
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::contrastive {

struct ProjectionHeadOptions {
  Index in_features = 0;  // width of the tower's features, > 0
  Index embed_dim = 0;    // width of the joint embedding, > 0
  bool bias = false;      // CLIP's projections have none
  std::uint64_t seed = 0;
  double eps = 1e-12;  // L2 normalisation's floor on the norm, as F.normalize
};

// What the backward needs from the forward.
template <class T>
struct ProjectionHeadOutput {
  Tensor<T, 2> embedding;  // e [B, embed_dim], unit rows (zero rows stay zero)
  Tensor<T, 1> norm;       // max(||y_i||, eps) [B]
};

template <class T>
class ProjectionHead : public nn::Module<ProjectionHead<T>> {
 public:
  nn::Linear<T> proj;  // W [embed_dim, in_features], b [embed_dim]

  ProjectionHead() = default;
  explicit ProjectionHead(const ProjectionHeadOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::contrastive::ProjectionHead";
    if (o.in_features < 1 || o.embed_dim < 1)
      tessera::detail::raise<ValueError>(fn, "options 'in_features' and 'embed_dim' are ",
                                         o.in_features, " and ", o.embed_dim,
                                         ", expected values >= 1");
    if (!(static_cast<T>(o.eps) > 0) || !std::isfinite(static_cast<T>(o.eps)))
      tessera::detail::raise<ValueError>(fn, "option 'eps' is ", o.eps,
                                         ", expected a finite value > 0");
    tessera::detail::checked_mul(o.in_features, o.embed_dim, fn,
                                 "the weight [embed_dim, in_features]");
    proj = nn::Linear<T>({.in_features = o.in_features,
                          .out_features = o.embed_dim,
                          .bias = o.bias,
                          .seed = o.seed});
  }

  const ProjectionHeadOptions& options() const noexcept { return options_; }
  Index in_features() const noexcept { return options_.in_features; }
  Index embed_dim() const noexcept { return options_.embed_dim; }

  // x [B, in_features] -> unit-norm embeddings [B, embed_dim].
  template <TensorLike X>
  Tensor<T, 2> forward(const X& x) const {
    return forward_train(x).embedding;
  }

  // The forward, keeping the norms for backward.
  template <TensorLike X>
  ProjectionHeadOutput<T> forward_train(const X& x) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && rank_v<X> == 2,
                  "ProjectionHead takes features [B, in_features] of the module's scalar type");
    check_features("tessera::contrastive::ProjectionHead::forward", cview(x));
    ProjectionHeadOutput<T> out;
    out.embedding = proj.forward(x);  // y: [B, embed_dim]
    const Index b = out.embedding.dim(0);
    out.norm = Tensor<T, 1>(Shape<1>{b});
    auto Y = out.embedding.as_matrix();
    const T eps = static_cast<T>(options_.eps);
    for (Index i = 0; i < b; ++i) {
      out.norm(i) = std::max(Y.row(i).norm(), eps);
      Y.row(i) /= out.norm(i);  // a division, as l2_normalize: no overflow for a tiny norm
    }
    return out;
  }

  // Given x, forward_train(x) and dL/de [B, embed_dim]: adds dL/dW (and dL/db) to the
  // parameters' gradients (allocated and zeroed first if there are none) and returns dL/dx.
  //   dL/dy_i = (g_i - e_i (e_i . g_i)) / ||y_i||   (g_i / eps where the norm was floored)
  template <TensorLike X, TensorLike G>
  Tensor<T, 2> backward(const X& x, const ProjectionHeadOutput<T>& fwd, const G& grad_embedding) {
    constexpr std::string_view fn = "tessera::contrastive::ProjectionHead::backward";
    const auto xv = cview(x);
    const auto gv = cview(grad_embedding);
    check_features(fn, xv);
    const Index b = xv.dim(0);
    const Index e_shape[] = {b, options_.embed_dim};
    tessera::detail::check_shape_equal(fn, "fwd.embedding", fwd.embedding.shape(), e_shape);
    tessera::detail::check_shape_equal(fn, "grad_embedding", gv.shape(), e_shape);
    const Index n_shape[] = {b};
    tessera::detail::check_shape_equal(fn, "fwd.norm", fwd.norm.shape(), n_shape);
    // dy: [B, embed_dim]
    Tensor<T, 2> dy(gv.shape(), uninitialized);
    const auto E = fwd.embedding.as_matrix();
    const auto Gm = gv.as_matrix();
    auto DY = dy.as_matrix();
    const T eps = static_cast<T>(options_.eps);
    for (Index i = 0; i < b; ++i) {
      if (!(fwd.norm(i) <= eps))  // a NaN norm takes this branch: NaN in, NaN out
        DY.row(i) = (Gm.row(i) - E.row(i) * E.row(i).dot(Gm.row(i))) / fwd.norm(i);
      else
        DY.row(i) = Gm.row(i) / eps;
    }
    if (!proj.weight.has_grad()) proj.weight.zero_grad();
    // dW: [embed_dim, in] += dy^T [embed_dim, B] x x [B, in]
    matmul_into(dy, xv, proj.weight.grad, {.transpose_a = true, .accumulate = true});
    if (options_.bias) {
      if (!proj.bias.has_grad()) proj.bias.zero_grad();
      proj.bias.grad.as_vector() += DY.colwise().sum().transpose();
    }
    // dx: [B, in] = dy [B, embed_dim] x W [embed_dim, in]
    return matmul(dy, proj.weight.value);
  }

  // The keys are the Linear's own ("weight", "bias"): no "proj." level.
  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::Linear<T>::visit(self.proj, f, prefix);
  }

 private:
  template <class X>
  void check_features(std::string_view fn, const X& x) const {
    if (x.dim(1) != options_.in_features)
      tessera::detail::raise<ShapeError>(fn, "argument 'x' has shape ",
                                         tessera::detail::shape_string(x.shape()), ", expected [",
                                         x.dim(0), ", ", options_.in_features, "]");
  }

  ProjectionHeadOptions options_{};
};

}  // namespace tessera::contrastive

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::contrastive::ProjectionHead)
