/* synth.c — synthetic multimodal pairs with known labels (see lm_synth.h).
 *
 * Smooth random fields (organ surfaces, bias, velocity) are cubic B-splines of N(0,1) control
 * points evaluated separably. Everything per voxel is a fixed-order computation in double on
 * its own output; sums over the grid (RMS, maxima, bounding boxes) run serially, so the output
 * does not depend on the number of OpenMP threads.
 */
#include "synth/lm_synth.h"

#include "cli/lm_rng.h"
#include "io/lm_error.h"
#include "prep/lm_prep.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PI 3.14159265358979323846

/* Stream ids of things that are not per pair (pairs use (index + 1) << 8 | what). */
#define S_TEMPLATE (UINT64_C(1) << 40)
#define S_SUBJECT (UINT64_C(2) << 40)

void lm_synth_args_default(lm_synth_args *a)
{
    memset(a, 0, sizeof *a);
    a->shape[0] = a->shape[1] = a->shape[2] = 64;
    a->spacing = 2.0;
    a->organs = 5;
    a->deform = 6.0;
    a->deform_grid = 16.0;
    a->noise = 0.02;
    a->bias = 0.2;
    a->blur = 1.0;
    a->seed = 1;
    lm_synth_bone_defaults(a, LM_SYNTH_SHAPES);
}

void lm_synth_bone_defaults(lm_synth_args *a, int source)
{
    a->nbone = 0;
    if (source == LM_SYNTH_FREESURFER) {
        a->bone[a->nbone++] = 515;
        a->bone[a->nbone++] = 516;
    } else if (source == LM_SYNTH_MERGED) {
        a->bone[a->nbone++] = 8;
    } else if (a->organs >= 1) {
        a->bone[a->nbone++] = a->organs + 1;
        if (a->organs >= 4)
            a->bone[a->nbone++] = a->organs;
    }
}

int lm_synth_args_check(const lm_synth_args *a)
{
    for (int i = 0; i < 3; i++)
        if (a->shape[i] < 16 || a->shape[i] > 1024)
            return lm_error_set("grid size %lld out of range 16..1024", (long long)a->shape[i]);
    if (!(a->spacing > 0 && a->spacing <= 100))
        return lm_error_set("spacing %g mm out of range (0, 100]", a->spacing);
    if (a->organs < 1 || a->organs > 64)
        return lm_error_set("organ count %d out of range 1..64", a->organs);
    if (!(a->deform >= 0 && a->deform <= 1000) || !(a->deform_grid > 0))
        return lm_error_set("deformation %g mm out of range 0..1000", a->deform);
    if (!(a->noise >= 0 && a->noise <= 10) || !(a->bias >= 0 && a->bias <= 5) ||
        !(a->blur >= 0 && a->blur <= 100))
        return lm_error_set("noise, bias or blur out of range");
    if (a->nbone < 0 || a->nbone > LM_SYNTH_MAX_BONE)
        return lm_error_set("too many bone labels");
    return 0;
}

void lm_synth_affine(double A[16], const lm_synth_args *a)
{
    memset(A, 0, 16 * sizeof *A);
    for (int i = 0; i < 3; i++) {
        A[i * 4 + i] = a->spacing;
        A[i * 4 + 3] = -a->spacing * (double)(a->shape[i] - 1) / 2.0;
    }
    A[15] = 1;
}

uint64_t lm_synth_stream(uint64_t index, int what)
{
    return ((index + 1) << 8) | (uint64_t)what;
}

/* ---- small helpers ---- */

static int alloc_vol(lm_tensor *t, const char *name, lm_dtype dt, int C, const int64_t n[3])
{
    int64_t s4[4] = {C, n[0], n[1], n[2]};
    return lm_tensor_alloc(t, name, dt, C ? 4 : 3, C ? s4 : s4 + 1);
}

static int is_vol(const lm_tensor *t, int C, lm_dtype dt)
{
    if (t->dtype != dt || t->ndim != (C ? 4 : 3) || (C && t->shape[0] != C))
        return 0;
    return 1;
}

static void vol_dims(const lm_tensor *t, int64_t n[3])
{
    for (int i = 0; i < 3; i++)
        n[i] = t->shape[t->ndim - 3 + i];
}

/* 3x3 inverse of the linear part of a row-major 4x4 affine; -1 if singular. */
static int inv3(double out[9], const double A[16])
{
    double a = A[0], b = A[1], c = A[2], d = A[4], e = A[5], f = A[6], g = A[8], h = A[9],
           i = A[10];
    double det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
    if (!(fabs(det) > 1e-12))
        return -1;
    out[0] = (e * i - f * h) / det;
    out[1] = (c * h - b * i) / det;
    out[2] = (b * f - c * e) / det;
    out[3] = (f * g - d * i) / det;
    out[4] = (a * i - c * g) / det;
    out[5] = (c * d - a * f) / det;
    out[6] = (d * h - e * g) / det;
    out[7] = (b * g - a * h) / det;
    out[8] = (a * e - b * d) / det;
    return 0;
}

static void bspline_w(double f, double w[4])
{
    double f2 = f * f, f3 = f2 * f, g = 1 - f;
    w[0] = g * g * g / 6;
    w[1] = (3 * f3 - 6 * f2 + 4) / 6;
    w[2] = (-3 * f3 + 3 * f2 + 3 * f + 1) / 6;
    w[3] = f3 / 6;
}

/* One axis of the separable B-spline: in [A][m][B] control values -> out [A][n][B] at voxel
 * positions p/cs (control j sits at (j - 1) cs). */
static void bspline_pass(double *out, const double *in, int64_t A, int64_t m, int64_t n, int64_t B,
                         double cs)
{
#pragma omp parallel for schedule(static)
    for (int64_t a = 0; a < A; a++)
        for (int64_t p = 0; p < n; p++) {
            double t = (double)p / cs, w[4];
            int64_t k = (int64_t)floor(t);
            bspline_w(t - (double)k, w);
            if (k + 3 >= m) /* only from rounding at the last voxel */
                k = m - 4;
            for (int64_t b = 0; b < B; b++) {
                double s = 0;
                for (int j = 0; j < 4; j++)
                    s += w[j] * in[(a * m + k + j) * B + b];
                out[(a * n + p) * B + b] = s;
            }
        }
}

/* out [C][n0][n1][n2] (double) = cubic B-spline of N(0,1) control points spaced cs[i] voxels
 * along axis i, drawn in order from (seed, stream). */
static int bspline_noise(double **out, int C, const int64_t n[3], const double cs[3], uint64_t seed,
                         uint64_t stream)
{
    int64_t m[3];
    for (int i = 0; i < 3; i++)
        m[i] = (int64_t)floor((double)(n[i] - 1) / cs[i]) + 4;
    size_t nc = (size_t)(C * m[0] * m[1] * m[2]);
    size_t n1 = (size_t)(C * m[0] * m[1] * n[2]), n2 = (size_t)(C * m[0] * n[1] * n[2]);
    size_t no = (size_t)(C * n[0] * n[1] * n[2]);
    double *c = malloc(nc * sizeof *c), *t1 = malloc(n1 * sizeof *t1),
           *t2 = malloc(n2 * sizeof *t2), *o = malloc(no * sizeof *o);
    if (!c || !t1 || !t2 || !o) {
        free(c), free(t1), free(t2), free(o);
        return lm_error_set("out of memory");
    }
    lm_rng r;
    lm_rng_init(&r, seed, stream);
    for (size_t i = 0; i < nc; i++)
        c[i] = lm_rng_normal(&r);
    bspline_pass(t1, c, C * m[0] * m[1], m[2], n[2], 1, cs[2]);
    bspline_pass(t2, t1, C * m[0], m[1], n[1], n[2], cs[1]);
    bspline_pass(o, t2, C, m[0], n[0], n[1] * n[2], cs[0]);
    free(c), free(t1), free(t2);
    *out = o;
    return 0;
}

/* Scales each channel of f [C][N] to unit RMS (serial sums). */
static void unit_rms(double *f, int C, int64_t N)
{
    for (int c = 0; c < C; c++) {
        double s = 0, *g = f + c * N;
        for (int64_t i = 0; i < N; i++)
            s += g[i] * g[i];
        double k = s > 0 ? 1.0 / sqrt(s / (double)N) : 0;
        for (int64_t i = 0; i < N; i++)
            g[i] *= k;
    }
}

static void rotation(double R[9], const double axis_in[3], double angle)
{
    double n = sqrt(axis_in[0] * axis_in[0] + axis_in[1] * axis_in[1] + axis_in[2] * axis_in[2]);
    double k[3] = {1, 0, 0};
    if (n > 1e-12)
        for (int i = 0; i < 3; i++)
            k[i] = axis_in[i] / n;
    double c = cos(angle), s = sin(angle), t = 1 - c;
    R[0] = c + t * k[0] * k[0];
    R[1] = t * k[0] * k[1] - s * k[2];
    R[2] = t * k[0] * k[2] + s * k[1];
    R[3] = t * k[1] * k[0] + s * k[2];
    R[4] = c + t * k[1] * k[1];
    R[5] = t * k[1] * k[2] - s * k[0];
    R[6] = t * k[2] * k[0] - s * k[1];
    R[7] = t * k[2] * k[1] + s * k[0];
    R[8] = c + t * k[2] * k[2];
}

static void random_rotation(lm_rng *r, double R[9], double max_angle)
{
    double ax[3];
    for (int i = 0; i < 3; i++)
        ax[i] = lm_rng_normal(r);
    rotation(R, ax, max_angle * (2 * lm_rng_uniform(r) - 1));
}

static void matmul3(double out[9], const double A[9], const double B[9])
{
    double t[9];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            t[i * 3 + j] = A[i * 3] * B[j] + A[i * 3 + 1] * B[3 + j] + A[i * 3 + 2] * B[6 + j];
    memcpy(out, t, sizeof t);
}

/* ---- built-in shapes ---- */

typedef struct {
    double c[3], ax[3], R[9]; /* centre, semi-axes (normalised units), rotation */
} ellipsoid;

/* Normalised ellipsoid radius at x (< 1 inside). */
static double erad(const ellipsoid *e, const double x[3])
{
    double d[3] = {x[0] - e->c[0], x[1] - e->c[1], x[2] - e->c[2]}, s = 0;
    for (int i = 0; i < 3; i++) {
        double y = (e->R[i] * d[0] + e->R[3 + i] * d[1] + e->R[6 + i] * d[2]) / e->ax[i];
        s += y * y;
    }
    return sqrt(s);
}

/* Points of e (centre, and 26 directions at half and full radius) for placement tests. */
static int epoints(const ellipsoid *e, double pts[][3])
{
    int n = 0;
    memcpy(pts[n++], e->c, 3 * sizeof(double));
    for (int a = -1; a <= 1; a++)
        for (int b = -1; b <= 1; b++)
            for (int c = -1; c <= 1; c++) {
                if (!a && !b && !c)
                    continue;
                double s[3] = {a, b, c}, l = sqrt((double)(a * a + b * b + c * c));
                for (int t = 1; t <= 2; t++)
                    for (int i = 0; i < 3; i++) {
                        double y[3] = {s[0] / l * e->ax[0] * t / 2, s[1] / l * e->ax[1] * t / 2,
                                       s[2] / l * e->ax[2] * t / 2};
                        pts[n + t - 1][i] = e->c[i] + e->R[i * 3] * y[0] + e->R[i * 3 + 1] * y[1] +
                                            e->R[i * 3 + 2] * y[2];
                    }
                n += 2;
            }
    return n;
}

static int placement_ok(const ellipsoid *e, const ellipsoid *body, const ellipsoid *org,
                        const int *placed, int K)
{
    double pe[53][3], po[53][3];
    int ne = epoints(e, pe);
    for (int i = 0; i < ne; i++)
        if (erad(body, pe[i]) > 0.92)
            return 0;
    for (int j = 0; j < K; j++) {
        if (!placed[j])
            continue;
        int no = epoints(&org[j], po);
        for (int i = 0; i < ne; i++)
            if (erad(&org[j], pe[i]) < 1.08)
                return 0;
        for (int i = 0; i < no; i++)
            if (erad(e, po[i]) < 1.08)
                return 0;
    }
    return 1;
}

/* The population: a body and organs placed without overlap. Coordinates are normalised so
 * that the grid spans [-1, 1] along every axis. The last organ is a "spine" (elongated along
 * W, near the -H side of the body) and is placed first. */
static void make_template(ellipsoid *body, ellipsoid *org, int K, uint64_t seed)
{
    lm_rng r;
    lm_rng_init(&r, seed, S_TEMPLATE);
    static const double bax[3] = {0.76, 0.64, 0.82};
    int placed[64] = {0}; /* organs <= 64 (lm_synth_args_check) */
    memset(body, 0, sizeof *body);
    memcpy(body->ax, bax, sizeof bax);
    body->R[0] = body->R[4] = body->R[8] = 1;
    for (int step = 0; step < K; step++) {
        int k = K >= 2 ? (step == 0 ? K - 1 : step - 1) : step;
        int spine = K >= 2 && k == K - 1;
        ellipsoid *e = &org[k];
        if (spine) {
            e->ax[0] = e->ax[1] = 0.09 * (1 + 0.1 * lm_rng_uniform(&r));
            e->ax[2] = 0.42;
            random_rotation(&r, e->R, 0.1);
        } else {
            for (int i = 0; i < 3; i++)
                e->ax[i] = 0.15 + 0.12 * lm_rng_uniform(&r);
            random_rotation(&r, e->R, PI);
        }
        for (int shrink = 0;; shrink++) {
            int ok = 0;
            for (int attempt = 0; attempt < 500 && !ok; attempt++) {
                for (int i = 0; i < 3; i++)
                    e->c[i] = (2 * lm_rng_uniform(&r) - 1) * 0.6 * bax[i];
                if (spine) {
                    e->c[0] *= 0.1;
                    e->c[1] = -0.45 + 0.02 * e->c[1];
                    e->c[2] *= 0.1;
                }
                ok = placement_ok(e, body, org, placed, K);
            }
            if (ok || shrink == 20)
                break;
            for (int i = 0; i < 3; i++)
                e->ax[i] *= 0.9;
        }
        placed[k] = 1;
    }
}

static void jitter(ellipsoid *e, lm_rng *r, double dc, double dax, double dang)
{
    for (int i = 0; i < 3; i++) {
        e->c[i] += dc * lm_rng_normal(r);
        double f = 1 + dax * lm_rng_normal(r);
        e->ax[i] *= fmin(1.3, fmax(0.7, f));
    }
    double Rj[9];
    random_rotation(r, Rj, dang);
    matmul3(e->R, Rj, e->R);
}

int lm_synth_shapes(lm_tensor *labels, const lm_synth_args *a, uint64_t subject)
{
    int K = a->organs;
    ellipsoid body, *org = calloc((size_t)K, sizeof *org);
    double *noise = NULL;
    memset(labels, 0, sizeof *labels);
    if (!org)
        return lm_error_set("out of memory");
    make_template(&body, org, K, a->seed);
    lm_rng r;
    lm_rng_init(&r, a->seed, S_SUBJECT + subject * 2);
    jitter(&body, &r, 0.02, 0.05, 0.05);
    for (int k = 0; k < K; k++)
        jitter(&org[k], &r, 0.035, 0.10, 0.2);
    const int64_t *n = a->shape;
    double cs[3];
    for (int i = 0; i < 3; i++)
        cs[i] = fmax(2.0, (double)(n[i] - 1) / 5.0);
    if (bspline_noise(&noise, 2, n, cs, a->seed, S_SUBJECT + subject * 2 + 1) < 0 ||
        alloc_vol(labels, "labels", LM_I32, 0, n) < 0) {
        free(org);
        free(noise);
        return -1;
    }
    int64_t N = n[0] * n[1] * n[2];
    unit_rms(noise, 2, N);
    int32_t *L = labels->data;
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t w = 0; w < n[2]; w++) {
                int64_t i = (d * n[1] + h) * n[2] + w;
                double x[3] = {(2.0 * (double)d - (double)(n[0] - 1)) / (double)(n[0] - 1),
                               (2.0 * (double)h - (double)(n[1] - 1)) / (double)(n[1] - 1),
                               (2.0 * (double)w - (double)(n[2] - 1)) / (double)(n[2] - 1)};
                int32_t lab = 0;
                if (erad(&body, x) - 1 + 0.06 * noise[i] < 0) {
                    lab = 1;
                    for (int k = 0; k < K; k++)
                        if (erad(&org[k], x) - 1 + 0.12 * noise[N + i] < 0)
                            lab = k + 2;
                }
                L[i] = lab;
            }
    free(org);
    free(noise);
    return 0;
}

/* ---- real label maps ---- */

int lm_synth_labels_resample(lm_tensor *out, double out_affine[16], const lm_tensor *in,
                             const double in_affine[16], const lm_synth_args *a)
{
    memset(out, 0, sizeof *out);
    if (!is_vol(in, 0, LM_I32))
        return lm_error_set("a 3-D integer label map is needed");
    int64_t ni[3], lo[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, hi[3] = {-1, -1, -1};
    vol_dims(in, ni);
    const int32_t *src = in->data;
    for (int64_t d = 0; d < ni[0]; d++)
        for (int64_t h = 0; h < ni[1]; h++)
            for (int64_t w = 0; w < ni[2]; w++) {
                int32_t v = src[(d * ni[1] + h) * ni[2] + w];
                if (v == 0)
                    continue;
                if (v < 0 || v > LM_SYNTH_MAX_LABEL)
                    return lm_error_set("label value %d outside 0..%d", (int)v, LM_SYNTH_MAX_LABEL);
                int64_t p[3] = {d, h, w};
                for (int i = 0; i < 3; i++) {
                    if (p[i] < lo[i])
                        lo[i] = p[i];
                    if (p[i] > hi[i])
                        hi[i] = p[i];
                }
            }
    if (hi[0] < 0)
        return lm_error_set("the label map is empty (all zero)");
    double inv[9];
    if (inv3(inv, in_affine) < 0)
        return lm_error_set("singular voxel-to-world affine");
    double cv[3], cw[3];
    for (int i = 0; i < 3; i++)
        cv[i] = 0.5 * (double)(lo[i] + hi[i]);
    for (int r = 0; r < 3; r++)
        cw[r] = in_affine[r * 4] * cv[0] + in_affine[r * 4 + 1] * cv[1] +
                in_affine[r * 4 + 2] * cv[2] + in_affine[r * 4 + 3];
    double *A = out_affine;
    memset(A, 0, 16 * sizeof *A);
    for (int i = 0; i < 3; i++) {
        A[i * 4 + i] = a->spacing;
        A[i * 4 + 3] = cw[i] - a->spacing * (double)(a->shape[i] - 1) / 2.0;
    }
    A[15] = 1;
    /* M = in^-1 * out: output voxel -> input voxel. */
    double M[12];
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 4; c++) {
            double s = 0;
            for (int k = 0; k < 3; k++)
                s += inv[r * 3 + k] * (A[k * 4 + c] - (c == 3 ? in_affine[k * 4 + 3] : 0));
            M[r * 4 + c] = s;
        }
    }
    if (alloc_vol(out, "labels", LM_I32, 0, a->shape) < 0)
        return -1;
    const int64_t *n = a->shape;
    int32_t *dst = out->data;
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t w = 0; w < n[2]; w++) {
                int64_t q[3];
                int inside = 1;
                for (int r = 0; r < 3; r++) {
                    double x = M[r * 4] * (double)d + M[r * 4 + 1] * (double)h +
                               M[r * 4 + 2] * (double)w + M[r * 4 + 3];
                    q[r] = (int64_t)floor(x + 0.5);
                    if (q[r] < 0 || q[r] >= ni[r])
                        inside = 0;
                }
                dst[(d * n[1] + h) * n[2] + w] =
                    inside ? src[(q[0] * ni[1] + q[1]) * ni[2] + q[2]] : 0;
            }
    return 0;
}

/* FreeSurfer/SynthSeg id -> merged class (lm_synth.h); ids not listed -> 9. */
static const int16_t fs_merge[][2] = {
    {0, 0},  {2, 1},  {41, 1}, {77, 1}, {85, 1},  {3, 2},   {42, 2}, {4, 3},  {5, 3},
    {14, 3}, {15, 3}, {43, 3}, {44, 3}, {72, 3},  {7, 4},   {8, 4},  {46, 4}, {47, 4},
    {10, 5}, {11, 5}, {12, 5}, {13, 5}, {17, 5},  {18, 5},  {26, 5}, {28, 5}, {30, 5},
    {31, 5}, {49, 5}, {50, 5}, {51, 5}, {52, 5},  {53, 5},  {54, 5}, {58, 5}, {60, 5},
    {62, 5}, {63, 5}, {16, 6}, {24, 7}, {515, 8}, {516, 8},
};

static int32_t fs_class(int32_t v)
{
    for (size_t i = 0; i < sizeof fs_merge / sizeof *fs_merge; i++)
        if (fs_merge[i][0] == v)
            return fs_merge[i][1];
    return 9;
}

void lm_synth_labels_merge(lm_tensor *labels)
{
    int32_t *L = labels->data;
    int64_t N = lm_tensor_numel(labels);
    for (int64_t i = 0; i < N; i++)
        L[i] = fs_class(L[i]);
}

/* ---- fields ---- */

int lm_synth_velocity(lm_tensor *v, const lm_synth_args *a, uint64_t stream)
{
    const int64_t *n = a->shape;
    int64_t N = n[0] * n[1] * n[2];
    double cs[3], *f = NULL;
    memset(v, 0, sizeof *v);
    for (int i = 0; i < 3; i++)
        cs[i] = fmax(1.0, a->deform_grid / a->spacing);
    if (alloc_vol(v, "velocity", LM_F32, 3, n) < 0)
        return -1;
    if (a->deform <= 0)
        return 0;
    if (bspline_noise(&f, 3, n, cs, a->seed, stream) < 0) {
        lm_tensor_free(v);
        return -1;
    }
    double mx = 0;
    for (int64_t i = 0; i < N; i++) {
        double m = f[i] * f[i] + f[N + i] * f[N + i] + f[2 * N + i] * f[2 * N + i];
        if (m > mx)
            mx = m;
    }
    double k = mx > 0 ? a->deform / a->spacing / sqrt(mx) : 0;
    float *o = v->data;
    for (int64_t i = 0; i < 3 * N; i++)
        o[i] = (float)(f[i] * k);
    free(f);
    return 0;
}

/* Trilinear sample of the 3-channel field u at (z, y, x), coordinates clamped to the grid.
 * Written out flat: this is the inner loop of scaling and squaring. */
static inline void sample3(const float *u, const int64_t n[3], int64_t N, double z, double y,
                           double x, double out[3])
{
    const double p[3] = {z, y, x};
    const int64_t str[3] = {n[1] * n[2], n[2], 1};
    double f[3];
    int64_t i0[3], st[3];
    for (int k = 0; k < 3; k++) {
        /* comparisons and truncation: fmin/fmax/floor are library calls at -O2 on x86-64 */
        double hi = (double)(n[k] - 1), c = p[k] > 0 ? p[k] : 0;
        c = c < hi ? c : hi;
        i0[k] = (int64_t)c; /* c >= 0: truncation is floor */
        st[k] = i0[k] + 1 < n[k] ? str[k] : 0;
        f[k] = c - (double)i0[k];
    }
    int64_t base = (i0[0] * n[1] + i0[1]) * n[2] + i0[2];
    double gz = 1 - f[0], gy = 1 - f[1], gx = 1 - f[2];
    double w000 = gz * gy * gx, w001 = gz * gy * f[2], w010 = gz * f[1] * gx,
           w011 = gz * f[1] * f[2], w100 = f[0] * gy * gx, w101 = f[0] * gy * f[2],
           w110 = f[0] * f[1] * gx, w111 = f[0] * f[1] * f[2];
    for (int c = 0; c < 3; c++) {
        const float *g = u + c * N + base;
        out[c] = w000 * g[0] + w001 * g[st[2]] + w010 * g[st[1]] + w011 * g[st[1] + st[2]] +
                 w100 * g[st[0]] + w101 * g[st[0] + st[2]] + w110 * g[st[0] + st[1]] +
                 w111 * g[st[0] + st[1] + st[2]];
    }
}

int lm_synth_integrate(lm_tensor *u, const lm_tensor *v, double sign)
{
    memset(u, 0, sizeof *u);
    if (!is_vol(v, 3, LM_F32))
        return lm_error_set("a [3,D,H,W] F32 velocity field is needed");
    int64_t n[3];
    vol_dims(v, n);
    int64_t N = n[0] * n[1] * n[2];
    const float *vv = v->data;
    double mx = 0;
    for (int64_t i = 0; i < N; i++) {
        double m = (double)vv[i] * vv[i] + (double)vv[N + i] * vv[N + i] +
                   (double)vv[2 * N + i] * vv[2 * N + i];
        if (m > mx)
            mx = m;
    }
    int steps = 4;
    while (steps < 30 && sqrt(mx) / ldexp(1.0, steps) > 0.25)
        steps++;
    lm_tensor tmp;
    if (alloc_vol(u, "displacement", LM_F32, 3, n) < 0)
        return -1;
    if (alloc_vol(&tmp, "tmp", LM_F32, 3, n) < 0) {
        lm_tensor_free(u);
        return -1;
    }
    float *a = u->data, *b = tmp.data;
    double k = sign / ldexp(1.0, steps);
    for (int64_t i = 0; i < 3 * N; i++)
        a[i] = (float)(vv[i] * k);
    for (int s = 0; s < steps; s++) {
#pragma omp parallel for schedule(static)
        for (int64_t d = 0; d < n[0]; d++)
            for (int64_t h = 0; h < n[1]; h++)
                for (int64_t w = 0; w < n[2]; w++) {
                    int64_t i = (d * n[1] + h) * n[2] + w;
                    double o[3];
                    sample3(a, n, N, (double)d + a[i], (double)h + a[N + i],
                            (double)w + a[2 * N + i], o);
                    for (int c = 0; c < 3; c++)
                        b[c * N + i] = (float)(a[c * N + i] + o[c]);
                }
        float *t = a;
        a = b;
        b = t;
    }
    if (a != u->data)
        memcpy(u->data, a, u->nbytes);
    lm_tensor_free(&tmp);
    return 0;
}

static int flow_check(lm_tensor *out, const lm_tensor *in, const char *name, int64_t *N)
{
    memset(out, 0, sizeof *out);
    if (!is_vol(in, 3, LM_F32))
        return lm_error_set("a [3,D,H,W] F32 displacement field is needed");
    int64_t n[3];
    vol_dims(in, n);
    *N = n[0] * n[1] * n[2];
    return alloc_vol(out, name, LM_F32, 3, n);
}

/* The conversions are lm-warp's own (libcommon/prep), so a field written here reads back in
 * lm-warp as exactly the voxel field that warped the labels. */
int lm_synth_flow_to_mm(lm_tensor *mm, const lm_tensor *vox, const double A[16])
{
    int64_t N;
    if (flow_check(mm, vox, "displacement_mm", &N) < 0)
        return -1;
    lm_field_vox_to_lps_mm(mm->data, vox->data, N, A);
    return 0;
}

int lm_synth_flow_from_mm(lm_tensor *vox, const lm_tensor *mm, const double A[16])
{
    int64_t N;
    if (flow_check(vox, mm, "displacement", &N) < 0)
        return -1;
    if (lm_field_lps_mm_to_vox(vox->data, mm->data, N, A) < 0) {
        lm_tensor_free(vox);
        return lm_error_set("singular voxel-to-world affine");
    }
    return 0;
}

int lm_synth_warp_nearest(lm_tensor *out, const lm_tensor *labels, const lm_tensor *flow)
{
    memset(out, 0, sizeof *out);
    if (!is_vol(labels, 0, LM_I32) || !is_vol(flow, 3, LM_F32))
        return lm_error_set("warp needs I32 [D,H,W] labels and an F32 [3,D,H,W] field");
    int64_t n[3], nf[3];
    vol_dims(labels, n);
    vol_dims(flow, nf);
    if (n[0] != nf[0] || n[1] != nf[1] || n[2] != nf[2])
        return lm_error_set("labels and field are on different grids");
    if (alloc_vol(out, "labels", LM_I32, 0, n) < 0)
        return -1;
    int64_t N = n[0] * n[1] * n[2];
    const float *u = flow->data;
    const int32_t *L = labels->data;
    int32_t *o = out->data;
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t w = 0; w < n[2]; w++) {
                int64_t i = (d * n[1] + h) * n[2] + w, q[3];
                double p[3] = {(double)d + u[i], (double)h + u[N + i], (double)w + u[2 * N + i]};
                int inside = 1;
                for (int k = 0; k < 3; k++) {
                    double r = floor(p[k] + 0.5);
                    if (!(r >= 0 && r <= (double)(n[k] - 1)))
                        inside = 0;
                    q[k] = inside ? (int64_t)r : 0;
                }
                o[i] = inside ? L[(q[0] * n[1] + q[1]) * n[2] + q[2]] : 0;
            }
    return 0;
}

/* ---- intensities ---- */

static int is_bone(const lm_synth_args *a, int32_t label)
{
    for (int i = 0; i < a->nbone; i++)
        if (a->bone[i] == label)
            return 1;
    return 0;
}

double lm_synth_contrast(int modality, const lm_synth_args *a, uint64_t stream, int32_t label)
{
    lm_rng r;
    lm_rng_init(&r, a->seed, stream);
    r.ctr = (uint64_t)(uint32_t)label; /* one block per label id: independent of the label set */
    double u = lm_rng_uniform(&r);
    if (modality == LM_SYNTH_CT) {
        if (label == 0)
            return LM_SYNTH_CT_AIR;
        if (is_bone(a, label))
            return LM_SYNTH_CT_BONE_LO + (LM_SYNTH_CT_BONE_HI - LM_SYNTH_CT_BONE_LO) * u;
        return LM_SYNTH_CT_SOFT_LO + (LM_SYNTH_CT_SOFT_HI - LM_SYNTH_CT_SOFT_LO) * u;
    }
    if (label == 0)
        return LM_SYNTH_MR_BG_HI * u;
    return LM_SYNTH_MR_LO + (LM_SYNTH_MR_HI - LM_SYNTH_MR_LO) * u;
}

int lm_synth_bias(lm_tensor *b, const lm_synth_args *a, uint64_t stream)
{
    const int64_t *n = a->shape;
    int64_t N = n[0] * n[1] * n[2];
    double cs[3], *f = NULL;
    memset(b, 0, sizeof *b);
    for (int i = 0; i < 3; i++)
        cs[i] = fmax(1.0, (double)(n[i] - 1) / 4.0);
    if (alloc_vol(b, "bias", LM_F32, 0, n) < 0)
        return -1;
    float *o = b->data;
    if (a->bias <= 0) {
        for (int64_t i = 0; i < N; i++)
            o[i] = 1.0f;
        return 0;
    }
    if (bspline_noise(&f, 1, n, cs, a->seed, stream) < 0) {
        lm_tensor_free(b);
        return -1;
    }
    unit_rms(f, 1, N);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++)
        o[i] = (float)exp(a->bias * f[i]);
    free(f);
    return 0;
}

/* Separable Gaussian blur of x [n0][n1][n2] along `axis`, clamped borders. */
static void blur_axis(float *out, const float *in, const int64_t n[3], int axis, const double *k,
                      int rad)
{
    int64_t stride = axis == 0 ? n[1] * n[2] : axis == 1 ? n[2] : 1, len = n[axis];
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < n[0]; d++)
        for (int64_t h = 0; h < n[1]; h++)
            for (int64_t w = 0; w < n[2]; w++) {
                int64_t i = (d * n[1] + h) * n[2] + w;
                int64_t p = axis == 0 ? d : axis == 1 ? h : w;
                double s = 0;
                for (int j = -rad; j <= rad; j++) {
                    int64_t q = p + j;
                    q = q < 0 ? 0 : q >= len ? len - 1 : q;
                    s += k[j + rad] * in[i + (q - p) * stride];
                }
                out[i] = (float)s;
            }
}

int lm_synth_render(lm_tensor *img, const lm_tensor *labels, int modality, const lm_synth_args *a,
                    uint64_t stream)
{
    memset(img, 0, sizeof *img);
    if (!is_vol(labels, 0, LM_I32))
        return lm_error_set("a 3-D I32 label map is needed");
    int64_t n[3];
    vol_dims(labels, n);
    for (int i = 0; i < 3; i++)
        if (n[i] != a->shape[i])
            return lm_error_set("label map shape differs from the grid");
    int64_t N = n[0] * n[1] * n[2];
    const int32_t *L = labels->data;
    int32_t mx = 0;
    for (int64_t i = 0; i < N; i++) {
        if (L[i] < 0 || L[i] > LM_SYNTH_MAX_LABEL)
            return lm_error_set("label value %d outside 0..%d", (int)L[i], LM_SYNTH_MAX_LABEL);
        if (L[i] > mx)
            mx = L[i];
    }
    double *lut = malloc(((size_t)mx + 1) * sizeof *lut);
    float *tmp = NULL;
    lm_tensor bias = {0};
    int rc = -1;
    if (!lut) {
        lm_error_set("out of memory");
        goto done;
    }
    for (int32_t l = 0; l <= mx; l++)
        lut[l] = lm_synth_contrast(modality, a, stream, l);
    if (alloc_vol(img, modality == LM_SYNTH_CT ? "ct" : "mr", LM_F32, 0, n) < 0)
        goto done;
    float *x = img->data;
    for (int64_t i = 0; i < N; i++)
        x[i] = (float)lut[L[i]];
    double sig = a->blur / a->spacing;
    if (sig > 0.05) {
        int rad = (int)ceil(3 * sig);
        double *k = malloc((size_t)(2 * rad + 1) * sizeof *k), s = 0;
        tmp = malloc((size_t)N * sizeof *tmp);
        if (!k || !tmp) {
            free(k);
            lm_error_set("out of memory");
            goto done;
        }
        for (int j = -rad; j <= rad; j++)
            s += k[j + rad] = exp(-0.5 * (double)j * (double)j / (sig * sig));
        for (int j = 0; j <= 2 * rad; j++)
            k[j] /= s;
        blur_axis(tmp, x, n, 2, k, rad);
        blur_axis(x, tmp, n, 1, k, rad);
        blur_axis(tmp, x, n, 0, k, rad);
        memcpy(x, tmp, (size_t)N * sizeof *x);
        free(k);
    }
    if (modality == LM_SYNTH_MR && a->bias > 0) {
        if (lm_synth_bias(&bias, a, stream + 1) < 0)
            goto done;
        const float *b = bias.data;
        for (int64_t i = 0; i < N; i++)
            x[i] = (float)((double)x[i] * b[i]);
    }
    double sd = 1000.0 * a->noise;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        double v = x[i];
        if (sd > 0) {
            lm_rng r;
            lm_rng_init(&r, a->seed, stream + 2);
            r.ctr = (uint64_t)i; /* one block per voxel */
            v += sd * lm_rng_normal(&r);
        }
        if (modality == LM_SYNTH_CT)
            v = fmin(fmax(floor(v + 0.5), LM_SYNTH_CT_MIN), LM_SYNTH_CT_MAX);
        else if (v < 0)
            v = 0;
        x[i] = (float)v;
    }
    rc = 0;
done:
    if (rc < 0)
        lm_tensor_free(img);
    lm_tensor_free(&bias);
    free(lut);
    free(tmp);
    return rc;
}

/* ---- pairs ---- */

void lm_synth_pair_free(lm_synth_pair *p)
{
    if (!p)
        return;
    lm_tensor *all[] = {&p->moving,    &p->fixed,   &p->moving_seg, &p->fixed_seg, &p->source_seg,
                        &p->deform_mm, &p->flow_mm, &p->deform,     &p->flow};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        lm_tensor_free(all[i]);
    memset(p, 0, sizeof *p);
}

int lm_synth_pair_make(lm_synth_pair *p, const lm_tensor *fixed_src, const lm_tensor *moving_src,
                       const double affine[16], const lm_synth_args *a, uint64_t index)
{
    lm_tensor v = {0}, u = {0}, w = {0};
    int rc = -1;
    memset(p, 0, sizeof *p);
    if (lm_synth_args_check(a) < 0)
        return -1;
    if (!is_vol(fixed_src, 0, LM_I32) || !is_vol(moving_src, 0, LM_I32))
        return lm_error_set("label maps must be I32 [D,H,W]");
    for (int i = 0; i < 3; i++)
        if (fixed_src->shape[i] != a->shape[i] || moving_src->shape[i] != a->shape[i])
            return lm_error_set("label maps must have the grid's shape");
    if (lm_synth_velocity(&v, a, lm_synth_stream(index, LM_SYNTH_S_VELOCITY)) < 0 ||
        lm_synth_integrate(&u, &v, 1.0) < 0 || lm_synth_integrate(&w, &v, -1.0) < 0 ||
        lm_synth_flow_to_mm(&p->deform_mm, &u, affine) < 0 ||
        lm_synth_flow_to_mm(&p->flow_mm, &w, affine) < 0 ||
        lm_synth_flow_from_mm(&p->deform, &p->deform_mm, affine) < 0 ||
        lm_synth_flow_from_mm(&p->flow, &p->flow_mm, affine) < 0)
        goto done;
    if (lm_tensor_copy(&p->fixed_seg, fixed_src) < 0 ||
        lm_tensor_copy(&p->source_seg, moving_src) < 0 ||
        lm_synth_warp_nearest(&p->moving_seg, moving_src, &p->deform) < 0 ||
        lm_synth_render(&p->moving, &p->moving_seg, LM_SYNTH_MR, a,
                        lm_synth_stream(index, LM_SYNTH_S_MR)) < 0 ||
        lm_synth_render(&p->fixed, fixed_src, LM_SYNTH_CT, a,
                        lm_synth_stream(index, LM_SYNTH_S_CT)) < 0)
        goto done;
    {
        int64_t N = lm_tensor_numel(&p->fixed_seg);
        const float *d = p->deform_mm.data;
        double mx = 0;
        for (int64_t i = 0; i < N; i++) {
            double m = (double)d[i] * d[i] + (double)d[N + i] * d[N + i] +
                       (double)d[2 * N + i] * d[2 * N + i];
            if (m > mx)
                mx = m;
        }
        p->max_disp_mm = sqrt(mx);
    }
    rc = 0;
done:
    if (rc < 0)
        lm_synth_pair_free(p);
    lm_tensor_free(&v);
    lm_tensor_free(&u);
    lm_tensor_free(&w);
    return rc;
}

int lm_synth_flip_dh(lm_tensor *out, double out_affine[16], const lm_tensor *t,
                     const double affine[16])
{
    memset(out, 0, sizeof *out);
    if (t->ndim != 3 && t->ndim != 4)
        return lm_error_set("a [D,H,W] or [C,D,H,W] tensor is needed");
    if (lm_tensor_alloc(out, t->name, t->dtype, t->ndim, t->shape) < 0)
        return -1;
    int64_t n[3], C = t->ndim == 4 ? t->shape[0] : 1;
    vol_dims(t, n);
    size_t es = lm_dtype_size(t->dtype), row = (size_t)n[2] * es;
    const unsigned char *s = t->data;
    unsigned char *o = out->data;
    for (int64_t c = 0; c < C; c++)
        for (int64_t d = 0; d < n[0]; d++)
            for (int64_t h = 0; h < n[1]; h++)
                memcpy(o + (size_t)((c * n[0] + d) * n[1] + h) * row,
                       s + (size_t)((c * n[0] + (n[0] - 1 - d)) * n[1] + (n[1] - 1 - h)) * row,
                       row);
    double A[16];
    memcpy(A, affine, sizeof A);
    for (int ax = 0; ax < 2; ax++)
        for (int r = 0; r < 3; r++) {
            A[r * 4 + 3] += A[r * 4 + ax] * (double)(n[ax] - 1);
            A[r * 4 + ax] = -A[r * 4 + ax];
        }
    memcpy(out_affine, A, sizeof A);
    return 0;
}
