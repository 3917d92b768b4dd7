// tessera: the one place that knows about SIMD. A thin layer over Eigen's packet math, so every
// vector loop in tessera is written once and compiles to AVX-512, AVX2, SSE, NEON or scalar code,
// whichever the consumer's compiler flags enable (Eigen picks the widest packet available).
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "tessera/core/config.hpp"

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
// Eigen's double exp clamps its argument at -709.78, so e^-inf would come out as 5.6e-309; for
// double every x whose e^x is below the smallest subnormal, -inf included, gives exactly 0 here,
// as std::exp does. (Eigen's float exp already returns 0 there, so float pays nothing.)
template <class P>
EIGEN_STRONG_INLINE P exp(const P& x) {
  using T = typename Eigen::internal::unpacket_traits<P>::type;
  const P e = Eigen::internal::pexp(x);
  if constexpr (std::is_same_v<T, double> && Eigen::internal::unpacket_traits<P>::size > 1) {
    const P lowest = Eigen::internal::pset1<P>(-745.13321910194122);  // log(denorm_min)
    return Eigen::internal::pselect(Eigen::internal::pcmp_lt(x, lowest), Eigen::internal::pzero(e),
                                    e);
  } else {
    return e;
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
