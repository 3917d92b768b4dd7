// Tests for tessera/core/error.hpp: the exception hierarchy, detail::raise's
// "fn: ..." messages, detail::shape_string and detail::check_shape_equal.
#include "tessera/core/error.hpp"

#include <gtest/gtest.h>

#include <array>
#include <exception>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace error_test {

using tessera::Index;
using tessera::detail::check_shape_equal;
using tessera::detail::raise;
using tessera::detail::shape_string;

// The message of the exception `f` throws, which must be exactly of type E.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    EXPECT_EQ(typeid(e), typeid(E));
    return e.what();
  }
  ADD_FAILURE() << "nothing was thrown";
  return {};
}

// ---- hierarchy
// -------------------------------------------------------------------------------

TEST(Error, Hierarchy) {
  static_assert(std::is_base_of_v<std::runtime_error, tessera::Error>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::ShapeError>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::ValueError>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::IndexError>);
  static_assert(std::is_base_of_v<tessera::Error, tessera::IoError>);
  // The four kinds are distinct branches.
  static_assert(!std::is_base_of_v<tessera::ShapeError, tessera::ValueError>);
  static_assert(!std::is_base_of_v<tessera::ValueError, tessera::ShapeError>);
  static_assert(!std::is_base_of_v<tessera::IndexError, tessera::ShapeError>);
  static_assert(!std::is_base_of_v<tessera::IoError, tessera::ValueError>);
  // Constructible from a message, like std::runtime_error.
  static_assert(std::is_constructible_v<tessera::ShapeError, const std::string&>);
  static_assert(std::is_constructible_v<tessera::IoError, const char*>);
  SUCCEED();
}

TEST(Error, EachKindIsCaughtAsErrorRuntimeErrorAndException) {
  auto check = [](auto make) {
    try {
      throw make("msg");
    } catch (const tessera::Error& e) {
      EXPECT_STREQ(e.what(), "msg");
    }
    try {
      throw make("msg");
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "msg");
    }
    try {
      throw make("msg");
    } catch (const std::exception& e) {
      EXPECT_STREQ(e.what(), "msg");
    }
  };
  check([](const char* m) { return tessera::ShapeError(m); });
  check([](const char* m) { return tessera::ValueError(m); });
  check([](const char* m) { return tessera::IndexError(m); });
  check([](const char* m) { return tessera::IoError(m); });
  check([](const char* m) { return tessera::Error(m); });

  // A ShapeError is not caught as a ValueError.
  bool caught_as_value = false, caught_as_shape = false;
  try {
    try {
      throw tessera::ShapeError("s");
    } catch (const tessera::ValueError&) {
      caught_as_value = true;
    }
  } catch (const tessera::ShapeError&) {
    caught_as_shape = true;
  }
  EXPECT_FALSE(caught_as_value);
  EXPECT_TRUE(caught_as_shape);
}

// ---- raise
// -----------------------------------------------------------------------------------

TEST(Error, RaiseBuildsFunctionPrefixedMessages) {
  EXPECT_EQ(message_of<tessera::ValueError>([] {
              raise<tessera::ValueError>("tessera::f", "argument 'n' is ", 3, ", expected ", 4.5);
            }),
            "tessera::f: argument 'n' is 3, expected 4.5");
  EXPECT_EQ(message_of<tessera::ShapeError>([] {
              const std::string arg = "weight";
              const std::string_view shape = "[2, 3]";
              raise<tessera::ShapeError>("tessera::linear", "argument '", arg, "' has shape ",
                                         shape, ", expected ", shape_string({3, 3}));
            }),
            "tessera::linear: argument 'weight' has shape [2, 3], expected [3, 3]");
  EXPECT_EQ(message_of<tessera::IndexError>(
                [] { raise<tessera::IndexError>("g", "index ", Index{-1}, " on axis ", 0); }),
            "g: index -1 on axis 0");
  EXPECT_EQ(message_of<tessera::IoError>([] {
              raise<tessera::IoError>(std::string_view("tessera::io::load"), "cannot open '",
                                      "x.bin", "'");
            }),
            "tessera::io::load: cannot open 'x.bin'");
}

TEST(Error, RaiseThrowsTheRequestedType) {
  EXPECT_THROW(raise<tessera::ShapeError>("f", "x"), tessera::ShapeError);
  EXPECT_THROW(raise<tessera::ValueError>("f", "x"), tessera::ValueError);
  EXPECT_THROW(raise<tessera::IndexError>("f", "x"), tessera::IndexError);
  EXPECT_THROW(raise<tessera::IoError>("f", "x"), tessera::IoError);
  EXPECT_THROW(raise<std::invalid_argument>("f", "x"), std::invalid_argument);
  TESSERA_EXPECT_THROW_MSG(raise<tessera::ValueError>("tessera::set_num_threads", "argument 'n'"),
                           tessera::Error, "tessera::set_num_threads: argument 'n'");
}

// ---- shape_string
// ----------------------------------------------------------------------------

TEST(Error, ShapeString) {
  EXPECT_EQ(shape_string({2, 3}), "[2, 3]");
  EXPECT_EQ(shape_string({}), "[]");
  EXPECT_EQ(shape_string({7}), "[7]");
  EXPECT_EQ(shape_string({1, 0, -1, 4096}), "[1, 0, -1, 4096]");
  EXPECT_EQ(shape_string({Index{1} << 40}), "[1099511627776]");

  const std::array<Index, 3> a{2, 3, 4};
  EXPECT_EQ(shape_string(a), "[2, 3, 4]");
  const std::array<Index, 0> none{};
  EXPECT_EQ(shape_string(none), "[]");
  const std::vector<Index> v{5, 6};
  EXPECT_EQ(shape_string(v), "[5, 6]");
  EXPECT_EQ(shape_string(std::span<const Index>(v).first(1)), "[5]");
}

// ---- check_shape_equal
// -----------------------------------------------------------------------

TEST(Error, CheckShapeEqualPassesOnEqualShapes) {
  const std::array<Index, 2> a{2, 3}, b{2, 3};
  EXPECT_NO_THROW(check_shape_equal("tessera::g", "x", a, b));
  const std::array<Index, 0> e{};
  EXPECT_NO_THROW(check_shape_equal("tessera::g", "x", e, e));
}

TEST(Error, CheckShapeEqualThrowsWithBothShapes) {
  const std::array<Index, 2> a{2, 3}, b{3, 2};
  EXPECT_EQ(message_of<tessera::ShapeError>([&] { check_shape_equal("tessera::g", "x", a, b); }),
            "tessera::g: argument 'x' has shape [2, 3], expected [3, 2]");

  // Different ranks, even when the common prefix agrees.
  const std::array<Index, 3> c{2, 3, 1};
  EXPECT_EQ(message_of<tessera::ShapeError>([&] { check_shape_equal("tessera::h", "out", a, c); }),
            "tessera::h: argument 'out' has shape [2, 3], expected [2, 3, 1]");
  EXPECT_EQ(message_of<tessera::ShapeError>([&] { check_shape_equal("tessera::h", "out", c, a); }),
            "tessera::h: argument 'out' has shape [2, 3, 1], expected [2, 3]");
  const std::array<Index, 0> e{};
  const std::array<Index, 1> one{1};
  EXPECT_EQ(
      message_of<tessera::ShapeError>([&] { check_shape_equal("tessera::k", "bias", e, one); }),
      "tessera::k: argument 'bias' has shape [], expected [1]");
}

}  // namespace error_test
