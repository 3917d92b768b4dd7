// tessera: a learnable tensor, as a value and a gradient of the same shape.
//
// Inference only reads `value`. `grad` stays empty until a backward pass (or `zero_grad`)
// allocates it, so a module built for inference pays nothing for it.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::detail {

// Whether this thread is inside an nn::SkipInit scope.
inline bool& skip_init_flag() noexcept {
  thread_local bool skip = false;
  return skip;
}

}  // namespace tessera::detail

namespace tessera::nn {

// While one is alive on this thread, modules constructed here leave their parameters
// uninitialised: no random draws, no zero fill, memory allocated but not written (so not yet
// resident). For modules about to be overwritten by a strict load_state_dict, where the
// initialisation would cost seconds and be thrown away (PyTorch's torch.nn.utils.skip_init does
// the same). Reading a parameter that nothing has written since is undefined; load every one.
//
//   tessera::nn::SkipInit skip;
//   tessera::nn::Linear<float> proj({.in_features = 768, .out_features = 512});  // not drawn
//   proj.load_state_dict(dict);  // strict: every parameter written
class SkipInit {
 public:
  SkipInit() noexcept : previous_(detail::skip_init_flag()) { detail::skip_init_flag() = true; }
  ~SkipInit() { detail::skip_init_flag() = previous_; }
  SkipInit(const SkipInit&) = delete;
  SkipInit& operator=(const SkipInit&) = delete;

 private:
  bool previous_;
};

template <class T, int Rank>
struct Parameter {
  using Scalar = T;
  static constexpr int rank = Rank;

  Tensor<T, Rank> value;
  Tensor<T, Rank> grad;
  // Bumped by Module::load_state_dict when it overwrites `value` in place. A packed copy of a
  // weight (nn::Linear::prepack) remembers the buffer and version it was made from and is used
  // only while both are unchanged, so loading a checkpoint, replacing `value` or copying the
  // module never runs on stale packed weights.
  std::uint64_t version = 0;

  Parameter() = default;
  // Zero-filled, or uninitialised inside an nn::SkipInit scope.
  explicit Parameter(const Shape<Rank>& shape)
      : value(detail::skip_init_flag() ? Tensor<T, Rank>(shape, uninitialized)
                                       : Tensor<T, Rank>(shape)) {}
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

namespace tessera::detail {

// Initialisers for module constructors: they do nothing inside an nn::SkipInit scope.
template <class P>
void init_uniform(P& p, std::uint64_t seed, double lo, double hi) {
  if (!skip_init_flag()) p.value.setRandom(seed, lo, hi);
}
template <class P>
void init_normal(P& p, std::uint64_t seed, double mean, double stddev) {
  if (!skip_init_flag()) p.value.setRandomNormal(seed, mean, stddev);
}
template <class P, class V>
void init_constant(P& p, V value) {
  if (!skip_init_flag()) p.value.setConstant(value);
}

// What a packed copy of a weight was made from: the value's buffer and the parameter's version.
// A copy made from another buffer (the module was copied, or `value` replaced) or an older
// version (a state dict was loaded since) is stale; an empty stamp matches nothing.
struct PackStamp {
  const void* data = nullptr;
  std::uint64_t version = 0;

  template <class T, int Rank>
  static PackStamp of(const nn::Parameter<T, Rank>& p) noexcept {
    return {p.value.data(), p.version};
  }
  template <class T, int Rank>
  bool matches(const nn::Parameter<T, Rank>& p) const noexcept {
    return data != nullptr && data == p.value.data() && version == p.version;
  }
};

// The check every module runs on the parameters it reads, at each forward-like entry: a
// parameter's value is a public member, so a user (or a state dict loaded by hand) can replace it
// with a tensor of any shape. Throws ShapeError unless `p` has the shape `expected`, naming the
// entry point and the parameter under its state-dict name, e.g.
//   tessera::nn::TokenEmbedding::forward: parameter 'positional_embedding' has shape [4, 8],
//   expected [16, 8]
// `prefix` is the parameter's module path ("layers.0.norm1."), joined only for the message.
template <class T, int Rank>
void check_parameter(std::string_view fn, std::string_view prefix, std::string_view name,
                     const nn::Parameter<T, Rank>& p, const Shape<Rank>& expected) {
  if (p.value.shape() != expected)
    raise<ShapeError>(fn, "parameter '", prefix, name, "' has shape ",
                      shape_string(p.value.shape()), ", expected ", shape_string(expected));
}

// A child module's parameter prefix, `prefix` + `part` (+ the index and a "." when given:
// "layers." and 3 make "layers.3."), joined in a buffer on the stack, so that a forward checking a
// whole model's parameters allocates nothing; a prefix of more than 200 characters goes to the
// heap. Converts to the std::string_view the check_parameters functions take.
class ParameterPrefix {
 public:
  ParameterPrefix(std::string_view prefix, std::string_view part) { append(prefix), append(part); }
  ParameterPrefix(std::string_view prefix, std::string_view part, std::size_t index) {
    append(prefix), append(part);
    char digits[24];
    const auto r = std::to_chars(digits, digits + sizeof digits, index);
    append(std::string_view(digits, static_cast<std::size_t>(r.ptr - digits)));
    append(".");
  }
  ParameterPrefix(const ParameterPrefix&) = delete;
  ParameterPrefix& operator=(const ParameterPrefix&) = delete;
  operator std::string_view() const noexcept {
    return heap_.empty() ? std::string_view(buf_, size_) : std::string_view(heap_);
  }

 private:
  void append(std::string_view s) {
    if (heap_.empty() && size_ + s.size() <= sizeof buf_) {
      std::copy(s.begin(), s.end(), buf_ + size_);
      size_ += s.size();
      return;
    }
    if (heap_.empty()) heap_.assign(buf_, size_);
    heap_ += s;
  }
  char buf_[200];
  std::size_t size_ = 0;
  std::string heap_;
};

}  // namespace tessera::detail
