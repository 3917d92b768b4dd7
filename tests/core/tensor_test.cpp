// Tests for tessera/core/tensor.hpp: Tensor construction (shape, sizes, tag,
// nested braces), value semantics (copy, move, swap), shape queries, element
// access, slicing and reshaping as views, fill helpers, zero-copy Eigen
// interop, TensorMap over caller memory, cview/mview and TensorLike.
#include "tessera/core/tensor.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace tensor_test {

using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::TensorMap;

template <class T>
class TensorTest : public ::testing::Test {};
TYPED_TEST_SUITE(TensorTest, tessera::test::Scalars);

template <class T>
class TensorMapTest : public ::testing::Test {};
TYPED_TEST_SUITE(TensorMapTest, tessera::test::Scalars);

// ---- helpers
// ---------------------------------------------------------------------------------

// Every element of x in memory order.
template <class X>
std::vector<tessera::scalar_t<X>> values(const X& x) {
  return std::vector<tessera::scalar_t<X>>(x.data(), x.data() + x.size());
}

// Fills x with start, start + 1, ... in memory order.
template <class X>
void fill_iota(X&& x, double start = 0) {
  auto* p = x.data();
  using E = std::remove_pointer_t<decltype(p)>;
  for (Index i = 0; i < x.size(); ++i) p[i] = static_cast<E>(start + static_cast<double>(i));
}

template <std::size_t R>
std::vector<Index> to_vector(const std::array<Index, R>& s) {
  return std::vector<Index>(s.begin(), s.end());
}

bool aligned64(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % tessera::kTensorAlignment == 0;
}

// ---- construction
// ----------------------------------------------------------------------------

TYPED_TEST(TensorTest, ConstructFromShapeIsZeroFilled) {
  using T = TypeParam;
  {
    // Leave non-zero garbage in the allocator so a reused block would show
    // through.
    Tensor<T, 3> garbage(Shape<3>{2, 3, 4}, tessera::uninitialized);
    garbage.setConstant(7);
  }
  Tensor<T, 3> x(Shape<3>{2, 3, 4});
  EXPECT_EQ(to_vector(x.shape()), (std::vector<Index>{2, 3, 4}));
  EXPECT_EQ(x.size(), 24);
  EXPECT_EQ(decltype(x)::rank, 3);
  ASSERT_NE(x.data(), nullptr);
  EXPECT_EQ(values(x), std::vector<T>(24, T(0)));
}

TYPED_TEST(TensorTest, ConstructFromSizes) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  EXPECT_EQ(to_vector(x.shape()), (std::vector<Index>{2, 3, 4}));
  EXPECT_EQ(values(x), std::vector<T>(24, T(0)));

  // Any integral type is accepted for the sizes.
  Tensor<T, 2> y(std::size_t{5}, short{2});
  EXPECT_EQ(to_vector(y.shape()), (std::vector<Index>{5, 2}));
  EXPECT_EQ(values(y), std::vector<T>(10, T(0)));

  // Sizes are explicit: a bare integer or shape never converts to a tensor.
  static_assert(!std::is_convertible_v<int, Tensor<T, 1>>);
  static_assert(!std::is_convertible_v<Shape<2>, Tensor<T, 2>>);
}

TYPED_TEST(TensorTest, UninitializedTagAllocatesTheShape) {
  using T = TypeParam;
  Tensor<T, 2> x(Shape<2>{3, 5}, tessera::uninitialized);
  EXPECT_EQ(to_vector(x.shape()), (std::vector<Index>{3, 5}));
  EXPECT_EQ(x.size(), 15);
  ASSERT_NE(x.data(), nullptr);
  EXPECT_TRUE(aligned64(x.data()));
  fill_iota(x);  // every element is writable
  for (Index i = 0; i < 15; ++i) EXPECT_EQ(x.data()[i], T(i));
}

TYPED_TEST(TensorTest, NestedInitializerListRank1) {
  using T = TypeParam;
  Tensor<T, 1> v{T(1.5), T(-2), T(3.25)};
  EXPECT_EQ(to_vector(v.shape()), (std::vector<Index>{3}));
  EXPECT_EQ(values(v), (std::vector<T>{T(1.5), T(-2), T(3.25)}));
  EXPECT_TRUE(aligned64(v.data()));
}

TYPED_TEST(TensorTest, NestedInitializerListRank2) {
  using T = TypeParam;
  Tensor<T, 2> m{{1, 2, 3}, {4, 5, 6}};
  EXPECT_EQ(to_vector(m.shape()), (std::vector<Index>{2, 3}));
  EXPECT_EQ(values(m), (std::vector<T>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(m(1, 0), T(4));
  EXPECT_EQ(m(0, 2), T(3));

  Tensor<T, 2> row{{7, 8, 9}};
  EXPECT_EQ(to_vector(row.shape()), (std::vector<Index>{1, 3}));
  EXPECT_EQ(values(row), (std::vector<T>{7, 8, 9}));

  Tensor<T, 2> col{{7}, {8}};
  EXPECT_EQ(to_vector(col.shape()), (std::vector<Index>{2, 1}));
  EXPECT_EQ(values(col), (std::vector<T>{7, 8}));
}

TYPED_TEST(TensorTest, NestedInitializerListRank3) {
  using T = TypeParam;
  Tensor<T, 3> x{{{1, 2}, {3, 4}, {5, 6}}, {{7, 8}, {9, 10}, {11, 12}}};
  EXPECT_EQ(to_vector(x.shape()), (std::vector<Index>{2, 3, 2}));
  EXPECT_EQ(values(x), (std::vector<T>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(x(1, 2, 0), T(11));
  EXPECT_EQ(x(0, 1, 1), T(4));
}

TEST(Tensor, NestedInitializerListWithEmptyRows) {
  Tensor<float, 2> a{{}};
  EXPECT_EQ(to_vector(a.shape()), (std::vector<Index>{1, 0}));
  EXPECT_EQ(a.size(), 0);

  Tensor<float, 2> b{{}, {}, {}};
  EXPECT_EQ(to_vector(b.shape()), (std::vector<Index>{3, 0}));

  // An empty list says nothing about the inner sizes: they are zero.
  Tensor<double, 3> c{{}, {}};
  EXPECT_EQ(to_vector(c.shape()), (std::vector<Index>{2, 0, 0}));
  Tensor<double, 3> d{{{}}};
  EXPECT_EQ(to_vector(d.shape()), (std::vector<Index>{1, 1, 0}));
}

TEST(Tensor, RaggedNestedInitializerListThrows) {
  TESSERA_EXPECT_THROW_MSG((Tensor<float, 2>{{1, 2, 3}, {4, 5}}), tessera::ShapeError,
                           "tessera::Tensor", "ragged", "axis 1", "2 elements",
                           "earlier row had 3");
  TESSERA_EXPECT_THROW_MSG((Tensor<double, 2>{{1}, {2, 3}}), tessera::ShapeError, "ragged",
                           "axis 1");
  TESSERA_EXPECT_THROW_MSG((Tensor<float, 2>{{}, {1}}), tessera::ShapeError, "ragged", "axis 1");
  TESSERA_EXPECT_THROW_MSG((Tensor<float, 2>{{1}, {}}), tessera::ShapeError, "ragged", "axis 1");
  // Rank 3: ragged on the middle axis and on the last axis.
  TESSERA_EXPECT_THROW_MSG((Tensor<float, 3>{{{1, 2}, {3, 4}}, {{5, 6}}}), tessera::ShapeError,
                           "ragged", "axis 1");
  TESSERA_EXPECT_THROW_MSG((Tensor<double, 3>{{{1, 2}, {3, 4}}, {{5, 6}, {7}}}),
                           tessera::ShapeError, "ragged", "axis 2");
  TESSERA_EXPECT_THROW_MSG((Tensor<double, 3>{{}, {{1}}}), tessera::ShapeError, "ragged", "axis 1");
}

TEST(Tensor, BracesHoldValuesParenthesesHoldSizes) {
  // As with std::vector: {5} is one element of value 5, (5) is five zeros.
  Tensor<float, 1> braces{5};
  EXPECT_EQ(to_vector(braces.shape()), (std::vector<Index>{1}));
  EXPECT_EQ(braces(0), 5.0f);

  Tensor<float, 1> parens(5);
  EXPECT_EQ(to_vector(parens.shape()), (std::vector<Index>{5}));
  EXPECT_EQ(values(parens), std::vector<float>(5, 0.0f));

  Tensor<double, 1> two{5, 6};
  EXPECT_EQ(values(two), (std::vector<double>{5, 6}));
  Tensor<double, 2> sizes(5, 6);
  EXPECT_EQ(to_vector(sizes.shape()), (std::vector<Index>{5, 6}));
}

TYPED_TEST(TensorTest, RankZeroHoldsOneElement) {
  using T = TypeParam;
  Tensor<T, 0> s;
  EXPECT_EQ(decltype(s)::rank, 0);
  EXPECT_EQ(s.size(), 1);
  EXPECT_FALSE(s.empty());
  EXPECT_TRUE(s.shape().empty());
  ASSERT_NE(s.data(), nullptr);
  EXPECT_EQ(s(), T(0));
  s() = T(2.5);
  EXPECT_EQ(s.at(), T(2.5));
  EXPECT_EQ(s.data()[0], T(2.5));
  EXPECT_EQ(s.rows(), 1);
  EXPECT_EQ(s.cols(), 1);
  EXPECT_EQ(s.as_matrix()(0, 0), T(2.5));

  Tensor<T, 0> copy(s);
  EXPECT_NE(copy.data(), s.data());
  EXPECT_EQ(copy(), T(2.5));

  Tensor<T, 0> from_shape(Shape<0>{});
  EXPECT_EQ(from_shape.size(), 1);
  EXPECT_EQ(from_shape(), T(0));
}

TYPED_TEST(TensorTest, DefaultConstructedIsEmpty) {
  using T = TypeParam;
  Tensor<T, 2> d;
  EXPECT_EQ(to_vector(d.shape()), (std::vector<Index>{0, 0}));
  EXPECT_EQ(d.size(), 0);
  EXPECT_TRUE(d.empty());
  EXPECT_EQ(d.as_matrix().size(), 0);

  Tensor<T, 1> braces{};
  EXPECT_EQ(braces.size(), 0);
  EXPECT_TRUE(braces.empty());
}

TEST(Tensor, NegativeDimensionsThrow) {
  TESSERA_EXPECT_THROW_MSG((Tensor<float, 2>(2, -3)), tessera::ShapeError, "tessera::Tensor",
                           "argument 'shape' [2, -3]", "negative");
  TESSERA_EXPECT_THROW_MSG((Tensor<double, 3>(Shape<3>{-1, 2, 2})), tessera::ShapeError,
                           "tessera::Tensor", "[-1, 2, 2]", "negative");
  // Two negative sizes give a positive product; still rejected.
  TESSERA_EXPECT_THROW_MSG((Tensor<float, 2>(Shape<2>{-2, -3}, tessera::uninitialized)),
                           tessera::ShapeError, "[-2, -3]", "negative");
}

TYPED_TEST(TensorTest, BuffersAre64ByteAligned) {
  using T = TypeParam;
  EXPECT_EQ(tessera::kTensorAlignment, std::size_t{64});
  for (Index n : {1, 2, 3, 15, 17, 64, 1000, 4099}) {
    Tensor<T, 1> v(n);
    EXPECT_TRUE(aligned64(v.data())) << "n=" << n;
    Tensor<T, 2> m(Shape<2>{n, 3}, tessera::uninitialized);
    EXPECT_TRUE(aligned64(m.data())) << "n=" << n;
    Tensor<T, 1> copy(v);
    EXPECT_TRUE(aligned64(copy.data())) << "n=" << n;
  }
  Tensor<T, 2> braces{{1, 2, 3}};
  EXPECT_TRUE(aligned64(braces.data()));
  Tensor<T, 0> scalar;
  EXPECT_TRUE(aligned64(scalar.data()));
}

// ---- value semantics
// -------------------------------------------------------------------------

TYPED_TEST(TensorTest, CopyIsDeep) {
  using T = TypeParam;
  Tensor<T, 2> a(2, 3);
  fill_iota(a, 1);
  Tensor<T, 2> b(a);
  EXPECT_EQ(b.shape(), a.shape());
  EXPECT_NE(b.data(), a.data());
  EXPECT_EQ(values(b), values(a));
  b(0, 0) = T(-9);
  EXPECT_EQ(a(0, 0), T(1));
  a(1, 2) = T(42);
  EXPECT_EQ(b(1, 2), T(6));

  Tensor<T, 2> empty;
  Tensor<T, 2> empty_copy(empty);
  EXPECT_EQ(empty_copy.size(), 0);
}

TYPED_TEST(TensorTest, ExplicitCopyFromAView) {
  using T = TypeParam;
  std::vector<T> buf{1, 2, 3, 4, 5, 6};
  TensorMap<const T, 2> view(buf.data(), {3, 2});
  Tensor<T, 2> copy(view);
  EXPECT_EQ(to_vector(copy.shape()), (std::vector<Index>{3, 2}));
  EXPECT_NE(copy.data(), buf.data());
  EXPECT_EQ(values(copy), buf);
  copy(0, 0) = T(100);
  EXPECT_EQ(buf[0], T(1));
  static_assert(!std::is_convertible_v<TensorMap<const T, 2>, Tensor<T, 2>>,
                "copying a view into a new buffer is explicit");
}

TYPED_TEST(TensorTest, MoveLeavesSourceEmpty) {
  using T = TypeParam;
  Tensor<T, 3> a(2, 3, 4);
  fill_iota(a);
  const T* p = a.data();
  Tensor<T, 3> b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(to_vector(b.shape()), (std::vector<Index>{2, 3, 4}));
  EXPECT_EQ(b(1, 2, 3), T(23));
  EXPECT_EQ(a.size(),
            0);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(to_vector(a.shape()), (std::vector<Index>{0, 0, 0}));
  static_assert(std::is_nothrow_move_constructible_v<Tensor<T, 3>>);
  static_assert(std::is_nothrow_move_assignable_v<Tensor<T, 3>>);

  // The moved-from tensor can be reused.
  a = Tensor<T, 3>(1, 1, 2);
  EXPECT_EQ(a.size(), 2);
}

// A rank-0 tensor always has one element, so a moved-from one must still be
// usable: copying it, filling it and reading its element are operations without
// preconditions.
TYPED_TEST(TensorTest, MovedFromRankZeroTensorStaysUsable) {
  using T = TypeParam;
  Tensor<T, 0> a;
  a() = T(3);
  Tensor<T, 0> b(std::move(a));
  EXPECT_EQ(b(), T(3));
  ASSERT_EQ(a.size(), 1);  // NOLINT(bugprone-use-after-move)
  ASSERT_NE(a.data(), nullptr) << "moved-from rank-0 tensor reports size 1 but has no buffer";
  a.setConstant(5);
  Tensor<T, 0> c(a);
  EXPECT_EQ(c(), T(5));

  Tensor<T, 0> d;
  d = std::move(b);
  EXPECT_EQ(d(), T(3));
  ASSERT_EQ(b.size(), 1);  // NOLINT(bugprone-use-after-move)
  ASSERT_NE(b.data(), nullptr) << "move-assigned-from rank-0 tensor has no buffer";
}

TYPED_TEST(TensorTest, CopyAssignmentReplacesShapeAndValues) {
  using T = TypeParam;
  Tensor<T, 2> a{{1, 2}, {3, 4}, {5, 6}};
  Tensor<T, 2> b(1, 7);
  b = a;
  EXPECT_EQ(b.shape(), a.shape());
  EXPECT_NE(b.data(), a.data());
  EXPECT_EQ(values(b), (std::vector<T>{1, 2, 3, 4, 5, 6}));
  b(0, 0) = T(-1);
  EXPECT_EQ(a(0, 0), T(1));

  // Self-assignment keeps the contents.
  Tensor<T, 2>& alias = a;
  a = alias;
  EXPECT_EQ(values(a), (std::vector<T>{1, 2, 3, 4, 5, 6}));

  // Assigning an empty tensor empties the target.
  b = Tensor<T, 2>();
  EXPECT_EQ(b.size(), 0);
}

TYPED_TEST(TensorTest, MoveAssignmentTransfersTheBuffer) {
  using T = TypeParam;
  Tensor<T, 2> a{{1, 2, 3}};
  Tensor<T, 2> b(4, 4);
  const T* p = a.data();
  b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(to_vector(b.shape()), (std::vector<Index>{1, 3}));
  EXPECT_EQ(values(b), (std::vector<T>{1, 2, 3}));
  EXPECT_EQ(a.size(), 0);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a.data(), nullptr);

  // Self-move-assignment leaves a valid tensor with its contents.
  Tensor<T, 2>& alias = b;
  b = std::move(alias);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(values(b), (std::vector<T>{1, 2, 3}));
}

TYPED_TEST(TensorTest, SwapExchangesShapesAndBuffers) {
  using T = TypeParam;
  Tensor<T, 2> a{{1, 2, 3}};
  Tensor<T, 2> b{{4}, {5}};
  const T* pa = a.data();
  const T* pb = b.data();
  a.swap(b);
  EXPECT_EQ(a.data(), pb);
  EXPECT_EQ(b.data(), pa);
  EXPECT_EQ(to_vector(a.shape()), (std::vector<Index>{2, 1}));
  EXPECT_EQ(to_vector(b.shape()), (std::vector<Index>{1, 3}));
  EXPECT_EQ(values(a), (std::vector<T>{4, 5}));
  EXPECT_EQ(values(b), (std::vector<T>{1, 2, 3}));
  std::swap(a, b);
  EXPECT_EQ(a.data(), pa);
  EXPECT_EQ(values(a), (std::vector<T>{1, 2, 3}));
}

// ---- shape queries
// ---------------------------------------------------------------------------

TYPED_TEST(TensorTest, ShapeAndDim) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  EXPECT_EQ(x.dim(0), 2);
  EXPECT_EQ(x.dim(1), 3);
  EXPECT_EQ(x.dim(2), 4);
  EXPECT_EQ(x.dim(-1), 4);
  EXPECT_EQ(x.dim(-2), 3);
  EXPECT_EQ(x.dim(-3), 2);
  static_assert(std::is_same_v<decltype(x.shape()), const Shape<3>&>);
}

TEST(Tensor, DimOutOfRangeThrowsIndexError) {
  Tensor<float, 3> x(2, 3, 4);
  TESSERA_EXPECT_THROW_MSG(x.dim(3), tessera::IndexError, "tessera::Tensor::dim",
                           "argument 'axis' is 3", "[-3, 3)");
  TESSERA_EXPECT_THROW_MSG(x.dim(7), tessera::IndexError, "argument 'axis' is 7");
  // The message names the axis the caller passed, not the value after wrapping
  // negatives.
  TESSERA_EXPECT_THROW_MSG(x.dim(-4), tessera::IndexError, "tessera::Tensor::dim",
                           "argument 'axis' is -4", "[-3, 3)");
  TESSERA_EXPECT_THROW_MSG(x.dim(-10), tessera::IndexError, "argument 'axis' is -10");
  Tensor<double, 0> s;
  TESSERA_EXPECT_THROW_MSG(s.dim(0), tessera::IndexError, "argument 'axis' is 0");
}

TYPED_TEST(TensorTest, SizeAndEmpty) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  EXPECT_EQ(x.size(), 24);
  EXPECT_FALSE(x.empty());
  Tensor<T, 3> z(2, 0, 3);
  EXPECT_EQ(z.size(), 0);
  EXPECT_TRUE(z.empty());
  EXPECT_EQ(z.dim(2), 3);
}

// ---- element access
// --------------------------------------------------------------------------

TYPED_TEST(TensorTest, CallOperatorIsRowMajor) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j)
      for (Index k = 0; k < 4; ++k) EXPECT_EQ(x(i, j, k), T((i * 3 + j) * 4 + k));
  x(1, 0, 2) = T(-5);
  EXPECT_EQ(x.data()[14], T(-5));
  // Any integral index type.
  EXPECT_EQ(x(std::size_t{1}, short{0}, 2L), T(-5));
  static_assert(std::is_same_v<decltype(x(0, 0, 0)), T&>);
}

TYPED_TEST(TensorTest, AtReadsWritesAndChecks) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  EXPECT_EQ(x.at(1, 2, 3), T(23));
  x.at(0, 1, 0) = T(99);
  EXPECT_EQ(x(0, 1, 0), T(99));
  const Tensor<T, 3>& cx = x;
  EXPECT_EQ(cx.at(0, 1, 0), T(99));
  static_assert(std::is_same_v<decltype(cx.at(0, 0, 0)), const T&>);

  TESSERA_EXPECT_THROW_MSG(x.at(2, 0, 0), tessera::IndexError, "tessera::Tensor::at", "index 2",
                           "axis 0", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x.at(0, -1, 0), tessera::IndexError, "index -1", "axis 1", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(cx.at(1, 2, 4), tessera::IndexError, "index 4", "axis 2", "[2, 3, 4]");
  Tensor<T, 2> empty(0, 3);
  TESSERA_EXPECT_THROW_MSG(empty.at(0, 0), tessera::IndexError, "index 0", "axis 0", "[0, 3]");
}

// ---- slicing
// ---------------------------------------------------------------------------------

TYPED_TEST(TensorTest, SliceIsAViewThatWritesThrough) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  auto s = x[1];
  static_assert(std::is_same_v<decltype(s), TensorMap<T, 2>>);
  EXPECT_EQ(to_vector(s.shape()), (std::vector<Index>{3, 4}));
  EXPECT_EQ(s.data(), x.data() + 12);
  EXPECT_EQ(s(2, 3), x(1, 2, 3));
  s(0, 1) = T(-7);
  EXPECT_EQ(x(1, 0, 1), T(-7));

  auto row = x[0][2];
  static_assert(std::is_same_v<decltype(row), TensorMap<T, 1>>);
  EXPECT_EQ(row.data(), x.data() + 8);
  EXPECT_EQ(values(row), (std::vector<T>{8, 9, 10, 11}));

  // Rank 1 gives a reference to the element.
  static_assert(std::is_same_v<decltype(x[0][2][1]), T&>);
  x[1][2][3] = T(1000);
  EXPECT_EQ(x(1, 2, 3), T(1000));
  Tensor<T, 1> v{1, 2, 3};
  T& e = v[2];
  e = T(30);
  EXPECT_EQ(v(2), T(30));
  EXPECT_EQ(&v[0], v.data());
}

TYPED_TEST(TensorTest, SliceOutOfRangeThrows) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  TESSERA_EXPECT_THROW_MSG(x[2], tessera::IndexError, "tessera::Tensor::operator[]", "index 2",
                           "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x[-1], tessera::IndexError, "index -1", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x[0][3], tessera::IndexError, "index 3", "[3, 4]");
  Tensor<T, 1> v(3);
  TESSERA_EXPECT_THROW_MSG(v[3], tessera::IndexError, "index 3", "[3]");
  const Tensor<T, 1>& cv = v;
  TESSERA_EXPECT_THROW_MSG(cv[-2], tessera::IndexError, "index -2", "[3]");
}

TYPED_TEST(TensorTest, ConstTensorGivesConstViews) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  const Tensor<T, 3>& cx = x;
  static_assert(std::is_same_v<decltype(cx[0]), TensorMap<const T, 2>>);
  static_assert(std::is_same_v<decltype(cx[0][1]), TensorMap<const T, 1>>);
  static_assert(std::is_same_v<decltype(cx[0][1][2]), const T&>);
  static_assert(std::is_same_v<decltype(cx(0, 0, 0)), const T&>);
  static_assert(std::is_same_v<decltype(cx.data()), const T*>);
  static_assert(std::is_same_v<decltype(cx.view()), TensorMap<const T, 3>>);
  static_assert(std::is_same_v<decltype(cx.template reshape<2>({6, 4})), TensorMap<const T, 2>>);
  static_assert(std::is_same_v<decltype(x.view()), TensorMap<T, 3>>);
  EXPECT_EQ(cx[1][2][3], T(23));
  EXPECT_EQ(cx[1].data(), x.data() + 12);
  EXPECT_EQ(cx.view().data(), x.data());
  EXPECT_EQ(cx.view().shape(), x.shape());
}

// ---- reshape
// ---------------------------------------------------------------------------------

TYPED_TEST(TensorTest, ReshapeIsAViewThatWritesThrough) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  auto m = x.template reshape<2>({6, 4});
  static_assert(std::is_same_v<decltype(m), TensorMap<T, 2>>);
  EXPECT_EQ(to_vector(m.shape()), (std::vector<Index>{6, 4}));
  EXPECT_EQ(m.data(), x.data());
  EXPECT_EQ(m(5, 3), T(23));
  EXPECT_EQ(m(2, 1), x(0, 2, 1));
  m(4, 0) = T(-3);
  EXPECT_EQ(x(1, 1, 0), T(-3));

  auto up = x.template reshape<4>({1, 2, 3, 4});
  EXPECT_EQ(to_vector(up.shape()), (std::vector<Index>{1, 2, 3, 4}));
  EXPECT_EQ(up(0, 1, 2, 3), x(1, 2, 3));

  // A view of a view.
  auto back = m.template reshape<3>({2, 3, 4});
  EXPECT_EQ(back.data(), x.data());
  EXPECT_EQ(back.shape(), x.shape());

  // Rank 0 <-> rank 1.
  Tensor<T, 1> one{T(8)};
  auto scalar = one.template reshape<0>({});
  EXPECT_EQ(scalar.size(), 1);
  EXPECT_EQ(scalar(), T(8));
  Tensor<T, 0> s;
  EXPECT_EQ(to_vector(s.template reshape<1>({-1}).shape()), (std::vector<Index>{1}));
}

TYPED_TEST(TensorTest, ReshapeInfersMinusOne) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  EXPECT_EQ(to_vector(x.template reshape<2>({-1, 4}).shape()), (std::vector<Index>{6, 4}));
  EXPECT_EQ(to_vector(x.template reshape<1>({-1}).shape()), (std::vector<Index>{24}));
  EXPECT_EQ(to_vector(x.template reshape<3>({4, -1, 3}).shape()), (std::vector<Index>{4, 2, 3}));
  EXPECT_EQ(to_vector(x.template reshape<2>({24, -1}).shape()), (std::vector<Index>{24, 1}));
  Tensor<T, 2> empty(0, 5);
  EXPECT_EQ(to_vector(empty.template reshape<2>({-1, 5}).shape()), (std::vector<Index>{0, 5}));
}

TEST(Tensor, ReshapeErrorsNameBothShapes) {
  Tensor<float, 3> x(2, 3, 4);
  TESSERA_EXPECT_THROW_MSG(x.reshape<2>({5, 4}), tessera::ShapeError, "tessera::Tensor::reshape",
                           "[5, 4]", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x.reshape<3>({2, 3, 5}), tessera::ShapeError, "[2, 3, 5]", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x.reshape<2>({-1, 5}), tessera::ShapeError, "tessera::Tensor::reshape",
                           "[-1, 5]", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x.reshape<2>({-1, 0}), tessera::ShapeError, "[-1, 0]", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x.reshape<2>({-1, -1}), tessera::ShapeError, "tessera::Tensor::reshape",
                           "[-1, -1]", "[2, 3, 4]");
  TESSERA_EXPECT_THROW_MSG(x.reshape<2>({-2, -12}), tessera::ShapeError, "[-2, -12]");
  const Tensor<double, 2> c(2, 2);
  TESSERA_EXPECT_THROW_MSG(c.reshape<1>({5}), tessera::ShapeError, "[5]", "[2, 2]");
}

// ---- fill helpers
// ----------------------------------------------------------------------------

TYPED_TEST(TensorTest, SetZeroAndSetConstant) {
  using T = TypeParam;
  Tensor<T, 2> x(3, 4);
  EXPECT_EQ(&x.setConstant(T(2.5)), &x);
  EXPECT_EQ(values(x), std::vector<T>(12, T(2.5)));
  x.setConstant(-3);  // an int converts to the scalar
  EXPECT_EQ(values(x), std::vector<T>(12, T(-3)));
  EXPECT_EQ(&x.setZero(), &x);
  EXPECT_EQ(values(x), std::vector<T>(12, T(0)));

  // Through a view: only the viewed slice changes.
  x[1].setConstant(T(7));
  EXPECT_EQ(values(x), (std::vector<T>{0, 0, 0, 0, 7, 7, 7, 7, 0, 0, 0, 0}));
}

TYPED_TEST(TensorTest, SetRandomIsReproducible) {
  using T = TypeParam;
  Tensor<T, 2> a(50, 40), b(50, 40), c(50, 40);
  a.setRandom(123);
  b.setRandom(123);
  c.setRandom(124);
  EXPECT_EQ(values(a), values(b));
  EXPECT_NE(values(a), values(c));
  Index same = 0;
  for (Index i = 0; i < a.size(); ++i) same += a.data()[i] == c.data()[i];
  EXPECT_LT(same, 5) << "different seeds gave mostly equal values";

  // The default seed is fixed too.
  Tensor<T, 1> d(100), e(100);
  d.setRandom();
  e.setRandom();
  EXPECT_EQ(values(d), values(e));
  EXPECT_EQ(&d.setRandom(5), &d);
}

TYPED_TEST(TensorTest, SetRandomStaysInHalfOpenRange) {
  using T = TypeParam;
  struct Range {
    std::uint64_t seed;
    double lo, hi;
  };
  Tensor<T, 1> x(1'000'000);
  for (const Range& r :
       {Range{1, -1.0, 1.0}, Range{2, 0.0, 1.0}, Range{3, -3.0, 5.0}, Range{4, 10.0, 10.5}}) {
    x.setRandom(r.seed, r.lo, r.hi);
    const auto [mn, mx] = std::minmax_element(x.data(), x.data() + x.size());
    const double width = r.hi - r.lo;
    EXPECT_GE(*mn, T(r.lo)) << "seed " << r.seed;
    EXPECT_LT(*mx, T(r.hi)) << "seed " << r.seed << ", range [" << r.lo << ", " << r.hi
                            << "): setRandom returned hi at index " << (mx - x.data());
    // The samples span the range and average to its middle.
    EXPECT_LT(double(*mn), r.lo + 1e-3 * width);
    EXPECT_GT(double(*mx), r.hi - 1e-3 * width);
    double sum = 0;
    for (Index i = 0; i < x.size(); ++i) sum += double(x.data()[i]);
    // Standard error of the mean: width / sqrt(12 n) = 2.9e-4 * width; 5 of
    // them.
    EXPECT_NEAR(sum / double(x.size()), 0.5 * (r.lo + r.hi), 1.5e-3 * width);
  }
}

TEST(Tensor, SetRandomRejectsEmptyRange) {
  Tensor<float, 1> x(4);
  TESSERA_EXPECT_THROW_MSG(x.setRandom(1, 1.0, 1.0), tessera::ValueError,
                           "tessera::Tensor::setRandom", "'lo' and 'hi'", "expected lo < hi");
  TESSERA_EXPECT_THROW_MSG(x.setRandom(1, 2.0, -1.0), tessera::ValueError,
                           "tessera::Tensor::setRandom", "2 and -1");
  Tensor<double, 1> y(4);
  EXPECT_THROW(y.setRandom(1, std::nan(""), 1.0), tessera::ValueError);
}

TYPED_TEST(TensorTest, SetRandomNormalMoments) {
  using T = TypeParam;
  constexpr Index n = 100'000;
  Tensor<T, 1> x(n);
  EXPECT_EQ(&x.setRandomNormal(11, 3.0, 2.0), &x);
  double sum = 0, sq = 0;
  for (Index i = 0; i < n; ++i) sum += double(x(i));
  const double mean = sum / n;
  for (Index i = 0; i < n; ++i) sq += (double(x(i)) - mean) * (double(x(i)) - mean);
  const double sd = std::sqrt(sq / (n - 1));
  // Standard errors: 2 / sqrt(n) = 0.0063 for the mean, 2 / sqrt(2n) = 0.0045
  // for the std; 5 each.
  EXPECT_NEAR(mean, 3.0, 0.032);
  EXPECT_NEAR(sd, 2.0, 0.023);

  Tensor<T, 1> y(n);
  y.setRandomNormal(11, 3.0, 2.0);
  EXPECT_EQ(values(x), values(y));
  y.setRandomNormal(12, 3.0, 2.0);
  EXPECT_NE(values(x), values(y));

  // Defaults: standard normal.
  x.setRandomNormal(5);
  sum = 0;
  for (Index i = 0; i < n; ++i) sum += double(x(i));
  EXPECT_NEAR(sum / n, 0.0, 0.016);
}

TEST(Tensor, SetRandomNormalRejectsNegativeStddev) {
  Tensor<double, 1> x(4);
  TESSERA_EXPECT_THROW_MSG(x.setRandomNormal(1, 0.0, -1.0), tessera::ValueError,
                           "tessera::Tensor::setRandomNormal", "argument 'stddev' is -1", ">= 0");
  Tensor<float, 1> y(4);
  EXPECT_THROW(y.setRandomNormal(1, 0.0, std::nan("")), tessera::ValueError);
}

// ---- Eigen interop
// ---------------------------------------------------------------------------

TYPED_TEST(TensorTest, AsMatrixFoldsLeadingDimsWithoutCopy) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  auto m = x.as_matrix();
  static_assert(std::is_same_v<decltype(m), tessera::MatrixMap<T>>);
  static_assert(decltype(m)::IsRowMajor);
  EXPECT_EQ(x.rows(), 6);
  EXPECT_EQ(x.cols(), 4);
  EXPECT_EQ(m.rows(), 6);
  EXPECT_EQ(m.cols(), 4);
  EXPECT_EQ(m.data(), x.data());
  for (Index r = 0; r < 6; ++r)
    for (Index c = 0; c < 4; ++c) EXPECT_EQ(m(r, c), x.data()[r * 4 + c]);
  m(5, 3) = T(-1);
  EXPECT_EQ(x(1, 2, 3), T(-1));
  m.row(2).setConstant(T(9));
  EXPECT_EQ(x(0, 2, 0), T(9));
  EXPECT_EQ(x(0, 2, 3), T(9));

  // Eigen expressions read the tensor in place.
  Tensor<T, 2> a{{1, 2}, {3, 4}};
  Tensor<T, 2> b{{5, 6}, {7, 8}};
  Tensor<T, 2> c(2, 2);
  c.as_matrix() = a.as_matrix() * b.as_matrix();
  EXPECT_EQ(values(c), (std::vector<T>{19, 22, 43, 50}));

  // Rank 1 is one row.
  Tensor<T, 1> v{1, 2, 3};
  EXPECT_EQ(v.as_matrix().rows(), 1);
  EXPECT_EQ(v.as_matrix().cols(), 3);
}

TYPED_TEST(TensorTest, AsVectorAndAsArrayWithoutCopy) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  auto v = x.as_vector();
  static_assert(std::is_same_v<decltype(v), tessera::VectorMap<T>>);
  EXPECT_EQ(v.size(), 24);
  EXPECT_EQ(v.data(), x.data());
  EXPECT_EQ(v(13), T(13));
  v(13) = T(-13);
  EXPECT_EQ(x(1, 0, 1), T(-13));
  EXPECT_EQ(v.sum(), T(276 - 26));

  auto a = x.as_array();
  static_assert(std::is_same_v<decltype(a), tessera::ArrayMap<T>>);
  EXPECT_EQ(a.rows(), 6);
  EXPECT_EQ(a.cols(), 4);
  EXPECT_EQ(a.data(), x.data());
  a *= T(2);
  EXPECT_EQ(x(1, 2, 3), T(46));
  EXPECT_EQ(x(1, 0, 1), T(-26));
}

TYPED_TEST(TensorTest, EigenInteropOnConstTensorAndViews) {
  using T = TypeParam;
  Tensor<T, 3> x(2, 3, 4);
  fill_iota(x);
  const Tensor<T, 3>& cx = x;
  auto cm = cx.as_matrix();
  static_assert(std::is_same_v<decltype(cm), tessera::MatrixMap<const T>>);
  static_assert(std::is_same_v<decltype(cm.data()), const T*>);
  static_assert(std::is_same_v<decltype(cx.as_vector()), tessera::VectorMap<const T>>);
  static_assert(std::is_same_v<decltype(cx.as_array()), tessera::ArrayMap<const T>>);
  EXPECT_EQ(cm.data(), x.data());
  EXPECT_EQ(cm.rows(), 6);
  EXPECT_EQ(cm(3, 2), T(14));
  EXPECT_EQ(cx.as_vector().data(), x.data());
  EXPECT_EQ(cx.as_array().data(), x.data());

  // A slice's matrix covers only the slice.
  auto sm = x[1].as_matrix();
  EXPECT_EQ(sm.rows(), 3);
  EXPECT_EQ(sm.cols(), 4);
  EXPECT_EQ(sm.data(), x.data() + 12);
  sm(0, 0) = T(100);
  EXPECT_EQ(x(1, 0, 0), T(100));

  // A map over caller memory.
  std::vector<T> buf(12);
  TensorMap<T, 2> m(buf.data(), {3, 4});
  m.as_matrix().setConstant(T(2));
  EXPECT_EQ(buf, std::vector<T>(12, T(2)));
  m.as_vector()(5) = T(3);
  EXPECT_EQ(buf[5], T(3));
  EXPECT_EQ(m.as_array().data(), buf.data());
  TensorMap<const T, 2> cmap(buf.data(), {3, 4});
  static_assert(std::is_same_v<decltype(cmap.as_matrix()), tessera::MatrixMap<const T>>);
  EXPECT_EQ(cmap.as_matrix()(1, 1), T(3));
}

// ---- TensorMap
// -------------------------------------------------------------------------------

TYPED_TEST(TensorMapTest, ViewsCallerMemory) {
  using T = TypeParam;
  std::vector<T> buf(6);
  std::iota(buf.begin(), buf.end(), T(0));
  TensorMap<T, 2> m(buf.data(), {2, 3});
  EXPECT_EQ(m.data(), buf.data());
  EXPECT_EQ(to_vector(m.shape()), (std::vector<Index>{2, 3}));
  EXPECT_EQ(m.size(), 6);
  EXPECT_EQ(m(1, 2), T(5));
  EXPECT_EQ(m.at(1, 0), T(3));
  m(0, 1) = T(-1);
  EXPECT_EQ(buf[1], T(-1));
  m[1][0] = T(-3);
  EXPECT_EQ(buf[3], T(-3));
  static_assert(std::is_same_v<typename TensorMap<T, 2>::Scalar, T>);
  static_assert(std::is_same_v<typename TensorMap<const T, 2>::Scalar, T>);
  static_assert(std::is_same_v<typename TensorMap<const T, 2>::element_type, const T>);

  // A const TensorMap<T> still writes: constness lives in the element type.
  const TensorMap<T, 2> cm = m;
  static_assert(std::is_same_v<decltype(cm.data()), T*>);
  static_assert(std::is_same_v<decltype(cm[0]), TensorMap<T, 1>>);
  cm(1, 1) = T(44);
  EXPECT_EQ(buf[4], T(44));
}

TYPED_TEST(TensorMapTest, ConstViewOfConstMemory) {
  using T = TypeParam;
  const std::vector<T> buf{1, 2, 3, 4, 5, 6};
  TensorMap<const T, 2> m(buf.data(), {3, 2});
  static_assert(std::is_same_v<decltype(m(0, 0)), const T&>);
  static_assert(std::is_same_v<decltype(m[0]), TensorMap<const T, 1>>);
  static_assert(std::is_same_v<decltype(m.data()), const T*>);
  EXPECT_EQ(m(2, 1), T(6));
  EXPECT_EQ(m[1][0], T(3));
  EXPECT_EQ(values(m.template reshape<1>({-1})), buf);
  static_assert(!std::is_constructible_v<TensorMap<T, 2>, const T*, Shape<2>>);
}

TYPED_TEST(TensorMapTest, MutableToConstConversion) {
  using T = TypeParam;
  std::vector<T> buf{1, 2, 3, 4};
  TensorMap<T, 2> m(buf.data(), {2, 2});
  TensorMap<const T, 2> c = m;
  EXPECT_EQ(c.data(), buf.data());
  EXPECT_EQ(c.shape(), m.shape());
  static_assert(std::is_convertible_v<TensorMap<T, 2>, TensorMap<const T, 2>>);
  static_assert(!std::is_constructible_v<TensorMap<T, 2>, TensorMap<const T, 2>>);
  static_assert(!std::is_constructible_v<TensorMap<const T, 3>, TensorMap<T, 2>>);
  auto read = [](TensorMap<const T, 2> v) { return v(1, 0); };
  EXPECT_EQ(read(m), T(3));
}

TYPED_TEST(TensorMapTest, ImplicitFromTensor) {
  using T = TypeParam;
  Tensor<T, 2> x{{1, 2, 3}, {4, 5, 6}};
  const Tensor<T, 2>& cx = x;

  static_assert(std::is_convertible_v<Tensor<T, 2>&, TensorMap<const T, 2>>);
  static_assert(std::is_convertible_v<const Tensor<T, 2>&, TensorMap<const T, 2>>);
  static_assert(!std::is_constructible_v<TensorMap<T, 2>, const Tensor<T, 2>&>);
  TensorMap<const T, 2> c1 = x;
  TensorMap<const T, 2> c2 = cx;
  EXPECT_EQ(c1.data(), x.data());
  EXPECT_EQ(c2.data(), x.data());
  EXPECT_EQ(c2.shape(), x.shape());
  auto read = [](TensorMap<const T, 2> v) { return v(1, 2); };
  EXPECT_EQ(read(x), T(6));
  EXPECT_EQ(read(cx), T(6));

  // Direct initialisation of a writable view.
  TensorMap<T, 2> w(x);
  EXPECT_EQ(w.data(), x.data());
  w(0, 0) = T(10);
  EXPECT_EQ(x(0, 0), T(10));

  // A Tensor must also convert implicitly to a writable view, e.g. to pass it
  // as an argument.
  constexpr bool implicit = std::is_convertible_v<Tensor<T, 2>&, TensorMap<T, 2>>;
  EXPECT_TRUE(implicit) << "copy-initialising TensorMap<T, 2> from a Tensor<T, 2> lvalue does "
                           "not "
                           "compile (ambiguous: TensorMap(Tensor&) vs Tensor::operator "
                           "TensorMap<T, Rank>())";
  if constexpr (std::is_convertible_v<Tensor<T, 2>&, TensorMap<T, 2>>) {
    TensorMap<T, 2> w2 = x;
    EXPECT_EQ(w2.data(), x.data());
    auto fill = [](TensorMap<T, 2> v) { v.setConstant(T(4)); };
    fill(x);
    EXPECT_EQ(values(x), std::vector<T>(6, T(4)));
  }
}

TYPED_TEST(TensorMapTest, NullDataAndBadShapes) {
  using T = TypeParam;
  TESSERA_EXPECT_THROW_MSG((TensorMap<T, 2>(nullptr, {2, 3})), tessera::ValueError,
                           "tessera::TensorMap", "argument 'data' is null", "[2, 3]", "6 elements");
  TESSERA_EXPECT_THROW_MSG((TensorMap<const T, 0>(nullptr, {})), tessera::ValueError,
                           "argument 'data' is null");
  TensorMap<T, 2> empty(nullptr, {0, 3});
  EXPECT_EQ(empty.size(), 0);
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.dim(1), 3);
  TensorMap<const T, 1> empty1(nullptr, {0});
  EXPECT_TRUE(empty1.empty());
  TensorMap<T, 3> def;
  EXPECT_EQ(def.size(), 0);
  EXPECT_EQ(def.data(), nullptr);

  std::vector<T> buf(6);
  TESSERA_EXPECT_THROW_MSG((TensorMap<T, 2>(buf.data(), {-2, -3})), tessera::ShapeError,
                           "tessera::TensorMap", "[-2, -3]", "negative");
}

TYPED_TEST(TensorMapTest, AssignCopiesAndChecksShape) {
  using T = TypeParam;
  std::vector<T> buf(6, T(0));
  const TensorMap<T, 2> m(buf.data(), {2, 3});
  Tensor<T, 2> src{{1, 2, 3}, {4, 5, 6}};
  m.assign(src);  // assign is const: it writes the viewed elements
  EXPECT_EQ(buf, (std::vector<T>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(m.data(), buf.data());
  EXPECT_EQ(values(src), (std::vector<T>{1, 2, 3, 4, 5, 6}));
  EXPECT_NE(src.data(), buf.data());

  std::vector<T> other{6, 5, 4, 3, 2, 1};
  m.assign(TensorMap<const T, 2>(other.data(), {2, 3}));
  EXPECT_EQ(buf, other);

  // Into a slice of a tensor.
  Tensor<T, 2> big(3, 3);
  big[1].assign(Tensor<T, 1>{7, 8, 9});
  EXPECT_EQ(values(big), (std::vector<T>{0, 0, 0, 7, 8, 9, 0, 0, 0}));

  // Assigning a view to itself is harmless.
  m.assign(m);
  EXPECT_EQ(buf, other);

  Tensor<T, 2> wrong(3, 2);
  TESSERA_EXPECT_THROW_MSG(m.assign(wrong), tessera::ShapeError, "tessera::TensorMap::assign",
                           "argument 'src' has shape [3, 2]", "expected [2, 3]");
  EXPECT_EQ(buf, other);  // unchanged after the failed assign
}

TYPED_TEST(TensorMapTest, CviewAndMview) {
  using T = TypeParam;
  Tensor<T, 2> x{{1, 2}, {3, 4}};
  auto c = tessera::cview(x);
  static_assert(std::is_same_v<decltype(c), TensorMap<const T, 2>>);
  EXPECT_EQ(c.data(), x.data());
  EXPECT_EQ(c.shape(), x.shape());

  TensorMap<T, 2> m(x);
  static_assert(std::is_same_v<decltype(tessera::cview(m)), TensorMap<const T, 2>>);
  const Tensor<T, 2>& cx = x;
  static_assert(std::is_same_v<decltype(tessera::cview(cx)), TensorMap<const T, 2>>);
  EXPECT_EQ(tessera::cview(cx).data(), x.data());

  auto w = tessera::mview(x);
  static_assert(std::is_same_v<decltype(w), TensorMap<T, 2>>);
  EXPECT_EQ(w.data(), x.data());
  w(1, 1) = T(40);
  EXPECT_EQ(x(1, 1), T(40));

  // From a writable view, lvalue or temporary, even a const one.
  auto w2 = tessera::mview(m);
  static_assert(std::is_same_v<decltype(w2), TensorMap<T, 2>>);
  EXPECT_EQ(w2.data(), x.data());
  tessera::mview(x[0])(1) = T(20);
  EXPECT_EQ(x(0, 1), T(20));
  const TensorMap<T, 2> cm = m;
  static_assert(std::is_same_v<decltype(tessera::mview(cm)), TensorMap<T, 2>>);
}

TEST(TensorLike, SatisfiedByTensorsAndViews) {
  static_assert(tessera::TensorLike<Tensor<float, 2>>);
  static_assert(tessera::TensorLike<Tensor<double, 0>>);
  static_assert(tessera::TensorLike<Tensor<bool, 3>>);
  static_assert(tessera::TensorLike<TensorMap<float, 1>>);
  static_assert(tessera::TensorLike<TensorMap<const double, 4>>);
  static_assert(!tessera::TensorLike<int>);
  static_assert(!tessera::TensorLike<float*>);
  static_assert(!tessera::TensorLike<std::vector<float>>);
  static_assert(!tessera::TensorLike<Eigen::MatrixXf>);
  static_assert(std::is_same_v<tessera::scalar_t<const Tensor<float, 2>&>, float>);
  static_assert(std::is_same_v<tessera::scalar_t<TensorMap<const double, 1>>, double>);
  static_assert(tessera::rank_v<Tensor<float, 3>&> == 3);
  static_assert(tessera::rank_v<TensorMap<const float, 0>> == 0);
  SUCCEED();
}

// Tensors of non-floating scalars (as masks use) work the same way.
TEST(Tensor, BoolAndIntegerScalars) {
  Tensor<bool, 2> b{{true, false}, {false, true}};
  EXPECT_EQ(to_vector(b.shape()), (std::vector<Index>{2, 2}));
  EXPECT_TRUE(b(0, 0));
  EXPECT_FALSE(b(0, 1));
  b.setZero();
  EXPECT_FALSE(b(1, 1));
  b.setConstant(true);
  EXPECT_TRUE(b(1, 0));

  Tensor<int, 1> i{3, 1, 2};
  EXPECT_EQ(values(i), (std::vector<int>{3, 1, 2}));
  Tensor<std::int64_t, 2> z(2, 2);
  EXPECT_EQ(values(z), std::vector<std::int64_t>(4, 0));
}

}  // namespace tensor_test
