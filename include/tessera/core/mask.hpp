// tessera: attention and softmax masks whose meaning is part of their name.
//
// PyTorch uses both conventions for boolean masks: nn.MultiheadAttention blocks where a mask is
// true, F.scaled_dot_product_attention lets a position take part where it is true. tessera never
// takes a bare boolean mask; the factory says which meaning the booleans carry:
//
//   Mask::allowed(m)    true = the position takes part   (F.scaled_dot_product_attention)
//   Mask::blocked(m)    true = the position is masked out (nn.MultiheadAttention, key_padding_mask)
//   Mask::additive(f)   f is added to the scores; -inf masks out (float or double)
//
// A Mask is a non-owning view: the tensor it was made from must outlive it. Its shape broadcasts
// against the scores as in NumPy: aligned on the right, each dimension equal or 1.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera {

enum class MaskKind { allowed, blocked, additive };

class Mask {
 public:
  static constexpr int kMaxRank = 8;

  template <TensorLike M>
  static Mask allowed(const M& m) {
    return boolean(m, MaskKind::allowed);
  }
  template <TensorLike M>
  static Mask blocked(const M& m) {
    return boolean(m, MaskKind::blocked);
  }
  // A Mask keeps a view of its tensor: a temporary would be gone before the mask is used.
  template <class T, int R>
  static Mask allowed(const Tensor<T, R>&&) = delete;
  template <class T, int R>
  static Mask blocked(const Tensor<T, R>&&) = delete;
  template <class T, int R>
  static Mask additive(const Tensor<T, R>&&) = delete;

  template <TensorLike M>
  static Mask additive(const M& m) {
    using S = scalar_t<M>;
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                  "Mask::additive takes a float or double tensor");
    Mask k(MaskKind::additive, m.data(), std::is_same_v<S, float> ? DType::f32 : DType::f64);
    k.set_shape(m.shape());
    return k;
  }

  // The same mask data seen with another shape of the same size, e.g. PyTorch's 3-D attn_mask
  // [batch * heads, Lq, Lk] as [batch, heads, Lq, Lk].
  Mask with_shape(std::span<const Index> shape,
                  std::string_view fn = "tessera::Mask::with_shape") const {
    if (shape.size() > static_cast<std::size_t>(kMaxRank))
      detail::raise<ShapeError>(
          fn, "cannot view a mask of shape ", detail::shape_string(this->shape()), " as shape ",
          detail::shape_string(shape), ": at most ", kMaxRank, " dimensions are supported");
    for (Index d : shape)
      if (d < 0)
        detail::raise<ShapeError>(fn, "argument 'shape' ", detail::shape_string(shape),
                                  " has a negative dimension");
    const Index have = detail::checked_shape_size(this->shape(), fn, "the mask");
    const Index want = detail::checked_shape_size(shape, fn, "argument 'shape'");
    if (have != want)
      detail::raise<ShapeError>(fn, "cannot view a mask of shape ",
                                detail::shape_string(this->shape()), " as shape ",
                                detail::shape_string(shape));
    Mask m = *this;
    m.rank_ = static_cast<int>(shape.size());
    std::copy(shape.begin(), shape.end(), m.shape_.begin());
    return m;
  }
  Mask with_shape(std::initializer_list<Index> shape,
                  std::string_view fn = "tessera::Mask::with_shape") const {
    return with_shape(std::span<const Index>(shape.begin(), shape.size()), fn);
  }

  MaskKind kind() const noexcept { return kind_; }
  int rank() const noexcept { return rank_; }
  std::span<const Index> shape() const noexcept {
    return {shape_.data(), static_cast<std::size_t>(rank_)};
  }
  bool is_boolean() const noexcept { return dtype_ == DType::boolean; }

  // For kernels: a mask resolved against a target of shape [rows..., n] (see detail::MaskRows).
  enum class DType { boolean, f32, f64 };
  DType dtype() const noexcept { return dtype_; }
  const void* data() const noexcept { return data_; }

 private:
  Mask(MaskKind kind, const void* data, DType dtype) : kind_(kind), dtype_(dtype), data_(data) {}

  template <TensorLike M>
  static Mask boolean(const M& m, MaskKind kind) {
    static_assert(std::is_same_v<scalar_t<M>, bool>,
                  "Mask::allowed and Mask::blocked take a bool tensor");
    Mask k(kind, m.data(), DType::boolean);
    k.set_shape(m.shape());
    return k;
  }
  template <std::size_t R>
  void set_shape(const std::array<Index, R>& s) {
    static_assert(R <= kMaxRank, "mask rank is limited to 8");
    rank_ = static_cast<int>(R);
    for (std::size_t i = 0; i < R; ++i) shape_[i] = s[i];
  }

  friend class SavedMask;

  MaskKind kind_;
  DType dtype_;
  const void* data_;
  std::array<Index, kMaxRank> shape_{};
  int rank_ = 0;
};

// An owning copy of a Mask's elements, for what outlives the caller's mask tensor: a training
// forward keeps one in its context, so that backward applies the same mask after the tensor the
// Mask viewed is gone. Copies share the elements (immutable).
class SavedMask {
 public:
  SavedMask() = default;
  explicit SavedMask(const Mask& m) : mask_(m) {
    const std::size_t elem = m.dtype() == Mask::DType::boolean ? sizeof(bool)
                             : m.dtype() == Mask::DType::f32   ? sizeof(float)
                                                               : sizeof(double);
    const auto n = static_cast<std::size_t>(
        detail::checked_shape_size(m.shape(), "tessera::SavedMask", "the mask"));
    const auto* first = static_cast<const std::byte*>(m.data());
    auto bytes = std::make_shared<std::vector<std::byte>>(first, first + n * elem);
    mask_.data_ = bytes->data();
    bytes_ = std::move(bytes);
  }
  // A view of the saved elements, valid while this object (or a copy of it) lives.
  const Mask& mask() const noexcept { return mask_; }

 private:
  Mask mask_{MaskKind::allowed, nullptr, Mask::DType::boolean};
  std::shared_ptr<const std::vector<std::byte>> bytes_;
};

namespace detail {

// A mask broadcast against a target of shape [d0, ..., d(k-1), n], read one target row at a time.
class MaskRows {
 public:
  // Checks the mask broadcasts against `target`; names `fn` and `arg` in the error otherwise.
  MaskRows(const Mask& mask, std::span<const Index> target, std::string_view fn,
           std::string_view arg)
      : mask_(mask) {
    const int tr = static_cast<int>(target.size());
    const int mr = mask.rank();
    bool ok = tr >= 1 && tr <= Mask::kMaxRank && mr <= tr;
    for (int i = 0; ok && i < mr; ++i) {
      const Index m = mask.shape()[mr - 1 - i], t = target[tr - 1 - i];
      ok = (m == t || m == 1);
    }
    if (!ok)
      raise<ShapeError>(fn, "argument '", arg, "' has shape ", shape_string(mask.shape()),
                        ", expected a shape broadcastable to ", shape_string(target));
    // Strides of the mask for each target axis (0 where broadcast or absent).
    lead_ = tr - 1;
    Index stride = 1;
    for (int i = 0; i < tr; ++i) {
      const int t_axis = tr - 1 - i;
      const int m_axis = mr - 1 - i;
      Index s = 0;
      if (m_axis >= 0) {
        s = mask.shape()[m_axis] == 1 ? 0 : stride;
        stride *= mask.shape()[m_axis];
      }
      if (t_axis == tr - 1)
        col_stride_ = s;
      else
        lead_stride_[t_axis] = s;
      dims_[t_axis] = target[t_axis];
    }
  }

  MaskKind kind() const noexcept { return mask_.kind(); }

  // Element offset of target row r's first mask entry.
  Index row_offset(Index r) const noexcept {
    Index off = 0;
    for (int a = lead_ - 1; a >= 0; --a) {
      const Index i = r % dims_[a];
      r /= dims_[a];
      off += i * lead_stride_[a];
    }
    return off;
  }

  // out[j] = x[j] with the mask applied (-inf where masked out, + mask where additive).
  template <class T>
  void apply(Index r, const T* x, T* out, Index n) const {
    apply_range(r, 0, x, out, n);
  }
  // The same for columns [col0, col0 + n) of row r; x and out point at column col0.
  template <class T>
  void apply_range(Index r, Index col0, const T* x, T* out, Index n) const {
    const Index off = row_offset(r) + col0 * col_stride_;
    const Index cs = col_stride_;
    constexpr T ninf = -std::numeric_limits<T>::infinity();
    switch (mask_.dtype()) {
      case Mask::DType::boolean: {
        const bool* m = static_cast<const bool*>(mask_.data()) + off;
        const bool keep_when = mask_.kind() == MaskKind::allowed;
        for (Index j = 0; j < n; ++j) out[j] = (m[j * cs] == keep_when) ? x[j] : ninf;
        break;
      }
      case Mask::DType::f32: {
        const float* m = static_cast<const float*>(mask_.data()) + off;
        for (Index j = 0; j < n; ++j) out[j] = x[j] + static_cast<T>(m[j * cs]);
        break;
      }
      case Mask::DType::f64: {
        const double* m = static_cast<const double*>(mask_.data()) + off;
        for (Index j = 0; j < n; ++j) out[j] = x[j] + static_cast<T>(m[j * cs]);
        break;
      }
    }
  }

 private:
  Mask mask_;
  int lead_ = 0;
  Index col_stride_ = 0;
  std::array<Index, Mask::kMaxRank> lead_stride_{};
  std::array<Index, Mask::kMaxRank> dims_{};
};

}  // namespace detail
}  // namespace tessera
