// tessera: a per-thread scratch arena for the intermediates of a forward pass.
//
// A transformer layer needs a few [rows, features] buffers per call (projections, attention
// output, the feed-forward's hidden layer). Allocating them afresh costs page faults on every
// call; the arena hands out the same memory again instead:
//
//   detail::ScratchFrame frame;                  // marks the arena
//   float* h = frame.alloc<float>(rows * 2048);  // 64-byte aligned, uninitialised
//   auto q = frame.tensor<float, 3>({b, l, e});  // the same, as a TensorMap
//   ...                                          // ~ScratchFrame: the arena is back at its mark
//
// Frames nest and are released in LIFO order (they are scoped objects). Memory a live frame handed
// out never moves: when the current block is full, the arena adds another block. When the
// outermost frame is released after more than one block was used, the blocks are replaced by one
// of the high-water size, so a call repeated with the same shapes makes no allocation at all.
//
// Each thread has its own arena (`thread_local`), so threads, OpenMP workers included, never share
// one and forward stays safe to call concurrently. The memory is kept for the thread's lifetime
// (the high-water mark of everything it ran); `detail::scratch().release()` frees it when no frame
// is live on the thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <new>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tessera/core/config.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::detail {

class ScratchArena {
 public:
  // Smallest block the arena allocates, so that small models do not allocate per buffer.
  static constexpr std::size_t kMinBlockBytes = std::size_t{64} * 1024;

  ScratchArena() = default;
  ScratchArena(const ScratchArena&) = delete;
  ScratchArena& operator=(const ScratchArena&) = delete;
  ~ScratchArena() { free_blocks(); }

  // Bytes held in blocks, used or not.
  std::size_t bytes_reserved() const noexcept {
    std::size_t n = 0;
    for (const Block& b : blocks_) n += b.size;
    return n;
  }
  // Blocks allocated from the system by this thread's arena so far (never decreases).
  std::size_t system_allocations() const noexcept { return system_allocations_; }
  // Most bytes that were in use at once, since the thread started or the last release().
  std::size_t high_water_bytes() const noexcept { return high_water_; }
  std::size_t bytes_in_use() const noexcept { return in_use_; }
  int live_frames() const noexcept { return depth_; }

  // Frees every block. Raises ValueError while a frame is live on this thread: its memory would
  // dangle.
  void release() {
    if (depth_ > 0)
      raise<ValueError>("tessera::detail::ScratchArena::release", "called while ", depth_,
                        " scratch frame(s) are live on this thread, expected none");
    free_blocks();
    high_water_ = 0;
  }

 private:
  friend class ScratchFrame;

  struct Block {
    std::byte* data;
    std::size_t size;
  };
  // Where the arena stood when a frame opened.
  struct Mark {
    std::size_t block;
    std::size_t offset;
    std::size_t in_use;
    int depth;
  };

  static std::size_t round_up(std::size_t bytes) noexcept {
    return (bytes + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
  }

  Mark open_frame() noexcept { return {current_, offset_, in_use_, ++depth_}; }

  void close_frame(const Mark& m) noexcept {
    TESSERA_DEBUG_ASSERT(m.depth == depth_, "tessera: scratch frames released out of LIFO order");
    current_ = m.block;
    offset_ = m.offset;
    in_use_ = m.in_use;
    --depth_;
    if (depth_ == 0 && blocks_.size() > 1) consolidate();
  }

  // `bytes` (a multiple of the alignment, > 0) from the current block, or from a later one.
  void* allocate(std::size_t bytes) {
    while (!blocks_.empty() && blocks_[current_].size - offset_ < bytes) {
      // Blocks after the current one hold nothing live (frames are LIFO): move on to the next,
      // or drop those left over that are too small and add a bigger one.
      if (current_ + 1 < blocks_.size() && blocks_[current_ + 1].size >= bytes) {
        ++current_;
        offset_ = 0;
        break;
      }
      if (current_ + 1 < blocks_.size()) {
        for (std::size_t i = current_ + 1; i < blocks_.size(); ++i) free_block(blocks_[i]);
        blocks_.resize(current_ + 1);
      }
      // Geometric growth: the new block is at least as large as all before it together.
      add_block(std::max(bytes, bytes_reserved()));
      current_ = blocks_.size() - 1;
      offset_ = 0;
    }
    if (blocks_.empty()) {
      add_block(bytes);
      current_ = 0;
      offset_ = 0;
    }
    std::byte* p = blocks_[current_].data + offset_;
    offset_ += bytes;
    in_use_ += bytes;
    high_water_ = std::max(high_water_, in_use_);
    return p;
  }

  void add_block(std::size_t bytes) {
    bytes = round_up(std::max(bytes, kMinBlockBytes));
    blocks_.reserve(blocks_.size() + 1);  // before allocating, so a throw leaks nothing
    auto* p = static_cast<std::byte*>(::operator new (bytes, std::align_val_t{kTensorAlignment}));
    blocks_.push_back({p, bytes});
    ++system_allocations_;
  }

  // Everything used since the outermost frame opened fits one block of the high-water size; the
  // next identical sequence of allocations then finds all its memory in that block.
  void consolidate() noexcept {
    const std::size_t bytes = round_up(std::max(high_water_, kMinBlockBytes));
    free_blocks();
    try {
      add_block(bytes);
    } catch (const std::bad_alloc&) {
      // Out of memory: leave the arena empty; the next allocation tries again.
    }
  }

  static void free_block(const Block& b) noexcept {
    ::operator delete (b.data, std::align_val_t{kTensorAlignment});
  }
  void free_blocks() noexcept {
    for (const Block& b : blocks_) free_block(b);
    blocks_.clear();
    current_ = 0;
    offset_ = 0;
  }

  std::vector<Block> blocks_;  // blocks_[current_] is being filled; later ones are unused
  std::size_t current_ = 0;
  std::size_t offset_ = 0;  // bytes used in blocks_[current_]
  std::size_t in_use_ = 0;  // bytes handed out to live frames, over all blocks
  std::size_t high_water_ = 0;
  std::size_t system_allocations_ = 0;
  int depth_ = 0;  // live frames
};

// The calling thread's arena.
inline ScratchArena& scratch() {
  thread_local ScratchArena arena;
  return arena;
}

// A scope on the calling thread's arena: what it allocates stays valid until it is destroyed.
// Frames must be destroyed in the reverse order of their construction (scoped objects are).
class ScratchFrame {
 public:
  ScratchFrame() : ScratchFrame(scratch()) {}
  explicit ScratchFrame(ScratchArena& arena) : arena_(arena), mark_(arena.open_frame()) {}
  ScratchFrame(const ScratchFrame&) = delete;
  ScratchFrame& operator=(const ScratchFrame&) = delete;
  ~ScratchFrame() { arena_.close_frame(mark_); }

  // n uninitialised elements, 64-byte aligned; null for n == 0. T is trivially copyable.
  template <class T>
  T* alloc(Index n) {
    static_assert(std::is_trivially_copyable_v<T>, "scratch memory holds trivially copyable T");
    constexpr std::string_view fn = "tessera::detail::ScratchFrame::alloc";
    if (n < 0) raise<ValueError>(fn, "argument 'n' is ", n, ", expected a value >= 0");
    if (n == 0) return nullptr;
    // Bytes must fit ptrdiff_t too, so that pointer differences within the block stay defined.
    constexpr std::size_t limit =
        (static_cast<std::size_t>(PTRDIFF_MAX) - kTensorAlignment) / sizeof(T);
    if (static_cast<std::size_t>(n) > limit)
      raise<ValueError>(fn, "argument 'n' is ", n, ", too many elements of ", sizeof(T),
                        " bytes to address");
    const std::size_t bytes = ScratchArena::round_up(static_cast<std::size_t>(n) * sizeof(T));
    return static_cast<T*>(arena_.allocate(bytes));
  }

  // An uninitialised tensor of the given shape in this frame.
  template <class T, int Rank>
  TensorMap<T, Rank> tensor(const Shape<Rank>& shape) {
    check_shape<Rank>("tessera::detail::ScratchFrame::tensor", shape);
    return TensorMap<T, Rank>(alloc<T>(shape_size<Rank>(shape)), shape);
  }

 private:
  ScratchArena& arena_;
  ScratchArena::Mark mark_;
};

}  // namespace tessera::detail
