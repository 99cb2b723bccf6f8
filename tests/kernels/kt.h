/* kt.h — helpers shared by the kernel tests (header-only: the build links only tests/lib/ sources
 * as test helpers): seeded buffers, a central finite-difference gradient checker, the adjoint
 * identity check of linear ops, the thread bit-identity check (1, 2, 3 threads), and KT_COVER,
 * which marks the ops a test exercises (test_coverage.c reads those marks and fails when an op
 * of ops.def has none).
 *
 * These tests run on the CPU backend, whose buffers are host memory, so they read and write
 * buffers directly; the CPU-vs-CUDA parity tests go through upload/download instead.
 */
#ifndef KT_H
#define KT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/lm_rng.h"
#include "cpu/cpu.h" /* LM_CPU_PAR_MIN */
#include "io/lm_error.h"
#include "lm_kernels.h"
#include "lm_test.h"

/* Marks op as covered by the enclosing case; compile-time check that the op exists. */
#define KT_COVER(op) ((void)sizeof(((lm_backend *)0)->op))

/* Calls an op on the CPU backend and fails the case (with lm_error) if it returns < 0. */
#define KT_CALL(op, ...)                                                                       \
    do {                                                                                       \
        lm_backend *be_ = lm_backend_cpu();                                                    \
        if (be_->op(be_, __VA_ARGS__) < 0)                                                     \
            lm_test_fail(__FILE__, __LINE__, "%s failed: %s", #op, lm_error());                \
    } while (0)

static inline lm_backend *kt_be(void) { return lm_backend_cpu(); }

static inline float *kt_alloc(int64_t n)
{
    float *p = lm_backend_alloc(kt_be(), (size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    memset(p, 0, (size_t)(n > 0 ? n : 1) * sizeof(float));
    return p;
}

static inline void kt_free(void *p) { lm_backend_free(kt_be(), p); }

/* uniform in [lo, hi), seeded by (test seed, stream) */
static inline float *kt_rand(int64_t n, double lo, double hi, uint64_t stream)
{
    float *p = kt_alloc(n);
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), stream);
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)(lo + (hi - lo) * lm_rng_uniform(&r));
    return p;
}

/* values in ±[lo, hi) with a random sign: keeps inputs away from kinks at 0 */
static inline float *kt_rand_away(int64_t n, double lo, double hi, uint64_t stream)
{
    float *p = kt_alloc(n);
    lm_rng r;
    lm_rng_init(&r, lm_test_seed(), stream);
    for (int64_t i = 0; i < n; i++) {
        double v = lo + (hi - lo) * lm_rng_uniform(&r);
        p[i] = (float)(lm_rng_uniform(&r) < 0.5 ? -v : v);
    }
    return p;
}

static inline float *kt_copy(const float *x, int64_t n)
{
    float *p = kt_alloc(n);
    memcpy(p, x, (size_t)n * sizeof *p);
    return p;
}

static inline double kt_dot(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static inline double kt_max_abs_diff(const float *a, const float *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d)
            m = d;
    }
    return m;
}

static inline double kt_nrm(const float *x, int64_t n) { return sqrt(kt_dot(x, x, n)); }

/* ---- the adjoint identity of a LINEAR op -----------------------------------------------------
 * lhs = <A x, r> and rhs = <x, Aᵀ r> in double must agree to 1e-5 of scale (a bound of both,
 * e.g. |x|·|r| for a permutation); the check proves its own power: wrong, the same product
 * through a realistic wrong adjoint, must be rejected by the same comparison. Choose inputs
 * (positive, or r = A x + noise) for which the wrong product misses by a good part of scale
 * for any seed. */
static inline void kt_adj_check(const char *what, double lhs, double rhs, double wrong,
                                double scale)
{
    const double tol = 1e-5;
    double err = fabs(lhs - rhs) / scale, werr = fabs(lhs - wrong) / scale;
    if (!(err <= tol))
        lm_test_fail(__FILE__, __LINE__,
                     "%s: <Ax, r> = %.9g, <x, A'r> = %.9g: err %.3g of scale %.3g, tol %.3g", what,
                     lhs, rhs, err, scale, tol);
    if (!(werr > tol))
        lm_test_fail(__FILE__, __LINE__, "%s: a wrong adjoint was accepted (err %.3g, tol %.3g)",
                     what, werr, tol);
    if (getenv("KT_VERBOSE"))
        fprintf(stderr, "  %s: adjoint err %.3g, wrong adjoint %.3g (tol %.3g)\n", what, err, werr,
                tol);
}

/* ---- the finite-difference checker ----------------------------------------------------------
 * f(ctx) runs the forward op on the current inputs and returns a scalar loss in double (usually
 * Σ r·y with fixed random r, so that the analytic gradient is the op's backward applied to r).
 * For each checked element i of x: fd_i = (f(x+h e_i) − f(x−h e_i)) / (actual float step).
 * The error is max_i |ga_i − fd_i| / scale, scale = max(max|fd|, max|ga|): a gradient is
 * accepted when that is <= tol. Every check also proves its own power: the same comparison
 * must REJECT ga scaled by (1 + 10·tol), ga with its largest element bumped by 10·tol·scale,
 * and (where two checked elements differ) ga with two elements swapped. */
typedef double (*kt_fn)(void *ctx);

typedef struct {
    double err, scale;
    int64_t worst, checked;
} kt_fd;

static inline double kt_fd_compare(const float *ga, const double *fd, const int64_t *idx,
                                   int64_t m, double *scale_out, int64_t *worst)
{
    double scale = 0, err = 0;
    for (int64_t j = 0; j < m; j++) {
        double a = fabs(fd[j]), b = fabs((double)ga[idx[j]]);
        scale = a > scale ? a : scale;
        scale = b > scale ? b : scale;
    }
    if (scale == 0)
        scale = 1e-30;
    for (int64_t j = 0; j < m; j++) {
        double e = fabs((double)ga[idx[j]] - fd[j]) / scale;
        if (e > err || e != e) {
            err = e;
            if (worst)
                *worst = j;
        }
    }
    if (scale_out)
        *scale_out = scale;
    return err;
}

/* Checks at most max_check elements (all when n <= max_check, else a fixed stride pattern).
 * Fails the case, with details, when the gradient is rejected or the checker is powerless. */
static inline kt_fd kt_gradcheck(const char *what, float *x, int64_t n, const float *ga, kt_fn f,
                                 void *ctx, double h, double tol)
{
    const int64_t max_check = 600;
    kt_fd r = {0, 0, -1, 0};
    int64_t m = n <= max_check ? n : max_check;
    int64_t *idx = malloc((size_t)(m ? m : 1) * sizeof *idx);
    double *fd = malloc((size_t)(m ? m : 1) * sizeof *fd);
    float *gp = malloc((size_t)(n ? n : 1) * sizeof *gp);
    for (int64_t j = 0; j < m; j++)
        idx[j] = n <= max_check ? j : (j * (n - 1)) / (m - 1);
    for (int64_t j = 0; j < m; j++) {
        int64_t i = idx[j];
        float x0 = x[i];
        float xp = (float)(x0 + h), xm = (float)(x0 - h);
        x[i] = xp;
        double fp = f(ctx);
        x[i] = xm;
        double fm = f(ctx);
        x[i] = x0;
        fd[j] = (fp - fm) / ((double)xp - (double)xm);
    }
    r.checked = m;
    int64_t wj = 0;
    r.err = kt_fd_compare(ga, fd, idx, m, &r.scale, &wj);
    r.worst = m ? idx[wj] : -1;
    if (!(r.err <= tol))
        lm_test_fail(__FILE__, __LINE__,
                     "%s: gradient rejected: max err %.3g of scale %.3g at %lld (analytic %.9g, "
                     "fd %.9g), tol %.3g",
                     what, r.err, r.scale, (long long)r.worst, m ? (double)ga[r.worst] : 0.0,
                     m ? fd[wj] : 0.0, tol);
    /* the power of this check: perturbed gradients must be rejected */
    int64_t big = 0;
    for (int64_t j = 0; j < m; j++)
        if (fabs(ga[idx[j]]) > fabs(ga[idx[big]]))
            big = j;
    memcpy(gp, ga, (size_t)n * sizeof *gp);
    for (int64_t j = 0; j < m; j++)
        gp[idx[j]] = (float)(ga[idx[j]] * (1.0 + 10 * tol));
    double e1 = kt_fd_compare(gp, fd, idx, m, NULL, NULL);
    memcpy(gp, ga, (size_t)n * sizeof *gp);
    gp[idx[big]] = (float)(ga[idx[big]] + 10 * tol * r.scale);
    double e2 = kt_fd_compare(gp, fd, idx, m, NULL, NULL);
    if (!(e1 > tol && e2 > tol))
        lm_test_fail(__FILE__, __LINE__,
                     "%s: checker accepted a perturbed gradient (errors %.3g %.3g, tol %.3g)",
                     what, e1, e2, tol);
    int64_t other = -1;
    for (int64_t j = 0; j < m; j++)
        if (fabs((double)ga[idx[j]] - ga[idx[big]]) > 10 * tol * r.scale) {
            other = j;
            break;
        }
    if (other >= 0) {
        memcpy(gp, ga, (size_t)n * sizeof *gp);
        gp[idx[big]] = ga[idx[other]];
        gp[idx[other]] = ga[idx[big]];
        double e3 = kt_fd_compare(gp, fd, idx, m, NULL, NULL);
        if (!(e3 > tol))
            lm_test_fail(__FILE__, __LINE__, "%s: checker accepted swapped gradient entries",
                         what);
    }
    if (getenv("KT_VERBOSE"))
        fprintf(stderr, "  %s: fd err %.3g (scale %.3g, %lld checked, tol %.3g)\n", what, r.err,
                r.scale, (long long)m, tol);
    free(idx);
    free(fd);
    free(gp);
    return r;
}

/* fd[i] for every i < n (no judgement): for the expected-failure tests of the checker */
static inline double kt_fd_error(float *x, int64_t n, const float *ga, kt_fn f, void *ctx,
                                 double h)
{
    int64_t *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    double *fd = malloc((size_t)(n ? n : 1) * sizeof *fd);
    for (int64_t i = 0; i < n; i++) {
        float x0 = x[i], xp = (float)(x0 + h), xm = (float)(x0 - h);
        x[i] = xp;
        double fp = f(ctx);
        x[i] = xm;
        double fm = f(ctx);
        x[i] = x0;
        fd[i] = (fp - fm) / ((double)xp - (double)xm);
        idx[i] = i;
    }
    double e = kt_fd_compare(ga, fd, idx, n, NULL, NULL);
    free(idx);
    free(fd);
    return e;
}

/* ---- thread bit-identity --------------------------------------------------------------------
 * run(ctx) computes into out (nbytes); it is run with 1, 2, ..., max_threads threads and every
 * output must be bit-identical to the 1-thread one (3 threads: a split that is no power of
 * two). out is filled with NaN before each run, so that a thread that skips its share of an
 * overwritten output shows (run() must itself reset what it accumulates into). The backend is
 * left at 2 threads. Sizes must reach the parallel code, or the check
 * proves nothing: KT_PARALLEL(n) fails the case where n, the count that a loop of the op
 * compares with LM_CPU_PAR_MIN (kernels/cpu/cpu.h), is below it. */
typedef void (*kt_run_fn)(void *ctx);

#define KT_PARALLEL(n)                                                                         \
    do {                                                                                       \
        if ((int64_t)(n) < LM_CPU_PAR_MIN)                                                     \
            lm_test_fail(__FILE__, __LINE__, "%s = %lld is below LM_CPU_PAR_MIN (%d): serial", \
                         #n, (long long)(n), LM_CPU_PAR_MIN);                                  \
    } while (0)

static inline void kt_same_bits_upto(const char *what, kt_run_fn run, void *ctx, const void *out,
                                     size_t nbytes, int max_threads)
{
    void *first = malloc(nbytes ? nbytes : 1);
    lm_backend_set_threads(kt_be(), 1);
    memset((void *)out, 0xff, nbytes);
    run(ctx);
    memcpy(first, out, nbytes);
    for (int nt = 2; nt <= max_threads; nt++) {
        lm_backend_set_threads(kt_be(), nt);
        memset((void *)out, 0xff, nbytes);
        run(ctx);
        if (memcmp(first, out, nbytes) != 0) {
            size_t i = 0;
            while (i < nbytes && ((unsigned char *)first)[i] == ((const unsigned char *)out)[i])
                i++;
            lm_test_fail(__FILE__, __LINE__, "%s: 1 and %d threads differ (first byte %zu of %zu)",
                         what, nt, i, nbytes);
            break;
        }
    }
    lm_backend_set_threads(kt_be(), 2);
    free(first);
}

/* 1, 2 and 3 threads */
static inline void kt_same_bits(const char *what, kt_run_fn run, void *ctx, const void *out,
                                size_t nbytes)
{
    kt_same_bits_upto(what, run, ctx, out, nbytes, 3);
}

#endif
