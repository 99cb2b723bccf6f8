#!/bin/sh
# install-deps.sh — installs the Debian packages llm-morph builds against, only those missing.
# Needs root or sudo. The CUDA toolkit is not installed here (it comes from NVIDIA's packages);
# without it the CPU backend and every program still build.
set -eu
pkgs="build-essential pkg-config libnifti2-dev libzstd-dev zstd libcjson-dev libopenblas-dev zlib1g-dev mandoc"
need=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -z "$need" ]; then
    echo "install-deps: all packages present:$(printf ' %s' $pkgs)"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo=sudo; else
    echo "install-deps: need root or sudo to install:$need" >&2; exit 1
fi
echo "install-deps: installing:$need"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $need
