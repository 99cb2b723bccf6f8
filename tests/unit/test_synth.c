/* test_synth.c — the synthetic pair generator (libcommon/synth): determinism for any thread
 * count, label maps (every label present), intensities per label within the modality's ranges
 * (exactly, without blur/bias/noise; within the noise with them), the bias field (positive,
 * smooth, the asked RMS), the deformation (largest displacement, smoothness, positive Jacobian,
 * inverse), and moving labels equal to a nearest-neighbour warp, re-done here independently,
 * of the source labels by the field as written to and read back from NIfTI. Real label maps
 * from ../shared/data/synthseg-label-maps when present. */
#include "io/lm_error.h"
#include "io/lm_nifti.h"
#include "lm_test.h"
#include "synth/lm_synth.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lm_synth_args defaults(void)
{
    lm_synth_args a;
    lm_synth_args_default(&a);
    a.seed = lm_test_seed();
    return a;
}

static int same_tensor(const lm_tensor *x, const lm_tensor *y)
{
    if (x->dtype != y->dtype || x->ndim != y->ndim || x->nbytes != y->nbytes)
        return 0;
    for (int i = 0; i < x->ndim; i++)
        if (x->shape[i] != y->shape[i])
            return 0;
    return memcmp(x->data, y->data, x->nbytes) == 0;
}

static int64_t vox(const int64_t n[3], int64_t d, int64_t h, int64_t w)
{
    return (d * n[1] + h) * n[2] + w;
}

/* Counts of each label value 0..cap-1 (values outside are counted in [cap]). */
static void histogram(const lm_tensor *t, int64_t *cnt, int cap)
{
    const int32_t *L = t->data;
    memset(cnt, 0, (size_t)(cap + 1) * sizeof *cnt);
    for (int64_t i = 0; i < lm_tensor_numel(t); i++)
        cnt[L[i] >= 0 && L[i] < cap ? L[i] : cap]++;
}

static double dice_mean(const lm_tensor *a, const lm_tensor *b, int K)
{
    const int32_t *x = a->data, *y = b->data;
    double s = 0;
    for (int l = 1; l <= K; l++) {
        int64_t ab = 0, na = 0, nb = 0;
        for (int64_t i = 0; i < lm_tensor_numel(a); i++) {
            na += x[i] == l;
            nb += y[i] == l;
            ab += x[i] == l && y[i] == l;
        }
        s += na + nb ? 2.0 * (double)ab / (double)(na + nb) : 1.0;
    }
    return s / K;
}

/* ---- label maps ---- */

static void t_shapes(void)
{
    lm_synth_args a = defaults();
    int K = a.organs + 1;
    for (uint64_t s = 0; s < 4; s++) {
        lm_tensor L, L2;
        int64_t cnt[66];
        LM_CHECK(lm_synth_shapes(&L, &a, s) == 0, "%s", lm_error());
        LM_CHECK(L.ndim == 3 && L.shape[0] == 64 && L.shape[1] == 64 && L.shape[2] == 64,
                 "as expected");
        histogram(&L, cnt, 65);
        for (int l = 0; l <= K; l++)
            LM_CHECK(cnt[l] > 50, "subject %d: label %d has %lld voxels", (int)s, l,
                     (long long)cnt[l]);
        LM_CHECK(cnt[K + 1] == 0 && cnt[65] == 0, "labels beyond %d", K);
        const int32_t *v = L.data;
        LM_CHECK(v[0] == 0 && v[L.nbytes / 4 - 1] == 0, "corners are background");
        /* the body occupies a sensible fraction of the grid */
        double body = 1.0 - (double)cnt[0] / (double)lm_tensor_numel(&L);
        LM_CHECK(body > 0.15 && body < 0.5, "body fraction %.3f", body);
        LM_CHECK(lm_synth_shapes(&L2, &a, s) == 0 && same_tensor(&L, &L2), "repeatable");
        lm_tensor_free(&L2);
        LM_CHECK(lm_synth_shapes(&L2, &a, s + 10) == 0 && !same_tensor(&L, &L2), "subjects differ");
        lm_tensor_free(&L2);
        lm_tensor_free(&L);
    }
    /* Organs correspond across subjects (one template): organ k of two subjects overlaps. */
    lm_tensor A, B;
    lm_synth_shapes(&A, &a, 0);
    lm_synth_shapes(&B, &a, 1);
    double d = dice_mean(&A, &B, K);
    LM_CHECK(d > 0.35 && d < 0.97, "mean Dice between subjects %.3f", d);
    lm_tensor_free(&A);
    lm_tensor_free(&B);
    /* a small anisotropic grid, more organs */
    a.shape[0] = 32;
    a.shape[1] = 40;
    a.shape[2] = 48;
    a.organs = 8;
    lm_synth_bone_defaults(&a, LM_SYNTH_SHAPES);
    LM_CHECK(a.nbone == 2 && a.bone[0] == 9 && a.bone[1] == 8, "bone defaults");
    lm_tensor L;
    int64_t cnt[66];
    LM_CHECK(lm_synth_shapes(&L, &a, 3) == 0, "as expected");
    histogram(&L, cnt, 65);
    for (int l = 0; l <= 9; l++)
        LM_CHECK(cnt[l] > 0, "small grid: label %d missing", l);
    lm_tensor_free(&L);
}

static void t_args(void)
{
    lm_synth_args a = defaults();
    LM_CHECK(lm_synth_args_check(&a) == 0, "as expected");
    a.shape[1] = 8;
    LM_CHECK(lm_synth_args_check(&a) < 0 && strstr(lm_error(), "16"), "%s", lm_error());
    a = defaults();
    a.spacing = 0;
    LM_CHECK(lm_synth_args_check(&a) < 0, "as expected");
    a = defaults();
    a.organs = 0;
    LM_CHECK(lm_synth_args_check(&a) < 0, "as expected");
}

/* ---- intensities ---- */

static void t_contrast(void)
{
    lm_synth_args a = defaults();
    a.nbone = 2;
    a.bone[0] = 5;
    a.bone[1] = 40;
    double prev_ct = 0, prev_mr = 0;
    int distinct = 0;
    for (int32_t l = 0; l < 60; l++) {
        double ct = lm_synth_contrast(LM_SYNTH_CT, &a, 99, l);
        double mr = lm_synth_contrast(LM_SYNTH_MR, &a, 99, l);
        if (l == 0) {
            LM_CHECK(ct == -1000.0, "CT air %g", ct);
            LM_CHECK(mr >= 0 && mr <= 50, "MR background %g", mr);
        } else if (l == 5 || l == 40) {
            LM_CHECK(ct >= 700 && ct <= 1200, "CT bone label %d: %g", l, ct);
        } else {
            LM_CHECK(ct >= 20 && ct <= 80, "CT soft tissue label %d: %g", l, ct);
        }
        if (l)
            LM_CHECK(mr >= 100 && mr <= 1000, "MR label %d: %g", l, mr);
        distinct += l > 1 && ct != prev_ct && mr != prev_mr;
        prev_ct = ct;
        prev_mr = mr;
        LM_CHECK(ct == lm_synth_contrast(LM_SYNTH_CT, &a, 99, l), "pure function");
    }
    LM_CHECK(distinct == 58, "labels get different intensities (%d)", distinct);
    LM_CHECK(lm_synth_contrast(LM_SYNTH_MR, &a, 99, 7) != lm_synth_contrast(LM_SYNTH_MR, &a, 98, 7),
             "another stream, another contrast");
}

static void t_render_exact(void)
{
    lm_synth_args a = defaults();
    a.noise = a.bias = a.blur = 0;
    lm_tensor L, ct, mr;
    LM_CHECK(lm_synth_shapes(&L, &a, 0) == 0, "as expected");
    LM_CHECK(lm_synth_render(&ct, &L, LM_SYNTH_CT, &a, 500) == 0, "%s", lm_error());
    LM_CHECK(lm_synth_render(&mr, &L, LM_SYNTH_MR, &a, 600) == 0, "%s", lm_error());
    const int32_t *l = L.data;
    const float *c = ct.data, *m = mr.data;
    int64_t bad_ct = 0, bad_mr = 0;
    for (int64_t i = 0; i < lm_tensor_numel(&L); i++) {
        bad_ct += c[i] != (float)floor(lm_synth_contrast(LM_SYNTH_CT, &a, 500, l[i]) + 0.5);
        bad_mr += m[i] != (float)lm_synth_contrast(LM_SYNTH_MR, &a, 600, l[i]);
    }
    LM_CHECK(bad_ct == 0 && bad_mr == 0, "%lld CT and %lld MR voxels differ from the label mean",
             (long long)bad_ct, (long long)bad_mr);
    lm_tensor_free(&L);
    lm_tensor_free(&ct);
    lm_tensor_free(&mr);
}

/* Interior voxels (the whole radius-r cube has one label) follow mean * bias + noise. */
static void t_render_noise(void)
{
    lm_synth_args a = defaults();
    lm_tensor L, img, bias;
    LM_CHECK(lm_synth_shapes(&L, &a, 2) == 0, "as expected");
    const int64_t *n = a.shape;
    const int32_t *l = L.data;
    int r = (int)ceil(3 * a.blur / a.spacing);
    for (int mod = 0; mod < 2; mod++) {
        uint64_t st = mod == LM_SYNTH_CT ? 700 : 800;
        LM_CHECK(lm_synth_render(&img, &L, mod, &a, st) == 0, "%s", lm_error());
        if (mod == LM_SYNTH_MR)
            LM_CHECK(lm_synth_bias(&bias, &a, st + 1) == 0, "as expected");
        const float *x = img.data;
        double sd = 1000 * a.noise, s2 = 0, worst = 0;
        int64_t cnt = 0;
        for (int64_t d = r; d < n[0] - r; d++)
            for (int64_t h = r; h < n[1] - r; h++)
                for (int64_t w = r; w < n[2] - r; w++) {
                    int64_t i = vox(n, d, h, w);
                    int inner = 1;
                    for (int dd = -r; dd <= r && inner; dd++)
                        for (int hh = -r; hh <= r && inner; hh++)
                            for (int ww = -r; ww <= r && inner; ww++)
                                inner = l[vox(n, d + dd, h + hh, w + ww)] == l[i];
                    if (!inner || l[i] == 0)
                        continue; /* clamped: CT air at -1024 HU, MR background at 0 */
                    double mu = lm_synth_contrast(mod, &a, st, l[i]);
                    if (mod == LM_SYNTH_MR)
                        mu *= ((const float *)bias.data)[i];
                    double e = x[i] - mu;
                    s2 += e * e;
                    cnt++;
                    if (fabs(e) > worst)
                        worst = fabs(e);
                }
        double rms = sqrt(s2 / (double)cnt);
        LM_CHECK(cnt > 10000, "%lld interior voxels", (long long)cnt);
        LM_CHECK(fabs(rms - sd) < 0.05 * sd, "%s noise RMS %.3f, expected %.3f", mod ? "CT" : "MR",
                 rms, sd);
        LM_CHECK(worst < 6.5 * sd, "%s largest deviation %.1f", mod ? "CT" : "MR", worst);
        if (mod == LM_SYNTH_CT) {
            int64_t nonint = 0;
            for (int64_t i = 0; i < lm_tensor_numel(&img); i++)
                nonint += x[i] != floorf(x[i]) || x[i] < -1024 || x[i] > 3071;
            LM_CHECK(nonint == 0, "CT values are integral HU in [-1024, 3071]");
        } else {
            lm_tensor_free(&bias);
        }
        lm_tensor_free(&img);
    }
    lm_tensor_free(&L);
}

static void t_bias(void)
{
    lm_synth_args a = defaults();
    lm_tensor b;
    LM_CHECK(lm_synth_bias(&b, &a, 5) == 0, "as expected");
    const int64_t *n = a.shape;
    const float *x = b.data;
    double s2 = 0, lo = INFINITY, hi = 0, step = 0, curv = 0;
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t w = 0; w < n[2]; w++) {
                double v = x[vox(n, d, h, w)], lv = log(v);
                lo = fmin(lo, v);
                hi = fmax(hi, v);
                s2 += lv * lv;
                if (w + 2 < n[2]) {
                    double l1 = log(x[vox(n, d, h, w + 1)]), l2 = log(x[vox(n, d, h, w + 2)]);
                    step = fmax(step, fabs(l1 - lv));
                    curv = fmax(curv, fabs(l2 - 2 * l1 + lv));
                }
                if (d + 1 < n[0])
                    step = fmax(step, fabs(log(x[vox(n, d + 1, h, w)]) - lv));
                if (h + 1 < n[1])
                    step = fmax(step, fabs(log(x[vox(n, d, h + 1, w)]) - lv));
            }
    double rms = sqrt(s2 / (double)lm_tensor_numel(&b));
    LM_CHECK(lo > 0, "bias field positive (min %g)", lo);
    LM_CHECK(fabs(rms - a.bias) < 1e-3, "log-gain RMS %.5f, asked %.5f", rms, a.bias);
    LM_CHECK(hi / lo > 1.3, "the field varies (%.3f..%.3f)", lo, hi);
    /* smooth: neighbouring voxels differ by a small fraction of the total variation */
    LM_CHECK(step < 0.06 && curv < 0.01, "log-gain step %.4f, second difference %.5f", step, curv);
    lm_tensor_free(&b);
    a.bias = 0;
    LM_CHECK(lm_synth_bias(&b, &a, 5) == 0, "as expected");
    int ones = 1;
    for (int64_t i = 0; i < lm_tensor_numel(&b); i++)
        ones &= ((float *)b.data)[i] == 1.0f;
    LM_CHECK(ones, "bias 0 gives a unit field");
    lm_tensor_free(&b);
}

/* ---- fields ---- */

/* Trilinear sample with clamped coordinates, written independently of the library. */
static double tri(const float *g, const int64_t n[3], double z, double y, double x)
{
    double p[3] = {z, y, x};
    int64_t i[3];
    double f[3];
    for (int k = 0; k < 3; k++) {
        double c = p[k] < 0 ? 0 : p[k] > (double)(n[k] - 1) ? (double)(n[k] - 1) : p[k];
        i[k] = (int64_t)floor(c);
        if (i[k] == n[k] - 1 && n[k] > 1)
            i[k]--;
        f[k] = c - (double)i[k];
    }
    double s = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 2; c++)
                s += (a ? f[0] : 1 - f[0]) * (b ? f[1] : 1 - f[1]) * (c ? f[2] : 1 - f[2]) *
                     g[vox(n, i[0] + a, i[1] + b, i[2] + c)];
    return s;
}

static void t_fields(void)
{
    lm_synth_args a = defaults();
    lm_tensor v, u, w;
    LM_CHECK(lm_synth_velocity(&v, &a, 77) == 0, "as expected");
    LM_CHECK(lm_synth_integrate(&u, &v, 1.0) == 0 && lm_synth_integrate(&w, &v, -1.0) == 0,
             "as expected");
    const int64_t *n = a.shape;
    int64_t N = n[0] * n[1] * n[2];
    const float *vv = v.data, *uu = u.data, *ww = w.data;
    double vmax = 0, umax = 0, vstep = 0, jmin = INFINITY, inv = 0;
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t x = 0; x < n[2]; x++) {
                int64_t i = vox(n, d, h, x);
                double m = 0, mu = 0;
                for (int c = 0; c < 3; c++) {
                    m += (double)vv[c * N + i] * vv[c * N + i];
                    mu += (double)uu[c * N + i] * uu[c * N + i];
                    if (x + 1 < n[2])
                        vstep = fmax(vstep, fabs(vv[c * N + i + 1] - vv[c * N + i]));
                }
                vmax = fmax(vmax, sqrt(m));
                umax = fmax(umax, sqrt(mu));
                /* Jacobian determinant of p + u(p), central differences inside */
                if (d > 0 && h > 0 && x > 0 && d + 1 < n[0] && h + 1 < n[1] && x + 1 < n[2]) {
                    double J[3][3];
                    int64_t st[3] = {n[1] * n[2], n[2], 1};
                    for (int c = 0; c < 3; c++)
                        for (int k = 0; k < 3; k++)
                            J[c][k] =
                                (c == k) + 0.5 * (uu[c * N + i + st[k]] - uu[c * N + i - st[k]]);
                    double det = J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1]) -
                                 J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0]) +
                                 J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0]);
                    jmin = fmin(jmin, det);
                }
                /* inverse consistency: w(p + u(p)) = -u(p), away from the clamped border */
                double q[3] = {(double)d + uu[i], (double)h + uu[N + i], (double)x + uu[2 * N + i]};
                int in = 1;
                for (int k = 0; k < 3; k++)
                    in &= q[k] > 4 && q[k] < (double)n[k] - 5;
                if (in)
                    for (int c = 0; c < 3; c++)
                        inv = fmax(inv, fabs(uu[c * N + i] + tri(ww + c * N, n, q[0], q[1], q[2])));
            }
    double want = a.deform / a.spacing;
    LM_CHECK(fabs(vmax - want) < 1e-4 * want, "largest velocity %.6f voxels, asked %.6f", vmax,
             want);
    LM_CHECK(umax > 0.7 * want && umax < 1.3 * want, "largest displacement %.3f voxels", umax);
    LM_CHECK(vstep < 0.25 * want, "velocity changes by %.3f voxels between neighbours", vstep);
    LM_CHECK(jmin > 0.2, "smallest Jacobian determinant %.3f", jmin);
    LM_CHECK(inv < 0.1, "inverse consistency error %.4f voxels", inv);
    lm_tensor_free(&v);
    lm_tensor_free(&u);
    lm_tensor_free(&w);
    a.deform = 0;
    LM_CHECK(lm_synth_velocity(&v, &a, 77) == 0 && lm_synth_integrate(&u, &v, 1.0) == 0,
             "as expected");
    int zero = 1;
    for (int64_t i = 0; i < 3 * N; i++)
        zero &= ((float *)u.data)[i] == 0.0f;
    LM_CHECK(zero, "--deform 0 gives the identity");
    lm_tensor_free(&v);
    lm_tensor_free(&u);
}

/* The ITK/ANTs convention: mm = diag(-1,-1,1) R vox for an oblique, permuted affine. */
static void t_mm_convention(void)
{
    int64_t shape[4] = {3, 4, 5, 6};
    lm_tensor vx, mm, back;
    lm_tensor_alloc(&vx, "f", LM_F32, 4, shape);
    float *f = vx.data;
    int64_t N = 4 * 5 * 6;
    for (int64_t i = 0; i < 3 * N; i++)
        f[i] = (float)(0.37 * (double)(i % 17) - 2.1);
    double c = cos(0.3), s = sin(0.3);
    double A[16] = {0, 1.5 * c, -2 * s, 10, -1.2, 0, 0, -20, 0, 1.5 * s, 2 * c, 30, 0, 0, 0, 1};
    LM_CHECK(lm_synth_flow_to_mm(&mm, &vx, A) == 0, "as expected");
    LM_CHECK(lm_synth_flow_from_mm(&back, &mm, A) == 0, "as expected");
    const float *m = mm.data, *b = back.data;
    double err = 0, rt = 0;
    for (int64_t i = 0; i < N; i++) {
        double u[3] = {f[i], f[N + i], f[2 * N + i]};
        for (int r = 0; r < 3; r++) {
            double ras = A[r * 4] * u[0] + A[r * 4 + 1] * u[1] + A[r * 4 + 2] * u[2];
            double want = r < 2 ? -ras : ras;
            err = fmax(err, fabs(m[r * N + i] - want));
            rt = fmax(rt, fabs(b[r * N + i] - u[r]));
        }
    }
    LM_CHECK(err < 1e-5, "LPS mm differs by %g", err);
    LM_CHECK(rt < 1e-5, "round trip differs by %g voxels", rt);
    lm_tensor_free(&vx);
    lm_tensor_free(&mm);
    lm_tensor_free(&back);
}

/* ---- pairs ---- */

/* out(p) = src(round(p + u(p))), 0 outside; the test's own nearest-neighbour pull. */
static void nn_warp(int32_t *out, const int32_t *src, const float *u, const int64_t n[3])
{
    int64_t N = n[0] * n[1] * n[2];
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t w = 0; w < n[2]; w++) {
                int64_t i = vox(n, d, h, w);
                int64_t q[3];
                double p[3] = {(double)d, (double)h, (double)w};
                int in = 1;
                for (int k = 0; k < 3; k++) {
                    q[k] = (int64_t)floor(p[k] + (double)u[k * N + i] + 0.5);
                    in &= q[k] >= 0 && q[k] < n[k];
                }
                out[i] = in ? src[vox(n, q[0], q[1], q[2])] : 0;
            }
}

static void t_pair_warp(void)
{
    lm_synth_args a = defaults();
    lm_tensor F, M;
    double A[16];
    lm_synth_affine(A, &a);
    LM_CHECK(lm_synth_shapes(&F, &a, 0) == 0 && lm_synth_shapes(&M, &a, 1) == 0, "as expected");
    lm_synth_pair p;
    LM_CHECK(lm_synth_pair_make(&p, &F, &M, A, &a, 3) == 0, "%s", lm_error());
    LM_CHECK(same_tensor(&p.fixed_seg, &F) && same_tensor(&p.source_seg, &M), "sources kept");
    LM_CHECK(p.max_disp_mm > 0.7 * a.deform && p.max_disp_mm < 1.3 * a.deform,
             "largest displacement %.3f mm", p.max_disp_mm);
    /* The field through a NIfTI file, back to voxels, and the warp done here. */
    char path[1024];
    snprintf(path, sizeof path, "%s/deform.nii", lm_test_tmpdir());
    lm_nifti_geom g;
    lm_nifti_geom_from_affine(&g, A, a.shape);
    LM_CHECK(lm_nifti_write(path, &p.deform_mm, &g, LM_NII_VECTOR) == 0, "%s", lm_error());
    lm_tensor rd, vx;
    lm_nifti_geom rg;
    LM_CHECK(lm_nifti_read(path, LM_NII_F32, &rd, &rg) == 0, "%s", lm_error());
    LM_CHECK(rg.intent_code == 1006, "intent DISPVECT");
    LM_CHECK(same_tensor(&rd, &p.deform_mm), "the field survives the file");
    LM_CHECK(lm_synth_flow_from_mm(&vx, &rd, rg.affine) == 0, "as expected");
    LM_CHECK(same_tensor(&vx, &p.deform), "voxel field = from_mm(file)");
    /* RAS 2 mm grid: the LPS mm field is (-2u, -2u, 2u) exactly */
    const float *mmf = p.deform_mm.data, *vf = vx.data;
    int64_t N = lm_tensor_numel(&F), bad = 0;
    for (int64_t i = 0; i < N; i++)
        bad += mmf[i] != -2 * vf[i] || mmf[N + i] != -2 * vf[N + i] ||
               mmf[2 * N + i] != 2 * vf[2 * N + i];
    LM_CHECK(bad == 0, "%lld voxels break mm = (-2,-2,2) * voxels", (long long)bad);
    int32_t *mine = malloc((size_t)N * sizeof *mine);
    nn_warp(mine, M.data, vx.data, a.shape);
    int64_t diff = 0;
    for (int64_t i = 0; i < N; i++)
        diff += mine[i] != ((int32_t *)p.moving_seg.data)[i];
    LM_CHECK(diff == 0, "%lld moving labels differ from the nearest-neighbour warp",
             (long long)diff);
    free(mine);
    /* the deformation changed something, and the moving image follows its labels */
    LM_CHECK(!same_tensor(&p.moving_seg, &M), "deformed");
    lm_tensor_free(&rd);
    lm_tensor_free(&vx);
    lm_synth_pair_free(&p);
    lm_tensor_free(&F);
    lm_tensor_free(&M);
}

static void t_pair_same_subject(void)
{
    lm_synth_args a = defaults();
    lm_tensor F;
    double A[16];
    lm_synth_affine(A, &a);
    LM_CHECK(lm_synth_shapes(&F, &a, 4) == 0, "as expected");
    lm_synth_pair p;
    LM_CHECK(lm_synth_pair_make(&p, &F, &F, A, &a, 0) == 0, "%s", lm_error());
    lm_tensor back = {0};
    int64_t s3[3] = {a.shape[0], a.shape[1], a.shape[2]};
    lm_tensor_alloc(&back, "b", LM_I32, 3, s3);
    nn_warp(back.data, p.moving_seg.data, p.flow.data, a.shape);
    double before = dice_mean(&p.moving_seg, &F, a.organs + 1);
    double after = dice_mean(&back, &F, a.organs + 1);
    LM_CHECK(before < 0.93, "Dice before %.3f", before);
    LM_CHECK(after > 0.95 && after > before + 0.05, "the true flow registers: Dice %.3f -> %.3f",
             before, after);
    lm_tensor_free(&back);
    lm_synth_pair_free(&p);
    lm_tensor_free(&F);
}

static void make_pair(lm_synth_pair *p, uint64_t index)
{
    lm_synth_args a = defaults();
    lm_tensor F, M;
    double A[16];
    lm_synth_affine(A, &a);
    lm_synth_shapes(&F, &a, 0);
    lm_synth_shapes(&M, &a, 1);
    if (lm_synth_pair_make(p, &F, &M, A, &a, index) < 0)
        lm_test_fail(__FILE__, __LINE__, "%s", lm_error());
    lm_tensor_free(&F);
    lm_tensor_free(&M);
}

static int same_pair(const lm_synth_pair *x, const lm_synth_pair *y)
{
    return same_tensor(&x->moving, &y->moving) && same_tensor(&x->fixed, &y->fixed) &&
           same_tensor(&x->moving_seg, &y->moving_seg) &&
           same_tensor(&x->fixed_seg, &y->fixed_seg) && same_tensor(&x->deform_mm, &y->deform_mm) &&
           same_tensor(&x->flow_mm, &y->flow_mm);
}

static void t_determinism(void)
{
    int saved = omp_get_max_threads();
    lm_synth_pair p1, p2, p3, q;
    omp_set_num_threads(1);
    make_pair(&p1, 2);
    omp_set_num_threads(2);
    make_pair(&p2, 2);
    omp_set_num_threads(3);
    make_pair(&p3, 2);
    omp_set_num_threads(saved);
    make_pair(&q, 5);
    LM_CHECK(same_pair(&p1, &p2), "1 vs 2 threads");
    LM_CHECK(same_pair(&p1, &p3), "1 vs 3 threads");
    LM_CHECK(!same_tensor(&p1.moving, &q.moving) && !same_tensor(&p1.deform_mm, &q.deform_mm),
             "another pair index gives another pair");
    /* a fixed point: the first CT voxel is air */
    LM_CHECK(((float *)p1.fixed.data)[0] < -900, "corner of the CT is air");
    lm_synth_pair_free(&p1);
    lm_synth_pair_free(&p2);
    lm_synth_pair_free(&p3);
    lm_synth_pair_free(&q);
}

/* ---- real label maps and grids ---- */

static void world(const double A[16], double d, double h, double w, double x[3])
{
    for (int r = 0; r < 3; r++)
        x[r] = A[r * 4] * d + A[r * 4 + 1] * h + A[r * 4 + 2] * w + A[r * 4 + 3];
}

static void t_resample(void)
{
    /* an LIA-like 1 mm grid (the SynthSeg maps' orientation) with labels = a function of the
     * world position, so every output voxel can be checked from its world coordinates */
    int64_t s[3] = {40, 50, 60};
    lm_tensor in;
    lm_tensor_alloc(&in, "l", LM_I32, 3, s);
    double Ain[16] = {-1, 0, 0, 20, 0, 0, 1, -30, 0, -1, 0, 25, 0, 0, 0, 1};
    int32_t *v = in.data;
    for (int64_t d = 0; d < s[0]; d++)
        for (int64_t h = 0; h < s[1]; h++)
            for (int64_t w = 0; w < s[2]; w++) {
                double x[3];
                world(Ain, (double)d, (double)h, (double)w, x);
                /* labels 1..: 8 mm cells in world space, background on the outer 3 voxels */
                int border =
                    d < 3 || h < 3 || w < 3 || d >= s[0] - 3 || h >= s[1] - 3 || w >= s[2] - 3;
                v[vox(s, d, h, w)] =
                    border ? 0
                           : 1 + (int32_t)(floor((x[0] + 100) / 8) + 30 * floor((x[1] + 100) / 8) +
                                           7 * floor((x[2] + 100) / 8)) %
                                     500;
            }
    lm_synth_args a = defaults();
    a.shape[0] = a.shape[1] = a.shape[2] = 24;
    a.spacing = 2;
    lm_tensor out;
    double Aout[16];
    LM_CHECK(lm_synth_labels_resample(&out, Aout, &in, Ain, &a) == 0, "%s", lm_error());
    LM_CHECK(Aout[0] == 2 && Aout[5] == 2 && Aout[10] == 2 && Aout[1] == 0, "RAS 2 mm grid");
    /* the output centre is the world centre of the foreground box */
    double cin[3], cout[3];
    world(Ain, 0.5 * (3 + 36), 0.5 * (3 + 46), 0.5 * (3 + 56), cin);
    world(Aout, 11.5, 11.5, 11.5, cout);
    for (int i = 0; i < 3; i++)
        LM_CHECK(fabs(cin[i] - cout[i]) < 1e-9, "centre axis %d: %g vs %g", i, cout[i], cin[i]);
    int64_t bad = 0, fg = 0;
    const int32_t *o = out.data;
    for (int64_t d = 0; d < 24; d++)
        for (int64_t h = 0; h < 24; h++)
            for (int64_t w = 0; w < 24; w++) {
                double x[3];
                world(Aout, (double)d, (double)h, (double)w, x);
                /* input voxel of x: invert Ain by hand (a signed permutation) */
                double q[3] = {20 - x[0], 25 - x[2], x[1] + 30};
                int64_t qi[3];
                int in_grid = 1;
                for (int k = 0; k < 3; k++) {
                    qi[k] = (int64_t)floor(q[k] + 0.5);
                    in_grid &= qi[k] >= 0 && qi[k] < s[k];
                }
                int32_t want = in_grid ? v[vox(s, qi[0], qi[1], qi[2])] : 0;
                bad += o[vox(a.shape, d, h, w)] != want;
                fg += want != 0;
            }
    LM_CHECK(bad == 0, "%lld voxels differ from the world-space lookup", (long long)bad);
    LM_CHECK(fg > 1000, "foreground voxels %lld", (long long)fg);
    lm_tensor_free(&out);
    /* bad maps */
    v[vox(s, 10, 10, 10)] = 40000;
    LM_CHECK(lm_synth_labels_resample(&out, Aout, &in, Ain, &a) < 0 && strstr(lm_error(), "40000"),
             "out-of-range label: %s", lm_error());
    memset(in.data, 0, in.nbytes);
    LM_CHECK(lm_synth_labels_resample(&out, Aout, &in, Ain, &a) < 0 && strstr(lm_error(), "empty"),
             "empty map: %s", lm_error());
    lm_tensor_free(&in);
}

static void t_flip(void)
{
    lm_synth_args a = defaults();
    a.shape[0] = 16;
    a.shape[1] = 20;
    a.shape[2] = 24;
    lm_tensor L, F;
    double A[16], B[16];
    lm_synth_affine(A, &a);
    LM_CHECK(lm_synth_shapes(&L, &a, 0) == 0, "as expected");
    LM_CHECK(lm_synth_flip_dh(&F, B, &L, A) == 0, "as expected");
    LM_CHECK(B[0] < 0 && B[5] < 0 && B[10] > 0, "LPS axes");
    int64_t bad = 0;
    const int32_t *l = L.data, *f = F.data;
    for (int64_t d = 0; d < 16; d++)
        for (int64_t h = 0; h < 20; h++)
            for (int64_t w = 0; w < 24; w++) {
                double x[3], y[3];
                world(B, (double)d, (double)h, (double)w, x);
                world(A, (double)(15 - d), (double)(19 - h), (double)w, y);
                bad += f[vox(a.shape, d, h, w)] != l[vox(a.shape, 15 - d, 19 - h, w)] ||
                       fabs(x[0] - y[0]) + fabs(x[1] - y[1]) + fabs(x[2] - y[2]) > 1e-9;
            }
    LM_CHECK(bad == 0, "%lld voxels are not at the same world position", (long long)bad);
    lm_tensor_free(&L);
    lm_tensor_free(&F);
}

static void t_real_maps(void)
{
    const char *sh = lm_test_shared();
    char path[1024];
    if (!sh) {
        lm_test_skip("../shared is absent (no real label maps)");
        return;
    }
    snprintf(path, sizeof path, "%s/data/synthseg-label-maps/training_seg_01.nii.gz", sh);
    lm_tensor in, out;
    lm_nifti_geom g;
    if (lm_nifti_read(path, LM_NII_LABELS, &in, &g) < 0) {
        lm_test_skip("%s: %s", path, lm_error());
        return;
    }
    lm_synth_args a = defaults();
    a.spacing = 3;
    double A[16];
    LM_CHECK(lm_synth_labels_resample(&out, A, &in, g.affine, &a) == 0, "%s", lm_error());
    static int64_t cin[600], cout[600];
    histogram(&in, cin, 599);
    histogram(&out, cout, 599);
    int nin = 0, nout = 0, extra = 0;
    for (int l = 0; l < 599; l++) {
        nin += cin[l] > 0;
        nout += cout[l] > 0;
        extra += cout[l] > 0 && cin[l] == 0;
    }
    LM_CHECK(extra == 0 && cout[599] == 0, "labels not in the input appear");
    LM_CHECK(nin > 40 && nout > 0.8 * nin, "%d input labels, %d kept", nin, nout);
    LM_CHECK(cout[515] > 1000 && cout[2] > 1000 && cout[41] > 1000, "skull and white matter");
    /* merge, then a pair: CT bone where the skull is */
    lm_synth_labels_merge(&out);
    int64_t cm[11];
    histogram(&out, cm, 10);
    for (int l = 0; l <= 9; l++)
        LM_CHECK(cm[l] > 0, "merged class %d missing", l);
    LM_CHECK(cm[10] == 0, "merged ids stay in 0..9");
    lm_synth_bone_defaults(&a, LM_SYNTH_MERGED);
    lm_synth_pair p;
    LM_CHECK(lm_synth_pair_make(&p, &out, &out, A, &a, 0) == 0, "%s", lm_error());
    const float *ct = p.fixed.data;
    const int32_t *lab = p.fixed_seg.data;
    double bone = 0, brain = 0;
    int64_t nb = 0, nbr = 0;
    for (int64_t i = 0; i < lm_tensor_numel(&out); i++) {
        if (lab[i] == 8)
            bone += ct[i], nb++;
        if (lab[i] == 1)
            brain += ct[i], nbr++;
    }
    LM_CHECK(nb && bone / (double)nb > 400, "mean HU of the skull %.1f", nb ? bone / nb : 0);
    LM_CHECK(nbr && fabs(brain / (double)nbr - 50) < 40, "mean HU of white matter %.1f",
             nbr ? brain / nbr : 0);
    lm_synth_pair_free(&p);
    lm_tensor_free(&in);
    lm_tensor_free(&out);
}

static const lm_test_case cases[] = {
    {"shapes: every label, template correspondence", t_shapes},
    {"args checks", t_args},
    {"contrast per modality and label", t_contrast},
    {"render without blur, bias, noise is the label mean", t_render_exact},
    {"render: interior voxels = mean * bias + noise", t_render_noise},
    {"bias field positive, smooth, asked RMS", t_bias},
    {"velocity, displacement, Jacobian, inverse", t_fields},
    {"ITK/ANTs LPS mm convention", t_mm_convention},
    {"moving labels = NN warp by the written field", t_pair_warp},
    {"same subject: the true flow registers", t_pair_same_subject},
    {"determinism for 1, 2, 3 threads", t_determinism},
    {"resample a label map in world space", t_resample},
    {"LPS flip keeps world positions", t_flip},
    {"real SynthSeg label maps", t_real_maps},
    {0},
};

int main(int argc, char **argv)
{
    return lm_test_run(argc, argv, cases);
}
