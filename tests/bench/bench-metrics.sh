#!/usr/bin/env bash
# bench-metrics.sh [BUILD] — lm-metrics against the SciPy/NumPy reference (metrics_scipy.py) on
# the same pair in the same run: one abdomen-sized pair (192x160x192, 2 mm, 5 organs, a
# displacement field), default metrics (Dice, medpy HD95, vxm folding, SDlogJ). Prints both
# times (best of N runs each, reading the input included), the ratio, and whether the numbers
# agree. Needs python3 with numpy, scipy, safetensors; skips (exit 0) without them.
# Environment: RUNS (default 3), LM_THREADS_BENCH (threads for lm-metrics, default all).
set -u
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$build/bin" && pwd)/lm-metrics
runs=${RUNS:-3}
if ! python3 -c 'import numpy, scipy, safetensors' 2>/dev/null; then
    echo "bench-metrics: skipped (python3 with numpy, scipy and safetensors is needed)"; exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmbench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 "$here/metrics_scipy.py" make "$tmp/pair.safetensors" || exit 1
thr=()
[ -n "${LM_THREADS_BENCH:-}" ] && thr=(--threads "$LM_THREADS_BENCH")
best_c=1e9 best_p=1e9
for ((i = 0; i < runs; i++)); do
    t0=$(date +%s.%N)
    "$bin" -q "${thr[@]}" "$tmp/pair.safetensors" >"$tmp/c.tsv" || exit 1
    t1=$(date +%s.%N)
    best_c=$(awk -v a="$best_c" -v x="$t1" -v y="$t0" 'BEGIN{b=x-y; print (b<a)?b:a}')
    python3 "$here/metrics_scipy.py" score "$tmp/pair.safetensors" >"$tmp/p.txt" || exit 1
    best_p=$(awk -v a="$best_p" -v b="$(cut -f1 "$tmp/p.txt")" 'BEGIN{print (b<a)?b:a}')
done
read -r _ pd ph pj ps <"$tmp/p.txt"
row=$(awk -F'\t' '$1=="bench"' "$tmp/c.tsv")
cd_=$(echo "$row" | cut -f3) ch=$(echo "$row" | cut -f4) cj=$(echo "$row" | cut -f5) cs=$(echo "$row" | cut -f6)
agree=$(awk -v a="$cd_" -v b="$pd" -v c="$ch" -v d="$ph" -v e="$cj" -v f="$pj" -v g="$cs" -v h="$ps" \
    'function ab(x){return x<0?-x:x} BEGIN{print (ab(a-b)<1e-5 && ab(c-d)<1e-5 && ab(e-f)<1e-5 && ab(g-h)<1e-5) ? "yes" : "NO"}')
echo "lm-metrics vs SciPy, 192x160x192, 5 labels + flow, $(nproc) cores, best of $runs:"
printf '  lm-metrics %8.3f s   Dice %s  HD95 %s  folding %s%%  SDlogJ %s\n' "$best_c" "$cd_" "$ch" "$cj" "$cs"
printf '  SciPy      %8.3f s   Dice %s  HD95 %s  folding %s%%  SDlogJ %s\n' "$best_p" "$pd" "$ph" "$pj" "$ps"
awk -v p="$best_p" -v c="$best_c" 'BEGIN{printf "  ratio: lm-metrics is %.1fx faster (target >= 10x)\n", p/c}'
echo "  numbers agree: $agree"
[ "$agree" = yes ]
