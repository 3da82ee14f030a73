/*
 * worker.c — the worker's one call into the engine: canonical job spec →
 * struct cal_quantize_opts → cal_quantize_run().
 */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/quantize.h"

enum cal_status cal_worker_run_engine(const json_t *spec, cal_worker_progress_fn progress, void *ctx,
				      volatile const int *cancel, const struct cal_st_publish *publish,
				      char **ret_report, struct cal_error *err)
{
	const json_t *cal = json_object_get(spec, "calibration");
	const json_t *opts_j = json_object_get(spec, "options");
	char *calib = NULL;
	size_t calib_len = 0;
	const json_t *ds = json_object_get(cal, "datasets");
	if (json_is_array(ds)) {
		FILE *f = open_memstream(&calib, &calib_len);
		if (!f)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		size_t i;
		json_t *d;
		json_array_foreach(ds, i, d) {
			fprintf(f, "%s%s", i ? "," : "", json_string_value(json_object_get(d, "path")));
			json_int_t n = json_integer_value(json_object_get(d, "samples"));
			if (n > 0)
				fprintf(f, ":%lld", (long long)n);
		}
		fclose(f);
	}
	/* the recipe (a name, or inline imports) resolves in the tree the daemon
	 * validated it against: that tree is the built-in one, and the working
	 * directory (which the recipe loader searches first) too; every path of
	 * the spec is absolute */
	const char *rdir = json_string_value(json_object_get(spec, "recipes_dir"));
	if (rdir && (setenv("CALIBD_RECIPES_DIR", rdir, 1) < 0 || chdir(rdir) < 0)) {
		/* the tree's path is the daemon's business (docs/api.md) */
		enum cal_status st = cal_error_set(err, CAL_ERR_NOTFOUND, "the recipe tree: %s", strerror(errno));
		free(calib);
		return st;
	}
	const json_t *dev = json_object_get(spec, "devices");
	struct cal_quantize_opts o = {
		.model_dir = json_string_value(json_object_get(spec, "model")),
		.recipe = json_string_value(json_object_get(spec, "recipe")),
		.recipe_yaml = json_string_value(json_object_get(spec, "recipe_yaml")),
		.calib = calib,
		.calib_tokens = json_string_value(json_object_get(cal, "tokens")),
		.samples = (int)json_integer_value(json_object_get(cal, "samples")),
		.seq_len = (int)json_integer_value(json_object_get(cal, "seq_len")),
		.seed = (uint64_t)json_integer_value(json_object_get(cal, "seed")),
		.out_dir = json_string_value(json_object_get(spec, "output")),
		/* the supervisor restricts CUDA_VISIBLE_DEVICES to the assigned GPUs */
		.device = json_is_string(dev) ? "cpu" : "cuda",
		.per_expert_input_amax = json_is_true(json_object_get(opts_j, "per_expert_input_amax")),
		.moe_calib_experts_ratio = json_number_value(json_object_get(opts_j, "moe_calib_experts_ratio")),
		.cancel = cancel,
		.publish = publish,
	};
	enum cal_status st = cal_quantize_run(&o, progress, ctx, ret_report, err);
	free(calib);
	return st;
}
