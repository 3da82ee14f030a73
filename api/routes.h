/*
 * routes.h — every HTTP route handler, grouped by the file that defines it.
 * Each takes a request the dispatcher (api/http.c) has matched, authorised
 * and, for CAL_ROUTE_BODY routes, read in full; each queues exactly one
 * response and returns what MHD_queue_response returned.  api/routes.c
 * puts them in the route table.
 */
#ifndef CAL_API_ROUTES_H
#define CAL_API_ROUTES_H

#include "api/http.h"

/* /v1/jobs (api/jobs.c): submit, list, get, cancel, the event stream, the
 * log and the report. */
enum MHD_Result cal_route_jobs_create(struct cal_http_req *r);
enum MHD_Result cal_route_jobs_list(struct cal_http_req *r);
enum MHD_Result cal_route_job_get(struct cal_http_req *r);
enum MHD_Result cal_route_job_cancel(struct cal_http_req *r);
enum MHD_Result cal_route_job_events(struct cal_http_req *r);
enum MHD_Result cal_route_job_log(struct cal_http_req *r);
enum MHD_Result cal_route_job_report(struct cal_http_req *r);
enum MHD_Result cal_route_job_report_html(struct cal_http_req *r);

/* /v1/recipes and /v1/plan (api/recipes.c): list the recipes, show one, and
 * plan a model with a recipe without running it. */
enum MHD_Result cal_route_recipes_list(struct cal_http_req *r);
enum MHD_Result cal_route_recipe_get(struct cal_http_req *r);
enum MHD_Result cal_route_plan(struct cal_http_req *r);

/* The probes, metrics and devices (api/system.c): /livez (the supervisor
 * answers at all), /readyz (jobs loaded, not stopping), /metrics
 * (Prometheus text) and /v1/devices (the GPUs the scheduler knows and which
 * job holds each). */
enum MHD_Result cal_route_livez(struct cal_http_req *r);
enum MHD_Result cal_route_readyz(struct cal_http_req *r);
enum MHD_Result cal_route_metrics(struct cal_http_req *r);
enum MHD_Result cal_route_devices(struct cal_http_req *r);

#endif
