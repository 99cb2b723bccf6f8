/* bench_kernels.c — throughput of the CPU backend at the model's shapes, each beside OpenBLAS's
 * own sgemm peak measured in the same run (multi-threaded, all cores, a large square GEMM):
 *   GEMM: LLaMA-3 layer shapes, M = 180 and 1716 tokens, K = 4096, N in {1024, 4096, 14336};
 *   conv3d forward: the abdomen encoder and decoder convolutions (input 96×80×96);
 *   warp: single-channel trilinear warp, voxels/s.
 * Not a test: it prints numbers and always exits 0 unless something fails to run.
 * Usage: bench_kernels [--quick]
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/lm_rng.h"
#include "io/lm_error.h"
#include "lm_kernels.h"

static float *rnd(int64_t n, uint64_t stream)
{
    float *p = malloc((size_t)n * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    lm_rng r;
    lm_rng_init(&r, 42, stream);
    for (int64_t i = 0; i < n; i++)
        p[i] = lm_rng_uniformf(&r) - 0.5f;
    return p;
}

static double now(void) { return omp_get_wtime(); }

static double sgemm_peak(int threads)
{
    const int n = 2048;
    float *a = rnd((int64_t)n * n, 1), *b = rnd((int64_t)n * n, 2), *c = rnd((int64_t)n * n, 3);
    openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double g = 2.0 * n * n * n / (now() - t) / 1e9;
        best = g > best ? g : best;
    }
    openblas_set_num_threads(1); /* what the CPU backend runs with */
    free(a), free(b), free(c);
    return best;
}

static void check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "bench_kernels: %s: %s\n", what, lm_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    lm_backend *be = lm_backend_cpu();
    int threads = omp_get_max_threads();
    check(lm_backend_set_threads(be, threads), "threads");
    double peak = sgemm_peak(threads);
    printf("threads %d; OpenBLAS sgemm peak (2048^3, its own threading): %.1f GFLOP/s\n", threads,
           peak);

    printf("\n%-34s %10s %8s %8s\n", "GEMM y = x·Wᵀ (f32 weights)", "GFLOP/s", "ratio", "ms");
    const int Ms[2] = {180, 1716}, Ns[3] = {1024, 4096, 14336}, K = 4096;
    float *x = rnd((int64_t)1716 * K, 4), *w = rnd((int64_t)14336 * K, 5);
    float *y = rnd((int64_t)1716 * 14336, 6);
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 3; ni++) {
            lm_gemm_args a = {Ms[mi], Ns[ni], K, LM_F32, 0};
            double fl = 2.0 * Ms[mi] * Ns[ni] * K;
            int reps = fl > 5e10 || quick ? 1 : 3;
            check(be->gemm_fwd(be, y, x, w, NULL, &a), "gemm");
            double t = now();
            for (int r = 0; r < reps; r++)
                check(be->gemm_fwd(be, y, x, w, NULL, &a), "gemm");
            double dt = (now() - t) / reps, g = fl / dt / 1e9;
            char name[64];
            snprintf(name, sizeof name, "M=%d N=%d K=%d", Ms[mi], Ns[ni], K);
            printf("%-34s %10.1f %7.0f%% %8.1f\n", name, g, 100 * g / peak, dt * 1e3);
        }
    {   /* bf16 weights, widened on the fly */
        uint16_t *wb = malloc((size_t)4096 * K * 2);
        check(be->cast(be, wb, LM_BF16, w, LM_F32, (int64_t)4096 * K), "cast");
        lm_gemm_args a = {180, 4096, K, LM_BF16, 0};
        check(be->gemm_fwd(be, y, x, wb, NULL, &a), "gemm bf16");
        double t = now();
        check(be->gemm_fwd(be, y, x, wb, NULL, &a), "gemm bf16");
        double dt = now() - t, g = 2.0 * 180 * 4096 * K / dt / 1e9;
        printf("%-34s %10.1f %7.0f%% %8.1f\n", "M=180 N=4096 K=4096 (BF16 W)", g, 100 * g / peak,
               dt * 1e3);
        free(wb);
    }
    free(x), free(w), free(y);

    printf("\n%-34s %10s %8s %8s\n", "conv3d forward (abdomen)", "GFLOP/s", "ratio", "ms");
    static const struct {
        const char *name;
        int cin, cout, d, h, w, s;
    } cv[] = {
        {"enc conv1   1->8   96x80x96 s1", 1, 8, 96, 80, 96, 1},
        {"enc conv2   8->16  96x80x96 s2", 8, 16, 96, 80, 96, 2},
        {"enc conv3  16->16  48x40x48 s2", 16, 16, 48, 40, 48, 2},
        {"enc conv4  16->32  24x20x24 s2", 16, 32, 24, 20, 24, 2},
        {"enc conv5  32->32  12x10x12 s2", 32, 32, 12, 10, 12, 2},
        {"dec S4 CBL 96->32  12x10x12", 96, 32, 12, 10, 12, 1},
        {"dec S3 CBL 80->16  24x20x24", 80, 16, 24, 20, 24, 1},
        {"dec S2 CBL 60->16  48x40x48", 60, 16, 48, 40, 48, 1},
        {"dec S1 CBL 40->8   96x80x96", 40, 8, 96, 80, 96, 1},
        {"dec S1 head 8->3   96x80x96", 8, 3, 96, 80, 96, 1},
    };
    double tot_fl = 0, tot_t = 0;
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++) {
        lm_conv3d_args a = {cv[i].cin, cv[i].cout, cv[i].d, cv[i].h, cv[i].w, cv[i].s};
        int64_t nin = (int64_t)a.Cin * a.D * a.H * a.W;
        int64_t no = ((int64_t)(a.D - 1) / a.stride + 1) * ((a.H - 1) / a.stride + 1) *
                     ((a.W - 1) / a.stride + 1);
        float *cx = rnd(nin, 7), *cw = rnd((int64_t)a.Cout * a.Cin * 27, 8), *cb = rnd(a.Cout, 9);
        float *cy = malloc((size_t)(a.Cout * no) * sizeof *cy);
        double fl = 2.0 * a.Cout * a.Cin * 27 * no;
        check(be->conv3d_fwd(be, cy, cx, cw, cb, &a), "conv3d");
        int reps = fl > 2e9 || quick ? 1 : 3;
        double t = now();
        for (int r = 0; r < reps; r++)
            check(be->conv3d_fwd(be, cy, cx, cw, cb, &a), "conv3d");
        double dt = (now() - t) / reps, g = fl / dt / 1e9;
        tot_fl += fl, tot_t += dt;
        printf("%-34s %10.1f %7.0f%% %8.1f\n", cv[i].name, g, 100 * g / peak, dt * 1e3);
        free(cx), free(cw), free(cb), free(cy);
    }
    printf("%-34s %10.1f %7.0f%% %8.1f\n", "all of the above", tot_fl / tot_t / 1e9,
           100 * tot_fl / tot_t / 1e9 / peak, tot_t * 1e3);

    printf("\n%-34s %10s %8s\n", "warp (1 channel, trilinear, zeros)", "Gvox/s", "ms");
    static const int grids[2][3] = {{96, 80, 96}, {192, 160, 192}};
    for (int gi = 0; gi < 2; gi++) {
        const int D = grids[gi][0], H = grids[gi][1], W = grids[gi][2];
        const int64_t N = (int64_t)D * H * W;
        float *src = rnd(N, 10), *flow = rnd(3 * N, 11), *out = malloc((size_t)N * 4);
        for (int64_t i = 0; i < 3 * N; i++)
            flow[i] *= 6.0f;
        lm_warp_args a = {1, D, H, W, LM_PAD_ZEROS};
        check(be->warp_fwd(be, out, src, flow, &a), "warp");
        int reps = quick ? 1 : 3;
        double t = now();
        for (int r = 0; r < reps; r++)
            check(be->warp_fwd(be, out, src, flow, &a), "warp");
        double dt = (now() - t) / reps;
        char name[64];
        snprintf(name, sizeof name, "%dx%dx%d", D, H, W);
        printf("%-34s %10.3f %8.1f\n", name, N / dt / 1e9, dt * 1e3);
        free(src), free(flow), free(out);
    }
    return 0;
}
