/*
 * st_writer.h — writes a sharded safetensors checkpoint, crash-safely.
 *
 * Life cycle:
 *   cal_st_writer_open(final_dir)   refuses an existing final_dir; opens its
 *                                   parent (confined: common/confine.h) and
 *                                   creates a temporary sibling
 *                                   `.<name>.tmp-XXXXXX`, or
 *                                   `.<name>.tmp-<tag>-XXXXXX` with a tag
 *   cal_st_writer_declare(...) xN   every tensor (name, dtype, shape), in the
 *                                   order they should appear
 *   cal_st_writer_begin()           cuts shards at max_shard_bytes, checks
 *                                   free disk space for all shards plus the
 *                                   extra files (CAL_ERR_NOSPACE before the
 *                                   first byte), writes the headers
 *   cal_st_writer_put(name, data)   tensor bytes, in any order, as produced
 *   cal_st_writer_add_file(...)     small side files (config.json, ...)
 *   cal_st_writer_commit()          checks every declared tensor was written,
 *                                   writes model.safetensors.index.json when
 *                                   there is more than one shard, fsyncs all,
 *                                   calls publish->before, renames the
 *                                   temporary dir to final_dir, fsyncs the
 *                                   parent, calls publish->after
 *   cal_st_writer_free()            removes the temporary dir when not
 *                                   committed (on every failure path)
 *
 * Every file is created relative to descriptors of the parent and the
 * temporary directory, opened once: a parent replaced (by a symbolic link)
 * after open() cannot redirect a later write or the rename.
 *
 * Any error (bad argument, misuse, I/O, no space) kills the writer: the
 * temporary directory is removed at once and every later call except free()
 * fails with CAL_ERR_INVALID.  Not thread-safe: serialize calls.  Tensor data
 * starts 8-byte aligned in each file (header padded with spaces); tensors
 * follow each other in declared order without padding.  Before publishing,
 * commit() reads every shard back through the validator (safetensors.h).
 *
 * Testing: the environment variable CALIBD_TEST_FREE_BYTES (decimal bytes),
 * when set, replaces the free-space figure statvfs() reports, so the
 * CAL_ERR_NOSPACE path can be tested without filling a disk;
 * CALIBD_TEST_WRITE_LIMIT (decimal bytes) makes put() fail with ENOSPC
 * ("disk full", naming the shard file) once that many tensor bytes were
 * written, which is a disk filling up in the middle of a shard.  Only the
 * writer reads them (at open).
 *
 * Shard names follow transformers: `model.safetensors` for one shard,
 * `model-00001-of-00003.safetensors` otherwise; each header carries
 * `__metadata__ {"format":"pt"}`; the index has metadata.total_size (sum of
 * tensor bytes) and weight_map.
 */
#ifndef CAL_ST_WRITER_H
#define CAL_ST_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"

#define CAL_ST_DEFAULT_SHARD_BYTES 10000000000ull /* modelopt's "10GB" */

/* Longest tag in the temporary directory's name, and how many bytes the
 * temporary name adds to the output's name at most (".", ".tmp-", the tag,
 * "-", six random characters): callers check NAME_MAX up front with it. */
#define CAL_ST_TMP_TAG_MAX 31
#define CAL_ST_TMP_NAME_EXTRA (1 + 5 + CAL_ST_TMP_TAG_MAX + 1 + 6)
/* Longest file name the writer (shards, index) and the exporter (side
 * files) create in the output directory, rounded up: PATH_MAX checks. */
#define CAL_ST_FILE_NAME_MAX 64

struct cal_st_writer;

/*
 * Parses a shard size the way transformers / huggingface_hub do
 * (parse_size_to_int): an integer number of bytes, or a number followed by
 * KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024), case
 * insensitive ("10GB" = 10^10).  Returns 0, or -1 for anything else or 0.
 */
int cal_st_parse_size(const char *s, uint64_t *ret);

/*
 * How a caller follows the publish (all optional).  tmp_tag ([A-Za-z0-9_-],
 * 1..CAL_ST_TMP_TAG_MAX bytes) goes into the temporary directory's name so
 * that its owner can find and remove it after a crash.  before() runs after
 * everything is fsynced and verified, just before the rename; an error from
 * it aborts the publish (nothing published, the temporary dir removed).
 * after() runs once the rename and the parent's fsync are done.
 */
struct cal_st_publish {
	const char *tmp_tag;
	enum cal_status (*before)(void *ctx, const char *tmp_dir, const char *final_dir, struct cal_error *err);
	void (*after)(void *ctx, const char *final_dir);
	void *ctx;
};

struct cal_st_writer_opts {
	uint64_t max_shard_bytes; /* 0: CAL_ST_DEFAULT_SHARD_BYTES */
	/* extra bytes to reserve in the disk-space check (side files) */
	uint64_t reserve_bytes;
	const struct cal_st_publish *publish; /* NULL: none (kept by reference) */
};

/*
 * Starts a checkpoint to be published at final_dir.  opts may be NULL.
 * Errors: CAL_ERR_EXISTS (final_dir exists), CAL_ERR_NOTFOUND (its parent
 * does not), CAL_ERR_RANGE (the parent resolves outside the confinement),
 * CAL_ERR_INVALID (a bad tmp_tag), CAL_ERR_IO, CAL_ERR_NOMEM.  *ret is freed with
 * cal_st_writer_free().
 */
enum cal_status cal_st_writer_open(const char *final_dir,
				   const struct cal_st_writer_opts *opts,
				   struct cal_st_writer **ret, struct cal_error *err);
/* Declares one tensor (before begin()).  name: 1..CAL_ST_MAX_NAME bytes of
 * UTF-8, not "__metadata__", unique; 0 <= ndim <= CAL_ST_MAX_DIMS; dims >= 0.
 * Errors: CAL_ERR_INVALID, CAL_ERR_NOMEM. */
enum cal_status cal_st_writer_declare(struct cal_st_writer *w, const char *name,
				      enum cal_dtype dtype, int ndim,
				      const int64_t *shape, struct cal_error *err);
/* Fixes the layout, checks free space, creates the shards and writes their
 * headers.  Errors: CAL_ERR_NOSPACE (names the directory, bytes needed and
 * available), CAL_ERR_RANGE (a header over CAL_ST_MAX_HEADER), CAL_ERR_IO. */
enum cal_status cal_st_writer_begin(struct cal_st_writer *w, struct cal_error *err);
/* Writes a declared tensor's bytes (after begin(); once per tensor; any
 * order).  nbytes must equal the declared size.  data is only read.
 * Errors: CAL_ERR_INVALID, CAL_ERR_IO, CAL_ERR_NOSPACE. */
enum cal_status cal_st_writer_put(struct cal_st_writer *w, const char *name,
				  const void *data, uint64_t nbytes,
				  struct cal_error *err);
/* Writes `name` (a plain file name) into the output directory, before or
 * after begin().  Errors: CAL_ERR_INVALID, CAL_ERR_EXISTS (same name twice,
 * or a shard/index name), CAL_ERR_IO. */
enum cal_status cal_st_writer_add_file(struct cal_st_writer *w, const char *name,
				       const void *data, size_t len,
				       struct cal_error *err);
/* Path of the temporary directory (valid until free). */
const char *cal_st_writer_tmp_dir(const struct cal_st_writer *w);
/* Total bytes of tensor data written so far (for progress). */
uint64_t cal_st_writer_bytes_written(const struct cal_st_writer *w);
/* Publishes (see above).  Errors: CAL_ERR_INVALID (a tensor never put),
 * CAL_ERR_EXISTS (final_dir appeared meanwhile), CAL_ERR_IO,
 * CAL_ERR_INTERNAL (own output failed validation).  After an error nothing
 * is left on disk; CAL_ERR_IO from the final fsync of the parent is the only
 * error after which the output is in place. */
enum cal_status cal_st_writer_commit(struct cal_st_writer *w, struct cal_error *err);
/* Removes the temporary directory unless committed; NULL is a no-op. */
void cal_st_writer_free(struct cal_st_writer *w);

/*
 * One output, several writers (expert parallelism, docs/expert_parallel.md
 * "Export").  The leader is an ordinary writer.  Each other writer is a
 * part writer: cal_st_writer_open_part(final_dir) creates nothing; it
 * declares the same tensors in the same order with the same
 * max_shard_bytes, then cal_st_writer_attach() instead of begin() computes
 * the same layout, checks it against the leader's
 * (cal_st_writer_layout_hash(), after the leader's begin()) and opens the
 * leader's temporary directory (tmp_name: cal_st_writer_tmp_name() of the
 * leader, relative to final_dir's parent as this process sees it).  put()
 * then pwrites its tensors at their offsets into the leader's shard files
 * (opened when first needed, never created); cal_st_writer_part_close()
 * fsyncs and closes them.  A part writer never commits, publishes or
 * removes anything (not even on an error: the leader removes its temporary
 * directory).  The leader learns what a part wrote as indices into the
 * declaration order (cal_st_writer_put_indices() of the part) and marks
 * them written (cal_st_writer_put_elsewhere(), after begin(), before
 * commit(); counts their bytes as written).  Errors as put()'s, plus
 * CAL_ERR_INTERNAL (a layout that differs from the leader's) and
 * CAL_ERR_NOTFOUND (the temporary directory is gone).
 */
const char *cal_st_writer_tmp_name(const struct cal_st_writer *w);
uint64_t cal_st_writer_layout_hash(const struct cal_st_writer *w);
enum cal_status cal_st_writer_open_part(const char *final_dir,
					const struct cal_st_writer_opts *opts,
					struct cal_st_writer **ret, struct cal_error *err);
enum cal_status cal_st_writer_attach(struct cal_st_writer *w, const char *tmp_name,
				     uint64_t layout_hash, struct cal_error *err);
enum cal_status cal_st_writer_part_close(struct cal_st_writer *w, struct cal_error *err);
/* Indices (declaration order) of the tensors put so far, ascending, into
 * idx (NULL: only counted); returns their number. */
size_t cal_st_writer_put_indices(const struct cal_st_writer *w, uint64_t *idx);
enum cal_status cal_st_writer_put_elsewhere(struct cal_st_writer *w, const uint64_t *idx,
					    size_t n, struct cal_error *err);

#endif
