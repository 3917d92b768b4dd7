// Helpers shared by tessera's tests: the scalar types every typed test runs over, their
// tolerances, and checks that an exception's message names what went wrong.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <type_traits>

#include "tessera/core/error.hpp"
#include "tessera/core/scratch.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::test {

using Scalars = ::testing::Types<float, double>;

// Absolute/relative tolerance for comparing a vectorised kernel with a plain scalar loop.
template <class T>
constexpr T tol() {
  return std::is_same_v<T, float> ? T(2e-6) : T(1e-13);
}

// |a - b| <= atol + rtol * |b|, with NaN never close and equal infinities close.
template <class T>
::testing::AssertionResult close(T a, T b, T atol, T rtol) {
  if (std::isnan(a) || std::isnan(b)) return ::testing::AssertionFailure() << a << " vs " << b << " (NaN)";
  if (a == b) return ::testing::AssertionSuccess();
  if (std::fabs(a - b) <= atol + rtol * std::fabs(b)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << a << " vs " << b << " differ by " << std::fabs(a - b);
}

// Same shape and bit-identical elements (memcmp): for paths that must compute exactly the same.
template <class A, class B>
::testing::AssertionResult same_bits(const A& a, const B& b) {
  if (!std::equal(a.shape().begin(), a.shape().end(), b.shape().begin(), b.shape().end()))
    return ::testing::AssertionFailure() << "shapes differ";
  static_assert(sizeof(*a.data()) == sizeof(*b.data()), "same_bits compares one scalar type");
  const auto bytes = sizeof(*a.data()) * static_cast<std::size_t>(a.size());
  if (bytes && std::memcmp(a.data(), b.data(), bytes) != 0)
    return ::testing::AssertionFailure() << "elements differ";
  return ::testing::AssertionSuccess();
}

// Expects into(in, out) to write exactly `expected`, both into a fresh tensor and over `input`
// itself (out == in: the *_into functions that allow it).
template <class T, int R, class Into>
void expect_into_equals(const Tensor<T, R>& input, const Tensor<T, R>& expected, Into&& into) {
  Tensor<T, R> out(expected.shape());
  into(input, out);
  EXPECT_TRUE(same_bits(out, expected)) << "into a fresh tensor";
  Tensor<T, R> in_place(input);
  into(in_place, in_place);
  EXPECT_TRUE(same_bits(in_place, expected)) << "in place";
}

// Expects a second call (after a first) to make no system allocation in the thread's scratch
// arena.
template <class F>
void expect_repeat_allocates_nothing(F&& call) {
  call();
  const std::size_t allocations = detail::scratch().system_allocations();
  call();
  EXPECT_EQ(detail::scratch().system_allocations(), allocations) << "the second call allocated";
  EXPECT_EQ(detail::scratch().live_frames(), 0);
}

// Owning Eigen copies of a tensor's elements, for comparing results that are temporaries: the
// tensors' own views (as_vector, as_array) refuse a temporary, which would dangle.
template <TensorLike X>
Eigen::Matrix<scalar_t<X>, Eigen::Dynamic, 1> owned_vector(const X& x) {
  return cview(x).as_vector();
}
template <TensorLike X>
RowMajorArray<scalar_t<X>> owned_array(const X& x) {
  return cview(x).as_array();
}

// A scratch directory under the system's temporary directory, removed with everything in it when
// the object goes out of scope. Unique per process and per object.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("tessera_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

// The project's shared reference data (../shared/data beside the checkout: CLIP's merge list and
// reference token ids, public-domain photographs, ...), or TESSERA_SHARED_DATA when set. Empty
// when absent: a fresh clone elsewhere lacks it, and tests that need it skip with
// TESSERA_SKIP_WITHOUT_SHARED_DATA() instead of failing.
inline std::filesystem::path shared_data_dir() {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (const char* env = std::getenv("TESSERA_SHARED_DATA"); env && *env) {
    if (fs::is_directory(env, ec)) return fs::path(env);
    return {};
  }
#ifdef TESSERA_SHARED_DATA_DIR
  if (fs::is_directory(TESSERA_SHARED_DATA_DIR, ec)) return fs::path(TESSERA_SHARED_DATA_DIR);
#endif
  return {};
}

}  // namespace tessera::test

// Skips the current test, saying why, when the shared reference data is not on this machine.
#define TESSERA_SKIP_WITHOUT_SHARED_DATA()                                                    \
  do {                                                                                        \
    if (::tessera::test::shared_data_dir().empty())                                           \
      GTEST_SKIP() << "../shared/data (the project's reference data) is not on this machine; " \
                      "set TESSERA_SHARED_DATA to its path to run this test";                 \
  } while (0)

// Expects `stmt` to throw `Exc` whose what() contains every one of the given substrings.
#define TESSERA_EXPECT_THROW_MSG(stmt, Exc, ...)                                          \
  do {                                                                                    \
    bool tessera_thrown_ = false;                                                         \
    try {                                                                                 \
      stmt;                                                                               \
    } catch (const Exc& e) {                                                              \
      tessera_thrown_ = true;                                                             \
      const std::string what_ = e.what();                                                 \
      for (const char* part_ : {__VA_ARGS__})                                             \
        EXPECT_NE(what_.find(part_), std::string::npos)                                   \
            << "message \"" << what_ << "\" lacks \"" << part_ << "\"";                   \
    }                                                                                     \
    EXPECT_TRUE(tessera_thrown_) << "expected " #Exc " from " #stmt;                      \
  } while (0)
