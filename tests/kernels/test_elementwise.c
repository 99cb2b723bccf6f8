/* test_elementwise.c — add, mul, scale, axpy, fill, copy, cast, sum, mean, max_abs: exact
 * values, dtype round trips (bf16 round-to-nearest-even, f16, integer saturation), the fixed
 * reduction order (bits equal for 1 and 2 threads) and the mul gradient by finite differences. */
#include "kt.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

static void t_arith(void)
{
    KT_COVER(add);
    KT_COVER(mul);
    KT_COVER(scale);
    KT_COVER(axpy);
    KT_COVER(fill);
    KT_COVER(copy);
    float a[3] = {1, 2, 3}, b[3] = {0.5f, -1, 4}, y[3];
    KT_CALL(add, y, a, b, 3);
    LM_CHECK(y[0] == 1.5f && y[1] == 1 && y[2] == 7, "add");
    KT_CALL(mul, y, a, b, 3);
    LM_CHECK(y[0] == 0.5f && y[1] == -2 && y[2] == 12, "mul");
    KT_CALL(scale, y, a, 2.0f, 3);
    LM_CHECK(y[0] == 2 && y[1] == 4 && y[2] == 6, "scale");
    KT_CALL(axpy, y, b, -2.0f, 3);
    LM_CHECK(y[0] == 1 && y[1] == 6 && y[2] == -2, "axpy");
    KT_CALL(fill, y, 7.5f, 3);
    LM_CHECK(y[0] == 7.5f && y[2] == 7.5f, "fill");
    KT_CALL(copy, y, a, 3);
    LM_CHECK(memcmp(y, a, sizeof a) == 0, "copy");
    KT_CALL(add, a, a, a, 3); /* in place */
    LM_CHECK(a[2] == 6, "add in place");
    KT_CALL(fill, y, 1.0f, 0); /* n = 0 is a no-op */
}

typedef struct {
    float *y, *a, *b, *r;
    int64_t n;
} mctx;

static double m_loss(void *p)
{
    mctx *c = p;
    KT_CALL(mul, c->y, c->a, c->b, c->n);
    return kt_dot(c->y, c->r, c->n);
}

static void t_mul_fd(void)
{
    KT_COVER(mul);
    const int64_t n = 11;
    mctx c = {kt_alloc(n), kt_rand(n, -2, 2, 1), kt_rand(n, -2, 2, 2), kt_rand(n, -1, 1, 3), n};
    float *da = kt_alloc(n), *db = kt_alloc(n);
    KT_CALL(mul, da, c.r, c.b, n); /* d/da Σ r·a·b = r·b */
    KT_CALL(mul, db, c.r, c.a, n);
    kt_gradcheck("mul a", c.a, n, da, m_loss, &c, 1e-2, 1e-3);
    kt_gradcheck("mul b", c.b, n, db, m_loss, &c, 1e-2, 1e-3);
    kt_free(c.y), kt_free(c.a), kt_free(c.b), kt_free(c.r), kt_free(da), kt_free(db);
}

static void t_cast(void)
{
    KT_COVER(cast);
    float x[6] = {1.0f, 1.00390625f /* 1 + 2^-8: a bf16 tie, rounds to even (1.0) */,
                  1.01171875f /* 1 + 3·2^-8: tie, rounds up to 1.015625 */, -3.5f, 65504.0f,
                  NAN};
    uint16_t h[6];
    float back[6];
    KT_CALL(cast, h, LM_BF16, x, LM_F32, 6);
    KT_CALL(cast, back, LM_F32, h, LM_BF16, 6);
    LM_CHECK(back[0] == 1.0f && back[1] == 1.0f && back[2] == 1.015625f && back[3] == -3.5f,
             "bf16 round trip %g %g %g", back[1], back[2], back[3]);
    LM_CHECK(isnan(back[5]), "bf16 NaN");
    KT_CALL(cast, h, LM_F16, x, LM_F32, 6);
    KT_CALL(cast, back, LM_F32, h, LM_F16, 6);
    LM_CHECK(back[0] == 1.0f && back[3] == -3.5f && back[4] == 65504.0f && isnan(back[5]),
             "f16 round trip");
    float f[5] = {2.5f, 3.5f, -2.5f, 1e10f, NAN};
    int32_t i[5];
    uint8_t u[5];
    KT_CALL(cast, i, LM_I32, f, LM_F32, 5);
    LM_CHECK(i[0] == 2 && i[1] == 4 && i[2] == -2 && i[3] == INT32_MAX && i[4] == 0,
             "f32 -> i32 %d %d %d %d %d", i[0], i[1], i[2], i[3], i[4]);
    KT_CALL(cast, u, LM_U8, f, LM_F32, 5);
    LM_CHECK(u[0] == 2 && u[2] == 0 && u[3] == 255, "f32 -> u8");
    int32_t lab[3] = {0, 60, -5};
    KT_CALL(cast, back, LM_F32, lab, LM_I32, 3);
    LM_CHECK(back[0] == 0 && back[1] == 60 && back[2] == -5, "i32 -> f32");
    lm_backend *be = kt_be();
    LM_CHECK(be->cast(be, back, LM_F64, x, LM_F32, 1) < 0, "F64 accepted");
}

static void t_reduce(void)
{
    KT_COVER(sum);
    KT_COVER(mean);
    KT_COVER(max_abs);
    const int64_t n = 100003;
    float *x = kt_alloc(n), out;
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(i % 7) - 3.0f; /* exact sums */
    KT_CALL(sum, &out, x, n);
    double want = 0;
    for (int64_t i = 0; i < n; i++)
        want += x[i];
    LM_CHECK(out == (float)want, "sum %g want %g", out, want);
    KT_CALL(mean, &out, x, n);
    LM_CHECK_CLOSE(out, want / n, 1e-9, 1e-6);
    x[777] = -9.5f;
    KT_CALL(max_abs, &out, x, n);
    LM_CHECK(out == 9.5f, "max_abs %g", out);
    x[5] = NAN;
    KT_CALL(max_abs, &out, x, n);
    LM_CHECK(isnan(out), "max_abs with NaN");
    KT_CALL(max_abs, &out, x, 0);
    LM_CHECK(out == 0, "max_abs of nothing");
    lm_backend *be = kt_be();
    LM_CHECK(be->mean(be, &out, x, 0) < 0, "mean of nothing accepted");
    kt_free(x);
}

typedef struct {
    float *x, *out;
    int64_t n;
} rctx;

static void r_run(void *p)
{
    rctx *c = p;
    KT_CALL(sum, c->out, c->x, c->n);
    KT_CALL(mean, c->out + 1, c->x, c->n);
    KT_CALL(max_abs, c->out + 2, c->x, c->n);
}

static void t_threads(void)
{
    KT_COVER(sum);
    rctx c = {kt_rand(1000003, -1, 1, 1), kt_alloc(3), 1000003};
    kt_same_bits("reductions", r_run, &c, c.out, 12);
    kt_free(c.x), kt_free(c.out);
}

/* lm_backend_alloc_zero: zero however the memory was used before (the CPU hands whole pages back
 * to the kernel and clears the edges: blocks of odd sizes and offsets, reused from the heap).
 * Blocks of 2 MiB and more are mappings of their own, 2 MiB aligned (the CPU backend asks for
 * huge pages there), ending with the block: the page after its last one is not mapped (so no
 * huge page covers more than the block). Sizes past what can be allocated fail. */
static void t_alloc_zero(void)
{
    lm_backend *be = kt_be();
    for (size_t k = 0; k < 64; k++) { /* sizes that wrap when rounded up */
        lm_error_clear();
        LM_CHECK(lm_backend_alloc(be, SIZE_MAX - k) == NULL && *lm_error(), "alloc SIZE_MAX - %zu",
                 k);
    }
    const size_t sizes[] = {4,          4100,           (1u << 20) + 12,        (2u << 20) - 4,
                            (2u << 20), (2u << 20) + 4, (3u << 20) + 4096 + 40, 48u << 20};
    const uintptr_t huge = (uintptr_t)2 << 20;
    for (int round = 0; round < 3; round++)
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t nb = sizes[k], n = nb / 4;
            float *p = lm_backend_alloc(be, nb); /* dirty the heap, then reuse it */
            LM_CHECK(p != NULL, "alloc %zu", nb);
            LM_CHECK(nb < huge || ((uintptr_t)p & (huge - 1)) == 0, "alloc %zu: 2 MiB aligned", nb);
            if (nb >= huge) {
                const size_t pg = (size_t)sysconf(_SC_PAGESIZE), end = (nb + pg - 1) / pg * pg;
                unsigned char v;
                LM_CHECK(mincore((char *)p + end, pg, &v) < 0 && errno == ENOMEM,
                         "alloc %zu: the page after the block is not mapped", nb);
            }
            KT_CALL(fill, p, -3.0f, (int64_t)n);
            lm_backend_free(be, p);
            float *z = lm_backend_alloc_zero(be, nb);
            LM_CHECK(z != NULL && ((uintptr_t)z & 63) == 0, "alloc_zero %zu: aligned", nb);
            LM_CHECK(nb < huge || ((uintptr_t)z & (huge - 1)) == 0, "alloc_zero %zu: 2 MiB aligned",
                     nb);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++)
                bad += z[i] != 0.0f || signbit(z[i]);
            LM_CHECK(bad == 0, "alloc_zero %zu bytes (round %d): %zu non-zero floats", nb, round,
                     bad);
            KT_CALL(fill, z, 2.0f, (int64_t)n); /* usable, then freed as any buffer */
            LM_CHECK(z[0] == 2.0f && z[n - 1] == 2.0f, "alloc_zero %zu: writable", nb);
            lm_backend_free(be, z);
        }
}

static const lm_test_case cases[] = {
    {"alloc_zero", t_alloc_zero},
    {"arithmetic", t_arith},    {"mul fd", t_mul_fd},
    {"cast", t_cast},           {"reductions", t_reduce},
    {"reductions threads 1 vs 2", t_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
