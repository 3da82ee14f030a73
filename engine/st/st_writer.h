/*
 * st_writer.h — writes a sharded safetensors checkpoint, crash-safely.
 *
 * Life cycle:
 *   cal_st_writer_open(final_dir)   refuses an existing final_dir; creates a
 *                                   temporary sibling `.<name>.tmp-XXXXXX`
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
 *                                   renames the temporary dir to final_dir,
 *                                   fsyncs the parent
 *   cal_st_writer_free()            removes the temporary dir when not
 *                                   committed (on every failure path)
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

struct cal_st_writer;

struct cal_st_writer_opts {
	uint64_t max_shard_bytes; /* 0: CAL_ST_DEFAULT_SHARD_BYTES */
	/* extra bytes to reserve in the disk-space check (side files) */
	uint64_t reserve_bytes;
};

enum cal_status cal_st_writer_open(const char *final_dir,
				   const struct cal_st_writer_opts *opts,
				   struct cal_st_writer **ret, struct cal_error *err);
enum cal_status cal_st_writer_declare(struct cal_st_writer *w, const char *name,
				      enum cal_dtype dtype, int ndim,
				      const int64_t *shape, struct cal_error *err);
enum cal_status cal_st_writer_begin(struct cal_st_writer *w, struct cal_error *err);
/* nbytes must equal the declared size. */
enum cal_status cal_st_writer_put(struct cal_st_writer *w, const char *name,
				  const void *data, uint64_t nbytes,
				  struct cal_error *err);
/* Writes `name` (no '/') into the output directory. */
enum cal_status cal_st_writer_add_file(struct cal_st_writer *w, const char *name,
				       const void *data, size_t len,
				       struct cal_error *err);
/* Path of the temporary directory (valid until free). */
const char *cal_st_writer_tmp_dir(const struct cal_st_writer *w);
/* Total bytes of tensor data written so far (for progress). */
uint64_t cal_st_writer_bytes_written(const struct cal_st_writer *w);
enum cal_status cal_st_writer_commit(struct cal_st_writer *w, struct cal_error *err);
void cal_st_writer_free(struct cal_st_writer *w);

#endif
