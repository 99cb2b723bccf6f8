/* lm_atomic.h — output files that appear whole or not at all.
 *
 * A file is written under a temporary name in the same directory (".lmtmp.PID.N.<basename>",
 * so the extension is kept for libraries that look at it, e.g. nifticlib's ".nii.gz") and
 * renamed over the target on success. Temporaries are removed on abort, at exit, and on
 * SIGINT/SIGTERM/SIGHUP (the handler then re-raises the signal), so make never sees a
 * partial output.
 */
#ifndef LM_ATOMIC_H
#define LM_ATOMIC_H

#include <stdio.h>

/* Creates and opens a temporary beside `path`; *tmp receives its malloc'ed name. */
FILE *lm_atomic_open(const char *path, char **tmp);
/* Reserves (creates empty) and registers a temporary name, for writers that open by name. */
int lm_atomic_tmpname(const char *path, char **tmp);
/* Also fsync before the rename (for checkpoints: survive a power cut, not just a crash).
 * Default: off, or on when LM_FSYNC is set to anything but 0. */
void lm_atomic_durable(int on);
/* fflush (+ fsync if durable) + fclose (fp may be NULL when written by name), then rename.
 * Frees tmp. Returns 0 or -1 (lm_error); on failure the temporary is removed. */
int lm_atomic_commit(FILE *fp, char *tmp, const char *path);
/* Closes (fp may be NULL), removes and frees the temporary. */
void lm_atomic_abort(FILE *fp, char *tmp);
/* A hard link to the existing file path under a new hidden name beside it (*bak, malloc'ed; not
 * registered: the caller renames it back or removes it), to put the file back if what replaces
 * it has to be undone. 0 with *bak = NULL where there is nothing to keep or the file system
 * cannot link it (no such file, a directory, no hard links); -1 (lm_error) otherwise. */
int lm_atomic_keep(const char *path, char **bak);
/* Removes every registered temporary (also run at exit). */
void lm_atomic_cleanup(void);

#endif
