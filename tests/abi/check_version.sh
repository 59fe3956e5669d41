#!/bin/bash
# MOX_VERSION_MAJOR/MINOR/PATCH, the CMake project version, the runtime
# mox_version() and `mox_info -v` all agree.
# usage: check_version.sh MOX_H PROJECT_VERSION MOX_INFO PRINT_VERSION
set -euo pipefail
h=$1 project=$2 info=$3 runtime=$4
maj=$(awk '/#define MOX_VERSION_MAJOR/ {print $3}' "$h")
min=$(awk '/#define MOX_VERSION_MINOR/ {print $3}' "$h")
pat=$(awk '/#define MOX_VERSION_PATCH/ {print $3}' "$h")
str=$(awk -F'"' '/#define MOX_VERSION_STRING/ {print $2}' "$h")
header="$maj.$min.$pat"
rt=$("$runtime")
cli=$("$info" -v | head -1 | awk '{print $2}')
echo "header $header, header string $str, project $project, mox_version() $rt, mox_info -v $cli"
[ "$header" = "$str" ] && [ "$header" = "$project" ] && [ "$header" = "$rt" ] && [ "$header" = "$cli" ] \
  && echo PASS || { echo "FAIL: versions disagree"; exit 1; }
