#include "tessera/core/scratch.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace scratch_test {

using tessera::Index;
using tessera::detail::ScratchArena;
using tessera::detail::ScratchFrame;

bool aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % tessera::kTensorAlignment == 0;
}

// Each test starts from an empty arena on its thread.
class ScratchTest : public ::testing::Test {
 protected:
  void SetUp() override { tessera::detail::scratch().release(); }
  void TearDown() override { tessera::detail::scratch().release(); }
};

TEST_F(ScratchTest, AllocationsAreAlignedAndDistinct) {
  ScratchFrame frame;
  std::vector<char*> ps;
  for (Index n : {1, 3, 64, 65, 1000}) {
    char* p = frame.alloc<char>(n);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(aligned(p)) << n;
    std::fill(p, p + n, static_cast<char>(n));
    ps.push_back(p);
  }
  double* d = frame.alloc<double>(7);
  EXPECT_TRUE(aligned(d));
  // Each allocation rounds up to whole cache lines, so none overlaps the next.
  for (std::size_t i = 1; i < ps.size(); ++i) EXPECT_GE(ps[i] - ps[i - 1], 64);
  const Index sizes[] = {1, 3, 64, 65, 1000};
  for (std::size_t i = 0; i < ps.size(); ++i)
    for (Index j = 0; j < sizes[i]; ++j) ASSERT_EQ(ps[i][j], static_cast<char>(sizes[i]));
  const auto t = frame.tensor<float, 3>({2, 3, 5});
  EXPECT_EQ(t.shape(), (tessera::Shape<3>{2, 3, 5}));
  EXPECT_TRUE(aligned(t.data()));
}

TEST_F(ScratchTest, FramesNestAndRewind) {
  auto& arena = tessera::detail::scratch();
  EXPECT_EQ(arena.live_frames(), 0);
  ScratchFrame outer;
  float* a = outer.alloc<float>(100);
  const std::size_t after_a = arena.bytes_in_use();
  EXPECT_EQ(after_a, 448u);  // 400 bytes, rounded up to whole cache lines
  float* inner_first = nullptr;
  {
    ScratchFrame inner;
    EXPECT_EQ(arena.live_frames(), 2);
    inner_first = inner.alloc<float>(50);
    EXPECT_GT(arena.bytes_in_use(), after_a);
  }
  EXPECT_EQ(arena.live_frames(), 1);
  EXPECT_EQ(arena.bytes_in_use(), after_a);
  // The inner frame's memory is handed out again; the outer frame's is not.
  {
    ScratchFrame inner;
    EXPECT_EQ(inner.alloc<float>(50), inner_first);
  }
  float* b = outer.alloc<float>(1);
  EXPECT_EQ(b, inner_first);
  EXPECT_NE(b, a);
}

TEST_F(ScratchTest, GrowthKeepsEarlierPointersAndContents) {
  auto& arena = tessera::detail::scratch();
  ScratchFrame frame;
  const Index n = ScratchArena::kMinBlockBytes / sizeof(int) / 2;  // half the first block
  std::vector<int*> ps;
  for (int k = 0; k < 6; ++k) {
    int* p = frame.alloc<int>(n * (k + 1));
    ASSERT_TRUE(aligned(p));
    for (Index i = 0; i < n * (k + 1); ++i) p[i] = k * 1000003 + static_cast<int>(i);
    ps.push_back(p);
  }
  EXPECT_GT(arena.system_allocations(), 1u);  // more than one block was needed
  for (int k = 0; k < 6; ++k)
    for (Index i = 0; i < n * (k + 1); ++i)
      ASSERT_EQ(ps[k][i], k * 1000003 + static_cast<int>(i)) << "allocation " << k;
}

TEST_F(ScratchTest, RepeatedSequenceAllocatesNothingAfterConsolidation) {
  auto& arena = tessera::detail::scratch();
  const Index big = ScratchArena::kMinBlockBytes;  // every call outgrows the first block
  auto sequence = [&] {
    ScratchFrame outer;
    outer.alloc<float>(big / 8);
    {
      ScratchFrame inner;
      inner.alloc<double>(big / 4);
      inner.alloc<char>(big);
    }
    ScratchFrame second;
    second.alloc<float>(big);
  };
  sequence();
  const std::size_t first = arena.system_allocations();
  EXPECT_GT(first, 2u);  // several blocks, then the one that replaces them
  const std::size_t reserved = arena.bytes_reserved();
  EXPECT_GE(reserved, arena.high_water_bytes());
  for (int i = 0; i < 3; ++i) sequence();
  EXPECT_EQ(arena.system_allocations(), first);
  EXPECT_EQ(arena.bytes_reserved(), reserved);
  EXPECT_EQ(arena.bytes_in_use(), 0u);
}

TEST_F(ScratchTest, EachThreadHasItsOwnArena) {
  auto& mine = tessera::detail::scratch();
  ScratchFrame frame;
  float* p = frame.alloc<float>(1000);
  p[0] = 1.5f;
  const std::size_t allocations = mine.system_allocations();
  std::vector<std::thread> threads;
  std::vector<const void*> arenas(4);
  std::vector<int> frames_seen(4), ok(4);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      auto& theirs = tessera::detail::scratch();
      arenas[t] = &theirs;
      frames_seen[t] = theirs.live_frames();
      ScratchFrame f;
      float* q = f.alloc<float>(1000);
      for (int i = 0; i < 1000; ++i) q[i] = static_cast<float>(t);
      std::this_thread::yield();
      bool good = true;
      for (int i = 0; i < 1000; ++i) good = good && q[i] == static_cast<float>(t);
      ok[t] = good;
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_NE(arenas[t], &mine);
    EXPECT_EQ(frames_seen[t], 0);  // this thread's live frame is not theirs
    EXPECT_TRUE(ok[t]);
  }
  EXPECT_EQ(mine.system_allocations(), allocations);
  EXPECT_EQ(mine.live_frames(), 1);
  EXPECT_EQ(p[0], 1.5f);
}

TEST_F(ScratchTest, ReleaseFreesAndRefusesWhileAFrameIsLive) {
  auto& arena = tessera::detail::scratch();
  {
    ScratchFrame frame;
    frame.alloc<float>(10);
    EXPECT_GT(arena.bytes_reserved(), 0u);
    TESSERA_EXPECT_THROW_MSG(arena.release(), tessera::ValueError,
                             "tessera::detail::ScratchArena::release", "1 scratch frame(s)");
    EXPECT_GT(arena.bytes_reserved(), 0u);  // nothing was freed
  }
  arena.release();
  EXPECT_EQ(arena.bytes_reserved(), 0u);
  EXPECT_EQ(arena.high_water_bytes(), 0u);
  ScratchFrame again;  // usable after release
  EXPECT_TRUE(aligned(again.alloc<float>(3)));
}

TEST_F(ScratchTest, ZeroSizeAndInvalidSizes) {
  auto& arena = tessera::detail::scratch();
  ScratchFrame frame;
  EXPECT_EQ(frame.alloc<float>(0), nullptr);
  EXPECT_EQ(arena.bytes_reserved(), 0u);  // nothing was allocated for it
  const auto empty = frame.tensor<double, 2>({0, 4});
  EXPECT_EQ(empty.size(), 0);
  TESSERA_EXPECT_THROW_MSG(frame.alloc<float>(-1), tessera::ValueError, "ScratchFrame::alloc",
                           "'n' is -1");
  TESSERA_EXPECT_THROW_MSG(frame.alloc<double>(tessera::Index{1} << 62), tessera::ValueError,
                           "ScratchFrame::alloc", "too many elements");
  TESSERA_EXPECT_THROW_MSG((frame.tensor<float, 2>({-2, 3})), tessera::ShapeError,
                           "ScratchFrame::tensor", "[-2, 3]");
  EXPECT_EQ(arena.bytes_in_use(), 0u);
}

}  // namespace scratch_test
