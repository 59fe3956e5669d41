#!/bin/bash
# Package test: build the .debs with CPack, unpack them into a temporary
# root (dpkg -x: no system changes), check their metadata, build
# tests/consumer against that root with find_package(mox) and with
# pkg-config, and run each consumer on 2 ranks with the packaged mox-run.
# usage: run_package_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(cd "$1" && pwd) src=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/mox-pkgtest.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { echo "== $*"; }

step "cpack"
(cd "$build" && cpack -G DEB -B "$work/debs" >"$work/cpack.log" 2>&1) ||
  { cat "$work/cpack.log"; exit 1; }
ls "$work"/debs/*.deb
for p in libmox0 libmox-dev mox-tools; do
  deb=$(ls "$work"/debs/${p}_*.deb)
  echo "$p: Depends: $(dpkg-deb -f "$deb" Depends)"
  dpkg-deb -x "$deb" "$work/root"
done
dpkg-deb -f "$work"/debs/libmox0_*.deb Depends | grep -q libucx0 ||
  { echo "FAIL: libmox0 does not depend on libucx0"; exit 1; }
dpkg-deb -f "$work"/debs/mox-tools_*.deb Depends | grep -q 'libmox0 (=' ||
  { echo "FAIL: mox-tools does not depend on libmox0"; exit 1; }

root=$work/root/usr
libdir=$(dirname "$(find "$root" -name libmox.so.0 | head -1)")
export LD_LIBRARY_PATH=$libdir
step "installed tools"
"$root/bin/mox_info" -v | head -1
"$root/bin/mox-conformance" --help >/dev/null

for via in cmake pkgconfig; do
  step "consumer via $via"
  PKG_CONFIG_PATH=$libdir/pkgconfig cmake -S "$src/tests/consumer" \
    -B "$work/consumer-$via" -DMOX_VIA=$via -DCMAKE_PREFIX_PATH="$root" \
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF >"$work/cfg.log" 2>&1 ||
    { cat "$work/cfg.log"; exit 1; }
  cmake --build "$work/consumer-$via" >"$work/build.log" 2>&1 ||
    { cat "$work/build.log"; exit 1; }
  # The consumer must use the unpacked files, not some other mox.
  grep -rqs "$work/root" "$work/consumer-$via/CMakeCache.txt" "$work/consumer-$via/CMakeFiles" ||
    { echo "FAIL: consumer via $via did not build against $work/root"; exit 1; }
  out=$("$root/bin/mox-run" -n 2 --timeout 60 --env "LD_LIBRARY_PATH=$libdir" \
        -- "$work/consumer-$via/mox_consumer" 2>&1) || { echo "$out"; exit 1; }
  echo "$out"
  [ "$(grep -c 'consumer ok rank' <<<"$out")" -eq 2 ] ||
    { echo "FAIL: not every rank reported"; exit 1; }
done
step "installed mox-conformance against the installed libmox"
"$root/bin/mox-conformance" --plugin "$libdir/libmox.so.0" -n 2 \
  --filter '^alltoallv/f32|^moe/f32/i32/algo=default' | tail -1
echo "PASS"
