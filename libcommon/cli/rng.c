/* rng.c — Philox4x32-10 (Salmon et al., SC'11), the generator behind cuRAND and PyTorch. */
#include "lm_rng.h"

#include <math.h>

void lm_philox4x32(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t ctr)
{
    uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = (uint32_t)stream,
             c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < 10; i++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void lm_rng_init(lm_rng *r, uint64_t seed, uint64_t stream)
{
    r->seed = seed;
    r->stream = stream;
    r->ctr = 0;
    r->have = 0;
}

uint32_t lm_rng_u32(lm_rng *r)
{
    if (r->have == 0) {
        lm_philox4x32(r->buf, r->seed, r->stream, r->ctr++);
        r->have = 4;
    }
    return r->buf[4 - r->have--];
}

double lm_rng_uniform(lm_rng *r)
{
    uint64_t a = lm_rng_u32(r) >> 5, b = lm_rng_u32(r) >> 6;
    return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

float lm_rng_uniformf(lm_rng *r) { return (float)(lm_rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

double lm_rng_normal(lm_rng *r)
{
    double u1 = 1.0 - lm_rng_uniform(r); /* (0,1] so log is finite */
    double u2 = lm_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint32_t lm_rng_below(lm_rng *r, uint32_t n)
{
    if (n <= 1)
        return 0;
    uint32_t lim = (uint32_t)(-n) % n; /* reject the low 2^32 mod n values */
    for (;;) {
        uint32_t x = lm_rng_u32(r);
        if (x >= lim)
            return x % n;
    }
}
