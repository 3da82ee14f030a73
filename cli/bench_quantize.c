/*
 * bench_quantize.c — `calibd bench quantize`: the whole job (calibration +
 * export pipeline + publish) on a checkpoint, next to what the machine
 * allows.  It prints numbers and judges none (tests/bench/README.md).
 *
 * Measured first: the disk's read bandwidth (the source's safetensors
 * files, read once after dropping them from the page cache), its write
 * bandwidth (a scratch file of --write-bytes next to the output, fsync'ed),
 * and the bf16 GEMM peak of the device (8192^3 products).  The floor is the
 * largest of: reading the source at that bandwidth, writing the output, and
 * the routed-expert GEMMs of the calibration (tokens x top_k x 3 GEMMs of
 * hidden x moe_intermediate per MoE layer) at that peak.  Then the job runs
 * from a cold page cache (the source dropped again) while a sampler thread
 * records the device's used memory and the process's resident anonymous
 * memory every 10 ms; the report gives each phase, the overlap of the
 * export stage with the calibration, and end-to-end time / floor.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common/util.h"
#include "common/device.h"
#include "common/parse.h"
#include "engine/job.h"
#include "engine/model/model.h"
#include "engine/quantize.h"
#include "engine/st/st_writer.h"
#include "kernels/ops.h"

static void bq_usage(FILE *out)
{
	fprintf(out,
		"usage: calibd bench quantize --model DIR --tokens FILE [--out-parent DIR]\n"
		"         [--recipe NAME|FILE] [--device cpu|cuda[:i]] [--write-bytes SIZE]\n"
		"         [--max-shard-size SIZE] [--warm] [--no-disk] [--keep] [--json FILE]\n"
		"  Runs the full quantize job on DIR (e.g. tests/bench/moe_baseline.py's\n"
		"  checkpoint) with the token file and prints the disk read/write bandwidth,\n"
		"  the bf16 GEMM peak, the floor (max of source read, output write, expert\n"
		"  GEMMs), each phase and the export overlap, peak GPU and host memory, and\n"
		"  end-to-end seconds / floor.  The job starts from a cold page cache unless\n"
		"  --warm (the source as the measurements left it: cached); --no-disk skips\n"
		"  the disk measurements (the floor is then the GEMMs alone).  Recipe default:\n"
		"  general/ptq/nvfp4_experts_only-kv_fp8.  The output goes to\n"
		"  OUT_PARENT/calibd-bench-out (removed unless --keep).\n");
}

/* ---- disk --------------------------------------------------------------------- */

static int is_st(const char *n)
{
	size_t l = strlen(n);
	return l > 12 && !strcmp(n + l - 12, ".safetensors");
}

/* Drops the source's safetensors files from the page cache; returns bytes. */
static uint64_t evict(const char *dir)
{
	uint64_t total = 0;
	DIR *dp = opendir(dir);
	struct dirent *e;
	if (!dp)
		return 0;
	while ((e = readdir(dp))) {
		if (!is_st(e->d_name))
			continue;
		char *p = cal_path_join(dir, e->d_name);
		int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
		struct stat sb;
		if (fd >= 0 && !fstat(fd, &sb)) {
			total += (uint64_t)sb.st_size;
			(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		}
		if (fd >= 0)
			close(fd);
		free(p);
	}
	closedir(dp);
	return total;
}

/* Reads every safetensors file of dir once (cold): seconds. */
static double read_all(const char *dir, uint64_t *ret_bytes)
{
	size_t bs = 16u << 20;
	char *buf = malloc(bs);
	uint64_t n = 0;
	evict(dir);
	double t0 = cal_now();
	DIR *dp = opendir(dir);
	struct dirent *e;
	while (buf && dp && (e = readdir(dp))) {
		if (!is_st(e->d_name))
			continue;
		char *p = cal_path_join(dir, e->d_name);
		int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
		ssize_t r;
		while (fd >= 0 && (r = read(fd, buf, bs)) > 0)
			n += (uint64_t)r;
		if (fd >= 0)
			close(fd);
		free(p);
	}
	double t = cal_now() - t0;
	if (dp)
		closedir(dp);
	free(buf);
	*ret_bytes = n;
	return t;
}

/* Writes bytes into the new file p from buf (bs bytes), fsync included,
 * then removes it: seconds, or -1. */
static double timed_write(const char *p, const char *buf, size_t bs, uint64_t bytes)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	double t0 = cal_now(), t = -1.0;
	uint64_t left = bytes;
	if (fd < 0)
		return t;
	while (left) {
		size_t k = left < bs ? (size_t)left : bs;
		if (write(fd, buf, k) != (ssize_t)k)
			break;
		left -= k;
	}
	if (!left && !fsync(fd))
		t = cal_now() - t0;
	close(fd);
	unlink(p);
	return t;
}

/* Writes bytes into a scratch file in dir, fsync included: seconds. */
static double write_scratch(const char *dir, uint64_t bytes)
{
	size_t bs = 16u << 20;
	char *buf = malloc(bs), *p = NULL;
	double t = -1.0;
	if (buf && asprintf(&p, "%s/.calibd-bench-write-%d", dir, (int)getpid()) >= 0) {
		memset(buf, 0x5a, bs);
		t = timed_write(p, buf, bs, bytes);
		free(p);
	}
	free(buf);
	return t;
}

/* Sum of the regular files' sizes under dir (not recursive). */
static uint64_t dir_bytes(const char *dir)
{
	uint64_t n = 0;
	DIR *dp = opendir(dir);
	struct dirent *e;
	while (dp && (e = readdir(dp))) {
		char *p = cal_path_join(dir, e->d_name);
		struct stat sb;
		if (p && !stat(p, &sb) && S_ISREG(sb.st_mode))
			n += (uint64_t)sb.st_size;
		free(p);
	}
	if (dp)
		closedir(dp);
	return n;
}

/* ---- compute peak ------------------------------------------------------------- */

/* bf16 GEMM TFLOP/s of be on 8192^3 (best of 5); 0 when it cannot run. */
static double gemm_peak(struct cal_backend *be)
{
	const uint64_t n = 8192;
	void *x = NULL, *w = NULL, *y = NULL;
	struct cal_error err = {0};
	double best = 0.0;
	if (cal_backend_alloc(be, n * n * 2, &x, &err) < 0 ||
	    cal_backend_alloc(be, n * n * 2, &w, &err) < 0 ||
	    cal_backend_alloc(be, n * n * 2, &y, &err) < 0 ||
	    cal_backend_memset(be, x, 0x3c, n * n * 2, &err) < 0 ||
	    cal_backend_memset(be, w, 0x3c, n * n * 2, &err) < 0)
		goto out;
	for (int it = 0; it < 6; it++) {
		struct cal_gemm_args a = {x, w, NULL, y, n, n, n, 0, NULL, 0, 0, NULL, 0};
		double t0 = cal_now();
		if (cal_op_gemm(be, &a, &err) < 0 || cal_backend_sync(be, &err) < 0)
			goto out;
		double t = cal_now() - t0, tf = 2.0 * (double)n * n * n / t / 1e12;
		if (it && tf > best)
			best = tf;
	}
out:
	cal_backend_dealloc(be, x);
	cal_backend_dealloc(be, w);
	cal_backend_dealloc(be, y);
	cal_error_clear(&err);
	return best;
}

/* ---- memory sampler ------------------------------------------------------------- */

struct sampler {
	struct cal_backend *be;     /* NULL: no device */
	pthread_t th;
	pthread_mutex_t mu;
	int stop;
	uint64_t gpu_base, gpu_peak, anon_peak;
};

static uint64_t rss_anon(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "RssAnon: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kb << 10;
}

static void sample(struct sampler *s)
{
	uint64_t fr = 0, tot = 0, a = rss_anon();
	struct cal_error err = {0};
	if (s->be && cal_backend_mem_info(s->be, &fr, &tot, &err) >= 0 && tot - fr > s->gpu_peak)
		s->gpu_peak = tot - fr;
	cal_error_clear(&err);
	if (a > s->anon_peak)
		s->anon_peak = a;
}

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		int stop = s->stop;
		if (!stop)
			sample(s);
		pthread_mutex_unlock(&s->mu);
		if (stop)
			return NULL;
		usleep(10000);
	}
}

/* ---- the benchmark ------------------------------------------------------------- */

static double phase(json_t *rep, const char *name)
{
	return json_number_value(json_object_get(json_object_get(rep, "phases_s"), name));
}

int cal_bench_quantize(int argc, char **argv)
{
	const char *model = NULL, *tokens = NULL, *parent = "/tmp", *json_path = NULL;
	const char *recipe = "general/ptq/nvfp4_experts_only-kv_fp8", *device = NULL;
	uint64_t wbytes = 2ull << 30, shard = 0;
	int keep = 0, warm = 0, no_disk = 0, c, rc = CAL_EXIT_OK;
	struct cal_error err = {0};
	enum cal_status st = CAL_OK;
	struct cal_model_desc *d = NULL;
	struct cal_backend *be = NULL;
	char *out = NULL;
	struct cal_devices devs;
	json_t *rep = NULL;

	struct cal_cli_args ca = CAL_CLI_ARGS(
		"bench quantize", argc, argv, "h",
		"model tokens out-parent recipe device write-bytes max-shard-size keep json-file "
		"warm no-disk",
		CAL_CLI_SETS(CAL_CLI_NEED("model", &model), CAL_CLI_NEED("tokens", &tokens),
			     CAL_CLI_STR("out-parent", &parent), CAL_CLI_STR("recipe", &recipe),
			     CAL_CLI_STR("device", &device), CAL_CLI_FLAG("keep", &keep),
			     CAL_CLI_FLAG("warm", &warm), CAL_CLI_FLAG("no-disk", &no_disk),
			     CAL_CLI_STR("json-file", &json_path)));
	while ((c = cal_cli_next(&ca)) != -1) {
		switch (c) {
		case 'w': case 'z':
			if (cal_parse_size(c == 'w' ? "--write-bytes" : "--max-shard-size", optarg, 1,
					   UINT64_MAX, c == 'w' ? &wbytes : &shard, &err) < 0)
				return cal_cli_fail("bench quantize", &err, CAL_EXIT_USAGE);
			break;
		default: return cal_cli_usage(bq_usage, c);
		}
	}
	if (optind != argc)
		return cal_cli_usage(bq_usage, '?');
	if ((rc = cal_cli_devices("bench quantize", device, &devs)) != CAL_EXIT_OK)
		return rc;
	if (!(out = cal_path_join(parent, "calibd-bench-out")))
		return CAL_EXIT_FAILURE;
	CAL_TRY(cal_model_desc_load(model, &d, &err));
	if (devs.kind == CAL_DEVICE_CUDA ||
	    (devs.kind == CAL_DEVICE_AUTO && cal_backend_cuda_available())) {
		struct cal_backend_opts bo = {.cuda_device = devs.n ? devs.ids[0] : 0};
		CAL_TRY(cal_backend_init(CAL_BACKEND_CUDA, &bo, &be, &err));
	}

	/* the machine */
	uint64_t src_bytes = 0;
	double t_read = !no_disk ? read_all(model, &src_bytes) : 0.0;
	double t_write = !no_disk ? write_scratch(parent, wbytes) : 0.0;
	double read_bw = t_read > 0 ? (double)src_bytes / t_read : 0.0;
	double write_bw = t_write > 0 ? (double)wbytes / t_write : 0.0;
	double peak = be ? gemm_peak(be) : 0.0;
	printf("machine: %s\n", be ? cal_backend_describe(be) : "cpu");
	if (no_disk) {
		printf("disk: not measured (--no-disk)\n");
	} else {
		printf("disk read:  %.2f GB in %.2f s = %.2f GB/s (source, cold page cache)\n",
		       (double)src_bytes / 1e9, t_read, read_bw / 1e9);
		printf("disk write: %.2f GB in %.2f s = %.2f GB/s (fsync'ed, in %s)\n",
		       (double)wbytes / 1e9, t_write, write_bw / 1e9, parent);
	}
	printf("bf16 GEMM peak: %.0f TFLOP/s (8192^3)\n", peak);

	/* the job, from a cold page cache */
	struct sampler sm = {.be = be};
	pthread_mutex_init(&sm.mu, NULL);
	sample(&sm);
	sm.gpu_base = sm.gpu_peak;
	sm.gpu_peak = 0;
	sm.anon_peak = 0;
	if (!warm)
		evict(model);
	struct cal_job_opts jo = {.model_dir = model, .recipe = recipe, .tokens = tokens,
				  .devices = devs, .max_shard_bytes = shard};
	struct cal_quantize_opts qo = {.out_dir = out};
	struct cal_job *job = NULL;
	int have_thread = !pthread_create(&sm.th, NULL, sampler_main, &sm);
	/* the job as `calibd quantize` runs it: opened (the "load" phase), run */
	double t0 = cal_now();
	st = cal_quantize_check_output(out, &err);
	if (st >= 0)
		st = cal_job_open(&jo, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &job, NULL, &err);
	if (st >= 0)
		st = cal_quantize_run(job, &qo, NULL, NULL, &rep, &err);
	cal_job_close(job);
	double wall = cal_now() - t0;
	if (have_thread) {
		pthread_mutex_lock(&sm.mu);
		sm.stop = 1;
		pthread_mutex_unlock(&sm.mu);
		pthread_join(sm.th, NULL);
	}
	pthread_mutex_destroy(&sm.mu);
	if (st < 0)
		goto fail;
	uint64_t out_bytes = dir_bytes(out);
	json_t *cal = json_object_get(rep, "calibration");
	double tokens_n = (double)json_integer_value(json_object_get(cal, "tokens"));
	int64_t moe_layers = 0;
	for (int64_t L = 0; L < d->num_layers; L++)
		moe_layers += d->layers[L].ffn == CAL_FFN_MOE;
	double flops = tokens_n * (double)d->top_k * 3.0 * 2.0 * (double)d->hidden_size *
		       (double)d->moe_intermediate_size * (double)moe_layers;
	double f_read = read_bw > 0 ? (double)src_bytes / read_bw : 0.0;
	double f_write = write_bw > 0 ? (double)out_bytes / write_bw : 0.0;
	double f_gemm = peak > 0 ? flops / (peak * 1e12) : 0.0;
	double floor_s = f_read > f_write ? f_read : f_write;
	floor_s = f_gemm > floor_s ? f_gemm : floor_s;
	double p_cal = phase(rep, "calibrate"), p_q = phase(rep, "export_layers"),
	       p_w = phase(rep, "export_write"), p_wait = phase(rep, "export_wait"),
	       p_drain = phase(rep, "export_drain"), p_fin = phase(rep, "export_finish");
	double stage = p_q > p_w ? p_q : p_w;
	double hidden = stage > 0 ? 1.0 - (p_wait + p_drain) / stage : 1.0;
	printf("floor: %.2f s = max(read %.2f GB at %.2f GB/s = %.2f s, write %.2f GB = %.2f s, "
	       "expert GEMMs %.1f TFLOP = %.2f s)\n", floor_s, (double)src_bytes / 1e9,
	       read_bw / 1e9, f_read, (double)out_bytes / 1e9, f_write, flops / 1e12, f_gemm);
	printf("job: %s page cache\n", warm ? "warm" : "cold");
	printf("phases (s): load %.2f, tokenize %.2f, calibrate %.2f (%.0f tokens/s), "
	       "export: quantize stage %.2f, writer %.2f, calibration waited %.2f, drain after "
	       "the last layer %.2f, model-level + publish %.2f\n",
	       phase(rep, "load"), phase(rep, "tokenize"), p_cal, p_cal > 0 ? tokens_n / p_cal : 0.0,
	       p_q, p_w, p_wait, p_drain, p_fin);
	printf("finish (model-level tensors, side files, fsync, rename): %.2f s\n",
	       phase(rep, "finish"));
	printf("overlap: %.0f%% of the export stage ran behind the calibration\n",
	       hidden < 0 ? 0.0 : 100.0 * hidden);
	char *rp = cal_path_join(out, "calibd_report.json");
	json_t *full = rp ? json_load_file(rp, 0, NULL) : NULL;
	json_t *pl = json_object_get(full, "pipeline");
	free(rp);
	if (pl)
		printf("export pipeline memory: host staging %.0f MiB + ring %.0f MiB (pinned), "
		       "back-end peak %.2f GB (%s)\n",
		       (double)json_integer_value(json_object_get(pl, "host_staging_bytes")) / 1048576.0,
		       (double)json_integer_value(json_object_get(pl, "host_ring_bytes")) / 1048576.0,
		       (double)json_integer_value(json_object_get(pl, "backend_peak_bytes")) / 1e9,
		       json_string_value(json_object_get(pl, "backend")));
	if (pl)
		json_object_set(rep, "pipeline", pl);
	json_decref(full);
	printf("peak memory: GPU %.2f GB used above the %.2f GB before the job (device-wide, "
	       "sampled), host %.2f GB anonymous resident (sampled)\n",
	       (double)sm.gpu_peak > (double)sm.gpu_base ? (double)(sm.gpu_peak - sm.gpu_base) / 1e9
							  : 0.0,
	       (double)sm.gpu_base / 1e9, (double)sm.anon_peak / 1e9);
	printf("end to end: %.2f s, %.2f x the floor; output %.2f GB in %s\n", wall,
	       floor_s > 0 ? wall / floor_s : 0.0, (double)out_bytes / 1e9, out);
	if (json_path) {
		json_t *o = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f,"
				      " s:f, s:f, s:f, s:O}",
				      "read_GBps", read_bw / 1e9, "write_GBps", write_bw / 1e9,
				      "gemm_TFLOPs", peak, "floor_s", floor_s, "floor_read_s", f_read,
				      "floor_write_s", f_write, "floor_gemm_s", f_gemm, "wall_s", wall,
				      "ratio_to_floor", floor_s > 0 ? wall / floor_s : 0.0,
				      "calibrate_tokens_per_s", p_cal > 0 ? tokens_n / p_cal : 0.0,
				      "export_hidden_fraction", hidden,
				      "gpu_peak_GB", (double)(sm.gpu_peak > sm.gpu_base ?
							      sm.gpu_peak - sm.gpu_base : 0) / 1e9,
				      "host_anon_peak_GB", (double)sm.anon_peak / 1e9,
				      "output_GB", (double)out_bytes / 1e9, "source_GB",
				      (double)src_bytes / 1e9, "report", rep);
		if (!o || json_dump_file(o, json_path, JSON_INDENT(1)) < 0)
			fprintf(stderr, "calibd bench quantize: cannot write %s\n", json_path);
		json_decref(o);
	}
	if (!keep) {
		char *cmd = NULL;
		if (asprintf(&cmd, "rm -rf '%s'", out) > 0 && system(cmd) != 0)
			fprintf(stderr, "calibd bench quantize: could not remove %s\n", out);
		free(cmd);
	}
fail:
	json_decref(rep);
	free(out);
	cal_backend_free(be);
	cal_model_desc_free(d);
	return cal_cli_finish("bench quantize", st, &err);
}
