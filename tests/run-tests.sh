#!/usr/bin/env bash
# run-tests.sh BUILD — runs every test program (BUILD/tests/*/test_*) and every shell test
# (tests/cli/*.sh, tests/pipes/*.sh), counts their "ok -" / "not ok -" / "skip -" lines and
# ends with the plain line "N passed, N failed". A program that exits non-zero without
# reporting a failing case counts as one failure; exit 77 means "skipped as a whole" (a
# failure instead when LM_REQUIRE_CUDA=1, i.e. `make check-cuda`). LM_PROGRAMS_ONLY=1 runs the
# test programs of BUILD only, not the shell tests (`make check-asan`). Logs: BUILD/test-logs/.
set -u
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
export LM_SRCDIR=$root LM_BUILD=$(cd "$build" && pwd)
export PATH="$LM_BUILD/bin:$PATH"
logs=$LM_BUILD/test-logs
rm -rf "$logs" && mkdir -p "$logs"
passed=0 failed=0 skipped=0
failures=()
run_one() { # run_one NAME CMD...
    local name=$1; shift
    local log=$logs/${name//\//_}.log rc
    (cd "$root" && timeout 1200 "$@") >"$log" 2>&1
    rc=$?
    local p f s
    p=$(grep -c '^ok - ' "$log"); f=$(grep -c '^not ok - ' "$log"); s=$(grep -c '^skip - ' "$log")
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    while IFS= read -r line; do failures+=("$line"); done < <(grep '^not ok - ' "$log")
    if [ "$rc" -eq 77 ]; then
        if [ "${LM_REQUIRE_CUDA:-0}" = 1 ]; then
            failed=$((failed + 1)); failures+=("not ok - $name: skipped (exit 77) under check-cuda")
        else
            skipped=$((skipped + 1)); echo "skip - $name: $(tail -n 1 "$log")"
        fi
    elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        failed=$((failed + 1)); failures+=("not ok - $name: exited with status $rc (see $log)")
    fi
    printf '%-40s %3d ok %3d failed %3d skipped%s\n' "$name" "$p" "$f" "$s" \
        "$([ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && echo " (exit $rc)")"
}
shopt -s nullglob
for t in "$LM_BUILD"/tests/*/test_*; do
    [ -x "$t" ] && [ -f "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    run_one "${t#"$LM_BUILD"/tests/}" "$t"
done
[ "${LM_PROGRAMS_ONLY:-0}" = 1 ] ||
    for s in "$root"/tests/cli/*.sh "$root"/tests/pipes/*.sh; do
        run_one "${s#"$root"/tests/}" bash "$s"
    done
if [ ${#failures[@]} -gt 0 ]; then
    echo
    echo "Failures:"
    printf '  %s\n' "${failures[@]}"
fi
[ "$skipped" -gt 0 ] && echo "($skipped skipped)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
