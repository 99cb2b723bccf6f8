#!/usr/bin/env bash
# run-bench.sh BUILD — runs every benchmark program (BUILD/tests/bench/bench_*) in turn;
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
exit $rc
