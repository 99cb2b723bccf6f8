/* test_warp_ref.c — lm-warp against SciPy map_coordinates (tests/reference/make_warp_ref.py):
 * a random smooth field on a real MR crop and its labels (linear to 1e-5, nearest identical),
 * the real 41-label CT map under an analytic field, and the ITK/ANTs field export round trip. */
#include "io/lm_error.h"
#include "io/lm_nifti.h"
#include "lm_kernels.h"
#include "lm_test.h"
#include "lm_testutil.h"
#include "prep/lm_prep.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char cmd[8192];

static int read_nii(const char *dir, const char *name, int labels, lm_tensor *t)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (lm_nifti_read(p, labels ? LM_NII_LABELS : LM_NII_F32, t, NULL) < 0) {
        lm_test_fail(__FILE__, __LINE__, "%s: %s", p, lm_error());
        return -1;
    }
    return 0;
}

static void compare(const lm_tensor *got, const lm_tensor *want, double tol, const char *what)
{
    LM_CHECK(lm_tensor_numel(got) == lm_tensor_numel(want), "%s: sizes", what);
    int64_t bad = 0;
    double maxerr = 0;
    for (int64_t i = 0; i < lm_tensor_numel(got) && i < lm_tensor_numel(want); i++) {
        double e = fabs(lm_tensor_get(got, i) - lm_tensor_get(want, i));
        maxerr = fmax(maxerr, e);
        bad += e > tol;
    }
    LM_CHECK(bad == 0, "%s: %lld voxels differ from SciPy (max error %g)", what, (long long)bad,
             maxerr);
}

static void t_case_a(void)
{
    const char *bin = getenv("LM_BUILD"), *tmp = lm_test_tmpdir();
    char data[1024];
    snprintf(data, sizeof data, "%s/tests/data", lm_test_srcdir());
    if (!bin) {
        lm_test_skip("LM_BUILD not set (run through make check)");
        return;
    }
    snprintf(cmd, sizeof cmd,
             "%s/bin/lm-warp -q --flow %s/warp_a_flow.nii.gz --seg %s/warp_a_seg.nii.gz "
             "--export-field %s/field.nii.gz -o %s/out.nii.gz %s/warp_a_moving.nii.gz",
             bin, data, data, tmp, tmp, data);
    LM_CHECK(system(cmd) == 0, "%s", cmd);
    lm_tensor lin, near, rl, rn;
    if (read_nii(tmp, "out.nii.gz", 0, &lin) || read_nii(tmp, "out_seg.nii.gz", 1, &near) ||
        read_nii(data, "warp_a_linear.nii.gz", 0, &rl) ||
        read_nii(data, "warp_a_nearest.nii.gz", 1, &rn))
        return;
    compare(&lin, &rl, 1e-5, "trilinear");
    compare(&near, &rn, 0, "nearest");
    /* The exported ITK/ANTs field (mm, LPS, DISPVECT) warps the same way. */
    snprintf(cmd, sizeof cmd,
             "%s/bin/lm-warp -q --flow %s/field.nii.gz -o %s/again.nii.gz %s/warp_a_moving.nii.gz",
             bin, tmp, tmp, data);
    LM_CHECK(system(cmd) == 0, "%s", cmd);
    lm_tensor again;
    if (read_nii(tmp, "again.nii.gz", 0, &again) == 0) {
        compare(&again, &rl, 1e-5, "trilinear via the exported field");
        lm_tensor_free(&again);
    }
    /* The same voxels 10 mm away are not on the field's grid: refused. */
    const double shifted[16] = {1, 0, 0, 10, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    lm_nifti_geom g;
    lm_nifti_geom_from_affine(&g, shifted, rl.shape);
    char moved[1200];
    snprintf(moved, sizeof moved, "%s/moved.nii.gz", tmp);
    LM_CHECK(lm_nifti_write(moved, &rl, &g, 0) == 0, "%s", lm_error());
    snprintf(cmd, sizeof cmd, "%s/bin/lm-warp -q --flow %s/warp_a_flow.nii.gz -o %s/no.nii.gz %s "
             "2>/dev/null", bin, data, tmp, moved);
    int st = system(cmd);
    LM_CHECK(st != 0, "an image on another world grid was accepted");
    lm_tensor_free(&lin);
    lm_tensor_free(&near);
    lm_tensor_free(&rl);
    lm_tensor_free(&rn);
}

static void t_case_b(void)
{
    const char *sh = lm_test_shared();
    if (!sh) {
        lm_test_skip("../shared is absent");
        return;
    }
    char p[1024], data[1024];
    snprintf(p, sizeof p, "%s/data/totalseg-abdomen", sh);
    snprintf(data, sizeof data, "%s/tests/data", lm_test_srcdir());
    lm_tensor seg, ref;
    if (read_nii(p, "example_seg.nii.gz", 1, &seg) || read_nii(data, "warp_b_nearest.nii.gz", 1, &ref))
        return;
    int64_t D = seg.shape[0], H = seg.shape[1], W = seg.shape[2], n = D * H * W;
    float *flow = malloc((size_t)(3 * n) * sizeof *flow);
    int32_t *out = malloc((size_t)n * sizeof *out);
    const double A[3] = {2.4731, 1.9873, 1.5127}, phi[3] = {0.3, 1.1, 2.0},
                 k[3][3] = {{1, 2, 1}, {2, 1, 1}, {1, 1, 2}}, N[3] = {(double)D, (double)H, (double)W};
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < D; i++)
            for (int64_t j = 0; j < H; j++)
                for (int64_t l = 0; l < W; l++) {
                    double arg = (double)i * k[c][0] / N[0] + (double)j * k[c][1] / N[1] +
                                 (double)l * k[c][2] / N[2];
                    flow[c * n + (i * H + j) * W + l] =
                        (float)(A[c] * sin(2 * 3.14159265358979323846 * arg + phi[c]));
                }
    lm_backend *be = lm_backend_cpu();
    lm_warp_args a = {1, (int)D, (int)H, (int)W, LM_PAD_ZEROS};
    LM_CHECK(be->warp_nearest(be, out, seg.data, flow, LM_I32, &a) == 0, "%s", lm_error());
    lm_tensor got;
    lm_tensor_wrap(&got, "x", LM_I32, 3, seg.shape, out);
    compare(&got, &ref, 0, "41-label CT map, nearest");
    lm_tensor_free(&got);
    free(out);
    free(flow);
    lm_tensor_free(&seg);
    lm_tensor_free(&ref);
}

static void t_itk_convention(void)
{
    /* RAS grid, 2 mm: one voxel along D (= +x, Right) is +2 mm in RAS, -2 mm in LPS. */
    const double aff[16] = {2, 0, 0, 5, 0, 2, 0, 6, 0, 0, 3, 7, 0, 0, 0, 1};
    float flow[6] = {1, 0, 0, 1, 0.5f, -1}, mm[6], back[6];
    lm_field_vox_to_lps_mm(mm, flow, 2, aff);
    LM_CHECK(mm[0] == -2 && mm[2] == 0 && mm[4] == 1.5f && mm[5] == -3, "vox->LPS mm: %g %g %g %g",
             mm[0], mm[2], mm[4], mm[5]);
    LM_CHECK(lm_field_lps_mm_to_vox(back, mm, 2, aff) == 0, "inverse");
    for (int i = 0; i < 6; i++)
        LM_CHECK_CLOSE(back[i], flow[i], 1e-7, 0);
    /* An oblique LPS grid round-trips too. */
    const double obl[16] = {-1.5, 0.2, 0, 10, -0.1, -2, 0.3, 20, 0, 0.4, 2.5, 30, 0, 0, 0, 1};
    lm_field_vox_to_lps_mm(mm, flow, 2, obl);
    lm_field_lps_mm_to_vox(back, mm, 2, obl);
    for (int i = 0; i < 6; i++)
        LM_CHECK_CLOSE(back[i], flow[i], 1e-6, 1e-6);
}

static const lm_test_case cases[] = {
    {"scipy_random_field_mr_and_labels", t_case_a},
    {"scipy_real_label_map_analytic_field", t_case_b},
    {"itk_field_convention", t_itk_convention},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
