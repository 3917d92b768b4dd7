// Tests for tessera/core/mask.hpp: the Mask factories (kind, rank, shape,
// dtype, data), with_shape, and detail::MaskRows, which broadcasts a mask
// against a target shape [rows..., n] and applies it row by row: row offsets
// for every broadcast pattern, allowed/blocked/additive results checked against
// a NumPy-style broadcasting reference, column ranges, and the messages of
// shape errors.
#include "tessera/core/mask.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace mask_test {

using tessera::Index;
using tessera::Mask;
using tessera::MaskKind;
using tessera::Shape;
using tessera::Tensor;
using tessera::TensorMap;
using tessera::detail::MaskRows;

template <class T>
class MaskRowsTest : public ::testing::Test {};
TYPED_TEST_SUITE(MaskRowsTest, tessera::test::Scalars);

std::vector<Index> to_vector(std::span<const Index> s) { return {s.begin(), s.end()}; }

// The mask element NumPy broadcasting pairs with target element `flat`
// (row-major in `target`).
Index broadcast_index(std::span<const Index> mask, std::span<const Index> target, Index flat) {
  std::vector<Index> idx(target.size());
  for (std::size_t a = target.size(); a-- > 0;) {
    idx[a] = flat % target[a];
    flat /= target[a];
  }
  const std::size_t skip = target.size() - mask.size();
  Index off = 0;
  for (std::size_t a = 0; a < mask.size(); ++a)
    off = off * mask[a] + (mask[a] == 1 ? 0 : idx[a + skip]);
  return off;
}

Index product(std::span<const Index> s) {
  Index n = 1;
  for (Index d : s) n *= d;
  return n;
}

// Applies `rows` to every row of x (shape `target`) and checks each element
// against the reference: the mask element paired with it by broadcasting, read
// from `mask_data`.
template <class T, class M>
void expect_rows_match_reference(const MaskRows& rows, MaskKind kind, const M* mask_data,
                                 std::span<const Index> mask_shape, std::span<const Index> target) {
  const Index n = target.back();
  const Index total = product(target);
  const Index nrows = n == 0 ? 0 : total / n;
  std::vector<T> x(static_cast<std::size_t>(total)), out(x.size());
  for (Index i = 0; i < total; ++i) x[static_cast<std::size_t>(i)] = T(0.25) * T(i) - T(3);
  for (Index r = 0; r < nrows; ++r) rows.apply(r, x.data() + r * n, out.data() + r * n, n);
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  for (Index i = 0; i < total; ++i) {
    const M m = mask_data[broadcast_index(mask_shape, target, i)];
    T want;
    if constexpr (std::is_same_v<M, bool>) {
      const bool keep = kind == MaskKind::allowed ? m : !m;
      want = keep ? x[static_cast<std::size_t>(i)] : ninf;
    } else {
      want = x[static_cast<std::size_t>(i)] + static_cast<T>(m);
    }
    ASSERT_EQ(out[static_cast<std::size_t>(i)], want)
        << "element " << i << " of target " << tessera::detail::shape_string(target) << ", mask "
        << tessera::detail::shape_string(mask_shape);
  }
}

// ---- factories
// -------------------------------------------------------------------------------

TEST(Mask, AllowedAndBlockedRecordKindShapeAndData) {
  Tensor<bool, 2> b{{true, false, true}, {false, true, true}};
  const Mask a = Mask::allowed(b);
  EXPECT_EQ(a.kind(), MaskKind::allowed);
  EXPECT_EQ(a.rank(), 2);
  EXPECT_EQ(to_vector(a.shape()), (std::vector<Index>{2, 3}));
  EXPECT_EQ(a.dtype(), Mask::DType::boolean);
  EXPECT_TRUE(a.is_boolean());
  EXPECT_EQ(a.data(), static_cast<const void*>(b.data()));

  const Mask k = Mask::blocked(b);
  EXPECT_EQ(k.kind(), MaskKind::blocked);
  EXPECT_EQ(k.rank(), 2);
  EXPECT_EQ(to_vector(k.shape()), (std::vector<Index>{2, 3}));
  EXPECT_EQ(k.dtype(), Mask::DType::boolean);
  EXPECT_TRUE(k.is_boolean());
  EXPECT_EQ(k.data(), static_cast<const void*>(b.data()));

  // From views and const tensors, of any rank up to 8.
  bool raw[4] = {true, true, false, true};
  const Mask v = Mask::blocked(TensorMap<const bool, 3>(raw, {1, 2, 2}));
  EXPECT_EQ(v.rank(), 3);
  EXPECT_EQ(to_vector(v.shape()), (std::vector<Index>{1, 2, 2}));
  EXPECT_EQ(v.data(), static_cast<const void*>(raw));
  const Tensor<bool, 1> cb{true};
  EXPECT_EQ(Mask::allowed(cb).rank(), 1);
  Tensor<bool, 8> r8(Shape<8>{1, 1, 1, 1, 1, 1, 2, 3});
  EXPECT_EQ(Mask::allowed(r8).rank(), 8);
  EXPECT_EQ(Mask::allowed(r8).shape()[7], 3);
  Tensor<bool, 0> r0;
  EXPECT_EQ(Mask::allowed(r0).rank(), 0);
  EXPECT_TRUE(Mask::allowed(r0).shape().empty());
}

TEST(Mask, AdditiveRecordsFloatOrDouble) {
  Tensor<float, 3> f(2, 1, 4);
  const Mask mf = Mask::additive(f);
  EXPECT_EQ(mf.kind(), MaskKind::additive);
  EXPECT_EQ(mf.rank(), 3);
  EXPECT_EQ(to_vector(mf.shape()), (std::vector<Index>{2, 1, 4}));
  EXPECT_EQ(mf.dtype(), Mask::DType::f32);
  EXPECT_FALSE(mf.is_boolean());
  EXPECT_EQ(mf.data(), static_cast<const void*>(f.data()));

  const Tensor<double, 1> d{0.0, -1.0};
  const Mask md = Mask::additive(d);
  EXPECT_EQ(md.kind(), MaskKind::additive);
  EXPECT_EQ(md.rank(), 1);
  EXPECT_EQ(to_vector(md.shape()), (std::vector<Index>{2}));
  EXPECT_EQ(md.dtype(), Mask::DType::f64);
  EXPECT_FALSE(md.is_boolean());
  EXPECT_EQ(md.data(), static_cast<const void*>(d.data()));
}

TEST(Mask, IsAViewOfItsTensor) {
  Tensor<bool, 1> b{false, false};
  const Mask m = Mask::allowed(b);
  const Index target[] = {1, 2};
  const MaskRows rows(m, target, "fn", "mask");
  const double x[2] = {1, 2};
  double y[2];
  rows.apply(0, x, y, 2);
  EXPECT_TRUE(std::isinf(y[0]) && y[0] < 0);
  b(1) = true;  // seen through the mask
  rows.apply(0, x, y, 2);
  EXPECT_TRUE(std::isinf(y[0]) && y[0] < 0);
  EXPECT_EQ(y[1], 2.0);
}

TEST(Mask, WithShapeViewsTheSameData) {
  Tensor<float, 1> f(24);
  const Mask m = Mask::additive(f);
  const Mask r = m.with_shape({2, 3, 4});
  EXPECT_EQ(r.rank(), 3);
  EXPECT_EQ(to_vector(r.shape()), (std::vector<Index>{2, 3, 4}));
  EXPECT_EQ(r.kind(), MaskKind::additive);
  EXPECT_EQ(r.dtype(), Mask::DType::f32);
  EXPECT_EQ(r.data(), m.data());
  EXPECT_EQ(m.rank(), 1);  // the original is unchanged

  const std::vector<Index> four{1, 2, 3, 4};
  EXPECT_EQ(to_vector(r.with_shape(four).shape()), four);

  TESSERA_EXPECT_THROW_MSG(m.with_shape({5, 5}), tessera::ShapeError, "tessera::Mask::with_shape",
                           "[24]", "[5, 5]");
  TESSERA_EXPECT_THROW_MSG(r.with_shape({4, 3}, "tessera::scaled_dot_product_attention"),
                           tessera::ShapeError, "tessera::scaled_dot_product_attention",
                           "[2, 3, 4]", "[4, 3]");
  TESSERA_EXPECT_THROW_MSG(r.with_shape({1, 1, 1, 1, 1, 1, 1, 2, 3, 4}), tessera::ShapeError,
                           "[2, 3, 4]", "[1, 1, 1, 1, 1, 1, 1, 2, 3, 4]");
}

// ---- MaskRows: row offsets
// -------------------------------------------------------------------

TEST(MaskRows, RowOffsetsForEachBroadcastPattern) {
  const Index t2[] = {3, 4};     // [rows, n]
  const Index t3[] = {2, 3, 4};  // [batch, rows, n]

  Tensor<bool, 1> cols(4);  // [n]: every row reads the same entries
  const MaskRows a(Mask::allowed(cols), t2, "fn", "mask");
  for (Index r = 0; r < 3; ++r) EXPECT_EQ(a.row_offset(r), 0) << "r=" << r;

  Tensor<bool, 2> row1(1, 4);  // [1, n]
  const MaskRows b(Mask::allowed(row1), t2, "fn", "mask");
  for (Index r = 0; r < 3; ++r) EXPECT_EQ(b.row_offset(r), 0) << "r=" << r;

  Tensor<bool, 2> col1(3, 1);  // [rows, 1]: one entry per row
  const MaskRows c(Mask::allowed(col1), t2, "fn", "mask");
  for (Index r = 0; r < 3; ++r) EXPECT_EQ(c.row_offset(r), r) << "r=" << r;

  Tensor<bool, 2> full(3, 4);  // [rows, n]
  const MaskRows d(Mask::blocked(full), t2, "fn", "mask");
  for (Index r = 0; r < 3; ++r) EXPECT_EQ(d.row_offset(r), 4 * r) << "r=" << r;
  EXPECT_EQ(d.kind(), MaskKind::blocked);

  Tensor<float, 2> inner(3, 4);  // rank-2 mask [rows, n] against a rank-3 target
  const MaskRows e(Mask::additive(inner), t3, "fn", "mask");
  for (Index r = 0; r < 6; ++r) EXPECT_EQ(e.row_offset(r), 4 * (r % 3)) << "r=" << r;
  EXPECT_EQ(e.kind(), MaskKind::additive);

  Tensor<double, 3> per_batch(2, 1, 4);  // [batch, 1, n]
  const MaskRows f(Mask::additive(per_batch), t3, "fn", "mask");
  for (Index r = 0; r < 6; ++r) EXPECT_EQ(f.row_offset(r), 4 * (r / 3)) << "r=" << r;

  Tensor<bool, 3> per_row(2, 3, 1);  // [batch, rows, 1]
  const MaskRows g(Mask::allowed(per_row), t3, "fn", "mask");
  for (Index r = 0; r < 6; ++r) EXPECT_EQ(g.row_offset(r), r) << "r=" << r;

  Tensor<bool, 3> full3(2, 3, 4);
  const MaskRows h(Mask::allowed(full3), t3, "fn", "mask");
  for (Index r = 0; r < 6; ++r) EXPECT_EQ(h.row_offset(r), 4 * r) << "r=" << r;

  Tensor<bool, 0> scalar;
  const MaskRows s(Mask::allowed(scalar), t3, "fn", "mask");
  for (Index r = 0; r < 6; ++r) EXPECT_EQ(s.row_offset(r), 0) << "r=" << r;
}

// ---- MaskRows: apply
// -------------------------------------------------------------------------

TYPED_TEST(MaskRowsTest, AllowedKeepsTrueAndBlockedMasksTrue) {
  using T = TypeParam;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  Tensor<bool, 2> m{{true, false, true, false}, {false, false, true, true}};
  const Index target[] = {2, 4};
  const T x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  T y[8];

  const MaskRows allowed(Mask::allowed(m), target, "fn", "mask");
  for (Index r = 0; r < 2; ++r) allowed.apply(r, x + 4 * r, y + 4 * r, 4);
  const T want_allowed[8] = {1, ninf, 3, ninf, ninf, ninf, 7, 8};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(y[i], want_allowed[i]) << "i=" << i;

  const MaskRows blocked(Mask::blocked(m), target, "fn", "mask");
  for (Index r = 0; r < 2; ++r) blocked.apply(r, x + 4 * r, y + 4 * r, 4);
  const T want_blocked[8] = {ninf, 2, ninf, 4, 5, 6, ninf, ninf};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(y[i], want_blocked[i]) << "i=" << i;
}

TYPED_TEST(MaskRowsTest, AdditiveAddsFloatOrDoubleMasks) {
  using T = TypeParam;
  constexpr T inf = std::numeric_limits<T>::infinity();
  const Index target[] = {2, 3};
  const T x[6] = {1, 2, 3, 4, 5, 6};
  T y[6];

  // A float mask, applied to rows of either type.
  Tensor<float, 2> f{{0.5f, -std::numeric_limits<float>::infinity(), 0.0f}, {-1.0f, 2.0f, 0.25f}};
  const MaskRows af(Mask::additive(f), target, "fn", "mask");
  for (Index r = 0; r < 2; ++r) af.apply(r, x + 3 * r, y + 3 * r, 3);
  const T want_f[6] = {T(1.5), -inf, T(3), T(3), T(7), T(6.25)};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(y[i], want_f[i]) << "i=" << i;

  // A double mask; 0.1 is converted to the row type before it is added.
  Tensor<double, 1> d{0.1, -2.0, 1e-3};
  const MaskRows ad(Mask::additive(d), target, "fn", "mask");
  for (Index r = 0; r < 2; ++r) ad.apply(r, x + 3 * r, y + 3 * r, 3);
  const T want_d[6] = {T(1) + T(0.1), T(0), T(3) + T(1e-3), T(4) + T(0.1), T(3), T(6) + T(1e-3)};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(y[i], want_d[i]) << "i=" << i;
}

TYPED_TEST(MaskRowsTest, ApplyInPlace) {
  using T = TypeParam;
  Tensor<bool, 1> m{true, false, true};
  const Index target[] = {1, 3};
  T x[3] = {1, 2, 3};
  const MaskRows rows(Mask::blocked(m), target, "fn", "mask");
  rows.apply(0, x, x, 3);
  EXPECT_TRUE(std::isinf(x[0]) && x[0] < 0);
  EXPECT_EQ(x[1], T(2));
  EXPECT_TRUE(std::isinf(x[2]) && x[2] < 0);
}

TYPED_TEST(MaskRowsTest, ApplyRangeReadsTheRightColumns) {
  using T = TypeParam;
  const Index target[] = {2, 3, 5};
  const T x[5] = {10, 20, 30, 40, 50};
  T y[3];

  // Full mask: row 4 = (batch 1, row 1), columns [2, 5).
  Tensor<double, 3> full(2, 3, 5);
  for (Index i = 0; i < full.size(); ++i) full.data()[i] = double(i);
  const MaskRows a(Mask::additive(full), target, "fn", "mask");
  a.apply_range(4, 2, x + 2, y, 3);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(y[j], x[2 + j] + T((1 * 3 + 1) * 5 + 2 + j)) << j;

  // A column-broadcast mask [rows, 1]: the column offset must not move along
  // the mask.
  Tensor<float, 2> per_row{{1}, {2}, {3}};
  const MaskRows b(Mask::additive(per_row), target, "fn", "mask");
  b.apply_range(5, 3, x + 3, y, 2);  // row 5 = (batch 1, row 2)
  EXPECT_EQ(y[0], T(43));
  EXPECT_EQ(y[1], T(53));

  // A boolean mask [n] over a column range.
  Tensor<bool, 1> cols{true, true, false, true, false};
  const MaskRows c(Mask::allowed(cols), target, "fn", "mask");
  c.apply_range(0, 1, x + 1, y, 3);
  EXPECT_EQ(y[0], T(20));
  EXPECT_TRUE(std::isinf(y[1]) && y[1] < 0);
  EXPECT_EQ(y[2], T(40));
}

// Every broadcast pattern of a rank-1..3 mask against targets of rank 1..4,
// checked element by element against NumPy's broadcasting rule, for each kind
// and dtype.
TYPED_TEST(MaskRowsTest, MatchesBroadcastingReference) {
  using T = TypeParam;
  struct Case {
    std::vector<Index> target, mask;
  };
  const std::vector<Case> cases = {
      {{7}, {7}},
      {{7}, {1}},
      {{7}, {}},
      {{3, 5}, {5}},
      {{3, 5}, {1, 5}},
      {{3, 5}, {3, 1}},
      {{3, 5}, {3, 5}},
      {{3, 5}, {1, 1}},
      {{2, 3, 4}, {3, 4}},
      {{2, 3, 4}, {2, 1, 4}},
      {{2, 3, 4}, {2, 3, 1}},
      {{2, 3, 4}, {1, 3, 1}},
      {{2, 3, 4}, {2, 1, 1}},
      {{2, 3, 4}, {4}},
      {{2, 3, 4}, {2, 3, 4}},
      {{2, 2, 3, 4}, {2, 1, 3, 4}},
      {{2, 2, 3, 4}, {2, 1, 1, 4}},
      {{2, 2, 3, 4}, {3, 1}},
      {{2, 3, 0}, {3, 1}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("target " + tessera::detail::shape_string(c.target) + ", mask " +
                 tessera::detail::shape_string(c.mask));
    const Index mn = product(c.mask);
    Tensor<bool, 1> b(mn);
    Tensor<float, 1> f(mn);
    Tensor<double, 1> d(mn);
    for (Index i = 0; i < mn; ++i) {
      b(i) = (i * 7 + 3) % 3 == 0;
      f(i) = 0.5f * float(i) - 1.0f;
      d(i) = 0.25 * double(i) + 2.0;
    }
    for (MaskKind kind : {MaskKind::allowed, MaskKind::blocked}) {
      const Mask m =
          (kind == MaskKind::allowed ? Mask::allowed(b) : Mask::blocked(b)).with_shape(c.mask);
      const MaskRows rows(m, c.target, "fn", "mask");
      expect_rows_match_reference<T>(rows, kind, b.data(), c.mask, c.target);
    }
    const MaskRows rf(Mask::additive(f).with_shape(c.mask), c.target, "fn", "mask");
    expect_rows_match_reference<T>(rf, MaskKind::additive, f.data(), c.mask, c.target);
    const MaskRows rd(Mask::additive(d).with_shape(c.mask), c.target, "fn", "mask");
    expect_rows_match_reference<T>(rd, MaskKind::additive, d.data(), c.mask, c.target);
  }
}

// ---- MaskRows: errors
// ------------------------------------------------------------------------

TEST(MaskRows, NonBroadcastableMaskNamesFunctionArgumentAndShapes) {
  const Index target[] = {2, 4};
  Tensor<bool, 2> wide(2, 5);
  TESSERA_EXPECT_THROW_MSG(MaskRows(Mask::allowed(wide), target, "tessera::softmax", "mask"),
                           tessera::ShapeError, "tessera::softmax: ", "argument 'mask'", "[2, 5]",
                           "broadcastable to [2, 4]");
  Tensor<float, 2> tall(3, 4);
  TESSERA_EXPECT_THROW_MSG(
      MaskRows(Mask::additive(tall), target, "tessera::nn::MultiheadAttention", "attn_mask"),
      tessera::ShapeError, "tessera::nn::MultiheadAttention", "argument 'attn_mask'", "[3, 4]",
      "[2, 4]");
  // A trailing 1 in the target does not stretch to a wider mask.
  const Index narrow[] = {4, 1};
  Tensor<bool, 1> cols(4);
  TESSERA_EXPECT_THROW_MSG(MaskRows(Mask::blocked(cols), narrow, "my::fn", "key_padding_mask"),
                           tessera::ShapeError, "my::fn", "'key_padding_mask'", "[4]", "[4, 1]");
  Tensor<bool, 2> swapped(4, 2);
  TESSERA_EXPECT_THROW_MSG(MaskRows(Mask::allowed(swapped), target, "f", "m"), tessera::ShapeError,
                           "[4, 2]", "[2, 4]");
}

TEST(MaskRows, MaskOfHigherRankThanTargetThrows) {
  const Index target[] = {3, 4};
  Tensor<bool, 3> m(1, 3, 4);  // broadcastable sizes, but one axis too many
  TESSERA_EXPECT_THROW_MSG(MaskRows(Mask::allowed(m), target, "tessera::log_softmax", "mask"),
                           tessera::ShapeError, "tessera::log_softmax", "argument 'mask'",
                           "[1, 3, 4]", "[3, 4]");
  Tensor<double, 2> d(1, 4);
  const Index vec[] = {4};
  TESSERA_EXPECT_THROW_MSG(MaskRows(Mask::additive(d), vec, "g", "bias"), tessera::ShapeError, "g",
                           "'bias'", "[1, 4]", "[4]");
  // A target of rank 0 has no rows to mask.
  Tensor<bool, 0> s;
  TESSERA_EXPECT_THROW_MSG(MaskRows(Mask::allowed(s), std::span<const Index>(), "h", "mask"),
                           tessera::ShapeError, "h", "'mask'", "[]");
}

}  // namespace mask_test
