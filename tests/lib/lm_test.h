/* lm_test.h — the tiny test harness every C test links (tests/lib/harness.c).
 *
 * A test file lists its cases and hands them to lm_test_run():
 *     static void t_roundtrip(void) { LM_CHECK(x == y, "x=%d y=%d", x, y); }
 *     static const lm_test_case cases[] = {{"roundtrip", t_roundtrip}, {0}};
 *     int main(int argc, char **argv) { return lm_test_run(argc, argv, cases); }
 * Each case prints "ok - <file>: <case>", "not ok - <file>: <case>: <first failure>" or
 * "skip - <file>: <case>: <why>"; tests/run-tests.sh counts those lines. Checks do not stop a
 * case. The seed (LM_TEST_SEED, default 1234) is printed with every failure.
 * Arguments: case-name substrings to run only those.
 */
#ifndef LM_TEST_H
#define LM_TEST_H

#include <stdint.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} lm_test_case;

int lm_test_run(int argc, char **argv, const lm_test_case *cases);
void lm_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* As lm_test_fail, prefixed with "check failed: COND: " (COND is not a format). */
void lm_test_failc(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void lm_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t lm_test_seed(void);
/* Path of the shared data folder (../shared from the repo root, or $LM_SHARED), or NULL when
 * absent; tests that need it skip with a message. */
const char *lm_test_shared(void);
/* A fresh scratch directory for this test program (removed at exit unless LM_KEEP_TMP). */
const char *lm_test_tmpdir(void);
/* Repository root (where tests/ lives), from LM_SRCDIR or the current directory. */
const char *lm_test_srcdir(void);

#define LM_CHECK(cond, ...)                                                                    \
    do {                                                                                       \
        if (!(cond))                                                                           \
            lm_test_failc(__FILE__, __LINE__, #cond, "" __VA_ARGS__);                          \
    } while (0)

/* |a-b| <= atol + rtol*|b| with NaN == NaN */
int lm_test_close(double a, double b, double atol, double rtol);
#define LM_CHECK_CLOSE(a, b, atol, rtol)                                                       \
    do {                                                                                       \
        double a_ = (a), b_ = (b);                                                             \
        if (!lm_test_close(a_, b_, (atol), (rtol)))                                            \
            lm_test_fail(__FILE__, __LINE__, "%s = %.9g, expected %s = %.9g", #a, a_, #b, b_); \
    } while (0)

#endif
