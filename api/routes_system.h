/*
 * routes_system.h — the handlers of the probes and metrics (api/system.c):
 * /livez (the supervisor answers at all), /readyz (jobs loaded, not
 * stopping) and /metrics (Prometheus text).  Same contract as every route
 * handler (api/routes_jobs.h); api/routes.c puts them in the route table.
 */
#ifndef CAL_API_ROUTES_SYSTEM_H
#define CAL_API_ROUTES_SYSTEM_H

#include "api/http.h"

enum MHD_Result cal_route_livez(struct cal_http_req *r);
enum MHD_Result cal_route_readyz(struct cal_http_req *r);
enum MHD_Result cal_route_metrics(struct cal_http_req *r);

#endif
