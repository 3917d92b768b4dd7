#!/usr/bin/env bash
# Fuzzes tessera's safetensors parser, and what follows a parse (StateDict::get, load_state_dict),
# with libFuzzer for a bounded time: builds both fuzz targets with clang++ in build-fuzz (ASan +
# UBSan + libFuzzer), runs each for half of $1 seconds (default 60) from the seed corpora, prints
# libFuzzer's final stats and fails on any crash, sanitizer report, leak, timeout or escaped
# exception. New corpus entries go to build-fuzz/fuzz-corpus* (kept between runs), crash inputs
# to build-fuzz/fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;; esac

cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTESSERA_BUILD_BENCHMARKS=OFF -DTESSERA_BUILD_EXAMPLES=OFF
cmake --build build-fuzz --target safetensors_fuzz state_dict_fuzz -j"$(nproc)"

# The time is shared: the parser gets half, what follows a parse (StateDict::get,
# load_state_dict) the other half, so `fuzz.sh 60` still fuzzes for one minute in all.
half=$(( secs / 2 > 0 ? secs / 2 : 1 ))
artifacts=build-fuzz/fuzz-artifacts
mkdir -p "$artifacts"

# run_fuzzer NAME SECONDS SEED_DIRS...: new corpus entries go to build-fuzz/fuzz-corpus[-NAME]
# (the first directory receives them; the committed seeds stay untouched).
run_fuzzer() {
  local name="$1" t="$2"
  shift 2
  local fuzzer="build-fuzz/tests/fuzz/$name"
  [ -x "$fuzzer" ] || { echo "fuzz.sh: $fuzzer was not built (is libFuzzer installed?)" >&2; exit 1; }
  local corpus="build-fuzz/fuzz-corpus"
  [ "$name" = safetensors_fuzz ] || corpus="build-fuzz/fuzz-corpus-$name"
  mkdir -p "$corpus"
  local log="build-fuzz/$name.log"
  echo "::: fuzzing $name for ${t}s"
  local status=0
  "$fuzzer" "$corpus" "$@" \
    -dict=tests/fuzz/safetensors.dict \
    -max_total_time="$t" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$name-" >"$log" 2>&1 || status=$?
  grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "::: the fuzzer $name found a problem (exit $status); log: $log, inputs in $artifacts/" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
}

run_fuzzer safetensors_fuzz "$half" tests/fuzz/corpus/safetensors
run_fuzzer state_dict_fuzz "$half" tests/fuzz/corpus/state_dict tests/fuzz/corpus/safetensors
echo "::: fuzzing passed"
