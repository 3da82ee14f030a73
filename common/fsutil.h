/*
 * fsutil.h — durable file updates (write temp, fsync, rename, fsync dir) and
 * confinement of client-supplied paths to configured root directories.
 */
#ifndef CAL_FSUTIL_H
#define CAL_FSUTIL_H

#include <stddef.h>

#include "common/status.h"

/*
 * Replaces dir/name with data atomically and durably: writes dir/.name.tmp,
 * fsyncs it, renames it over dir/name and fsyncs dir.  On any failure the
 * temp file is removed and the previous content stays.  ENOSPC maps to
 * CAL_ERR_NOSPACE; other errors to CAL_ERR_IO.
 */
enum cal_status cal_write_atomic(const char *dir, const char *name, const void *data,
				 size_t n, struct cal_error *err);

/* Same, keeping the replaced content as dir/prev (a hard link made just
 * before the rename; no prev when name did not exist).  At every moment
 * dir/name holds a complete generation. */
enum cal_status cal_write_atomic_keep(const char *dir, const char *name, const char *prev, const void *data,
				      size_t n, struct cal_error *err);

/* Free space of the file system holding path, in percent of its size
 * (blocks available to unprivileged users).  Returns 0, or -1 (errno). */
int cal_free_percent(const char *path, double *ret);

/* Removes path and everything beneath it (links are removed, never
 * followed; other file systems are not entered).  A missing path is OK. */
enum cal_status cal_rmtree(const char *path, struct cal_error *err);

/* Creates directory path (mode 0750, EEXIST is an error when excl) and
 * fsyncs its parent so the new entry is durable. */
enum cal_status cal_mkdir_durable(const char *path, int excl, struct cal_error *err);

/* Creates path and all missing parents (mode 0750). */
enum cal_status cal_mkdir_p(const char *path, struct cal_error *err);

/* fsync of a directory by path. */
enum cal_status cal_fsync_dir(const char *path, struct cal_error *err);

/*
 * Confines a client path to one of nroots roots (each already a realpath).
 * The path must be absolute, at most 4095 bytes, without control bytes.
 *   must_exist: the path is resolved with realpath(3); *ret_real is it.
 *   otherwise (an output): the parent is resolved with realpath(3), the last
 *   component must be a plain name (not "." or ".."), and the path must not
 *   exist yet; *ret_real is realpath(parent)/name.
 * The resolved path must equal a root or lie beneath it.  *ret_real is heap
 * (caller frees).  Errors: CAL_ERR_INVALID (malformed), CAL_ERR_NOTFOUND,
 * CAL_ERR_EXISTS (output exists), CAL_ERR_RANGE (outside every root; the
 * message says which roots are allowed only by count, never their names).
 */
enum cal_status cal_path_confine(const char *path, char *const *roots, size_t nroots,
				 int must_exist, char **ret_real, struct cal_error *err);

/* 1 when real (a resolved path) is root or beneath it. */
int cal_path_under(const char *real, const char *root);

#endif
