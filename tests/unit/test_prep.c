/* test_prep.c — preprocessing: percentile = numpy's, windows, resampling identities and
 * orientation flips, crop/pad and half grids, label maps, and lm-preprocess on the real
 * RAS CT / LPS MR pair against the nibabel+SciPy reference (tests/reference/make_prep_ref.py). */
#include "io/lm_error.h"
#include "io/lm_nifti.h"
#include "io/lm_stream.h"
#include "lm_test.h"
#include "lm_testutil.h"
#include "prep/lm_prep.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void t_percentile(void)
{
    float v[10] = {5, 1, 9, 3, 7, 2, 8, 4, 6, 0};
    /* numpy.percentile([0..9], p) = 9p/100 */
    LM_CHECK_CLOSE(lm_percentile_f32(v, 10, 95), 8.55, 1e-6, 0);
    LM_CHECK_CLOSE(lm_percentile_f32(v, 10, 50), 4.5, 1e-9, 0);
    LM_CHECK_CLOSE(lm_percentile_f32(v, 10, 100), 9, 0, 0);
    LM_CHECK_CLOSE(lm_percentile_f32(v, 10, 0), 0, 0, 0);
    LM_CHECK(v[0] == 5 && v[9] == 0, "input modified");
    float w[7] = {2, 2, 2, 1, 1, 3, 3};
    LM_CHECK_CLOSE(lm_percentile_f32(w, 7, 40), 2, 1e-9, 0);
}

static void t_normalize(void)
{
    int64_t d[3] = {1, 1, 5};
    float ct[5] = {-1000, -180, 110, 400, 2000};
    double win[2] = {-180, 400};
    LM_CHECK(lm_normalize(ct, d, LM_MOD_CT, win, 95) == 0, "%s", lm_error());
    LM_CHECK(ct[0] == 0 && ct[1] == 0 && ct[2] == 0.5f && ct[3] == 1 && ct[4] == 1, "ct window");
    float nan[5] = {0, 1, NAN, 2, 3};
    LM_CHECK(lm_normalize(nan, d, LM_MOD_RAW, win, 95) < 0 && strstr(lm_error(), "non-finite"),
             "%s", lm_error());
    float flat[5] = {7, 7, 7, 7, 7};
    LM_CHECK(lm_normalize(flat, d, LM_MOD_MR, win, 95) < 0 && strstr(lm_error(), "constant"),
             "%s", lm_error());
}

static void fill(float *v, const int64_t n[3])
{
    for (int64_t i = 0; i < n[0] * n[1] * n[2]; i++)
        v[i] = (float)sin(0.1 * (double)i) + 0.01f * (float)(i % 17);
}

/* The same voxels stored with flipped axes (LPS vs RAS) resample back exactly. */
static void t_flip_and_identity(void)
{
    int64_t n[3] = {7, 6, 5};
    lm_grid a = {{7, 6, 5}, {2, 0, 0, -10, 0, 3, 0, 20, 0, 0, 1.5, 5, 0, 0, 0, 1}}, b = a;
    float src[210], flip[210], out[210];
    fill(src, n);
    /* b: axes 0 and 1 reversed: voxel (i,j,k) of b is voxel (6-i, 5-j, k) of a */
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < 6; j++)
            for (int k = 0; k < 5; k++)
                flip[(i * 6 + j) * 5 + k] = src[((6 - i) * 6 + (5 - j)) * 5 + k];
    b.affine[0] = -2;
    b.affine[3] = -10 + 2 * 6;
    b.affine[5] = -3;
    b.affine[7] = 20 + 3 * 5;
    for (int lin = 0; lin < 2; lin++) {
        LM_CHECK(lm_resample_f32(out, &a, flip, &b, lin) == 0, "%s", lm_error());
        LM_CHECK(!memcmp(out, src, sizeof src), "flipped grid did not land on the original "
                                                "(linear=%d)", lin);
        LM_CHECK(lm_resample_f32(out, &a, src, &a, lin) == 0 && !memcmp(out, src, sizeof src),
                 "identity (linear=%d)", lin);
    }
    /* One voxel shift along W: values move, zeros enter. */
    lm_grid c = a;
    c.affine[11] += 1.5;
    lm_resample_f32(out, &a, src, &c, 1);
    LM_CHECK(out[0] == 0 && out[1] == src[0] && out[6] == src[5], "shift by one voxel");
    /* Half-voxel shift: the mean of neighbours. */
    c = a;
    c.affine[11] += 0.75;
    lm_resample_f32(out, &a, src, &c, 1);
    LM_CHECK_CLOSE(out[2], 0.5 * (src[1] + src[2]), 1e-6, 0);
    LM_CHECK(lm_grid_same(&a, &a, 1e-6) && !lm_grid_same(&a, &c, 1e-6), "grid_same");
}

static void t_grids(void)
{
    lm_grid f = {{122, 101, 30}, {3, 0, 0, -177.9, 0, 3, 0, 11.3, 0, 0, 3, 94.3, 0, 0, 0, 1}}, g;
    int64_t want[3] = {128, 112, 32};
    lm_grid_crop_pad(&g, &f, want);
    /* offsets floor((N-S)/2) = -3, -6, -1 voxels */
    LM_CHECK_CLOSE(g.affine[3], -177.9 - 9, 1e-9, 0);
    LM_CHECK_CLOSE(g.affine[7], 11.3 - 18, 1e-9, 0);
    LM_CHECK_CLOSE(g.affine[11], 94.3 - 3, 1e-9, 0);
    int64_t same[3] = {122, 101, 30};
    lm_grid_reshape(&g, &f, same, NULL);
    LM_CHECK(lm_grid_same(&g, &f, 1e-9), "reshape to the same grid is the identity");
    int64_t half[3] = {61, 50, 15};
    double sp[3] = {6, 6, 6}, out[3];
    lm_grid_reshape(&g, &f, half, sp);
    lm_grid_spacing(&g, out);
    LM_CHECK(out[0] == 6 && out[2] == 6, "spacing");
    /* the centre stays: centre of f = A*(N-1)/2 */
    LM_CHECK_CLOSE(g.affine[3] + 6 * 30, -177.9 + 3 * 60.5, 1e-9, 0);
    lm_grid h;
    lm_grid_half(&h, &f);
    LM_CHECK(h.affine[0] == 6 && fabs(h.affine[3] - (-177.9 + 1.5)) < 1e-12, "half grid");
    float big[8] = {1, 2, 3, 4, 5, 6, 7, 8}, small[1];
    int64_t d2[3] = {2, 2, 2};
    lm_avgpool2(small, big, d2);
    LM_CHECK(small[0] == 4.5f, "avgpool");
}

static void t_labels(void)
{
    int32_t ch[2 * 4] = {1, 1, 0, 0, 0, 1, 1, 0}, one[4];
    lm_labels_from_channels(one, ch, 2, 4);
    LM_CHECK(one[0] == 1 && one[1] == 2 && one[2] == 2 && one[3] == 0, "channels -> labels");
    int32_t v[6] = {0, 5, 7, 5, 9, 7};
    long keep[2] = {7, 5}, ids[8];
    lm_labels_remap(v, 6, keep, 2);
    LM_CHECK(v[1] == 2 && v[2] == 1 && v[4] == 0, "remap");
    int32_t w[5] = {0, 40, 3, 40, -2};
    LM_CHECK(lm_labels_present(w, 5, ids, 8) == 3 && ids[0] == -2 && ids[2] == 40, "present");
}

/* lm-preprocess on the real pair, against the reference. */
static void t_real_pair(void)
{
    const char *sh = lm_test_shared(), *bin = getenv("LM_BUILD");
    if (!sh || !bin) {
        lm_test_skip(!sh ? "../shared is absent" : "LM_BUILD not set (run through make check)");
        return;
    }
    cJSON *ref = lm_tu_json("tests/data/prep_ref.json");
    LM_CHECK(ref != NULL, "tests/data/prep_ref.json missing");
    if (!ref)
        return;
    char cmd[4096], out[1024];
    snprintf(out, sizeof out, "%s/pair.lmt", lm_test_tmpdir());
    snprintf(cmd, sizeof cmd,
             "%s/bin/lm-preprocess -q --align-centres --pad -o %s "
             "%s/data/totalseg-abdomen/example_mr_sm.nii.gz "
             "%s/data/totalseg-abdomen/example_ct_sm.nii.gz "
             "%s/data/totalseg-abdomen/example_seg_mr.nii.gz "
             "%s/data/totalseg-abdomen/example_seg.nii.gz",
             bin, out, sh, sh, sh, sh);
    LM_CHECK(system(cmd) == 0, "lm-preprocess failed: %s", cmd);
    lm_reader *r = lm_reader_open(out);
    lm_record rec;
    LM_CHECK(r && lm_reader_next(r, &rec) == 1, "read: %s", lm_error());
    lm_reader_close(r);
    if (!r)
        return;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(ref, "tensors"))
    {
        const lm_tensor *x = lm_record_cget(&rec, t->string);
        LM_CHECK(x && x->ndim == 5 && x->shape[2] == 128 && x->shape[3] == 112 && x->shape[4] == 32,
                 "%s shape", t->string);
        if (!x)
            continue;
        double sum = 0;
        int64_t nz = 0, bad = 0;
        for (int64_t i = 0; i < lm_tensor_numel(x); i++) {
            double v = lm_tensor_get(x, i);
            sum += v;
            nz += v != 0;
        }
        int labels = strstr(t->string, "seg") != NULL;
        LM_CHECK_CLOSE(sum, lm_tu_jnum(cJSON_GetObjectItem(t, "sum")), labels ? 0 : 1e-2,
                       labels ? 0 : 1e-6);
        LM_CHECK(labels ? nz == (int64_t)lm_tu_jnum(cJSON_GetObjectItem(t, "nonzero")) : 1,
                 "%s nonzero %lld", t->string, (long long)nz);
        const cJSON *s;
        double maxerr = 0;
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(t, "samples"))
        {
            int64_t i = (int64_t)cJSON_GetArrayItem(s, 0)->valuedouble;
            double want = cJSON_GetArrayItem(s, 1)->valuedouble, got = lm_tensor_get(x, i);
            maxerr = fmax(maxerr, fabs(got - want));
            bad += labels ? got != want : fabs(got - want) > 1e-5;
        }
        LM_CHECK(bad == 0, "%s: %lld samples differ from SciPy (max error %g)", t->string,
                 (long long)bad, maxerr);
    }
    const char *aff = lm_record_meta_get(&rec, "affine");
    LM_CHECK(aff && strstr(aff, "[3,0,0,-186.95"), "affine metadata %s", aff ? aff : "(none)");
    lm_record_free(&rec);
    cJSON_Delete(ref);
}

static const lm_test_case cases[] = {
    {"percentile", t_percentile}, {"normalize", t_normalize},
    {"flip_and_identity", t_flip_and_identity}, {"grids", t_grids},
    {"labels", t_labels}, {"real_pair_vs_scipy", t_real_pair},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
