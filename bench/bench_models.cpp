// Benchmarks of whole pretrained-model towers (tessera/models), random weights:
//   BM_VitB16_Image      torchvision's ViT-B/16 classifying one 224 x 224 image (197 tokens,
//                        12 layers of width 768), one thread and all threads;
//   BM_ClipB32_Image     CLIP ViT-B/32's image embedding of one image (50 tokens);
//   BM_VitB16_Load       building ViT-B/16 and loading it from a safetensors file in
//                        torchvision's names (written once to the temp folder), in a fresh
//                        process: seconds, and peak resident memory against the file's size;
//   BM_PeakFMA           the core's single-thread FMA peak, in the same run, so GFLOPS read as a
//                        fraction of it (bench/compare_pytorch.py --models prints the table with
//                        PyTorch's and ONNX Runtime's times on the same machine).
// FLOPs count every multiply-add of the products as 2: the patch projection, per layer the q/k/v
// and output projections (8 N E^2), the scores and the weighted sum (4 N^2 E) and the MLP
// (4 N E M), and the head; the norms, softmax and GELU are not counted.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "bench_common.hpp"
#include "tessera/io/safetensors.hpp"
#include "tessera/models/clip.hpp"
#include "tessera/models/vit.hpp"

namespace {

using tessera::Index;
using tessera::Tensor;
namespace models = tessera::models;

double vit_flops(const models::VisionTransformerOptions& o) {
  const double g = static_cast<double>(o.image_size / o.patch_size);
  const double P = g * g, N = P + 1, E = static_cast<double>(o.width);
  const double K = static_cast<double>(o.in_channels * o.patch_size * o.patch_size);
  const double M = static_cast<double>(o.mlp_dim), out = static_cast<double>(o.output_dim);
  const double layer = 8 * N * E * E + 4 * N * N * E + 4 * N * E * M;
  return 2 * P * K * E + static_cast<double>(o.layers) * layer + 2 * E * out;
}

// A tower with random weights (drawn once per process: ViT-B/16 takes seconds to initialise),
// its weights packed for inference.
const models::VisionTransformer<float>& tower(const models::VisionTransformerOptions& o) {
  static std::map<Index, models::VisionTransformer<float>> towers;  // by patch size
  auto it = towers.find(o.patch_size * 100000 + o.output_dim);
  if (it == towers.end()) {
    models::VisionTransformer<float> v(o);
    v.prepack();
    it = towers.emplace(o.patch_size * 100000 + o.output_dim, std::move(v)).first;
  }
  return it->second;
}

void run_image(benchmark::State& state, const models::VisionTransformerOptions& o) {
  const int threads = static_cast<int>(state.range(0));
  tessera::set_num_threads(threads);
  const auto& vit = tower(o);
  const auto image = tessera_bench::random_tensor<float, 4>({1, 3, o.image_size, o.image_size}, 7);
  tessera_bench::warm_up([&] { return vit.forward(image); });
  for (auto _ : state) {
    auto out = vit.forward(image);
    benchmark::DoNotOptimize(out.data());
  }
  tessera_bench::set_gflops(state, vit_flops(o));
  state.counters["threads"] = threads;
  tessera_bench::single_thread();
}

void BM_VitB16_Image(benchmark::State& state) {
  run_image(state, models::vit_preset("vit_b_16").options);
}
void BM_ClipB32_Image(benchmark::State& state) {
  run_image(state, models::clip_preset("ViT-B-32-quickgelu").options.vision);
}

// ---- building and loading ViT-B/16 from a file ---------------------------------------------

// torchvision's name for a tessera key of VisionTransformer (the naming table read backwards),
// and the shape torchvision stores it in (class token [1, 1, E], positions [1, N, E]).
std::string torchvision_name(const std::string& key) {
  for (const auto& r : models::torchvision_vit_naming().rules)
    if (auto name = tessera::detail::apply_name_rule(key, models::NameRule{r.to, r.from}))
      return *name;
  return key;
}

std::filesystem::path vit_b_16_file() {
  const auto path = std::filesystem::temp_directory_path() / "tessera_bench_vit_b_16.safetensors";
  if (std::filesystem::exists(path) && std::filesystem::file_size(path) > 340'000'000) return path;
  const models::VisionTransformer<float> v(models::vit_preset("vit_b_16").options);
  tessera::io::StateDict named = v.state_dict(), out;
  for (const std::string& key : named.keys()) {
    auto t = *named.take(key);
    const std::string name = torchvision_name(key);
    if (name == "class_token" || name == "encoder.pos_embedding")
      t.shape.insert(t.shape.begin(), name == "class_token" ? 2 : 1, Index{1});
    out.insert(name, std::move(t));
  }
  tessera::io::save_safetensors(path, out);
  return path;
}

// In the child: builds and loads the model, writes "seconds peak_resident_bytes" to stdout.
int load_child(const char* path) {
  tessera::set_num_threads(1);
  const auto start = std::chrono::steady_clock::now();
  const auto vit = models::load_vit<float>(path, "vit_b_16");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  benchmark::DoNotOptimize(vit.head.weight.value.data());
  // Peak resident memory of this process image: VmHWM (getrusage's ru_maxrss would also count
  // the parent's pages this process held between fork and exec).
  double peak_kib = -1;
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %lf kB", &peak_kib) == 1) break;
    std::fclose(f);
  }
  std::printf("%.9f %.0f\n", s, 1024.0 * peak_kib);
  return peak_kib > 0 ? 0 : 1;
}

// Builds and loads the model in a fresh process (this binary run again with --load-child, so
// nothing of this process's memory counts, as /usr/bin/time -v would measure it); returns
// {seconds, peak resident bytes}, or {-1, -1} when the child fails.
std::pair<double, double> load_in_child(const std::filesystem::path& path) {
  int fds[2];
  if (pipe(fds) != 0) return {-1, -1};
  const std::string arg = "--load-child=" + path.string();
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    execl("/proc/self/exe", "bench_models", arg.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  char buf[128] = {};
  std::size_t got = 0;
  while (got + 1 < sizeof buf) {
    const auto n = read(fds[0], buf + got, sizeof buf - 1 - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  double seconds = -1, rss = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
      std::sscanf(buf, "%lf %lf", &seconds, &rss) != 2)
    return {-1, -1};
  return {seconds, rss};
}

void BM_VitB16_Load(benchmark::State& state) {
  tessera_bench::single_thread();
  const auto path = vit_b_16_file();
  const double file = static_cast<double>(std::filesystem::file_size(path));
  double peak = 0;
  for (auto _ : state) {
    const auto [seconds, rss] = load_in_child(path);
    if (seconds < 0) {
      state.SkipWithError("the child process failed");
      return;
    }
    state.SetIterationTime(seconds);
    peak = std::max(peak, rss);
  }
  state.counters["file_MiB"] = file / (1 << 20);
  state.counters["peak_rss_MiB"] = peak / (1 << 20);
  state.counters["peak_over_file"] = peak / file;
}

}  // namespace

using tessera_bench::BM_PeakFMA;
BENCHMARK_TEMPLATE(BM_PeakFMA, tessera_bench::kPeakAccumulators);
BENCHMARK(BM_VitB16_Image)
    ->Arg(1)
    ->Arg(tessera::max_threads())
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_ClipB32_Image)
    ->Arg(1)
    ->Arg(tessera::max_threads())
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();
BENCHMARK(BM_VitB16_Load)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  if (argc == 2 && std::string_view(argv[1]).starts_with("--load-child="))
    return load_child(argv[1] + std::string_view("--load-child=").size());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
