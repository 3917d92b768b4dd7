// tessera: the exception hierarchy and the helpers that build its messages.
//
// Every public function checks its inputs and throws one of these with a message that names the
// function, the argument, what was expected and what was found, e.g.
//   tessera::softmax: argument 'mask' has shape [2, 5], expected a shape broadcastable to [2, 4]
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tessera/core/config.hpp"

namespace tessera {

// Base of every error tessera throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A tensor's shape (rank or sizes) does not fit what the function needs.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// An argument's value is out of its domain (a negative eps, zero threads, a null pointer...).
class ValueError : public Error {
 public:
  using Error::Error;
};

// An element index is out of range (`Tensor::at`).
class IndexError : public Error {
 public:
  using Error::Error;
};

// Reading or writing a file failed, or its contents are malformed.
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {

// Lists in messages stop after this many items and say how many there were in all, so a
// rank-200,000 shape or a state dict of 10,000 keys never builds a message of megabytes.
inline constexpr std::size_t kMaxListedItems = 20;

// "[2, 3, 4]"; a shape of more than kMaxListedItems dimensions lists the first ones and its rank.
inline std::string shape_string(std::span<const Index> shape) {
  std::ostringstream os;
  os << '[';
  const std::size_t shown = std::min(shape.size(), kMaxListedItems);
  for (std::size_t i = 0; i < shown; ++i) os << (i ? ", " : "") << shape[i];
  if (shown < shape.size()) os << ", ... (" << shape.size() << " dimensions)";
  os << ']';
  return os.str();
}

inline std::string shape_string(std::initializer_list<Index> shape) {
  return shape_string(std::span<const Index>(shape.begin(), shape.size()));
}

// Builds "fn: message" from any streamable pieces and throws E with it.
template <class E, class... Parts>
[[noreturn]] void raise(std::string_view fn, const Parts&... parts) {
  std::ostringstream os;
  os << fn << ": ";
  (os << ... << parts);
  throw E(os.str());
}

}  // namespace detail
}  // namespace tessera

namespace tessera::detail {

// Joins the items of a range as "'a', 'b', 'c'" (each written with `quote` around it), listing
// at most `cap` of them and then "... (N in all)".
template <class Range>
std::string capped_list(const Range& items, std::size_t cap = kMaxListedItems,
                        std::string_view quote = "'") {
  std::ostringstream os;
  std::size_t n = 0;
  for (const auto& item : items) {
    if (n < cap) os << (n ? ", " : "") << quote << item << quote;
    ++n;
  }
  if (n > cap) os << ", ... (" << n << " in all)";
  return os.str();
}

// a * b for sizes, or a ShapeError naming `fn` and `what` when the product does not fit Index.
// Both factors must be >= 0.
inline Index checked_mul(Index a, Index b, std::string_view fn, std::string_view what) {
  Index r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    raise<ShapeError>(fn, what, " has ", a, " x ", b, " elements, more than an index can hold");
  return r;
}

// The number of elements of `shape` (dimensions >= 0), or a ShapeError when any partial product
// of its non-zero dimensions overflows Index: then every sub-product (rows, strides, offsets)
// fits as well, even for shapes that hold a zero.
inline Index checked_shape_size(std::span<const Index> shape, std::string_view fn,
                                std::string_view what) {
  Index n = 1;
  bool zero = false;
  for (Index d : shape) {
    if (d == 0) {
      zero = true;
      continue;
    }
    if (__builtin_mul_overflow(n, d, &n))
      raise<ShapeError>(fn, what, " of shape ", shape_string(shape),
                        " has more elements than an index can hold");
  }
  return zero ? 0 : n;
}

// Throws ValueError unless `value` is finite once converted to T: an option given as a double
// (a scale of 1e39, say) must also be finite in the float the kernel computes in.
template <class T, class V>
void check_finite_in(std::string_view fn, std::string_view arg, V value) {
  const T t = static_cast<T>(value);
  if (!std::isfinite(t))
    raise<ValueError>(fn, "argument '", arg, "' is ", value, ", which is ", t,
                      " in the scalar type computed in; expected a finite value");
}

// True when the byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte.
inline bool ranges_overlap(const void* a, std::size_t a_bytes, const void* b,
                           std::size_t b_bytes) noexcept {
  if (a_bytes == 0 || b_bytes == 0 || a == nullptr || b == nullptr) return false;
  const auto pa = reinterpret_cast<std::uintptr_t>(a), pb = reinterpret_cast<std::uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

// True when the two ranges overlap without being the same range (exact aliasing is often fine:
// an elementwise kernel may write over its input; a partial overlap never is).
inline bool ranges_partially_overlap(const void* a, std::size_t a_bytes, const void* b,
                                     std::size_t b_bytes) noexcept {
  return ranges_overlap(a, a_bytes, b, b_bytes) && !(a == b && a_bytes == b_bytes);
}

// Throws ShapeError unless `actual` equals `expected`.
inline void check_shape_equal(std::string_view fn, std::string_view arg,
                              std::span<const Index> actual, std::span<const Index> expected) {
  if (actual.size() != expected.size() ||
      !std::equal(actual.begin(), actual.end(), expected.begin()))
    raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(actual), ", expected ",
                      shape_string(expected));
}

}  // namespace tessera::detail
