/* lm_tensor.h — host tensors, records (named tensors + string metadata) and dtype conversion.
 *
 * A tensor is a name, a dtype, up to LM_MAX_DIMS dims and a row-major, little-endian data
 * block. `owns` says whether lm_tensor_free() releases the data. Volumes are laid out
 * [B,C,D,H,W] with W fastest; the array-axis convention relative to NIfTI is in lm_nifti.h.
 * A record is what one tensor-stream record (one safetensors document) holds.
 * This is not a device buffer: kernels/ owns those.
 */
#ifndef LM_TENSOR_H
#define LM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define LM_MAX_DIMS 8

typedef enum {
    LM_BOOL,
    LM_U8,
    LM_I8,
    LM_I16,
    LM_U16,
    LM_I32,
    LM_U32,
    LM_I64,
    LM_U64,
    LM_F16,
    LM_BF16,
    LM_F32,
    LM_F64,
    LM_DTYPE_COUNT
} lm_dtype;

typedef struct {
    char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    void *data;
    size_t nbytes;
    int owns; /* 1: lm_tensor_free() frees data */
} lm_tensor;

typedef struct {
    char *key;
    char *value;
} lm_meta_kv;

typedef struct {
    lm_tensor *t;
    int n, cap;
    lm_meta_kv *meta;
    int nmeta, capmeta;
} lm_record;

/* ---- dtypes ---- */
size_t lm_dtype_size(lm_dtype dt);
const char *lm_dtype_name(lm_dtype dt);              /* safetensors spelling: "F32", "BF16" */
int lm_dtype_from_name(const char *s, lm_dtype *out); /* 0 ok, -1 unknown */
int lm_dtype_is_float(lm_dtype dt);

/* ---- element conversion (round to nearest even; NaN stays NaN, sign kept) ---- */
uint16_t lm_f32_to_bf16(float f);
float lm_bf16_to_f32(uint16_t h);
uint16_t lm_f32_to_f16(float f);
float lm_f16_to_f32(uint16_t h);

/* ---- tensors ---- */
/* numel of a shape; returns -1 if any dim is negative or the product overflows int64 or
 * (numel * elem) overflows size_t. ndim 0 is a scalar (numel 1). */
int64_t lm_shape_numel(int ndim, const int64_t *shape);
int lm_shape_nbytes(int ndim, const int64_t *shape, lm_dtype dt, size_t *out);
int64_t lm_tensor_numel(const lm_tensor *t);
/* Allocates zeroed data of the given shape; t->owns = 1. Returns 0 or -1 (lm_error). */
int lm_tensor_alloc(lm_tensor *t, const char *name, lm_dtype dt, int ndim, const int64_t *shape);
/* Wraps caller memory without taking ownership. */
int lm_tensor_wrap(lm_tensor *t, const char *name, lm_dtype dt, int ndim, const int64_t *shape,
                   void *data);
void lm_tensor_free(lm_tensor *t); /* accepts NULL and zeroed tensors */
/* Memory for a volume about to be written in full, released with free() (contents undefined;
 * NULL when out of memory): blocks of 2 MiB and more 2 MiB aligned, their whole 2 MiB pages
 * asked for in transparent huge pages (far fewer page faults on first touch than 4 KiB pages;
 * the tail under 2 MiB stays in small pages, so a block just over a multiple of 2 MiB costs no
 * extra huge page). */
void *lm_vol_alloc(size_t bytes);
/* out = in converted to dtype dt (a new owned tensor with in's name and shape). Integer targets
 * round to nearest and saturate; NaN to integer is an error. */
int lm_tensor_convert(lm_tensor *out, const lm_tensor *in, lm_dtype dt);
int lm_tensor_copy(lm_tensor *out, const lm_tensor *in);
/* Element i of any dtype, as double. */
double lm_tensor_get(const lm_tensor *t, int64_t i);
/* "[1,1,96,80,96]" into buf. */
char *lm_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* ---- records ---- */
void lm_record_init(lm_record *r);
void lm_record_free(lm_record *r); /* frees tensors and metadata; r is re-initialised */
/* Moves *t into the record (replacing a tensor of the same name); *t is zeroed. */
int lm_record_put(lm_record *r, lm_tensor *t);
lm_tensor *lm_record_get(lm_record *r, const char *name);
const lm_tensor *lm_record_cget(const lm_record *r, const char *name);
/* Removes the named tensor and moves it to *out. Returns 0, or -1 if absent. */
int lm_record_take(lm_record *r, const char *name, lm_tensor *out);
int lm_record_meta_set(lm_record *r, const char *key, const char *value);
const char *lm_record_meta_get(const lm_record *r, const char *key);
/* Metadata holding a JSON array of numbers ("[2.0,2.0,2.0]"): fills out[0..cap-1] and returns
 * the count, 0 if the key is absent, -1 (lm_error) if the value is not such an array. */
int lm_record_meta_doubles(const lm_record *r, const char *key, double *out, int cap);
/* Writes a JSON array of numbers (%.17g, exact round trip) as metadata. */
int lm_record_meta_set_doubles(lm_record *r, const char *key, const double *v, int n);

#endif
