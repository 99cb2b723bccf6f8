/* tensor.c — host tensors, records and dtype conversion (see lm_tensor.h).
 * Not here: file formats (safetensors.c, stream.c, nifti.c) and device memory (kernels/).
 */
#include "lm_tensor.h"

#include "lm_error.h"
#include "common/lm_kmath.h" /* kernels/common: f16/bf16 conversion (RNE) */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[LM_DTYPE_COUNT] = {
    [LM_BOOL] = {"BOOL", 1}, [LM_U8] = {"U8", 1},     [LM_I8] = {"I8", 1},
    [LM_I16] = {"I16", 2},   [LM_U16] = {"U16", 2},   [LM_I32] = {"I32", 4},
    [LM_U32] = {"U32", 4},   [LM_I64] = {"I64", 8},   [LM_U64] = {"U64", 8},
    [LM_F16] = {"F16", 2},   [LM_BF16] = {"BF16", 2}, [LM_F32] = {"F32", 4},
    [LM_F64] = {"F64", 8},
};

size_t lm_dtype_size(lm_dtype dt) { return (unsigned)dt < LM_DTYPE_COUNT ? dtypes[dt].size : 0; }

const char *lm_dtype_name(lm_dtype dt)
{
    return (unsigned)dt < LM_DTYPE_COUNT ? dtypes[dt].name : "?";
}

int lm_dtype_from_name(const char *s, lm_dtype *out)
{
    for (int i = 0; i < LM_DTYPE_COUNT; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (lm_dtype)i;
            return 0;
        }
    return -1;
}

int lm_dtype_is_float(lm_dtype dt)
{
    return dt == LM_F16 || dt == LM_BF16 || dt == LM_F32 || dt == LM_F64;
}

/* ---- half-precision conversion ----------------------------------------------------------- */

/* One implementation of the per-element maths for the host library and both backends. */
uint16_t lm_f32_to_bf16(float f) { return lm_k_f32_to_bf16(f); }
float lm_bf16_to_f32(uint16_t h) { return lm_k_bf16_to_f32(h); }
uint16_t lm_f32_to_f16(float f) { return lm_k_f32_to_f16(f); }
float lm_f16_to_f32(uint16_t h) { return lm_k_f16_to_f32(h); }

/* ---- shapes and tensors ------------------------------------------------------------------ */

int64_t lm_shape_numel(int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > LM_MAX_DIMS)
        return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

int lm_shape_nbytes(int ndim, const int64_t *shape, lm_dtype dt, size_t *out)
{
    int64_t n = lm_shape_numel(ndim, shape);
    size_t es = lm_dtype_size(dt);
    if (n < 0 || es == 0)
        return lm_error_set("invalid shape or dtype");
    if ((uint64_t)n > SIZE_MAX / es)
        return lm_error_set("tensor size overflows");
    *out = (size_t)n * es;
    return 0;
}

int64_t lm_tensor_numel(const lm_tensor *t) { return lm_shape_numel(t->ndim, t->shape); }

char *lm_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, k < cap ? cap - k : 0, "[");
    for (int i = 0; i < ndim; i++)
        k += (size_t)snprintf(buf + k, k < cap ? cap - k : 0, "%s%lld", i ? "," : "",
                              (long long)shape[i]);
    snprintf(buf + k, k < cap ? cap - k : 0, "]");
    return buf;
}

static int tensor_set_header(lm_tensor *t, const char *name, lm_dtype dt, int ndim,
                             const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    if ((unsigned)dt >= LM_DTYPE_COUNT || ndim < 0 || ndim > LM_MAX_DIMS)
        return lm_error_set("invalid tensor dtype or rank");
    if (lm_shape_nbytes(ndim, shape, dt, &t->nbytes) < 0)
        return -1;
    t->name = strdup(name ? name : "");
    if (!t->name)
        return lm_error_set("out of memory");
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    return 0;
}

int lm_tensor_alloc(lm_tensor *t, const char *name, lm_dtype dt, int ndim, const int64_t *shape)
{
    if (tensor_set_header(t, name, dt, ndim, shape) < 0)
        return -1;
    size_t nbytes = t->nbytes;
    t->data = calloc(nbytes ? nbytes : 1, 1);
    if (!t->data) {
        free(t->name);
        memset(t, 0, sizeof *t);
        return lm_error_set("out of memory allocating tensor '%s' (%zu bytes)", name ? name : "",
                            nbytes);
    }
    t->owns = 1;
    return 0;
}

int lm_tensor_wrap(lm_tensor *t, const char *name, lm_dtype dt, int ndim, const int64_t *shape,
                   void *data)
{
    if (tensor_set_header(t, name, dt, ndim, shape) < 0)
        return -1;
    t->data = data;
    t->owns = 0;
    return 0;
}

void *lm_vol_alloc(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge)
        return malloc(bytes ? bytes : 1);
    if (bytes > SIZE_MAX - huge)
        return NULL;
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge); /* a multiple, as C11 asks */
#ifdef MADV_HUGEPAGE
    if (p)
        madvise(p, bytes / huge * huge, MADV_HUGEPAGE); /* advice: where it fails, small pages */
#endif
    return p;
}

void lm_tensor_free(lm_tensor *t)
{
    if (!t)
        return;
    if (t->owns)
        free(t->data);
    free(t->name);
    memset(t, 0, sizeof *t);
}

int lm_tensor_copy(lm_tensor *out, const lm_tensor *in)
{
    if (lm_tensor_alloc(out, in->name, in->dtype, in->ndim, in->shape) < 0)
        return -1;
    if (in->nbytes)
        memcpy(out->data, in->data, in->nbytes);
    return 0;
}

double lm_tensor_get(const lm_tensor *t, int64_t i)
{
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * lm_dtype_size(t->dtype);
    switch (t->dtype) {
    case LM_BOOL: return *p ? 1.0 : 0.0;
    case LM_U8: return *p;
    case LM_I8: { int8_t v; memcpy(&v, p, 1); return v; }
    case LM_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case LM_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case LM_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case LM_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case LM_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    case LM_U64: { uint64_t v; memcpy(&v, p, 8); return (double)v; }
    case LM_F16: { uint16_t v; memcpy(&v, p, 2); return lm_f16_to_f32(v); }
    case LM_BF16: { uint16_t v; memcpy(&v, p, 2); return lm_bf16_to_f32(v); }
    case LM_F32: { float v; memcpy(&v, p, 4); return v; }
    case LM_F64: { double v; memcpy(&v, p, 8); return v; }
    default: return NAN;
    }
}

/* Integer elements exactly (64-bit values do not survive a trip through double). */
static void int_get(const lm_tensor *t, int64_t i, int64_t *s, uint64_t *u, int *is_u)
{
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * lm_dtype_size(t->dtype);
    *is_u = 0;
    if (t->dtype == LM_U64) {
        memcpy(u, p, 8);
        *is_u = 1;
    } else if (t->dtype == LM_I64) {
        memcpy(s, p, 8);
    } else {
        *s = (int64_t)lm_tensor_get(t, i);
    }
}

static void int_range(lm_dtype dt, int64_t *lo, uint64_t *hi)
{
    switch (dt) {
    case LM_BOOL: *lo = 0; *hi = 1; break;
    case LM_U8: *lo = 0; *hi = UINT8_MAX; break;
    case LM_I8: *lo = INT8_MIN; *hi = INT8_MAX; break;
    case LM_I16: *lo = INT16_MIN; *hi = INT16_MAX; break;
    case LM_U16: *lo = 0; *hi = UINT16_MAX; break;
    case LM_I32: *lo = INT32_MIN; *hi = INT32_MAX; break;
    case LM_U32: *lo = 0; *hi = UINT32_MAX; break;
    case LM_I64: *lo = INT64_MIN; *hi = INT64_MAX; break;
    default: *lo = 0; *hi = UINT64_MAX; break;
    }
}

static void int_put(void *dst, lm_dtype dt, int64_t s, uint64_t u, int is_u)
{
    int64_t lo;
    uint64_t hi;
    int_range(dt, &lo, &hi);
    /* Saturate into the target range. */
    uint64_t uv;
    int neg = !is_u && s < 0;
    if (neg) {
        if (s < lo)
            s = lo;
        uv = (uint64_t)s;
    } else {
        uv = is_u ? u : (uint64_t)s;
        if (uv > hi)
            uv = hi;
    }
    if (dt == LM_BOOL)
        uv = (neg || uv) ? 1 : 0;
    switch (lm_dtype_size(dt)) {
    case 1: { uint8_t v = (uint8_t)uv; memcpy(dst, &v, 1); break; }
    case 2: { uint16_t v = (uint16_t)uv; memcpy(dst, &v, 2); break; }
    case 4: { uint32_t v = (uint32_t)uv; memcpy(dst, &v, 4); break; }
    default: memcpy(dst, &uv, 8); break;
    }
}

int lm_tensor_convert(lm_tensor *out, const lm_tensor *in, lm_dtype dt)
{
    if (lm_tensor_alloc(out, in->name, dt, in->ndim, in->shape) < 0)
        return -1;
    int64_t n = lm_tensor_numel(in);
    size_t es = lm_dtype_size(dt);
    unsigned char *o = out->data;
    int src_int = !lm_dtype_is_float(in->dtype), dst_int = !lm_dtype_is_float(dt);
    if (in->dtype == dt) {
        memcpy(out->data, in->data, in->nbytes);
        return 0;
    }
    if (in->dtype == LM_I32 && (dt == LM_U8 || dt == LM_I16)) { /* label maps: saturate */
        const int32_t *v = in->data;
        for (int64_t i = 0; i < n; i++) {
            int32_t x = v[i];
            if (dt == LM_U8)
                ((uint8_t *)o)[i] = (uint8_t)(x < 0 ? 0 : x > 255 ? 255 : x);
            else
                ((int16_t *)o)[i] = (int16_t)(x < -32768 ? -32768 : x > 32767 ? 32767 : x);
        }
        return 0;
    }
    for (int64_t i = 0; i < n; i++) {
        unsigned char *d = o + (size_t)i * es;
        if (src_int && dst_int) {
            int64_t s = 0;
            uint64_t u = 0;
            int is_u;
            int_get(in, i, &s, &u, &is_u);
            int_put(d, dt, s, u, is_u);
            continue;
        }
        double v = lm_tensor_get(in, i);
        if (dst_int) {
            if (isnan(v)) {
                lm_tensor_free(out);
                return lm_error_set("tensor '%s': NaN cannot be converted to %s", in->name,
                                    lm_dtype_name(dt));
            }
            double r = nearbyint(v);
            if (r < -9.2233720368547758e18)
                int_put(d, dt, INT64_MIN, 0, 0);
            else if (r >= 1.8446744073709552e19)
                int_put(d, dt, 0, UINT64_MAX, 1);
            else if (r >= 9.2233720368547758e18)
                int_put(d, dt, 0, (uint64_t)r, 1);
            else
                int_put(d, dt, (int64_t)r, 0, 0);
            continue;
        }
        switch (dt) {
        case LM_F16: { uint16_t h = lm_f32_to_f16((float)v); memcpy(d, &h, 2); break; }
        case LM_BF16: { uint16_t h = lm_f32_to_bf16((float)v); memcpy(d, &h, 2); break; }
        case LM_F32: { float f = (float)v; memcpy(d, &f, 4); break; }
        default: memcpy(d, &v, 8); break;
        }
    }
    return 0;
}

/* ---- records ----------------------------------------------------------------------------- */

void lm_record_init(lm_record *r) { memset(r, 0, sizeof *r); }

void lm_record_free(lm_record *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n; i++)
        lm_tensor_free(&r->t[i]);
    for (int i = 0; i < r->nmeta; i++) {
        free(r->meta[i].key);
        free(r->meta[i].value);
    }
    free(r->t);
    free(r->meta);
    lm_record_init(r);
}

static int record_index(const lm_record *r, const char *name)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->t[i].name, name) == 0)
            return i;
    return -1;
}

int lm_record_put(lm_record *r, lm_tensor *t)
{
    int i = record_index(r, t->name);
    if (i >= 0) {
        lm_tensor_free(&r->t[i]);
        r->t[i] = *t;
        memset(t, 0, sizeof *t);
        return 0;
    }
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 8;
        lm_tensor *nt = realloc(r->t, (size_t)cap * sizeof *nt);
        if (!nt)
            return lm_error_set("out of memory");
        r->t = nt;
        r->cap = cap;
    }
    r->t[r->n++] = *t;
    memset(t, 0, sizeof *t);
    return 0;
}

lm_tensor *lm_record_get(lm_record *r, const char *name)
{
    int i = record_index(r, name);
    return i < 0 ? NULL : &r->t[i];
}

const lm_tensor *lm_record_cget(const lm_record *r, const char *name)
{
    int i = record_index(r, name);
    return i < 0 ? NULL : &r->t[i];
}

int lm_record_take(lm_record *r, const char *name, lm_tensor *out)
{
    int i = record_index(r, name);
    if (i < 0)
        return lm_error_set("no tensor '%s' in record", name);
    *out = r->t[i];
    memmove(&r->t[i], &r->t[i + 1], (size_t)(r->n - i - 1) * sizeof *r->t);
    r->n--;
    return 0;
}

int lm_record_meta_set(lm_record *r, const char *key, const char *value)
{
    char *v = strdup(value);
    if (!v)
        return lm_error_set("out of memory");
    for (int i = 0; i < r->nmeta; i++)
        if (strcmp(r->meta[i].key, key) == 0) {
            free(r->meta[i].value);
            r->meta[i].value = v;
            return 0;
        }
    if (r->nmeta == r->capmeta) {
        int cap = r->capmeta ? r->capmeta * 2 : 8;
        lm_meta_kv *nm = realloc(r->meta, (size_t)cap * sizeof *nm);
        if (!nm) {
            free(v);
            return lm_error_set("out of memory");
        }
        r->meta = nm;
        r->capmeta = cap;
    }
    r->meta[r->nmeta].key = strdup(key);
    if (!r->meta[r->nmeta].key) {
        free(v);
        return lm_error_set("out of memory");
    }
    r->meta[r->nmeta++].value = v;
    return 0;
}

const char *lm_record_meta_get(const lm_record *r, const char *key)
{
    for (int i = 0; i < r->nmeta; i++)
        if (strcmp(r->meta[i].key, key) == 0)
            return r->meta[i].value;
    return NULL;
}
