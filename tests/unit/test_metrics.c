/* test_metrics.c — the metrics library (libcommon/eval) against brute force, analytic cases
 * (MODEL.md §17 item 8) and the SciPy/NumPy/SimpleITK golden files made by
 * tests/reference/make_metrics_ref.py (tests/data/metrics_*): Dice exact, HD95 to 1e-6 mm,
 * determinants to 1e-12 (vxm) and bit for bit (sitk-mm), folding counts exact, SDlogJ 1e-9.
 */
#include "eval/lm_metrics.h"
#include "io/lm_error.h"
#include "io/lm_nifti.h"
#include "io/lm_stream.h"
#include "lm_test.h"
#include "lm_testutil.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng_state >> 33;
}
static double urand(void)
{
    return (double)rnd() / 2147483648.0;
}

static const char *data(const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/tests/data/%s", lm_test_srcdir(), name);
    return buf[k];
}

/* ---- building blocks ---- */

static void t_border_brute(void)
{
    const int64_t dims[3] = {7, 9, 6}, n = 7 * 9 * 6;
    uint8_t m[7 * 9 * 6], b[7 * 9 * 6];
    rng_state = lm_test_seed();
    for (int rep = 0; rep < 20; rep++) {
        for (int64_t i = 0; i < n; i++)
            m[i] = urand() < 0.2 + 0.04 * rep;
        lm_border6(b, m, dims);
        for (int64_t d = 0; d < 7; d++)
            for (int64_t h = 0; h < 9; h++)
                for (int64_t w = 0; w < 6; w++) {
                    int64_t i = (d * 9 + h) * 6 + w;
                    int inner = m[i];
                    const int off[6][3] = {{1, 0, 0},  {-1, 0, 0}, {0, 1, 0},
                                           {0, -1, 0}, {0, 0, 1},  {0, 0, -1}};
                    for (int k = 0; k < 6; k++) {
                        int64_t dd = d + off[k][0], hh = h + off[k][1], ww = w + off[k][2];
                        if (dd < 0 || dd >= 7 || hh < 0 || hh >= 9 || ww < 0 || ww >= 6 ||
                            !m[(dd * 9 + hh) * 6 + ww])
                            inner = 0;
                    }
                    int want = m[i] && !inner;
                    LM_CHECK(b[i] == want, "rep %d voxel (%lld,%lld,%lld)", rep, (long long)d,
                             (long long)h, (long long)w);
                }
    }
}

static void t_edt_brute(void)
{
    const int64_t dims[3] = {11, 8, 13}, n = 11 * 8 * 13;
    const double sp[3] = {1.7, 0.6, 2.3};
    uint8_t f[11 * 8 * 13];
    double d2[11 * 8 * 13];
    rng_state = lm_test_seed() + 1;
    for (int rep = 0; rep < 12; rep++) {
        int nf = rep == 0 ? 0 : rep == 1 ? 1 : (int)(rnd() % 40) + 1;
        memset(f, 0, sizeof f);
        for (int k = 0; k < nf; k++)
            f[rnd() % n] = 1;
        LM_CHECK(lm_edt_sq(d2, f, dims, sp) == 0, "%s", "");
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t p[3] = {i / 104, (i / 13) % 8, i % 13};
            double best = INFINITY;
            for (int64_t j = 0; j < n; j++)
                if (f[j]) {
                    int64_t q[3] = {j / 104, (j / 13) % 8, j % 13};
                    double s = 0;
                    for (int a = 0; a < 3; a++)
                        s += ((double)(p[a] - q[a]) * sp[a]) * ((double)(p[a] - q[a]) * sp[a]);
                    best = s < best ? s : best;
                }
            if (isinf(best))
                LM_CHECK(isinf(d2[i]), "rep %d: no feature but d2 = %g", rep, d2[i]);
            else if (fabs(d2[i] - best) > worst)
                worst = fabs(d2[i] - best);
        }
        LM_CHECK(worst < 1e-9, "rep %d (%d features): max |d2 - brute| = %g", rep, nf, worst);
    }
}

static void t_percentile(void)
{
    /* values from numpy.percentile (numpy 2.4.6) */
    double a[] = {4, 2, 3, 1}, b[] = {5}, c[] = {9.5, 1, 1, 0, 1, 1, 1, 2, 9, 1}, d[] = {3, 1, 2},
           e[] = {0.1, 0.7, 0.3};
    double f[21];
    for (int i = 0; i < 21; i++)
        f[i] = (double)(21 - i);
    LM_CHECK(lm_percentile(a, 4, 95) == 3.8499999999999996, "%.17g", lm_percentile(a, 4, 95));
    LM_CHECK(lm_percentile(b, 1, 95) == 5.0, "%s", "");
    LM_CHECK(lm_percentile(c, 10, 95) == 9.274999999999999, "%.17g", lm_percentile(c, 10, 95));
    LM_CHECK(lm_percentile(d, 3, 50) == 2.0, "%s", "");
    LM_CHECK(lm_percentile(f, 21, 95) == 20.0, "%s", "");
    LM_CHECK(lm_percentile(e, 3, 95) == 0.6599999999999999, "%.17g", lm_percentile(e, 3, 95));
}

/* ---- analytic cases (MODEL.md §17 item 8) ---- */

static void t_dice_identical(void)
{
    const int64_t dims[3] = {10, 12, 9}, n = 10 * 12 * 9;
    int32_t a[10 * 12 * 9];
    rng_state = lm_test_seed() + 2;
    for (int64_t i = 0; i < n; i++)
        a[i] = (int32_t)(rnd() % 6) * 7 - 3; /* negative and sparse values too */
    int32_t *labels;
    int nl;
    LM_CHECK(lm_labels_union(&labels, &nl, a, a, n) == 0 && nl == 6, "nl=%d", nl);
    lm_label_stats st[6];
    LM_CHECK(lm_label_stats_compute(st, a, a, dims, labels, nl) == 0, "%s", "");
    for (int i = 0; i < nl; i++) {
        LM_CHECK(lm_dice(&st[i]) == 1.0, "label %d: dice %.17g", labels[i], lm_dice(&st[i]));
        double hd;
        const double sp[3] = {1, 2, 3};
        LM_CHECK(lm_hd95(&hd, a, a, dims, sp, &st[i], LM_HD_MEDPY) == 0 && hd == 0.0, "%s", "");
    }
    /* a label in neither map: dice 0, HD95 skipped */
    int32_t none = 1000;
    lm_label_stats s0;
    double hd;
    LM_CHECK(lm_label_stats_compute(&s0, a, a, dims, &none, 1) == 0 && s0.na == 0 && s0.nb == 0 &&
                 lm_dice(&s0) == 0.0,
             "%s", "");
    LM_CHECK(lm_hd95(&hd, a, a, dims, (const double[3]){1, 1, 1}, &s0, LM_HD_MEDPY) == 1 &&
                 isnan(hd),
             "%s", "");
    free(labels);
}

/* Concentric spheres of radii r1 < r2 (mm) on an anisotropic grid: every border voxel of a
 * digital ball of radius r lies within one voxel diagonal of the continuous sphere, and on
 * the inner side of it (6-connected borders are the outermost voxels), so both directed
 * distances are (r2 - r1) up to the largest step of the grid: |HD95 - (r2-r1)| <= max(sp). */
static void t_hd95_spheres(void)
{
    const int64_t dims[3] = {33, 45, 27}, n = 33 * 45 * 27;
    const double sp[3] = {1.0, 0.75, 1.25}, c[3] = {16.2, 22.1, 13.3};
    int32_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    const double radii[][2] = {{6, 11}, {8, 12}, {4, 13}};
    for (int t = 0; t < 3; t++) {
        double r1 = radii[t][0], r2 = radii[t][1];
        for (int64_t i = 0; i < n; i++) {
            int64_t p[3] = {i / (45 * 27), (i / 27) % 45, i % 27};
            double s = 0;
            for (int k = 0; k < 3; k++)
                s += ((double)p[k] - c[k]) * sp[k] * ((double)p[k] - c[k]) * sp[k];
            a[i] = s <= r1 * r1 ? 5 : 0;
            b[i] = s <= r2 * r2 ? 5 : 0;
        }
        int32_t lab = 5;
        lm_label_stats st;
        double hm, hn;
        LM_CHECK(lm_label_stats_compute(&st, a, b, dims, &lab, 1) == 0, "%s", "");
        LM_CHECK(lm_hd95(&hm, a, b, dims, sp, &st, LM_HD_MEDPY) == 0, "%s", "");
        LM_CHECK(lm_hd95(&hn, a, b, dims, sp, &st, LM_HD_MONAI) == 0, "%s", "");
        LM_CHECK(fabs(hm - (r2 - r1)) <= 1.25, "r %g,%g: medpy %g", r1, r2, hm);
        LM_CHECK(fabs(hn - (r2 - r1)) <= 1.25, "r %g,%g: monai %g", r1, r2, hn);
        LM_CHECK(hn >= hm - 1e-12, "monai (max of directed) %g < medpy (pooled) %g", hn, hm);
    }
    free(a);
    free(b);
}

static void t_jac_zero(void)
{
    const int64_t dims[3] = {5, 1, 7}, n = 35;
    float u[3 * 35] = {0};
    double det[35];
    for (int m = 0; m < 2; m++) {
        LM_CHECK(lm_jacobian_det(det, u, LM_F32, dims, (lm_jac_mode)m) == 0, "%s", "");
        for (int64_t i = 0; i < n; i++)
            LM_CHECK(det[i] == 1.0, "mode %d voxel %lld: %.17g", m, (long long)i, det[i]);
        lm_jac_stats st;
        lm_jacobian_stats(&st, det, n, (lm_jac_mode)m);
        LM_CHECK(st.folded == 0 && st.pct == 0 && st.sdlogj == 0 && st.min == 1 && st.max == 1,
                 "%s", "");
    }
    LM_CHECK(lm_jacobian_det(det, u, LM_I32, dims, LM_JAC_VXM) < 0, "%s", "");
}

/* u(p) = diag(alpha) p: det = prod(1 + alpha_i) (vxm, exact everywhere: one-sided differences
 * of a linear function are exact too). sitk-mm pairs component j with axis 2-j, so in the
 * interior its determinant is (1 + a1)(1 - a0 a2) — the quirk MODEL.md §11.3 describes. */
static void t_jac_linear(void)
{
    const int64_t D = 6, H = 7, W = 5, n = D * H * W, dims[3] = {6, 7, 5};
    const double al[3] = {0.25, -0.5, 0.125}; /* exact in binary */
    double *u = malloc(3 * n * sizeof *u), *det = malloc(n * sizeof *det);
    float *uf = malloc(3 * n * sizeof *uf);
    for (int64_t d = 0; d < D; d++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++) {
                int64_t i = (d * H + h) * W + w, p[3] = {d, h, w};
                for (int c = 0; c < 3; c++) {
                    u[c * n + i] = al[c] * (double)p[c];
                    uf[c * n + i] = (float)u[c * n + i];
                }
            }
    double want = (1 + al[0]) * (1 + al[1]) * (1 + al[2]);
    LM_CHECK(lm_jacobian_det(det, u, LM_F64, dims, LM_JAC_VXM) == 0, "%s", "");
    for (int64_t i = 0; i < n; i++)
        LM_CHECK(fabs(det[i] - want) < 1e-12, "vxm voxel %lld: %.17g, want %.17g", (long long)i,
                 det[i], want);
    double qk = (1 + al[1]) * (1 - al[0] * al[2]);
    for (int f = 0; f < 2; f++) {
        LM_CHECK(lm_jacobian_det(det, f ? (const void *)uf : u, f ? LM_F32 : LM_F64, dims,
                                 LM_JAC_SITK_MM) == 0,
                 "%s", "");
        for (int64_t d = 1; d < D - 1; d++)
            for (int64_t h = 1; h < H - 1; h++)
                for (int64_t w = 1; w < W - 1; w++) {
                    int64_t i = (d * H + h) * W + w;
                    LM_CHECK(fabs(det[i] - qk) < 1e-6, "sitk voxel %lld: %.9g, want %.9g",
                             (long long)i, det[i], qk);
                }
    }
    free(u);
    free(uf);
    free(det);
}

/* ---- golden files ---- */

static int read_labels(const char *path, lm_tensor *t, double sp[3])
{
    lm_nifti_geom g;
    if (lm_nifti_read(path, LM_NII_LABELS, t, &g) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s: %s", path, lm_error());
        return -1;
    }
    if (sp)
        memcpy(sp, g.spacing, sizeof g.spacing);
    return 0;
}

static void check_pair(const char *what, const int32_t *a, const int32_t *b, const int64_t dims[3],
                       const double sp[3], const cJSON *ref)
{
    const cJSON *labs = cJSON_GetObjectItem(ref, "labels"),
                *per = cJSON_GetObjectItem(ref, "per_label");
    int32_t *u;
    int nu;
    LM_CHECK(lm_labels_union(&u, &nu, a, b, dims[0] * dims[1] * dims[2]) == 0, "%s", "");
    LM_CHECK(nu == cJSON_GetArraySize(labs) + 1, "%s: %d labels, SciPy %d (+0)", what, nu,
             cJSON_GetArraySize(labs));
    lm_label_stats *st = calloc((size_t)nu, sizeof *st);
    LM_CHECK(lm_label_stats_compute(st, a, b, dims, u, nu) == 0, "%s", "");
    double worst = 0;
    int nchk = 0;
    for (int i = 0; i < nu; i++) {
        char key[32];
        snprintf(key, sizeof key, "%d", u[i]);
        const cJSON *r = cJSON_GetObjectItem(per, key);
        if (!r) {
            LM_CHECK(u[i] == 0, "%s: label %d not in the reference", what, u[i]);
            continue;
        }
        double dw = lm_tu_jnum(cJSON_GetObjectItem(r, "dice"));
        LM_CHECK(lm_dice(&st[i]) == dw, "%s: label %d dice %.17g, SciPy %.17g", what, u[i],
                 lm_dice(&st[i]), dw);
        for (int m = 0; m < 2; m++) {
            const cJSON *h = cJSON_GetObjectItem(r, m ? "hd95_monai" : "hd95_medpy");
            double hd;
            int rc = lm_hd95(&hd, a, b, dims, sp, &st[i], m ? LM_HD_MONAI : LM_HD_MEDPY);
            if (cJSON_IsNull(h)) {
                LM_CHECK(rc == 1, "%s: label %d: SciPy skipped HD95, rc %d", what, u[i], rc);
                continue;
            }
            LM_CHECK(rc == 0, "%s: label %d rc %d", what, u[i], rc);
            double e = fabs(hd - lm_tu_jnum(h));
            worst = e > worst ? e : worst;
            nchk++;
            LM_CHECK(e <= 1e-6, "%s: label %d %s HD95 %.12g, SciPy %.12g", what, u[i],
                     m ? "monai" : "medpy", hd, lm_tu_jnum(h));
        }
    }
    printf("# %s: %d labels, %d HD95 values, max |HD95 - SciPy| = %.3g mm\n", what, nu, nchk,
           worst);
    free(st);
    free(u);
}

static void t_golden_nifti(void)
{
    cJSON *ref = lm_tu_json("tests/data/metrics_ref.json");
    if (!ref) {
        lm_test_fail(__FILE__, __LINE__, "tests/data/metrics_ref.json unreadable");
        return;
    }
    const char *cases[][3] = {{"ct", "warped", "metrics_ct_warped.nii.gz"},
                              {"ct", "moving", "metrics_ct_moving.nii.gz"},
                              {"pr", "warped", "metrics_pr_warped.nii.gz"}};
    for (int k = 0; k < 3; k++) {
        lm_tensor f, w;
        double sp[3], sp2[3];
        char fx[64];
        snprintf(fx, sizeof fx, "metrics_%s_fixed.nii.gz", cases[k][0]);
        if (read_labels(data(fx), &f, sp) < 0 || read_labels(data(cases[k][2]), &w, sp2) < 0)
            continue;
        const cJSON *c = cJSON_GetObjectItem(ref, cases[k][0]);
        const cJSON *jsp = cJSON_GetObjectItem(c, "spacing");
        for (int a = 0; a < 3; a++)
            LM_CHECK(fabs(sp[a] - lm_tu_jnum(cJSON_GetArrayItem(jsp, a))) < 1e-6, "%s", "");
        char what[64];
        snprintf(what, sizeof what, "%s_%s", cases[k][0], cases[k][1]);
        check_pair(what, w.data, f.data, f.shape, sp, cJSON_GetObjectItem(c, cases[k][1]));
        lm_tensor_free(&f);
        lm_tensor_free(&w);
    }
    cJSON_Delete(ref);
}

static int get_i32(lm_record *r, const char *name, lm_tensor *out)
{
    const lm_tensor *t = lm_record_cget(r, name);
    if (!t || lm_tensor_convert(out, t, LM_I32) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s: missing or unconvertible", name);
        return -1;
    }
    return 0;
}

static void t_golden_jac(void)
{
    cJSON *ref = lm_tu_json("tests/data/metrics_ref.json");
    lm_reader *r = lm_reader_open(data("metrics_jac.safetensors"));
    lm_reader *rr = lm_reader_open(data("metrics_jac_ref.safetensors"));
    lm_record rec, rref;
    if (!ref || !r || !rr || lm_reader_next(r, &rec) != 1 || lm_reader_next(rr, &rref) != 1) {
        lm_test_fail(__FILE__, __LINE__, "golden files: %s", lm_error());
        return;
    }
    const cJSON *jc = cJSON_GetObjectItem(ref, "jac");
    lm_tensor fs, ws;
    if (get_i32(&rec, "fixed_seg", &fs) == 0 && get_i32(&rec, "warped_seg", &ws) == 0) {
        const double sp[3] = {2.0, 1.5, 2.5};
        check_pair("jac", ws.data, fs.data, fs.shape + 2, sp, cJSON_GetObjectItem(jc, "warped"));
        LM_CHECK(!strcmp(lm_record_meta_get(&rec, "spacing"), "[2.0,1.5,2.5]"), "%s", "");
    }
    lm_tensor_free(&fs);
    lm_tensor_free(&ws);
    const lm_tensor *flow = lm_record_cget(&rec, "flow");
    LM_CHECK(flow && flow->dtype == LM_F32 && flow->ndim == 5 && flow->shape[1] == 3, "%s", "");
    const int64_t *dims = flow->shape + 2;
    const int64_t n = dims[0] * dims[1] * dims[2];
    double *det = malloc(n * sizeof *det);
    lm_tensor f64;
    LM_CHECK(lm_tensor_convert(&f64, flow, LM_F64) == 0, "%s", "");
    struct {
        const char *ref, *stats;
        const void *u;
        lm_dtype dt;
        lm_jac_mode mode;
        double tol;
    } cs[] = {
        {"det_vxm", "vxm", flow->data, LM_F32, LM_JAC_VXM, 0},
        {"det_vxm", "vxm", f64.data, LM_F64, LM_JAC_VXM, 0},
        {"det_sitk", "sitk", flow->data, LM_F32, LM_JAC_SITK_MM, 0},
        {"det_sitk64", "sitk64", f64.data, LM_F64, LM_JAC_SITK_MM, 0},
    };
    for (int k = 0; k < 4; k++) {
        const lm_tensor *want = lm_record_cget(&rref, cs[k].ref);
        LM_CHECK(want && lm_tensor_numel(want) == n, "%s", "");
        if (!want)
            continue;
        LM_CHECK(lm_jacobian_det(det, cs[k].u, cs[k].dt, dims, cs[k].mode) == 0, "%s", "");
        int64_t bad = 0;
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            double w = lm_tensor_get(want, i), e = fabs(det[i] - w);
            worst = e > worst ? e : worst;
            bad += det[i] != w;
        }
        printf("# %s from %s: %lld of %lld determinants differ, max |diff| %.3g\n", cs[k].ref,
               lm_dtype_name(cs[k].dt), (long long)bad, (long long)n, worst);
        LM_CHECK(worst <= cs[k].tol, "%s (%s): max |det - reference| = %.3g", cs[k].ref,
                 lm_dtype_name(cs[k].dt), worst);
        lm_jac_stats st;
        lm_jacobian_stats(&st, det, n, cs[k].mode);
        const cJSON *js = cJSON_GetObjectItem(jc, cs[k].stats);
        LM_CHECK(st.folded == (int64_t)lm_tu_jnum(cJSON_GetObjectItem(js, "folded")),
                 "%s: folded %lld", cs[k].stats, (long long)st.folded);
        LM_CHECK(st.pct == lm_tu_jnum(cJSON_GetObjectItem(js, "pct")), "%s: pct %.17g", cs[k].stats,
                 st.pct);
        LM_CHECK_CLOSE(st.sdlogj, lm_tu_jnum(cJSON_GetObjectItem(js, "sdlogj")), 1e-9, 1e-9);
    }
    free(det);
    lm_tensor_free(&f64);
    lm_record_free(&rec);
    lm_record_free(&rref);
    lm_reader_close(r);
    lm_reader_close(rr);
    cJSON_Delete(ref);
}

/* The same numbers for 1 and 2 threads (fixed-order reductions). */
static void t_threads(void)
{
    lm_tensor f, w;
    double sp[3];
    if (read_labels(data("metrics_ct_fixed.nii.gz"), &f, sp) < 0 ||
        read_labels(data("metrics_ct_warped.nii.gz"), &w, NULL) < 0)
        return;
    const int64_t *dims = f.shape, n = dims[0] * dims[1] * dims[2];
    int32_t lab = 5;
    double hd[2][2];
    lm_jac_stats js[2];
    float *u = malloc(3 * n * sizeof *u);
    double *det = malloc(n * sizeof *det);
    rng_state = lm_test_seed() + 3;
    for (int64_t i = 0; i < 3 * n; i++)
        u[i] = (float)(urand() - 0.5);
    int old = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        lm_label_stats st;
        lm_label_stats_compute(&st, w.data, f.data, dims, &lab, 1);
        lm_hd95(&hd[t][0], w.data, f.data, dims, sp, &st, LM_HD_MEDPY);
        lm_hd95(&hd[t][1], w.data, f.data, dims, sp, &st, LM_HD_MONAI);
        lm_jacobian_det(det, u, LM_F32, dims, LM_JAC_VXM);
        lm_jacobian_stats(&js[t], det, n, LM_JAC_VXM);
    }
    omp_set_num_threads(old);
    LM_CHECK(hd[0][0] == hd[1][0] && hd[0][1] == hd[1][1], "%s", "");
    LM_CHECK(js[0].sdlogj == js[1].sdlogj && js[0].folded == js[1].folded, "%s", "");
    free(u);
    free(det);
    lm_tensor_free(&f);
    lm_tensor_free(&w);
}

static const lm_test_case cases[] = {
    {"border6 = mask xor scipy binary_erosion (brute force)", t_border_brute},
    {"exact anisotropic EDT (brute force)", t_edt_brute},
    {"numpy linear percentile", t_percentile},
    {"identical maps: Dice 1, HD95 0; absent label", t_dice_identical},
    {"concentric spheres: HD95 = r2 - r1 within a voxel", t_hd95_spheres},
    {"u = 0: det 1 everywhere", t_jac_zero},
    {"u = diag(alpha) p: det = prod(1 + alpha), sitk-mm quirk", t_jac_linear},
    {"SciPy golden: Dice and HD95 on real label maps", t_golden_nifti},
    {"NumPy/SimpleITK golden: determinants, folding, SDlogJ", t_golden_jac},
    {"same numbers for 1 and 2 threads", t_threads},
    {0},
};

int main(int argc, char **argv)
{
    return lm_test_run(argc, argv, cases);
}
