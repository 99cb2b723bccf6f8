/* lm_prep.h — preprocessing of NIfTI volumes for the network: intensity windows and min-max
 * normalisation per modality, world-space resampling onto a target grid, label remapping,
 * grid definitions (fixed grid, --like, --shape/--spacing, crop/pad) and 2x2x2 average pooling.
 *
 * Grids are (shape [D,H,W], voxel->world affine) pairs in the axis convention of lm_nifti.h.
 * Resampling maps each target voxel p through world space to the source voxel
 * q = A_src^-1 * A_dst * p and samples there: trilinear with zero outside (each of the 8
 * corners outside [0,N-1] contributes 0, as grid_sample(padding_mode='zeros',
 * align_corners=True) and SciPy map_coordinates(order=1, mode='grid-constant') do), or nearest
 * (round half to even) for labels. Images are normalised on their own grid first, so 0 outside
 * the field of view is the background value. Not here: file I/O (tools/lm-preprocess.c).
 */
#ifndef LM_PREP_H
#define LM_PREP_H

#include <stdint.h>

typedef struct {
    int64_t dims[3];   /* D, H, W */
    double affine[16]; /* voxel (d,h,w,1) -> world mm, row-major */
} lm_grid;

typedef enum { LM_MOD_RAW = 0, LM_MOD_CT, LM_MOD_MR } lm_modality;

int lm_modality_parse(const char *s, lm_modality *out); /* "ct" "mr" "raw" */
const char *lm_modality_name(lm_modality m);

/* numpy.percentile(v, p) (linear interpolation) of n values; v is not modified. */
double lm_percentile_f32(const float *v, int64_t n, double p);

/* In place: CT -> clip to [window[0], window[1]] HU; MR -> clip to [0, percentile(pct)];
 * raw -> nothing; then min-max to [0,1]. Fails on non-finite voxels (names the first) and on a
 * constant image. */
int lm_normalize(float *v, const int64_t dims[3], lm_modality m, const double window[2],
                 double pct);

/* dst (dst->dims) <- src (src_grid) resampled through world space. linear: 1 trilinear,
 * 0 nearest. dst is overwritten. Fails if an affine is singular. */
int lm_resample_f32(float *dst, const lm_grid *dst_grid, const float *src, const lm_grid *src_grid,
                    int linear);
int lm_resample_i32(int32_t *dst, const lm_grid *dst_grid, const int32_t *src,
                    const lm_grid *src_grid);
/* Is q = A_src^-1 A_dst p an identity map (same grid within tol mm)? */
int lm_grid_same(const lm_grid *a, const lm_grid *b, double tol_mm);

/* Target grids. like: the fixed grid with another shape and spacing, centred on the fixed
 * image's centre with its orientation (spacing NULL: keep the field of view). */
void lm_grid_reshape(lm_grid *out, const lm_grid *fixed, const int64_t dims[3],
                     const double *spacing);
/* The fixed grid cropped/padded to dims around its centre, with the same voxels: the voxel
 * offset is floor((N_fixed - N)/2) per axis. */
void lm_grid_crop_pad(lm_grid *out, const lm_grid *fixed, const int64_t dims[3]);
void lm_grid_spacing(const lm_grid *g, double out[3]); /* column norms of the affine */

/* 2x2x2 average pooling: [D,H,W] (even) -> [D/2,H/2,W/2]; halves the grid's affine. */
void lm_avgpool2(float *dst, const float *src, const int64_t dims[3]);
void lm_grid_half(lm_grid *out, const lm_grid *in);

/* A 4-D channel map [C,D,H,W] (binary per channel) -> one label map: channel c -> label c+1,
 * a later channel wins where channels overlap. */
void lm_labels_from_channels(int32_t *dst, const int32_t *src, int64_t C, int64_t nvox);
/* Keep `keep[0..k-1]` and renumber them 1..k in that order; everything else -> 0. */
void lm_labels_remap(int32_t *v, int64_t n, const long *keep, int k);
/* Sorted distinct non-zero values (at most cap); returns the count found (may exceed cap). */
int lm_labels_present(const int32_t *v, int64_t n, long *out, int cap);

/* Displacement fields. Ours: flow [3,D,H,W] in voxels of the grid, channel c along array axis
 * c. ITK/ANTs (NIfTI intent DISPVECT, what antsApplyTransforms reads): the same displacement as
 * a physical vector in mm in ITK's LPS frame, u_lps = diag(-1,-1,1) * R * u_vox, where R is the
 * 3x3 linear part of the grid's voxel->world (RAS) affine. n = D*H*W. In place allowed. */
void lm_field_vox_to_lps_mm(float *out, const float *flow, int64_t n, const double affine[16]);
int lm_field_lps_mm_to_vox(float *out, const float *field, int64_t n, const double affine[16]);

/* ---- one pair, NIfTI files -> a stream record (pair.c; lm-preprocess and lm-register) ---- */

#include "io/lm_tensor.h"

typedef struct {
    lm_modality mod_m, mod_f;
    double window[2], pct;
    int have_shape, have_spacing, crop_pad, pad, any_shape, half, align;
    int64_t shape[3];
    double spacing[3];
    const char *like;
    long keep[256];
    int nkeep;
} lm_prep_opts;

typedef struct {
    char *f[4]; /* moving, fixed, moving_seg, fixed_seg (segs may be NULL) */
    char *id;
} lm_prep_pair;

/* The defaults: moving MR, fixed CT, window -180..400 HU, MR 95th percentile, fixed grid. */
void lm_prep_opts_default(lm_prep_opts *o);
/* The option table rows of the preprocessing options (lm_option initialisers, the same text in
 * every program), and their parser: 1 if `name` (a long option name) is one of them (a bad
 * value is a usage error, exit 2), 0 otherwise. lm_prep_opts_check: cross-option rules. */
#define LM_PREP_OPTION_ROWS                                                                       \
    {"modality-moving", 0, "M", "ct, mr or raw (default mr)"},                                   \
        {"modality-fixed", 0, "M", "ct, mr or raw (default ct)"},                                \
        {"ct-window", 0, "LO,HI", "CT clip window in HU (default -180,400)"},                    \
        {"mr-percentile", 0, "P", "MR clip to [0, P-th percentile] (default 95)"},               \
        {"shape", 0, "DxHxW", "target grid shape (with --spacing, --crop-pad or alone)"},        \
        {"spacing", 0, "S[,S,S]", "target spacing in mm (with --shape)"},                        \
        {"like", 0, "FILE", "target grid of this NIfTI file"},                                   \
        {"crop-pad", 0, NULL, "with --shape: centre-crop/pad the fixed grid, no resampling"},    \
        {"pad", 0, NULL, "pad the grid to the next multiple of 16 (32 with --half)"},            \
        {"any-shape", 0, NULL, "accept a grid the network cannot take (not a multiple of 16)"},  \
        {"half", 0, NULL, "half resolution: 2x2x2-average-pool the images, keep full labels"},   \
        {"align-centres", 0, NULL,                                                               \
         "translate the moving image so its grid centre is the fixed one's"},                    \
        {"labels", 'l', "LIST", "keep these label ids, renumbered 1..K in this order"}
int lm_prep_option(lm_prep_opts *o, const char *name, const char *arg);
void lm_prep_opts_check(const lm_prep_opts *o);

/* The pair list: TSV, columns moving, fixed[, moving_seg, fixed_seg[, pair id]], '#' comments,
 * an optional header line starting "moving"; relative paths resolved against the list's
 * folder; pair id default: the moving file's name without .nii[.gz]. */
int lm_prep_read_pairs(const char *list, lm_prep_pair **out, int *n);
void lm_prep_free_pairs(lm_prep_pair *p, int n);
char *lm_prep_stem(const char *path); /* malloc'd */

/* Reads the pair's files and builds its record: moving, fixed ([1,1,D,H,W] F32, halved with
 * --half), moving_seg, fixed_seg (full grid, smallest integer dtype), metadata pair, affine,
 * spacing, full_shape, modality_*, half, align, labels[, labels_source], history (argc/argv).
 * On failure rec is freed and the error names the file. */
int lm_prep_pair_record(const lm_prep_opts *o, const lm_prep_pair *pr, lm_record *rec, int argc,
                        char **argv);

#endif
