/*
 * test_job.c — suite 'unit' tests of the engine's entry point (engine/job.h)
 * and of the one device-string parser (common/device.h), on the CPU back
 * end: open / close at each level (full, without a back end, without the
 * checkpoint), what a failed open names (cal_job_part), the capability
 * query for every fixture architecture and for a configuration beyond the
 * engine's limits, the calibration engine borrowing the job's checkpoint
 * and back end (same statistics as an engine that opens its own), tokens,
 * export and verify through the job, and the --calib list parser.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/device.h"
#include "common/util.h"
#include "engine/job.h"
#include "qtest.h"
#include "test_recipes.h"

/* ---- device strings ------------------------------------------------------- */

Test(job, devices_parses_the_forms)
{
	struct cal_devices d;
	char buf[64];
	cr_assert_eq(cal_devices_parse(NULL, &d, NULL), CAL_OK);
	cr_assert_eq(d.kind, CAL_DEVICE_AUTO);
	cr_assert_eq(cal_devices_parse("auto", &d, NULL), CAL_OK);
	cr_assert_eq(d.kind, CAL_DEVICE_AUTO);
	cr_assert_str_eq(cal_devices_format(&d, buf, sizeof(buf)), "auto");
	cr_assert_eq(cal_devices_parse("cpu", &d, NULL), CAL_OK);
	cr_assert_eq(d.kind, CAL_DEVICE_CPU);
	cr_assert_eq(d.n, 0);
	cr_assert_str_eq(cal_devices_format(&d, buf, sizeof(buf)), "cpu");
	cr_assert_eq(cal_devices_parse("cuda", &d, NULL), CAL_OK);
	cr_assert_eq(d.kind, CAL_DEVICE_CUDA);
	cr_assert_eq(d.n, 1);
	cr_assert_eq(d.ids[0], 0);
	cr_assert_str_eq(cal_devices_format(&d, buf, sizeof(buf)), "cuda:0");
	cr_assert_eq(cal_devices_parse("cuda:3", &d, NULL), CAL_OK);
	cr_assert_eq(d.n, 1);
	cr_assert_eq(d.ids[0], 3);
	cr_assert_eq(cal_devices_parse("cuda:2,0,1023", &d, NULL), CAL_OK);
	cr_assert_eq(d.n, 3);
	cr_assert(d.ids[0] == 2 && d.ids[1] == 0 && d.ids[2] == 1023);
	cr_assert_str_eq(cal_devices_format(&d, buf, sizeof(buf)), "cuda:2,0,1023");
	/* a short buffer truncates, never overflows */
	cr_assert_str_eq(cal_devices_format(&d, buf, 5), "cuda");
}

Test(job, devices_refuses_bad_strings_naming_them)
{
	static const char *const bad[] = {
		"gpu", "CPU", "cuda:", "cuda:x", "cuda:0,", "cuda:,0", "cuda:0,0", "cuda:1024",
		"cuda:-1", "cuda0", "cudax", "cuda:1 ", " cpu", "cuda:99999999999999999999",
		"cuda:0:1", "cpu,cuda",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct cal_devices d;
		struct cal_error err = {0};
		cr_assert_eq(cal_devices_parse(bad[i], &d, &err), CAL_ERR_INVALID, "'%s' accepted",
			     bad[i]);
		cr_assert(strstr(cal_error_msg(&err), bad[i]), "'%s': %s", bad[i],
			  cal_error_msg(&err));
		cal_error_clear(&err);
	}
	/* 65 GPUs */
	char many[512] = "cuda:";
	for (int i = 0; i < 65; i++)
		snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s%d", i ? "," : "", i);
	struct cal_devices d;
	cr_assert_eq(cal_devices_parse(many, &d, NULL), CAL_ERR_INVALID);
}

/* ---- open / close ----------------------------------------------------------- */

#define RECIPE "general/ptq/nvfp4_experts_only-kv_fp8"

static struct cal_job_opts cpu_opts(const char *model)
{
	struct cal_job_opts o = {.model_dir = model, .recipe = RECIPE,
				 .devices = {.kind = CAL_DEVICE_CPU}, .cpu_threads = 2};
	return o;
}

Test(job, open_levels_and_accessors)
{
	char *root = tmpdir();
	char *model = make_model(root, "qwen3_moe", "default");
	struct cal_job_opts o = cpu_opts(model);
	struct cal_error err = {0};
	struct cal_job *j = NULL;

	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &j, NULL, &err), CAL_OK,
		     "%s", cal_error_msg(&err));
	cr_assert_str_eq(cal_job_model(j)->model_type, "qwen3_moe");
	cr_assert_not_null(cal_job_recipe(j));
	cr_assert_eq(cal_job_plan(j)->model, cal_job_model(j));
	cr_assert_not_null(cal_job_checkpoint(j));
	cr_assert_not_null(cal_job_catalog(j));
	cr_assert_not_null(cal_job_backend(j));
	cr_assert_eq(cal_job_backend(j)->kind, CAL_BACKEND_CPU);
	cr_assert_str_eq(cal_job_device(j), "cpu");
	cr_assert_str_eq(cal_job_recipe_name(j), RECIPE);
	cr_assert_eq(cal_job_options(j)->model_dir, model);
	cr_assert(cal_job_open_seconds(j) >= 0);
	cr_assert_eq(cal_job_check(j, CAL_JOB_QUANTIZE, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_job_close(j);

	/* validation (the API): no back end, never a GPU */
	o.devices.kind = CAL_DEVICE_CUDA;
	o.devices.n = 1;
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_BACKEND, &j, NULL, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert_not_null(cal_job_checkpoint(j));
	cr_assert_null(cal_job_backend(j));
	cr_assert_str_eq(cal_job_device(j), "cuda:0");
	struct cal_calib *c = NULL;
	cr_assert_eq(cal_job_calib_open(j, NULL, &c, &err), CAL_ERR_INVALID);
	cr_assert_null(c);
	cr_assert(strstr(cal_error_msg(&err), "back end"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_job_close(j);

	/* plans only: no checkpoint either */
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_CHECKPOINT, &j, NULL, &err), CAL_OK);
	cr_assert_null(cal_job_checkpoint(j));
	cr_assert_null(cal_job_catalog(j));
	cr_assert_null(cal_job_backend(j));
	cal_job_close(j);
	cal_job_close(NULL);
	rm_rf(root);
}

/* Opens o expecting failure st at part, with `needle` in the message. */
static void open_fails(const struct cal_job_opts *o, unsigned flags, enum cal_status st,
		       enum cal_job_part part, const char *needle)
{
	struct cal_error err = {0};
	struct cal_job *j = (struct cal_job *)1;
	enum cal_job_part p = (enum cal_job_part)-1;
	cr_assert_eq(cal_job_open(o, flags, &j, &p, &err), st, "%s: %s", needle,
		     cal_error_msg(&err));
	cr_assert_null(j);
	cr_assert_eq(p, part, "%s: part %d", needle, (int)p);
	cr_assert(strstr(cal_error_msg(&err), needle), "'%s' not in: %s", needle,
		  cal_error_msg(&err));
	cal_error_clear(&err);
}

Test(job, failed_open_names_the_part)
{
	char *root = tmpdir();
	char *model = make_model(root, "olmoe", "default");
	struct cal_job_opts o = cpu_opts(model);

	o.recipe_yaml = "quantize: {}\n";
	open_fails(&o, 0, CAL_ERR_INVALID, CAL_JOB_PART_OPTIONS, "exactly one");
	o = cpu_opts(model);
	o.moe_calib_experts_ratio = 2;
	open_fails(&o, 0, CAL_ERR_INVALID, CAL_JOB_PART_OPTIONS, "moe_calib_experts_ratio");
	o = cpu_opts(model);
	o.recipe = "general/ptq/no_such_recipe";
	open_fails(&o, 0, CAL_ERR_NOTFOUND, CAL_JOB_PART_RECIPE, "no_such_recipe");
	o = cpu_opts(path2(root, "missing"));
	open_fails(&o, 0, CAL_ERR_NOTFOUND, CAL_JOB_PART_MODEL, "missing");
	o = cpu_opts(model);
	o.max_quantizers = 10;
	open_fails(&o, CAL_JOB_OPEN_NO_BACKEND, CAL_ERR_RANGE, CAL_JOB_PART_MODEL, "too large");

	/* config.json without its weights: the checkpoint is what fails */
	char *bare = path2(root, "bare");
	cr_assert_eq(mkdir(bare, 0755), 0);
	char *cmd = NULL;
	cr_assert(asprintf(&cmd, "cp '%s/config.json' '%s/'", model, bare) > 0);
	cr_assert_eq(system(cmd), 0);
	free(cmd);
	o = cpu_opts(bare);
	open_fails(&o, CAL_JOB_OPEN_NO_BACKEND, CAL_ERR_NOTFOUND, CAL_JOB_PART_CHECKPOINT, "bare");
	/* ... and nothing of it is needed for a plan */
	struct cal_job *j = NULL;
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_CHECKPOINT, &j, NULL, NULL), CAL_OK);
	cal_job_close(j);
	rm_rf(root);
}

/* ---- the capability query ------------------------------------------------ */

Test(job, capability_of_every_fixture)
{
	char *root = tmpdir();
	for (size_t i = 0; i < cal_fixture_arch_count(); i++) {
		const char *arch = cal_fixture_arch_name(i);
		char *model = make_model(root, arch, "default");
		struct cal_job_opts o = cpu_opts(model);
		o.recipe = "general/ptq/fp8_default-kv_fp8";
		struct cal_error err = {0};
		struct cal_job *j = NULL;
		cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_BACKEND, &j, NULL, &err), CAL_OK,
			     "%s: %s", arch, cal_error_msg(&err));
		enum cal_status st = cal_job_check(j, CAL_JOB_QUANTIZE, &err);
		if (st < 0) {
			/* a refusal names the model type and says why */
			cr_assert(st == CAL_ERR_UNSUPPORTED || st == CAL_ERR_FORMAT, "%s: %d", arch, st);
			cr_assert(strstr(cal_error_msg(&err), cal_job_model(j)->model_type) &&
					  strlen(cal_error_msg(&err)) > strlen(arch) + 10,
				  "%s: %s", arch, cal_error_msg(&err));
			/* ... and an open for quantization refuses the same, before
			 * the checkpoint */
			struct cal_error e2 = {0};
			struct cal_job *j2 = NULL;
			enum cal_job_part part;
			cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_BACKEND |
						  CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &j2, &part, &e2), st);
			cr_assert_eq(part, CAL_JOB_PART_ENGINE);
			cr_assert_str_eq(cal_error_msg(&e2), cal_error_msg(&err));
			cal_error_clear(&e2);
			cal_error_clear(&err);
		}
		cal_job_close(j);
	}
	rm_rf(root);
}

/* A Gated DeltaNet model whose conv kernel is past the engine's limit: the
 * engine describes it (config.json is valid) but does not run it. */
Test(job, capability_refuses_beyond_the_limits)
{
	char *root = tmpdir();
	char *model = make_model(root, "qwen3_next", "default");
	char *cfg = path2(model, "config.json");
	json_t *c = json_load_file(cfg, 0, NULL);
	cr_assert_not_null(c);
	json_object_set_new(c, "linear_conv_kernel_dim", json_integer(100));
	cr_assert_eq(json_dump_file(c, cfg, 0), 0);
	json_decref(c);
	struct cal_job_opts o = cpu_opts(model);
	struct cal_job *j = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_CHECKPOINT, &j, NULL, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert_eq(cal_job_check(j, CAL_JOB_EXPORT, &err), CAL_OK);
	cr_assert_eq(cal_job_check(j, CAL_JOB_CALIBRATE, &err), CAL_ERR_UNSUPPORTED);
	cr_assert(strstr(cal_error_msg(&err), "linear_conv_kernel_dim 100"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
	cal_job_close(j);
	open_fails(&o, CAL_JOB_OPEN_NO_BACKEND | CAL_JOB_OPEN_FOR(CAL_JOB_CALIBRATE),
		   CAL_ERR_UNSUPPORTED, CAL_JOB_PART_ENGINE, "linear_conv_kernel_dim");
	rm_rf(root);
}

/* What only the exporter knows, from the planned output tensors: an MSE
 * weight search without fp8_scale_sweep is not implemented. */
Test(job, capability_asks_the_exporter)
{
	char *root = tmpdir();
	char *model = make_model(root, "qwen3_moe", "default");
	struct cal_job_opts o = cpu_opts(model);
	o.recipe = NULL;
	o.recipe_yaml = CAL_TEST_RECIPE_MSE_NO_SWEEP;
	struct cal_error err = {0};
	struct cal_job *j = NULL;
	/* a plan alone cannot tell */
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_CHECKPOINT, &j, NULL, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert_eq(cal_job_check(j, CAL_JOB_QUANTIZE, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_job_close(j);
	/* with the checkpoint, the exporter plans every output tensor */
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_BACKEND, &j, NULL, &err), CAL_OK);
	cr_assert_eq(cal_job_check(j, CAL_JOB_CALIBRATE, &err), CAL_OK);
	cr_assert_eq(cal_job_check(j, CAL_JOB_EXPORT, &err), CAL_ERR_UNSUPPORTED);
	cr_assert(strstr(cal_error_msg(&err), "fp8_scale_sweep"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_job_close(j);
	open_fails(&o, CAL_JOB_OPEN_NO_BACKEND | CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), CAL_ERR_UNSUPPORTED,
		   CAL_JOB_PART_EXPORT, "fp8_scale_sweep");
	/* nothing was written anywhere */
	cr_assert_eq(cal_test_count_entries(root), 1);
	rm_rf(root);
}

/* ---- the stages borrow from the job ------------------------------------ */

Test(job, calibration_borrows_the_same_engine)
{
	char *root = tmpdir();
	char *model = make_model(root, "qwen3_moe", "default");
	char *tok = make_tokens(root, "tok.jsonl", 3, 20);
	struct cal_job_opts o = cpu_opts(model);
	o.tokens = tok;
	o.samples = 2;
	o.seq_len = 16;
	struct cal_error err = {0};
	struct cal_job *j = NULL;
	struct cal_calib_tokens *tk = NULL;
	struct cal_token_info ti;
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_CALIBRATE), &j, NULL, &err), CAL_OK,
		     "%s", cal_error_msg(&err));
	cr_assert_eq(cal_job_tokens(j, &tk, &ti, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(ti.samples, 2);
	cr_assert_eq(ti.seq_len, 16);
	cr_assert_eq(ti.truncated, 2);
	cr_assert_eq(ti.tokens, 32);

	/* through the job */
	struct cal_calib *c = NULL;
	cr_assert_eq(cal_job_calib_open(j, NULL, &c, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_calib_run(c, tk, &err), CAL_OK, "%s", cal_error_msg(&err));
	char *a = cal_calib_stats_json(c);
	cal_calib_free(c);
	/* an engine that opens its own checkpoint and back end */
	struct cal_calib_opts co = {.backend = CAL_BACKEND_CPU, .cpu_threads = 2, .pad_id = -1};
	cr_assert_eq(cal_calib_open(model, cal_job_plan(j), &co, &c, &err), CAL_OK);
	cr_assert_eq(cal_calib_run(c, tk, &err), CAL_OK, "%s", cal_error_msg(&err));
	char *b = cal_calib_stats_json(c);
	cal_calib_free(c);
	cr_assert(a && b);
	cr_assert_str_eq(a, b);

	/* neither or both token sources */
	struct cal_job_dataset ds = {tok, 0};
	struct cal_job_opts o2 = o;
	o2.datasets = &ds;
	o2.n_datasets = 1;
	struct cal_job *j2 = NULL;
	struct cal_calib_tokens *t2 = NULL;
	cr_assert_eq(cal_job_open(&o2, CAL_JOB_OPEN_NO_BACKEND, &j2, NULL, &err), CAL_OK);
	cr_assert_eq(cal_job_tokens(j2, &t2, NULL, &err), CAL_ERR_INVALID);
	cr_assert_null(t2);
	cal_error_clear(&err);
	cal_job_close(j2);

	free(a);
	free(b);
	cal_calib_tokens_free(tk);
	cal_job_close(j);
	rm_rf(root);
}

Test(job, export_and_verify_through_the_job)
{
	char *root = tmpdir();
	char *model = make_model(root, "mixtral", "default");
	char *tok = make_tokens(root, "tok.jsonl", 2, 16);
	char *out = path2(root, "out");
	struct cal_job_opts o = cpu_opts(model);
	o.tokens = tok;
	struct cal_error err = {0};
	struct cal_job *j = NULL;
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *c = NULL;
	struct cal_stats *stats = NULL;
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &j, NULL, &err), CAL_OK);
	cr_assert_eq(cal_job_tokens(j, &tk, NULL, &err), CAL_OK);
	cr_assert_eq(cal_job_calib_open(j, NULL, &c, &err), CAL_OK);
	cr_assert_eq(cal_calib_run(c, tk, &err), CAL_OK, "%s", cal_error_msg(&err));
	char *text = cal_calib_stats_json(c), *sp = path2(root, "stats.json");
	FILE *f = fopen(sp, "w");
	cr_assert(f && text);
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
	free(text);
	cr_assert_eq(cal_stats_load(sp, &stats, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_calib_free(c);

	json_t *rep = NULL;
	cr_assert_eq(cal_job_export(j, stats, out, &rep, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert(json_is_object(rep));
	json_decref(rep);
	cr_assert_eq(cal_job_export(j, stats, out, NULL, &err), CAL_ERR_EXISTS);
	cal_error_clear(&err);

	struct cal_devices cpu = {.kind = CAL_DEVICE_CPU};
	cr_assert_eq(cal_job_verify(out, model, &cpu, &rep, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert(json_is_true(json_object_get(rep, "ok")));
	cr_assert(json_array_size(json_object_get(rep, "weights")) > 0);
	json_decref(rep);

	cal_stats_free(stats);
	cal_calib_tokens_free(tk);
	cal_job_close(j);
	rm_rf(root);
}

/* ---- the command line's dataset list ------------------------------------------ */

Test(job, datasets_parse)
{
	struct cal_job_dataset *ds = NULL;
	size_t n = 9;
	struct cal_error err = {0};
	cr_assert_eq(cal_job_datasets_parse(NULL, &ds, &n, &err), CAL_OK);
	cr_assert_eq(n, 0);
	cr_assert_eq(cal_job_datasets_parse("a.jsonl:3,dir/b.txt,c:d.jsonl:7", &ds, &n, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(n, 3);
	cr_assert_str_eq(ds[0].path, "a.jsonl");
	cr_assert_eq(ds[0].samples, 3);
	cr_assert_str_eq(ds[1].path, "dir/b.txt");
	cr_assert_eq(ds[1].samples, 0);
	cr_assert_str_eq(ds[2].path, "c:d.jsonl");
	cr_assert_eq(ds[2].samples, 7);
	cal_job_datasets_free(ds, n);
	cr_assert_eq(cal_job_datasets_parse("a.jsonl:0", &ds, &n, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "a.jsonl:0"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_assert_eq(cal_job_datasets_parse("a,,b", &ds, &n, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
}
