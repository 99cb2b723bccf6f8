/* lm_cuda.h — CUDA device discovery, callable from C. Compiled only when the build has CUDA
 * (LM_HAVE_CUDA=1); the CUDA op table of kernels/ builds on it. */
#ifndef LM_CUDA_H
#define LM_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices: 0 when there is no GPU or no driver (err says why), -1 on
 * another runtime error (err says what). */
int lm_cuda_device_count(char *err, size_t cap);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf; 0 or -1. */
int lm_cuda_device_describe(int dev, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
