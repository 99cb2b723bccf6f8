/* test_cuda_parity.c — CPU-vs-CUDA parity for every op of ops.def (STYLE-ANCHORS §6.2 item 7):
 * fresh seeded random inputs (with NaN / ±inf / ±0 where an op defines them) run through the
 * CPU reference and, uploaded, through the CUDA backend; the downloaded outputs must agree
 * element by element (|cuda − cpu| <= atol + rtol·|cpu|), in NMSE, and in where they are NaN;
 * every device buffer carries guard bands of a sentinel pattern that must come back untouched,
 * and `=` outputs start filled with that sentinel so an element the kernel never wrote is
 * reported as such. `+=` outputs start from the same random values on both backends. Bad
 * arguments must be refused by both backends. The last case checks that every op of ops.def
 * was exercised.
 *
 * Without a CUDA build or without a GPU it prints a skip line and exits 77; with
 * LM_REQUIRE_CUDA=1 (make check-cuda) that is a failure (exit 1) instead.
 * Modes: `--bench` times the LLM-shaped GEMMs and the model's convolutions and warps on the GPU
 * (tests/gpu-check.sh runs it); other arguments select cases by name (lm_test_run).
 * Tolerances are per op: exact for permutations, copies and casts; ~1e-6 relative for
 * element-wise double maths (GPU libm differs from glibc in the last bits); reduction order
 * for sums, GEMMs and convolutions; bf16 rounding of the activations for BF16 GEMMs.
 */
#include "kt.h"

#include "common/lm_kmath.h"

#include <stdint.h>
#include <time.h>

#if LM_HAVE_CUDA
#include "cuda/lm_cuda.h"
#endif

static lm_backend *G;   /* the CUDA backend under test */
static lm_backend *CPU; /* the reference */
static int covered[LM_OP_COUNT];

/* ---- host memory: freed at the end of each case ---------------------------------------- */

#define MAXH 256
static void *hlive[MAXH];
static int nh;

static void *h_bytes(size_t nbytes)
{
    void *p = calloc(1, nbytes ? nbytes : 1);
    if (!p || nh == MAXH) {
        fprintf(stderr, "test_cuda_parity: out of host memory or slots\n");
        exit(1);
    }
    hlive[nh++] = p;
    return p;
}

static float *h_new(int64_t n)
{
    return h_bytes((size_t)n * sizeof(float));
}

static float *h_rand(int64_t n, double lo, double hi, uint64_t stream)
{
    float *p = h_new(n);
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), stream);
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)(lo + (hi - lo) * lm_rng_uniform(&r));
    return p;
}

static float *h_copy(const float *x, int64_t n)
{
    float *p = h_new(n);
    memcpy(p, x, (size_t)n * sizeof *p);
    return p;
}

/* NaN, ±inf, ±0 at the first positions (ops whose contract defines what happens to them) */
static void h_specials(float *x, int64_t n)
{
    const float v[5] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f};
    for (int i = 0; i < 5 && i < n; i++)
        x[i] = v[i];
}

/* ---- device memory with guard bands ------------------------------------------------------ */

#define GUARD_BYTES 256
#define SENT 0x7fa5a5a5u /* a quiet NaN no op produces */
#define MAXD 128

typedef struct {
    unsigned char *base;
    size_t nbytes; /* interior */
    const char *name;
} dbuf;
static dbuf dlive[MAXD];
static int nd;

static void fill_sent(unsigned char *p, size_t nbytes)
{
    uint32_t s = SENT;
    for (size_t i = 0; i + 4 <= nbytes; i += 4)
        memcpy(p + i, &s, 4);
    for (size_t i = nbytes / 4 * 4; i < nbytes; i++)
        p[i] = 0xa5;
}

/* A device buffer of nbytes: interior = init (or the sentinel when init is NULL), guards =
 * sentinel. Returns the interior's device address. */
static void *d_new(const char *name, const void *init, size_t nbytes)
{
    size_t tot = nbytes + 2 * GUARD_BYTES;
    unsigned char *host = malloc(tot), *base = lm_backend_alloc(G, tot);
    if (!host || !base || nd == MAXD) {
        fprintf(stderr, "test_cuda_parity: cannot allocate %zu bytes for %s: %s\n", tot, name,
                lm_error());
        exit(1);
    }
    fill_sent(host, tot);
    if (init)
        memcpy(host + GUARD_BYTES, init, nbytes);
    if (lm_backend_upload(G, base, host, tot) < 0) {
        fprintf(stderr, "test_cuda_parity: upload %s: %s\n", name, lm_error());
        exit(1);
    }
    free(host);
    dlive[nd].base = base;
    dlive[nd].nbytes = nbytes;
    dlive[nd].name = name;
    nd++;
    return base + GUARD_BYTES;
}

static float *d_in(const char *name, const float *x, int64_t n)
{
    return d_new(name, x, (size_t)n * sizeof(float));
}

static float *d_out(const char *name, int64_t n)
{
    return d_new(name, NULL, (size_t)n * 4);
}

static void d_get(void *host, const void *dev, size_t nbytes)
{
    if (lm_backend_download(G, host, dev, nbytes) < 0)
        lm_test_fail(__FILE__, __LINE__, "download: %s", lm_error());
}

/* every guard band intact, then everything freed (host and device) */
static void case_end(void)
{
    unsigned char want[GUARD_BYTES], got[GUARD_BYTES];
    fill_sent(want, GUARD_BYTES);
    for (int i = 0; i < nd; i++) {
        for (int side = 0; side < 2; side++) {
            const unsigned char *g =
                side ? dlive[i].base + GUARD_BYTES + dlive[i].nbytes : dlive[i].base;
            d_get(got, g, GUARD_BYTES);
            if (memcmp(want, got, GUARD_BYTES) != 0) {
                int k = 0;
                while (k < GUARD_BYTES && want[k] == got[k])
                    k++;
                lm_test_fail(__FILE__, __LINE__,
                             "%s: guard band %s the buffer overwritten "
                             "(byte %d)",
                             dlive[i].name, side ? "after" : "before", side ? k : k - GUARD_BYTES);
            }
        }
        lm_backend_free(G, dlive[i].base);
    }
    nd = 0;
    for (int i = 0; i < nh; i++)
        free(hlive[i]);
    nh = 0;
}

/* ---- comparison ---------------------------------------------------------------------------- */

typedef struct {
    double nmse, atol, rtol;
} tol;

static const tol T_EXACT = {0, 0, 0};
static const tol T_ELEM = {1e-12, 1e-6, 2e-6};  /* double maths rounded to f32 */
static const tol T_RED = {1e-11, 1e-5, 1e-5};   /* sums in another order */
static const tol T_F32MM = {1e-10, 1e-4, 1e-4}; /* f32 GEMM / cuDNN, K up to a few hundred */
static const tol T_BF16 = {3e-5, 6e-2, 3e-2};   /* activations rounded to bf16 (2^-9) */

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* compares n floats of the device buffer dev with ref */
static void cmp(const char *what, const float *ref, const float *dev, int64_t n, tol t)
{
    float *got = malloc((size_t)(n > 0 ? n : 1) * sizeof *got);
    d_get(got, dev, (size_t)n * sizeof *got);
    double se = 0, sr = 0, worst = 0;
    int64_t bad = 0, unwritten = 0, nanbad = 0, iw = -1;
    char first[5][160];
    int nf = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = ref[i], g = got[i];
        int ok;
        if (bits(got[i]) == SENT && bits(ref[i]) != SENT) {
            unwritten++;
            ok = 0;
        } else if (isnan(r) || isnan(g)) {
            ok = isnan(r) && isnan(g);
            nanbad += !ok;
        } else if (isinf(r) || isinf(g)) {
            ok = r == g;
        } else {
            double d = fabs(g - r);
            se += d * d;
            sr += r * r;
            ok = d <= t.atol + t.rtol * fabs(r);
            if (d > worst) {
                worst = d;
                iw = i;
            }
        }
        if (!ok) {
            bad++;
            if (nf < 5)
                snprintf(first[nf++], sizeof first[0], "[%lld] cpu %.9g cuda %.9g", (long long)i, r,
                         g);
        }
    }
    double nmse = sr > 0 ? se / sr : se;
    if (bad || !(nmse <= t.nmse)) {
        lm_test_fail(__FILE__, __LINE__,
                     "%s: %lld of %lld differ (%lld never written, %lld NaN disagreements), "
                     "nmse %.3g (tol %.3g), max |diff| %.3g at %lld; atol %.3g rtol %.3g",
                     what, (long long)bad, (long long)n, (long long)unwritten, (long long)nanbad,
                     nmse, t.nmse, worst, (long long)iw, t.atol, t.rtol);
        for (int k = 0; k < nf; k++)
            fprintf(stderr, "    %s %s\n", what, first[k]);
    } else if (getenv("KT_VERBOSE")) {
        fprintf(stderr, "  %s: n %lld nmse %.3g max |diff| %.3g\n", what, (long long)n, nmse,
                worst);
    }
    free(got);
}

static void cmp_bytes(const char *what, const void *ref, const void *dev, size_t nbytes)
{
    unsigned char *got = malloc(nbytes ? nbytes : 1);
    d_get(got, dev, nbytes);
    if (memcmp(ref, got, nbytes) != 0) {
        size_t i = 0;
        while (((const unsigned char *)ref)[i] == got[i])
            i++;
        lm_test_fail(__FILE__, __LINE__,
                     "%s: bytes differ from byte %zu of %zu (cpu %02x cuda "
                     "%02x)",
                     what, i, nbytes, ((const unsigned char *)ref)[i], got[i]);
    }
    free(got);
}

#define ON_CPU(op, ...)                                                                            \
    do {                                                                                           \
        if (CPU->op(CPU, __VA_ARGS__) < 0)                                                         \
            lm_test_fail(__FILE__, __LINE__, "cpu %s: %s", #op, lm_error());                       \
    } while (0)
#define ON_GPU(op, ...)                                                                            \
    do {                                                                                           \
        covered[LM_OPID_##op] = 1;                                                                 \
        if (G->op(G, __VA_ARGS__) < 0 || lm_backend_sync(G) < 0)                                   \
            lm_test_fail(__FILE__, __LINE__, "cuda %s: %s", #op, lm_error());                      \
    } while (0)
/* both backends must refuse */
#define BOTH_REFUSE(op, ...)                                                                       \
    do {                                                                                           \
        int rc_ = CPU->op(CPU, __VA_ARGS__);                                                       \
        int rg_ = G->op(G, __VA_ARGS__);                                                           \
        LM_CHECK(rc_ < 0 && rg_ < 0, "%s: bad arguments: cpu %d, cuda %d", #op, rc_, rg_);         \
    } while (0)

/* ---- cases --------------------------------------------------------------------------------- */

static void p_gemm(void)
{
    /* F32: odd sizes, bias, = and += */
    for (int bf = 0; bf < 2; bf++) {
        const int64_t M = bf ? 64 : 37, N = bf ? 96 : 53, K = bf ? 256 : 71;
        const tol t = bf ? T_BF16 : T_F32MM;
        float *x = h_rand(M * K, -1, 1, 1), *wf = h_rand(N * K, -1, 1, 2), *b = h_rand(N, -1, 1, 3);
        void *w = wf;
        size_t wbytes = (size_t)(N * K) * 4;
        if (bf) {
            uint16_t *wb = h_bytes((size_t)(N * K) * 2);
            for (int64_t i = 0; i < N * K; i++)
                wb[i] = lm_k_f32_to_bf16(wf[i]);
            w = wb;
            wbytes = (size_t)(N * K) * 2;
        }
        float *gx = d_in("x", x, M * K), *gb = d_in("b", b, N);
        void *gw = d_new("w", w, wbytes);
        for (int acc = 0; acc < 2; acc++)
            for (int withb = 0; withb < 2; withb++) {
                lm_gemm_args a = {M, N, K, bf ? LM_BF16 : LM_F32, acc};
                float *y0 = h_rand(M * N, -1, 1, 4), *y = h_copy(y0, M * N);
                float *gy = acc ? d_in("y", y0, M * N) : d_out("y", M * N);
                ON_CPU(gemm_fwd, y, x, w, withb ? b : NULL, &a);
                ON_GPU(gemm_fwd, gy, gx, gw, withb ? gb : NULL, &a);
                char what[64];
                snprintf(what, sizeof what, "gemm_fwd %s acc %d bias %d", bf ? "BF16" : "F32", acc,
                         withb);
                cmp(what, y, gy, M * N, t);
            }
        /* backward: dx, db always; dw only for F32 */
        lm_gemm_args a = {M, N, K, bf ? LM_BF16 : LM_F32, 0};
        float *dy = h_rand(M * N, -1, 1, 5), *dx = h_rand(M * K, -1, 1, 6),
              *dw = h_rand(N * K, -1, 1, 7), *db = h_rand(N, -1, 1, 8);
        float *gdy = d_in("dy", dy, M * N), *gdx = d_in("dx", dx, M * K),
              *gdw = d_in("dw", dw, N * K), *gdb = d_in("db", db, N);
        ON_CPU(gemm_bwd, dx, bf ? NULL : dw, db, dy, x, w, &a);
        ON_GPU(gemm_bwd, gdx, bf ? NULL : gdw, gdb, gdy, gx, gw, &a);
        cmp(bf ? "gemm_bwd BF16 dx" : "gemm_bwd F32 dx", dx, gdx, M * K, t);
        cmp("gemm_bwd db", db, gdb, N, T_RED);
        cmp(bf ? "gemm_bwd BF16 dw untouched" : "gemm_bwd F32 dw", dw, gdw, N * K, T_F32MM);
        if (bf)
            BOTH_REFUSE(gemm_bwd, dx, dw, NULL, dy, x, w, &a);
        case_end();
    }
    lm_gemm_args bad = {2, 3, 4, LM_F16, 0};
    float h[16] = {0};
    BOTH_REFUSE(gemm_fwd, h, h, h, NULL, &bad);
}

static void p_gemm_batched(void)
{
    const int64_t batch = 3, M = 19, N = 23, K = 29;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bz = 0; bz < 2; bz++) {
                lm_gemm_batched_args a = {batch, M, N, K, ta, tb, 0.7f, bz ? 0.0f : 0.5f,
                                          0,     0, 0, 0, 0,  0};
                a.lda = (ta ? M : K) + 3;
                a.ldb = (tb ? K : N) + 2;
                a.ldc = N + 5;
                a.stride_a = (ta ? K : M) * a.lda + 7;
                a.stride_b = (tb ? N : K) * a.ldb + 1;
                a.stride_c = M * a.ldc + 4;
                int64_t na = batch * a.stride_a, nb = batch * a.stride_b, nc = batch * a.stride_c;
                float *A = h_rand(na, -1, 1, 10), *B = h_rand(nb, -1, 1, 11),
                      *Cm = h_rand(nc, -1, 1, 12);
                float *gA = d_in("A", A, na), *gB = d_in("B", B, nb), *gC = d_in("C", Cm, nc);
                ON_CPU(gemm_batched, Cm, A, B, &a);
                ON_GPU(gemm_batched, gC, gA, gB, &a);
                char what[64];
                snprintf(what, sizeof what, "gemm_batched ta %d tb %d beta %g", ta, tb, a.beta);
                cmp(what, Cm, gC, nc, T_F32MM); /* padding between rows/items must stay */
                case_end();
            }
    /* K = 0: C = beta·C */
    lm_gemm_batched_args z = {2, 3, 4, 0, 0, 0, 1.0f, 0.5f, 1, 4, 4, 3, 4, 12};
    float *Cm = h_rand(24, -1, 1, 13), *gC = d_in("C", Cm, 24), *gA = d_out("A", 8),
          *gB = d_out("B", 8);
    float hA[8] = {0}, hB[8] = {0};
    ON_CPU(gemm_batched, Cm, hA, hB, &z);
    ON_GPU(gemm_batched, gC, gA, gB, &z);
    cmp("gemm_batched K=0", Cm, gC, 24, T_EXACT);
    case_end();
}

static void p_conv3d(void)
{
    const int Cin = 3, Cout = 5, D = 7, H = 6, W = 5;
    for (int s = 1; s <= 2; s++) {
        lm_conv3d_args a = {Cin, Cout, D, H, W, s};
        const int64_t nx = (int64_t)Cin * D * H * W, nw = (int64_t)Cout * Cin * 27;
        const int64_t ny =
            (int64_t)Cout * ((D - 1) / s + 1) * ((H - 1) / s + 1) * ((W - 1) / s + 1);
        float *x = h_rand(nx, -1, 1, 20), *w = h_rand(nw, -0.5, 0.5, 21),
              *b = h_rand(Cout, -1, 1, 22);
        float *gx = d_in("x", x, nx), *gw = d_in("w", w, nw), *gb = d_in("b", b, Cout);
        for (int withb = 0; withb < 2; withb++) {
            float *y = h_new(ny), *gy = d_out("y", ny);
            ON_CPU(conv3d_fwd, y, x, w, withb ? b : NULL, &a);
            ON_GPU(conv3d_fwd, gy, gx, gw, withb ? gb : NULL, &a);
            cmp(s == 1 ? "conv3d_fwd stride 1" : "conv3d_fwd stride 2", y, gy, ny, T_F32MM);
        }
        float *dy = h_rand(ny, -1, 1, 23), *dx = h_rand(nx, -1, 1, 24), *dw = h_rand(nw, -1, 1, 25),
              *db = h_rand(Cout, -1, 1, 26);
        float *gdy = d_in("dy", dy, ny), *gdx = d_in("dx", dx, nx), *gdw = d_in("dw", dw, nw),
              *gdb = d_in("db", db, Cout);
        ON_CPU(conv3d_bwd, dx, dw, db, dy, x, w, &a);
        ON_GPU(conv3d_bwd, gdx, gdw, gdb, gdy, gx, gw, &a);
        cmp("conv3d_bwd dx", dx, gdx, nx, T_F32MM);
        cmp("conv3d_bwd dw", dw, gdw, nw, T_F32MM);
        cmp("conv3d_bwd db", db, gdb, Cout, T_RED);
        /* only dx wanted */
        ON_CPU(conv3d_bwd, dx, NULL, NULL, dy, x, w, &a);
        ON_GPU(conv3d_bwd, gdx, NULL, NULL, gdy, gx, gw, &a);
        cmp("conv3d_bwd dx only", dx, gdx, nx, T_F32MM);
        case_end();
    }
    lm_conv3d_args bad = {1, 1, 4, 4, 4, 3};
    float h[64] = {0};
    BOTH_REFUSE(conv3d_fwd, h, h, h, NULL, &bad);
}

static void p_act(void)
{
    const int64_t n = 10007;
    const float slope = 0.01f;
    float *x = h_rand(n, -6, 6, 30), *u = h_rand(n, -2, 2, 31), *dy = h_rand(n, -1, 1, 32),
          *d0 = h_rand(n, -1, 1, 33);
    h_specials(x, n);
    float *gx = d_in("x", x, n), *gu = d_in("u", u, n), *gdy = d_in("dy", dy, n);
    float *y = h_new(n), *gy = d_out("y", n);
    ON_CPU(relu_fwd, y, x, n);
    ON_GPU(relu_fwd, gy, gx, n);
    cmp("relu_fwd", y, gy, n, T_EXACT);
    ON_CPU(leaky_relu_fwd, y, x, slope, n);
    ON_GPU(leaky_relu_fwd, gy, gx, slope, n);
    cmp("leaky_relu_fwd", y, gy, n, T_EXACT);
    ON_CPU(silu_fwd, y, x, n);
    ON_GPU(silu_fwd, gy, gx, n);
    cmp("silu_fwd", y, gy, n, T_ELEM);
    ON_CPU(gelu_fwd, y, x, n);
    ON_GPU(gelu_fwd, gy, gx, n);
    cmp("gelu_fwd", y, gy, n, T_ELEM);
    ON_CPU(swiglu_fwd, y, x, u, n);
    ON_GPU(swiglu_fwd, gy, gx, gu, n);
    cmp("swiglu_fwd", y, gy, n, T_ELEM);
    /* in place: y aliases x */
    float *xi = h_copy(x, n), *gxi = d_in("x in place", x, n);
    ON_CPU(silu_fwd, xi, xi, n);
    ON_GPU(silu_fwd, gxi, gxi, n);
    cmp("silu_fwd in place", xi, gxi, n, T_ELEM);

    struct {
        const char *name;
        int op;
    } bw[] = {{"relu_bwd", 0}, {"leaky_relu_bwd", 1}, {"silu_bwd", 2}, {"gelu_bwd", 3}};
    for (int k = 0; k < 4; k++) {
        float *dx = h_copy(d0, n), *gdx = d_in("dx", d0, n);
        switch (bw[k].op) {
        case 0:
            ON_CPU(relu_bwd, dx, dy, x, n);
            ON_GPU(relu_bwd, gdx, gdy, gx, n);
            break;
        case 1:
            ON_CPU(leaky_relu_bwd, dx, dy, x, slope, n);
            ON_GPU(leaky_relu_bwd, gdx, gdy, gx, slope, n);
            break;
        case 2:
            ON_CPU(silu_bwd, dx, dy, x, n);
            ON_GPU(silu_bwd, gdx, gdy, gx, n);
            break;
        default:
            ON_CPU(gelu_bwd, dx, dy, x, n);
            ON_GPU(gelu_bwd, gdx, gdy, gx, n);
            break;
        }
        cmp(bw[k].name, dx, gdx, n, k < 2 ? T_EXACT : T_ELEM);
    }
    float *dg = h_copy(d0, n), *du = h_copy(u, n), *gdg = d_in("dg", d0, n),
          *gdu = d_in("du", u, n);
    ON_CPU(swiglu_bwd, dg, du, dy, x, u, n);
    ON_GPU(swiglu_bwd, gdg, gdu, gdy, gx, gu, n);
    cmp("swiglu_bwd dg", dg, gdg, n, T_ELEM);
    cmp("swiglu_bwd du", du, gdu, n, T_ELEM);
    ON_CPU(swiglu_bwd, NULL, du, dy, x, u, n);
    ON_GPU(swiglu_bwd, NULL, gdu, gdy, gx, gu, n);
    cmp("swiglu_bwd du only", du, gdu, n, T_ELEM);
    case_end();
}

static void p_norm(void)
{
    /* instance norm, both layouts; large enough for several reduction chunks */
    for (int tm = 0; tm < 2; tm++) {
        const int64_t C = tm ? 70 : 4, N = tm ? 300 : 40000;
        lm_instnorm_args a = {C, N, tm, 1e-5f};
        float *x = h_rand(C * N, -2, 3, 40), *dy = h_rand(C * N, -1, 1, 41),
              *dx = h_rand(C * N, -1, 1, 42);
        float *y = h_new(C * N), *mean = h_new(C), *rstd = h_new(C);
        float *gx = d_in("x", x, C * N), *gy = d_out("y", C * N), *gm = d_out("mean", C),
              *gr = d_out("rstd", C);
        ON_CPU(instnorm_fwd, y, mean, rstd, x, &a);
        ON_GPU(instnorm_fwd, gy, gm, gr, gx, &a);
        cmp(tm ? "instnorm_fwd tokens y" : "instnorm_fwd volume y", y, gy, C * N, T_RED);
        cmp("instnorm_fwd mean", mean, gm, C, T_RED);
        cmp("instnorm_fwd rstd", rstd, gr, C, T_RED);
        /* in place, without statistics */
        float *xi = h_copy(x, C * N), *gxi = d_in("x in place", x, C * N);
        ON_CPU(instnorm_fwd, xi, NULL, NULL, xi, &a);
        ON_GPU(instnorm_fwd, gxi, NULL, NULL, gxi, &a);
        cmp("instnorm_fwd in place", xi, gxi, C * N, T_RED);
        /* the backward takes the CPU statistics on both sides */
        float *gdy = d_in("dy", dy, C * N), *gdx = d_in("dx", dx, C * N),
              *gm2 = d_in("mean", mean, C), *gr2 = d_in("rstd", rstd, C);
        ON_CPU(instnorm_bwd, dx, dy, x, mean, rstd, &a);
        ON_GPU(instnorm_bwd, gdx, gdy, gx, gm2, gr2, &a);
        cmp(tm ? "instnorm_bwd tokens" : "instnorm_bwd volume", dx, gdx, C * N, T_RED);
        case_end();
    }
    /* layer norm and RMSNorm over rows */
    const int64_t R = 37, Cc = 300;
    lm_rownorm_args a = {R, Cc, 1e-5f};
    float *x = h_rand(R * Cc, -2, 2, 43), *g = h_rand(Cc, 0.5, 1.5, 44),
          *bt = h_rand(Cc, -1, 1, 45), *dy = h_rand(R * Cc, -1, 1, 46);
    float *gx = d_in("x", x, R * Cc), *gg = d_in("gamma", g, Cc), *gbt = d_in("beta", bt, Cc),
          *gdy = d_in("dy", dy, R * Cc);
    for (int aff = 0; aff < 2; aff++) {
        float *y = h_new(R * Cc), *m = h_new(R), *rs = h_new(R);
        float *gy = d_out("y", R * Cc), *gm = d_out("mean", R), *grs = d_out("rstd", R);
        ON_CPU(layernorm_fwd, y, m, rs, x, aff ? g : NULL, aff ? bt : NULL, &a);
        ON_GPU(layernorm_fwd, gy, gm, grs, gx, aff ? gg : NULL, aff ? gbt : NULL, &a);
        cmp(aff ? "layernorm_fwd affine" : "layernorm_fwd", y, gy, R * Cc, T_RED);
        cmp("layernorm_fwd mean", m, gm, R, T_RED);
        cmp("layernorm_fwd rstd", rs, grs, R, T_RED);
        float *dx = h_rand(R * Cc, -1, 1, 47), *dgm = h_rand(Cc, -1, 1, 48),
              *dbt = h_rand(Cc, -1, 1, 49);
        float *gdx = d_in("dx", dx, R * Cc), *gdgm = d_in("dgamma", dgm, Cc),
              *gdbt = d_in("dbeta", dbt, Cc), *gm2 = d_in("mean", m, R),
              *grs2 = d_in("rstd", rs, R);
        ON_CPU(layernorm_bwd, dx, dgm, dbt, dy, x, m, rs, aff ? g : NULL, &a);
        ON_GPU(layernorm_bwd, gdx, gdgm, gdbt, gdy, gx, gm2, grs2, aff ? gg : NULL, &a);
        cmp("layernorm_bwd dx", dx, gdx, R * Cc, T_RED);
        cmp("layernorm_bwd dgamma", dgm, gdgm, Cc, T_RED);
        cmp("layernorm_bwd dbeta", dbt, gdbt, Cc, T_RED);
    }
    float *y = h_new(R * Cc), *gy = d_out("y", R * Cc);
    ON_CPU(rmsnorm_fwd, y, x, g, &a);
    ON_GPU(rmsnorm_fwd, gy, gx, gg, &a);
    cmp("rmsnorm_fwd", y, gy, R * Cc, T_RED);
    float *xi = h_copy(x, R * Cc), *gxi = d_in("x in place", x, R * Cc);
    ON_CPU(rmsnorm_fwd, xi, xi, g, &a);
    ON_GPU(rmsnorm_fwd, gxi, gxi, gg, &a);
    cmp("rmsnorm_fwd in place", xi, gxi, R * Cc, T_RED);
    float *dx = h_rand(R * Cc, -1, 1, 50), *gdx = d_in("dx", dx, R * Cc);
    ON_CPU(rmsnorm_bwd, dx, dy, x, g, &a);
    ON_GPU(rmsnorm_bwd, gdx, gdy, gx, gg, &a);
    cmp("rmsnorm_bwd", dx, gdx, R * Cc, T_RED);
    case_end();
    lm_instnorm_args bad = {0, 5, 0, 1e-5f};
    float h[8] = {0};
    BOTH_REFUSE(instnorm_fwd, h, NULL, NULL, h, &bad);
}

static void p_rope(void)
{
    /* angles up to ~1750 rad: fp32 angle rounding is the same on both sides by construction,
     * cos/sin may differ in the last bit */
    const tol t = {1e-11, 2e-6, 2e-6};
    for (int k = 0; k < 2; k++) {
        lm_rope_args a = {k ? 37 : 5, 3, 16, 500000.0f, k ? 1700 : 0};
        const int64_t n = a.L * a.n_heads * a.head_dim;
        float *x = h_rand(n, -2, 2, 60), *y = h_new(n), *gx = d_in("x", x, n), *gy = d_out("y", n);
        ON_CPU(rope_fwd, y, x, &a);
        ON_GPU(rope_fwd, gy, gx, &a);
        cmp("rope_fwd", y, gy, n, t);
        float *xi = h_copy(x, n), *gxi = d_in("x in place", x, n);
        ON_CPU(rope_fwd, xi, xi, &a);
        ON_GPU(rope_fwd, gxi, gxi, &a);
        cmp("rope_fwd in place", xi, gxi, n, t);
        float *dy = h_rand(n, -1, 1, 61), *dx = h_rand(n, -1, 1, 62);
        float *gdy = d_in("dy", dy, n), *gdx = d_in("dx", dx, n);
        ON_CPU(rope_bwd, dx, dy, &a);
        ON_GPU(rope_bwd, gdx, gdy, &a);
        cmp("rope_bwd", dx, gdx, n, t);
        case_end();
    }
    lm_rope_args bad = {4, 1, 7, 10000.0f, 0};
    float h[32] = {0};
    BOTH_REFUSE(rope_fwd, h, h, &bad);
}

static void p_attention(void)
{
    const tol t = {1e-10, 1e-5, 1e-4};
    for (int causal = 0; causal < 2; causal++) {
        lm_attn_args a = {97, 6, 2, 16, causal};
        const int64_t L = a.L, nq = (int64_t)L * a.n_q * a.head_dim,
                      nk = (int64_t)L * a.n_kv * a.head_dim, np = (int64_t)a.n_q * L * L;
        float *q = h_rand(nq, -1, 1, 70), *k = h_rand(nk, -1, 1, 71), *v = h_rand(nk, -1, 1, 72);
        float *o = h_new(nq), *p = h_new(np);
        float *gq = d_in("q", q, nq), *gk = d_in("k", k, nk), *gv = d_in("v", v, nk);
        float *go = d_out("o", nq), *gp = d_out("p", np);
        ON_CPU(attention_fwd, o, p, q, k, v, &a);
        ON_GPU(attention_fwd, go, gp, gq, gk, gv, &a);
        cmp(causal ? "attention_fwd causal o" : "attention_fwd o", o, go, nq, t);
        cmp(causal ? "attention_fwd causal p" : "attention_fwd p", p, gp, np, t);
        float *dout = h_rand(nq, -1, 1, 73), *dq = h_rand(nq, -1, 1, 74),
              *dk = h_rand(nk, -1, 1, 75), *dv = h_rand(nk, -1, 1, 76);
        /* the backward reads the CPU's P on both sides */
        float *gdout = d_in("dout", dout, nq), *gp2 = d_in("p (cpu)", p, np),
              *gdq = d_in("dq", dq, nq), *gdk = d_in("dk", dk, nk), *gdv = d_in("dv", dv, nk);
        ON_CPU(attention_bwd, dq, dk, dv, dout, q, k, v, p, &a);
        ON_GPU(attention_bwd, gdq, gdk, gdv, gdout, gq, gk, gv, gp2, &a);
        cmp("attention_bwd dq", dq, gdq, nq, t);
        cmp("attention_bwd dk", dk, gdk, nk, t);
        cmp("attention_bwd dv", dv, gdv, nk, t);
        ON_CPU(attention_bwd, NULL, NULL, dv, dout, q, k, v, p, &a);
        ON_GPU(attention_bwd, NULL, NULL, gdv, gdout, gq, gk, gv, gp2, &a);
        cmp("attention_bwd dv only", dv, gdv, nk, t);
        case_end();
    }
    lm_attn_args bad = {4, 3, 2, 8, 0};
    float h[256] = {0};
    BOTH_REFUSE(attention_fwd, h, h, h, h, h, &bad);
}

static void p_shuffle(void)
{
    for (int f = 1; f <= 2; f++)
        for (int acc = 0; acc < 2; acc++) {
            lm_shuffle_args a = {3, 3, 2, 4, f, acc};
            const int64_t n = (int64_t)a.C * a.d * a.h * a.w * f * f * f;
            float *tok = h_rand(n, -1, 1, 80), *vol0 = h_rand(n, -1, 1, 81);
            float *vol = h_copy(vol0, n), *tok2 = h_copy(vol0, n);
            float *gtok = d_in("tok", tok, n);
            float *gvol = acc ? d_in("vol", vol0, n) : d_out("vol", n);
            ON_CPU(voxel_shuffle, vol, tok, &a);
            ON_GPU(voxel_shuffle, gvol, gtok, &a);
            cmp("voxel_shuffle", vol, gvol, n, T_EXACT);
            float *gvin = d_in("vol in", vol0, n);
            float *gt2 = acc ? d_in("tok out", vol0, n) : d_out("tok out", n);
            ON_CPU(voxel_unshuffle, tok2, vol0, &a);
            ON_GPU(voxel_unshuffle, gt2, gvin, &a);
            cmp("voxel_unshuffle", tok2, gt2, n, T_EXACT);
            case_end();
        }
    for (int acc = 0; acc < 2; acc++) {
        const int64_t rows = 37, cols = 75;
        float *x = h_rand(rows * cols, -1, 1, 82), *y0 = h_rand(rows * cols, -1, 1, 83);
        float *y = h_copy(y0, rows * cols), *gx = d_in("x", x, rows * cols);
        float *gy = acc ? d_in("y", y0, rows * cols) : d_out("y", rows * cols);
        ON_CPU(transpose, y, x, rows, cols, acc);
        ON_GPU(transpose, gy, gx, rows, cols, acc);
        cmp("transpose", y, gy, rows * cols, T_EXACT);
        case_end();
    }
    const int64_t N = 131, ch[3] = {2, 0, 3};
    float *x0 = h_rand(2 * N, -1, 1, 84), *x2 = h_rand(3 * N, -1, 1, 85), *y = h_new(5 * N);
    float *gx0 = d_in("x0", x0, 2 * N), *gx1 = d_out("x1 (empty)", 0), *gx2 = d_in("x2", x2, 3 * N),
          *gy = d_out("y", 5 * N);
    const float *xs[3] = {x0, x0, x2}, *gxs[3] = {gx0, gx1, gx2};
    ON_CPU(concat, y, xs, ch, 3, N);
    ON_GPU(concat, gy, gxs, ch, 3, N);
    cmp("concat", y, gy, 5 * N, T_EXACT);
    float *d0 = h_rand(2 * N, -1, 1, 86), *gd0 = d_in("dx0", d0, 2 * N);
    float *dxs[3] = {d0, NULL, NULL}, *gdxs[3] = {gd0, NULL, NULL};
    float *gyin = d_in("dy", y, 5 * N);
    ON_CPU(split, dxs, y, ch, 3, N);
    ON_GPU(split, gdxs, gyin, ch, 3, N);
    cmp("split", d0, gd0, 2 * N, T_EXACT);
    case_end();
}

static void p_resample(void)
{
    const int shapes[3][4] = {{2, 5, 4, 3}, {1, 1, 3, 4}, {3, 6, 7, 5}};
    for (int s = 0; s < 3; s++) {
        lm_vol_args a = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3]};
        const int64_t n = (int64_t)a.C * a.D * a.H * a.W, n2 = 8 * n;
        float *x = h_rand(n, -1, 1, 90), *y = h_new(n2), *gx = d_in("x", x, n),
              *gy = d_out("y", n2);
        ON_CPU(upsample2_fwd, y, x, &a);
        ON_GPU(upsample2_fwd, gy, gx, &a);
        cmp("upsample2_fwd", y, gy, n2, T_ELEM);
        float *dy = h_rand(n2, -1, 1, 91), *dx = h_rand(n, -1, 1, 92);
        float *gdy = d_in("dy", dy, n2), *gdx = d_in("dx", dx, n);
        ON_CPU(upsample2_bwd, dx, dy, &a);
        ON_GPU(upsample2_bwd, gdx, gdy, &a);
        cmp("upsample2_bwd", dx, gdx, n, T_ELEM);
        if (a.D >= 2 && a.H >= 2 && a.W >= 2) {
            const int64_t np = (int64_t)a.C * (a.D / 2) * (a.H / 2) * (a.W / 2);
            float *yp = h_new(np), *gyp = d_out("pooled", np);
            ON_CPU(avgpool2_fwd, yp, x, &a);
            ON_GPU(avgpool2_fwd, gyp, gx, &a);
            cmp("avgpool2_fwd", yp, gyp, np, T_ELEM);
            float *dyp = h_rand(np, -1, 1, 93), *gdyp = d_in("dy pooled", dyp, np);
            ON_CPU(avgpool2_bwd, dx, dyp, &a);
            ON_GPU(avgpool2_bwd, gdx, gdyp, &a);
            cmp("avgpool2_bwd", dx, gdx, n, T_ELEM);
        } else {
            float h[64] = {0};
            BOTH_REFUSE(avgpool2_fwd, h, h, &a);
        }
        case_end();
    }
}

static void p_warp(void)
{
    const int C = 2, D = 6, H = 5, W = 7;
    const int64_t N = (int64_t)D * H * W;
    float *src = h_rand(C * N, -1, 1, 100), *flow = h_rand(3 * N, -3, 3, 101);
    flow[7] = NAN; /* a NaN displacement samples nothing (zeros) or the border */
    float *gsrc = d_in("src", src, C * N), *gflow = d_in("flow", flow, 3 * N);
    for (int pad = 0; pad < 2; pad++) {
        lm_warp_args a = {C, D, H, W, pad};
        float *y = h_new(C * N), *gy = d_out("y", C * N);
        ON_CPU(warp_fwd, y, src, flow, &a);
        ON_GPU(warp_fwd, gy, gsrc, gflow, &a);
        cmp(pad ? "warp_fwd border" : "warp_fwd zeros", y, gy, C * N, T_ELEM);
        float *dy = h_rand(C * N, -1, 1, 102), *ds = h_rand(C * N, -1, 1, 103),
              *df = h_rand(3 * N, -1, 1, 104);
        dy[3] = 0.0f; /* a zero gradient is skipped */
        float *gdy = d_in("dy", dy, C * N), *gds = d_in("dsrc", ds, C * N),
              *gdf = d_in("dflow", df, 3 * N);
        ON_CPU(warp_bwd, ds, df, dy, src, flow, &a);
        ON_GPU(warp_bwd, gds, gdf, gdy, gsrc, gflow, &a);
        cmp(pad ? "warp_bwd border dsrc" : "warp_bwd zeros dsrc", ds, gds, C * N, T_ELEM);
        cmp(pad ? "warp_bwd border dflow" : "warp_bwd zeros dflow", df, gdf, 3 * N, T_ELEM);
    }
    /* nearest: labels and floats, with half-voxel ties (round half to even) */
    float *fl = h_rand(3 * N, -2.5, 2.5, 105);
    for (int64_t i = 0; i < 3 * N; i += 5)
        fl[i] = (float)((int64_t)(fl[i] * 2) / 2.0 + 0.5);
    int32_t *lab = h_bytes((size_t)(C * N) * 4), *lo = h_bytes((size_t)(C * N) * 4);
    for (int64_t i = 0; i < C * N; i++)
        lab[i] = (int32_t)((i * 2654435761u) % 7) * 3;
    float *gfl = d_in("flow", fl, 3 * N);
    void *glab = d_new("labels", lab, (size_t)(C * N) * 4),
         *glo = d_new("out", NULL, (size_t)(C * N) * 4);
    lm_warp_args an = {C, D, H, W, LM_PAD_ZEROS};
    ON_CPU(warp_nearest, lo, lab, fl, LM_I32, &an);
    ON_GPU(warp_nearest, glo, glab, gfl, LM_I32, &an);
    cmp_bytes("warp_nearest I32", lo, glo, (size_t)(C * N) * 4);
    float *yo = h_new(C * N), *gyo = d_out("y", C * N);
    ON_CPU(warp_nearest, yo, src, fl, LM_F32, &an);
    ON_GPU(warp_nearest, gyo, gsrc, gfl, LM_F32, &an);
    cmp_bytes("warp_nearest F32", yo, gyo, (size_t)(C * N) * 4);
    an.padding = LM_PAD_BORDER;
    BOTH_REFUSE(warp_nearest, lo, lab, fl, LM_I32, &an);
    /* composition */
    lm_vol_args av = {3, D, H, W};
    float *r = h_rand(3 * N, -2, 2, 106), *u = h_rand(3 * N, -1.5, 1.5, 107);
    float *gr = d_in("r", r, 3 * N), *gu = d_in("u", u, 3 * N);
    float *psi = h_new(3 * N), *gpsi = d_out("psi", 3 * N);
    ON_CPU(compose_fwd, psi, r, u, &av);
    ON_GPU(compose_fwd, gpsi, gr, gu, &av);
    cmp("compose_fwd", psi, gpsi, 3 * N, T_ELEM);
    float *dpsi = h_rand(3 * N, -1, 1, 108), *dr = h_rand(3 * N, -1, 1, 109),
          *du = h_rand(3 * N, -1, 1, 110);
    float *gdpsi = d_in("dpsi", dpsi, 3 * N), *gdr = d_in("dr", dr, 3 * N),
          *gdu = d_in("du", du, 3 * N);
    ON_CPU(compose_bwd, dr, du, dpsi, r, u, &av);
    ON_GPU(compose_bwd, gdr, gdu, gdpsi, gr, gu, &av);
    cmp("compose_bwd dr", dr, gdr, 3 * N, T_ELEM);
    cmp("compose_bwd du", du, gdu, 3 * N, T_ELEM);
    case_end();
}

static void p_loss(void)
{
    const int K = 5;
    const int64_t N = 40000;                     /* several reduction chunks */
    const int32_t values[5] = {0, 3, 7, 11, 99}; /* 99 never occurs: an empty class */
    int32_t *lab = h_bytes((size_t)N * 4);
    lm_rng rg;
    lm_rng_init(&rg, lm_test_seed(), 120);
    for (int64_t i = 0; i < N; i++)
        lab[i] = values[lm_rng_below(&rg, 4)] + (lm_rng_below(&rg, 50) == 0); /* some strays */
    lm_onehot_args ao = {K, N, values};
    float *oh = h_new(K * N), *goh = d_out("onehot", K * N);
    int32_t *glab = d_new("labels", lab, (size_t)N * 4);
    ON_CPU(onehot, oh, lab, &ao);
    ON_GPU(onehot, goh, glab, &ao);
    cmp("onehot", oh, goh, K * N, T_EXACT);
    /* Dice: prediction zero on the empty class so its denominator is clamped */
    float *pred = h_rand(K * N, 0, 1, 121);
    for (int64_t i = 0; i < N; i++)
        pred[4 * N + i] = 0.0f;
    const uint8_t kept[5] = {0, 1, 1, 1, 1};
    lm_dice_args ad = {K, N, kept};
    float loss[1], dice[5], *gpred = d_in("pred", pred, K * N), *gloss = d_out("loss", 1),
                            *gdice = d_out("dice", K);
    ON_CPU(dice_loss_fwd, loss, dice, pred, oh, &ad);
    ON_GPU(dice_loss_fwd, gloss, gdice, gpred, goh, &ad);
    cmp("dice_loss_fwd loss", loss, gloss, 1, T_RED);
    cmp("dice_loss_fwd dice", dice, gdice, K, T_RED);
    float *dp = h_rand(K * N, -1, 1, 122), *gdp = d_in("dpred", dp, K * N);
    ON_CPU(dice_loss_bwd, dp, pred, oh, 0.75f, &ad);
    ON_GPU(dice_loss_bwd, gdp, gpred, goh, 0.75f, &ad);
    cmp("dice_loss_bwd", dp, gdp, K * N, T_RED);
    const uint8_t none[5] = {0};
    lm_dice_args bad = {K, N, none};
    BOTH_REFUSE(dice_loss_fwd, loss, dice, pred, oh, &bad);
    /* Grad-L2, with an axis of size 1 */
    const int shapes[2][4] = {{3, 9, 8, 7}, {2, 1, 30, 40}};
    for (int s = 0; s < 2; s++) {
        lm_vol_args a = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3]};
        const int64_t n = (int64_t)a.C * a.D * a.H * a.W;
        float *fl = h_rand(n, -3, 3, 123), *gfl = d_in("flow", fl, n), l[1], *gl = d_out("loss", 1);
        ON_CPU(grad_l2_fwd, l, fl, &a);
        ON_GPU(grad_l2_fwd, gl, gfl, &a);
        cmp("grad_l2_fwd", l, gl, 1, T_RED);
        float *df = h_rand(n, -1, 1, 124), *gdf = d_in("dflow", df, n);
        ON_CPU(grad_l2_bwd, df, fl, 1.5f, &a);
        ON_GPU(grad_l2_bwd, gdf, gfl, 1.5f, &a);
        cmp("grad_l2_bwd", df, gdf, n, T_ELEM);
    }
    case_end();
}

static void p_adam(void)
{
    const int64_t n = 10007;
    for (int k = 0; k < 2; k++) {
        lm_adam_args a = {1e-3f, 0.9f, 0.999f, 1e-8f, k ? 0.01f : 0.0f, k ? 7 : 1};
        float *p = h_rand(n, -1, 1, 130), *m = h_rand(n, -0.1, 0.1, 131),
              *v = h_rand(n, 0, 0.01, 132), *g = h_rand(n, -1, 1, 133);
        float *gp = d_in("p", p, n), *gm = d_in("m", m, n), *gv = d_in("v", v, n),
              *gg = d_in("g", g, n);
        ON_CPU(adam_step, p, m, v, g, n, &a);
        ON_GPU(adam_step, gp, gm, gv, gg, n, &a);
        cmp("adam_step p", p, gp, n, T_ELEM);
        cmp("adam_step m", m, gm, n, T_ELEM);
        cmp("adam_step v", v, gv, n, T_ELEM);
        case_end();
    }
    lm_adam_args bad = {1e-3f, 0.9f, 0.999f, 1e-8f, 0, 0};
    float h[4] = {0};
    BOTH_REFUSE(adam_step, h, h, h, h, 4, &bad);
}

static void p_elementwise(void)
{
    const int64_t n = 50021;
    float *a = h_rand(n, -2, 2, 140), *b = h_rand(n, -2, 2, 141), *y0 = h_rand(n, -1, 1, 142);
    h_specials(a, n);
    float *ga = d_in("a", a, n), *gb = d_in("b", b, n);
    float *y = h_new(n), *gy = d_out("y", n);
    ON_CPU(add, y, a, b, n);
    ON_GPU(add, gy, ga, gb, n);
    cmp("add", y, gy, n, T_EXACT);
    ON_CPU(mul, y, a, b, n);
    ON_GPU(mul, gy, ga, gb, n);
    cmp("mul", y, gy, n, T_EXACT);
    ON_CPU(scale, y, a, -0.37f, n);
    ON_GPU(scale, gy, ga, -0.37f, n);
    cmp("scale", y, gy, n, T_EXACT);
    float *ya = h_copy(y0, n), *gya = d_in("y axpy", y0, n);
    ON_CPU(axpy, ya, a, 1.7f, n);
    ON_GPU(axpy, gya, ga, 1.7f, n);
    cmp("axpy", ya, gya, n, T_EXACT);
    ON_CPU(fill, y, 2.5f, n);
    ON_GPU(fill, gy, 2.5f, n);
    cmp("fill", y, gy, n, T_EXACT);
    ON_CPU(copy, y, a, n);
    ON_GPU(copy, gy, ga, n);
    cmp("copy", y, gy, n, T_EXACT);
    /* reductions on finite data (a has NaN), then max_abs with and without NaN */
    float s[1], *gs = d_out("out", 1);
    ON_CPU(sum, s, b, n);
    ON_GPU(sum, gs, gb, n);
    cmp("sum", s, gs, 1, T_RED);
    ON_CPU(mean, s, b, n);
    ON_GPU(mean, gs, gb, n);
    cmp("mean", s, gs, 1, T_RED);
    ON_CPU(max_abs, s, b, n);
    ON_GPU(max_abs, gs, gb, n);
    cmp("max_abs", s, gs, 1, T_EXACT);
    ON_CPU(max_abs, s, a, n);
    ON_GPU(max_abs, gs, ga, n);
    cmp("max_abs with NaN", s, gs, 1, T_EXACT);
    ON_CPU(sum, s, b, 0);
    ON_GPU(sum, gs, gb, 0);
    cmp("sum of nothing", s, gs, 1, T_EXACT);
    BOTH_REFUSE(mean, s, b, 0);
    case_end();
}

/* a cast output element as a double: floats decoded, so NaNs compare by value (the GPU
 * canonicalises NaN payloads; the contract only says NaN stays NaN) */
static double cast_value(const void *p, lm_dtype t, int64_t i)
{
    switch (t) {
    case LM_F32: return ((const float *)p)[i];
    case LM_BF16: return lm_k_bf16_to_f32(((const uint16_t *)p)[i]);
    case LM_F16: return lm_k_f16_to_f32(((const uint16_t *)p)[i]);
    case LM_I32: return ((const int32_t *)p)[i];
    default: return ((const uint8_t *)p)[i];
    }
}

static void cmp_cast(const char *what, const void *ref, const void *dev, lm_dtype t, size_t esz,
                     int64_t n)
{
    unsigned char *got = malloc((size_t)n * esz + 1);
    d_get(got, dev, (size_t)n * esz);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = cast_value(ref, t, i), g = cast_value(got, t, i);
        int same = (isnan(r) && isnan(g)) || (r == g && signbit(r) == signbit(g)); /* -0 stays -0 */
        if (!same && bad++ < 5)
            fprintf(stderr, "    %s [%lld] cpu %.9g cuda %.9g\n", what, (long long)i, r, g);
    }
    if (bad)
        lm_test_fail(__FILE__, __LINE__, "%s: %lld of %lld differ", what, (long long)bad,
                     (long long)n);
    free(got);
}

/* every pair of the five cast dtypes, on values that exercise rounding and saturation */
static void p_cast(void)
{
    static const float special[] = {
        NAN,           INFINITY,       -INFINITY,   0.0f,     -0.0f,    0.5f,   1.5f,
        2.5f,          -0.5f,          -1.5f,       254.5f,   255.5f,   256.0f, -1.0f,
        3e9f,          -3e9f,          1e-40f,      65504.0f, 65520.0f, 1e5f,   0.1f,
        2147483520.0f, -2147483648.0f, 16777217.0f, 3.0e-8f,  6.1e-5f};
    const int ns = (int)(sizeof special / sizeof special[0]);
    const int64_t n = 4096;
    const lm_dtype dts[5] = {LM_F32, LM_BF16, LM_F16, LM_I32, LM_U8};
    const size_t sz[5] = {4, 2, 2, 4, 1};
    const char *const names[5] = {"F32", "BF16", "F16", "I32", "U8"};
    float *f = h_rand(n, -300, 300, 150);
    for (int i = 0; i < ns; i++)
        f[i] = special[i];
    for (int64_t i = ns; i < n; i += 3)
        f[i] = (float)(int)f[i] + 0.5f; /* ties */
    for (int xi = 0; xi < 5; xi++) {
        /* the source in dtype xi: made by the CPU cast from f32 */
        void *src = h_bytes((size_t)n * sz[xi]);
        ON_CPU(cast, src, dts[xi], f, LM_F32, n);
        void *gsrc = d_new("src", src, (size_t)n * sz[xi]);
        for (int yi = 0; yi < 5; yi++) {
            void *dst = h_bytes((size_t)n * sz[yi]);
            void *gdst = d_new("dst", NULL, (size_t)n * sz[yi]);
            ON_CPU(cast, dst, dts[yi], src, dts[xi], n);
            ON_GPU(cast, gdst, dts[yi], gsrc, dts[xi], n);
            char what[64];
            snprintf(what, sizeof what, "cast %s -> %s", names[xi], names[yi]);
            cmp_cast(what, dst, gdst, dts[yi], sz[yi], n);
        }
        case_end();
    }
    float h[4] = {0};
    BOTH_REFUSE(cast, h, LM_F64, h, LM_F32, 1);
}

static int ncases_run, ncases_total;

static void p_coverage(void)
{
    if (ncases_run < ncases_total - 1) {
        lm_test_skip("only some cases were selected");
        return;
    }
    for (int i = 0; i < LM_OP_COUNT; i++)
        if (!covered[i])
            lm_test_fail(__FILE__, __LINE__, "op %s (%s) has no CUDA parity case",
                         lm_op_table[i].name, lm_op_table[i].family);
    if (G)
        LM_CHECK(lm_backend_check(G) == 0, "%s", lm_error());
}

/* counts the cases that ran, for p_coverage */
#define CASE(name, fn)                                                                             \
    static void run_##fn(void)                                                                     \
    {                                                                                              \
        ncases_run++;                                                                              \
        fn();                                                                                      \
    }
CASE(gemm, p_gemm)
CASE(gemm_batched, p_gemm_batched)
CASE(conv3d, p_conv3d)
CASE(act, p_act)
CASE(norm, p_norm)
CASE(rope, p_rope)
CASE(attention, p_attention)
CASE(shuffle, p_shuffle)
CASE(resample, p_resample)
CASE(warp, p_warp)
CASE(loss, p_loss)
CASE(adam, p_adam)
CASE(elementwise, p_elementwise)
CASE(cast, p_cast)

static const lm_test_case cases[] = {
    {"gemm", run_p_gemm},
    {"gemm_batched", run_p_gemm_batched},
    {"conv3d", run_p_conv3d},
    {"activations", run_p_act},
    {"norms", run_p_norm},
    {"rope", run_p_rope},
    {"attention", run_p_attention},
    {"shuffle", run_p_shuffle},
    {"resample", run_p_resample},
    {"warp", run_p_warp},
    {"loss", run_p_loss},
    {"adam", run_p_adam},
    {"elementwise", run_p_elementwise},
    {"cast", run_p_cast},
    {"every op has a parity case", p_coverage},
    {0, 0},
};

/* ---- --bench: GPU throughput at the model's shapes ---------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void bench_check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "test_cuda_parity --bench: %s: %s\n", what, lm_error());
        exit(1);
    }
}

static void *bench_buf(size_t nbytes)
{
    void *p = lm_backend_alloc(G, nbytes);
    bench_check(p ? 0 : -1, "alloc");
    bench_check(G->fill(G, p, 0.01f, (int64_t)(nbytes / 4)), "fill");
    return p;
}

/* GEMM y [M,N] = x [M,K]·Wᵀ with W in wdt: seconds per call (best of reps) */
static double bench_gemm(int64_t M, int64_t N, int64_t K, lm_dtype wdt, int reps)
{
    float *x = bench_buf((size_t)(M * K) * 4), *y = bench_buf((size_t)(M * N) * 4);
    void *w = bench_buf((size_t)(N * K) * 4);
    lm_gemm_args a = {M, N, K, wdt, 0};
    bench_check(G->gemm_fwd(G, y, x, w, NULL, &a), "gemm warm-up");
    bench_check(lm_backend_sync(G), "sync");
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now_s();
        for (int i = 0; i < 10; i++)
            bench_check(G->gemm_fwd(G, y, x, w, NULL, &a), "gemm");
        bench_check(lm_backend_sync(G), "sync");
        t = (now_s() - t) / 10;
        best = t < best ? t : best;
    }
    lm_backend_free(G, x), lm_backend_free(G, y), lm_backend_free(G, w);
    return best;
}

static int run_bench(void)
{
    printf("# CUDA kernel benchmark on %s (best of 3 × 10 calls)\n", G->name);
    printf("%-44s %12s %12s\n", "what", "ms", "rate");
    /* the GEMM peak this backend reaches: a large square BF16-weight and F32 GEMM */
    double tp = bench_gemm(8192, 8192, 8192, LM_BF16, 3);
    double peak = 2.0 * 8192 * 8192 * 8192 / tp / 1e12;
    printf("%-44s %12.3f %9.1f TF/s\n", "gemm 8192^3 bf16 (peak reference)", tp * 1e3, peak);
    double tf = bench_gemm(4096, 4096, 4096, LM_F32, 3);
    printf("%-44s %12.3f %9.1f TF/s\n", "gemm 4096^3 f32", tf * 1e3,
           2.0 * 4096 * 4096 * 4096 / tf / 1e12);
    const int64_t Ms[2] = {180, 1716}, Ns[3] = {1024, 4096, 14336};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
            double t = bench_gemm(Ms[i], Ns[j], 4096, LM_BF16, 3);
            double tfl = 2.0 * Ms[i] * Ns[j] * 4096 / t / 1e12;
            char what[80];
            snprintf(what, sizeof what, "gemm bf16 M=%lld N=%lld K=4096", (long long)Ms[i],
                     (long long)Ns[j]);
            printf("%-44s %12.3f %9.1f TF/s (%.0f%% of peak)\n", what, t * 1e3, tfl,
                   100.0 * tfl / peak);
        }
    /* convolutions at the abdomen input (96×80×96) and a warp */
    const int cv[3][3] = {{2, 16, 1}, {16, 32, 2}, {32, 32, 1}};
    for (int c = 0; c < 3; c++) {
        int s = cv[c][2], D = s == 2 ? 96 : 48, H = s == 2 ? 80 : 40, W = s == 2 ? 96 : 48;
        if (c == 0)
            D = 96, H = 80, W = 96;
        lm_conv3d_args a = {cv[c][0], cv[c][1], D, H, W, s};
        int64_t nx = (int64_t)a.Cin * D * H * W, nw = (int64_t)a.Cout * a.Cin * 27;
        int64_t ny = (int64_t)a.Cout * ((D - 1) / s + 1) * ((H - 1) / s + 1) * ((W - 1) / s + 1);
        float *x = bench_buf((size_t)nx * 4), *w = bench_buf((size_t)nw * 4),
              *y = bench_buf((size_t)ny * 4), *b = bench_buf((size_t)a.Cout * 4),
              *dx = bench_buf((size_t)nx * 4), *dw = bench_buf((size_t)nw * 4),
              *db = bench_buf((size_t)a.Cout * 4);
        bench_check(G->conv3d_fwd(G, y, x, w, b, &a), "conv3d");
        bench_check(G->conv3d_bwd(G, dx, dw, db, y, x, w, &a), "conv3d_bwd");
        bench_check(lm_backend_sync(G), "sync");
        double t = now_s();
        for (int i = 0; i < 10; i++)
            bench_check(G->conv3d_fwd(G, y, x, w, b, &a), "conv3d");
        bench_check(lm_backend_sync(G), "sync");
        double tf_ = (now_s() - t) / 10;
        t = now_s();
        for (int i = 0; i < 10; i++)
            bench_check(G->conv3d_bwd(G, dx, dw, db, y, x, w, &a), "conv3d_bwd");
        bench_check(lm_backend_sync(G), "sync");
        double tb = (now_s() - t) / 10;
        char what[80];
        snprintf(what, sizeof what, "conv3d %d->%d %dx%dx%d s%d fwd", a.Cin, a.Cout, D, H, W, s);
        printf("%-44s %12.3f %9.1f TF/s\n", what, tf_ * 1e3, 2.0 * ny * a.Cin * 27 / tf_ / 1e12);
        snprintf(what, sizeof what, "conv3d %d->%d %dx%dx%d s%d bwd", a.Cin, a.Cout, D, H, W, s);
        printf("%-44s %12.3f %9.1f TF/s\n", what, tb * 1e3, 4.0 * ny * a.Cin * 27 / tb / 1e12);
        lm_backend_free(G, x), lm_backend_free(G, w), lm_backend_free(G, y), lm_backend_free(G, b);
        lm_backend_free(G, dx), lm_backend_free(G, dw), lm_backend_free(G, db);
    }
    {
        lm_warp_args a = {1, 96, 80, 96, LM_PAD_ZEROS};
        int64_t N = 96 * 80 * 96;
        float *src = bench_buf((size_t)N * 4), *flow = bench_buf((size_t)N * 12),
              *y = bench_buf((size_t)N * 4), *df = bench_buf((size_t)N * 12),
              *ds = bench_buf((size_t)N * 4);
        bench_check(G->warp_fwd(G, y, src, flow, &a), "warp");
        bench_check(lm_backend_sync(G), "sync");
        double t = now_s();
        for (int i = 0; i < 10; i++)
            bench_check(G->warp_fwd(G, y, src, flow, &a), "warp");
        bench_check(lm_backend_sync(G), "sync");
        double tw = (now_s() - t) / 10;
        printf("%-44s %12.3f %9.1f Gvox/s\n", "warp_fwd 96x80x96", tw * 1e3, N / tw / 1e9);
        t = now_s();
        for (int i = 0; i < 10; i++)
            bench_check(G->warp_bwd(G, ds, df, y, src, flow, &a), "warp_bwd");
        bench_check(lm_backend_sync(G), "sync");
        tw = (now_s() - t) / 10;
        printf("%-44s %12.3f %9.1f Gvox/s\n", "warp_bwd 96x80x96", tw * 1e3, N / tw / 1e9);
        lm_backend_free(G, src), lm_backend_free(G, flow), lm_backend_free(G, y),
            lm_backend_free(G, df), lm_backend_free(G, ds);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *req = getenv("LM_REQUIRE_CUDA");
    int require = req && strcmp(req, "1") == 0;
    char why[256] = "this build has no CUDA backend";
    int ndev = 0;
#if LM_HAVE_CUDA
    ndev = lm_cuda_device_count(why, sizeof why);
    if (ndev < 0) {
        printf("not ok - test_cuda_parity: CUDA error: %s\n", why);
        return 1;
    }
#endif
    if (ndev == 0) {
        if (require) {
            printf("not ok - test_cuda_parity: no CUDA device (%s) and LM_REQUIRE_CUDA=1\n", why);
            return 1;
        }
        printf("skip - test_cuda_parity: no CUDA device (%s)\n", why);
        return 77;
    }
#if LM_HAVE_CUDA
    int dev = 0;
    const char *d = getenv("LM_CUDA_PARITY_DEVICE");
    if (d && *d)
        dev = atoi(d);
    G = lm_backend_cuda(dev);
    if (!G) {
        printf("not ok - test_cuda_parity: %s\n", lm_error());
        return 1;
    }
    CPU = lm_backend_cpu();
    char desc[200] = "";
    lm_cuda_device_describe(dev, desc, sizeof desc);
    fprintf(stderr, "test_cuda_parity: %s %s, seed %llu\n", G->name, desc,
            (unsigned long long)lm_test_seed());
    int rc;
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        rc = run_bench();
    } else {
        ncases_total = (int)(sizeof cases / sizeof cases[0]) - 1;
        rc = lm_test_run(argc, argv, cases);
    }
    lm_backend_cuda_free(G);
    return rc;
#else
    (void)argc, (void)argv, (void)run_bench, (void)cases, (void)ncases_total;
    return 77;
#endif
}
