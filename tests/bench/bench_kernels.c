/* bench_kernels.c — throughput of the CPU backend at the model's shapes, each beside OpenBLAS's
 * own sgemm peak measured in the same run (multi-threaded, all cores, a large square GEMM):
 *   GEMM: LLaMA-3 layer shapes, M = 180 and 1716 tokens, K = 4096, N in {1024, 4096, 14336},
 *   and the MLP's down projection (K = 14336, N = 4096);
 *   conv3d forward: the abdomen encoder and decoder convolutions (input 96×80×96);
 *   warp: single-channel trilinear warp, voxels/s, with a white-noise flow (random access, the
 *   worst case) and a smooth one (what registration produces); then at 192x160x192 the same in
 *   NIfTI's array order and the nearest warp of a label map; each row beside the time of
 *   streaming the same arrays once in order, timed just before it (the warp's memory-bound
 *   floor, and a gauge of how busy the machine's memory is at that moment).
 * Every ratio is paired: each sample of an op is followed at once by a sample of its peer (the
 * sgemm peak for GEMM and conv3d, the stream for the warp), and the ratio printed is the median
 * of the per-pair ratios -- on a machine that other work shares, the speed of the cores
 * changes from one second to the next, and a peer timed minutes earlier (or a best-of peak
 * against a median op) would credit or charge the op with that change. Times and rates are
 * medians of the op's samples; the warp also gives the best sample ("best": what it does when
 * the machine leaves it alone). The buffers come from the backend's allocator, as the
 * product's tensors do (the peers use the same allocator).
 * --cpu-time times with the process's CPU time divided by the thread count instead of the wall
 * clock: on a machine that other work shares, that is what the cores would give if they were
 * ours (time a thread spends waiting for another one still counts, as OpenMP and OpenBLAS
 * threads spin while they wait).
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

static lm_backend *bk; /* the CPU backend: its allocator for every buffer */

/* A buffer of n floats from the backend's allocator, released with buf_free */
static float *buf(int64_t n)
{
    float *p = lm_backend_alloc(bk, (size_t)(n > 0 ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    return p;
}
static void buf_free(void *p)
{
    lm_backend_free(bk, p);
}

static float *rnd(int64_t n, uint64_t stream)
{
    float *p = buf(n);
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

#define PEAK_N 2048
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
    const int n = PEAK_N;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, peak_a, n, peak_b, n, 0,
                peak_c, n);
}

/* Runs of fn per sample: enough back-to-back runs to last MIN_SAMPLE_S (measured on one
 * untimed run), so that short ops are not timed below the clock's grain (the process CPU clock
 * of other threads advances in scheduler ticks). */
#define MIN_SAMPLE_S 0.2
static int inner_for(op_fn *fn, const op_ctx *c)
{
    double t0 = now();
    fn(c);
    double t1 = now() - t0;
    int inner = quick || t1 >= MIN_SAMPLE_S ? 1 : (int)(MIN_SAMPLE_S / (t1 > 1e-6 ? t1 : 1e-6));
    return inner < 1 ? 1 : inner + 1;
}

/* Seconds per run of one sample of inner runs */
static double sample(op_fn *fn, const op_ctx *c, int inner)
{
    double t0 = now();
    for (int i = 0; i < inner; i++)
        fn(c);
    return (now() - t0) / inner;
}

/* A peer: fn(ctx); blas: it is an OpenBLAS call with its own threading (threads set for it and
 * back to one after) */
typedef struct {
    op_fn *fn;
    const op_ctx *c;
    int blas;
} peer;

/* An op timed in pairs with its peer: op median and best (s), peer median (s), and ratio, the
 * median over the pairs of peer time over op time */
typedef struct {
    double t, best, tp, ratio;
} timing;

/* One sample of the peer, after one untimed run of it (the op's OpenMP workers spin for a
 * while after its last call, and must not take the cores from the peer's sample); then, after
 * an OpenBLAS peer, the op untimed until OpenBLAS's idle workers have stopped spinning (they do
 * for a while after a call), which also has the cores busy, not idle, when the op's next
 * sample starts (a pause there slowed the first run after it) */
static double peer_sample(peer p, int inner, op_fn *fn, const op_ctx *c)
{
    if (p.blas)
        openblas_set_num_threads(nthreads);
    if (inner)
        p.fn(p.c);
    const double t = inner ? sample(p.fn, p.c, inner) : 0;
    if (p.blas) {
        openblas_set_num_threads(1); /* what the CPU backend runs with */
        const double until = omp_get_wtime() + (cpu_time ? 1.0 : 0.3);
        do
            fn(c);
        while (omp_get_wtime() < until);
    }
    return t;
}

static timing time_pair(op_fn *fn, const op_ctx *c, peer p, int reps)
{
    if (p.blas)
        openblas_set_num_threads(nthreads);
    const int pinner = inner_for(p.fn, p.c);
    peer_sample(p, 0, fn, c);
    const int inner = inner_for(fn, c);
    double t[2 * MAX_REPS + 1], tp[2 * MAX_REPS + 1], q[2 * MAX_REPS + 1]; /* warp: 2·reps + 1 */
    for (int r = 0; r < reps; r++) {
        t[r] = sample(fn, c, inner);
        tp[r] = peer_sample(p, pinner, fn, c);
        q[r] = tp[r] / t[r];
    }
    timing m = {0, t[0], 0, 0};
    for (int r = 1; r < reps; r++)
        m.best = t[r] < m.best ? t[r] : m.best;
    m.t = median(t, reps), m.tp = median(tp, reps), m.ratio = median(q, reps);
    return m;
}

/* The peak: OpenBLAS sgemm 2048^3 with its own threads, on buffers of the backend's allocator */
static const double peak_flop = 2.0 * PEAK_N * PEAK_N * PEAK_N;
static peer peak_peer(void)
{
    static const op_ctx none;
    if (!peak_a) {
        peak_a = rnd((int64_t)PEAK_N * PEAK_N, 1), peak_b = rnd((int64_t)PEAK_N * PEAK_N, 2);
        peak_c = rnd((int64_t)PEAK_N * PEAK_N, 3);
    }
    return (peer){op_peak, &none, 1};
}

static void section(const char *title)
{
    printf("\n%-34s %10s %8s %8s %8s\n", title, "GFLOP/s", "peak", "ratio", "ms");
}

/* A row of GFLOP/s against the paired peak; adds the row to the section's totals: flop, time,
 * and the time the peak would take */
static void line(const char *name, double flop, timing m, double tot[3])
{
    printf("%-34s %10.1f %8.1f %7.0f%% %8.1f", name, flop / m.t / 1e9, peak_flop / m.tp / 1e9,
           100 * m.ratio * flop / peak_flop, m.t * 1e3);
    fflush(stdout);
    tot[0] += flop, tot[1] += m.t, tot[2] += m.ratio * flop / peak_flop * m.t;
}

/* The section's totals: all rows' FLOPs over all their time, and the time the paired peak
 * would take for each row's FLOPs over the rows' time */
static void total_line(const char *name, const double tot[3])
{
    printf("%-34s %10.1f %8s %7.0f%% %8.1f\n", name, tot[0] / tot[1] / 1e9, "",
           100 * tot[2] / tot[1], tot[1] * 1e3);
}

static void bench_gemm(lm_backend *be)
{
    section("GEMM y = x·Wᵀ");
    const peer pk = peak_peer();
    /* the shapes, K = 4096 with N = 1024 (k, v), 4096 (q, o) and 14336 (gate, up),
     * then the MLP's down projection, K = 14336 and N = 4096 (one weight buffer serves all) */
    const int Ms[2] = {180, 1716}, Ns[4] = {1024, 4096, 14336, 4096},
              Ks[4] = {4096, 4096, 4096, 14336};
    float *x = rnd((int64_t)1716 * 14336, 4), *w = rnd((int64_t)14336 * 4096, 5);
    float *y = rnd((int64_t)1716 * 14336, 6);
    uint16_t *wb = lm_backend_alloc(be, (size_t)14336 * 4096 * 2);
    if (!wb)
        check(lm_error_set("out of memory"), "gemm");
    check(be->cast(be, wb, LM_BF16, w, LM_F32, (int64_t)14336 * 4096), "cast");
    double tot[3] = {0, 0, 0};
    for (int bf = 0; bf < 2; bf++)
        for (int mi = 0; mi < 2; mi++)
            for (int ni = 0; ni < 4; ni++) {
                if (bf && quick && (mi || ni != 1))
                    continue;
                const int K = Ks[ni];
                lm_gemm_args a = {Ms[mi], Ns[ni], K, bf ? LM_BF16 : LM_F32, 0};
                op_ctx c = {
                    .be = be, .y = y, .x = x, .w = bf ? (const void *)wb : (const void *)w, .g = a};
                double fl = 2.0 * Ms[mi] * Ns[ni] * K;
                timing m = time_pair(op_gemm, &c, pk, reps_for(fl, 5e10));
                char name[64];
                snprintf(name, sizeof name, "M=%d N=%d K=%d%s", Ms[mi], Ns[ni], K,
                         bf ? " (BF16 W)" : "");
                line(name, fl, m, tot);
                printf("\n");
            }
    total_line("all of the above", tot);
    buf_free(x), buf_free(w), buf_free(y), buf_free(wb);
}

static void bench_conv(lm_backend *be)
{
    section("conv3d forward (abdomen)");
    printf("(last column: the time of the GEMM of the layer's size, Cout x voxels x Cin*27, "
           "through OpenBLAS\n with %d threads and no im2col, over the layer's, paired as the "
           "peak; '-' where its operand\n would pass 1 GB)\n",
           nthreads);
    const peer pk = peak_peer();
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
    double tot[3] = {0, 0, 0};
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++) {
        lm_conv3d_args a = {cv[i].cin, cv[i].cout, cv[i].d, cv[i].h, cv[i].w, cv[i].s};
        int64_t nin = (int64_t)a.Cin * a.D * a.H * a.W;
        int64_t no = ((int64_t)(a.D - 1) / a.stride + 1) * ((a.H - 1) / a.stride + 1) *
                     ((a.W - 1) / a.stride + 1);
        float *cx = rnd(nin, 7), *cw = rnd((int64_t)a.Cout * a.Cin * 27, 8), *cb = rnd(a.Cout, 9);
        float *cy = buf(a.Cout * no);
        double fl = 2.0 * a.Cout * a.Cin * 27 * no;
        op_ctx c = {.be = be, .y = cy, .x = cx, .w = cw, .b = cb, .c = a};
        line(cv[i].name, fl, time_pair(op_conv, &c, pk, reps_for(fl, 2e10)), tot);
        const int64_t K = (int64_t)a.Cin * 27;
        float *ex = K * no * 4 <= (1LL << 30) ? buf(K * no) : NULL;
        if (ex) { /* the operand's values do not matter; zeros would be as fast */
            for (int64_t j = 0; j < K * no; j++)
                ex[j] = cx[j % nin];
            eq_m = a.Cout, eq_n = (int)no, eq_k = (int)K;
            op_ctx e = {.y = cy, .x = ex, .w = cw};
            timing m = time_pair(op_conv, &c, (peer){op_eqgemm, &e, 1}, reps_for(fl, 2e10));
            printf(" %7.0f%%\n", 100 * m.ratio);
            buf_free(ex);
        } else {
            printf(" %8s\n", "-");
        }
        fflush(stdout);
        buf_free(cx), buf_free(cw), buf_free(cb), buf_free(cy);
    }
    total_line("all of the above", tot);
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
    printf("\n%-34s %10s %8s %8s %8s\n", "warp (1 channel, trilinear, zeros)", "Gvox/s", "best",
           "ms", "/stream");
    printf("(Gvox/s: the median sample, best: the fastest; /stream: the time to stream the same "
           "arrays once\n in order over the warp's, paired)\n");
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
        float *src = rnd(N, 10), *flow = rnd(3 * N, 11), *out = buf(N);
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
        const timing m = time_pair(rows[r].nearest ? op_nearest : op_warp, &c,
                                   (peer){op_stream, &c, 0}, quick ? 1 : 2 * reps_opt + 1);
        printf("%-34s %10.3f %8.3f %8.1f %7.0f%%\n", rows[r].name, N / m.t / 1e9, N / m.best / 1e9,
               m.t * 1e3, 100 * m.ratio);
        fflush(stdout);
        buf_free(src), buf_free(flow), buf_free(out);
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
    nthreads = threads, bk = be;
    check(lm_backend_set_threads(be, threads), "threads");
    printf("threads %d; peak = OpenBLAS sgemm %d^3 with its own threading, sampled in turn with "
           "each op; figures are medians of %d samples; %s\n",
           threads, PEAK_N, quick ? 1 : reps_opt,
           cpu_time ? "times are process CPU time / threads" : "times are wall clock");
    if (want[0])
        bench_gemm(be);
    if (want[1])
        bench_conv(be);
    if (want[2])
        bench_warp(be);
    if (peak_a)
        buf_free((void *)peak_a), buf_free((void *)peak_b), buf_free(peak_c);
    return 0;
}
