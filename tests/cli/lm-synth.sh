# CLI tests of lm-synth: usage and data errors (one line, exit code, no output left), the files
# and pair list it writes, byte-identical reruns (seed, thread count, pair count), the headers
# seen by lm-info, the pair list read by lm-preprocess, the written fields applied by lm-warp,
# and the real label maps in ../shared when present.
. "$LM_SRCDIR/tests/lib/sh.sh"
D=$LM_SRCDIR/tests/data

run lm-synth --help
check "help exits 0 on stdout" [ "$rc" -eq 0 -a -s "$T/out" ]
check "help lists --labels-from" grep -q -- '--labels-from DIR' "$T/out"
run lm-synth --version
check "version" grep -q '^lm-synth (llm-morph) ' "$T/out"

expect_fail "no output folder" 2 "output folder is needed" lm-synth -n 1
expect_fail "unknown option" 2 "unknown option" lm-synth --nope -o "$T/u"
expect_fail "bad shape (two sizes)" 2 "--shape" lm-synth --shape 64x64 -o "$T/u"
expect_fail "bad shape (too small)" 2 "--shape" lm-synth --shape 8x64x64 -o "$T/u"
expect_fail "bad shape (not a number)" 2 "--shape" lm-synth --shape 64x64xabc -o "$T/u"
expect_fail "negative deformation" 2 "--deform" lm-synth --deform -1 -o "$T/u"
expect_fail "zero pairs" 2 "--pairs" lm-synth -n 0 -o "$T/u"
expect_fail "bad seed" 2 "--seed" lm-synth -s 1.5 -o "$T/u"
expect_fail "bad bone list" 2 "--bone" lm-synth --bone 3,x -o "$T/u"
expect_fail "--merge without --labels-from" 2 "needs --labels-from" lm-synth --merge -o "$T/u"
expect_fail "an operand" 2 "unexpected operand" lm-synth -o "$T/u" extra
check "no output after usage errors" [ ! -e "$T/u" ]

expect_fail "missing label folder" 1 "^lm-synth: $T/nope: No such file or directory$" \
    lm-synth -l "$T/nope" -o "$T/o1"
mkdir -p "$T/empty" && touch "$T/empty/readme.txt"
expect_fail "folder without label maps" 1 "^lm-synth: $T/empty: no label maps" \
    lm-synth -l "$T/empty" -o "$T/o1"
mkdir -p "$T/frac" && cp "$D/nifti2_small.nii.gz" "$T/frac/a.nii.gz"
expect_fail "non-integer label map" 1 "^lm-synth: $T/frac/a.nii.gz: .*non-integer" \
    lm-synth -l "$T/frac" -o "$T/o1/sub"
mkdir -p "$T/four" && cp "$D/nifti1_4d.nii" "$T/four/a.nii"
expect_fail "4-D label map" 1 "^lm-synth: $T/four/a.nii: a 3-D label map is needed" \
    lm-synth -l "$T/four" -o "$T/o1"
check "no output folder after data errors" [ ! -e "$T/o1" ]
touch "$T/plain"
expect_fail "output below a file" 1 "not a directory" lm-synth -n 1 -o "$T/plain/sub"

run lm-synth -n 2 -s 5 -q -o "$T/a"
check "two pairs: exit 0, quiet" [ "$rc" -eq 0 -a ! -s "$T/err" -a ! -s "$T/out" ]
n=0
for id in synth001 synth002; do
    for f in mr.nii.gz ct.nii.gz mr_seg.nii.gz ct_seg.nii.gz deform.nii flow.nii; do
        [ -s "$T/a/${id}_$f" ] && n=$((n + 1))
    done
done
check "all twelve files written" [ "$n" -eq 12 ]
check "nothing else in the folder" [ "$(ls -A "$T/a" | wc -l)" -eq 13 ]
printf 'moving\tfixed\tmoving_seg\tfixed_seg\tpair\n' >"$T/hdr"
check "pair list header" cmp -s "$T/hdr" <(head -n 1 "$T/a/pairs.tsv")
printf 'synth002_mr.nii.gz\tsynth002_ct.nii.gz\tsynth002_mr_seg.nii.gz\tsynth002_ct_seg.nii.gz\tsynth002\n' >"$T/row"
check "pair list rows" [ "$(wc -l <"$T/a/pairs.tsv")" -eq 3 ] && check "pair list row 2" cmp -s "$T/row" <(tail -n 1 "$T/a/pairs.tsv")

same_dir() { # same_dir A B: every file of A is byte-identical in B, and B has no others
    [ "$(ls "$1")" = "$(ls "$2")" ] || return 1
    for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || return 1; done
}
lm-synth -n 2 -s 5 -q -o "$T/b"
check "same seed, same bytes" same_dir "$T/a" "$T/b"
rm -rf "$T/b"
OMP_NUM_THREADS=1 lm-synth -n 2 -s 5 -q -o "$T/b" --threads 1
lm-synth -n 2 -s 5 -q -o "$T/c" --threads 2
check "1 and 2 threads give the same bytes" same_dir "$T/b" "$T/c"
check "1 thread equals the default" same_dir "$T/a" "$T/b"
lm-synth -n 1 -s 5 -q -o "$T/d"
check "pair 1 does not depend on the pair count" cmp -s "$T/a/synth001_mr.nii.gz" "$T/d/synth001_mr.nii.gz"
lm-synth -n 1 -s 6 -q -o "$T/e"
differ() { ! cmp -s "$1" "$2"; }
check "another seed, other images" differ "$T/a/synth001_mr.nii.gz" "$T/e/synth001_mr.nii.gz"

run lm-info "$T/a/synth001_ct.nii.gz"
check "CT: int16, 64^3, 2 mm" grep -q 'datatype 4 (INT16), shape \[64,64,64\] (D,H,W), spacing 2 2 2 mm' "$T/out"
ct_min=$(awk '$1 == "data" { print $5 }' "$T/out"); ct_max=$(awk '$1 == "data" { print $7 }' "$T/out")
check "CT values in [-1024, 3071] with bone" [ "$ct_min" -ge -1024 -a "$ct_max" -le 3071 -a "$ct_max" -ge 600 ]
run lm-info "$T/a/synth001_mr.nii.gz"
check "MR: float32" grep -q 'datatype 16 (FLOAT32), shape \[64,64,64\]' "$T/out"
check "MR is non-negative" [ "$(awk '$1 == "data" { print ($5 >= 0) }' "$T/out")" = 1 ]
run lm-info "$T/a/synth001_ct_seg.nii.gz"
check "labels 0..6" grep -q 'data .* min 0 .* max 6 ' "$T/out"
run lm-info "$T/a/synth001_deform.nii"
check "field: 3 components, 64^3" grep -q 'shape \[3,64,64,64\] (C,D,H,W)' "$T/out"
run lm-info --json "$T/a/synth001_mr_seg.nii.gz"
check "descrip names seed, pair and file" grep -Eq '"descrip":[[:space:]]*"lm-synth seed 5 synth001 mr_seg"' "$T/out"
run lm-info "$T/a/synth001_mr_seg.nii.gz"
check "RAS 2 mm grid centred on the origin" grep -Eq '^ +2 +0 +0 +-63$' "$T/out"

if command -v lm-preprocess >/dev/null; then
    run lm-preprocess -q --pairs "$T/a/pairs.tsv" -o "$T/a.lmt"
    check "lm-preprocess reads the pair list" [ "$rc" -eq 0 ]
    run lm-info -n "$T/a.lmt"
    check "one record per pair" grep -q '^2 records$' "$T/out"
    lm-synth -n 1 -s 5 -q --flip-moving -o "$T/f"
    run lm-info "$T/f/synth001_mr.nii.gz"
    check "flipped moving image: LPS affine" grep -Eq '^ +-2 +-?0 +0 +63$' "$T/out"
    lm-preprocess -q --pairs "$T/f/pairs.tsv" -o "$T/f.lmt"
    lm-preprocess -q --pairs "$T/d/pairs.tsv" -o "$T/d.lmt"
    lm-info -t moving_seg "$T/f.lmt" | grep '^  moving_seg' >"$T/f.txt"
    lm-info -t moving_seg "$T/d.lmt" | grep '^  moving_seg' >"$T/d.txt"
    check "world-space resampling puts the flipped moving labels back" cmp -s "$T/f.txt" "$T/d.txt"
fi

if command -v lm-warp >/dev/null && command -v lm-metrics >/dev/null; then
    lm-synth -n 1 -s 9 -q --same-subject -o "$T/s"
    (cd "$T/s" && lm-warp -q --flow synth001_deform.nii synth001_ct.nii.gz \
        --seg synth001_ct_seg.nii.gz -o "$T/s/redo.nii.gz")
    run lm-metrics -q -F "$T/s/synth001_mr_seg.nii.gz" -W "$T/s/redo_seg.nii.gz"
    check "lm-warp with the deform field reproduces the moving labels" \
        [ "$(awk -F'\t' 'NR == 2 { print $3 }' "$T/out")" = "100.000000" ]
    lm-warp -q --flow "$T/s/synth001_flow.nii" "$T/s/synth001_mr.nii.gz" \
        --seg "$T/s/synth001_mr_seg.nii.gz" -o "$T/s/back.nii.gz"
    before=$(lm-metrics -q -F "$T/s/synth001_ct_seg.nii.gz" -W "$T/s/synth001_mr_seg.nii.gz" | awk -F'\t' 'NR == 2 { print $3 }')
    after=$(lm-metrics -q -F "$T/s/synth001_ct_seg.nii.gz" -W "$T/s/back_seg.nii.gz" | awk -F'\t' 'NR == 2 { print $3 }')
    check "the flow field registers (Dice $before -> $after)" awk -v b="$before" -v a="$after" 'BEGIN { exit !(a > 95 && a > b + 5) }'
fi
# A failure after some files were written (the pair list's name is taken by a folder): every
# file of the run is removed again.
mkdir -p "$T/late/pairs.tsv"
expect_fail "failure at the last step" 1 "^lm-synth: $T/late/pairs.tsv: " lm-synth -n 2 -q -o "$T/late"
check "nothing of the failed run is left" [ "$(ls -A "$T/late")" = "pairs.tsv" ]
check "no temporaries left" [ -z "$(find "$T" -name '.lmtmp*')" ]

if have_shared && [ -d "$SHARED/data/synthseg-label-maps" ]; then
    run lm-synth -n 1 -q -l "$SHARED/data/synthseg-label-maps" --shape 32x32x32 --spacing 6 -o "$T/r"
    check "real label maps" [ "$rc" -eq 0 -a -s "$T/r/pairs.tsv" ]
    run lm-info "$T/r/synth001_ct_seg.nii.gz"
    check "FreeSurfer ids kept" grep -q 'data .* min 0 .* max 5[0-9][0-9] ' "$T/out"
    run lm-info "$T/r/synth001_ct.nii.gz"
    check "skull is bone-bright" [ "$(awk '$1 == "data" { print $7 }' "$T/out")" -ge 600 ]
    run lm-synth -n 1 -q -l "$SHARED/data/synthseg-label-maps" --merge --shape 32x32x32 --spacing 6 -o "$T/m"
    run lm-info "$T/m/synth001_mr_seg.nii.gz"
    check "--merge: classes 0..9" grep -q 'data .* min 0 .* max 9 ' "$T/out"
else
    skip "real label maps" "../shared/data/synthseg-label-maps is absent"
fi
finish
