#!/usr/bin/env bash
# The client SDK as a user gets it, on a built tree (ctest runs it as
# "install" in builds without sanitizers; tests/install/CMakeLists.txt):
#   1. `cmake --install BUILD --prefix P --component client` and `dev`: the
#      library, headers, CMake package, pkg-config file and the examples;
#   2. libkeyway-client.so needs nothing of the daemon's (spdlog, fmt,
#      prometheus-cpp, toml++, libsystemd), and exports keyway:: symbols and
#      the standard library's vague-linkage ones only (no asio, capnp, kj);
#   3. header hygiene: every installed header compiles alone with only
#      -IP/include (and -Wall -Wextra -Wpedantic -Werror), and what
#      <keyway/client.hpp> pulls in is P/include/keyway/ and the standard
#      library only: no asio, capnp, kj, nor the source or build tree;
#   4. the examples (P/share/doc/keyway/examples) built against P: pubsub with
#      find_package (Keyway::client, and Keyway::client_static), and with
#      pkg-config; request_reply and queue_worker with find_package;
#   5. each of them run against the build's keywayd, started here on
#      tcp://127.0.0.1:0 and on a Unix socket in a temporary directory, and
#      stopped at the end (also on failure); it must exit 0.
# At run time the CMake-built examples find libkeyway-client.so.0 through
# their build RUNPATH (CMake adds the imported library's directory), checked
# here without LD_LIBRARY_PATH; the pkg-config build has no RUNPATH and needs
# LD_LIBRARY_PATH=P/lib (or -Wl,-rpath,P/lib, or a prefix ldconfig knows).
# Writes in a temporary directory, and in the build tree only what
# `cmake --install` writes there (its install manifests).
# Usage: check_install.sh BUILD_DIR KEYWAYD [CMAKE [CXX]]
set -euo pipefail

usage="usage: $0 BUILD_DIR KEYWAYD [CMAKE [CXX]]"
build=$(cd "${1:?$usage}" && pwd)
keywayd=${2:?$usage}
cmake=${3:-cmake}
cxx=${4:-g++}
src=$(cd "$(dirname "$0")/../.." && pwd)

for tool in pkg-config readelf nm c++filt timeout "$cxx"; do
  command -v "$tool" >/dev/null || { echo "check_install: $tool is missing (scripts/deps.sh test)" >&2; exit 1; }
done
[[ -x $keywayd ]] || { echo "check_install: no keywayd at $keywayd (build it first)" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keyway-install.XXXXXX")
kpid=
# Stops keywayd (SIGTERM, then SIGKILL after 15 s) if it still runs; sets krc.
krc=
stop_keywayd() {
  [[ -n $kpid ]] || return 0
  kill -TERM "$kpid" 2>/dev/null || true
  local i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$kpid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$kpid" 2>/dev/null || true
  krc=0
  wait "$kpid" || krc=$?
  kpid=
}
cleanup() {
  stop_keywayd
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failures=0
checks=0
ok() { checks=$((checks + 1)); }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL: $*" >&2; }
# expect DESCRIPTION COMMAND...: the command must succeed.
expect() { local what=$1; shift; if "$@"; then ok; else fail "$what"; fi; }
# must DESCRIPTION LOG COMMAND...: a step the rest depends on; on failure,
# shows LOG and stops.
must() {
  local what=$1 log=$2; shift 2
  if "$@" >"$log" 2>&1; then ok; return; fi
  cat "$log" >&2
  echo "FAIL: $what" >&2
  exit 1
}

# ---- 1. install the client and dev components ---------------------------------------
echo "== cmake --install --component client, dev"
prefix=$tmp/prefix
for component in client dev; do
  must "cmake --install $build --prefix $prefix --component $component" "$tmp/install-$component.log" \
    "$cmake" --install "$build" --prefix "$prefix" --component "$component"
done
so=$(find "$prefix" -name 'libkeyway-client.so.0' -print -quit)
[[ -n $so ]] || { echo "FAIL: no libkeyway-client.so.0 under $prefix" >&2; exit 1; }
libdir=$(dirname "$so")
for f in "$libdir/libkeyway-client.so" "$libdir/libkeyway-client.a" \
         "$libdir/cmake/Keyway/KeywayConfig.cmake" "$libdir/cmake/Keyway/KeywayConfigVersion.cmake" \
         "$libdir/pkgconfig/keyway-client.pc" \
         "$prefix/include/keyway/client.hpp" "$prefix/include/keyway/error.hpp" \
         "$prefix/include/keyway/message.hpp" "$prefix/include/keyway/result.hpp" \
         "$prefix/include/keyway/server_errc.hpp" "$prefix/include/keyway/export.hpp"; do
  expect "the install lacks ${f#"$prefix"/}" test -e "$f"
done
examples=$prefix/share/doc/keyway/examples
expect "the installed examples differ from client/examples" diff -r "$src/client/examples" "$examples"
# Headers only from client/include and base/include: nothing internal.
extra=$(find "$prefix/include" -type f | sed "s|^$prefix/include/|./|" | sort |
  grep -vxF -e ./keyway/client.hpp -e ./keyway/error.hpp -e ./keyway/message.hpp \
    -e ./keyway/result.hpp -e ./keyway/server_errc.hpp -e ./keyway/export.hpp || true)
expect "unexpected installed headers: $extra" test -z "$extra"

# ---- 2. what the shared library needs and exports -------------------------------------
echo "== libkeyway-client.so: NEEDED, SONAME, exports"
dyn=$(readelf -d "$so")
needed=$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dyn")
echo "NEEDED: $(tr '\n' ' ' <<<"$needed")"
bad=$(grep -Ei 'spdlog|fmt|prometheus|toml|systemd|xxhash|nlohmann' <<<"$needed" || true)
expect "libkeyway-client.so needs the daemon's libraries: $bad" test -z "$bad"
expect "libkeyway-client.so does not need libcapnp" grep -q '^libcapnp' <<<"$needed"
expect "libkeyway-client.so's SONAME is not libkeyway-client.so.0" \
  grep -qF '(SONAME)             Library soname: [libkeyway-client.so.0]' <<<"$dyn"
# Hidden visibility: every defined dynamic symbol is keyway's (the codec, asio,
# capnp and kj stay inside), or the standard library's vague-linkage objects
# (typeinfo, vtables, static locals of templates instantiated here), which
# libstdc++ declares with default visibility on purpose. An exported asio
# symbol would be shared with (or interposed by) an application's own asio.
leaked=$(nm -D --defined-only "$so" | awk '{ print $3 }' | c++filt |
  grep -Ev '^((typeinfo|typeinfo name|vtable|VTT|guard variable) for )?(keyway|std|__gnu_cxx)::' |
  grep -Ev '^(_init|_fini|_edata|_end|__bss_start)$' || true)
hint=
grep -q 'asio::' <<<"$leaked" && hint=" (asio's headers push default visibility; compile the library with ASIO_DISABLE_VISIBILITY)"
expect "libkeyway-client.so exports $(grep -c . <<<"$leaked") symbols of neither keyway:: nor std::$hint; the first:
$(head -10 <<<"$leaked")" test -z "$leaked"

# ---- 3. header hygiene ------------------------------------------------------------------
echo "== header hygiene"
# Each header alone, with only the prefix on the include path.
for h in "$prefix"/include/keyway/*.hpp; do
  h=keyway/$(basename "$h")
  expect "<$h> does not compile alone with -I$prefix/include (see above)" \
    "$cxx" -std=c++20 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -I"$prefix/include" \
    -x c++ - <<<"#include <$h>"
done
# A user's translation unit.
cat >"$tmp/hygiene.cpp" <<'EOF'
#include <keyway/client.hpp>

#include <chrono>

namespace kc = keyway::client;

int use(kc::connection& c) {
  kc::connect_options options;
  options.client_name = "hygiene";
  options.reconnect.max_attempts = 3;
  options.on_error = [](const kc::error& e) { (void)e.to_string(); };
  kc::publish_options publish;
  publish.key = "k";
  kc::header headers[] = {{"trace", "1"}};
  publish.headers = headers;
  kc::outcome<void> r = c.publish("a.b", "payload", publish);
  kc::outcome<kc::message> reply = c.request("svc", "x", std::chrono::milliseconds(10));
  if (!reply && reply.error().code == kc::server_errc::no_responders) return 2;
  if (!reply && reply.error().code == kc::errc::timeout) return 3;
  kc::server_info info = c.info();
  kc::statistics stats = c.stats();
  (void)kc::code_name(make_error_code(kc::errc::closed));
  (void)kc::version();
  return r ? static_cast<int>(info.worker_count + stats.in_msgs) : 1;
}
EOF
expect "a TU using <keyway/client.hpp> does not compile with only -I$prefix/include (see above)" \
  "$cxx" -std=c++20 -Wall -Wextra -Wpedantic -Werror -fsyntax-only -I"$prefix/include" "$tmp/hygiene.cpp"

# header_deps INCLUDE_DIR TU: every header the TU includes (g++ -M), one a line.
header_deps() {
  "$cxx" -std=c++20 -I"$1" -M "$2" | sed 's/\\$//' | tr ' ' '\n' | sed '/^$/d' | sed 1d |
    xargs -r realpath -s -m | sort -u | grep -vxF "$(realpath -s -m "$2")"
}
# foreign_headers INCLUDE_DIR TU: prints every header the TU includes that is
# neither under INCLUDE_DIR/keyway/ nor the standard library's (a file of
# libstdc++-N-dev, libc6-dev, linux-libc-dev or gcc, by dpkg); the known
# offenders (asio, capnp, kj, the source or build tree) by name in any case.
foreign_headers() {
  local others
  others=$(header_deps "$1" "$2" | grep -v "^$1/keyway/[^/]*\$" || true)
  [[ -z $others ]] && return 0
  grep -E '(^|/)(asio|capnp|kj)(/|\.h)' <<<"$others" || true
  grep -E "^($src|$build)/" <<<"$others" || true
  if command -v dpkg-query >/dev/null; then
    local owned
    owned=$(xargs -r dpkg-query -S <<<"$others" 2>/dev/null |
      grep -E '^(libstdc\+\+-[0-9]+-dev|libc6-dev|linux-libc-dev|gcc-[0-9]+|libgcc-[0-9]+-dev)(:[a-z0-9]+)?(, [^:]+)*: ' |
      sed 's/^[^:]*\(:[a-z0-9]*\)\{0,1\}\(, [^:]*\)*: //' || true)
    grep -vxF -f <(printf '%s\n' "$owned") <<<"$others" | sed 's/$/ (not the standard library)/' || true
  fi
}
foreign=$(foreign_headers "$prefix/include" "$tmp/hygiene.cpp" | sort -u)
expect "<keyway/client.hpp> includes headers that are neither keyway's nor the standard library's:
$foreign" test -z "$foreign"
deps=$(header_deps "$prefix/include" "$tmp/hygiene.cpp")
echo "<keyway/client.hpp> includes $(wc -l <<<"$deps") headers: $(grep -c "^$prefix/include/keyway/" <<<"$deps") of keyway's, the rest the standard library's"
# The check itself: a public header that includes capnp must be caught.
cp -r "$prefix/include" "$tmp/poisoned"
sed -i 's|^#include <string>$|#include <string>\n#include <capnp/message.h>|' "$tmp/poisoned/keyway/message.hpp"
poison=$(foreign_headers "$tmp/poisoned" "$tmp/hygiene.cpp")
expect "the hygiene check misses a public header that includes <capnp/message.h>" \
  grep -q 'capnp/message.h' <<<"$poison"

# ---- 4. build the examples against the prefix -----------------------------------------
echo "== build the examples with find_package(Keyway) and pkg-config"
# configure_example NAME SOURCE_DIR: configures and builds with only the prefix
# to find Keyway in, and checks that it found the prefix's package.
configure_example() {
  local name=$1 dir=$2
  must "configure $name against $prefix" "$tmp/$name-configure.log" \
    "$cmake" -S "$dir" -B "$tmp/build-$name" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_COMPILER="$(command -v "$cxx")" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_CXX_FLAGS="-Wall -Wextra -Wpedantic -Werror"
  must "build $name" "$tmp/$name-build.log" "$cmake" --build "$tmp/build-$name"
  local found
  found=$(sed -n 's/^Keyway_DIR:PATH=//p' "$tmp/build-$name/CMakeCache.txt")
  expect "$name: find_package(Keyway) found $found, not $libdir/cmake/Keyway" \
    test "$(realpath -m "$found")" = "$(realpath -m "$libdir/cmake/Keyway")"
}
for ex in pubsub request_reply queue_worker; do
  configure_example "$ex" "$examples/$ex"
done
# Keyway::client_static: the same main.cpp, statically linked.
mkdir -p "$tmp/pubsub_static"
cat >"$tmp/pubsub_static/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.25)
project(keyway_pubsub_static LANGUAGES CXX)
find_package(Keyway CONFIG REQUIRED)
add_executable(pubsub_static "$examples/pubsub/main.cpp")
target_compile_features(pubsub_static PRIVATE cxx_std_20)
target_link_libraries(pubsub_static PRIVATE Keyway::client_static)
EOF
configure_example pubsub_static "$tmp/pubsub_static"
# shellcheck disable=SC2016  # $1 is bash -c's
expect "pubsub_static needs libkeyway-client.so" \
  bash -c '! readelf -d "$1" | grep -q "NEEDED.*libkeyway-client"' _ "$tmp/build-pubsub_static/pubsub_static"

# pkg-config, as the README shows it.
export PKG_CONFIG_PATH=$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
if ! pc_flags=$(pkg-config --cflags --libs keyway-client); then
  echo "FAIL: pkg-config --cflags --libs keyway-client (PKG_CONFIG_PATH=$PKG_CONFIG_PATH)" >&2
  exit 1
fi
echo "pkg-config --cflags --libs keyway-client: $pc_flags"
pc_includes=$(pkg-config --cflags-only-I keyway-client | xargs -n1 | sed -n 's/^-I//p' | xargs -r realpath -s -m)
expect "pkg-config --cflags names $pc_includes, not $prefix/include" \
  grep -qxF "$(realpath -s -m "$prefix/include")" <<<"$pc_includes"
cmake_version=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")$/\1/p' "$libdir/cmake/Keyway/KeywayConfigVersion.cmake")
expect "pkg-config says version $(pkg-config --modversion keyway-client), the CMake package $cmake_version" \
  test "$(pkg-config --modversion keyway-client)" = "$cmake_version"
# shellcheck disable=SC2086  # the flags are words
must "$cxx -std=c++20 pubsub/main.cpp \$(pkg-config --cflags --libs keyway-client)" "$tmp/pubsub-pc-build.log" \
  "$cxx" -std=c++20 -Wall -Wextra -Wpedantic -Werror "$examples/pubsub/main.cpp" -o "$tmp/pubsub-pc" $pc_flags

# Which libkeyway-client.so.0 each binary loads: the prefix's. The CMake
# builds by their RUNPATH alone, the pkg-config build with LD_LIBRARY_PATH.
resolves_to_prefix() {
  local lib
  lib=$(ldd "$1" | sed -n 's/^[[:space:]]*libkeyway-client\.so\.0 => \([^ ]*\) .*/\1/p')
  [[ $(realpath -m "$lib") == "$(realpath -m "$so")" ]] || { echo "$1 loads '$lib'" >&2; return 1; }
}
for ex in pubsub request_reply queue_worker; do
  expect "$ex (CMake build) does not load $so without LD_LIBRARY_PATH" \
    env -u LD_LIBRARY_PATH bash -c "$(declare -f resolves_to_prefix); so='$so'; resolves_to_prefix '$tmp/build-$ex/$ex'"
done
expect "pubsub (pkg-config build) does not load $so with LD_LIBRARY_PATH=$libdir" \
  env LD_LIBRARY_PATH="$libdir" bash -c "$(declare -f resolves_to_prefix); so='$so'; resolves_to_prefix '$tmp/pubsub-pc'"

# ---- 5. run them against keywayd -------------------------------------------------------
echo "== run the examples against keywayd over TCP and a Unix socket"
sockdir=$tmp
if ((${#tmp} > 80)); then sockdir=$(mktemp -d /tmp/keyway-sock.XXXXXX) && trap 'cleanup; rm -rf "$sockdir"' EXIT; fi
sock=$sockdir/keyway.sock
: >"$tmp/keywayd.log"
# Under timeout: should this script be killed without its EXIT trap running,
# keywayd still ends (timeout passes our SIGTERM on to it too).
timeout -k 10 280 "$keywayd" --listen tcp://127.0.0.1:0 --listen "unix://$sock" --admin off --workers 2 \
  >"$tmp/keywayd.log" 2>&1 &
kpid=$!
for ((i = 0; i < 100; i++)); do
  grep -q ' started: ' "$tmp/keywayd.log" && break
  kill -0 "$kpid" 2>/dev/null || break
  sleep 0.1
done
tcp_url=$(sed -n 's/.*listening on \(tcp:\/\/[^ ]*\).*/\1/p' "$tmp/keywayd.log" | head -1)
if [[ -z $tcp_url ]] || ! grep -q "listening on unix://$sock" "$tmp/keywayd.log"; then
  cat "$tmp/keywayd.log" >&2
  echo "FAIL: keywayd did not start on tcp://127.0.0.1:0 and unix://$sock" >&2
  exit 1
fi
unix_url=unix://$sock
echo "keywayd on $tcp_url and $unix_url"

# run NAME EXPECTED_LINE URL_HOW URL BINARY [ENV...]: runs the binary (the URL
# as its argument, or in KEYWAY_URL), which must exit 0 within 30 s and print
# the expected line (a grep -E pattern).
run() {
  local name=$1 want=$2 how=$3 url=$4 bin=$5; shift 5
  local out=$tmp/run-$name.out rc=0
  if [[ $how == arg ]]; then
    env -u KEYWAY_URL -u LD_LIBRARY_PATH "$@" timeout 30 "$bin" "$url" >"$out" 2>&1 || rc=$?
  else
    env -u LD_LIBRARY_PATH KEYWAY_URL="$url" "$@" timeout 30 "$bin" >"$out" 2>&1 || rc=$?
  fi
  if ((rc == 0)) && grep -Eq -- "$want" "$out"; then
    ok
    echo "-- $name: $(tail -1 "$out")"
  else
    fail "$name exited $rc, or printed no line matching '$want'; its output:"
    cat "$out" >&2
  fi
}
for how in tcp unix; do
  url=$tcp_url
  [[ $how == unix ]] && url=$unix_url
  # The URL as the argument over TCP, from KEYWAY_URL over Unix.
  pass="arg"
  [[ $how == unix ]] && pass="env"
  run "pubsub-cmake-$how" '^received 10 of 10 messages' $pass "$url" "$tmp/build-pubsub/pubsub"
  run "pubsub-static-$how" '^received 10 of 10 messages' $pass "$url" "$tmp/build-pubsub_static/pubsub_static"
  run "pubsub-pkgconfig-$how" '^received 10 of 10 messages' $pass "$url" "$tmp/pubsub-pc" \
    LD_LIBRARY_PATH="$libdir"
  run "request_reply-$how" '^request alice -> reply: hello, alice$' $pass "$url" \
    "$tmp/build-request_reply/request_reply"
  run "queue_worker-$how" '^received 32 of 32 messages; each key stayed with one worker$' $pass "$url" \
    "$tmp/build-queue_worker/queue_worker"
done
expect "pubsub does not print one [core/seq] line per message" \
  test "$(grep -c '^\[[0-9]*/[0-9]*\] orders.eu customer-[0-2]: order [0-9]$' "$tmp/run-pubsub-cmake-tcp.out")" -eq 10
# A server that is not there: a clear message and a non-zero exit.
rc=0
"$tmp/build-pubsub/pubsub" "unix://$sockdir/none.sock" >"$tmp/run-none.out" 2>&1 || rc=$?
expect "pubsub against no server exited 0" test "$rc" -ne 0
expect "pubsub against no server says nothing useful: $(cat "$tmp/run-none.out")" \
  grep -q '^pubsub: connect failed: connect_failed: ' "$tmp/run-none.out"

stop_keywayd
expect "keywayd exited $krc on SIGTERM, not 0" test "$krc" -eq 0
if ((failures)); then echo "-- keywayd log:" >&2; cat "$tmp/keywayd.log" >&2; fi

echo "install: $((checks - failures)) passed, $failures failed"
((failures == 0))
