/* error.c — the thread-local error line of the host library (see lm_error.h). */
#include "lm_error.h"

#include <stdio.h>
#include <string.h>

#define LM_ERROR_CAP 1024
static _Thread_local char err_buf[LM_ERROR_CAP];

int lm_error_setv(const char *fmt, va_list ap)
{
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    /* One line only: fold any newline a caller let through. */
    for (char *p = err_buf; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return -1;
}

int lm_error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lm_error_setv(fmt, ap);
    va_end(ap);
    return -1;
}

int lm_error_prefix(const char *fmt, ...)
{
    char line[2 * LM_ERROR_CAP + 2];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line, LM_ERROR_CAP, fmt, ap);
    va_end(ap);
    if (k < 0)
        k = 0;
    if (k >= LM_ERROR_CAP)
        k = LM_ERROR_CAP - 1;
    memcpy(line + k, ": ", 2);
    memcpy(line + k + 2, err_buf, sizeof err_buf);
    memcpy(err_buf, line, sizeof err_buf - 1);
    err_buf[sizeof err_buf - 1] = '\0';
    return -1;
}

const char *lm_error(void) { return err_buf[0] ? err_buf : "unknown error"; }

void lm_error_clear(void) { err_buf[0] = '\0'; }
