/* lm_warp.h — the record path of lm-warp as a library, shared by lm-warp and lm-register:
 * a record's moving image and label map warped with the field on their grid (`moving` ->
 * `warped`, `moving_seg` -> `warped_seg`), and the NIfTI outputs of records (warped image,
 * warped label map, ITK/ANTs displacement field) named and placed as man/lm-warp.1 says.
 * lm-warp's file-order job (NIfTI in and out, no record) stays in tools/lm-warp.c and uses the
 * helpers below; both paths give the same files byte for byte.
 */
#ifndef LM_WARP_H
#define LM_WARP_H

#include "io/lm_nifti.h"
#include "io/lm_stream.h"
#include "lm_kernels.h"

#include <stddef.h>
#include <stdint.h>

/* ---- warping records ------------------------------------------------------------------------ */

typedef struct {
    lm_backend *be;         /* where the warps run (lm-warp and lm-register: the CPU backend) */
    int labels_linear;      /* label maps as one-hot maps (trilinear) + argmax, else nearest */
    const void *checked[2]; /* the fields of the record in hand already found finite */
} lm_warper;

void lm_warper_init(lm_warper *w, lm_backend *be, int labels_linear);
/* moving -> warped (trilinear, F32) and moving_seg -> warped_seg (its dtype), each with
 * flow_full or flow, whichever is on its grid; added to the record, or replacing. A record
 * needs one of the two. No history is appended (the caller does, if it writes the record). */
int lm_warp_record(lm_warper *w, lm_record *rec);
/* lab = the label map sv warped by flow (nearest, or one-hot with labels_linear); a's array
 * order is free (LM_WARP_NIFTI_ORDER too). */
int lm_warp_label_map(lm_warper *w, int32_t *lab, const int32_t *sv, const float *flow,
                      const lm_warp_args *a);

/* The field f is F32 and finite (w->checked remembers the fields of the record in hand found
 * so: lm_warp_record starts a record). */
int lm_warp_check_field(lm_warper *w, const lm_tensor *f);
/* [1,C,D,H,W], [C,D,H,W] or [D,H,W] -> C and D,H,W; -1 for other shapes (no lm_error). */
int lm_warp_vol_dims(const lm_tensor *t, int64_t *C, int64_t dhw[3]);
/* Whether v[0..n) holds a NaN or an infinity. */
int lm_warp_any_nonfinite(const float *v, int64_t n);
/* The NIfTI geometry of a tensor of grid dhw: the record's affine/full_shape grid, or its half
 * (no affine: identity 1 mm, with a warning). */
int lm_warp_geom_for(const lm_record *rec, const int64_t dhw[3], lm_nifti_geom *g);
/* The record's pair id for file names, or "pairNNNN" (idx) when missing, empty or with '/'. */
const char *lm_warp_pair_name(const lm_record *rec, long idx, char *buf, size_t cap);
/* "x.nii.gz" + "_seg" -> "x_seg.nii.gz" */
void lm_warp_with_suffix(char *out, size_t cap, const char *path, const char *suffix);
int lm_warp_is_dir(const char *path); /* an existing directory (NULL: no) */

/* ---- NIfTI outputs of records --------------------------------------------------------------- */

/* out (-o): NULL or a stream name (then only the field export is done here), a .nii/.nii.gz
 * name (one record) or an existing directory (PAIR_warped.nii.gz, PAIR_warped_seg.nii.gz);
 * exp (--export-field): NULL, a .nii/.nii.gz name (one record) or a directory
 * (PAIR_field.nii.gz). Each file is written atomically (lm_nifti_write). With
 * LM_WARP_OUT_STAGED, every file is written under a hidden temporary name beside it and all of
 * them are renamed in lm_warp_out_commit: a failed run leaves none (the temporaries are also
 * removed at exit and on SIGINT/SIGTERM/SIGHUP), and the output directories are checked for
 * writing when opening. */
typedef struct lm_warp_out lm_warp_out;
enum { LM_WARP_OUT_STAGED = 1 };
lm_warp_out *lm_warp_out_open(const char *out, const char *exp, int flags); /* NULL: lm_error */
int lm_warp_out_nifti(const lm_warp_out *o);  /* out is a NIfTI name or a directory */
int lm_warp_out_single(const lm_warp_out *o); /* only one record can be written */
/* The error for a second record when single: "-o names one NIfTI file but WHY (give a
 * directory)" (--export-field when -o does not). Returns -1. */
int lm_warp_out_too_many(const lm_warp_out *o, const char *why);
/* Where only one record can be written (lm_warp_out_single), reads ahead in r, whose first
 * record the caller holds: -1 (lm_error) when r holds another ("... the stream has several
 * records", refused before anything is computed or written) or cannot be read, 0 at its end.
 * Otherwise 0 without reading. */
int lm_warp_out_refuse_more(const lm_warp_out *o, lm_reader *r);
/* The record's files: lm_warp_out_images refuses a pair id already written into a directory
 * and writes warped and warped_seg (those present) when out is NIfTI; lm_warp_out_field then
 * exports flow_full, else flow, when exp is given. idx: the record's number (from 1).
 * lm_warp_out_put: both. */
int lm_warp_out_images(lm_warp_out *o, const lm_record *rec, long idx);
int lm_warp_out_field(lm_warp_out *o, lm_warper *w, const lm_record *rec, long idx);
int lm_warp_out_put(lm_warp_out *o, lm_warper *w, const lm_record *rec, long idx);
/* Renames the staged files into place (nothing to do otherwise) and frees o (NULL: 0). Staged:
 * the files about to be replaced are first kept under hidden hard links, and if a rename fails
 * the files renamed before it are put back as they were (removed where there was none); the
 * signals are held meanwhile. */
int lm_warp_out_commit(lm_warp_out *o);
/* Removes the staged files and frees o (NULL: nothing). */
void lm_warp_out_abort(lm_warp_out *o);

#endif
