#!/usr/bin/env bash
# The packaging end to end, on a built tree (ctest runs it as "packaging" in
# builds without sanitizers; docs/operations.md, "Packages"):
#   1. `cmake --install --prefix P` writes under P only, the units name P's
#      paths, and every install rule belongs to a component;
#   2. cpack builds keyway, libkeyway-client0 and libkeyway-client-dev;
#   3. their contents, control files, versions and stripped binaries;
#   4. the maintainer scripts, run by dpkg on a scratch root (DPKG_ROOT);
#   5. lintian reports no error.
# Writes in a temporary directory, and in the build tree only what
# `cmake --install` writes there (its install manifests). Needs dpkg-deb,
# file and lintian (scripts/deps.sh test installs them).
# Usage: check_packages.sh BUILD_DIR [CMAKE [CPACK]]
set -euo pipefail

build=$(cd "${1:?usage: $0 BUILD_DIR [CMAKE [CPACK]]}" && pwd)
cmake=${2:-cmake}
cpack=${3:-cpack}
src=$(cd "$(dirname "$0")/../.." && pwd)

for tool in dpkg-deb dpkg file lintian gzip; do
  command -v "$tool" >/dev/null || { echo "check_packages: $tool is missing (scripts/deps.sh test)" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keyway-packaging.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
failures=0
checks=0
ok() { checks=$((checks + 1)); }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL: $*" >&2; }
# expect DESCRIPTION COMMAND...: the command must succeed.
expect() { local what=$1; shift; if "$@"; then ok; else fail "$what"; fi; }
has_line() { grep -qxF -- "$2" "$1"; }

# ---- 1. cmake --install --prefix P ------------------------------------------------
# Under DESTDIR, so that a rule with an absolute destination lands in the
# scratch directory (outside DESTDIR/P) instead of in the real /etc or /lib.
echo "== install with --prefix"
prefix=$tmp/p1
root=$tmp/destdir
DESTDIR=$root "$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log"
outside=$(cd "$root" && find . \( -type f -o -type l \) ! -path ".$prefix/*")
expect "cmake --install --prefix $prefix wrote outside the prefix: $outside" test -z "$outside"
for f in bin/keywayd bin/keyway lib/systemd/system/keyway.service lib/systemd/system/keyway.socket \
         lib/sysusers.d/keyway.conf lib/tmpfiles.d/keyway.conf etc/keyway/keyway.toml \
         share/doc/keyway/README.md share/doc/keyway/operations.md \
         share/keyway/deploy/prometheus/alerts.yml; do
  expect "--prefix install lacks $f" test -e "$root$prefix/$f"
done
unit=$root$prefix/lib/systemd/system/keyway.service
expect "keyway.service does not run the installed keywayd" \
  has_line "$unit" "ExecStart=$prefix/bin/keywayd --config $prefix/etc/keyway/keyway.toml"
for u in "$unit" "${unit%.service}.socket"; do
  expect "${u##*/}: Documentation= is not the installed docs" \
    has_line "$u" "Documentation=file:$prefix/share/doc/keyway/operations.md"
done

# Prefix /usr: the configuration goes to /etc (the FHS), the rest under /usr.
echo "== install with --prefix /usr"
root=$tmp/destdir-usr
DESTDIR=$root "$cmake" --install "$build" --prefix /usr >"$tmp/install-usr.log"
outside=$(cd "$root" && find . \( -type f -o -type l \) ! -path "./usr/*" ! -path "./etc/keyway/*")
expect "--prefix /usr wrote outside /usr and /etc/keyway: $outside" test -z "$outside"
expect "--prefix /usr: no /etc/keyway/keyway.toml" test -f "$root/etc/keyway/keyway.toml"
expect "--prefix /usr: keyway.service does not name /usr/bin/keywayd and /etc/keyway" \
  has_line "$root/usr/lib/systemd/system/keyway.service" \
  "ExecStart=/usr/bin/keywayd --config /etc/keyway/keyway.toml"

# Every install rule names its component: the default one installs nothing.
DESTDIR=$tmp/unspecified "$cmake" --install "$build" --prefix /usr --component Unspecified >/dev/null
stray=$( (cd "$tmp/unspecified" 2>/dev/null && find . ! -type d) || true)
expect "install rules without a component (they go in no package): $stray" test -z "$stray"

# ---- 2. cpack ----------------------------------------------------------------------
echo "== cpack"
pkgdir=$tmp/packages
mkdir -p "$pkgdir"
if ! (cd "$pkgdir" && timeout 300 "$cpack" --config "$build/CPackConfig.cmake" -B "$pkgdir") >"$tmp/cpack.log" 2>&1; then
  cat "$tmp/cpack.log" >&2
  echo "FAIL: cpack" >&2
  exit 1
fi
changelog_version=$(sed -n '1s/^keyway (\([^)]*\)).*/\1/p' "$src/packaging/debian/changelog")
arch=$(dpkg --print-architecture)
deb() { echo "$pkgdir/${1}_${changelog_version}_$arch.deb"; }
for p in keyway libkeyway-client0 libkeyway-client-dev; do
  if [[ ! -f $(deb "$p") ]]; then
    echo "FAIL: no $(deb "$p"); cpack made: $(cd "$pkgdir" && ls ./*.deb)" >&2
    exit 1
  fi
done

# ---- 3. contents -------------------------------------------------------------------
# contents PACKAGE: its paths, one a line, without the leading "." (dirs end in /).
contents() { dpkg-deb -c "$(deb "$1")" | awk '{ print substr($6, 2) }'; }
# field PACKAGE FIELD
field() { dpkg-deb -f "$(deb "$1")" "$2"; }
# expect_paths PACKAGE PATH...: each path (a basic regular expression, whole
# line) is in the package.
expect_paths() {
  local p=$1; shift
  local list; list=$(contents "$p")
  local want
  for want in "$@"; do
    if grep -q -- "^${want}\$" <<<"$list"; then ok; else fail "$p lacks $want"; fi
  done
}

echo "== contents"
for p in keyway libkeyway-client0 libkeyway-client-dev; do
  expect "$p: version is not the changelog's $changelog_version" test "$(field "$p" Version)" = "$changelog_version"
  expect_paths "$p" "/usr/share/doc/$p/copyright" "/usr/share/doc/$p/changelog.Debian.gz"
  expect "$p: Maintainer is empty" test -n "$(field "$p" Maintainer)"
  expect "$p: no Section" test -n "$(field "$p" Section)"
  expect "$p: Priority is not optional" test "$(field "$p" Priority)" = optional
  expect "$p: Description has no extended part" test "$(field "$p" Description | wc -l)" -gt 3
  outside=$(contents "$p" | grep -v -e '^/$' -e '^/usr/' -e '^/etc/keyway/' -e '^/etc/$' || true)
  expect "$p ships files outside /usr and /etc/keyway: $outside" test -z "$outside"
done

expect_paths keyway /usr/bin/keywayd /usr/bin/keyway \
  /usr/lib/systemd/system/keyway.service /usr/lib/systemd/system/keyway.socket \
  /usr/lib/sysusers.d/keyway.conf /usr/lib/tmpfiles.d/keyway.conf /etc/keyway/keyway.toml \
  /usr/share/doc/keyway/README.md /usr/share/doc/keyway/operations.md \
  /usr/share/keyway/deploy/prometheus/alerts.yml /usr/share/keyway/deploy/grafana/keyway.json \
  /usr/share/man/man8/keywayd.8.gz /usr/share/man/man1/keyway.1.gz
expect_paths libkeyway-client0 '/usr/lib/\(.*/\)\{0,1\}libkeyway-client\.so\.0' \
  '/usr/lib/\(.*/\)\{0,1\}libkeyway-client\.so\.0\..*'
expect_paths libkeyway-client-dev '/usr/include/keyway/client\.hpp' \
  '/usr/lib/\(.*/\)\{0,1\}libkeyway-client\.so' '/usr/lib/\(.*/\)\{0,1\}libkeyway-client\.a' \
  '/usr/lib/\(.*/\)\{0,1\}cmake/Keyway/KeywayConfig\.cmake' \
  '/usr/lib/\(.*/\)\{0,1\}pkgconfig/keyway-client\.pc' \
  '/usr/share/doc/keyway/examples/pubsub/main\.cpp'
expect "libkeyway-client0 ships more than the shared library and its docs" \
  test -z "$(contents libkeyway-client0 | grep -v -e '/$' -e 'libkeyway-client\.so\.0' -e '^/usr/share/doc/libkeyway-client0/')"

expect "libkeyway-client-dev does not depend on libkeyway-client0 (= $changelog_version)" \
  grep -qF "libkeyway-client0 (= $changelog_version)" <<<"$(field libkeyway-client-dev Depends)"
expect "libkeyway-client-dev does not depend on libcapnp-dev" \
  grep -q 'libcapnp-dev' <<<"$(field libkeyway-client-dev Depends)"
expect "keyway: shlibdeps did not run (no libc6 in Depends)" grep -q 'libc6' <<<"$(field keyway Depends)"
expect "libkeyway-client0: shlibdeps did not run (no libc6 in Depends)" \
  grep -q 'libc6' <<<"$(field libkeyway-client0 Depends)"

# Control files.
for p in keyway libkeyway-client0 libkeyway-client-dev; do
  mkdir -p "$tmp/control/$p" "$tmp/x/$p"
  dpkg-deb -e "$(deb "$p")" "$tmp/control/$p"
  dpkg-deb -x "$(deb "$p")" "$tmp/x/$p"
done
c=$tmp/control/keyway
expect "keyway: conffiles does not list /etc/keyway/keyway.toml" has_line "$c/conffiles" /etc/keyway/keyway.toml
for s in postinst prerm postrm; do
  expect "keyway: no executable $s" test -x "$c/$s"
  expect "keyway: $s is not the one in packaging/debian" cmp -s "$c/$s" "$src/packaging/debian/$s"
done
# postinst leaves the service disabled and stopped (try-restart: only a running one).
starts_nothing() { awk '!/^ *#/ && !/try-restart/ && /(enable|start|restart)( |$)/ { bad = 1 } END { exit bad }' "$1"; }
expect "keyway: postinst enables or starts a unit" starts_nothing "$c/postinst"
expect "libkeyway-client0: no shlibs file" grep -q '^libkeyway-client 0 libkeyway-client0' "$tmp/control/libkeyway-client0/shlibs"
expect "libkeyway-client0: no ldconfig trigger" grep -qx 'activate-noawait ldconfig' "$tmp/control/libkeyway-client0/triggers"

# The unit in the package names the package's paths.
expect "keyway.deb: keyway.service does not run /usr/bin/keywayd with /etc/keyway/keyway.toml" \
  has_line "$tmp/x/keyway/usr/lib/systemd/system/keyway.service" \
  "ExecStart=/usr/bin/keywayd --config /etc/keyway/keyway.toml"

# The packaged configuration is valid for the packaged keywayd.
expect "keywayd --check-config rejects the packaged keyway.toml" \
  "$tmp/x/keyway/usr/bin/keywayd" --check-config --config "$tmp/x/keyway/etc/keyway/keyway.toml"

# Stripped ELF files (executables and shared libraries).
elf_files=0
while IFS= read -r -d '' f; do
  desc=$(file -b "$f")
  case $desc in
    ELF*executable*|ELF*shared\ object*)
      elf_files=$((elf_files + 1))
      if [[ $desc == *"not stripped"* || $desc == *"with debug_info"* ]]; then fail "not stripped: ${f#"$tmp"/x/}"; else ok; fi ;;
  esac
done < <(find "$tmp/x" -type f -print0)
expect "found $elf_files ELF files, not keywayd, keyway and the library" test "$elf_files" -ge 3

# The manual pages name only options that the programs have.
# check_man_options PAGE PROGRAM [SUBCOMMAND...]: against the --help of
# PROGRAM and of each SUBCOMMAND.
check_man_options() {
  local page=$1 program=$tmp/x/keyway/usr/bin/$2; shift 2
  local help sub opt
  help=$("$program" --help 2>&1 || true)
  for sub in "$@"; do help+=$'\n'$("$program" "$sub" --help 2>&1 || true); done
  local opts; opts=$(zcat "$tmp/x/keyway$page" | sed 's/\\-/-/g' | grep -o -- '--[a-z][a-z-]*' | sort -u)
  expect "$page names no option" test -n "$opts"
  for opt in $opts; do
    if grep -q -- "$opt\b" <<<"$help"; then ok; else fail "$page names $opt, which --help does not list"; fi
  done
}
check_man_options /usr/share/man/man8/keywayd.8.gz keywayd
check_man_options /usr/share/man/man1/keyway.1.gz keyway pub sub req reply

# changelog.Debian.gz: gzip -9n (no name, no time stamp).
expect "changelog.Debian.gz differs from gzip -9n packaging/debian/changelog" \
  cmp -s "$tmp/x/keyway/usr/share/doc/keyway/changelog.Debian.gz" <(gzip -9nc "$src/packaging/debian/changelog")

# ---- 4. maintainer scripts, by dpkg on a scratch root ---------------------------------
# dpkg --root with --force-script-chrootless runs the scripts on this system
# with DPKG_ROOT set: they create the user in the scratch root's /etc/passwd
# and skip everything that needs a running systemd.
echo "== dpkg install, remove, purge on a scratch root"
droot=$tmp/dpkg-root
mkdir -p "$droot/var/lib/dpkg/info" "$droot/var/lib/dpkg/updates" "$droot/etc"
: >"$droot/var/lib/dpkg/status"
: >"$droot/etc/passwd"
: >"$droot/etc/group"
dpkg_failed=0
dpkg_root() {
  echo "\$ dpkg $*" >>"$tmp/dpkg.log"
  dpkg --root="$droot" --force-script-chrootless --force-depends --force-not-root \
    --log=/dev/null "$@" >>"$tmp/dpkg.log" 2>&1 || { dpkg_failed=1; return 1; }
}
if dpkg_root -i "$(deb keyway)"; then
  ok
  expect "postinst: no user keyway in the root's /etc/passwd" grep -q '^keyway:' "$droot/etc/passwd"
  expect "postinst: no group keyway in the root's /etc/group" grep -q '^keyway:' "$droot/etc/group"
  expect "dpkg did not register /etc/keyway/keyway.toml as a conffile" \
    grep -q '^ /etc/keyway/keyway.toml [0-9a-f]\{32\}$' "$droot/var/lib/dpkg/status"
  expect "dpkg-installed keywayd missing" test -x "$droot/usr/bin/keywayd"
  # Again, as an upgrade (postinst configure OLD-VERSION).
  expect "dpkg -i keyway over itself (an upgrade) failed (see below)" dpkg_root -i "$(deb keyway)"
  # What `systemctl enable` leaves, for the purge to clean up.
  mkdir -p "$droot/etc/systemd/system/multi-user.target.wants" "$droot/etc/systemd/system/sockets.target.wants"
  ln -s /usr/lib/systemd/system/keyway.service "$droot/etc/systemd/system/multi-user.target.wants/keyway.service"
  ln -s /usr/lib/systemd/system/keyway.socket "$droot/etc/systemd/system/sockets.target.wants/keyway.socket"
  expect "dpkg --remove keyway failed (see below)" dpkg_root --remove keyway
  expect "the conffile is gone after remove (it must stay until purge)" test -f "$droot/etc/keyway/keyway.toml"
  expect "dpkg --purge keyway failed (see below)" dpkg_root --purge keyway
  expect "the conffile survived the purge" test ! -e "$droot/etc/keyway/keyway.toml"
  expect "the enablement links survived the purge" \
    test ! -L "$droot/etc/systemd/system/multi-user.target.wants/keyway.service" -a \
         ! -L "$droot/etc/systemd/system/sockets.target.wants/keyway.socket"
  left=$(cd "$droot" && { find usr -type f 2>/dev/null || true; })
  expect "files left after the purge: $left" test -z "$left"
else
  fail "dpkg -i keyway on a scratch root"
fi
if ((dpkg_failed)); then cat "$tmp/dpkg.log" >&2; fi

# ---- 5. lintian --------------------------------------------------------------------------
echo "== lintian"
lintian_rc=0
lintian --fail-on error --tag-display-limit 0 "$(deb keyway)" "$(deb libkeyway-client0)" \
  "$(deb libkeyway-client-dev)" >"$tmp/lintian.log" 2>&1 || lintian_rc=$?
cat "$tmp/lintian.log"
errors=$(grep -c '^E: ' "$tmp/lintian.log" || true)
expect "lintian: $errors errors" test "$errors" -eq 0
expect "lintian failed (exit $lintian_rc)" test "$lintian_rc" -eq 0

echo "packaging: $((checks - failures)) passed, $failures failed"
((failures == 0))
