# make install PREFIX=... DESTDIR=...: every program and every man page lands, and an
# installed program runs.
. "$LM_SRCDIR/tests/lib/sh.sh"
run make -s -C "$LM_SRCDIR" install BUILD="$LM_BUILD" CUDA="${LM_CUDA:-0}" PREFIX=/opt/lm DESTDIR="$T/root"
check "make install succeeds" [ "$rc" -eq 0 ]
for p in "$LM_BUILD"/bin/lm-*; do
    check "installs $(basename "$p")" [ -x "$T/root/opt/lm/bin/$(basename "$p")" ]
done
for m in "$LM_SRCDIR"/man/*.[157]; do
    b=$(basename "$m")
    check "installs man page $b" [ -f "$T/root/opt/lm/share/man/man${b##*.}/$b" ]
done
run "$T/root/opt/lm/bin/lm-info" --version
check "installed lm-info runs" grep -q llm-morph "$T/out"
finish
