// tessera: named tensors as a model file stores them: DType, StoredTensor and StateDict.
//
// A StoredTensor keeps a tensor's bytes exactly as a file holds them (little-endian, row-major)
// together with its dtype and shape, whatever the dtype; conversion to a C++ scalar type happens
// when the tensor is read out. A StateDict maps names to StoredTensors, in name order, plus string
// metadata:
//
//   tessera::io::StateDict sd;
//   sd.insert("proj.weight", w);                      // Tensor<float, 2> -> F32
//   auto w2 = sd.get<float, 2>("proj.weight");        // any stored dtype -> float
//   auto v = sd.at("proj.bias").values<double>();     // flat, converted
//
// Nothing here needs a JSON parser; the safetensors reader and writer are in safetensors.hpp.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::io {

// Element types of a stored tensor, with the safetensors names ("F32", ...).
enum class DType { BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64 };

inline constexpr std::array<DType, 10> kAllDTypes = {
    DType::BOOL, DType::U8,  DType::I8,   DType::I16, DType::I32,
    DType::I64,  DType::F16, DType::BF16, DType::F32, DType::F64};

namespace detail {

using tessera::detail::raise;
using tessera::detail::shape_string;

// A name for a message: quoted and, if very long, cut (at a UTF-8 character boundary), so a
// megabyte-long key never makes a megabyte-long message.
inline std::string quote_name(std::string_view s) {
  constexpr std::size_t kMax = 120;
  if (s.size() <= kMax) return "'" + std::string(s) + "'";
  std::size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0u) == 0x80u) --cut;
  return "'" + std::string(s.substr(0, cut)) + "...' (" + std::to_string(s.size()) + " bytes)";
}

// "'a', 'b', ... (N in all)": names quoted and cut as quote_name does, at most
// tessera::detail::kMaxListedItems of them.
template <class Names>
std::string name_list(const Names& names) {
  std::vector<std::string> shown;
  std::size_t n = 0;
  for (const auto& name : names)
    if (n++ < tessera::detail::kMaxListedItems) shown.push_back(quote_name(name));
  std::string out = tessera::detail::capped_list(shown, shown.size(), "");
  if (n > shown.size()) out += ", ... (" + std::to_string(n) + " in all)";
  return out;
}

inline std::optional<std::string_view> dtype_name_or_none(DType d) noexcept {
  switch (d) {
    case DType::BOOL:
      return "BOOL";
    case DType::U8:
      return "U8";
    case DType::I8:
      return "I8";
    case DType::I16:
      return "I16";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
  }
  return std::nullopt;
}

inline std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (DType d : kAllDTypes)
    if (dtype_name_or_none(d) == name) return d;
  return std::nullopt;
}

// The safetensors dtypes that tessera does not read (unsigned wider than a byte, 8-, 6- and
// 4-bit floats, complex), so a message can say "not supported" rather than "unknown".
inline bool is_unsupported_safetensors_dtype(std::string_view name) noexcept {
  for (std::string_view d :
       {"U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"})
    if (d == name) return true;
  return false;
}

// "BOOL, U8, ..., F64", for messages.
inline std::string dtype_list() {
  std::string s;
  for (DType d : kAllDTypes) {
    if (!s.empty()) s += ", ";
    s += *dtype_name_or_none(d);
  }
  return s;
}

[[noreturn]] inline void bad_dtype(std::string_view fn, DType d) {
  raise<ValueError>(fn, "argument 'dtype' is ", static_cast<int>(d),
                    ", not a tessera::io::DType value");
}

}  // namespace detail

// "F32", "BF16", ... Throws ValueError for a value outside the enum.
inline std::string_view dtype_name(DType d) {
  if (auto n = detail::dtype_name_or_none(d)) return *n;
  detail::bad_dtype("tessera::io::dtype_name", d);
}

// Bytes per element.
inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
      return 1;
    case DType::I16:
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::I32:
    case DType::F32:
      return 4;
    case DType::I64:
    case DType::F64:
      return 8;
  }
  detail::bad_dtype("tessera::io::dtype_size", d);
}

// The DType named `name` (exact, case-sensitive: "F32"). Throws IoError naming an unknown name.
inline DType parse_dtype(std::string_view name) {
  if (auto d = detail::dtype_from_name(name)) return *d;
  detail::raise<IoError>("tessera::io::parse_dtype", "unknown dtype ", detail::quote_name(name),
                         ", expected one of ", detail::dtype_list());
}

// IEEE binary16 and bfloat16 bit patterns to float. Both are exact: every half and bfloat16
// value (subnormals, infinities, NaN payloads included) is a float.
inline float f16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // infinity, or NaN with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);  // normal: rebias the exponent
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal: mant * 2^-24. With its leading one at bit p (0..9) that is 1.f * 2^(p - 24),
    // a normal float.
    const int p = 31 - std::countl_zero(mant);
    bits =
        sign | (static_cast<std::uint32_t>(p - 24 + 127) << 23) | ((mant << (23 - p)) & 0x7fffffu);
  }
  return std::bit_cast<float>(bits);
}

inline float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

namespace detail {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
              "tessera::io needs a little- or big-endian host");

// Unsigned integers as little-endian bytes, whatever the host's byte order. `p` need not be
// aligned.
template <class U>
U load_le(const std::byte* p) noexcept {
  static_assert(std::is_unsigned_v<U>);
  U v;
  std::memcpy(&v, p, sizeof(U));
  if constexpr (std::endian::native == std::endian::big && sizeof(U) > 1) {
    U r = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) {
      r = static_cast<U>((r << 8) | (v & 0xffu));
      v = static_cast<U>(v >> 8);
    }
    v = r;
  }
  return v;
}
template <class U>
void store_le(std::byte* p, U v) noexcept {
  static_assert(std::is_unsigned_v<U>);
  for (std::size_t i = 0; i < sizeof(U); ++i) {
    p[i] = static_cast<std::byte>(v & 0xffu);
    if constexpr (sizeof(U) > 1) v = static_cast<U>(v >> 8);
  }
}

// Per dtype: `Bits`, the unsigned integer an element is stored as; `Value`, the C++ type it
// decodes to; `decode`; and for the dtypes a StoredTensor is built from, `encode`.
template <DType D>
struct DTypeTraits;

template <class B, class V>
struct BitCastTraits {
  using Bits = B;
  using Value = V;
  static Value decode(Bits b) noexcept { return std::bit_cast<Value>(b); }
  static Bits encode(Value v) noexcept { return std::bit_cast<Bits>(v); }
  static constexpr bool raw = true;  // the bytes are the Value's own little-endian representation
};
template <>
struct DTypeTraits<DType::BOOL> {
  using Bits = std::uint8_t;
  using Value = bool;
  static bool decode(Bits b) noexcept { return b != 0; }
  static Bits encode(bool v) noexcept { return v ? 1 : 0; }
  static constexpr bool raw = false;  // any non-zero byte is true
};
template <>
struct DTypeTraits<DType::U8> : BitCastTraits<std::uint8_t, std::uint8_t> {};
template <>
struct DTypeTraits<DType::I8> : BitCastTraits<std::uint8_t, std::int8_t> {};
template <>
struct DTypeTraits<DType::I16> : BitCastTraits<std::uint16_t, std::int16_t> {};
template <>
struct DTypeTraits<DType::I32> : BitCastTraits<std::uint32_t, std::int32_t> {};
template <>
struct DTypeTraits<DType::I64> : BitCastTraits<std::uint64_t, std::int64_t> {};
template <>
struct DTypeTraits<DType::F16> {
  using Bits = std::uint16_t;
  using Value = float;
  static float decode(Bits b) noexcept { return f16_to_float(b); }
  static constexpr bool raw = false;
};
template <>
struct DTypeTraits<DType::BF16> {
  using Bits = std::uint16_t;
  using Value = float;
  static float decode(Bits b) noexcept { return bf16_to_float(b); }
  static constexpr bool raw = false;
};
template <>
struct DTypeTraits<DType::F32> : BitCastTraits<std::uint32_t, float> {};
template <>
struct DTypeTraits<DType::F64> : BitCastTraits<std::uint64_t, double> {};

// Calls f(std::integral_constant<DType, d>{}) for the runtime value d.
template <class F>
void visit_dtype(std::string_view fn, DType d, F&& f) {
  using enum DType;
  switch (d) {
    case BOOL:
      return f(std::integral_constant<DType, BOOL>{});
    case U8:
      return f(std::integral_constant<DType, U8>{});
    case I8:
      return f(std::integral_constant<DType, I8>{});
    case I16:
      return f(std::integral_constant<DType, I16>{});
    case I32:
      return f(std::integral_constant<DType, I32>{});
    case I64:
      return f(std::integral_constant<DType, I64>{});
    case F16:
      return f(std::integral_constant<DType, F16>{});
    case BF16:
      return f(std::integral_constant<DType, BF16>{});
    case F32:
      return f(std::integral_constant<DType, F32>{});
    case F64:
      return f(std::integral_constant<DType, F64>{});
  }
  bad_dtype(fn, d);
}

// The dtype a tensor of scalar type T is stored as.
template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::F32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::F64;
  else if constexpr (std::is_same_v<T, bool>)
    return DType::BOOL;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DType::I64;
  else
    static_assert(sizeof(T) == 0, "tessera::io stores float, double, bool and int64 tensors");
}

// Element count of `shape`, or nullopt when a dimension is negative or the product of the
// non-zero dimensions overflows Index (so no partial product of the shape can overflow either).
inline std::optional<Index> checked_numel(std::span<const Index> shape) noexcept {
  Index n = 1;
  bool zero = false;
  for (Index d : shape) {
    if (d < 0) return std::nullopt;
    if (d == 0) {
      zero = true;
    } else {
      if (n > std::numeric_limits<Index>::max() / d) return std::nullopt;
      n *= d;
    }
  }
  return zero ? 0 : n;
}

// Byte count of `numel` elements of `d`, or nullopt when it overflows Index.
inline std::optional<Index> checked_nbytes(Index numel, DType d) noexcept {
  if (!dtype_name_or_none(d)) return std::nullopt;
  const auto size = static_cast<Index>(dtype_size(d));
  if (numel > std::numeric_limits<Index>::max() / size) return std::nullopt;
  return numel * size;
}

// One element converted to To. Conversions to bool compare with zero; to floating types are by
// value (rounding as static_cast does); to integer types truncate toward zero and throw
// ValueError when the value has no representation in To (NaN, infinity, out of range).
template <class To, class From>
To convert_element(From v, Index i, DType src, std::string_view fn, std::string_view what) {
  if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_floating_point_v<To> || std::is_same_v<From, bool>) {
    return static_cast<To>(v);
  } else if constexpr (std::is_integral_v<From>) {
    if (!std::in_range<To>(v))
      raise<ValueError>(fn, what, "element ", i, " of the ", dtype_name(src), " tensor is ", +v,
                        ", out of range of the target type");
    return static_cast<To>(v);
  } else {
    // Integral To in [lo, hi): both bounds are powers of two, exact in double.
    constexpr int digits = std::numeric_limits<To>::digits;
    const double lo = std::is_signed_v<To> ? -std::ldexp(1.0, digits) : 0.0;
    const double hi = std::ldexp(1.0, digits);
    const double t = std::trunc(static_cast<double>(v));
    if (!(t >= lo && t < hi))
      raise<ValueError>(fn, what, "element ", i, " of the ", dtype_name(src), " tensor is ", v,
                        ", which has no value in the integer target type");
    return static_cast<To>(t);
  }
}

}  // namespace detail

// One tensor as a file stores it: dtype, shape and the raw little-endian row-major bytes.
// Invariant (checked by StateDict::insert and by every reader): the shape is non-negative and
// bytes.size() == numel() * dtype_size(dtype).
struct StoredTensor {
  DType dtype = DType::F32;
  std::vector<Index> shape;
  std::vector<std::byte> bytes;

  // Product of the shape (1 for rank 0). Throws ValueError for a negative or overflowing shape.
  Index numel() const {
    if (auto n = detail::checked_numel(shape)) return *n;
    detail::raise<ValueError>("tessera::io::StoredTensor::numel", "shape ",
                              detail::shape_string(shape),
                              " has a negative dimension or overflows the index type");
  }

  // Throws ValueError (naming `fn`) unless the invariant above holds.
  void check(std::string_view fn) const {
    const auto n = detail::checked_numel(shape);
    if (!n)
      detail::raise<ValueError>(fn, "tensor shape ", detail::shape_string(shape),
                                " has a negative dimension or overflows the index type");
    if (!detail::dtype_name_or_none(dtype)) detail::bad_dtype(fn, dtype);
    const auto nbytes = detail::checked_nbytes(*n, dtype);
    if (!nbytes || static_cast<std::size_t>(*nbytes) != bytes.size())
      detail::raise<ValueError>(fn, "tensor of dtype ", dtype_name(dtype), " and shape ",
                                detail::shape_string(shape), " holds ", bytes.size(),
                                " bytes, expected ", *n, " x ", dtype_size(dtype));
  }

  // Writes numel() elements converted to T into out[0, numel()). See detail::convert_element
  // for the conversions; F16 and BF16 go through float exactly. `out` needs no alignment beyond
  // T's own; the bytes are read with memcpy, never through a cast pointer.
  template <class T>
  void copy_to(T* out) const {
    copy_to(out, "tessera::io::StoredTensor::copy_to", "");
  }
  // The same, with errors naming `fn` (the entry point the user called) and starting with
  // `what` (e.g. "tensor 'w': ").
  template <class T>
  void copy_to(T* out, std::string_view fn, std::string_view what) const {
    static_assert(std::is_arithmetic_v<T> && !std::is_const_v<T>,
                  "StoredTensor::copy_to writes arithmetic scalars");
    check(fn);
    detail::visit_dtype(fn, dtype, [&](auto dc) {
      using Tr = detail::DTypeTraits<decltype(dc)::value>;
      using Bits = typename Tr::Bits;
      if constexpr (Tr::raw && std::is_same_v<typename Tr::Value, T> &&
                    std::endian::native == std::endian::little) {
        if (!bytes.empty()) std::memcpy(out, bytes.data(), bytes.size());
      } else {
        const Index n = static_cast<Index>(bytes.size() / sizeof(Bits));
        const std::byte* p = bytes.data();
        for (Index i = 0; i < n; ++i)
          out[i] = detail::convert_element<T>(
              Tr::decode(detail::load_le<Bits>(p + i * Index{sizeof(Bits)})), i, dtype, fn, what);
      }
    });
  }

  // Every element converted to T, in row-major order.
  template <class T>
  std::vector<T> values() const {
    const auto n = static_cast<std::size_t>(numel());
    if constexpr (std::is_same_v<T, bool>) {  // std::vector<bool> has no data()
      const auto tmp = std::make_unique<bool[]>(n);
      copy_to(tmp.get());
      return std::vector<bool>(tmp.get(), tmp.get() + n);
    } else {
      std::vector<T> out(n);
      copy_to(out.data());
      return out;
    }
  }

  // The tensor's elements as float -> F32, double -> F64, bool -> BOOL, int64 -> I64.
  template <TensorLike X>
  static StoredTensor from(const X& t) {
    using T = scalar_t<X>;
    constexpr DType D = detail::dtype_of<T>();
    using Tr = detail::DTypeTraits<D>;
    StoredTensor s;
    s.dtype = D;
    s.shape.assign(t.shape().begin(), t.shape().end());
    const Index n = s.numel();
    s.bytes.resize(static_cast<std::size_t>(tessera::detail::checked_mul(
        n, Index{sizeof(typename Tr::Bits)}, "tessera::io::StoredTensor::from", "the tensor")));
    const T* src = t.data();
    if constexpr (std::endian::native == std::endian::little && !std::is_same_v<T, bool>) {
      if (n) std::memcpy(s.bytes.data(), src, s.bytes.size());
    } else {
      for (Index i = 0; i < n; ++i)
        detail::store_le(s.bytes.data() + i * Index{sizeof(typename Tr::Bits)}, Tr::encode(src[i]));
    }
    return s;
  }
};

// Named stored tensors in name order, plus free-form string metadata (safetensors'
// "__metadata__"). Names are unique; "__metadata__" is reserved and cannot name a tensor.
class StateDict {
 public:
  using map_type = std::map<std::string, StoredTensor, std::less<>>;
  using const_iterator = map_type::const_iterator;

  std::map<std::string, std::string> metadata;

  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  // The tensor named `name`, or null.
  const StoredTensor* find(std::string_view name) const {
    const auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  // The tensor named `name`; throws ValueError naming the missing key.
  const StoredTensor& at(std::string_view name) const {
    return lookup("tessera::io::StateDict::at", name);
  }

  // Adds a copy of `t` (float -> F32, double -> F64, bool -> BOOL, int64 -> I64). Throws
  // ValueError if `name` is already present or is "__metadata__".
  template <TensorLike X>
  void insert(std::string name, const X& t) {
    insert(std::move(name), StoredTensor::from(t));
  }
  // Adds `t` as is, after checking that its bytes match its dtype and shape (ValueError).
  void insert(std::string name, StoredTensor t) {
    constexpr std::string_view fn = "tessera::io::StateDict::insert";
    if (name == "__metadata__")
      detail::raise<ValueError>(fn, "the name '__metadata__' is reserved for metadata");
    t.check(fn);
    const auto [it, added] = tensors_.try_emplace(std::move(name), std::move(t));
    if (!added)
      detail::raise<ValueError>(fn, "a tensor named ", detail::quote_name(it->first),
                                " is already present");
  }
  // Removes the tensor named `name`; false when there is none.
  bool erase(std::string_view name) {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) return false;
    tensors_.erase(it);
    return true;
  }

  // Removes the tensor named `name` and returns it; its bytes move, never copied. nullopt when
  // there is none.
  std::optional<StoredTensor> take(std::string_view name) {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) return std::nullopt;
    std::optional<StoredTensor> t(std::move(it->second));
    tensors_.erase(it);
    return t;
  }
  // Gives the tensor named `from` the name `to` without copying its bytes. Throws ValueError if
  // `from` is absent, or `to` is already present or is "__metadata__".
  void rename(std::string_view from, std::string to) {
    constexpr std::string_view fn = "tessera::io::StateDict::rename";
    if (from == to) {
      lookup(fn, from);
      return;
    }
    if (to == "__metadata__")
      detail::raise<ValueError>(fn, "the name '__metadata__' is reserved for metadata");
    if (contains(to))
      detail::raise<ValueError>(fn, "a tensor named ", detail::quote_name(to),
                                " is already present");
    const auto it = tensors_.find(from);
    if (it == tensors_.end()) lookup(fn, from);  // throws, listing the names
    auto node = tensors_.extract(it);
    node.key() = std::move(to);
    tensors_.insert(std::move(node));
  }

  // The tensor named `name` as a Tensor<T, R>, converted from its stored dtype (see
  // StoredTensor::copy_to). Throws ValueError if absent, ShapeError if its rank is not R.
  template <class T, int R>
  Tensor<T, R> get(std::string_view name) const {
    constexpr std::string_view fn = "tessera::io::StateDict::get";
    const StoredTensor& s = lookup(fn, name);
    const std::string what = "tensor " + detail::quote_name(name) + ": ";
    if (s.shape.size() != static_cast<std::size_t>(R))
      detail::raise<ShapeError>(fn, what, "has shape ", detail::shape_string(s.shape), " (rank ",
                                s.shape.size(), "), expected rank ", R);
    s.check(fn);
    Shape<R> shape{};
    for (std::size_t i = 0; i < shape.size(); ++i) shape[i] = s.shape[i];  // R = 0: no copy
    Tensor<T, R> out(shape, uninitialized);
    s.copy_to(out.data(), fn, what);
    return out;
  }

  // Names in order.
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    k.reserve(tensors_.size());
    for (const auto& kv : tensors_) k.push_back(kv.first);
    return k;
  }
  std::size_t size() const noexcept { return tensors_.size(); }
  bool empty() const noexcept { return tensors_.empty(); }
  const_iterator begin() const noexcept { return tensors_.begin(); }
  const_iterator end() const noexcept { return tensors_.end(); }

 private:
  const StoredTensor& lookup(std::string_view fn, std::string_view name) const {
    const auto it = tensors_.find(name);
    if (it != tensors_.end()) return it->second;
    std::vector<std::string_view> names;
    names.reserve(tensors_.size());
    for (const auto& kv : tensors_) names.push_back(kv.first);
    detail::raise<ValueError>(fn, "no tensor named ", detail::quote_name(name),
                              " (the state dict holds ", tensors_.size(),
                              tensors_.size() == 1 ? " tensor" : " tensors",
                              names.empty() ? "" : ": ", detail::name_list(names), ")");
  }

  map_type tensors_;
};

}  // namespace tessera::io
