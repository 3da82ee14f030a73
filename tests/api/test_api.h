/*
 * test_api.h — what the files of the api suite share (test_api.c,
 * test_api_state.c, test_api_inputs.c): the daemon under test, H, which the
 * suite's setup in test_api.c prepares before every test and removes after
 * it, and a few helpers.
 */
#ifndef CAL_TEST_API_H
#define CAL_TEST_API_H

#include <jansson.h>

#include "harness.h"

extern struct hd H;

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define JSON "Content-Type: application/json\r\n"
/* a minimal valid recipe in YAML flow style, as a JSON string body */
#define INLINE_BODY "metadata: {recipe_type: ptq}\\nquantize: {algorithm: max, quant_cfg: [{quantizer_name: '*', enable: false}]}"
/* Members of a job body: the suite's model (under {root}/models), its token
 * file, an output directory under {root}/out, and the three together. */
#define J_MODEL "\"model\":\"{root}/models/m\""
#define J_TOKENS "\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"}"
#define J_OUT(name) "\"output\":\"{root}/out/" name "\""
#define J_INPUTS(out) J_MODEL "," J_TOKENS "," J_OUT(out)

/* Sleeps s seconds. */
void nap(double s);
/* The error code of a job object, or NULL. */
const char *err_code(json_t *job);
/* Entries of dir whose name starts with prefix, and the bytes of the files
 * directly in them (a partial checkpoint a worker left behind). */
int leftovers(const char *dir, const char *prefix, long long *ret_bytes);
/* One request through the harness; asserts the status is `want` and the
 * body JSON, and returns it (caller owns). */
json_t *get_json(const char *method, const char *path, const char *hdrs, const char *body, int want);
/* Expects job id in state (now), why in the message. */
void expect_state(const char *id, const char *state, const char *why);
/* Submits job `name` writing out/<out> (key: its Idempotency-Key, or
 * NULL); asserts it is accepted and copies its id to id. */
void submit(const char *name, const char *out, const char *key, char id[32]);
/* Polls job id until it is in state, at most timeout_s; asserts it gets
 * there (why in the message, or NULL for a message naming both). */
void await_state(const char *id, const char *state, double timeout_s, const char *why);

#endif
