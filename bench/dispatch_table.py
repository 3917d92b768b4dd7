#!/usr/bin/python3
"""The portable binaries against the -march builds (README, "The compiled mode").

The attention, GEMM, transformer and CLIP-loss benchmarks built three ways run the same workloads:
  - header-only for this machine (a build with -march=native: build/bench/bench_*),
  - header-only for AVX2 + FMA (a build configured with -DTESSERA_MARCH=haswell),
  - portable: no instruction-set flag, linked with tessera::compiled (bench_*_portable), once at
    the level it picks and once with TESSERA_CPU_CAPABILITY=avx2.
Each binary runs each workload with 3 repetitions (one thread); a cell is the median GFLOPS of each
round, the rounds alternating the binaries, so that the noise of a shared machine shows; a ratio
is the median over the rounds of each round's ratio, with their range.

  /usr/bin/python3 bench/dispatch_table.py --native build --haswell build-avx2 [--rounds 2]

Both build directories need the benchmarks built (cmake --build DIR --target bench_attention
bench_gemm bench_transformer bench_losses, and the _portable four in --native). --haswell may be
left out (the AVX2 columns are then skipped), as on a CPU without AVX2.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

# (row label, binary, benchmark name)
WORKLOADS = [
    ("fused SDPA H8 L256 D64", "bench_attention", "BM_SDPA_Fused/B:1/H:8/L:256/D:64/causal:0"),
    ("fused SDPA H8 L1024 D64", "bench_attention", "BM_SDPA_Fused/B:1/H:8/L:1024/D:64/causal:0"),
    ("fused SDPA H4 L1024 D128", "bench_attention",
     "BM_SDPA_Fused/B:1/H:4/L:1024/D:128/causal:0"),
    ("SGEMM 1024²", "bench_gemm", "BM_Square_Tessera/n:1024"),
    ("Linear 512 × 512 → 1536", "bench_gemm", "BM_Linear_Tessera/L:512/in:512/out:1536"),
    ("Linear 512 × 512 → 2048", "bench_gemm", "BM_Linear_Tessera/L:512/in:512/out:2048"),
    ("encoder layer B1 L4096", "bench_transformer", "BM_TransformerEncoderLayer/B:1/L:4096"),
    ("encoder layer B8 L512", "bench_transformer", "BM_TransformerEncoderLayer/B:8/L:512"),
    # The loss's sweeps are dispatched as the kernels are (contrastive/dispatch.hpp).
    ("CLIP loss N1024 D512, chunked", "bench_losses",
     "BM_ClipLoss_Chunked/N:1024/threads:1/real_time"),
    ("CLIP loss N1024 D512, materialised", "bench_losses",
     "BM_ClipLoss_Materialized/N:1024/threads:1/real_time"),
]


def run(binary, names, env):
    pattern = "^(" + "|".join(names) + ")$"
    cmd = [binary, f"--benchmark_filter={pattern}", "--benchmark_repetitions=3",
           "--benchmark_report_aggregates_only=true", "--benchmark_format=json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if p.returncode != 0:
        sys.exit(f"dispatch_table.py: {' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    out = {}
    for b in json.loads(p.stdout)["benchmarks"]:
        if b.get("aggregate_name") == "median":
            out[b["run_name"]] = b["GFLOPS"]
    missing = [n for n in names if n not in out]
    if missing:
        sys.exit(f"dispatch_table.py: {binary} has no benchmark {missing}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--native", required=True, help="build directory built with -march=native")
    ap.add_argument("--haswell", help="build directory built with -DTESSERA_MARCH=haswell")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    columns = [("header-only -march=native", args.native, "", {}),
               ("portable (level it picks)", args.native, "_portable", {})]
    if args.haswell:
        columns += [("header-only -march=haswell", args.haswell, "", {}),
                    ("portable, TESSERA_CPU_CAPABILITY=avx2", args.native, "_portable",
                     {"TESSERA_CPU_CAPABILITY": "avx2"})]
    env1 = {"OMP_NUM_THREADS": "1"}  # (the benchmarks also set one thread themselves)
    binaries = sorted({w[1] for w in WORKLOADS})
    results = {}  # (column, round) -> {name: gflops}
    for r in range(args.rounds):
        for col in columns if r % 2 == 0 else list(reversed(columns)):
            label, build, suffix, env = col
            got = {}
            for b in binaries:
                names = [w[2] for w in WORKLOADS if w[1] == b]
                got.update(run(os.path.join(build, "bench", b + suffix), names, {**env1, **env}))
            results[(label, r)] = got
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    print(f"{cpu}; one thread; GFLOPS, median of 3 repetitions, rounds separated by /")
    print()
    head = "| workload |"
    for label, *_ in columns:
        head += f" {label} |"
    head += " portable / -march=native |" + (" avx2 / -march=haswell |" if args.haswell else "")
    print(head)
    print("| --- |" + " --- |" * (len(columns) + (2 if args.haswell else 1)))
    for row, _, name in WORKLOADS:
        cells = []
        per_col = {}
        for label, *_ in columns:
            v = [results[(label, r)][name] for r in range(args.rounds)]
            per_col[label] = v
            cells.append(" / ".join(f"{x:.0f}" for x in v))

        def ratio(num, den):  # per round; the median of the rounds (their range)
            q = [a / b for a, b in zip(per_col[num], per_col[den])]
            if len(q) == 1:
                return f"{q[0]:.2f}"
            return f"{statistics.median(q):.2f} ({min(q):.2f}–{max(q):.2f})"

        cells.append(ratio(columns[1][0], columns[0][0]))
        if args.haswell:
            cells.append(ratio(columns[3][0], columns[2][0]))
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
