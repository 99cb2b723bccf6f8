#!/usr/bin/env bash
# bench-net.sh [BUILD] — the network on the CPU backend against PyTorch, in the same run:
#  (1) forward time per pair at the abdomen config (192x160x192 images, half -> 96x80x96 network
#      input, L = 180, phi_full at the end) with two LLaMA-3-shaped random layers (D 4096, FFN
#      14336, 32 heads, 8 KV heads, F32, LoRA r 64): BUILD/tests/bench/bench_net --forward (the
#      net built in memory, lm_net_forward timed) against net_torch.py (the independent reference
#      tests/reference/llm_morph_ref.py with transformers LlamaDecoderLayer, random init, eval,
#      no_grad, float32, torch.set_num_threads = the same thread count). Best of REPS forwards
#      each after a warm-up; peak RSS of each process. Target: C faster than PyTorch.
#  (2) the stage pipeline lm-encode | lm-leb | lm-decode against lm-register, streaming the same
#      4 abdomen pairs (lm-synth 192x160x192 + lm-preprocess --half), whole commands, best of
#      RUNS; per-pair ratio, target <= 1.25x. Also the CPU time of both (user+sys of all their
#      processes), which other load on a shared machine disturbs less than the wall time.
#      By default the LLM is REDUCED: lm-init --random-llm (64 wide, stories260K-shaped), so the
#      ratio measures the stage/stream overhead around the encoder/decoder work alone, the
#      hardest case for the pipeline. LLM=llama3 uses two random LLaMA-3-8B-shaped layers
#      (lm-init --random-shape llama3: a 1.7 GB folder written under TMPDIR; each process that
#      runs the LEBs holds the two layers, ~2 GB): the paper's abdomen config, where both sides
#      also share the LEBs' work.
# Needs python3 with torch and transformers for (1) (skipped without them); ~24 GB machine:
# each side of (1) peaks at ~2-4 GB. THREADS (default: all cores), REPS (3), RUNS (2);
# PART=1 or PART=2 runs only that part (default: both); LLM=reduced|llama3 for (2).
set -u
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
bdir=$(cd "$build" && pwd)
bin=$bdir/bin
threads=${THREADS:-$(nproc)}
reps=${REPS:-3}
runs=${RUNS:-2}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmbench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
part=${PART:-all}
case $part in 1 | 2 | all) ;; *) echo "bench-net: PART must be 1 or 2" >&2; exit 2 ;; esac
rc=0

# ---- (1) forward per pair, C vs PyTorch --------------------------------------------------------
if [ "$part" = 2 ]; then
    :
elif [ ! -x "$bdir/tests/bench/bench_net" ]; then
    echo "bench-net: (1) skipped ($build/tests/bench/bench_net is not built)"
elif ! python3 -c 'import torch, transformers' 2>/dev/null; then
    echo "bench-net: (1) skipped (python3 with torch and transformers is needed)"
else
    "$bdir/tests/bench/bench_net" --forward --threads "$threads" --reps "$reps" \
        >"$tmp/c.txt" 2>"$tmp/c.err" || { cat "$tmp/c.err"; exit 1; }
    python3 "$here/net_torch.py" --threads "$threads" --reps "$reps" \
        >"$tmp/p.txt" 2>"$tmp/p.err" || { cat "$tmp/p.err"; exit 1; }
    read -r _ cb cm _ _ crss <"$tmp/c.txt"
    read -r _ pb pm _ _ prss <"$tmp/p.txt"
    echo "network forward per pair, abdomen config (96x80x96, L=180, 2 LLaMA-3-shaped random layers, F32), $threads threads, best of $reps (median):"
    printf '  C (CPU backend, lm_net_forward)     %8.3f s (%.3f)  peak RSS %6.0f MB\n' "$cb" "$cm" "$(awk -v k="$crss" 'BEGIN{print k/1024}')"
    printf '  PyTorch %-27s %8.3f s (%.3f)  peak RSS %6.0f MB\n' "$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')" "$pb" "$pm" "$(awk -v k="$prss" 'BEGIN{print k/1024}')"
    awk -v p="$pb" -v c="$cb" 'BEGIN{printf "  ratio: C is %.2fx faster than PyTorch (target > 1x: %s)\n", p/c, (p>c)?"met":"NOT met"}'
fi

# ---- (2) stage pipeline vs lm-register, 4 pairs streamed ----------------------------------------
[ "$part" = 1 ] && exit $rc
"$bin/lm-synth" -q -n 4 --shape 192x160x192 -o "$tmp/syn" || exit 1
"$bin/lm-preprocess" -q --half --pairs "$tmp/syn/pairs.tsv" -o "$tmp/pairs.lmt" || exit 1
llm_kind=${LLM:-reduced}
case $llm_kind in
reduced) rshape=stories260k llm_desc="REDUCED LLM: 64-wide random stories260K-shaped layers, not LLaMA-3" ;;
llama3) rshape=llama3 llm_desc="2 random LLaMA-3-8B-shaped layers, F32" ;;
*) echo "bench-net: LLM must be reduced or llama3" >&2; exit 2 ;;
esac
"$bin/lm-init" -q --preset abdomen --random-llm "$tmp/llm" --random-shape "$rshape" -o "$tmp/ck.safetensors" || exit 1
ck=$tmp/ck.safetensors
secs() { awk -v a="$1" -v b="$2" 'BEGIN{print b-a}'; }
reg() { "$bin/lm-register" -q --threads "$threads" -w "$ck" -o "$tmp/reg.lmt" "$tmp/pairs.lmt"; }
pipe() {
    "$bin/lm-encode" -q --threads "$threads" -w "$ck" "$tmp/pairs.lmt" |
        "$bin/lm-leb" -q --threads "$threads" -w "$ck" |
        "$bin/lm-decode" -q --threads "$threads" -w "$ck" -o "$tmp/pipe.lmt"
}
# timed F: runs F; its wall time and CPU time (user + sys of all its processes) into $tmp/time
TIMEFORMAT='%R %U %S'
timed() { { time "$1" 2>&3; } 3>&2 2>"$tmp/time"; }
best_r=1e9 best_p=1e9 cpu_r=1e9 cpu_p=1e9
min() { awk -v a="$1" -v b="$2" 'BEGIN{print (b<a)?b:a}'; }
load=$(cut -d' ' -f1 /proc/loadavg)
for ((i = 0; i < runs; i++)); do
    timed reg || exit 1
    read -r w u s <"$tmp/time"
    best_r=$(min "$best_r" "$w") cpu_r=$(min "$cpu_r" "$(awk -v u="$u" -v s="$s" 'BEGIN{print u+s}')")
    timed pipe || exit 1
    read -r w u s <"$tmp/time"
    best_p=$(min "$best_p" "$w") cpu_p=$(min "$cpu_p" "$(awk -v u="$u" -v s="$s" 'BEGIN{print u+s}')")
done
# each stage alone, file to file (where the pipeline's time goes)
st=""
in=$tmp/pairs.lmt
for s in encode leb decode; do
    t0=$(date +%s.%N)
    "$bin/lm-$s" -q --threads "$threads" -w "$ck" -o "$tmp/$s.lmt" "$in" || exit 1
    t1=$(date +%s.%N)
    st="$st $s $(awk -v d="$(secs "$t0" "$t1")" 'BEGIN{printf "%.2f", d/4}') s,"
    in=$tmp/$s.lmt
done
nt() { "$bin/lm-info" "$1" 2>/dev/null | awk '/^record 1 /{sub(/.*, /,""); sub(/ tensors.*/,""); print; exit}'; }
echo "stage pipeline vs lm-register, 4 abdomen pairs streamed (96x80x96 network input, L=180; $llm_desc), $threads threads, best of $runs (load average $load at the start):"
printf '  lm-register                              %7.2f s/pair  (output %4d MB, %s tensors/record)\n' "$(awk -v t="$best_r" 'BEGIN{print t/4}')" "$(($(stat -c %s "$tmp/reg.lmt") >> 20))" "$(nt "$tmp/reg.lmt")"
printf '  lm-encode | lm-leb | lm-decode           %7.2f s/pair  (output %4d MB, %s tensors/record)\n' "$(awk -v t="$best_p" 'BEGIN{print t/4}')" "$(($(stat -c %s "$tmp/pipe.lmt") >> 20))" "$(nt "$tmp/pipe.lmt")"
echo "  stages alone, file to file, per pair:${st%,}"
awk -v p="$cpu_p" -v r="$cpu_r" 'BEGIN{printf "  CPU time (user+sys, all processes): lm-register %.2f s/pair, pipeline %.2f s/pair, %.2fx\n", r/4, p/4, p/r}'
awk -v p="$best_p" -v r="$best_r" 'BEGIN{printf "  ratio: pipeline / lm-register = %.2fx per pair (target <= 1.25x: %s)\n", p/r, (p/r<=1.25)?"met":"NOT met"}'
for f in reg pipe; do
    "$bin/lm-info" "$tmp/$f.lmt" 2>/dev/null | grep -q ' flow_full ' ||
        echo "  note: the $f output has no flow_full tensor (abdomen is a half config)"
done
exit $rc
