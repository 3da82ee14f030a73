/*
 * routes_recipes.h — the handlers of the /v1/recipes and /v1/plan
 * resources (api/recipes.c): list the recipes, show one, and plan a model
 * with a recipe without running it.  Same contract as every route handler
 * (api/routes_jobs.h); api/routes.c puts them in the route table.
 */
#ifndef CAL_API_ROUTES_RECIPES_H
#define CAL_API_ROUTES_RECIPES_H

#include "api/http.h"

enum MHD_Result cal_route_recipes_list(struct cal_http_req *r);
enum MHD_Result cal_route_recipe_get(struct cal_http_req *r);
enum MHD_Result cal_route_plan(struct cal_http_req *r);

#endif
