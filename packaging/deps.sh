#!/usr/bin/env bash
# Installs everything mox needs to build, test and benchmark, from Debian's
# packages only (apt-get). Safe to run again: packages already present are
# skipped. Needs root (or sudo) the first time.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libucx-dev ucx-utils libnuma-dev libibverbs-dev libpmix-dev
  libcmocka-dev
  openmpi-bin libopenmpi-dev python3-mpi4py python3-numpy
  iproute2 util-linux procps
  gnuplot-nox abigail-tools
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
