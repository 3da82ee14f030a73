/*
 * dataset.h — calibration datasets: token id sequences built from JSONL
 * (`text`, chat `messages`, or `input_ids` records) and plain text files,
 * several sources mixed with per-source sample counts, deterministic
 * (optionally seeded) sampling, truncation to S tokens.  docs/tokenizer.md
 * gives the rules; they follow modelopt's hf_ptq where it has one.
 */
#ifndef CAL_DATASET_H
#define CAL_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "tokenizer.h"

/* One source of a --calib list: FILE or FILE:N. */
struct cal_calib_source {
	char *path;
	size_t n;     /* samples wanted from it (valid when has_n) */
	bool has_n;
};

struct cal_dataset_opts {
	size_t samples;   /* total; 0: every source must name its count */
	size_t seq_len;   /* S: most tokens per sample, specials included (> 0) */
	bool shuffle;     /* false: the first records in file order (modelopt) */
	uint64_t seed;    /* with shuffle: the permutation's seed */
	bool no_special;  /* do not add the post-processor's BOS/EOS */
};

/* N ragged sequences.  Sequence i is ids[off[i] .. off[i+1]). */
struct cal_dataset {
	size_t n;
	size_t *off;            /* n + 1 entries */
	int32_t *ids;
	size_t n_tokens;        /* off[n] */
	size_t dropped_empty;   /* records that gave no token (skipped) */
	size_t truncated;       /* samples cut to seq_len */
	size_t shortfall;       /* samples wanted but missing: sources ran out */
};

/* Largest input file read (JSONL or text). */
#define CAL_DATASET_MAX_FILE ((size_t)4 << 30)
/* Most sources in one --calib list, and most samples in all. */
#define CAL_DATASET_MAX_SOURCES 64
#define CAL_DATASET_MAX_SAMPLES ((size_t)1 << 24)

/*
 * Parses "FILE[:N],FILE[:N],..." (N a positive integer; a path may not
 * contain ','). *ret (n entries) is freed with cal_calib_sources_free.
 * Errors: CAL_ERR_INVALID naming the bad entry.
 */
enum cal_status cal_calib_sources_parse(const char *spec,
					struct cal_calib_source **ret,
					size_t *ret_n, struct cal_error *err);
void cal_calib_sources_free(struct cal_calib_source *src, size_t n);

/*
 * Builds a dataset.  Sample counts: sources with :N take N, the others
 * share opts->samples minus those (divmod, remainder to the first).
 * Sources are read in order and their samples concatenated in that order.
 * *ret is owned by the caller (cal_dataset_free).  Errors name the file
 * and line: CAL_ERR_NOTFOUND / CAL_ERR_IO for files, CAL_ERR_FORMAT for
 * bad records, CAL_ERR_INVALID / CAL_ERR_RANGE for bad counts or lengths.
 */
enum cal_status cal_dataset_build(struct cal_tokenizer *tok,
				  const struct cal_calib_source *src, size_t n_src,
				  const struct cal_dataset_opts *opts,
				  struct cal_dataset **ret, struct cal_error *err);

/* cal_calib_sources_parse + cal_dataset_build. */
enum cal_status cal_dataset_load(struct cal_tokenizer *tok, const char *spec,
				 const struct cal_dataset_opts *opts,
				 struct cal_dataset **ret, struct cal_error *err);

void cal_dataset_free(struct cal_dataset *ds);

/* ---- command-line options shared by commands that calibrate ------------ */

/* --calib FILE[:N],...  --samples N  --seq-len S  --seed K */
struct cal_calib_args {
	const char *calib;  /* NULL until given */
	size_t samples;     /* default 0 (then every source needs :N) */
	size_t seq_len;     /* default 512, modelopt's calib_seq */
	bool seed_set;      /* --seed given: shuffle with it */
	uint64_t seed;
};

/* Sets the defaults. */
void cal_calib_args_init(struct cal_calib_args *a);

/*
 * If argv[*i] is one of the options above ("--opt VALUE" or
 * "--opt=VALUE"), stores it, advances *i past it and returns 1; returns 0
 * for any other argument; CAL_ERR_INVALID (negative) for a bad or missing
 * value, with a message naming the option.
 */
int cal_calib_args_option(struct cal_calib_args *a, int argc, char **argv,
			  int *i, struct cal_error *err);

/* Builds the dataset the options describe (CAL_ERR_INVALID without
 * --calib). */
enum cal_status cal_calib_args_load(const struct cal_calib_args *a,
				    struct cal_tokenizer *tok,
				    struct cal_dataset **ret,
				    struct cal_error *err);

#endif
