// tessera: the linear layer's product and (batched) matrix multiplication, on tessera's packed
// GEMM (kernels/gemm.hpp).
//
//   linear(x, W, b) = act(x W^T + b) + residual    x: [..., in], W: [out, in] (PyTorch's layout),
//                                                  b: [out]; bias, activation and residual are
//                                                  applied to each output tile while it is in cache
//   matmul(a, b)    = a b          a: [m, k] or [batch, m, k], b: [k, n] or [batch, k, n]
//   (options: either operand transposed, a factor alpha, and c += in place of c = for _into)
//
// W may also be given pre-packed (PackedMatrix<T>::from_weight(W)), so a layer used many times
// never re-packs its weight. One product is split across tessera's threads; batched products run
// one batch per thread instead.
#pragma once

#include <cmath>
#include <optional>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/threading.hpp"
#include "tessera/kernels/activation.hpp"
#include "tessera/kernels/gemm.hpp"

namespace tessera {

template <class T>
struct LinearOptions {
  std::optional<TensorMap<const T, 1>> bias;     // [out]
  Activation activation = Activation::identity;  // applied after the bias
  // [rows, out]: the output's shape flattened to two dimensions (x.reshape<2>({-1, out})), added
  // after the activation. It must not overlap the output (the product is stored before the
  // residual is read): ValueError.
  std::optional<TensorMap<const T, 2>> residual;
};

struct MatmulOptions {
  bool transpose_a = false;  // use a^T ([k, m] stored) in place of a
  bool transpose_b = false;  // use b^T ([n, k] stored) in place of b
  double alpha = 1.0;        // c = alpha op(a) op(b) (the scaling runs inside the GEMM)
  bool accumulate = false;   // c += alpha op(a) op(b) instead of overwriting c
};

namespace detail {

// Bytes spanned by a row-major [rows, cols] block with row stride ld (0 when it is empty).
template <class T>
std::size_t span_bytes(Index rows, Index cols, Index ld) {
  if (rows <= 0 || cols <= 0) return 0;
  return (static_cast<std::size_t>(rows - 1) * static_cast<std::size_t>(ld) +
          static_cast<std::size_t>(cols)) *
         sizeof(T);
}

// Throws ValueError when the output [out, out + out_bytes) shares memory with an input: the
// product reads every input while it writes the output, so no overlap (not even the input
// itself) gives the right answer.
template <class T>
void check_output_disjoint(std::string_view fn, const T* out, std::size_t out_bytes,
                           std::string_view in_name, const T* in, std::size_t in_bytes) {
  if (ranges_overlap(out, out_bytes, in, in_bytes))
    raise<ValueError>(fn, "argument 'out' overlaps argument '", in_name,
                      "'; the output must not share memory with an input");
}

// Checks and runs y = act(x W^T + b) + residual; `weight` is W's storage ([out, in]) or null when
// `packed` holds W^T.
template <class X, class Y, class T>
void linear_run(const X& x, const T* weight, const PackedMatrix<T>* packed, Index out_f, Index w_in,
                Y&& out, const LinearOptions<T>& opts) {
  constexpr int R = rank_v<X>;
  constexpr std::string_view fn = "tessera::linear";
  const auto xv = cview(x);
  auto yv = mview(out);
  const Index in = xv.cols();
  if (w_in != in)
    detail::raise<ShapeError>(fn, "argument 'weight' (packed) has ", w_in,
                              " input features, expected ", in, " to match input of shape ",
                              detail::shape_string(xv.shape()));
  Shape<R> expected = xv.shape();
  expected[R - 1] = out_f;
  detail::check_shape_equal(fn, "out", yv.shape(), expected);
  if (opts.bias) {
    const Index b_expected[] = {out_f};
    detail::check_shape_equal(fn, "bias", opts.bias->shape(), b_expected);
  }
  const Index rows = xv.rows();
  if (opts.residual) {
    const Index r_expected[] = {rows, out_f};
    detail::check_shape_equal(fn, "residual", opts.residual->shape(), r_expected);
  }
  check_activation(fn, "activation", opts.activation);
  const std::size_t out_bytes = span_bytes<T>(rows, out_f, out_f);
  check_output_disjoint(fn, yv.data(), out_bytes, "x", xv.data(), span_bytes<T>(rows, in, in));
  if (weight)
    check_output_disjoint(fn, yv.data(), out_bytes, "weight", weight, span_bytes<T>(out_f, in, in));
  if (opts.bias)
    check_output_disjoint(fn, yv.data(), out_bytes, "bias", opts.bias->data(),
                          span_bytes<T>(1, out_f, out_f));
  if (opts.residual)
    check_output_disjoint(fn, yv.data(), out_bytes, "residual", opts.residual->data(), out_bytes);
  GemmProblem<T> p;
  p.m = rows;
  p.n = out_f;
  p.k = in;
  p.a = xv.data();
  p.lda = in;
  p.b = weight;
  p.ldb = in;
  p.trans_b = true;
  p.packed_b = packed;
  p.c = yv.data();
  p.ldc = out_f;
  p.epilogue.bias = opts.bias ? opts.bias->data() : nullptr;
  p.epilogue.activation = opts.activation;
  p.epilogue.residual = opts.residual ? opts.residual->data() : nullptr;
  p.epilogue.residual_stride = out_f;
  gemm(p);
}

}  // namespace detail

// y = act(x W^T + b) + residual into `out` of shape [..., out_features]. out must not overlap x,
// W, the bias or the residual (ValueError); an activation that is not one of Activation's values is
// a ValueError.
template <TensorLike X, TensorLike W, class Y>
void linear_into(const X& x, const W& weight, Y&& out,
                 const LinearOptions<scalar_t<X>>& opts = {}) {
  using T = scalar_t<X>;
  static_assert(rank_v<X> >= 1, "linear needs an input of rank >= 1");
  static_assert(rank_v<W> == 2, "linear's weight is a matrix [out_features, in_features]");
  static_assert(std::is_same_v<T, scalar_t<W>> && std::is_same_v<T, scalar_t<Y>>,
                "linear: input, weight and output scalar types differ");
  const auto wv = cview(weight);
  const auto xv = cview(x);
  if (wv.dim(1) != xv.cols())
    detail::raise<ShapeError>("tessera::linear", "argument 'weight' has shape ",
                              detail::shape_string(wv.shape()), ", expected [out_features, ",
                              xv.cols(), "] to match input of shape ",
                              detail::shape_string(xv.shape()));
  detail::linear_run(xv, wv.data(), static_cast<const PackedMatrix<T>*>(nullptr), wv.dim(0),
                     wv.dim(1), std::forward<Y>(out), opts);
}

// The same with W packed beforehand (PackedMatrix<T>::from_weight(W)).
template <TensorLike X, class Y>
void linear_into(const X& x, const PackedMatrix<scalar_t<X>>& weight, Y&& out,
                 const LinearOptions<scalar_t<X>>& opts = {}) {
  static_assert(rank_v<X> >= 1, "linear needs an input of rank >= 1");
  detail::linear_run(x, static_cast<const scalar_t<X>*>(nullptr), &weight, weight.cols(),
                     weight.rows(), std::forward<Y>(out), opts);
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

template <TensorLike X>
Tensor<scalar_t<X>, rank_v<X>> linear(const X& x, const PackedMatrix<scalar_t<X>>& weight,
                                      const LinearOptions<scalar_t<X>>& opts = {}) {
  Shape<rank_v<X>> s = x.shape();
  s[rank_v<X> - 1] = weight.cols();
  Tensor<scalar_t<X>, rank_v<X>> out(s, uninitialized);
  linear_into(x, weight, out, opts);
  return out;
}

namespace detail {

// c = alpha op(a) op(b), or c += it, for one matrix each.
template <class T>
void gemm_one(const T* a, const T* b, T* c, Index m, Index k, Index n, const MatmulOptions& o) {
  GemmProblem<T> p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a;
  p.lda = o.transpose_a ? m : k;
  p.trans_a = o.transpose_a;
  p.b = b;
  p.ldb = o.transpose_b ? k : n;
  p.trans_b = o.transpose_b;
  p.c = c;
  p.ldc = n;
  p.alpha = static_cast<T>(o.alpha);
  p.accumulate = o.accumulate;
  gemm(p);
}

}  // namespace detail

// c = alpha op(a) op(b) into `out` (added to it with `accumulate`), for matrices
// ([m, k] x [k, n]) or batches of them ([batch, m, k] x [batch, k, n]). out must not overlap a
// or b (ValueError). alpha must be finite in the tensors' scalar type.
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
  const std::size_t c_bytes = detail::span_bytes<T>(batch * m, n, n);
  detail::check_output_disjoint(fn, cv.data(), c_bytes, "a", av.data(),
                                detail::span_bytes<T>(batch, m * k, m * k));
  detail::check_output_disjoint(fn, cv.data(), c_bytes, "b", bv.data(),
                                detail::span_bytes<T>(batch, k * n, k * n));
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
