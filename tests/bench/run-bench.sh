#!/usr/bin/env bash
# run-bench.sh BUILD — runs every benchmark program (BUILD/tests/bench/bench_*), then every
# tests/bench/bench-*.sh (tools against SciPy);
# `make bench` calls it. Extra arguments (e.g. --quick) are passed to each program.
set -u
build=${1:-build}
shift || true
rc=0
shopt -s nullglob
for b in "$build"/tests/bench/bench_*; do
    [ -x "$b" ] && [ -f "$b" ] || continue
    case "$b" in *.d|*.o) continue ;; esac
    echo "== ${b##*/} ($(nproc) cores)"
    "$b" "$@" || rc=1
done
# Tools against their Python peers (SciPy) in the same run; they skip without Python.
for s in "$(dirname "$0")"/bench-*.sh; do
    echo "== ${s##*/} ($(nproc) cores)"
    bash "$s" "$build" || rc=1
done
exit $rc
