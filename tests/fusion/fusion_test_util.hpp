// Helpers of the fusion module tests: a small encoder configuration, random token sequences, and
// bit-for-bit comparison of tensors.
#pragma once

#include <algorithm>
#include <cstdint>

#include "tessera/core/tensor.hpp"
#include "tessera/nn/transformer_encoder.hpp"

namespace tessera::test {

// d_model 8, 2 heads, feed-forward 16.
inline nn::TransformerEncoderOptions small_encoder(Index num_layers = 2, bool final_norm = false,
                                                   std::uint64_t seed = 7) {
  return {.layer = {.d_model = 8, .nhead = 2, .dim_feedforward = 16, .seed = seed},
          .num_layers = num_layers,
          .final_norm = final_norm};
}

// [batch, length, dim], uniform in [-1, 1).
template <class T>
Tensor<T, 3> random_tokens(Index batch, Index length, std::uint64_t seed, Index dim = 8) {
  Tensor<T, 3> x(batch, length, dim);
  x.setRandom(seed);
  return x;
}

// Same shape and the same values, bit for bit.
template <class A, class B>
bool same(const A& a, const B& b) {
  return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.size(), b.data());
}

}  // namespace tessera::test
