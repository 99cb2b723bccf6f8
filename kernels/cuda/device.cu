/* device.cu — CUDA device discovery for --device (see lm_cuda.h). Every runtime call is
 * checked; "no device" and "no driver" are answers, not failures. */
#include "lm_cuda.h"

#include <cstdio>
#include <cuda_runtime.h>

extern "C" int lm_cuda_device_count(char *err, size_t cap)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess)
        return n;
    std::snprintf(err, cap, "%s", cudaGetErrorString(e));
    (void)cudaGetLastError(); /* clear the sticky-free error state */
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
        return 0;
    return -1;
}

extern "C" int lm_cuda_device_describe(int dev, char *buf, size_t cap)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess) {
        std::snprintf(buf, cap, "%s", cudaGetErrorString(e));
        return -1;
    }
    std::snprintf(buf, cap, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                  (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}
