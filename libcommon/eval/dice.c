/* dice.c — label sets, per-label counts and bounding boxes, and vxm's Dice (lm_metrics.h).
 *
 * Labels are looked up through a dense table when the values span at most 2^24 (every real
 * label map), else by binary search in the sorted label list. Counts are integers, so the
 * per-thread partial sums merge to the same result for any thread count.
 */
#include "lm_metrics.h"

#include "io/lm_error.h"

#include <float.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define LUT_MAX (1 << 24)

static void minmax2(int32_t *lo, int32_t *hi, const int32_t *a, const int32_t *b, int64_t n)
{
    int32_t l = INT32_MAX, h = INT32_MIN;
    for (int64_t i = 0; i < n; i++) {
        l = a[i] < l ? a[i] : l;
        h = a[i] > h ? a[i] : h;
        l = b[i] < l ? b[i] : l;
        h = b[i] > h ? b[i] : h;
    }
    *lo = l;
    *hi = h;
}

static int cmp_i32(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

int lm_labels_union(int32_t **out, int *nout, const int32_t *a, const int32_t *b, int64_t n)
{
    int32_t lo, hi;
    *out = NULL;
    *nout = 0;
    if (n <= 0)
        return 0;
    minmax2(&lo, &hi, a, b, n);
    int64_t range = (int64_t)hi - lo + 1;
    if (range <= LUT_MAX) {
        uint8_t *seen = calloc((size_t)range, 1);
        if (!seen)
            return lm_error_set("out of memory");
        for (int64_t i = 0; i < n; i++) {
            seen[a[i] - lo] = 1;
            seen[b[i] - lo] = 1;
        }
        int k = 0;
        for (int64_t v = 0; v < range; v++)
            k += seen[v];
        int32_t *l = malloc((size_t)k * sizeof *l);
        if (!l) {
            free(seen);
            return lm_error_set("out of memory");
        }
        k = 0;
        for (int64_t v = 0; v < range; v++)
            if (seen[v])
                l[k++] = (int32_t)(v + lo);
        free(seen);
        *out = l;
        *nout = k;
        return 0;
    }
    int32_t *all = malloc((size_t)(2 * n) * sizeof *all);
    if (!all)
        return lm_error_set("out of memory");
    memcpy(all, a, (size_t)n * sizeof *a);
    memcpy(all + n, b, (size_t)n * sizeof *b);
    qsort(all, (size_t)(2 * n), sizeof *all, cmp_i32);
    int64_t k = 0;
    for (int64_t i = 0; i < 2 * n; i++)
        if (i == 0 || all[i] != all[k - 1])
            all[k++] = all[i];
    int32_t *l = realloc(all, (size_t)k * sizeof *l);
    *out = l ? l : all;
    *nout = (int)k;
    return 0;
}

/* Index of value v in the label list, or -1: through the table, or by binary search. */
typedef struct {
    int32_t lo;
    int64_t range;
    int32_t *lut;          /* range entries, or NULL */
    int32_t *sorted, *idx; /* nlab entries each, for the search */
    int nlab;
} lookup;

static inline int find(const lookup *L, int32_t v)
{
    if (L->lut) {
        int64_t o = (int64_t)v - L->lo;
        return o >= 0 && o < L->range ? L->lut[o] : -1;
    }
    int l = 0, h = L->nlab - 1;
    while (l <= h) {
        int m = (l + h) / 2;
        if (L->sorted[m] == v)
            return L->idx[m];
        if (L->sorted[m] < v)
            l = m + 1;
        else
            h = m - 1;
    }
    return -1;
}

static int lookup_init(lookup *L, const int32_t *labels, int nlab)
{
    memset(L, 0, sizeof *L);
    L->nlab = nlab;
    if (nlab == 0)
        return 0;
    int32_t lo = labels[0], hi = labels[0];
    for (int i = 1; i < nlab; i++) {
        lo = labels[i] < lo ? labels[i] : lo;
        hi = labels[i] > hi ? labels[i] : hi;
    }
    L->lo = lo;
    L->range = (int64_t)hi - lo + 1;
    if (L->range <= LUT_MAX) {
        L->lut = malloc((size_t)L->range * sizeof *L->lut);
        if (!L->lut)
            return lm_error_set("out of memory");
        for (int64_t v = 0; v < L->range; v++)
            L->lut[v] = -1;
        for (int i = 0; i < nlab; i++)
            L->lut[labels[i] - lo] = i;
        return 0;
    }
    L->sorted = malloc((size_t)nlab * sizeof *L->sorted);
    L->idx = malloc((size_t)nlab * sizeof *L->idx);
    if (!L->sorted || !L->idx)
        return lm_error_set("out of memory");
    /* insertion sort of (value, index): label lists are short */
    for (int i = 0; i < nlab; i++) {
        int j = i;
        while (j > 0 && L->sorted[j - 1] > labels[i]) {
            L->sorted[j] = L->sorted[j - 1];
            L->idx[j] = L->idx[j - 1];
            j--;
        }
        L->sorted[j] = labels[i];
        L->idx[j] = i;
    }
    return 0;
}

static void lookup_free(lookup *L)
{
    free(L->lut);
    free(L->sorted);
    free(L->idx);
}

static void stats_reset(lm_label_stats *s, int32_t label)
{
    memset(s, 0, sizeof *s);
    s->label = label;
    for (int a = 0; a < 3; a++) {
        s->lo[a] = INT64_MAX;
        s->hi[a] = -1;
    }
}

static inline void grow(lm_label_stats *s, int64_t d, int64_t h, int64_t w)
{
    if (d < s->lo[0])
        s->lo[0] = d;
    if (d > s->hi[0])
        s->hi[0] = d;
    if (h < s->lo[1])
        s->lo[1] = h;
    if (h > s->hi[1])
        s->hi[1] = h;
    if (w < s->lo[2])
        s->lo[2] = w;
    if (w > s->hi[2])
        s->hi[2] = w;
}

int lm_label_stats_compute(lm_label_stats *st, const int32_t *a, const int32_t *b,
                           const int64_t dims[3], const int32_t *labels, int nlab)
{
    lookup L;
    int rc = -1, err = 0;
    lm_label_stats *part = NULL;
    int nthr = 1;
    for (int i = 0; i < nlab; i++)
        stats_reset(&st[i], labels[i]);
    if (nlab == 0)
        return 0;
    if (lookup_init(&L, labels, nlab) < 0)
        goto out;
    const int64_t D = dims[0], H = dims[1], W = dims[2];
#pragma omp parallel
    {
#pragma omp single
        {
            nthr = omp_get_num_threads();
            part = malloc((size_t)nthr * (size_t)nlab * sizeof *part);
            if (!part)
                err = 1;
            else
                for (int t = 0; t < nthr; t++)
                    for (int i = 0; i < nlab; i++)
                        stats_reset(&part[t * nlab + i], labels[i]);
        }
        if (!err) {
            lm_label_stats *my = part + (size_t)omp_get_thread_num() * (size_t)nlab;
#pragma omp for schedule(static)
            for (int64_t d = 0; d < D; d++)
                for (int64_t h = 0; h < H; h++) {
                    const int32_t *ra = a + (d * H + h) * W, *rb = b + (d * H + h) * W;
                    for (int64_t w = 0; w < W; w++) {
                        int ia = find(&L, ra[w]), ib = find(&L, rb[w]);
                        if (ia >= 0) {
                            my[ia].na++;
                            grow(&my[ia], d, h, w);
                            if (ia == ib)
                                my[ia].nab++;
                        }
                        if (ib >= 0) {
                            my[ib].nb++;
                            if (ib != ia)
                                grow(&my[ib], d, h, w);
                        }
                    }
                }
        }
    }
    if (err) {
        lm_error_set("out of memory");
        goto out;
    }
    for (int t = 0; t < nthr; t++)
        for (int i = 0; i < nlab; i++) {
            const lm_label_stats *p = &part[t * nlab + i];
            st[i].na += p->na;
            st[i].nb += p->nb;
            st[i].nab += p->nab;
            for (int x = 0; x < 3; x++) {
                if (p->lo[x] < st[i].lo[x])
                    st[i].lo[x] = p->lo[x];
                if (p->hi[x] > st[i].hi[x])
                    st[i].hi[x] = p->hi[x];
            }
        }
    rc = 0;
out:
    free(part);
    lookup_free(&L);
    return rc;
}

double lm_dice(const lm_label_stats *s)
{
    double top = 2.0 * (double)s->nab, bottom = (double)(s->na + s->nb);
    if (bottom < DBL_EPSILON)
        bottom = DBL_EPSILON;
    return top / bottom;
}
