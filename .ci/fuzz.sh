#!/usr/bin/env bash
# Fuzzes tessera's safetensors parser with libFuzzer for a bounded time: builds the fuzz target
# with clang++ in build-fuzz (ASan + UBSan + libFuzzer), runs it for $1 seconds (default 60) from
# the seed corpus, prints libFuzzer's final stats and fails on any crash, sanitizer report, leak,
# timeout or escaped exception. New corpus entries go to build-fuzz/fuzz-corpus (kept between
# runs), crash inputs to build-fuzz/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;; esac

cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTESSERA_BUILD_BENCHMARKS=OFF -DTESSERA_BUILD_EXAMPLES=OFF
cmake --build build-fuzz --target safetensors_fuzz -j"$(nproc)"

fuzzer=build-fuzz/tests/fuzz/safetensors_fuzz
[ -x "$fuzzer" ] || { echo "fuzz.sh: $fuzzer was not built (is libFuzzer installed?)" >&2; exit 1; }

corpus=build-fuzz/fuzz-corpus
artifacts=build-fuzz/fuzz-artifacts
mkdir -p "$corpus" "$artifacts"
log=build-fuzz/fuzz.log

echo "::: fuzzing parse_safetensors for ${secs}s"
status=0
# The first corpus directory receives new inputs; the committed seeds stay untouched.
"$fuzzer" "$corpus" tests/fuzz/corpus/safetensors \
  -dict=tests/fuzz/safetensors.dict \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?

grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
if [ "$status" -ne 0 ]; then
  echo "::: the fuzzer found a problem (exit $status); log: $log, inputs in $artifacts/" >&2
  tail -n 60 "$log" >&2
  exit 1
fi
echo "::: fuzzing passed"
