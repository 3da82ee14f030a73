/*
 * routes_devices.h — the handler of the /v1/devices resource (api/system.c):
 * the GPUs the scheduler knows and which job holds each.  Same contract as
 * every route handler (api/routes_jobs.h); api/routes.c puts it in the
 * route table.
 */
#ifndef CAL_API_ROUTES_DEVICES_H
#define CAL_API_ROUTES_DEVICES_H

#include "api/http.h"

enum MHD_Result cal_route_devices(struct cal_http_req *r);

#endif
