// tessera: Tensor<T, Rank> (owning) and TensorMap<T, Rank> (a view over someone else's memory).
//
// Both are contiguous and row-major: the last index moves fastest. A Tensor owns a 64-byte
// aligned buffer; a TensorMap is a pointer plus a shape and never owns anything. Everything that
// reads a tensor accepts either (see `TensorLike`), and both are seen by Eigen without a copy:
//
//   tessera::Tensor<float, 3> x(2, 3, 4);            // zero-filled, shape [2, 3, 4]
//   x.setRandom(/*seed=*/7);
//   auto m = x.as_matrix();                          // Eigen row-major map, 6 x 4
//   tessera::TensorMap<float, 2> first = x[0];       // view of shape [3, 4]
//   auto flat = x.reshape<2>({-1, 4});               // view of shape [6, 4]
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <random>
#include <span>
#include <type_traits>
#include <utility>

#include "tessera/core/config.hpp"
#include "tessera/core/eigen.hpp"
#include "tessera/core/error.hpp"

namespace tessera {

template <int Rank>
using Shape = std::array<Index, Rank>;

template <class T, int Rank>
class Tensor;
template <class T, int Rank>
class TensorMap;

// Tag for constructing a Tensor whose elements are left uninitialised.
struct Uninitialized {
  explicit Uninitialized() = default;
};
inline constexpr Uninitialized uninitialized{};

// Row-major Eigen types over a tensor's elements. `E` may be const-qualified.
template <class E>
using RowMajorMatrix =
    Eigen::Matrix<std::remove_const_t<E>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class E>
using RowMajorArray =
    Eigen::Array<std::remove_const_t<E>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class E>
using MatrixMap =
    Eigen::Map<std::conditional_t<std::is_const_v<E>, const RowMajorMatrix<E>, RowMajorMatrix<E>>>;
template <class E>
using ArrayMap =
    Eigen::Map<std::conditional_t<std::is_const_v<E>, const RowMajorArray<E>, RowMajorArray<E>>>;
template <class E>
using VectorMap =
    Eigen::Map<std::conditional_t<std::is_const_v<E>,
                                  const Eigen::Matrix<std::remove_const_t<E>, Eigen::Dynamic, 1>,
                                  Eigen::Matrix<std::remove_const_t<E>, Eigen::Dynamic, 1>>>;

namespace detail {

template <class T, int Depth>
struct NestedInit {
  using type = std::initializer_list<typename NestedInit<T, Depth - 1>::type>;
};
template <class T>
struct NestedInit<T, 1> {
  using type = std::initializer_list<T>;
};

// The product of a shape's sizes. Only for shapes already checked by check_shape (every Tensor
// and TensorMap is), where it cannot overflow.
template <int Rank>
Index shape_size(const Shape<Rank>& shape) {
  Index n = 1;
  for (Index d : shape) n *= d;
  return n;
}

// Throws ShapeError for a negative size, or for sizes whose product (or the product of any
// subset of the non-zero ones: rows, strides, offsets) does not fit Index.
template <int Rank>
void check_shape(std::string_view fn, const Shape<Rank>& shape) {
  for (Index d : shape)
    if (d < 0)
      raise<ShapeError>(fn, "argument 'shape' ", shape_string(shape), " has a negative dimension");
  checked_shape_size(shape, fn, "a tensor");
}

// Aligned buffer management; T is trivially copyable throughout tessera. A size whose bytes do
// not fit size_t (or ptrdiff_t, so pointer differences stay defined) is a ShapeError; a size
// that fits but is more than the machine has is std::bad_alloc from operator new.
template <class T>
T* aligned_new(Index n, std::string_view fn = "tessera::Tensor") {
  if (n == 0) return nullptr;
  constexpr auto kMaxBytes = static_cast<std::size_t>(PTRDIFF_MAX) - kTensorAlignment;
  if (n < 0 || static_cast<std::size_t>(n) > kMaxBytes / sizeof(T))
    raise<ShapeError>(fn, "a tensor of ", n, " elements of ", sizeof(T),
                      " bytes is larger than the address space");
  std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
  bytes = (bytes + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
  return static_cast<T*>(::operator new (bytes, std::align_val_t{kTensorAlignment}));
}
template <class T>
void aligned_delete(T* p) {
  if (p) ::operator delete (p, std::align_val_t{kTensorAlignment});
}

// Walks a nested initializer list, checking it is rectangular, and records or checks the shape.
template <class T, int Rank, int Depth, class List>
void nested_shape(const List& list, Shape<Rank>& shape, bool first) {
  constexpr int axis = Rank - Depth;
  const auto n = static_cast<Index>(list.size());
  if (first) {
    shape[axis] = n;
  } else if (shape[axis] != n) {
    raise<ShapeError>("tessera::Tensor", "nested initializer list is ragged: axis ", axis, " has ",
                      n, " elements where an earlier row had ", shape[axis]);
  }
  if constexpr (Depth > 1) {
    bool sub_first = first;
    for (const auto& sub : list) {
      nested_shape<T, Rank, Depth - 1>(sub, shape, sub_first);
      sub_first = false;
    }
    // An empty outer list says nothing about the inner sizes: they are zero.
    if (n == 0 && first)
      for (int a = axis + 1; a < Rank; ++a) shape[a] = 0;
  }
}
template <class T, int Depth, class List>
void nested_copy(const List& list, T*& out) {
  if constexpr (Depth == 1) {
    for (const auto& v : list) *out++ = v;
  } else {
    for (const auto& sub : list) nested_copy<T, Depth - 1>(sub, out);
  }
}

// True for Tensor (which owns its elements), false for views. Views of an rvalue Tensor would
// dangle at the end of the statement, so every member and function that returns or keeps a view
// refuses one at compile time.
template <class D>
inline constexpr bool is_owning_tensor_v = false;
template <class T, int Rank>
inline constexpr bool is_owning_tensor_v<Tensor<T, Rank>> = true;

// Shared accessors of Tensor and TensorMap (CRTP). `Derived::data()` decides constness: a
// const Tensor gives const elements, a TensorMap<T> gives T whatever its own constness.
template <class Derived, int Rank>
class TensorBase {
 public:
  static constexpr int rank = Rank;

  const Shape<Rank>& shape() const noexcept { return shape_; }
  Index dim(int axis_in) const {
    const int axis = axis_in < 0 ? axis_in + Rank : axis_in;
    if (axis < 0 || axis >= Rank)
      raise<IndexError>("tessera::Tensor::dim", "argument 'axis' is ", axis_in,
                        ", expected a value in [", -Rank, ", ", Rank, ")");
    return shape_[static_cast<std::size_t>(axis)];
  }
  Index size() const noexcept { return shape_size<Rank>(shape_); }
  bool empty() const noexcept { return size() == 0; }

  // Element access. Unchecked in release builds, asserted in debug builds.
  template <class... I>
  requires(sizeof...(I) == Rank && (std::integral<I> && ...)) decltype(auto) operator()(
      I... idx) const {
    return self().data()[offset_unchecked(static_cast<Index>(idx)...)];
  }
  template <class... I>
  requires(sizeof...(I) == Rank && (std::integral<I> && ...)) decltype(auto) operator()(I... idx) {
    return self().data()[offset_unchecked(static_cast<Index>(idx)...)];
  }

  // Element access that is always bounds checked and throws IndexError.
  template <class... I>
  requires(sizeof...(I) == Rank && (std::integral<I> && ...)) decltype(auto) at(I... idx) const {
    return self().data()[offset_checked(static_cast<Index>(idx)...)];
  }
  template <class... I>
  requires(sizeof...(I) == Rank && (std::integral<I> && ...)) decltype(auto) at(I... idx) {
    return self().data()[offset_checked(static_cast<Index>(idx)...)];
  }

  // x[i]: the i-th slice along the leading dimension, as a view of rank Rank - 1 (an element
  // reference for rank 1). Always bounds checked: it is not meant for inner loops.
  decltype(auto) operator[](Index i) const& { return slice_impl(self().data(), i); }
  decltype(auto) operator[](Index i) & { return slice_impl(self().data(), i); }
  void operator[](Index) && requires is_owning_tensor_v<Derived> = delete;
  void operator[](Index) const&& requires is_owning_tensor_v<Derived> = delete;

  // A view with another shape of the same size. One dimension may be -1 (inferred).
  template <int NewRank>
  auto reshape(Shape<NewRank> new_shape) const& {
    return reshape_impl<NewRank>(self().data(), new_shape);
  }
  template <int NewRank>
  auto reshape(Shape<NewRank> new_shape) & {
    return reshape_impl<NewRank>(self().data(), new_shape);
  }
  template <int NewRank>
  void reshape(Shape<NewRank>) && requires is_owning_tensor_v<Derived> = delete;
  template <int NewRank>
  void reshape(Shape<NewRank>) const&& requires is_owning_tensor_v<Derived> = delete;

  // Views of the whole tensor.
  auto view() const& {
    return TensorMap<std::remove_pointer_t<decltype(self().data())>, Rank>(self().data(), shape_);
  }
  auto view() & {
    return TensorMap<std::remove_pointer_t<decltype(self().data())>, Rank>(self().data(), shape_);
  }
  void view() && requires is_owning_tensor_v<Derived> = delete;
  void view() const&& requires is_owning_tensor_v<Derived> = delete;

  // Eigen interop, zero-copy. The matrix folds every dimension but the last into rows:
  // shape [a, b, c] is seen as an (a*b) x c row-major matrix; rank 1 as a 1 x n row, rank 0 as 1
  // x 1.
  Index rows() const noexcept { return leading_size(); }
  Index cols() const noexcept { return Rank == 0 ? 1 : shape_[Rank - 1]; }
  auto as_matrix() const& { return make_matrix(self().data()); }
  auto as_matrix() & { return make_matrix(self().data()); }
  void as_matrix() && requires is_owning_tensor_v<Derived> = delete;
  void as_matrix() const&& requires is_owning_tensor_v<Derived> = delete;
  auto as_array() const& { return make_array(self().data()); }
  auto as_array() & { return make_array(self().data()); }
  void as_array() && requires is_owning_tensor_v<Derived> = delete;
  void as_array() const&& requires is_owning_tensor_v<Derived> = delete;
  // Every element as one column vector (use `.array()` on it for coefficient-wise work).
  auto as_vector() const& { return make_vector(self().data()); }
  auto as_vector() & { return make_vector(self().data()); }
  void as_vector() && requires is_owning_tensor_v<Derived> = delete;
  void as_vector() const&& requires is_owning_tensor_v<Derived> = delete;

  // Fill helpers; only for mutable elements.
  Derived& setZero() { return setConstant(0); }
  template <class V>
  Derived& setConstant(V value) {
    auto* p = self().data();
    std::fill(p, p + size(), static_cast<std::remove_pointer_t<decltype(p)>>(value));
    return self();
  }
  // Uniform in [lo, hi), from a 64-bit Mersenne twister: the same seed gives the same tensor.
  Derived& setRandom(std::uint64_t seed = 0x7e55e7a, double lo = -1.0, double hi = 1.0) {
    using E = std::remove_pointer_t<decltype(self().data())>;
    static_assert(std::is_floating_point_v<E>, "setRandom needs a floating-point tensor");
    if (!(lo < hi))
      raise<ValueError>("tessera::Tensor::setRandom", "arguments 'lo' and 'hi' are ", lo, " and ",
                        hi, ", expected lo < hi");
    std::mt19937_64 gen(seed);
    std::uniform_real_distribution<double> dist(lo, hi);
    E* p = self().data();
    const E top = static_cast<E>(hi), below_top = std::nextafter(top, static_cast<E>(lo));
    for (Index i = 0, n = size(); i < n; ++i) {
      const E v = static_cast<E>(dist(gen));  // a double just below hi may round up to hi
      p[i] = v < top ? v : below_top;
    }
    return self();
  }
  // Normal(mean, stddev) samples, e.g. for initialising weights.
  Derived& setRandomNormal(std::uint64_t seed, double mean = 0.0, double stddev = 1.0) {
    using E = std::remove_pointer_t<decltype(self().data())>;
    static_assert(std::is_floating_point_v<E>, "setRandomNormal needs a floating-point tensor");
    if (!(stddev >= 0))
      raise<ValueError>("tessera::Tensor::setRandomNormal", "argument 'stddev' is ", stddev,
                        ", expected a value >= 0");
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> dist(mean, stddev);
    E* p = self().data();
    for (Index i = 0, n = size(); i < n; ++i) p[i] = static_cast<E>(dist(gen));
    return self();
  }

 protected:
  TensorBase() = default;
  explicit TensorBase(const Shape<Rank>& shape) : shape_(shape) {}
  Shape<Rank> shape_{};

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
  Derived& self() { return static_cast<Derived&>(*this); }

  Index leading_size() const noexcept {
    Index n = 1;
    for (int a = 0; a + 1 < Rank; ++a) n *= shape_[a];
    return n;
  }

  template <class... I>
  Index offset_unchecked(I... idx) const {
    const Index ids[] = {idx..., 0};
    Index off = 0;
    for (int a = 0; a < Rank; ++a) {
      TESSERA_DEBUG_ASSERT(ids[a] >= 0 && ids[a] < shape_[a], "tessera::Tensor index out of range");
      off = off * shape_[a] + ids[a];
    }
    return off;
  }
  template <class... I>
  Index offset_checked(I... idx) const {
    const Index ids[] = {idx..., 0};
    Index off = 0;
    for (int a = 0; a < Rank; ++a) {
      if (ids[a] < 0 || ids[a] >= shape_[a])
        raise<IndexError>("tessera::Tensor::at", "index ", ids[a], " on axis ", a,
                          " is out of range for shape ", shape_string(shape_));
      off = off * shape_[a] + ids[a];
    }
    return off;
  }

  template <class E>
  decltype(auto) slice_impl(E* p, Index i) const {
    static_assert(Rank >= 1, "operator[] needs rank >= 1");
    if (i < 0 || i >= shape_[0])
      raise<IndexError>("tessera::Tensor::operator[]", "index ", i,
                        " is out of range for leading dimension of shape ", shape_string(shape_));
    if constexpr (Rank == 1) {
      return static_cast<E&>(p[i]);
    } else {
      Shape<Rank - 1> sub;
      std::copy(shape_.begin() + 1, shape_.end(), sub.begin());
      return TensorMap<E, Rank - 1>(p + i * shape_size<Rank - 1>(sub), sub);
    }
  }

  template <int NewRank, class E>
  TensorMap<E, NewRank> reshape_impl(E* p, Shape<NewRank> s) const {
    int inferred = -1;
    Index known = 1;
    for (int a = 0; a < NewRank; ++a) {
      if (s[a] == -1 && inferred < 0) {
        inferred = a;
      } else if (s[a] < 0) {
        raise<ShapeError>("tessera::Tensor::reshape", "argument 'shape' ", shape_string(s),
                          " may hold at most one -1 and no other negative size (tensor of shape ",
                          shape_string(shape_), ")");
      } else if (__builtin_mul_overflow(known, s[a], &known)) {
        raise<ShapeError>("tessera::Tensor::reshape", "argument 'shape' ", shape_string(s),
                          " has more elements than an index can hold (tensor of shape ",
                          shape_string(shape_), ")");
      }
    }
    const Index n = size();
    if (inferred >= 0) {
      if (known == 0 || n % known != 0)
        raise<ShapeError>("tessera::Tensor::reshape", "cannot infer the -1 in ", shape_string(s),
                          " for a tensor of shape ", shape_string(shape_), " (", n, " elements)");
      s[inferred] = n / known;
      known = n;
    }
    if (known != n)
      raise<ShapeError>("tessera::Tensor::reshape", "argument 'shape' ", shape_string(s), " has ",
                        known, " elements, expected ", n, " (the size of shape ",
                        shape_string(shape_), ")");
    return TensorMap<E, NewRank>(p, s);
  }

  template <class E>
  MatrixMap<E> make_matrix(E* p) const {
    return MatrixMap<E>(p, rows(), cols());
  }
  template <class E>
  ArrayMap<E> make_array(E* p) const {
    return ArrayMap<E>(p, rows(), cols());
  }
  template <class E>
  VectorMap<E> make_vector(E* p) const {
    return VectorMap<E>(p, size());
  }
};

}  // namespace detail

// A non-owning, contiguous, row-major view. `T` may be const: TensorMap<const float, 2> reads,
// TensorMap<float, 2> reads and writes. The caller keeps the memory alive.
template <class T, int Rank>
class TensorMap : public detail::TensorBase<TensorMap<T, Rank>, Rank> {
  using Base = detail::TensorBase<TensorMap<T, Rank>, Rank>;

 public:
  using Scalar = std::remove_const_t<T>;
  using element_type = T;

  TensorMap() = default;
  TensorMap(T* data, const Shape<Rank>& shape) : Base(shape), data_(data) {
    detail::check_shape<Rank>("tessera::TensorMap", shape);
    if (data == nullptr && this->size() != 0)
      detail::raise<ValueError>("tessera::TensorMap", "argument 'data' is null for shape ",
                                detail::shape_string(shape), " with ", this->size(), " elements");
  }
  // TensorMap<float> -> TensorMap<const float>.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
      TensorMap(const TensorMap<U, Rank>& other)
      : TensorMap(other.data(), other.shape()) {}
  // Views of an owning tensor.
  TensorMap(Tensor<Scalar, Rank>& t) : TensorMap(t.data(), t.shape()) {}
  template <class U = T>
  requires std::is_const_v<U> TensorMap(const Tensor<Scalar, Rank>& t)
      : TensorMap(t.data(), t.shape()) {}
  // A view of a temporary tensor would dangle once the statement ends.
  TensorMap(const Tensor<Scalar, Rank>&&) = delete;

  T* data() const noexcept { return data_; }

  // Copies `src` (same shape) into this view.
  template <class Src>
  void assign(const Src& src) const;

 private:
  T* data_ = nullptr;
};

// An owning, contiguous, row-major tensor with a 64-byte aligned buffer.
template <class T, int Rank>
class Tensor : public detail::TensorBase<Tensor<T, Rank>, Rank> {
  using Base = detail::TensorBase<Tensor<T, Rank>, Rank>;
  static_assert(!std::is_const_v<T> && std::is_trivially_copyable_v<T>,
                "Tensor holds non-const, trivially copyable scalars");
  static_assert(Rank >= 0, "Tensor rank must be >= 0");

 public:
  using Scalar = T;
  using element_type = T;

  // An empty tensor: every dimension 0 (rank 0: one element, zero).
  Tensor() : Tensor(Shape<Rank>{}) {}
  // Zero-filled tensor of the given shape.
  explicit Tensor(const Shape<Rank>& shape) : Tensor(shape, uninitialized) { this->setZero(); }
  // Zero-filled, sizes given one by one: Tensor<float, 3> x(2, 3, 4).
  template <class... I>
  requires(sizeof...(I) == Rank && Rank > 0 && (std::integral<I> && ...)) explicit Tensor(I... dims)
      : Tensor(Shape<Rank>{static_cast<Index>(dims)...}) {}
  // Elements left uninitialised: for outputs that are about to be overwritten.
  Tensor(const Shape<Rank>& shape, Uninitialized) : Base(shape) {
    detail::check_shape<Rank>("tessera::Tensor", shape);
    data_ = detail::aligned_new<T>(this->size());
  }
  // From nested braces: Tensor<float, 2> m{{1, 2, 3}, {4, 5, 6}}. Ragged lists throw ShapeError.
  // (As with std::vector, Tensor<float, 1>{5} holds the value 5; Tensor<float, 1>(5) five zeros.)
  Tensor(typename detail::NestedInit<T, (Rank > 0 ? Rank : 1)>::type values) requires(Rank > 0) {
    Shape<Rank> shape{};
    detail::nested_shape<T, Rank, Rank>(values, shape, true);
    detail::check_shape<Rank>("tessera::Tensor", shape);
    this->shape_ = shape;
    data_ = detail::aligned_new<T>(this->size());
    T* out = data_;
    detail::nested_copy<T, Rank>(values, out);
  }
  // Deep copy of any tensor or view with the same scalar type and rank.
  template <class Src>
  requires(!std::is_same_v<std::remove_cvref_t<Src>, Tensor> &&
           std::is_same_v<typename Src::Scalar, T> &&
           Src::rank == Rank) explicit Tensor(const Src& src)
      : Tensor(src.shape(), uninitialized) {
    if (this->size())
      std::memcpy(data_, src.data(), sizeof(T) * static_cast<std::size_t>(this->size()));
  }

  Tensor(const Tensor& other) : Tensor(other.shape(), uninitialized) {
    if (this->size())
      std::memcpy(data_, other.data_, sizeof(T) * static_cast<std::size_t>(this->size()));
  }
  // Moving leaves `other` empty; a rank-0 tensor always holds its one element, so it is copied.
  Tensor(Tensor&& other) noexcept(Rank > 0) : Base(other.shape_) {
    if constexpr (Rank == 0) {
      data_ = detail::aligned_new<T>(1);
      *data_ = *other.data_;
    } else {
      data_ = std::exchange(other.data_, nullptr);
      other.shape_ = Shape<Rank>{};
    }
  }
  Tensor& operator=(const Tensor& other) {
    if (this != &other) {
      Tensor copy(other);
      swap(copy);
    }
    return *this;
  }
  Tensor& operator=(Tensor&& other) noexcept(Rank > 0) {
    if (this != &other) {
      Tensor moved(std::move(other));
      swap(moved);
    }
    return *this;
  }
  ~Tensor() { detail::aligned_delete(data_); }

  void swap(Tensor& other) noexcept {
    std::swap(this->shape_, other.shape_);
    std::swap(data_, other.data_);
  }

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }

 private:
  T* data_ = nullptr;
};

// Anything tessera reads as a tensor: Tensor, TensorMap, or a type with the same surface.
template <class X>
concept TensorLike = requires(const X& x) {
  typename X::Scalar;
  { X::rank } -> std::convertible_to<int>;
  {x.data()};
  {x.shape()};
};

template <class X>
using scalar_t = typename std::remove_cvref_t<X>::Scalar;
template <class X>
inline constexpr int rank_v = std::remove_cvref_t<X>::rank;

// A read-only view of any tensor-like value. Not of a temporary Tensor: the view would dangle.
template <TensorLike X>
TensorMap<const scalar_t<X>, rank_v<X>> cview(const X& x) {
  return TensorMap<const scalar_t<X>, rank_v<X>>(x.data(), x.shape());
}
template <class T, int Rank>
void cview(const Tensor<T, Rank>&&) = delete;

// A writable view of a Tensor or a TensorMap over mutable elements (not of a temporary Tensor).
template <class X>
requires(TensorLike<std::remove_cvref_t<X>> &&
         !(std::is_rvalue_reference_v<X&&> && detail::is_owning_tensor_v<std::remove_cvref_t<X>>))
auto mview(X&& x) {
  using E = std::remove_pointer_t<decltype(x.data())>;
  static_assert(!std::is_const_v<E>, "tessera: a writable tensor is needed here");
  return TensorMap<E, rank_v<X>>(x.data(), x.shape());
}

template <class T, int Rank>
template <class Src>
void TensorMap<T, Rank>::assign(const Src& src) const {
  static_assert(!std::is_const_v<T>, "assign needs a writable view");
  static_assert(std::is_same_v<typename Src::Scalar, std::remove_const_t<T>>,
                "assign copies between tensors of the same scalar type");
  if (src.shape() != this->shape())
    detail::raise<ShapeError>("tessera::TensorMap::assign", "argument 'src' has shape ",
                              detail::shape_string(src.shape()), ", expected ",
                              detail::shape_string(this->shape()));
  if (this->size())
    std::memmove(data_, src.data(), sizeof(T) * static_cast<std::size_t>(this->size()));
}

}  // namespace tessera
