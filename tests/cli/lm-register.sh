# CLI tests of lm-register's NIfTI mode: NIfTI pairs (operands or --pairs) preprocessed in the
# same process give the same records, bit for bit, as lm-preprocess | lm-register; the default
# target grid is the checkpoint's (an image of another size is resampled onto it); the
# half-resolution config gets --half from the checkpoint; bad input and option mixes refused
# with one line, nothing written. Uses a seeded random stand-in LLM (no ../shared needed).
. "$LM_SRCDIR/tests/lib/sh.sh"

lm-init -q --preset tiny --random-llm "$T/rllm" -o "$T/ck.safetensors"
check "checkpoint" [ -s "$T/ck.safetensors" ]
lm-synth -q --seed 3 -n 2 --shape 40x36x44 -o "$T/syn"
S=$T/syn

# tensors of a stream, metadata normalised (history differs between the two commands)
tensors() { lm-cat -q -f -s "$2" -m history=x -r <"$1"; }
SEL=moving,fixed,moving_seg,fixed_seg,flow

run lm-register -q --device cpu -w "$T/ck.safetensors" --pairs "$S/pairs.tsv" -o "$T/a.lmt"
check "--pairs runs" [ "$rc" -eq 0 -a -s "$T/a.lmt" ]
lm-preprocess -q --shape 32x32x32 --pairs "$S/pairs.tsv" |
    lm-register -q --device cpu -w "$T/ck.safetensors" -o "$T/b.lmt"
tensors "$T/a.lmt" "$SEL" >"$T/a.st"
tensors "$T/b.lmt" "$SEL" >"$T/b.st"
check "--pairs = lm-preprocess --shape (the checkpoint's grid) | lm-register, bit for bit" \
    cmp -s "$T/a.st" "$T/b.st"
run lm-info "$T/a.lmt"
check "two records" grep -q '^2 records' "$T/out"
check "40x36x44 images resampled onto the 32^3 grid" grep -q 'flow .*\[1,3,32,32,32\]' "$T/out"
check "pair ids from the list" grep -q '@pair = synth002' "$T/out"

# operands, with labels, and preprocessing options passed through
run lm-register -q --device cpu -w "$T/ck.safetensors" --pair p1 --modality-moving raw \
    "$S/synth001_mr.nii.gz" "$S/synth001_ct.nii.gz" "$S/synth001_mr_seg.nii.gz" \
    "$S/synth001_ct_seg.nii.gz" -o "$T/c.lmt"
check "operands run" [ "$rc" -eq 0 -a -s "$T/c.lmt" ]
lm-preprocess -q --shape 32x32x32 --pair p1 --modality-moving raw "$S/synth001_mr.nii.gz" \
    "$S/synth001_ct.nii.gz" "$S/synth001_mr_seg.nii.gz" "$S/synth001_ct_seg.nii.gz" |
    lm-register -q --device cpu -w "$T/ck.safetensors" -o "$T/d.lmt"
tensors "$T/c.lmt" "$SEL" >"$T/c.st"
tensors "$T/d.lmt" "$SEL" >"$T/d.st"
check "operands = lm-preprocess | lm-register, bit for bit" cmp -s "$T/c.st" "$T/d.st"
run lm-info "$T/c.lmt"
check "--pair id kept" grep -q '@pair = p1' "$T/out"
check "--modality-moving kept" grep -q '@modality_moving = raw' "$T/out"

# a half-resolution checkpoint: --half comes from its config
lm-init -q --preset tiny --config '{"half":true}' --llm "$T/rllm" -o "$T/half.safetensors"
lm-synth -q --seed 4 -n 1 --shape 64x64x64 -o "$T/syn64"
run lm-register -q --device cpu -w "$T/half.safetensors" --pairs "$T/syn64/pairs.tsv" -o "$T/h.lmt"
check "half checkpoint runs on NIfTI" [ "$rc" -eq 0 -a -s "$T/h.lmt" ]
run lm-info "$T/h.lmt"
check "half: images pooled to 32^3, labels and flow_full at 64^3" \
    sh -c "grep -q 'moving .*\[1,1,32,32,32\]' '$T/out' && grep -q 'moving_seg .*\[1,1,64,64,64\]' '$T/out' && grep -q 'flow_full .*\[1,3,64,64,64\]' '$T/out'"

# bad input: one line, non-zero exit, no output file
expect_fail "--half with a full-resolution checkpoint" 2 "not a half-resolution" \
    lm-register -w "$T/ck.safetensors" --half --pairs "$S/pairs.tsv" -o "$T/x.lmt"
check "no output after a refusal" [ ! -e "$T/x.lmt" ]
expect_fail "missing file" 1 "nope.nii.gz: No such file" \
    lm-register -w "$T/ck.safetensors" "$T/nope.nii.gz" "$S/synth001_ct.nii.gz" -o "$T/x.lmt"
check "no output after a missing file" [ ! -e "$T/x.lmt" ]
cp "$S/synth001_ct.nii.gz" "$T/bad.nii.gz" && printf 'garbage' | dd of="$T/bad.nii.gz" bs=1 seek=100 conv=notrunc 2>/dev/null
run lm-register -w "$T/ck.safetensors" "$T/bad.nii.gz" "$S/synth001_ct.nii.gz" -o "$T/x.lmt"
check "a corrupt NIfTI file fails" [ "$rc" -eq 1 -a "$(wc -l <"$T/err")" -eq 1 ]
check "no output after a corrupt file" [ ! -e "$T/x.lmt" ]
expect_fail "preprocessing options with a stream" 2 "for NIfTI input" \
    lm-register -w "$T/ck.safetensors" --half "$T/a.lmt"
expect_fail "--pairs with operands" 2 "exclude each other" \
    lm-register -w "$T/ck.safetensors" --pairs "$S/pairs.tsv" "$S/synth001_mr.nii.gz"
expect_fail "three NIfTI operands" 2 "expected one STREAM" \
    lm-register -w "$T/ck.safetensors" "$S/synth001_mr.nii.gz" "$S/synth001_ct.nii.gz" \
    "$S/synth001_mr_seg.nii.gz"
finish
