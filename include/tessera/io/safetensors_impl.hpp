// tessera: the safetensors reader and writer declared in io/safetensors.hpp, which includes this
// file header-only; in the compiled mode the library compiles it once (src/json_functions.cpp).
#pragma once

#include "tessera/core/config.hpp"

// In the compiled mode these definitions are the library's alone: a consumer's copy would be a
// second definition of the same (not inline) functions.
#if defined(TESSERA_JSON_IN_LIBRARY) && !defined(TESSERA_BUILDING_JSON_FUNCTIONS)
#error \
    "tessera/io/safetensors_impl.hpp is the library's in the compiled mode; include tessera/io/safetensors.hpp"
#endif

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/io/state_dict.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#define TESSERA_IO_POSIX 1
#else
#define TESSERA_IO_POSIX 0
#endif

#include "tessera/io/safetensors.hpp"

namespace tessera::io {

namespace detail {

// Deeper JSON than this cannot be a safetensors header (which nests three levels).
inline constexpr std::size_t kSafetensorsMaxJsonDepth = 64;

// nlohmann's messages quote the bytes where parsing stopped, which may be anything: keep ASCII.
inline std::string printable(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return out;
}

inline std::string hex_byte(std::byte b) {
  constexpr char digits[] = "0123456789abcdef";
  const auto v = static_cast<unsigned>(b);
  return {digits[v >> 4], digits[v & 15u]};
}

// Throws IoError from function `fn`, prefixing the message with `where` (e.g. the file).
struct SafetensorsFail {
  std::string_view fn;
  std::string where;
  template <class... Parts>
  [[noreturn]] void operator()(const Parts&... parts) const {
    raise<IoError>(fn, where, parts...);
  }
};

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<Index> shape;
  std::uint64_t begin = 0, end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by data offsets
  std::map<std::string, std::string> metadata;
};

// Checks the 8-byte length prefix of a file of `file_size` bytes and returns the header length.
inline std::uint64_t safetensors_header_length(const SafetensorsFail& fail,
                                               std::span<const std::byte> file_start,
                                               std::uint64_t file_size) {
  if (file_size < 8)
    fail("the file is ", file_size,
         " bytes long, shorter than the 8-byte header length that starts a safetensors file");
  const auto n = load_le<std::uint64_t>(file_start.data());
  if (n > kSafetensorsMaxHeaderBytes)
    fail("header length ", n, " exceeds the limit of ", kSafetensorsMaxHeaderBytes,
         " bytes (not a safetensors file, or a corrupt one)");
  if (n > file_size - 8)
    fail("header length ", n, " extends past the end of the file: only ", file_size - 8,
         " bytes follow the length field (truncated file?)");
  return n;
}

// A JSON scalar as the SAX parser reports it, for checks and messages.
struct JsonScalar {
  enum Kind { Null, Bool, Negative, Unsigned, Float, String } kind = Null;
  bool b = false;
  std::uint64_t u = 0;
  std::string text;  // the number as written, or the string's value

  // "the integer 3", "the string 'F32'", ... (containers are "an object" / "an array").
  std::string describe() const {
    switch (kind) {
      case Null:
        return "null";
      case Bool:
        return b ? "true" : "false";
      case Negative:
        return "the negative integer " + text;
      case Unsigned:
        return "the integer " + text;
      case Float:
        return text.find_first_of(".eE") == std::string::npos
                   ? "the number " + text + ", too large for 64 bits"
                   : "the non-integer number " + text;
      case String:
        return "the string " + quote_name(text);
    }
    return "a JSON value";
  }
};

// Builds a SafetensorsHeader from nlohmann's SAX events, in one pass and without a JSON tree:
// memory stays proportional to the tensors described, duplicate keys are seen (nlohmann's tree
// would keep only the last), and nesting is bounded. Fields of an entry other than dtype, shape
// and data_offsets are skipped. Every problem throws IoError through `fail`.
class SafetensorsHeaderSax final : public nlohmann::json_sax<nlohmann::json> {
 public:
  SafetensorsHeaderSax(const SafetensorsFail& fail, std::uint64_t data_size)
      : fail_(fail), data_size_(data_size) {}

  SafetensorsHeader take() {
    if (!done_) fail_("the header is not a complete JSON object");
    return std::move(out_);
  }

  bool null() override { return scalar({}); }
  bool boolean(bool v) override { return scalar({JsonScalar::Bool, v, 0, {}}); }
  bool number_integer(number_integer_t v) override {
    // nlohmann reports non-negative integers as number_unsigned; this one is negative.
    return scalar({JsonScalar::Negative, false, 0, std::to_string(v)});
  }
  bool number_unsigned(number_unsigned_t v) override {
    return scalar({JsonScalar::Unsigned, false, v, std::to_string(v)});
  }
  bool number_float(number_float_t, const string_t& s) override {
    return scalar({JsonScalar::Float, false, 0, s});
  }
  bool string(string_t& s) override { return scalar({JsonScalar::String, false, 0, s}); }
  bool binary(binary_t&) override { fail_("the header holds binary data, expected JSON text"); }

  bool start_object(std::size_t) override { return open(true); }
  bool start_array(std::size_t) override { return open(false); }
  bool key(string_t& k) override {
    Frame& f = stack_.back();
    if (!f.keys.insert(k).second) {
      if (f.ctx == Ctx::Top && k == "__metadata__")
        fail_("the header holds \"__metadata__\" twice");
      if (f.ctx == Ctx::Top) fail_("the header lists tensor ", quote_name(k), " twice");
      fail_("key ", quote_name(k), " appears twice in the same JSON object (in the header entry ",
            "of ", quote_name(top_key_), ")");
    }
    if (f.ctx == Ctx::Top) top_key_ = k;
    f.key = std::move(k);
    return true;
  }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& e) override {
    fail_("the header is not valid JSON: ", printable(e.what()));
  }

 private:
  // What the innermost open container is: the header itself, "__metadata__", a tensor's
  // entry, its "shape" or "data_offsets", or a value being skipped.
  enum class Ctx { Top, Metadata, Entry, Shape, Offsets, Skip };
  struct Frame {
    Ctx ctx;
    bool object;
    std::set<std::string> keys;  // objects: keys seen so far
    std::string key;             // objects: the key whose value comes next
    std::size_t count = 0;       // arrays: elements so far
  };
  // A tensor's entry being read.
  struct Pending {
    std::optional<DType> dtype;
    std::optional<std::vector<Index>> shape;
    std::optional<std::pair<std::uint64_t, std::uint64_t>> offsets;
  };

  std::string tensor() const { return "tensor " + quote_name(top_key_); }

  bool scalar(const JsonScalar& v) {
    if (stack_.empty()) fail_("the header is ", v.describe(), ", expected a JSON object");
    Frame& f = stack_.back();
    switch (f.ctx) {
      case Ctx::Top:
        // "__metadata__": null (MLX writes it) is no metadata, as the reference reader's
        // Option<HashMap<String, String>> reads it.
        if (f.key == "__metadata__" && v.kind == JsonScalar::Null) return true;
        if (f.key == "__metadata__")
          fail_("\"__metadata__\" is ", v.describe(), ", expected an object of strings");
        fail_(tensor(), ": the header entry is ", v.describe(),
              ", expected an object with \"dtype\", \"shape\" and \"data_offsets\"");
      case Ctx::Metadata:
        if (v.kind != JsonScalar::String)
          fail_("\"__metadata__\" entry ", quote_name(f.key), " is ", v.describe(),
                ", expected a string");
        out_.metadata.emplace(f.key, v.text);
        return true;
      case Ctx::Entry:
        if (f.key == "dtype") {
          if (v.kind != JsonScalar::String)
            fail_(tensor(), ": \"dtype\" is ", v.describe(), ", expected a string");
          const auto d = dtype_from_name(v.text);
          if (!d && is_unsupported_safetensors_dtype(v.text))
            fail_(tensor(), ": dtype ", quote_name(v.text),
                  " is a safetensors dtype that tessera does not read; it reads ", dtype_list());
          if (!d)
            fail_(tensor(), ": unknown dtype ", quote_name(v.text), ", expected one of ",
                  dtype_list());
          pending_.dtype = *d;
        } else if (f.key == "shape") {
          fail_(tensor(), ": \"shape\" is ", v.describe(), ", expected an array");
        } else if (f.key == "data_offsets") {
          fail_(tensor(), ": \"data_offsets\" is ", v.describe(),
                ", expected two non-negative integers [begin, end]");
        }
        return true;  // another field: ignored
      case Ctx::Shape:
        if (v.kind != JsonScalar::Unsigned)
          fail_(tensor(), ": shape entry ", f.count, " is ", v.describe(),
                ", expected a non-negative integer");
        if (v.u > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()))
          fail_(tensor(), ": shape entry ", f.count, " is ", v.u, ", too large for a dimension");
        pending_.shape->push_back(static_cast<Index>(v.u));
        ++f.count;
        return true;
      case Ctx::Offsets:
        if (f.count >= 2)
          fail_(tensor(), ": \"data_offsets\" has more than two elements, expected [begin, end]");
        if (v.kind != JsonScalar::Unsigned)
          fail_(tensor(), ": data_offsets[", f.count, "] is ", v.describe(),
                ", expected a non-negative integer");
        (f.count == 0 ? pending_.offsets->first : pending_.offsets->second) = v.u;
        ++f.count;
        return true;
      case Ctx::Skip:
        return true;
    }
    return true;
  }

  bool open(bool object) {
    const char* what = object ? "an object" : "an array";
    if (stack_.size() >= kSafetensorsMaxJsonDepth)
      fail_("the header nests JSON objects and arrays deeper than ", kSafetensorsMaxJsonDepth,
            " levels");
    Ctx ctx = Ctx::Skip;
    if (stack_.empty()) {
      if (done_) fail_("the header holds more than one JSON value");
      if (!object) fail_("the header is an array, expected a JSON object");
      ctx = Ctx::Top;
    } else {
      Frame& f = stack_.back();
      switch (f.ctx) {
        case Ctx::Top:
          if (f.key == "__metadata__") {
            if (!object) fail_("\"__metadata__\" is an array, expected an object of strings");
            ctx = Ctx::Metadata;
          } else {
            if (!object)
              fail_(tensor(), ": the header entry is an array, expected an object with ",
                    "\"dtype\", \"shape\" and \"data_offsets\"");
            ctx = Ctx::Entry;
            pending_ = Pending{};
          }
          break;
        case Ctx::Metadata:
          fail_("\"__metadata__\" entry ", quote_name(f.key), " is ", what, ", expected a string");
        case Ctx::Entry:
          if (f.key == "dtype") fail_(tensor(), ": \"dtype\" is ", what, ", expected a string");
          if (f.key == "shape") {
            if (object) fail_(tensor(), ": \"shape\" is an object, expected an array");
            ctx = Ctx::Shape;
            pending_.shape.emplace();
          } else if (f.key == "data_offsets") {
            if (object)
              fail_(tensor(), ": \"data_offsets\" is an object, expected two non-negative ",
                    "integers [begin, end]");
            ctx = Ctx::Offsets;
            pending_.offsets.emplace();
          }
          break;
        case Ctx::Shape:
          fail_(tensor(), ": shape entry ", f.count, " is ", what,
                ", expected a non-negative integer");
        case Ctx::Offsets:
          fail_(tensor(), ": data_offsets[", f.count, "] is ", what,
                ", expected a non-negative integer");
        case Ctx::Skip:
          break;
      }
    }
    stack_.push_back(Frame{ctx, object, {}, {}, 0});
    return true;
  }

  bool close() {
    const Frame& f = stack_.back();
    if (f.ctx == Ctx::Offsets && f.count != 2)
      fail_(tensor(), ": \"data_offsets\" has ", f.count, f.count == 1 ? " element" : " elements",
            ", expected two: [begin, end]");
    if (f.ctx == Ctx::Entry) finish_entry();
    if (f.ctx == Ctx::Top) done_ = true;
    stack_.pop_back();
    return true;
  }

  // Checks a complete entry against itself and the data region, and records it.
  void finish_entry() {
    const std::string t = tensor();
    if (!pending_.dtype) fail_(t, ": the header entry has no \"dtype\"");
    if (!pending_.shape) fail_(t, ": the header entry has no \"shape\"");
    if (!pending_.offsets) fail_(t, ": the header entry has no \"data_offsets\"");
    SafetensorsEntry e{top_key_, *pending_.dtype, std::move(*pending_.shape),
                       pending_.offsets->first, pending_.offsets->second};
    const auto numel = checked_numel(e.shape);
    if (!numel) fail_(t, ": shape ", shape_string(e.shape), " has more elements than fit in int64");
    const auto nbytes = checked_nbytes(*numel, e.dtype);
    if (!nbytes)
      fail_(t, ": shape ", shape_string(e.shape), " of ", dtype_name(e.dtype),
            " elements has more bytes than fit in int64");
    if (e.begin > e.end) fail_(t, ": data_offsets [", e.begin, ", ", e.end, "] has begin > end");
    if (e.end > data_size_)
      fail_(t, ": data_offsets [", e.begin, ", ", e.end, "] ends beyond the data region of ",
            data_size_, " bytes");
    if (e.end - e.begin != static_cast<std::uint64_t>(*nbytes))
      fail_(t, ": data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
            " bytes, expected ", *nbytes, " (shape ", shape_string(e.shape), ", ", *numel, " x ",
            dtype_size(e.dtype), " bytes of ", dtype_name(e.dtype), ")");
    out_.entries.push_back(std::move(e));
  }

  const SafetensorsFail& fail_;
  std::uint64_t data_size_;
  std::vector<Frame> stack_;
  std::string top_key_;  // the top-level key whose value is being read
  Pending pending_;
  bool done_ = false;
  SafetensorsHeader out_;
};

// Parses and validates the header of a file whose data region is `data_size` bytes.
inline SafetensorsHeader parse_safetensors_header(const SafetensorsFail& fail,
                                                  std::span<const std::byte> header,
                                                  std::uint64_t data_size) {
  // nlohmann stops at a NUL byte as at the end of the input; JSON text never holds one.
  if (const void* nul = header.empty() ? nullptr : std::memchr(header.data(), 0, header.size()))
    fail("the header holds a NUL byte at offset ",
         static_cast<const std::byte*>(nul) - header.data(), ", so it is not valid JSON");
  SafetensorsHeaderSax sax(fail, data_size);
  const char* first = reinterpret_cast<const char*>(header.data());
  try {
    nlohmann::json::sax_parse(first, first + header.size(), &sax,
                              nlohmann::json::input_format_t::json, /*strict=*/true,
                              /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    fail("the header is not valid JSON: ", printable(e.what()));
  } catch (const std::bad_alloc&) {
    fail("the header (", header.size(), " bytes) is too large to parse in the available memory");
  }
  SafetensorsHeader h = sax.take();
  // The format: "the header data MUST begin with a { character"; JSON whitespace may pad it at
  // the end (the writer pads with spaces), never at the start.
  if (header.empty() || header[0] != std::byte{'{'})
    fail("the header starts with byte 0x", hex_byte(header[0]),
         ", expected '{' (a safetensors header begins with its JSON object; only trailing ",
         "padding is allowed)");

  // The tensors must tile the data region exactly: no overlap, no hole, nothing left over.
  std::sort(h.entries.begin(), h.entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  std::uint64_t pos = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const auto& e : h.entries) {
    if (e.begin < pos)
      fail("the byte ranges of tensor ", quote_name(prev->name), " [", prev->begin, ", ", prev->end,
           ") and tensor ", quote_name(e.name), " [", e.begin, ", ", e.end, ") overlap");
    if (e.begin > pos)
      fail("bytes [", pos, ", ", e.begin,
           ") of the data region are not covered by any tensor (a hole before tensor ",
           quote_name(e.name), ")");
    pos = e.end;
    prev = &e;
  }
  if (pos != data_size)
    fail("bytes [", pos, ", ", data_size, ") at the end of the data region are not covered by ",
         "any tensor (the header describes ", pos, " bytes of tensor data, the file holds ",
         data_size, ")");
  return h;
}

// Builds the StateDict; `read(entry, dst)` fills entry.end - entry.begin bytes at dst. Entries
// come in file order.
template <class Read>
StateDict assemble_state_dict(SafetensorsHeader&& h, Read&& read) {
  StateDict sd;
  sd.metadata = std::move(h.metadata);
  for (auto& e : h.entries) {
    StoredTensor t;
    t.dtype = e.dtype;
    t.shape = std::move(e.shape);
    t.bytes.resize(static_cast<std::size_t>(e.end - e.begin));
    read(e, t.bytes.data());
    sd.insert(std::move(e.name), std::move(t));
  }
  return sd;
}

// The padded header JSON for `sd`; tensors laid out in name order. Built by hand (with
// nlohmann only escaping strings) so it is linear in the number of tensors.
inline std::string safetensors_header_json(std::string_view fn, const StateDict& sd,
                                           std::uint64_t& data_size) {
  auto str = [&](const std::string& s) {
    try {
      return nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception&) {
      raise<ValueError>(fn, "the string ", printable(quote_name(s)),
                        " (a tensor name or metadata entry; bytes outside printable ASCII shown "
                        "as '?') is not valid UTF-8");
    }
  };
  std::string out = "{";
  if (!sd.metadata.empty()) {
    out += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : sd.metadata) {
      if (!first) out += ',';
      first = false;
      out += str(k) + ':' + str(v);
    }
    out += '}';
  }
  std::uint64_t offset = 0;
  for (const auto& [name, t] : sd) {
    t.check(fn);
    if (out.size() > 1) out += ',';
    out += str(name);
    out += ":{\"dtype\":\"";
    out += dtype_name(t.dtype);
    out += "\",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i)
      out += (i ? "," : "") + std::to_string(t.shape[i]);
    const std::uint64_t n = t.bytes.size();
    if (n > std::numeric_limits<std::uint64_t>::max() - offset)
      raise<ValueError>(fn, "the tensors hold more bytes than a file can");
    out +=
        "],\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + n) + "]}";
    offset += n;
  }
  out += '}';
  out.append((8 - out.size() % 8) % 8, ' ');
  data_size = offset;
  return out;
}

// A regular file opened for reading, or an IoError through `fail`. On POSIX systems the file
// is opened without blocking (O_NONBLOCK: opening a FIFO with no writer would wait forever)
// and checked with fstat on the open descriptor, so what is checked is what is read.
class RegularFile {
 public:
  RegularFile(const std::filesystem::path& path, const SafetensorsFail& fail) : fail_(fail) {
#if TESSERA_IO_POSIX
    do {
      fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) {
      const int err = errno;
      if (err == ENOENT) fail_("no such file");
      fail_("cannot open it for reading: ", std::generic_category().message(err));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0)
      fail_("cannot determine its size: ", std::generic_category().message(errno));
    if (!S_ISREG(st.st_mode)) fail_("it is ", kind(st.st_mode), ", expected a regular file");
    if (st.st_size < 0) fail_("cannot determine its size");
    size_ = static_cast<std::uint64_t>(st.st_size);
    // Reads of a regular file never return EAGAIN; blocking mode back for clarity.
    const int flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0) ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
#else
    std::error_code ec;
    const auto st = std::filesystem::status(path, ec);
    if (st.type() == std::filesystem::file_type::not_found) fail_("no such file");
    if (ec) fail_("cannot access it: ", ec.message());
    if (std::filesystem::is_directory(st)) fail_("it is a directory, expected a regular file");
    if (!std::filesystem::is_regular_file(st)) fail_("it is not a regular file");
    in_.open(path, std::ios::binary);
    if (!in_) fail_("cannot open it for reading: ", std::generic_category().message(errno));
    in_.seekg(0, std::ios::end);
    const std::streamoff size = in_.tellg();
    in_.seekg(0, std::ios::beg);
    if (size < 0 || !in_) fail_("cannot determine its size");
    size_ = static_cast<std::uint64_t>(size);
#endif
  }
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile() {
#if TESSERA_IO_POSIX
    if (fd_ >= 0) ::close(fd_);
#endif
  }

  std::uint64_t size() const noexcept { return size_; }

  // Reads exactly `count` bytes into dst, or fails naming `what`.
  void read(std::byte* dst, std::uint64_t count, const std::string& what) {
    std::uint64_t done = 0;
#if TESSERA_IO_POSIX
    while (done < count) {
      const std::uint64_t chunk = std::min<std::uint64_t>(count - done, std::uint64_t{1} << 30);
      const ssize_t got = ::read(fd_, dst + done, static_cast<std::size_t>(chunk));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0)
        fail_("reading ", what, " failed after ", done, " of ", count,
              " bytes: ", std::generic_category().message(errno));
      if (got == 0) break;
      done += static_cast<std::uint64_t>(got);
    }
#else
    if (count > 0) {
      in_.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(count));
      done = static_cast<std::uint64_t>(in_.gcount());
    }
#endif
    if (done != count)
      fail_("reading ", what, " failed after ", done, " of ", count,
            " bytes (was the file changed while being read?)");
  }

 private:
#if TESSERA_IO_POSIX
  static const char* kind(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    return "not a regular file";
  }
  int fd_ = -1;
#else
  std::ifstream in_;
#endif
  const SafetensorsFail& fail_;
  std::uint64_t size_ = 0;
};

}  // namespace detail

TESSERA_BEGIN_MODE_NAMESPACE

// parse_safetensors (io/safetensors.hpp).
TESSERA_JSON_FUNCTION StateDict parse_safetensors(std::span<const std::byte> file) {
  const detail::SafetensorsFail fail{"tessera::io::parse_safetensors", ""};
  const std::uint64_t n = detail::safetensors_header_length(fail, file, file.size());
  const auto data = file.subspan(static_cast<std::size_t>(8 + n));
  auto header = detail::parse_safetensors_header(fail, file.subspan(8, static_cast<std::size_t>(n)),
                                                 data.size());
  return detail::assemble_state_dict(std::move(header),
                                     [&](const detail::SafetensorsEntry& e, std::byte* dst) {
                                       if (e.end > e.begin)
                                         std::memcpy(dst, data.data() + e.begin, e.end - e.begin);
                                     });
}

// load_safetensors (io/safetensors.hpp).
TESSERA_JSON_FUNCTION StateDict load_safetensors(const std::filesystem::path& path) {
  const detail::SafetensorsFail fail{"tessera::io::load_safetensors",
                                     "file '" + path.string() + "': "};
  detail::RegularFile in(path, fail);
  const std::uint64_t file_size = in.size();
  auto read = [&](std::byte* dst, std::uint64_t count, const std::string& what) {
    in.read(dst, count, what);
  };
  std::byte prefix[8] = {};
  read(prefix, std::min<std::uint64_t>(8, file_size), "the header length");
  const std::uint64_t n = detail::safetensors_header_length(fail, prefix, file_size);
  std::vector<std::byte> header(static_cast<std::size_t>(n));
  read(header.data(), n, "the header");
  auto parsed = detail::parse_safetensors_header(fail, header, file_size - 8 - n);
  header = {};
  // The entries tile the data region in order, so the tensors are read front to back.
  return detail::assemble_state_dict(
      std::move(parsed), [&](const detail::SafetensorsEntry& e, std::byte* dst) {
        read(dst, e.end - e.begin, "tensor " + detail::quote_name(e.name));
      });
}

// serialize_safetensors (io/safetensors.hpp).
TESSERA_JSON_FUNCTION std::vector<std::byte> serialize_safetensors(const StateDict& sd) {
  constexpr std::string_view fn = "tessera::io::serialize_safetensors";
  std::uint64_t data_size = 0;
  const std::string header = detail::safetensors_header_json(fn, sd, data_size);
  std::vector<std::byte> out;
  out.reserve(8 + header.size() + static_cast<std::size_t>(data_size));
  out.resize(8);
  detail::store_le<std::uint64_t>(out.data(), header.size());
  const auto* h = reinterpret_cast<const std::byte*>(header.data());
  out.insert(out.end(), h, h + header.size());
  for (const auto& kv : sd) out.insert(out.end(), kv.second.bytes.begin(), kv.second.bytes.end());
  return out;
}

// save_safetensors (io/safetensors.hpp).
TESSERA_JSON_FUNCTION void save_safetensors(const std::filesystem::path& path,
                                            const StateDict& sd) {
  const detail::SafetensorsFail fail{"tessera::io::save_safetensors",
                                     "file '" + path.string() + "': "};
  std::uint64_t data_size = 0;
  const std::string header =
      detail::safetensors_header_json("tessera::io::save_safetensors", sd, data_size);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot open it for writing: ", std::generic_category().message(errno));
  std::byte prefix[8];
  detail::store_le<std::uint64_t>(prefix, header.size());
  out.write(reinterpret_cast<const char*>(prefix), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& kv : sd)
    out.write(reinterpret_cast<const char*>(kv.second.bytes.data()),
              static_cast<std::streamsize>(kv.second.bytes.size()));
  out.close();
  if (!out) fail("writing failed (disk full?)");
}

TESSERA_END_MODE_NAMESPACE

}  // namespace tessera::io
