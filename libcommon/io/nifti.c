/* nifti.c — NIfTI-1/2 reading and writing through nifticlib, in the axis convention of
 * lm_nifti.h. nifticlib does the file format (headers, gzip, byte order, versions); this file
 * does geometry, scaling, dtype handling, the axis transpose (or none: lm_nifti_map and
 * LM_NII_FILE_ORDER), and atomic, verified writes. Uncompressed inputs are mapped, not copied;
 * outputs are transposed a slab at a time into one small buffer and written as they go.
 */
#include "lm_nifti.h"

#include "lm_atomic.h"
#include "lm_error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <nifti2_io.h>
#include <znzlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

/* The voxel bytes of a file in the native byte order. An uncompressed file is mapped (private,
 * read-only, pre-faulted: page-cache pages are shared, not copied into fresh memory); a gzip
 * file, or one to byte-swap, is read into a buffer. The bytes are read with znzlib or mapped
 * rather than through nifti_image_load, which silently replaces NaN and Inf by 0: a non-finite
 * voxel must reach the tools, which refuse it by name. */
typedef struct {
    const void *p; /* nvox·nbyper bytes */
    void *map;     /* the mapping, or NULL */
    size_t maplen;
    void *buf; /* the buffer, or NULL */
} vox_bytes;

static void vox_bytes_free(vox_bytes *b)
{
    if (b->map)
        munmap(b->map, b->maplen);
    free(b->buf);
    memset(b, 0, sizeof *b);
}

static int vox_bytes_load(const nifti_image *nim, vox_bytes *b)
{
    const size_t n = (size_t)nim->nvox * (size_t)nim->nbyper, off = (size_t)nim->iname_offset;
    memset(b, 0, sizeof *b);
    if (!nifti_is_gzfile(nim->iname) && n > 0) {
        int fd = open(nim->iname, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return lm_error_set("cannot open the image data: %s", strerror(e));
        }
        size_t have = (uint64_t)st.st_size > off ? (size_t)st.st_size - off : 0;
        if (have < n) {
            close(fd);
            return lm_error_set("truncated NIfTI data (%zu of %zu bytes)", have, n);
        }
        b->maplen = off + n;
        void *m = mmap(NULL, b->maplen, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
        close(fd);
        if (m != MAP_FAILED) {
            b->map = m;
            b->p = (const char *)m + off;
        }
    }
    if (!b->map) { /* compressed, empty, or not mappable */
        b->buf = malloc(n ? n : 1);
        if (!b->buf)
            return lm_error_set("out of memory (%zu bytes of voxels)", n);
        int saved = mute_stderr();
        znzFile fp = znzopen(nim->iname, "rb", nifti_is_gzfile(nim->iname));
        unmute_stderr(saved);
        if (znz_isnull(fp)) {
            vox_bytes_free(b);
            return lm_error_set("cannot open the image data: %s", strerror(errno));
        }
        size_t k = 0;
        if (znzseek(fp, (znz_off_t)off, SEEK_SET) >= 0)
            k = n ? znzread(b->buf, 1, n, fp) : 0;
        znzclose(fp);
        if (k != n) {
            vox_bytes_free(b);
            return lm_error_set("truncated NIfTI data (%zu of %zu bytes)", k, n);
        }
        b->p = b->buf;
    }
    if (nim->byteorder != nifti_short_order() && nim->swapsize > 1) {
        if (!b->buf) {
            void *c = malloc(n);
            if (!c) {
                vox_bytes_free(b);
                return lm_error_set("out of memory (%zu bytes of voxels)", n);
            }
            memcpy(c, b->p, n);
            munmap(b->map, b->maplen);
            b->map = NULL;
            b->buf = c;
            b->p = c;
        }
        nifti_swap_Nbytes(nim->nvox, nim->swapsize, b->buf);
    }
    return 0;
}

/* t = a tensor of that shape over lm_vol_alloc memory it owns (contents undefined) */
static int vox_tensor(lm_tensor *t, lm_dtype dt, int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    void *p = lm_vol_alloc((size_t)n * lm_dtype_size(dt));
    if (!p || lm_tensor_wrap(t, "", dt, ndim, shape, p) < 0) {
        free(p);
        return lm_error_set("out of memory (%lld voxels)", (long long)n);
    }
    t->owns = 1;
    return 0;
}

/* How stored values become ours: F32 (scaled), or I32 labels that must be integral. */
typedef struct {
    int labels, scale;
    double slope, inter;
} vox_conv;

/* One value of file type T at s[i] into out[o] (float or int32_t); a label that is not an
 * integer in the int32 range sets *bad to the smallest such file index seen. */
#define VOX_CONV_ONE(T, s, i, out, o, cv, bad)                                                  \
    do {                                                                                        \
        T x_;                                                                                   \
        memcpy(&x_, (const T *)(s) + (i), sizeof x_);                                           \
        double v_ = (cv)->scale ? (double)x_ * (cv)->slope + (cv)->inter : (double)x_;         \
        if (!(cv)->labels)                                                                      \
            ((float *)(out))[o] = (float)v_;                                                    \
        else if (!(v_ == floor(v_)) || v_ < INT32_MIN || v_ > INT32_MAX)                        \
            (bad) = (bad) < 0 || (int64_t)(i) < (bad) ? (int64_t)(i) : (bad);                   \
        else                                                                                    \
            ((int32_t *)(out))[o] = (int32_t)v_;                                                \
    } while (0)

/* The value at file index i as the error message reports it. */
static double vox_value(int dt, const void *s, int64_t i, const vox_conv *cv)
{
    double v = 0;
#define VOX_GET(T)                                                                              \
    do {                                                                                        \
        T x_;                                                                                   \
        memcpy(&x_, (const T *)s + i, sizeof x_);                                               \
        v = (double)x_;                                                                         \
    } while (0)
    switch (dt) {
    case DT_UINT8: VOX_GET(uint8_t); break;
    case DT_INT8: VOX_GET(int8_t); break;
    case DT_INT16: VOX_GET(int16_t); break;
    case DT_UINT16: VOX_GET(uint16_t); break;
    case DT_INT32: VOX_GET(int32_t); break;
    case DT_UINT32: VOX_GET(uint32_t); break;
    case DT_INT64: VOX_GET(int64_t); break;
    case DT_UINT64: VOX_GET(uint64_t); break;
    case DT_FLOAT32: VOX_GET(float); break;
    default: VOX_GET(double); break;
    }
#undef VOX_GET
    return cv->scale ? v * cv->slope + cv->inter : v;
}

/* Values that need no check and no arithmetic: a plain copy of 4-byte elements (FLOAT32 to
 * F32 unscaled, INT32 to I32 unscaled), or integers of at most 16 bits to I32 labels. */
static int vox_plain(int dt, const vox_conv *cv)
{
    if (cv->scale)
        return 0;
    if (!cv->labels)
        return dt == DT_FLOAT32;
    return dt == DT_INT32 || dt == DT_UINT8 || dt == DT_INT8 || dt == DT_INT16 ||
           dt == DT_UINT16;
}

/* out[i] = value of s[i] for i < n, file order kept; returns the first bad label index or -1 */
static int64_t vox_convert(void *out, int dt, const void *s, int64_t n, const vox_conv *cv)
{
    int64_t bad = -1;
    if (vox_plain(dt, cv)) {
#define VOX_INT(T)                                                                              \
    _Pragma("omp parallel for schedule(static) if (n >= 65536)")                               \
    for (int64_t i = 0; i < n; i++)                                                             \
        ((int32_t *)out)[i] = ((const T *)s)[i];
        switch (dt) {
        case DT_UINT8: VOX_INT(uint8_t) break;
        case DT_INT8: VOX_INT(int8_t) break;
        case DT_INT16: VOX_INT(int16_t) break;
        case DT_UINT16: VOX_INT(uint16_t) break;
        default: memcpy(out, s, (size_t)n * 4); break;
        }
#undef VOX_INT
        return -1;
    }
#define VOX_LIN(T)                                                                              \
    _Pragma("omp parallel for schedule(static) reduction(min : bad_) if (n >= 65536)")         \
    for (int64_t i = 0; i < n; i++) {                                                           \
        int64_t b_ = -1;                                                                        \
        VOX_CONV_ONE(T, s, i, out, i, cv, b_);                                                  \
        if (b_ >= 0)                                                                            \
            bad_ = b_ < bad_ ? b_ : bad_;                                                       \
    }
    int64_t bad_ = INT64_MAX;
    switch (dt) {
    case DT_UINT8: VOX_LIN(uint8_t) break;
    case DT_INT8: VOX_LIN(int8_t) break;
    case DT_INT16: VOX_LIN(int16_t) break;
    case DT_UINT16: VOX_LIN(uint16_t) break;
    case DT_INT32: VOX_LIN(int32_t) break;
    case DT_UINT32: VOX_LIN(uint32_t) break;
    case DT_INT64: VOX_LIN(int64_t) break;
    case DT_UINT64: VOX_LIN(uint64_t) break;
    case DT_FLOAT32: VOX_LIN(float) break;
    default: VOX_LIN(double) break;
    }
#undef VOX_LIN
    bad = bad_ == INT64_MAX ? -1 : bad_;
    return bad;
}

/* The file order [C,W,H,D] (i fastest) into our [C,D,H,W] (k fastest), converting: each (c, j)
 * plane is a transpose of (k, i), done in 32×32 tiles that read i and write k contiguously;
 * planes are shared out among threads. Returns the first bad label (file index) or -1. */
static int64_t vox_transpose(void *out, int dt, const void *s, int64_t C, int64_t D, int64_t H,
                             int64_t W, const vox_conv *cv)
{
    const int64_t TB = 32, nvox = D * H * W;
    int64_t bad_ = INT64_MAX;
#define VOX_TILES(T, ONE)                                                                       \
    _Pragma("omp parallel for collapse(2) reduction(min : bad_) if (C * nvox >= 65536)")      \
    for (int64_t c = 0; c < C; c++)                                                             \
        for (int64_t j = 0; j < H; j++) {                                                       \
            int64_t b_ = -1;                                                                    \
            for (int64_t k0 = 0; k0 < W; k0 += TB)                                              \
                for (int64_t i0 = 0; i0 < D; i0 += TB) {                                        \
                    const int64_t k1 = k0 + TB < W ? k0 + TB : W, i1 = i0 + TB < D ? i0 + TB : D; \
                    for (int64_t k = k0; k < k1; k++) {                                         \
                        const int64_t fo = c * nvox + D * (j + H * k);                          \
                        const int64_t oo = c * nvox + j * W + k;                                \
                        for (int64_t i = i0; i < i1; i++) {                                     \
                            ONE(T, fo + i, oo + i * H * W);                                     \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
            if (b_ >= 0)                                                                        \
                bad_ = b_ < bad_ ? b_ : bad_;                                                   \
        }
#define VOX_ONE_PLAIN(T, fi, o) ((int32_t *)out)[o] = ((const T *)s)[fi]
#define VOX_ONE_CONV(T, fi, o) VOX_CONV_ONE(T, s, fi, out, o, cv, b_)
    if (vox_plain(dt, cv)) {
        switch (dt) {
        case DT_UINT8: VOX_TILES(uint8_t, VOX_ONE_PLAIN) break;
        case DT_INT8: VOX_TILES(int8_t, VOX_ONE_PLAIN) break;
        case DT_INT16: VOX_TILES(int16_t, VOX_ONE_PLAIN) break;
        case DT_UINT16: VOX_TILES(uint16_t, VOX_ONE_PLAIN) break;
        default: VOX_TILES(int32_t, VOX_ONE_PLAIN) break; /* 4-byte copies */
        }
    } else {
        switch (dt) {
        case DT_UINT8: VOX_TILES(uint8_t, VOX_ONE_CONV) break;
        case DT_INT8: VOX_TILES(int8_t, VOX_ONE_CONV) break;
        case DT_INT16: VOX_TILES(int16_t, VOX_ONE_CONV) break;
        case DT_UINT16: VOX_TILES(uint16_t, VOX_ONE_CONV) break;
        case DT_INT32: VOX_TILES(int32_t, VOX_ONE_CONV) break;
        case DT_UINT32: VOX_TILES(uint32_t, VOX_ONE_CONV) break;
        case DT_INT64: VOX_TILES(int64_t, VOX_ONE_CONV) break;
        case DT_UINT64: VOX_TILES(uint64_t, VOX_ONE_CONV) break;
        case DT_FLOAT32: VOX_TILES(float, VOX_ONE_CONV) break;
        default: VOX_TILES(double, VOX_ONE_CONV) break;
        }
    }
#undef VOX_ONE_PLAIN
#undef VOX_ONE_CONV
#undef VOX_TILES
    return bad_ == INT64_MAX ? -1 : bad_;
}

/* Header, geometry and voxel bytes of path, for the readers below. */
static int open_vox(const char *path, nifti_image **nim, lm_nifti_geom *g, vox_bytes *b,
                    vox_conv *cv, int mode)
{
    raw_geom raw;
    memset(b, 0, sizeof *b);
    if (open_nim(path, 0, nim, &raw) < 0)
        return -1;
    if (fill_geom(*nim, &raw, g) < 0)
        goto fail;
    if (!supported_type((*nim)->datatype)) {
        lm_error_set("unsupported NIfTI datatype %d (%s); only real scalar types are read",
                     (*nim)->datatype, nifti_datatype_string((*nim)->datatype));
        goto fail;
    }
    if (vox_bytes_load(*nim, b) < 0)
        goto fail;
    double slope = (*nim)->scl_slope, inter = (*nim)->scl_inter;
    cv->labels = mode == LM_NII_LABELS;
    cv->scale = slope != 0 && isfinite(slope) && isfinite(inter) && !(slope == 1 && inter == 0);
    cv->slope = slope;
    cv->inter = inter;
    return 0;
fail:
    nifti_image_free(*nim);
    *nim = NULL;
    return -1;
}

static int bad_label(const lm_nifti_geom *g, int dt, const void *s, int64_t bad,
                     const vox_conv *cv)
{
    const int64_t D = g->dims[0], H = g->dims[1], i = bad % (D * H * g->dims[2]);
    return lm_error_set("label map has a non-integer value %g at voxel (%lld,%lld,%lld)",
                        vox_value(dt, s, bad, cv), (long long)(i % D), (long long)(i / D % H),
                        (long long)(i / (D * H)));
}

int lm_nifti_read(const char *path, int mode, lm_tensor *t, lm_nifti_geom *g)
{
    nifti_image *nim;
    lm_nifti_geom gl;
    vox_bytes b;
    vox_conv cv;
    memset(t, 0, sizeof *t);
    if (!g)
        g = &gl;
    if (open_vox(path, &nim, g, &b, &cv, mode) < 0)
        return -1;
    int64_t D = g->dims[0], H = g->dims[1], W = g->dims[2], C = g->dims[3];
    int64_t shape4[4] = {C, D, H, W};
    const int64_t *shape = g->ndim == 4 ? shape4 : shape4 + 1;
    int rc = -1;
    if (vox_tensor(t, mode == LM_NII_LABELS ? LM_I32 : LM_F32, g->ndim, shape) == 0) {
        int64_t bad = vox_transpose(t->data, nim->datatype, b.p, C, D, H, W, &cv);
        rc = bad < 0 ? 0 : bad_label(g, nim->datatype, b.p, bad, &cv);
    }
    if (rc < 0)
        lm_tensor_free(t);
    vox_bytes_free(&b);
    nifti_image_free(nim);
    return rc;
}

int lm_nifti_map(const char *path, int mode, lm_nifti_mapped *m, lm_nifti_geom *g)
{
    nifti_image *nim;
    lm_nifti_geom gl;
    vox_bytes b;
    vox_conv cv;
    memset(m, 0, sizeof *m);
    if (!g)
        g = &gl;
    if (open_vox(path, &nim, g, &b, &cv, mode) < 0)
        return -1;
    int64_t shape4[4] = {g->dims[3], g->dims[0], g->dims[1], g->dims[2]};
    const int64_t *shape = g->ndim == 4 ? shape4 : shape4 + 1;
    const lm_dtype dt = mode == LM_NII_LABELS ? LM_I32 : LM_F32;
    int rc = -1;
    if (!cv.scale && nim->datatype == (mode == LM_NII_LABELS ? DT_INT32 : DT_FLOAT32)) {
        /* as stored: keep the mapping, or the buffer read */
        rc = lm_tensor_wrap(&m->t, "", dt, g->ndim, shape, (void *)b.p);
        if (rc == 0 && b.map) {
            m->map = b.map;
            m->maplen = b.maplen;
            b.map = NULL;
        } else if (rc == 0) {
            m->t.owns = 1;
            b.buf = NULL;
        }
    } else if (vox_tensor(&m->t, dt, g->ndim, shape) == 0) {
        int64_t bad = vox_convert(m->t.data, nim->datatype, b.p, (int64_t)nim->nvox, &cv);
        rc = bad < 0 ? 0 : bad_label(g, nim->datatype, b.p, bad, &cv);
    }
    if (rc < 0)
        lm_nifti_unmap(m);
    vox_bytes_free(&b);
    nifti_image_free(nim);
    return rc;
}

void lm_nifti_unmap(lm_nifti_mapped *m)
{
    if (!m)
        return;
    if (m->map)
        munmap(m->map, m->maplen);
    lm_tensor_free(&m->t);
    memset(m, 0, sizeof *m);
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
    const size_t es = lm_dtype_size(t->dtype);
    /* Without LM_NII_FILE_ORDER the voxels are transposed into the file's order a slab of
     * k-planes at a time, into one reused buffer of about 4 MiB:
     * dst[i + D*(j + H*(k - k0))] = src[((c*D + i)*H + j)*W + k] for k0 <= k < k1. */
    const int64_t plane = D * H, kb_max = plane * (int64_t)es >= ((int64_t)4 << 20) ? 1
                                       : ((int64_t)4 << 20) / (plane * (int64_t)es);
    const int64_t kb = kb_max < W ? kb_max : W;
    if (!(flags & LM_NII_FILE_ORDER) && t->nbytes) {
        buf = malloc((size_t)(kb * plane) * es);
        if (!buf) {
            lm_error_set("out of memory");
            goto done;
        }
    }
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
    /* the header (nifticlib), then the voxels straight after it, checking every write */
    znzFile fp = nifti_image_write_hdr_img(nim, 2, "wb");
    int ok = !znz_isnull(fp);
    if (ok && (flags & LM_NII_FILE_ORDER)) {
        ok = znzwrite(t->data, 1, t->nbytes, fp) == t->nbytes;
    } else if (ok) {
        for (int64_t c = 0; ok && c < C; c++)
            for (int64_t k0 = 0; ok && k0 < W; k0 += kb) {
                const int64_t k1 = k0 + kb < W ? k0 + kb : W;
                /* (i, k) tiles of 32 per j, reading k and writing i contiguously */
#define LM_TRANSPOSE_OUT(T)                                                                       \
    do {                                                                                          \
        const T *src = (const T *)t->data;                                                        \
        T *dst = (T *)buf;                                                                        \
        _Pragma("omp parallel for schedule(static) if ((k1 - k0) * plane >= 65536)")             \
        for (int64_t j = 0; j < H; j++)                                                           \
            for (int64_t i0 = 0; i0 < D; i0 += 32)                                                \
                for (int64_t kt = k0; kt < k1; kt += 32) {                                        \
                    const int64_t i1 = i0 + 32 < D ? i0 + 32 : D;                                 \
                    const int64_t kt1 = kt + 32 < k1 ? kt + 32 : k1;                              \
                    for (int64_t k = kt; k < kt1; k++) {                                          \
                        T *d = dst + D * (j + H * (k - k0));                                      \
                        const T *s = src + (c * D * H + j) * W + k;                               \
                        for (int64_t i = i0; i < i1; i++)                                         \
                            d[i] = s[i * H * W];                                                  \
                    }                                                                             \
                }                                                                                 \
    } while (0)
                switch (es) {
                case 1: LM_TRANSPOSE_OUT(uint8_t); break;
                case 2: LM_TRANSPOSE_OUT(uint16_t); break;
                case 4: LM_TRANSPOSE_OUT(uint32_t); break;
                default: LM_TRANSPOSE_OUT(uint64_t); break;
                }
#undef LM_TRANSPOSE_OUT
                const size_t nb = (size_t)((k1 - k0) * plane) * es;
                ok = znzwrite(buf, 1, nb, fp) == nb;
            }
    }
    if (!znz_isnull(fp) && znzclose(fp) != 0)
        ok = 0;
    /* nifticlib reports write errors only on stderr, so check the result as well: a
     * compressed file is read back whole; an uncompressed one must have its header and
     * exactly its size. */
    int gz = nifti_is_gzfile(tmp);
    back = ok ? nifti_image_read(tmp, gz) : NULL;
    unmute_stderr(saved);
    struct stat st;
    ok = ok && back && back->nvox == nim->nvox && back->datatype == dt &&
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
    nifti_image_free(nim);
    nifti_image_free(back);
    free(buf);
    return rc;
}
