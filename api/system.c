/*
 * system.c — probes, devices and metrics: /livez (the supervisor answers at
 * all), /readyz (jobs loaded, not stopping), /v1/devices, /metrics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "api/routes.h"
#include "daemon/daemon.h"

enum MHD_Result cal_route_livez(struct cal_http_req *r)
{
	/* liveness checks this process only, never jobs or GPUs */
	return cal_http_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

enum MHD_Result cal_route_readyz(struct cal_http_req *r)
{
	pthread_mutex_lock(&r->d->mu);
	int ready = r->d->ready && !r->d->stopping;
	const char *why = !r->d->ready ? "starting" : r->d->stopping ? "stopping" : "ok";
	size_t queued = r->d->n_state[CAL_JOB_QUEUED], running = r->d->n_state[CAL_JOB_RUNNING];
	size_t corrupt = r->d->corrupt_jobs, fallbacks = r->d->state_fallbacks;
	pthread_mutex_unlock(&r->d->mu);
	return cal_http_json(r, ready ? 200 : 503,
			     json_pack("{s:s, s:I, s:I, s:I, s:I}", "status", why, "queued", (json_int_t)queued, "running",
				       (json_int_t)running, "skipped_job_dirs", (json_int_t)corrupt,
				       "state_fallbacks", (json_int_t)fallbacks));
}

enum MHD_Result cal_route_devices(struct cal_http_req *r)
{
	json_t *list = json_array();
	struct cal_daemon *d = r->d;
	pthread_mutex_lock(&d->mu);
	const struct cal_config *c = d->cfg;
	for (size_t i = 0; i < c->n_devices; i++) {
		const char *holder = NULL;
		for (size_t k = 0; k < d->n_jobs && !holder; k++) {
			const struct cal_job *j = d->jobs[k];
			if (j->state != CAL_JOB_RUNNING)
				continue;
			for (size_t m = 0; m < j->n_devices; m++)
				if (j->devices[m] == c->devices[i])
					holder = j->id;
		}
		json_array_append_new(list, json_pack("{s:i, s:s, s:s?}", "id", c->devices[i], "kind", "cuda",
						       "job", holder));
	}
	/* the CPU is shared: its running jobs, each with its ranks (options.ranks) */
	json_t *cpu = json_array();
	for (size_t k = 0; k < d->n_jobs; k++) {
		const struct cal_job *j = d->jobs[k];
		if (j->state != CAL_JOB_RUNNING || !j->want_cpu)
			continue;
		json_int_t ranks = json_integer_value(json_object_get(json_object_get(j->spec, "options"), "ranks"));
		json_array_append_new(cpu, json_pack("{s:s, s:I}", "job", j->id, "ranks", ranks > 0 ? ranks : 1));
	}
	pthread_mutex_unlock(&d->mu);
	return cal_http_json(r, 200, json_pack("{s:o, s:b, s:o}", "devices", list, "cpu", 1, "cpu_jobs", cpu));
}

enum MHD_Result cal_route_metrics(struct cal_http_req *r)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return MHD_NO;
	cal_metrics_render_jobs(r->d, f);
	cal_http_render_metrics(f);
	fclose(f);
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
	return cal_http_send(r, 200, resp);
}
