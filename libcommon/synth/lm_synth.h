/* lm_synth.h — synthetic multimodal image pairs with known labels, SynthMorph-style: the
 * embedded default data of the demo and the tests (ARCHITECTURE.md §7).
 *
 * A pair is a moving MR-like image and a fixed CT-like image, each rendered from a label map:
 * per-label random intensities drawn per modality, Gaussian blur, a smooth multiplicative bias
 * field (MR only) and additive Gaussian noise. The fixed subject's labels are used as they are;
 * the moving subject's labels (another subject, or the same one) are pulled through a random
 * smooth deformation by nearest neighbour. Label maps come from built-in random shapes (a body
 * outline holding ellipsoid organs) or from real label maps resampled onto the output grid.
 *
 * Conventions (MODEL.md §0): volumes are [D,H,W] with W fastest; displacement fields are
 * [3,D,H,W] with channel c the displacement along axis c; warps pull:
 * warped(p) = src(p + u(p)). All of a pair lives on one grid whose voxel->world affine is
 * `affine` (isotropic spacing, RAS axes for the grids made here).
 *
 * Determinism: every random number comes from the Philox counter generator (lm_rng.h) keyed
 * by the seed and a stream id that names what it is for; per-voxel numbers are indexed by the
 * voxel. Parallel loops (OpenMP) only write independent outputs and every reduction runs
 * serially, so the results are bit-identical for any thread count.
 *
 * This is not a registration method and not a metrics library; it only makes data.
 */
#ifndef LM_SYNTH_H
#define LM_SYNTH_H

#include "io/lm_tensor.h"

#include <stdint.h>

enum { LM_SYNTH_MR = 0, LM_SYNTH_CT = 1 };

/* Where label maps come from; decides the default bone labels. */
enum { LM_SYNTH_SHAPES = 0, LM_SYNTH_FREESURFER = 1, LM_SYNTH_MERGED = 2 };

#define LM_SYNTH_MAX_BONE 32
#define LM_SYNTH_MAX_LABEL 32767 /* labels are written as int16 */

/* Intensity ranges of the model (the man page and the tests quote these). */
#define LM_SYNTH_CT_AIR (-1000.0)
#define LM_SYNTH_CT_SOFT_LO 20.0
#define LM_SYNTH_CT_SOFT_HI 80.0
#define LM_SYNTH_CT_BONE_LO 700.0
#define LM_SYNTH_CT_BONE_HI 1200.0
#define LM_SYNTH_CT_MIN (-1024.0)
#define LM_SYNTH_CT_MAX 3071.0
#define LM_SYNTH_MR_BG_HI 50.0
#define LM_SYNTH_MR_LO 100.0
#define LM_SYNTH_MR_HI 1000.0

typedef struct {
    int64_t shape[3];   /* output grid D,H,W */
    double spacing;     /* mm, isotropic */
    int organs;         /* built-in shapes: organ count; labels 1 (body) .. organs+1 */
    double deform;      /* mm: largest magnitude of the velocity field (0: no deformation) */
    double deform_grid; /* mm between the control points of the velocity field */
    double noise;       /* additive noise std as a fraction of 1000 (MR units, CT HU) */
    double bias;        /* MR bias field: RMS of the log gain over the grid (0: none) */
    double blur;        /* Gaussian blur sigma in mm (0: none) */
    int nbone;          /* labels rendered bone-bright in CT */
    int32_t bone[LM_SYNTH_MAX_BONE];
    uint64_t seed;
} lm_synth_args;

/* Defaults: 64x64x64 at 2 mm, 5 organs, deform 6 mm on a 16 mm control grid, noise 0.02,
 * bias 0.2, blur 1 mm, seed 1, and the bone labels of LM_SYNTH_SHAPES. */
void lm_synth_args_default(lm_synth_args *a);
/* Sets a->bone to the defaults of a label source: SHAPES the last organ (and the one before
 * it when organs >= 4), FREESURFER {515, 516} (the skull of SynthSeg's training label maps),
 * MERGED the merged skull class (8). */
void lm_synth_bone_defaults(lm_synth_args *a, int source);
/* Checks the numbers of a (shape >= 16 per axis, spacing > 0, ...); 0 or -1 (lm_error). */
int lm_synth_args_check(const lm_synth_args *a);

/* The grid of the built-in shapes: RAS axes, spacing a->spacing, centred on the origin. */
void lm_synth_affine(double affine[16], const lm_synth_args *a);

/* ---- label maps ---- */

/* labels = I32 [D,H,W] of built-in subject `subject`: 0 outside the body, 1 body, 2..organs+1
 * organs. Organs follow one population template (drawn from the seed) with per-subject
 * jitter of centre, radii and rotation, and a smooth random perturbation of every surface, so
 * that label k means the same organ in every subject. */
int lm_synth_shapes(lm_tensor *labels, const lm_synth_args *a, uint64_t subject);

/* Resamples a real label map `in` (I32 [D,H,W], voxel->world in_affine) by nearest neighbour
 * onto a RAS grid of a->shape at a->spacing whose centre is the world centre of the map's
 * foreground bounding box; voxels outside the input are 0. Writes the new grid's affine.
 * Refuses labels outside 0..LM_SYNTH_MAX_LABEL and an empty map. */
int lm_synth_labels_resample(lm_tensor *out, double out_affine[16], const lm_tensor *in,
                             const double in_affine[16], const lm_synth_args *a);
/* Merges FreeSurfer/SynthSeg ids in place into 9 classes: 1 cerebral white matter, 2 cerebral
 * cortex, 3 ventricles, 4 cerebellum, 5 deep grey matter, 6 brainstem, 7 CSF, 8 skull,
 * 9 every other non-zero id (extra-cerebral soft tissue). */
void lm_synth_labels_merge(lm_tensor *labels);

/* ---- fields ---- */

/* v = F32 [3,D,H,W], voxels: a cubic B-spline of N(0,1) control points spaced
 * a->deform_grid mm, scaled so that its largest magnitude is a->deform mm. */
int lm_synth_velocity(lm_tensor *v, const lm_synth_args *a, uint64_t stream);
/* u = exp(v) by scaling and squaring (trilinear, border-clamped sampling): a displacement
 * field (voxels) whose inverse is exp(-v), so lm_synth_integrate(w, v, -1) gives it. */
int lm_synth_integrate(lm_tensor *u, const lm_tensor *v, double sign);
/* World displacements in the ITK/ANTs convention of NIfTI DISPVECT files (lm-warp(1)):
 * mm = diag(-1,-1,1) R vox, mm in ITK's LPS frame, R the 3x3 part of the voxel->world (RAS)
 * affine; from_mm is the inverse map. Both F32 [3,D,H,W], computed in double by the same
 * functions lm-warp uses (lm_field_vox_to_lps_mm, lm_field_lps_mm_to_vox). */
int lm_synth_flow_to_mm(lm_tensor *mm, const lm_tensor *vox, const double affine[16]);
int lm_synth_flow_from_mm(lm_tensor *vox, const lm_tensor *mm, const double affine[16]);
/* out(p) = labels(floor(p + u(p) + 0.5)), 0 where that lies outside the grid. */
int lm_synth_warp_nearest(lm_tensor *out, const lm_tensor *labels, const lm_tensor *flow);

/* ---- intensities ---- */

/* The mean intensity of label `label` for a modality (pure function of seed, stream, label):
 * CT: 0 -> LM_SYNTH_CT_AIR, bone labels U[700,1200] HU, others U[20,80] HU;
 * MR: 0 -> U[0,50], others U[100,1000]. */
double lm_synth_contrast(int modality, const lm_synth_args *a, uint64_t stream, int32_t label);
/* b = F32 [D,H,W] > 0: exp of a cubic B-spline of N(0,1) control points (4 intervals across
 * the grid), normalised to RMS a->bias. */
int lm_synth_bias(lm_tensor *b, const lm_synth_args *a, uint64_t stream);
/* img = F32 [D,H,W]: contrast(label) (stream), blurred (sigma a->blur), times the bias field
 * (MR only; stream + 1), plus N(0, (1000 a->noise)^2) noise (stream + 2); MR clamped at 0,
 * CT clamped to [-1024, 3071] HU and rounded to integers. */
int lm_synth_render(lm_tensor *img, const lm_tensor *labels, int modality, const lm_synth_args *a,
                    uint64_t stream);

/* ---- pairs ---- */

typedef struct {
    lm_tensor moving, fixed;         /* F32 [D,H,W]: MR-like, CT-like (integral HU) */
    lm_tensor moving_seg, fixed_seg; /* I32 [D,H,W] */
    lm_tensor source_seg;            /* I32: the moving subject before deformation */
    lm_tensor deform_mm, flow_mm;    /* F32 [3,D,H,W], world mm: the deformation applied to the
                                      * moving subject, and its inverse (the true registration) */
    lm_tensor deform, flow;          /* the same in voxels, exactly from_mm(*_mm) */
    double max_disp_mm;              /* largest magnitude of deform_mm */
} lm_synth_pair;

/* Makes pair `index` from the fixed and moving subjects' label maps (I32, same shape, on the
 * grid `affine`): moving_seg = warp_nearest(moving_src, deform) where deform is
 * flow_from_mm(deform_mm) and deform_mm = flow_to_mm(exp(v)); flow likewise from exp(-v);
 * moving = render(moving_seg, MR), fixed = render(fixed_src, CT). */
int lm_synth_pair_make(lm_synth_pair *p, const lm_tensor *fixed_src, const lm_tensor *moving_src,
                       const double affine[16], const lm_synth_args *a, uint64_t index);
void lm_synth_pair_free(lm_synth_pair *p);

/* Stream ids used by lm_synth_pair_make (tests recompute contrasts with them). */
uint64_t lm_synth_stream(uint64_t index, int what);
enum { LM_SYNTH_S_VELOCITY = 1, LM_SYNTH_S_MR = 16, LM_SYNTH_S_CT = 32 };

/* Stores t ([D,H,W] or [C,D,H,W]) with axes D and H reversed, and the affine of that grid
 * (same world positions): an LPS-oriented copy of a RAS grid. */
int lm_synth_flip_dh(lm_tensor *out, double out_affine[16], const lm_tensor *t,
                     const double affine[16]);

#endif
