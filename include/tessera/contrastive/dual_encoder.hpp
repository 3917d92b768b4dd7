// tessera::contrastive::DualEncoder: CLIP's two-tower model (Radford et al. 2021) — an image
// tower and a text tower, a projection head on each into a shared space of unit vectors, and the
// learnable logit scale — with the CLIP loss and its backward through the heads and the scale.
//
//   image x -> vision_model(x) [B, image_width] -> visual_projection -> unit rows [B, embed_dim]
//   text  y -> text_model(y)   [B, text_width]  -> text_projection   -> unit rows [B, embed_dim]
//   logits = exp(min(t, log max_logit_scale)) image_embeds text_embeds^T [B_image, B_text]
//
// A tower is any module (nn::Module with a static `visit`) whose const `forward(input)` returns
// a Tensor<T, 2> of features [B, width] — an nn::Linear, or a transformer encoder followed by a
// pooling, wrapped in a small struct. State dict keys follow Hugging Face's CLIPModel:
// "vision_model.*", "text_model.*", "visual_projection.weight", "text_projection.weight",
// "logit_scale".
//
//   DualEncoder<float, ImageTower, TextTower> model(std::move(img), std::move(txt),
//                                                   {.image_width = 64, .text_width = 48,
//                                                    .embed_dim = 32});
//   auto img_emb = model.encode_image(images);          // [B, 32], unit rows
//   auto logits = model.logits(img_emb, model.encode_text(tokens));
//   // Training the heads and the scale on features of frozen towers:
//   model.zero_grad();
//   auto step = model.loss_and_grad(model.image_features(images), model.text_features(tokens));
//   // step.loss; model.visual_projection.proj.weight.grad ...; step.grad_image_features
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/contrastive/projection_head.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/module.hpp"

namespace tessera::contrastive {

struct DualEncoderOptions {
  Index image_width = 0;                 // features of the image tower, > 0
  Index text_width = 0;                  // features of the text tower, > 0
  Index embed_dim = 0;                   // the joint space, > 0
  bool projection_bias = false;          // CLIP's projections have none
  double logit_scale_init = 1.0 / 0.07;  // the initial scale (the parameter holds its log)
  double max_logit_scale = 100.0;        // the scale is clamped to at most this when applied
  std::uint64_t seed = 0;                // initialisation of the projection heads
};

template <class T>
struct DualEncoderLossResult {
  T loss{};
  Tensor<T, 2> grad_image_features;  // dL/d(image tower output) [B, image_width]
  Tensor<T, 2> grad_text_features;   // dL/d(text tower output) [B, text_width]
  T grad_logit_scale{};              // dL/dt (also added to logit_scale's gradient)
  T scale{};                         // the scale the logits used
};

template <class T, class ImageTower, class TextTower>
class DualEncoder : public nn::Module<DualEncoder<T, ImageTower, TextTower>> {
 public:
  ImageTower vision_model;
  TextTower text_model;
  ProjectionHead<T> visual_projection;  // [embed_dim, image_width]
  ProjectionHead<T> text_projection;    // [embed_dim, text_width]
  LogitScale<T> temperature;            // "logit_scale": t = log(scale)

  DualEncoder(ImageTower image_tower, TextTower text_tower, const DualEncoderOptions& o)
      : vision_model(std::move(image_tower)),
        text_model(std::move(text_tower)),
        temperature({.init = checked(o).logit_scale_init}),
        options_(o) {
    visual_projection = ProjectionHead<T>({.in_features = o.image_width,
                                           .embed_dim = o.embed_dim,
                                           .bias = o.projection_bias,
                                           .seed = o.seed});
    text_projection = ProjectionHead<T>({.in_features = o.text_width,
                                         .embed_dim = o.embed_dim,
                                         .bias = o.projection_bias,
                                         .seed = o.seed ^ 0x5bd1e995u});
  }

  const DualEncoderOptions& options() const noexcept { return options_; }

  // The towers' outputs, checked to be [B, width].
  template <class X>
  Tensor<T, 2> image_features(const X& images) const {
    return checked_features("image_features", vision_model.forward(images), options_.image_width);
  }
  template <class X>
  Tensor<T, 2> text_features(const X& texts) const {
    return checked_features("text_features", text_model.forward(texts), options_.text_width);
  }

  // Unit-norm joint embeddings [B, embed_dim].
  template <class X>
  Tensor<T, 2> encode_image(const X& images) const {
    return visual_projection.forward(image_features(images));
  }
  template <class X>
  Tensor<T, 2> encode_text(const X& texts) const {
    return text_projection.forward(text_features(texts));
  }

  // exp(min(t, log max_logit_scale)).
  T logit_scale() const {
    const T t = temperature.logit_scale.value();
    return std::exp(std::min(t, std::log(static_cast<T>(options_.max_logit_scale))));
  }

  // scale * image_embeds text_embeds^T: [B_image, B_text] (rows: images, columns: texts).
  template <TensorLike A, TensorLike B>
  Tensor<T, 2> logits(const A& image_embeds, const B& text_embeds) const {
    const auto av = cview(image_embeds);
    const auto bv = cview(text_embeds);
    constexpr std::string_view fn = "tessera::contrastive::DualEncoder::logits";
    const Index e[] = {av.dim(0), options_.embed_dim};
    tessera::detail::check_shape_equal(fn, "image_embeds", av.shape(), e);
    const Index f[] = {bv.dim(0), options_.embed_dim};
    tessera::detail::check_shape_equal(fn, "text_embeds", bv.shape(), f);
    // [B_image, B_text] = s [B_image, E] x [B_text, E]^T
    const T s = logit_scale();
    if (std::isnan(s)) {  // a NaN logit_scale parameter: NaN logits, not an error about 'alpha'
      Tensor<T, 2> out(Shape<2>{av.dim(0), bv.dim(0)});
      out.as_array().setConstant(s);
      return out;
    }
    return matmul(av, bv, {.transpose_b = true, .alpha = static_cast<double>(s)});
  }

  // CLIP's loss of matching pairs of tower features (row i of each a pair), and its backward
  // through both projection heads and the logit scale: their gradients are added to (allocated
  // and zeroed first where there are none); the gradients with respect to the features are
  // returned, for towers that train too. `opts.max_logit_scale` is replaced by the model's.
  template <TensorLike FI, TensorLike FT>
  DualEncoderLossResult<T> loss_and_grad(const FI& image_feats, const FT& text_feats,
                                         ClipLossOptions opts = {}) {
    const auto fwd_i = visual_projection.forward_train(image_feats);
    const auto fwd_t = text_projection.forward_train(text_feats);
    opts.max_logit_scale = options_.max_logit_scale;
    const auto r = clip_loss(fwd_i.embedding, fwd_t.embedding, temperature, opts);
    temperature.accumulate_grad(r);
    DualEncoderLossResult<T> out;
    out.loss = r.loss;
    out.grad_logit_scale = r.grad_logit_scale;
    out.scale = r.scale;
    out.grad_image_features = visual_projection.backward(image_feats, fwd_i, r.grad_a);
    out.grad_text_features = text_projection.backward(text_feats, fwd_t, r.grad_b);
    return out;
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    ImageTower::visit(self.vision_model, f, prefix + "vision_model.");
    TextTower::visit(self.text_model, f, prefix + "text_model.");
    ProjectionHead<T>::visit(self.visual_projection, f, prefix + "visual_projection.");
    ProjectionHead<T>::visit(self.text_projection, f, prefix + "text_projection.");
    LogitScale<T>::visit(self.temperature, f, prefix);
  }

 private:
  static Tensor<T, 2> checked_features(std::string_view what, Tensor<T, 2> x, Index width) {
    if (x.dim(1) != width)
      tessera::detail::raise<ShapeError>(
          "tessera::contrastive::DualEncoder::" + std::string(what), "the tower returned shape ",
          tessera::detail::shape_string(x.shape()), ", expected [", x.dim(0), ", ", width, "]");
    return x;
  }

  // The options checked (before any member is built from them), so errors name DualEncoder and
  // its options as the caller wrote them.
  static const DualEncoderOptions& checked(const DualEncoderOptions& o) {
    constexpr std::string_view fn = "tessera::contrastive::DualEncoder";
    if (o.image_width < 1 || o.text_width < 1 || o.embed_dim < 1)
      tessera::detail::raise<ValueError>(
          fn, "options 'image_width', 'text_width' and 'embed_dim' are ", o.image_width, ", ",
          o.text_width, " and ", o.embed_dim, ", expected values >= 1");
    detail::check_option<T>(fn, "max_logit_scale", o.max_logit_scale, /*positive=*/true);
    detail::check_option<T>(fn, "logit_scale_init", o.logit_scale_init, /*positive=*/true);
    if (!std::isfinite(std::log(static_cast<T>(o.logit_scale_init))))
      tessera::detail::raise<ValueError>(fn, "option 'logit_scale_init' is ", o.logit_scale_init,
                                         ", whose log is not finite in the scalar type");
    return o;
  }

  DualEncoderOptions options_{};
};

}  // namespace tessera::contrastive
