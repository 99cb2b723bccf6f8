#!/usr/bin/env bash
# gpu-check.sh — the one prepared check for a machine with a GPU (issue 6). It
#   1. builds everything with CUDA=1 CI=true (sm_80 + sm_90, warnings as errors) into a build
#      folder of its own;
#   2. runs the CPU-vs-CUDA parity suite (tests/kernels/test_cuda_parity) with LM_REQUIRE_CUDA=1
#      (no GPU is then a failure, not a skip) and LM_CUDA_SYNC=1 (a fault is reported by the
#      op that caused it);
#   3. runs the GPU kernel benchmark (test_cuda_parity --bench: LLaMA-3-8B GEMM shapes against
#      the backend's own large-GEMM peak, the abdomen convolutions, the warp) and the CPU one
#      (bench_kernels --quick) for reference;
#   4. runs the whole test suite the way `make check-cuda` does;
#   5. runs compute-sanitizer memcheck over the parity suite when it is installed;
#   6. HOOKS for a later stage: whole-network parity (tiny config forward + gradients, abdomen
#      forward) and the forward / training-step timing against PyTorch (bf16 autocast) run only
#      if their programs exist; otherwise the table says "not run" — nothing is faked.
# Logs go to ${OUT:-./gpu-check-out}; the last thing printed is a short table (also in
# summary.txt there). Exit status: 0 when everything that ran passed, 1 otherwise.
# Environment: OUT, GPU_CHECK_BUILD (default /tmp/lm-gpu-check-build), LM_TEST_SEED,
# GPU_CHECK_SKIP_SUITE=1 / GPU_CHECK_SKIP_SANITIZER=1 to save device time.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-./gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${GPU_CHECK_BUILD:-/tmp/lm-gpu-check-build}
jobs=$(nproc 2>/dev/null || echo 4)
status=0
rows=()
t0=$(date +%s)

row() { rows+=("$(printf '%-30s %-8s %s' "$1" "$2" "$3")"); }
note() { echo "gpu-check: $*" >&2; }
table() {
    {
        echo
        echo "== gpu-check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - t0)) s)"
        echo "device: $(head -n 1 "$out/device.txt" 2>/dev/null || echo unknown)"
        printf '%-30s %-8s %s\n' "step" "result" "details"
        printf '%s\n' "${rows[@]}"
    } | tee "$out/summary.txt"
}
# counts "ok -" / "not ok -" / "skip -" lines of a log: "N ok, N failed, N skipped"
counts() {
    local p f s
    p=$(grep -c '^ok - ' "$1" || true)
    f=$(grep -c '^not ok - ' "$1" || true)
    s=$(grep -c '^skip - ' "$1" || true)
    echo "$p ok, $f failed, $s skipped"
}

# ---- 0. the device ----
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
        2>/dev/null || echo "nvidia-smi not available"
    nvidia-smi 2>/dev/null || true
    nvcc --version 2>/dev/null | tail -n 2 || true
} >"$out/device.txt" 2>&1
note "device: $(head -n 1 "$out/device.txt")"

# ---- 1. build ----
note "building into $build (log: $out/build.log)"
if make -C "$root" -j"$jobs" CUDA=1 CI=true BUILD="$build" all \
    "$build/tests/kernels/test_cuda_parity" "$build/tests/bench/bench_kernels" \
    >"$out/build.log" 2>&1; then
    row "build CUDA=1 CI=true" ok "sm_80+sm_90, -Werror"
else
    row "build CUDA=1 CI=true" FAIL "see build.log (tail below)"
    tail -n 30 "$out/build.log" >&2
    table
    exit 1
fi
parity=$build/tests/kernels/test_cuda_parity

# ---- 2. op parity ----
note "parity suite (log: $out/parity.log)"
rc=0
(cd "$root" && LM_REQUIRE_CUDA=1 LM_CUDA_SYNC=1 timeout 900 "$parity") >"$out/parity.log" 2>&1 \
    || rc=$?
if [ "$rc" -eq 0 ]; then
    row "op parity (all ops)" ok "$(counts "$out/parity.log")"
else
    row "op parity (all ops)" FAIL "exit $rc; $(counts "$out/parity.log")"
    grep -E '^not ok - |^    ' "$out/parity.log" | head -n 20 >&2 || true
    status=1
fi

# ---- 3. benchmarks ----
note "GPU kernel benchmark (log: $out/bench-gpu.log)"
rc=0
(cd "$root" && timeout 600 "$parity" --bench) >"$out/bench-gpu.log" 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then
    peak=$(awk '/peak reference/ {print $(NF-1)}' "$out/bench-gpu.log")
    llm=$(awk '/gemm bf16 M=1716 N=14336/ {print $(NF-4)}' "$out/bench-gpu.log")
    row "GPU kernel benchmark" ok "bf16 peak ${peak:-?} TF/s; M=1716 N=14336 K=4096: ${llm:-?} TF/s"
else
    row "GPU kernel benchmark" FAIL "exit $rc, see bench-gpu.log"
    status=1
fi
note "CPU kernel benchmark --quick (log: $out/bench-cpu.log)"
rc=0
(cd "$root" && timeout 600 "$build/tests/bench/bench_kernels" --quick) >"$out/bench-cpu.log" 2>&1 \
    || rc=$?
if [ "$rc" -eq 0 ]; then
    row "CPU kernel benchmark" ok "see bench-cpu.log (reference only)"
else
    row "CPU kernel benchmark" FAIL "exit $rc, see bench-cpu.log"
fi

# ---- 4. the whole suite, as make check-cuda ----
if [ "${GPU_CHECK_SKIP_SUITE:-0}" = 1 ]; then
    row "make check-cuda" skipped "GPU_CHECK_SKIP_SUITE=1"
else
    note "whole suite with LM_REQUIRE_CUDA=1 (log: $out/check-cuda.log)"
    rc=0
    timeout 3000 make -C "$root" CUDA=1 CI=true BUILD="$build" check-cuda \
        >"$out/check-cuda.log" 2>&1 || rc=$?
    last=$(tail -n 1 "$out/check-cuda.log")
    if [ "$rc" -eq 0 ]; then
        row "make check-cuda" ok "$last"
    else
        row "make check-cuda" FAIL "$last"
        status=1
    fi
fi

# ---- 5. memcheck over the parity suite ----
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ "${GPU_CHECK_SKIP_SANITIZER:-0}" = 1 ]; then
    row "compute-sanitizer memcheck" skipped "GPU_CHECK_SKIP_SANITIZER=1"
elif [ -x "$san" ]; then
    note "compute-sanitizer memcheck (log: $out/memcheck.log)"
    rc=0
    (cd "$root" && LM_REQUIRE_CUDA=1 timeout 900 "$san" --tool memcheck --error-exitcode 99 \
        "$parity") >"$out/memcheck.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "compute-sanitizer memcheck" ok "$(grep -o 'ERROR SUMMARY: [0-9]* errors' \
            "$out/memcheck.log" | tail -n 1)"
    else
        row "compute-sanitizer memcheck" FAIL "exit $rc, see memcheck.log"
        status=1
    fi
else
    row "compute-sanitizer memcheck" "not run" "compute-sanitizer not installed"
fi

# ---- 6. hooks for the network stage (run only when the programs exist) ----
# Whole-network parity: any test program named test_cuda_net* (tiny config forward and
# gradients, abdomen forward) that the network stage adds under tests/.
shopt -s nullglob
nets=("$build"/tests/*/test_cuda_net*)
ran=0
for t in "${nets[@]}"; do
    case "$t" in *.d | *.o) continue ;; esac
    [ -x "$t" ] || continue
    ran=1
    name=${t##*/}
    rc=0
    (cd "$root" && LM_REQUIRE_CUDA=1 timeout 900 "$t") >"$out/$name.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "network parity: $name" ok "$(counts "$out/$name.log")"
    else
        row "network parity: $name" FAIL "exit $rc, see $name.log"
        status=1
    fi
done
[ "$ran" = 1 ] || row "network parity" "not run" "no tests/*/test_cuda_net* program yet"
# Timing against PyTorch: tests/bench/bench_train.sh (C forward / training step at both paper
# configs with LLaMA-3-8B-shaped random LLM layers) and tests/reference/bench_torch.py (the
# same in PyTorch, bf16 autocast), both on this GPU in this run.
if [ -x "$root/tests/bench/bench_train.sh" ] && [ -f "$root/tests/reference/bench_torch.py" ] &&
    python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    rc=0
    (cd "$root" && BUILD="$build" timeout 1200 tests/bench/bench_train.sh) \
        >"$out/bench-train.log" 2>&1 || rc=$?
    (cd "$root" && timeout 1200 python3 tests/reference/bench_torch.py) \
        >"$out/bench-torch.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "training-step timing" ok "see bench-train.log vs bench-torch.log"
    else
        row "training-step timing" FAIL "exit $rc"
        status=1
    fi
else
    row "training-step timing" "not run" \
        "needs tests/bench/bench_train.sh, tests/reference/bench_torch.py, torch with CUDA"
fi

table
if [ -s "$out/bench-gpu.log" ]; then
    echo
    grep -E '^gemm|^conv3d|^warp' "$out/bench-gpu.log" || true
fi
exit "$status"
