#!/bin/bash
# Regenerate the ABI baseline from a build. Run only on purpose: while v1 is
# not frozen, or when a release adds a new version node / plugin_vN. Record
# the reason in docs/abi.md ("Baseline history").
# usage: packaging/abi/update-baseline.sh [BUILD_DIR]   (default build)
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build}
abidw --headers-dir "$src/include/mox" --out-file "$src/packaging/abi/libmox.abi" \
  "$build/lib/libmox.so"
echo "wrote packaging/abi/libmox.abi from $build/lib/libmox.so; note why in docs/abi.md"
