// Adversarial inputs to tessera::io and Module::load_state_dict (issue 15): files that are not
// regular files, safetensors headers checked rule by rule against the format's specification and
// its reference reader (huggingface/safetensors, safetensors/src/tensor.rs), sizes that overflow,
// and error messages that must stay short however large the input.
//
// To add a case: a header rule goes into header_rule_cases() below (a header, the data bytes
// after it, and either the tensors expected or the substrings the IoError must contain); any
// other case is a TEST of its own in the section it belongs to, with the exact value expected.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "tessera/io/safetensors.hpp"
#include "tessera/io/state_dict.hpp"
#include "tessera/nn/linear.hpp"
#include "test_util.hpp"

namespace io_test {

namespace fs = std::filesystem;
using tessera::Index;
using tessera::IoError;
using tessera::ShapeError;
using tessera::Tensor;
using tessera::ValueError;
using tessera::io::DType;
using tessera::io::parse_safetensors;
using tessera::io::StateDict;
using tessera::io::StoredTensor;
using Bytes = std::vector<std::byte>;

Bytes file_with(std::string_view header, std::size_t data = 0,
                std::optional<std::uint64_t> length = std::nullopt) {
  Bytes out;
  const std::uint64_t n = length.value_or(header.size());
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
  for (char c : header) out.push_back(static_cast<std::byte>(c));
  out.resize(out.size() + data);
  return out;
}

using tessera::test::TempDir;

// ---- kind 5: files that are not regular files ----

// A FIFO with no writer: opening it for reading blocks forever unless done without blocking.
// The load must fail fast with IoError; if it hangs, a writer is attached and closed so the test
// fails instead of hanging.
TEST(RobustIo, LoadRefusesAFifoQuickly) {
  TempDir dir;
  const fs::path fifo = dir / "pipe.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto result = std::async(std::launch::async, [&]() -> std::string {
    try {
      (void)tessera::io::load_safetensors(fifo);
    } catch (const IoError& e) {
      return e.what();
    }
    return "no error";
  });
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // unblock the reader
    if (fd >= 0) ::close(fd);
    ADD_FAILURE() << "load_safetensors blocked on a FIFO";
  }
  const std::string msg = result.get();
  EXPECT_NE(msg.find("tessera::io::load_safetensors: file '" + fifo.string() + "'"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("it is a FIFO (named pipe), expected a regular file"), std::string::npos)
      << msg;
}

TEST(RobustIo, LoadRefusesACharacterDevice) {
  if (!fs::exists("/dev/null")) GTEST_SKIP() << "no /dev/null";
  TESSERA_EXPECT_THROW_MSG(tessera::io::load_safetensors("/dev/null"), IoError,
                           "tessera::io::load_safetensors: file '/dev/null'",
                           "it is a character device, expected a regular file");
}

TEST(RobustIo, LoadRefusesADirectory) {
  TempDir dir;
  const fs::path d = dir / "model.safetensors";
  fs::create_directories(d);
  TESSERA_EXPECT_THROW_MSG(tessera::io::load_safetensors(d), IoError,
                           "tessera::io::load_safetensors", "it is a directory");
}

TEST(RobustIo, LoadFollowsASymlinkToARegularFile) {
  TempDir dir;
  StateDict sd;
  sd.insert("w", Tensor<float, 1>{1.5f, -2.f});
  tessera::io::save_safetensors(dir / "real.safetensors", sd);
  fs::create_symlink(dir / "real.safetensors", dir / "link.safetensors");
  EXPECT_EQ(tessera::io::load_safetensors(dir / "link.safetensors").at("w").values<float>(),
            (std::vector<float>{1.5f, -2.f}));
}

// ---- kind 13: the header, rule by rule ----

struct HeaderRule {
  const char* rule;
  std::string header;
  std::size_t data = 0;
  // Accepted: the tensors (name, element count) it must hold and the metadata entry count.
  std::vector<std::pair<std::string, Index>> tensors;
  std::size_t metadata = 0;
  // Rejected: substrings of the IoError's message (empty: the file is accepted).
  std::vector<const char*> error;
};

std::vector<HeaderRule> header_rule_cases() {
  const std::string f32x2 = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      // "__metadata__" is Option<HashMap<String, String>> in the reference: null is absent.
      {"metadata null (MLX)", R"({"__metadata__":null,"w":)" + f32x2 + "}", 8, {{"w", 2}}, 0, {}},
      {"metadata null after the tensors",
       R"({"w":)" + f32x2 + R"(,"__metadata__":null})",
       8,
       {{"w", 2}},
       0,
       {}},
      {"metadata empty", R"({"__metadata__":{}})", 0, {}, 0, {}},
      {"metadata strings", R"({"__metadata__":{"format":"pt","a":""}})", 0, {}, 2, {}},
      {"metadata a string",
       R"({"__metadata__":"pt"})",
       0,
       {},
       0,
       {"\"__metadata__\" is the string 'pt'", "expected an object of strings"}},
      {"metadata true", R"({"__metadata__":true})", 0, {}, 0, {"\"__metadata__\" is true"}},
      {"metadata value an object",
       R"({"__metadata__":{"k":{}}})",
       0,
       {},
       0,
       {"\"__metadata__\" entry 'k' is an object", "expected a string"}},
      {"metadata value an array",
       R"({"__metadata__":{"k":["a"]}})",
       0,
       {},
       0,
       {"entry 'k' is an array"}},
      {"metadata value a number",
       R"({"__metadata__":{"k":1.5}})",
       0,
       {},
       0,
       {"entry 'k' is the non-integer number 1.5"}},
      // The header MUST begin with '{' and MAY be padded at the end with spaces.
      {"trailing space padding", "{}      ", 0, {}, 0, {}},
      {"trailing JSON whitespace", "{}\t\r\n ", 0, {}, 0, {}},
      {"leading space", " {}", 0, {}, 0, {"starts with byte 0x20", "expected '{'"}},
      {"leading tab", "\t{}", 0, {}, 0, {"starts with byte 0x09"}},
      {"UTF-8 byte-order mark", "\xef\xbb\xbf{}", 0, {}, 0, {"starts with byte 0xef"}},
      {"trailing NUL padding", std::string("{}\0\0", 4), 0, {}, 0, {"NUL byte at offset 2"}},
      {"two objects", "{}{}", 0, {}, 0, {"not valid JSON"}},
      // Offsets: sorted by begin they must tile [0, data size) exactly; any order in the JSON.
      {"entries out of offset order",
       R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[4,5]},)"
       R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       5,
       {{"a", 1}, {"b", 1}},
       0,
       {}},
      {"empty tensors share an offset",
       R"({"e":{"dtype":"F64","shape":[0,3],"data_offsets":[0,0]},)"
       R"("f":{"dtype":"BOOL","shape":[0],"data_offsets":[0,0]},)"
       R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       8,
       {{"e", 0}, {"f", 0}, {"w", 2}},
       0,
       {}},
      {"rank 0 is one element",
       R"({"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})",
       8,
       {{"s", 1}},
       0,
       {}},
      {"empty tensor past the data",
       R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}})",
       8,
       {},
       0,
       {"tensor 'e'", "ends beyond the data region of 8 bytes"}},
      {"empty tensor inside a hole",
       R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
       R"("e":{"dtype":"U8","shape":[0],"data_offsets":[1,1]}})",
       2,
       {},
       0,
       {"overlap"}},
      // Byte sizes per dtype: one byte more or less than shape x size is rejected.
      {"F16 [3] is 6 bytes",
       R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})",
       6,
       {{"h", 3}},
       0,
       {}},
      {"F16 [3] in 5 bytes",
       R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,5]}})",
       5,
       {},
       0,
       {"tensor 'h'", "span 5 bytes, expected 6"}},
      {"BF16 [2, 2] in 7 bytes",
       R"({"h":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,7]}})",
       7,
       {},
       0,
       {"span 7 bytes, expected 8"}},
      {"I64 [1] in 4 bytes",
       R"({"i":{"dtype":"I64","shape":[1],"data_offsets":[0,4]}})",
       4,
       {},
       0,
       {"span 4 bytes, expected 8"}},
      {"BOOL [3] in 3 bytes",
       R"({"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
       3,
       {{"b", 3}},
       0,
       {}},
      // Products that overflow 64 bits (ValidationOverflow in the reference), with the count
      // given exactly.
      {"element count 2^62 x 4",
       R"({"w":{"dtype":"U8","shape":[4611686018427387904,4],"data_offsets":[0,8]}})",
       8,
       {},
       0,
       {"tensor 'w'", "shape [4611686018427387904, 4]", "more elements than fit in int64"}},
      {"element count overflows even with a zero dimension",
       R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})",
       0,
       {},
       0,
       {"more elements than fit in int64"}},
      {"byte count 2^61 x 4",
       R"({"w":{"dtype":"F32","shape":[2305843009213693952],"data_offsets":[0,8]}})",
       8,
       {},
       0,
       {"tensor 'w'", "more bytes than fit in int64"}},
      {"offset above 2^63",
       R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[9223372036854775808,9223372036854775809]}})",
       1,
       {},
       0,
       {"ends beyond the data region of 1 bytes"}},
      // Only the exact key "__metadata__" is metadata.
      {"header key named like metadata but not it",
       R"({"__metadata":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
       1,
       {{"__metadata", 1}},
       0,
       {}},
  };
}

TEST(RobustIo, HeaderRulesOfTheFormat) {
  for (const auto& c : header_rule_cases()) {
    SCOPED_TRACE(c.rule);
    const Bytes file = file_with(c.header, c.data);
    if (c.error.empty()) {
      StateDict sd;
      ASSERT_NO_THROW(sd = parse_safetensors(file));
      EXPECT_EQ(sd.size(), c.tensors.size());
      for (const auto& [name, numel] : c.tensors) {
        ASSERT_TRUE(sd.contains(name)) << name;
        EXPECT_EQ(sd.at(name).numel(), numel) << name;
      }
      EXPECT_EQ(sd.metadata.size(), c.metadata);
    } else {
      bool thrown = false;
      try {
        (void)parse_safetensors(file);
      } catch (const IoError& e) {
        thrown = true;
        const std::string msg = e.what();
        EXPECT_NE(msg.find("tessera::io::parse_safetensors: "), std::string::npos) << msg;
        for (const char* part : c.error)
          EXPECT_NE(msg.find(part), std::string::npos)
              << "\"" << msg << "\" lacks \"" << part << "\"";
      }
      EXPECT_TRUE(thrown) << "accepted";
    }
  }
}

// An MLX-written file read whole: null metadata, a tensor, its values.
TEST(RobustIo, MlxNullMetadataFileReadsItsTensor) {
  Bytes file = file_with(R"({"__metadata__": null, "w": {"dtype": "F32", "shape": [2], )"
                         R"("data_offsets": [0, 8]}}     )");
  const float v[2] = {0.25f, -3.f};
  const auto* p = reinterpret_cast<const std::byte*>(v);
  file.insert(file.end(), p, p + 8);
  const StateDict sd = parse_safetensors(file);
  EXPECT_TRUE(sd.metadata.empty());
  EXPECT_EQ((sd.get<float, 1>("w")(1)), -3.f);
}

// The limit is inclusive: a length of exactly 100,000,000 passes the limit check (and then fails
// only because the file is shorter), one more is over it.
TEST(RobustIo, HeaderLengthLimitIsInclusive) {
  TESSERA_EXPECT_THROW_MSG(parse_safetensors(file_with("{}", 0, 100'000'000)), IoError,
                           "header length 100000000 extends past the end of the file");
  TESSERA_EXPECT_THROW_MSG(parse_safetensors(file_with("{}", 0, 100'000'001)), IoError,
                           "header length 100000001 exceeds the limit of 100000000");
}

// ---- kind 14: messages stay short ----

TEST(RobustIo, GetOnARank200000TensorGivesAShortMessage) {
  StoredTensor t;
  t.dtype = DType::F32;
  t.shape.assign(200'000, 1);
  t.bytes.resize(4);
  StateDict sd;
  sd.insert("deep", std::move(t));
  bool thrown = false;
  try {
    (void)sd.get<float, 2>("deep");
  } catch (const ShapeError& e) {
    thrown = true;
    const std::string msg = e.what();
    EXPECT_LT(msg.size(), 400u) << msg;
    for (const char* part : {"tessera::io::StateDict::get", "tensor 'deep'", "(200000 dimensions)",
                             "(rank 200000), expected rank 2"})
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
  }
  EXPECT_TRUE(thrown);
}

TEST(RobustIo, MissingKeyAmongTenThousandGivesAShortMessage) {
  StateDict sd;
  for (int i = 0; i < 10'000; ++i) sd.insert("k" + std::to_string(100000 + i), Tensor<float, 1>(1));
  bool thrown = false;
  try {
    (void)sd.at("nope");
  } catch (const ValueError& e) {
    thrown = true;
    const std::string msg = e.what();
    EXPECT_LT(msg.size(), 600u) << msg;
    for (const char* part : {"tessera::io::StateDict::at", "no tensor named 'nope'",
                             "holds 10000 tensors", "'k100000', 'k100001'", "(10000 in all)"})
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_EQ(msg.find("k100020"), std::string::npos) << "listed more than 20 names";
  }
  EXPECT_TRUE(thrown);
}

TEST(RobustIo, AMegabyteKeyIsCutInMessages) {
  const std::string key(1 << 20, 'x');
  StateDict sd;
  sd.insert(key, Tensor<float, 1>(3));
  TESSERA_EXPECT_THROW_MSG((sd.get<float, 2>(key)), ShapeError, "tessera::io::StateDict::get",
                           "...' (1048576 bytes)");
  try {
    (void)sd.get<float, 2>(key);
  } catch (const ShapeError& e) {
    EXPECT_LT(std::string(e.what()).size(), 400u);
  }
  try {
    (void)sd.at(key + "y");
  } catch (const ValueError& e) {
    EXPECT_LT(std::string(e.what()).size(), 600u);
  }
}

// A strict load under another naming (a PyTorch checkpoint of 1000 layers into a Linear): the
// message lists the first 20 unexpected keys and their count, not all of them.
TEST(RobustIo, StrictLoadUnderTheWrongNamingGivesAShortMessage) {
  tessera::nn::Linear<float> lin({.in_features = 2, .out_features = 3});
  StateDict sd;
  for (int i = 0; i < 1000; ++i)
    sd.insert("model.layers." + std::to_string(1000 + i) + ".weight", Tensor<float, 1>(1));
  bool thrown = false;
  try {
    lin.load_state_dict(sd);
  } catch (const ValueError& e) {
    thrown = true;
    const std::string msg = e.what();
    EXPECT_LT(msg.size(), 1200u) << msg;
    for (const char* part :
         {"tessera::nn::Module::load_state_dict", "missing keys: 'weight', 'bias'",
          "unexpected keys: 'model.layers.1000.weight'", "... (1000 in all)"})
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
    EXPECT_EQ(msg.find("model.layers.1020.weight"), std::string::npos);
  }
  EXPECT_TRUE(thrown);
}

// Conversion errors name the entry point the user called and the tensor.
TEST(RobustIo, ConversionErrorsNameGetAndTheTensor) {
  StateDict sd;
  sd.insert("x", Tensor<float, 1>{1.f, std::numeric_limits<float>::quiet_NaN()});
  TESSERA_EXPECT_THROW_MSG((sd.get<std::int64_t, 1>("x")), ValueError,
                           "tessera::io::StateDict::get: tensor 'x': element 1 of the F32 tensor "
                           "is nan");
}

// ---- kind 1: sizes from shapes never overflow ----

TEST(RobustIo, StoredTensorWithAnOverflowingShapeIsRejected) {
  StoredTensor t;
  t.dtype = DType::F64;
  t.shape = {Index(1) << 62, 4};
  StateDict sd;
  TESSERA_EXPECT_THROW_MSG(sd.insert("big", t), ValueError, "tessera::io::StateDict::insert",
                           "[4611686018427387904, 4]", "overflows the index type");
  t.shape = {Index(1) << 61};  // 2^61 elements fit, 2^64 bytes do not
  TESSERA_EXPECT_THROW_MSG(sd.insert("big", t), ValueError, "tessera::io::StateDict::insert",
                           "holds 0 bytes");
  t.shape = {-1};
  TESSERA_EXPECT_THROW_MSG(sd.insert("neg", t), ValueError, "negative dimension");
}

// A name that is not UTF-8 is refused when saving, and the message itself stays printable ASCII
// (it quotes the name: raw control bytes or invalid UTF-8 must not reach a log).
TEST(RobustIo, SaveRefusesANonUtf8NameWithAPrintableMessage) {
  TempDir dir;
  StateDict sd;
  sd.insert(std::string("q\"\\\n\x01\xff"), Tensor<float, 1>(2));
  bool thrown = false;
  try {
    tessera::io::save_safetensors(dir / "bad.safetensors", sd);
  } catch (const ValueError& e) {
    thrown = true;
    const std::string what = e.what();
    EXPECT_NE(what.find("not valid UTF-8"), std::string::npos) << what;
    for (char c : what)
      EXPECT_TRUE(static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f)
          << "byte " << static_cast<int>(static_cast<unsigned char>(c)) << " in " << what;
  }
  EXPECT_TRUE(thrown);
}

}  // namespace io_test
