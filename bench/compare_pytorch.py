#!/usr/bin/env python3
"""PyTorch and tessera side by side on the same machine, the same shapes, one thread.

Runs PyTorch's scaled dot-product attention and nn.TransformerEncoderLayer (E = 512, 8 heads,
F = 2048) on the shapes of tessera's bench_attention and bench_transformer, then those two
binaries themselves (JSON output),
and prints one table: milliseconds and GFLOPS for both, their ratio, and tessera's fraction of
BM_PeakFMA. FLOP counts are the benchmarks' own: attention 4*B*H*L*L*D (half with causal), a layer
its projections plus attention.

With --models it compares whole towers instead (bench_models): torchvision's vit_b_16 classifying
one 224 x 224 image and CLIP ViT-B/32's image tower (the OpenAI-architecture reference of
tests/fixtures/make_model_fixtures.py at full size), random weights, one thread and all threads,
against PyTorch and, with --onnx DIR (a folder where `npm install --ignore-scripts
onnxruntime-node` was run), ONNX Runtime's CPU library running the same models exported with
torch.onnx.export; and it prints bench_models' build-and-load time and peak memory.

With --training it compares one training step of the encoder layer (bench_training): PyTorch's
nn.TransformerEncoderLayer(512, 8, 2048, dropout=0, batch_first=True) in training mode, forward
and backward of loss = (y * dy).sum() to the gradients of the input and of every parameter
(gradients set to None between steps), against tessera's forward_train + backward, for the
default post-norm ReLU layer and a pre-norm GELU one, at B8 L512 and B1 L4096, on one thread and
on all threads. One-thread rows compare CPU time (process time), all-thread rows wall time: the
one-thread figures then stay usable on a machine shared with other work. FLOPs are 3x the
forward's products (bench_training's convention).

Not part of CI: it needs PyTorch (Debian: apt-get install python3-torch; run it with the system
interpreter, /usr/bin/python3) and a Release build of the benchmarks:

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target bench_attention bench_transformer
    OPENBLAS_CORETYPE=SKYLAKEX /usr/bin/python3 bench/compare_pytorch.py   # see below
    cmake --build build --target bench_training
    OPENBLAS_CORETYPE=SKYLAKEX /usr/bin/python3 bench/compare_pytorch.py --training

PyTorch's CPU products go through the system BLAS (libblas.so.3). On Debian that is netlib's
reference BLAS unless an optimised one is installed (apt-get install libopenblas0-pthread switches
the alternative); the script names the BLAS it finds, and a comparison against the reference BLAS
says nothing about PyTorch. OpenBLAS picks its kernels from the CPU it detects; a release older
than the CPU may fall back to generic ones (OPENBLAS_VERBOSE=2 prints the core it chose). OpenBLAS 0.3.21 on an Emerald Rapids
Xeon, for instance, chose "Prescott" (SSE3) with OPENBLAS_CORETYPE unset and reached 16 GFLOPS on a
1024^3 product; with OPENBLAS_CORETYPE=SKYLAKEX (AVX-512) it reached 86. Set it to the newest core
your OpenBLAS knows that the CPU supports, and report it with the figures. The script prints the
BLAS it finds and OPENBLAS_CORETYPE.

PyTorch allocates every intermediate afresh. Where a page fault is slow (a virtual machine: about
10 us a page on the Zen 5 of README's tables, where PyTorch's attention then ran 6-14x slower),
run the script under an allocator that keeps freed pages, for PyTorch's sake:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 /usr/bin/python3 bench/compare_pytorch.py
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# One thread for PyTorch's BLAS as well as its own pool: torch.set_num_threads(1) does not reach
# Debian's pthread OpenBLAS, which otherwise ran this process's products on every core (a 1024^3
# product at 340 GFLOPS on two cores of a Zen 5, against 208 on one). Read when the library
# loads, so it is set before torch is imported; the multi-thread runs set it in their children.
# (Not OMP_NUM_THREADS: the tessera binaries started from here would inherit it.)
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

E, HEADS, FF = 512, 8, 2048
HEAD_DIM = E // HEADS


def median_seconds(fn, min_time, min_reps=3, clock=time.perf_counter):
    """The median of repeated timings of fn() (after one warm-up call), measured with `clock`,
    repeated for at least min_time wall seconds and min_reps runs."""
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def sdpa_flops(b, h, l, d, causal):
    return 4.0 * b * h * l * l * d * (0.5 if causal else 1.0)


def mha_flops(l):
    return 2.0 * l * E * 3 * E + 2.0 * l * E * E + 4.0 * l * l * E


def layer_flops(b, l):
    return b * (mha_flops(l) + 2.0 * 2.0 * l * E * FF)


def torch_sdpa(b, h, l, d, causal, min_time):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(b, h, l, d, generator=g) * 2 - 1 for _ in range(3))
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    with torch.inference_mode():
        if sdpa is not None:  # PyTorch >= 2.0
            run = lambda: sdpa(q, k, v, is_causal=causal)
        elif hasattr(F, "_scaled_dot_product_attention"):  # 1.13: (output, weights)
            mask = None
            if causal:
                mask = torch.ones(l, l, dtype=torch.bool).tril().logical_not()
                mask = torch.zeros(l, l).masked_fill(mask, float("-inf"))
            run = lambda: F._scaled_dot_product_attention(q, k, v, mask)
        else:
            raise SystemExit("this PyTorch has no scaled_dot_product_attention")
        return median_seconds(run, min_time)


def torch_layer(b, l, min_time):
    layer = torch.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, batch_first=True).eval()
    x = torch.rand(b, l, E, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return median_seconds(lambda: layer(x), min_time)


def blas_in_use():
    """The library that provides libblas.so.3 to this process (Linux), or None."""
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "blas" in line.split()[-1]}
    except OSError:
        return None
    real = sorted({os.path.realpath(x) for x in libs})
    return ", ".join(real) if real else None


def tessera_runs(binary, pattern, min_time, repetitions=1, env=None):
    """The benchmarks of `binary` matching `pattern`, by name; with repetitions > 1, the median
    of that many repetitions of each (Google Benchmark's "median" aggregate, under the run's
    name), with "GFLOPS_max", the best repetition's GFLOPS, added."""
    cmd = [binary, f"--benchmark_filter={pattern}", "--benchmark_format=json",
           f"--benchmark_min_time={min_time}"]
    if repetitions > 1:
        cmd += [f"--benchmark_repetitions={repetitions}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    runs, best = {}, {}
    for bm in json.loads(out)["benchmarks"]:
        if repetitions == 1:
            runs[bm["name"]] = bm
        elif bm.get("run_type") == "aggregate":
            if bm.get("aggregate_name") == "median":
                runs[bm["run_name"]] = bm
        elif "GFLOPS" in bm:
            best[bm["run_name"]] = max(best.get(bm["run_name"], 0.0), bm["GFLOPS"])
    for name, gflops in best.items():
        if name in runs:
            runs[name]["GFLOPS_max"] = gflops
    return runs


ORT_SCRIPT = r"""
const ort = require(process.argv[2] + "/node_modules/onnxruntime-node");
(async () => {
  const [model, threads, minTime] = [process.argv[3], +process.argv[4], +process.argv[5]];
  const shapes = JSON.parse(process.argv[6]);  // {input name: shape}
  const session = await ort.InferenceSession.create(model, {
      intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all",
      executionMode: "sequential"});
  const feeds = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const data = Float32Array.from({length: shape.reduce((a, b) => a * b, 1)},
                                   (_, i) => Math.sin(i));
    feeds[name] = new ort.Tensor("float32", data, shape);
  }
  await session.run(feeds);  // warm-up
  const times = [];
  const start = process.hrtime.bigint();
  while (times.length < 3 || Number(process.hrtime.bigint() - start) / 1e9 < minTime) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({median: times[Math.floor(times.length / 2)], runs: times.length}));
})();
"""


def model_towers():
    """The two towers bench_models runs, as PyTorch modules, random weights, eval mode."""
    import torchvision
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                    "fixtures"))
    from make_model_fixtures import QuickGELU, VisionTransformer
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16().eval()
    clip = VisionTransformer(224, 32, 768, 12, 12, 3072, 512, QuickGELU).eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.normal_(0, 0.02)
    return {"BM_VitB16_Image": ("ViT-B/16 (torchvision), 1 image", vit),
            "BM_ClipB32_Image": ("CLIP ViT-B/32 image tower, 1 image", clip)}


def torch_tower_seconds(bench, threads, min_time):
    """PyTorch's median time for a tower in a fresh interpreter with `threads` threads for its
    own kernels and for OpenBLAS (which otherwise starts a thread per core whatever
    torch.set_num_threads says), and passive OpenMP waiting so that the two pools do not spin
    against each other."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY="PASSIVE")
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import compare_pytorch as c, torch; torch.set_num_threads({threads}); "
            f"m = c.model_towers()[{bench!r}][1]; x = torch.rand(1, 3, 224, 224)\n"
            f"with torch.no_grad(): print(c.median_seconds(lambda: m(x), {min_time}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def onnx_seconds(model, name, threads, onnx_dir, min_time, inputs=None):
    """ONNX Runtime's median time for `model` exported by torch.onnx.export; `inputs` maps input
    names to shapes (default: one image, [1, 3, 224, 224])."""
    inputs = inputs or {"images": [1, 3, 224, 224]}
    path = os.path.join("/tmp", f"tessera_compare_{name}.onnx")
    if not os.path.exists(path):
        # Not under no_grad: there nn.TransformerEncoderLayer takes its fused inference path,
        # which has no ONNX form.
        torch.onnx.export(model, tuple(torch.rand(*s) for s in inputs.values()), path,
                          opset_version=14, input_names=list(inputs))
    script = os.path.join("/tmp", "tessera_compare_ort.js")
    with open(script, "w") as f:
        f.write(ORT_SCRIPT)
    out = subprocess.run(["node", script, os.path.abspath(onnx_dir), path, str(threads),
                          str(min_time), json.dumps(inputs)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["median"]


class UnfusedAttention(torch.nn.Module):
    """softmax(q k^T / sqrt(D) [+ causal mask]) v as two MatMuls and a Softmax: what
    torch.onnx.export makes of attention (opset 14 has no attention operator), so ONNX Runtime
    runs it unfused on its MLAS products."""

    def __init__(self, l, d, causal):
        super().__init__()
        self.scale = 1.0 / d ** 0.5
        mask = torch.zeros(l, l)
        if causal:
            mask = mask.masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), float("-inf"))
        self.register_buffer("mask", mask if causal else None)

    def forward(self, q, k, v):
        s = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if self.mask is not None:
            s = s + self.mask
        return torch.matmul(torch.softmax(s, dim=-1), v)


def ort_version(onnx_dir):
    if not onnx_dir:
        return ""
    with open(os.path.join(onnx_dir, "node_modules", "onnxruntime-node", "package.json")) as f:
        return json.load(f)["version"]


def compare_models(args):
    threads_all = os.cpu_count()
    ts = tessera_runs(args.bench_models, "BM_PeakFMA|BM_VitB16_Image|BM_ClipB32_Image|BM_VitB16_Load",
                      args.min_time)
    peak = max(v["GFLOPS"] for k, v in ts.items() if k.startswith("BM_PeakFMA"))
    print(f"PyTorch {torch.__version__}; "
          f"ONNX Runtime {ort_version(args.onnx) or '(not run: --onnx DIR)'}; "
          f"tessera BM_PeakFMA {peak:.1f} GFLOPS a core; {threads_all} cores\n")
    header = (f"{'tower':<38}{'thr':>4}{'PyTorch ms':>11}{'ORT ms':>8}{'tessera ms':>11}"
              f"{'GFLOPS':>8}{'% peak':>8}{'× PyTorch':>10}{'× ORT':>7}")
    print(header)
    print("-" * len(header))
    for bench, (label, model) in model_towers().items():
        for threads in sorted({1, threads_all}):
            run = ts.get(f"{bench}/{threads}/process_time/real_time")
            if run is None:
                continue
            pt = torch_tower_seconds(bench, threads, args.min_time)
            ort_s = (onnx_seconds(model, bench, threads, args.onnx, args.min_time)
                     if args.onnx else float("nan"))
            t_ms = run["real_time"] if run["time_unit"] == "ms" else run["real_time"] / 1e6
            print(f"{label:<38}{threads:>4}{pt * 1e3:>11.1f}{ort_s * 1e3:>8.1f}{t_ms:>11.1f}"
                  f"{run['GFLOPS']:>8.1f}{100 * run['GFLOPS'] / (peak * threads):>7.0f}%"
                  f"{pt * 1e3 / t_ms:>10.2f}{ort_s * 1e3 / t_ms:>7.2f}")
    load = ts.get("BM_VitB16_Load/iterations:3/manual_time")
    if load:
        ms = load["real_time"] if load["time_unit"] == "ms" else load["real_time"] / 1e6
        print(f"\nViT-B/16 built and loaded from a {load['file_MiB']:.0f} MiB safetensors file on "
              f"one thread: {ms:.0f} ms, peak resident memory {load['peak_rss_MiB']:.0f} MiB "
              f"({load['peak_over_file']:.2f} x the file)")


# ---- --training: one training step of the encoder layer ----------------------------------------

TRAINING_SHAPES = [(8, 512), (1, 4096)]
# bench_training's benchmark name -> (label, PyTorch layer options)
TRAINING_VARIANTS = {
    "BM_EncoderLayer_TrainStep": ("post-norm ReLU", dict(activation="relu", norm_first=False)),
    "BM_EncoderLayer_PreNormGelu_TrainStep": ("pre-norm GELU", dict(activation="gelu",
                                                                    norm_first=True)),
}


def torch_train_step_seconds(b, l, variant, min_time, cpu_clock):
    """PyTorch's median time of one training step: forward in training mode (dropout 0), loss =
    (y * dy).sum(), backward to the input and every parameter, gradients set to None before each
    step. Process CPU time with cpu_clock, else wall time."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, batch_first=True,
                                             **TRAINING_VARIANTS[variant][1]).train()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(b, l, E, generator=g) * 2 - 1).requires_grad_()
    dy = torch.rand(b, l, E, generator=g) * 2 - 1

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (layer(x) * dy).sum().backward()

    clock = time.process_time if cpu_clock else time.perf_counter
    return median_seconds(step, min_time, clock=clock)


def torch_train_subprocess(b, l, variant, threads, min_time):
    """torch_train_step_seconds in a fresh interpreter with `threads` threads for PyTorch's own
    kernels and for OpenBLAS (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, as --models does), CPU time
    on one thread, wall time otherwise."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY="PASSIVE")
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import compare_pytorch as c, torch; torch.set_num_threads({threads}); "
            f"print(c.torch_train_step_seconds({b}, {l}, {variant!r}, {min_time}, "
            f"{threads == 1}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def cpu_description():
    """The CPU model and its widest vector extensions, from /proc/cpuinfo (Linux)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = [x for x in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "avx2", "fma")
           if x in flags]
    return model, ", ".join(isa) or "no AVX"


def compare_training(args):
    threads_all = os.cpu_count()
    model, isa = cpu_description()
    print(f"CPU: {model}, {threads_all} logical CPUs; ISA: {isa}")
    try:
        print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    except OSError:
        pass
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    torch.rand(64, 64) @ torch.rand(64, 64)  # loads the BLAS
    blas = blas_in_use()
    print(f"PyTorch {torch.__version__}; BLAS: {blas or 'unknown'}; "
          f"OPENBLAS_CORETYPE={coretype or '(not set)'}")
    if blas and "openblas" in blas and not coretype:
        print("warning: OPENBLAS_CORETYPE is not set: OpenBLAS 0.3.21 picks a generic (SSE3) "
              "kernel on CPUs newer than it knows; export OPENBLAS_CORETYPE=SKYLAKEX on AVX-512 "
              "machines")

    # OMP_WAIT_POLICY=PASSIVE as for PyTorch (torch_train_subprocess): on a machine shared with
    # other work, OpenMP threads that spin at barriers take the cores from each other and from
    # the threads they wait for (tessera's 2-thread step took 2x as long with the default policy
    # on a loaded 2-core machine).
    ts = tessera_runs(args.bench_training, "BM_PeakFMA|BM_EncoderLayer_", args.min_time,
                      args.repetitions, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    peak_run = next(v for k, v in ts.items() if k.startswith("BM_PeakFMA"))
    # The peak is the best repetition: what the core does when nothing else disturbs it.
    peak = peak_run.get("GFLOPS_max", peak_run["GFLOPS"])
    print(f"tessera BM_PeakFMA: {peak:.1f} GFLOPS a core, best of {args.repetitions} "
          f"(median {peak_run['GFLOPS']:.1f}; {int(peak_run['lanes'])} float lanes)")
    print("OpenMP: OMP_WAIT_POLICY=PASSIVE on both sides; PyTorch's OpenBLAS and OpenMP threads "
          "limited to the row's thread count")
    print(f"Times: medians (tessera: of {args.repetitions} repetitions); 1-thread rows CPU time, "
          "all-thread rows wall time.\nFLOPs: 3x the forward's products (the attention backward's "
          "recomputation of the probabilities not counted).\n% peak: of BM_PeakFMA x threads.\n")

    def ms(run, key):
        return run[key] if run["time_unit"] == "ms" else run[key] / 1e6

    def tessera_run(bench, b, l, threads):
        suffix = "" if threads == 1 else "/real_time"
        run = ts.get(f"{bench}/B:{b}/L:{l}/threads:{threads}{suffix}")
        clock = "cpu_time" if threads == 1 else "real_time"
        return run, (ms(run, clock) if run else None)

    header = (f"{'layer':<16}{'shape':<11}{'thr':>4}{'tessera ms':>12}{'PyTorch ms':>12}"
              f"{'tessera GFLOPS':>16}{'PyTorch GFLOPS':>16}{'% peak':>8}{'speedup':>9}")
    print(header)
    print("-" * len(header))
    for bench, (label, _) in TRAINING_VARIANTS.items():
        for b, l in TRAINING_SHAPES:
            for threads in sorted({1, threads_all}):
                run, t_ms = tessera_run(bench, b, l, threads)
                if run is None:
                    continue
                pt_ms = torch_train_subprocess(b, l, bench, threads, args.min_time) * 1e3
                flops = 3 * layer_flops(b, l)
                print(f"{label:<16}{f'B{b} L{l}':<11}{threads:>4}{t_ms:>12.1f}{pt_ms:>12.1f}"
                      f"{run['GFLOPS']:>16.1f}{flops / pt_ms / 1e6:>16.1f}"
                      f"{100 * run['GFLOPS'] / (peak * threads):>7.0f}%{pt_ms / t_ms:>9.2f}")
    print("speedup: PyTorch ms / tessera ms (> 1: tessera faster)\n")

    print("tessera, post-norm ReLU, the parts of a step (ms):")
    parts = ["Forward", "ForwardTrain", "Backward", "TrainStep"]
    header = f"{'shape':<11}{'thr':>4}" + "".join(f"{p:>14}" for p in parts)
    print(header)
    print("-" * len(header))
    for b, l in TRAINING_SHAPES:
        for threads in sorted({1, threads_all}):
            cells = []
            for p in parts:
                _, t_ms = tessera_run(f"BM_EncoderLayer_{p}", b, l, threads)
                cells.append(f"{t_ms:>14.1f}" if t_ms is not None else f"{'-':>14}")
            print(f"{f'B{b} L{l}':<11}{threads:>4}" + "".join(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build/bench/bench_attention",
                    help="path of tessera's bench_attention binary")
    ap.add_argument("--bench-layer", default="build/bench/bench_transformer",
                    help="path of tessera's bench_transformer binary")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per shape and side")
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--models", action="store_true", help="compare whole model towers instead")
    ap.add_argument("--bench-models", default="build/bench/bench_models",
                    help="path of tessera's bench_models binary")
    ap.add_argument("--onnx", default="", help="folder with node_modules/onnxruntime-node")
    ap.add_argument("--training", action="store_true",
                    help="compare one training step (forward + backward) of the encoder layer")
    ap.add_argument("--bench-training", default="build/bench/bench_training",
                    help="path of tessera's bench_training binary")
    ap.add_argument("--repetitions", type=int, default=3,
                    help="repetitions of each tessera benchmark (median used)")
    args = ap.parse_args()
    if args.models:
        return compare_models(args)
    if args.training:
        return compare_training(args)
    torch.set_num_threads(1)
    lengths = [int(x) for x in args.lengths.split(",")]

    env = ", ".join(f"{v}={os.environ[v]!r}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                    if v in os.environ) or "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE not set"
    print(f"PyTorch {torch.__version__}, 1 thread; {env}; "
          f"ONNX Runtime {ort_version(args.onnx) or '(not run: --onnx DIR)'}, 1 thread")

    torch.rand(64, 64) @ torch.rand(64, 64)  # loads the BLAS
    blas = blas_in_use()
    print(f"BLAS: {blas or 'unknown'}")
    if blas and "openblas" not in blas and "mkl" not in blas and "blis" not in blas:
        print("warning: PyTorch runs on an unoptimised BLAS here; its figures are not representative")
    ts = tessera_runs(args.bench,
                      "BM_PeakFMA|BM_SDPA_Fused/.*L:(" + "|".join(map(str, lengths)) + ")/",
                      args.min_time, args.repetitions)
    ts.update(tessera_runs(args.bench_layer,
                           "BM_TransformerEncoderLayer(_Prepacked)?/", args.min_time,
                           args.repetitions))
    # The best of the peak runs (each binary registers the chain count that fits its ISA's
    # registers; the highest is the real peak).
    peak = max(v["GFLOPS"] for k, v in ts.items() if k.startswith("BM_PeakFMA"))
    print(f"tessera BM_PeakFMA: {peak:.1f} GFLOPS\n")

    header = (f"{'shape':<36}{'PyTorch':>9}{'ORT':>8}{'tessera':>9}{'ms':>9}"
              f"{'× PyTorch':>10}{'× ORT':>7}{'% peak':>8}")
    print(header + "\n" + f"{'(GFLOPS)':<36}")
    print("-" * len(header))

    def row(label, torch_s, ort_s, flops, run):
        t_ms = run["real_time"] if run["time_unit"] == "ms" else run["real_time"] / 1e6
        t_gf = run["GFLOPS"]  # the counter is already in GFLOPS
        p_gf = flops / torch_s / 1e9
        o_gf = flops / ort_s / 1e9 if ort_s == ort_s else float("nan")
        print(f"{label:<36}{p_gf:>9.1f}{o_gf:>8.1f}{t_gf:>9.1f}{t_ms:>9.2f}"
              f"{t_gf / p_gf:>10.2f}{t_gf / o_gf:>7.2f}{100 * t_gf / peak:>7.0f}%")

    def ort_s(model, name, inputs):
        if not args.onnx:
            return float("nan")
        return onnx_seconds(model, name, 1, args.onnx, args.min_time, inputs)

    for l in lengths:
        for d in (HEAD_DIM, 2 * HEAD_DIM):
            h = E // d
            for causal in (0, 1):
                name = f"BM_SDPA_Fused/B:1/H:{h}/L:{l}/D:{d}/causal:{causal}"
                if name not in ts:
                    continue
                s = torch_sdpa(1, h, l, d, bool(causal), args.min_time)
                o = ort_s(UnfusedAttention(l, d, causal), f"sdpa_h{h}_l{l}_d{d}_c{causal}",
                          {n: [1, h, l, d] for n in ("q", "k", "v")})
                row(f"SDPA B1 H{h} L{l} D{d}" + (" causal" if causal else ""), s, o,
                    sdpa_flops(1, h, l, d, causal), ts[name])
    for b, l in [(1, x) for x in lengths] + [(8, 512)]:
        name = f"BM_TransformerEncoderLayer/B:{b}/L:{l}"
        if name not in ts:
            continue
        s = torch_layer(b, l, args.min_time)
        layer = torch.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0,
                                                 batch_first=True).eval()
        o = ort_s(layer, f"layer_b{b}_l{l}", {"x": [b, l, E]})
        row(f"EncoderLayer B{b} L{l} E512 F2048", s, o, layer_flops(b, l), ts[name])
        packed = f"BM_TransformerEncoderLayer_Prepacked/B:{b}/L:{l}"
        if packed in ts:
            row(f"  (tessera weights prepacked)", s, o, layer_flops(b, l), ts[packed])


if __name__ == "__main__":
    sys.exit(main())
