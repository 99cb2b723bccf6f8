/* gemm.c — linear layers (y = x·Wᵀ + b) and their gradients, and a strided batched GEMM, on the
 * CPU. BF16 weights are widened to f32 in fixed panels, so a frozen 14336×4096 weight never needs
 * a full f32 copy.
 * The forward has two paths, each a function of the shape (and of the CPU) alone, so the bits
 * never depend on the thread count:
 *  - up to GEMM_AVX2_MAX_M rows of x on a CPU with AVX2 and FMA: register-blocked micro-tiles
 *    (6 rows of x by 16 of W) over blocks of GEMM_KC along K. x is copied once per call into
 *    the micro-tiles' order (by whichever thread first needs a block), W a panel at a time by
 *    the thread whose tile uses it, widening BF16 in the same pass; threads take small tiles
 *    of columns of y as they come. Through OpenBLAS, its own copies of W, and of x once per
 *    tile, took a quarter of the time at 180 tokens, and BF16 an extra widening pass;
 *  - otherwise OpenBLAS: y cut into its own fixed tiles (all of M, up to GEMM_FWD_M rows, by
 *    GEMM_PANEL columns), each one single-threaded sgemm call on one thread; a tile's panel of
 *    W is widened (BF16) by the thread that uses it, once, a cache-sized block at a time.
 * Not here: attention (rope_attn.c uses sgemm directly), convolutions (conv3d.c).
 */
#include "cpu.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* Rows of W widened per panel (fixed: part of the summation order of the BF16 backward), and
 * the columns of a forward tile. */
#define GEMM_PANEL 512
/* Rows of a forward tile: all of M up to this (OpenBLAS then packs each panel of W once). */
#define GEMM_FWD_M 2048
/* Columns (of K) of a BF16 weight panel widened at a time (part of the BF16 forward's
 * summation order: partial sums over these blocks are added in float). */
#define GEMM_BF16_K 512

static int gemm_check(const lm_gemm_args *a)
{
    LM_CPU_CHECK(a->M >= 0 && a->N >= 0 && a->K >= 0, "gemm: negative size [%lld,%lld,%lld]",
                 (long long)a->M, (long long)a->N, (long long)a->K);
    LM_CPU_CHECK(a->M <= INT32_MAX && a->N <= INT32_MAX && a->K <= INT32_MAX,
                 "gemm: size too large for BLAS");
    LM_CPU_CHECK(a->wdtype == LM_F32 || a->wdtype == LM_BF16,
                 "gemm: weight dtype must be F32 or BF16 (got %s)", lm_cpu_dtype_name(a->wdtype));
    return 0;
}

static void widen_panel(float *dst, const uint16_t *src, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n >= LM_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dst[i] = lm_k_bf16_to_f32(src[i]);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <stdatomic.h>
#define GEMM_HAVE_AVX2 1

/* The AVX2 forward. Each y element is the sum over the blocks of GEMM_KC (in order, added in
 * float to y) of an FMA chain over that block's k in order: the tiles, the thread count and
 * the dtype of W (a BF16 weight gives the bits of its widened F32 copy) do not enter it. */
#define GEMM_MR 6           /* rows of x in a micro-tile */
#define GEMM_NR 16          /* rows of W (columns of y) in a micro-tile */
#define GEMM_KC 256         /* depth of a block (part of the summation order) */
#define GEMM_MC 192         /* rows of x swept per panel of W (a block of them stays in L2) */
#define GEMM_TN 128         /* most columns of y in a thread's tile */
#define GEMM_TN_MIN 32      /* fewest */
#define GEMM_TILES 16       /* tiles wanted in a call */
#define GEMM_AVX2_MAX_M 512 /* above this OpenBLAS's own blocking does as well */

typedef struct {
    const float *x;
    const void *w;
    float *y;
    float *xp;       /* x in micro-tile order: block b at b·GEMM_KC·Mp, [M/6][kb][6] */
    atomic_int *xst; /* per block of xp: 0 to copy, 1 being copied, 2 ready */
    const float *b;  /* bias or NULL */
    int M, N, K, Mp, nkb, bf16, beta1, accumulate;
} gemm_avx2_ctx;

/* dst[kb][6] = rows 0..mr-1 of x (ldx apart), columns 0..kb-1; rows past mr are 0 */
__attribute__((target("avx2,fma"))) static void gemm_pack_x(float *dst, const float *x,
                                                             int64_t ldx, int mr, int kb)
{
    int k = 0;
    if (mr == GEMM_MR) {
        const __m256 z = _mm256_setzero_ps();
        for (; k + 8 <= kb; k += 8) { /* 6×8 transposed, as an 8×8 with two zero rows */
            __m256 r0 = _mm256_loadu_ps(x + k), r1 = _mm256_loadu_ps(x + ldx + k);
            __m256 r2 = _mm256_loadu_ps(x + 2 * ldx + k), r3 = _mm256_loadu_ps(x + 3 * ldx + k);
            __m256 r4 = _mm256_loadu_ps(x + 4 * ldx + k), r5 = _mm256_loadu_ps(x + 5 * ldx + k);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 s4 = _mm256_shuffle_ps(t4, z, 0x44), s5 = _mm256_shuffle_ps(t4, z, 0xEE);
            __m256 s6 = _mm256_shuffle_ps(t5, z, 0x44), s7 = _mm256_shuffle_ps(t5, z, 0xEE);
            float *d = dst + GEMM_MR * k;
            /* each store writes 8 floats, the 2 past the 6 rewritten by the next one */
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(s0, s4, 0x20));
            _mm256_storeu_ps(d + 6, _mm256_permute2f128_ps(s1, s5, 0x20));
            _mm256_storeu_ps(d + 12, _mm256_permute2f128_ps(s2, s6, 0x20));
            _mm256_storeu_ps(d + 18, _mm256_permute2f128_ps(s3, s7, 0x20));
            _mm256_storeu_ps(d + 24, _mm256_permute2f128_ps(s0, s4, 0x31));
            _mm256_storeu_ps(d + 30, _mm256_permute2f128_ps(s1, s5, 0x31));
            _mm256_storeu_ps(d + 36, _mm256_permute2f128_ps(s2, s6, 0x31));
            __m256 l = _mm256_permute2f128_ps(s3, s7, 0x31);
            _mm_storeu_ps(d + 42, _mm256_castps256_ps128(l));
            _mm_storel_pi((__m64 *)(void *)(d + 46), _mm256_extractf128_ps(l, 1));
        }
    }
    for (int i = 0; i < GEMM_MR; i++)
        for (int kk = k; kk < kb; kk++)
            dst[GEMM_MR * kk + i] = i < mr ? x[i * ldx + kk] : 0.0f;
}

/* 8 rows (ld apart) of 8 f32 or BF16 values, widened */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256
gemm_load8(const void *w, int bf16, int64_t off)
{
    if (bf16) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)w + off));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)w + off);
}

/* dst[kb][16] = rows 0..nr-1 of W (ldw elements apart, F32 or BF16), columns 0..kb-1, as f32;
 * rows past nr are 0 */
__attribute__((target("avx2,fma"))) static void gemm_pack_w(float *dst, const void *w, int bf16,
                                                             int64_t ldw, int nr, int kb)
{
    int k = 0;
    if (nr == GEMM_NR)
        for (; k + 8 <= kb; k += 8)
            for (int h = 0; h < 2; h++) { /* 8×8 transposes */
                const int64_t o = 8 * h * ldw + k;
                __m256 r0 = gemm_load8(w, bf16, o), r1 = gemm_load8(w, bf16, o + ldw);
                __m256 r2 = gemm_load8(w, bf16, o + 2 * ldw), r3 = gemm_load8(w, bf16, o + 3 * ldw);
                __m256 r4 = gemm_load8(w, bf16, o + 4 * ldw), r5 = gemm_load8(w, bf16, o + 5 * ldw);
                __m256 r6 = gemm_load8(w, bf16, o + 6 * ldw), r7 = gemm_load8(w, bf16, o + 7 * ldw);
                __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float *d = dst + GEMM_NR * k + 8 * h;
                _mm256_store_ps(d, _mm256_permute2f128_ps(s0, s4, 0x20));
                _mm256_store_ps(d + 16, _mm256_permute2f128_ps(s1, s5, 0x20));
                _mm256_store_ps(d + 32, _mm256_permute2f128_ps(s2, s6, 0x20));
                _mm256_store_ps(d + 48, _mm256_permute2f128_ps(s3, s7, 0x20));
                _mm256_store_ps(d + 64, _mm256_permute2f128_ps(s0, s4, 0x31));
                _mm256_store_ps(d + 80, _mm256_permute2f128_ps(s1, s5, 0x31));
                _mm256_store_ps(d + 96, _mm256_permute2f128_ps(s2, s6, 0x31));
                _mm256_store_ps(d + 112, _mm256_permute2f128_ps(s3, s7, 0x31));
            }
    for (int j = 0; j < GEMM_NR; j++)
        for (int kk = k; kk < kb; kk++)
            dst[GEMM_NR * kk + j] =
                j >= nr ? 0.0f
                : bf16  ? lm_k_bf16_to_f32(((const uint16_t *)w)[j * ldw + kk])
                        : ((const float *)w)[j * ldw + kk];
}

/* c[mr][nr] (ldc) = (acc ? c + : ) xp[kb][6]·wp[kb][16], the product summed over k in order */
__attribute__((target("avx2,fma"))) static void gemm_ukr(float *c, int64_t ldc, const float *xp,
                                                          const float *wp, int kb, int acc, int mr,
                                                          int nr)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma GCC unroll 4
    for (int k = 0; k < kb; k++) {
        const __m256 w0 = _mm256_load_ps(wp + GEMM_NR * k),
                     w1 = _mm256_load_ps(wp + GEMM_NR * k + 8);
        const float *a = xp + GEMM_MR * k;
        __m256 v = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(v, w0, c00), c01 = _mm256_fmadd_ps(v, w1, c01);
        v = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(v, w0, c10), c11 = _mm256_fmadd_ps(v, w1, c11);
        v = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(v, w0, c20), c21 = _mm256_fmadd_ps(v, w1, c21);
        v = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(v, w0, c30), c31 = _mm256_fmadd_ps(v, w1, c31);
        v = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(v, w0, c40), c41 = _mm256_fmadd_ps(v, w1, c41);
        v = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(v, w0, c50), c51 = _mm256_fmadd_ps(v, w1, c51);
    }
    __m256 r[GEMM_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                            {c30, c31}, {c40, c41}, {c50, c51}};
    if (mr == GEMM_MR && nr == GEMM_NR) {
        for (int i = 0; i < GEMM_MR; i++) {
            float *p = c + i * ldc;
            if (acc) {
                r[i][0] = _mm256_add_ps(_mm256_loadu_ps(p), r[i][0]);
                r[i][1] = _mm256_add_ps(_mm256_loadu_ps(p + 8), r[i][1]);
            }
            _mm256_storeu_ps(p, r[i][0]);
            _mm256_storeu_ps(p + 8, r[i][1]);
        }
        return;
    }
    float t[GEMM_MR][GEMM_NR];
    for (int i = 0; i < GEMM_MR; i++) {
        _mm256_storeu_ps(t[i], r[i][0]);
        _mm256_storeu_ps(t[i] + 8, r[i][1]);
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

__attribute__((target("avx2,fma"))) static void gemm_xblock_copy(const gemm_avx2_ctx *c, int b)
{
    const int k0 = b * GEMM_KC, kb = c->K - k0 < GEMM_KC ? c->K - k0 : GEMM_KC;
    float *dst = c->xp + (int64_t)k0 * c->Mp;
    for (int m = 0; m < c->M; m += GEMM_MR)
        gemm_pack_x(dst + (int64_t)m * kb, c->x + (int64_t)m * c->K + k0, c->K,
                    c->M - m < GEMM_MR ? c->M - m : GEMM_MR, kb);
}

/* Block b of xp is ready when this returns: it copies b, or while another thread does, any
 * later block that nobody has taken, so a thread never waits on one that is not started. */
__attribute__((target("avx2,fma"))) static void gemm_xblock_ready(const gemm_avx2_ctx *c, int b)
{
    while (atomic_load_explicit(&c->xst[b], memory_order_acquire) != 2) {
        int j = b;
        for (; j < c->nkb; j++) {
            int idle = 0;
            if (atomic_load_explicit(&c->xst[j], memory_order_relaxed) == 0 &&
                atomic_compare_exchange_strong(&c->xst[j], &idle, 1)) {
                gemm_xblock_copy(c, j);
                atomic_store_explicit(&c->xst[j], 2, memory_order_release);
                break;
            }
        }
        if (j == c->nkb)
            _mm_pause();
    }
}

/* y columns n0..n0+nb-1 (nb <= GEMM_TN), all rows; wp: GEMM_TN·GEMM_KC floats of this thread's */
__attribute__((target("avx2,fma"))) static void gemm_avx2_tile(const gemm_avx2_ctx *c, int n0,
                                                                int nb, float *wp)
{
    const int M = c->M, N = c->N, K = c->K, esz = c->bf16 ? 2 : 4;
    const int npan = (nb + GEMM_NR - 1) / GEMM_NR, nmr = (M + GEMM_MR - 1) / GEMM_MR;
    if (c->b) /* y = b or y += b first, as the OpenBLAS path does before its sgemm */
        for (int m = 0; m < M; m++) {
            float *row = c->y + (int64_t)m * N + n0;
            if (c->accumulate)
                for (int n = 0; n < nb; n++)
                    row[n] += c->b[n0 + n];
            else
                memcpy(row, c->b + n0, (size_t)nb * sizeof *row);
        }
    for (int b = 0; b < c->nkb; b++) {
        const int k0 = b * GEMM_KC, kb = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
        gemm_xblock_ready(c, b);
        for (int p = 0; p < npan; p++) {
            const char *src = (const char *)c->w + ((int64_t)(n0 + p * GEMM_NR) * K + k0) * esz;
            gemm_pack_w(wp + (int64_t)p * GEMM_NR * kb, src, c->bf16, K,
                        nb - p * GEMM_NR < GEMM_NR ? nb - p * GEMM_NR : GEMM_NR, kb);
        }
        /* this tile's rows of W for the next block go to L2 meanwhile, a few cache lines
         * after each micro-tile (W comes from memory once a call, in no order that the
         * hardware prefetcher follows) */
        const char *wn = NULL;
        int lpr = 0, pr = 0, pl = 0; /* lines per row; the next row and line to fetch */
        if (b + 1 < c->nkb) {
            const int kn = K - k0 - kb < GEMM_KC ? K - k0 - kb : GEMM_KC;
            wn = (const char *)c->w + ((int64_t)n0 * K + k0 + kb) * esz;
            lpr = (kn * esz + 63) / 64;
        }
        const int64_t nmt = (int64_t)npan * nmr; /* micro-tiles per block */
        const int per = (int)(((int64_t)nb * lpr + nmt - 1) / nmt);
        const float *xb = c->xp + (int64_t)k0 * c->Mp;
        const int acc = b > 0 || c->beta1;
        for (int m0 = 0; m0 < M; m0 += GEMM_MC) {
            const int m1 = M - m0 < GEMM_MC ? M : m0 + GEMM_MC;
            for (int p = 0; p < npan; p++)
                for (int m = m0; m < m1; m += GEMM_MR) {
                    gemm_ukr(c->y + (int64_t)m * N + n0 + p * GEMM_NR, N, xb + (int64_t)m * kb,
                             wp + (int64_t)p * GEMM_NR * kb, kb, acc,
                             M - m < GEMM_MR ? M - m : GEMM_MR,
                             nb - p * GEMM_NR < GEMM_NR ? nb - p * GEMM_NR : GEMM_NR);
                    for (int q = 0; q < per && pr < nb; q++) {
                        _mm_prefetch(wn + (int64_t)pr * K * esz + 64 * pl, _MM_HINT_T1);
                        if (++pl == lpr)
                            pl = 0, pr++;
                    }
                }
        }
    }
}

/* The AVX2 path, for up to GEMM_AVX2_MAX_M rows where the CPU has AVX2 and FMA (LM_GEMM_BLAS=1
 * in the environment forces OpenBLAS, for tests that compare the two). */
static int gemm_use_avx2(int M)
{
    if (M > GEMM_AVX2_MAX_M || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return 0;
    const char *e = getenv("LM_GEMM_BLAS");
    return !(e && *e == '1');
}

/* y (+)= x·Wᵀ + b as lm_cpu_gemm_fwd, K > 0 */
static int gemm_fwd_avx2(float *y, const float *x, const void *w, const float *b, int bf16, int M,
                         int N, int K, int accumulate)
{
    gemm_avx2_ctx c = {x, w, y, NULL, NULL, b, M, N, K, (M + GEMM_MR - 1) / GEMM_MR * GEMM_MR,
                       (K + GEMM_KC - 1) / GEMM_KC, bf16, accumulate || b, accumulate};
    c.xp = lm_cpu_scratch((size_t)c.Mp * K * sizeof *c.xp);
    c.xst = c.xp ? lm_cpu_scratch((size_t)c.nkb * sizeof *c.xst) : NULL;
    if (!c.xst) {
        lm_cpu_scratch_free(c.xp);
        return -1;
    }
    for (int i = 0; i < c.nkb; i++)
        atomic_init(&c.xst[i], 0);
    /* tiles of GEMM_NR multiples, at least GEMM_TILES of them where GEMM_TN_MIN columns allow:
     * the bits do not depend on them, and a thread that starts late or is preempted then
     * leaves the other at most a small tile to wait for */
    int TN = (N + GEMM_TILES - 1) / GEMM_TILES;
    TN = (TN + GEMM_NR - 1) / GEMM_NR * GEMM_NR;
    TN = TN < GEMM_TN_MIN ? GEMM_TN_MIN : TN > GEMM_TN ? GEMM_TN : TN;
    const int tn = (N + TN - 1) / TN;
    int failed = 0;
#pragma omp parallel if (tn > 1 && (double)M * N * K >= 1 << 22)
    {
        float *wp = lm_cpu_scratch((size_t)GEMM_TN * GEMM_KC * sizeof *wp);
        if (!wp) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1) nowait
        for (int t = 0; t < tn; t++)
            if (wp)
                gemm_avx2_tile(&c, t * TN, N - t * TN < TN ? N - t * TN : TN, wp);
        lm_cpu_scratch_free(wp);
    }
    lm_cpu_scratch_free(c.xst);
    lm_cpu_scratch_free(c.xp);
    return failed ? -1 : 0;
}
#endif

int lm_cpu_gemm_fwd(lm_backend *be, float *y, const float *x, const void *w, const float *b,
                    const lm_gemm_args *a)
{
    (void)be;
    if (gemm_check(a) < 0)
        return -1;
    const int M = (int)a->M, N = (int)a->N, K = (int)a->K;
    float beta = a->accumulate ? 1.0f : 0.0f;
    if (M == 0 || N == 0)
        return 0;
#ifdef GEMM_HAVE_AVX2
    if (K > 0 && gemm_use_avx2(M))
        return gemm_fwd_avx2(y, x, w, b, a->wdtype == LM_BF16, M, N, K, a->accumulate);
#endif
    if (b) {
#pragma omp parallel for schedule(static) if ((int64_t)M * N >= LM_CPU_PAR_MIN)
        for (int m = 0; m < M; m++) {
            float *row = y + (int64_t)m * N;
            if (a->accumulate)
                for (int n = 0; n < N; n++)
                    row[n] += b[n];
            else
                memcpy(row, b, (size_t)N * sizeof *row);
        }
        beta = 1.0f;
    }
    if (K == 0) {
        if (beta == 0.0f)
            memset(y, 0, (size_t)M * N * sizeof *y);
        return 0;
    }
    /* tiles: tm row blocks of about equal height (at most GEMM_FWD_M) by tn column panels */
    const int tm = (M + GEMM_FWD_M - 1) / GEMM_FWD_M, mb0 = (M + tm - 1) / tm;
    const int tn = (N + GEMM_PANEL - 1) / GEMM_PANEL, bf16 = a->wdtype == LM_BF16;
    int failed = 0;
#pragma omp parallel if (tm * tn > 1 && (double)M * N * K >= 1 << 22)
    {
        float *panel = NULL;
        if (bf16 && !(panel = lm_cpu_scratch((size_t)GEMM_PANEL * GEMM_BF16_K * sizeof *panel))) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tm * tn; t++) {
            if (bf16 && !panel)
                continue;
            const int j = t / tm, i = t % tm; /* column panel j, row block i */
            const int n0 = j * GEMM_PANEL, nb = N - n0 < GEMM_PANEL ? N - n0 : GEMM_PANEL;
            const int m0 = i * mb0, mb = M - m0 < mb0 ? M - m0 : mb0;
            float *yt = y + (int64_t)m0 * N + n0;
            const float *xt = x + (int64_t)m0 * K;
            if (!bf16) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mb, nb, K, 1.0f, xt, K,
                            (const float *)w + (int64_t)n0 * K, K, beta, yt, N);
                continue;
            }
            /* BF16: widen GEMM_BF16_K columns of the panel at a time, a block that stays in
             * the core's cache for OpenBLAS to pack, and accumulate over those blocks */
            for (int k0 = 0; k0 < K; k0 += GEMM_BF16_K) {
                const int kb = K - k0 < GEMM_BF16_K ? K - k0 : GEMM_BF16_K;
                for (int r = 0; r < nb; r++) {
                    const uint16_t *src = (const uint16_t *)w + (int64_t)(n0 + r) * K + k0;
                    float *dst = panel + (int64_t)r * kb;
#pragma omp simd
                    for (int e = 0; e < kb; e++)
                        dst[e] = lm_k_bf16_to_f32(src[e]);
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mb, nb, kb, 1.0f, xt + k0,
                            K, panel, kb, k0 == 0 ? beta : 1.0f, yt, N);
            }
        }
        lm_cpu_scratch_free(panel);
    }
    return failed ? -1 : 0;
}

int lm_cpu_gemm_bwd(lm_backend *be, float *dx, float *dw, float *db, const float *dy,
                    const float *x, const void *w, const lm_gemm_args *a)
{
    (void)be;
    if (gemm_check(a) < 0)
        return -1;
    const int M = (int)a->M, N = (int)a->N, K = (int)a->K;
    LM_CPU_CHECK(!dw || a->wdtype == LM_F32, "gemm: dW wanted for a BF16 (frozen) weight");
    if (db) {
#pragma omp parallel for schedule(static) if ((int64_t)M * N >= LM_CPU_PAR_MIN)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int m = 0; m < M; m++)
                s += dy[(int64_t)m * N + n];
            db[n] += (float)s;
        }
    }
    if (M == 0 || N == 0 || K == 0)
        return 0;
    if (dw)
        lm_cpu_sgemm(1, 0, N, K, M, 1.0f, dy, N, x, K, 1.0f, dw,
                    K);
    if (!dx)
        return 0;
    if (a->wdtype == LM_F32) {
        lm_cpu_sgemm(0, 0, M, K, N, 1.0f, dy, N,
                    (const float *)w, K, 1.0f, dx, K);
        return 0;
    }
    int nb = N < GEMM_PANEL ? N : GEMM_PANEL;
    float *panel = lm_cpu_scratch((size_t)nb * K * sizeof *panel);
    if (!panel)
        return -1;
    for (int n0 = 0; n0 < N; n0 += nb) {
        int rows = N - n0 < nb ? N - n0 : nb;
        widen_panel(panel, (const uint16_t *)w + (int64_t)n0 * K, (int64_t)rows * K);
        lm_cpu_sgemm(0, 0, M, K, rows, 1.0f, dy + n0, N, panel,
                    K, 1.0f, dx, K);
    }
    lm_cpu_scratch_free(panel);
    return 0;
}

int lm_cpu_gemm_batched(lm_backend *be, float *c, const float *a_, const float *b,
                        const lm_gemm_batched_args *a)
{
    (void)be;
    LM_CPU_CHECK(a->batch >= 0 && a->M >= 0 && a->N >= 0 && a->K >= 0 && a->M <= INT32_MAX &&
                     a->N <= INT32_MAX && a->K <= INT32_MAX,
                 "gemm_batched: bad sizes");
    int64_t ra = a->trans_a ? a->M : a->K, rb = a->trans_b ? a->K : a->N; /* row lengths */
    LM_CPU_CHECK(a->lda >= (ra > 1 ? ra : 1) && a->ldb >= (rb > 1 ? rb : 1) &&
                     a->ldc >= (a->N > 1 ? a->N : 1),
                 "gemm_batched: leading dimension too small");
    for (int64_t i = 0; i < a->batch; i++) {
        float *ci = c + i * a->stride_c;
        if (a->K == 0 || a->M == 0 || a->N == 0) {
            for (int64_t m = 0; m < a->M; m++)
                for (int64_t n = 0; n < a->N; n++)
                    ci[m * a->ldc + n] = a->beta == 0.0f ? 0.0f : a->beta * ci[m * a->ldc + n];
            continue;
        }
        lm_cpu_sgemm(a->trans_a,
                    a->trans_b, (int)a->M, (int)a->N, (int)a->K,
                    a->alpha, a_ + i * a->stride_a, (int)a->lda, b + i * a->stride_b, (int)a->ldb,
                    a->beta, ci, (int)a->ldc);
    }
    return 0;
}
