// tessera: nn::AudioPatchEmbedding, a spectrogram to a sequence of patch tokens, as the Audio
// Spectrogram Transformer (Gong et al. 2021) and MBT's audio stream (Nagrani et al. 2021):
// 2-D patches over frequency and time, kernel = stride = patch size (AST with fstride = tstride =
// patch size, no overlap).
//
// A spectrogram [batch, mel_bins, frames] is a one-channel image [batch, 1, mel_bins, frames]
// (seen so without a copy), embedded by an nn::PatchEmbedding with in_channels = 1: the unfolding,
// the one product, the class token, the positions and the optional ln_pre are that module's.
// Patches are ordered frequency-major: token gy * (frames / pt) + gx holds mel bins
// [gy * pf, (gy + 1) * pf) and frames [gx * pt, (gx + 1) * pt), as Conv2d's output flattened.
// Sizes the patch does not divide drop the remainder, as Conv2d.
//
// Training: forward_train(spectrogram) keeps the unfolded patches (im2col, [batch * tokens,
// pf * pt]) and, with pre_norm, ln_pre's context; backward returns the spectrogram's gradient (the
// patch gradients folded back, the transpose of the unfolding; dropped remainder bins and frames
// get zero) and adds conv1's, class_embedding's, positional_embedding's and ln_pre's gradients.
//
// State dict keys: PatchEmbedding's (conv1.weight [embed_dim, 1, pf, pt], conv1.bias,
// class_embedding, positional_embedding, ln_pre.*), under the same prefix.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/linear.hpp"
#include "tessera/nn/layer_norm.hpp"
#include "tessera/nn/module.hpp"
#include "tessera/nn/patch_embedding.hpp"
#include "tessera/nn/training.hpp"

namespace tessera::nn {

struct AudioPatchEmbeddingOptions {
  Index mel_bins = 0;                       // frequency bins of the spectrogram, > 0
  Index frames = 0;                         // time frames of the spectrogram, > 0
  std::array<Index, 2> patch_size{16, 16};  // (frequency, time)
  Index embed_dim = 0;                      // > 0
  bool bias = true;                         // conv1.bias
  bool cls_token = false;                   // prepend class_embedding
  bool pre_norm = false;                    // ln_pre after the positions
  double layer_norm_eps = 1e-5;
  std::uint64_t seed = 0;
};

template <class T>
class AudioPatchEmbedding : public Module<AudioPatchEmbedding<T>> {
 public:
  PatchEmbedding<T> patch;  // in_channels = 1, image_size = (mel_bins, frames)

  AudioPatchEmbedding() = default;
  explicit AudioPatchEmbedding(const AudioPatchEmbeddingOptions& o) : options_(o) {
    // Checked here first so that the messages name the spectrogram's options.
    constexpr std::string_view fn = "tessera::nn::AudioPatchEmbedding";
    detail::check_patch_grid(fn, "(mel_bins, frames)", {o.mel_bins, o.frames}, o.patch_size);
    if (o.embed_dim <= 0)
      detail::raise<ValueError>(fn, "embed_dim is ", o.embed_dim, ", expected a value > 0");
    patch = PatchEmbedding<T>({.image_size = {o.mel_bins, o.frames},
                               .patch_size = o.patch_size,
                               .in_channels = 1,
                               .embed_dim = o.embed_dim,
                               .bias = o.bias,
                               .cls_token = o.cls_token,
                               .pre_norm = o.pre_norm,
                               .layer_norm_eps = o.layer_norm_eps,
                               .seed = o.seed});
  }

  const AudioPatchEmbeddingOptions& options() const noexcept { return options_; }
  Index embed_dim() const noexcept { return options_.embed_dim; }
  // The patch grid (frequency, time).
  std::array<Index, 2> grid() const noexcept { return patch.grid(); }
  Index num_patches() const noexcept { return patch.num_patches(); }
  Index num_tokens() const noexcept { return patch.num_tokens(); }

  // spectrogram: [batch, mel_bins, frames] -> [batch, num_tokens, embed_dim]
  template <TensorLike X>
  requires(rank_v<X> == 3) Tensor<T, 3> forward(const X& spectrogram)
  const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::AudioPatchEmbedding: input scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::AudioPatchEmbedding::forward";
    const auto xv = cview(spectrogram);
    const Index B = xv.dim(0);
    check_spectrogram(fn, xv.shape());
    // images: [B, 1, mel_bins, frames], a view; the parameters are checked (and named) under
    // this module's name
    return patch.embed(fn, "spectrogram",
                       xv.template reshape<4>({B, 1, options_.mel_bins, options_.frames}));
  }

  // What backward needs from forward_train: PatchEmbedding's context (the unfolded patches, a
  // class token's row zero, and ln_pre's).
  using Context = typename PatchEmbedding<T>::Context;

  // The training forward: forward's output (the same operations, bit for bit) and the context.
  // Errors as forward's, naming "tessera::nn::AudioPatchEmbedding::forward_train".
  template <TensorLike X>
  requires(rank_v<X> == 3) Trained<Tensor<T, 3>, Context> forward_train(const X& spectrogram)
  const {
    static_assert(std::is_same_v<scalar_t<X>, T>,
                  "nn::AudioPatchEmbedding: input scalar type differs from the module's");
    constexpr std::string_view fn = "tessera::nn::AudioPatchEmbedding::forward_train";
    const auto xv = cview(spectrogram);
    const Index B = xv.dim(0);
    check_spectrogram(fn, xv.shape());
    return patch.embed_train(fn, "spectrogram",
                             xv.template reshape<4>({B, 1, options_.mel_bins, options_.frames}));
  }

  // Given forward_train's context and dL/dy [batch, num_tokens, embed_dim]: adds the gradients of
  // conv1.weight, conv1.bias, class_embedding, positional_embedding and ln_pre, and returns
  // dL/dspectrogram [batch, mel_bins, frames] (bins and frames beyond the patch grid get 0).
  // Throws ShapeError when grad_output's shape is not the output's or a parameter's shape
  // changed, ValueError for a context of another module.
  template <TensorLike G>
  Tensor<T, 3> backward(const Context& ctx, const G& grad_output) {
    static_assert(rank_v<G> == 3 && std::is_same_v<scalar_t<G>, T>,
                  "nn::AudioPatchEmbedding::backward takes a [batch, num_tokens, embed_dim] "
                  "gradient of the module's scalar type");
    Tensor<T, 4> d =
        patch.embed_backward("tessera::nn::AudioPatchEmbedding::backward", ctx, grad_output);
    Tensor<T, 3> dx(Shape<3>{d.dim(0), options_.mel_bins, options_.frames}, uninitialized);
    std::copy_n(d.data(), d.size(), dx.data());
    return dx;
  }

  // Throws ShapeError, naming `fn` and the parameter as `prefix` + its state-dict name, unless
  // every parameter has the shape the options give (nn::PatchEmbedding::check_parameters).
  void check_parameters(std::string_view fn, std::string_view prefix = "") const {
    patch.check_parameters(fn, prefix);
  }

  template <class Self, class F>
  static void visit(Self& self, F&& f, const std::string& prefix) {
    PatchEmbedding<T>::visit(self.patch, f, prefix);
  }

 private:
  void check_spectrogram(std::string_view fn, std::span<const Index> shape) const {
    const Index expected[] = {shape[0], options_.mel_bins, options_.frames};
    if (!std::equal(shape.begin(), shape.end(), expected))
      detail::raise<ShapeError>(fn, "argument 'spectrogram' has shape ",
                                detail::shape_string(shape), ", expected ",
                                detail::shape_string(expected), " ([batch, mel_bins, frames])");
  }

  AudioPatchEmbeddingOptions options_{};
};

}  // namespace tessera::nn

// The compiled mode's instantiations (core/config.hpp).
TESSERA_INSTANTIATE_FLOATING(class tessera::nn::AudioPatchEmbedding)
