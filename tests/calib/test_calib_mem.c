/*
 * test_calib_mem.c — calibration under a memory cap smaller than the model,
 * on the CPU back end, which emulates a small GPU: with opts.max_mem the
 * weights stream layer by layer through two arenas in back-end memory, the
 * cap is enforced on every back-end allocation, micro-batches shrink to
 * fit, and when the hidden states do not fit they live in (pinned) host
 * memory.  The statistics and the last layer's hidden states must be
 * byte-identical to an uncapped run, and the peak back-end memory must
 * stay under the cap.  Token ids come from a fixed seed (SEED).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib_env.h"

#define SEED 20261122u

/* qwen3_moe fixture (3 layers) with 64 experts: the routed experts make
 * up most of the weights, as in real MoE models.  recipe: NULL for
 * general/ptq/nvfp4_experts_only-kv_fp8. */
static void env_init(struct calib_env *e, const char *recipe, size_t n_seq, size_t min_len,
		     size_t max_len)
{
	struct cal_fixture_opts fo = {.arch = "qwen3_moe", .layout = CAL_FIXTURE_LAYOUT_FUSED,
				      .seed = 7, .num_experts = 64};
	calib_env_model(e, "calib-mem", &fo);
	calib_env_plan(e, recipe ? recipe : "general/ptq/nvfp4_experts_only-kv_fp8");
	calib_env_tokens(e, n_seq, min_len, max_len, SEED);
}

/* One run with cap max_mem (0: none); returns its status, the statistics
 * JSON (heap) and the run's perf.  The last hidden states go to e. */
static enum cal_status run(struct calib_env *e, uint64_t max_mem, char **ret_json,
			   struct cal_calib_perf *perf, struct cal_error *err)
{
	struct cal_calib_opts o = {.cpu_threads = 2, .max_mem = max_mem,
				   .on_hidden = calib_env_keep_hidden, .ctx = e};
	struct cal_calib *c = NULL;
	enum cal_status st = cal_calib_open(e->model, e->p, &o, &c, err);
	*ret_json = NULL;
	if (st >= 0)
		st = cal_calib_run(c, e->tk, err);
	if (st >= 0) {
		*ret_json = cal_calib_stats_json(c);
		cal_calib_perf(c, perf);
	}
	cal_calib_free(c);
	return st;
}

/* An uncapped run's results, what a capped run must reproduce. */
struct uncapped {
	struct cal_calib_perf perf;
	char *json;
	uint16_t *hidden;
	uint64_t hidden_n;
};

/* env_init(e, recipe, n_seq, min_len, max_len), then the uncapped run into u */
static void run_uncapped(struct calib_env *e, const char *recipe, struct uncapped *u,
			 size_t n_seq, size_t min_len, size_t max_len)
{
	struct cal_error err = {0};
	env_init(e, recipe, n_seq, min_len, max_len);
	cr_assert_eq(run(e, 0, &u->json, &u->perf, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_not_null(u->json);
	u->hidden = e->last_hidden;
	u->hidden_n = e->hidden_n;
	e->last_hidden = NULL;
}

/* The statistics JSON *js without AWQ's search times (awq_lite's search_s
 * and clip.clip_s), which no two runs share. */
static void untimed(char **js)
{
	json_t *o = json_loads(*js, 0, NULL), *a = json_object_get(o, "awq_lite");
	cr_assert_not_null(o);
	json_object_del(a, "search_s");
	json_object_del(a, "pass_s");
	json_object_del(json_object_get(a, "clip"), "clip_s");
	free(*js);
	*js = json_dumps(o, JSON_SORT_KEYS);
	json_decref(o);
}

/* Runs under cap: it must succeed, stay under the cap and give u's
 * statistics and hidden states byte for byte (what: the condition, for
 * the messages).  Returns the run's perf and frees u. */
static struct cal_calib_perf run_capped_same(struct calib_env *e, struct uncapped *u, uint64_t cap,
					     const char *what)
{
	struct cal_error err = {0};
	struct cal_calib_perf perf;
	char *json = NULL;
	cr_assert_eq(run(e, cap, &json, &perf, &err), CAL_OK, "cap %llu: %s",
		     (unsigned long long)cap, cal_error_msg(&err));
	cr_expect(perf.peak_mem <= cap, "peak %llu > cap %llu",
		  (unsigned long long)perf.peak_mem, (unsigned long long)cap);
	cr_assert_not_null(json);
	untimed(&json);
	untimed(&u->json);
	cr_expect_str_eq(json, u->json, "statistics differ %s", what);
	cr_assert_eq(e->hidden_n, u->hidden_n);
	cr_expect(memcmp(e->last_hidden, u->hidden, u->hidden_n * 2) == 0,
		  "hidden states differ %s", what);
	free(json);
	free(u->json);
	free(u->hidden);
	return perf;
}

Test(calib_mem, weights_larger_than_the_cap)
{
	struct calib_env e = {0};
	struct uncapped u;
	run_uncapped(&e, NULL, &u, 6, 8, 40);
	cr_expect_eq(u.perf.streamed, 0, "uncapped CPU runs use the mapping");

	uint64_t cap = u.perf.model_weight_bytes * 4 / 5;
	cr_assert(cap > u.perf.max_layer_bytes + ((uint64_t)256 << 10),
		  "fixture too small for the test: layer %llu, model %llu",
		  (unsigned long long)u.perf.max_layer_bytes,
		  (unsigned long long)u.perf.model_weight_bytes);
	struct cal_calib_perf p1 = run_capped_same(&e, &u, cap, "under the cap");
	cr_expect_eq(p1.streamed, 1);
	cr_expect(p1.model_weight_bytes > cap, "model %llu <= cap %llu",
		  (unsigned long long)p1.model_weight_bytes, (unsigned long long)cap);
	cr_expect(p1.peak_mem >= p1.max_layer_bytes, "peak %llu: the arenas were not counted",
		  (unsigned long long)p1.peak_mem);
	calib_env_free(&e);
}

Test(calib_mem, hidden_states_on_the_host)
{
	struct calib_env e = {0};
	struct uncapped u;
	run_uncapped(&e, NULL, &u, 64, 16, 48);
	/* room for the arenas, the metadata and a few sequences, not for all
	 * hidden states next to a useful micro-batch */
	uint64_t hid = u.hidden_n * 2;
	uint64_t cap = 2 * u.perf.max_layer_bytes + hid / 2 + ((uint64_t)128 << 10);
	cr_assert(cap < u.perf.model_weight_bytes + hid, "cap %llu", (unsigned long long)cap);
	struct cal_calib_perf p1 =
		run_capped_same(&e, &u, cap, "with the hidden states on the host");
	cr_expect_eq(p1.hidden_on_host, 1, "hidden states (%llu bytes) stayed in back-end memory",
		     (unsigned long long)hid);
	cr_expect(p1.n_mb > 1, "one micro-batch (%llu tokens)", (unsigned long long)p1.mb_tokens);
	calib_env_free(&e);
}

Test(calib_mem, cap_below_two_layers_is_refused)
{
	struct calib_env e = {0};
	struct cal_error err = {0};
	struct cal_calib_perf p0, p1;
	char *j0 = NULL, *j1 = NULL;
	env_init(&e, NULL, 2, 8, 16);
	cr_assert_eq(run(&e, 0, &j0, &p0, &err), CAL_OK, "%s", cal_error_msg(&err));
	enum cal_status st = run(&e, p0.max_layer_bytes, &j1, &p1, &err);
	cr_expect_eq(st, CAL_ERR_NOMEM, "status %d: %s", (int)st, cal_error_msg(&err));
	cr_expect(strstr(cal_error_msg(&err), "--max-gpu-mem") != NULL, "message: %s",
		  cal_error_msg(&err));
	free(j0);
	free(j1);
	cal_error_clear(&err);
	calib_env_free(&e);
}

/* AWQ's searches (nvfp4_awq_full: awq_lite's, then the NVFP4 clip's) take
 * their back-end chunk from what the cap leaves (docs/awq.md "What runs
 * where"): under a cap that streams the weights the run stays under it and
 * gives the uncapped statistics (with the searched linears' input amax). */
Test(calib_mem, awq_search_under_the_cap)
{
	struct calib_env e = {0};
	struct uncapped u;
	run_uncapped(&e, "general/ptq/nvfp4_awq_full-kv_fp8_cast", &u, 6, 8, 40);
	uint64_t cap = u.perf.model_weight_bytes * 4 / 5;
	struct cal_calib_perf p1 = run_capped_same(&e, &u, cap, "with the AWQ searches");
	cr_expect_eq(p1.streamed, 1);
	calib_env_free(&e);
}

/* A cap too small for a search fails the run with an error that names the
 * linear and the option (awq_run.c search_failed), never a search that
 * crawls a token at a time: every cap from 4/5 of the weights down, in
 * steps of 1/64, either runs or fails naming --max-gpu-mem, and some cap
 * between the streaming's floor and what the searches need fails in the
 * search. */
Test(calib_mem, awq_search_short_of_the_cap_names_it)
{
	struct calib_env e = {0};
	struct uncapped u;
	run_uncapped(&e, "general/ptq/nvfp4_awq-kv_fp8_cast", &u, 6, 8, 40);
	uint64_t wb = u.perf.model_weight_bytes, step = wb / 64;
	int in_search = 0;
	for (uint64_t cap = wb * 4 / 5; cap > step; cap -= step) {
		struct cal_error err = {0};
		struct cal_calib_perf p;
		char *js = NULL;
		enum cal_status st = run(&e, cap, &js, &p, &err);
		free(js);
		if (st == CAL_OK) {
			cr_expect(p.peak_mem <= cap, "cap %llu: peak %llu", (unsigned long long)cap,
				  (unsigned long long)p.peak_mem);
			continue;
		}
		const char *m = cal_error_msg(&err);
		cr_expect_eq(st, CAL_ERR_NOMEM, "cap %llu: status %d: %s", (unsigned long long)cap,
			     (int)st, m);
		cr_expect(strstr(m, "--max-gpu-mem") != NULL, "cap %llu: %s",
			  (unsigned long long)cap, m);
		if (strstr(m, "awq: model.layers.") && strstr(m, "its search holds"))
			in_search = 1;
		cal_error_clear(&err);
	}
	cr_expect(in_search, "no cap failed in an AWQ search");
	free(u.json);
	free(u.hidden);
	calib_env_free(&e);
}
