# CLI tests of lm-preprocess: real pairs, pair lists, grids, labels, and every bad input
# (one line, exit 1, no output file).
. "$LM_SRCDIR/tests/lib/sh.sh"
D=$LM_SRCDIR/tests/data
S=$SHARED/data/totalseg-abdomen
P=$SHARED/data/deepreg-prostate/test

run lm-preprocess --help
check "help" [ "$rc" -eq 0 -a -s "$T/out" ]
expect_fail "no operands" 2 "expected MOVING FIXED" lm-preprocess -o "$T/x.lmt"
expect_fail "three operands" 2 "expected MOVING FIXED" lm-preprocess a b c
expect_fail "bad modality" 2 "not ct, mr or raw" lm-preprocess --modality-moving pet a b
expect_fail "bad window" 2 "ct-window" lm-preprocess --ct-window 400,-180 a b
expect_fail "bad shape" 2 "DxHxW" lm-preprocess --shape 96x80 a b
expect_fail "crop-pad without shape" 2 "needs --shape" lm-preprocess --crop-pad a b
expect_fail "--pair with --pairs" 2 "takes ids from the list" lm-preprocess --pair x --pairs l.tsv
expect_fail "missing file" 1 "^lm-preprocess: $T/nope.nii.gz: No such file or directory$" \
    lm-preprocess "$T/nope.nii.gz" "$D/nifti2_small.nii.gz" -o "$T/x.lmt"
check "no output after a missing file" [ ! -e "$T/x.lmt" ]
expect_fail "shape not a multiple of 16" 1 "not a multiple of 16.*--pad pads it to \[16,16,16\]" \
    lm-preprocess "$D/nifti2_small.nii.gz" "$D/nifti2_small.nii.gz" -o "$T/x.lmt"
expect_fail "4-D image" 1 "3-D image is needed" \
    lm-preprocess --any-shape "$D/nifti1_4d.nii" "$D/nifti2_small.nii.gz" -o "$T/x.lmt"
run lm-preprocess -q --any-shape --modality-moving raw --modality-fixed raw \
    "$D/nifti2_small.nii.gz" "$D/nifti2_small.nii.gz" -o "$T/small.lmt"
check "--any-shape accepts a small grid" [ "$rc" -eq 0 -a -s "$T/small.lmt" ]
lm-preprocess -q --pad --modality-moving raw --modality-fixed raw \
    "$D/nifti2_small.nii.gz" "$D/nifti2_small.nii.gz" >"$T/pad.lmt"
check "stream to stdout" [ -s "$T/pad.lmt" ]
run lm-info "$T/pad.lmt"
check "--pad pads to 16" grep -q 'moving .*\[1,1,16,16,16\]' "$T/out"
check "normalised to [0,1]" grep -q 'fixed .*min 0 .*max 1 ' "$T/out"

if have_shared; then
    run lm-preprocess -q --align-centres --pad "$S/example_mr_sm.nii.gz" "$S/example_ct_sm.nii.gz" \
        "$S/example_seg_mr.nii.gz" "$S/example_seg.nii.gz" -o "$T/abd.lmt"
    check "real MR/CT pair" [ "$rc" -eq 0 ]
    run lm-info "$T/abd.lmt"
    check "four tensors on one grid" [ "$(grep -c '\[1,1,128,112,32\]' "$T/out")" -eq 4 ]
    check "metadata" grep -q '@spacing = \[3,3,3\]' "$T/out"
    run lm-preprocess -q --align-centres --half --pad "$S/example_mr_sm.nii.gz" \
        "$S/example_ct_sm.nii.gz" "$S/example_seg_mr.nii.gz" "$S/example_seg.nii.gz" -o "$T/half.lmt"
    run lm-info "$T/half.lmt"
    check "--half pools images, keeps labels" grep -q 'moving .*\[1,1,64,64,16\]' "$T/out"
    check "--half labels at full resolution" grep -q 'fixed_seg .*\[1,1,128,128,32\]' "$T/out"
    run lm-preprocess -q --align-centres --pad --labels 1,2,3,5 "$S/example_mr_sm.nii.gz" \
        "$S/example_ct_sm.nii.gz" "$S/example_seg_mr.nii.gz" "$S/example_seg.nii.gz" -o "$T/lab.lmt"
    run lm-info "$T/lab.lmt"
    check "--labels renumbers" grep -q 'fixed_seg .*max 4 ' "$T/out"
    check "--labels recorded" grep -q '@labels_source = \[1,2,3,5\]' "$T/out"
    check "labels metadata names the values in the maps" grep -q '@labels = \[1,2,3,4\]' "$T/out"
    expect_fail "no overlap in world space" 1 "does not overlap .*--align-centres" \
        lm-preprocess --pad "$S/example_mr_sm.nii.gz" "$S/example_ct_sm.nii.gz" -o "$T/x.lmt"
    ids=$(seq -s, 1 117)
    run lm-preprocess -q --align-centres --pad --labels "$ids" "$S/example_mr_sm.nii.gz" \
        "$S/example_ct_sm.nii.gz" "$S/example_seg_mr.nii.gz" "$S/example_seg.nii.gz" -o "$T/many.lmt"
    check "--labels takes 117 ids" [ "$rc" -eq 0 ]
    expect_fail "label grid differs from image" 1 "label grid .* differs" \
        lm-preprocess --pad "$S/example_mr_sm.nii.gz" "$S/example_ct_sm.nii.gz" \
        "$S/example_seg.nii.gz" "$S/example_seg.nii.gz" -o "$T/x.lmt"
    expect_fail "empty label map after --labels" 1 "empty label map" \
        lm-preprocess --pad --labels 250 "$S/example_mr_sm.nii.gz" "$S/example_ct_sm.nii.gz" \
        "$S/example_seg_mr.nii.gz" "$S/example_seg.nii.gz" -o "$T/x.lmt"
    check "no output after failures" [ ! -e "$T/x.lmt" ]
    # A pair list with relative paths and 4-D channel label maps (DeepReg prostate).
    mkdir -p "$T/list"
    for k in 25 26; do
        for d in moving_images fixed_images moving_labels fixed_labels; do
            ln -sf "$P/$d/case0000$k.nii.gz" "$T/list/${d}_$k.nii.gz"
        done
    done
    printf 'moving\tfixed\tmoving_seg\tfixed_seg\tpair\n' >"$T/list/pairs.tsv"
    for k in 25 26; do
        printf 'moving_images_%s.nii.gz\tfixed_images_%s.nii.gz\tmoving_labels_%s.nii.gz\tfixed_labels_%s.nii.gz\tcase%s\n' \
            $k $k $k $k $k >>"$T/list/pairs.tsv"
    done
    run lm-preprocess -q --modality-moving mr --modality-fixed raw --shape 64x64x64 \
        --pairs "$T/list/pairs.tsv" -o "$T/pairs.lmt"
    check "pair list" [ "$rc" -eq 0 ]
    run lm-info "$T/pairs.lmt"
    check "two records from the list" grep -q '^2 records$' "$T/out"
    check "4-D label maps become labels 1..3" grep -q 'moving_seg .*max 3 ' "$T/out"
    check "pair ids from the list" grep -q '@pair = case26' "$T/out"
    printf 'a\tb\tc\n' >"$T/list/bad.tsv"
    expect_fail "three columns" 1 "line 1: 3 tab-separated columns" \
        lm-preprocess --pairs "$T/list/bad.tsv" -o "$T/x.lmt"
else
    skip "real data" "../shared is absent"
fi
finish
