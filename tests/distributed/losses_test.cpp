// The distributed contrastive losses against the single-process losses on the concatenated batch:
// every rank's loss, scalar gradients and its own rows' gradients (double <= 1e-10, float <=
// 1e-5, relative; at large scales both float paths against the loss in double, <= 1e-4), with
// shards of different sizes, tiles smaller than a shard and a single tile, both reductions; and
// the errors every rank raises alike.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "../test_util.hpp"
#include "distributed_test_util.hpp"
#include "tessera/distributed/clip_loss.hpp"
#include "tessera/distributed/info_nce.hpp"
#include "tessera/distributed/siglip_loss.hpp"

namespace tessera::distributed {
namespace losses_test {

using test::world;

template <class T>
class DistributedLoss : public ::testing::Test {
 protected:
  // A global batch of pairs (D = 7) and this rank's share.
  const test::Shards shards{world().size()};
  const Index r0 = shards.offset[static_cast<std::size_t>(world().rank())];
  const Index n = shards.rows[static_cast<std::size_t>(world().rank())];
  const Tensor<T, 2> A = test::global_matrix<T>(shards.total, 7, 0.3);
  const Tensor<T, 2> B = test::global_matrix<T>(shards.total, 7, 1.9);
  const Tensor<T, 2> a = test::rows_of(A, r0, n);
  const Tensor<T, 2> b = test::rows_of(B, r0, n);
};
TYPED_TEST_SUITE(DistributedLoss, test::Scalars);

TYPED_TEST(DistributedLoss, ClipEqualsTheSingleProcessLossOnTheConcatenatedBatch) {
  using T = TypeParam;
  const double tol = test::tolerance<T>();
  for (const auto reduction : {contrastive::Reduction::mean, contrastive::Reduction::sum})
    for (const Index block : {Index{2}, Index{3}, Index{1000}})
      for (const T t : {T(1.7), T(5.0)}) {  // 5 > log 100: the scale is clamped
        SCOPED_TRACE(testing::Message() << "block " << block << " t " << t);
        const contrastive::ClipLossOptions o{.reduction = reduction, .block_size = block};
        const auto ref = contrastive::clip_loss(this->A, this->B, t, o);
        const auto r = clip_loss(world(), this->a, this->b, t, o);
        test::expect_scalar_close("loss", r.loss, ref.loss, tol);
        test::expect_scalar_close("grad_logit_scale", r.grad_logit_scale, ref.grad_logit_scale,
                                  tol);
        EXPECT_EQ(r.scale, ref.scale);
        test::expect_rows_close("grad_a", r.grad_a, ref.grad_a, this->r0, tol);
        test::expect_rows_close("grad_b", r.grad_b, ref.grad_b, this->r0, tol);
      }
  const auto mat = clip_loss(world(), this->a, this->b, T(1.7), {.materialized = true});
  const auto ref = contrastive::clip_loss(this->A, this->B, T(1.7));
  test::expect_scalar_close("loss (materialized)", mat.loss, ref.loss, tol);
  test::expect_rows_close("grad_a (materialized)", mat.grad_a, ref.grad_a, this->r0, tol);
}

TYPED_TEST(DistributedLoss, InfoNceEqualsTheSingleProcessLossOnTheConcatenatedBatch) {
  using T = TypeParam;
  const double tol = test::tolerance<T>();
  for (const auto reduction : {contrastive::Reduction::mean, contrastive::Reduction::sum})
    for (const Index block : {Index{2}, Index{1000}}) {
      contrastive::InfoNceLossOptions o{.reduction = reduction, .block_size = block};
      if (block == 2)
        o.temperature = 0.2;
      else
        o.scale = 3.5;
      const auto ref = contrastive::info_nce_loss(this->A, this->B, o);
      const auto r = info_nce_loss(world(), this->a, this->b, o);
      test::expect_scalar_close("loss", r.loss, ref.loss, tol);
      test::expect_scalar_close("grad_scale", r.grad_scale, ref.grad_scale, tol);
      test::expect_rows_close("grad_a", r.grad_a, ref.grad_a, this->r0, tol);
      test::expect_rows_close("grad_b", r.grad_b, ref.grad_b, this->r0, tol);
    }
}

TYPED_TEST(DistributedLoss, SigLipEqualsTheSingleProcessLossOnTheConcatenatedBatch) {
  using T = TypeParam;
  const double tol = test::tolerance<T>();
  for (const auto reduction : {contrastive::Reduction::mean, contrastive::Reduction::sum})
    for (const Index block : {Index{2}, Index{3}, Index{1000}}) {
      SCOPED_TRACE(testing::Message() << "block " << block);
      const contrastive::SigLipLossOptions o{.reduction = reduction, .block_size = block};
      const auto ref = contrastive::siglip_loss(this->A, this->B, T(2.3), T(-1.5), o);
      const auto r = siglip_loss(world(), this->a, this->b, T(2.3), T(-1.5), o);
      test::expect_scalar_close("loss", r.loss, ref.loss, tol);
      test::expect_scalar_close("grad_logit_scale", r.grad_logit_scale, ref.grad_logit_scale, tol);
      test::expect_scalar_close("grad_logit_bias", r.grad_logit_bias, ref.grad_logit_bias, tol);
      test::expect_rows_close("grad_a", r.grad_a, ref.grad_a, this->r0, tol);
      test::expect_rows_close("grad_b", r.grad_b, ref.grad_b, this->r0, tol);
    }
  contrastive::LogitScaleBias<T> lsb;
  const auto ref = contrastive::siglip_loss(this->A, this->B, lsb);
  const auto r = siglip_loss(world(), this->a, this->b, lsb);
  test::expect_scalar_close("loss (module)", r.loss, ref.loss, tol);
}

// At a large scale a positive's softmax is close to 1 and its gradient p - 1 is a difference of
// nearly equal numbers: it stays accurate only if every logit is recomputed exactly as its
// logsumexp saw it. Shards of 1, 8, 15, ... rows and D = 16 take different product paths.
// Both the distributed and the single-process gradients are held to the same computation in
// double on the same inputs: in float, the CLIP gradients at scale 100 (|grad| up to 36 here) are
// off by up to 2.1e-5 (relative to max(1, |entry|); measured, both paths, every level), and
// the two paths round differently in the compiled mode (the library's loss runs at the kernels'
// level, the distributed sweeps in the caller), so the float tolerance is 1e-4 here; a logit
// recomputed one ulp of the scale away from what its logsumexp saw errs by 3e-4 to 1.3e-3.
TYPED_TEST(DistributedLoss, LargeScalesKeepTheSingleProcessAccuracy) {
  using T = TypeParam;
  const auto& comm = world();
  test::Shards shards(comm.size(), 1);
  shards.total = 0;
  for (int r = 0; r < comm.size(); ++r) {
    shards.rows[static_cast<std::size_t>(r)] = 1 + 7 * r;
    shards.offset[static_cast<std::size_t>(r)] = shards.total;
    shards.total += 1 + 7 * r;
  }
  const Index r0 = shards.offset[static_cast<std::size_t>(comm.rank())];
  const Index n = shards.rows[static_cast<std::size_t>(comm.rank())];
  const auto A = test::global_matrix<T>(shards.total, 16, 0.8);
  const auto B = test::global_matrix<T>(shards.total, 16, 2.6);
  const auto a = test::rows_of(A, r0, n), b = test::rows_of(B, r0, n);
  Tensor<double, 2> Ad(A.shape()), Bd(B.shape());
  for (Index i = 0; i < A.size(); ++i) {
    Ad.data()[i] = static_cast<double>(A.data()[i]);
    Bd.data()[i] = static_cast<double>(B.data()[i]);
  }
  const double tol = std::is_same_v<T, float> ? 1e-4 : test::tolerance<T>();
  const auto expect_accurate = [&](const char* what, const Tensor<T, 2>& got, Index row0,
                                   const Tensor<double, 2>& truth) {
    Tensor<T, 2> rounded(truth.shape());
    for (Index i = 0; i < truth.size(); ++i) rounded.data()[i] = static_cast<T>(truth.data()[i]);
    test::expect_rows_close(what, got, rounded, row0, tol);
  };
  const contrastive::InfoNceLossOptions o{.scale = 1000.0, .block_size = 4};
  const auto truth = contrastive::info_nce_loss(Ad, Bd, o);
  const auto ref = contrastive::info_nce_loss(A, B, o);
  const auto r = info_nce_loss(comm, a, b, o);
  expect_accurate("info_nce grad_a", r.grad_a, r0, truth.grad_a);
  expect_accurate("info_nce grad_b", r.grad_b, r0, truth.grad_b);
  expect_accurate("single-process info_nce grad_a", ref.grad_a, 0, truth.grad_a);
  const auto ctruth = contrastive::clip_loss(Ad, Bd, 9.0, {.block_size = 4});  // scale 100
  const auto cref = contrastive::clip_loss(A, B, T(9), {.block_size = 4});
  const auto c = clip_loss(comm, a, b, T(9), {.block_size = 4});
  expect_accurate("clip grad_a", c.grad_a, r0, ctruth.grad_a);
  expect_accurate("clip grad_b", c.grad_b, r0, ctruth.grad_b);
  expect_accurate("single-process clip grad_a", cref.grad_a, 0, ctruth.grad_a);
}

TYPED_TEST(DistributedLoss, NanParametersGiveNanEverywhere) {
  using T = TypeParam;
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  const auto c = clip_loss(world(), this->a, this->b, nan);
  EXPECT_TRUE(std::isnan(c.loss));
  EXPECT_TRUE(std::isnan(c.grad_logit_scale));
  EXPECT_TRUE(std::isnan(c.grad_a(0, 0)));
  const auto s = siglip_loss(world(), this->a, this->b, T(1), nan);
  EXPECT_TRUE(std::isnan(s.loss));
  EXPECT_TRUE(std::isnan(s.grad_logit_scale));
  EXPECT_TRUE(std::isnan(s.grad_b(0, 0)));
  // NaN in one rank's embeddings reaches every rank's loss.
  Tensor<T, 2> a = this->a;
  if (world().rank() == world().size() - 1) a(0, 0) = nan;
  EXPECT_TRUE(std::isnan(clip_loss(world(), a, this->b, T(1)).loss));
  EXPECT_TRUE(std::isnan(siglip_loss(world(), a, this->b, T(1), T(0)).loss));
  EXPECT_TRUE(std::isnan(info_nce_loss(world(), a, this->b).loss));
}

// Errors depend on what every rank passed, so every rank throws the same error (none is left
// waiting for the others in a collective).
TEST(DistributedLossErrors, EveryRankRaisesTheSameError) {
  const auto& comm = world();
  const int last = comm.size() - 1;
  const bool is_last = comm.rank() == last;
  const Tensor<double, 2> a = test::global_matrix<double>(3, 4, 0.1);
  const Tensor<double, 2> b = test::global_matrix<double>(3, 4, 0.2);
  const Tensor<double, 2> wide = test::global_matrix<double>(3, 5, 0.3);
  const Tensor<double, 2> short_b = test::global_matrix<double>(2, 4, 0.4);
  const Tensor<double, 2> empty(Shape<2>{0, 4});
  const std::string rank = "rank " + std::to_string(last);

  TESSERA_EXPECT_THROW_MSG(siglip_loss(comm, a, is_last ? short_b : b, 1.0, 0.0), ShapeError,
                           "tessera::distributed::siglip_loss", rank.c_str(), "[2, 4]",
                           "the same shape");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(comm, is_last ? empty : a, b), ShapeError,
                           "tessera::distributed::info_nce_loss", rank.c_str(), "[0, 4]",
                           "rows >= 1");
  if (comm.size() > 1) {  // what only differs between ranks (the same branch on every rank)
    TESSERA_EXPECT_THROW_MSG(clip_loss(comm, is_last ? wide : a, is_last ? wide : b, 1.0),
                             ShapeError, "tessera::distributed::clip_loss", rank.c_str(),
                             "dimension 5", "expected 4");
    TESSERA_EXPECT_THROW_MSG(clip_loss(comm, a, b, is_last ? 2.0 : 1.0), ValueError,
                             "tessera::distributed::clip_loss", "'logit_scale' is 2", rank.c_str(),
                             "the same value on every rank");
    TESSERA_EXPECT_THROW_MSG(siglip_loss(comm, a, b, 1.0, 0.0,
                                         {.reduction = is_last ? contrastive::Reduction::sum
                                                               : contrastive::Reduction::mean}),
                             ValueError, "'opts.reduction'", "the same value on every rank");
    TESSERA_EXPECT_THROW_MSG(info_nce_loss(comm, a, b, {.block_size = is_last ? 3 : 2}), ValueError,
                             "tessera::distributed::info_nce_loss", "'opts.block_size' is 3",
                             "the same value on every rank");
  }
  TESSERA_EXPECT_THROW_MSG(clip_loss(comm, a, b, std::numeric_limits<double>::infinity()),
                           ValueError, "tessera::distributed::clip_loss", "'logit_scale' is inf");
  TESSERA_EXPECT_THROW_MSG(siglip_loss(comm, a, b, 800.0, 0.0), ValueError,
                           "tessera::distributed::siglip_loss", "exp is finite");
  TESSERA_EXPECT_THROW_MSG(clip_loss(comm, a, b, 1.0, {.block_size = 0}), ValueError,
                           "tessera::distributed::clip_loss", "'block_size' is 0");
  TESSERA_EXPECT_THROW_MSG(info_nce_loss(comm, a, b, {.temperature = -1.0}), ValueError,
                           "tessera::distributed::info_nce_loss", "'temperature' is -1");
  comm.barrier();  // every rank got here: none is stuck in a collective
}

}  // namespace losses_test
}  // namespace tessera::distributed
