// tessera: the linear layer's product and (batched) matrix multiplication, through Eigen's GEMM.
//
//   linear(x, W, b) = x W^T + b    x: [..., in], W: [out, in] (PyTorch's layout), b: [out]
//   matmul(a, b)    = a b          a: [m, k] or [batch, m, k], b: [k, n] or [batch, k, n]
//   (options: either operand transposed, a factor alpha, and c += in place of c = for _into)
//
// Eigen parallelises a large product itself (OpenMP, tessera::set_num_threads); batched products
// run one batch per thread instead.
#pragma once

#include <cmath>
#include <optional>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"

namespace tessera {

template <class T>
struct LinearOptions {
  std::optional<TensorMap<const T, 1>> bias;  // [out]
};

struct MatmulOptions {
  bool transpose_a = false;  // use a^T ([k, m] stored) in place of a
  bool transpose_b = false;  // use b^T ([n, k] stored) in place of b
  double alpha = 1.0;        // c = alpha op(a) op(b) (the scaling runs inside the GEMM)
  bool accumulate = false;   // c += alpha op(a) op(b) instead of overwriting c
};

// y = x W^T + b into `out` of shape [..., out_features]. out must not overlap x or W.
template <TensorLike X, TensorLike W, class Y>
void linear_into(const X& x, const W& weight, Y&& out,
                 const LinearOptions<scalar_t<X>>& opts = {}) {
  using T = scalar_t<X>;
  constexpr int R = rank_v<X>;
  static_assert(R >= 1, "linear needs an input of rank >= 1");
  static_assert(rank_v<W> == 2, "linear's weight is a matrix [out_features, in_features]");
  static_assert(std::is_same_v<T, scalar_t<W>> && std::is_same_v<T, scalar_t<Y>>,
                "linear: input, weight and output scalar types differ");
  constexpr std::string_view fn = "tessera::linear";
  const auto xv = cview(x);
  const auto wv = cview(weight);
  auto yv = mview(out);
  const Index in = xv.cols(), out_f = wv.dim(0);
  if (wv.dim(1) != in)
    detail::raise<ShapeError>(fn, "argument 'weight' has shape ", detail::shape_string(wv.shape()),
                              ", expected [out_features, ", in, "] to match input of shape ",
                              detail::shape_string(xv.shape()));
  Shape<R> expected = xv.shape();
  expected[R - 1] = out_f;
  detail::check_shape_equal(fn, "out", yv.shape(), expected);
  if (opts.bias) {
    const Index b_expected[] = {out_f};
    detail::check_shape_equal(fn, "bias", opts.bias->shape(), b_expected);
  }
  auto Y_ = yv.as_matrix();
  if (in == 0) {
    Y_.setZero();
  } else {
    // [rows, out] = [rows, in] x [in, out]
    Y_.noalias() = xv.as_matrix() * wv.as_matrix().transpose();
  }
  if (opts.bias) Y_.rowwise() += opts.bias->as_vector().transpose();
}

template <TensorLike X, TensorLike W>
Tensor<scalar_t<X>, rank_v<X>> linear(const X& x, const W& weight,
                                      const LinearOptions<scalar_t<X>>& opts = {}) {
  static_assert(rank_v<W> == 2, "linear's weight is a matrix [out_features, in_features]");
  Shape<rank_v<X>> s = x.shape();
  s[rank_v<X> - 1] = weight.shape()[0];
  Tensor<scalar_t<X>, rank_v<X>> out(s, uninitialized);
  linear_into(x, weight, out, opts);
  return out;
}

namespace detail {

// c = alpha op(a) op(b), or c += it, for one matrix each.
template <class T>
void gemm_one(const T* a, const T* b, T* c, Index m, Index k, Index n, const MatmulOptions& o) {
  MatrixMap<const T> A(a, o.transpose_a ? k : m, o.transpose_a ? m : k);
  MatrixMap<const T> B(b, o.transpose_b ? n : k, o.transpose_b ? k : n);
  MatrixMap<T> C(c, m, n);
  if (k == 0) {
    if (!o.accumulate) C.setZero();
    return;
  }
  const T alpha = static_cast<T>(o.alpha);
  const auto product = [&](const auto& lhs, const auto& rhs) {
    if (o.accumulate)
      C.noalias() += alpha * lhs * rhs;
    else
      C.noalias() = alpha * lhs * rhs;
  };
  if (!o.transpose_a && !o.transpose_b)
    product(A, B);
  else if (!o.transpose_a)
    product(A, B.transpose());
  else if (!o.transpose_b)
    product(A.transpose(), B);
  else
    product(A.transpose(), B.transpose());
}

}  // namespace detail

// c = alpha op(a) op(b) into `out` (added to it with `accumulate`), for matrices
// ([m, k] x [k, n]) or batches of them ([batch, m, k] x [batch, k, n]). out must not overlap a
// or b. alpha must be finite in the tensors' scalar type.
template <TensorLike A, TensorLike B, class C>
void matmul_into(const A& a, const B& b, C&& out, const MatmulOptions& opts = {}) {
  using T = scalar_t<A>;
  constexpr int R = rank_v<A>;
  static_assert(R == 2 || R == 3, "matmul takes matrices [m, k] or batches [batch, m, k]");
  static_assert(rank_v<B> == R && rank_v<C> == R, "matmul: a, b and out must have the same rank");
  static_assert(std::is_same_v<T, scalar_t<B>> && std::is_same_v<T, scalar_t<C>>,
                "matmul: a, b and out scalar types differ");
  constexpr std::string_view fn = "tessera::matmul";
  const auto av = cview(a);
  const auto bv = cview(b);
  auto cv = mview(out);
  const Index batch = R == 3 ? av.dim(0) : 1;
  if (R == 3 && bv.dim(0) != batch)
    detail::raise<ShapeError>(fn, "argument 'b' has shape ", detail::shape_string(bv.shape()),
                              ", expected batch size ", batch, " to match a of shape ",
                              detail::shape_string(av.shape()));
  const Index m = opts.transpose_a ? av.dim(-1) : av.dim(-2);
  const Index k = opts.transpose_a ? av.dim(-2) : av.dim(-1);
  const Index kb = opts.transpose_b ? bv.dim(-1) : bv.dim(-2);
  const Index n = opts.transpose_b ? bv.dim(-2) : bv.dim(-1);
  if (kb != k)
    detail::raise<ShapeError>(fn, "inner dimensions differ: a of shape ",
                              detail::shape_string(av.shape()),
                              (opts.transpose_a ? " (transposed)" : ""), " gives k = ", k,
                              ", b of shape ", detail::shape_string(bv.shape()),
                              (opts.transpose_b ? " (transposed)" : ""), " gives k = ", kb);
  Shape<R> expected;
  if constexpr (R == 3)
    expected = {batch, m, n};
  else
    expected = {m, n};
  detail::check_shape_equal(fn, "out", cv.shape(), expected);
  if (!std::isfinite(static_cast<T>(opts.alpha)))
    detail::raise<ValueError>(fn, "option 'alpha' is ", opts.alpha,
                              ", expected a finite value in the tensors' scalar type");
  const Index sa = m * k, sb = k * n, sc = m * n;
  if (batch == 1) {
    detail::gemm_one(av.data(), bv.data(), cv.data(), m, k, n, opts);
    return;
  }
  parallel_for(batch, 1, [&](Index b0, Index b1) {
    for (Index i = b0; i < b1; ++i)
      detail::gemm_one(av.data() + i * sa, bv.data() + i * sb, cv.data() + i * sc, m, k, n, opts);
  });
}

template <TensorLike A, TensorLike B>
Tensor<scalar_t<A>, rank_v<A>> matmul(const A& a, const B& b, const MatmulOptions& opts = {}) {
  constexpr int R = rank_v<A>;
  static_assert(R == 2 || R == 3, "matmul takes matrices [m, k] or batches [batch, m, k]");
  const auto& as = a.shape();
  const auto& bs = b.shape();
  const Index m = opts.transpose_a ? as[R - 1] : as[R - 2];
  const Index n = opts.transpose_b ? bs[rank_v<B> - 2] : bs[rank_v<B> - 1];
  Shape<R> s;
  if constexpr (R == 3)
    s = {as[0], m, n};
  else
    s = {m, n};
  Tensor<scalar_t<A>, R> out(s, uninitialized);
  matmul_into(a, b, out, opts);
  return out;
}

}  // namespace tessera
