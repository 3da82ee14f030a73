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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/calib.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/recipe.h"
#include "fixture.h"
#include "testrng.h"
#include "testutil.h"

#define SEED 20261122u

struct env {
	char dir[64];
	char model[128];
	struct cal_model_desc *d;
	struct cal_recipe *r;
	struct cal_plan *p;
	struct cal_calib_tokens *tk;
	uint16_t *last_hidden;
	uint64_t hidden_n;
};

/* qwen3_moe fixture (3 layers) with 64 experts: the routed experts make
 * up most of the weights, as in real MoE models. */
static void env_init(struct env *e, size_t n_seq, size_t min_len, size_t max_len)
{
	struct cal_error err = {0};
	struct cal_fixture_opts fo = {.arch = "qwen3_moe", .layout = CAL_FIXTURE_LAYOUT_FUSED, .seed = 7,
				      .num_experts = 64};
	snprintf(e->dir, sizeof(e->dir), "/tmp/calib-mem-XXXXXX");
	cr_assert_not_null(mkdtemp(e->dir));
	snprintf(e->model, sizeof(e->model), "%s/model", e->dir);
	cr_assert_eq(cal_fixture_write(&fo, e->model, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_model_desc_load(e->model, &e->d, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_recipe_load("general/ptq/nvfp4_experts_only-kv_fp8", NULL, &e->r, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_plan_build(e->d, e->r, &e->p, &err), CAL_OK, "%s", cal_error_msg(&err));

	char *text = NULL;
	size_t text_len = 0;
	FILE *f = open_memstream(&text, &text_len);
	cr_assert_not_null(f);
	uint64_t s = SEED;
	for (size_t i = 0; i < n_seq; i++) {
		size_t len = min_len + cal_test_splitmix(&s) % (max_len - min_len + 1);
		fputs("{\"input_ids\": [", f);
		for (size_t j = 0; j < len; j++)
			fprintf(f, "%s%u", j ? "," : "",
				(unsigned)(cal_test_splitmix(&s) % (uint64_t)e->d->vocab_size));
		fputs("]}\n", f);
	}
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(cal_calib_tokens_parse("test", text, text_len, (uint64_t)e->d->vocab_size,
					    &e->tk, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	free(text);
}

static void env_free(struct env *e)
{
	cal_calib_tokens_free(e->tk);
	cal_plan_free(e->p);
	cal_recipe_free(e->r);
	cal_model_desc_free(e->d);
	free(e->last_hidden);
	if (e->dir[0])
		cal_test_rm_rf(e->dir);
	memset(e, 0, sizeof(*e));
}

static enum cal_status keep_hidden(void *ctx, int32_t layer, uint16_t *h, uint64_t n,
				   uint64_t hs, struct cal_error *err)
{
	struct env *e = ctx;
	(void)err;
	if (layer + 1 == e->d->num_layers) {
		free(e->last_hidden);
		e->last_hidden = malloc(n * hs * 2);
		if (!e->last_hidden)
			return CAL_ERR_NOMEM;
		memcpy(e->last_hidden, h, n * hs * 2);
		e->hidden_n = n * hs;
	}
	return CAL_OK;
}

/* One run with cap max_mem (0: none); returns its status, the statistics
 * JSON (heap) and the run's perf.  The last hidden states go to e. */
static enum cal_status run(struct env *e, uint64_t max_mem, char **ret_json,
			   struct cal_calib_perf *perf, struct cal_error *err)
{
	struct cal_calib_opts o = {.cpu_threads = 2, .max_mem = max_mem, .on_hidden = keep_hidden,
				   .ctx = e};
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

Test(calib_mem, weights_larger_than_the_cap)
{
	struct env e = {0};
	struct cal_error err = {0};
	struct cal_calib_perf p0, p1;
	char *j0 = NULL, *j1 = NULL;
	env_init(&e, 6, 8, 40);
	cr_assert_eq(run(&e, 0, &j0, &p0, &err), CAL_OK, "%s", cal_error_msg(&err));
	uint16_t *h0 = e.last_hidden;
	uint64_t n0 = e.hidden_n;
	e.last_hidden = NULL;
	cr_expect_eq(p0.streamed, 0, "uncapped CPU runs use the mapping");

	uint64_t cap = p0.model_weight_bytes * 4 / 5;
	cr_assert(cap > p0.max_layer_bytes + ((uint64_t)256 << 10),
		  "fixture too small for the test: layer %llu, model %llu",
		  (unsigned long long)p0.max_layer_bytes, (unsigned long long)p0.model_weight_bytes);
	cr_assert_eq(run(&e, cap, &j1, &p1, &err), CAL_OK, "cap %llu: %s",
		     (unsigned long long)cap, cal_error_msg(&err));
	cr_expect_eq(p1.streamed, 1);
	cr_expect(p1.model_weight_bytes > cap, "model %llu <= cap %llu",
		  (unsigned long long)p1.model_weight_bytes, (unsigned long long)cap);
	cr_expect(p1.peak_mem <= cap, "peak %llu > cap %llu", (unsigned long long)p1.peak_mem,
		  (unsigned long long)cap);
	cr_expect(p1.peak_mem >= p1.max_layer_bytes, "peak %llu: the arenas were not counted",
		  (unsigned long long)p1.peak_mem);
	cr_assert_not_null(j0);
	cr_assert_not_null(j1);
	cr_expect_str_eq(j1, j0, "statistics differ under the cap");
	cr_assert_eq(e.hidden_n, n0);
	cr_expect(memcmp(e.last_hidden, h0, n0 * 2) == 0, "hidden states differ under the cap");
	free(h0);
	free(j0);
	free(j1);
	cal_error_clear(&err);
	env_free(&e);
}

Test(calib_mem, hidden_states_on_the_host)
{
	struct env e = {0};
	struct cal_error err = {0};
	struct cal_calib_perf p0, p1;
	char *j0 = NULL, *j1 = NULL;
	env_init(&e, 64, 16, 48);
	cr_assert_eq(run(&e, 0, &j0, &p0, &err), CAL_OK, "%s", cal_error_msg(&err));
	uint16_t *h0 = e.last_hidden;
	uint64_t n0 = e.hidden_n;
	e.last_hidden = NULL;
	/* room for the arenas, the metadata and a few sequences, not for all
	 * hidden states next to a useful micro-batch */
	uint64_t hid = n0 * 2;
	uint64_t cap = 2 * p0.max_layer_bytes + hid / 2 + ((uint64_t)128 << 10);
	cr_assert(cap < p0.model_weight_bytes + hid, "cap %llu", (unsigned long long)cap);
	cr_assert_eq(run(&e, cap, &j1, &p1, &err), CAL_OK, "cap %llu: %s",
		     (unsigned long long)cap, cal_error_msg(&err));
	cr_expect_eq(p1.hidden_on_host, 1, "hidden states (%llu bytes) stayed in back-end memory",
		     (unsigned long long)hid);
	cr_expect(p1.n_mb > 1, "one micro-batch (%llu tokens)", (unsigned long long)p1.mb_tokens);
	cr_expect(p1.peak_mem <= cap, "peak %llu > cap %llu", (unsigned long long)p1.peak_mem,
		  (unsigned long long)cap);
	cr_assert_not_null(j1);
	cr_expect_str_eq(j1, j0, "statistics differ with the hidden states on the host");
	cr_assert_eq(e.hidden_n, n0);
	cr_expect(memcmp(e.last_hidden, h0, n0 * 2) == 0, "hidden states differ");
	free(h0);
	free(j0);
	free(j1);
	cal_error_clear(&err);
	env_free(&e);
}

Test(calib_mem, cap_below_two_layers_is_refused)
{
	struct env e = {0};
	struct cal_error err = {0};
	struct cal_calib_perf p0, p1;
	char *j0 = NULL, *j1 = NULL;
	env_init(&e, 2, 8, 16);
	cr_assert_eq(run(&e, 0, &j0, &p0, &err), CAL_OK, "%s", cal_error_msg(&err));
	enum cal_status st = run(&e, p0.max_layer_bytes, &j1, &p1, &err);
	cr_expect_eq(st, CAL_ERR_NOMEM, "status %d: %s", (int)st, cal_error_msg(&err));
	cr_expect(strstr(cal_error_msg(&err), "--max-gpu-mem") != NULL, "message: %s",
		  cal_error_msg(&err));
	free(j0);
	free(j1);
	cal_error_clear(&err);
	env_free(&e);
}
