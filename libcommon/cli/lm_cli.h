/* lm_cli.h — what every program shares: messages, exit codes, strict number parsing, one
 * option table that drives both getopt_long and --help, and a progress reporter.
 *
 * Messages go to stderr as "prog: context: reason"; stdout carries data only.
 * Exit codes: 0 success, 1 runtime or data error, 2 usage error.
 */
#ifndef LM_CLI_H
#define LM_CLI_H

#include "io/lm_error.h"
#include "io/lm_tensor.h"

#include <stdint.h>
#include <stdio.h>

enum { LM_EXIT_OK = 0, LM_EXIT_FAIL = 1, LM_EXIT_USAGE = 2 };

/* Sets the program name, ignores SIGPIPE (a closed pipe becomes a write error that is reported
 * in one line) and applies LM_THREADS (OpenMP threads of the CPU backend). Call first. */
void lm_cli_init(const char *progname);
const char *lm_progname(void);
extern int lm_verbose; /* -v count; -q sets it to -1 */

void lm_msg(const char *fmt, ...) LM_PRINTF(1, 2);               /* "prog: ..." */
void lm_warn(const char *fmt, ...) LM_PRINTF(1, 2);              /* "prog: warning: ..." */
void lm_info(const char *fmt, ...) LM_PRINTF(1, 2);              /* only with -v */
_Noreturn void lm_die(int code, const char *fmt, ...) LM_PRINTF(2, 3);
/* "prog: what: <lm_error()>" and exit 1. */
_Noreturn void lm_die_error(const char *what);

/* ---- strict number parsing: whole string consumed, range checked; 0 ok, -1 bad ---- */
int lm_parse_long(const char *s, long lo, long hi, long *out);
int lm_parse_double(const char *s, double lo, double hi, double *out);
/* "A,B,C" (or sep 'x': "DxHxW"); n in/out: capacity in, count out. */
int lm_parse_long_list(const char *s, char sep, long lo, long hi, long *out, int *n);
int lm_parse_double_list(const char *s, char sep, double *out, int *n);

/* ---- option tables ---- */
typedef struct {
    const char *lng;   /* long name without "--" */
    int shrt;          /* short letter or 0 */
    const char *arg;   /* argument name, NULL for a flag */
    const char *help;  /* one line */
} lm_option;

typedef struct {
    const char *synopsis;    /* "[options] [FILE...]" */
    const char *summary;     /* one line */
    const lm_option *opts;   /* terminated by {0} */
    const char *epilogue;    /* NULL or extra text */
} lm_cli_spec;

/* Iterates getopt_long over the table. Returns the index of the option in the table, -1 at the
 * end of options (optind points at the operands). --help prints usage to stdout and exits 0;
 * -V/--version prints the version and exits 0 (if those options are in the table); an unknown
 * option or a missing argument prints one line plus "Try --help." and exits 2. */
int lm_cli_next(int argc, char **argv, const lm_cli_spec *spec, const char **arg);
void lm_cli_usage(FILE *fp, const lm_cli_spec *spec);
_Noreturn void lm_usage_error(const char *fmt, ...) LM_PRINTF(1, 2);

/* ---- progress ---- */
typedef struct {
    const char *what, *unit;
    int64_t total, done;
    double t0, last;
    int tty, enabled, drawn;
} lm_progress;

double lm_now(void); /* monotonic seconds */
/* total <= 0: unknown. Off when lm_verbose < 0 (-q). */
void lm_progress_start(lm_progress *p, const char *what, int64_t total, const char *unit);
void lm_progress_update(lm_progress *p, int64_t done);
void lm_progress_end(lm_progress *p);

/* Appends this command line (argv joined, quoted where needed) as one line to the record's
 * "history" metadata (MRtrix3-style provenance). 0 or -1. */
int lm_record_add_history(lm_record *rec, int argc, char **argv);

#endif
