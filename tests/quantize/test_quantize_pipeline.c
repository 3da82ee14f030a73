/*
 * test_quantize_pipeline.c — suite 'unit': the export pipeline of `calibd
 * quantize` on the CPU back end: a failure injected in either stage (the
 * quantize thread, the writer thread; a disk that fills mid-shard) ends the
 * job with the error named and nothing published, without a deadlock;
 * --max-shard-size gives transformers' layout with the same bytes; `calibd
 * bench quantize` runs end to end (docs/export.md "Pipeline").
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/st/safetensors.h"
#include "qtest.h"

/* A failure in either pipeline stage (quantize thread, writer thread) ends
 * the job with the error, named, and publishes nothing; the rings never
 * block the other stage (the timeout would catch a deadlock). */
static void stage_fault(const char *var, const char *value, int want_rc, const char *want)
{
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "per-expert");
	char *tok = make_tokens(root, "tok.jsonl", 6, 40);
	char *dst = path2(root, "out"), *errf = path2(root, "stderr");
	size_t before = cal_test_count_entries(root);
	setenv(var, value, 1);
	int rc = run(NULL, errf, "quantize --model %s --recipe general/ptq/nvfp4_default-kv_fp8 "
		     "--calib-tokens %s --out %s --device cpu --max-shard-size 40KB", src, tok, dst);
	unsetenv(var);
	char *e = slurp(errf);
	cr_assert_eq(rc, want_rc, "%s=%s: exit %d: %s", var, value, rc, e);
	cr_assert(strstr(e, want), "%s=%s: the error does not say '%s': %s", var, value, want, e);
	cr_assert(!cal_test_exists(dst));
	cr_assert_eq(cal_test_count_entries(root), before + 1 /* stderr */, "something was left behind");
	rm_rf(root);
}

Test(pipeline, quantize_stage_fault_publishes_nothing, .timeout = 60)
{
	stage_fault("CALIBD_TEST_EXPORT_FAIL_LAYER", "1", 5, "injected quantize fault");
	stage_fault("CALIBD_TEST_EXPORT_FAIL_LAYER", "0", 5, "export of layer 0");
}

Test(pipeline, disk_full_mid_shard_names_the_file, .timeout = 60)
{
	/* the disk fills after ~50 kB: inside the second of several shards */
	stage_fault("CALIBD_TEST_WRITE_LIMIT", "50000", 4, "-of-0000");
	stage_fault("CALIBD_TEST_WRITE_LIMIT", "1", 4, ".safetensors: write failed");
}

/* --max-shard-size: transformers' layout, the same tensors byte for byte as
 * one model.safetensors, and verify and the loader read it. */
Test(pipeline, sharded_output_same_bytes, .timeout = 120)
{
	struct cal_error err = {0};
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "fused");
	char *tok = make_tokens(root, "tok.jsonl", 6, 40);
	char *one = path2(root, "one"), *many = path2(root, "many"), *errf = path2(root, "stderr");
	const char *args = "--recipe general/ptq/nvfp4_experts_only-kv_fp8 --samples 4 --seq-len 32 "
			   "--device cpu";
	int rc = run(NULL, errf, "quantize --model %s --calib-tokens %s %s --out %s", src, tok,
		     args, one);
	expect_exit(rc, 0, errf);
	rc = run(NULL, errf, "quantize --model %s --calib-tokens %s %s --out %s "
		 "--max-shard-size 30kb", src, tok, args, many);
	expect_exit(rc, 0, errf);
	cr_assert(cal_test_exists(path2(one, "model.safetensors")));
	cr_assert(!cal_test_exists(path2(one, "model.safetensors.index.json")));
	cr_assert(cal_test_exists(path2(many, "model.safetensors.index.json")));
	int shards = 0;
	for (int n = 2; n < 100 && !shards; n++) {
		char name[64];
		snprintf(name, sizeof(name), "model-00001-of-%05d.safetensors", n);
		if (cal_test_exists(path2(many, name)))
			shards = n;
	}
	cr_assert_geq(shards, 3, "no model-00001-of-0000N.safetensors (N >= 3) in %s", many);
	cr_assert(!cal_test_exists(path2(many, "model.safetensors")));
	cr_assert_eq(run(NULL, NULL, "verify %s --source %s", many, src), 0);
	struct cal_checkpoint *a = NULL, *b = NULL;
	cr_assert_eq(cal_checkpoint_open(one, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_checkpoint_open(many, &b, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_checkpoint_count(a), cal_checkpoint_count(b));
	/* one assertion at the end (Criterion reports every assertion) */
	const char *bad = NULL;
	for (size_t i = 0; i < cal_checkpoint_count(a) && !bad; i++) {
		const struct cal_st_tensor *ta = cal_checkpoint_tensor(a, i);
		const struct cal_st_tensor *tb = cal_checkpoint_find(b, ta->name);
		if (!tb || ta->nbytes != tb->nbytes || memcmp(ta->data, tb->data, ta->nbytes))
			bad = ta->name;
	}
	cr_assert(!bad, "%s differs or is missing in the sharded output", bad);
	cal_checkpoint_free(a);
	cal_checkpoint_free(b);
	rm_rf(root);
}

/* `calibd bench quantize` runs end to end on the CPU and prints its lines. */
Test(pipeline, bench_quantize_smoke, .timeout = 120)
{
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "fused");
	char *tok = make_tokens(root, "tok.jsonl", 4, 32);
	char *outf = path2(root, "stdout"), *errf = path2(root, "stderr");
	char *js = path2(root, "bench.json");
	int rc = run(outf, errf, "bench quantize --model %s --tokens %s --device cpu "
		     "--out-parent %s --write-bytes 1MB --json %s", src, tok, root, js);
	expect_exit(rc, 0, errf);
	char *o = slurp(outf);
	static const char *const want[] = {"disk read:", "disk write:", "floor:", "phases (s):",
					   "overlap:", "peak memory:", "end to end:"};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_assert(strstr(o, want[i]), "no '%s' in: %s", want[i], o);
	json_t *j = json_load_file(js, 0, NULL);
	cr_assert(j);
	cr_assert_gt(json_number_value(json_object_get(j, "wall_s")), 0.0);
	json_decref(j);
	cr_assert(!cal_test_exists(path2(root, "calibd-bench-out")), "the output was not removed");
	rm_rf(root);
}
