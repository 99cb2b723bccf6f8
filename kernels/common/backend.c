/* backend.c — the backend-independent part of the op library: the op table (names, families,
 * gradient kinds from ops.def) and the thin lm_backend_* wrappers over a backend's slots.
 * Not here: any op (kernels/cpu, kernels/cuda).
 */
#include "lm_kernels.h"

#include "io/lm_error.h"

const lm_op_info lm_op_table[LM_OP_COUNT] = {
#define LM_OP(name, family, grad) {#name, #family, #grad},
#include "ops.def"
};

void *lm_backend_alloc(lm_backend *be, size_t nbytes)
{
    void *p = be->alloc(be, nbytes);
    if (!p)
        lm_error_set("%s: cannot allocate %zu bytes", be->name, nbytes);
    return p;
}

void *lm_backend_alloc_zero(lm_backend *be, size_t nbytes)
{
    if (be->alloc_zero) {
        void *p = be->alloc_zero(be, nbytes);
        if (!p)
            lm_error_set("%s: cannot allocate %zu bytes", be->name, nbytes);
        return p;
    }
    if (nbytes % sizeof(float)) {
        lm_error_set("%s: zeroed buffers are whole floats (%zu bytes asked)", be->name, nbytes);
        return NULL;
    }
    void *p = lm_backend_alloc(be, nbytes);
    if (p && nbytes && be->fill(be, p, 0.0f, (int64_t)(nbytes / sizeof(float))) < 0) {
        be->free(be, p);
        return NULL;
    }
    return p;
}

void lm_backend_free(lm_backend *be, void *p)
{
    if (be && p)
        be->free(be, p);
}

int lm_backend_upload(lm_backend *be, void *dst, const void *host_src, size_t nbytes)
{
    return be->upload(be, dst, host_src, nbytes);
}

int lm_backend_download(lm_backend *be, void *host_dst, const void *src, size_t nbytes)
{
    return be->download(be, host_dst, src, nbytes);
}

int lm_backend_sync(lm_backend *be) { return be->sync(be); }

int lm_backend_set_threads(lm_backend *be, int n) { return be->set_threads(be, n); }

int lm_backend_check(const lm_backend *be)
{
    if (!be->alloc || !be->free || !be->upload || !be->download || !be->sync ||
        !be->set_threads)
        return lm_error_set("%s: buffer functions missing", be->name);
#define LM_OP(op, family, grad)                                                              \
    if (!be->op)                                                                               \
        return lm_error_set("%s: op %s is not implemented", be->name, #op);
#include "ops.def"
    return 0;
}
