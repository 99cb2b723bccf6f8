#!/bin/sh
# check-deps.sh — says exactly which build dependency is missing and how to get it.
# Usage: tools/check-deps.sh [CUDA]   (CUDA=1 also checks nvcc, cuBLAS and cuDNN)
# Exit 0 when everything is there, 1 otherwise. Called by the Makefile before compiling.
missing=""
need() { # need PACKAGE DESCRIPTION TEST...
    pkg=$1; shift; what=$1; shift
    if ! "$@" >/dev/null 2>&1; then
        echo "make: missing $what (Debian package $pkg)" >&2
        missing="$missing $pkg"
    fi
}
need pkg-config "pkg-config" command -v pkg-config
need libzstd-dev "zstd library (pkg-config libzstd)" pkg-config --exists libzstd
need libcjson-dev "cJSON library (pkg-config libcjson)" pkg-config --exists libcjson
need libopenblas-dev "OpenBLAS (pkg-config openblas)" pkg-config --exists openblas
need libnifti2-dev "nifticlib (/usr/include/nifti/nifti2_io.h)" test -r /usr/include/nifti/nifti2_io.h
need zlib1g-dev "zlib (/usr/include/zlib.h)" test -r /usr/include/zlib.h
need mandoc "mandoc (man page lint)" command -v mandoc
if [ "${1:-0}" = 1 ]; then
    nvcc=$(command -v "${NVCC:-nvcc}")
    if [ -z "$nvcc" ]; then
        echo "make: CUDA=1 but nvcc is not on PATH (install the CUDA toolkit, or build with CUDA=0)" >&2
        exit 1
    fi
fi
if [ -n "$missing" ]; then
    echo "make: install them with: sudo tools/install-deps.sh   (or: sudo apt-get install$missing)" >&2
    exit 1
fi
exit 0
