# CLI tests of lm-register's NIfTI mode: NIfTI pairs (operands or --pairs) preprocessed in the
# same process give the same records, bit for bit, as lm-preprocess | lm-register; the default
# target grid is the checkpoint's (an image of another size is resampled onto it); the
# half-resolution config gets --half from the checkpoint; bad input and option mixes refused
# with one line, nothing written. NIfTI output (-o FILE.nii[.gz] or -o DIR): the files of
# `lm-register ... -o s.lmt; lm-warp s.lmt -o PATH`, byte for byte, and none after a failure.
# Uses a seeded random stand-in LLM (no ../shared needed).
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
# ---- NIfTI output: lm-register -o FILE.nii.gz / -o DIR = lm-register -o s.lmt; lm-warp s.lmt
# An untrained network's field is ~0 (warped labels = moving labels either way); with python3 the
# checkpoints get constant flow-head biases, a field of several voxels, so that a wrong field,
# grid or label mode shows in the files.
bias_ckpt() { # bias_ckpt IN OUT
    python3 - "$1" "$2" <<'PY'
import json, struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
for name, v in (('dec.s1.head.bias', (1.6, -0.7, 2.3)), ('dec.s2.head.bias', (0.4, 0.3, -0.2))):
    s, e = h[name]['data_offsets']
    b[8 + n + s:8 + n + e] = struct.pack('<3f', *v)
open(sys.argv[2], 'wb').write(b)
PY
}
FULL=$T/ck.safetensors HALF=$T/half.safetensors
if command -v python3 >/dev/null && bias_ckpt "$FULL" "$T/ckb.safetensors" &&
    bias_ckpt "$HALF" "$T/halfb.safetensors"; then
    FULL=$T/ckb.safetensors HALF=$T/halfb.safetensors
    lm-register -q --device cpu -w "$FULL" --pair b "$S/synth001_mr.nii.gz" "$S/synth001_ct.nii.gz" \
        "$S/synth001_mr_seg.nii.gz" "$S/synth001_ct_seg.nii.gz" -o "$T/b.lmt"
    mkdir "$T/bn" "$T/bl"
    lm-warp -q "$T/b.lmt" -o "$T/bn" && lm-warp -q -L "$T/b.lmt" -o "$T/bl"
    check "biased checkpoint: a field of voxels, one-hot labels differ from nearest" \
        eval '! cmp -s "$T/bn/b_warped_seg.nii.gz" "$T/bl/b_warped_seg.nii.gz" &&
              ! cmp -s "$T/bn/b_warped.nii.gz" "$T/syn/synth001_mr.nii.gz"'
else
    skip "biased checkpoint" "python3 is absent: fields ~0"
fi
# same_dir A B: the same names (hidden ones too: no temporaries left), each file byte for byte
same_dir() {
    [ -n "$(ls -A "$1")" ] && [ "$(ls -A "$1")" = "$(ls -A "$2")" ] || return 1
    local f
    for f in "$1"/*; do cmp -s "$f" "$2/${f##*/}" || return 1; done
}
OPS="$S/synth001_mr.nii.gz $S/synth001_ct.nii.gz"
SEGS="$S/synth001_mr_seg.nii.gz $S/synth001_ct_seg.nii.gz"
k=0
for ck in "$FULL" "$HALF"; do
    res=full && [ "$ck" = "$HALF" ] && res=half
    for labels in "" "$SEGS"; do
        for opt in "" "-L -e"; do
            k=$((k + 1)) c="$res resolution, $([ -n "$labels" ] && echo with || echo no) labels${opt:+, -L, -e}"
            mkdir "$T/r$k" "$T/n$k"
            # shellcheck disable=SC2086
            {
                lm-register -q --device cpu -w "$ck" $OPS $labels -o "$T/r$k.lmt"
                lm-warp -q ${opt:+-L} "$T/r$k.lmt" -o "$T/r$k" ${opt:+-e "$T/r$k"}
                lm-warp -q ${opt:+-L} "$T/r$k.lmt" -o "$T/r$k/one.nii.gz" ${opt:+-e "$T/r$k/onef.nii"}
                run lm-register -q --device cpu -w "$ck" $OPS $labels ${opt:+-L} -o "$T/n$k" \
                    ${opt:+-e "$T/n$k"}
                check "-o DIR runs, nothing on stdout: $c" [ "$rc" -eq 0 -a ! -s "$T/out" ]
                lm-register -q --device cpu -w "$ck" $OPS $labels ${opt:+-L} -o "$T/n$k/one.nii.gz" \
                    ${opt:+-e "$T/n$k/onef.nii"}
            }
            check "-o DIR and -o FILE.nii.gz = lm-register | lm-warp, byte for byte: $c" \
                same_dir "$T/r$k" "$T/n$k"
        done
    done
done
check "labels: the label map is written" [ -s "$T/n3/synth001_mr_warped_seg.nii.gz" -a -s "$T/n3/one_seg.nii.gz" ]
check "-e: the field is written" [ -s "$T/n2/synth001_mr_field.nii.gz" -a -s "$T/n2/onef.nii" ]
run lm-info "$T/n8/synth001_mr_warped.nii.gz" "$T/n8/synth001_mr_warped_seg.nii.gz"
check "half: the warped image at 32^3, its labels at 64^3" \
    eval 'grep -q "shape \[32,32,32\]" "$T/out" && grep -q "shape \[64,64,64\]" "$T/out"'

# stream input (a file, stdin) and --pairs, several pairs into a directory
lm-preprocess -q --shape 32x32x32 --pairs "$S/pairs.tsv" -o "$T/p.lmt"
lm-register -q --device cpu -w "$FULL" "$T/p.lmt" -o "$T/rp.lmt"
mkdir "$T/rp" "$T/np" "$T/ni" "$T/nl"
lm-warp -q "$T/rp.lmt" -o "$T/rp"
run lm-register -q --device cpu -w "$FULL" "$T/p.lmt" -o "$T/np"
check "stream in, -o DIR = lm-register | lm-warp, byte for byte" same_dir "$T/rp" "$T/np"
lm-register -q --device cpu -w "$FULL" -o "$T/ni" <"$T/p.lmt"
check "stdin in, -o DIR = lm-register | lm-warp, byte for byte" same_dir "$T/rp" "$T/ni"
check "two pairs: four files" [ "$(ls "$T/np" | wc -l)" -eq 4 ]
lm-register -q --device cpu -w "$FULL" --pairs "$S/pairs.tsv" -o "$T/nl"
check "--pairs, -o DIR = lm-preprocess | lm-register | lm-warp, byte for byte" same_dir "$T/rp" "$T/nl"

# more files than lm_atomic keeps temporaries (64): 22 pairs x 3 files, all staged, all renamed
for i in $(seq -w 1 22); do
    printf '%s\t%s\t%s\t%s\tq%s\n' "$S/synth001_mr.nii.gz" "$S/synth001_ct.nii.gz" \
        "$S/synth001_mr_seg.nii.gz" "$S/synth001_ct_seg.nii.gz" "$i"
done >"$T/many.tsv"
mkdir "$T/many"
run lm-register -q -w "$FULL" --pairs "$T/many.tsv" -o "$T/many" -e "$T/many"
check "22 pairs with labels and -e: 66 files, no temporary" \
    eval '[ "$rc" -eq 0 ] && [ "$(ls -A "$T/many" | grep -c "^q[0-9]*_.*\.nii\.gz$")" -eq 66 ] &&
          [ "$(ls -A "$T/many" | wc -l)" -eq 66 ]'

# refusals: one line, exit 1, no output file (and no temporary) left
mkdir "$T/empty"
expect_fail "-o FILE with several pairs" 1 "names one NIfTI file but there are 2 pairs" \
    lm-register -w "$FULL" --pairs "$S/pairs.tsv" -o "$T/empty/x.nii.gz"
expect_fail "-o FILE with several records" 1 "p.lmt: -o names one NIfTI file but the stream has several records" \
    lm-register -w "$FULL" "$T/p.lmt" -o "$T/empty/x.nii.gz"
expect_fail "-e FILE with several pairs" 1 "^lm-register: --export-field names one NIfTI file" \
    lm-register -w "$FULL" --pairs "$S/pairs.tsv" -o "$T/empty" -e "$T/empty/f.nii.gz"
check "several pairs: nothing written" [ -z "$(ls -A "$T/empty")" ]
mkdir "$T/ro" && chmod 555 "$T/ro"
RO=$T/ro
if touch "$RO/probe" 2>/dev/null; then rm -f "$RO/probe"; RO=/proc; fi # root writes anyway
expect_fail "an unwritable directory" 1 "^lm-register: $RO: cannot create output" \
    lm-register -w "$FULL" $OPS -o "$RO"
check "an unwritable directory: nothing written" [ -z "$(ls -A "$T/ro")" ]
# the second pair fails after the first is done: neither pair's files, an old file kept
printf 'old' >"$T/empty/synth001_mr_warped.nii.gz"
printf '%s\t%s\t%s\t%s\n' "$S/synth001_mr.nii.gz" "$S/synth001_ct.nii.gz" "$S/synth001_mr_seg.nii.gz" \
    "$S/synth001_ct_seg.nii.gz" "$T/bad.nii.gz" "$S/synth002_ct.nii.gz" "" "" | sed 's/\t*$//' >"$T/bad.tsv"
expect_fail "a failing pair" 1 "bad.nii.gz" \
    lm-register -w "$FULL" --pairs "$T/bad.tsv" -o "$T/empty"
check "a failing pair: no output file, the old one kept" \
    eval '[ "$(ls -A "$T/empty")" = synth001_mr_warped.nii.gz ] && [ "$(cat "$T/empty/synth001_mr_warped.nii.gz")" = old ]'
# a rename that fails when the files go into place (the second pair's name is taken by a
# directory): the files renamed before it are put back as they were, the rest removed
mkdir -p "$T/rb/synth002_warped.nii.gz/x"
printf 'old' >"$T/rb/synth001_warped.nii.gz"
expect_fail "a rename failing at the end" 1 "synth002_warped.nii.gz" \
    lm-register -w "$FULL" --pairs "$S/pairs.tsv" -o "$T/rb"
check "a rename failing at the end: the old file put back, no other file, no temporary" \
    eval '[ "$(ls -A "$T/rb" | tr "\n" " ")" = "synth001_warped.nii.gz synth002_warped.nii.gz " ] &&
          [ "$(cat "$T/rb/synth001_warped.nii.gz")" = old ] && [ -d "$T/rb/synth002_warped.nii.gz/x" ]'
lm-cat -q --new -a moving="$S/synth002_mr.nii.gz" -o "$T/odd.lmt"
cat "$T/p.lmt" "$T/odd.lmt" >"$T/bad.lmt"
expect_fail "a failing record" 1 "bad.lmt: record 3: " \
    lm-register -w "$FULL" "$T/bad.lmt" -o "$T/empty"
check "a failing record: no output file" [ "$(ls -A "$T/empty")" = synth001_mr_warped.nii.gz ]
expect_fail "--export-field with a stream output" 2 "for NIfTI output" \
    lm-register -w "$FULL" -e "$T/empty" "$T/p.lmt" -o "$T/x.lmt"
expect_fail "--labels-linear with a stream output" 2 "for NIfTI output" \
    lm-register -w "$FULL" -L "$T/p.lmt" -o "$T/x.lmt"
expect_fail "a bad --export-field name" 2 "neither a directory" \
    lm-register -w "$FULL" -e "$T/f.txt" "$T/p.lmt" -o "$T/empty"
check "no stream after the refusals" [ ! -e "$T/x.lmt" ]
finish
