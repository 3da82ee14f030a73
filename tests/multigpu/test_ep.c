/*
 * test_ep.c — suite 'multigpu': expert parallelism in the calibration
 * engine and the export (docs/expert_parallel.md) on CPU ranks (threads of
 * one process, kernels/comm.h's threads implementation).  The tiny MoE
 * fixtures quantized over R = 1, 2 and 4 ranks give the same files byte for
 * byte (the report compared without its timings), and the same calibration
 * statistics; a dense model runs data parallel only; a sharded output has
 * the same shards and index; the streamed-weights path (a memory cap, the
 * path a GPU takes) gives the same statistics; a failure injected on one
 * rank, or one that stops answering (the others' collectives time out),
 * fails the job naming that rank, with nothing published; so does a rank
 * whose export stage fails; two processes of one CPU rank each (TCP,
 * rendezvous through a file) write the one-rank checkpoint.  Each rank
 * quantizes and writes its own experts (docs/expert_parallel.md "Export"):
 * the report's per-rank export counters ("ranks") show every rank's share,
 * which add up to the whole output.
 *
 * Twelve sequences of 13 tokens, two per micro-batch of 26 tokens: six
 * micro-batches, so with 4 ranks ranks 2 and 3 have an idle round in which
 * they only serve their experts.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/job.h"
#include "engine/quantize.h"
#include "../quantize/qtest.h"

#define RECIPE "general/ptq/nvfp4_default-kv_fp8"

static const char *recipe = RECIPE; /* a test may change it */

static struct cal_job_opts opts(const char *model, const char *tok, unsigned ranks)
{
	struct cal_job_opts o = {.model_dir = model, .recipe = recipe, .tokens = tok,
				 .devices = {.kind = CAL_DEVICE_CPU}, .cpu_threads = ranks,
				 .micro_batch_tokens = 26};
	o.ranks.local = ranks;
	o.ranks.timeout_ms = 60000;
	return o;
}

/* Per-rank export counters of the report's "ranks" (R ranks): every rank
 * wrote something when parts_write (its experts), else only rank 0 (no
 * routed experts, or GPT-OSS's fused ones); they add up to the output's
 * tensor bytes and quantized weights. */
static void check_rank_shares(const char *out, unsigned R, int parts_write)
{
	char *p = path2(out, "calibd_report.json");
	json_t *r = json_loads(slurp(p), 0, NULL);
	cr_assert(r, "%s", p);
	json_t *rk = json_object_get(r, "ranks");
	json_t *b = json_object_get(rk, "export_bytes"), *w = json_object_get(rk, "export_weights");
	cr_assert_eq(json_array_size(b), R, "%s: export_bytes", out);
	cr_assert_eq(json_array_size(w), R, "%s: export_weights", out);
	cr_assert_eq(json_array_size(json_object_get(rk, "export_quantize_s")), R);
	json_int_t sb = 0, sw = 0;
	for (unsigned k = 0; k < R; k++) {
		json_int_t nb = json_integer_value(json_array_get(b, k));
		json_int_t nw = json_integer_value(json_array_get(w, k));
		cr_assert(k == 0 || parts_write ? nb > 0 && nw > 0 : nb == 0 && nw == 0,
			  "%s: rank %u wrote %lld bytes, %lld weights", out, k, (long long)nb,
			  (long long)nw);
		sb += nb;
		sw += nw;
	}
	cr_assert_eq(sb, json_integer_value(json_object_get(json_object_get(r, "output"),
							    "tensor_bytes")), "%s", out);
	cr_assert_eq(sw, json_integer_value(json_object_get(json_object_get(r, "resolved"),
							    "quantized_weights")), "%s", out);
	json_decref(r);
}

static enum cal_status quantize(const struct cal_job_opts *o, const char *out,
				struct cal_error *err)
{
	struct cal_job *j = NULL;
	struct cal_quantize_opts qo = {.out_dir = out};
	json_t *rep = NULL;
	enum cal_status st = cal_job_open(o, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &j, NULL, err);
	if (st >= 0)
		st = cal_quantize_run(j, &qo, NULL, NULL, &rep, err);
	json_decref(rep);
	cal_job_close(j);
	return st;
}

static char *stats(const struct cal_job_opts *o)
{
	struct cal_error err = {0};
	struct cal_job *j = NULL;
	struct cal_calib *c = NULL;
	struct cal_calib_tokens *tk = NULL;
	cr_assert_eq(cal_job_open(o, CAL_JOB_OPEN_FOR(CAL_JOB_CALIBRATE), &j, NULL, &err), CAL_OK,
		     "%s", cal_error_msg(&err));
	cr_assert_eq(cal_job_tokens(j, &tk, NULL, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_job_calib_open(j, NULL, &c, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_calib_run(c, tk, &err), CAL_OK, "ranks %u: %s", o->ranks.local,
		     cal_error_msg(&err));
	struct cal_calib_perf pf;
	cal_calib_perf(c, &pf);
	cr_assert_eq(pf.ranks, o->ranks.local ? o->ranks.local : 1);
	cr_assert(o->ranks.local <= 1 || pf.comm_bytes > 0);
	char *s = cal_calib_stats_json(c);
	cal_calib_free(c);
	cal_calib_tokens_free(tk);
	cal_job_close(j);
	/* GPTQ's solve time depends on the run */
	json_t *v = json_loads(s, 0, NULL);
	cr_assert(v);
	free(s);
	json_object_del(json_object_get(v, "gptq"), "solve_s");
	json_object_del(json_object_get(v, "gptq"), "factor_s");
	json_object_del(json_object_get(v, "gptq"), "pass_s");
	s = json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT);
	json_decref(v);
	return track(s);
}

/* The report without what depends on the run (timings, memory, ranks). */
static char *report(const char *dir)
{
	char *p = path2(dir, "calibd_report.json");
	json_t *r = json_loads(slurp(p), 0, NULL);
	cr_assert(r, "%s", p);
	const char *drop[] = {"phases_s", "calibration_timeline", "peak_rss_bytes", "pipeline",
			      "ranks"};
	for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
		json_object_del(r, drop[i]);
	json_object_del(json_object_get(r, "gptq"), "solve_s");
	json_object_del(json_object_get(r, "gptq"), "factor_s");
	json_object_del(json_object_get(r, "gptq"), "pass_s");
	char *t = json_dumps(r, JSON_SORT_KEYS | JSON_COMPACT);
	json_decref(r);
	return track(t);
}

static void same_dirs(const char *a, const char *b)
{
	DIR *d = opendir(a);
	struct dirent *e;
	size_t n = 0;
	cr_assert(d, "%s", a);
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		n++;
		if (!strcmp(e->d_name, "calibd_report.json")) {
			cr_assert_str_eq(report(a), report(b), "%s vs %s: calibd_report.json", a, b);
			continue;
		}
		char *pa = path2(a, e->d_name), *pb = path2(b, e->d_name);
		char *ta = NULL, *tb = NULL;
		size_t na = 0, nb = 0;
		cr_assert_eq(cal_read_file(pa, 256u << 20, &ta, &na, NULL), CAL_OK, "%s", pa);
		cr_assert_eq(cal_read_file(pb, 256u << 20, &tb, &nb, NULL), CAL_OK, "%s", pb);
		cr_assert(na == nb && !memcmp(ta, tb, na), "%s and %s differ", pa, pb);
		free(ta);
		free(tb);
	}
	closedir(d);
	cr_assert_eq(n, cal_test_count_entries(b), "%s and %s hold different files", a, b);
}

/* A model quantized over 1, 2 and 4 ranks (the first n_ranks of them).
 * Criterion hands a parameter to the test's process as bytes, so the
 * strings are arrays, not pointers. */
struct ranks_case {
	char arch[16], layout[16];
	char recipe[64];      /* "": RECIPE */
	uint64_t shard_bytes; /* 0: one file */
	size_t n_ranks;
	int per_expert;       /* per_expert_input_amax */
};

#define GPTQ_RECIPE "general/ptq/nvfp4_default-kv_none-gptq"

static const struct ranks_case ranks_cases[] = {
	{"qwen3_moe", "default", "", 0, 3, 0},
	/* nvfp4_act_headroom: the ranks' histograms are summed (docs/numerics.md
	 * "Activation headroom"), so the input scales do not depend on R */
	{"qwen3_moe", "default", "general/ptq/nvfp4_act_headroom-kv_fp8_cast", 0, 3, 0},
	{"mixtral", "default", "", 0, 3, 0},
	{"qwen2_moe", "default", "", 0, 3, 0}, /* a shared expert */
	{"deepseek_v3", "default", "", 0, 3, 0},
	{"deepseek_v3", "fp8-block16", "", 0, 2, 0}, /* the FP8 source */
	{"gpt_oss", "mxfp4", "", 0, 3, 0},
	/* the parts' input scales come from their own engines' statistics */
	{"qwen3_moe", "default", "", 0, 3, 1},
	/* small shards: several files and model.safetensors.index.json */
	{"qwen3_moe", "per-expert", "", 40000, 3, 0},
	/* a dense model: data parallel only */
	{"llama", "default", "", 0, 2, 0},
	/* GPTQ (docs/gptq.md "Over several ranks"): the ranks' Hessian input
	 * rows are added in micro-batch order and pass 0's input amax is the max
	 * over the ranks, so the updated weights do not depend on R, on every
	 * architecture GPTQ runs on (GQA, shared expert, MLA, GPT-OSS, gated
	 * attention and Gated DeltaNet) */
	{"qwen3_moe", "default", GPTQ_RECIPE, 0, 3, 0},
	{"qwen2_moe", "default", GPTQ_RECIPE, 0, 3, 0},
	{"deepseek_v3", "default", GPTQ_RECIPE, 0, 2, 0},
	{"gpt_oss", "default", GPTQ_RECIPE, 0, 2, 0},
	{"qwen3_next", "default", GPTQ_RECIPE, 0, 2, 0},
	{"qwen3_5_moe", "default", GPTQ_RECIPE, 0, 2, 0},
};

/* Quantizes c's model over 1, 2 (and 4) ranks: same files, same
 * statistics, and each rank's share written by that rank (unless the
 * experts are fused, gpt_oss, or there are none: check_rank_shares). */
static void same_over_ranks(const struct ranks_case *c)
{
	static const unsigned ranks[] = {1, 2, 4};
	const char *arch = c->arch;
	int parts_write = strcmp(arch, "gpt_oss") && strcmp(arch, "llama");
	if (c->recipe[0])
		recipe = c->recipe;
	char *root = tmpdir();
	char *model = make_model(root, arch, c->layout);
	char *tok = make_tokens(root, "tok.jsonl", 12, 13);
	char *out1 = NULL, *s1 = NULL;
	for (size_t i = 0; i < c->n_ranks; i++) {
		struct cal_job_opts o = opts(model, tok, ranks[i]);
		o.max_shard_bytes = c->shard_bytes;
		o.per_expert_input_amax = c->per_expert;
		char *out = NULL;
		cr_assert(asprintf(&out, "%s/out-%u", root, ranks[i]) > 0);
		track(out);
		struct cal_error err = {0};
		cr_assert_eq(quantize(&o, out, &err), CAL_OK, "%s/%s, %u ranks: %s", arch, c->layout,
			     ranks[i], cal_error_msg(&err));
		char *s = stats(&o);
		if (!i) {
			out1 = out;
			s1 = s;
			continue;
		}
		same_dirs(out1, out);
		cr_assert_str_eq(s1, s, "%s/%s: statistics of %u ranks differ from 1", arch,
				 c->layout, ranks[i]);
		check_rank_shares(out, ranks[i], parts_write);
	}
	rm_rf(root);
}

ParameterizedTestParameters(ep, same_bytes_over_ranks)
{
	return cr_make_param_array(struct ranks_case, ranks_cases, CAL_ARRAY_LEN(ranks_cases));
}

ParameterizedTest(const struct ranks_case *c, ep, same_bytes_over_ranks)
{
	same_over_ranks(c);
}

/* GPTQ's passes 1 and 2 leave out the observers, and pass 1 the routed
 * experts and what follows the layer's last Hessian site (docs/gptq.md
 * "What a pass leaves out"): the same files as the whole forward
 * (CALIBD_TEST_FULL_PASSES), on one rank and on two (a rank without a
 * micro-batch leaves the expert dispatch out too). */
struct arch_case {
	char arch[16];
};

static const struct arch_case gptq_archs[] = {
	{"qwen3_moe"}, {"qwen2_moe"}, {"deepseek_v3"}, {"gpt_oss"},
	{"qwen3_next"}, {"qwen3_5_moe"}, {"llama"},
};

ParameterizedTestParameters(ep, gptq_passes_leave_out_nothing_needed)
{
	return cr_make_param_array(struct arch_case, gptq_archs, CAL_ARRAY_LEN(gptq_archs));
}

ParameterizedTest(const struct arch_case *c, ep, gptq_passes_leave_out_nothing_needed)
{
	recipe = GPTQ_RECIPE;
	char *root = tmpdir();
	char *tok = make_tokens(root, "tok.jsonl", 12, 13);
	char *model = make_model(root, c->arch, "default");
	for (unsigned R = 1; R <= 2; R++) {
		char out[2][4096];
		for (int full = 0; full < 2; full++) {
			struct cal_job_opts o = opts(model, tok, R);
			struct cal_error err = {0};
			snprintf(out[full], sizeof(out[full]), "%s/out-%u-%d", root, R, full);
			if (full)
				cr_assert_eq(setenv("CALIBD_TEST_FULL_PASSES", "1", 1), 0);
			enum cal_status st = quantize(&o, out[full], &err);
			unsetenv("CALIBD_TEST_FULL_PASSES");
			cr_assert_eq(st, CAL_OK, "%s, %u ranks: %s", c->arch, R, cal_error_msg(&err));
		}
		same_dirs(out[0], out[1]);
	}
	rm_rf(root);
}

Test(ep, streamed_weights_same_statistics)
{
	/* a memory cap streams the weights as on a GPU: the rank's experts are
	 * uploaded alone, their weight amax taken on the back end */
	char *root = tmpdir();
	char *tok = make_tokens(root, "tok.jsonl", 12, 13);
	const char *arch[][2] = {{"qwen3_moe", "per-expert"}, {"deepseek_v3", "fp8-block16"}};
	for (size_t a = 0; a < 2; a++) {
		char *model = make_model(root, arch[a][0], arch[a][1]);
		char *s1 = NULL;
		for (unsigned r = 1; r <= 4; r *= 2) {
			struct cal_job_opts o = opts(model, tok, r);
			o.max_mem = 2000000;
			char *s = stats(&o);
			if (r == 1)
				s1 = s;
			else
				cr_assert_str_eq(s1, s, "%s: %u streamed ranks differ", arch[a][0], r);
		}
	}
	rm_rf(root);
}

/* A job over 2 ranks with the test variable var=inject fails with
 * CAL_ERR_DEVICE naming rank 1 (needle), within the deadline, publishing
 * nothing and leaving no temporary directory. */
static void failing_rank(const char *arch, const char *var, const char *inject,
			 unsigned timeout_ms, const char *needle)
{
	char *root = tmpdir();
	char *model = make_model(root, arch, "default");
	char *tok = make_tokens(root, "tok.jsonl", 12, 13);
	char *out = path2(root, "out");
	size_t before = cal_test_count_entries(root);
	cr_assert_eq(setenv(var, inject, 1), 0);
	struct cal_job_opts o = opts(model, tok, 2);
	o.ranks.timeout_ms = timeout_ms;
	struct cal_error err = {0};
	double t0 = cal_now();
	enum cal_status st = quantize(&o, out, &err);
	cr_assert_eq(st, CAL_ERR_DEVICE, "%d: %s", st, cal_error_msg(&err));
	cr_assert(strstr(cal_error_msg(&err), needle), "%s", cal_error_msg(&err));
	cr_assert(cal_now() - t0 < 30, "the deadline was not kept");
	cal_error_clear(&err);
	cr_assert(!cal_test_exists(out));
	cr_assert_eq(cal_test_count_entries(root), before, "a temporary directory was left behind");
	unsetenv(var);
	rm_rf(root);
}

Test(ep, failed_rank_fails_the_job_naming_it_and_publishes_nothing)
{
	failing_rank("qwen3_moe", "CALIBD_TEST_RANK_FAIL", "1:2", 60000,
		     "rank 1: layer 2: injected failure");
}

Test(ep, stalled_rank_fails_the_job_at_the_deadline_naming_it)
{
	/* rank 0 waits for rank 1 in a collective until the deadline */
	failing_rank("mixtral", "CALIBD_TEST_RANK_FAIL", "1:1:stall", 1000, "rank 1");
}

Test(ep, rank_failing_in_its_export_fails_the_job_and_publishes_nothing)
{
	/* rank 1's export stage fails on layer 1 (its experts): the leader,
	 * which wrote its own share, publishes nothing */
	failing_rank("qwen3_moe", "CALIBD_TEST_EXPORT_FAIL_LAYER", "1:1", 60000,
		     "rank 1: export of layer 1: injected quantize fault");
}

Test(ep, rank_failing_in_its_last_export_layer_fails_the_job)
{
	/* the last layer's failure is seen when the rank waits for its writes */
	failing_rank("mixtral", "CALIBD_TEST_EXPORT_FAIL_LAYER", "1:1", 60000,
		     "rank 1: export of layer 1: injected quantize fault");
}

Test(ep, two_processes_over_tcp_write_the_one_rank_checkpoint)
{
	char *root = tmpdir();
	char *model = make_model(root, "qwen2_moe", "default");
	char *tok = make_tokens(root, "tok.jsonl", 12, 13);
	char *out1 = path2(root, "out-1"), *out2 = path2(root, "out-2");
	char *rdv = path2(root, "rendezvous");
	struct cal_job_opts o = opts(model, tok, 1);
	struct cal_error err = {0};
	cr_assert_eq(quantize(&o, out1, &err), CAL_OK, "%s", cal_error_msg(&err));
	o.ranks.world = 2;
	o.ranks.rendezvous = rdv;
	o.ranks.timeout_ms = 30000;
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) { /* global rank 1: calibrates, writes its experts */
		struct cal_job_opts f = o;
		struct cal_error e = {0};
		f.ranks.first = 1;
		enum cal_status st = quantize(&f, out2, &e);
		if (st < 0)
			fprintf(stderr, "rank 1 process: %s\n", cal_error_msg(&e));
		_exit(st < 0 ? 1 : 0);
	}
	enum cal_status st = quantize(&o, out2, &err);
	int ws = 0;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert_eq(st, CAL_OK, "%s", cal_error_msg(&err));
	cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the rank 1 process failed");
	same_dirs(out1, out2);
	check_rank_shares(out2, 2, 1); /* the rank 1 process wrote its experts */
	rm_rf(root);
}

Test(ep, rank_layouts_checked_at_open)
{
	char *root = tmpdir();
	char *model = make_model(root, "qwen3_moe", "default");
	struct cal_job_opts base = opts(model, NULL, 2);
	struct {
		unsigned local, first, world;
		int cuda_n;
		const char *rdv, *needle;
	} bad[] = {
		{3, 0, 0, 2, NULL, "3 ranks do not fit the 2 CUDA devices"},
		{2, 1, 2, 0, "x", "ranks 1..2 of 2"},
		{1, 0, 2, 0, NULL, "need a rendezvous"},
		{65, 0, 0, 0, NULL, "at most 64"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct cal_job_opts o = base;
		o.ranks.local = bad[i].local;
		o.ranks.first = bad[i].first;
		o.ranks.world = bad[i].world;
		o.ranks.rendezvous = bad[i].rdv;
		if (bad[i].cuda_n) {
			o.devices.kind = CAL_DEVICE_CUDA;
			o.devices.n = (size_t)bad[i].cuda_n;
			for (int k = 0; k < bad[i].cuda_n; k++)
				o.devices.ids[k] = k;
		}
		struct cal_error err = {0};
		struct cal_job *j = NULL;
		enum cal_job_part part;
		cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_NO_BACKEND, &j, &part, &err),
			     CAL_ERR_INVALID, "case %zu", i);
		cr_assert_eq(part, CAL_JOB_PART_OPTIONS);
		cr_assert(strstr(cal_error_msg(&err), bad[i].needle), "case %zu: %s", i,
			  cal_error_msg(&err));
		cal_error_clear(&err);
	}
	/* cuda:0,1 is two ranks; a CPU job without ranks is one */
	struct cal_devices d2 = {.kind = CAL_DEVICE_CUDA, .n = 2, .ids = {0, 1}};
	struct cal_job_ranks none = {0};
	cr_assert_eq(cal_job_local_ranks(&none, &d2), 2);
	cr_assert_eq(cal_job_local_ranks(&none, &base.devices), 1);
	rm_rf(root);
}
