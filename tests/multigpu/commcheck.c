/* commcheck.c — see commcheck.h. */
#include "commcheck.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t z)
{
	z += UINT64_C(0x9E3779B97F4A7C15);
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* The input of (seed, iteration, tag, rank, index). */
static uint64_t h5(uint64_t seed, unsigned it, unsigned tag, unsigned rank, uint64_t i)
{
	return mix(mix(mix(mix(seed ^ it) ^ tag) ^ rank) ^ i);
}

static const size_t sizes[] = {0, 1, 7, 1000, 4099};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

struct ctx {
	struct cal_comm *c;
	struct cal_backend *be;
	uint64_t seed;
	unsigned it, rank, R;
	char *msg;
	size_t msg_size;
};

static int failf(struct ctx *x, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int failf(struct ctx *x, const char *fmt, ...)
{
	int n = snprintf(x->msg, x->msg_size, "rank %u, seed %llu, iteration %u: ", x->rank,
			 (unsigned long long)x->seed, x->it);
	va_list ap;
	va_start(ap, fmt);
	if (n >= 0 && (size_t)n < x->msg_size)
		vsnprintf(x->msg + n, x->msg_size - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

static int failed_call(struct ctx *x, const char *what, struct cal_error *err)
{
	failf(x, "%s: %s", what, cal_error_msg(err));
	cal_error_clear(err);
	return -1;
}

/* A value of element i of rank r's input in a dtype; f32 spans magnitudes so
 * that the order of a sum changes its result. */
static void value(struct ctx *x, unsigned tag, unsigned r, size_t i, enum cal_comm_dtype dt,
		  void *ret)
{
	uint64_t h = h5(x->seed, x->it, tag, r, i);
	if (dt == CAL_COMM_F32) {
		float v = ((float)(h >> 40) / 16777216.0f - 0.5f);
		int e = (int)(h % 24) - 12;
		v = e >= 0 ? v * (float)(1u << e) : v / (float)(1u << -e);
		memcpy(ret, &v, 4);
	} else if (dt == CAL_COMM_U64) {
		uint64_t v = h >> 3;
		memcpy(ret, &v, 8);
	} else {
		int64_t v = (int64_t)h / 16;
		memcpy(ret, &v, 8);
	}
}

static void ref_reduce(void *acc, const void *v, enum cal_comm_dtype dt, enum cal_comm_redop op)
{
	if (dt == CAL_COMM_F32) {
		float a, b;
		memcpy(&a, acc, 4);
		memcpy(&b, v, 4);
		a = op == CAL_COMM_SUM ? a + b : (b > a ? b : a);
		memcpy(acc, &a, 4);
	} else if (dt == CAL_COMM_U64) {
		uint64_t a, b;
		memcpy(&a, acc, 8);
		memcpy(&b, v, 8);
		a = op == CAL_COMM_SUM ? a + b : (b > a ? b : a);
		memcpy(acc, &a, 8);
	} else {
		int64_t a, b;
		memcpy(&a, acc, 8);
		memcpy(&b, v, 8);
		a = op == CAL_COMM_SUM ? (int64_t)((uint64_t)a + (uint64_t)b) : (b > a ? b : a);
		memcpy(acc, &a, 8);
	}
}

/* The end of a check: the call's outcome, then the n bytes at dev (back-end
 * memory, copied to out) against ref. */
static int verdict(struct ctx *x, int call_failed, struct cal_error *err, const char *what,
		   void *out, const void *dev, const void *ref, size_t n)
{
	if (!call_failed && n && cal_backend_download(x->be, out, dev, n, err) < 0)
		call_failed = 1;
	if (call_failed)
		return failed_call(x, what, err);
	if (n && memcmp(out, ref, n) != 0) {
		size_t i = 0;
		while (((const char *)out)[i] == ((const char *)ref)[i])
			i++;
		return failf(x, "%s: byte %zu of %zu differs from the serial reference", what, i, n);
	}
	return 0;
}

/* Device buffer of n bytes (at least 1) holding host src (NULL: garbage). */
static void *dev_put(struct ctx *x, const void *src, size_t n, struct cal_error *err)
{
	void *d = NULL;
	if (cal_backend_alloc(x->be, n ? n : 1, &d, err) < 0)
		return NULL;
	if (src && n && cal_backend_upload(x->be, d, src, n, err) < 0) {
		cal_backend_dealloc(x->be, d);
		return NULL;
	}
	return d;
}

static int check_allreduce(struct ctx *x, unsigned k, enum cal_comm_dtype dt,
			   enum cal_comm_redop op)
{
	struct cal_error err = {0};
	size_t n = sizes[(x->it + k) % NSIZES], es = dt == CAL_COMM_F32 ? 4 : 8;
	unsigned char *in = malloc(n * es + 8), *ref = malloc(n * es + 8), *out = malloc(n * es + 8);
	unsigned char v[8];
	int rc = -1;
	for (size_t i = 0; i < n; i++) {
		value(x, k, x->rank, i, dt, in + i * es);
		value(x, k, 0, i, dt, ref + i * es);
		for (unsigned r = 1; r < x->R; r++) {
			value(x, k, r, i, dt, v);
			ref_reduce(ref + i * es, v, dt, op);
		}
	}
	void *d = dev_put(x, in, n * es, &err);
	if (!d) {
		rc = failed_call(x, "alloc", &err);
		goto out;
	}
	char what[96];
	snprintf(what, sizeof(what), "allreduce dtype %d op %d count %zu", (int)dt, (int)op, n);
	rc = verdict(x, cal_comm_allreduce(x->c, d, n, dt, op, &err) < 0, &err, what, out, d, ref,
		     n * es);
	cal_backend_dealloc(x->be, d);
out:
	free(in);
	free(ref);
	free(out);
	return rc;
}

static int check_allgather(struct ctx *x)
{
	struct cal_error err = {0};
	size_t b = sizes[(x->it + 1) % NSIZES] * 3, R = x->R;
	unsigned char *ref = malloc(b * R + 1), *out = malloc(b * R + 1);
	int in_place = x->it % 2, rc = -1;
	for (size_t r = 0; r < R; r++)
		for (size_t i = 0; i < b; i++)
			ref[r * b + i] = (unsigned char)h5(x->seed, x->it, 100, (unsigned)r, i);
	void *d = dev_put(x, ref, b * R, &err); /* in place: recv holds the input */
	void *s = in_place ? NULL : dev_put(x, ref + x->rank * b, b, &err);
	if (!d || (!in_place && !s)) {
		rc = failed_call(x, "alloc", &err);
		goto out;
	}
	if (!in_place && b && cal_backend_memset(x->be, d, 0xEE, b * R, &err) < 0) {
		rc = failed_call(x, "memset", &err);
		goto out;
	}
	const void *send = in_place ? (char *)d + x->rank * b : s;
	rc = verdict(x, cal_comm_allgather(x->c, send, b, d, &err) < 0, &err,
		     in_place ? "allgather in place" : "allgather", out, d, ref, b * R);
out:
	cal_backend_dealloc(x->be, d);
	cal_backend_dealloc(x->be, s);
	free(ref);
	free(out);
	return rc;
}

static int check_broadcast(struct ctx *x)
{
	struct cal_error err = {0};
	size_t b = sizes[(x->it + 2) % NSIZES] * 5;
	unsigned root = x->it % x->R;
	unsigned char *ref = malloc(b + 1), *out = malloc(b + 1);
	int rc;
	for (size_t i = 0; i < b; i++) {
		ref[i] = (unsigned char)h5(x->seed, x->it, 200, root, i);
		out[i] = (unsigned char)h5(x->seed, x->it, 200, x->rank, i);
	}
	void *d = dev_put(x, out, b, &err);
	if (!d)
		rc = failed_call(x, "alloc", &err);
	else
		rc = verdict(x, cal_comm_broadcast(x->c, d, b, root, &err) < 0, &err, "broadcast", out,
			     d, ref, b);
	cal_backend_dealloc(x->be, d);
	free(ref);
	free(out);
	return rc;
}

/* Bytes that rank r sends to rank p in this iteration: 0 for one pair in
 * five and always for the pair (r, (r + it) % R). */
static uint64_t pair_bytes(struct ctx *x, unsigned r, unsigned p)
{
	uint64_t h = h5(x->seed, x->it, 300, r, p);
	if (h % 5 == 0 || p == (r + x->it) % x->R)
		return 0;
	return (h >> 8) % 2000;
}

static unsigned char pair_byte(struct ctx *x, unsigned r, unsigned p, uint64_t i)
{
	return (unsigned char)h5(x->seed, x->it, 400 + r, p, i);
}

static int check_alltoallv(struct ctx *x)
{
	struct cal_error err = {0};
	unsigned R = x->R, me = x->rank;
	uint64_t *sb = calloc(R, 8), *rb = calloc(R, 8);
	uint64_t s_all = 0, r_all = 0;
	unsigned char *sh = NULL, *ref = NULL, *out = NULL;
	void *ds = NULL, *dr = NULL;
	int rc = -1;
	for (unsigned p = 0; p < R; p++)
		s_all += sb[p] = pair_bytes(x, me, p);
	if (cal_comm_alltoall_counts(x->c, sb, rb, &err) < 0) {
		rc = failed_call(x, "alltoall_counts", &err);
		goto out;
	}
	for (unsigned p = 0; p < R; p++) {
		if (rb[p] != pair_bytes(x, p, me)) {
			rc = failf(x, "alltoall_counts: from rank %u %llu, expected %llu", p,
				   (unsigned long long)rb[p], (unsigned long long)pair_bytes(x, p, me));
			goto out;
		}
		r_all += rb[p];
	}
	sh = malloc(s_all + 1);
	ref = malloc(r_all + 1);
	out = malloc(r_all + 1);
	uint64_t o = 0;
	for (unsigned p = 0; p < R; p++)
		for (uint64_t i = 0; i < sb[p]; i++)
			sh[o++] = pair_byte(x, me, p, i);
	o = 0;
	for (unsigned p = 0; p < R; p++)
		for (uint64_t i = 0; i < rb[p]; i++)
			ref[o++] = pair_byte(x, p, me, i);
	ds = dev_put(x, sh, s_all, &err);
	dr = ds ? dev_put(x, NULL, r_all, &err) : NULL;
	if (!ds || !dr) {
		rc = failed_call(x, "alloc", &err);
		goto out;
	}
	rc = verdict(x, cal_comm_alltoallv(x->c, ds, sb, dr, rb, &err) < 0, &err, "alltoallv", out,
		     dr, ref, r_all);
out:
	cal_backend_dealloc(x->be, ds);
	cal_backend_dealloc(x->be, dr);
	free(sb);
	free(rb);
	free(sh);
	free(ref);
	free(out);
	return rc;
}

int commcheck_run(struct cal_comm *c, uint64_t seed, unsigned iters, char *msg, size_t msg_size)
{
	struct ctx x = {c, cal_comm_backend(c), seed, 0, cal_comm_rank(c), cal_comm_size(c), msg,
			msg_size};
	static const struct {
		enum cal_comm_dtype dt;
		enum cal_comm_redop op;
	} red[] = {
		{CAL_COMM_F32, CAL_COMM_SUM}, {CAL_COMM_F32, CAL_COMM_MAX},
		{CAL_COMM_U64, CAL_COMM_SUM}, {CAL_COMM_U64, CAL_COMM_MAX},
		{CAL_COMM_I64, CAL_COMM_MAX}, {CAL_COMM_I64, CAL_COMM_SUM},
	};
	struct cal_comm_stats before, after;
	cal_comm_get_stats(c, &before);
	msg[0] = '\0';
	for (x.it = 0; x.it < iters; x.it++) {
		for (unsigned k = 0; k < sizeof(red) / sizeof(red[0]); k++)
			if (check_allreduce(&x, k, red[k].dt, red[k].op) < 0)
				return -1;
		struct cal_error err = {0};
		if (check_allgather(&x) < 0 || check_broadcast(&x) < 0)
			return -1;
		if (cal_comm_barrier(c, &err) < 0)
			return failed_call(&x, "barrier", &err);
		if (check_alltoallv(&x) < 0)
			return -1;
	}
	cal_comm_get_stats(c, &after);
	uint64_t calls = after.total.calls - before.total.calls;
	if (calls != (uint64_t)iters * 11)
		return failf(&x, "counters: %llu calls, expected %u", (unsigned long long)calls,
			     iters * 11);
	if (after.op[CAL_COMM_OP_BARRIER].calls - before.op[CAL_COMM_OP_BARRIER].calls != iters)
		return failf(&x, "counters: barrier calls");
	return 0;
}

enum cal_status commcheck_backend(enum cal_comm_kind kind, unsigned rank, struct cal_backend **be,
				  struct cal_error *err)
{
	struct cal_backend_opts bo = {.cpu_threads = 1, .cuda_device = (int)rank};
	return cal_backend_init(kind == CAL_COMM_NCCL ? CAL_BACKEND_CUDA : CAL_BACKEND_CPU, &bo, be,
				err);
}

enum cal_status commcheck_open(enum cal_comm_kind kind, unsigned R, unsigned rank,
			       const char *rendezvous, unsigned timeout_ms,
			       struct cal_backend **be, struct cal_comm **c,
			       struct cal_error *err)
{
	struct cal_comm_opts o = {.kind = kind, .nranks = R, .rank = rank,
				  .rendezvous = rendezvous, .timeout_ms = timeout_ms};
	*be = NULL;
	*c = NULL;
	enum cal_status st = commcheck_backend(kind, rank, be, err);
	return st < 0 ? st : cal_comm_open(&o, *be, c, err);
}
