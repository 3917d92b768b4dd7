#!/bin/sh
# Installs the Debian/Ubuntu packages tessera's build, tests, benchmarks and examples need, if any
# is missing. Runs apt-get as root, or through sudo. Safe to run again: it does nothing when all
# are present.
set -eu
pkgs="cmake make g++ libeigen3-dev libgtest-dev libbenchmark-dev nlohmann-json3-dev clang libclang-rt-14-dev
  zlib1g-dev libpcre2-dev libutf8proc-dev libstb-dev libsentencepiece-dev libsndfile1-dev
  libsamplerate0-dev pkg-config libopenmpi-dev openmpi-bin"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
echo "tessera: installing$missing"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
