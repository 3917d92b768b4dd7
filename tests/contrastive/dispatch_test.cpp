// Tests for tessera/contrastive/dispatch.hpp: in the compiled mode, the losses' computations run
// at the level the kernels run at, and every level gives the same losses up to rounding. The
// losses themselves are tested by the other tests of this folder, which CI runs once per forced
// level in the compiled mode.
#include "tessera/contrastive/dispatch.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/contrastive/clip_loss.hpp"
#include "tessera/contrastive/info_nce.hpp"
#include "tessera/contrastive/pair_loss.hpp"
#include "tessera/contrastive/siglip_loss.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/dispatch.hpp"

namespace contrastive_dispatch_test {

using tessera::Index;
using tessera::Tensor;
namespace tc = tessera::contrastive;

#ifdef TESSERA_COMPILED

TEST(ContrastiveDispatch, LossesRunAtTheKernelsLevel) {
  EXPECT_EQ(std::string_view(tc::detail::selected_loss_kernels().name), tessera::cpu_capability());
  EXPECT_EQ(&tc::detail::loss_kernels<float>(), &tc::detail::selected_loss_kernels().f32);
  EXPECT_EQ(&tc::detail::loss_kernels<double>(), &tc::detail::selected_loss_kernels().f64);
}

// The levels this CPU supports that the library holds (a build without symbol isolation holds
// only the default level: cmake/tesseraCompiled.cmake).
std::vector<const tc::detail::IsaLossKernels*> held_levels() {
  std::vector<const tc::detail::IsaLossKernels*> held;
  for (const char* level : {"default", "avx2", "avx512"}) {
    if (!tessera::detail::cpu_supports(level)) continue;
    try {
      held.push_back(&tc::detail::loss_kernels_of(tessera::detail::choose_kernels(level)));
    } catch (const tessera::ValueError&) {  // the library does not hold this level
    }
  }
  return held;
}

// Each level is its own copy of the computations (the symbols of each level's object are renamed
// so that the linker cannot merge them): distinct entry points.
TEST(ContrastiveDispatch, EveryLevelHasItsOwnCopy) {
  const auto held = held_levels();
  ASSERT_GE(held.size(), 1u);
  for (std::size_t i = 0; i < held.size(); ++i)
    for (std::size_t j = i + 1; j < held.size(); ++j) {
      SCOPED_TRACE(std::string(held[i]->name) + " and " + held[j]->name);
      EXPECT_NE(held[i]->f32.clip_tiled, held[j]->f32.clip_tiled);
      EXPECT_NE(held[i]->f64.siglip_tiled, held[j]->f64.siglip_tiled);
      EXPECT_NE(held[i]->f64.pair_loss_compute, held[j]->f64.pair_loss_compute);
    }
}

// Each level's computations, called through its table in one process, against the default
// level's (the products inside them run at the process's level; what differs is the element-wise
// work: exponentials, logarithms, reductions).
TEST(ContrastiveDispatch, EveryLevelComputesTheSameLosses) {
  const Index n = 37, d = 11;
  Tensor<double, 2> a(n, d), b(n, d);
  a.setRandom(3);
  b.setRandom(4);
  std::vector<std::int64_t> ilab(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ilab[static_cast<std::size_t>(i)] = i % 3;
  const auto A = tessera::cview(a).as_matrix();
  const auto B = tessera::cview(b).as_matrix();
  const double s = 7.5, bias = -3.0, w = 1.0 / double(n);
  const Index block = 8;  // several tiles
  double clip0 = NAN, siglip0 = NAN, nce0 = NAN, pair0 = NAN;
  Tensor<double, 2> grad0;
  int levels = 0;
  for (const auto* isa : held_levels()) {
    SCOPED_TRACE(isa->name);
    const auto& t = isa->f64;
    tc::ClipLossResult<double> clip, clip_m;
    clip.grad_a = Tensor<double, 2>(n, d), clip.grad_b = Tensor<double, 2>(n, d);
    clip_m.grad_a = Tensor<double, 2>(n, d), clip_m.grad_b = Tensor<double, 2>(n, d);
    t.clip_tiled(A, B, s, w, block, clip);
    t.clip_materialized(A, B, s, w, clip_m);
    EXPECT_NEAR(clip.loss, clip_m.loss, 1e-12);
    tc::SigLipLossResult<double> sig;
    sig.grad_a = Tensor<double, 2>(n, d), sig.grad_b = Tensor<double, 2>(n, d);
    t.siglip_tiled(A, B, s, bias, w, block, sig);
    tc::InfoNceLossResult<double> nce;
    nce.grad_a = Tensor<double, 2>(n, d), nce.grad_b = Tensor<double, 2>(n, d);
    t.info_nce_tiled(A, B, s, w, block, nce);
    const auto pair = t.pair_loss_compute(
        A, B, ilab, {.mining = tc::PairMining::hardest_negative, .block_size = block});
    ++levels;
    if (std::isnan(clip0)) {
      clip0 = clip.loss, siglip0 = sig.loss, nce0 = nce.loss, pair0 = pair.loss;
      grad0 = clip.grad_a;
      continue;
    }
    EXPECT_NEAR(clip.loss, clip0, 1e-12);
    EXPECT_NEAR(sig.loss, siglip0, 1e-12);
    EXPECT_NEAR(nce.loss, nce0, 1e-12);
    EXPECT_NEAR(pair.loss, pair0, 1e-12);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < d; ++j) EXPECT_NEAR(clip.grad_a(i, j), grad0(i, j), 1e-13);
  }
  EXPECT_GE(levels, 1);
}

#else

// Header-only, the losses compile into the caller: clip_loss gives what its sweep computes.
TEST(ContrastiveDispatch, HeaderOnlyLossesAreTheCallersCode) {
  const Index n = 9, d = 5;
  Tensor<double, 2> a(n, d), b(n, d);
  a.setRandom(3);
  b.setRandom(4);
  const auto r = tc::clip_loss(a, b, std::log(7.5), {.block_size = 4});
  tc::ClipLossResult<double> direct;
  direct.grad_a = Tensor<double, 2>(n, d), direct.grad_b = Tensor<double, 2>(n, d);
  tc::detail::clip_tiled<double>(tessera::cview(a).as_matrix(), tessera::cview(b).as_matrix(),
                                 std::exp(std::log(7.5)), 1.0 / double(n), 4, direct);
  EXPECT_EQ(r.loss, direct.loss);
}

#endif

}  // namespace contrastive_dispatch_test
