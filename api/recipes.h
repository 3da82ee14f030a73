/*
 * recipes.h — recipe and model checks shared by the /v1/recipes, /v1/plan
 * and /v1/jobs handlers (api/recipes.c).  They load a recipe (by name from
 * the daemon's recipe tree only, or inline YAML whose imports must stay in
 * that tree), and open jobs through the engine's entry point without a back
 * end (engine/job.h: config.json, the plan, what the engine runs).
 * Everything here is CPU-only work on small inputs, bounded (see
 * CAL_API_PLAN_MAX_QUANTIZERS and CAL_API_PLAN_SLOTS), so it runs on the
 * HTTP thread that asked for it.
 */
#ifndef CAL_API_RECIPES_H
#define CAL_API_RECIPES_H

#include <jansson.h>

#include "api/http.h"

/* A model whose plan would hold more quantizers than this (estimated from
 * config.json before anything is built) is refused over HTTP; the largest
 * released MoE models have ~10^5.  `calibd plan` has no such limit. */
#define CAL_API_PLAN_MAX_QUANTIZERS (1L << 20)
/* Recipe/plan builds running at once on HTTP threads; more wait up to
 * CAL_API_PLAN_WAIT_S, then get 503 "busy". */
#define CAL_API_PLAN_SLOTS 4
#define CAL_API_PLAN_WAIT_S 5

/*
 * Checks a validated job spec for real, as the worker will run it: records
 * the recipe tree as spec.recipes_dir (the worker resolves the name, or the
 * inline recipe's imports, in the same tree), turns the spec into the
 * engine's job options (api/jobspec.h cal_jobspec_job_opts) and opens the
 * job without a back end (engine/job.h): the recipe (field `recipe_field`
 * in errors: "recipe", "recipe.yaml" or "recipe_yaml"), config.json, the
 * plan, the engine's capability query and the checkpoint headers.  On
 * failure prob names the field: unknown_recipe / invalid_recipe
 * ("recipe..."), not_a_model / unsupported_model ("model", with the
 * engine's reason), busy, internal.
 */
enum cal_api_err cal_api_job_check(struct cal_http_req *r, json_t *spec, const char *recipe_field,
				   struct cal_api_problem *prob);

/* Which field of the request carried the recipe: "recipe_yaml",
 * "recipe.yaml" or "recipe" (never NULL). */
const char *cal_api_recipe_field(const json_t *req);

#endif
