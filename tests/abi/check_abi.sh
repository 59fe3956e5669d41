#!/bin/bash
# Compare libmox.so with the committed ABI baseline (packaging/abi/).
# abidiff's exit status is a bit set: 1 tool error, 2 usage error, 4 ABI
# change, 8 incompatible change. Any of them fails: the released ABI may not
# change at all. A deliberate change regenerates the baseline with
# packaging/abi/update-baseline.sh and says why in docs/abi.md.
# usage: check_abi.sh LIBMOX BASELINE HEADERS_DIR
lib=$1 baseline=$2 headers=$3
if ! command -v abidiff >/dev/null; then
  echo "SKIP: abidiff not found; install abigail-tools (packaging/deps.sh does)"
  exit 77
fi
if ! readelf -S "$lib" | grep -q '\.debug_info'; then
  echo "SKIP: $lib has no DWARF (build with RelWithDebInfo or Debug to compare types)"
  exit 77
fi
abidiff --headers-dir2 "$headers" "$baseline" "$lib"
status=$?
if (( status & 3 )); then
  echo "FAIL: abidiff could not compare (exit $status)"; exit 1
fi
if (( status & 12 )); then
  echo "FAIL: the ABI of $lib differs from $baseline (abidiff exit $status:" \
       "$( (( status & 8 )) && echo incompatible change || echo ABI change))."
  echo "If this is deliberate (v1 not yet frozen, or a new version node),"
  echo "run packaging/abi/update-baseline.sh and record why in docs/abi.md."
  exit 1
fi
echo "PASS: ABI of $lib matches $baseline"
