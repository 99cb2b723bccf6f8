# CLI tests of lm-metrics: the numbers against the SciPy reference (tests/data/metrics_*, made
# by tests/reference/make_metrics_ref.py) through streams and NIfTI files, the options, the
# table layout, atomic output, and bad input (one line, exit 1, no output).
. "$LM_SRCDIR/tests/lib/sh.sh"
D=$LM_SRCDIR/tests/data
SP='[1.5,0.800000011920929,3.0]' # the ct fixtures' header spacing (float32 0.8)

# expected CASE COLUMN -> the SciPy value from metrics_expected.tsv
expected() { awk -F'\t' -v c="$1" -v k="$2" 'NR==1{for(i=1;i<=NF;i++)h[$i]=i; next} $1==c{print $h[k]}' "$D/metrics_expected.tsv"; }
# value FILE ROW COLUMN -> a cell of an lm-metrics table
value() { awk -F'\t' -v r="$2" -v k="$3" 'NR==1{for(i=1;i<=NF;i++)h[$i]=i; next} $1==r{print $h[k]}' "$1"; }
# close A B TOL
not() { ! "$@"; }
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN{d=a-b; if(d<0)d=-d; exit !(a!="" && b!="" && d<=t)}'; }
# agree CASE FILE ROW COLUMN EXPECTED-COLUMN : lm-metrics prints 6 decimals
agree() {
    local want got; want=$(expected "$1" "$5"); got=$(value "$2" "$3" "$4")
    if close "$got" "$want" 1e-5; then pass "$1 $4 = SciPy ($got)"; else fail "$1 $4 = SciPy" "got '$got', SciPy '$want'"; fi
}

run lm-metrics --help
check "help exits 0 on stdout" [ "$rc" -eq 0 -a -s "$T/out" ]
run lm-metrics --version
check "version" grep -q '^lm-metrics (llm-morph) ' "$T/out"

# ---- standalone NIfTI ----
run lm-metrics -q -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_ct_warped.nii.gz"
cp "$T/out" "$T/ct.tsv"
check "standalone runs" [ "$rc" -eq 0 -a ! -s "$T/err" ]
agree ct_warped "$T/ct.tsv" metrics_ct_warped dice_mean dice_mean
agree ct_warped "$T/ct.tsv" metrics_ct_warped hd95_mean hd95_medpy
check "41 labels, 0 ignored" [ "$(value "$T/ct.tsv" metrics_ct_warped n_labels)" = 41 ]
check "no dice_0 column" not grep -q 'dice_0' "$T/ct.tsv"
check "no Jacobian columns without a field" not grep -q sdlogj "$T/ct.tsv"
check "summary rows" [ "$(cut -f1 "$T/ct.tsv" | tail -n 3 | tr '\n' ' ')" = "mean std mean(std) " ]
check "mean (std) row in the paper's form" grep -qP '^mean\(std\)\t1\t61\.93 \(0\.00\)\t3\.01 \(0\.00\)\t' "$T/ct.tsv"
run lm-metrics -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_ct_warped.nii.gz"
check "skipped HD95 reported on stderr" grep -q 'metrics_ct_warped: HD95 skipped for label 13 (empty in warped_seg)' "$T/err"
run lm-metrics -q --hd=monai -F "$D/metrics_pr_fixed.nii.gz" -W "$D/metrics_pr_warped.nii.gz"
agree pr_warped "$T/out" metrics_pr_warped hd95_mean hd95_monai
run lm-metrics -q -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_ct_fixed.nii.gz"
check "identical maps: Dice 100, HD95 0" [ "$(value "$T/out" metrics_ct_fixed dice_mean)" = 100.000000 -a "$(value "$T/out" metrics_ct_fixed hd95_mean)" = 0.000000 ]
run lm-metrics -q -F "$D/metrics_jac.safetensors" -W "$D/metrics_ct_warped.nii.gz"
check "standalone refuses a non-NIfTI map" [ "$rc" -eq 1 ]
run lm-metrics -q -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_ct_warped.nii.gz" --labels 1,2,5 --spacing 3,3,3
check "--labels and --spacing" [ "$rc" -eq 0 -a "$(value "$T/out" metrics_ct_warped n_labels)" = 3 ] && check "--labels columns" grep -qP '^pair\tn_labels\tdice_mean\thd95_mean\tdice_1\tdice_2\tdice_5\thd95_1\thd95_2\thd95_5$' "$T/out"

# ---- streams ----
mk() { # mk OUT WARPED [extra lm-cat args]
    local o=$1 w=$2; shift 2
    lm-cat -q -n -L fixed_seg="$D/metrics_ct_fixed.nii.gz" -L warped_seg="$w" \
        -L moving_seg="$D/metrics_ct_moving.nii.gz" -m spacing="$SP" "$@" -o "$o"
}
mk "$T/a.lmt" "$D/metrics_ct_warped.nii.gz" -m pair=ctw
mk "$T/b.lmt" "$D/metrics_ct_moving.nii.gz" -m pair=ctm
cat "$T/a.lmt" "$T/b.lmt" >"$T/ab.lmt"
run lm-metrics -q "$T/ab.lmt"
cp "$T/out" "$T/ab.tsv"
agree ct_warped "$T/ab.tsv" ctw dice_mean dice_mean
agree ct_moving "$T/ab.tsv" ctm hd95_mean hd95_medpy
m=$(awk -v a="$(expected ct_warped dice_mean)" -v b="$(expected ct_moving dice_mean)" 'BEGIN{printf "%.10f", (a+b)/2}')
check "mean row over two pairs" close "$(value "$T/ab.tsv" mean dice_mean)" "$m" 1e-5
s=$(awk -v a="$(expected ct_warped dice_mean)" -v b="$(expected ct_moving dice_mean)" 'BEGIN{d=(a-b)/2; printf "%.10f", d<0?-d:d}')
check "std row (population) over two pairs" close "$(value "$T/ab.tsv" std dice_mean)" "$s" 1e-5
lm-metrics -q <"$T/ab.lmt" >"$T/stdin.tsv"
check "stdin equals the file" cmp -s "$T/ab.tsv" "$T/stdin.tsv"
run lm-metrics -q --initial "$T/a.lmt"
agree ct_moving "$T/out" ctw dice_mean dice_mean
check "--initial: identity field, no folding" [ "$(value "$T/out" ctw jac_nonpos_pct)" = 0.000000 -a "$(value "$T/out" ctw sdlogj)" = 0.000000 ]
run lm-metrics -q --ignore '' "$T/a.lmt"
check "--ignore '' scores label 0" grep -q 'dice_0' "$T/out"
run lm-metrics -q --threads 1 "$T/ab.lmt"
check "--threads 1 gives the same table" cmp -s "$T/out" "$T/ab.tsv"

run lm-metrics -q "$D/metrics_jac.safetensors"
agree jac_warped "$T/out" jac1 jac_nonpos_pct jac_pct
agree jac_warped "$T/out" jac1 sdlogj sdlogj
agree jac_warped "$T/out" jac1 dice_mean dice_mean
run lm-metrics -q --jac=sitk-mm "$D/metrics_jac.safetensors"
check "sitk-mm: SimpleITK's det < 0 share (166 of 3840)" [ "$(value "$T/out" jac1 jac_neg_pct)" = 4.322917 ]
run lm-metrics -q --json "$D/metrics_jac.safetensors"
check "--json" grep -q '"jac_nonpos_pct":	3.828125' "$T/out"
check "--json lists skipped HD95" grep -q '"hd95_skipped":	\[19\]' "$T/out"

run lm-metrics -q -o "$T/res.tsv" "$T/ab.lmt"
check "-o writes the file, nothing on stdout" [ "$rc" -eq 0 -a ! -s "$T/out" ] && check "-o content" cmp -s "$T/res.tsv" "$T/ab.tsv"

# ---- labels absent from both maps ----
lm-cat -q -n -L fixed_seg="$D/metrics_pr_fixed.nii.gz" -L warped_seg="$D/metrics_pr_warped.nii.gz" \
    -m spacing='[0.4,0.4,0.4]' -m pair=pr -o "$T/pr.lmt"
cat "$T/a.lmt" "$T/pr.lmt" >"$T/mixed.lmt"
expect_fail "label absent from both maps of one pair" 1 "^lm-metrics: $T/mixed.lmt: record 2: pair pr: label 4 is in neither map" lm-metrics -o "$T/never.tsv" "$T/mixed.lmt"
check "no output file after the failure" [ ! -e "$T/never.tsv" ]
check "no temporary left" [ -z "$(ls -A "$T" | grep lmtmp)" ]
run lm-metrics --skip-missing "$T/mixed.lmt"
check "--skip-missing scores the rest" [ "$rc" -eq 0 -a "$(value "$T/out" pr n_labels)" = 3 ]
check "--skip-missing reports what it skipped" grep -q '^lm-metrics: pr: labels 4,5,6,.* in neither map, skipped' "$T/err"
check "... once" [ "$(grep -c 'in neither map, skipped' "$T/err")" -eq 1 ]
check "skipped cells are nan" [ "$(value "$T/out" pr dice_5)" = nan ]
expect_fail "--labels with a label in neither map" 1 "^lm-metrics: $T/pr.lmt: record 1: label 9 is in neither map" lm-metrics --labels 1,9 "$T/pr.lmt"
run lm-metrics -q --skip-missing --labels 1,9 "$T/pr.lmt"
check "--skip-missing with --labels" [ "$rc" -eq 0 -a "$(value "$T/out" pr n_labels)" = 1 ]

# the record's labels metadata (lm-preprocess: the values of its maps) sets the labels scored
lm-cat -q -m labels='[0,1,2,3]' -o "$T/pr3.lmt" "$T/pr.lmt"
run lm-metrics -q "$T/pr3.lmt"
check "labels metadata" [ "$rc" -eq 0 -a "$(value "$T/out" pr n_labels)" = 3 ]
lm-cat -q -m labels='[1,2,3,7]' -o "$T/pr7.lmt" "$T/pr.lmt"
expect_fail "labels metadata names a label in neither map" 1 "^lm-metrics: $T/pr7.lmt: record 1: label 7 is in neither map" lm-metrics "$T/pr7.lmt"
lm-cat -q -m labels='[1,2.5]' -o "$T/prx.lmt" "$T/pr.lmt"
expect_fail "bad labels metadata" 1 "record 1: metadata labels '\[1,2.5\]' is not a JSON array of integers" lm-metrics "$T/prx.lmt"
run lm-metrics -q --labels 1 "$T/pr7.lmt"
check "--labels overrides the metadata" [ "$rc" -eq 0 -a "$(value "$T/out" pr n_labels)" = 1 ]

# ---- bad input ----
expect_fail "missing file" 1 "^lm-metrics: $T/none.lmt: No such file or directory$" lm-metrics "$T/none.lmt"
head -c 300 "$T/ab.lmt" >"$T/cut.lmt"
expect_fail "truncated stream" 1 "^lm-metrics: $T/cut.lmt: record 1: truncated" lm-metrics -o "$T/never.tsv" "$T/cut.lmt"
check "no output after a truncated stream" [ ! -e "$T/never.tsv" ]
head -c $(( $(wc -c <"$T/ab.lmt") - 5 )) "$T/ab.lmt" >"$T/cut2.lmt"
expect_fail "truncated second record" 1 "record 2: truncated" lm-metrics "$T/cut2.lmt"
lm-cat -q -d warped_seg -o "$T/nowarp.lmt" "$T/a.lmt"
expect_fail "missing tensor" 1 "^lm-metrics: $T/nowarp.lmt: record 1: no tensor 'warped_seg' \(use --initial" lm-metrics "$T/nowarp.lmt"
lm-cat -q -n -L fixed_seg="$D/metrics_ct_fixed.nii.gz" -L warped_seg="$D/metrics_pr_warped.nii.gz" -m spacing="$SP" -o "$T/shape.lmt"
expect_fail "shape mismatch" 1 "record 1: warped_seg \[64,64,60\] and fixed_seg \[104,80,30\] differ in shape" lm-metrics "$T/shape.lmt"
expect_fail "standalone shape mismatch" 1 "metrics_pr_warped.nii.gz: shape .* differs" lm-metrics -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_pr_warped.nii.gz"
lm-cat -q -n -L fixed_seg="$D/metrics_ct_fixed.nii.gz" -L warped_seg="$D/metrics_ct_warped.nii.gz" -o "$T/nosp.lmt"
expect_fail "no spacing" 1 "record 1: no 'spacing' metadata \(give --spacing\)" lm-metrics "$T/nosp.lmt"
run lm-metrics -q --spacing 1.5,0.800000011920929,3 "$T/nosp.lmt"
agree ct_warped "$T/out" 1 hd95_mean hd95_medpy
lm-cat -q -n -a fixed_seg="$D/metrics_ct_fixed.nii.gz" -L warped_seg="$D/metrics_ct_warped.nii.gz" -m spacing="$SP" -o "$T/float.lmt"
expect_fail "float label map" 1 "fixed_seg: a label map must have an integer dtype, not F32" lm-metrics "$T/float.lmt"

# a raw safetensors record with a NaN in the flow: header, then U8 maps [1,1,2,2,2], F32 flow
st_record() { # st_record OUT NAN?
    local hdr='{"fixed_seg":{"dtype":"U8","shape":[1,1,2,2,2],"data_offsets":[0,8]},"warped_seg":{"dtype":"U8","shape":[1,1,2,2,2],"data_offsets":[8,16]},"flow":{"dtype":"F32","shape":[1,3,2,2,2],"data_offsets":[16,112]},"__metadata__":{"spacing":"[1,1,1]","pair":"tiny"}}'
    while [ $(( ${#hdr} % 8 )) -ne 0 ]; do hdr="$hdr "; done
    local n=${#hdr}
    {
        printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((n & 255)) $(((n >> 8) & 255)) 0 0)"
        printf '%s' "$hdr"
        printf '\x01\x01\x01\x01\x00\x00\x00\x00\x01\x01\x00\x00\x01\x01\x00\x00'
        if [ "$2" = nan ]; then printf '\x00\x00\xc0\x7f'; else printf '\x00\x00\x00\x00'; fi
        head -c 92 /dev/zero
    } >"$1"
}
st_record "$T/ok.safetensors" zero
run lm-metrics -q "$T/ok.safetensors"
check "a hand-made record scores (Dice 2*2/(4+4) = 50, det 1)" [ "$(value "$T/out" tiny dice_mean)" = 50.000000 -a "$(value "$T/out" tiny jac_nonpos_pct)" = 0.000000 ]
st_record "$T/nan.safetensors" nan
expect_fail "NaN in the flow" 1 "^lm-metrics: $T/nan.safetensors: record 1: flow: 1 non-finite values \(the first at element 0\)$" lm-metrics -o "$T/never.tsv" "$T/nan.safetensors"
check "no output after NaN" [ ! -e "$T/never.tsv" ]
expect_fail "empty input" 1 "no records" lm-metrics /dev/null

# ---- usage errors ----
expect_fail "bad --hd" 2 "--hd: 'foo' is not medpy or monai" lm-metrics --hd=foo "$T/a.lmt"
expect_fail "bad --jac" 2 "--jac" lm-metrics --jac=itk "$T/a.lmt"
expect_fail "bad --spacing" 2 "--spacing" lm-metrics --spacing 1,2 "$T/a.lmt"
expect_fail "bad --labels" 2 "--labels" lm-metrics --labels 1,x "$T/a.lmt"
expect_fail "--labels overlaps --ignore" 2 "also in the ignore set" lm-metrics --labels 0,1 "$T/a.lmt"
expect_fail "--flow without a standalone pair" 2 "--flow needs" lm-metrics --flow "$D/metrics_jac.safetensors" "$T/a.lmt"
expect_fail "half a standalone pair" 2 "needs both" lm-metrics -F "$D/metrics_ct_fixed.nii.gz"
expect_fail "standalone with --initial" 2 "--initial applies to streams" lm-metrics --initial -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_ct_warped.nii.gz"

# standalone with a field from a stream
run lm-metrics -q -F "$D/metrics_ct_fixed.nii.gz" -W "$D/metrics_ct_warped.nii.gz" --flow "$D/metrics_jac.safetensors"
check "--flow in standalone mode" [ "$rc" -eq 0 -a "$(value "$T/out" metrics_ct_warped jac_nonpos_pct)" = 3.828125 ]
finish
