/*
 * routes_jobs.h — the handlers of the /v1/jobs resource (api/jobs.c):
 * submit, list, get, cancel, the event stream, the log and the report.
 * Each takes a request the dispatcher (api/http.c) has matched, authorised
 * and, for CAL_ROUTE_BODY routes, read in full; each queues exactly one
 * response and returns what MHD_queue_response returned.  api/routes.c
 * puts them in the route table.
 */
#ifndef CAL_API_ROUTES_JOBS_H
#define CAL_API_ROUTES_JOBS_H

#include "api/http.h"

enum MHD_Result cal_route_jobs_create(struct cal_http_req *r);
enum MHD_Result cal_route_jobs_list(struct cal_http_req *r);
enum MHD_Result cal_route_job_get(struct cal_http_req *r);
enum MHD_Result cal_route_job_cancel(struct cal_http_req *r);
enum MHD_Result cal_route_job_events(struct cal_http_req *r);
enum MHD_Result cal_route_job_log(struct cal_http_req *r);
enum MHD_Result cal_route_job_report(struct cal_http_req *r);
enum MHD_Result cal_route_job_report_html(struct cal_http_req *r);

#endif
