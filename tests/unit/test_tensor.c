/* test_tensor.c — dtypes, half-precision conversion (exhaustive), records, shapes, RNG,
 * strict number parsing. */
#include "cli/lm_cli.h"
#include "cli/lm_device.h"
#include "cli/lm_rng.h"
#include "io/lm_tensor.h"
#include "lm_test.h"
#include "lm_testutil.h"

#include <fcntl.h>
#include <unistd.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void t_dtype_names(void)
{
    for (int i = 0; i < LM_DTYPE_COUNT; i++) {
        lm_dtype d;
        LM_CHECK(lm_dtype_from_name(lm_dtype_name((lm_dtype)i), &d) == 0 && d == (lm_dtype)i,
                 "dtype %d", i);
        LM_CHECK(lm_dtype_size((lm_dtype)i) > 0, "size of %d", i);
    }
    lm_dtype d;
    LM_CHECK(lm_dtype_from_name("F8_E4M3", &d) < 0, "unknown dtype accepted");
    LM_CHECK(lm_dtype_from_name("f32", &d) < 0, "dtype names are case-sensitive");
}

/* Every half value converts to float and back to the same bits (NaNs stay NaN). */
static void t_half_roundtrip_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lm_f16_to_f32((uint16_t)h);
        uint16_t back = lm_f32_to_f16(f);
        int nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (nan ? !(isnan(f) && (back & 0x7c00) == 0x7c00 && (back & 0x3ff)) : back != h)
            bad++;
        float g = lm_bf16_to_f32((uint16_t)h);
        uint16_t bb = lm_f32_to_bf16(g);
        int bnan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        if (bnan ? !(isnan(g) && isnan(lm_bf16_to_f32(bb))) : bb != h)
            bad++;
    }
    LM_CHECK(bad == 0, "%d half values did not round-trip", bad);
}

/* Round to nearest even, checked against a double-precision reference on every float whose
 * bits step through the whole range. */
static double half_ref(double v)
{
    /* nearest representable f16 by brute force over the candidates around v */
    if (isnan(v))
        return v;
    double a = fabs(v);
    if (a >= 65520.0)
        return copysign(INFINITY, v);
    int e;
    frexp(a, &e); /* a = m * 2^e, m in [0.5,1) */
    int ex = e - 1 < -14 ? -14 : e - 1;
    double ulp = ldexp(1.0, ex - 10);
    double q = a / ulp, fl = floor(q), r;
    if (q - fl > 0.5 || (q - fl == 0.5 && fmod(fl, 2.0) != 0))
        r = (fl + 1) * ulp;
    else
        r = fl * ulp;
    return copysign(r, v);
}

static void t_f16_rne(void)
{
    int bad = 0;
    for (uint64_t u = 0; u < 0x100000000ull; u += 4099) {
        float f = bits_f((uint32_t)u);
        double want = half_ref((double)f), got = lm_f16_to_f32(lm_f32_to_f16(f));
        if (!(isnan(want) ? isnan(got) : got == want && signbit(got) == signbit(want)))
            if (bad++ < 3)
                lm_test_fail(__FILE__, __LINE__, "f16(%a) = %a, want %a", f, got, want);
    }
    /* Ties: 1 + 2^-11 is halfway between 1 and 1+2^-10 -> even (1). */
    LM_CHECK(lm_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "tie to even");
    LM_CHECK(lm_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "tie to even (up)");
    LM_CHECK(lm_f32_to_f16(65519.0f) == 0x7bff && lm_f32_to_f16(65520.0f) == 0x7c00, "overflow");
    LM_CHECK(lm_f32_to_f16(0x1p-25f) == 0 && lm_f32_to_f16(0x1.8p-25f) == 1, "subnormal ties");
}

static void t_bf16_rne(void)
{
    int bad = 0;
    for (uint64_t u = 0; u < 0x100000000ull; u += 65521) {
        float f = bits_f((uint32_t)u);
        uint16_t b = lm_f32_to_bf16(f);
        if (isnan(f)) {
            bad += !isnan(lm_bf16_to_f32(b)) || ((b >> 15) != (u >> 31));
            continue;
        }
        /* Reference: the nearer of the two truncations; ties to the even one. */
        uint32_t lo = (uint32_t)u & 0xffff0000u, hi = lo + 0x10000u;
        /* The value above the largest finite bf16 is 2^128 (it rounds to inf). */
        double vhi = (hi & 0x7fffffffu) == 0x7f800000u ? copysign(0x1p128, (double)f)
                                                        : (double)bits_f(hi);
        double dl = fabs((double)f - (double)bits_f(lo)), dh = fabs(vhi - (double)f);
        uint32_t want = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) & 1) ? hi : lo;
        if ((uint32_t)b << 16 != want && bad++ < 3)
            lm_test_fail(__FILE__, __LINE__, "bf16(%a) = %04x, want %08x", f, b, want);
    }
    LM_CHECK(bad == 0, "%d bf16 mismatches", bad);
    LM_CHECK(lm_f32_to_bf16(bits_f(0x3f808000u)) == 0x3f80, "tie to even (down)");
    LM_CHECK(lm_f32_to_bf16(bits_f(0x3f818000u)) == 0x3f82, "tie to even (up)");
    LM_CHECK(isnan(lm_bf16_to_f32(lm_f32_to_bf16(bits_f(0x7f800001u)))), "signalling NaN kept");
    LM_CHECK(lm_f32_to_bf16(-0.0f) == 0x8000, "negative zero kept");
    (void)f_bits;
}

static void t_convert(void)
{
    float src[6] = {-1.5f, 2.5f, 300.0f, -300.0f, 0.49f, 1e30f};
    int64_t shape[1] = {6};
    lm_tensor a, b, c;
    LM_CHECK(lm_tensor_wrap(&a, "a", LM_F32, 1, shape, src) == 0, "wrap");
    LM_CHECK(lm_tensor_convert(&b, &a, LM_U8) == 0, "to u8");
    const uint8_t *u = b.data;
    LM_CHECK(u[0] == 0 && u[1] == 2 && u[2] == 255 && u[3] == 0 && u[4] == 0 && u[5] == 255,
             "u8 rounding/saturation: %d %d %d %d %d %d", u[0], u[1], u[2], u[3], u[4], u[5]);
    LM_CHECK(lm_tensor_convert(&c, &a, LM_I16) == 0, "to i16");
    const int16_t *s = c.data;
    LM_CHECK(s[0] == -2 && s[1] == 2 && s[2] == 300 && s[3] == -300 && s[5] == 32767,
             "i16: %d %d %d %d %d", s[0], s[1], s[2], s[3], s[5]);
    lm_tensor_free(&b);
    lm_tensor_free(&c);
    float nanv[1] = {NAN};
    int64_t one[1] = {1};
    lm_tensor n;
    lm_tensor_wrap(&n, "n", LM_F32, 1, one, nanv);
    LM_CHECK(lm_tensor_convert(&b, &n, LM_I32) < 0, "NaN to integer must fail");
    LM_CHECK(lm_tensor_convert(&b, &n, LM_BF16) == 0 && isnan(lm_tensor_get(&b, 0)), "NaN bf16");
    lm_tensor_free(&b);
    lm_tensor_free(&n);
    /* 64-bit integers convert exactly (not through double). */
    int64_t big[2] = {INT64_MAX, INT64_MIN + 1};
    int64_t two[1] = {2};
    lm_tensor i64, u64;
    lm_tensor_wrap(&i64, "i", LM_I64, 1, two, big);
    LM_CHECK(lm_tensor_convert(&u64, &i64, LM_U64) == 0, "i64 to u64");
    uint64_t *uu = u64.data;
    LM_CHECK(uu[0] == (uint64_t)INT64_MAX && uu[1] == 0, "exact/saturating 64-bit conversion");
    lm_tensor_free(&u64);
    lm_tensor_free(&i64);
    lm_tensor_free(&a);
}

static void t_shapes(void)
{
    int64_t ok[3] = {2, 3, 4}, ovf[3] = {1ll << 40, 1ll << 30, 4}, neg[2] = {3, -1};
    size_t nb;
    LM_CHECK(lm_shape_numel(3, ok) == 24, "numel");
    LM_CHECK(lm_shape_numel(0, ok) == 1, "scalar");
    LM_CHECK(lm_shape_numel(3, ovf) < 0, "int64 overflow detected");
    LM_CHECK(lm_shape_numel(2, neg) < 0, "negative dim");
    int64_t big[2] = {1ll << 31, 1ll << 31};
    LM_CHECK(lm_shape_nbytes(2, big, LM_F64, &nb) < 0, "byte size overflow detected");
    LM_CHECK(lm_shape_numel(9, ok) < 0, "too many dims");
    lm_tensor t;
    LM_CHECK(lm_tensor_alloc(&t, "x", LM_F32, 3, ovf) < 0, "refuses overflowing alloc");
    lm_tensor_free(NULL);
}

static void t_record(void)
{
    lm_record r;
    lm_record_init(&r);
    for (int i = 0; i < 20; i++) {
        char name[16];
        int64_t shape[1] = {i};
        lm_tensor t;
        snprintf(name, sizeof name, "t%d", i);
        LM_CHECK(lm_tensor_alloc(&t, name, LM_I32, 1, shape) == 0, "alloc");
        LM_CHECK(lm_record_put(&r, &t) == 0 && t.data == NULL, "put moves ownership");
    }
    LM_CHECK(r.n == 20, "count %d", r.n);
    int64_t s5[1] = {5};
    lm_tensor t;
    lm_tensor_alloc(&t, "t3", LM_F32, 1, s5);
    lm_record_put(&r, &t);
    LM_CHECK(r.n == 20 && lm_record_get(&r, "t3")->dtype == LM_F32, "put replaces by name");
    LM_CHECK(lm_record_take(&r, "t7", &t) == 0 && r.n == 19 && !lm_record_get(&r, "t7"), "take");
    lm_tensor_free(&t);
    LM_CHECK(lm_record_take(&r, "zzz", &t) < 0, "take of absent");
    lm_record_meta_set(&r, "pair", "a");
    lm_record_meta_set(&r, "pair", "b");
    LM_CHECK(r.nmeta == 1 && strcmp(lm_record_meta_get(&r, "pair"), "b") == 0, "meta replace");
    char *argv[] = {"lm-x", "-o", "a b.lmt"};
    lm_cli_init("lm-x");
    lm_record_add_history(&r, 3, argv);
    lm_record_add_history(&r, 1, argv);
    LM_CHECK(strcmp(lm_record_meta_get(&r, "history"), "lm-x -o 'a b.lmt'\nlm-x") == 0,
             "history: %s", lm_record_meta_get(&r, "history"));
    lm_record_free(&r);
    lm_record_free(&r);
}

static void t_rng(void)
{
    /* Known answers of Philox4x32-10 from the Random123 distribution (kat_vectors). */
    uint32_t o[4];
    lm_philox4x32(o, 0, 0, 0);
    LM_CHECK(o[0] == 0x6627e8d5u && o[1] == 0xe169c58du && o[2] == 0xbc57ac4cu &&
                 o[3] == 0x9b00dbd8u,
             "KAT zero: %08x %08x %08x %08x", o[0], o[1], o[2], o[3]);
    lm_philox4x32(o, UINT64_MAX, UINT64_MAX, UINT64_MAX);
    LM_CHECK(o[0] == 0x408f276du && o[1] == 0x41c83b0eu && o[2] == 0xa20bc7c6u &&
                 o[3] == 0x6d5451fdu,
             "KAT ones: %08x %08x %08x %08x", o[0], o[1], o[2], o[3]);
    lm_philox4x32(o, 0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull);
    LM_CHECK(o[0] == 0xd16cfe09u && o[1] == 0x94fdccebu && o[2] == 0x5001e420u &&
                 o[3] == 0x24126ea1u,
             "KAT pi: %08x %08x %08x %08x", o[0], o[1], o[2], o[3]);
    lm_rng a, b, c;
    lm_rng_init(&a, 42, 7);
    lm_rng_init(&b, 42, 7);
    lm_rng_init(&c, 42, 8);
    double s = 0, s2 = 0;
    int n = 200000, same = 1, below_ok = 1;
    for (int i = 0; i < n; i++) {
        double x = lm_rng_normal(&a);
        same &= x == lm_rng_normal(&b);
        s += x;
        s2 += x * x;
        below_ok &= lm_rng_below(&c, 7) < 7;
    }
    LM_CHECK(same, "same seed, same numbers");
    LM_CHECK(fabs(s / n) < 0.01 && fabs(s2 / n - 1) < 0.02, "normal moments %g %g", s / n, s2 / n);
    LM_CHECK(below_ok, "below range");
    lm_rng_init(&a, 1, 0);
    double u = 0;
    for (int i = 0; i < 1000; i++) {
        double x = lm_rng_uniform(&a);
        LM_CHECK(x >= 0 && x < 1, "uniform range");
        u += x;
    }
    LM_CHECK(fabs(u / 1000 - 0.5) < 0.05, "uniform mean");
}

static void t_parse(void)
{
    long v;
    double d;
    LM_CHECK(lm_parse_long("42", 0, 100, &v) == 0 && v == 42, "42");
    LM_CHECK(lm_parse_long("42x", 0, 100, &v) < 0, "trailing junk");
    LM_CHECK(lm_parse_long("", 0, 100, &v) < 0, "empty");
    LM_CHECK(lm_parse_long("101", 0, 100, &v) < 0, "range");
    LM_CHECK(lm_parse_long("99999999999999999999", 0, 100, &v) < 0, "overflow");
    LM_CHECK(lm_parse_double("1e-3", 0, 1, &d) == 0 && d == 1e-3, "double");
    LM_CHECK(lm_parse_double("nan", -1e9, 1e9, &d) < 0, "nan refused");
    LM_CHECK(lm_parse_double("1.5 ", 0, 9, &d) < 0, "trailing space");
    long l[4];
    int n = 4;
    LM_CHECK(lm_parse_long_list("96x80x96", 'x', 1, 4096, l, &n) == 0 && n == 3 && l[1] == 80,
             "shape list");
    n = 4;
    LM_CHECK(lm_parse_long_list("15,,16", ',', 0, 99, l, &n) < 0, "empty item");
    n = 2;
    LM_CHECK(lm_parse_long_list("1,2,3", ',', 0, 99, l, &n) < 0, "too many items");
}

static void t_device(void)
{
    lm_device d;
    char why[256];
    unsetenv("LM_DEVICE");
    LM_CHECK(lm_device_select("cpu", &d) == 0 && d.kind == LM_DEV_CPU, "cpu");
    LM_CHECK(lm_device_select("gpu", &d) < 0 && strstr(lm_error(), "not a device"), "gpu: %s",
             lm_error());
    LM_CHECK(lm_device_select("cuda:x", &d) < 0, "cuda:x accepted");
    LM_CHECK(lm_device_select(NULL, &d) == 0, "default: %s", lm_error());
    setenv("LM_DEVICE", "tpu", 1);
    LM_CHECK(lm_device_select(NULL, &d) < 0 && strstr(lm_error(), "LM_DEVICE"), "env: %s",
             lm_error());
    unsetenv("LM_DEVICE");
    /* Asking for CUDA without a GPU is an error, never a fallback to the CPU. */
    int r = lm_device_select("cuda", &d);
    if (d.kind == LM_DEV_CUDA && r == 0)
        LM_CHECK(strlen(lm_device_describe(&d, why, sizeof why)) > 4, "describe");
    else
        LM_CHECK(r < 0 && (strstr(lm_error(), "no CUDA") || strstr(lm_error(), "CUDA backend")),
                 "cuda without a GPU: %s", lm_error());
    LM_CHECK(lm_device_select("cuda:1023", &d) < 0, "cuda:1023 accepted");
}

/* Plain periodic lines off a terminal, with rate and ETA; -q (lm_verbose < 0) silences. */
static void t_progress(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/progress.txt", lm_test_tmpdir());
    fflush(stderr);
    int saved = dup(STDERR_FILENO), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    lm_cli_init("lm-x");
    lm_verbose = 0;
    lm_progress p;
    lm_progress_start(&p, "testing", 10, "items");
    p.tty = 0;
    p.t0 -= 30; /* as if 30 s had passed */
    p.last -= 30;
    lm_progress_update(&p, 5);
    lm_progress_update(&p, 6); /* within 10 s of the last line: nothing */
    lm_progress_end(&p);
    lm_verbose = -1;
    lm_progress_start(&p, "quiet", 10, "items");
    p.tty = 0;
    p.t0 -= 30;
    p.last -= 30;
    lm_progress_update(&p, 5);
    lm_progress_end(&p);
    lm_verbose = 0;
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    char *out = lm_tu_slurp(path, NULL);
    LM_CHECK(out && strstr(out, "lm-x: testing 5/10 items (50%), ") && strstr(out, "ETA 0:30"),
             "progress line: %s", out ? out : "(none)");
    LM_CHECK(out && strstr(out, "testing 6/10 items (60%)"), "final line: %s", out ? out : "");
    LM_CHECK(out && !strstr(out, "quiet"), "-q did not silence progress");
    int lines = 0;
    for (char *c = out; c && *c; c++)
        lines += *c == '\n';
    LM_CHECK(lines == 2, "%d lines", lines);
    free(out);
}

static const lm_test_case cases[] = {
    {"device_select", t_device},
    {"progress", t_progress},
    {"dtype_names", t_dtype_names},
    {"half_roundtrip_exhaustive", t_half_roundtrip_exhaustive},
    {"f16_round_nearest_even", t_f16_rne},
    {"bf16_round_nearest_even", t_bf16_rne},
    {"convert", t_convert},
    {"shapes", t_shapes},
    {"record", t_record},
    {"rng_philox", t_rng},
    {"parse", t_parse},
    {0},
};

int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
