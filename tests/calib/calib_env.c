/*
 * calib_env.c — the calibration tests' setup (calib_env.h).
 */
#include "calib_env.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "testrng.h"
#include "testutil.h"

void calib_env_model(struct calib_env *e, const char *tag, const struct cal_fixture_opts *fo)
{
	struct cal_error err = {0};
	e->dir = cal_test_tmpdir(tag);
	e->model = cal_test_path(e->dir, "model");
	cr_assert_eq(cal_fixture_write(fo, e->model, &err), CAL_OK, "fixture %s: %s", fo->arch,
		     cal_error_msg(&err));
	cr_assert_eq(cal_model_desc_load(e->model, &e->d, &err), CAL_OK, "%s", cal_error_msg(&err));
}

void calib_env_plan(struct calib_env *e, const char *recipe)
{
	struct cal_error err = {0};
	cr_assert_eq(cal_recipe_load(recipe, NULL, &e->r, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_plan_build(e->d, e->r, &e->p, &err), CAL_OK, "%s", cal_error_msg(&err));
}

void calib_env_tokens(struct calib_env *e, size_t n, size_t min_len, size_t max_len,
		      uint64_t seed)
{
	struct cal_error err = {0};
	char *text = NULL;
	size_t text_len = 0;
	FILE *f = open_memstream(&text, &text_len);
	cr_assert_not_null(f);
	uint64_t s = seed;
	for (size_t i = 0; i < n; i++) {
		size_t len = min_len + cal_test_splitmix(&s) % (max_len - min_len + 1);
		fputs("{\"input_ids\": [", f);
		for (size_t j = 0; j < len; j++)
			fprintf(f, "%s%u", j ? ", " : "",
				(unsigned)(cal_test_splitmix(&s) % (uint64_t)e->d->vocab_size));
		fputs("]}\n", f);
	}
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(cal_calib_tokens_parse("test", text, text_len, (uint64_t)e->d->vocab_size,
					    &e->tk, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	free(text);
}

enum cal_status calib_env_keep_hidden(void *ctx, int32_t layer, uint16_t *h, uint64_t n,
				      uint64_t hs, struct cal_error *err)
{
	struct calib_env *e = ctx;
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

void calib_env_free(struct calib_env *e)
{
	cal_calib_free(e->c);
	cal_calib_tokens_free(e->tk);
	cal_plan_free(e->p);
	cal_recipe_free(e->r);
	cal_model_desc_free(e->d);
	if (e->dir)
		cal_test_rm_rf(e->dir);
	CAL_FREE_ALL(e->last_hidden, e->dir, e->model);
	memset(e, 0, sizeof(*e));
}
