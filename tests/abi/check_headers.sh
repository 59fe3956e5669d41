#!/bin/bash
# Public headers are self-contained and compile as C99 and as C++.
# usage: check_headers.sh INCLUDE_DIR LOADER_DIR
set -euo pipefail
inc=$1 loader=$2
for h in mox/mox.h mox/plugin_v1.h mox_loader.h; do
  printf '#include "%s"\n#include "%s"\nint main(void){return 0;}\n' "$h" "$h" > /tmp/hdr.$$.c
  cc -std=c99 -pedantic -Wall -Wextra -Werror -I"$inc" -I"$loader" -fsyntax-only /tmp/hdr.$$.c
  if command -v c++ >/dev/null; then
    c++ -x c++ -std=c++11 -Wall -Wextra -Werror -I"$inc" -I"$loader" -fsyntax-only /tmp/hdr.$$.c
  fi
  echo "ok $h (C99$(command -v c++ >/dev/null && echo ', C++11'))"
done
rm -f /tmp/hdr.$$.c
