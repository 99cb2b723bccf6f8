#!/usr/bin/env bash
# bench-preprocess.sh [BUILD] — lm-preprocess at the abdomen size (192x160x192, 2 mm; MR on an
# LPS grid, CT on a RAS grid, both with label maps) against the same steps in NumPy/SciPy
# (preprocess_scipy.py) in the same run. Both are timed as whole jobs (reading the NIfTI
# inputs included; lm-preprocess also writes its zstd stream). RUNS (default 3).
# Needs python3 with numpy, scipy, nibabel; skips (exit 0) without them.
set -u
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$build/bin" && pwd)/lm-preprocess
runs=${RUNS:-3}
if ! python3 -c 'import numpy, scipy, nibabel' 2>/dev/null; then
    echo "bench-preprocess: skipped (python3 with numpy, scipy and nibabel is needed)"; exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmbench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 "$here/preprocess_scipy.py" make "$tmp" || exit 1
best_c=1e9 best_p=1e9
for ((i = 0; i < runs; i++)); do
    t0=$(date +%s.%N)
    "$bin" -q --align-centres "$tmp/mr.nii" "$tmp/ct.nii" "$tmp/mr_seg.nii" "$tmp/ct_seg.nii" \
        -o "$tmp/pair.lmt" || exit 1
    t1=$(date +%s.%N)
    best_c=$(awk -v a="$best_c" -v x="$t1" -v y="$t0" 'BEGIN{b=x-y; print (b<a)?b:a}')
    p=$(python3 "$here/preprocess_scipy.py" run "$tmp") || exit 1
    best_p=$(awk -v a="$best_p" -v b="$p" 'BEGIN{print (b<a)?b:a}')
done
echo "lm-preprocess vs NumPy/SciPy, 192x160x192 MR(LPS)->CT(RAS) + labels, $(nproc) cores, best of $runs:"
printf '  lm-preprocess (NIfTI in, zstd stream out) %8.3f s\n' "$best_c"
printf '  NumPy/SciPy (NIfTI in, arrays in memory)  %8.3f s\n' "$best_p"
awk -v p="$best_p" -v c="$best_c" 'BEGIN{printf "  ratio: lm-preprocess is %.1fx faster\n", p/c}'
