// tessera: nn::PatchEmbedding, images to a sequence of patch tokens, as the vision towers of ViT
// (Dosovitskiy et al. 2021) and CLIP (Radford et al. 2021):
//
//   tokens = conv1(images) flattened over the patch grid        [batch, P, embed_dim]
//   tokens = [class_embedding ; tokens]                          with cls_token: P + 1 tokens
//   tokens = ln_pre(tokens + positional_embedding)               ln_pre with pre_norm
//
// conv1 has kernel = stride = patch size and no padding, so it is one product: the images are
// unfolded into patch rows [batch * T, C * ph * pw] (column c * ph * pw + i * pw + j, the
// flattening of PyTorch's Conv2d weight [embed_dim, C, ph, pw]) and multiplied by the weight seen
// as [embed_dim, C * ph * pw]. The class token's row of the product is zero and then overwritten,
// so the product writes the output directly. Patches are taken row by row (row-major over the
// grid), as Conv2d's output flattened by CLIP's reshape(B, E, -1).permute(0, 2, 1).
//
// Sizes that the patch does not divide follow Conv2d: the grid is floor(image_size / patch_size)
// and the last rows and columns of pixels are dropped. The input must have the configured
// image_size exactly (the positional table is sized for its grid).
//
// State dict keys (CLIP's VisionTransformer): conv1.weight [embed_dim, in_channels, ph, pw],
// conv1.bias [embed_dim] (with bias; CLIP has none, ViT does), class_embedding [embed_dim] (with
// cls_token), positional_embedding [T, embed_dim], ln_pre.weight / ln_pre.bias (with pre_norm).
// Initialisation: conv1 as torch.nn.Conv2d (U(+-1/sqrt(C ph pw))), class and positional
// embeddings N(0, 0.02) (timm's ViT).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::detail {

// Checks a patch grid's options: 0 < patch <= size in each of the two dimensions. `what` names the
// size option, e.g. "image_size" or "(mel_bins, frames)".
inline void check_patch_grid(std::string_view fn, std::string_view what,
                             const std::array<Index, 2>& size, const std::array<Index, 2>& patch) {
  if (size[0] <= 0 || size[1] <= 0)
    raise<ValueError>(fn, what, " is (", size[0], ", ", size[1], "), expected sizes > 0");
  if (patch[0] <= 0 || patch[1] <= 0 || patch[0] > size[0] || patch[1] > size[1])
    raise<ValueError>(fn, "patch_size is (", patch[0], ", ", patch[1], ") for ", what, " (",
                      size[0], ", ", size[1],
                      "), expected 0 < patch_size <= size in each dimension");
}

// Copies the non-overlapping ph x pw patches of images [B, C, H, W] into rows of length
// C * ph * pw: patch (gy, gx) of image b goes to row b * tokens + first + gy * gw + gx, its
// element (c, i, j) to column (c * ph + i) * pw + j. Pixels beyond the gh x gw grid are skipped.
template <class T>
void unfold_patches(const T* images, Index B, Index C, Index H, Index W, Index ph, Index pw,
                    Index gh, Index gw, T* rows, Index tokens, Index first) {
  const Index K = C * ph * pw;
  parallel_for(B * gh, std::max<Index>(1, Index{16384} / std::max<Index>(gw * K, 1)),
               [&](Index r0, Index r1) {
                 for (Index r = r0; r < r1; ++r) {
                   const Index b = r / gh, gy = r % gh;
                   for (Index gx = 0; gx < gw; ++gx) {
                     T* row = rows + (b * tokens + first + gy * gw + gx) * K;
                     for (Index c = 0; c < C; ++c)
                       for (Index i = 0; i < ph; ++i)
                         std::copy_n(images + ((b * C + c) * H + gy * ph + i) * W + gx * pw, pw,
                                     row + (c * ph + i) * pw);
                   }
                 }
               });
}

// The adjoint of unfold_patches: adds each row's elements back into the pixels they came from
// (patches never overlap, so each pixel receives at most one value). grad_images [B, C, H, W]
// must be zero-initialised; pixels beyond the grid stay zero.
template <class T>
void fold_patches(const T* rows, Index B, Index C, Index H, Index W, Index ph, Index pw, Index gh,
                  Index gw, T* grad_images, Index tokens, Index first) {
  const Index K = C * ph * pw;
  parallel_for(B * gh, std::max<Index>(1, Index{16384} / std::max<Index>(gw * K, 1)),
               [&](Index r0, Index r1) {
                 for (Index r = r0; r < r1; ++r) {
                   const Index b = r / gh, gy = r % gh;
                   for (Index gx = 0; gx < gw; ++gx) {
                     const T* row = rows + (b * tokens + first + gy * gw + gx) * K;
                     for (Index c = 0; c < C; ++c)
                       for (Index i = 0; i < ph; ++i)
                         std::copy_n(row + (c * ph + i) * pw, pw,
                                     grad_images + ((b * C + c) * H + gy * ph + i) * W + gx * pw);
                   }
                 }
               });
}

}  // namespace tessera::detail

namespace tessera::nn {

struct PatchEmbeddingOptions {
  std::array<Index, 2> image_size{0, 0};    // (height, width), > 0
  std::array<Index, 2> patch_size{16, 16};  // (ph, pw): kernel and stride, <= image_size
  Index in_channels = 3;                    // > 0
  Index embed_dim = 0;                      // > 0
  bool bias = true;                         // conv1.bias (ViT has one, CLIP not)
  bool cls_token = false;                   // prepend class_embedding
  bool pre_norm = false;                    // ln_pre after the positions (CLIP)
  double layer_norm_eps = 1e-5;
  std::uint64_t seed = 0;
};

template <class T>
class PatchEmbedding : public Module<PatchEmbedding<T>> {
 public:
  Parameter<T, 4> conv1_weight;          // [embed_dim, in_channels, ph, pw]
  Parameter<T, 1> conv1_bias;            // [embed_dim], empty without bias
  Parameter<T, 1> class_embedding;       // [embed_dim], empty without cls_token
  Parameter<T, 2> positional_embedding;  // [num_tokens, embed_dim]
  LayerNorm<T> ln_pre;                   // used with pre_norm

  PatchEmbedding() = default;
  explicit PatchEmbedding(const PatchEmbeddingOptions& o) : options_(o) {
    constexpr std::string_view fn = "tessera::nn::PatchEmbedding";
    detail::check_patch_grid(fn, "image_size", o.image_size, o.patch_size);
    if (o.in_channels <= 0)
      detail::raise<ValueError>(fn, "in_channels is ", o.in_channels, ", expected a value > 0");
    if (o.embed_dim <= 0)
      detail::raise<ValueError>(fn, "embed_dim is ", o.embed_dim, ", expected a value > 0");
    // The sizes below are products of the options: checked, so that none overflows.
    const auto [gh, gw] = grid();
    detail::checked_mul(gh, gw, fn, "the patch grid");
    detail::checked_mul(o.in_channels,
                        detail::checked_mul(o.patch_size[0], o.patch_size[1], fn, "patch_size"), fn,
                        "in_channels x patch_size");
    const Index E = o.embed_dim, K = patch_features();
    conv1_weight = Parameter<T, 4>(Shape<4>{E, o.in_channels, o.patch_size[0], o.patch_size[1]});
    const double bound = 1.0 / std::sqrt(static_cast<double>(K));
    detail::init_uniform(conv1_weight, o.seed, -bound, bound);
    if (o.bias) {
      conv1_bias = Parameter<T, 1>(Shape<1>{E});
      detail::init_uniform(conv1_bias, o.seed + 1, -bound, bound);
    }
    if (o.cls_token) {
      class_embedding = Parameter<T, 1>(Shape<1>{E});
      detail::init_normal(class_embedding, o.seed + 2, 0.0, 0.02);
    }
    positional_embedding = Parameter<T, 2>(Shape<2>{num_tokens(), E});
    detail::init_normal(positional_embedding, o.seed + 3, 0.0, 0.02);
    if (o.pre_norm) ln_pre = LayerNorm<T>({.normalized_shape = E, .eps = o.layer_norm_eps});
  }

  const PatchEmbeddingOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.embed_dim; }
  // The patch grid (rows, columns): floor(image_size / patch_size).
  std::array<Index, 2> grid() const noexcept {
    return {options_.image_size[0] / options_.patch_size[0],
            options_.image_size[1] / options_.patch_size[1]};
  }
  Index num_patches() const noexcept { return grid()[0] * grid()[1]; }
  // Tokens per image: the patches, plus one with cls_token.
  Index num_tokens() const noexcept { return num_patches() + (options_.cls_token ? 1 : 0); }
  // Features of one unfolded patch: in_channels * ph * pw.
  Index patch_features() const noexcept {
    return options_.in_channels * options_.patch_size[0] * options_.patch_size[1];
  }

  // images: [batch, in_channels, height, width] with (height, width) = image_size
  //   -> [batch, num_tokens, embed_dim] (the class token first).
  template <TensorLike X>
  requires(rank_v<X> == 4) Tensor<T, 3> forward(const X& images)
  const { return embed("tessera::nn::PatchEmbedding::forward", "images", images); }

  // What backward needs: the unfolded patches [B * num_tokens, C * ph * pw] (a class token's row
  // zero) and ln_pre's context.
  struct Context {
    Tensor<T, 2> patches;
    Index batch = 0;
    typename LayerNorm<T>::template Context<3> ln_pre;
    std::uint64_t weight_version = 0;  // conv1.weight's version at the forward
  };

  // The training forward: forward's tokens [batch, num_tokens, embed_dim] and the context.
  template <TensorLike X>
  requires(rank_v<X> == 4) Trained<Tensor<T, 3>, Context> forward_train(const X& images)
  const { return embed_train("tessera::nn::PatchEmbedding::forward_train", "images", images); }

  // Given forward_train's context and dL/dtokens [batch, num_tokens, embed_dim]: adds the
  // gradients of conv1 (weight, bias), class_embedding, positional_embedding and ln_pre, and
  // returns dL/dimages [batch, in_channels, height, width] (zero for pixels beyond the patch grid,
  // which the forward drops).
  template <TensorLike G>
  Tensor<T, 4> backward(const Context& ctx, const G& grad_output) {
    return embed_backward("tessera::nn::PatchEmbedding::backward", ctx, grad_output);
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // conv1.weight is [embed_dim, in_channels, ph, pw], conv1.bias (with bias) and class_embedding
  // (with cls_token) [embed_dim], positional_embedding [num_tokens, embed_dim] and ln_pre.* (with
  // pre_norm) [embed_dim].
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    const Index E = options_.embed_dim;
    detail::check_parameter(
        fn, prefix, "conv1.weight", conv1_weight,
        {E, options_.in_channels, options_.patch_size[0], options_.patch_size[1]});
    if (options_.bias) detail::check_parameter(fn, prefix, "conv1.bias", conv1_bias, {E});
    if (options_.cls_token)
      detail::check_parameter(fn, prefix, "class_embedding", class_embedding, {E});
    detail::check_parameter(fn, prefix, "positional_embedding", positional_embedding,
                            {num_tokens(), E});
    if (options_.pre_norm) ln_pre.check_parameters(fn, detail::ParameterPrefix(prefix, "ln_pre."));
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    f(prefix + "conv1.weight", self.conv1_weight);
    if (self.options_.bias) f(prefix + "conv1.bias", self.conv1_bias);
    if (self.options_.cls_token) f(prefix + "class_embedding", self.class_embedding);
    f(prefix + "positional_embedding", self.positional_embedding);
    if (self.options_.pre_norm) LayerNorm<T>::visit(self.ln_pre, f, prefix + "ln_pre.");
  }

 private:
  template <class>
  friend class AudioPatchEmbedding;

  // forward, with the errors naming `fn` and the input as `arg` (AudioPatchEmbedding's forward
  // embeds through it, with its spectrogram checked and seen as images).
  // With `keep`, the unfolded patches are moved into *keep (for backward); ln_pre runs only
  // with `norm`.
  template <TensorLike X>
  Tensor<T, 3> embed(std::string_view fn, std::string_view arg, const X& images,
                     Tensor<T, 2>* keep = nullptr, bool norm = true) const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::PatchEmbedding: input scalar type differs from the module's");
    check_parameters(fn);
    const auto xv = cview(images);
    const Index B = xv.dim(0);
    const Index expected[] = {B, options_.in_channels, options_.image_size[0],
                              options_.image_size[1]};
    if (!std::equal(xv.shape().begin(), xv.shape().end(), expected))
      detail::raise<ShapeError>(
          fn, "argument '", arg, "' has shape ", detail::shape_string(xv.shape()), ", expected ",
          detail::shape_string(expected),
          " ([batch, in_channels, height, width] with in_channels = ", options_.in_channels,
          ", image_size = (", options_.image_size[0], ", ", options_.image_size[1], "))");
    const Index E = options_.embed_dim, K = patch_features(), Tn = num_tokens();
    const Index first = options_.cls_token ? 1 : 0;
    const auto [gh, gw] = grid();
    // B * T: with a class token, more rows than the images hold patches.
    const Index rows = detail::checked_mul(B, Tn, fn, "the tokens of argument 'images'");

    // patches: [B * T, C * ph * pw]; a class token's row is zero
    Tensor<T, 2> patches(Shape<2>{rows, K}, uninitialized);
    if (first)
      for (Index b = 0; b < B; ++b) std::fill_n(patches.data() + b * Tn * K, K, T(0));
    detail::unfold_patches(xv.data(), B, options_.in_channels, options_.image_size[0],
                           options_.image_size[1], options_.patch_size[0], options_.patch_size[1],
                           gh, gw, patches.data(), Tn, first);

    // tokens: [B * T, E] = patches [B * T, K] x conv1.weight^T [K, E] (+ conv1.bias)
    Tensor<T, 3> out(Shape<3>{B, Tn, E}, uninitialized);
    tessera::LinearOptions<T> lo;
    if (options_.bias) lo.bias = cview(conv1_bias.value);
    linear_into(patches, TensorMap<const T, 2>(conv1_weight.value.data(), {E, K}),
                out.template reshape<2>({rows, E}), lo);

    // tokens[b] += positional_embedding [T, E]; the class token is class_embedding + position 0
    const auto pos = positional_embedding.value.as_matrix();
    for (Index b = 0; b < B; ++b) {
      auto tok = out[b].as_matrix();
      tok += pos;
      if (first) tok.row(0) = class_embedding.value.as_matrix() + pos.row(0);
    }
    if (options_.pre_norm && norm) ln_pre.forward_into(out, out);
    if (keep) *keep = std::move(patches);
    return out;
  }

  // forward_train and backward, naming `fn` (AudioPatchEmbedding's go through them too).
  template <TensorLike X>
  Trained<Tensor<T, 3>, Context> embed_train(std::string_view fn, std::string_view arg,
                                             const X& images) const {
    Trained<Tensor<T, 3>, Context> r;
    r.output = embed(fn, arg, images, &r.context.patches, /*norm=*/!options_.pre_norm);
    r.context.batch = r.output.dim(0);
    r.context.weight_version = conv1_weight.version;
    if (options_.pre_norm) {
      auto n = ln_pre.forward_train(r.output);
      r.output = std::move(n.output);
      r.context.ln_pre = std::move(n.context);
    }
    return r;
  }
  template <TensorLike G>
  Tensor<T, 4> embed_backward(std::string_view fn, const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "PatchEmbedding::backward takes a [batch, num_tokens, embed_dim] gradient");
    check_parameters(fn);
    const Index B = ctx.batch, E = options_.embed_dim, K = patch_features(), Tn = num_tokens();
    const Index first = options_.cls_token ? 1 : 0;
    if (ctx.patches.shape() != Shape<2>{B * Tn, K} ||
        (options_.pre_norm && ctx.ln_pre.input.shape() != Shape<3>{B, Tn, E}))
      detail::raise<ValueError>(fn,
                                "argument 'ctx' does not come from this module's forward_train");
    const Index g_expected[] = {B, Tn, E};
    detail::check_shape_equal(fn, "grad_output", cview(grad_output).shape(), g_expected);
    detail::check_unchanged_since_forward(fn, "conv1.weight", conv1_weight, ctx.weight_version);
    // d: dL/d(tokens before ln_pre) [B, T, E]
    Tensor<T, 3> d;
    if (options_.pre_norm) {
      d = ln_pre.backward(ctx.ln_pre, grad_output);
    } else {
      d = Tensor<T, 3>(Shape<3>{B, Tn, E}, uninitialized);
      std::copy_n(cview(grad_output).data(), d.size(), d.data());
    }
    auto gpos = detail::grad_of(positional_embedding).as_matrix();
    for (Index b = 0; b < B; ++b) gpos += d[b].as_matrix();
    if (first) {
      auto gcls = detail::grad_of(class_embedding).as_vector();
      for (Index b = 0; b < B; ++b) {
        gcls += d[b][0].as_vector();
        d[b][0].as_vector().setZero();  // the class token does not come from the product
      }
    }
    const auto d2 = d.template reshape<2>({B * Tn, E});
    // conv1.weight [E, K] += d^T [E, B T] x patches [B T, K]
    matmul_into(d2, ctx.patches, TensorMap<T, 2>(detail::grad_of(conv1_weight).data(), {E, K}),
                {.transpose_a = true, .accumulate = true});
    if (options_.bias) {
      auto gb = detail::grad_of(conv1_bias).as_vector();
      for (Index r = 0; r < B * Tn; ++r) gb += d2.as_matrix().row(r).transpose();
    }
    // dpatches [B T, K] = d [B T, E] x conv1.weight [E, K], folded back onto the pixels
    const Tensor<T, 2> dpatches =
        matmul(d2, TensorMap<const T, 2>(conv1_weight.value.data(), {E, K}));
    const auto [gh, gw] = grid();
    Tensor<T, 4> dimages(
        Shape<4>{B, options_.in_channels, options_.image_size[0], options_.image_size[1]});
    detail::fold_patches(dpatches.data(), B, options_.in_channels, options_.image_size[0],
                         options_.image_size[1], options_.patch_size[0], options_.patch_size[1], gh,
                         gw, dimages.data(), Tn, first);
    return dimages;
  }

  PatchEmbeddingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::PatchEmbedding)
