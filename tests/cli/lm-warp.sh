# CLI tests of lm-warp: stream mode on preprocessed pairs with an identity and a constant
# field, NIfTI outputs, field export, and bad input (one line, exit 1, no output).
. "$LM_SRCDIR/tests/lib/sh.sh"
D=$LM_SRCDIR/tests/data

run lm-warp --help
check "help" [ "$rc" -eq 0 -a -s "$T/out" ]
expect_fail "--seg without --flow" 2 "standalone" lm-warp --seg a.nii.gz
expect_fail "two streams" 2 "at most one STREAM" lm-warp a.lmt b.lmt
expect_fail "bad export name" 2 "neither a directory" lm-warp --export-field x.txt a.lmt
expect_fail "missing stream" 1 "^lm-warp: $T/no.lmt: No such file or directory$" lm-warp "$T/no.lmt" -o "$T/x.lmt"
lm-cat --new -a moving=$D/warp_a_moving.nii.gz -o "$T/noflow.lmt"
expect_fail "no flow on the grid" 1 "record 1: no flow or flow_full on moving's grid" \
    lm-warp "$T/noflow.lmt" -o "$T/x.lmt"
head -c 300 "$T/noflow.lmt" >"$T/cut.lmt"
expect_fail "truncated stream" 1 "truncated" lm-warp "$T/cut.lmt" -o "$T/x.lmt"
check "no output after failures" [ ! -e "$T/x.lmt" ]

# Standalone, then the same as a stream: identical results.
run lm-warp -q --flow $D/warp_a_flow.nii.gz --seg $D/warp_a_seg.nii.gz -o "$T/w.nii.gz" $D/warp_a_moving.nii.gz
check "standalone NIfTI output" [ "$rc" -eq 0 -a -s "$T/w.nii.gz" -a -s "$T/w_seg.nii.gz" ]
run lm-warp -q --flow $D/warp_a_flow.nii.gz -o "$T/w.lmt" $D/warp_a_moving.nii.gz
run lm-info "$T/w.lmt"
check "standalone stream output has warped and flow" grep -q 'warped .*F32' "$T/out"
mkdir "$T/dir"
lm-warp -q "$T/w.lmt" -o "$T/dir" --export-field "$T/dir"
check "directory outputs" [ -s "$T/dir/warp_a_moving_warped.nii.gz" -a -s "$T/dir/warp_a_moving_field.nii.gz" ]
run lm-info "$T/dir/warp_a_moving_field.nii.gz"
check "exported field is a 3-vector per voxel" grep -q 'shape \[3,32,32,20\]' "$T/out"
cat "$T/w.lmt" "$T/w.lmt" >"$T/two.lmt"
expect_fail "one NIfTI name for several records" 1 "several records" lm-warp "$T/two.lmt" -o "$T/two.nii.gz"
check "nothing written for several records" [ ! -e "$T/two.nii.gz" -a ! -e "$T/two_seg.nii.gz" ]
mkdir "$T/dup"
expect_fail "duplicate pair ids into a directory" 1 "appears twice" lm-warp "$T/two.lmt" -o "$T/dup"
run lm-warp -q --labels-linear --flow $D/warp_a_flow.nii.gz --seg $D/warp_a_seg.nii.gz -o "$T/ll.nii.gz" $D/warp_a_moving.nii.gz
check "--labels-linear" [ "$rc" -eq 0 -a -s "$T/ll_seg.nii.gz" ]
run lm-info "$T/ll_seg.nii.gz"
check "--labels-linear keeps the label set" grep -q 'max 3 ' "$T/out"
expect_fail "field grid differs from the image" 1 "differs from the field" \
    lm-warp --flow $D/warp_a_flow.nii.gz -o "$T/x.nii.gz" $D/nifti2_small.nii.gz
check "still no output" [ ! -e "$T/x.nii.gz" ]

# NIfTI field and NIfTI outputs: the job runs in the files' array order, with uncompressed
# inputs mapped; its files must be those of the record path (the same job through a stream)
# byte for byte, compressed or not, nearest or one-hot labels, voxel or ITK (DISPVECT) field.
mkdir "$T/raw"
for f in flow seg moving; do gzip -dc "$D/warp_a_$f.nii.gz" >"$T/raw/$f.nii"; done
lm-warp -q --flow "$T/raw/flow.nii" -o "$T/raw/itk.nii" --export-field "$T/raw/itk_field.nii" \
    "$T/raw/moving.nii"
for in in "$D/warp_a_%s.nii.gz" "$T/raw/%s.nii"; do
    for opt in "" -L; do
        for fld in flow itk_field; do
            # shellcheck disable=SC2059
            F=$(printf "$in" "$fld") M=$(printf "$in" moving) S=$(printf "$in" seg)
            [ -e "$F" ] || F=$T/raw/$fld.nii
            for ext in nii nii.gz; do
                rm -f "$T"/fo* "$T"/rp* "$T/rp.lmt"
                lm-warp -q $opt --flow "$F" --seg "$S" -o "$T/fo.$ext" --export-field "$T/fof.$ext" "$M"
                lm-warp -q $opt --flow "$F" --seg "$S" -o "$T/rp.lmt" "$M"
                lm-warp -q $opt "$T/rp.lmt" -o "$T/rp.$ext" --export-field "$T/rpf.$ext"
                check "file order = record path: ${in##*.} inputs, field $fld, ${opt:+one-hot }labels, .$ext out" \
                    eval 'cmp -s "$T/fo.$ext" "$T/rp.$ext" && cmp -s "$T/fo_seg.$ext" "$T/rp_seg.$ext" &&
                          cmp -s "$T/fof.$ext" "$T/rpf.$ext"'
            done
        done
    done
done
# A non-finite field component is reported alike (its [1,3,D,H,W] element), nothing written.
cp "$T/raw/flow.nii" "$T/raw/nan.nii"
size=$(wc -c <"$T/raw/nan.nii")
for k in 17 9000 25000; do # voxels from the end: in components 2 (the last 20480) and 1
    printf '\000\000\300\177' | dd of="$T/raw/nan.nii" bs=1 seek=$((size - 4 * k)) conv=notrunc 2>/dev/null
done
run lm-warp --flow "$T/raw/nan.nii" -o "$T/nan.lmt" "$T/raw/moving.nii"
grep -o 'element [0-9]*' "$T/err" >"$T/want"
expect_fail "non-finite field, file order" 1 "^lm-warp: flow has a non-finite value at element $(cut -d' ' -f2 "$T/want")\$" \
    lm-warp --flow "$T/raw/nan.nii" --seg "$T/raw/seg.nii" -o "$T/nan.nii" "$T/raw/moving.nii"
check "non-finite field: no output" [ ! -e "$T/nan.nii" -a ! -e "$T/nan_seg.nii" -a -s "$T/want" ]
finish
