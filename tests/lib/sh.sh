# sh.sh — helpers for shell tests (sourced). Each check prints "ok - FILE: CASE" or
# "not ok - FILE: CASE: why", which tests/run-tests.sh counts. The scratch directory $T is
# removed at exit. Programs are found on PATH (run-tests.sh puts build/bin first).
set -u
T=$(mktemp -d "${TMPDIR:-/tmp}/lmsh.XXXXXX")
trap 'rm -rf "$T"' EXIT
TNAME=$(basename "$0" .sh)
SHARED=${LM_SHARED:-${LM_SRCDIR:-.}/../shared}
FAILS=0
pass() { echo "ok - $TNAME: $1"; }
fail() { echo "not ok - $TNAME: $1: $2"; FAILS=$((FAILS + 1)); }
skip() { echo "skip - $TNAME: $1: $2"; }
check() { # check CASE CONDITION-COMMAND...
    local c=$1; shift
    if "$@"; then pass "$c"; else fail "$c" "failed: $*"; fi
}
# run CMD... : runs with stdout to $T/out, stderr to $T/err; sets $rc
run() { "$@" >"$T/out" 2>"$T/err"; rc=$?; }
# expect_fail CASE CODE REGEX CMD... : exit CODE, exactly one stderr line matching REGEX,
# nothing on stdout.
expect_fail() {
    local c=$1 code=$2 re=$3; shift 3
    run "$@"
    local lines; lines=$(wc -l <"$T/err")
    if [ "$rc" -ne "$code" ]; then
        fail "$c" "exit $rc, expected $code; stderr: $(head -c 300 "$T/err")"
    elif ! grep -Eq -- "$re" "$T/err"; then
        fail "$c" "stderr does not match /$re/: $(head -c 300 "$T/err")"
    elif [ "$code" -eq 1 ] && [ "$lines" -ne 1 ]; then
        fail "$c" "expected one line on stderr, got $lines: $(head -c 300 "$T/err")"
    elif [ -s "$T/out" ]; then
        fail "$c" "stdout is not empty after a failure"
    else
        pass "$c"
    fi
}
have_shared() { [ -d "$SHARED/data" ]; }
finish() { exit 0; }
