#!/usr/bin/env bash
# Installs the Debian 12 packages Keyway needs, only those that are missing.
# Usage: scripts/deps.sh build|test|bench|fuzz
set -euo pipefail

# libcurl4-openssl-dev: keywayd's cluster membership speaks to etcd over HTTP.
# libnats-dev and libhiredis-dev: the official NATS and Redis clients, keyway-bench's
# peers. Every preset that builds the benchmarks (release and debug, which
# scripts/run and scripts/test configure) needs them at configure time, so they
# are here and thereby in the test and bench lists too.
build_pkgs=(build-essential cmake ninja-build pkg-config
  libasio-dev libspdlog-dev libcli11-dev libtomlplusplus-dev prometheus-cpp-dev
  libcapnp-dev capnproto doctest-dev libsystemd-dev libxxhash-dev nlohmann-json3-dev
  libcurl4-openssl-dev libnats-dev libhiredis-dev)
# systemd: systemd-analyze, systemd-sysusers and systemd-tmpfiles for the unit
# tests; dpkg-dev (dpkg-shlibdeps), file and lintian for the packaging test
# (tests/packaging/check_packages.sh: cpack, dpkg-deb, lintian).
test_pkgs=(clang-format libconcurrentqueue-dev libreaderwriterqueue-dev prometheus systemd dpkg-dev file lintian
  etcd-server)
# etcd-server: the etcd that `bench/run cluster`'s keywayd nodes join.
bench_pkgs=(libconcurrentqueue-dev libreaderwriterqueue-dev nats-server redis-server gnuplot-nox
  etcd-server)
# The fuzz preset (scripts/fuzz): clang 14, and libclang-rt-14-dev for libFuzzer and
# the sanitizer runtimes (libclang_rt.fuzzer-x86_64.a, only recommended by clang-14);
# llvm-14 for llvm-symbolizer (stack traces with lines).
fuzz_pkgs=(clang-14 libclang-rt-14-dev llvm-14)

want=("${build_pkgs[@]}")
case "${1:-build}" in
  build) ;;
  test) want+=("${test_pkgs[@]}" "${fuzz_pkgs[@]}") ;;
  bench) want+=("${bench_pkgs[@]}") ;;
  fuzz) want+=("${fuzz_pkgs[@]}") ;;
  *) echo "usage: $0 build|test|bench|fuzz" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
