/* bench_kernels.c — throughput of the CPU backend at the model's shapes, each beside OpenBLAS's
 * own sgemm peak measured in the same run (multi-threaded, all cores, a large square GEMM):
 *   GEMM: LLaMA-3 layer shapes, M = 180 and 1716 tokens, K = 4096, N in {1024, 4096, 14336};
 *   conv3d forward: the abdomen encoder and decoder convolutions (input 96×80×96);
 *   warp: single-channel trilinear warp, voxels/s, with a white-noise flow (random access, the
 *   worst case) and a smooth one (what registration produces); then at 192x160x192 the same in
 *   NIfTI's array order and the nearest warp of a label map; each row beside the time of
 *   streaming the same arrays once in order, timed just before it (the warp's memory-bound
 *   floor, and a gauge of how busy the machine's memory is at that moment).
 * Every figure is the median of several repetitions, and the peak is measured again just
 * before each section (the best of several: a disturbed sample must not lower it and so
 * flatter the section's ratios). Ratios are against the peak of their own section. --cpu-time times with the process's CPU time divided
 * by the thread count instead of the wall clock: on a machine that other work shares, that is
 * what the cores would give if they were ours (time a thread spends waiting for another one
 * still counts, as OpenMP and OpenBLAS threads spin while they wait).
 * Not a test: it prints numbers and always exits 0 unless something fails to run.
 * Usage: bench_kernels [--quick] [--cpu-time] [--reps N] [--only gemm|conv|warp]...
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/lm_rng.h"
#include "io/lm_error.h"
#include "lm_kernels.h"

#define MAX_REPS 31

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

static int cpu_time, nthreads = 1;

static double now(void)
{
    if (!cpu_time)
        return omp_get_wtime();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ((double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec) / nthreads;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int reps_opt = 5, quick;

static int reps_for(double work, double big)
{
    if (quick)
        return 1;
    return work > big && reps_opt > 3 ? 3 : reps_opt;
}

static void check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "bench_kernels: %s: %s\n", what, lm_error());
        exit(1);
    }
}

/* One op of the benchmark: call(ctx) runs it once. */
typedef struct {
    lm_backend *be;
    float *y;
    const float *x, *b, *flow;
    const void *w;
    lm_gemm_args g;
    lm_conv3d_args c;
    lm_warp_args wa;
} op_ctx;

typedef void op_fn(const op_ctx *c);

static void op_gemm(const op_ctx *c)
{
    check(c->be->gemm_fwd(c->be, c->y, c->x, c->w, NULL, &c->g), "gemm");
}

static void op_conv(const op_ctx *c)
{
    check(c->be->conv3d_fwd(c->be, c->y, c->x, c->w, c->b, &c->c), "conv3d");
}

static void op_warp(const op_ctx *c)
{
    check(c->be->warp_fwd(c->be, c->y, c->x, c->flow, &c->wa), "warp");
}

static void op_nearest(const op_ctx *c)
{
    check(c->be->warp_nearest(c->be, c->y, c->x, c->flow, LM_I32, &c->wa), "warp_nearest");
}

/* The warp's peer: the same arrays streamed once in order, out[p] = src[p] ^ the three flow
 * components at p, bitwise (the least memory traffic a warp can have, and no arithmetic on
 * label bits read as floats), with the same threads */
static void op_stream(const op_ctx *c)
{
    const int64_t N = (int64_t)c->wa.D * c->wa.H * c->wa.W;
    const uint32_t *x = (const uint32_t *)c->x, *f = (const uint32_t *)c->flow;
    uint32_t *y = (uint32_t *)c->y;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++)
        y[i] = x[i] ^ f[i] ^ f[N + i] ^ f[2 * N + i];
}

static const float *peak_a, *peak_b;
static float *peak_c;

/* A conv layer's peer: the GEMM it amounts to, y[Cout, voxels] = W[Cout, Cin·27] · X[Cin·27,
 * voxels] (no im2col), through OpenBLAS with its own threading */
static int eq_m, eq_n, eq_k;
static void op_eqgemm(const op_ctx *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, eq_m, eq_n, eq_k, 1.0f,
                (const float *)c->w, eq_k, c->x, eq_n, 0.0f, c->y, eq_n);
}

static void op_peak(const op_ctx *c)
{
    (void)c;
    const int n = 2048;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, peak_a, n, peak_b, n, 0,
                peak_c, n);
}

/* Seconds per run: the median of reps samples, each of enough back-to-back runs to last
 * MIN_SAMPLE_S (after one untimed run), so that short ops are not timed below the clock's
 * grain (the process CPU clock of other threads advances in scheduler ticks). */
#define MIN_SAMPLE_S 0.2
static int best_of; /* time_op returns the fastest sample instead of the median */
static double time_op(op_fn *fn, const op_ctx *c, int reps)
{
    double t0 = now();
    fn(c);
    double t1 = now() - t0, t[2 * MAX_REPS + 1];
    int inner = quick || t1 >= MIN_SAMPLE_S ? 1 : (int)(MIN_SAMPLE_S / (t1 > 1e-6 ? t1 : 1e-6));
    inner = inner < 1 ? 1 : inner + 1;
    for (int r = 0; r < reps; r++) {
        t0 = now();
        for (int i = 0; i < inner; i++)
            fn(c);
        t[r] = (now() - t0) / inner;
    }
    if (best_of) {
        double b = t[0];
        for (int r = 1; r < reps; r++)
            b = t[r] < b ? t[r] : b;
        return b;
    }
    return median(t, reps);
}

static double sgemm_peak(int threads)
{
    const int n = 2048;
    float *a = rnd((int64_t)n * n, 1), *b = rnd((int64_t)n * n, 2), *c = rnd((int64_t)n * n, 3);
    peak_a = a, peak_b = b, peak_c = c;
    openblas_set_num_threads(threads);
    /* the best of the samples: what the cores can do, so that a sample disturbed by other work
     * on a shared machine cannot lower the peak and flatter every ratio of the section */
    best_of = 1;
    double dt = time_op(op_peak, NULL, quick ? 3 : reps_opt);
    best_of = 0;
    openblas_set_num_threads(1); /* what the CPU backend runs with */
    free(a), free(b), free(c);
    if (cpu_time) { /* let OpenBLAS's idle threads stop spinning before anything else is timed */
        struct timespec pause = {1, 0};
        nanosleep(&pause, NULL);
    }
    return 2.0 * n * n * n / dt / 1e9;
}

static double section_peak(const char *title, const char *unit, int threads)
{
    double peak = sgemm_peak(threads);
    printf("\n%-34s %10s %8s %8s   (peak %.1f GFLOP/s)\n", title, unit, "ratio", "ms", peak);
    return peak;
}

static void line(const char *name, double flop, double dt, double peak)
{
    double g = flop / dt / 1e9;
    printf("%-34s %10.1f %7.0f%% %8.1f\n", name, g, 100 * g / peak, dt * 1e3);
    fflush(stdout);
}

static void bench_gemm(lm_backend *be, int threads)
{
    double peak = section_peak("GEMM y = x·Wᵀ", "GFLOP/s", threads);
    const int Ms[2] = {180, 1716}, Ns[3] = {1024, 4096, 14336}, K = 4096;
    float *x = rnd((int64_t)1716 * K, 4), *w = rnd((int64_t)14336 * K, 5);
    float *y = rnd((int64_t)1716 * 14336, 6);
    uint16_t *wb = malloc((size_t)14336 * K * 2);
    if (!wb)
        check(lm_error_set("out of memory"), "gemm");
    check(be->cast(be, wb, LM_BF16, w, LM_F32, (int64_t)14336 * K), "cast");
    for (int bf = 0; bf < 2; bf++)
        for (int mi = 0; mi < 2; mi++)
            for (int ni = 0; ni < 3; ni++) {
                if (bf && quick && (mi || ni != 1))
                    continue;
                lm_gemm_args a = {Ms[mi], Ns[ni], K, bf ? LM_BF16 : LM_F32, 0};
                op_ctx c = {.be = be, .y = y, .x = x, .w = bf ? (const void *)wb : (const void *)w,
                            .g = a};
                double fl = 2.0 * Ms[mi] * Ns[ni] * K;
                double dt = time_op(op_gemm, &c, reps_for(fl, 5e10));
                char name[64];
                snprintf(name, sizeof name, "M=%d N=%d K=%d%s", Ms[mi], Ns[ni], K,
                         bf ? " (BF16 W)" : "");
                line(name, fl, dt, peak);
            }
    free(x), free(w), free(y), free(wb);
}

static void bench_conv(lm_backend *be, int threads)
{
    double peak = section_peak("conv3d forward (abdomen)", "GFLOP/s", threads);
    printf("(last column: the time of the GEMM of the layer's size, Cout x voxels x Cin*27, "
           "through OpenBLAS\n with %d threads and no im2col, over the layer's; '-' where its "
           "operand would pass 1 GB)\n",
           threads);
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
        op_ctx c = {.be = be, .y = cy, .x = cx, .w = cw, .b = cb, .c = a};
        double dt = time_op(op_conv, &c, reps_for(fl, 2e10));
        tot_fl += fl, tot_t += dt;
        double g = fl / dt / 1e9;
        printf("%-34s %10.1f %7.0f%% %8.1f", cv[i].name, g, 100 * g / peak, dt * 1e3);
        const int64_t K = (int64_t)a.Cin * 27;
        float *ex = K * no * 4 <= (1LL << 30) ? malloc((size_t)(K * no) * sizeof *ex) : NULL;
        if (ex) { /* the operand's values do not matter; zeros would be as fast */
            for (int64_t j = 0; j < K * no; j++)
                ex[j] = cx[j % nin];
            eq_m = a.Cout, eq_n = (int)no, eq_k = (int)K;
            openblas_set_num_threads(threads);
            op_ctx e = {.y = cy, .x = ex, .w = cw};
            double de = time_op(op_eqgemm, &e, reps_for(fl, 2e10));
            openblas_set_num_threads(1);
            struct timespec idle = {0, 300000000}; /* OpenBLAS's threads stop spinning */
            nanosleep(&idle, NULL);
            printf(" %7.0f%%\n", 100 * de / dt);
            free(ex);
        } else {
            printf(" %8s\n", "-");
        }
        fflush(stdout);
        free(cx), free(cw), free(cb), free(cy);
    }
    line("all of the above", tot_fl, tot_t, peak);
}

/* A smooth field: a few low-frequency sines per component, up to about 4 voxels. */
static void smooth_flow(float *flow, int D, int H, int W)
{
    const int64_t N = (int64_t)D * H * W;
    const double tau = 6.283185307179586;
    for (int c = 0; c < 3; c++)
        for (int z = 0; z < D; z++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    double u = (double)z / D, v = (double)y / H, s = (double)x / W;
                    double f = 2.5 * sin(tau * (u + 0.3 * c)) * cos(tau * (0.5 * v + 0.1 * c)) +
                               1.5 * sin(tau * (2 * s + v + 0.2 * c));
                    flow[c * N + ((int64_t)z * H + y) * W + x] = (float)f;
                }
}

static void bench_warp(lm_backend *be)
{
    printf("\n%-34s %10s %8s %8s\n", "warp (1 channel, trilinear, zeros)", "Gvox/s", "ms",
           "/stream");
    printf("(/stream: the time to stream the same arrays once in order, timed just before the row,"
           " over the warp's)\n");
    static const int grids[2][3] = {{96, 80, 96}, {192, 160, 192}};
    /* the trilinear rows, then at 192x160x192 the NIfTI array order (what lm-warp runs on
     * NIfTI files) and the nearest warp of an I32 label map */
    static const struct {
        const char *name;
        int smooth, grid, nearest, nifti;
    } rows[] = {
        {"96x80x96 noise flow x6", 0, 0, 0, 0},
        {"192x160x192 noise flow x6", 0, 1, 0, 0},
        {"96x80x96 smooth flow", 1, 0, 0, 0},
        {"192x160x192 smooth flow", 1, 1, 0, 0},
        {"192x160x192 noise, NIfTI order", 0, 1, 0, 1},
        {"192x160x192 smooth, NIfTI order", 1, 1, 0, 1},
        {"nearest 192x160x192 noise", 0, 1, 1, 0},
        {"nearest 192x160x192 smooth", 1, 1, 1, 0},
        {"nearest 192x160x192 smooth, NIfTI", 1, 1, 1, 1},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        const int D = grids[rows[r].grid][0], H = grids[rows[r].grid][1],
                  W = grids[rows[r].grid][2];
        const int64_t N = (int64_t)D * H * W;
        float *src = rnd(N, 10), *flow = rnd(3 * N, 11), *out = malloc((size_t)N * 4);
        if (rows[r].smooth)
            smooth_flow(flow, D, H, W);
        else
            for (int64_t i = 0; i < 3 * N; i++)
                flow[i] *= 6.0f;
        if (rows[r].nearest) /* labels 0..4 */
            for (int64_t i = 0; i < N; i++) {
                int32_t v = (int32_t)((src[i] + 0.5f) * 5.0f) % 5;
                memcpy(&src[i], &v, sizeof v);
            }
        /* the volumes are synthetic, so the NIfTI order only changes which axis is fastest */
        const int pad = LM_PAD_ZEROS | (rows[r].nifti ? LM_WARP_NIFTI_ORDER : 0);
        op_ctx c = {.be = be, .y = out, .x = src, .flow = flow, .wa = {1, D, H, W, pad}};
        const double ds = time_op(op_stream, &c, quick ? 1 : 2 * reps_opt + 1);
        double dt =
            time_op(rows[r].nearest ? op_nearest : op_warp, &c, quick ? 1 : 2 * reps_opt + 1);
        const char *name = rows[r].name;
        printf("%-34s %10.3f %8.1f %7.0f%%\n", name, N / dt / 1e9, dt * 1e3, 100 * ds / dt);
        fflush(stdout);
        free(src), free(flow), free(out);
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_kernels [--quick] [--cpu-time] [--reps N] [--only gemm|conv|warp]...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int want[3] = {0, 0, 0}, any = 0;
    static const char *const sections[3] = {"gemm", "conv", "warp"};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--cpu-time") == 0) {
            cpu_time = 1;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > MAX_REPS)
                usage();
            reps_opt = (int)n;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            int k = 0;
            while (k < 3 && strcmp(argv[i + 1], sections[k]) != 0)
                k++;
            if (k == 3)
                usage();
            want[k] = any = 1;
            i++;
        } else {
            usage();
        }
    }
    if (!any)
        want[0] = want[1] = want[2] = 1;
    lm_backend *be = lm_backend_cpu();
    int threads = omp_get_max_threads();
    nthreads = threads;
    check(lm_backend_set_threads(be, threads), "threads");
    printf("threads %d; peak = OpenBLAS sgemm 2048^3 with its own threading, best of %d, "
           "measured before each section; figures are medians of %d runs; %s\n",
           threads, quick ? 3 : reps_opt, quick ? 1 : reps_opt,
           cpu_time ? "times are process CPU time / threads" : "times are wall clock");
    if (want[0])
        bench_gemm(be, threads);
    if (want[1])
        bench_conv(be, threads);
    if (want[2])
        bench_warp(be);
    return 0;
}
