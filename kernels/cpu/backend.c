/* backend.c — the CPU reference backend's table: host memory as "device" memory, threads, and
 * the op slots (implemented in the family files of this folder).
 * Not here: any op maths.
 */
#include "cpu.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* A tensor's memory. Blocks of 2 MiB and more are mappings of their own, 2 MiB aligned and
 * asked for in transparent huge pages (MADV_HUGEPAGE: taken where the kernel's THP mode is
 * "madvise" or "always", nothing where it is "never"). Volumes, fields and activations are
 * read at scattered places -- the warp reads four rows of corners across two planes for every
 * voxel -- and with 2 MiB pages the TLB covers them: measured on the 2-core machine, in one
 * process taking turns with the same op on 4 KiB pages, the 192x160x192 warp (smooth and noise
 * fields) and enc conv1 ran 3-8% faster (the best and the median of 40-200 calls each). A
 * mapping of its own ends with the block (the page after it unmapped), so huge pages cover
 * only the whole 2 MiB inside it and a block of 2 MiB + 4 KiB costs no second huge page; and
 * when it is freed nothing of it goes back to the heap marked for huge pages. Kernels'
 * per-call scratch (lm_cpu_scratch) stays on the heap, in ordinary pages. */
#define CPU_HUGE ((size_t)2 << 20)
/* Under AddressSanitizer (make check-asan) every block comes from the heap at its exact size,
 * where ASan sees overflows and leaks: a mapping of its own, or the rounding of a heap block
 * up to 64 bytes, would hide them. */
#if defined(__SANITIZE_ADDRESS__)
#define CPU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CPU_ASAN 1
#endif
#endif
#ifndef CPU_ASAN
#define CPU_ASAN 0
#endif
static struct cpu_map {
    void *p;
    size_t len;
} *cpu_maps; /* the live mappings, for cpu_free */
static size_t cpu_nmaps, cpu_capmaps;
static pthread_mutex_t cpu_maps_lock = PTHREAD_MUTEX_INITIALIZER;

/* nbytes (>= CPU_HUGE) in a fresh, zero-filled mapping; NULL with the error set */
static void *cpu_map_alloc(size_t nbytes)
{
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    if (nbytes > SIZE_MAX - 2 * CPU_HUGE) {
        lm_error_set("cpu: cannot allocate %zu bytes", nbytes);
        return NULL;
    }
    const size_t len = (nbytes + pg - 1) / pg * pg, span = len + CPU_HUGE;
    unsigned char *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        lm_error_set("cpu: cannot allocate %zu bytes", nbytes);
        return NULL;
    }
    /* keep the 2 MiB aligned len bytes inside, unmap the rest (at least a page after) */
    unsigned char *p = (unsigned char *)(((uintptr_t)m + CPU_HUGE - 1) / CPU_HUGE * CPU_HUGE);
    if (p > m)
        munmap(m, (size_t)(p - m));
    munmap(p + len, (size_t)(m + span - (p + len)));
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE); /* advice: where it fails, ordinary pages */
#endif
    pthread_mutex_lock(&cpu_maps_lock);
    if (cpu_nmaps == cpu_capmaps) {
        const size_t cap = cpu_capmaps ? 2 * cpu_capmaps : 64;
        struct cpu_map *t = realloc(cpu_maps, cap * sizeof *t);
        if (!t) {
            pthread_mutex_unlock(&cpu_maps_lock);
            munmap(p, len);
            lm_error_set("cpu: out of memory");
            return NULL;
        }
        cpu_maps = t, cpu_capmaps = cap;
    }
    cpu_maps[cpu_nmaps++] = (struct cpu_map){p, len};
    pthread_mutex_unlock(&cpu_maps_lock);
    return p;
}

/* Unmaps p if cpu_map_alloc made it; returns whether it did */
static int cpu_map_free(void *p)
{
    pthread_mutex_lock(&cpu_maps_lock);
    for (size_t i = cpu_nmaps; i-- > 0;)
        if (cpu_maps[i].p == p) {
            const size_t len = cpu_maps[i].len;
            cpu_maps[i] = cpu_maps[--cpu_nmaps];
            pthread_mutex_unlock(&cpu_maps_lock);
            munmap(p, len);
            return 1;
        }
    pthread_mutex_unlock(&cpu_maps_lock);
    return 0;
}

static void *cpu_alloc(lm_backend *be, size_t nbytes)
{
    (void)be;
    return nbytes >= CPU_HUGE && !CPU_ASAN ? cpu_map_alloc(nbytes) : lm_cpu_scratch(nbytes);
}

/* Zeroed memory: a mapping of its own is zero-filled when first touched; in a heap block of
 * 1 MiB and more the whole pages are handed back to the kernel (MADV_DONTNEED on private
 * anonymous memory: zero-filled when next touched) and the rest cleared. So buffers never used
 * cost no page faults. */
static void *cpu_alloc_zero(lm_backend *be, size_t nbytes)
{
    if (nbytes >= CPU_HUGE && !CPU_ASAN)
        return cpu_alloc(be, nbytes);
    unsigned char *p = lm_cpu_scratch(nbytes);
    if (!p)
        return NULL;
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + pg - 1) / pg * pg, b = ((uintptr_t)p + nbytes) / pg * pg;
    if (nbytes >= (1u << 20) && b > a && madvise((void *)a, b - a, MADV_DONTNEED) == 0) {
        memset(p, 0, a - (uintptr_t)p);
        memset((void *)b, 0, (uintptr_t)p + nbytes - b);
    } else {
        memset(p, 0, nbytes);
    }
    return p;
}

static void cpu_free(lm_backend *be, void *p)
{
    (void)be;
    if (p && !cpu_map_free(p))
        free(p);
}

static int cpu_upload(lm_backend *be, void *dst, const void *src, size_t nbytes)
{
    (void)be;
    if (nbytes)
        memmove(dst, src, nbytes);
    return 0;
}

static int cpu_download(lm_backend *be, void *dst, const void *src, size_t nbytes)
{
    (void)be;
    if (nbytes)
        memmove(dst, src, nbytes);
    return 0;
}

static int cpu_sync(lm_backend *be)
{
    (void)be;
    return 0;
}

static int cpu_set_threads(lm_backend *be, int n)
{
    (void)be;
    if (n < 1)
        return lm_error_set("cpu: thread count must be at least 1 (got %d)", n);
    omp_set_num_threads(n);
    openblas_set_num_threads(1); /* see lm_cpu_sgemm */
    return 0;
}

void *lm_cpu_scratch(size_t nbytes)
{
    if (nbytes > SIZE_MAX - 63) {
        lm_error_set("cpu: cannot allocate %zu bytes", nbytes);
        return NULL;
    }
    void *p = NULL;
#if CPU_ASAN
    if (posix_memalign(&p, 64, nbytes ? nbytes : 1) != 0)
        p = NULL;
#else
    size_t sz = (nbytes + 63) / 64 * 64;
    p = aligned_alloc(64, sz ? sz : 64);
#endif
    if (!p)
        lm_error_set("cpu: cannot allocate %zu bytes", nbytes);
    return p;
}

void lm_cpu_scratch_free(void *p) { free(p); }

const char *lm_cpu_dtype_name(lm_dtype dt)
{
    static const char *const names[LM_DTYPE_COUNT] = {
        [LM_BOOL] = "BOOL", [LM_U8] = "U8",   [LM_I8] = "I8",     [LM_I16] = "I16",
        [LM_U16] = "U16",   [LM_I32] = "I32", [LM_U32] = "U32",   [LM_I64] = "I64",
        [LM_U64] = "U64",   [LM_F16] = "F16", [LM_BF16] = "BF16", [LM_F32] = "F32",
        [LM_F64] = "F64"};
    return (unsigned)dt < LM_DTYPE_COUNT ? names[dt] : "?";
}

#define TILE_M 256
#define TILE_N 512
#define SMALL_GEMM (1 << 22) /* M·N·K below which one call does it all */

void lm_cpu_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++)
                C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
        return;
    }
    const enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    if ((double)M * N * K <= SMALL_GEMM || (M <= TILE_M && N <= TILE_N)) {
        cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                    (int)ldb, beta, C, (int)ldc);
        return;
    }
    const int64_t tm = (M + TILE_M - 1) / TILE_M, tn = (N + TILE_N - 1) / TILE_N;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < tm * tn; t++) {
        int64_t m0 = (t / tn) * TILE_M, n0 = (t % tn) * TILE_N;
        int64_t mb = M - m0 < TILE_M ? M - m0 : TILE_M, nb = N - n0 < TILE_N ? N - n0 : TILE_N;
        const float *a = trans_a ? A + m0 : A + m0 * lda;
        const float *b = trans_b ? B + n0 * ldb : B + n0;
        cblas_sgemm(CblasRowMajor, ta, tb, (int)mb, (int)nb, (int)K, alpha, a, (int)lda, b,
                    (int)ldb, beta, C + m0 * ldc + n0, (int)ldc);
    }
}

double lm_cpu_sum_f32(const float *x, int64_t n)
{
    int64_t nch = (n + LM_CPU_CHUNK - 1) / LM_CPU_CHUNK;
    double small[64];
    double *part = nch <= 64 ? small : malloc((size_t)nch * sizeof *part);
    double s = 0;
    if (!part) { /* fall back to one serial pass: same chunk order, same bits */
        for (int64_t c = 0; c < nch; c++) {
            double p = 0;
            for (int64_t i = c * LM_CPU_CHUNK; i < n && i < (c + 1) * LM_CPU_CHUNK; i++)
                p += x[i];
            s += p;
        }
        return s;
    }
#pragma omp parallel for schedule(static) if (n >= LM_CPU_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        double p = 0;
        int64_t e = (c + 1) * LM_CPU_CHUNK < n ? (c + 1) * LM_CPU_CHUNK : n;
        for (int64_t i = c * LM_CPU_CHUNK; i < e; i++)
            p += x[i];
        part[c] = p;
    }
    for (int64_t c = 0; c < nch; c++)
        s += part[c];
    if (part != small)
        free(part);
    return s;
}

static lm_backend cpu_backend = {
    .name = "cpu",
    .kind = LM_BACKEND_CPU,
    .ctx = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .alloc_zero = cpu_alloc_zero,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .set_threads = cpu_set_threads,
#define LM_OP(name, family, grad) .name = lm_cpu_##name,
#include "ops.def"
};

lm_backend *lm_backend_cpu(void)
{
    static int once;
    if (!once) { /* idempotent, so a race here is harmless */
        openblas_set_num_threads(1);
        once = 1;
    }
    return &cpu_backend;
}
