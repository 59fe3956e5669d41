#!/bin/bash
# The dynamic symbols libmox.so defines are exactly the ones the version
# script lists, each versioned MOX_*: nothing else leaks.
# usage: check_exports.sh LIBMOX MAPFILE
set -euo pipefail
lib=$1 map=$2
want=$(sed -e 's,/\*.*\*/,,' "$map" | grep -oE '^\s+mox_[a-z0-9_]+;' | tr -d ' ;' | sort)
got=$(nm -D --defined-only "$lib" | awk '$2 != "A" {print $3}' | sort)
unversioned=$(grep -v '@@MOX_' <<<"$got" || true)
names=$(sed 's/@@.*//' <<<"$got" | sort)
rc=0
if [ -n "$unversioned" ]; then
  echo "FAIL: exported without a MOX_ version:"; echo "$unversioned"; rc=1
fi
extra=$(comm -13 <(echo "$want") <(echo "$names"))
missing=$(comm -23 <(echo "$want") <(echo "$names"))
[ -n "$extra" ] && { echo "FAIL: exported but not in $map:"; echo "$extra"; rc=1; }
[ -n "$missing" ] && { echo "FAIL: listed in $map but not defined:"; echo "$missing"; rc=1; }
grep -q '^mox_plugin_v1$' <<<"$names" || { echo "FAIL: mox_plugin_v1 is not exported"; rc=1; }
[ $rc -eq 0 ] && echo "PASS: $(wc -l <<<"$names") symbols, all in $map, all versioned"
exit $rc
