#include "tessera/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <unistd.h>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace safetensors_test {

namespace fs = std::filesystem;
using tessera::Index;
using tessera::Tensor;
using tessera::io::DType;
using tessera::io::parse_safetensors;
using tessera::io::serialize_safetensors;
using tessera::io::StateDict;
using tessera::io::StoredTensor;
using Bytes = std::vector<std::byte>;

// ---- building files by hand ----

void append_u64(Bytes& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
}
void append(Bytes& out, std::string_view s) {
  for (char c : s) out.push_back(static_cast<std::byte>(c));
}
template <class U>
void append_le(Bytes& out, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i)
    out.push_back(static_cast<std::byte>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff));
}
// A file: length prefix (the header's size unless given), the header, `data` zero bytes.
Bytes file_with(std::string_view header, std::size_t data = 0,
                std::optional<std::uint64_t> length = std::nullopt) {
  Bytes out;
  append_u64(out, length.value_or(header.size()));
  append(out, header);
  out.resize(out.size() + data);
  return out;
}
Bytes raw(std::string_view s) {
  Bytes out;
  append(out, s);
  return out;
}
std::string as_string(const Bytes& b, std::size_t from, std::size_t n) {
  return std::string(reinterpret_cast<const char*>(b.data()) + from, n);
}

using tessera::test::TempDir;

void write_file(const fs::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

void expect_same(const StateDict& a, const StateDict& b) {
  ASSERT_EQ(a.keys(), b.keys());
  EXPECT_EQ(a.metadata, b.metadata);
  for (const auto& [name, t] : a) {
    const auto& u = b.at(name);
    EXPECT_EQ(t.dtype, u.dtype) << name;
    EXPECT_EQ(t.shape, u.shape) << name;
    EXPECT_EQ(t.bytes, u.bytes) << name;
  }
}

// A StoredTensor of `d` with a recognisable byte pattern (BOOL: 0/1).
StoredTensor patterned(DType d, std::vector<Index> shape, unsigned seed) {
  StoredTensor t;
  t.dtype = d;
  t.shape = std::move(shape);
  std::size_t n = tessera::io::dtype_size(d);
  for (Index s : t.shape) n *= static_cast<std::size_t>(s);
  for (std::size_t i = 0; i < n; ++i)
    t.bytes.push_back(static_cast<std::byte>(d == DType::BOOL ? (i + seed) % 2 : i * 31 + seed));
  return t;
}

// ---- writer and round trips ----

TEST(Safetensors, WriterLayout) {
  StateDict sd;
  sd.metadata["format"] = "pt";
  sd.insert("b", Tensor<float, 1>{1.0f, 2.0f});
  sd.insert("a", Tensor<double, 0>{});
  const Bytes file = serialize_safetensors(sd);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(file[i]);
  EXPECT_EQ(n % 8, 0u) << "header padded to a multiple of 8";
  ASSERT_EQ(file.size(), 8 + n + 8 + 8);
  const std::string header = as_string(file, 8, n);
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  EXPECT_EQ(header.substr(0, json.size()), json);
  EXPECT_EQ(header.find_first_not_of(' ', json.size()), std::string::npos) << "padding is spaces";
  EXPECT_LT(header.size() - json.size(), 8u);
  // Data in key order: a (F64 0.0) then b.
  float b1;
  std::memcpy(&b1, file.data() + 8 + n + 8 + 4, 4);
  EXPECT_EQ(b1, 2.0f);
}

TEST(Safetensors, EmptyStateDict) {
  const StateDict sd;
  const Bytes file = serialize_safetensors(sd);
  EXPECT_EQ(file.size(), 16u);
  EXPECT_EQ(as_string(file, 8, 8), "{}      ");
  const StateDict back = parse_safetensors(file);
  EXPECT_TRUE(back.empty());
  EXPECT_TRUE(back.metadata.empty());
}

TEST(Safetensors, EveryDTypeRoundTrips) {
  StateDict sd;
  unsigned seed = 0;
  for (DType d : tessera::io::kAllDTypes) {
    const std::string name(tessera::io::dtype_name(d));
    sd.insert(name + ".matrix", patterned(d, {3, 2}, seed++));
    sd.insert(name + ".scalar", patterned(d, {}, seed++));
    sd.insert(name + ".empty", patterned(d, {2, 0, 3}, seed++));
  }
  const StateDict back = parse_safetensors(serialize_safetensors(sd));
  expect_same(sd, back);
  EXPECT_EQ(back.size(), 3 * tessera::io::kAllDTypes.size());
  // And through a file.
  TempDir dir;
  tessera::io::save_safetensors(dir / "all.safetensors", sd);
  expect_same(sd, tessera::io::load_safetensors(dir / "all.safetensors"));
}

TEST(Safetensors, MetadataIsKept) {
  StateDict sd;
  sd.metadata = {
      {"format", "pt"}, {"note", "quotes \" and \\ and \n newlines, \xc3\xa9"}, {"", ""}};
  sd.insert("x", Tensor<float, 1>{1, 2, 3});
  const StateDict back = parse_safetensors(serialize_safetensors(sd));
  EXPECT_EQ(back.metadata, sd.metadata);
  expect_same(sd, back);
}

TEST(Safetensors, NamesNeedingEscapes) {
  StateDict sd;
  for (const char* name : {"", "a\"b", "back\\slash", "tab\tnew\nline", "\xe2\x82\xac.weight",
                           "nul\x01", "__metadata"})
    sd.insert(name, Tensor<std::int64_t, 1>{1, 2});
  expect_same(sd, parse_safetensors(serialize_safetensors(sd)));
  StateDict bad;
  bad.insert("bad \xff utf8", Tensor<float, 1>{1});
  TESSERA_EXPECT_THROW_MSG(serialize_safetensors(bad), tessera::ValueError,
                           "tessera::io::serialize_safetensors", "not valid UTF-8");
}

template <class T>
class SafetensorsRoundTrip : public ::testing::Test {};
using StoredScalars = ::testing::Types<float, double, bool, std::int64_t>;
TYPED_TEST_SUITE(SafetensorsRoundTrip, StoredScalars);

template <class T>
T sample(Index i) {
  if constexpr (std::is_same_v<T, bool>) {
    return i % 3 == 1;
  } else if constexpr (std::is_integral_v<T>) {
    const T special[] = {std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), 0, -1};
    return i < 4 ? special[i] : static_cast<T>(i * 1000003 - 77);
  } else {
    const T special[] = {std::numeric_limits<T>::infinity(), -T(0),
                         std::numeric_limits<T>::denorm_min(), std::numeric_limits<T>::quiet_NaN(),
                         std::numeric_limits<T>::max()};
    return i < 5 ? special[i] : static_cast<T>(i * 0.37 - 3);
  }
}

template <class T, int R>
void check_round_trip(tessera::Shape<R> shape, const fs::path& file) {
  SCOPED_TRACE(::testing::Message()
               << "rank " << R << " shape " << tessera::detail::shape_string(shape));
  Tensor<T, R> x(shape);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = sample<T>(i);
  StateDict sd;
  sd.insert("x", x);
  sd.insert("y.0", x);
  for (int via_file = 0; via_file < 2; ++via_file) {
    StateDict back;
    if (via_file) {
      tessera::io::save_safetensors(file, sd);
      back = tessera::io::load_safetensors(file);
    } else {
      back = parse_safetensors(serialize_safetensors(sd));
    }
    expect_same(sd, back);
    const auto y = back.get<T, R>("y.0");
    ASSERT_EQ(y.shape(), x.shape());
    // Bitwise: -0, NaN and denormals survive.
    if (x.size()) {
      EXPECT_EQ(std::memcmp(y.data(), x.data(), sizeof(T) * x.size()), 0);
    }
  }
}

TYPED_TEST(SafetensorsRoundTrip, RanksZeroToFourIncludingEmpty) {
  using T = TypeParam;
  TempDir dir;
  const fs::path f = dir / "rt.safetensors";
  check_round_trip<T, 0>({}, f);
  check_round_trip<T, 1>({7}, f);
  check_round_trip<T, 1>({0}, f);
  check_round_trip<T, 2>({3, 5}, f);
  check_round_trip<T, 2>({5, 0}, f);
  check_round_trip<T, 3>({2, 3, 4}, f);
  check_round_trip<T, 3>({0, 3, 4}, f);
  check_round_trip<T, 4>({2, 3, 1, 5}, f);
  check_round_trip<T, 4>({2, 3, 0, 5}, f);
}

// ---- files made by other writers ----

// The reference implementation's own test vector: a 60-byte header with no padding.
TEST(Safetensors, ReferenceTestVector) {
  Bytes file = raw(std::string("<\0\0\0\0\0\0\0", 8) +
                   R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})");
  for (std::int32_t v : {1, -2, 3, 0x7fffffff}) append_le(file, static_cast<std::uint32_t>(v));
  const StateDict sd = parse_safetensors(file);
  ASSERT_EQ(sd.keys(), (std::vector<std::string>{"test"}));
  const auto t = sd.get<std::int64_t, 2>("test");
  EXPECT_EQ(t(0, 0), 1);
  EXPECT_EQ(t(0, 1), -2);
  EXPECT_EQ(t(1, 1), 0x7fffffff);
  EXPECT_EQ(sd.at("test").dtype, DType::I32);
}

// A file laid out the way safetensors.torch.save_file lays it out, built byte by byte from the
// spec: "__metadata__" {"format": "pt"}, header keys in name order, the data region ordered by
// dtype alignment (F32 before BF16, so not in key order), header padded with spaces to 8 bytes,
// and offsets that leave the F64 tensor at an odd address.
TEST(Safetensors, PyTorchStyleFile) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("embed.weight":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]},)"
      R"("ln.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("mask":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]},)"
      R"("scale":{"dtype":"F64","shape":[],"data_offsets":[19,27]}})";
  std::string padded = header;
  padded.append((8 - padded.size() % 8) % 8, ' ');
  Bytes file;
  append_u64(file, padded.size());
  append(file, padded);
  for (float f : {0.5f, -1.25f}) append_le(file, std::bit_cast<std::uint32_t>(f));
  for (std::uint16_t b : {0x3f80, 0xc020, 0x0001, 0x7f80}) append_le(file, b);  // 1, -2.5, ...
  for (std::uint8_t b : {1, 0, 1}) append_le(file, b);
  append_le(file, std::bit_cast<std::uint64_t>(0.125));

  const StateDict sd = parse_safetensors(file);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"embed.weight", "ln.bias", "mask", "scale"}));
  EXPECT_EQ(sd.metadata.at("format"), "pt");
  const auto e = sd.get<float, 2>("embed.weight");
  EXPECT_EQ(e(0, 0), 1.0f);
  EXPECT_EQ(e(0, 1), -2.5f);
  EXPECT_EQ(e(1, 0), std::ldexp(1.0f, -133));
  EXPECT_TRUE(std::isinf(e(1, 1)));
  EXPECT_EQ(sd.at("ln.bias").values<float>(), (std::vector<float>{0.5f, -1.25f}));
  EXPECT_EQ(sd.at("mask").values<bool>(), (std::vector<bool>{true, false, true}));
  EXPECT_EQ((sd.get<double, 0>("scale")()), 0.125);
  // Written back, it is a valid file (in tessera's own layout) with the same tensors.
  expect_same(sd, parse_safetensors(serialize_safetensors(sd)));
}

TEST(Safetensors, ExtraEntryFieldsAndWhitespaceAreAccepted) {
  const std::string header =
      "{ \"x\" : { \"shape\" : [ 1 ] , \"data_offsets\" : [0, 4], \"dtype\" : \"F32\", "
      "\"extra\": {\"nested\": [1, 2, null]} } }\t ";
  Bytes file = file_with(header, 4);
  EXPECT_EQ(parse_safetensors(file).at("x").shape, (std::vector<Index>{1}));
}

// ---- malformed files ----

struct Malformed {
  const char* what;
  Bytes file;
  std::vector<const char*> message;  // substrings the IoError message must contain
};

std::vector<Malformed> malformed_files() {
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  auto one = [&](std::string entry, std::size_t data = 8) {
    return file_with("{\"w\":{" + entry + "}}", data);
  };
  std::string deep;
  for (int i = 0; i < 100; ++i) deep += "[";
  for (int i = 0; i < 100; ++i) deep += "]";
  return {
      {"empty file", raw(""), {"0 bytes long", "shorter than the 8-byte header length"}},
      {"seven bytes", raw(std::string("\x08\0\0\0\0\0\0", 7)), {"7 bytes long"}},
      {"header length past the end",
       file_with("{}", 0, 100),
       {"header length 100", "past the end"}},
      {"header length 2^64-1",
       file_with("{}", 0, ~std::uint64_t{0}),
       {"header length 18446744073709551615", "exceeds the limit of 100000000"}},
      {"header length above 100 MB",
       file_with("{}", 0, 100'000'001),
       {"exceeds the limit of 100000000"}},
      {"header length zero", file_with("", 0), {"not valid JSON"}},
      {"header not JSON", file_with("{\"w\": nope}"), {"not valid JSON"}},
      {"truncated JSON", file_with("{\"w\":{\"dtype\":\"F32\""), {"not valid JSON"}},
      {"trailing garbage after JSON", file_with("{}  x"), {"not valid JSON"}},
      {"invalid UTF-8 in header", file_with("{\"w\xff\":{}}"), {"not valid JSON"}},
      {"NUL in header", file_with(std::string("{}\0", 3)), {"not valid JSON"}},
      {"header is an array",
       file_with("[1,2]"),
       {"the header is an array", "expected a JSON object"}},
      {"header is a string", file_with("\"{}\""), {"expected a JSON object"}},
      {"entry not an object",
       file_with("{\"w\":[0,8]}"),
       {"tensor 'w'", "header entry is an array", "expected an object"}},
      {"missing dtype", one(R"("shape":[2],"data_offsets":[0,8])"), {"tensor 'w'", "no \"dtype\""}},
      {"missing shape",
       one(R"("dtype":"F32","data_offsets":[0,8])"),
       {"tensor 'w'", "no \"shape\""}},
      {"missing data_offsets",
       one(R"("dtype":"F32","shape":[2])"),
       {"tensor 'w'", "no \"data_offsets\""}},
      {"dtype not a string",
       one(R"("dtype":32,"shape":[2],"data_offsets":[0,8])"),
       {"tensor 'w'", "\"dtype\" is the integer 32", "expected a string"}},
      {"unknown dtype",
       one(R"("dtype":"F12","shape":[2],"data_offsets":[0,8])"),
       {"tensor 'w'", "unknown dtype 'F12'", "expected one of BOOL"}},
      {"safetensors dtype tessera does not read",
       one(R"("dtype":"F8_E5M2","shape":[8],"data_offsets":[0,8])"),
       {"tensor 'w'", "dtype 'F8_E5M2' is a safetensors dtype that tessera does not read",
        "it reads BOOL"}},
      {"leading whitespace before the header's object",
       file_with(" {}"),
       {"the header starts with byte 0x20", "expected '{'"}},
      {"leading newline before the header's object", file_with("\n{}"), {"starts with byte 0x0a"}},
      {"lower-case dtype",
       one(R"("dtype":"f32","shape":[2],"data_offsets":[0,8])"),
       {"unknown dtype 'f32'"}},
      {"shape not an array",
       one(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"),
       {"tensor 'w'", "\"shape\" is the integer 2", "expected an array"}},
      {"negative shape entry",
       one(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"),
       {"tensor 'w'", "shape entry 0 is the negative integer -2"}},
      {"non-integer shape entry",
       one(R"("dtype":"F32","shape":[2, 1.5],"data_offsets":[0,8])"),
       {"tensor 'w'", "shape entry 1 is the non-integer number 1.5"}},
      {"float-valued integer shape entry",
       one(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"),
       {"shape entry 0 is the non-integer number"}},
      {"string shape entry",
       one(R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])"),
       {"shape entry 0 is the string '2'"}},
      {"shape entry above int64",
       one(R"("dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8])"),
       {"tensor 'w'", "shape entry 0 is 9223372036854775808", "too large"}},
      {"element count overflows",
       one(R"("dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8])"),
       {"tensor 'w'", "shape [4294967296, 4294967296]", "more elements than fit in int64"}},
      {"byte count overflows",
       one(R"("dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8])"),
       {"tensor 'w'", "more bytes than fit in int64"}},
      {"data_offsets not an array",
       one(R"("dtype":"F32","shape":[2],"data_offsets":8)"),
       {"tensor 'w'", "\"data_offsets\" is the integer 8", "two non-negative integers"}},
      {"data_offsets of three",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[0,4,8])"),
       {"tensor 'w'", "\"data_offsets\" has more than two elements"}},
      {"data_offsets of one",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[8])"),
       {"tensor 'w'", "\"data_offsets\" has 1 element, expected two"}},
      {"data_offsets nested",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[[0],8])"),
       {"data_offsets[0] is an array"}},
      {"negative data_offsets",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[-8,0])"),
       {"tensor 'w'", "data_offsets[0] is the negative integer -8"}},
      {"non-integer data_offsets",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8.0])"),
       {"data_offsets[1] is the non-integer number"}},
      {"begin after end",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"),
       {"tensor 'w'", "data_offsets [8, 0] has begin > end"}},
      {"end beyond the data",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])", 4),
       {"tensor 'w'", "ends beyond the data region of 4 bytes"}},
      {"end near 2^64",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,18446744073709551615])"),
       {"ends beyond the data region"}},
      {"size mismatch",
       one(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"),
       {"tensor 'w'", "span 8 bytes, expected 12", "F32"}},
      {"overlapping tensors",
       file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 12),
       {"tensor 'a' [0, 8)", "tensor 'b' [4, 12)", "overlap"}},
      {"identical ranges",
       file_with(R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                 4),
       {"'a'", "'b'", "overlap"}},
      {"hole between tensors",
       file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                 12),
       {"bytes [4, 8)", "not covered by any tensor", "before tensor 'b'"}},
      {"hole at the start",
       one(R"("dtype":"F32","shape":[2],"data_offsets":[4,12])", 12),
       {"bytes [0, 4)", "not covered", "tensor 'w'"}},
      {"trailing bytes", one(ok_entry, 9), {"bytes [8, 9)", "not covered by any tensor"}},
      {"data but no tensors", file_with("{}", 16), {"bytes [0, 16)", "not covered"}},
      {"metadata not an object",
       file_with(R"({"__metadata__":["pt"]})"),
       {"\"__metadata__\" is an array", "expected an object of strings"}},
      {"metadata value not a string",
       file_with(R"({"__metadata__":{"format":"pt","epoch":3}})"),
       {"\"__metadata__\" entry 'epoch' is the integer 3", "expected a string"}},
      {"metadata value null",
       file_with(R"({"__metadata__":{"format":null}})"),
       {"entry 'format' is null"}},
      {"duplicate tensor",
       file_with(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 8),
       {"lists tensor 'w' twice"}},
      {"duplicate metadata",
       file_with(R"({"__metadata__":{},"__metadata__":{}})"),
       {"\"__metadata__\" twice"}},
      {"duplicate field in an entry",
       one(R"("dtype":"F32","dtype":"F64","shape":[2],"data_offsets":[0,8])"),
       {"key 'dtype' appears twice", "entry of 'w'"}},
      {"duplicate metadata key",
       file_with(R"({"__metadata__":{"k":"a","k":"b"}})"),
       {"key 'k' appears twice", "'__metadata__'"}},
      {"nesting too deep",
       file_with("{\"w\":{\"extra\":" + deep + "}}"),
       {"deeper than 64 levels"}},
  };
}

TEST(Safetensors, MalformedFilesAreRejected) {
  const auto cases = malformed_files();
  EXPECT_GE(cases.size(), 15u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    bool thrown = false;
    try {
      (void)parse_safetensors(c.file);
    } catch (const tessera::IoError& e) {
      thrown = true;
      const std::string msg = e.what();
      EXPECT_NE(msg.find("tessera::io::parse_safetensors: "), std::string::npos) << msg;
      for (const char* part : c.message)
        EXPECT_NE(msg.find(part), std::string::npos)
            << "message \"" << msg << "\" lacks \"" << part << "\"";
    }
    EXPECT_TRUE(thrown) << "accepted: " << c.what;
  }
}

TEST(Safetensors, MalformedFilesAreRejectedByLoadNamingThePath) {
  TempDir dir;
  int i = 0;
  for (const auto& c : malformed_files()) {
    SCOPED_TRACE(c.what);
    const fs::path p = dir / ("bad" + std::to_string(i++) + ".safetensors");
    write_file(p, c.file);
    bool thrown = false;
    try {
      (void)tessera::io::load_safetensors(p);
    } catch (const tessera::IoError& e) {
      thrown = true;
      const std::string msg = e.what();
      EXPECT_NE(msg.find("tessera::io::load_safetensors: file '" + p.string() + "': "),
                std::string::npos)
          << msg;
      for (const char* part : c.message)
        EXPECT_NE(msg.find(part), std::string::npos)
            << "message \"" << msg << "\" lacks \"" << part << "\"";
    }
    EXPECT_TRUE(thrown);
  }
}

// Every truncation of a valid file, and every single-byte change to its header, is either
// parsed or rejected with IoError: never another exception, never a crash.
TEST(Safetensors, TruncationsAndByteFlipsNeverEscape) {
  StateDict sd;
  sd.metadata["format"] = "pt";
  sd.insert("a", patterned(DType::F16, {2, 3}, 1));
  sd.insert("b", patterned(DType::I64, {2}, 2));
  sd.insert("c", patterned(DType::BOOL, {0}, 3));
  const Bytes file = serialize_safetensors(sd);
  for (std::size_t n = 0; n < file.size(); ++n) {
    const Bytes cut(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW((void)parse_safetensors(cut), tessera::IoError) << "prefix of " << n << " bytes";
  }
  int parsed = 0;
  for (std::size_t i = 0; i < file.size(); ++i) {
    for (unsigned v : {0x00u, 0x20u, 0x22u, 0x2du, 0x30u, 0x39u, 0x5bu, 0x7bu, 0x7du, 0xffu}) {
      Bytes f = file;
      f[i] = static_cast<std::byte>(v);
      try {
        const StateDict r = parse_safetensors(f);
        ++parsed;
        for (const auto& [name, t] : r) (void)t.values<double>();
      } catch (const tessera::IoError&) {
      }
    }
  }
  EXPECT_GT(parsed, 0);
}

// ---- files on disk ----

TEST(Safetensors, LoadMissingOrUnreadable) {
  TempDir dir;
  const fs::path missing = dir / "no_such.safetensors";
  const std::string missing_name = missing.string();
  TESSERA_EXPECT_THROW_MSG(tessera::io::load_safetensors(missing), tessera::IoError,
                           "tessera::io::load_safetensors", missing_name.c_str(), "no such file");
  TESSERA_EXPECT_THROW_MSG(tessera::io::load_safetensors(dir / ""), tessera::IoError,
                           "tessera::io::load_safetensors", "is a directory");
  const fs::path empty = dir / "empty.safetensors";
  write_file(empty, {});
  const std::string empty_name = empty.string();
  TESSERA_EXPECT_THROW_MSG(tessera::io::load_safetensors(empty), tessera::IoError,
                           empty_name.c_str(), "0 bytes long");
  StateDict sd;
  sd.insert("x", Tensor<float, 1>{1});
  TESSERA_EXPECT_THROW_MSG(tessera::io::save_safetensors(dir / "no_dir" / "x.safetensors", sd),
                           tessera::IoError, "tessera::io::save_safetensors", "no_dir",
                           "cannot open it for writing");
}

TEST(Safetensors, SaveReplacesAnExistingFile) {
  TempDir dir;
  const fs::path p = dir / "m.safetensors";
  StateDict big;
  big.insert("x", Tensor<double, 1>(1000));
  tessera::io::save_safetensors(p, big);
  StateDict small;
  small.insert("y", Tensor<float, 1>{2});
  tessera::io::save_safetensors(p, small);
  expect_same(small, tessera::io::load_safetensors(p));
  EXPECT_EQ(fs::file_size(p), serialize_safetensors(small).size());
}

// Many tensors and a large one: parsing stays linear (a quadratic step would take minutes here).
TEST(Safetensors, ManyTensorsAndALargeOne) {
  StateDict sd;
  for (int i = 0; i < 20000; ++i)
    sd.insert("layers." + std::to_string(i) + ".weight", patterned(DType::F32, {1}, i));
  Tensor<float, 2> big(1024, 1024);
  big.setRandom(9);
  sd.insert("big", big);
  const auto start = std::chrono::steady_clock::now();
  TempDir dir;
  tessera::io::save_safetensors(dir / "many.safetensors", sd);
  const StateDict back = tessera::io::load_safetensors(dir / "many.safetensors");
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(back.size(), sd.size());
  const auto big2 = back.get<float, 2>("big");
  EXPECT_EQ(std::memcmp(big2.data(), big.data(), sizeof(float) * big.size()), 0);
  EXPECT_EQ(back.at("layers.19999.weight").bytes, sd.at("layers.19999.weight").bytes);
  EXPECT_LT(secs, 30.0);
}

}  // namespace safetensors_test
