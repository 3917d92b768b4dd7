// DataParallel and the data-parallel training steps: rank 0's weights reach every rank, the
// gradients are averaged bucket by bucket, and one step of a small CLIP (or SigLIP) on P ranks
// with their shards equals one step of a single process on the concatenated batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "../test_util.hpp"
#include "distributed_test_util.hpp"
#include "tessera/distributed/data_parallel.hpp"
#include "tessera/distributed/training.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/optim/sgd.hpp"

namespace tessera::distributed {
namespace data_parallel_test {

using test::world;

template <class T>
class DataParallelTyped : public ::testing::Test {};
TYPED_TEST_SUITE(DataParallelTyped, test::Scalars);

TYPED_TEST(DataParallelTyped, StartsEveryRankFromRootsWeightsAndAveragesGradients) {
  using T = TypeParam;
  const auto& comm = world();
  const int p = comm.size(), r = comm.rank();
  nn::Linear<T> reference({.in_features = 5, .out_features = 3, .seed = 11});
  nn::Linear<T> m(
      {.in_features = 5, .out_features = 3, .seed = static_cast<std::uint64_t>(11 + r)});
  const auto version = m.weight.version;
  DataParallel<T> ddp(comm, m, {.root = 0});
  EXPECT_TRUE(m.weight.value.as_array().isApprox(reference.weight.value.as_array(), 0));
  EXPECT_TRUE(m.bias.value.as_array().isApprox(reference.bias.value.as_array(), 0));
  EXPECT_GT(m.weight.version, version);  // packed copies of the old weights are known stale
  EXPECT_EQ(ddp.bucket_count(), 1u);
  EXPECT_EQ(ddp.parameters()[0].name(), "bias");  // the last parameters are reduced first

  // Rank r's gradients: (r + 1) everywhere; the bias has none on rank 0 (zeros there).
  m.weight.zero_grad();
  m.weight.grad.as_array().setConstant(static_cast<T>(r + 1));
  if (r != 0) {
    m.bias.zero_grad();
    m.bias.grad.as_array().setConstant(static_cast<T>(r + 1));
  }
  ddp.average_gradients();
  const T mean = static_cast<T>(p + 1) / 2;
  const T bias_mean = static_cast<T>(p * (p + 1) / 2 - 1) / static_cast<T>(p);
  for (Index i = 0; i < m.weight.grad.size(); ++i) EXPECT_EQ(m.weight.grad.data()[i], mean);
  EXPECT_TRUE(m.bias.has_grad());
  for (Index i = 0; i < m.bias.grad.size(); ++i)
    EXPECT_NEAR(m.bias.grad.data()[i], bias_mean, 1e-6);

  // A bucket per parameter when the cap is below the smallest one.
  nn::Linear<T> m2({.in_features = 5, .out_features = 3, .seed = 3});
  DataParallel<T> per_param(comm, m2, {.bucket_cap_mb = 1e-9});
  EXPECT_EQ(per_param.bucket_count(), 2u);
}

TEST(DataParallel, RefusesModelsThatDifferBetweenRanksAndBadOptions) {
  const auto& comm = world();
  const bool is_last = comm.rank() == comm.size() - 1;
  nn::Linear<float> a({.in_features = 4, .out_features = is_last ? 3 : 2});
  const std::string last = "rank " + std::to_string(comm.size() - 1);
  if (comm.size() > 1)
    TESSERA_EXPECT_THROW_MSG(DataParallel<float>(comm, a), ValueError,
                             "tessera::distributed::DataParallel", last.c_str(),
                             "expected the same model on every rank");
  nn::Linear<float> b({.in_features = 4, .out_features = 2});
  // Options that differ between ranks would mismatch the buckets' all-reduces.
  if (comm.size() > 1) {
    TESSERA_EXPECT_THROW_MSG(DataParallel<float>(comm, b, {.bucket_cap_mb = is_last ? 1e-9 : 25}),
                             ValueError, "tessera::distributed::DataParallel", "'bucket_cap_mb'",
                             last.c_str(), "the same value on every rank");
    TESSERA_EXPECT_THROW_MSG(DataParallel<float>(comm, b, {.root = is_last ? 1 : 0}), ValueError,
                             "'root' is 1", last.c_str());
  }
  // The communicator is held by reference: a temporary one does not compile.
  static_assert(!std::is_constructible_v<DataParallel<float>, Communicator&&, nn::Linear<float>&>);
  TESSERA_EXPECT_THROW_MSG(DataParallel<float>(comm, b, {.bucket_cap_mb = 0}), ValueError,
                           "tessera::distributed::DataParallel", "'bucket_cap_mb' is 0");
  TESSERA_EXPECT_THROW_MSG(DataParallel<float>(comm, b, {.root = comm.size()}), ValueError,
                           "'root' is", "expected a rank in [0, ");
  comm.barrier();
}

models::CLIPOptions small_clip() {
  models::CLIPOptions o;
  o.vision = {.image_size = 8,
              .patch_size = 4,
              .in_channels = 3,
              .width = 8,
              .layers = 1,
              .heads = 2,
              .mlp_dim = 12,
              .output_dim = 6,
              .seed = 1};
  o.text = {.vocab_size = 20,
            .context_length = 6,
            .width = 8,
            .layers = 1,
            .heads = 2,
            .mlp_dim = 12,
            .activation = Activation::gelu,
            .output_dim = 6,
            .seed = 4};
  return o;
}

// The global batch of pairs: images [N, 3, 8, 8] and ids [N, 6] (end token 19 at varied places).
template <class T>
Tensor<T, 4> batch_images(Index n) {
  const auto flat = test::global_matrix<T>(n, 3 * 8 * 8, 0.5);
  Tensor<T, 4> x(Shape<4>{n, 3, 8, 8});
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = flat.data()[i];
  return x;
}
inline Tensor<Index, 2> batch_ids(Index n) {
  Tensor<Index, 2> ids(Shape<2>{n, 6});
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < 6; ++j) {
      const Index end = 2 + i % 4;
      ids(i, j) = j == 0 ? 18 : j < end ? 1 + (3 * i + 5 * j) % 17 : j == end ? 19 : 0;
    }
  return ids;
}
template <class T, int R>
Tensor<T, R> rows(const Tensor<T, R>& x, Index r0, Index n) {
  auto shape = x.shape();
  shape[0] = n;
  Tensor<T, R> out(shape);
  const Index per = x.size() / x.dim(0);
  for (Index i = 0; i < n * per; ++i) out.data()[i] = x.data()[r0 * per + i];
  return out;
}

// Every parameter's value (or gradient) of `m` (P ranks) against `ref` (one process):
// |x - y| <= tol max(1, |y|).
template <class M>
void expect_same_parameters(const char* when, M& m, M& ref, double tol, bool grads = false) {
  const auto mine = optim::parameters(m), theirs = optim::parameters(ref);
  EXPECT_EQ(mine.size(), theirs.size());
  EXPECT_GT(mine.size(), 20u);
  for (std::size_t k = 0; k < std::min(mine.size(), theirs.size()); ++k) {
    double worst = 0;
    const auto x = grads ? mine[k].grad() : mine[k].value();
    const auto y = grads ? theirs[k].grad() : theirs[k].value();
    EXPECT_EQ(x.size(), y.size()) << mine[k].name();
    for (std::size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
      const double e = static_cast<double>(y[i]);
      worst = std::max(worst, std::abs(static_cast<double>(x[i]) - e) / std::max(1.0, std::abs(e)));
    }
    EXPECT_LE(worst, tol) << when << ": " << mine[k].name() << " on rank " << world().rank();
  }
}

TYPED_TEST(DataParallelTyped, ClipStepOnRanksEqualsOneStepOnTheWholeBatch) {
  using T = TypeParam;
  const auto& comm = world();
  const test::Shards shards(comm.size(), 2);
  const auto images = batch_images<T>(shards.total);
  const auto ids = batch_ids(shards.total);
  const Index r0 = shards.offset[static_cast<std::size_t>(comm.rank())];
  const Index n = shards.rows[static_cast<std::size_t>(comm.rank())];

  // One process, the whole batch.
  // The step is SGD's, linear in the gradient. (Adam's first step is lr g / |g|: a gradient that
  // is zero in exact arithmetic, as the attention's key bias has, is rounding noise of either
  // sign there, which Adam turns into +-lr; the gradients themselves are compared first.)
  models::CLIP<T> ref(small_clip());
  const optim::SGDOptions sgd{.lr = 0.5, .momentum = 0.9, .weight_decay = 0.01};
  optim::SGD<T> ref_opt(optim::parameters(ref), sgd);
  ref.zero_grad();
  const T ref_loss = ref.train_loss(images, ids);
  ref_opt.step();

  // P ranks, each its shard; ranks other than 0 start from other weights, which DataParallel
  // replaces by rank 0's.
  auto o = small_clip();
  if (comm.rank() != 0) o.vision.seed = 99, o.text.seed = 98;
  models::CLIP<T> m(o);
  DataParallel<T> ddp(comm, m);
  optim::SGD<T> opt(optim::parameters(m), sgd);
  m.zero_grad();
  const T loss = clip_train_loss(comm, m, rows(images, r0, n), rows(ids, r0, n));
  ddp.average_gradients();
  const double tol = test::tolerance<T>();
  test::expect_scalar_close("loss", loss, ref_loss, tol);
  expect_same_parameters("averaged gradients", m, ref, tol, /*grads=*/true);
  opt.step();
  expect_same_parameters("after one SGD step", m, ref, tol);
}

TYPED_TEST(DataParallelTyped, SigLipStepOnRanksEqualsOneStepOnTheWholeBatch) {
  using T = TypeParam;
  const auto& comm = world();
  const test::Shards shards(comm.size(), 2);
  const auto images = batch_images<T>(shards.total);
  const auto ids = batch_ids(shards.total);
  const Index r0 = shards.offset[static_cast<std::size_t>(comm.rank())];
  const Index n = shards.rows[static_cast<std::size_t>(comm.rank())];
  models::SigLIPOptions so;
  so.vision = {.image_size = 8,
               .patch_size = 4,
               .in_channels = 3,
               .width = 8,
               .layers = 1,
               .heads = 2,
               .mlp_dim = 12,
               .patch_bias = true,
               .ln_pre = false,
               .class_token = false,
               .pooling = models::VisionPooling::map,
               .output_dim = 0,
               .seed = 1};
  so.text = {.vocab_size = 20,
             .context_length = 6,
             .width = 8,
             .layers = 1,
             .heads = 2,
             .mlp_dim = 12,
             .causal = false,
             .pooling = models::TextPooling::last,
             .output_dim = 8,
             .head_bias = true,
             .seed = 2};
  models::SigLIP<T> ref(so);
  optim::SGD<T> ref_opt(optim::parameters(ref), {.lr = 0.5, .momentum = 0.9});
  ref.zero_grad();
  const T ref_loss = ref.train_loss(images, ids);
  ref_opt.step();

  models::SigLIP<T> m(so);
  DataParallel<T> ddp(comm, m);
  optim::SGD<T> opt(optim::parameters(m), {.lr = 0.5, .momentum = 0.9});
  m.zero_grad();
  const T loss = siglip_train_loss(comm, m, rows(images, r0, n), rows(ids, r0, n));
  ddp.average_gradients();
  const double tol = test::tolerance<T>();
  test::expect_scalar_close("loss", loss, ref_loss, tol);
  expect_same_parameters("averaged gradients", m, ref, tol, /*grads=*/true);
  opt.step();
  expect_same_parameters("after one SGD step", m, ref, tol);
}

}  // namespace data_parallel_test
}  // namespace tessera::distributed
