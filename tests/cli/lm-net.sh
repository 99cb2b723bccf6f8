# CLI tests of the network programs: lm-init, lm-encode | lm-leb | lm-decode against
# lm-register (bit-identical flows on the CPU backend) on a tiny config with stories260K's
# layers (skipped without ../shared) and with a tiny random LLM folder made here (stdlib
# python3), half-resolution outputs, refusal of a different LLM, and bad input.
. "$LM_SRCDIR/tests/lib/sh.sh"
W=$SHARED/weights/stories260K-hf

# one record with moving/fixed [1,1,D,H,W] and labels, from lm-synth + lm-preprocess
lm-synth -q -n 2 --shape 32x32x32 -o "$T/syn" && lm-preprocess -q --pairs "$T/syn/pairs.tsv" -o "$T/pre.lmt"
check "input stream" [ -s "$T/pre.lmt" ]
lm-synth -q -n 1 --shape 64x64x64 -o "$T/syn64" && lm-preprocess -q --half --pairs "$T/syn64/pairs.tsv" -o "$T/half.lmt"

# flow of a stream, metadata normalised so that only the tensor bytes are compared
flows() { lm-cat -q -f -s "$2" -m history=x -r <"$1"; }

pipeline_vs_register() { # NAME CKPT LLM INPUT FLOWS
    local name=$1 ck=$2 llm=$3 in=$4 sel=${5:-flow}
    lm-encode -q --device cpu -w "$ck" "$in" | lm-leb -q --device cpu -w "$ck" --llm "$llm" |
        lm-decode -q --device cpu -w "$ck" -o "$T/piped.lmt"
    run lm-register -q --device cpu -w "$ck" --llm "$llm" "$in" -o "$T/reg.lmt"
    check "$name: lm-register runs" [ "$rc" -eq 0 -a -s "$T/reg.lmt" ]
    flows "$T/piped.lmt" "$sel" >"$T/a.st"
    flows "$T/reg.lmt" "$sel" >"$T/b.st"
    check "$name: piped stages and lm-register give bit-identical $sel" cmp -s "$T/a.st" "$T/b.st"
    run lm-info "$T/piped.lmt"
    check "$name: pass-through and stage outputs" grep -q 'moving_seg' "$T/out"
    check "$name: consumed features dropped" sh -c "! grep -Eq '^ *(tokens|fm[1-5]|ff[1-5]) ' '$T/out'"
    # --keep: lm-leb passes on fm5/ff5 and lm-decode tokens and fm1..4/ff1..4; the flow the same
    lm-encode -q --device cpu -w "$ck" "$in" | lm-leb -q -k --device cpu -w "$ck" --llm "$llm" |
        lm-decode -q --keep --device cpu -w "$ck" -o "$T/kept.lmt"
    flows "$T/kept.lmt" "$sel" >"$T/c.st"
    check "$name: --keep gives the same $sel" cmp -s "$T/a.st" "$T/c.st"
    run lm-info "$T/kept.lmt"
    check "$name: --keep passes tokens and features on" sh -c "grep -Eq '^ *tokens ' '$T/out' && grep -Eq '^ *fm1 ' '$T/out' && grep -Eq '^ *ff5 ' '$T/out'"
}

if [ -d "$W" ]; then
    run lm-init --preset tiny --llm "$W" --layers 2,3 --seed 3 -o "$T/ck.safetensors"
    check "lm-init stories260K" [ "$rc" -eq 0 -a -s "$T/ck.safetensors" ]
    pipeline_vs_register "stories260K" "$T/ck.safetensors" "$W" "$T/pre.lmt"
    cp "$T/kept.lmt" "$T/st_kept.lmt"
    run lm-info "$T/reg.lmt"
    check "flow is [1,3,32,32,32] F32" grep -q 'flow .*F32 *\[1,3,32,32,32\]' "$T/out"
    check "two records" [ "$(grep -c '^record' "$T/out")" -eq 2 ]
    # half-resolution config: network at 32^3, flow_full at 64^3
    run lm-init --preset tiny --config '{"half":true}' --llm "$W" -o "$T/half.safetensors"
    pipeline_vs_register "stories260K half" "$T/half.safetensors" "$W" "$T/half.lmt" flow,flow_full
    run lm-info "$T/reg.lmt"
    check "half: flow_full is [1,3,64,64,64]" grep -q 'flow_full .*\[1,3,64,64,64\]' "$T/out"
    # the vit ablation: ViT blocks of the LLM's width and heads, no LLM layer, no checksum
    run lm-init --preset tiny --config '{"ablation":"vit"}' --llm "$W" -o "$T/vit.safetensors"
    check "lm-init vit" [ "$rc" -eq 0 -a -s "$T/vit.safetensors" ]
    run lm-info "$T/vit.safetensors"
    check "vit: leb1.vit.qkv.weight [192,64]" grep -q 'leb1.vit.qkv.weight .*\[192,64\]' "$T/out"
    check "vit: no LoRA tensors" sh -c "! grep -q 'lora_[qkv]\.' '$T/out'"
    pipeline_vs_register "stories260K vit" "$T/vit.safetensors" "$W" "$T/pre.lmt"
    expect_fail "vit with --layers" 2 "this config uses no LLM layers" \
        lm-init --preset tiny --config '{"ablation":"vit"}' --llm "$W" --layers 2,3 -o "$T/x.safetensors"
else
    skip "stories260K" "$W is absent"
fi

# a tiny random LLaMA folder (F32, 3 layers, D 16, 4 heads, 2 KV heads)
if command -v python3 >/dev/null; then
    cat >"$T/mkllm.py" <<'PY'
import json, os, random, struct, sys
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
D, F, nq, nkv, hd, L = 16, 24, 4, 2, 4, 3
json.dump({"model_type": "llama", "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
           "num_attention_heads": nq, "num_key_value_heads": nkv, "head_dim": hd,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "vocab_size": 8},
          open(os.path.join(d, "config.json"), "w"))
random.seed(int(sys.argv[2]))
shapes = {"model.embed_tokens.weight": [8, D], "model.norm.weight": [D]}
for l in range(L):
    p = "model.layers.%d." % l
    shapes.update({p + "input_layernorm.weight": [D], p + "post_attention_layernorm.weight": [D],
                   p + "self_attn.q_proj.weight": [nq * hd, D], p + "self_attn.k_proj.weight": [nkv * hd, D],
                   p + "self_attn.v_proj.weight": [nkv * hd, D], p + "self_attn.o_proj.weight": [D, nq * hd],
                   p + "mlp.gate_proj.weight": [F, D], p + "mlp.up_proj.weight": [F, D],
                   p + "mlp.down_proj.weight": [D, F]})
hdr, data, off = {}, b"", 0
for k, s in shapes.items():
    n = 1
    for x in s: n *= x
    vals = [1.0 + 0.2 * random.uniform(-1, 1) if k.endswith("norm.weight") else random.uniform(-0.4, 0.4) for _ in range(n)]
    b = struct.pack("<%df" % n, *vals)
    hdr[k] = {"dtype": "F32", "shape": s, "data_offsets": [off, off + len(b)]}
    data += b; off += len(b)
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(os.path.join(d, "model.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
    python3 "$T/mkllm.py" "$T/rnd" 5
    run lm-init --preset tiny --llm "$T/rnd" --seed 9 -o "$T/rck.safetensors"
    check "lm-init random LLM (default layers 0,1)" [ "$rc" -eq 0 ]
    pipeline_vs_register "random LLM" "$T/rck.safetensors" "$T/rnd" "$T/pre.lmt"
    run lm-init --preset tiny --config '{"ablation":"one-leb","restore":"figure","combine":"add"}' \
        --llm "$T/rnd" --layers 2 -o "$T/r1.safetensors"
    check "lm-init one-leb, figure, add" [ "$rc" -eq 0 ]
    pipeline_vs_register "random LLM one-leb figure add" "$T/r1.safetensors" "$T/rnd" "$T/pre.lmt"
    # another LLM than the checkpoint's: refused
    python3 "$T/mkllm.py" "$T/rnd2" 6
    lm-encode -q --device cpu -w "$T/rck.safetensors" "$T/pre.lmt" -o "$T/enc.lmt"
    expect_fail "a different LLM is refused" 1 "differ from those the checkpoint was made with" \
        lm-leb -w "$T/rck.safetensors" --llm "$T/rnd2" "$T/enc.lmt" -o "$T/x.lmt"
    check "no output after the refusal" [ ! -e "$T/x.lmt" ]
else
    skip "random LLM" "python3 is absent"
fi

# usage and data errors (one line, exit code, no output)
run lm-encode --help
check "help" [ "$rc" -eq 0 -a -s "$T/out" ]
expect_fail "no checkpoint" 2 "-w CKPT is required" lm-encode "$T/pre.lmt"
expect_fail "lm-init without -o" 2 "-o CKPT is required" lm-init --preset tiny
expect_fail "unknown preset" 2 "unknown preset" lm-init --preset huge -o "$T/x.safetensors"
expect_fail "vit needs the LLM's width" 2 "--llm DIR is required" lm-init --config '{"ablation":"vit"}' -o "$T/x.safetensors"
expect_fail "bad config key" 1 "unknown key 'colour'" lm-init --config '{"colour":1}' -o "$T/x.safetensors"
lm-cat -q -r -n -a moving="$T/syn/synth001_mr.nii.gz" -o "$T/raw.safetensors"
expect_fail "not a checkpoint" 1 "raw.safetensors: not a network checkpoint" lm-encode -w "$T/raw.safetensors" "$T/pre.lmt"
expect_fail "cuda without a GPU" 1 "cuda" env LM_DEVICE= lm-encode --device cuda:99 -w x "$T/pre.lmt"
if [ -s "$T/ck.safetensors" ]; then
    lm-preprocess -q --pairs "$T/syn64/pairs.tsv" -o "$T/full64.lmt"
    expect_fail "wrong grid" 1 "record 1: image grid \[64,64,64\] is not the network grid" \
        lm-encode -w "$T/ck.safetensors" "$T/full64.lmt" -o "$T/x.lmt"
    lm-cat -q -d fm3,flow "$T/st_kept.lmt" -o "$T/nofm3.lmt"
    expect_fail "missing tensor" 1 "record 1: no 'fm3' tensor" lm-decode -w "$T/ck.safetensors" "$T/nofm3.lmt" -o "$T/x.lmt"
    head -c 300 "$T/pre.lmt" >"$T/cut.lmt"
    expect_fail "truncated stream" 1 "truncated" lm-encode -w "$T/ck.safetensors" "$T/cut.lmt" -o "$T/x.lmt"
fi
check "no output after failures" [ ! -e "$T/x.lmt" -a ! -e "$T/x.safetensors" ]
run lm-init --random-llm "$T/rllm" --seed 7
check "--random-llm writes a folder" [ "$rc" -eq 0 -a -s "$T/rllm/config.json" -a -s "$T/rllm/model.safetensors" ]
run lm-info -n "$T/rllm/model.safetensors"
check "--random-llm has stories260K's tensors" grep -q 'model.layers.4.self_attn.k_proj.weight F32  \[32,64\]' "$T/out"
lm-init --random-llm "$T/rllm2" --seed 7
check "--random-llm is seeded" cmp -s "$T/rllm/model.safetensors" "$T/rllm2/model.safetensors"
expect_fail "vit has no RoPE" 1 "no RoPE" lm-init --config '{"ablation":"vit","rope":true}' --llm "$T/rllm" -o "$T/x.safetensors"
run lm-init -q --random-llm "$T/rllm4" --random-shape 32,48,2,4,2 --seed 2
check "--random-shape D,FFN,LAYERS,HEADS,KV" sh -c "lm-info -n '$T/rllm4/model.safetensors' | grep -q 'model.layers.1.mlp.down_proj.weight F32  \[32,48\]' && grep -q '\"num_hidden_layers\": 2' '$T/rllm4/config.json'"
expect_fail "--random-shape without --random-llm" 2 "goes with --random-llm" lm-init --random-shape llama3 -o "$T/x.safetensors"
expect_fail "--random-shape inconsistent" 1 "inconsistent shape" lm-init --random-llm "$T/rllm5" --random-shape 33,48,2,4,2
check "--random-shape inconsistent: no folder" [ ! -e "$T/rllm5" ]
run lm-init -q --preset tiny --random-llm "$T/rllm3" -o "$T/rck.safetensors"
check "--random-llm with -o makes a checkpoint over it" [ "$rc" -eq 0 -a -s "$T/rck.safetensors" ]
# the zstd level of the output: LM_ZSTD_LEVEL over the defaults, the same records; a bad value
# refused before any record is read
LM_ZSTD_LEVEL=7 lm-encode -q --device cpu -w "$T/rck.safetensors" "$T/pre.lmt" -o "$T/l7.lmt"
lm-encode -q --device cpu -w "$T/rck.safetensors" "$T/pre.lmt" -o "$T/l1.lmt"
flows "$T/l7.lmt" fm1,ff5,moving >"$T/a.st"
flows "$T/l1.lmt" fm1,ff5,moving >"$T/b.st"
check "LM_ZSTD_LEVEL=7: the same records" cmp -s "$T/a.st" "$T/b.st"
check "LM_ZSTD_LEVEL=7: another compression" sh -c "! cmp -s '$T/l7.lmt' '$T/l1.lmt'"
expect_fail "bad LM_ZSTD_LEVEL" 1 "stdout: LM_ZSTD_LEVEL: 'fast' is not a zstd level" \
    env LM_ZSTD_LEVEL=fast lm-encode -w "$T/rck.safetensors" "$T/pre.lmt"
finish
