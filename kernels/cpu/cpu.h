/* cpu.h — internal to the CPU reference backend: the lm_cpu_<op> prototypes (from ops.def),
 * argument checks and the deterministic reduction helpers every family uses.
 *
 * Determinism rule: a reduction is split into fixed-size chunks whose partial sums (double)
 * are computed in parallel and then added in chunk order, so the bits never depend on the
 * thread count. OpenMP only parallelises over independent outputs; BLAS is never called from
 * inside a parallel region (the OpenBLAS build may be the pthread one).
 */
#ifndef LM_CPU_H
#define LM_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "common/lm_kmath.h"
#include "io/lm_error.h"
#include "lm_kernels.h"

#define LM_OP(name, family, grad) lm_op_##name##_fn lm_cpu_##name;
#include "ops.def"

/* Elements below which a loop stays serial (thread start-up costs more than the work). */
#define LM_CPU_PAR_MIN 32768
/* Fixed reduction chunk (elements); part of the numerical definition, never thread-derived. */
#define LM_CPU_CHUNK 16384

/* 64-byte aligned scratch memory; NULL with lm_error set on failure. */
void *lm_cpu_scratch(size_t nbytes);
void lm_cpu_scratch_free(void *p);

/* Row-major C = alpha·op(A)·op(B) + beta·C with bits independent of the thread count:
 * OpenBLAS runs single-threaded (OpenBLAS's own threading changes the summation order with
 * the thread count) and C is cut into fixed tiles, a function of (M, N, K) only, that OpenMP
 * threads compute independently. Must not be called from inside a parallel region. */
void lm_cpu_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc);

/* "F32", "BF16", ... without needing libcommon's tensor.o at link time */
const char *lm_cpu_dtype_name(lm_dtype dt);

/* Σ x[i] for i < n, in double, chunked (fixed order). */
double lm_cpu_sum_f32(const float *x, int64_t n);

#define LM_CPU_CHECK(cond, ...)                                                                \
    do {                                                                                       \
        if (!(cond))                                                                           \
            return lm_error_set(__VA_ARGS__);                                                  \
    } while (0)

#endif
