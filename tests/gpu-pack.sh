#!/usr/bin/env bash
# gpu-pack.sh — packs what tests/gpu-check.sh needs into .gpu/ (git-ignored) for a GPU machine
# that has the CUDA 13 toolkit (or PyTorch's cu13 wheels), cuDNN 9 (there or in PyTorch's wheel)
# and the C runtime with libgomp, but not this project's Debian packages, such as a machine that
# reaches no package registry: the three programs gpu-check.sh
# runs, built here with CUDA=1 CI=true; the shared libraries outside CUDA that they load
# (nifti, zstd, cJSON, OpenBLAS and its Fortran runtime); stories260K from ../shared when it is
# there; and .gpu/run.sh, which runs gpu-check.sh on them there. About 57 MB.
#   tests/gpu-pack.sh [BUILD]      (BUILD: the CUDA build folder, default build-gpu)
# then, on the GPU machine, in a copy of this tree with .gpu/ beside it:
#   bash .gpu/run.sh               (OUT: where summary.txt and logs.tgz go, default /tmp/gpu-out;
#                                   STEPS: gpu-check.sh's steps, default all but build, suite and
#                                   cpubench, which need the packages; BUDGET: seconds, 480)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${1:-build-gpu}
progs="tests/kernels/test_cuda_parity tests/unit/test_net_cuda tests/bench/bench_net"
make -j"$(nproc)" CUDA=1 CI=true BUILD="$build" $(for p in $progs; do echo "$build/$p"; done)
rm -rf .gpu
mkdir -p .gpu/build/tests/kernels .gpu/build/tests/unit .gpu/build/tests/bench .gpu/lib
for p in $progs; do
    strip --strip-debug -o ".gpu/build/$p" "$build/$p"
done
# the libraries the programs load, less the C/C++ runtime and CUDA's own (the machine's)
for p in $progs; do ldd ".gpu/build/$p"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
    sort -u | { grep -Ev '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libgomp)\.so' || true; } |
    { grep -Ev 'cuda|cudnn|cublas|cudart' || true; } | while read -r l; do cp -L "$l" .gpu/lib/; done
shared=${LM_SHARED:-$root/../shared}
if [ -d "$shared/weights/stories260K-hf" ]; then
    mkdir -p .gpu/shared/weights
    cp -r "$shared/weights/stories260K-hf" .gpu/shared/weights/
fi
cat >.gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# made by tests/gpu-pack.sh: runs tests/gpu-check.sh on the programs packed in .gpu/
set -u
cd "$(dirname "$0")/.."
final=${OUT:-/tmp/gpu-out}
mkdir -p "$final"
export OUT
OUT=$(mktemp -d /tmp/gpu-check-logs.XXXXXX)
py() { python3 -c "import $1 as m; print(m.__path__[0] + '/lib')" 2>/dev/null || true; }
# the machine's CUDA libraries first (its toolkit's, else PyTorch's wheels'), then the packed
# ones; LD_LIBRARY_PATH comes before the system's own folders, so the packed copies (cJSON,
# zstd, OpenBLAS, gfortran) stand in for any the machine has, for every program (PyTorch, the
# timing peer, ran with them on an H200)
lp=${LD_LIBRARY_PATH:-}
for d in /usr/local/cuda/lib64 "$(py nvidia.cudnn)" "$(py nvidia.cu13)" "$(py nvidia.cublas)" \
    "$(py nvidia.cuda_runtime)" "$PWD/.gpu/lib"; do
    [ -n "$d" ] && [ -d "$d" ] && lp=${lp:+$lp:}$d
done
export LD_LIBRARY_PATH=$lp
for p in .gpu/build/tests/*/*; do echo "== $p"; ldd "$p"; done >"$OUT/libs.txt" 2>&1
if grep -q "not found" "$OUT/libs.txt"; then
    echo "gpu-pack: libraries not found:"
    grep "not found" "$OUT/libs.txt" | sort -u
fi
[ -d .gpu/shared ] && export LM_SHARED=$PWD/.gpu/shared
GPU_CHECK_BUILD=$PWD/.gpu/build GPU_CHECK_STEPS="${STEPS:-parity net gemm timing abdomen memcheck}" \
    GPU_CHECK_BUDGET=${BUDGET:-480} bash tests/gpu-check.sh
rc=$?
cp "$OUT/summary.txt" "$final/" 2>/dev/null
tar -czf "$final/logs.tgz" -C "$OUT" .
exit $rc
RUN
chmod +x .gpu/run.sh
echo "gpu-pack: .gpu/ holds $(du -sh .gpu | cut -f1); on the GPU machine: bash .gpu/run.sh"
