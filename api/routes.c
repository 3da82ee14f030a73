/*
 * routes.c — every HTTP route, once.  The handlers are declared in
 * api/routes.h.  The OpenAPI document (openapi.yaml) lists the same set;
 * tests/api/test_units.c checks that they agree.
 */
#include "api/routes.h"

const struct cal_route cal_routes[] = {
	{"POST", "/v1/jobs", cal_route_jobs_create, CAL_ROUTE_TOKEN | CAL_ROUTE_BODY},
	{"GET", "/v1/jobs", cal_route_jobs_list, 0},
	{"GET", "/v1/jobs/{id}", cal_route_job_get, 0},
	{"DELETE", "/v1/jobs/{id}", cal_route_job_cancel, CAL_ROUTE_TOKEN},
	{"GET", "/v1/jobs/{id}/events", cal_route_job_events, 0},
	{"GET", "/v1/jobs/{id}/log", cal_route_job_log, 0},
	{"GET", "/v1/jobs/{id}/report", cal_route_job_report, 0},
	{"GET", "/v1/jobs/{id}/report.html", cal_route_job_report_html, 0},
	{"GET", "/v1/recipes", cal_route_recipes_list, 0},
	{"GET", "/v1/recipes/{name}", cal_route_recipe_get, CAL_ROUTE_PARAM_PATH},
	{"POST", "/v1/plan", cal_route_plan, CAL_ROUTE_TOKEN | CAL_ROUTE_BODY}, /* a dry run is work */
	{"GET", "/v1/devices", cal_route_devices, 0},
	{"GET", "/livez", cal_route_livez, CAL_ROUTE_PUBLIC | CAL_ROUTE_ADMIN},
	{"GET", "/readyz", cal_route_readyz, CAL_ROUTE_PUBLIC | CAL_ROUTE_ADMIN},
	{"GET", "/metrics", cal_route_metrics, CAL_ROUTE_ADMIN},
};
const size_t cal_n_routes = sizeof(cal_routes) / sizeof(cal_routes[0]);
