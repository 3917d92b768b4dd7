// tessera: the exception hierarchy and the helpers that build its messages.
//
// Every public function checks its inputs and throws one of these with a message that names the
// function, the argument, what was expected and what was found, e.g.
//   tessera::softmax: argument 'mask' has shape [2, 5], expected a shape broadcastable to [2, 4]
#pragma once

#include <algorithm>
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

inline std::string shape_string(std::span<const Index> shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
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

// Throws ShapeError unless `actual` equals `expected`.
inline void check_shape_equal(std::string_view fn, std::string_view arg,
                              std::span<const Index> actual, std::span<const Index> expected) {
  if (actual.size() != expected.size() ||
      !std::equal(actual.begin(), actual.end(), expected.begin()))
    raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(actual), ", expected ",
                      shape_string(expected));
}

}  // namespace tessera::detail
