/* lm_cuda.h — the CUDA backend's public entry points, callable from C: device discovery for
 * --device, and the backend table (the op slots of lm_kernels.h on one GPU). Compiled only
 * when the build has CUDA (LM_HAVE_CUDA=1); C files include it under `#if LM_HAVE_CUDA`.
 *
 * Environment read when a backend is created:
 *   LM_CUDA_SYNC=1  synchronise after every launch (an asynchronous fault is then reported by
 *                   the op that caused it, at a cost in speed);
 *   LM_CUDA_TF32=1  allow TF32 tensor cores for f32 GEMMs and convolutions (faster, ~1e-3
 *                   relative error; off by default so that f32 means f32).
 */
#ifndef LM_CUDA_H
#define LM_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_backend lm_backend;

/* Number of usable CUDA devices: 0 when there is no GPU or no driver (err says why), -1 on
 * another runtime error (err says what). */
int lm_cuda_device_count(char *err, size_t cap);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf; 0 or -1. */
int lm_cuda_device_describe(int dev, char *buf, size_t cap);

/* A CUDA backend on device `device` (its own stream, cuBLAS and cuDNN handles); NULL with
 * lm_error set when there is no such device or a library cannot start. Buffers it allocates
 * are device memory; weights uploaded once stay there across calls. Free it with
 * lm_backend_cuda_free() after freeing its buffers. */
lm_backend *lm_backend_cuda(int device);
/* Waits for the device, then releases the handles, scratch memory and the table. NULL is
 * accepted. */
void lm_backend_cuda_free(lm_backend *be);
/* Device memory now free and in total (bytes) on the backend's device; 0 or -1. */
int lm_backend_cuda_mem(lm_backend *be, size_t *free_bytes, size_t *total_bytes);

#ifdef __cplusplus
}
#endif
#endif
