# CLI tests of lm-info: help, usage errors, bad input, every input kind.
. "$LM_SRCDIR/tests/lib/sh.sh"
D=$LM_SRCDIR/tests/data

run lm-info --help
check "help exits 0" [ "$rc" -eq 0 ]
check "help goes to stdout" grep -q -- '--json' "$T/out"
check "help leaves stderr empty" [ ! -s "$T/err" ]
run lm-info -V
check "version" grep -q 'llm-morph' "$T/out"

expect_fail "unknown option is a usage error" 2 "unknown option" lm-info --bogus
expect_fail "missing argument is a usage error" 2 "needs an argument" lm-info --tensor
expect_fail "missing file" 1 "^lm-info: $T/nope.lmt: No such file or directory$" lm-info "$T/nope.lmt"
printf 'garbage that is not a tensor file at all, not even close' >"$T/garbage.bin"
expect_fail "garbage file" 1 "^lm-info: $T/garbage.bin: " lm-info "$T/garbage.bin"
: >"$T/empty.lmt"
expect_fail "empty file" 1 "^lm-info: $T/empty.lmt: empty file$" lm-info "$T/empty.lmt"
expect_fail "directory" 1 "^lm-info: $T: is a directory$" lm-info "$T"
head -c 700 "$D/py_fixture.safetensors" >"$T/trunc.safetensors"
expect_fail "truncated safetensors" 1 "^lm-info: $T/trunc.safetensors: truncated" lm-info "$T/trunc.safetensors"
expect_fail "one bad file among good ones prints nothing" 1 "nope" \
    lm-info "$D/py_fixture.safetensors" "$T/nope"

run lm-info "$D/py_fixture.safetensors"
check "safetensors lists tensors" grep -q '^  t_bf16 .*BF16 \[2,4\]' "$T/out"
check "safetensors shows metadata" grep -q '@pair = case7' "$T/out"
check "safetensors counts NaN and Inf" grep -q 't_f32 .*nan 1 inf 2' "$T/out"
run lm-info --json "$D/py_fixture.safetensors"
check "json output" grep -q '"format":[[:space:]]*"safetensors"' "$T/out"
check "json tensor" grep -q '"name":[[:space:]]*"t_f32_3d"' "$T/out"
run lm-info -n -t t_u8 "$D/py_fixture.safetensors"
check "--tensor filters" [ "$(grep -c '^  t_' "$T/out")" -eq 1 ]
run lm-info "$D/nifti2_small.nii.gz"
check "nifti-2 header" grep -q 'NIfTI-2' "$T/out"
check "nifti-2 scaled values" grep -q 'min 6.5 .*max 95' "$T/out"
run lm-info "$D/nifti1_4d.nii"
check "4-D nifti keeps channels" grep -q '\[3,4,3,2\] (C,D,H,W)' "$T/out"

if have_shared; then
    run lm-info -n "$SHARED/weights/stories260K-hf/model.safetensors"
    check "LLM checkpoint lists layers" grep -q 'model.layers.4.self_attn.k_proj.weight F32  \[32,64\]' "$T/out"
    run lm-info "$SHARED/data/totalseg-abdomen/example_ct_sm.nii.gz"
    check "real CT" grep -q 'shape \[122,101,30\]' "$T/out"
else
    skip "shared data" "../shared is absent"
fi
finish
