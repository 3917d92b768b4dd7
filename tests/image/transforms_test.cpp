// tessera::image transforms (center_crop, to_rgb, to_tensor, normalize, stack) and the open_clip
// evaluation pipeline (preprocess) against torchvision 0.14 on PIL images
// (fixtures: tests/fixtures/image/make_image_fixtures.py).
#include "tessera/image/transforms.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "tessera/image/decode.hpp"
#include "test_util.hpp"

namespace transforms_test {

using tessera::Index;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::image::Image;

std::string fixture(const std::string& name) {
  return std::string(TESSERA_TEST_DATA_DIR) + "/fixtures/image/" + name;
}

std::vector<std::vector<std::string>> read_cases(const std::string& name) {
  std::ifstream in(fixture(name));
  EXPECT_TRUE(in) << "cannot open " << fixture(name);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    std::vector<std::string> row;
    for (std::string f; ls >> f;) row.push_back(f);
    if (!row.empty()) rows.push_back(row);
  }
  return rows;
}

std::vector<float> read_f32(const std::string& name) {
  std::ifstream in(fixture(name), std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << fixture(name);
  std::vector<char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);  // little-endian, as the machines we run on
  return v;
}

std::uint32_t crc32(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint32_t c = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

// torchvision CenterCrop((h, w)) of a 5 x 6 ramp for every h, w in 1..9: offsets rounded half to
// even, zero padding split floor / ceil.
TEST(TransformsTest, CenterCropMatchesTorchvision) {
  const Image ramp = tessera::image::read_image(fixture("in_ramp.png"), 1);
  ASSERT_EQ(ramp.shape(), (Shape<3>{5, 6, 1}));
  const auto cases = read_cases("center_crop_cases.txt");
  ASSERT_EQ(cases.size(), 81u);
  for (const auto& c : cases) {
    const Index h = std::stol(c[0]), w = std::stol(c[1]);
    const Image out = tessera::image::center_crop(ramp, h, w);
    ASSERT_EQ(out.shape(), (Shape<3>{h, w, 1}));
    ASSERT_EQ(static_cast<Index>(c.size()), 2 + h * w);
    for (Index i = 0; i < h * w; ++i)
      EXPECT_EQ(out.data()[i], std::stoi(c[2 + i])) << "crop " << h << " x " << w << " at " << i;
  }
  // Channels travel together.
  const Image rgb = tessera::image::read_image(fixture("in_gradient.png"));  // 20 x 33
  const Image crop = tessera::image::center_crop(rgb, 7, 40);
  for (Index y = 0; y < 7; ++y)
    for (Index x = 0; x < 40; ++x)
      for (Index ch = 0; ch < 3; ++ch) {
        const Index sx = x - 3;  // pad floor(7 / 2) = 3; top = round(13 / 2) = 6
        ASSERT_EQ(crop(y, x, ch), sx >= 0 && sx < 33 ? rgb(y + 6, sx, ch) : 0);
      }
}

TEST(TransformsTest, ToRgb) {
  Image grey(2, 3, 1), la(2, 3, 2), rgba(2, 3, 4);
  for (Index i = 0; i < 6; ++i) {
    grey.data()[i] = static_cast<std::uint8_t>(10 * i);
    la.data()[2 * i] = static_cast<std::uint8_t>(10 * i);
    la.data()[2 * i + 1] = 7;
    for (int c = 0; c < 4; ++c) rgba.data()[4 * i + c] = static_cast<std::uint8_t>(10 * i + c);
  }
  for (const Image* img : {&grey, &la}) {
    const Image out = tessera::image::to_rgb(*img);
    for (Index i = 0; i < 6; ++i)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(out.data()[3 * i + c], 10 * i);
  }
  const Image out = tessera::image::to_rgb(rgba);
  for (Index i = 0; i < 6; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(out.data()[3 * i + c], 10 * i + c);
}

template <class T>
class TransformsTyped : public ::testing::Test {};
TYPED_TEST_SUITE(TransformsTyped, tessera::test::Scalars);

TYPED_TEST(TransformsTyped, ToTensorAndNormalize) {
  using T = TypeParam;
  Image img(2, 3, 3);
  for (Index i = 0; i < img.size(); ++i) img.data()[i] = static_cast<std::uint8_t>(i * 14);
  const Tensor<T, 3> x = tessera::image::to_tensor<T>(img);
  ASSERT_EQ(x.shape(), (Shape<3>{3, 2, 3}));
  for (Index y = 0; y < 2; ++y)
    for (Index w = 0; w < 3; ++w)
      for (Index c = 0; c < 3; ++c) EXPECT_EQ(x(c, y, w), T(img(y, w, c)) / T(255));
  const auto& n = tessera::image::kClipNormalization;
  const Tensor<T, 3> z = tessera::image::normalize<T>(x, n);
  for (Index c = 0; c < 3; ++c)
    for (Index i = 0; i < 6; ++i)
      EXPECT_EQ(z.data()[c * 6 + i],
                (x.data()[c * 6 + i] - T(n.mean[c])) / T(n.std[c]));  // torchvision's order
  // The presets hold open_clip's constants.
  EXPECT_EQ(tessera::image::kImageNetNormalization.mean[1], 0.456);
  EXPECT_EQ(tessera::image::kImageNetNormalization.std[2], 0.225);
  EXPECT_EQ(tessera::image::kSigLipNormalization.mean[0], 0.5);
  EXPECT_EQ(tessera::image::kClipNormalization.std[0], 0.26862954);
  EXPECT_EQ(tessera::image::siglip_options(384).resize_mode, tessera::image::ResizeMode::squash);
  EXPECT_EQ(tessera::image::imagenet_options().image_size, 224);
}

// open_clip's eval transform on small committed photographs: within 1/255 of torchvision's
// float32 tensor (float is expected bit-identical; double differs by float32's rounding).
TYPED_TEST(TransformsTyped, PipelineMatchesOpenClip) {
  using T = TypeParam;
  double worst = 0;
  for (const auto& c : read_cases("pipeline_cases.txt")) {
    SCOPED_TRACE(c[0]);
    const Image img =
        tessera::image::read_image(fixture(c[1]), c[1] == "in_chelsea_grey.png" ? 1 : 3);
    tessera::image::PreprocessOptions opts;
    opts.image_size = std::stol(c[2]);
    opts.resize_mode = c[3] == "squash" ? tessera::image::ResizeMode::squash
                                        : tessera::image::ResizeMode::shortest;
    for (int i = 0; i < 3; ++i) {
      opts.normalization.mean[i] = std::stod(c[4 + i]);
      opts.normalization.std[i] = std::stod(c[7 + i]);
    }
    const Tensor<T, 3> x = tessera::image::preprocess<T>(img, opts);
    const std::vector<float> ref = read_f32("pipeline_" + c[0] + ".f32");
    ASSERT_EQ(x.shape(), (Shape<3>{3, opts.image_size, opts.image_size}));
    ASSERT_EQ(static_cast<Index>(ref.size()), x.size());
    double max_err = 0;
    for (Index i = 0; i < x.size(); ++i)
      max_err = std::max(max_err, std::abs(double(x.data()[i]) - double(ref[i])));
    EXPECT_LE(max_err, 1.0 / 255);
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_EQ(max_err, 0.0) << "float32 not bit-identical";
    }
    worst = std::max(worst, max_err);
  }
  std::cout << "[ pipeline vs open_clip/torchvision ] " << (sizeof(T) == 4 ? "float" : "double")
            << ": max |difference| " << worst << "\n";
}

// Full-size shared photographs at CLIP's 224 (skip without ../shared/data): the float32 tensor's
// bytes against torchvision's (CRC-32), i.e. bit-identical.
TEST(TransformsTest, SharedPhotographsClip224) {
  TESSERA_SKIP_WITHOUT_SHARED_DATA();
  const auto dir = tessera::test::shared_data_dir() / "images";
  int n = 0;
  for (const auto& c : read_cases("shared_cases.txt")) {
    if (c[0] != "clip224") continue;
    SCOPED_TRACE(c[1]);
    const Tensor<float, 3> x =
        tessera::image::preprocess<float>(tessera::image::read_image(dir / c[1]));
    ASSERT_EQ(x.shape(), (Shape<3>{3, 224, 224}));
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", crc32(x.data(), sizeof(float) * x.size()));
    EXPECT_EQ(std::string(hex), c[6]);
    ++n;
  }
  EXPECT_EQ(n, 3);
}

TYPED_TEST(TransformsTyped, BatchAndStack) {
  using T = TypeParam;
  std::vector<Image> imgs = {tessera::image::read_image(fixture("in_coffee_crop.png")),
                             tessera::image::read_image(fixture("in_chelsea_grey.png"), 1),
                             tessera::image::read_image(fixture("in_gradient.png"))};
  const auto opts = tessera::image::clip_options(16);
  const Tensor<T, 4> b = tessera::image::preprocess_batch<T>(imgs, opts);
  ASSERT_EQ(b.shape(), (Shape<4>{3, 3, 16, 16}));
  for (Index i = 0; i < 3; ++i) {
    const Tensor<T, 3> one = tessera::image::preprocess<T>(imgs[i], opts);
    EXPECT_EQ(std::memcmp(one.data(), b.data() + i * one.size(), sizeof(T) * one.size()), 0);
  }
  std::vector<Tensor<T, 3>> parts = {Tensor<T, 3>(3, 2, 2), Tensor<T, 3>(3, 2, 2)};
  parts[1].setConstant(1);
  const Tensor<T, 4> s = tessera::image::stack<T>(parts);
  EXPECT_EQ(s.shape(), (Shape<4>{2, 3, 2, 2}));
  EXPECT_EQ(s(1, 2, 1, 1), T(1));
  EXPECT_EQ(s(0, 2, 1, 1), T(0));
}

TYPED_TEST(TransformsTyped, Errors) {
  using T = TypeParam;
  const Image img(4, 5, 3);
  TESSERA_EXPECT_THROW_MSG(tessera::image::center_crop(img, 0, 2), ValueError,
                           "tessera::image::center_crop", "'height'", "0");
  TESSERA_EXPECT_THROW_MSG(tessera::image::center_crop(Image(0, 2, 3), 1, 1), ShapeError,
                           "tessera::image::center_crop", "'img'", "[0, 2, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::to_rgb(Image(2, 2, 5)), ShapeError,
                           "tessera::image::to_rgb", "[2, 2, 5]", "1, 2, 3 or 4");
  TESSERA_EXPECT_THROW_MSG(tessera::image::to_rgb(Image(2, 0, 3)), ShapeError,
                           "tessera::image::to_rgb", "[2, 0, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::to_tensor<T>(Image(0, 0, 0)), ShapeError,
                           "tessera::image::to_tensor", "'img'");
  Tensor<T, 3> x(3, 2, 2);
  const std::vector<double> two = {0.5, 0.5}, three = {0.5, 0.5, 0.5}, zero = {0.5, 0.0, 0.5},
                            inf = {0.5, std::numeric_limits<double>::infinity(), 0.5},
                            tiny = {1, 1, 1e-300};
  TESSERA_EXPECT_THROW_MSG(tessera::image::normalize<T>(x, two, three), ShapeError,
                           "tessera::image::normalize", "'mean'", "2", "[3, 2, 2]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::normalize<T>(x, three, two), ShapeError,
                           "tessera::image::normalize", "'std'");
  TESSERA_EXPECT_THROW_MSG(tessera::image::normalize<T>(x, three, zero), ValueError,
                           "tessera::image::normalize", "'std'", "channel 1", "zero");
  TESSERA_EXPECT_THROW_MSG(tessera::image::normalize<T>(x, inf, three), ValueError,
                           "tessera::image::normalize", "'mean'", "inf");
  if constexpr (std::is_same_v<T, float>)  // 1e-300 is zero in float: torchvision's error too
    TESSERA_EXPECT_THROW_MSG(tessera::image::normalize<T>(x, three, tiny), ValueError,
                             "tessera::image::normalize", "'std'", "channel 2");
  TESSERA_EXPECT_THROW_MSG(tessera::image::stack<T>(std::vector<Tensor<T, 3>>{}), ValueError,
                           "tessera::image::stack", "'images'", "empty");
  const std::vector<Tensor<T, 3>> ragged = {Tensor<T, 3>(3, 2, 2), Tensor<T, 3>(3, 2, 3)};
  TESSERA_EXPECT_THROW_MSG(tessera::image::stack<T>(ragged), ShapeError, "tessera::image::stack",
                           "element 1", "[3, 2, 3]", "[3, 2, 2]");
  tessera::image::PreprocessOptions bad;
  bad.image_size = 0;
  TESSERA_EXPECT_THROW_MSG(tessera::image::preprocess<T>(img, bad), ValueError,
                           "tessera::image::preprocess", "'image_size'", "0");
  TESSERA_EXPECT_THROW_MSG(tessera::image::preprocess<T>(Image(3, 3, 5)), ShapeError,
                           "tessera::image::preprocess", "[3, 3, 5]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::preprocess<T>(Image(0, 3, 3)), ShapeError,
                           "tessera::image::preprocess", "[0, 3, 3]");
  TESSERA_EXPECT_THROW_MSG(tessera::image::preprocess_batch<T>(std::vector<Image>{}), ValueError,
                           "tessera::image::preprocess_batch", "'images'", "empty");
}

}  // namespace transforms_test
