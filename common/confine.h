/*
 * confine.h — opening files only beneath allowed root directories.
 *
 * The daemon checks a client's path when the job is submitted (realpath
 * inside a configured root), but a directory or a link can change between
 * that check and the moment a file is opened, and a checkpoint directory
 * may hold links of its own (a model.safetensors pointing anywhere).  With
 * a confinement set, cal_open_confined() opens a path relative to the root
 * it lies under with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): a
 * symbolic link or ".." that leads out of that root fails with EXDEV;
 * links that stay beneath it (a Hugging Face cache snapshot whose files
 * link to ../../blobs/) keep working.  A path under no root fails with
 * EXDEV too.  openat2 refuses every absolute link; those, and everything on
 * kernels without openat2 (before 5.6), go through a resolution by hand:
 * one component at a time with O_NOFOLLOW, each link read and its target
 * resolved the same way, an absolute target only when it lies under the
 * same root, ".." never above it.  So a link is followed exactly when its
 * target stays beneath the root, either way.
 *
 * The confinement belongs to the calling thread: the worker sets it once
 * for its job, the API around the recipe and config.json reads of one
 * request.  Everything of the engine that reads or writes a client's files
 * opens them through here (cal_read_file, safetensors files, the checkpoint
 * writer, the exporter's side files), so no call needs a parameter for it.
 */
#ifndef CAL_CONFINE_H
#define CAL_CONFINE_H

#include <stddef.h>
#include <sys/types.h>

struct cal_confine {
	const char *const *roots; /* absolute, resolved (realpath) directories */
	size_t n_roots;
};

/* Sets the calling thread's confinement; NULL lifts it.  c (and its roots)
 * must stay valid until it is lifted. */
void cal_confine_set(const struct cal_confine *c);

/* The calling thread's confinement, or NULL. */
const struct cal_confine *cal_confine_get(void);

/*
 * open(2) of path under the calling thread's confinement (plain open(2)
 * without one).  A relative path is taken relative to the working
 * directory.  Returns the descriptor (O_CLOEXEC always added), or -1 with
 * errno; EXDEV means "resolves outside the roots".
 */
int cal_open_confined(const char *path, int flags, mode_t mode);

/*
 * open(2) of rel beneath the directory rootfd (whose resolved path is
 * root): openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), then the walk
 * described above for absolute links or without openat2; with walk, the
 * walk alone.  Exposed for tests of both ways.
 */
int cal_open_beneath(int rootfd, const char *root, const char *rel, int flags, mode_t mode, int walk);

/* strerror(e), with EXDEV said the way confinement means it. */
const char *cal_confine_strerror(int e);

#endif
