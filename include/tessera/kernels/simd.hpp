// tessera: the one place that knows about SIMD. A thin layer over Eigen's packet math, so every
// vector loop in tessera is written once and compiles to AVX-512, AVX2, SSE, NEON or scalar code,
// whichever the consumer's compiler flags enable (Eigen picks the widest packet available).
#pragma once

#include <limits>
#include <type_traits>

#include "tessera/core/config.hpp"
#include "tessera/core/eigen.hpp"

namespace tessera::simd {

template <class T>
using Packet = typename Eigen::internal::packet_traits<T>::type;

// Lanes in one packet of T (1 when Eigen does not vectorise T).
template <class T>
inline constexpr Index width = Eigen::internal::unpacket_traits<Packet<T>>::size;

template <class T>
EIGEN_STRONG_INLINE Packet<T> load(const T* p) {
  return Eigen::internal::ploadu<Packet<T>>(p);
}
template <class T>
EIGEN_STRONG_INLINE void store(T* p, const Packet<T>& v) {
  Eigen::internal::pstoreu<T>(p, v);
}
template <class T>
EIGEN_STRONG_INLINE Packet<T> set1(T v) {
  return Eigen::internal::pset1<Packet<T>>(v);
}
template <class P>
EIGEN_STRONG_INLINE P add(const P& a, const P& b) {
  return Eigen::internal::padd(a, b);
}
template <class P>
EIGEN_STRONG_INLINE P sub(const P& a, const P& b) {
  return Eigen::internal::psub(a, b);
}
template <class P>
EIGEN_STRONG_INLINE P mul(const P& a, const P& b) {
  return Eigen::internal::pmul(a, b);
}
// a * b + c, one fused instruction where the target has FMA.
template <class P>
EIGEN_STRONG_INLINE P fmadd(const P& a, const P& b, const P& c) {
  return Eigen::internal::pmadd(a, b, c);
}
template <class P>
EIGEN_STRONG_INLINE P max(const P& a, const P& b) {
  return Eigen::internal::pmax(a, b);
}
// e^x, Eigen's vectorised exp (a Cody-Waite range reduction and a polynomial, about 1 ulp).
// Eigen clamps the argument below (double at -709.78, giving 5.6e-309 for e^-inf; float, except
// with AVX-512, at -88.72, giving the subnormal 2.9e-39 for e^-inf), so here every x below the
// clamp, -inf included, gives exactly 0: e^-inf = 0 on every instruction set, as std::exp gives,
// and the values flushed are below the smallest normal T (an absolute error under FLT_MIN /
// DBL_MIN). NaN compares false and stays NaN.
template <class P>
EIGEN_STRONG_INLINE P exp(const P& x) {
  using T = typename Eigen::internal::unpacket_traits<P>::type;
  const P e = Eigen::internal::pexp(x);
  if constexpr (Eigen::internal::unpacket_traits<P>::size > 1) {
    // Eigen's clamps: e^-709.784 = 5.6e-309, e^-88.723 = 2.9e-39, both subnormal.
    const P lowest =
        Eigen::internal::pset1<P>(std::is_same_v<T, double> ? T(-709.784) : T(-88.723f));
    return Eigen::internal::pselect(Eigen::internal::pcmp_lt(x, lowest), Eigen::internal::pzero(e),
                                    e);
  } else {
    return e;
  }
}

// e^x for float packets in about two thirds of the instructions of Eigen's exp, for the softmax
// loops where the exp competes with the matrix products for the same two vector ports.
//   x = n ln2 + r, n = round(x log2 e), |r| <= ln2 / 2, with ln2 split in a high part exact in
//   16 bits and a low part so that x - n ln2 is exact (Cody & Waite 1980); e^r = 1 + r q(r) with
//   q of degree 5, a near-minimax fit in relative error (2e-9 on the interval, coefficients
//   rounded to float); e^x = e^r 2^n.
// With AVX-512 the last step is one vscalefps. Elsewhere 2^(n-1) is built in the exponent bits and
// the result doubled, which needs -125 <= n <= 128. Either way results below about 2 FLT_MIN
// (1.2e-38 with AVX-512, 2.4e-38 elsewhere) are flushed to 0 rather than rounded to a subnormal:
// producing a subnormal costs a microcode assist of some hundred cycles, and softmax feeds this
// exp a -inf for every masked key. Past FLT_MAX the result is inf.
// Error at most 2 ulp elsewhere (measured in simd_test); e^-inf = 0, NaN stays NaN.
// Double packets (and scalar builds) use exp() above.
template <class P>
EIGEN_STRONG_INLINE P exp_fast(const P& x_in) {
  using T = typename Eigen::internal::unpacket_traits<P>::type;
  namespace ei = Eigen::internal;
  if constexpr (!std::is_same_v<T, float> || ei::unpacket_traits<P>::size == 1) {
    return exp(x_in);
  } else {
    const P ln2_hi = ei::pset1<P>(0.693145751953125f);  // 0x1.62e4p-1: 16 significant bits
    const P ln2_lo = ei::pset1<P>(1.428606820309417e-6f);
    const P log2e = ei::pset1<P>(1.44269504088896341f);
    // e^r = 1 + r q(r), Horner with one FMA a step.
    const auto exp_reduced = [](const P& r) {
      P q = ei::pset1<P>(1.38461462e-3f);
      q = ei::pmadd(q, r, ei::pset1<P>(8.37412011e-3f));
      q = ei::pmadd(q, r, ei::pset1<P>(4.16679606e-2f));
      q = ei::pmadd(q, r, ei::pset1<P>(1.66664317e-1f));
      q = ei::pmadd(q, r, ei::pset1<P>(4.99999940e-1f));
      q = ei::pmadd(q, r, ei::pset1<P>(1.0f));
      return ei::pmadd(q, r, ei::pset1<P>(1.0f));
    };
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (ei::unpacket_traits<P>::size == 16) {
      // e^-87.3 = 1.22e-38 is still normal; below it the lane is zeroed (the mask keeps NaN).
      // e^89 > FLT_MAX: vscalefps gives inf. Clamping keeps r finite for x = +-inf; pmax/pmin
      // return x when x is NaN.
      const P lo = ei::pset1<P>(-87.3f);
      const __mmask16 keep = _mm512_cmp_ps_mask(x_in, lo, _CMP_NLT_UQ);
      const P x = ei::pmin(ei::pmax(x_in, lo), ei::pset1<P>(89.0f));
      const P n =
          _mm512_roundscale_ps(ei::pmul(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const P r = ei::pmadd(n, ei::pnegate(ln2_lo), ei::pmadd(n, ei::pnegate(ln2_hi), x));
      return _mm512_maskz_scalef_ps(keep, exp_reduced(r), n);
    }
#endif
    const P lo = ei::pset1<P>(-86.64f), hi = ei::pset1<P>(88.7228391f);  // n in [-125, 128]
    const P x = ei::pmin(ei::pmax(x_in, lo), hi);
    const P n = ei::pfloor(ei::pmadd(x, log2e, ei::pset1<P>(0.5f)));
    const P r = ei::pmadd(n, ei::pnegate(ln2_lo), ei::pmadd(n, ei::pnegate(ln2_hi), x));
    const P er = exp_reduced(r);
    using PI = typename ei::unpacket_traits<P>::integer_packet;
    const PI bits = ei::plogical_shift_left<23>(ei::padd(ei::pcast<P, PI>(n), ei::pset1<PI>(126)));
    const P e = ei::pmul(ei::padd(er, er), ei::preinterpret<P>(bits));
    // The ends: 0 below the clamp, inf above it (NaN compares false and passes through).
    const P zero_or_e = ei::pselect(ei::pcmp_lt(x_in, lo), ei::pzero(e), e);
    return ei::pselect(ei::pcmp_lt(hi, x_in), ei::pset1<P>(std::numeric_limits<float>::infinity()),
                       zero_or_e);
  }
}

// 2^x for x <= 0 (and -inf, NaN), in float packets: the fused attention kernel's softmax
// exponential, e^x = 2^(x log2 e) for x = s - max <= 0. Without the natural-log reduction and the
// upper clamp it takes 10 vector instructions with AVX-512 and 15 with AVX2, where exp_fast takes
// 14 and 21.
//   x = n + r, n = round(x), |r| <= 1/2; 2^r by a degree-6 polynomial (Horner, one FMA a step;
//   a near-minimax fit in relative error on [-1/2, 1/2], coefficients rounded to float); 2^x =
//   2^r 2^n, with vscalefps (AVX-512) or by building 2^n in the exponent bits.
// Results below 2^-126 (FLT_MIN) are flushed to 0, as exp_fast does, for the same reason: a
// subnormal result costs a microcode assist. Error at most 1 ulp elsewhere with FMA, 1.2 ulp
// without (measured in simd_test); 2^-inf = 0, NaN stays NaN. For x > 0 the result is unspecified.
// Double packets (and scalar builds) compute exp(x ln 2) with exp() above.
template <class P>
EIGEN_STRONG_INLINE P exp2_nonpositive(const P& x_in) {
  using T = typename Eigen::internal::unpacket_traits<P>::type;
  namespace ei = Eigen::internal;
  if constexpr (!std::is_same_v<T, float> || ei::unpacket_traits<P>::size == 1) {
    return exp(ei::pmul(x_in, ei::pset1<P>(T(0.693147180559945309417))));
  } else {
    const auto exp2_reduced = [](const P& r) {
      P q = ei::pset1<P>(1.5353360504377633e-4f);
      q = ei::pmadd(q, r, ei::pset1<P>(1.3398875016719103e-3f));
      q = ei::pmadd(q, r, ei::pset1<P>(9.61843691766262e-3f));
      q = ei::pmadd(q, r, ei::pset1<P>(5.5503323674201965e-2f));
      q = ei::pmadd(q, r, ei::pset1<P>(2.4022647738456726e-1f));
      q = ei::pmadd(q, r, ei::pset1<P>(6.931471824645996e-1f));
      return ei::pmadd(q, r, ei::pset1<P>(1.0f));
    };
    const P lo = ei::pset1<P>(-126.0f);
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (ei::unpacket_traits<P>::size == 16) {
      // Lanes below -126 (and -inf, whose r is NaN) are zeroed by the mask; NaN is kept.
      const __mmask16 keep = _mm512_cmp_ps_mask(x_in, lo, _CMP_NLT_UQ);
      const P n = _mm512_roundscale_ps(x_in, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      return _mm512_maskz_scalef_ps(keep, exp2_reduced(ei::psub(x_in, n)), n);
    }
#endif
    // pmax returns x when x is NaN; -inf and everything below -126 become n = -126 (2^-126,
    // normal) and are then zeroed.
    const P x = ei::pmax(x_in, lo);
    const P n = ei::print(x);
    using PI = typename ei::unpacket_traits<P>::integer_packet;
    const PI bits = ei::plogical_shift_left<23>(ei::padd(ei::pcast<P, PI>(n), ei::pset1<PI>(127)));
    const P e = ei::pmul(exp2_reduced(ei::psub(x, n)), ei::preinterpret<P>(bits));
    return ei::pandnot(e, ei::pcmp_lt(x_in, lo));
  }
}

template <class P>
EIGEN_STRONG_INLINE auto reduce_sum(const P& v) {
  return Eigen::internal::predux(v);
}
template <class P>
EIGEN_STRONG_INLINE auto reduce_max(const P& v) {
  return Eigen::internal::predux_max(v);
}

}  // namespace tessera::simd
