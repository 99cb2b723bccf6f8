/* lm_device.h — which backend a program runs on: --device cpu|cuda[:N], else $LM_DEVICE, else
 * CUDA when the build has it and a GPU is present, else the CPU. Asking for CUDA where there is
 * none is an error, never a silent fallback. */
#ifndef LM_DEVICE_H
#define LM_DEVICE_H

#include <stddef.h>

typedef enum { LM_DEV_CPU = 0, LM_DEV_CUDA = 1 } lm_device_kind;

typedef struct {
    lm_device_kind kind;
    int index; /* CUDA device ordinal */
} lm_device;

/* spec NULL: $LM_DEVICE, else the default. 0, or -1 with lm_error (a bad spelling, a build
 * without CUDA, no GPU, an index out of range). */
int lm_device_select(const char *spec, lm_device *out);
/* "cpu", "cuda:0 (NVIDIA H100 ...)" */
const char *lm_device_describe(const lm_device *d, char *buf, size_t cap);

#endif
