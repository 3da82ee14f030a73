/*
 * calib_env.h — what the calibration tests (test_calib.c, test_calib_mem.c)
 * set up around one run: a fixture model in a temporary directory, its
 * description, a recipe and plan, random calibration tokens, and a hidden
 * state hook that keeps the last layer's output.  Every helper asserts
 * (cr_assert); calib_env_free releases whatever is set and removes the
 * directory.
 */
#ifndef CAL_TESTS_CALIB_ENV_H
#define CAL_TESTS_CALIB_ENV_H

#include <stddef.h>
#include <stdint.h>

#include "engine/calib.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/recipe.h"
#include "fixture.h"

struct calib_env {
	char *dir;   /* temporary directory (removed by calib_env_free) */
	char *model; /* dir/model: the fixture */
	struct cal_model_desc *d;
	struct cal_recipe *r;
	struct cal_plan *p;
	struct cal_calib_tokens *tk;
	struct cal_calib *c; /* the test's run, when it keeps one */
	/* hidden states of the last layer (copy, calib_env_keep_hidden) */
	uint16_t *last_hidden;
	uint64_t hidden_n;
	int layers_seen; /* for an on_layer hook of the test's */
};

/* Writes the fixture fo into a new temporary directory (/tmp/calibd-TAG-*)
 * and loads its description into e->d. */
void calib_env_model(struct calib_env *e, const char *tag, const struct cal_fixture_opts *fo);

/* Loads the recipe and builds e->p for e->d. */
void calib_env_plan(struct calib_env *e, const char *recipe);

/* n token sequences of lengths uniform in [min_len, max_len], ids uniform
 * below the vocabulary size, from a splitmix64 stream seeded by seed. */
void calib_env_tokens(struct calib_env *e, size_t n, size_t min_len, size_t max_len,
		      uint64_t seed);

/* An on_hidden hook (ctx: the env): copies the last layer's hidden states
 * to e->last_hidden (replacing an earlier copy), e->hidden_n elements. */
enum cal_status calib_env_keep_hidden(void *ctx, int32_t layer, uint16_t *h, uint64_t n,
				      uint64_t hs, struct cal_error *err);

void calib_env_free(struct calib_env *e);

#endif
