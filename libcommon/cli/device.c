/* device.c — backend selection (see lm_device.h). */
#include "lm_device.h"

#include "io/lm_error.h"
#include "lm_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if LM_HAVE_CUDA
#include "cuda/lm_cuda.h"
#endif

static int cuda_count(char *why, size_t cap)
{
#if LM_HAVE_CUDA
    return lm_cuda_device_count(why, cap);
#else
    snprintf(why, cap, "this build has no CUDA backend (rebuild with nvcc on PATH, or CUDA=1)");
    return 0;
#endif
}

int lm_device_select(const char *spec, lm_device *out)
{
    char why[256] = "";
    const char *from = "--device";
    if (!spec || !*spec) {
        spec = getenv("LM_DEVICE");
        from = "LM_DEVICE";
    }
    out->kind = LM_DEV_CPU;
    out->index = 0;
    if (!spec || !*spec) { /* default: a GPU when there is one */
        if (cuda_count(why, sizeof why) > 0)
            out->kind = LM_DEV_CUDA;
        return 0;
    }
    if (strcmp(spec, "cpu") == 0)
        return 0;
    if (strncmp(spec, "cuda", 4) != 0 || (spec[4] && spec[4] != ':'))
        return lm_error_set("%s: '%s' is not a device (cpu, cuda or cuda:N)", from, spec);
    long idx = 0;
    if (spec[4] == ':' && lm_parse_long(spec + 5, 0, 1023, &idx) < 0)
        return lm_error_set("%s: '%s' is not a device (cpu, cuda or cuda:N)", from, spec);
    int n = cuda_count(why, sizeof why);
    if (n < 0)
        return lm_error_set("%s: CUDA error: %s", from, why);
    if (n == 0)
        return lm_error_set("%s: %s asked for, but no CUDA device is available%s%s", from, spec,
                            why[0] ? ": " : "", why);
    if (idx >= n)
        return lm_error_set("%s: %s asked for, but there %s only %d CUDA device%s", from, spec,
                            n == 1 ? "is" : "are", n, n == 1 ? "" : "s");
    out->kind = LM_DEV_CUDA;
    out->index = (int)idx;
    return 0;
}

const char *lm_device_describe(const lm_device *d, char *buf, size_t cap)
{
    if (d->kind == LM_DEV_CPU) {
        snprintf(buf, cap, "cpu");
        return buf;
    }
#if LM_HAVE_CUDA
    char name[200];
    if (lm_cuda_device_describe(d->index, name, sizeof name) == 0) {
        snprintf(buf, cap, "cuda:%d (%s)", d->index, name);
        return buf;
    }
#endif
    snprintf(buf, cap, "cuda:%d", d->index);
    return buf;
}
