/* lm_metrics.h — the evaluation metrics of a registration (MODEL.md §11), as the peers compute
 * them: Dice per label (vxm), HD95 in mm (medpy's pooled 95th percentile, or MONAI's maximum
 * of the two directed 95th percentiles) on 6-connected borders with an exact Euclidean
 * distance transform that honours anisotropic spacing, and the Jacobian determinant of a
 * voxel-unit displacement field (np.gradient scheme as vxm, or SimpleITK's filter as
 * MambaMorph calls it) with the folding percentage and SDlogJ.
 *
 * Volumes are [D,H,W] row-major, W fastest; label maps are int32; spacing is (sD,sH,sW) in mm;
 * a displacement field is [3,D,H,W] in voxels, channel c along array axis c (MODEL.md §0).
 * Everything is deterministic: the same numbers for any thread count.
 * Not here: reading streams, choosing labels, ignore sets and output (tools/lm-metrics.c).
 */
#ifndef LM_METRICS_H
#define LM_METRICS_H

#include "io/lm_tensor.h"

#include <stdint.h>

typedef enum {
    LM_HD_MEDPY = 0, /* percentile_95(concat(d_AB, d_BA)) */
    LM_HD_MONAI = 1, /* max(percentile_95(d_AB), percentile_95(d_BA)) */
} lm_hd_mode;

typedef enum {
    LM_JAC_VXM = 0,     /* det(I + grad u), np.gradient differences; folding = det <= 0 */
    LM_JAC_SITK_MM = 1, /* SimpleITK DisplacementFieldJacobianDeterminant on the numpy array
                           [D,H,W,3] as MambaMorph passes it; folding = det < 0 */
} lm_jac_mode;

/* Counts and bounding box of one label in two maps A (warped/moving) and B (fixed). */
typedef struct {
    int32_t label;
    int64_t na, nb, nab;  /* |A|, |B|, |A and B| in voxels */
    int64_t lo[3], hi[3]; /* inclusive bounding box of A or B; lo > hi when both are empty */
} lm_label_stats;

/* *out (malloc'ed, sorted ascending) = the distinct values present in a or b, n voxels each. */
int lm_labels_union(int32_t **out, int *nout, const int32_t *a, const int32_t *b, int64_t n);

/* st[i] for labels[i], i < nlab (distinct values, any order), in one pass over both maps;
 * voxels holding other values are ignored. st is overwritten. 0 or -1 (lm_error). */
int lm_label_stats_compute(lm_label_stats *st, const int32_t *a, const int32_t *b,
                           const int64_t dims[3], const int32_t *labels, int nlab);

/* vxm's dice: 2|A and B| / max(|A|+|B|, DBL_EPSILON), a fraction in [0,1] (0 if both empty). */
double lm_dice(const lm_label_stats *s);

/* border = mask XOR binary_erosion(mask) with the 6-neighbour cross and everything outside the
 * volume taken as 0 (scipy's default border_value): the mask voxels that have a 6-neighbour
 * outside the mask or outside the volume. mask, border: [D,H,W] 0/1; border is overwritten. */
void lm_border6(uint8_t *border, const uint8_t *mask, const int64_t dims[3]);

/* d2 = squared Euclidean distance in mm^2 from every voxel to the nearest voxel with
 * feat != 0 (+inf everywhere when there is none): exact, one Felzenszwalb-Huttenlocher lower
 * envelope pass per axis, spacing per axis. d2, feat: [D,H,W]; d2 is overwritten.
 * scipy's distance_transform_edt(~feat, sampling=spacing) squared. 0 or -1 (out of memory). */
int lm_edt_sq(double *d2, const uint8_t *feat, const int64_t dims[3], const double spacing[3]);

/* numpy.percentile(x[0..n), q) with the default 'linear' method; q in [0,100], n >= 1.
 * x is reordered (selection, not a full sort). */
double lm_percentile(double *x, int64_t n, double q);

/* HD95 in mm of label s->label between A = a == label and B = b == label, on their borders,
 * over the bounding box in s (computed by lm_label_stats_compute, which makes it exact).
 * Returns 0 with *out set, 1 when A or B is empty (no distance: *out = NaN), -1 on error. */
int lm_hd95(double *out, const int32_t *a, const int32_t *b, const int64_t dims[3],
            const double spacing[3], const lm_label_stats *s, lm_hd_mode mode);

/* det = Jacobian determinant of x -> x + u(x) at every voxel. u: [3,D,H,W] voxels, F32 or F64.
 *   LM_JAC_VXM: vxm's jacobian_determinant: J = np.gradient(u + grid) (central differences
 *     (f[i+1]-f[i-1])/2 inside, f[1]-f[0] and f[n-1]-f[n-2] at the ends; u constant along an
 *     axis of length 1), computed in double exactly as numpy orders the operations.
 *   LM_JAC_SITK_MM: what sitk.DisplacementFieldJacobianDeterminant(GetImageFromArray(u
 *     transposed to [D,H,W,3], isVector=True)) returns, bit for bit: ITK axis i is array axis
 *     2-i while vector component j stays u_j, J[i][j] = 0.5 (u_j(x+e_i) - u_j(x-e_i)) with a
 *     zero-flux Neumann border (the neighbour outside is the voxel itself), J[i][i] += 1, and
 *     vnl_det's cofactor order, in the field's own precision (float for F32).
 * det: [D,H,W], overwritten. 0 or -1 (lm_error: dtype). */
int lm_jacobian_det(double *det, const void *u, lm_dtype dt, const int64_t dims[3],
                    lm_jac_mode mode);

typedef struct {
    int64_t n;       /* voxels */
    int64_t folded;  /* det <= 0 (vxm) or det < 0 (sitk-mm) */
    double pct;      /* 100 * folded / n */
    double sdlogj;   /* population std of log(clip(det, 1e-9, 1e9)), in double */
    double min, max; /* of det */
} lm_jac_stats;

/* Folding and SDlogJ over n determinants (from lm_jacobian_det with the same mode). */
void lm_jacobian_stats(lm_jac_stats *st, const double *det, int64_t n, lm_jac_mode mode);

#endif
