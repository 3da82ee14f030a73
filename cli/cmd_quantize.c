/*
 * cmd_quantize.c — `calibd quantize`: one quantization job in the
 * foreground (engine/job.h opens the job, engine/quantize.h runs calibration
 * and export in one streaming pass), for scripts and Kubernetes Jobs.  Progress on stderr (a bar on a
 * terminal, one line per layer otherwise), optionally JSON lines on a file
 * descriptor; SIGINT / SIGTERM stop it gracefully after the current layer
 * (nothing published, exit 6).  docs/quantize.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "api/jobspec.h"
#include "cli.h"
#include "common/parse.h"
#include "common/util.h"
#include "engine/job.h"
#include "engine/quantize.h"
#include "engine/st/st_writer.h"

static void quantize_usage(FILE *o)
{
	fprintf(o,
		"usage: calibd quantize --model DIR (--recipe NAME|FILE | --qformat NAME)\n"
		"         " CAL_CLI_KV_QFORMAT_SYNOPSIS "\n"
		"         (--calib FILE[:N],... | --calib-tokens FILE) --out DIR\n"
		"         [--samples N] [--seq-len S] [--seed K] [--device cpu|cuda[:i]]\n"
		"         [--per-expert-input-amax] [--moe-calib-experts-ratio R]\n"
		"         [--max-shard-size SIZE] [--ranks N] [--div recip|exact] [--progress-fd N]\n"
		"         [--json] [--quiet]\n"
		"         [--world N --rank-first R --rendezvous FILE]\n"
		"         [--nodes N --node-rank I --rendezvous FILE] [--comm-timeout SECONDS]\n"
		"         [--datasets-file FILE]\n"
		"Calibrates the model on the data and writes the modelopt-compatible quantized\n"
		"checkpoint into DIR (which must not exist; published atomically when done).\n"
		"--calib takes JSONL ({\"text\"}, {\"messages\"}, {\"input_ids\"}) or text files,\n"
		"tokenized with the model's tokenizer.json (--samples 512, --seq-len 512 by\n"
		"default; --seed K > 0 samples records in a seeded order).  An entry NAME[:N]\n"
		"names a dataset of the catalog of --datasets-file or $CALIBD_DATASETS_FILE\n"
		"(the `datasets:` map of a calibd.yaml, docs/api.md).  --device defaults to\n"
		"cuda when a GPU is present, else cpu.  --progress-fd N writes progress as JSON\n"
		"lines on descriptor N; --json prints the report as JSON.  SIGINT/SIGTERM stop\n"
		"after the current layer with nothing published.  --qformat takes modelopt\n"
		"hf_ptq.py's --qformat names (`calibd recipes` lists them and their recipes;\n"
		"docs/recipes.md).\n");
	cal_cli_kv_qformat_help(o);
	fprintf(o,
		"--div exact divides as modelopt on the CPU (GPTQ, export).\n"
		"--max-shard-size (default 10GB, as modelopt) splits the\n"
		"weights into model-0000k-of-0000N.safetensors plus\n"
		"model.safetensors.index.json; one model.safetensors when smaller.\n"
		"--ranks N splits each MoE layer's experts across N CPU ranks (cuda:0,1,...:\n"
		"one rank per GPU); the checkpoint is the same bytes (docs/expert_parallel.md).\n"
		"--world N --rank-first R --rendezvous FILE: this process runs ranks R.. of a\n"
		"job of N ranks over several processes, meeting through FILE; the process of\n"
		"rank 0 writes DIR and publishes it, the others write their experts into it.\n"
		"--nodes N --node-rank I --rendezvous FILE: the same, as node I of N\n"
		"processes (one per node) that each run the same --device GPUs or --ranks\n"
		"(docs/deploy.md).  --comm-timeout (default 600) bounds every exchange between\n"
		"ranks: a rank that does not answer in time fails the job naming it (exit 5).\n"
		"docs/quantize.md.\n"
		"Exit codes: 0 ok, 2 usage, 3 bad input (model, recipe, data, paths), 4 no disk\n"
		"space, 5 GPU failure, 6 interrupted, 1 other.\n");
}

/* ---- signals -------------------------------------------------------------- */

static volatile int quantize_cancel;

static void on_signal(int sig)
{
	static const char msg[] = "\ncalibd quantize: stopping after the current layer "
				  "(nothing will be published; again to abort at once)\n";
	if (quantize_cancel) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	quantize_cancel = 1;
	ssize_t w = write(2, msg, sizeof(msg) - 1);
	(void)w;
}

/* ---- progress ------------------------------------------------------------- */

struct prog {
	int tty, quiet, fd;
	int bar_open;      /* a \r line is on the terminal */
};

static void human_bytes(char *buf, size_t n, double b)
{
	cal_fmt_scaled(buf, n, b, 1024, 1, "B");
}

static void human_secs(char *buf, size_t n, double s)
{
	if (s < 0)
		snprintf(buf, n, "?");
	else if (s < 60)
		snprintf(buf, n, "%.0fs", s);
	else if (s < 3600)
		snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
	else
		snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

static void write_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* a closed progress pipe does not stop the job */
		s += w;
		n -= (size_t)w;
	}
}

/* One JSON line on fd (the progress descriptor). */
static void write_json_line(int fd, const json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	if (!s)
		return;
	write_all(fd, s, strlen(s));
	write_all(fd, "\n", 1);
	free(s);
}

static void on_progress(void *ctx, const json_t *j)
{
	struct prog *p = ctx;
	if (p->fd >= 0)
		write_json_line(p->fd, j);
	if (p->quiet)
		return;
	const char *phase = json_string_value(json_object_get(j, "phase"));
	int layer = (int)json_integer_value(json_object_get(j, "layer"));
	int layers = (int)json_integer_value(json_object_get(j, "layers"));
	double tps = json_number_value(json_object_get(j, "tokens_per_s"));
	json_t *eta_j = json_object_get(j, "eta_s");
	double eta = json_is_number(eta_j) ? json_number_value(eta_j) : -1;
	char bytes[32], etas[32];
	human_bytes(bytes, sizeof(bytes),
		    (double)json_integer_value(json_object_get(j, "bytes_written")));
	human_secs(etas, sizeof(etas), eta);
	if (!phase)
		phase = "?";
	if (strcmp(phase, "calibrate") || layer < 0) {
		/* a phase starts */
		if (p->bar_open)
			fputc('\n', stderr);
		p->bar_open = 0;
		if (strcmp(phase, "done"))
			fprintf(stderr, "quantize: %s%s\n", phase,
				!strcmp(phase, "calibrate") ? " (and export, layer by layer)" : "");
	} else if (p->tty) {
		int w = 30, fill = layers ? (int)((int64_t)(layer + 1) * w / layers) : w;
		fprintf(stderr, "\r%s [%.*s%*s] layer %d/%d  %.0f tok-layers/s  %s written  "
			"ETA %s   ", phase, fill, "##############################", w - fill, "",
			layer + 1, layers, tps, bytes, etas);
		p->bar_open = 1;
	} else {
		fprintf(stderr, "quantize: %s layer %d/%d done, %.0f token-layers/s, %s written, "
			"eta %s\n", phase, layer + 1, layers, tps, bytes, etas);
	}
	fflush(stderr);
}

/* ---- report ----------------------------------------------------------------- */

static void print_summary(const json_t *r)
{
	const char *k;
	json_t *v;
	char bytes[32];
	size_t i;
	human_bytes(bytes, sizeof(bytes), (double)json_integer_value(json_object_get(r, "bytes")));
	json_t *qa = json_object_get(r, "quant_algo"), *kv = json_object_get(r, "kv_cache_quant_algo");
	json_t *cal = json_object_get(r, "calibration");
	printf("quantized %s -> %s\n", json_string_value(json_object_get(r, "source")),
	       json_string_value(json_object_get(r, "output")));
	printf("  recipe      %s (quant_algo %s, kv_cache %s), device %s\n",
	       json_string_value(json_object_get(r, "recipe")),
	       json_is_string(qa) ? json_string_value(qa) : "none",
	       json_is_string(kv) ? json_string_value(kv) : "none",
	       json_string_value(json_object_get(r, "device")));
	printf("  calibration %lld samples, %lld tokens (seq_len %lld)",
	       (long long)json_integer_value(json_object_get(cal, "samples")),
	       (long long)json_integer_value(json_object_get(cal, "tokens")),
	       (long long)json_integer_value(json_object_get(cal, "seq_len")));
	if (json_integer_value(json_object_get(cal, "shortfall")))
		printf(", %lld fewer samples than asked for (the data ran out)",
		       (long long)json_integer_value(json_object_get(cal, "shortfall")));
	printf("\n  output      %zu files, %s, %lld quantized weights\n",
	       json_array_size(json_object_get(r, "files")), bytes,
	       (long long)json_integer_value(json_object_get(r, "quantized_weights")));
	json_t *mn = json_object_get(r, "weight_sqnr_min_db"), *me = json_object_get(r, "weight_sqnr_mean_db");
	if (json_is_number(mn) && json_is_number(me))
		printf("  weight SQNR min %.2f dB, mean %.2f dB\n", json_number_value(mn),
		       json_number_value(me));
	json_t *ewt = json_object_get(r, "experts_without_tokens");
	printf("  experts without tokens: %lld",
	       (long long)json_integer_value(json_object_get(r, "experts_without_tokens_total")));
	json_array_foreach(ewt, i, v) {
		size_t e;
		json_t *x;
		printf("%s layer %lld:", i ? ";" : " (", (long long)json_integer_value(json_object_get(v, "layer")));
		json_array_foreach(json_object_get(v, "experts"), e, x)
			printf(" %lld", (long long)json_integer_value(x));
	}
	printf("%s\n", json_array_size(ewt) ? ")" : "");
	printf("  time        ");
	int first = 1;
	json_object_foreach(json_object_get(r, "phases_s"), k, v) {
		printf("%s%s %.2fs", first ? "" : ", ", k, json_number_value(v));
		first = 0;
	}
	printf("; wall %.2fs\n", json_number_value(json_object_get(r, "wall_s")));
}

/* ---- the command ------------------------------------------------------------- */

/* Reports a bad option value; returns -1. */
static int bad_value(struct cal_error *err)
{
	cal_cli_fail("quantize", err, 0);
	return -1;
}

static int parse_range(const char *opt, const char *s, long min, long max, int *ret)
{
	struct cal_error err = {0};
	int64_t v;
	if (cal_parse_i64(opt, s, min, max, &v, &err) < 0)
		return bad_value(&err);
	*ret = (int)v;
	return 0;
}

static int parse_count(const char *opt, const char *s, long max, int *ret)
{
	return parse_range(opt, s, 1, max, ret);
}

/*
 * --nodes N --node-rank I --rendezvous FILE: one process per node, each
 * running the same number of local ranks L (its --device GPUs or --ranks),
 * so node I holds the global ranks I·L .. I·L+L-1 of N·L.
 */
static int node_layout(struct cal_job_opts *jo, int nodes, int node_rank)
{
	if (!nodes) {
		if (node_rank < 0)
			return 0;
		fprintf(stderr, "calibd quantize: --node-rank needs --nodes\n");
		return -1;
	}
	if (jo->ranks.world || jo->ranks.first) {
		fprintf(stderr, "calibd quantize: --nodes and --world/--rank-first exclude each other\n");
		return -1;
	}
	if (node_rank < 0 || node_rank >= nodes) {
		fprintf(stderr, "calibd quantize: --nodes %d needs --node-rank in 0..%d\n", nodes,
			nodes - 1);
		return -1;
	}
	if (nodes > 1 && !jo->ranks.rendezvous) {
		fprintf(stderr, "calibd quantize: --nodes %d needs --rendezvous FILE\n", nodes);
		return -1;
	}
	struct cal_error err = {0};
	if (cal_jobspec_node_ranks(jo, (unsigned)nodes, (unsigned)node_rank, &err) < 0) {
		fprintf(stderr, "calibd quantize: --nodes: %s\n", cal_error_msg(&err));
		cal_error_clear(&err);
		return -1;
	}
	return 0;
}

int cal_cmd_quantize(int argc, char **argv)
{
	struct cal_quantize_opts o = {.cancel = &quantize_cancel};
	struct cal_job_opts jo = {0};
	const char *calib = NULL, *device = NULL, *qformat = NULL;
	const char *datasets_file = NULL;
	int nodes = 0, node_rank = -1;
	struct prog pr = {.tty = isatty(2), .fd = -1};
	int json = 0, c, fd, n;
	struct cal_error perr = {0};
	int64_t v;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"quantize", argc, argv, "h",
		CAL_CLI_CALIB_OPTIONS "qformat kv-cache-qformat out max-shard-size world rank-first "
		"rendezvous nodes node-rank comm-timeout div progress-fd json",
		CAL_CLI_SETS(CAL_CLI_STR("model", &jo.model_dir), CAL_CLI_STR("recipe", &jo.recipe),
			     CAL_CLI_STR("qformat", &qformat),
			     CAL_CLI_STR("kv-cache-qformat", &jo.kv_cache_qformat),
			     CAL_CLI_STR("calib", &calib),
			     CAL_CLI_STR("calib-tokens", &jo.tokens), CAL_CLI_STR("out", &o.out_dir),
			     CAL_CLI_STR("device", &device),
			     CAL_CLI_FLAG("per-expert-input-amax", &jo.per_expert_input_amax),
			     CAL_CLI_FLAG("json", &json), CAL_CLI_FLAG("quiet", &pr.quiet),
			     CAL_CLI_STR("datasets-file", &datasets_file),
			     CAL_CLI_STR("rendezvous", &jo.ranks.rendezvous)));
	while ((c = cal_cli_next(&ca)) != -1) {
		switch (c) {
		case 'n':
			if (parse_count("--samples", optarg, 1L << 24, &n) < 0)
				return CAL_EXIT_USAGE;
			jo.samples = (size_t)n;
			break;
		case 'S':
			if (parse_count("--seq-len", optarg, 1L << 20, &n) < 0)
				return CAL_EXIT_USAGE;
			jo.seq_len = (size_t)n;
			break;
		case 's':
			if (cal_parse_u64("--seed", optarg, 0, UINT64_MAX, &jo.seed, &perr) < 0) {
				bad_value(&perr);
				return CAL_EXIT_USAGE;
			}
			break;
		case 'R':
			if (cal_parse_f64("--moe-calib-experts-ratio", optarg, 0, 1,
					  &jo.moe_calib_experts_ratio, &perr) < 0 ||
			    jo.moe_calib_experts_ratio == 0) {
				fprintf(stderr, "calibd quantize: --moe-calib-experts-ratio '%s' not in "
					"(0, 1]\n", optarg);
				cal_error_clear(&perr);
				return CAL_EXIT_USAGE;
			}
			break;
		case 'N':
			if (parse_count("--ranks", optarg, CAL_CALIB_MAX_RANKS, &n) < 0)
				return CAL_EXIT_USAGE;
			jo.ranks.local = (unsigned)n;
			break;
		case 'W':
			if (parse_count("--world", optarg, CAL_CALIB_MAX_RANKS, &n) < 0)
				return CAL_EXIT_USAGE;
			jo.ranks.world = (unsigned)n;
			break;
		case 'f':
			if (!strcmp(optarg, "0"))
				jo.ranks.first = 0;
			else if (parse_count("--rank-first", optarg, CAL_CALIB_MAX_RANKS - 1, &n) < 0)
				return CAL_EXIT_USAGE;
			else
				jo.ranks.first = (unsigned)n;
			break;
		case 'O':
			if (parse_count("--nodes", optarg, CAL_CALIB_MAX_RANKS, &nodes) < 0)
				return CAL_EXIT_USAGE;
			break;
		case 'I':
			if (parse_range("--node-rank", optarg, 0, CAL_CALIB_MAX_RANKS - 1, &node_rank) < 0)
				return CAL_EXIT_USAGE;
			break;
		case 'T':
			if (parse_count("--comm-timeout", optarg, 86400, &n) < 0)
				return CAL_EXIT_USAGE;
			jo.ranks.timeout_ms = (unsigned)n * 1000u;
			break;
		case 'v': /* as calibd export --div (docs/export.md) */
			if (!strcmp(optarg, "exact")) {
				jo.div = CAL_DIV_EXACT;
			} else if (!strcmp(optarg, "recip")) {
				jo.div = CAL_DIV_RECIP;
			} else {
				fprintf(stderr, "calibd quantize: --div '%s' is not recip or exact\n",
					optarg);
				return CAL_EXIT_USAGE;
			}
			break;
		case 'z':
			if (cal_parse_size("--max-shard-size", optarg, 1, UINT64_MAX,
					   &jo.max_shard_bytes, &perr) < 0) {
				bad_value(&perr);
				return CAL_EXIT_USAGE;
			}
			break;
		case 'P':
			fd = -1;
			if (cal_parse_i64("--progress-fd", optarg, 0, INT_MAX, &v, &perr) >= 0)
				fd = (int)v;
			cal_error_clear(&perr);
			if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
				fprintf(stderr, "calibd quantize: --progress-fd '%s' is not an open "
					"descriptor\n", optarg);
				return CAL_EXIT_USAGE;
			}
			pr.fd = fd;
			break;
		default: return cal_cli_usage(quantize_usage, c);
		}
	}
	int one_data = cal_cli_one_of("quantize", calib, "calib", jo.tokens, "calib-tokens");
	if (!one_data || !jo.model_dir || !o.out_dir || optind != argc)
		return cal_cli_usage(quantize_usage, '?');
	int rq = cal_cli_recipe_or_qformat("quantize", quantize_usage, &jo.recipe, qformat);
	if (rq != CAL_CLI_PARSED)
		return rq;
	struct cal_error err = {0};
	struct cal_cli_data data;
	enum cal_status st;
	int rc = cal_cli_job_data("quantize", device, calib, datasets_file, &jo, &data, &st, &err);
	if (rc != CAL_EXIT_OK)
		return rc;
	if (node_layout(&jo, nodes, node_rank) < 0) {
		cal_cli_data_free(&data, &jo);
		return CAL_EXIT_USAGE;
	}

	struct sigaction sa = {.sa_handler = on_signal};
	struct sigaction old_int, old_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	if (pr.fd >= 0)
		signal(SIGPIPE, SIG_IGN);

	json_t *report = NULL;
	struct cal_job *job = NULL;
	if (st >= 0) /* an existing output: refused before any work */
		st = cal_quantize_check_output(o.out_dir, &err);
	if (st >= 0)
		st = cal_job_open(&jo, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &job, NULL, &err);
	if (st >= 0)
		st = cal_quantize_run(job, &o, on_progress, &pr, &report, &err);
	cal_job_close(job);
	cal_cli_data_free(&data, &jo);
	if (pr.bar_open)
		fputc('\n', stderr);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	if (st < 0) {
		fprintf(stderr, "calibd quantize: %s\n", cal_error_msg(&err));
		if (pr.fd >= 0) {
			json_t *e = json_pack("{s:s, s:s, s:s}", "event", "error", "code",
					      cal_status_str(st), "message", cal_error_msg(&err));
			if (e)
				write_json_line(pr.fd, e);
			json_decref(e);
		}
	} else if (report) {
		if (json) {
			json_dumpf(report, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER |
						   JSON_REAL_PRECISION(6));
			putchar('\n');
		} else if (jo.ranks.first) {
			printf("calibrated ranks %u.. of %u and wrote their experts; rank 0's "
			       "process publishes %s\n",
			       jo.ranks.first, jo.ranks.world, o.out_dir);
		} else {
			print_summary(report);
		}
		fflush(stdout);
	}
	json_decref(report);
	cal_error_clear(&err);
	return cal_exit_from_status(st);
}
