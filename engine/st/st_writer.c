/*
 * st_writer.c — streaming, crash-safe safetensors checkpoint writer.
 *
 * Every tensor is declared before the first byte is written, so the shard
 * layout, every header and the index are fixed at begin(): the disk-space
 * check covers the whole output, and put() writes each tensor with pwrite()
 * at its final offset, in whatever order the tensors are produced.  All
 * output goes into a temporary sibling directory; commit() fsyncs, runs each
 * shard back through the validator, and publishes with one rename (never
 * replacing an existing target).  Any error kills the writer and removes the
 * temporary directory at once, so a failure never leaves partial output.
 */
#include "st_writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/confine.h"
#include "common/hash.h"
#include "common/parse.h"
#include "common/util.h"
#include "safetensors.h"
#include "st_internal.h"

enum wstate { W_DECLARE, W_BEGUN, W_COMMITTED, W_DEAD };

struct wtensor {
	char *name;
	enum cal_dtype dtype;
	int ndim;
	int64_t shape[CAL_ST_MAX_DIMS];
	uint64_t nbytes;
	size_t shard;
	uint64_t off;   /* absolute offset in the shard file */
	int put;
};

struct wshard {
	char *fname;    /* plain name */
	int fd;
	size_t first, count;   /* tensors [first, first+count) in declared order */
	uint64_t data_bytes;
	char *header;   /* 8-byte length + padded JSON, built at begin() */
	size_t header_len;
};

struct cal_st_writer {
	char *final_dir;
	char *parent;
	char *base;     /* final_dir's last component */
	char *tmp_dir;  /* parent/tmp_name (messages, tmp_dir()) */
	char *tmp_name;
	int parent_fd, tmp_fd; /* every create, rename and removal is relative to these */
	struct cal_st_writer_opts opts;
	enum wstate state;
	int published;  /* renamed to final_dir */
	int tmp_gone;   /* temporary directory removed */
	struct wtensor *t;
	size_t nt, cap;
	struct cal_name_index names; /* the tensors by name */
	struct wshard *sh;
	size_t nsh;
	char *index;    /* index JSON when nsh > 1 */
	uint64_t written;
	uint64_t write_limit; /* CALIBD_TEST_WRITE_LIMIT, 0: none */
	int part;       /* writes part of a leader's output (open_part): creates,
			   publishes and removes nothing */
};

/* ---- name lookup -------------------------------------------------------- */

static const char *tensor_name(const void *t, size_t i)
{
	return ((const struct wtensor *)t)[i].name;
}

static size_t *hash_slot(const struct cal_st_writer *w, const char *name)
{
	return cal_name_index_slot(&w->names, name, tensor_name, w->t);
}

static struct wtensor *find_tensor(const struct cal_st_writer *w, const char *name)
{
	if (!w->names.cap)
		return NULL;
	size_t v = *hash_slot(w, name);
	return v ? &w->t[v - 1] : NULL;
}

/* ---- failure: remove everything ---------------------------------------- */

static void close_shards(struct cal_st_writer *w)
{
	for (size_t i = 0; i < w->nsh; i++) {
		if (w->sh[i].fd >= 0)
			close(w->sh[i].fd);
		w->sh[i].fd = -1;
	}
}

/* Removes the temporary directory and the plain files in it. */
static void remove_tmp(struct cal_st_writer *w)
{
	close_shards(w);
	if (w->part || w->tmp_fd < 0 || w->published || w->tmp_gone)
		return;
	w->tmp_gone = 1;
	int dfd = dup(w->tmp_fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (d) {
		struct dirent *de;
		while ((de = readdir(d)))
			if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
				unlinkat(w->tmp_fd, de->d_name, 0);
		closedir(d);
	} else if (dfd >= 0) {
		close(dfd);
	}
	unlinkat(w->parent_fd, w->tmp_name, AT_REMOVEDIR);
}

/* Kills the writer: removes its output and passes st through. */
static enum cal_status die(struct cal_st_writer *w, enum cal_status st)
{
	remove_tmp(w);
	if (!w->published)
		w->state = W_DEAD;
	return st;
}

static enum cal_status check_state(struct cal_st_writer *w, enum wstate want, const char *what,
				   struct cal_error *err)
{
	if (w->state == want)
		return CAL_OK;
	static const char *const names[] = {"before begin()", "after begin()", "after commit()",
					    "after an earlier error"};
	return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: %s called %s", w->final_dir, what,
				    names[w->state]));
}

/* ---- I/O helpers -------------------------------------------------------- */

static enum cal_status io_error(struct cal_st_writer *w, int e, const char *what, const char *file,
				struct cal_error *err)
{
	return cal_error_set(err, e == ENOSPC || e == EDQUOT ? CAL_ERR_NOSPACE : CAL_ERR_IO,
			     "%s/%s: %s failed: %s", w->final_dir, file, what, strerror(e));
}

static int pwrite_all(int fd, const void *buf, uint64_t n, uint64_t off)
{
	const char *p = buf;
	while (n > 0) {
		size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
		ssize_t r = pwrite(fd, p, chunk, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0) {
			errno = EIO;
			return -1;
		}
		p += r;
		off += (uint64_t)r;
		n -= (uint64_t)r;
	}
	return 0;
}

/* Creates `name` in the temporary directory (never replacing a file). */
static int create_in_tmp(struct cal_st_writer *w, const char *name)
{
	return openat(w->tmp_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
}

/* Writes a small whole file into the temporary directory and fsyncs it. */
static enum cal_status write_small(struct cal_st_writer *w, const char *name, const void *data,
				   size_t len, struct cal_error *err)
{
	int fd = create_in_tmp(w, name);
	if (fd < 0)
		return errno == EEXIST ? cal_error_set(err, CAL_ERR_EXISTS,
						       "%s/%s: written twice", w->final_dir, name)
				       : io_error(w, errno, "create", name, err);
	if (pwrite_all(fd, data, len, 0) < 0 || fsync(fd) < 0) {
		int e = errno;
		close(fd);
		return io_error(w, e, "write", name, err);
	}
	if (close(fd) < 0)
		return io_error(w, errno, "close", name, err);
	return CAL_OK;
}

/* ---- public API --------------------------------------------------------- */

/* A writer in W_DECLARE for final_dir: options, the test limit, the
 * parent's and the output's names (nothing opened). */
static enum cal_status writer_new(const char *final_dir, const struct cal_st_writer_opts *opts,
				  struct cal_st_writer **ret, struct cal_error *err)
{
	enum cal_status st;
	char *tmp = NULL;
	struct cal_st_writer *w = calloc(1, sizeof(*w));
	*ret = NULL;
	if (w)
		w->parent_fd = w->tmp_fd = -1;
	if (!w || !(w->final_dir = strdup(final_dir)) || !(tmp = strdup(final_dir)))
		goto nomem;
	w->state = W_DECLARE;
	if (opts)
		w->opts = *opts;
	if (!w->opts.max_shard_bytes)
		w->opts.max_shard_bytes = CAL_ST_DEFAULT_SHARD_BYTES;
	const char *lim = getenv("CALIBD_TEST_WRITE_LIMIT");
	if (lim && *lim &&
	    (st = cal_parse_size("CALIBD_TEST_WRITE_LIMIT", lim, 1, UINT64_MAX, &w->write_limit,
				 err)) < 0)
		goto fail;

	size_t n = strlen(w->final_dir);
	while (n > 1 && w->final_dir[n - 1] == '/')
		w->final_dir[--n] = '\0';
	strcpy(tmp, w->final_dir);
	const char *base = basename(tmp);
	if (n == 0 || strcmp(base, "/") == 0 || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		st = cal_error_set(err, CAL_ERR_INVALID, "'%s': not a usable output directory name",
				   final_dir);
		goto fail;
	}
	char *slash = strrchr(w->final_dir, '/');
	if (!slash)
		w->parent = strdup(".");
	else if (slash == w->final_dir)
		w->parent = strdup("/");
	else
		w->parent = strndup(w->final_dir, (size_t)(slash - w->final_dir));
	if (!w->parent || !(w->base = strdup(base)))
		goto nomem;
	free(tmp);
	*ret = w;
	return CAL_OK;
nomem:
	st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", final_dir);
fail:
	free(tmp);
	cal_st_writer_free(w);
	return st;
}

enum cal_status cal_st_writer_open(const char *final_dir,
				   const struct cal_st_writer_opts *opts,
				   struct cal_st_writer **ret, struct cal_error *err)
{
	enum cal_status st;
	struct cal_st_writer *w;
	*ret = NULL;
	if ((st = writer_new(final_dir, opts, &w, err)) < 0)
		return st;
	const char *base = w->base;
	const struct cal_st_publish *pub = w->opts.publish;
	const char *tag = pub && pub->tmp_tag ? pub->tmp_tag : NULL;
	if (tag && (!*tag || strlen(tag) > CAL_ST_TMP_TAG_MAX || strspn(tag, "abcdefghijklmnopqrstuvwxyz"
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != strlen(tag))) {
		st = cal_error_set(err, CAL_ERR_INVALID, "%s: temporary name tag '%s' is not 1 to %d "
				   "characters [A-Za-z0-9_-]", w->final_dir, tag, CAL_ST_TMP_TAG_MAX);
		goto fail;
	}
	/* the parent once, confined; everything after is relative to it */
	w->parent_fd = cal_open_confined(w->parent, O_RDONLY | O_DIRECTORY, 0);
	if (w->parent_fd < 0) {
		int e = errno;
		st = cal_error_set(err, e == ENOENT ? CAL_ERR_NOTFOUND : e == EXDEV ? CAL_ERR_RANGE : CAL_ERR_IO,
				   "%s: parent directory: %s", w->final_dir, cal_confine_strerror(e));
		goto fail;
	}
	struct stat sb;
	if (fstatat(w->parent_fd, w->base, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
		st = cal_error_set(err, CAL_ERR_EXISTS, "%s: already exists; refusing to overwrite it",
				   w->final_dir);
		goto fail;
	}
	if (errno != ENOENT) {
		st = cal_error_set(err, CAL_ERR_IO, "%s: %s", w->final_dir, strerror(errno));
		goto fail;
	}
	static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	int made = -1, e = EEXIST;
	for (int tries = 0; tries < 100 && made < 0 && e == EEXIST; tries++) {
		unsigned char rnd[6];
		char suffix[7];
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			for (size_t i = 0; i < sizeof(rnd); i++)
				rnd[i] = (unsigned char)(rand() ^ (int)i);
		for (size_t i = 0; i < sizeof(rnd); i++)
			suffix[i] = alnum[rnd[i] % (sizeof(alnum) - 1)];
		suffix[6] = '\0';
		free(w->tmp_name);
		if (asprintf(&w->tmp_name, ".%s.tmp-%s%s%s", base, tag ? tag : "", tag ? "-" : "", suffix) < 0) {
			w->tmp_name = NULL;
			goto nomem;
		}
		made = mkdirat(w->parent_fd, w->tmp_name, 0700);
		e = errno;
	}
	if (made < 0) {
		st = cal_error_set(err, e == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_IO,
				   "%s: cannot create a temporary directory in %s: %s", w->final_dir,
				   w->parent, strerror(e));
		goto fail;
	}
	w->tmp_fd = openat(w->parent_fd, w->tmp_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (w->tmp_fd < 0) {
		st = cal_error_set(err, CAL_ERR_IO, "%s: cannot open its temporary directory: %s", w->final_dir,
				   strerror(errno));
		unlinkat(w->parent_fd, w->tmp_name, AT_REMOVEDIR);
		goto fail;
	}
	if ((st = cal_path_join_checked(w->parent, w->tmp_name, &w->tmp_dir, err)) < 0)
		goto fail;
	fchmod(w->tmp_fd, 0755);
	*ret = w;
	return CAL_OK;
nomem:
	st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", final_dir);
fail:
	cal_st_writer_free(w);
	return st;
}

enum cal_status cal_st_writer_declare(struct cal_st_writer *w, const char *name,
				      enum cal_dtype dtype, int ndim,
				      const int64_t *shape, struct cal_error *err)
{
	enum cal_status st = check_state(w, W_DECLARE, "declare()", err);
	if (st < 0)
		return st;
	size_t nlen = strlen(name);
	json_t *probe = json_string(name); /* NULL when not valid UTF-8 */
	int utf8_ok = probe != NULL;
	json_decref(probe);
	if (nlen == 0 || nlen > CAL_ST_MAX_NAME || !utf8_ok || strcmp(name, "__metadata__") == 0)
		return die(w, cal_error_set(err, CAL_ERR_INVALID,
					    "%s: tensor '%.64s': name must be 1..%d bytes of UTF-8 and not __metadata__",
					    w->final_dir, name, CAL_ST_MAX_NAME));
	if ((unsigned)dtype >= CAL_DTYPE_COUNT || ndim < 0 || ndim > CAL_ST_MAX_DIMS)
		return die(w, cal_error_set(err, CAL_ERR_INVALID,
					    "%s: tensor '%s': bad dtype (%d) or rank (%d)",
					    w->final_dir, name, (int)dtype, ndim));
	struct wtensor t = {.dtype = dtype, .ndim = ndim};
	uint64_t numel = 1;
	for (int i = 0; i < ndim; i++) {
		if (shape[i] < 0 || cal_mul_u64(numel, (uint64_t)shape[i], &numel) < 0)
			return die(w, cal_error_set(err, CAL_ERR_INVALID,
						    "%s: tensor '%s': dimension %d (%" PRId64 ") is negative or the size overflows",
						    w->final_dir, name, i, shape[i]));
		t.shape[i] = shape[i];
	}
	if (cal_mul_u64(numel, cal_dtype_size(dtype), &t.nbytes) < 0 || t.nbytes > INT64_MAX / 2)
		return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: tensor '%s': byte size overflows",
					    w->final_dir, name));
	if (find_tensor(w, name))
		return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: tensor '%s' declared twice",
					    w->final_dir, name));
	struct wtensor *nt = cal_grow(w->t, &w->cap, w->nt + 1, sizeof(*nt), 64);
	if (!nt)
		goto nomem;
	w->t = nt;
	if ((w->nt + 1) * 2 > w->names.cap &&
	    cal_name_index_rebuild(&w->names, w->names.cap ? w->names.cap * 2 : 64, w->nt,
				   tensor_name, w->t) < 0)
		goto nomem;
	if (!(t.name = strdup(name)))
		goto nomem;
	w->t[w->nt++] = t;
	*hash_slot(w, name) = w->nt;
	return CAL_OK;
nomem:
	return die(w, cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", w->final_dir));
}

/* Cuts the declared tensors into shards (transformers' rule: a shard closes
 * when the next tensor would push it past the limit; an oversized tensor
 * gets a shard of its own). */
static enum cal_status plan_shards(struct cal_st_writer *w, struct cal_error *err)
{
	w->sh = calloc(w->nt ? w->nt : 1, sizeof(*w->sh));
	if (!w->sh)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", w->final_dir);
	w->nsh = 1;
	w->sh[0].fd = -1;
	for (size_t i = 0; i < w->nt; i++) {
		struct wshard *s = &w->sh[w->nsh - 1];
		if (s->count > 0 && s->data_bytes + w->t[i].nbytes > w->opts.max_shard_bytes) {
			s = &w->sh[w->nsh++];
			s->fd = -1;
			s->first = i;
		}
		w->t[i].shard = w->nsh - 1;
		w->t[i].off = s->data_bytes; /* relative for now */
		s->data_bytes += w->t[i].nbytes;
		s->count++;
	}
	for (size_t k = 0; k < w->nsh; k++) {
		char *name = NULL;
		int r = w->nsh == 1 ? asprintf(&name, "model.safetensors")
				    : asprintf(&name, "model-%05zu-of-%05zu.safetensors", k + 1, w->nsh);
		if (r < 0)
			return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", w->final_dir);
		w->sh[k].fname = name;
	}
	return CAL_OK;
}

/* Builds the 8-byte length plus the space-padded JSON header of shard k. */
static enum cal_status build_header(struct cal_st_writer *w, size_t k, struct cal_error *err)
{
	struct wshard *s = &w->sh[k];
	enum cal_status st = CAL_OK;
	char *text = NULL;
	json_t *root = json_object(), *meta = json_object();
	if (!root || !meta || json_object_set_new(meta, "format", json_string("pt")) < 0 ||
	    json_object_set(root, "__metadata__", meta) < 0)
		goto nomem;
	for (size_t i = s->first; i < s->first + s->count; i++) {
		const struct wtensor *t = &w->t[i];
		json_t *e = json_object(), *shape = json_array();
		json_t *offs = json_pack("[II]", (json_int_t)t->off, (json_int_t)(t->off + t->nbytes));
		int bad = !e || !shape || !offs;
		for (int d = 0; !bad && d < t->ndim; d++)
			bad = json_array_append_new(shape, json_integer(t->shape[d])) < 0;
		if (!bad)
			bad = json_object_set_new(e, "dtype", json_string(cal_dtype_name(t->dtype))) < 0 ||
			      json_object_set(e, "shape", shape) < 0 ||
			      json_object_set(e, "data_offsets", offs) < 0 ||
			      json_object_set(root, t->name, e) < 0;
		json_decref(e);
		json_decref(shape);
		json_decref(offs);
		if (bad)
			goto nomem;
	}
	text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!text)
		goto nomem;
	size_t n = strlen(text);
	size_t total = (8 + n + 7) & ~(size_t)7; /* data starts 8-aligned */
	uint64_t hlen = total - 8;
	if (hlen > CAL_ST_MAX_HEADER) {
		st = cal_error_set(err, CAL_ERR_RANGE,
				   "%s/%s: header of %" PRIu64 " bytes exceeds the %u-byte limit "
				   "(lower max_shard_bytes)",
				   w->final_dir, s->fname, hlen, CAL_ST_MAX_HEADER);
		goto out;
	}
	s->header = malloc(total);
	if (!s->header)
		goto nomem;
	for (int b = 0; b < 8; b++)
		s->header[b] = (char)(hlen >> (8 * b));
	memcpy(s->header + 8, text, n);
	memset(s->header + 8 + n, ' ', total - 8 - n);
	s->header_len = total;
	for (size_t i = s->first; i < s->first + s->count; i++)
		w->t[i].off += total;
	goto out;
nomem:
	st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory building a header", w->final_dir);
out:
	free(text);
	json_decref(meta);
	json_decref(root);
	return st;
}

static enum cal_status build_index(struct cal_st_writer *w, uint64_t total, struct cal_error *err)
{
	json_t *wm = json_object();
	json_t *root = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)total,
				 "weight_map", wm);
	int bad = !root;
	for (size_t i = 0; !bad && i < w->nt; i++)
		bad = json_object_set_new(wm, w->t[i].name,
					  json_string(w->sh[w->t[i].shard].fname)) < 0;
	char *text = bad ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(root);
	if (!text || asprintf(&w->index, "%s\n", text) < 0) {
		w->index = NULL;
		free(text);
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory building the index",
				     w->final_dir);
	}
	free(text);
	return CAL_OK;
}

/* Free bytes where the output goes; CALIBD_TEST_FREE_BYTES overrides. */
static enum cal_status free_bytes(struct cal_st_writer *w, uint64_t *ret, struct cal_error *err)
{
	const char *sim = getenv("CALIBD_TEST_FREE_BYTES");
	if (sim && *sim)
		return cal_parse_size("CALIBD_TEST_FREE_BYTES", sim, 0, UINT64_MAX, ret, err);
	struct statvfs sv;
	if (fstatvfs(w->tmp_fd, &sv) < 0)
		return cal_error_set(err, CAL_ERR_IO, "%s: statvfs failed: %s", w->parent,
				     strerror(errno));
	if (cal_mul_u64(sv.f_bavail, sv.f_frsize, ret) < 0)
		*ret = UINT64_MAX;
	return CAL_OK;
}

enum cal_status cal_st_writer_begin(struct cal_st_writer *w, struct cal_error *err)
{
	enum cal_status st = check_state(w, W_DECLARE, "begin()", err);
	if (st < 0)
		return st;
	CAL_TRY(plan_shards(w, err));
	uint64_t need = 0, tensor_bytes = 0, avail = 0;
	for (size_t k = 0; k < w->nsh; k++) {
		CAL_TRY(build_header(w, k, err));
		if (cal_add_u64(need, w->sh[k].header_len + w->sh[k].data_bytes, &need) < 0 ||
		    cal_add_u64(tensor_bytes, w->sh[k].data_bytes, &tensor_bytes) < 0) {
			st = cal_error_set(err, CAL_ERR_RANGE, "%s: output size overflows", w->final_dir);
			goto fail;
		}
	}
	if (w->nsh > 1)
		CAL_TRY(build_index(w, tensor_bytes, err));
	if (w->index)
		need += strlen(w->index);
	if (cal_add_u64(need, w->opts.reserve_bytes, &need) < 0)
		need = UINT64_MAX;
	CAL_TRY(free_bytes(w, &avail, err));
	if (need > avail) {
		st = cal_error_set(err, CAL_ERR_NOSPACE,
				   "%s: not enough disk space for %s: %" PRIu64 " bytes needed, %" PRIu64
				   " available",
				   w->parent, w->final_dir, need, avail);
		goto fail;
	}
	for (size_t k = 0; k < w->nsh; k++) {
		struct wshard *s = &w->sh[k];
		uint64_t size = s->header_len + s->data_bytes;
		s->fd = create_in_tmp(w, s->fname);
		if (s->fd < 0) {
			st = io_error(w, errno, "create", s->fname, err);
			goto fail;
		}
		if (size > 0 && fallocate(s->fd, 0, 0, (off_t)size) < 0) {
			if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
				st = io_error(w, errno, "fallocate", s->fname, err);
				goto fail;
			}
			if (ftruncate(s->fd, (off_t)size) < 0) {
				st = io_error(w, errno, "ftruncate", s->fname, err);
				goto fail;
			}
		}
		if (pwrite_all(s->fd, s->header, s->header_len, 0) < 0) {
			st = io_error(w, errno, "write", s->fname, err);
			goto fail;
		}
		free(s->header);
		s->header = NULL;
	}
	w->state = W_BEGUN;
	return CAL_OK;
fail:
	return die(w, st);
}

enum cal_status cal_st_writer_put(struct cal_st_writer *w, const char *name,
				  const void *data, uint64_t nbytes,
				  struct cal_error *err)
{
	enum cal_status st = check_state(w, W_BEGUN, "put()", err);
	if (st < 0)
		return st;
	struct wtensor *t = find_tensor(w, name);
	if (!t)
		return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: tensor '%s' was never declared",
					    w->final_dir, name));
	if (t->put)
		return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: tensor '%s' written twice",
					    w->final_dir, name));
	if (nbytes != t->nbytes) {
		char sb[CAL_ST_MAX_DIMS * 22 + 4];
		return die(w, cal_error_set(err, CAL_ERR_INVALID,
					    "%s: tensor '%s': got %" PRIu64 " bytes but shape %s x %s is %" PRIu64,
					    w->final_dir, name, nbytes,
					    cal_st_shape_str(t->shape, t->ndim, sb, sizeof(sb)),
					    cal_dtype_name(t->dtype), t->nbytes));
	}
	struct wshard *s = &w->sh[t->shard];
	if (w->write_limit && w->written + nbytes > w->write_limit)
		return die(w, io_error(w, ENOSPC, "write", s->fname, err));
	/* a part writer opens the leader's shard files as it needs them */
	if (s->fd < 0 && (s->fd = openat(w->tmp_fd, s->fname, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return die(w, io_error(w, errno, "open", s->fname, err));
	if (pwrite_all(s->fd, data, nbytes, t->off) < 0)
		return die(w, io_error(w, errno, "write", s->fname, err));
	/* start the write-back now (without waiting for it), so that the disk
	 * works while the job goes on and commit()'s fsync has little left */
	(void)sync_file_range(s->fd, (off_t)t->off, (off_t)nbytes, SYNC_FILE_RANGE_WRITE);
	t->put = 1;
	w->written += nbytes;
	return CAL_OK;
}

enum cal_status cal_st_writer_add_file(struct cal_st_writer *w, const char *name,
				       const void *data, size_t len,
				       struct cal_error *err)
{
	if (w->state != W_DECLARE && w->state != W_BEGUN)
		return check_state(w, W_BEGUN, "add_file()", err);
	if (!name[0] || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
	    strlen(name) > 255)
		return die(w, cal_error_set(err, CAL_ERR_INVALID,
					    "%s: '%.64s' is not a plain file name", w->final_dir, name));
	size_t n = strlen(name);
	if (strcmp(name, CAL_ST_INDEX_NAME) == 0 || (n >= 12 && strcmp(name + n - 12, ".safetensors") == 0))
		return die(w, cal_error_set(err, CAL_ERR_INVALID,
					    "%s: '%s' is a name the writer keeps for its own files",
					    w->final_dir, name));
	enum cal_status st = write_small(w, name, data, len, err);
	return st < 0 ? die(w, st) : CAL_OK;
}

const char *cal_st_writer_tmp_dir(const struct cal_st_writer *w)
{
	return w->tmp_dir;
}

uint64_t cal_st_writer_bytes_written(const struct cal_st_writer *w)
{
	return w->written;
}

/* ---- one output, several writers (expert parallelism) -------------------- */

const char *cal_st_writer_tmp_name(const struct cal_st_writer *w)
{
	return w->tmp_name;
}

uint64_t cal_st_writer_layout_hash(const struct cal_st_writer *w)
{
	uint64_t h = cal_fnv1a(CAL_FNV_SEED, &w->nsh, sizeof(w->nsh));
	for (size_t i = 0; i < w->nt; i++) {
		const struct wtensor *t = &w->t[i];
		uint64_t v[4] = {(uint64_t)t->dtype, (uint64_t)t->ndim, t->shard, t->off};
		h = cal_fnv1a(h, t->name, strlen(t->name) + 1);
		h = cal_fnv1a(h, v, sizeof(v));
		h = cal_fnv1a(h, t->shape, (size_t)t->ndim * sizeof(t->shape[0]));
	}
	return h;
}

enum cal_status cal_st_writer_open_part(const char *final_dir,
					const struct cal_st_writer_opts *opts,
					struct cal_st_writer **ret, struct cal_error *err)
{
	enum cal_status st = writer_new(final_dir, opts, ret, err);
	if (st >= 0)
		(*ret)->part = 1;
	return st;
}

enum cal_status cal_st_writer_attach(struct cal_st_writer *w, const char *tmp_name,
				     uint64_t layout_hash, struct cal_error *err)
{
	enum cal_status st = check_state(w, W_DECLARE, "attach()", err);
	if (st < 0)
		return st;
	size_t bl = strlen(w->base);
	if (!w->part || strchr(tmp_name, '/') || tmp_name[0] != '.' ||
	    strncmp(tmp_name + 1, w->base, bl) != 0 || strncmp(tmp_name + 1 + bl, ".tmp-", 5) != 0)
		return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: '%.80s' is not the temporary "
					    "directory of a writer of it (or this is no part writer)",
					    w->final_dir, tmp_name));
	CAL_TRY(plan_shards(w, err));
	for (size_t k = 0; k < w->nsh; k++) {
		CAL_TRY(build_header(w, k, err));
		free(w->sh[k].header);
		w->sh[k].header = NULL;
	}
	if (cal_st_writer_layout_hash(w) != layout_hash) {
		st = cal_error_set(err, CAL_ERR_INTERNAL, "%s: this part's output layout differs from "
				   "the leader's", w->final_dir);
		goto fail;
	}
	if (!(w->tmp_name = strdup(tmp_name)) ||
	    asprintf(&w->tmp_dir, "%s/%s", w->parent, tmp_name) < 0) {
		w->tmp_dir = NULL;
		st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", w->final_dir);
		goto fail;
	}
	w->parent_fd = cal_open_confined(w->parent, O_RDONLY | O_DIRECTORY, 0);
	if (w->parent_fd >= 0)
		w->tmp_fd = openat(w->parent_fd, tmp_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
				   O_CLOEXEC);
	if (w->tmp_fd < 0) {
		int e = errno;
		st = cal_error_set(err, e == ENOENT ? CAL_ERR_NOTFOUND : e == EXDEV ? CAL_ERR_RANGE :
				   CAL_ERR_IO, "%s: the leader's temporary directory: %s", w->tmp_dir,
				   cal_confine_strerror(e));
		goto fail;
	}
	w->state = W_BEGUN;
	return CAL_OK;
fail:
	return die(w, st);
}

enum cal_status cal_st_writer_part_close(struct cal_st_writer *w, struct cal_error *err)
{
	enum cal_status st = check_state(w, W_BEGUN, "part_close()", err);
	if (st < 0)
		return st;
	for (size_t k = 0; k < w->nsh; k++) {
		struct wshard *s = &w->sh[k];
		if (s->fd < 0)
			continue;
		int r = fsync(s->fd), e = errno;
		if (close(s->fd) < 0 && r == 0) {
			r = -1;
			e = errno;
		}
		s->fd = -1;
		if (r < 0)
			return die(w, io_error(w, e, "fsync", s->fname, err));
	}
	w->state = W_COMMITTED;
	return CAL_OK;
}

size_t cal_st_writer_put_indices(const struct cal_st_writer *w, uint64_t *idx)
{
	size_t n = 0;
	for (size_t i = 0; i < w->nt; i++)
		if (w->t[i].put) {
			if (idx)
				idx[n] = i;
			n++;
		}
	return n;
}

enum cal_status cal_st_writer_put_elsewhere(struct cal_st_writer *w, const uint64_t *idx,
					    size_t n, struct cal_error *err)
{
	enum cal_status st = check_state(w, W_BEGUN, "put_elsewhere()", err);
	if (st < 0)
		return st;
	for (size_t k = 0; k < n; k++) {
		if (idx[k] >= w->nt || w->t[idx[k]].put)
			return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: tensor #%llu %s",
						    w->final_dir, (unsigned long long)idx[k],
						    idx[k] >= w->nt ? "was never declared" :
						    "written twice"));
		w->t[idx[k]].put = 1;
		w->written += w->t[idx[k]].nbytes;
	}
	return CAL_OK;
}

/* Reads shard k back through the validator and checks it holds what was
 * declared. */
static enum cal_status verify_shard(struct cal_st_writer *w, size_t k, struct cal_error *err)
{
	struct wshard *s = &w->sh[k];
	char *path = cal_path_join(w->tmp_dir, s->fname);
	if (!path)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", w->final_dir);
	struct cal_st_file *f = NULL;
	struct cal_error verr = {0};
	enum cal_status st = cal_st_file_open(path, &f, &verr);
	if (st == CAL_OK && cal_st_file_count(f) != s->count)
		st = cal_error_set(&verr, CAL_ERR_FORMAT, "%zu tensors instead of %zu",
				   cal_st_file_count(f), s->count);
	for (size_t i = s->first; st == CAL_OK && i < s->first + s->count; i++) {
		const struct cal_st_tensor *t = cal_st_file_find(f, w->t[i].name);
		if (!t || t->nbytes != w->t[i].nbytes || t->dtype != w->t[i].dtype)
			st = cal_error_set(&verr, CAL_ERR_FORMAT, "tensor '%s' differs from its declaration",
					   w->t[i].name);
	}
	if (st < 0)
		st = cal_error_set(err, CAL_ERR_INTERNAL, "%s/%s: own output fails validation: %s",
				   w->final_dir, s->fname, cal_error_msg(&verr));
	cal_error_clear(&verr);
	cal_st_file_free(f);
	free(path);
	return st;
}

enum cal_status cal_st_writer_commit(struct cal_st_writer *w, struct cal_error *err)
{
	enum cal_status st = check_state(w, W_BEGUN, "commit()", err);
	if (st < 0)
		return st;
	if (w->part)
		return die(w, cal_error_set(err, CAL_ERR_INVALID, "%s: commit() of a part writer "
					    "(the leader publishes)", w->final_dir));
	size_t missing = 0;
	const char *first = NULL;
	for (size_t i = 0; i < w->nt; i++)
		if (!w->t[i].put && missing++ == 0)
			first = w->t[i].name;
	if (missing) {
		st = cal_error_set(err, CAL_ERR_INVALID,
				   "%s: %zu declared tensor(s) never written, the first is '%s'",
				   w->final_dir, missing, first);
		goto fail;
	}
	if (w->index)
		CAL_TRY(write_small(w, CAL_ST_INDEX_NAME, w->index, strlen(w->index), err));
	for (size_t k = 0; k < w->nsh; k++) {
		struct wshard *s = &w->sh[k];
		int r = fsync(s->fd);
		int e = errno;
		if (close(s->fd) < 0 && r == 0) {
			r = -1;
			e = errno;
		}
		s->fd = -1;
		if (r < 0) {
			st = io_error(w, e, "fsync", s->fname, err);
			goto fail;
		}
	}
	for (size_t k = 0; k < w->nsh; k++)
		CAL_TRY(verify_shard(w, k, err));
	if (fsync(w->tmp_fd) < 0) {
		st = cal_error_set(err, CAL_ERR_IO, "%s: fsync failed: %s", w->tmp_dir, strerror(errno));
		goto fail;
	}
	const struct cal_st_publish *pub = w->opts.publish;
	if (pub && pub->before)
		CAL_TRY(pub->before(pub->ctx, w->tmp_dir, w->final_dir, err));
	if (renameat2(w->parent_fd, w->tmp_name, w->parent_fd, w->base, RENAME_NOREPLACE) < 0) {
		int e = errno;
		if (e == EINVAL || e == ENOSYS) { /* file system without NOREPLACE */
			struct stat sb;
			if (fstatat(w->parent_fd, w->base, &sb, AT_SYMLINK_NOFOLLOW) == 0)
				e = EEXIST;
			else if (renameat(w->parent_fd, w->tmp_name, w->parent_fd, w->base) == 0)
				e = 0;
			else
				e = errno;
		}
		if (e) {
			st = cal_error_set(err, e == EEXIST || e == ENOTEMPTY ? CAL_ERR_EXISTS : CAL_ERR_IO,
					   "%s: cannot publish: %s", w->final_dir,
					   e == EEXIST ? "it appeared while writing; refusing to overwrite it"
						       : strerror(e));
			goto fail;
		}
	}
	w->state = W_COMMITTED;
	w->published = 1;
	if (fsync(w->parent_fd) < 0)
		return cal_error_set(err, CAL_ERR_IO, "%s: published, but fsync of %s failed: %s",
				     w->final_dir, w->parent, strerror(errno));
	if (pub && pub->after)
		pub->after(pub->ctx, w->final_dir);
	return CAL_OK;
fail:
	return die(w, st);
}

void cal_st_writer_free(struct cal_st_writer *w)
{
	if (!w)
		return;
	remove_tmp(w);
	for (size_t i = 0; i < w->nt; i++)
		free(w->t[i].name);
	for (size_t k = 0; k < w->nsh; k++) {
		free(w->sh[k].fname);
		free(w->sh[k].header);
	}
	free(w->sh);
	free(w->t);
	cal_name_index_free(&w->names);
	free(w->index);
	if (w->tmp_fd >= 0)
		close(w->tmp_fd);
	if (w->parent_fd >= 0)
		close(w->parent_fd);
	free(w->tmp_dir);
	free(w->tmp_name);
	free(w->base);
	free(w->parent);
	free(w->final_dir);
	free(w);
}
