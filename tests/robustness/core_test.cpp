// Adversarial cases for core/: tensors, views, masks and the scratch arena.
//
// Each test is one instance of a kind of fault from the robustness review: sizes whose products
// overflow, views of temporaries, messages that grow without bound, and the instruction set a
// build really runs. To add a case, add a TEST (or a TYPED_TEST over tessera::test::Scalars) that
// calls the public API with the bad input and checks the typed exception and what its message
// names, or the right value; name it after the fault, not the fix.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/mask.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/dispatch.hpp"
#include "tessera/kernels/simd.hpp"
#include "test_util.hpp"

namespace core_test {

using tessera::Index;
using tessera::IndexError;
using tessera::Mask;
using tessera::Shape;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::TensorMap;
using tessera::ValueError;

constexpr Index kHuge = Index(1) << 62;
constexpr Index k2to32 = Index(1) << 32;

template <class T>
class CoreRobustnessTest : public ::testing::Test {};
TYPED_TEST_SUITE(CoreRobustnessTest, tessera::test::Scalars);

// ---------------------------------------------------------------- kind 1: size arithmetic

TYPED_TEST(CoreRobustnessTest, TensorWhoseBytesOverflowIsAShapeErrorNotAWrite) {
  using T = TypeParam;
  // 2^62 elements fit Index, but not 2^62 * sizeof(T) bytes: it used to allocate 0 bytes and
  // zero-fill 2^62 elements into them.
  TESSERA_EXPECT_THROW_MSG((Tensor<T, 1>(kHuge)), ShapeError, "tessera::Tensor");
  TESSERA_EXPECT_THROW_MSG((Tensor<T, 1>(std::numeric_limits<Index>::max())), ShapeError,
                           "larger than the address space");
  EXPECT_THROW((Tensor<T, 1>(Shape<1>{kHuge}, tessera::uninitialized)), ShapeError);
}

TYPED_TEST(CoreRobustnessTest, TensorWhoseElementCountOverflowsIsAShapeError) {
  using T = TypeParam;
  // 2^32 x 2^32 = 2^64 elements wraps to 0: the tensor was empty and at(1, 1) segfaulted.
  TESSERA_EXPECT_THROW_MSG((Tensor<T, 2>(k2to32, k2to32)), ShapeError,
                           "[4294967296, 4294967296] has more elements than an index can hold");
  EXPECT_THROW((Tensor<T, 3>(Index(3), k2to32, Index(1) << 31)), ShapeError);
}

TYPED_TEST(CoreRobustnessTest, ZeroSizedTensorWithHugeOtherDimensionsIsRejected) {
  using T = TypeParam;
  // Zero elements, but rows() = 2^62 * 2^62 would overflow: every partial product must fit.
  EXPECT_THROW((Tensor<T, 3>(kHuge, kHuge, Index(0))), ShapeError);
  // A zero with sizes whose product fits is fine.
  const Tensor<T, 3> ok(Index(0), k2to32, Index(4));
  EXPECT_EQ(ok.size(), 0);
  EXPECT_EQ(ok.rows(), 0);
}

TYPED_TEST(CoreRobustnessTest, TensorMapWithOverflowingShapeIsAShapeError) {
  using T = TypeParam;
  T x[4] = {};
  TESSERA_EXPECT_THROW_MSG((TensorMap<T, 2>(x, Shape<2>{k2to32, k2to32})), ShapeError,
                           "tessera::TensorMap");
  EXPECT_THROW((TensorMap<T, 2>(x, Shape<2>{-1, 4})), ShapeError);
}

TYPED_TEST(CoreRobustnessTest, ReshapeWhoseSizesOverflowIsAShapeError) {
  using T = TypeParam;
  Tensor<T, 2> t(2, 3);
  // 2^40 * 2^40 wraps; with -1 the product of the known sizes used to be 0 after wrapping.
  TESSERA_EXPECT_THROW_MSG((t.template reshape<3>({-1, Index(1) << 40, Index(1) << 40})),
                           ShapeError, "more elements than an index can hold");
  EXPECT_THROW((t.template reshape<3>({k2to32, k2to32, Index(6)})), ShapeError);
  // The right value still works.
  EXPECT_EQ((t.template reshape<1>({-1}).size()), 6);
}

TYPED_TEST(CoreRobustnessTest, HugeButRepresentableTensorIsBadAllocNotAWrite) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer aborts on a 64 TiB request instead of throwing bad_alloc";
#else
  using T = TypeParam;
  EXPECT_THROW((Tensor<T, 1>(Index(1) << 44)), std::bad_alloc);
#endif
}

TEST(CoreRobustness, MaskWithShapeOverflowIsAShapeError) {
  const Tensor<bool, 2> m(2, 3);
  const Mask mask = Mask::blocked(m);
  TESSERA_EXPECT_THROW_MSG(mask.with_shape({k2to32, k2to32, Index(6)}), ShapeError,
                           "tessera::Mask::with_shape");
  EXPECT_THROW(mask.with_shape({-2, -3}), ShapeError);
  EXPECT_THROW(mask.with_shape({1, 1, 1, 1, 1, 1, 1, 1, 6}), ShapeError);
  EXPECT_EQ(mask.with_shape({6}).rank(), 1);
}

TEST(CoreRobustness, ScratchTensorOverflowIsAShapeError) {
  tessera::detail::ScratchFrame frame;
  EXPECT_THROW((frame.tensor<float, 2>({k2to32, k2to32})), ShapeError);
  EXPECT_THROW((frame.alloc<double>(kHuge)), ValueError);
}

TEST(CoreRobustness, CheckedArithmeticHelpers) {
  using tessera::detail::checked_mul;
  using tessera::detail::checked_shape_size;
  EXPECT_EQ(checked_mul(k2to32, Index(1) << 30, "f", "x"), Index(1) << 62);
  TESSERA_EXPECT_THROW_MSG(checked_mul(k2to32, k2to32, "tessera::f", "argument 'x'"), ShapeError,
                           "tessera::f: argument 'x' has 4294967296 x 4294967296 elements");
  const std::vector<Index> fits{0, Index(1) << 61, 2};
  EXPECT_EQ(checked_shape_size(fits, "f", "x"), 0);
  const std::vector<Index> wraps{0, kHuge, 4};
  EXPECT_THROW(checked_shape_size(wraps, "f", "x"), ShapeError);
}

// ---------------------------------------------------------------- kind 4: views of temporaries

// Each concept holds when the call compiles. A view of an rvalue Tensor would dangle at the end of
// the statement (make_tensor()[1] bound to a named map was a heap-use-after-free), so it must not
// compile; views of named tensors and of views (which own nothing) must.
template <class X>
concept Slices = requires(X&& x) {
  std::forward<X>(x)[1];
};
template <class X>
concept Reshapes = requires(X&& x) {
  std::forward<X>(x).template reshape<1>({-1});
};
template <class X>
concept Views = requires(X&& x) {
  std::forward<X>(x).view();
};
template <class X>
concept AsMatrix = requires(X&& x) {
  std::forward<X>(x).as_matrix();
};
template <class X>
concept AsArray = requires(X&& x) {
  std::forward<X>(x).as_array();
};
template <class X>
concept AsVector = requires(X&& x) {
  std::forward<X>(x).as_vector();
};
template <class X>
concept CViews = requires(X&& x) {
  tessera::cview(std::forward<X>(x));
};
template <class X>
concept MViews = requires(X&& x) {
  tessera::mview(std::forward<X>(x));
};
template <class X>
concept MasksAllowed = requires(X&& x) {
  Mask::allowed(std::forward<X>(x));
};
template <class X>
concept MasksBlocked = requires(X&& x) {
  Mask::blocked(std::forward<X>(x));
};
template <class X>
concept MasksAdditive = requires(X&& x) {
  Mask::additive(std::forward<X>(x));
};

using F2 = Tensor<float, 2>;
using F1 = Tensor<float, 1>;
using B2 = Tensor<bool, 2>;
using MapF2 = TensorMap<float, 2>;

static_assert(!Slices<F2> && !Slices<const F2> && !Slices<F1> && !Slices<const F1>);
static_assert(Slices<F2&> && Slices<const F2&> && Slices<MapF2> && Slices<const MapF2>);
static_assert(!Reshapes<F2> && !Reshapes<const F2> && Reshapes<F2&> && Reshapes<MapF2>);
static_assert(!Views<F2> && !Views<const F2> && Views<F2&> && Views<const F2&> && Views<MapF2>);
static_assert(!AsMatrix<F2> && !AsMatrix<const F2> && AsMatrix<F2&> && AsMatrix<MapF2>);
static_assert(!AsArray<F2> && !AsArray<const F2> && AsArray<const F2&> && AsArray<MapF2>);
static_assert(!AsVector<F2> && !AsVector<const F2> && AsVector<F2&> && AsVector<MapF2>);
static_assert(!CViews<F2> && !CViews<const F2> && CViews<const F2&> && CViews<MapF2>);
static_assert(!MViews<F2> && MViews<F2&> && MViews<MapF2>);
static_assert(!MasksAllowed<B2> && !MasksAllowed<const B2> && MasksAllowed<const B2&>);
static_assert(!MasksBlocked<B2> && !MasksBlocked<const B2> && MasksBlocked<B2&>);
static_assert(MasksBlocked<TensorMap<bool, 2>>);
static_assert(!MasksAdditive<F2> && MasksAdditive<F2&> && MasksAdditive<MapF2>);

TEST(CoreRobustness, ViewsOfNamedTensorsAndOfViewsStillWork) {
  Tensor<float, 2> t{{1, 2, 3}, {4, 5, 6}};
  // A temporary view (it owns nothing) may be sliced and reshaped.
  EXPECT_EQ(t.view()[1](2), 6.0f);
  EXPECT_EQ(t.view().reshape<1>({-1})(4), 5.0f);
  EXPECT_EQ(t[0].as_vector().sum(), 6.0f);
  EXPECT_EQ(tessera::cview(t).as_matrix()(1, 0), 4.0f);
}

// ---------------------------------------------------------------- kind 14: bounded messages

TEST(CoreRobustness, ShapeStringOfAHugeRankIsBounded) {
  const std::vector<Index> shape(200000, 1);
  const std::string s = tessera::detail::shape_string(shape);
  EXPECT_LT(s.size(), 120u) << s;
  EXPECT_NE(s.find("200000 dimensions"), std::string::npos) << s;
}

TEST(CoreRobustness, CappedListsSayHowManyThereWere) {
  std::vector<std::string> keys;
  for (int i = 0; i < 1000; ++i) keys.push_back("encoder.layers." + std::to_string(i) + ".weight");
  const std::string s = tessera::detail::capped_list(keys);
  EXPECT_NE(s.find("'encoder.layers.19.weight'"), std::string::npos);
  EXPECT_EQ(s.find("'encoder.layers.20.weight'"), std::string::npos);
  EXPECT_NE(s.find("(1000 in all)"), std::string::npos);
  EXPECT_LT(s.size(), 700u);
  const std::vector<int> few{1, 2};
  EXPECT_EQ(tessera::detail::capped_list(few), "'1', '2'");
}

TEST(CoreRobustness, OverlapDetection) {
  float buf[16];
  using tessera::detail::ranges_overlap;
  using tessera::detail::ranges_partially_overlap;
  EXPECT_TRUE(ranges_overlap(buf, 32, buf + 7, 8));
  EXPECT_FALSE(ranges_overlap(buf, 32, buf + 8, 8));
  EXPECT_FALSE(ranges_overlap(buf, 0, buf, 8));
  EXPECT_FALSE(ranges_partially_overlap(buf, 32, buf, 32));
  EXPECT_TRUE(ranges_partially_overlap(buf, 32, buf + 1, 32));
}

TEST(CoreRobustness, FinitenessIsCheckedInTheComputeType) {
  using tessera::detail::check_finite_in;
  EXPECT_NO_THROW(check_finite_in<double>("f", "scale", 1e39));
  TESSERA_EXPECT_THROW_MSG(check_finite_in<float>("tessera::f", "scale", 1e39), ValueError,
                           "tessera::f: argument 'scale' is 1e+39");
  EXPECT_THROW(check_finite_in<double>("f", "scale", std::numeric_limits<double>::quiet_NaN()),
               ValueError);
}

// ---------------------------------------------------------------- every instruction set

// CI builds the suite for several instruction-set levels and sets TESSERA_EXPECT_FLOAT_LANES to
// the float packet width each level must run (4: SSE2 baseline, 8: AVX2, 16: AVX-512), so a
// level that silently built for another ISA fails here.
TEST(CoreRobustness, BuildRunsTheExpectedInstructionSet) {
  // In the compiled mode, the width of the level the kernels were dispatched to.
  const Index lanes = tessera::kernel_float_lanes();
  std::printf("kernels at level %s: float packet of %ld lanes\n",
              std::string(tessera::cpu_capability()).c_str(), static_cast<long>(lanes));
  const char* want = std::getenv("TESSERA_EXPECT_FLOAT_LANES");
  if (!want) GTEST_SKIP() << "TESSERA_EXPECT_FLOAT_LANES not set; this build runs " << lanes;
  EXPECT_EQ(lanes, std::atol(want));
}

}  // namespace core_test
