/*
 * fuzz_job_spec.c — libFuzzer target for request bodies: bounded JSON
 * parsing (duplicates, depth), the Idempotency-Key fingerprint, and job
 * submission validation (api/jobspec.c).  Roots point at a directory that
 * does not exist, so any path the fuzzer invents is refused after
 * realpath(); everything before that (types, ranges, unknown fields,
 * recipe, devices, options) is exercised.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "api/jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char *roots[] = {"/nonexistent-calibd-fuzz-root"};
	static const int devices[] = {0, 1, 2, 3};
	const struct cal_jobspec_env env = {
		.model_roots = roots, .n_model_roots = 1,
		.data_roots = roots, .n_data_roots = 1,
		.output_roots = roots, .n_output_roots = 1,
		.recipes_dir = NULL, .devices = devices, .n_devices = 4,
	};
	if (size > (1u << 20))
		return 0;
	struct cal_api_problem prob = {0};
	json_t *req = NULL, *spec = NULL;
	if (cal_json_parse_body((const char *)data, size, &req, &prob) == CAL_API_OK) {
		char fp[65];
		cal_json_fingerprint(req, fp);
		cal_jobspec_validate(req, &env, &spec, &prob);
		json_t *body = cal_api_problem_json(&prob);
		json_decref(body);
	}
	cal_api_problem_clear(&prob);
	json_decref(spec);
	json_decref(req);
	return 0;
}
