/* lm_error.h — how the host library reports errors.
 *
 * Library functions never exit and never print. On failure they return a negative value (or
 * NULL) and leave one line of explanation in a thread-local buffer that the caller reads with
 * lm_error() and prints as `prog: PATH: reason`. The message never ends in a newline.
 */
#ifndef LM_ERROR_H
#define LM_ERROR_H

#include <stdarg.h>

#if defined(__GNUC__)
#define LM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LM_PRINTF(a, b)
#endif

/* Sets the message; always returns -1 so `return lm_error_set(...)` reads naturally. */
int lm_error_set(const char *fmt, ...) LM_PRINTF(1, 2);
int lm_error_setv(const char *fmt, va_list ap);
/* Prefixes the current message with "prefix: " (adds context on the way up). Returns -1. */
int lm_error_prefix(const char *fmt, ...) LM_PRINTF(1, 2);
const char *lm_error(void);
void lm_error_clear(void);

#endif
