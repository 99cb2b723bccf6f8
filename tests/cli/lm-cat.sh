# CLI tests of lm-cat: building streams from NIfTI, concatenation, selection, raw output,
# atomic output and bad input.
. "$LM_SRCDIR/tests/lib/sh.sh"
D=$LM_SRCDIR/tests/data

run lm-cat --help
check "help exits 0 on stdout" [ "$rc" -eq 0 -a -s "$T/out" ]
expect_fail "unknown option" 2 "unknown option" lm-cat --nope
expect_fail "bad level" 2 "level" lm-cat --level 99 "$D/py_fixture.safetensors"
expect_fail "bad --add" 2 "NAME=FILE" lm-cat --add nofile

run lm-cat --new -a img=$D/nifti2_small.nii.gz -m pair=p1 -o "$T/one.lmt"
check "fresh record from a NIfTI" [ "$rc" -eq 0 -a -s "$T/one.lmt" ]
run lm-info "$T/one.lmt"
check "added image is [1,1,D,H,W] F32" grep -q 'img .*F32  \[1,1,5,4,3\]' "$T/out"
check "metadata set" grep -q '@pair = p1' "$T/out"
check "history recorded" grep -q '@history = lm-cat --new -a' "$T/out"

lm-cat "$T/one.lmt" "$D/py_fixture.safetensors" "$T/one.lmt" >"$T/three.lmt"
run lm-info -n "$T/three.lmt"
check "concatenation of a stream, a safetensors file, a stream" grep -q '^3 records$' "$T/out"
cat "$T/one.lmt" "$T/one.lmt" | lm-cat -s img -m pair=p2 >"$T/sel.lmt"
run lm-info -n "$T/sel.lmt"
check "stdin and --select" grep -q '^2 records$' "$T/out"
run lm-info "$T/sel.lmt"
check "--meta on piped records" [ "$(grep -c '@pair = p2' "$T/out")" -eq 2 -a "$(grep -c '^  img ' "$T/out")" -eq 2 ]
expect_fail "--new with inputs" 2 "reads no input" lm-cat --new "$T/one.lmt"
run lm-cat -d t_u8,t_i8 --raw -o "$T/raw.safetensors" "$D/py_fixture.safetensors"
run lm-info -n "$T/raw.safetensors"
check "--raw writes plain safetensors" grep -q 'safetensors' "$T/out"
check "--drop removes tensors" [ "$(grep -c '^  t_' "$T/out")" -eq 16 ]

run lm-cat --new -F flow=$D/warp_a_flow.nii.gz -o "$T/f.lmt"
run lm-info "$T/f.lmt"
check "--add-field adds [1,3,D,H,W]" grep -q 'flow .*F32  \[1,3,32,32,20\]' "$T/out"
expect_fail "--add-field of a 3-D image" 1 "3 components" lm-cat --new -F f=$D/warp_a_moving.nii.gz -o "$T/never.lmt"
head -c 200 "$T/three.lmt" >"$T/cut.lmt"
expect_fail "truncated input" 1 "^lm-cat: $T/cut.lmt: record 1: truncated" lm-cat -o "$T/never.lmt" "$T/cut.lmt"
check "no output after a failure" [ ! -e "$T/never.lmt" ]
check "no temporary left" [ -z "$(ls -A "$T" | grep lmtmp)" ]
expect_fail "missing NIfTI" 1 "^lm-cat: $T/x.nii.gz: No such file or directory$" lm-cat -n -a a=$T/x.nii.gz -o "$T/never.lmt"
expect_fail "4-D image refused for --add" 1 "3-D image" lm-cat -n -a a=$D/nifti1_4d.nii -o "$T/never.lmt"
expect_fail "fractional labels" 1 "non-integer" lm-cat -n -L s=$D/nifti2_small.nii.gz -o "$T/never.lmt"
check "still no output" [ ! -e "$T/never.lmt" ]
if command -v script >/dev/null; then
    script -qec "lm-cat $D/py_fixture.safetensors" /dev/null >"$T/tty" 2>&1
    check "refuses binary output to a terminal" grep -q 'refusing to write binary data to a terminal' "$T/tty"
fi
lm-cat "$D/py_fixture.safetensors" 2>"$T/err" | head -c 10 >/dev/null
check "a closed pipe is at most one line" [ "$(wc -l <"$T/err")" -le 1 ]
finish
