/*
 * safetensors.c — validating reader for one safetensors file.
 *
 * The rules are those of the reference validator (docs/reliability.md
 * "safetensors validation"), plus the README rules the reference leaves out:
 * the header starts with '{', no duplicate keys, every tensor entry has
 * exactly dtype/shape/data_offsets, names non-empty and at most
 * CAL_ST_MAX_NAME bytes.  Shape, dtype and offsets are one claim that must
 * agree; every arithmetic step is checked; empty tensors get the same checks
 * as any other.  Nothing in the header is trusted before it has been validated,
 * and no tensor is handed out before the whole header is.
 *
 * The checkpoint level (index + shards) lives in st_checkpoint.c.
 */
#include "safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/util.h"
#include "st_internal.h"

struct meta_kv {
	const char *key;
	const char *val;
};

struct cal_st_file {
	char *name;               /* used in messages and as tensor->file */
	const uint8_t *base;      /* whole file image */
	size_t len;
	void *map;                /* mmap'ed region or NULL (caller's buffer) */
	size_t map_len;
	uint64_t header_len;      /* N */
	size_t count;
	struct cal_st_tensor *tensors;             /* data-offset order */
	const struct cal_st_tensor **by_name;      /* strcmp order */
	size_t nmeta;
	struct meta_kv *meta;     /* sorted by key */
	char *arena;              /* names, metadata keys and values */
};

/* A tensor entry while it is validated. */
struct entry {
	struct cal_st_tensor t;
	uint64_t begin, end;
};

/* Writes "[d0, d1, ...]" into buf (sized for CAL_ST_MAX_DIMS int64 dims). */
#define SHAPE_BUF (CAL_ST_MAX_DIMS * 22 + 4)
static const char *shape_str(const int64_t *shape, int ndim, char buf[SHAPE_BUF])
{
	size_t o = 0;
	buf[o++] = '[';
	for (int i = 0; i < ndim; i++)
		o += (size_t)snprintf(buf + o, SHAPE_BUF - o, "%s%" PRId64, i ? ", " : "", shape[i]);
	snprintf(buf + o, SHAPE_BUF - o, "]");
	return buf;
}

const char *cal_st_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
	char tmp[SHAPE_BUF];
	snprintf(buf, len, "%s", shape_str(shape, ndim, tmp));
	return buf;
}

static int cmp_entry_offset(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->t.name, y->t.name);
}

static int cmp_tensor_name(const void *a, const void *b)
{
	const struct cal_st_tensor *const *x = a, *const *y = b;
	return strcmp((*x)->name, (*y)->name);
}

static int cmp_meta_key(const void *a, const void *b)
{
	const struct meta_kv *x = a, *y = b;
	return strcmp(x->key, y->key);
}

/* Copies s into the arena at *pos and returns the copy. */
static const char *arena_put(char *arena, size_t *pos, const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = arena + *pos;
	memcpy(d, s, n);
	*pos += n;
	return d;
}

/* Reads one non-negative JSON integer. */
static int get_u64(const json_t *v, uint64_t *ret)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*ret = (uint64_t)json_integer_value(v);
	return 0;
}

#define FERR(...) cal_error_set(err, CAL_ERR_FORMAT, __VA_ARGS__)

/* Validates one tensor entry (its own claims; placement is checked later). */
static enum cal_status parse_entry(const char *fname, const char *tname, json_t *v,
				   uint64_t data_len, struct entry *e,
				   struct cal_error *err)
{
	if (!json_is_object(v))
		return FERR("%s: tensor '%s': entry is not a JSON object", fname, tname);
	const char *key;
	json_t *val;
	json_object_foreach(v, key, val) {
		if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
		    strcmp(key, "data_offsets") != 0)
			return FERR("%s: tensor '%s': unexpected key '%.64s' (only dtype, shape, data_offsets)",
				    fname, tname, key);
	}
	json_t *jd = json_object_get(v, "dtype");
	json_t *js = json_object_get(v, "shape");
	json_t *jo = json_object_get(v, "data_offsets");
	if (!jd || !js || !jo)
		return FERR("%s: tensor '%s': missing '%s'", fname, tname,
			    !jd ? "dtype" : !js ? "shape" : "data_offsets");
	if (!json_is_string(jd))
		return FERR("%s: tensor '%s': dtype is not a string", fname, tname);
	if (cal_dtype_from_name(json_string_value(jd), &e->t.dtype) < 0)
		return FERR("%s: tensor '%s': unknown dtype '%.32s'", fname, tname,
			    json_string_value(jd));
	if (!json_is_array(js))
		return FERR("%s: tensor '%s': shape is not an array", fname, tname);
	size_t nd = json_array_size(js);
	if (nd > CAL_ST_MAX_DIMS)
		return FERR("%s: tensor '%s': shape has %zu dimensions (at most %d)", fname, tname,
			    nd, CAL_ST_MAX_DIMS);
	e->t.ndim = (int)nd;
	for (size_t i = 0; i < nd; i++) {
		json_t *d = json_array_get(js, i);
		if (!json_is_integer(d))
			return FERR("%s: tensor '%s': shape[%zu] is not an integer", fname, tname, i);
		if (json_integer_value(d) < 0)
			return FERR("%s: tensor '%s': shape[%zu] is negative (%" JSON_INTEGER_FORMAT ")",
				    fname, tname, i, json_integer_value(d));
		e->t.shape[i] = (int64_t)json_integer_value(d);
	}
	if (!json_is_array(jo) || json_array_size(jo) != 2 ||
	    get_u64(json_array_get(jo, 0), &e->begin) < 0 ||
	    get_u64(json_array_get(jo, 1), &e->end) < 0)
		return FERR("%s: tensor '%s': data_offsets is not an array of two non-negative integers",
			    fname, tname);

	char sb[SHAPE_BUF];
	uint64_t numel = 1, nbytes, nbits;
	for (int i = 0; i < e->t.ndim; i++)
		if (cal_mul_u64(numel, (uint64_t)e->t.shape[i], &numel) < 0)
			return FERR("%s: tensor '%s': shape %s: element count overflows 64 bits",
				    fname, tname, shape_str(e->t.shape, e->t.ndim, sb));
	size_t esz = cal_dtype_size(e->t.dtype);
	if (cal_mul_u64(numel, esz, &nbytes) < 0 || cal_mul_u64(nbytes, 8, &nbits) < 0)
		return FERR("%s: tensor '%s': shape %s x %s: byte size overflows 64 bits", fname,
			    tname, shape_str(e->t.shape, e->t.ndim, sb), cal_dtype_name(e->t.dtype));
	e->t.numel = numel;
	e->t.nbytes = nbytes;
	if (e->end < e->begin)
		return FERR("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before begin",
			    fname, tname, e->begin, e->end);
	if (e->end > data_len)
		return FERR("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
			    "] run past the end of the %" PRIu64 "-byte data section",
			    fname, tname, e->begin, e->end, data_len);
	if (e->end - e->begin != nbytes)
		return FERR("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
			    " bytes but shape %s x %s needs %" PRIu64,
			    fname, tname, e->begin, e->end, e->end - e->begin,
			    shape_str(e->t.shape, e->t.ndim, sb), cal_dtype_name(e->t.dtype), nbytes);
	return CAL_OK;
}

/* Checks a tensor name: non-empty, bounded (UTF-8 validity is jansson's). */
static enum cal_status check_name(const char *fname, const char *tname, struct cal_error *err)
{
	size_t n = strlen(tname);
	if (n == 0)
		return FERR("%s: empty tensor name", fname);
	if (n > CAL_ST_MAX_NAME)
		return FERR("%s: tensor '%.40s...': name of %zu bytes exceeds the %d-byte limit",
			    fname, tname, n, CAL_ST_MAX_NAME);
	return CAL_OK;
}

enum cal_status cal_st_file_parse(const char *name, const void *buf, size_t len,
				  struct cal_st_file **ret, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	json_t *root = NULL;
	struct entry *ents = NULL;
	struct cal_st_file *f = NULL;
	const uint8_t *p = buf;
	*ret = NULL;

	if (len < 8)
		return FERR("%s: file is %zu bytes, too short for the 8-byte header length", name, len);
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | p[i];
	if (n > CAL_ST_MAX_HEADER)
		return FERR("%s: header length %" PRIu64 " exceeds the limit of %u bytes", name, n,
			    CAL_ST_MAX_HEADER);
	uint64_t hend;
	if (cal_add_u64(n, 8, &hend) < 0 || hend > len)
		return FERR("%s: header length %" PRIu64 " runs past the end of the %zu-byte file",
			    name, n, len);
	if (n == 0 || p[8] != '{')
		return FERR("%s: header does not start with '{'", name);
	uint64_t data_len = len - hend;

	json_error_t jerr;
	root = json_loadb((const char *)p + 8, n, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		st = FERR("%s: header is not valid JSON: %s (at byte %d)", name, jerr.text,
			  jerr.position);
		goto fail;
	}
	if (!json_is_object(root)) {
		st = FERR("%s: header is not a JSON object", name);
		goto fail;
	}

	/* First pass: validate the metadata and size the arena. */
	size_t arena_len = 0, nents = 0, nmeta = 0;
	const char *key;
	json_t *val;
	json_object_foreach(root, key, val) {
		if (strcmp(key, "__metadata__") == 0) {
			if (json_is_null(val))
				continue; /* the reference reads null as "no metadata" */
			if (!json_is_object(val)) {
				st = FERR("%s: __metadata__ is not an object", name);
				goto fail;
			}
			const char *mk;
			json_t *mv;
			json_object_foreach(val, mk, mv) {
				if (!json_is_string(mv)) {
					st = FERR("%s: __metadata__ value of key '%.64s' is not a string",
						  name, mk);
					goto fail;
				}
				arena_len += strlen(mk) + strlen(json_string_value(mv)) + 2;
				nmeta++;
			}
			continue;
		}
		CAL_TRY(check_name(name, key, err));
		arena_len += strlen(key) + 1;
		nents++;
	}

	f = calloc(1, sizeof(*f));
	ents = calloc(nents ? nents : 1, sizeof(*ents));
	if (f) {
		f->name = strdup(name);
		f->arena = malloc(arena_len ? arena_len : 1);
		f->tensors = calloc(nents ? nents : 1, sizeof(*f->tensors));
		f->by_name = calloc(nents ? nents : 1, sizeof(*f->by_name));
		f->meta = calloc(nmeta ? nmeta : 1, sizeof(*f->meta));
	}
	if (!f || !ents || !f->name || !f->arena || !f->tensors || !f->by_name || !f->meta) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory reading the header", name);
		goto fail;
	}
	f->base = p;
	f->len = len;
	f->header_len = n;

	/* Second pass: every tensor's own claims. */
	size_t pos = 0, ei = 0;
	json_object_foreach(root, key, val) {
		if (strcmp(key, "__metadata__") == 0) {
			if (json_is_null(val))
				continue;
			const char *mk;
			json_t *mv;
			json_object_foreach(val, mk, mv) {
				f->meta[f->nmeta].key = arena_put(f->arena, &pos, mk);
				f->meta[f->nmeta].val = arena_put(f->arena, &pos, json_string_value(mv));
				f->nmeta++;
			}
			continue;
		}
		struct entry *e = &ents[ei++];
		e->t.name = arena_put(f->arena, &pos, key);
		CAL_TRY(parse_entry(name, e->t.name, val, data_len, e, err));
	}
	json_decref(root);
	root = NULL;

	/* Placement: sorted by offsets, the tensors tile the data section. */
	qsort(ents, nents, sizeof(*ents), cmp_entry_offset);
	uint64_t prev = 0;
	for (size_t i = 0; i < nents; i++) {
		struct entry *e = &ents[i];
		if (e->begin < prev) {
			const struct entry *o = &ents[i - 1];
			st = FERR("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
				  "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
				  name, e->t.name, e->begin, e->end, o->t.name, o->begin, o->end);
			goto fail;
		}
		if (e->begin > prev) {
			st = FERR("%s: tensor '%s': hole of %" PRIu64 " bytes before data_offsets [%" PRIu64
				  ", %" PRIu64 "] (the data must be contiguous)",
				  name, e->t.name, e->begin - prev, e->begin, e->end);
			goto fail;
		}
		prev = e->end;
	}
	if (prev != data_len) {
		st = FERR("%s: %" PRIu64 " trailing bytes after the last tensor (data section is %" PRIu64
			  " bytes, tensors cover %" PRIu64 ")",
			  name, data_len - prev, data_len, prev);
		goto fail;
	}

	for (size_t i = 0; i < nents; i++) {
		f->tensors[i] = ents[i].t;
		f->tensors[i].data = p + hend + ents[i].begin;
		f->tensors[i].file = f->name;
		f->by_name[i] = &f->tensors[i];
	}
	f->count = nents;
	qsort(f->by_name, nents, sizeof(*f->by_name), cmp_tensor_name);
	qsort(f->meta, f->nmeta, sizeof(*f->meta), cmp_meta_key);
	*ret = f;
	f = NULL; /* st == CAL_OK: success shares the cleanup */
fail:
	json_decref(root);
	free(ents);
	cal_st_file_free(f);
	return st;
}

enum cal_status cal_st_file_open(const char *path, struct cal_st_file **ret,
				 struct cal_error *err)
{
	*ret = NULL;
	int fd;
	uint64_t size;
	enum cal_status st = cal_open_regular(path, "cannot open: ", &fd, &size, err);
	if (st < 0)
		return st;
	size_t len = (size_t)size;
	void *map = NULL;
	if (len > 0) {
		map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			int e = errno;
			close(fd);
			return cal_error_set(err, CAL_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
		}
	}
	close(fd);
	struct cal_st_file *f;
	st = cal_st_file_parse(path, map ? map : "", len, &f, err);
	if (st < 0) {
		if (map)
			munmap(map, len);
		return st;
	}
	f->map = map;
	f->map_len = len;
	*ret = f;
	return CAL_OK;
}

size_t cal_st_file_count(const struct cal_st_file *f)
{
	return f->count;
}

const struct cal_st_tensor *cal_st_file_tensor(const struct cal_st_file *f, size_t i)
{
	return i < f->count ? &f->tensors[i] : NULL;
}

const struct cal_st_tensor *cal_st_file_find(const struct cal_st_file *f, const char *name)
{
	struct cal_st_tensor key = {.name = name};
	const struct cal_st_tensor *kp = &key;
	const struct cal_st_tensor **hit =
		bsearch(&kp, f->by_name, f->count, sizeof(*f->by_name), cmp_tensor_name);
	return hit ? *hit : NULL;
}

const char *cal_st_file_metadata(const struct cal_st_file *f, const char *key)
{
	struct meta_kv k = {.key = key};
	const struct meta_kv *hit = bsearch(&k, f->meta, f->nmeta, sizeof(*f->meta), cmp_meta_key);
	return hit ? hit->val : NULL;
}

void cal_st_tensor_willneed(const struct cal_st_tensor *t)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	if (!t || !t->data || !t->nbytes || pg == 0 || pg == (uintptr_t)-1)
		return;
	uintptr_t a = (uintptr_t)t->data & ~(pg - 1), b = (uintptr_t)t->data + t->nbytes;
	(void)madvise((void *)a, b - a, MADV_WILLNEED);
}

uint64_t cal_st_file_size(const struct cal_st_file *f)
{
	return f->len;
}

uint64_t cal_st_file_header_len(const struct cal_st_file *f)
{
	return f->header_len;
}

void cal_st_file_free(struct cal_st_file *f)
{
	if (!f)
		return;
	if (f->map)
		munmap(f->map, f->map_len);
	CAL_FREE_ALL(f->name, f->tensors, f->by_name, f->meta, f->arena, f);
}
