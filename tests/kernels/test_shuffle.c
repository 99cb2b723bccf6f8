/* test_shuffle.c — voxel shuffle / unshuffle (MODEL.md §17 item 1: the §6 index map for
 * f = 2, 4, 8, 16 and a bitwise round trip), transpose, concat and split: exact values, the
 * adjoint identities that stand for their gradients, accumulation, bits equal for 1, 2 and 3
 * threads. */
#include "kt.h"

static void t_shuffle_index_map(void)
{
    KT_COVER(voxel_shuffle);
    KT_COVER(voxel_unshuffle);
    const int fs[4] = {2, 4, 8, 16};
    for (int t = 0; t < 4; t++) {
        const int f = fs[t], d = 2, h = 3, w = 2, C = f == 16 ? 1 : 3;
        const int64_t L = d * h * w, Ct = (int64_t)C * f * f * f, n = L * Ct;
        float *tok = kt_alloc(n), *vol = kt_alloc(n), *back = kt_alloc(n);
        for (int64_t l = 0; l < L; l++)
            for (int64_t c = 0; c < Ct; c++)
                tok[l * Ct + c] = (float)(l * Ct + c); /* the code of (i, j, k, c) */
        lm_shuffle_args a = {C, d, h, w, f, 0};
        KT_CALL(voxel_shuffle, vol, tok, &a);
        int bad = 0;
        const int64_t D = d * f, H = h * f, W = w * f;
        for (int i = 0; i < d && !bad; i++)
            for (int j = 0; j < h; j++)
                for (int k = 0; k < w; k++)
                    for (int co = 0; co < C; co++)
                        for (int p1 = 0; p1 < f; p1++)
                            for (int p2 = 0; p2 < f; p2++)
                                for (int p3 = 0; p3 < f; p3++) {
                                    int64_t l = ((int64_t)i * h + j) * w + k;
                                    int64_t c = (int64_t)co * f * f * f + (p1 * f + p2) * f + p3;
                                    int64_t o = (((int64_t)co * D + i * f + p1) * H + j * f + p2) * W +
                                                k * f + p3;
                                    if (vol[o] != (float)(l * Ct + c))
                                        bad++;
                                }
        LM_CHECK(bad == 0, "f=%d: %d voxels off the MODEL.md §6 map", f, bad);
        KT_CALL(voxel_unshuffle, back, vol, &a);
        LM_CHECK(memcmp(back, tok, (size_t)n * 4) == 0, "f=%d: round trip not bitwise", f);
        kt_free(tok), kt_free(vol), kt_free(back);
    }
}

static void t_shuffle_f1_is_transpose(void)
{
    KT_COVER(voxel_shuffle);
    KT_COVER(transpose);
    /* f = 1: tokens [L,C] -> volume [C,L] is the plain transpose (tokenisation, MODEL.md §4) */
    const int C = 5, d = 3, h = 1, w = 7;
    const int64_t L = d * h * w;
    float *tok = kt_rand(L * C, -1, 1, 1), *v1 = kt_alloc(L * C), *v2 = kt_alloc(L * C);
    lm_shuffle_args a = {C, d, h, w, 1, 0};
    KT_CALL(voxel_shuffle, v1, tok, &a);
    KT_CALL(transpose, v2, tok, L, C, 0);
    LM_CHECK(memcmp(v1, v2, (size_t)(L * C) * 4) == 0, "f=1 shuffle != transpose");
    kt_free(tok), kt_free(v1), kt_free(v2);
}

static void t_adjoints(void)
{
    KT_COVER(voxel_shuffle);
    KT_COVER(voxel_unshuffle);
    KT_COVER(transpose);
    /* <S t, v> = <t, Sᵀ v>, and the adjoint accumulates */
    const int C = 2, d = 1, h = 3, w = 5, f = 2;
    const int64_t n = (int64_t)d * h * w * C * f * f * f;
    float *t = kt_rand(n, -1, 1, 1), *v = kt_rand(n, -1, 1, 2), *St = kt_alloc(n);
    float *Sv = kt_rand(n, -1, 1, 3), *Sv0 = kt_copy(Sv, n);
    lm_shuffle_args a = {C, d, h, w, f, 0}, acc = {C, d, h, w, f, 1};
    KT_CALL(voxel_shuffle, St, t, &a);
    for (int64_t i = 0; i < n; i++) /* v = S t + noise: the wrong product misses by ~|St|² */
        v[i] += St[i];
    KT_CALL(voxel_unshuffle, Sv, v, &acc);
    for (int64_t i = 0; i < n; i++)
        Sv[i] -= Sv0[i];
    /* relative to |St|·|v|: Sv - Sv0 carries rounding of Sv0's size, and the dot product
     * itself can be small (relative to it, seed 4321 failed); wrong: the identity for Sᵀ */
    kt_adj_check("voxel_shuffle / unshuffle", kt_dot(St, v, n), kt_dot(t, Sv, n), kt_dot(t, v, n),
                 kt_nrm(St, n) * kt_nrm(v, n));
    /* transpose with accumulate */
    float x[6] = {1, 2, 3, 4, 5, 6}, y[6] = {1, 1, 1, 1, 1, 1};
    KT_CALL(transpose, y, x, 2, 3, 1);
    LM_CHECK(y[0] == 2 && y[1] == 5 && y[2] == 3 && y[5] == 7, "transpose +=");
    kt_free(t), kt_free(v), kt_free(St), kt_free(Sv), kt_free(Sv0);
}

static void t_concat_split(void)
{
    KT_COVER(concat);
    KT_COVER(split);
    const int64_t N = 7, ch[3] = {2, 1, 3};
    float *a = kt_rand(2 * N, -1, 1, 1), *b = kt_rand(N, -1, 1, 2), *c = kt_rand(3 * N, -1, 1, 3);
    float *y = kt_alloc(6 * N);
    const float *xs[3] = {a, b, c};
    KT_CALL(concat, y, xs, ch, 3, N);
    LM_CHECK(memcmp(y, a, 2 * N * 4) == 0 && memcmp(y + 2 * N, b, N * 4) == 0 &&
                 memcmp(y + 3 * N, c, 3 * N * 4) == 0,
             "concat layout");
    float *da = kt_alloc(2 * N), *dc = kt_rand(3 * N, -1, 1, 4), *dc0 = kt_copy(dc, 3 * N);
    float *dxs[3] = {da, NULL, dc};
    KT_CALL(split, dxs, y, ch, 3, N);
    LM_CHECK(memcmp(da, a, 2 * N * 4) == 0, "split slice 0");
    for (int64_t i = 0; i < 3 * N; i++)
        LM_CHECK(dc[i] == dc0[i] + c[i], "split accumulates");
    kt_free(a), kt_free(b), kt_free(c), kt_free(y), kt_free(da), kt_free(dc), kt_free(dc0);
}

typedef struct {
    float *tok, *vol, *back;
    lm_shuffle_args a;
} tctx;

static void thr_run(void *p)
{
    tctx *c = p;
    KT_CALL(voxel_shuffle, c->vol, c->tok, &c->a);
    KT_CALL(voxel_unshuffle, c->back, c->vol, &c->a);
}

static void t_threads(void)
{
    KT_COVER(voxel_shuffle);
    /* A2 of the abdomen config at full size: [180, 4096] -> [8, 48, 40, 48] */
    tctx c = {kt_rand(180 * 4096, -1, 1, 1), kt_alloc(180 * 4096), kt_alloc(180 * 4096),
              {8, 6, 5, 6, 8, 0}};
    kt_same_bits("shuffle", thr_run, &c, c.vol, 180 * 4096 * 4);
    kt_same_bits("unshuffle", thr_run, &c, c.back, 180 * 4096 * 4);
    LM_CHECK(memcmp(c.back, c.tok, 180 * 4096 * 4) == 0, "A2 round trip");
    kt_free(c.tok), kt_free(c.vol), kt_free(c.back);
}

/* ---- adjoint identities (ops.def: LINEAR), by kt_adj_check (scale |x|·|r| for these
 * permutations): r = A x + noise keeps them robust for any seed, the wrong product then missing
 * about |x|², not a random amount that may happen to be small */

/* elements where y != y0 + d (float), for `+=` checked bit for bit */
static int64_t acc_bad(const float *y, const float *y0, const float *d, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += y[i] != y0[i] + d[i];
    return bad;
}

static void t_transpose_adjoint(void)
{
    KT_COVER(transpose);
    /* x [R,C] -> xᵀ [C,R]; the adjoint is transpose with rows and cols swapped. Wrong: them not
     * swapped, another permutation for R != C. 45x37 crosses the 32-wide blocks. */
    const int64_t shapes[2][2] = {{7, 5}, {45, 37}};
    for (int s = 0; s < 2; s++) {
        const int64_t R = shapes[s][0], C = shapes[s][1], n = R * C;
        float *x = kt_rand(n, -1, 1, 1), *r = kt_rand(n, -1, 1, 2);
        float *Tx = kt_alloc(n), *Tr = kt_alloc(n), *Wr = kt_alloc(n);
        KT_CALL(transpose, Tx, x, R, C, 0);
        for (int64_t i = 0; i < n; i++)
            r[i] += Tx[i];
        KT_CALL(transpose, Tr, r, C, R, 0); /* r [C,R] -> [R,C] */
        KT_CALL(transpose, Wr, r, R, C, 0); /* the wrong one: r read as [R,C] */
        char what[64];
        snprintf(what, sizeof what, "transpose %lldx%lld", (long long)R, (long long)C);
        kt_adj_check(what, kt_dot(Tx, r, n), kt_dot(x, Tr, n), kt_dot(x, Wr, n),
                  kt_nrm(x, n) * kt_nrm(r, n));
        /* y += xᵀ adds exactly the `=` result to what was there; the same test rejects an
         * accumulate that overwrites */
        float *y0 = kt_rand(n, -1, 1, 3), *y = kt_copy(y0, n);
        KT_CALL(transpose, y, x, R, C, 1);
        LM_CHECK(acc_bad(y, y0, Tx, n) == 0, "%s +=: %lld elements are not y0 + xᵀ", what,
                 (long long)acc_bad(y, y0, Tx, n));
        LM_CHECK(acc_bad(Tx, y0, Tx, n) > 0, "%s +=: the check accepted an overwrite", what);
        kt_free(x), kt_free(r), kt_free(Tx), kt_free(Tr), kt_free(Wr), kt_free(y0), kt_free(y);
    }
}

static void t_concat_split_adjoint(void)
{
    KT_COVER(concat);
    KT_COVER(split);
    /* split is the adjoint of concat: <concat(xs), dy> = Σ_i <xs[i], split(dy)_i>, split's `+=`
     * taken off what was there; channels of 1, odd N. With dxs[k] NULL (skipped) the identity
     * holds with xs[k] zero in the concat. Wrong: a split off by one channel (of dy + N; dy has
     * a spare channel for it). dy = concat(xs) + noise. */
    enum { n = 4 };
    const int64_t N = 13, ch[n] = {1, 3, 1, 2}, Ct = 7;
    float *xs[n], *d0[n], *dx[n], *dw[n];
    for (int i = 0; i < n; i++) {
        xs[i] = kt_rand(ch[i] * N, -1, 1, 1 + (uint64_t)i);
        d0[i] = kt_rand(ch[i] * N, -1, 1, 10 + (uint64_t)i);
        dx[i] = kt_alloc(ch[i] * N);
        dw[i] = kt_alloc(ch[i] * N);
    }
    float *zero = kt_alloc(3 * N), *y = kt_alloc(Ct * N), *dy = kt_rand((Ct + 1) * N, -1, 1, 20);
    KT_CALL(concat, y, (const float *const *)xs, ch, n, N);
    for (int64_t j = 0; j < Ct * N; j++)
        dy[j] += y[j];
    for (int k = -1; k < n; k++) { /* k: the NULL slot (-1: none) */
        const float *xk[n];
        float *dxk[n], *dwk[n];
        for (int i = 0; i < n; i++) {
            xk[i] = i == k ? zero : xs[i];
            memcpy(dx[i], d0[i], (size_t)(ch[i] * N) * sizeof *dx[i]);
            memset(dw[i], 0, (size_t)(ch[i] * N) * sizeof *dw[i]);
            dxk[i] = i == k ? NULL : dx[i];
            dwk[i] = i == k ? NULL : dw[i];
        }
        KT_CALL(concat, y, xk, ch, n, N);
        KT_CALL(split, dxk, dy, ch, n, N);
        KT_CALL(split, dwk, dy + N, ch, n, N);
        double rhs = 0, wrong = 0;
        for (int i = 0; i < n; i++)
            for (int64_t j = 0; i != k && j < ch[i] * N; j++) {
                rhs += (double)xs[i][j] * ((double)dx[i][j] - d0[i][j]);
                wrong += (double)xs[i][j] * dw[i][j];
            }
        char what[64];
        snprintf(what, sizeof what, "concat / split, NULL slot %d", k);
        kt_adj_check(what, kt_dot(y, dy, Ct * N), rhs, wrong,
                     kt_nrm(y, Ct * N) * kt_nrm(dy, Ct * N));
    }
    for (int i = 0; i < n; i++)
        kt_free(xs[i]), kt_free(d0[i]), kt_free(dx[i]), kt_free(dw[i]);
    kt_free(zero), kt_free(y), kt_free(dy);
}

/* ---- thread bit-identity at sizes past LM_CPU_PAR_MIN ------------------------------------- */
typedef struct {
    float *x, *y, *y0;
    int64_t R, C;
    int acc;
} trctx;

static void tr_run(void *p)
{
    trctx *c = p;
    if (c->acc) /* y0 for `+=`; for `=`, the NaN of kt_same_bits */
        memcpy(c->y, c->y0, (size_t)(c->R * c->C) * sizeof *c->y);
    KT_CALL(transpose, c->y, c->x, c->R, c->C, c->acc);
}

static void t_transpose_threads(void)
{
    KT_COVER(transpose);
    /* 181x193: odd extents, 7 column blocks (the last 1 wide) shared by 1, 2, 3 threads; y starts
     * as NaN for `=` (kt_same_bits), so an element left unwritten shows */
    const int64_t R = 181, C = 193;
    trctx c = {kt_rand(R * C, -1, 1, 1), kt_alloc(R * C), NULL, R, C, 0};
    KT_PARALLEL(c.R * c.C);
    kt_same_bits("transpose", tr_run, &c, c.y, (size_t)(R * C) * sizeof *c.y);
    LM_CHECK(c.y[1 * R + 2] == c.x[2 * C + 1] && !isnan(c.y[R * C - 1]), "transpose values");
    c.y0 = kt_rand(R * C, -1, 1, 2);
    c.acc = 1;
    kt_same_bits("transpose +=", tr_run, &c, c.y, (size_t)(R * C) * sizeof *c.y);
    kt_free(c.x), kt_free(c.y), kt_free(c.y0);
}

typedef struct {
    const float *xs[3];
    float *y, *dy, *dx, *dx0, *dxs[3];
    int64_t ch[3], N;
} csctx;

static void cs_run(void *p)
{
    csctx *c = p;
    KT_CALL(concat, c->y, c->xs, c->ch, 3, c->N); /* y: the NaN of kt_same_bits before */
    memcpy(c->dx, c->dx0, (size_t)(4 * c->N) * sizeof *c->dx);
    KT_CALL(split, c->dxs, c->dy, c->ch, 3, c->N);
}

static void t_concat_split_threads(void)
{
    KT_COVER(concat);
    KT_COVER(split);
    /* channels 1, 2, 3 of N = 32771; split skips the NULL slot 1. Split's loop runs per slice,
     * on channels[i]·N; concat is one memcpy a slice (no threads of its own today). */
    const int64_t N = 32771;
    csctx c = {{kt_rand(N, -1, 1, 1), kt_rand(2 * N, -1, 1, 2), kt_rand(3 * N, -1, 1, 3)},
               kt_alloc(6 * N),
               kt_rand(6 * N, -1, 1, 4),
               kt_alloc(4 * N),
               kt_rand(4 * N, -1, 1, 5),
               {NULL, NULL, NULL},
               {1, 2, 3},
               N};
    c.dxs[0] = c.dx, c.dxs[2] = c.dx + N;
    KT_PARALLEL(c.ch[0] * c.N);
    KT_PARALLEL(c.ch[2] * c.N);
    kt_same_bits("concat", cs_run, &c, c.y, (size_t)(6 * N) * sizeof *c.y);
    kt_same_bits("split", cs_run, &c, c.dx, (size_t)(4 * N) * sizeof *c.dx);
    LM_CHECK(memcmp(c.y + 3 * N, c.xs[2], (size_t)(3 * N) * sizeof *c.y) == 0 &&
                 c.dx[N] == c.dx0[N] + c.dy[3 * N],
             "concat / split values");
    for (int i = 0; i < 3; i++)
        kt_free((float *)c.xs[i]);
    kt_free(c.y), kt_free(c.dy), kt_free(c.dx), kt_free(c.dx0);
}

static const lm_test_case cases[] = {
    {"voxel_shuffle index map f=2,4,8,16 and round trip", t_shuffle_index_map},
    {"voxel_shuffle f=1 is the transpose", t_shuffle_f1_is_transpose},
    {"shuffle and transpose adjoints", t_adjoints},
    {"concat and split", t_concat_split},
    {"shuffle threads 1, 2, 3", t_threads},
    {"transpose adjoint and +=", t_transpose_adjoint},
    {"concat / split adjoint", t_concat_split_adjoint},
    {"transpose threads 1, 2, 3", t_transpose_threads},
    {"concat / split threads 1, 2, 3", t_concat_split_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
