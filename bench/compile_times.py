#!/usr/bin/python3
"""Compile time of one translation unit in each of tessera's modes (README, "The compiled mode").

Times `g++ -std=c++20 -O2 -fopenmp -c` of four programs (the umbrella header and an empty main;
what the umbrella includes from outside tessera, alone; a two-layer nn::TransformerEncoder<float>
run on a tensor, through the umbrella and through its own header), header-only with -march=native, header-only with no -march flag, and in the compiled
mode (TESSERA_COMPILED and Eigen's alignment, as the CMake target tessera::compiled defines
them: the consumer compiles declarations, not the kernels, modules or JSON readers). The rounds
alternate the configurations so that a noisy machine spreads its noise over all of them; each
cell is the median (range) of the rounds, in seconds of wall time.

  /usr/bin/python3 bench/compile_times.py [--rounds 4] [--include DIR] [--label NAME] ...

--include may be given several times (with as many --label) to set another tree's headers beside
this one in the same sitting (a checkout of an earlier commit, say). Only the compiler runs: no
build directory is needed. Needs Eigen 3.4 (/usr/include/eigen3) and nlohmann-json.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ENCODER = """#include <cstdio>
#include <tessera/%s>
int main() {
  tessera::nn::TransformerEncoder<float> encoder(
      {.layer = {.d_model = 64, .nhead = 4, .dim_feedforward = 128}, .num_layers = 2});
  tessera::Tensor<float, 3> x(2, 16, 64);
  x.setRandom(1);
  const auto y = encoder.forward(x);
  std::printf("%%f\\n", static_cast<double>(y(0, 0, 0)));
}
"""

# What the header-only umbrella includes from outside tessera (Eigen, nlohmann-json, and the
# standard and system headers of tessera's headers that the umbrella reaches; the list is that of
# `g++ -M` on the umbrella): the floor under the umbrella's own time.
DEPENDENCIES = [
    "Eigen/Core", "unsupported/Eigen/SpecialFunctions", "nlohmann/json.hpp", "omp.h", "algorithm",
    "array", "atomic", "bit", "cassert", "cerrno", "charconv", "climits", "cmath", "concepts",
    "cstddef", "cstdint", "cstdio", "cstdlib", "cstring", "exception", "fcntl.h", "filesystem",
    "fstream", "functional", "initializer_list", "limits", "malloc.h", "map", "memory", "new",
    "numbers", "numeric", "optional", "random", "set", "span", "sstream", "stdexcept", "string",
    "string_view", "sys/stat.h", "sys/types.h", "system_error", "tuple", "type_traits", "unistd.h",
    "utility", "vector"]

PROGRAMS = {
    "umbrella": "#include <tessera/tessera.hpp>\nint main() {}\n",
    "dependencies": "".join(f"#include <{h}>\n" for h in DEPENDENCIES) + "int main() {}\n",
    "encoder, umbrella": ENCODER % "tessera.hpp",
    "encoder, own header": ENCODER % "nn/transformer_encoder.hpp",
}

MODES = {
    "header-only -march=native": ["-march=native"],
    "header-only, no -march": [],
    "compiled mode": ["-DTESSERA_COMPILED", "-DEIGEN_MAX_ALIGN_BYTES=64",
                      "-DEIGEN_MAX_STATIC_ALIGN_BYTES=64"],
}


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--include", action="append", default=None,
                    help="a tree's include directory (default: this checkout's)")
    ap.add_argument("--label", action="append", default=None)
    ap.add_argument("--cxx", default="g++")
    args = ap.parse_args()
    includes = args.include or [os.path.join(here, "include")]
    labels = args.label or ["this tree"] * len(includes)
    if len(labels) != len(includes):
        sys.exit("compile_times.py: give one --label per --include")

    configs = [(lab, inc, mode) for lab, inc in zip(labels, includes) for mode in MODES]
    times = {(c, p): [] for c in configs for p in PROGRAMS}
    with tempfile.TemporaryDirectory() as tmp:
        sources = {}
        for i, (name, code) in enumerate(PROGRAMS.items()):
            sources[name] = os.path.join(tmp, f"tu{i}.cpp")
            with open(sources[name], "w") as f:
                f.write(code)
        for r in range(args.rounds):
            for c in configs if r % 2 == 0 else reversed(configs):
                lab, inc, mode = c
                for name, src in sources.items():
                    cmd = [args.cxx, "-std=c++20", "-O2", "-fopenmp", *MODES[mode], "-I", inc,
                           "-I", "/usr/include/eigen3", "-c", src, "-o", os.path.join(tmp, "x.o")]
                    t0 = time.perf_counter()
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    dt = time.perf_counter() - t0
                    if p.returncode != 0:
                        sys.exit(f"compile_times.py: {' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
                    times[(c, name)].append(dt)
            print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    ver = subprocess.run([args.cxx, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"{cpu}, {os.cpu_count()} CPUs, {ver}; g++ -std=c++20 -O2 -fopenmp -c; "
          f"median (range) of {args.rounds} rounds, seconds")
    print()
    print("| translation unit | " + " | ".join(f"{lab}: {mode}" if len(includes) > 1 else mode
                                              for lab, _, mode in configs) + " |")
    print("| --- |" + " --- |" * len(configs))
    for name in PROGRAMS:
        cells = []
        for c in configs:
            t = times[(c, name)]
            cells.append(f"{statistics.median(t):.1f} ({min(t):.1f}–{max(t):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
