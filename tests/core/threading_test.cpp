#include "tessera/core/threading.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace threading_test {

using tessera::Index;

TEST(Threading, SetAndGet) {
  const int before = tessera::num_threads();
  EXPECT_GE(before, 1);
  tessera::set_num_threads(1);
  EXPECT_EQ(tessera::num_threads(), 1);
#ifdef _OPENMP
  tessera::set_num_threads(2);
  EXPECT_EQ(tessera::num_threads(), 2);
#endif
  tessera::set_num_threads(before);
}

TEST(Threading, RejectsNonPositive) {
  try {
    tessera::set_num_threads(0);
    FAIL() << "expected ValueError";
  } catch (const tessera::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("tessera::set_num_threads"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("argument 'n' is 0"), std::string::npos);
  }
  EXPECT_THROW(tessera::set_num_threads(-3), tessera::ValueError);
}

TEST(Threading, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 4}) {
    tessera::set_num_threads(threads);
    for (Index n : {Index{0}, Index{1}, Index{7}, Index{1000}, Index{100003}}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      tessera::parallel_for(n, 16, [&](Index b, Index e) {
        ASSERT_LE(0, b);
        ASSERT_LE(b, e);
        ASSERT_LE(e, n);
        for (Index i = b; i < e; ++i) hits[static_cast<std::size_t>(i)]++;
      });
      for (Index i = 0; i < n; ++i)
        ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "n=" << n;
    }
  }
  tessera::set_num_threads(tessera::max_threads());
}

}  // namespace threading_test
