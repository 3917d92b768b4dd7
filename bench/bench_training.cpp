// Training benchmarks of nn::TransformerEncoderLayer<float> (E = 512, 8 heads, F = 2048, no
// dropout): one training step's forward_train + backward, and beside it the parts alone
// (forward, forward_train, backward), for PyTorch's default layer (post-norm, ReLU) and a
// pre-norm GELU variant, at B = 8, L = 512 and B = 1, L = 4096, on one thread and on all threads
// (the latter timed in real time: UseRealTime). BM_PeakFMA runs in the same binary, so each GFLOPS
// figure reads as a fraction of one core's peak. bench/compare_pytorch.py --training runs the
// same step in PyTorch (torch.nn.TransformerEncoderLayer, batch_first=True) for comparison.
//
// FLOPs, the products only: the forward 2 L E 3E (QKV) + 4 L^2 E (attention) + 2 L E E (output
// projection) + 2 * 2 L E F (feed-forward) per batch element, as in bench_transformer. The
// backward counts twice that (the usual convention: each product Y = A B of the forward has two
// products of its size in the backward, dA = dY B^T and dB = A^T dY), so a training step counts
// 3x the forward. Not counted: the recomputation of the attention probabilities P = softmax(Q K^T)
// from the saved logsumexp in the fused attention backward (FlashAttention-2's Algorithm 2, one
// more 2 L^2 E product), nor the norms, activations and softmax; the GFLOPS figure is therefore a
// conservative "useful work" rate. The fused attention backward alone is measured in
// bench_attention_backward.
//
// Parameters' gradients are zeroed once before the timing loop and accumulate over iterations (as
// gradient accumulation would): the cost of zeroing is not part of a step. The weights are not
// prepacked: in training they change after every step, so packed copies would be stale.
#include <benchmark/benchmark.h>

#include <tessera/tessera.hpp>
#include <utility>

#include "bench_common.hpp"
#include "bench_reference.hpp"

namespace {

using tessera::Index;
using tessera::nn::TransformerEncoderLayer;
using tessera_bench::kEmbed;
using tessera_bench::kHeads;
using tessera_bench::mha_flops;
using tessera_bench::random_tensor;
using tessera_bench::set_gflops;

constexpr Index kFeedForward = 2048;

// Products of one forward over [B, L, E] (see the header comment).
double forward_flops(Index B, Index L) {
  return static_cast<double>(B) * (mha_flops(L) + 2.0 * 2.0 * L * kEmbed * kFeedForward);
}

enum class Variant { post_norm_relu, pre_norm_gelu };
enum class Part { step, forward, forward_train, backward };

TransformerEncoderLayer<float> make_layer(Variant v) {
  const bool pre = v == Variant::pre_norm_gelu;
  return TransformerEncoderLayer<float>(
      {.d_model = kEmbed,
       .nhead = kHeads,
       .dim_feedforward = kFeedForward,
       .activation = pre ? tessera::Activation::gelu : tessera::Activation::relu,
       .norm_first = pre,
       .seed = 1});
}

// state.range: B, L, threads.
void run(benchmark::State& state, Variant v, Part part) {
  const Index B = state.range(0), L = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  tessera::set_num_threads(threads);
  auto layer = make_layer(v);
  layer.zero_grad();
  // x, dy: [B, L, E]
  const auto x = random_tensor<float, 3>({B, L, kEmbed}, 2);
  const auto dy = random_tensor<float, 3>({B, L, kEmbed}, 3);
  double flops = forward_flops(B, L);
  switch (part) {
    case Part::step:
      for (auto _ : state) {
        auto f = layer.forward_train(x);
        auto dx = layer.backward(f.context, dy);
        benchmark::DoNotOptimize(dx.data());
      }
      flops *= 3.0;
      break;
    case Part::forward:
      for (auto _ : state) {
        auto y = layer.forward(x);
        benchmark::DoNotOptimize(y.data());
      }
      break;
    case Part::forward_train:
      for (auto _ : state) {
        auto f = layer.forward_train(x);
        benchmark::DoNotOptimize(f.output.data());
      }
      break;
    case Part::backward: {
      const auto f = layer.forward_train(x);
      for (auto _ : state) {
        auto dx = layer.backward(f.context, dy);
        benchmark::DoNotOptimize(dx.data());
      }
      flops *= 2.0;
      break;
    }
  }
  tessera_bench::single_thread();
  set_gflops(state, flops);
  // tokens/s
  state.SetItemsProcessed(state.iterations() * B * L);
}

void BM_EncoderLayer_TrainStep(benchmark::State& s) { run(s, Variant::post_norm_relu, Part::step); }
void BM_EncoderLayer_Forward(benchmark::State& s) {
  run(s, Variant::post_norm_relu, Part::forward);
}
void BM_EncoderLayer_ForwardTrain(benchmark::State& s) {
  run(s, Variant::post_norm_relu, Part::forward_train);
}
void BM_EncoderLayer_Backward(benchmark::State& s) {
  run(s, Variant::post_norm_relu, Part::backward);
}
void BM_EncoderLayer_PreNormGelu_TrainStep(benchmark::State& s) {
  run(s, Variant::pre_norm_gelu, Part::step);
}

benchmark::internal::Benchmark* shapes(benchmark::internal::Benchmark* b, int threads) {
  return b->Args({8, 512, threads})
      ->Args({1, 4096, threads})
      ->ArgNames({"B", "L", "threads"})
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);

// Each benchmark on one thread, timed in CPU time (less disturbed by other processes), and on
// all threads, timed in real time.
[[maybe_unused]] static const bool registered = [] {
  const std::pair<const char*, void (*)(benchmark::State&)> benches[] = {
      {"BM_EncoderLayer_TrainStep", BM_EncoderLayer_TrainStep},
      {"BM_EncoderLayer_PreNormGelu_TrainStep", BM_EncoderLayer_PreNormGelu_TrainStep},
      {"BM_EncoderLayer_Forward", BM_EncoderLayer_Forward},
      {"BM_EncoderLayer_ForwardTrain", BM_EncoderLayer_ForwardTrain},
      {"BM_EncoderLayer_Backward", BM_EncoderLayer_Backward}};
  for (const auto& [name, fn] : benches) {
    shapes(benchmark::RegisterBenchmark(name, fn), 1);
    if (tessera::max_threads() > 1)
      shapes(benchmark::RegisterBenchmark(name, fn), tessera::max_threads())->UseRealTime();
  }
  return true;
}();

BENCHMARK_MAIN();
