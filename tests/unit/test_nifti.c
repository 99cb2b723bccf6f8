/* test_nifti.c — NIfTI-1/2 reading against nibabel (tests/data/nibabel_ref.json, made by
 * tests/reference/make_nifti_ref.py) on generated and real files, write/read round trips with
 * reference headers, bad input, and lm_nifti_map / LM_NII_FILE_ORDER (the file's own order). */
#include "io/lm_error.h"
#include "io/lm_nifti.h"
#include "lm_test.h"
#include "lm_testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double jd(const cJSON *o, const char *k) { return lm_tu_jnum(cJSON_GetObjectItem(o, k)); }

static void check_mat(const char *what, const char *file, const double *got, const cJSON *want,
                      double tol)
{
    for (int i = 0; i < 16; i++) {
        double w = lm_tu_jnum(cJSON_GetArrayItem(want, i));
        if (!lm_test_close(got[i], w, tol, tol)) {
            lm_test_fail(__FILE__, __LINE__, "%s: %s[%d] = %.9g, nibabel %.9g", file, what, i,
                         got[i], w);
            return;
        }
    }
}

static void check_file(const char *key, const cJSON *ref)
{
    char path[1024];
    const char *sh = lm_test_shared();
    if (strncmp(key, "tests/", 6) == 0)
        snprintf(path, sizeof path, "%s/%s", lm_test_srcdir(), key);
    else if (sh)
        snprintf(path, sizeof path, "%s/%s", sh, key);
    else
        return;
    lm_tensor t;
    lm_nifti_geom g;
    if (lm_nifti_read(path, LM_NII_F32, &t, &g) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s: %s", key, lm_error());
        return;
    }
    const cJSON *shape = cJSON_GetObjectItem(ref, "shape");
    int nd = cJSON_GetArraySize(shape);
    int64_t want[4] = {1, 1, 1, 1};
    for (int i = 0; i < nd; i++)
        want[i] = cJSON_GetArrayItem(shape, i)->valueint;
    /* nibabel (i,j,k[,t]) -> ours [D,H,W] or [T,D,H,W] */
    int64_t D = t.shape[t.ndim - 3], H = t.shape[t.ndim - 2], W = t.shape[t.ndim - 1];
    int64_t C = t.ndim == 4 ? t.shape[0] : 1;
    LM_CHECK(D == want[0] && H == want[1] && W == want[2] && C == want[3] && t.ndim == (nd == 4 ? 4 : 3),
             "%s: shape", key);
    LM_CHECK(g.version == (int)jd(ref, "nifti_version"), "%s: version %d", key, g.version);
    LM_CHECK(g.datatype == (int)jd(ref, "datatype"), "%s: datatype", key);
    LM_CHECK(g.qform_code == (int)jd(ref, "qform_code") && g.sform_code == (int)jd(ref, "sform_code"),
             "%s: codes", key);
    check_mat("affine", key, g.affine, cJSON_GetObjectItem(ref, "affine"), 1e-6);
    check_mat("sform", key, g.sform, cJSON_GetObjectItem(ref, "sform"), 1e-6);
    check_mat("qform", key, g.qform, cJSON_GetObjectItem(ref, "qform"), 2e-6);
    const cJSON *z = cJSON_GetObjectItem(ref, "zooms");
    for (int i = 0; i < 3; i++)
        LM_CHECK_CLOSE(g.spacing[i], cJSON_GetArrayItem(z, i)->valuedouble, 1e-7, 1e-7);
    double mn = INFINITY, mx = -INFINITY, sum = 0;
    int64_t nz = 0, n = lm_tensor_numel(&t);
    const float *f = t.data;
    for (int64_t i = 0; i < n; i++) {
        mn = fmin(mn, f[i]);
        mx = fmax(mx, f[i]);
        sum += f[i];
        nz += f[i] != 0;
    }
    LM_CHECK_CLOSE(mn, jd(ref, "min"), 1e-6, 1e-7);
    LM_CHECK_CLOSE(mx, jd(ref, "max"), 1e-6, 1e-7);
    LM_CHECK_CLOSE(sum, jd(ref, "sum"), 1e-3, 1e-9);
    LM_CHECK(nz == (int64_t)jd(ref, "nonzero"), "%s: nonzero %lld", key, (long long)nz);
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(ref, "samples"))
    {
        const cJSON *ix = cJSON_GetObjectItem(s, "index");
        int64_t i = cJSON_GetArrayItem(ix, 0)->valueint, j = cJSON_GetArrayItem(ix, 1)->valueint,
                k = cJSON_GetArrayItem(ix, 2)->valueint,
                c = cJSON_GetArraySize(ix) > 3 ? cJSON_GetArrayItem(ix, 3)->valueint : 0;
        double v = f[((c * D + i) * H + j) * W + k];
        LM_CHECK_CLOSE(v, jd(s, "value"), 1e-6, 1e-7);
    }
    lm_tensor_free(&t);
}

static void t_nibabel_generated(void)
{
    cJSON *ref = lm_tu_json("tests/data/nibabel_ref.json");
    LM_CHECK(ref != NULL, "tests/data/nibabel_ref.json missing");
    const cJSON *f, *files = ref ? cJSON_GetObjectItem(ref, "files") : NULL;
    cJSON_ArrayForEach(f, files)
        if (strncmp(f->string, "tests/", 6) == 0)
            check_file(f->string, f);
    cJSON_Delete(ref);
}

static void t_nibabel_real(void)
{
    if (!lm_test_shared()) {
        lm_test_skip("../shared is absent");
        return;
    }
    cJSON *ref = lm_tu_json("tests/data/nibabel_ref.json");
    const cJSON *f, *files = ref ? cJSON_GetObjectItem(ref, "files") : NULL;
    int n = 0;
    cJSON_ArrayForEach(f, files)
        if (strncmp(f->string, "tests/", 6) != 0) {
            check_file(f->string, f);
            n++;
        }
    LM_CHECK(n >= 9, "only %d real files in the fixture", n);
    cJSON_Delete(ref);
}

static void t_labels(void)
{
    char path[1024];
    lm_tensor t;
    lm_nifti_geom g;
    const char *sh = lm_test_shared();
    snprintf(path, sizeof path, "%s/tests/data/nifti2_small.nii.gz", lm_test_srcdir());
    LM_CHECK(lm_nifti_read(path, LM_NII_LABELS, &t, &g) < 0 && strstr(lm_error(), "non-integer"),
             "fractional labels: %s", lm_error());
    if (!sh) {
        lm_test_skip("../shared is absent");
        return;
    }
    /* 4-D float64 one-hot label maps of DeepReg: channel-first integer maps. */
    snprintf(path, sizeof path, "%s/data/deepreg-prostate/test/moving_labels/case000025.nii.gz", sh);
    LM_CHECK(lm_nifti_read(path, LM_NII_LABELS, &t, &g) == 0, "%s", lm_error());
    LM_CHECK(t.dtype == LM_I32 && t.ndim == 4 && t.shape[0] == 3, "4-D label map");
    int bad = 0;
    for (int64_t i = 0; i < lm_tensor_numel(&t); i++)
        bad += ((int32_t *)t.data)[i] != 0 && ((int32_t *)t.data)[i] != 1;
    LM_CHECK(bad == 0, "non-binary one-hot values");
    lm_tensor_free(&t);
    snprintf(path, sizeof path, "%s/data/totalseg-abdomen/example_seg.nii.gz", sh);
    LM_CHECK(lm_nifti_read(path, LM_NII_LABELS, &t, &g) == 0, "%s", lm_error());
    int32_t mx = 0;
    for (int64_t i = 0; i < lm_tensor_numel(&t); i++)
        mx = ((int32_t *)t.data)[i] > mx ? ((int32_t *)t.data)[i] : mx;
    LM_CHECK(mx > 40, "max label %d", mx);
    lm_tensor_free(&t);
}

static void fill(lm_tensor *t)
{
    for (int64_t i = 0; i < lm_tensor_numel(t); i++) {
        double v = sin((double)i * 0.37) * 100.0;
        switch (t->dtype) {
        case LM_F32: ((float *)t->data)[i] = (float)v; break;
        case LM_I16: ((int16_t *)t->data)[i] = (int16_t)v; break;
        case LM_U8: ((uint8_t *)t->data)[i] = (uint8_t)(i % 7); break;
        case LM_I32: ((int32_t *)t->data)[i] = (int32_t)(i % 11) - 3; break;
        default: break;
        }
    }
}

static void t_roundtrip(void)
{
    const double aff[16] = {1.2990381, -0.9659258, 0.3235238, -10.25, 0.75, 1.6730326, -0.5603597,
                            20.5, 0, 0.5176381, 2.4148146, -30.75, 0, 0, 0, 1};
    static const struct {
        lm_dtype dt;
        int nd;
        const char *ext;
        int flags;
    } cases[] = {
        {LM_F32, 3, ".nii.gz", 0}, {LM_F32, 3, ".nii", 0}, {LM_I16, 3, ".nii.gz", 0},
        {LM_U8, 4, ".nii", 0},     {LM_I32, 3, ".nii", 0}, {LM_F32, 4, ".nii.gz", LM_NII_VECTOR},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t shape[4] = {3, 7, 5, 2};
        const int64_t *sh = cases[c].nd == 4 ? shape : shape + 1;
        lm_tensor t, back;
        lm_nifti_geom g, gb;
        lm_nifti_geom_from_affine(&g, aff, sh + cases[c].nd - 3);
        lm_tensor_alloc(&t, "x", cases[c].dt, cases[c].nd, sh);
        fill(&t);
        char path[1024];
        snprintf(path, sizeof path, "%s/rt%zu%s", lm_test_tmpdir(), c, cases[c].ext);
        LM_CHECK(lm_nifti_write(path, &t, &g, cases[c].flags) == 0, "write %zu: %s", c, lm_error());
        int mode = lm_dtype_is_float(cases[c].dt) ? LM_NII_F32 : LM_NII_LABELS;
        LM_CHECK(lm_nifti_read(path, mode, &back, &gb) == 0, "read %zu: %s", c, lm_error());
        LM_CHECK(back.ndim == t.ndim && !memcmp(back.shape, t.shape, sizeof t.shape),
                 "case %zu shape", c);
        int diff = 0;
        for (int64_t i = 0; i < lm_tensor_numel(&t) && back.data; i++)
            diff += lm_tensor_get(&t, i) != lm_tensor_get(&back, i);
        LM_CHECK(diff == 0, "case %zu: %d voxels differ", c, diff);
        for (int i = 0; i < 16; i++)
            LM_CHECK_CLOSE(gb.affine[i], aff[i], 1e-5, 1e-6);
        LM_CHECK(gb.sform_code == g.sform_code && gb.qform_code == g.qform_code, "codes");
        LM_CHECK(gb.xyz_units == 2, "units mm");
        if (cases[c].flags & LM_NII_VECTOR)
            LM_CHECK(gb.intent_code == 1006, "DISPVECT intent");
        lm_tensor_free(&t);
        lm_tensor_free(&back);
    }
}

/* Writing with a real file's header reproduces its geometry. */
static void t_reference_header(void)
{
    const char *sh = lm_test_shared();
    if (!sh) {
        lm_test_skip("../shared is absent");
        return;
    }
    const char *files[] = {"data/totalseg-abdomen/example_mr_sm.nii.gz",
                           "data/synthseg-label-maps/training_seg_01.nii.gz"};
    for (int f = 0; f < 2; f++) {
        char path[1024], out[1024];
        lm_nifti_geom g, gb;
        snprintf(path, sizeof path, "%s/%s", sh, files[f]);
        LM_CHECK(lm_nifti_read_geom(path, &g) == 0, "%s", lm_error());
        int64_t shape[3] = {g.dims[0], g.dims[1], g.dims[2]};
        lm_tensor t, back;
        lm_tensor_alloc(&t, "x", LM_F32, 3, shape);
        fill(&t);
        snprintf(out, sizeof out, "%s/ref%d%s", lm_test_tmpdir(), f, f ? ".nii" : ".nii.gz");
        LM_CHECK(lm_nifti_write(out, &t, &g, 0) == 0, "%s", lm_error());
        LM_CHECK(lm_nifti_read(out, LM_NII_F32, &back, &gb) == 0, "%s", lm_error());
        for (int i = 0; i < 16; i++) {
            LM_CHECK_CLOSE(gb.affine[i], g.affine[i], 1e-9, 1e-9);
            if (g.qform_code > 0) /* nifticlib stores no quaternion under code 0 */
                LM_CHECK_CLOSE(gb.qform[i], g.qform[i], 1e-6, 1e-6);
        }
        for (int i = 0; i < 3; i++)
            LM_CHECK_CLOSE(gb.spacing[i], g.spacing[i], 1e-9, 1e-9);
        LM_CHECK(gb.qform_code == g.qform_code && gb.sform_code == g.sform_code, "codes");
        lm_tensor_free(&t);
        lm_tensor_free(&back);
    }
}

/* nifticlib's loader turns NaN into 0; ours must not (tools refuse non-finite voxels). */
static void t_nan_kept(void)
{
    int64_t shape[3] = {3, 2, 2};
    lm_tensor t, back;
    lm_tensor_alloc(&t, "x", LM_F32, 3, shape);
    ((float *)t.data)[5] = NAN;
    ((float *)t.data)[7] = -INFINITY;
    char path[1024];
    for (int gz = 0; gz < 2; gz++) {
        snprintf(path, sizeof path, "%s/nan%s", lm_test_tmpdir(), gz ? ".nii.gz" : ".nii");
        LM_CHECK(lm_nifti_write(path, &t, NULL, 0) == 0, "%s", lm_error());
        LM_CHECK(lm_nifti_read(path, LM_NII_F32, &back, NULL) == 0, "%s", lm_error());
        LM_CHECK(isnan(((float *)back.data)[5]) && isinf(((float *)back.data)[7]),
                 "non-finite voxels lost (gz=%d)", gz);
        lm_tensor_free(&back);
    }
    lm_tensor_free(&t);
}

static void t_bad_input(void)
{
    char path[1024];
    lm_tensor t;
    LM_CHECK(lm_nifti_read("/nonexistent/x.nii", LM_NII_F32, &t, NULL) < 0 &&
                 strstr(lm_error(), "No such file"),
             "missing: %s", lm_error());
    snprintf(path, sizeof path, "%s/garbage.nii", lm_test_tmpdir());
    lm_tu_write(path, "this is not nifti at all", 24);
    LM_CHECK(lm_nifti_read(path, LM_NII_F32, &t, NULL) < 0, "garbage accepted");
    /* A .nii.gz cut in the middle of its data. */
    char src[1024];
    size_t len;
    snprintf(src, sizeof src, "%s/tests/data/nifti2_small.nii.gz", lm_test_srcdir());
    char *buf = lm_tu_slurp(src, &len);
    snprintf(path, sizeof path, "%s/cut.nii.gz", lm_test_tmpdir());
    lm_tu_write(path, buf, len / 2);
    LM_CHECK(lm_nifti_read(path, LM_NII_F32, &t, NULL) < 0, "truncated .nii.gz accepted");
    free(buf);
    snprintf(src, sizeof src, "%s/tests/data/nifti1_4d.nii", lm_test_srcdir());
    buf = lm_tu_slurp(src, &len);
    snprintf(path, sizeof path, "%s/cut.nii", lm_test_tmpdir());
    lm_tu_write(path, buf, len - 10);
    LM_CHECK(lm_nifti_read(path, LM_NII_F32, &t, NULL) < 0, "truncated .nii accepted");
    free(buf);
    /* Failed writes leave nothing. */
    int64_t shape[3] = {2, 2, 2};
    lm_tensor_alloc(&t, "x", LM_F32, 3, shape);
    LM_CHECK(lm_nifti_write("/nonexistent-dir/x.nii.gz", &t, NULL, 0) < 0, "write to missing dir");
    snprintf(path, sizeof path, "%s/x.mha", lm_test_tmpdir());
    LM_CHECK(lm_nifti_write(path, &t, NULL, 0) < 0 && access(path, F_OK) != 0, "bad extension");
    lm_tensor_free(&t);
}

/* lm_nifti_map: lm_nifti_read's values untransposed (file order: i fastest), a mapping of the
 * file where it is stored as asked for, a converted copy otherwise; and LM_NII_FILE_ORDER
 * writes such data back into the same bytes. */
static void t_map_file_order(void)
{
    static const struct {
        lm_dtype dt;
        int nd, gz, mode, mapped;
    } cases[] = {
        {LM_F32, 3, 0, LM_NII_F32, 1},    {LM_F32, 4, 0, LM_NII_F32, 1},
        {LM_F32, 3, 1, LM_NII_F32, 0},    {LM_I32, 3, 0, LM_NII_LABELS, 1},
        {LM_I16, 3, 0, LM_NII_LABELS, 0}, {LM_U8, 4, 1, LM_NII_LABELS, 0},
        {LM_I16, 3, 0, LM_NII_F32, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t shape[4] = {3, 7, 5, 6};
        const int nd = cases[c].nd;
        const int64_t *sh = nd == 4 ? shape : shape + 1;
        const int64_t C = nd == 4 ? 3 : 1, D = 7, H = 5, W = 6;
        lm_tensor t, back;
        lm_nifti_mapped m;
        lm_tensor_alloc(&t, "x", cases[c].dt, nd, sh);
        fill(&t);
        char path[1024], again[1024];
        const char *ext = cases[c].gz ? ".nii.gz" : ".nii";
        snprintf(path, sizeof path, "%s/map%zu%s", lm_test_tmpdir(), c, ext);
        snprintf(again, sizeof again, "%s/map%zu_again%s", lm_test_tmpdir(), c, ext);
        LM_CHECK(lm_nifti_write(path, &t, NULL, 0) == 0, "write %zu: %s", c, lm_error());
        LM_CHECK(lm_nifti_read(path, cases[c].mode, &back, NULL) == 0, "read: %s", lm_error());
        LM_CHECK(lm_nifti_map(path, cases[c].mode, &m, NULL) == 0, "map %zu: %s", c, lm_error());
        LM_CHECK(m.t.ndim == nd && !memcmp(m.t.shape, t.shape, sizeof t.shape) &&
                     m.t.dtype == back.dtype,
                 "case %zu: shape or dtype", c);
        LM_CHECK((m.map != NULL) == cases[c].mapped, "case %zu: mapped %d", c, m.map != NULL);
        int64_t bad = 0;
        for (int64_t ch = 0; ch < C; ch++)
            for (int64_t i = 0; i < D; i++)
                for (int64_t j = 0; j < H; j++)
                    for (int64_t k = 0; k < W; k++) {
                        const int64_t f = i + D * (j + H * (k + W * ch));
                        const int64_t o = ((ch * D + i) * H + j) * W + k;
                        bad += memcmp((const char *)m.t.data + 4 * f, (const char *)back.data + 4 * o,
                                      4) != 0;
                    }
        LM_CHECK(bad == 0, "case %zu: %lld voxels not in file order", c, (long long)bad);
        if (cases[c].dt == back.dtype) { /* the same bytes back */
            LM_CHECK(lm_nifti_write(again, &m.t, NULL, LM_NII_FILE_ORDER) == 0, "%s", lm_error());
            size_t la, lb;
            char *a = lm_tu_slurp(path, &la), *b = lm_tu_slurp(again, &lb);
            LM_CHECK(a && b && la == lb && !memcmp(a, b, la), "case %zu: rewritten file differs", c);
            free(a);
            free(b);
        }
        lm_nifti_unmap(&m);
        lm_nifti_unmap(&m); /* harmless twice */
        lm_tensor_free(&t);
        lm_tensor_free(&back);
    }
    /* a truncated .nii is refused, as by lm_nifti_read */
    char src[1024], path[1024];
    size_t len;
    snprintf(src, sizeof src, "%s/tests/data/nifti1_4d.nii", lm_test_srcdir());
    char *buf = lm_tu_slurp(src, &len);
    snprintf(path, sizeof path, "%s/mapcut.nii", lm_test_tmpdir());
    lm_tu_write(path, buf, len - 10);
    lm_nifti_mapped m;
    LM_CHECK(lm_nifti_map(path, LM_NII_F32, &m, NULL) < 0 && strstr(lm_error(), "truncated"),
             "truncated .nii mapped: %s", lm_error());
    lm_nifti_unmap(&m);
    free(buf);
}

static const lm_test_case cases[] = {
    {"nibabel_generated", t_nibabel_generated},
    {"nibabel_real_files", t_nibabel_real},
    {"labels", t_labels},
    {"roundtrip", t_roundtrip},
    {"reference_header", t_reference_header},
    {"nan_kept", t_nan_kept},
    {"bad_input", t_bad_input},
    {"map_file_order", t_map_file_order},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
