#!/usr/bin/env python3
"""The input pipelines beside their references on the same machine, one thread: tessera's
bench_image and bench_audio (JSON output) and PIL 9.4 + torchvision / torchaudio 0.13 timed here on
the same work — the very JPEG bench_image decodes (it writes it out when TESSERA_BENCH_JPEG_OUT is
set) and the same 10 s chirp bench_audio analyses. Prints one table of medians, CPU time.

Not part of CI (it needs Debian's python3-pil, python3-torchvision and python3-torchaudio; run
it with /usr/bin/python3) and a Release build of the benchmarks:

    cmake --build build --target bench_image bench_audio && /usr/bin/python3 bench/compare_inputs.py
"""
import argparse
import io
import json
import math
import os
import subprocess
import sys
import time

import torch


def median_cpu_ms(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * sorted(times)[reps // 2]


def tessera_medians(binary, env=None):
    out = subprocess.run([binary, "--benchmark_format=json", "--benchmark_repetitions=5",
                          "--benchmark_report_aggregates_only=true"],
                         check=True, capture_output=True, text=True,
                         env=dict(os.environ, **(env or {}))).stdout
    runs = {}
    for bm in json.loads(out)["benchmarks"]:
        if bm.get("aggregate_name") == "median":
            ms = bm["cpu_time"] * {"ms": 1, "us": 1e-3, "ns": 1e-6, "s": 1e3}[bm["time_unit"]]
            runs[bm["run_name"]] = ms
    return runs


def chirp(seconds, rate):
    """bench_audio's test signal: a 100 Hz .. 7 kHz chirp at 0.3 plus uniform noise at 0.05."""
    n = int(seconds * rate)
    t = torch.arange(n, dtype=torch.float64) / rate
    g = torch.Generator().manual_seed(42)
    x = 0.3 * torch.sin(2 * math.pi * (100 * t + 6900 * t * t / (2 * seconds)))
    x = x + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 0.1
    return x.float().unsqueeze(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="the CMake build folder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from PIL import Image
    import torchaudio
    from torchvision import transforms as T

    jpeg_path = "/tmp/tessera_compare_12mp.jpg"
    img_runs = tessera_medians(os.path.join(args.build, "bench", "bench_image"),
                               {"TESSERA_BENCH_JPEG_OUT": jpeg_path})
    aud_runs = tessera_medians(os.path.join(args.build, "bench", "bench_audio"))
    with open(jpeg_path, "rb") as f:
        jpeg = f.read()

    def decode():
        im = Image.open(io.BytesIO(jpeg))
        im.load()
        return im

    photo = decode()
    w, h = photo.size
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    clip = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(mean, std)])
    short = (round(224 * w / h), 224) if w >= h else (224, round(224 * h / w))
    x = chirp(10, 16000)
    mel = torchaudio.transforms.MelSpectrogram()
    y = chirp(10, 44100)
    ast = dict(htk_compat=True, use_energy=False, window_type="hanning", num_mel_bins=128,
               dither=0.0, frame_shift=10)
    rows = [
        (f"decode a {w} x {h} JPEG ({len(jpeg) / 1e6:.1f} MB)", "BM_DecodeJpeg12MP",
         img_runs, median_cpu_ms(decode), "PIL 9.4"),
        ("resize its shorter side to 224, bicubic", "BM_ResizeShorter224", img_runs,
         median_cpu_ms(lambda: photo.resize(short, Image.Resampling.BICUBIC)), "PIL 9.4"),
        ("open_clip preprocessing of the decoded photo", "BM_Preprocess224", img_runs,
         median_cpu_ms(lambda: clip(photo)), "PIL + torchvision 0.14"),
        ("decode + preprocessing to [3, 224, 224]", "BM_DecodeAndPreprocess", img_runs,
         median_cpu_ms(lambda: clip(decode())), "PIL + torchvision 0.14"),
        ("Kaldi fbank, AST's 128 bins, 10 s of 16 kHz", "BM_Fbank_AST<float>/seconds:10",
         aud_runs, median_cpu_ms(lambda: torchaudio.compliance.kaldi.fbank(x, **ast)),
         "torchaudio 0.13"),
        ("MelSpectrogram, 10 s", "BM_MelSpectrogram<float>/seconds:10", aud_runs,
         median_cpu_ms(lambda: mel(x[0])), "torchaudio 0.13"),
        ("log-mel spectrogram, 10 s", "BM_LogMelSpectrogram<float>/seconds:10", aud_runs,
         median_cpu_ms(lambda: torch.log(mel(x[0]) + 1e-6)), "torchaudio 0.13"),
        ("resample 10 s from 44.1 to 16 kHz", "BM_Resample_44k_16k<float>/seconds:10", aud_runs,
         median_cpu_ms(lambda: torchaudio.functional.resample(y, 44100, 16000)),
         "torchaudio 0.13 (sinc)"),
    ]
    header = f"{'step':<46}{'tessera ms':>11}{'reference ms':>13}{'ratio':>7}  reference"
    print(header)
    print("-" * (len(header) + 16))
    for label, name, runs, ref_ms, ref in rows:
        t_ms = runs.get(name, float("nan"))
        print(f"{label:<46}{t_ms:>11.2f}{ref_ms:>13.2f}{ref_ms / t_ms:>7.2f}  {ref}")
    print("\n(ratio > 1: tessera is faster; CPU time, one thread, medians of 5)")


if __name__ == "__main__":
    sys.exit(main())
