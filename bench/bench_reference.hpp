// tessera benchmarks: what bench_attention and bench_transformer share: the model shape they
// measure (embedding 512, 8 heads), the FLOP count of multi-head attention, and the plain
// attention reference: one head's scores materialised in full, a row softmax, a product with V,
// all through Eigen.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <tessera/core/config.hpp>

namespace tessera_bench {

inline constexpr tessera::Index kEmbed = 512;
inline constexpr tessera::Index kHeads = 8;
inline constexpr tessera::Index kHeadDim = kEmbed / kHeads;

// Multi-head self-attention over L tokens: the QKV projection (2 L E 3E), the output projection
// (2 L E E) and the two attention products (4 L^2 E over all heads).
inline double mha_flops(tessera::Index L) {
  return 2.0 * L * kEmbed * 3 * kEmbed + 2.0 * L * kEmbed * kEmbed + 4.0 * L * double(L) * kEmbed;
}

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using StridedOut = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;

// S = scale Q K^T [Lq, Lk] in full, row softmax, O = S V.
inline void reference_head(const StridedMap& Q, const StridedMap& K, const StridedMap& V,
                           StridedOut O, RowMatrix& S, bool causal) {
  S.noalias() = (1.0f / std::sqrt(static_cast<float>(Q.cols()))) * Q * K.transpose();
  if (causal)
    for (tessera::Index i = 0; i < S.rows(); ++i)
      S.row(i).tail(S.cols() - std::min<tessera::Index>(S.cols(), i + 1)).setConstant(-INFINITY);
  const Eigen::VectorXf m = S.rowwise().maxCoeff();
  S = (S.colwise() - m).array().exp();
  const Eigen::VectorXf z = S.rowwise().sum();
  S = z.cwiseInverse().asDiagonal() * S;
  O.noalias() = S * V;
}

}  // namespace tessera_bench
