/* lm_rng.h — a seeded, counter-based random number generator (Philox4x32-10, as in cuRAND and
 * PyTorch). The n-th number of a stream is a pure function of (seed, stream, n), computed with
 * 32-bit integer arithmetic only, so uniform integers and floats are the same on every platform
 * and can be generated in parallel in any order. Normals use Box-Muller (libm log/cos/sin).
 */
#ifndef LM_RNG_H
#define LM_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t seed;
    uint64_t stream; /* independent sub-sequence id (e.g. one per tensor) */
    uint64_t ctr;    /* next block of four 32-bit outputs */
    uint32_t buf[4];
    int have;        /* unread words in buf */
} lm_rng;

void lm_rng_init(lm_rng *r, uint64_t seed, uint64_t stream);
/* The four 32-bit words of block `ctr` (stateless). */
void lm_philox4x32(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t ctr);
uint32_t lm_rng_u32(lm_rng *r);
double lm_rng_uniform(lm_rng *r);      /* [0,1), 53 bits */
float lm_rng_uniformf(lm_rng *r);      /* [0,1), 24 bits */
double lm_rng_normal(lm_rng *r);       /* N(0,1) */
uint32_t lm_rng_below(lm_rng *r, uint32_t n); /* uniform in [0,n), unbiased */

#endif
