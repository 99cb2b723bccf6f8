/* test_shuffle.c — voxel shuffle / unshuffle (MODEL.md §17 item 1: the §6 index map for
 * f = 2, 4, 8, 16 and a bitwise round trip), transpose, concat and split: exact values, the
 * adjoint identities that stand for their gradients, accumulation, 1-vs-2-thread bits. */
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
    KT_CALL(voxel_unshuffle, Sv, v, &acc);
    for (int64_t i = 0; i < n; i++)
        Sv[i] -= Sv0[i];
    LM_CHECK_CLOSE(kt_dot(St, v, n), kt_dot(t, Sv, n), 1e-9, 1e-6);
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

static const lm_test_case cases[] = {
    {"voxel_shuffle index map f=2,4,8,16 and round trip", t_shuffle_index_map},
    {"voxel_shuffle f=1 is the transpose", t_shuffle_f1_is_transpose},
    {"shuffle and transpose adjoints", t_adjoints},
    {"concat and split", t_concat_split},
    {"shuffle threads 1 vs 2", t_threads},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
