#!/usr/bin/env bash
# bench-warp.sh [BUILD] — lm-warp against SciPy's map_coordinates (warp_scipy.py) on the same
# 192x160x192 image, 5-label map and smooth field in the same run: trilinear image + nearest
# labels. Both are timed as the whole job (read the NIfTI inputs, warp, write the NIfTI
# outputs; lm-warp also verifies what it wrote); SciPy's interpolation alone is shown too.
# Prints the times, the ratio and the agreement (max |difference| of the image, differing labels),
# and the load average before and after (other work on the machine slows both, lm-warp's two
# threads more than SciPy's one). Needs python3 with numpy, scipy, nibabel; skips (exit 0)
# without them. RUNS (default 3).
set -u
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$build/bin" && pwd)/lm-warp
runs=${RUNS:-3}
if ! python3 -c 'import numpy, scipy, nibabel' 2>/dev/null; then
    echo "bench-warp: skipped (python3 with numpy, scipy and nibabel is needed)"; exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmbench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 "$here/warp_scipy.py" make "$tmp" || exit 1
load0=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
best_c=1e9 best_p=1e9 best_i=1e9
for ((i = 0; i < runs; i++)); do
    t0=$(date +%s.%N)
    "$bin" -q --flow "$tmp/flow.nii" --seg "$tmp/seg.nii" -o "$tmp/out.nii" "$tmp/moving.nii" || exit 1
    t1=$(date +%s.%N)
    best_c=$(awk -v a="$best_c" -v x="$t1" -v y="$t0" 'BEGIN{b=x-y; print (b<a)?b:a}')
    python3 "$here/warp_scipy.py" score "$tmp" >"$tmp/p.txt" || exit 1
    best_p=$(awk -v a="$best_p" -v b="$(cut -f1 "$tmp/p.txt")" 'BEGIN{print (b<a)?b:a}')
    best_i=$(awk -v a="$best_i" -v b="$(cut -f2 "$tmp/p.txt")" 'BEGIN{print (b<a)?b:a}')
done
read -r _ _ err bad <"$tmp/p.txt"
echo "lm-warp vs SciPy map_coordinates, 192x160x192, image + labels, $(nproc) cores, best of $runs:"
printf '  lm-warp (whole job, NIfTI in and out)     %8.3f s\n' "$best_c"
printf '  SciPy + nibabel (whole job)               %8.3f s   (interpolation alone %.3f s)\n' "$best_p" "$best_i"
awk -v p="$best_p" -v c="$best_c" -v i="$best_i" 'BEGIN{printf "  ratio: lm-warp is %.1fx faster (target >= 10x); %.1fx against the interpolation alone\n", p/c, i/c}'
echo "  agreement: max |image difference| $err, differing labels $bad"
echo "  load average before: $load0; after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
awk -v e="$err" -v b="$bad" 'BEGIN{exit !(e <= 1e-5 && b == 0)}'
