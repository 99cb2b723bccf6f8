/* cli.c — messages, number parsing, option tables and progress (see lm_cli.h). */
#include "lm_cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *progname = "lm";
int lm_verbose;

void lm_cli_init(const char *name)
{
    const char *slash = strrchr(name, '/');
    progname = slash ? slash + 1 : name;
    signal(SIGPIPE, SIG_IGN);
    const char *th = getenv("LM_THREADS");
    long n;
    if (th && *th) {
        if (lm_parse_long(th, 1, 4096, &n) < 0)
            lm_warn("LM_THREADS='%s' is not a thread count; ignored", th);
#ifdef _OPENMP
        else
            omp_set_num_threads((int)n);
#endif
    }
}

const char *lm_progname(void) { return progname; }

static void vmsg(const char *pre, const char *fmt, va_list ap)
{
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "%s: %s%s\n", progname, pre, line);
}

void lm_msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
}

void lm_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("warning: ", fmt, ap);
    va_end(ap);
}

void lm_info(const char *fmt, ...)
{
    if (lm_verbose < 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
}

void lm_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
    exit(code);
}

void lm_die_error(const char *what) { lm_die(LM_EXIT_FAIL, "%s: %s", what, lm_error()); }

/* ---- numbers ---- */

int lm_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    if (!s || !*s)
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int lm_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    if (!s || !*s)
        return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int split(const char *s, char sep, int cap, char (*parts)[64])
{
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *q = strchr(p, sep);
        size_t k = q ? (size_t)(q - p) : strlen(p);
        if (n >= cap || k == 0 || k >= 64)
            return -1;
        memcpy(parts[n], p, k);
        parts[n++][k] = '\0';
        if (!q)
            return n;
        p = q + 1;
    }
}

int lm_parse_long_list(const char *s, char sep, long lo, long hi, long *out, int *n)
{
    int cap = *n > 0 ? *n : 1;
    char(*parts)[64] = malloc((size_t)cap * sizeof *parts);
    if (!parts)
        return -1;
    int k = split(s ? s : "", sep, cap, parts);
    for (int i = 0; i < k; i++)
        if (lm_parse_long(parts[i], lo, hi, &out[i]) < 0)
            k = -1;
    free(parts);
    if (k < 0)
        return -1;
    *n = k;
    return 0;
}

int lm_parse_double_list(const char *s, char sep, double *out, int *n)
{
    int cap = *n > 0 ? *n : 1;
    char(*parts)[64] = malloc((size_t)cap * sizeof *parts);
    if (!parts)
        return -1;
    int k = split(s ? s : "", sep, cap, parts);
    for (int i = 0; i < k; i++)
        if (lm_parse_double(parts[i], -HUGE_VAL, HUGE_VAL, &out[i]) < 0)
            k = -1;
    free(parts);
    if (k < 0)
        return -1;
    *n = k;
    return 0;
}

/* ---- options ---- */

void lm_cli_usage(FILE *fp, const lm_cli_spec *spec)
{
    fprintf(fp, "Usage: %s %s\n%s\n\nOptions:\n", progname, spec->synopsis, spec->summary);
    for (const lm_option *o = spec->opts; o->lng; o++) {
        char left[96];
        int k = snprintf(left, sizeof left, "  %c%c%s--%s", o->shrt ? '-' : ' ',
                         o->shrt ? o->shrt : ' ', o->shrt ? ", " : "  ", o->lng);
        if (o->arg)
            snprintf(left + k, sizeof left - (size_t)k, " %s", o->arg);
        fprintf(fp, "%-30s %s\n", left, o->help);
    }
    if (spec->epilogue)
        fprintf(fp, "\n%s\n", spec->epilogue);
}

void lm_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg("", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information.\n", progname);
    exit(LM_EXIT_USAGE);
}

int lm_cli_next(int argc, char **argv, const lm_cli_spec *spec, const char **arg)
{
    enum { MAXO = 64 };
    struct option lo[MAXO + 1];
    char so[3 * MAXO + 3];
    int n = 0, k = 0;
    so[k++] = ':'; /* report a missing argument as ':' */
    for (const lm_option *o = spec->opts; o->lng && n < MAXO; o++, n++) {
        lo[n].name = o->lng;
        lo[n].has_arg = o->arg ? required_argument : no_argument;
        lo[n].flag = NULL;
        lo[n].val = 256 + n;
        if (o->shrt) {
            so[k++] = (char)o->shrt;
            if (o->arg)
                so[k++] = ':';
        }
    }
    memset(&lo[n], 0, sizeof lo[n]);
    so[k] = '\0';
    opterr = 0;
    int c = getopt_long(argc, argv, so, lo, NULL);
    *arg = optarg;
    if (c == -1)
        return -1;
    if (c == '?') {
        if (optopt && optopt < 256)
            lm_usage_error("unknown option '-%c'", optopt);
        lm_usage_error("unknown option '%s'", argv[optind - 1]);
    }
    if (c == ':') {
        if (optopt >= 256)
            lm_usage_error("option '--%s' needs an argument", spec->opts[optopt - 256].lng);
        lm_usage_error("option '-%c' needs an argument", optopt);
    }
    int idx = -1;
    if (c >= 256)
        idx = c - 256;
    else
        for (int i = 0; i < n; i++)
            if (spec->opts[i].shrt == c)
                idx = i;
    if (idx < 0)
        lm_usage_error("unknown option");
    if (strcmp(spec->opts[idx].lng, "help") == 0) {
        lm_cli_usage(stdout, spec);
        exit(fflush(stdout) == 0 ? LM_EXIT_OK : LM_EXIT_FAIL);
    }
    if (strcmp(spec->opts[idx].lng, "version") == 0) {
        printf("%s (llm-morph) %s\n", progname, LM_VERSION);
        exit(fflush(stdout) == 0 ? LM_EXIT_OK : LM_EXIT_FAIL);
    }
    return idx;
}

/* ---- progress ---- */

double lm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void lm_progress_start(lm_progress *p, const char *what, int64_t total, const char *unit)
{
    memset(p, 0, sizeof *p);
    p->what = what;
    p->unit = unit ? unit : "";
    p->total = total;
    p->t0 = p->last = lm_now();
    p->tty = isatty(STDERR_FILENO);
    p->enabled = lm_verbose >= 0;
}

static void fmt_time(char *buf, size_t cap, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, cap, "?");
    else if (s < 3600)
        snprintf(buf, cap, "%d:%02d", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, cap, "%dh%02d", (int)s / 3600, ((int)s % 3600) / 60);
}

static void progress_draw(lm_progress *p, double now, int final)
{
    double el = now - p->t0, rate = el > 0 ? (double)p->done / el : 0;
    char eta[32], ela[32];
    fmt_time(ela, sizeof ela, el);
    fmt_time(eta, sizeof eta, rate > 0 ? (double)(p->total - p->done) / rate : -1);
    if (p->tty) {
        char bar[31];
        int fill = p->total > 0 ? (int)(30 * p->done / p->total) : 0;
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        if (p->total > 0)
            fprintf(stderr, "\r%s: %s [%s] %lld/%lld %s %.3g %s/s ETA %s ", progname, p->what,
                    bar, (long long)p->done, (long long)p->total, p->unit, rate, p->unit, eta);
        else
            fprintf(stderr, "\r%s: %s %lld %s %.3g %s/s %s ", progname, p->what,
                    (long long)p->done, p->unit, rate, p->unit, ela);
        if (final)
            fputc('\n', stderr);
    } else if (p->total > 0) {
        fprintf(stderr, "%s: %s %lld/%lld %s (%.0f%%), %.3g %s/s, elapsed %s, ETA %s\n",
                progname, p->what, (long long)p->done, (long long)p->total, p->unit,
                100.0 * (double)p->done / (double)p->total, rate, p->unit, ela, eta);
    } else {
        fprintf(stderr, "%s: %s %lld %s, %.3g %s/s, elapsed %s\n", progname, p->what,
                (long long)p->done, p->unit, rate, p->unit, ela);
    }
    p->drawn = 1;
}

void lm_progress_update(lm_progress *p, int64_t done)
{
    p->done = done;
    if (!p->enabled)
        return;
    double now = lm_now();
    /* A terminal bar redraws often; plain lines every 10 s so logs stay short. */
    if (now - p->last >= (p->tty ? 0.2 : 10.0)) {
        p->last = now;
        progress_draw(p, now, 0);
    }
}

void lm_progress_end(lm_progress *p)
{
    if (p->enabled && (p->drawn || lm_now() - p->t0 > 2.0))
        progress_draw(p, lm_now(), 1);
}

int lm_record_add_history(lm_record *rec, int argc, char **argv)
{
    const char *old = lm_record_meta_get(rec, "history");
    size_t cap = (old ? strlen(old) + 1 : 0) + 1;
    for (int i = 0; i < argc; i++)
        cap += 2 * strlen(argv[i]) + 3;
    char *s = malloc(cap), *p = s;
    if (!s)
        return lm_error_set("out of memory");
    if (old)
        p += sprintf(p, "%s\n", old);
    for (int i = 0; i < argc; i++) {
        const char *a = i ? argv[i] : progname;
        int quote = !*a || strpbrk(a, " \t\n'\"\\$`*?;&|<>()[]{}~#!") != NULL;
        if (i)
            *p++ = ' ';
        if (quote)
            *p++ = '\'';
        for (const char *q = a; *q; q++) {
            if (*q == '\'' && quote) {
                memcpy(p, "'\\''", 4);
                p += 4;
            } else {
                *p++ = *q == '\n' ? ' ' : *q;
            }
        }
        if (quote)
            *p++ = '\'';
    }
    *p = '\0';
    int rc = lm_record_meta_set(rec, "history", s);
    free(s);
    return rc;
}
