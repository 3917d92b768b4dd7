// tessera: the description of one attention computation that both attention paths (the
// reference in attention.hpp, the fused kernel in flash_attention.hpp) execute.
#pragma once

#include "tessera/core/mask.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::detail {

// Where element (b, h, i, 0) of a [batch, heads, seq, dim] operand lives: base + b * batch +
// h * head + i * row. Lets one routine read [B, H, L, D] tensors and the [B, L, H * D] layout that
// multi-head attention projects into, without copying heads apart.
template <class P>
struct Strided {
  P* base = nullptr;
  Index batch = 0, head = 0, row = 0;
  P* at(Index b, Index h) const { return base + b * batch + h * head; }
};

template <class T>
struct AttentionProblem {
  Index batch = 0, heads = 0, lq = 0, lk = 0, d = 0, dv = 0;
  Strided<const T> q, k, v;
  Strided<T> out;
  T scale = 1;
  bool causal = false;
  // With causal, query i sees keys j <= i + causal_offset (the offset is the number of keys that
  // precede the first query, e.g. the cached length in incremental decoding).
  Index causal_offset = 0;
  // Up to two masks (e.g. attn_mask and key_padding_mask), each resolved against
  // [batch, heads, lq, mask_lk]; they cover the first mask_lk keys (extra keys appended by
  // add_bias_kv / add_zero_attn are never masked).
  const MaskRows* masks[2] = {nullptr, nullptr};
  Index mask_lk = 0;
  T* weights = nullptr;  // optional [batch, heads, lq, lk] output of the softmax weights
  T* lse = nullptr;      // optional [batch, heads, lq] per-row logsumexp (fused path only)
  // Fused path: into how many ranges each head's keys are split (partial results merged after);
  // 0 chooses from the problem's size (flash_key_splits), never from the thread count.
  Index key_splits = 0;
};

}  // namespace tessera::detail
