# Man pages: mandoc -Tlint is clean for every page, every program has a page, and each
# program's --help and its page list the same long options.
. "$LM_SRCDIR/tests/lib/sh.sh"
shopt -s nullglob
if ! command -v mandoc >/dev/null; then
    skip "man pages" "mandoc is not installed (tools/install-deps.sh)"; finish
fi
for m in "$LM_SRCDIR"/man/*.[157]; do
    out=$(mandoc -Tlint -W warning "$m" 2>&1)
    if [ -z "$out" ]; then pass "lint $(basename "$m")"; else fail "lint $(basename "$m")" "$(echo "$out" | head -3)"; fi
done
for p in "$LM_BUILD"/bin/lm-*; do
    prog=$(basename "$p")
    page=$LM_SRCDIR/man/$prog.1
    if [ ! -f "$page" ]; then fail "$prog has a man page" "man/$prog.1 is missing"; continue; fi
    "$p" --help | grep -oE -- '--[a-z0-9][a-z0-9-]*' | sort -u >"$T/help"
    grep -oE 'Fl \\?-[a-z0-9][a-z0-9-]*' "$page" | sed -E 's/Fl \\?-/--/' | sort -u >"$T/man"
    if diff "$T/help" "$T/man" >"$T/diff"; then
        pass "$prog: --help and man page list the same options"
    else
        fail "$prog: --help and man page list the same options" "$(tr '\n' ' ' <"$T/diff")"
    fi
done
finish
