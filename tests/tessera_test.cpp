// The umbrella header compiles on its own (it is the first and only tessera
// include here) and exposes the public names of every part of the library.
#include "tessera/tessera.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <string>
#include <type_traits>

namespace tessera_test {

TEST(Umbrella, VersionAndConfiguration) {
  EXPECT_EQ(TESSERA_VERSION_MAJOR, 0);
  EXPECT_EQ(TESSERA_VERSION_MINOR, 1);
  EXPECT_EQ(TESSERA_VERSION_PATCH, 0);
  static_assert(std::is_same_v<tessera::Index, Eigen::Index>);
  static_assert(tessera::kTensorAlignment == 64);
}

TEST(Umbrella, ExposesCoreNames) {
  static_assert(std::is_base_of_v<tessera::Error, tessera::ShapeError>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::ValueError>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::IndexError>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::IoError>);
  static_assert(tessera::TensorLike<tessera::Tensor<float, 2>>);
  static_assert(tessera::TensorLike<tessera::TensorMap<const double, 1>>);
  static_assert(std::is_same_v<tessera::Shape<3>, std::array<tessera::Index, 3>>);

  tessera::Tensor<float, 2> x(tessera::Shape<2>{2, 3}, tessera::uninitialized);
  x.setRandom(1);
  static_assert(std::is_same_v<decltype(tessera::cview(x)), tessera::TensorMap<const float, 2>>);
  static_assert(std::is_same_v<decltype(tessera::mview(x)), tessera::TensorMap<float, 2>>);
  static_assert(std::is_same_v<decltype(x.as_matrix()), tessera::MatrixMap<float>>);

  tessera::Tensor<bool, 1> keep{true, false, true};
  const tessera::Mask m = tessera::Mask::allowed(keep);
  EXPECT_EQ(m.kind(), tessera::MaskKind::allowed);

  const int before = tessera::num_threads();
  tessera::set_num_threads(1);
  EXPECT_EQ(tessera::num_threads(), 1);
  tessera::set_num_threads(before);
  EXPECT_GE(tessera::max_threads(), 1);
  std::atomic<tessera::Index> covered{0};
  tessera::parallel_for(10, 1, [&](tessera::Index b, tessera::Index e) { covered += e - b; });
  EXPECT_EQ(covered, 10);
}

TEST(Umbrella, ExposesKernels) {
  // softmax([0, log 3]) = [1/4, 3/4], through the masked and unmasked paths.
  tessera::Tensor<double, 2> logits{{0.0, std::log(3.0)}};
  const auto p = tessera::softmax(logits);
  static_assert(std::is_same_v<std::remove_cv_t<decltype(p)>, tessera::Tensor<double, 2>>);
  EXPECT_NEAR(p(0, 0), 0.25, 1e-15);
  EXPECT_NEAR(p(0, 1), 0.75, 1e-15);
  EXPECT_NEAR(tessera::logsumexp(logits)(0), std::log(4.0), 1e-15);
  EXPECT_NEAR(tessera::log_softmax(logits)(0, 0), std::log(0.25), 1e-15);
  tessera::Tensor<bool, 1> blocked{false, true};
  tessera::SoftmaxOptions opts;
  opts.mask = tessera::Mask::blocked(blocked);
  EXPECT_EQ(tessera::softmax(logits, opts)(0, 0), 1.0);
  EXPECT_EQ(tessera::softmax(logits, opts)(0, 1), 0.0);

  // y = relu(x W^T) with W = I: relu(x).
  tessera::Tensor<float, 2> x{{-1, 2}, {3, -4}};
  tessera::Tensor<float, 2> w{{1, 0}, {0, 1}};
  const auto y = tessera::relu(tessera::linear(x, w));
  EXPECT_EQ(y(0, 0), 0.0f);
  EXPECT_EQ(y(0, 1), 2.0f);
  EXPECT_EQ(y(1, 0), 3.0f);
  EXPECT_EQ(y(1, 1), 0.0f);
  EXPECT_EQ(tessera::matmul(x, w)(1, 1), -4.0f);
  EXPECT_EQ(tessera::to_string(tessera::Activation::gelu), "gelu");
  EXPECT_EQ(tessera::gelu(x).shape(), x.shape());
  EXPECT_EQ(tessera::silu(x).shape(), x.shape());

  const auto n = tessera::layer_norm(x);
  EXPECT_NEAR(n(0, 0) + n(0, 1), 0.0f, 1e-6f);
  EXPECT_EQ(tessera::rms_norm(x).shape(), x.shape());
  tessera::Tensor<float, 1> v{3, 4};
  const auto u = tessera::l2_normalize(v);
  EXPECT_NEAR(u(0), 0.6f, 1e-6f);
  EXPECT_NEAR(u(1), 0.8f, 1e-6f);
  EXPECT_GE(tessera::simd::width<float>, 1);
}

TEST(Umbrella, ExposesModulesAndIo) {
  tessera::Tensor<float, 3> x(tessera::Shape<3>{1, 4, 8}, tessera::uninitialized);
  x.setRandom(1);
  tessera::nn::MultiheadAttention<float> mha({.embed_dim = 8, .num_heads = 2});
  const auto y = mha.forward(x, x, x);
  EXPECT_EQ(y.output.shape(), x.shape());
  const tessera::io::StateDict dict = mha.state_dict();
  EXPECT_EQ(dict.size(),
            4u);  // in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias
  EXPECT_TRUE(dict.contains("in_proj_weight"));
  EXPECT_TRUE(dict.contains("out_proj.bias"));
  EXPECT_EQ(tessera::io::dtype_name(tessera::io::DType::F32), "F32");
}

TEST(Umbrella, ExposesTokensAndFusion) {
  const tessera::nn::PatchEmbedding<float> patches(
      {.image_size = {8, 8}, .patch_size = {4, 4}, .in_channels = 1, .embed_dim = 8});
  tessera::Tensor<float, 4> image(1, 1, 8, 8);
  const auto video = patches.forward(image);  // [1, 4, 8]
  static_assert(std::is_same_v<decltype(video), const tessera::Tensor<float, 3>>);
  static_assert(std::is_class_v<tessera::nn::AudioPatchEmbedding<float>>);
  static_assert(std::is_class_v<tessera::nn::TokenEmbedding<double>>);
  static_assert(std::is_class_v<tessera::nn::ModalityEmbedding<float>>);
  static_assert(std::is_class_v<tessera::fusion::EarlyFusion<float>>);
  static_assert(std::is_class_v<tessera::fusion::LateFusion<float>>);
  static_assert(std::is_class_v<tessera::fusion::CrossModalAttention<float>>);
  const tessera::fusion::BottleneckFusion<float> mbt(
      {.encoder = {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16}}});
  const auto out = mbt.forward({video, video});
  EXPECT_EQ(out.bottleneck.shape(), (tessera::Shape<3>{1, 4, 8}));
}

TEST(Umbrella, ExposesContrastive) {
  namespace con = tessera::contrastive;
  // Two identical unit pairs at scale 1: each CE is log(1 + e^-1), and so is the mean.
  const tessera::Tensor<double, 2> a{{1.0, 0.0}, {0.0, 1.0}};
  const auto r = con::clip_loss(a, a, 0.0);
  EXPECT_NEAR(r.loss, std::log1p(std::exp(-1.0)), 1e-15);
  EXPECT_NEAR(con::info_nce_loss(a, a, {.scale = 1.0}).loss, r.loss, 1e-15);
  const tessera::Tensor<int, 1> same{1, 1};
  EXPECT_EQ(con::pair_loss(a, a, same).loss, 0.0);
  EXPECT_GT(con::siglip_loss(a, a, con::LogitScaleBias<double>()).loss, 0.0);
  EXPECT_EQ(con::format_prompt("a photo of a {}", "cat"), "a photo of a cat");
  static_assert(
      std::is_base_of_v<tessera::nn::Module<con::LogitScale<float>>, con::LogitScale<float>>);
  static_assert(
      std::is_base_of_v<tessera::nn::Module<con::LinearProbe<float>>, con::LinearProbe<float>>);
  static_assert(std::is_base_of_v<tessera::nn::Module<con::ProjectionHead<float>>,
                                  con::ProjectionHead<float>>);
  static_assert(std::is_class_v<con::ZeroShotClassifier<float>>);
  static_assert(std::is_class_v<
                con::DualEncoder<float, tessera::nn::Linear<float>, tessera::nn::Linear<float>>>);
}

}  // namespace tessera_test
