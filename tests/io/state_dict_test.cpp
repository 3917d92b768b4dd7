#include "tessera/io/state_dict.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace state_dict_test {

using tessera::Index;
using tessera::Tensor;
using tessera::io::DType;
using tessera::io::StateDict;
using tessera::io::StoredTensor;

// A StoredTensor of dtype `d` from unsigned bit patterns of the dtype's width, little-endian.
template <class U>
StoredTensor stored(DType d, std::vector<Index> shape, std::initializer_list<U> bits) {
  StoredTensor t;
  t.dtype = d;
  t.shape = std::move(shape);
  for (U b : bits)
    for (std::size_t i = 0; i < sizeof(U); ++i)
      t.bytes.push_back(static_cast<std::byte>((static_cast<std::uint64_t>(b) >> (8 * i)) & 0xff));
  return t;
}

std::uint32_t float_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

TEST(DType, NamesSizesAndParsing) {
  const std::pair<DType, std::size_t> expected[] = {
      {DType::BOOL, 1}, {DType::U8, 1},  {DType::I8, 1},   {DType::I16, 2}, {DType::I32, 4},
      {DType::I64, 8},  {DType::F16, 2}, {DType::BF16, 2}, {DType::F32, 4}, {DType::F64, 8}};
  ASSERT_EQ(std::size(expected), tessera::io::kAllDTypes.size());
  for (const auto& [d, size] : expected) {
    EXPECT_EQ(tessera::io::dtype_size(d), size);
    EXPECT_EQ(tessera::io::parse_dtype(tessera::io::dtype_name(d)), d);
  }
  EXPECT_EQ(tessera::io::dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(tessera::io::dtype_name(DType::F32), "F32");
  TESSERA_EXPECT_THROW_MSG(tessera::io::parse_dtype("F8_E4M3"), tessera::IoError,
                           "tessera::io::parse_dtype", "unknown dtype 'F8_E4M3'", "BF16");
  TESSERA_EXPECT_THROW_MSG(tessera::io::parse_dtype("f32"), tessera::IoError, "'f32'");
  TESSERA_EXPECT_THROW_MSG(tessera::io::dtype_name(static_cast<DType>(42)), tessera::ValueError,
                           "tessera::io::dtype_name", "42");
}

TEST(HalfConversion, KnownF16Patterns) {
  using tessera::io::f16_to_float;
  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0xc100), -2.5f);
  EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);                  // largest finite
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(f16_to_float(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_float(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(f16_to_float(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_float(0xfc01)));
  // NaN payloads and signs survive: the 10 fraction bits land in the top of float's 23.
  EXPECT_EQ(float_bits(f16_to_float(0x7e00)), 0x7fc00000u);
  EXPECT_EQ(float_bits(f16_to_float(0x7c01)), 0x7f802000u);
  EXPECT_EQ(float_bits(f16_to_float(0x0000)), 0x00000000u);
  EXPECT_EQ(float_bits(f16_to_float(0x8000)), 0x80000000u);  // -0
}

TEST(HalfConversion, EveryF16PatternMatchesTheDefinition) {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const int sign = (h >> 15) ? -1 : 1;
    const int exp = static_cast<int>((h >> 10) & 0x1f);
    const int mant = static_cast<int>(h & 0x3ff);
    const float got = tessera::io::f16_to_float(static_cast<std::uint16_t>(h));
    if (exp == 31) {
      if (mant == 0)
        EXPECT_EQ(got, sign * std::numeric_limits<float>::infinity()) << h;
      else
        EXPECT_TRUE(std::isnan(got)) << h;
      continue;
    }
    const double want = exp == 0 ? sign * std::ldexp(double(mant), -24)
                                 : sign * std::ldexp(double(1024 + mant), exp - 25);
    ASSERT_EQ(static_cast<double>(got), want) << "pattern 0x" << std::hex << h;
    EXPECT_EQ(std::signbit(got), sign < 0) << h;
  }
}

TEST(HalfConversion, KnownBF16Patterns) {
  using tessera::io::bf16_to_float;
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xc020), -2.5f);
  EXPECT_EQ(bf16_to_float(0x477f), 65280.0f);  // 65504 is not a bfloat16; this is the nearest
  EXPECT_EQ(bf16_to_float(0x7f7f), 0x1.fep127f);
  EXPECT_EQ(bf16_to_float(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(bf16_to_float(0x007f), std::ldexp(127.0f, -133));
  EXPECT_EQ(bf16_to_float(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_to_float(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_float(0x7fc0)));
  EXPECT_EQ(float_bits(bf16_to_float(0xffc1)), 0xffc10000u);
  EXPECT_EQ(float_bits(bf16_to_float(0x8000)), 0x80000000u);
}

TEST(HalfConversion, EveryBF16PatternMatchesTheDefinition) {
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const int sign = (b >> 15) ? -1 : 1;
    const int exp = static_cast<int>((b >> 7) & 0xff);
    const int mant = static_cast<int>(b & 0x7f);
    const float got = tessera::io::bf16_to_float(static_cast<std::uint16_t>(b));
    if (exp == 255) {
      EXPECT_TRUE(mant ? std::isnan(got) : std::isinf(got)) << b;
      continue;
    }
    const double want = exp == 0 ? sign * std::ldexp(double(mant), -133)
                                 : sign * std::ldexp(double(128 + mant), exp - 134);
    ASSERT_EQ(static_cast<double>(got), want) << "pattern 0x" << std::hex << b;
  }
}

TEST(StoredTensor, HalfTensorsConvertToFloatAndDouble) {
  const auto f16 =
      stored<std::uint16_t>(DType::F16, {2, 3}, {0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00, 0x7e00});
  const auto f = f16.values<float>();
  ASSERT_EQ(f.size(), 6u);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], -2.5f);
  EXPECT_EQ(f[2], 65504.0f);
  EXPECT_EQ(f[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f[4]));
  EXPECT_TRUE(std::isnan(f[5]));
  const auto d = f16.values<double>();
  EXPECT_EQ(d[3], std::ldexp(1.0, -24));
  const auto bf16 = stored<std::uint16_t>(DType::BF16, {3}, {0x3f80, 0xc020, 0x0001});
  const auto g = bf16.values<double>();
  EXPECT_EQ(g[0], 1.0);
  EXPECT_EQ(g[1], -2.5);
  EXPECT_EQ(g[2], std::ldexp(1.0, -133));
}

TEST(StoredTensor, IntegersAndBoolConvertByValue) {
  const auto i8 = stored<std::uint8_t>(DType::I8, {3}, {0xff, 0x80, 0x7f});
  EXPECT_EQ(i8.values<float>(), (std::vector<float>{-1, -128, 127}));
  EXPECT_EQ(i8.values<std::int64_t>(), (std::vector<std::int64_t>{-1, -128, 127}));
  const auto u8 = stored<std::uint8_t>(DType::U8, {2}, {0xff, 0});
  EXPECT_EQ(u8.values<double>(), (std::vector<double>{255, 0}));
  EXPECT_EQ(u8.values<bool>(), (std::vector<bool>{true, false}));
  const auto i16 = stored<std::uint16_t>(DType::I16, {2}, {0x8000, 0x1234});
  EXPECT_EQ(i16.values<double>(), (std::vector<double>{-32768, 0x1234}));
  const auto i32 = stored<std::uint32_t>(DType::I32, {2}, {0xfffffffe, 0x7fffffff});
  EXPECT_EQ(i32.values<double>(), (std::vector<double>{-2, 2147483647.0}));
  const auto i64 = stored<std::uint64_t>(DType::I64, {3}, {0x8000000000000000ull, 5, 0});
  EXPECT_EQ(i64.values<std::int64_t>(),
            (std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), 5, 0}));
  EXPECT_EQ(i64.values<double>()[0], -0x1p63);
  EXPECT_EQ(i64.values<bool>(), (std::vector<bool>{true, true, false}));
  // Any non-zero byte is true, as numpy and torch read it.
  const auto b = stored<std::uint8_t>(DType::BOOL, {4}, {0, 1, 2, 255});
  EXPECT_EQ(b.values<bool>(), (std::vector<bool>{false, true, true, true}));
  EXPECT_EQ(b.values<float>(), (std::vector<float>{0, 1, 1, 1}));
  EXPECT_EQ(b.values<std::int64_t>(), (std::vector<std::int64_t>{0, 1, 1, 1}));
}

TEST(StoredTensor, FloatToIntegerTruncatesAndRejectsUnrepresentable) {
  const auto f = stored<std::uint32_t>(
      DType::F32, {4}, {float_bits(2.7f), float_bits(-2.7f), float_bits(-0.0f), float_bits(1e9f)});
  EXPECT_EQ(f.values<std::int64_t>(), (std::vector<std::int64_t>{2, -2, 0, 1000000000}));
  EXPECT_EQ(f.values<bool>(), (std::vector<bool>{true, true, false, true}));
  const auto nan = stored<std::uint32_t>(DType::F32, {2}, {0, 0x7fc00000u});
  TESSERA_EXPECT_THROW_MSG(nan.values<std::int64_t>(), tessera::ValueError,
                           "tessera::io::StoredTensor::copy_to", "element 1", "F32", "nan");
  const auto big = stored<std::uint64_t>(DType::F64, {1}, {std::bit_cast<std::uint64_t>(0x1p63)});
  EXPECT_THROW(big.values<std::int64_t>(), tessera::ValueError);
  const auto edge = stored<std::uint64_t>(DType::F64, {1}, {std::bit_cast<std::uint64_t>(-0x1p63)});
  EXPECT_EQ(edge.values<std::int64_t>()[0], std::numeric_limits<std::int64_t>::min());
  const auto wide = stored<std::uint64_t>(DType::I64, {1}, {1ull << 40});
  TESSERA_EXPECT_THROW_MSG(wide.values<std::int32_t>(), tessera::ValueError, "out of range");
}

TEST(StoredTensor, FromStoresLittleEndianBytes) {
  Tensor<float, 1> f{1.0f, -2.0f};
  const auto sf = StoredTensor::from(f);
  EXPECT_EQ(sf.dtype, DType::F32);
  EXPECT_EQ(sf.shape, (std::vector<Index>{2}));
  ASSERT_EQ(sf.bytes.size(), 8u);
  const unsigned char want[8] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0};
  EXPECT_EQ(std::memcmp(sf.bytes.data(), want, 8), 0);

  Tensor<std::int64_t, 2> i(1, 2);
  i(0, 0) = -1;
  i(0, 1) = 0x0102030405060708;
  const auto si = StoredTensor::from(i);
  EXPECT_EQ(si.dtype, DType::I64);
  EXPECT_EQ(si.numel(), 2);
  EXPECT_EQ(static_cast<int>(si.bytes[8]), 0x08);
  EXPECT_EQ(static_cast<int>(si.bytes[15]), 0x01);

  Tensor<bool, 1> b(3);
  b(1) = true;
  const auto sb = StoredTensor::from(b);
  EXPECT_EQ(sb.dtype, DType::BOOL);
  EXPECT_EQ(sb.bytes, (std::vector<std::byte>{std::byte{0}, std::byte{1}, std::byte{0}}));

  Tensor<double, 0> s;
  s() = 0.5;
  const auto ss = StoredTensor::from(s);
  EXPECT_EQ(ss.dtype, DType::F64);
  EXPECT_TRUE(ss.shape.empty());
  EXPECT_EQ(ss.numel(), 1);
  EXPECT_EQ(ss.values<double>(), (std::vector<double>{0.5}));

  // Views are stored too.
  Tensor<float, 2> m{{1, 2}, {3, 4}};
  const auto row = StoredTensor::from(m[1]);
  EXPECT_EQ(row.values<float>(), (std::vector<float>{3, 4}));
}

TEST(StoredTensor, InconsistentTensorIsRejectedNotRead) {
  auto t = stored<std::uint32_t>(DType::F32, {3}, {0, 0});  // 8 bytes for 3 floats
  float out[3];
  TESSERA_EXPECT_THROW_MSG(t.copy_to(out), tessera::ValueError, "holds 8 bytes", "expected 3 x 4");
  t.shape = {-1};
  EXPECT_THROW(t.numel(), tessera::ValueError);
  t.shape = {Index{1} << 40, Index{1} << 40};
  EXPECT_THROW(t.numel(), tessera::ValueError);
}

TEST(StateDict, InsertLookupAndOrder) {
  StateDict sd;
  EXPECT_TRUE(sd.empty());
  Tensor<float, 2> w(2, 3);
  w.setRandom(3);
  Tensor<double, 1> b{0.5, 0.25};
  sd.insert("layer.1.weight", w);
  sd.insert("layer.0.bias", b);
  sd.insert("a", stored<std::uint16_t>(DType::BF16, {1}, {0x3f80}));
  EXPECT_EQ(sd.size(), 3u);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"a", "layer.0.bias", "layer.1.weight"}));
  std::vector<std::string> seen;
  for (const auto& [name, t] : sd) seen.push_back(name);
  EXPECT_EQ(seen, sd.keys());
  EXPECT_TRUE(sd.contains("a"));
  EXPECT_FALSE(sd.contains("b"));
  EXPECT_EQ(sd.find("b"), nullptr);
  ASSERT_NE(sd.find("layer.0.bias"), nullptr);
  EXPECT_EQ(sd.find("layer.0.bias")->dtype, DType::F64);
  EXPECT_EQ(sd.at("a").values<float>(), (std::vector<float>{1.0f}));

  TESSERA_EXPECT_THROW_MSG(sd.at("layer.2.weight"), tessera::ValueError,
                           "tessera::io::StateDict::at", "no tensor named 'layer.2.weight'",
                           "'layer.0.bias'");
  TESSERA_EXPECT_THROW_MSG(sd.insert("a", b), tessera::ValueError, "tessera::io::StateDict::insert",
                           "'a' is already present");
  TESSERA_EXPECT_THROW_MSG(sd.insert("__metadata__", b), tessera::ValueError, "reserved");
  TESSERA_EXPECT_THROW_MSG(sd.insert("bad", stored<std::uint8_t>(DType::F32, {2}, {1, 2})),
                           tessera::ValueError, "tessera::io::StateDict::insert", "holds 2 bytes");
  EXPECT_TRUE(sd.erase("a"));
  EXPECT_FALSE(sd.erase("a"));
  EXPECT_EQ(sd.size(), 2u);
}

// rename and take move a tensor's bytes: the buffer is the same before and after.
TEST(StateDict, RenameAndTakeMoveTheBytes) {
  StateDict sd;
  Tensor<float, 2> w(3, 4);
  w.setRandom(1);
  sd.insert("a.weight", w);
  sd.insert("b", Tensor<float, 1>(2));
  const std::byte* bytes = sd.at("a.weight").bytes.data();
  sd.rename("a.weight", "z.weight");
  EXPECT_FALSE(sd.contains("a.weight"));
  EXPECT_EQ(sd.at("z.weight").bytes.data(), bytes);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"b", "z.weight"}));
  sd.rename("b", "b");  // to itself: nothing changes
  EXPECT_TRUE(sd.contains("b"));
  auto t = sd.take("z.weight");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->bytes.data(), bytes);
  EXPECT_EQ(t->shape, (std::vector<Index>{3, 4}));
  EXPECT_FALSE(sd.contains("z.weight"));
  EXPECT_FALSE(sd.take("z.weight").has_value());
}

TEST(StateDict, RenameErrorsNameTheKeys) {
  StateDict sd;
  sd.insert("a", Tensor<float, 1>(2));
  sd.insert("b", Tensor<float, 1>(2));
  TESSERA_EXPECT_THROW_MSG(sd.rename("missing", "c"), tessera::ValueError,
                           "tessera::io::StateDict::rename", "no tensor named 'missing'", "'a'");
  TESSERA_EXPECT_THROW_MSG(sd.rename("a", "b"), tessera::ValueError,
                           "tessera::io::StateDict::rename", "'b' is already present");
  TESSERA_EXPECT_THROW_MSG(sd.rename("a", "__metadata__"), tessera::ValueError, "reserved");
  TESSERA_EXPECT_THROW_MSG(sd.rename("missing", "missing"), tessera::ValueError,
                           "no tensor named 'missing'");
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"a", "b"}));  // unchanged
}

TEST(StateDict, GetConvertsAndChecksRank) {
  StateDict sd;
  Tensor<float, 2> w{{1, 2, 3}, {4, 5, 6}};
  sd.insert("w", w);
  sd.insert("h", stored<std::uint16_t>(DType::F16, {2, 2}, {0x3c00, 0xc100, 0x7bff, 0x0001}));
  const auto w2 = sd.get<float, 2>("w");
  EXPECT_EQ(w2.shape(), w.shape());
  EXPECT_EQ(w2(1, 2), 6.0f);
  const auto wd = sd.get<double, 2>("w");
  EXPECT_EQ(wd(0, 1), 2.0);
  const auto flat = sd.get<std::int64_t, 2>("w");
  EXPECT_EQ(flat(1, 0), 4);
  const auto h = sd.get<float, 2>("h");
  EXPECT_EQ(h(0, 1), -2.5f);
  EXPECT_EQ(h(1, 0), 65504.0f);
  TESSERA_EXPECT_THROW_MSG((sd.get<float, 3>("w")), tessera::ShapeError,
                           "tessera::io::StateDict::get", "tensor 'w'", "[2, 3]",
                           "expected rank 3");
  TESSERA_EXPECT_THROW_MSG((sd.get<float, 2>("nope")), tessera::ValueError,
                           "tessera::io::StateDict::get", "'nope'");
  sd.insert("nan", stored<std::uint32_t>(DType::F32, {1}, {0x7fc00000u}));
  TESSERA_EXPECT_THROW_MSG((sd.get<std::int64_t, 1>("nan")), tessera::ValueError,
                           "tessera::io::StateDict::get", "tensor 'nan'");
}

// Insert -> get returns the same elements for every stored scalar type and ranks 0-4.
template <class T>
class StateDictRoundTrip : public ::testing::Test {};
using StoredScalars = ::testing::Types<float, double, bool, std::int64_t>;
TYPED_TEST_SUITE(StateDictRoundTrip, StoredScalars);

template <class T, int R>
void insert_get(tessera::Shape<R> shape) {
  Tensor<T, R> x(shape);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<T>(i % 7 == 3 ? 0 : i * 3 - 5);
  StateDict sd;
  sd.insert("x", x);
  const auto y = sd.get<T, R>("x");
  ASSERT_EQ(y.shape(), x.shape());
  for (Index i = 0; i < x.size(); ++i) EXPECT_EQ(y.data()[i], x.data()[i]) << i;
}

TYPED_TEST(StateDictRoundTrip, RanksZeroToFourAndEmpty) {
  using T = TypeParam;
  insert_get<T, 0>({});
  insert_get<T, 1>({5});
  insert_get<T, 1>({0});
  insert_get<T, 2>({3, 4});
  insert_get<T, 2>({0, 4});
  insert_get<T, 3>({2, 3, 4});
  insert_get<T, 3>({2, 0, 4});
  insert_get<T, 4>({2, 1, 3, 2});
  insert_get<T, 4>({1, 2, 3, 0});
}

}  // namespace state_dict_test
