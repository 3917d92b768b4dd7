// tessera: models::VisionTransformer, the image tower of ViT (Dosovitskiy et al. 2021), CLIP
// (Radford et al. 2021) and SigLIP (Zhai et al. 2023), composed of nn/ modules:
//
//   images [B, C, H, W] -> patch_embed (conv as one product, class token, positions, ln_pre)
//     -> encoder (pre-norm blocks) -> pool -> ln_post -> head -> [B, output]
//
// Pooling is the class token (ViT, CLIP: ln_post on that token), or attention pooling
// (VisionPooling::map, SigLIP: ln_post on every token, then a MAPHead whose learned probe attends
// over them; models/map_head.hpp), which needs no class token.
//
// The layouts of the checkpoints this loads:
//   OpenAI CLIP / open_clip  conv1 without bias, class token, ln_pre, QuickGELU (OpenAI weights)
//                            or GELU, ln_post, `proj` [width, embed_dim] (no bias);
//   torchvision ViT          conv_proj with bias, class token, no ln_pre, GELU, LayerNorm eps
//                            1e-6 over every token (`encoder.ln`), `heads.head` with bias;
//   Hugging Face CLIP        as OpenAI's, with `pre_layrnorm`, `post_layernorm` and a separate
//                            `visual_projection` Linear;
//   Hugging Face SigLIP      conv with bias, no class token (grid^2 positions), no ln_pre,
//                            GELU (tanh), eps 1e-6, `post_layernorm` over every token, the
//                            attention-pooling `head`, no projection.
// Layer norm is per token, so normalising only the pooled class token equals normalising every
// token and then pooling (torchvision's order).
//
// Parameters (tessera's names; models/naming.hpp maps each checkpoint layout onto them):
//   patch_embed.*  (nn::PatchEmbedding: conv1.weight, conv1.bias, class_embedding (with
//                   class_token), positional_embedding [tokens, width], ln_pre.*)
//   encoder.layers.<i>.*  (nn::TransformerEncoderLayer, pre-norm)
//   ln_post.weight, ln_post.bias   [width]
//   map_head.*  (MAPHead, with pooling = map: probe, attention.*, layernorm.*, mlp.fc1.*,
//               mlp.fc2.*)
//   head.weight [output_dim, width], head.bias [output_dim] (with head_bias)
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/models/map_head.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/patch_embedding.hpp"
#include "tessera/nn/training.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::models {

// How an image's tokens become one vector.
enum class VisionPooling {
  class_token,  // the class token after ln_post (ViT, CLIP)
  map,          // ln_post over every token, then attention pooling (MAPHead; SigLIP)
};

struct VisionTransformerOptions {
  Index image_size = 224;  // square images, pixels
  Index patch_size = 16;   // square patches, pixels; image_size a multiple of it (see below)
  Index in_channels = 3;
  Index width = 768;  // token width (d_model)
  Index layers = 12;
  Index heads = 12;                                    // width a multiple of heads
  Index mlp_dim = 3072;                                // hidden width of each block's MLP
  Activation activation = Activation::gelu;            // quick_gelu for OpenAI's CLIP weights
  double layer_norm_eps = 1e-5;                        // 1e-6 for torchvision
  bool patch_bias = false;                             // conv bias: torchvision yes, CLIP no
  bool ln_pre = true;                                  // CLIP yes, torchvision no
  bool class_token = true;                             // prepended class token: SigLIP has none
  VisionPooling pooling = VisionPooling::class_token;  // map for SigLIP
  // Accept an image_size that patch_size does not divide: the grid is floor(image_size /
  // patch_size) and the last rows and columns of pixels are dropped, as Conv2d does (Hugging
  // Face's SigLIP so400m-patch14-384: 27 x 27 patches of 14 over 384 pixels). torchvision's ViT
  // asserts divisibility, so the default refuses it.
  bool drop_partial_patches = false;
  Index output_dim = 512;  // head's outputs; 0: no head, the pooled token
  bool head_bias = false;  // torchvision's classifier has one, CLIP's not
  std::uint64_t seed = 0;
};

template <class T>
class VisionTransformer : public nn::Module<VisionTransformer<T>> {
 public:
  nn::PatchEmbedding<T> patch_embed;
  nn::TransformerEncoder<T> encoder;
  nn::LayerNorm<T> ln_post;
  MAPHead<T> map_head;  // used with pooling = map
  nn::Linear<T> head;   // used when output_dim > 0

  VisionTransformer() = default;
  explicit VisionTransformer(const VisionTransformerOptions& o) : options_(checked(o)) {
    patch_embed = nn::PatchEmbedding<T>({.image_size = {o.image_size, o.image_size},
                                         .patch_size = {o.patch_size, o.patch_size},
                                         .in_channels = o.in_channels,
                                         .embed_dim = o.width,
                                         .bias = o.patch_bias,
                                         .cls_token = o.class_token,
                                         .pre_norm = o.ln_pre,
                                         .layer_norm_eps = o.layer_norm_eps,
                                         .seed = o.seed});
    encoder = nn::TransformerEncoder<T>({.layer = {.d_model = o.width,
                                                   .nhead = o.heads,
                                                   .dim_feedforward = o.mlp_dim,
                                                   .activation = o.activation,
                                                   .layer_norm_eps = o.layer_norm_eps,
                                                   .norm_first = true,
                                                   .seed = o.seed + 100},
                                         .num_layers = o.layers});
    ln_post = nn::LayerNorm<T>({.normalized_shape = o.width, .eps = o.layer_norm_eps});
    if (o.pooling == VisionPooling::map)
      map_head = MAPHead<T>({.width = o.width,
                             .heads = o.heads,
                             .mlp_dim = o.mlp_dim,
                             .activation = o.activation,
                             .layer_norm_eps = o.layer_norm_eps,
                             .seed = o.seed + 300});
    if (o.output_dim > 0)
      head = nn::Linear<T>({.in_features = o.width,
                            .out_features = o.output_dim,
                            .bias = o.head_bias,
                            .seed = o.seed + 200});
  }

  const VisionTransformerOptions& options() const noexcept { return options_; }
  // Features per image: output_dim, or width without a head.
  Index output_features() const noexcept {
    return options_.output_dim > 0 ? options_.output_dim : options_.width;
  }
  // Tokens per image: the patches and the class token (with class_token).
  Index num_tokens() const noexcept { return patch_embed.num_tokens(); }

  // images: [B, in_channels, image_size, image_size] -> every token after the last block
  // [B, num_tokens, width], the class token first when there is one (not normalised by ln_post).
  template <TensorLike X>
  requires(rank_v<X> == 4) Tensor<T, 3> forward_tokens(const X& images)
  const {
    constexpr std::string_view fn = "tessera::models::VisionTransformer::forward_tokens";
    check_parameters(fn);
    check_images(fn, cview(images));
    return tokens(images);
  }

  // images: [B, in_channels, image_size, image_size] -> [B, output_features()]: the class token
  // after ln_post, or with pooling = map the MAPHead over every token after ln_post; through the
  // head when output_dim > 0.
  template <TensorLike X>
  requires(rank_v<X> == 4) Tensor<T, 2> forward(const X& images)
  const {
    constexpr std::string_view fn = "tessera::models::VisionTransformer::forward";
    check_parameters(fn);
    check_images(fn, cview(images));
    Tensor<T, 3> x = tokens(images);
    const Index B = x.dim(0), W = options_.width;
    // pooled: [B, width], one vector per image
    Tensor<T, 2> pooled;
    if (options_.pooling == VisionPooling::map) {
      ln_post.forward_into(x, x);  // every token, as SigLIP's post_layernorm
      pooled = map_head.forward(x);
    } else {
      pooled = Tensor<T, 2>(Shape<2>{B, W}, uninitialized);
      for (Index b = 0; b < B; ++b) pooled[b].as_vector() = x[b][0].as_vector();
      ln_post.forward_into(pooled, pooled);
    }
    if (options_.output_dim <= 0) return pooled;
    return head.forward(pooled);
  }

  // What backward needs: every part's context.
  struct Context {
    typename nn::PatchEmbedding<T>::Context patch_embed;
    typename nn::TransformerEncoder<T>::Context encoder;
    typename nn::LayerNorm<T>::template Context<2> ln_post_pooled;  // class_token pooling
    typename nn::LayerNorm<T>::template Context<3> ln_post_tokens;  // map pooling
    typename MAPHead<T>::Context map_head;
    typename nn::Linear<T>::Context head;
    Index batch = 0, tokens = 0;
  };

  // The training forward: forward's [B, output_features()] (to rounding) and the context.
  template <TensorLike X>
  requires(rank_v<X> == 4) nn::Trained<Tensor<T, 2>, Context> forward_train(const X& images)
  const {
    constexpr std::string_view fn = "tessera::models::VisionTransformer::forward_train";
    check_parameters(fn);
    check_images(fn, cview(images));
    nn::Trained<Tensor<T, 2>, Context> r;
    Context& c = r.context;
    auto pe = patch_embed.forward_train(images);
    auto enc = encoder.forward_train(pe.output);
    c.patch_embed = std::move(pe.context);
    c.encoder = std::move(enc.context);
    Tensor<T, 3>& x = enc.output;
    const Index B = x.dim(0), W = options_.width;
    c.batch = B, c.tokens = x.dim(1);
    Tensor<T, 2> pooled;
    if (options_.pooling == VisionPooling::map) {
      auto n = ln_post.forward_train(x);
      auto m = map_head.forward_train(n.output);
      c.ln_post_tokens = std::move(n.context);
      c.map_head = std::move(m.context);
      pooled = std::move(m.output);
    } else {
      Tensor<T, 2> cls(Shape<2>{B, W}, uninitialized);
      for (Index b = 0; b < B; ++b) cls[b].as_vector() = x[b][0].as_vector();
      auto n = ln_post.forward_train(cls);
      c.ln_post_pooled = std::move(n.context);
      pooled = std::move(n.output);
    }
    if (options_.output_dim <= 0) {
      r.output = std::move(pooled);
      return r;
    }
    auto h = head.forward_train(pooled);
    c.head = std::move(h.context);
    r.output = std::move(h.output);
    return r;
  }

  // Given forward_train's context and dL/dout [B, output_features()]: adds every parameter's
  // gradient and returns dL/dimages [B, in_channels, image_size, image_size].
  template <TensorLike G>
  Tensor<T, 4> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 2 && std::is_same_v<scalar_t<G>, T>,
                  "VisionTransformer::backward takes a [B, output_features] gradient");
    constexpr std::string_view fn = "tessera::models::VisionTransformer::backward";
    check_parameters(fn);
    const Index B = ctx.batch, W = options_.width;
    const Index expected[] = {B, output_features()};
    tessera::detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), expected);
    Tensor<T, 2> dpooled;
    if (options_.output_dim > 0) {
      dpooled = head.backward(ctx.head, grad_output);
    } else {
      dpooled = Tensor<T, 2>(Shape<2>{B, W}, uninitialized);
      std::copy_n(cview(grad_output).data(), dpooled.size(), dpooled.data());
    }
    Tensor<T, 3> dx;
    if (options_.pooling == VisionPooling::map) {
      dx = ln_post.backward(ctx.ln_post_tokens, map_head.backward(ctx.map_head, dpooled));
    } else {
      const Tensor<T, 2> dcls = ln_post.backward(ctx.ln_post_pooled, dpooled);
      dx = Tensor<T, 3>(Shape<3>{B, ctx.tokens, W});  // only the class token was read
      for (Index b = 0; b < B; ++b) dx[b][0].as_vector() = dcls[b].as_vector();
    }
    return patch_embed.backward(ctx.patch_embed, encoder.backward(ctx.encoder, dx));
  }

  // Packs the weights of every product for inference (nn::Linear::prepack); the packed copies
  // hold as much memory again as the products' weights, and are dropped when a load changes them.
  void prepack() {
    check_parameters("tessera::models::VisionTransformer::prepack");
    encoder.prepack();
    if (options_.pooling == VisionPooling::map) map_head.prepack();
    if (options_.output_dim > 0) head.prepack();
  }

  // Throws ShapeError, naming `fn` and the parameter by its state-dict name, unless every
  // parameter has the shape the options give.
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    patch_embed.check_parameters(fn, detail::ParameterPrefix(prefix, "patch_embed."));
    encoder.check_parameters(fn, detail::ParameterPrefix(prefix, "encoder."));
    ln_post.check_parameters(fn, detail::ParameterPrefix(prefix, "ln_post."));
    if (options_.pooling == VisionPooling::map)
      map_head.check_parameters(fn, detail::ParameterPrefix(prefix, "map_head."));
    if (options_.output_dim > 0)
      head.check_parameters(fn, detail::ParameterPrefix(prefix, "head."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    nn::PatchEmbedding<T>::visit(self.patch_embed, f, prefix + "patch_embed.");
    nn::TransformerEncoder<T>::visit(self.encoder, f, prefix + "encoder.");
    nn::LayerNorm<T>::visit(self.ln_post, f, prefix + "ln_post.");
    if (self.options_.pooling == VisionPooling::map)
      MAPHead<T>::visit(self.map_head, f, prefix + "map_head.");
    if (self.options_.output_dim > 0) nn::Linear<T>::visit(self.head, f, prefix + "head.");
  }

 private:
  template <class X>
  Tensor<T, 3> tokens(const X& images) const {
    Tensor<T, 3> x = patch_embed.forward(images);  // [B, num_tokens, width]
    encoder.forward_into(x, x);
    return x;
  }

  // Throws ShapeError naming `fn` unless images is [batch, in_channels, image_size, image_size].
  template <class X>
  void check_images(std::string_view fn, const X& images) const {
    const Index expected[] = {images.dim(0), options_.in_channels, options_.image_size,
                              options_.image_size};
    if (!std::equal(images.shape().begin(), images.shape().end(), expected))
      detail::raise<ShapeError>(
          fn, "argument 'images' has shape ", detail::shape_string(images.shape()), ", expected ",
          detail::shape_string(expected), " ([batch, in_channels, image_size, image_size])");
  }

  static const VisionTransformerOptions& checked(const VisionTransformerOptions& o) {
    constexpr std::string_view fn = "tessera::models::VisionTransformer";
    if (o.patch_size <= 0 || o.image_size < o.patch_size ||
        (!o.drop_partial_patches && o.image_size % o.patch_size != 0))
      detail::raise<ValueError>(
          fn, "image_size is ", o.image_size, " and patch_size ", o.patch_size,
          o.drop_partial_patches ? ", expected 0 < patch_size <= image_size"
                                 : ", expected positive sizes with image_size a multiple of "
                                   "patch_size (or drop_partial_patches)");
    if (o.layers < 1) detail::raise<ValueError>(fn, "layers is ", o.layers, ", expected >= 1");
    if (o.width <= 0 || o.heads <= 0 || o.width % o.heads != 0)
      detail::raise<ValueError>(fn, "width is ", o.width, " and heads ", o.heads,
                                ", expected heads > 0 dividing width");
    if (o.mlp_dim <= 0) detail::raise<ValueError>(fn, "mlp_dim is ", o.mlp_dim, ", expected > 0");
    if (o.output_dim < 0)
      detail::raise<ValueError>(fn, "output_dim is ", o.output_dim, ", expected >= 0");
    if (o.pooling != VisionPooling::class_token && o.pooling != VisionPooling::map)
      detail::raise<ValueError>(fn, "pooling is VisionPooling(", static_cast<int>(o.pooling),
                                "), expected class_token or map");
    if (o.pooling == VisionPooling::class_token && !o.class_token)
      detail::raise<ValueError>(fn,
                                "pooling is class_token and class_token is false, expected a "
                                "class token to pool (or pooling = map)");
    return o;
  }

  VisionTransformerOptions options_{};
};

}  // namespace tessera::models

// The compiled mode's instantiations (core/config.hpp), unless its library was built without
// models (no nlohmann_json).
#ifndef TESSERA_COMPILED_WITHOUT_MODELS
TESSERA_INSTANTIATE_FLOATING(class tessera::models::VisionTransformer)
#endif
