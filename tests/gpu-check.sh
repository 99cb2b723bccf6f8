#!/usr/bin/env bash
# gpu-check.sh — the one prepared check for a machine with a GPU (issue 6). Steps, in order of
# importance, all inside one time budget (GPU_CHECK_BUDGET seconds, default 540: a device call
# may run 600 s); each step's timeout is cut to the time left and a step that no longer fits is
# reported as "not run". The summary table is rewritten after every step (OUT/summary.txt), so
# a run stopped at any point still leaves its table. Times are estimates for an H200 with 16
# cores; on one H200 (2026-11-28) steps 2-6 and 8 took 110-118 s in all, the build carried
# (tests/gpu-pack.sh):
#   1. build (CUDA=1 CI=true: sm_80 + sm_90, warnings as errors) of what steps 2-6 run, into a
#      build folder of its own (~2 min: every .cu file);
#   2. op parity: tests/kernels/test_cuda_parity, every op CPU vs CUDA, with LM_REQUIRE_CUDA=1
#      (no GPU is then a failure, not a skip) and LM_CUDA_SYNC=1 (a fault is reported by the op
#      that caused it) (~1 min);
#   3. network parity: tests/unit/test_net_cuda's tiny cases — the tiny config (32³, stories260K
#      layers or a random stand-in) with F32 and with BF16 LLM weights and at half resolution:
#      every forward activation, the loss, and the gradients of every trainable tensor, both
#      images and every activation, GPU vs CPU, with LM_CUDA_SYNC=1 (~30 s);
#   4. the LLM GEMMs' TFLOP/s against cuBLAS's own large-GEMM peak (test_cuda_parity --bench:
#      M = 180 and 1716 tokens × the LLaMA-3-8B widths, K = 4096; also the abdomen
#      convolutions and the warp) (~30 s);
#   5. timing, C against PyTorch on this GPU in this run: tests/bench/bench_net (CUDA backend,
#      BF16 LLM GEMMs, f32 elsewhere) and tests/bench/net_torch.py (the independent reference,
#      bf16 autocast, grid_sample warps), forward and training step (forward, loss, backward,
#      Adam), at the abdomen config (L = 180) then the SR-Reg config (L = 1716), two
#      LLaMA-3-8B-shaped random layers; best of GPU_CHECK_REPS (3) after a warm-up (~3 min);
#   6. network parity at the abdomen config: forward and loss with LLaMA-3-8B-shaped BF16
#      layers (test_net_cuda abdomen_forward) (~1 min);
#   7. the whole test suite the way `make check-cuda` does (builds the rest first);
#   8. compute-sanitizer memcheck over the op parity suite, when installed;
#   9. the CPU kernel benchmark (bench_kernels --quick), for reference.
# The build needs README's Debian packages on that machine too (tools/check-deps.sh, run by
# make, names any that are missing); ../shared does not travel there, so the tiny cases use a
# seeded random stand-in for stories260K unless LM_SHARED names a copy.
# Steps 7-9 rarely fit in one 10-minute call after 1-6: GPU_CHECK_STEPS picks steps for a
# second call (e.g. GPU_CHECK_STEPS="build suite memcheck"). Logs go to ${OUT:-./gpu-check-out};
# the last thing printed is a short table (also summary.txt there). Exit status: 0 when
# everything that ran passed, 1 otherwise.
# Environment: OUT, GPU_CHECK_BUILD (default /tmp/lm-gpu-check-build), GPU_CHECK_BUDGET,
# GPU_CHECK_STEPS (build parity net gemm timing abdomen suite memcheck cpubench; default all),
# GPU_CHECK_REPS, LM_TEST_SEED, GPU_CHECK_SKIP_SUITE=1 / GPU_CHECK_SKIP_SANITIZER=1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-./gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${GPU_CHECK_BUILD:-/tmp/lm-gpu-check-build}
jobs=$(nproc 2>/dev/null || echo 4)
budget=${GPU_CHECK_BUDGET:-540}
steps=" ${GPU_CHECK_STEPS:-build parity net gemm timing abdomen suite memcheck cpubench} "
reps=${GPU_CHECK_REPS:-3}
export PYTHONUNBUFFERED=1
status=0
rows=()
t0=$(date +%s)
deadline=$((t0 + budget))

note() { echo "gpu-check: $*" >&2; }
want() { [[ "$steps" == *" $1 "* ]]; }
left() { echo $((deadline - $(date +%s))); }
# tmo CAP MIN: a timeout of at most CAP seconds within the budget (keeping 10 s for the table),
# or nothing (status 1) when less than MIN seconds would be left
tmo() {
    local l=$(($(left) - 10))
    [ "$l" -ge "$2" ] || return 1
    echo $((l < $1 ? l : $1))
}
summary() {
    echo "== gpu-check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - t0)) s)"
    echo "device: $(head -n 1 "$out/device.txt" 2>/dev/null || echo unknown)"
    printf '%-34s %-8s %s\n' "step" "result" "details"
    [ ${#rows[@]} -eq 0 ] || printf '%s\n' "${rows[@]}"
}
row() {
    rows+=("$(printf '%-34s %-8s %s' "$1" "$2" "$3")")
    summary >"$out/summary.txt"
}
fail_row() { row "$1" FAIL "$2"; status=1; }
skip_row() { row "$1" "not run" "$2"; }
finished=0
finish() {
    [ "$finished" = 1 ] && return
    finished=1
    if [ -s "$out/bench-gpu.log" ]; then
        echo
        grep -E '^gemm|^conv3d|^warp' "$out/bench-gpu.log" || true
    fi
    echo
    summary | tee "$out/summary.txt"
}
trap finish EXIT
trap 'note "interrupted"; exit 1' INT TERM
# counts "ok -" / "not ok -" / "skip -" lines of a log: "N ok, N failed, N skipped"
counts() {
    local p f s
    p=$(grep -c '^ok - ' "$1" || true)
    f=$(grep -c '^not ok - ' "$1" || true)
    s=$(grep -c '^skip - ' "$1" || true)
    echo "$p ok, $f failed, $s skipped"
}
# the largest "worst err/tol X" of a test_net_cuda log
worst() { awk '/worst err\/tol/ {v = $NF + 0; if (v > m) m = v} END {printf "%.2f", m}' "$1"; }

# ---- 0. the device ----
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
        2>/dev/null || echo "nvidia-smi not available"
    nvidia-smi 2>/dev/null || true
    nvcc --version 2>/dev/null | tail -n 2 || true
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda",
torch.version.cuda, "transformers", transformers.__version__)' 2>&1 || true
} >"$out/device.txt" 2>&1
note "device: $(head -n 1 "$out/device.txt"); budget $budget s; steps:$steps"

parity=$build/tests/kernels/test_cuda_parity
netpar=$build/tests/unit/test_net_cuda
benchnet=$build/tests/bench/bench_net

# ---- 1. build ----
if want build; then
    note "building into $build (log: $out/build.log)"
    if make -C "$root" -j"$jobs" CUDA=1 CI=true BUILD="$build" "$parity" "$netpar" "$benchnet" \
        >"$out/build.log" 2>&1; then
        row "build CUDA=1 CI=true" ok "sm_80+sm_90, -Werror, $(($(date +%s) - t0)) s"
    else
        fail_row "build CUDA=1 CI=true" "see build.log (tail above)"
        tail -n 30 "$out/build.log" >&2
        exit 1
    fi
fi

# ---- 2. op parity ----
if ! want parity; then
    :
elif [ ! -x "$parity" ]; then
    skip_row "op parity (all ops)" "not built"
elif ! to=$(tmo 300 30); then
    skip_row "op parity (all ops)" "out of time budget"
else
    note "op parity suite (log: $out/parity.log)"
    rc=0
    (cd "$root" && LM_REQUIRE_CUDA=1 LM_CUDA_SYNC=1 timeout "$to" "$parity") \
        >"$out/parity.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "op parity (all ops)" ok "$(counts "$out/parity.log")"
    else
        fail_row "op parity (all ops)" "exit $rc; $(counts "$out/parity.log")"
        grep -E '^not ok - |^    ' "$out/parity.log" | head -n 20 >&2 || true
    fi
fi

# ---- 3. network parity, tiny config ----
if ! want net; then
    :
elif [ ! -x "$netpar" ]; then
    skip_row "network parity: tiny" "not built"
elif ! to=$(tmo 240 30); then
    skip_row "network parity: tiny" "out of time budget"
else
    note "network parity, tiny config (log: $out/net-tiny.log)"
    rc=0
    (cd "$root" && LM_REQUIRE_CUDA=1 LM_CUDA_SYNC=1 timeout "$to" "$netpar" tiny) \
        >"$out/net-tiny.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "network parity: tiny" ok \
            "$(counts "$out/net-tiny.log"); worst err/tol $(worst "$out/net-tiny.log")"
    else
        fail_row "network parity: tiny" "exit $rc; $(counts "$out/net-tiny.log"); see net-tiny.log"
        grep -E '^not ok - |FAIL' "$out/net-tiny.log" | head -n 20 >&2 || true
    fi
fi

# ---- 4. LLM GEMMs against cuBLAS's peak ----
if ! want gemm; then
    :
elif [ ! -x "$parity" ]; then
    skip_row "LLM GEMMs vs cuBLAS peak" "not built"
elif ! to=$(tmo 180 30); then
    skip_row "LLM GEMMs vs cuBLAS peak" "out of time budget"
else
    note "GPU kernel benchmark (log: $out/bench-gpu.log)"
    rc=0
    (cd "$root" && timeout "$to" "$parity" --bench) >"$out/bench-gpu.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        # "gemm bf16 M=180 N=1024 K=4096  ms  TF TF/s (P% of peak)": the range per M
        row "LLM GEMMs vs cuBLAS peak" ok "$(awk '
            /peak reference/ { peak = $(NF - 1) }
            /^gemm bf16 M=/ { m = $3; tf = $7 + 0; p = $9; gsub(/[(%]/, "", p); p += 0
                if (!(m in lo) || tf < lo[m]) { lo[m] = tf; plo[m] = p }
                if (!(m in hi) || tf > hi[m]) { hi[m] = tf; phi[m] = p }
                if (!(m in seen)) { seen[m] = 1; order[++n] = m } }
            END { printf "peak %s TF/s", peak
                for (i = 1; i <= n; i++) { m = order[i]
                    printf "; %s: %.0f-%.0f TF/s (%d-%d%%)", m, lo[m], hi[m], plo[m], phi[m] } }
            ' "$out/bench-gpu.log")"
    else
        fail_row "LLM GEMMs vs cuBLAS peak" "exit $rc, see bench-gpu.log"
    fi
fi

# ---- 5. timing, C vs PyTorch ----
torch_ok=0
python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null && torch_ok=1
# field F (2 best, 3 median, 7 device MB) of the line of mode M in a bench log
fld() { awk -v m="$2" -v f="$3" '$1 == m {print $f; exit}' "$1" 2>/dev/null || true; }
timing_rows() { # CONFIG WHY: a row per mode from bench-C-CONFIG.log and bench-torch-CONFIG.log
    local cfg=$1 why=$2 mode c p cm pm
    for mode in forward train; do
        c=$(fld "$out/bench-C-$cfg.log" "$mode" 2)
        p=$(fld "$out/bench-torch-$cfg.log" "$mode" 2)
        cm=$(fld "$out/bench-C-$cfg.log" "$mode" 7)
        pm=$(fld "$out/bench-torch-$cfg.log" "$mode" 7)
        if [ -n "$c" ] && [ -n "$p" ]; then
            row "time $cfg $mode" ok "$(awk -v c="$c" -v p="$p" -v cm="$cm" -v pm="$pm" 'BEGIN {
                printf "C %.4f s, PyTorch %.4f s: C %.2fx %s", c, p,
                    (c < p ? p / c : c / p), (c < p ? "faster" : "slower")
                printf " (GPU MB: C %s in use, PyTorch %s peak)", cm, pm }')"
        elif [ -n "$c" ]; then
            row "time $cfg $mode" ok "C $c s (GPU MB in use $cm); PyTorch $why"
        elif [ -n "$p" ]; then
            fail_row "time $cfg $mode" "C failed (see bench-C-$cfg.log); PyTorch $p s"
        fi
    done
}
for cfg in abdomen srreg; do
    want timing || break
    if [ ! -x "$benchnet" ]; then
        skip_row "time $cfg" "bench_net not built"
        continue
    fi
    if ! to=$(tmo 150 40); then
        skip_row "time $cfg" "out of time budget"
        continue
    fi
    note "timing $cfg: C (log: $out/bench-C-$cfg.log)"
    crc=0
    (cd "$root" && timeout "$to" "$benchnet" --device cuda --config "$cfg" --forward --train \
        --reps "$reps") >"$out/bench-C-$cfg.log" 2>&1 || crc=$?
    why="not run: python3 with torch (CUDA) and transformers not found"
    if [ "$torch_ok" = 1 ] && ! to=$(tmo 240 40); then
        why="not run: out of time budget"
    elif [ "$torch_ok" = 1 ]; then
        note "timing $cfg: PyTorch (log: $out/bench-torch-$cfg.log)"
        rc=0
        (cd "$root" && timeout "$to" python3 tests/bench/net_torch.py --device cuda \
            --config "$cfg" --mode forward,train --reps "$reps") \
            >"$out/bench-torch-$cfg.log" 2>&1 || rc=$?
        why="failed (exit $rc, see bench-torch-$cfg.log)"
    fi
    timing_rows "$cfg" "$why"
    [ "$crc" -eq 0 ] ||
        fail_row "time $cfg (C)" "bench_net exit $crc: $(tail -n 1 "$out/bench-C-$cfg.log")"
done

# ---- 6. network parity, abdomen forward ----
if ! want abdomen; then
    :
elif [ ! -x "$netpar" ]; then
    skip_row "network parity: abdomen fwd" "not built"
elif ! to=$(tmo 240 60); then
    skip_row "network parity: abdomen fwd" "out of time budget"
else
    note "network parity, abdomen forward (log: $out/net-abdomen.log)"
    rc=0
    (cd "$root" && LM_REQUIRE_CUDA=1 LM_CUDA_SYNC=1 LM_NET_CUDA_ABDOMEN=1 timeout "$to" \
        "$netpar" abdomen) >"$out/net-abdomen.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "network parity: abdomen fwd" ok \
            "$(counts "$out/net-abdomen.log"); worst err/tol $(worst "$out/net-abdomen.log")"
    else
        fail_row "network parity: abdomen fwd" "exit $rc; see net-abdomen.log"
        grep -E '^not ok - |FAIL' "$out/net-abdomen.log" | head -n 20 >&2 || true
    fi
fi

# ---- 7. the whole suite, as make check-cuda ----
if ! want suite; then
    :
elif [ "${GPU_CHECK_SKIP_SUITE:-0}" = 1 ]; then
    skip_row "make check-cuda" "GPU_CHECK_SKIP_SUITE=1"
elif ! to=$(tmo 3000 120); then
    skip_row "make check-cuda" "out of time budget (GPU_CHECK_STEPS=\"build suite\" runs it)"
else
    note "whole suite with LM_REQUIRE_CUDA=1 (log: $out/check-cuda.log)"
    rc=0
    timeout "$to" make -C "$root" -j"$jobs" CUDA=1 CI=true BUILD="$build" check-cuda \
        >"$out/check-cuda.log" 2>&1 || rc=$?
    last=$(tail -n 1 "$out/check-cuda.log")
    if [ "$rc" -eq 0 ]; then
        row "make check-cuda" ok "$last"
    else
        fail_row "make check-cuda" "exit $rc: $last"
    fi
fi

# ---- 8. memcheck over the op parity suite ----
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if ! want memcheck; then
    :
elif [ "${GPU_CHECK_SKIP_SANITIZER:-0}" = 1 ]; then
    skip_row "compute-sanitizer memcheck" "GPU_CHECK_SKIP_SANITIZER=1"
elif [ ! -x "$san" ] || [ ! -x "$parity" ]; then
    skip_row "compute-sanitizer memcheck" "compute-sanitizer or test_cuda_parity missing"
elif ! to=$(tmo 900 120); then
    skip_row "compute-sanitizer memcheck" "out of time budget"
else
    note "compute-sanitizer memcheck (log: $out/memcheck.log)"
    rc=0
    (cd "$root" && LM_REQUIRE_CUDA=1 timeout "$to" "$san" --tool memcheck --error-exitcode 99 \
        "$parity") >"$out/memcheck.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "compute-sanitizer memcheck" ok "$(grep -o 'ERROR SUMMARY: [0-9]* errors' \
            "$out/memcheck.log" | tail -n 1)"
    else
        fail_row "compute-sanitizer memcheck" "exit $rc, see memcheck.log"
    fi
fi

# ---- 9. CPU kernel benchmark, for reference ----
if ! want cpubench; then
    :
elif ! to=$(tmo 300 90); then
    skip_row "CPU kernel benchmark" "out of time budget"
else
    note "CPU kernel benchmark --quick (log: $out/bench-cpu.log)"
    rc=0
    { make -C "$root" -j"$jobs" CUDA=1 CI=true BUILD="$build" \
        "$build/tests/bench/bench_kernels" >/dev/null 2>&1 &&
        (cd "$root" && timeout "$to" "$build/tests/bench/bench_kernels" --quick); } \
        >"$out/bench-cpu.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        row "CPU kernel benchmark" ok "see bench-cpu.log (reference only)"
    else
        row "CPU kernel benchmark" FAIL "exit $rc, see bench-cpu.log (not counted)"
    fi
fi

exit "$status"
