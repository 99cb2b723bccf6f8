/* lm_testutil.h — helpers shared by the C tests: whole-file reads, JSON fixtures, sizes. */
#ifndef LM_TESTUTIL_H
#define LM_TESTUTIL_H

#include <cJSON.h>
#include <stddef.h>

/* Reads a whole file (NUL-terminated); NULL if unreadable. *len may be NULL. */
char *lm_tu_slurp(const char *path, size_t *len);
int lm_tu_write(const char *path, const void *data, size_t len);
/* Parses a JSON file under the source tree ("tests/data/x.json"); NULL if absent/bad. */
cJSON *lm_tu_json(const char *relpath);
/* A JSON value that may be a number or a string ("nan", "inf", "-inf", "-0", big integers). */
double lm_tu_jnum(const cJSON *v);
/* Peak resident set size of this process in MiB. */
double lm_tu_maxrss_mib(void);

#endif
