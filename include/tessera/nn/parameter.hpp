// tessera: a learnable tensor, as a value and a gradient of the same shape.
//
// Inference only reads `value`. `grad` stays empty until a backward pass (or `zero_grad`)
// allocates it, so a module built for inference pays nothing for it.
#pragma once

#include <utility>

#include "tessera/core/tensor.hpp"

namespace tessera::nn {

template <class T, int Rank>
struct Parameter {
  using Scalar = T;
  static constexpr int rank = Rank;

  Tensor<T, Rank> value;
  Tensor<T, Rank> grad;

  Parameter() = default;
  explicit Parameter(const Shape<Rank>& shape) : value(shape) {}
  explicit Parameter(Tensor<T, Rank> v) : value(std::move(v)) {}

  const Shape<Rank>& shape() const noexcept { return value.shape(); }
  Index size() const noexcept { return value.size(); }
  bool has_grad() const noexcept {
    return grad.shape() == value.shape() && (grad.size() > 0 || value.size() == 0);
  }
  // Allocates the gradient if needed and sets it to zero.
  void zero_grad() {
    if (grad.shape() != value.shape())
      grad = Tensor<T, Rank>(value.shape());
    else
      grad.setZero();
  }
  // Read-only view of the value, for kernels.
  TensorMap<const T, Rank> view() const { return cview(value); }
};

}  // namespace tessera::nn
