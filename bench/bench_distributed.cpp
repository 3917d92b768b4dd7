// Distributed benchmarks of tessera/distributed over MPI, one binary that runs as one process
// (./bench_distributed, P = 1, as CI's bench_smoke does) and under mpirun:
//
//   mpirun --allow-run-as-root --oversubscribe --bind-to none -np 4 -x OMP_NUM_THREADS=1
//       ./bench_distributed --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// 1. BM_ClipLoss, BM_SigLipLoss: distributed::clip_loss (all-gather) and distributed::siglip_loss
//    (bidirectional ring) of D = 512 float embeddings, N_r pairs per rank (N = P N_r). Each
//    iteration times, one after the other, (a) the call's communication alone: the same MPI calls
//    on the same message sizes in the same order, no arithmetic (comm_ms); (b) its arithmetic
//    alone: the same impl:: tile kernels on the same shapes, on data that is already local
//    (compute_ms); (c) the call itself (the reported time). overlap_ms = comm + compute - total:
//    > 0 when the ring's messages moved while the tiles were being computed.
//    GFLOPS counts the products a rank needs, per call's time: CLIP 4 N_r N D x 2 (its rows' and
//    its columns' logits, dL/da_r = G B, dL/db_r = G^T A); the tiled code recomputes the logits in
//    its gradient sweep, 6 products executed. SigLIP 3 N_r N D x 2 (logits, dL/da, dL/db).
//    recv_MB: bytes this rank receives per call (gathers, ring blocks and returned gradients, the
//    few statistics and scalars included); comm_GB/s = recv_MB / comm_ms.
// 2. BM_ClipTrainStep: one data-parallel step of a small models::CLIP<float> (ViT 32/4, width 128,
//    2 layers; text context 16, width 128, 2 layers; embeddings 128), B_r pairs per rank (weak
//    scaling): fwd_bwd_ms (distributed::clip_train_loss), allreduce_ms
//    (DataParallel::average_gradients) and optim_ms (optim::AdamW::step), each phase started at a
//    barrier (so each is its own cost, not a wait for a slower rank's previous phase).
// 3. BM_AllReduce, BM_AllGather: Communicator::all_reduce_sum / all_gather of S = 1, 4, 16, 64 MB
//    (for the gather, S is the gathered buffer, S / P bytes sent by each rank), as nccl-tests
//    reports them (https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md):
//    algbw = S / t; busbw = algbw 2 (P - 1) / P for all-reduce, algbw (P - 1) / P for all-gather.
//
// Timing. Every timed region starts at a barrier and its time is the slowest rank's (gathered
// after the region, outside it): UseManualTime. Ranks run exactly the same iterations: under
// mpirun (P > 1) each benchmark has a fixed iteration count, since Google Benchmark's adaptive
// count is decided per rank and would leave ranks waiting in different collectives; as one
// process the count is adaptive as usual. Only rank 0 reports (the others get a reporter that
// prints nothing, and never write --benchmark_out). Threads: tessera's default (OMP_NUM_THREADS);
// the "threads" counter says how many each rank used.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <tessera/distributed/clip_loss.hpp>
#include <tessera/distributed/communicator.hpp>
#include <tessera/distributed/data_parallel.hpp>
#include <tessera/distributed/siglip_loss.hpp>
#include <tessera/distributed/training.hpp>
#include <tessera/optim/adamw.hpp>
#include <tessera/optim/parameter_ref.hpp>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace {

namespace td = tessera::distributed;
using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera_bench::random_tensor;

constexpr Index kDim = 512;  // D, CLIP ViT-B's embedding width

const td::Communicator* g_comm = nullptr;
const td::Communicator& comm() { return *g_comm; }

using Clock = std::chrono::steady_clock;

// Runs body on every rank from a barrier; returns the slowest rank's seconds (every rank gets
// the same value).
template <class F>
double timed(F&& body) {
  const auto& c = comm();
  c.barrier();
  const auto t0 = Clock::now();
  body();
  double mine = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> all(static_cast<std::size_t>(c.size()));
  const std::vector<Index> ones(all.size(), 1);
  c.all_gather(std::span<const double>(&mine, 1), std::span<double>(all), ones);
  return *std::max_element(all.begin(), all.end());
}

// Unit rows [n, D], as CLIP's normalised embeddings; a different seed per rank.
Tensor<float, 2> unit_rows(Index n, std::uint64_t seed) {
  auto x = random_tensor<float, 2>({n, kDim}, seed);
  x.as_matrix().rowwise().normalize();
  return x;
}

template <class T>
std::span<T> span_of(Tensor<T, 2>& x) {
  return {x.data(), static_cast<std::size_t>(x.size())};
}
template <class T>
std::span<const T> cspan_of(const Tensor<T, 2>& x) {
  return {x.data(), static_cast<std::size_t>(x.size())};
}

// Common counters of the loss benchmarks, from per-iteration sums of seconds.
struct PhaseSums {
  double comm = 0, compute = 0, total = 0;
};

void loss_counters(benchmark::State& state, const PhaseSums& t, Index n_r, double flops,
                   double recv_bytes) {
  const int p = comm().size();
  const double it = static_cast<double>(state.iterations());
  state.counters["P"] = p;
  state.counters["N"] = static_cast<double>(n_r) * p;
  state.counters["threads"] = tessera::num_threads();
  state.counters["comm_ms"] = 1e3 * t.comm / it;
  state.counters["compute_ms"] = 1e3 * t.compute / it;
  state.counters["overlap_ms"] = 1e3 * (t.comm + t.compute - t.total) / it;
  state.counters["GFLOPS"] = flops * it / t.total * 1e-9;
  state.counters["recv_MB"] = recv_bytes * 1e-6;
  state.counters["comm_GB/s"] = t.comm > 0 ? recv_bytes * it / t.comm * 1e-9 : 0.0;
}

// ---------------------------------------------------------------------------------------------
// 1a. CLIP loss by all-gather.

// The MPI calls distributed::clip_loss makes, in its order and sizes, without the arithmetic:
// the shapes and 5 scalars (9 doubles per rank), b (N_r D floats), the column statistics (two
// all-reduces of N floats), the texts' gradients (reduce-scatter of N D floats) and the final
// sum of 2 doubles.
void clip_comm_only(const Tensor<float, 2>& b, Tensor<float, 2>& b_all, Tensor<float, 2>& stats,
                    Tensor<float, 2>& grad_b) {
  const auto& c = comm();
  const auto p = static_cast<std::size_t>(c.size());
  const Index n_r = b.dim(0);
  std::vector<double> mine(9, 1.0), all(9 * p);
  c.all_gather(std::span<const double>(mine), std::span<double>(all), std::vector<Index>(p, 9));
  const std::vector<Index> block(p, n_r * kDim);
  c.all_gather(cspan_of(b), span_of(b_all), block);
  const std::size_t n = static_cast<std::size_t>(stats.dim(1));
  c.all_reduce_max(std::span<float>(stats.data(), n));
  c.all_reduce_sum(std::span<float>(stats.data() + n, n));
  c.reduce_scatter_sum(cspan_of(b_all), span_of(grad_b), block);
  double sums[2] = {1.0, 2.0};
  c.all_reduce_sum(std::span<double>(sums));
}

// The arithmetic distributed::clip_loss does on one rank, on gathered data already here: sweep 1
// (its rows' logsumexps and its share of the columns') and sweep 2 (the gradients), with
// loss_common.hpp's kernels.
void clip_compute_only(const Tensor<float, 2>& a, const Tensor<float, 2>& b_all, Index offset,
                       float s, Index block) {
  const auto A_r = a.as_matrix();
  td::impl::ColumnStats<float> cols;
  const auto rows = td::impl::block_stats<float>(A_r, b_all.as_matrix(), offset, s, block, &cols);
  cols.log = cols.log.array().log().matrix();  // (merged over the ranks in the real call)
  Tensor<float, 2> ga(a.shape()), gb(b_all.shape());
  const float half_w = 0.5f / static_cast<float>(b_all.dim(0));
  double g = td::impl::block_gradient<float>(A_r, b_all.as_matrix(), offset, s, half_w, rows,
                                             half_w, &cols, block, ga.as_matrix(), gb.as_matrix());
  benchmark::DoNotOptimize(g);
  benchmark::DoNotOptimize(ga.data());
  benchmark::DoNotOptimize(gb.data());
  benchmark::ClobberMemory();
}

void BM_ClipLoss(benchmark::State& state) {
  const auto& c = comm();
  const Index n_r = state.range(0), p = c.size(), n = n_r * p, offset = n_r * c.rank();
  const auto seed = static_cast<std::uint64_t>(100 + 2 * c.rank());
  const auto a = unit_rows(n_r, seed), b = unit_rows(n_r, seed + 1);
  const float t = std::log(1.0f / 0.07f);
  const float s = std::exp(t);
  const tessera::contrastive::ClipLossOptions opts{};
  Tensor<float, 2> b_all = unit_rows(n, 8);
  b_all.as_matrix().middleRows(offset, n_r) = b.as_matrix();
  Tensor<float, 2> b_all_buf(Shape<2>{n, kDim}), stats(Shape<2>{2, n}), grad_b(b.shape());
  PhaseSums sum;
  float loss = td::clip_loss(c, a, b, t, opts).loss;  // warm-up: MPI's buffers, first touches
  for (auto _ : state) {
    sum.comm += timed([&] { clip_comm_only(b, b_all_buf, stats, grad_b); });
    sum.compute += timed([&] { clip_compute_only(a, b_all, offset, s, opts.block_size); });
    const double total = timed([&] {
      const auto r = td::clip_loss(c, a, b, t, opts);
      loss = r.loss;
      benchmark::DoNotOptimize(r.grad_a.data());
      benchmark::DoNotOptimize(r.grad_b.data());
    });
    sum.total += total;
    state.SetIterationTime(total);
  }
  const double pm1 = static_cast<double>(p - 1);
  // b's blocks and the texts' gradient shares (N_r D floats from each other rank), the column
  // statistics (2 N floats, ring all-reduce: about 2 (P - 1) / P of them each), the shapes.
  const double recv =
      p > 1 ? pm1 * (2.0 * n_r * kDim * 4 + 9 * 8) + 2.0 * pm1 / p * 2 * n * 4 + 2 * 8 : 0.0;
  loss_counters(state, sum, n_r, 4.0 * n_r * n * kDim * 2, recv);
  state.counters["loss"] = loss;
}

// ---------------------------------------------------------------------------------------------
// 1b. SigLIP loss by the bidirectional ring.

// The messages distributed::siglip_loss sends and receives, in its order and sizes (the shapes
// and scalars, each round's text blocks in both directions and the gradients returned to their
// owners, the final 3-double sum), without the tiles. Buffers are allocated per round, as there.
void siglip_comm_only(const Tensor<float, 2>& b) {
  const auto& c = comm();
  const int p = c.size(), r = c.rank();
  const Index n_r = b.dim(0);
  {
    std::vector<double> mine(7, 1.0), all(7 * static_cast<std::size_t>(p));
    c.all_gather(std::span<const double>(mine), std::span<double>(all),
                 std::vector<Index>(static_cast<std::size_t>(p), 7));
  }
  const int right = (r + 1) % p, left = (r + p - 1) % p;
  const int rounds_rightward = p / 2, rounds_leftward = (p - 1) / 2;
  const auto origin = [&](int k) { return ((r - k) % p + p) % p; };
  const Shape<2> shape{n_r, kDim};
  Tensor<float, 2> cur_r, next_r, cur_l, next_l, gsend_r, gsend_l, grecv_r, grecv_l;
  std::vector<td::Request> exchange, grads_out, grads_in;
  const auto post_exchange = [&](int k, const Tensor<float, 2>& held_r,
                                 const Tensor<float, 2>& held_l) {
    if (k <= rounds_rightward) {
      next_r = Tensor<float, 2>(shape);
      exchange.push_back(c.irecv(span_of(next_r), left, td::impl::kTextRightward));
      exchange.push_back(c.isend(cspan_of(held_r), right, td::impl::kTextRightward));
    }
    if (k <= rounds_leftward) {
      next_l = Tensor<float, 2>(shape);
      exchange.push_back(c.irecv(span_of(next_l), right, td::impl::kTextLeftward));
      exchange.push_back(c.isend(cspan_of(held_l), left, td::impl::kTextLeftward));
    }
  };
  post_exchange(1, b, b);
  for (int k = 1; k <= rounds_rightward; ++k) {
    td::wait_all(exchange);
    exchange.clear();
    cur_r = std::move(next_r);
    if (k <= rounds_leftward) cur_l = std::move(next_l);
    post_exchange(k + 1, cur_r, cur_l);
    td::wait_all(grads_out);
    grads_out.clear();
    grecv_r = Tensor<float, 2>(shape);
    grads_in.push_back(c.irecv(span_of(grecv_r), (r + k) % p, td::impl::kGradRightward));
    if (k <= rounds_leftward) {
      grecv_l = Tensor<float, 2>(shape);
      grads_in.push_back(c.irecv(span_of(grecv_l), origin(k), td::impl::kGradLeftward));
    }
    gsend_r = Tensor<float, 2>(shape);
    grads_out.push_back(c.isend(cspan_of(gsend_r), origin(k), td::impl::kGradRightward));
    if (k <= rounds_leftward) {
      gsend_l = Tensor<float, 2>(shape);
      grads_out.push_back(c.isend(cspan_of(gsend_l), origin(-k), td::impl::kGradLeftward));
    }
    td::wait_all(grads_in);
    grads_in.clear();
  }
  td::wait_all(grads_out);
  td::wait_all(exchange);
  double total[3] = {1.0, 2.0, 3.0};
  c.all_reduce_sum(std::span<double>(total));
}

// The tiles distributed::siglip_loss computes on one rank: its images against its own texts and
// against the P - 1 other blocks (here already local), with their gradients; the returned
// gradients' sum into dL/db_r (two vector adds per round) is included.
void siglip_compute_only(const Tensor<float, 2>& a, const Tensor<float, 2>& b,
                         const std::vector<Tensor<float, 2>>& others, float s, float bias, float w,
                         Index block) {
  Tensor<float, 2> ga(a.shape()), gb(b.shape()), gother(b.shape());
  tessera::contrastive::detail::SigLipTileSums sums;
  td::impl::siglip_block<float>(a.as_matrix(), b.as_matrix(), /*positives=*/true, s, bias, w, block,
                                ga.as_matrix(), gb.as_matrix(), sums, [] {});
  for (const auto& o : others) {
    gother.as_matrix().setZero();
    td::impl::siglip_block<float>(a.as_matrix(), o.as_matrix(), false, s, bias, w, block,
                                  ga.as_matrix(), gother.as_matrix(), sums, [] {});
    gb.as_matrix() += gother.as_matrix();
  }
  benchmark::DoNotOptimize(sums.loss);
  benchmark::DoNotOptimize(ga.data());
  benchmark::DoNotOptimize(gb.data());
  benchmark::ClobberMemory();
}

void BM_SigLipLoss(benchmark::State& state) {
  const auto& c = comm();
  const Index n_r = state.range(0), p = c.size(), n = n_r * p;
  const auto seed = static_cast<std::uint64_t>(200 + 2 * c.rank());
  const auto a = unit_rows(n_r, seed), b = unit_rows(n_r, seed + 1);
  const float t = std::log(10.0f), bias = -10.0f;  // SigLIP's initial t' = log 10, b = -10
  const tessera::contrastive::SigLipLossOptions opts{};
  std::vector<Tensor<float, 2>> others;
  for (Index k = 1; k < p; ++k) others.push_back(unit_rows(n_r, 300 + static_cast<unsigned>(k)));
  PhaseSums sum;
  float loss = td::siglip_loss(c, a, b, t, bias, opts).loss;  // warm-up
  for (auto _ : state) {
    sum.comm += timed([&] { siglip_comm_only(b); });
    sum.compute += timed([&] {
      siglip_compute_only(a, b, others, std::exp(t), bias, 1.0f / static_cast<float>(n),
                          opts.block_size);
    });
    const double total = timed([&] {
      const auto r = td::siglip_loss(c, a, b, t, bias, opts);
      loss = r.loss;
      benchmark::DoNotOptimize(r.grad_a.data());
      benchmark::DoNotOptimize(r.grad_b.data());
    });
    sum.total += total;
    state.SetIterationTime(total);
  }
  const double pm1 = static_cast<double>(p - 1);
  // (P - 1) text blocks in and as many gradient blocks back, the shapes, the final sum
  const double recv = pm1 * (2.0 * n_r * kDim * 4 + 7 * 8) + (p > 1 ? 3 * 8 : 0);
  loss_counters(state, sum, n_r, 3.0 * n_r * n * kDim * 2, recv);
  state.counters["loss"] = loss;
}

// ---------------------------------------------------------------------------------------------
// 2. One data-parallel CLIP training step.

tessera::models::CLIPOptions small_clip() {
  tessera::models::CLIPOptions o;
  o.vision = {.image_size = 32,
              .patch_size = 4,
              .in_channels = 3,
              .width = 128,
              .layers = 2,
              .heads = 4,
              .mlp_dim = 512,
              .activation = tessera::Activation::gelu,
              .output_dim = 128,
              .seed = 1};
  o.text = {.vocab_size = 1024,
            .context_length = 16,
            .width = 128,
            .layers = 2,
            .heads = 4,
            .mlp_dim = 512,
            .activation = tessera::Activation::gelu,
            .output_dim = 128,
            .seed = 2};
  return o;
}

// Products of one forward of one pair (an FMA = 2 flops): per transformer layer and token
// 2 (4 w^2 + 2 w m) (QKV, output, MLP) + 4 L w (attention), the patch embedding 2 (C p^2) w per
// patch, and each tower's head 2 w E. The step counts 3x the forward (bench_training's
// convention); the loss's products are left out (128 x 128 x 128 per rank here).
double clip_pair_forward_flops(const tessera::models::CLIPOptions& o) {
  const auto layer = [](double w, double m, double l) {
    return l * (2.0 * (4.0 * w * w + 2.0 * w * m) + 4.0 * l * w);
  };
  const auto& v = o.vision;
  const double patches =
      static_cast<double>((v.image_size / v.patch_size) * (v.image_size / v.patch_size));
  const double tokens = patches + (v.class_token ? 1 : 0);
  double f = v.layers * layer(v.width, v.mlp_dim, tokens) +
             2.0 * patches * v.in_channels * v.patch_size * v.patch_size * v.width +
             2.0 * v.width * v.output_dim;
  const auto& x = o.text;
  f += x.layers * layer(x.width, x.mlp_dim, x.context_length) + 2.0 * x.width * x.output_dim;
  return f;
}

void BM_ClipTrainStep(benchmark::State& state) {
  const auto& c = comm();
  const Index b_r = state.range(0);
  const auto o = small_clip();
  tessera::models::CLIP<float> model(o);
  td::DataParallel<float> ddp(c, model);
  tessera::optim::AdamW<float> opt(tessera::optim::parameters(model),
                                   {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-6});
  const auto seed = static_cast<std::uint64_t>(400 + c.rank());
  // images [B_r, 3, 32, 32], ids [B_r, 16]: random pixels and token ids in [1, vocab)
  const auto images = random_tensor<float, 4>(
      {b_r, o.vision.in_channels, o.vision.image_size, o.vision.image_size}, seed);
  Tensor<Index, 2> ids(Shape<2>{b_r, o.text.context_length});
  std::uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (Index i = 0; i < ids.size(); ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;  // Knuth's MMIX LCG
    ids.data()[i] =
        1 + static_cast<Index>((x >> 33) % static_cast<std::uint64_t>(o.text.vocab_size - 1));
  }
  // warm-up: one step's allocations and first touches
  model.zero_grad();
  float loss = td::clip_train_loss(c, model, images, ids);
  ddp.average_gradients();
  opt.step();
  double fwd_bwd = 0, reduce = 0, step = 0;
  for (auto _ : state) {
    model.zero_grad();
    const double t1 = timed([&] { loss = td::clip_train_loss(c, model, images, ids); });
    const double t2 = timed([&] { ddp.average_gradients(); });
    const double t3 = timed([&] { opt.step(); });
    fwd_bwd += t1, reduce += t2, step += t3;
    state.SetIterationTime(t1 + t2 + t3);
  }
  const int p = c.size();
  const double it = static_cast<double>(state.iterations());
  const double params = static_cast<double>(model.num_parameters());
  state.counters["P"] = p;
  state.counters["B_r"] = static_cast<double>(b_r);
  state.counters["threads"] = tessera::num_threads();
  state.counters["params"] = params;
  state.counters["buckets"] = static_cast<double>(ddp.bucket_count());
  state.counters["fwd_bwd_ms"] = 1e3 * fwd_bwd / it;
  state.counters["allreduce_ms"] = 1e3 * reduce / it;
  state.counters["optim_ms"] = 1e3 * step / it;
  state.counters["fwd_bwd_GFLOPS"] = 3.0 * clip_pair_forward_flops(o) * b_r * it / fwd_bwd * 1e-9;
  // the gradients' bus bandwidth, as an all-reduce of 4 |theta| bytes
  state.counters["allreduce_busbw_GB/s"] =
      p > 1 ? 4.0 * params * it / reduce * 2.0 * (p - 1) / p * 1e-9 : 0.0;
  state.counters["loss"] = loss;
  // pairs per second over all ranks
  state.SetItemsProcessed(state.iterations() * b_r * p);
}

// ---------------------------------------------------------------------------------------------
// 3. The raw collectives (nccl-tests' algbw and busbw).

void collective_counters(benchmark::State& state, double bytes, double seconds, double factor) {
  const int p = comm().size();
  const double it = static_cast<double>(state.iterations());
  const double algbw = bytes * it / seconds * 1e-9;
  state.counters["P"] = p;
  state.counters["MB"] = bytes * 1e-6;
  state.counters["algbw_GB/s"] = algbw;
  state.counters["busbw_GB/s"] = algbw * factor;
}

void BM_AllReduce(benchmark::State& state) {
  const auto& c = comm();
  const auto count = static_cast<std::size_t>(state.range(0)) * (1u << 20) / sizeof(float);
  std::vector<float> data(count, 0.0f);      // zeros: sums that stay finite (and not denormal)
  c.all_reduce_sum(std::span<float>(data));  // warm-up
  double sum = 0;
  for (auto _ : state) {
    const double t = timed([&] { c.all_reduce_sum(std::span<float>(data)); });
    sum += t;
    state.SetIterationTime(t);
  }
  const int p = c.size();
  collective_counters(state, static_cast<double>(count * sizeof(float)), sum, 2.0 * (p - 1) / p);
}

void BM_AllGather(benchmark::State& state) {
  const auto& c = comm();
  const auto p = static_cast<std::size_t>(c.size());
  const std::size_t total = static_cast<std::size_t>(state.range(0)) * (1u << 20) / sizeof(float);
  const std::size_t mine = total / p;  // 1 MB / 4 bytes divides by P = 1, 2, 4, 8, ...
  std::vector<float> send(mine, 1.0f), recv(mine * p);
  const std::vector<Index> counts(p, static_cast<Index>(mine));
  c.all_gather(std::span<const float>(send), std::span<float>(recv), counts);  // warm-up
  double sum = 0;
  for (auto _ : state) {
    const double t =
        timed([&] { c.all_gather(std::span<const float>(send), std::span<float>(recv), counts); });
    sum += t;
    state.SetIterationTime(t);
  }
  collective_counters(state, static_cast<double>(mine * p * sizeof(float)), sum,
                      static_cast<double>(p - 1) / static_cast<double>(p));
}

// ---------------------------------------------------------------------------------------------

// Registers everything; under mpirun (P > 1) with the given fixed iteration counts.
void register_all(int p) {
  const bool fixed = p > 1;
  const auto iters = [&](benchmark::internal::Benchmark* b, std::int64_t n) {
    if (fixed) b->Iterations(n);
    return b->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  for (Index n_r : {256, 1024}) {
    iters(benchmark::RegisterBenchmark("BM_ClipLoss", BM_ClipLoss)->Arg(n_r)->ArgName("N_r"),
          n_r <= 256 ? 10 : 3);
    iters(benchmark::RegisterBenchmark("BM_SigLipLoss", BM_SigLipLoss)->Arg(n_r)->ArgName("N_r"),
          n_r <= 256 ? 10 : 3);
  }
  iters(benchmark::RegisterBenchmark("BM_ClipTrainStep", BM_ClipTrainStep)->Arg(16)->ArgName("B_r"),
        5);
  for (Index mb : {1, 4, 16, 64}) {
    const std::int64_t n = mb <= 4 ? 20 : (mb <= 16 ? 10 : 5);
    iters(benchmark::RegisterBenchmark("BM_AllReduce", BM_AllReduce)->Arg(mb)->ArgName("MB"), n);
    iters(benchmark::RegisterBenchmark("BM_AllGather", BM_AllGather)->Arg(mb)->ArgName("MB"), n);
  }
}

// The reporter of ranks other than 0: prints nothing.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  td::Environment env(argc, argv);
  const td::Communicator world = td::Communicator::world();
  g_comm = &world;
  // Only rank 0 writes --benchmark_out: the other ranks drop the flag.
  std::vector<char*> args(argv, argv + argc);
  if (world.rank() != 0)
    std::erase_if(args,
                  [](const char* a) { return std::string_view(a).starts_with("--benchmark_out"); });
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  register_all(world.size());
  SilentReporter silent;
  if (world.rank() == 0)
    benchmark::RunSpecifiedBenchmarks();
  else
    benchmark::RunSpecifiedBenchmarks(&silent);
  benchmark::Shutdown();
  return 0;
}
