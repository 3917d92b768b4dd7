// Adversarial cases for the modules (nn/ and fusion/), through their public API only:
//   - parameters replaced by tensors of the wrong shape (every module checks every parameter it
//     reads at each forward-like entry and throws ShapeError naming the entry and the parameter
//     under its state-dict name);
//   - enum values outside the enumeration (Activation(42), Pooling(42)...): ValueError;
//   - errors that must name the entry point the user called and the argument as written, never
//     an inner module's or kernel's;
//   - empty inputs (batch 0, length 0) and positions near INT64_MAX: no undefined behaviour (run
//     this binary under -fsanitize=address,undefined);
//   - NaN in an input or a parameter: NaN out, never a plausible number; fully padded rows keep
//     their documented values.
// To add a case: write a TYPED_TEST in the section of its kind, build the module with small
// options, break one thing, and check the exception type and the message pieces with
// TESSERA_EXPECT_THROW_MSG (or the output's value). A case whose root cause lies outside nn/ and
// fusion/ is written anyway and marked GTEST_SKIP() with the reason until it is fixed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "fusion/fusion_test_util.hpp"
#include "tessera/tessera.hpp"
#include "test_util.hpp"

namespace modules_test {

using tessera::Activation;
using tessera::Index;
using tessera::IndexError;
using tessera::Mask;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
namespace nn = tessera::nn;
namespace fusion = tessera::fusion;

template <class T>
class ModulesRobustness : public ::testing::Test {};
TYPED_TEST_SUITE(ModulesRobustness, tessera::test::Scalars);

template <class T>
T nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

template <class X>
bool all_nan(const X& x) {
  for (Index i = 0; i < x.size(); ++i)
    if (!std::isnan(x.data()[i])) return false;
  return x.size() > 0;
}
template <class X>
bool any_nan(const X& x) {
  for (Index i = 0; i < x.size(); ++i)
    if (std::isnan(x.data()[i])) return true;
  return false;
}
template <class X>
bool all_finite(const X& x) {
  for (Index i = 0; i < x.size(); ++i)
    if (!std::isfinite(x.data()[i])) return false;
  return true;
}

template <class T>
Tensor<T, 3> tokens(Index b, Index l, Index d, std::uint64_t seed = 3) {
  Tensor<T, 3> x(b, l, d);
  x.setRandom(seed);
  return x;
}

// ---- Kind 2: parameters replaced by tensors of the wrong shape -------------------------------

TYPED_TEST(ModulesRobustness, LinearChecksItsParameters) {
  using T = TypeParam;
  nn::Linear<T> lin({.in_features = 4, .out_features = 2});
  const Tensor<T, 2> x(3, 4);
  lin.weight.value = Tensor<T, 2>(3, 4);
  // Before: "tessera::linear: argument 'out' has shape [3, 2], expected [3, 3]", an argument the
  // user never passed.
  TESSERA_EXPECT_THROW_MSG(lin.forward(x), ShapeError, "tessera::nn::Linear::forward",
                           "parameter 'weight' has shape [3, 4], expected [2, 4]");
  Tensor<T, 2> out(3, 2);
  TESSERA_EXPECT_THROW_MSG(lin.forward_into(x, out), ShapeError,
                           "tessera::nn::Linear::forward_into", "parameter 'weight'");
  TESSERA_EXPECT_THROW_MSG(lin.prepack(), ShapeError, "tessera::nn::Linear::prepack",
                           "parameter 'weight' has shape [3, 4]");
  lin.weight.value = Tensor<T, 2>(2, 4);
  lin.bias.value = Tensor<T, 1>(1);
  TESSERA_EXPECT_THROW_MSG(lin.forward(x), ShapeError, "tessera::nn::Linear::forward",
                           "parameter 'bias' has shape [1], expected [2]");
  lin.bias.value = Tensor<T, 1>(2);
  EXPECT_NO_THROW(lin.forward(x));
  // The messages name what the user passed to this module.
  TESSERA_EXPECT_THROW_MSG(lin.forward_into(x, Tensor<T, 2>(3, 3)), ShapeError,
                           "tessera::nn::Linear::forward_into", "argument 'out' has shape [3, 3]",
                           "expected [3, 2]");
  const Tensor<T, 2> res(2, 2);
  TESSERA_EXPECT_THROW_MSG(lin.forward(x, Activation::identity, tessera::cview(res)), ShapeError,
                           "tessera::nn::Linear::forward", "argument 'residual' has shape [2, 2]",
                           "expected [3, 2]");
}

TYPED_TEST(ModulesRobustness, LayerNormChecksItsParameters) {
  using T = TypeParam;
  nn::LayerNorm<T> ln({.normalized_shape = 4});
  const Tensor<T, 2> x(2, 4);
  ln.weight.value = Tensor<T, 1>(3);
  TESSERA_EXPECT_THROW_MSG(ln.forward(x), ShapeError, "tessera::nn::LayerNorm::forward",
                           "parameter 'weight' has shape [3], expected [4]");
  ln.weight.value = Tensor<T, 1>(4);
  ln.bias.value = Tensor<T, 1>(5);
  Tensor<T, 2> out(2, 4);
  TESSERA_EXPECT_THROW_MSG(ln.forward_into(x, out), ShapeError,
                           "tessera::nn::LayerNorm::forward_into",
                           "parameter 'bias' has shape [5], expected [4]");
  ln.bias.value = Tensor<T, 1>(4);
  TESSERA_EXPECT_THROW_MSG(ln.forward_into(x, Tensor<T, 2>(2, 5)), ShapeError,
                           "tessera::nn::LayerNorm::forward_into",
                           "argument 'out' has shape [2, 5]");
  // An eps that is zero in T would divide by zero in the kernel.
  if constexpr (std::is_same_v<T, float>)
    TESSERA_EXPECT_THROW_MSG(nn::LayerNorm<T>({.normalized_shape = 4, .eps = 1e-50}), ValueError,
                             "tessera::nn::LayerNorm", "eps is 1e-50");
}

TYPED_TEST(ModulesRobustness, EmbeddingChecksWeightAndIds) {
  using T = TypeParam;
  nn::Embedding<T> e({.num_embeddings = 10, .embedding_dim = 8});
  Tensor<std::int64_t, 1> ids(3);
  ids(2) = 9;
  e.weight.value = Tensor<T, 2>(5, 8);  // id 9 would read past the table
  TESSERA_EXPECT_THROW_MSG(e.forward(ids), ShapeError, "tessera::nn::Embedding::forward",
                           "parameter 'weight' has shape [5, 8], expected [10, 8]");
  e.weight.value = Tensor<T, 2>(10, 8);
  ids(1) = 10;
  TESSERA_EXPECT_THROW_MSG(e.forward(ids), IndexError, "tessera::nn::Embedding::forward",
                           "argument 'ids' holds id 10 at position [1]", "[0, 10)");
  ids(1) = std::numeric_limits<std::int64_t>::min();
  TESSERA_EXPECT_THROW_MSG(e.forward(ids), IndexError, "holds id -9223372036854775808");
  Tensor<std::uint64_t, 1> big(1);
  big(0) = std::numeric_limits<std::uint64_t>::max();
  TESSERA_EXPECT_THROW_MSG(e.forward(big), IndexError, "holds id 18446744073709551615");
}

TYPED_TEST(ModulesRobustness, TokenEmbeddingChecksItsParameters) {
  using T = TypeParam;
  nn::TokenEmbedding<T> te({.vocab_size = 10, .max_len = 16, .embed_dim = 8, .layer_norm = true});
  Tensor<std::int64_t, 2> ids(2, 12);
  // The instance: an Eigen assertion, and with -DNDEBUG a read past the table.
  te.positional_embedding.value = Tensor<T, 2>(4, 8);
  TESSERA_EXPECT_THROW_MSG(te.forward(ids), ShapeError, "tessera::nn::TokenEmbedding::forward",
                           "parameter 'positional_embedding' has shape [4, 8], expected [16, 8]");
  te.positional_embedding.value = Tensor<T, 2>(16, 8);
  te.token_embedding.weight.value = Tensor<T, 2>(10, 4);
  TESSERA_EXPECT_THROW_MSG(
      te.forward(ids), ShapeError, "tessera::nn::TokenEmbedding::forward",
      "parameter 'token_embedding.weight' has shape [10, 4], expected [10, 8]");
  te.token_embedding.weight.value = Tensor<T, 2>(10, 8);
  te.norm.bias.value = Tensor<T, 1>(7);
  TESSERA_EXPECT_THROW_MSG(te.forward(ids), ShapeError, "parameter 'norm.bias' has shape [7]");
  te.norm.bias.value = Tensor<T, 1>(8);
  EXPECT_NO_THROW(te.forward(ids));
  // A bad id is reported under the function the user called, not nn::Embedding's.
  ids(1, 3) = 10;
  TESSERA_EXPECT_THROW_MSG(te.forward(ids), IndexError, "tessera::nn::TokenEmbedding::forward",
                           "argument 'ids' holds id 10 at position [1, 3]");
}

TYPED_TEST(ModulesRobustness, PatchEmbeddingsCheckTheirParameters) {
  using T = TypeParam;
  nn::PatchEmbedding<T> pe({.image_size = {8, 8},
                            .patch_size = {4, 4},
                            .in_channels = 2,
                            .embed_dim = 6,
                            .cls_token = true,
                            .pre_norm = true});
  const Tensor<T, 4> images(1, 2, 8, 8);
  const char* fn = "tessera::nn::PatchEmbedding::forward";
  pe.conv1_weight.value = Tensor<T, 4>(6, 1, 4, 4);
  TESSERA_EXPECT_THROW_MSG(
      pe.forward(images), ShapeError, fn,
      "parameter 'conv1.weight' has shape [6, 1, 4, 4], expected [6, 2, 4, 4]");
  pe.conv1_weight.value = Tensor<T, 4>(6, 2, 4, 4);
  pe.conv1_bias.value = Tensor<T, 1>(5);
  TESSERA_EXPECT_THROW_MSG(pe.forward(images), ShapeError, fn, "parameter 'conv1.bias'");
  pe.conv1_bias.value = Tensor<T, 1>(6);
  pe.class_embedding.value = Tensor<T, 1>(2);
  TESSERA_EXPECT_THROW_MSG(pe.forward(images), ShapeError, fn,
                           "parameter 'class_embedding' has shape [2], expected [6]");
  pe.class_embedding.value = Tensor<T, 1>(6);
  pe.positional_embedding.value = Tensor<T, 2>(4, 6);
  TESSERA_EXPECT_THROW_MSG(pe.forward(images), ShapeError, fn,
                           "parameter 'positional_embedding' has shape [4, 6], expected [5, 6]");
  pe.positional_embedding.value = Tensor<T, 2>(5, 6);
  pe.ln_pre.weight.value = Tensor<T, 1>(1);
  TESSERA_EXPECT_THROW_MSG(pe.forward(images), ShapeError, fn, "parameter 'ln_pre.weight'");
  pe.ln_pre.weight.value = Tensor<T, 1>(6);
  EXPECT_NO_THROW(pe.forward(images));

  nn::AudioPatchEmbedding<T> ape(
      {.mel_bins = 8, .frames = 12, .patch_size = {4, 4}, .embed_dim = 6});
  ape.patch.positional_embedding.value = Tensor<T, 2>(2, 6);
  TESSERA_EXPECT_THROW_MSG(ape.forward(Tensor<T, 3>(1, 8, 12)), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::forward",
                           "parameter 'positional_embedding' has shape [2, 6], expected [6, 6]");
}

TYPED_TEST(ModulesRobustness, ModalityAndPositionalEmbeddingsCheckTheirParameters) {
  using T = TypeParam;
  nn::ModalityEmbedding<T> me({.num_modalities = 3, .embed_dim = 4});
  me.weight.value = Tensor<T, 2>(1, 4);  // modality 2 would read past the table
  TESSERA_EXPECT_THROW_MSG(me.forward(Tensor<T, 3>(1, 2, 4), 2), ShapeError,
                           "tessera::nn::ModalityEmbedding::forward",
                           "parameter 'weight' has shape [1, 4], expected [3, 4]");
  TESSERA_EXPECT_THROW_MSG(me.forward(Tensor<T, 3>(1, 2, 4), Tensor<int, 2>(1, 2)), ShapeError,
                           "parameter 'weight' has shape [1, 4]");

  nn::LearnedPositionalEmbedding<T> lpe({.max_len = 8, .embed_dim = 4});
  lpe.weight.value = Tensor<T, 2>(8, 2);
  TESSERA_EXPECT_THROW_MSG(lpe.forward(Tensor<T, 3>(1, 2, 4)), ShapeError,
                           "tessera::nn::LearnedPositionalEmbedding::forward",
                           "parameter 'weight' has shape [8, 2], expected [8, 4]");
}

TYPED_TEST(ModulesRobustness, FeedForwardChecksItsParameters) {
  using T = TypeParam;
  nn::FeedForward<T> ff({.d_model = 4, .dim_feedforward = 6});
  const Tensor<T, 2> x(3, 4);
  ff.linear2.weight.value = Tensor<T, 2>(4, 5);
  TESSERA_EXPECT_THROW_MSG(ff.forward(x), ShapeError, "tessera::nn::FeedForward::forward",
                           "parameter 'linear2.weight' has shape [4, 5], expected [4, 6]");
  TESSERA_EXPECT_THROW_MSG(ff.prepack(), ShapeError, "tessera::nn::FeedForward::prepack",
                           "parameter 'linear2.weight'");
  ff.linear2.weight.value = Tensor<T, 2>(4, 6);
  ff.linear1.bias.value = Tensor<T, 1>(4);
  Tensor<T, 2> out(3, 4);
  TESSERA_EXPECT_THROW_MSG(ff.forward_into(x, out), ShapeError,
                           "tessera::nn::FeedForward::forward_into",
                           "parameter 'linear1.bias' has shape [4], expected [6]");
  ff.linear1.bias.value = Tensor<T, 1>(6);
  const Tensor<T, 2> res(2, 4);
  TESSERA_EXPECT_THROW_MSG(ff.forward(x, tessera::cview(res)), ShapeError,
                           "tessera::nn::FeedForward::forward",
                           "argument 'residual' has shape [2, 4], expected [3, 4]");
}

TYPED_TEST(ModulesRobustness, TransformerLayersCheckEveryParameter) {
  using T = TypeParam;
  const nn::TransformerLayerOptions lo{.d_model = 8, .nhead = 2, .dim_feedforward = 16};
  nn::TransformerEncoderLayer<T> enc(lo);
  const auto src = tokens<T>(2, 3, 8);
  const char* efn = "tessera::nn::TransformerEncoderLayer::forward";
  // The MultiheadAttention instance, seen from the layer: an 8 x 8 in_proj_weight.
  enc.self_attn.in_proj_weight.value = Tensor<T, 2>(8, 8);
  TESSERA_EXPECT_THROW_MSG(
      enc.forward(src), ShapeError, efn,
      "parameter 'self_attn.in_proj_weight' has shape [8, 8], expected [24, 8]");
  TESSERA_EXPECT_THROW_MSG(enc.prepack(), ShapeError,
                           "tessera::nn::TransformerEncoderLayer::prepack",
                           "parameter 'self_attn.in_proj_weight'");
  enc.self_attn.in_proj_weight.value = Tensor<T, 2>(24, 8);
  enc.self_attn.out_proj.bias.value = Tensor<T, 1>(2);
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ShapeError, efn,
                           "parameter 'self_attn.out_proj.bias' has shape [2], expected [8]");
  enc.self_attn.out_proj.bias.value = Tensor<T, 1>(8);
  enc.norm2.bias.value = Tensor<T, 1>(3);
  Tensor<T, 3> out(2, 3, 8);
  TESSERA_EXPECT_THROW_MSG(enc.forward_into(src, out), ShapeError,
                           "tessera::nn::TransformerEncoderLayer::forward_into",
                           "parameter 'norm2.bias' has shape [3], expected [8]");
  enc.norm2.bias.value = Tensor<T, 1>(8);
  enc.ff.linear1.weight.value = Tensor<T, 2>(16, 4);
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ShapeError, efn,
                           "parameter 'linear1.weight' has shape [16, 4], expected [16, 8]");

  nn::TransformerDecoderLayer<T> dec(lo);
  const auto memory = tokens<T>(2, 5, 8, 4);
  const char* dfn = "tessera::nn::TransformerDecoderLayer::forward";
  dec.multihead_attn.in_proj_bias.value = Tensor<T, 1>(8);
  TESSERA_EXPECT_THROW_MSG(dec.forward(src, memory), ShapeError, dfn,
                           "parameter 'multihead_attn.in_proj_bias' has shape [8], expected [24]");
  TESSERA_EXPECT_THROW_MSG(dec.make_cache(memory), ShapeError,
                           "tessera::nn::TransformerDecoderLayer::make_cache",
                           "parameter 'multihead_attn.in_proj_bias'");
  dec.multihead_attn.in_proj_bias.value = Tensor<T, 1>(24);
  auto cache = dec.make_cache(memory);
  dec.norm3.weight.value = Tensor<T, 1>(9);
  TESSERA_EXPECT_THROW_MSG(dec.step(tokens<T>(2, 1, 8), cache), ShapeError,
                           "tessera::nn::TransformerDecoderLayer::step",
                           "parameter 'norm3.weight' has shape [9], expected [8]");
  EXPECT_EQ(cache.self_kv.length, 0) << "a failed step must not touch the cache";
}

TYPED_TEST(ModulesRobustness, TransformerStacksCheckLayersAndParameters) {
  using T = TypeParam;
  const nn::TransformerLayerOptions lo{.d_model = 8, .nhead = 2, .dim_feedforward = 16};
  nn::TransformerEncoder<T> enc({.layer = lo, .num_layers = 2, .final_norm = true});
  const auto src = tokens<T>(2, 3, 8);
  const char* efn = "tessera::nn::TransformerEncoder::forward";
  enc.layers[1].self_attn.out_proj.weight.value = Tensor<T, 2>(8, 4);
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ShapeError, efn,
                           "parameter 'layers.1.self_attn.out_proj.weight' has shape [8, 4], "
                           "expected [8, 8]");
  enc.layers[1].self_attn.out_proj.weight.value = Tensor<T, 2>(8, 8);
  enc.norm.weight.value = Tensor<T, 1>(2);
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ShapeError, efn, "parameter 'norm.weight'");
  enc.norm.weight.value = Tensor<T, 1>(8);
  EXPECT_NO_THROW(enc.forward(src));
  enc.layers.pop_back();
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ValueError, efn,
                           "member 'layers' holds 1 layers, expected 2");
  enc.layers.clear();  // layers.front() would be undefined
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ValueError, efn, "holds 0 layers");
  enc.layers.emplace_back(lo);
  enc.layers.emplace_back(nn::TransformerLayerOptions{.d_model = 4, .nhead = 2});
  TESSERA_EXPECT_THROW_MSG(enc.forward(src), ValueError, efn, "member 'layers[1]' has d_model 4");

  nn::TransformerDecoder<T> dec({.layer = lo, .num_layers = 2});
  const auto memory = tokens<T>(2, 5, 8, 4);
  auto cache = dec.make_cache(memory);
  dec.layers[0].self_attn.in_proj_weight.value = Tensor<T, 2>(8, 8);
  TESSERA_EXPECT_THROW_MSG(dec.forward(src, memory), ShapeError,
                           "tessera::nn::TransformerDecoder::forward",
                           "parameter 'layers.0.self_attn.in_proj_weight' has shape [8, 8]");
  TESSERA_EXPECT_THROW_MSG(dec.step(tokens<T>(2, 1, 8), cache), ShapeError,
                           "tessera::nn::TransformerDecoder::step",
                           "parameter 'layers.0.self_attn.in_proj_weight'");
  TESSERA_EXPECT_THROW_MSG(dec.make_cache(memory), ShapeError,
                           "tessera::nn::TransformerDecoder::make_cache",
                           "parameter 'layers.0.self_attn.in_proj_weight'");
  EXPECT_EQ(cache.length(), 0);
}

TYPED_TEST(ModulesRobustness, FusionModulesCheckTheirParameters) {
  using T = TypeParam;
  const auto video = tokens<T>(2, 3, 8), audio = tokens<T>(2, 4, 8, 5);
  fusion::EarlyFusion<T> early({.encoder = tessera::test::small_encoder(1)});
  early.modality_embedding.weight.value = Tensor<T, 2>(1, 8);
  TESSERA_EXPECT_THROW_MSG(
      early.forward({video, audio}), ShapeError, "tessera::fusion::EarlyFusion::forward",
      "parameter 'modality_embedding.weight' has shape [1, 8], expected [2, 8]");
  early.modality_embedding.weight.value = Tensor<T, 2>(2, 8);
  early.encoder.layers[0].ff.linear2.bias.value = Tensor<T, 1>(16);
  TESSERA_EXPECT_THROW_MSG(early.forward({video, audio}), ShapeError,
                           "tessera::fusion::EarlyFusion::forward",
                           "parameter 'encoder.layers.0.linear2.bias' has shape [16]");

  fusion::LateFusion<T> late(
      {.encoder = tessera::test::small_encoder(1), .combine = fusion::Combine::weighted_sum});
  const char* lfn = "tessera::fusion::LateFusion::forward";
  late.fusion_weights.value = Tensor<T, 1>(3);
  TESSERA_EXPECT_THROW_MSG(late.forward({video, audio}), ShapeError, lfn,
                           "parameter 'fusion_weights' has shape [3], expected [2]");
  late.fusion_weights.value = Tensor<T, 1>(2);
  late.encoders[1].layers[0].norm1.weight.value = Tensor<T, 1>(1);
  TESSERA_EXPECT_THROW_MSG(late.forward({video, audio}), ShapeError, lfn,
                           "parameter 'encoders.1.layers.0.norm1.weight'");
  late.encoders.pop_back();  // encoders[1] would be read past the end
  TESSERA_EXPECT_THROW_MSG(late.forward({video, audio}), ValueError, lfn,
                           "member 'encoders' holds 1 encoders, expected 2");
  fusion::LateFusion<T> concat({.encoder = tessera::test::small_encoder(1),
                                .combine = fusion::Combine::concat,
                                .output_dim = 3});
  concat.head.weight.value = Tensor<T, 2>(3, 8);
  TESSERA_EXPECT_THROW_MSG(concat.forward({video, audio}), ShapeError, lfn,
                           "parameter 'head.weight' has shape [3, 8], expected [3, 16]");

  fusion::CrossModalAttention<T> cma({.embed_dim = 8, .embed_dim_b = 4, .num_heads = 2});
  const auto b4 = tokens<T>(2, 4, 4, 6);
  const char* cfn = "tessera::fusion::CrossModalAttention::forward";
  cma.attn_b.k_proj_weight.value = Tensor<T, 2>(4, 4);
  TESSERA_EXPECT_THROW_MSG(cma.forward(video, b4), ShapeError, cfn,
                           "parameter 'attn_b.k_proj_weight' has shape [4, 4], expected [4, 8]");
  cma.attn_b.k_proj_weight.value = Tensor<T, 2>(4, 8);
  cma.norm_a.weight.value = Tensor<T, 1>(4);
  TESSERA_EXPECT_THROW_MSG(cma.forward(video, b4), ShapeError, cfn, "parameter 'norm_a.weight'");

  fusion::BottleneckFusion<T> mbt({.encoder = tessera::test::small_encoder(2), .n_bottlenecks = 4});
  mbt.bottleneck.value = Tensor<T, 3>(1, 2, 8);
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video, audio}), ShapeError,
                           "tessera::fusion::BottleneckFusion::forward",
                           "parameter 'bottleneck' has shape [1, 2, 8], expected [1, 4, 8]");
  TESSERA_EXPECT_THROW_MSG(mbt.initial_state({video, audio}), ShapeError,
                           "tessera::fusion::BottleneckFusion::initial_state",
                           "parameter 'bottleneck'");
  mbt.bottleneck.value = Tensor<T, 3>(1, 4, 8);
  auto state = mbt.initial_state({video, audio});
  mbt.encoders[0].layers[1].ff.linear1.weight.value = Tensor<T, 2>(2, 2);
  TESSERA_EXPECT_THROW_MSG(mbt.forward_layer(0, state), ShapeError,
                           "tessera::fusion::BottleneckFusion::forward_layer",
                           "parameter 'encoders.0.layers.1.linear1.weight' has shape [2, 2]");
  mbt.encoders[0].layers.pop_back();  // layers[1] would be read past the end
  TESSERA_EXPECT_THROW_MSG(mbt.forward({video, audio}), ValueError,
                           "tessera::fusion::BottleneckFusion::forward",
                           "member 'encoders.0.layers'", "holds 1 layers, expected 2");
}

// ---- Kind 7: enum values outside the enumeration ----------------------------------------------

TYPED_TEST(ModulesRobustness, InvalidEnumValuesAreValueErrors) {
  using T = TypeParam;
  const auto bad = static_cast<Activation>(42);
  // Before: FeedForward and Linear ran Activation(42) as the identity.
  TESSERA_EXPECT_THROW_MSG(
      nn::FeedForward<T>({.d_model = 4, .dim_feedforward = 8, .activation = bad}), ValueError,
      "tessera::nn::FeedForward", "activation is Activation(42)");
  nn::Linear<T> lin({.in_features = 4, .out_features = 2});
  TESSERA_EXPECT_THROW_MSG(lin.forward(Tensor<T, 2>(3, 4), bad), ValueError,
                           "tessera::nn::Linear::forward", "argument 'act' is Activation(42)");
  Tensor<T, 2> out(3, 2);
  TESSERA_EXPECT_THROW_MSG(lin.forward_into(Tensor<T, 2>(3, 4), out, bad), ValueError,
                           "tessera::nn::Linear::forward_into", "Activation(42)");
  TESSERA_EXPECT_THROW_MSG(
      nn::TransformerEncoderLayer<T>({.d_model = 8, .nhead = 2, .activation = bad}), ValueError,
      "tessera::nn::TransformerEncoderLayer", "activation is Activation(42)");
  TESSERA_EXPECT_THROW_MSG(
      nn::TransformerDecoderLayer<T>({.d_model = 8, .nhead = 2, .activation = Activation(-1)}),
      ValueError, "tessera::nn::TransformerDecoderLayer", "activation is Activation(-1)");
  TESSERA_EXPECT_THROW_MSG(fusion::LateFusion<T>({.encoder = tessera::test::small_encoder(1),
                                                  .pooling = static_cast<fusion::Pooling>(42)}),
                           ValueError, "tessera::fusion::LateFusion", "pooling is Pooling(42)");
  TESSERA_EXPECT_THROW_MSG(fusion::LateFusion<T>({.encoder = tessera::test::small_encoder(1),
                                                  .combine = static_cast<fusion::Combine>(7)}),
                           ValueError, "tessera::fusion::LateFusion", "combine is Combine(7)");
}

// ---- Kind 14: errors name the entry point called and the argument as written ---------------

TYPED_TEST(ModulesRobustness, ErrorsNameTheEntryPointCalled) {
  using T = TypeParam;
  // Options a member's constructor would have rejected under its own name.
  TESSERA_EXPECT_THROW_MSG(nn::FeedForward<T>({.d_model = -1, .dim_feedforward = 4}), ValueError,
                           "tessera::nn::FeedForward:", "d_model is -1");
  TESSERA_EXPECT_THROW_MSG(nn::TransformerEncoderLayer<T>({.d_model = 0}), ValueError,
                           "tessera::nn::TransformerEncoderLayer:", "d_model is 0");
  TESSERA_EXPECT_THROW_MSG(nn::TransformerDecoderLayer<T>({.d_model = 8, .nhead = 3}), ValueError,
                           "tessera::nn::TransformerDecoderLayer:", "nhead is 3");
  TESSERA_EXPECT_THROW_MSG(
      nn::TransformerEncoderLayer<T>({.d_model = 8, .nhead = 2, .layer_norm_eps = -1}), ValueError,
      "tessera::nn::TransformerEncoderLayer:", "layer_norm_eps is -1");

  // Inputs that an inner module or kernel would have rejected under its own name.
  const nn::TransformerLayerOptions lo{.d_model = 8, .nhead = 2, .dim_feedforward = 16};
  const nn::TransformerEncoderLayer<T> enc(lo);
  const auto src = tokens<T>(2, 3, 8);
  TESSERA_EXPECT_THROW_MSG(enc.forward(tokens<T>(2, 3, 6)), ShapeError,
                           "tessera::nn::TransformerEncoderLayer::forward",
                           "argument 'src' has shape [2, 3, 6]", "d_model = 8");
  Tensor<bool, 2> pad(2, 4);
  TESSERA_EXPECT_THROW_MSG(enc.forward(src, {.src_key_padding_mask = Mask::blocked(pad)}),
                           ShapeError, "tessera::nn::TransformerEncoderLayer::forward",
                           "argument 'src_key_padding_mask' has shape [2, 4], expected [2, 3]");
  Tensor<bool, 2> square(4, 4);
  TESSERA_EXPECT_THROW_MSG(enc.forward(src, {.src_mask = Mask::blocked(square)}), ShapeError,
                           "argument 'src_mask' has shape [4, 4]", "expected [3, 3] or [4, 3, 3]");
  const nn::TransformerEncoder<T> stack({.layer = lo, .num_layers = 2});
  TESSERA_EXPECT_THROW_MSG(stack.forward(tokens<T>(2, 3, 6)), ShapeError,
                           "tessera::nn::TransformerEncoder::forward", "argument 'src'");

  const nn::TransformerDecoder<T> dec({.layer = lo, .num_layers = 1});
  TESSERA_EXPECT_THROW_MSG(dec.forward(src, tokens<T>(3, 5, 8)), ShapeError,
                           "tessera::nn::TransformerDecoder::forward",
                           "argument 'memory' has shape [3, 5, 8], expected [2, L, 8]");
  TESSERA_EXPECT_THROW_MSG(dec.make_cache(tokens<T>(2, 5, 6)), ShapeError,
                           "tessera::nn::TransformerDecoder::make_cache", "argument 'memory'");
  Tensor<bool, 2> mpad(2, 4);
  TESSERA_EXPECT_THROW_MSG(dec.make_cache(tokens<T>(2, 5, 8), Mask::blocked(mpad)), ShapeError,
                           "tessera::nn::TransformerDecoder::make_cache",
                           "argument 'memory_key_padding_mask' has shape [2, 4], expected [2, 5]");
  auto cache = dec.make_cache(tokens<T>(2, 5, 8));
  TESSERA_EXPECT_THROW_MSG(
      dec.step(tokens<T>(3, 1, 8), cache), ShapeError, "tessera::nn::TransformerDecoder::step",
      "argument 'cache.layers[0]' holds", "batch 2", "argument 'tgt' has shape [3, 1, 8]");
  TESSERA_EXPECT_THROW_MSG(dec.step(tokens<T>(2, 1, 4), cache), ShapeError,
                           "tessera::nn::TransformerDecoder::step", "argument 'tgt'");

  const nn::AudioPatchEmbedding<T> ape(
      {.mel_bins = 8, .frames = 8, .patch_size = {4, 4}, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(ape.forward(Tensor<T, 3>(1, 8, 9)), ShapeError,
                           "tessera::nn::AudioPatchEmbedding::forward", "argument 'spectrogram'");
}

// ---- Kind 15: empty inputs and sizes near the integer limits --------------------------------

TYPED_TEST(ModulesRobustness, EmptyInputsGiveEmptyOutputs) {
  using T = TypeParam;
  const nn::Linear<T> lin({.in_features = 4, .out_features = 3});
  EXPECT_EQ(lin.forward(Tensor<T, 2>(0, 4)).shape(), (tessera::Shape<2>{0, 3}));
  const nn::LayerNorm<T> ln({.normalized_shape = 4});
  EXPECT_EQ(ln.forward(Tensor<T, 3>(0, 2, 4)).size(), 0);
  const nn::FeedForward<T> ff({.d_model = 4, .dim_feedforward = 8});
  EXPECT_EQ(ff.forward(Tensor<T, 3>(2, 0, 4)).shape(), (tessera::Shape<3>{2, 0, 4}));
  const nn::Embedding<T> e({.num_embeddings = 5, .embedding_dim = 4});
  EXPECT_EQ(e.forward(Tensor<std::int64_t, 2>(0, 3)).shape(), (tessera::Shape<3>{0, 3, 4}));
  const nn::TokenEmbedding<T> te({.vocab_size = 5, .max_len = 4, .embed_dim = 4});
  EXPECT_EQ(te.forward(Tensor<std::int64_t, 2>(0, 3)).shape(), (tessera::Shape<3>{0, 3, 4}));
  EXPECT_EQ(te.forward(Tensor<std::int64_t, 2>(2, 0), 4).shape(), (tessera::Shape<3>{2, 0, 4}));
  const nn::PatchEmbedding<T> pe({.image_size = {4, 4},
                                  .patch_size = {2, 2},
                                  .in_channels = 1,
                                  .embed_dim = 4,
                                  .cls_token = true});
  EXPECT_EQ(pe.forward(Tensor<T, 4>(0, 1, 4, 4)).shape(), (tessera::Shape<3>{0, 5, 4}));
  const nn::ModalityEmbedding<T> me({.num_modalities = 2, .embed_dim = 4});
  EXPECT_EQ(me.forward(Tensor<T, 3>(0, 2, 4), 1).size(), 0);
  EXPECT_EQ(me.forward(Tensor<T, 3>(2, 0, 4), Tensor<int, 2>(2, 0)).size(), 0);
  const nn::SinusoidalPositionalEncoding<T> spe({.max_len = 4, .embed_dim = 4});
  EXPECT_EQ(spe.forward(Tensor<T, 3>(0, 4, 4)).size(), 0);
}

TYPED_TEST(ModulesRobustness, EmptySequencesThroughTransformerLayers) {
  using T = TypeParam;
  const nn::TransformerLayerOptions lo{.d_model = 8, .nhead = 2, .dim_feedforward = 16};
  const nn::TransformerEncoder<T> enc({.layer = lo, .num_layers = 1});
  EXPECT_EQ(enc.forward(Tensor<T, 3>(0, 3, 8)).shape(), (tessera::Shape<3>{0, 3, 8}));
  EXPECT_EQ(enc.forward(Tensor<T, 3>(2, 0, 8)).shape(), (tessera::Shape<3>{2, 0, 8}));
  const nn::TransformerDecoder<T> dec({.layer = lo, .num_layers = 1});
  EXPECT_EQ(dec.forward(Tensor<T, 3>(0, 2, 8), Tensor<T, 3>(0, 3, 8)).size(), 0);
  const auto out = dec.forward(tokens<T>(1, 2, 8), Tensor<T, 3>(1, 0, 8));
  EXPECT_EQ(out.shape(), (tessera::Shape<3>{1, 2, 8}));
}

TYPED_TEST(ModulesRobustness, PositionsNearTheIndexLimit) {
  using T = TypeParam;
  constexpr Index big = std::numeric_limits<Index>::max() - 1;
  // start + L overflowed while the message was built (UBSan: signed overflow).
  const nn::TokenEmbedding<T> te({.vocab_size = 5, .max_len = 4, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(te.forward(Tensor<std::int64_t, 2>(1, 3), big), ShapeError,
                           "tessera::nn::TokenEmbedding::forward", "do not fit in max_len = 4",
                           "start = 9223372036854775806, L = 3");
  const nn::LearnedPositionalEmbedding<T> lpe({.max_len = 4, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(lpe.forward(Tensor<T, 3>(1, 3, 4), big), ShapeError,
                           "tessera::nn::LearnedPositionalEmbedding::forward",
                           "start = 9223372036854775806, L = 3");
  const nn::SinusoidalPositionalEncoding<T> spe({.max_len = 4, .embed_dim = 4});
  TESSERA_EXPECT_THROW_MSG(spe.forward(Tensor<T, 3>(1, 3, 4), big), ShapeError,
                           "positions [9223372036854775806, 9223372036854775806 + 3)");
  TESSERA_EXPECT_THROW_MSG(spe.forward(Tensor<T, 3>(1, 3, 4), 2), ShapeError, "positions [2, 5)");
}

TYPED_TEST(ModulesRobustness, SizesNearTheIndexLimit) {
  using T = TypeParam;
  constexpr Index big = std::numeric_limits<Index>::max();
  // The patch grid's size overflowed in the constructor (UBSan: signed overflow).
  TESSERA_EXPECT_THROW_MSG(
      nn::PatchEmbedding<T>(
          {.image_size = {Index(1) << 40, Index(1) << 40}, .patch_size = {1, 1}, .embed_dim = 4}),
      ShapeError, "tessera::nn::PatchEmbedding", "the patch grid");
  // Sums and products of lengths in the FLOP counts are formed in double.
  const fusion::EarlyFusion<T> early({.encoder = tessera::test::small_encoder(1)});
  EXPECT_GT(early.forward_flops({big, big}), 1e38);
  const fusion::BottleneckFusion<T> mbt({.encoder = tessera::test::small_encoder(1)});
  EXPECT_GT(mbt.forward_flops({big, 1}), 1e38);
}

// ---- Kind 6: NaN in, NaN out; fully padded rows keep their documented values ---------------

TYPED_TEST(ModulesRobustness, NaNInParametersReachesTheOutput) {
  using T = TypeParam;
  nn::Linear<T> lin({.in_features = 4, .out_features = 3});
  lin.weight.value(1, 2) = nan<T>();
  Tensor<T, 2> x(2, 4);
  x.setConstant(1);
  const auto y = lin.forward(x);
  EXPECT_TRUE(std::isnan(y(0, 1)) && std::isnan(y(1, 1)));
  EXPECT_TRUE(std::isfinite(y(0, 0)) && std::isfinite(y(0, 2)));

  nn::TokenEmbedding<T> te({.vocab_size = 5, .max_len = 4, .embed_dim = 4});
  te.positional_embedding.value(1, 3) = nan<T>();
  const auto t = te.forward(Tensor<std::int64_t, 2>(2, 2));
  EXPECT_TRUE(std::isnan(t(0, 1, 3)) && std::isnan(t(1, 1, 3)));
  EXPECT_TRUE(std::isfinite(t(0, 0, 3)));

  nn::PatchEmbedding<T> pe({.image_size = {4, 4},
                            .patch_size = {2, 2},
                            .in_channels = 1,
                            .embed_dim = 4,
                            .cls_token = true});
  pe.class_embedding.value(0) = nan<T>();
  const auto p = pe.forward(Tensor<T, 4>(1, 1, 4, 4));
  EXPECT_TRUE(std::isnan(p(0, 0, 0)));
  EXPECT_TRUE(std::isfinite(p(0, 1, 0)));
}

TYPED_TEST(ModulesRobustness, LateFusionPoolingKeepsNaNAndPaddedRows) {
  using T = TypeParam;
  fusion::LateFusion<T> late({.encoder = tessera::test::small_encoder(1),
                              .pooling = fusion::Pooling::mean,
                              .combine = fusion::Combine::mean});
  auto video = tokens<T>(2, 3, 8), audio = tokens<T>(2, 4, 8, 5);
  // A fully padded sequence pools to zeros (documented); batch element 0 of audio is all padding.
  Tensor<bool, 2> pad(2, 4);
  for (Index t = 0; t < 4; ++t) pad(0, t) = true;
  const auto r = late.forward({video, audio}, {std::nullopt, Mask::blocked(pad)});
  for (Index e = 0; e < 8; ++e) EXPECT_EQ(r.pooled[1](0, e), T(0));
  EXPECT_TRUE(all_finite(r.fused));
  // A NaN in one token of a sequence: its pooled vector and the fused output are NaN.
  video(1, 2, 5) = nan<T>();
  const auto n = late.forward({video, audio});
  EXPECT_TRUE(any_nan(n.pooled[0][1]));
  EXPECT_TRUE(any_nan(n.fused[1]));
  EXPECT_TRUE(all_finite(n.fused[0])) << "batch element 0 holds no NaN";
  // A NaN in a fusion weight: a weighted sum over it is NaN, not the other modality alone.
  fusion::LateFusion<T> weighted(
      {.encoder = tessera::test::small_encoder(1), .combine = fusion::Combine::weighted_sum});
  weighted.fusion_weights.value(0) = nan<T>();
  const auto fresh = tokens<T>(2, 3, 8);
  const auto w = weighted.forward({fresh, audio});
  EXPECT_TRUE(all_nan(w.fused));
}

TYPED_TEST(ModulesRobustness, FusionNaNReachesTheOutput) {
  using T = TypeParam;
  const auto video = tokens<T>(1, 3, 8), audio = tokens<T>(1, 4, 8, 5);
  fusion::BottleneckFusion<T> mbt({.encoder = tessera::test::small_encoder(1), .n_bottlenecks = 2});
  mbt.bottleneck.value(0, 1, 3) = nan<T>();
  const auto s = mbt.forward({video, audio});
  EXPECT_TRUE(any_nan(s.bottleneck));
  fusion::EarlyFusion<T> early({.encoder = tessera::test::small_encoder(1)});
  early.modality_embedding.weight.value(1, 0) = nan<T>();
  EXPECT_TRUE(any_nan(early.forward({video, audio})));
}

// ---- Packed weights that no longer match the parameters (silent stale results) -----------------

// prepack() at start-up, then load a checkpoint: forward used to keep multiplying by the packed
// copy of the old weights. The packed copy is used only while it was made from the current
// buffer and version of the weight; a copy of the module has its own buffer.
TYPED_TEST(ModulesRobustness, LinearPackedWeightsNeverOutliveTheirWeight) {
  using T = TypeParam;
  const Tensor<T, 2> x = [] {
    Tensor<T, 2> t(5, 8);
    t.setRandom(11);
    return t;
  }();
  nn::Linear<T> a({.in_features = 8, .out_features = 6, .seed = 1});
  const nn::Linear<T> b({.in_features = 8, .out_features = 6, .seed = 2});
  a.prepack();
  EXPECT_TRUE(a.is_prepacked());
  a.load_state_dict(b.state_dict());
  EXPECT_FALSE(a.is_prepacked());
  EXPECT_TRUE(tessera::test::same_bits(a.forward(x), b.forward(x)));
  a.prepack();
  EXPECT_TRUE(a.is_prepacked());
  const auto packed = a.forward(x), plain = b.forward(x);
  for (Index i = 0; i < packed.size(); ++i)
    EXPECT_NEAR(packed.data()[i], plain.data()[i], 100 * tessera::test::tol<T>());

  // A copy of a prepacked module, then a NaN in the copy's weight: NaN out.
  nn::Linear<T> c = a;
  EXPECT_FALSE(c.is_prepacked());
  c.weight.value(0, 0) = nan<T>();
  const auto y = c.forward(x);
  for (Index r = 0; r < 5; ++r) EXPECT_TRUE(std::isnan(y(r, 0))) << r;
  EXPECT_TRUE(all_finite(a.forward(x)));

  // A new weight tensor of the right shape replaces the packed one too.
  a.weight.value = b.weight.value;
  EXPECT_FALSE(a.is_prepacked());
  EXPECT_TRUE(tessera::test::same_bits(a.forward(x), b.forward(x)));
}

TYPED_TEST(ModulesRobustness, PrepackedLayerFollowsALoadedStateDict) {
  using T = TypeParam;
  const nn::TransformerLayerOptions lo{.d_model = 8, .nhead = 2, .dim_feedforward = 16};
  nn::TransformerEncoderLayer<T> a(lo);
  nn::TransformerLayerOptions lo2 = lo;
  lo2.seed = 99;
  const nn::TransformerEncoderLayer<T> b(lo2);
  const auto x = tokens<T>(2, 5, 8);
  a.prepack();
  a.load_state_dict(b.state_dict());
  EXPECT_TRUE(tessera::test::same_bits(a.forward(x), b.forward(x)));
}

// ---- Decoder caches: empty memories, and layers that do not advance together
// ---------------------

TYPED_TEST(ModulesRobustness, DecoderStepOverAnEmptyMemoryMatchesForward) {
  using T = TypeParam;
  nn::TransformerDecoder<T> dec(
      {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16}, .num_layers = 2});
  const Tensor<T, 3> memory(2, 0, 8);
  const auto tgt = tokens<T>(2, 1, 8);
  const auto full = dec.forward(tgt, memory);
  auto cache = dec.make_cache(memory);
  const auto stepped = dec.step(tgt, cache);
  ASSERT_EQ(stepped.shape(), full.shape());
  for (Index i = 0; i < full.size(); ++i)
    EXPECT_NEAR(stepped.data()[i], full.data()[i], 100 * tessera::test::tol<T>());
}

TYPED_TEST(ModulesRobustness, DecoderStepNamesTheLayerCacheThatIsWrong) {
  using T = TypeParam;
  nn::TransformerDecoder<T> dec(
      {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16}, .num_layers = 2});
  const auto memory = tokens<T>(2, 3, 8);
  const auto tgt = tokens<T>(2, 1, 8, 5);
  {
    auto cache = dec.make_cache(memory);
    dec.step(tgt, cache);
    cache.layers[1].self_kv.length = 100;
    TESSERA_EXPECT_THROW_MSG(dec.step(tgt, cache), ValueError,
                             "tessera::nn::TransformerDecoder::step",
                             "'cache.layers[1].self_kv' has length 100");
  }
  {
    auto cache = dec.make_cache(memory);
    cache.layers[1].memory_kv.k = Tensor<T, 3>(2, 4, 4);
    TESSERA_EXPECT_THROW_MSG(dec.step(tgt, cache), ShapeError,
                             "tessera::nn::TransformerDecoder::step",
                             "'cache.layers[1].memory_kv' has k of shape [2, 4, 4]");
  }
  {
    // Each layer's cache valid alone, but layer 1 one position behind layer 0.
    auto cache = dec.make_cache(memory);
    dec.step(tgt, cache);
    dec.step(tgt, cache);
    cache.layers[1].self_kv.length = 1;
    TESSERA_EXPECT_THROW_MSG(dec.step(tgt, cache), ValueError,
                             "tessera::nn::TransformerDecoder::step", "layer 1",
                             "must advance together");
  }
}

}  // namespace modules_test
