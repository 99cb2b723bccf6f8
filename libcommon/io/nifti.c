/* nifti.c — NIfTI-1/2 reading and writing through nifticlib, in the axis convention of
 * lm_nifti.h. nifticlib does the file format (gzip, byte order, versions); this file does
 * geometry, scaling, dtype handling, the axis transpose, and atomic, verified writes.
 */
#include "lm_nifti.h"

#include "lm_atomic.h"
#include "lm_error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <nifti2_io.h>
#include <znzlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lm_nifti_is_name(const char *path)
{
    size_t n = strlen(path);
    return (n > 4 && strcmp(path + n - 4, ".nii") == 0) ||
           (n > 7 && strcmp(path + n - 7, ".nii.gz") == 0);
}

const char *lm_nifti_datatype_name(int datatype)
{
    const char *s = nifti_datatype_string(datatype);
    return s ? s : "UNKNOWN";
}

static void mat_from(double out[16], nifti_dmat44 m)
{
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            out[r * 4 + c] = m.m[r][c];
}

static nifti_dmat44 mat_to(const double in[16])
{
    nifti_dmat44 m;
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            m.m[r][c] = in[r * 4 + c];
    return m;
}

/* nifticlib prints some errors straight to stderr whatever its debug level; a tool must say
 * one line, so its stderr is muted around calls into it (LM_NIFTI_DEBUG=1 keeps it). */
static int mute_stderr(void)
{
    if (getenv("LM_NIFTI_DEBUG"))
        return -1;
    fflush(stderr);
    int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY);
    if (saved >= 0 && null >= 0)
        dup2(null, STDERR_FILENO);
    if (null >= 0)
        close(null);
    return saved;
}

static void unmute_stderr(int saved)
{
    if (saved < 0)
        return;
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
}

/* The stored quaternion and srow fields, which nifticlib resets when their code is 0 but
 * nibabel reports as they are. */
typedef struct {
    int version;
    double quatern[3], qoffset[3], qfac, srow[12];
} raw_geom;

static int open_nim(const char *path, int read_data, nifti_image **out, raw_geom *raw)
{
    struct stat st;
    *out = NULL;
    if (stat(path, &st) != 0)
        return lm_error_set("%s", strerror(errno));
    if (S_ISDIR(st.st_mode))
        return lm_error_set("is a directory");
    if (access(path, R_OK) != 0)
        return lm_error_set("%s", strerror(errno));
    nifti_set_debug_level(0);
    int nver = 0, saved = mute_stderr();
    void *hdr = nifti_read_header(path, &nver, 1);
    nifti_image *nim = hdr ? nifti_image_read(path, read_data) : NULL;
    unmute_stderr(saved);
    memset(raw, 0, sizeof *raw);
    raw->version = nver == 2 ? 2 : 1;
    if (hdr && nver == 2) {
        const nifti_2_header *h = hdr;
        double q[7] = {h->quatern_b, h->quatern_c, h->quatern_d, h->qoffset_x,
                       h->qoffset_y, h->qoffset_z, h->pixdim[0]};
        memcpy(raw->quatern, q, 3 * sizeof *q);
        memcpy(raw->qoffset, q + 3, 3 * sizeof *q);
        raw->qfac = q[6];
        for (int i = 0; i < 4; i++) {
            raw->srow[i] = h->srow_x[i];
            raw->srow[4 + i] = h->srow_y[i];
            raw->srow[8 + i] = h->srow_z[i];
        }
    } else if (hdr) {
        const nifti_1_header *h = hdr;
        double q[7] = {h->quatern_b, h->quatern_c, h->quatern_d, h->qoffset_x,
                       h->qoffset_y, h->qoffset_z, h->pixdim[0]};
        memcpy(raw->quatern, q, 3 * sizeof *q);
        memcpy(raw->qoffset, q + 3, 3 * sizeof *q);
        raw->qfac = q[6];
        for (int i = 0; i < 4; i++) {
            raw->srow[i] = h->srow_x[i];
            raw->srow[4 + i] = h->srow_y[i];
            raw->srow[8 + i] = h->srow_z[i];
        }
    }
    free(hdr);
    if (!hdr)
        return lm_error_set("not a NIfTI file (no valid header)");
    if (!nim)
        return lm_error_set(read_data ? "not a readable NIfTI file (corrupt or truncated)"
                                      : "not a readable NIfTI header");
    if (read_data && !nim->data) {
        nifti_image_free(nim);
        return lm_error_set("truncated or corrupt NIfTI data");
    }
    *out = nim;
    return 0;
}

static int fill_geom(const nifti_image *nim, const raw_geom *raw, lm_nifti_geom *g)
{
    memset(g, 0, sizeof *g);
    g->version = raw->version;
    g->datatype = nim->datatype;
    for (int d = 6; d <= 7; d++)
        if (nim->dim[0] >= d && nim->dim[d] > 1)
            return lm_error_set("NIfTI file has %lld dimensions (at most 5 supported)",
                                (long long)nim->dim[0]);
    int64_t nt = nim->dim[0] >= 4 ? nim->nt : 1, nu = nim->dim[0] >= 5 ? nim->nu : 1;
    if (nt > 1 && nu > 1)
        return lm_error_set("NIfTI file with both a time and a vector dimension is not supported");
    g->dims[0] = nim->nx;
    g->dims[1] = nim->dim[0] >= 2 ? nim->ny : 1;
    g->dims[2] = nim->dim[0] >= 3 ? nim->nz : 1;
    g->dims[3] = nt > 1 ? nt : nu;
    g->ndim = g->dims[3] > 1 ? 4 : 3;
    for (int i = 0; i < 8; i++)
        g->pixdim[i] = nim->pixdim[i];
    g->spacing[0] = nim->dx;
    g->spacing[1] = nim->dy;
    g->spacing[2] = nim->dz;
    g->qform_code = nim->qform_code;
    g->sform_code = nim->sform_code;
    memcpy(g->quatern, raw->quatern, sizeof g->quatern);
    memcpy(g->qoffset, raw->qoffset, sizeof g->qoffset);
    g->qfac = raw->qfac < 0 ? -1 : 1;
    /* qform and sform from the stored fields whatever their codes (as nibabel's get_qform and
     * get_sform report them); the codes decide which one is the affine. */
    mat_from(g->qform, nifti_quatern_to_dmat44(g->quatern[0], g->quatern[1], g->quatern[2],
                                               g->qoffset[0], g->qoffset[1], g->qoffset[2],
                                               nim->dx, nim->dy, nim->dz, g->qfac));
    memcpy(g->sform, raw->srow, sizeof raw->srow);
    g->sform[12] = g->sform[13] = g->sform[14] = 0;
    g->sform[15] = 1;
    if (g->sform_code > 0) {
        memcpy(g->affine, g->sform, sizeof g->affine);
    } else if (g->qform_code > 0) {
        memcpy(g->affine, g->qform, sizeof g->affine);
    } else { /* nibabel's shape_zoom_affine(shape, zooms, x_flip=True) */
        double z[3] = {-nim->dx, nim->dy, nim->dz};
        memset(g->affine, 0, sizeof g->affine);
        for (int i = 0; i < 3; i++) {
            g->affine[i * 4 + i] = z[i];
            g->affine[i * 4 + 3] = -((double)g->dims[i] - 1) / 2.0 * z[i];
        }
        g->affine[15] = 1;
    }
    g->xyz_units = nim->xyz_units;
    g->time_units = nim->time_units;
    g->scl_slope = nim->scl_slope;
    g->scl_inter = nim->scl_inter;
    g->intent_code = nim->intent_code;
    memcpy(g->descrip, nim->descrip, sizeof g->descrip);
    g->descrip[sizeof g->descrip - 1] = '\0';
    return 0;
}

int lm_nifti_read_geom(const char *path, lm_nifti_geom *g)
{
    nifti_image *nim;
    raw_geom raw;
    if (open_nim(path, 0, &nim, &raw) < 0)
        return -1;
    int rc = fill_geom(nim, &raw, g);
    nifti_image_free(nim);
    return rc;
}

static int supported_type(int dt)
{
    switch (dt) {
    case DT_UINT8: case DT_INT8: case DT_INT16: case DT_UINT16: case DT_INT32:
    case DT_UINT32: case DT_INT64: case DT_UINT64: case DT_FLOAT32: case DT_FLOAT64:
        return 1;
    default:
        return 0;
    }
}

/* The voxel data, read with znzlib rather than nifti_image_load, which silently replaces
 * NaN and Inf by 0: a non-finite voxel must reach the tools, which refuse it by name. */
static int load_data(nifti_image *nim)
{
    size_t n = (size_t)nim->nvox * (size_t)nim->nbyper;
    void *buf = malloc(n ? n : 1);
    if (!buf)
        return lm_error_set("out of memory (%zu bytes of voxels)", n);
    int saved = mute_stderr();
    znzFile fp = znzopen(nim->iname, "rb", nifti_is_gzfile(nim->iname));
    unmute_stderr(saved);
    if (znz_isnull(fp)) {
        free(buf);
        return lm_error_set("cannot open the image data: %s", strerror(errno));
    }
    size_t k = 0;
    if (znzseek(fp, (znz_off_t)nim->iname_offset, SEEK_SET) >= 0)
        k = znzread(buf, 1, n, fp);
    znzclose(fp);
    if (k != n) {
        free(buf);
        return lm_error_set("truncated NIfTI data (%zu of %zu bytes)", k, n);
    }
    if (nim->byteorder != nifti_short_order() && nim->swapsize > 1)
        nifti_swap_Nbytes(nim->nvox, nim->swapsize, buf);
    nim->data = buf;
    return 0;
}

int lm_nifti_read(const char *path, int mode, lm_tensor *t, lm_nifti_geom *g)
{
    nifti_image *nim;
    lm_nifti_geom gl;
    memset(t, 0, sizeof *t);
    if (!g)
        g = &gl;
    raw_geom raw;
    if (open_nim(path, 0, &nim, &raw) < 0)
        return -1;
    if (supported_type(nim->datatype) && load_data(nim) < 0) {
        nifti_image_free(nim);
        return -1;
    }
    if (fill_geom(nim, &raw, g) < 0)
        goto fail;
    if (!supported_type(nim->datatype)) {
        lm_error_set("unsupported NIfTI datatype %d (%s); only real scalar types are read",
                     nim->datatype, nifti_datatype_string(nim->datatype));
        goto fail;
    }
    int64_t D = g->dims[0], H = g->dims[1], W = g->dims[2], C = g->dims[3];
    int64_t shape4[4] = {C, D, H, W};
    const int64_t *shape = g->ndim == 4 ? shape4 : shape4 + 1;
    if (lm_tensor_alloc(t, "", mode == LM_NII_LABELS ? LM_I32 : LM_F32, g->ndim, shape) < 0)
        goto fail;
    double slope = nim->scl_slope, inter = nim->scl_inter;
    int scale = slope != 0 && isfinite(slope) && isfinite(inter) && !(slope == 1 && inter == 0);
    const int64_t nvox = D * H * W;
    /* Straight from the file's type to F32 (or checked I32), transposing the (i, k) plane of
     * each j in 32x32 tiles that read i contiguously; no intermediate copy. */
    int64_t bad = -1; /* first non-integer label: file-order index */
    double badv = 0;
    const int64_t TB = 32;
#define LM_READ_T(T)                                                                              \
    do {                                                                                          \
        const T *fv = (const T *)nim->data;                                                       \
        for (int64_t c = 0; c < C; c++)                                                           \
            for (int64_t j = 0; j < H; j++)                                                       \
                for (int64_t k0 = 0; k0 < W; k0 += TB)                                            \
                    for (int64_t i0 = 0; i0 < D; i0 += TB) {                                      \
                        const int64_t k1 = k0 + TB < W ? k0 + TB : W;                             \
                        const int64_t i1 = i0 + TB < D ? i0 + TB : D;                             \
                        for (int64_t k = k0; k < k1; k++) {                                       \
                            const int64_t fo = c * nvox + D * (j + H * k);                        \
                            for (int64_t i = i0; i < i1; i++) {                                   \
                                T x;                                                              \
                                memcpy(&x, fv + fo + i, sizeof x);                                \
                                double v = scale ? (double)x * slope + inter : (double)x;         \
                                const int64_t o = c * nvox + (i * H + j) * W + k;                 \
                                if (mode != LM_NII_LABELS) {                                      \
                                    ((float *)t->data)[o] = (float)v;                             \
                                } else if (!(v == floor(v)) || v < INT32_MIN || v > INT32_MAX) {  \
                                    if (bad < 0 || fo + i < bad) {                                \
                                        bad = fo + i;                                             \
                                        badv = v;                                                 \
                                    }                                                             \
                                } else {                                                          \
                                    ((int32_t *)t->data)[o] = (int32_t)v;                         \
                                }                                                                 \
                            }                                                                     \
                        }                                                                         \
                    }                                                                             \
    } while (0)
    switch (nim->datatype) {
    case DT_UINT8: LM_READ_T(uint8_t); break;
    case DT_INT8: LM_READ_T(int8_t); break;
    case DT_INT16: LM_READ_T(int16_t); break;
    case DT_UINT16: LM_READ_T(uint16_t); break;
    case DT_INT32: LM_READ_T(int32_t); break;
    case DT_UINT32: LM_READ_T(uint32_t); break;
    case DT_INT64: LM_READ_T(int64_t); break;
    case DT_UINT64: LM_READ_T(uint64_t); break;
    case DT_FLOAT32: LM_READ_T(float); break;
    default: LM_READ_T(double); break;
    }
#undef LM_READ_T
    if (bad >= 0) {
        int64_t i = bad % nvox;
        lm_error_set("label map has a non-integer value %g at voxel (%lld,%lld,%lld)", badv,
                     (long long)(i % D), (long long)(i / D % H), (long long)(i / (D * H)));
        goto fail;
    }
    nifti_image_free(nim);
    return 0;
fail:
    lm_tensor_free(t);
    nifti_image_free(nim);
    return -1;
}

static int nifti_dt(lm_dtype dt)
{
    switch (dt) {
    case LM_F32: return DT_FLOAT32;
    case LM_F64: return DT_FLOAT64;
    case LM_U8: return DT_UINT8;
    case LM_I8: return DT_INT8;
    case LM_I16: return DT_INT16;
    case LM_U16: return DT_UINT16;
    case LM_I32: return DT_INT32;
    case LM_U32: return DT_UINT32;
    default: return -1;
    }
}

void lm_nifti_geom_from_affine(lm_nifti_geom *g, const double affine[16], const int64_t dhw[3])
{
    memset(g, 0, sizeof *g);
    g->version = 1;
    memcpy(g->affine, affine, sizeof g->affine);
    memcpy(g->sform, affine, sizeof g->sform);
    g->sform_code = NIFTI_XFORM_ALIGNED_ANAT;
    g->qform_code = NIFTI_XFORM_SCANNER_ANAT;
    double dx, dy, dz, qb, qc, qd, qx, qy, qz, qfac;
    nifti_dmat44_to_quatern(mat_to(affine), &qb, &qc, &qd, &qx, &qy, &qz, &dx, &dy, &dz, &qfac);
    g->quatern[0] = qb;
    g->quatern[1] = qc;
    g->quatern[2] = qd;
    g->qoffset[0] = qx;
    g->qoffset[1] = qy;
    g->qoffset[2] = qz;
    g->qfac = qfac;
    mat_from(g->qform, nifti_quatern_to_dmat44(qb, qc, qd, qx, qy, qz, dx, dy, dz, qfac));
    g->pixdim[0] = qfac;
    for (int i = 0; i < 3; i++) {
        double s = 0;
        for (int r = 0; r < 3; r++)
            s += affine[r * 4 + i] * affine[r * 4 + i];
        g->spacing[i] = g->pixdim[i + 1] = sqrt(s);
        g->dims[i] = dhw ? dhw[i] : 0;
    }
    g->dims[3] = 1;
    g->ndim = 3;
    g->xyz_units = NIFTI_UNITS_MM;
    g->scl_slope = 1;
}

int lm_nifti_write(const char *path, const lm_tensor *t, const lm_nifti_geom *ref, int flags)
{
    lm_nifti_geom ident;
    nifti_image *nim = NULL, *back = NULL;
    char *tmp = NULL;
    void *buf = NULL;
    int rc = -1;
    int dt = nifti_dt(t->dtype);
    if (dt < 0)
        return lm_error_set("cannot write %s data to NIfTI", lm_dtype_name(t->dtype));
    if (t->ndim != 3 && t->ndim != 4)
        return lm_error_set("NIfTI output needs a [D,H,W] or [C,D,H,W] tensor, got %d dims",
                            t->ndim);
    if (!lm_nifti_is_name(path))
        return lm_error_set("NIfTI output name must end in .nii or .nii.gz");
    if (!ref) {
        double eye[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
        lm_nifti_geom_from_affine(&ident, eye, NULL);
        ref = &ident;
    }
    int64_t C = t->ndim == 4 ? t->shape[0] : 1;
    int64_t D = t->shape[t->ndim - 3], H = t->shape[t->ndim - 2], W = t->shape[t->ndim - 1];
    int64_t dims[8] = {3, D, H, W, 1, 1, 1, 1};
    if (C > 1 || t->ndim == 4) {
        if (flags & LM_NII_VECTOR) {
            dims[0] = 5;
            dims[5] = C;
        } else {
            dims[0] = 4;
            dims[4] = C;
        }
    }
    nifti_set_debug_level(0);
    nim = nifti_make_new_nim(dims, dt, 0);
    if (!nim)
        return lm_error_set("cannot create a NIfTI header");
    size_t es = lm_dtype_size(t->dtype);
    buf = malloc(t->nbytes ? t->nbytes : 1);
    if (!buf) {
        lm_error_set("out of memory");
        goto done;
    }
    {
        /* dst[i + D*(j + H*(k + W*c))] = src[((c*D + i)*H + j)*W + k], in 32x32 (i,k) tiles
         * per j, writing i contiguously; one typed loop per element size */
        const int64_t TB = 32;
#define LM_TRANSPOSE_OUT(T)                                                                       \
    do {                                                                                          \
        const T *src = (const T *)t->data;                                                        \
        T *dst = (T *)buf;                                                                        \
        for (int64_t c = 0; c < C; c++)                                                           \
            for (int64_t j = 0; j < H; j++)                                                       \
                for (int64_t k0 = 0; k0 < W; k0 += TB)                                            \
                    for (int64_t i0 = 0; i0 < D; i0 += TB) {                                      \
                        const int64_t k1 = k0 + TB < W ? k0 + TB : W;                             \
                        const int64_t i1 = i0 + TB < D ? i0 + TB : D;                             \
                        for (int64_t k = k0; k < k1; k++) {                                       \
                            T *d = dst + D * (j + H * (k + W * c));                               \
                            for (int64_t i = i0; i < i1; i++)                                     \
                                d[i] = src[((c * D + i) * H + j) * W + k];                        \
                        }                                                                         \
                    }                                                                             \
    } while (0)
        switch (es) {
        case 1: LM_TRANSPOSE_OUT(uint8_t); break;
        case 2: LM_TRANSPOSE_OUT(uint16_t); break;
        case 4: LM_TRANSPOSE_OUT(uint32_t); break;
        default: LM_TRANSPOSE_OUT(uint64_t); break;
        }
#undef LM_TRANSPOSE_OUT
    }
    nim->data = buf;
    nim->nifti_type = ref->version == 2 ? NIFTI_FTYPE_NIFTI2_1 : NIFTI_FTYPE_NIFTI1_1;
    nim->dx = nim->pixdim[1] = ref->pixdim[1] > 0 ? ref->pixdim[1] : 1;
    nim->dy = nim->pixdim[2] = ref->pixdim[2] > 0 ? ref->pixdim[2] : 1;
    nim->dz = nim->pixdim[3] = ref->pixdim[3] > 0 ? ref->pixdim[3] : 1;
    nim->qform_code = ref->qform_code;
    nim->sform_code = ref->sform_code;
    nim->quatern_b = ref->quatern[0];
    nim->quatern_c = ref->quatern[1];
    nim->quatern_d = ref->quatern[2];
    nim->qoffset_x = ref->qoffset[0];
    nim->qoffset_y = ref->qoffset[1];
    nim->qoffset_z = ref->qoffset[2];
    nim->qfac = nim->pixdim[0] = ref->qfac < 0 ? -1 : 1;
    nim->qto_xyz = nifti_quatern_to_dmat44(nim->quatern_b, nim->quatern_c, nim->quatern_d,
                                           nim->qoffset_x, nim->qoffset_y, nim->qoffset_z,
                                           nim->dx, nim->dy, nim->dz, nim->qfac);
    nim->qto_ijk = nifti_dmat44_inverse(nim->qto_xyz);
    nim->sto_xyz = mat_to(ref->sform_code > 0 ? ref->sform : ref->affine);
    nim->sto_ijk = nifti_dmat44_inverse(nim->sto_xyz);
    nim->xyz_units = ref->xyz_units ? ref->xyz_units : NIFTI_UNITS_MM;
    nim->time_units = ref->time_units;
    nim->scl_slope = 1;
    nim->scl_inter = 0;
    if (flags & LM_NII_VECTOR) {
        nim->intent_code = NIFTI_INTENT_DISPVECT;
        snprintf(nim->intent_name, sizeof nim->intent_name, "displacement");
    }
    snprintf(nim->descrip, sizeof nim->descrip, "%s", ref->descrip[0] ? ref->descrip : "llm-morph");
    if (lm_atomic_tmpname(path, &tmp) < 0)
        goto done;
    if (nifti_set_filenames(nim, tmp, 0, 1) != 0) {
        lm_error_set("cannot set NIfTI file name");
        goto done;
    }
    int saved = mute_stderr();
    nifti_image_write(nim);
    /* nifticlib reports write errors only on stderr, so check the result: a compressed file is
     * read back whole; an uncompressed one must have its header and exactly its size. */
    int gz = nifti_is_gzfile(tmp);
    back = nifti_image_read(tmp, gz);
    unmute_stderr(saved);
    struct stat st;
    int ok = back && back->nvox == nim->nvox && back->datatype == dt &&
             (gz ? back->data != NULL
                 : stat(tmp, &st) == 0 &&
                       (uint64_t)st.st_size == (uint64_t)back->iname_offset + (uint64_t)t->nbytes);
    if (!ok) {
        lm_error_set("write error (the written file does not read back; disk full?)");
        goto done;
    }
    rc = lm_atomic_commit(NULL, tmp, path);
    tmp = NULL;
done:
    if (tmp)
        lm_atomic_abort(NULL, tmp);
    if (nim) {
        nim->data = NULL;
        nifti_image_free(nim);
    }
    nifti_image_free(back);
    free(buf);
    return rc;
}
