/* lm_nifti.h — NIfTI-1 and NIfTI-2 (.nii, .nii.gz) through nifticlib.
 *
 * THE ARRAY-AXIS CONVENTION (MODEL.md §0; every program uses this and only this):
 *   NIfTI voxel (i, j, k) -- i fastest on disk, as nibabel indexes img.get_fdata()[i, j, k] --
 *   is element [D=i, H=j, W=k] of our row-major [D,H,W] tensor, so W (= NIfTI k) is the
 *   fastest axis in memory. Reading therefore transposes the on-disk order; writing transposes
 *   back. A 4-D file (i,j,k,t) -- e.g. a multi-channel label map -- becomes [T,D,H,W], channel
 *   first like NCDHW; a 5-D vector file with nt = 1 (the ITK displacement-field layout, dim
 *   (i,j,k,1,c)) becomes [C,D,H,W].
 *   The voxel->world affine maps (i,j,k,1) = (d,h,w,1) to scanner mm (x,y,z,1); it is the sform
 *   when sform_code > 0, else the qform when qform_code > 0, else nibabel's fallback
 *   (diag(-dx,dy,dz) centred on the grid), exactly nibabel's img.affine. Spacing is
 *   (pixdim[1], pixdim[2], pixdim[3]) = (dD, dH, dW) in the file's units.
 *
 * Values: any real scalar datatype is read as F32 with scl_slope/scl_inter applied (slope 0 or
 * non-finite means no scaling, as in the standard), or as I32 labels (values must be integral).
 * Complex and RGB datatypes are refused.
 */
#ifndef LM_NIFTI_H
#define LM_NIFTI_H

#include "lm_tensor.h"

typedef struct {
    int version;         /* 1 or 2 */
    int datatype;        /* NIfTI DT_* code on disk */
    int ndim;            /* of the tensor: 3 or 4 */
    int64_t dims[4];     /* D,H,W and channels (1 if none) */
    double affine[16];   /* voxel -> world, row-major, as nibabel's img.affine */
    double qform[16], sform[16];
    int qform_code, sform_code;
    double quatern[3], qoffset[3], qfac;
    double pixdim[8];
    double spacing[3];   /* pixdim[1..3] */
    int xyz_units, time_units;
    double scl_slope, scl_inter; /* as stored */
    int intent_code;
    char descrip[80];
} lm_nifti_geom;

enum { LM_NII_F32 = 0, LM_NII_LABELS = 1 };

/* Reads path into *t ([D,H,W] or [C,D,H,W]; F32, or I32 with LM_NII_LABELS) and *g. */
int lm_nifti_read(const char *path, int mode, lm_tensor *t, lm_nifti_geom *g);

/* lm_nifti_read without the transpose. m->t has the shape, dtype and values lm_nifti_read gives,
 * but its data stay in the file's order: element i + D·(j + H·(k + W·c)) is voxel (i, j, k) of
 * component c -- [C,W,H,D] row-major, D fastest, the kernels' LM_WARP_NIFTI_ORDER. An
 * uncompressed file in the native byte order whose stored type is already the one asked for
 * (FLOAT32 for LM_NII_F32, INT32 for LM_NII_LABELS) and that has no scaling is not copied:
 * m->t.data points into a private read-only mapping of the file (do not write to it). Others
 * are converted into memory m->t owns. Release with lm_nifti_unmap (also after a failure). */
typedef struct {
    lm_tensor t;
    void *map; /* the mapping m->t.data points into, or NULL */
    size_t maplen;
} lm_nifti_mapped;
int lm_nifti_map(const char *path, int mode, lm_nifti_mapped *m, lm_nifti_geom *g);
void lm_nifti_unmap(lm_nifti_mapped *m);
/* Header only (no data), e.g. to check grids. */
int lm_nifti_read_geom(const char *path, lm_nifti_geom *g);
int lm_nifti_is_name(const char *path); /* ends in .nii or .nii.gz */
const char *lm_nifti_datatype_name(int datatype); /* "INT16", "FLOAT32", ... */

enum {
    LM_NII_VECTOR = 1,     /* [3,D,H,W] written as 5-D (i,j,k,1,3) with intent DISPVECT */
    LM_NII_FILE_ORDER = 2, /* t->data are already in the file's order (as lm_nifti_map gives
                              them; the shape stays [D,H,W] or [C,D,H,W]): no transpose */
};
/* Writes t ([D,H,W] or [C,D,H,W]; F32, F64, U8, I8, I16, U16, I32 or U32) to path (.nii or
 * .nii.gz decides compression) with ref's geometry (qform, sform, codes, pixdim, units, descrip)
 * and no scaling. Atomic: a temporary name, then renamed. Verified before the rename: every
 * write must succeed, and the file is read back -- a .nii.gz whole (decompressed), a .nii its
 * header, which must describe t, and its size, which must be exactly header + data. ref may be
 * NULL (identity affine, 1 mm). */
int lm_nifti_write(const char *path, const lm_tensor *t, const lm_nifti_geom *ref, int flags);

/* A geometry for a new grid: affine (row-major voxel->world), units mm, sform and qform
 * codes 2 (aligned) and 1 (scanner) resp. */
void lm_nifti_geom_from_affine(lm_nifti_geom *g, const double affine[16], const int64_t dhw[3]);

#endif
