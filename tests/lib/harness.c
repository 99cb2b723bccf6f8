/* harness.c — see lm_test.h. */
#include "lm_test.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int case_failed, case_skipped;
static char first_msg[1024], skip_msg[512];
static const char *prog = "test";
static char tmpdir[512];
static pid_t tmp_owner;

uint64_t lm_test_seed(void)
{
    const char *s = getenv("LM_TEST_SEED");
    return s ? strtoull(s, NULL, 10) : 1234;
}

void lm_test_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!case_failed)
        snprintf(first_msg, sizeof first_msg, "%s:%d: %s (seed %llu)", file, line, msg,
                 (unsigned long long)lm_test_seed());
    if (case_failed < 5)
        fprintf(stderr, "  %s:%d: %s\n", file, line, msg);
    case_failed++;
}

void lm_test_failc(const char *file, int line, const char *cond, const char *fmt, ...)
{
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lm_test_fail(file, line, "check failed: %s%s%s", cond, *msg ? ": " : "", msg);
}

void lm_test_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(skip_msg, sizeof skip_msg, fmt, ap);
    va_end(ap);
    case_skipped = 1;
}

int lm_test_close(double a, double b, double atol, double rtol)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b))
        return a == b;
    return fabs(a - b) <= atol + rtol * fabs(b);
}

const char *lm_test_srcdir(void)
{
    const char *s = getenv("LM_SRCDIR");
    return s && *s ? s : ".";
}

const char *lm_test_shared(void)
{
    static char path[1024];
    const char *s = getenv("LM_SHARED");
    struct stat st;
    if (s && *s)
        snprintf(path, sizeof path, "%s", s);
    else
        snprintf(path, sizeof path, "%s/../shared", lm_test_srcdir());
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? path : NULL;
}

static void rm_tmp(void)
{
    if (tmpdir[0] && getpid() == tmp_owner && !getenv("LM_KEEP_TMP")) { /* not in children */
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "%s: could not remove %s\n", prog, tmpdir);
    }
}

const char *lm_test_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/lmtest.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(1);
        }
        tmp_owner = getpid();
        atexit(rm_tmp);
    }
    return tmpdir;
}

int lm_test_run(int argc, char **argv, const lm_test_case *cases)
{
    int failed = 0;
    const char *slash = strrchr(argv[0], '/');
    prog = slash ? slash + 1 : argv[0];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (const lm_test_case *c = cases; c->name; c++) {
        int want = argc < 2;
        for (int i = 1; i < argc; i++)
            if (strstr(c->name, argv[i]))
                want = 1;
        if (!want)
            continue;
        case_failed = case_skipped = 0;
        first_msg[0] = skip_msg[0] = '\0';
        c->fn();
        if (case_failed) {
            printf("not ok - %s: %s: %s\n", prog, c->name, first_msg);
            failed++;
        } else if (case_skipped) {
            printf("skip - %s: %s: %s\n", prog, c->name, skip_msg);
        } else {
            printf("ok - %s: %s\n", prog, c->name);
        }
    }
    return failed ? 1 : 0;
}
