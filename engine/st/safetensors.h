/*
 * safetensors.h — read-only access to safetensors checkpoints.
 *
 * A checkpoint directory holds either one `model.safetensors` or several
 * shards listed by `model.safetensors.index.json` (weight_map: tensor name ->
 * shard file).  Every file is mmap'ed read-only and its header validated in
 * full before any tensor is handed out (docs/reliability.md "safetensors
 * validation"): header length within the file and <= 100 MB, a JSON object,
 * known dtypes, shape product x dtype size == byte range (no overflow), ranges
 * inside the data section, sorted, without overlap, holes or trailing bytes,
 * `__metadata__` a map of strings; index entries must point to tensors that
 * exist in the named shard. A refusal names the file, the tensor and the rule
 * it breaks.
 *
 * Ownership: the checkpoint owns every file mapping and every
 * struct cal_st_tensor; pointers stay valid until cal_checkpoint_free().
 *
 * Stricter than the reference validator, on purpose: the header must start
 * with '{', duplicate keys are refused, a tensor entry may hold only dtype,
 * shape and data_offsets, names are 1..CAL_ST_MAX_NAME bytes, at most
 * CAL_ST_MAX_DIMS dimensions.  Like the reference, `"__metadata__": null`
 * means no metadata and the header's key order need not follow the data.
 * Only the dtypes of common/dtype.h are known (no F4, F6_*, *FNUZ, C64).
 *
 * A file truncated by someone else while it is mapped raises SIGBUS on
 * access; checkpoints are expected to be immutable while a job reads them.
 */
#ifndef CAL_SAFETENSORS_H
#define CAL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"

#define CAL_ST_MAX_DIMS 8
#define CAL_ST_MAX_HEADER (100u * 1000u * 1000u)
/* Longest tensor name accepted (bytes of UTF-8, excluding the NUL). */
#define CAL_ST_MAX_NAME 1024
/* Largest model.safetensors.index.json read. */
#define CAL_ST_MAX_INDEX (100u * 1000u * 1000u)
#define CAL_ST_INDEX_NAME "model.safetensors.index.json"

struct cal_st_tensor {
	const char *name;          /* tensor name, NUL-terminated */
	enum cal_dtype dtype;
	int ndim;                  /* 0 for a scalar */
	int64_t shape[CAL_ST_MAX_DIMS];
	uint64_t numel;            /* product of shape (1 for a scalar) */
	uint64_t nbytes;           /* numel * dtype size */
	const void *data;          /* inside the read-only mapping */
	const char *file;          /* path of the file that holds it */
};

/*
 * Asks the kernel to start reading t's bytes into the page cache now
 * (madvise MADV_WILLNEED on its pages), so that a later first touch of a
 * cold checkpoint finds them there instead of faulting them in a window at
 * a time.  Advisory: returns at once and never fails (an error of madvise
 * only loses the head start).
 */
void cal_st_tensor_willneed(const struct cal_st_tensor *t);

/* One mapped safetensors file. */
struct cal_st_file;

/*
 * Maps and validates one file.  On success *ret owns the mapping.
 * Errors: CAL_ERR_NOTFOUND / CAL_ERR_IO (cannot open or map),
 * CAL_ERR_FORMAT (any header rule broken; message names the rule).
 */
enum cal_status cal_st_file_open(const char *path, struct cal_st_file **ret,
				 struct cal_error *err);

/*
 * Validates a file image already in memory (used by the fuzz target and by
 * tests); `name` is used in messages.  The result references buf, which must
 * outlive it.
 */
enum cal_status cal_st_file_parse(const char *name, const void *buf, size_t len,
				  struct cal_st_file **ret, struct cal_error *err);

size_t cal_st_file_count(const struct cal_st_file *f);
/* Tensors in data-offset order. */
const struct cal_st_tensor *cal_st_file_tensor(const struct cal_st_file *f, size_t i);
const struct cal_st_tensor *cal_st_file_find(const struct cal_st_file *f, const char *name);
/* Value of a `__metadata__` key, or NULL. */
const char *cal_st_file_metadata(const struct cal_st_file *f, const char *key);
/* Size of the whole file image and its header length N (for inspect). */
uint64_t cal_st_file_size(const struct cal_st_file *f);
uint64_t cal_st_file_header_len(const struct cal_st_file *f);
void cal_st_file_free(struct cal_st_file *f);

/* A whole checkpoint (one file or an index plus shards). */
struct cal_checkpoint;

/*
 * Opens `dir`: `model.safetensors.index.json` if present, else
 * `model.safetensors`, else the single `*.safetensors` file in dir.  All
 * shards are validated; a tensor present in two shards, an index entry
 * naming a missing shard or a tensor the shard lacks, and a shard tensor the
 * index does not list are errors.
 */
enum cal_status cal_checkpoint_open(const char *dir, struct cal_checkpoint **ret,
				    struct cal_error *err);

size_t cal_checkpoint_count(const struct cal_checkpoint *ck);
/* Tensors sorted by name (strcmp order). */
const struct cal_st_tensor *cal_checkpoint_tensor(const struct cal_checkpoint *ck, size_t i);
/* NULL when absent.  O(log n). */
const struct cal_st_tensor *cal_checkpoint_find(const struct cal_checkpoint *ck,
						const char *name);
/* Sum of the sizes of the checkpoint's files on disk. */
uint64_t cal_checkpoint_disk_bytes(const struct cal_checkpoint *ck);
size_t cal_checkpoint_file_count(const struct cal_checkpoint *ck);
const char *cal_checkpoint_dir(const struct cal_checkpoint *ck);
void cal_checkpoint_free(struct cal_checkpoint *ck);

/* 64-bit fingerprint of a source checkpoint as hex (17 bytes with the NUL):
 * model_dir's config.json bytes, every tensor's name, dtype and shape, and
 * 64 bytes from the start, middle and end of its data; recorded at export
 * (calibd_report.json "source_fingerprint") and checked by `calibd eval`
 * (docs/eval.md). */
enum cal_status cal_checkpoint_fingerprint(const char *model_dir, const struct cal_checkpoint *ck,
					   char out[17], struct cal_error *err);

#endif
