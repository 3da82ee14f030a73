/*
 * st_checkpoint.c — a whole checkpoint directory: model.safetensors.index.json
 * plus its shards, or a single safetensors file.
 *
 * The index and the shards must agree exactly: every weight_map entry names
 * a plain file in the same directory and a tensor that file holds; every
 * tensor of every shard is listed, under that shard; no tensor is in two
 * shards.  Each shard is validated in full by cal_st_file_open().
 */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/hash.h"
#include "common/util.h"

struct cal_checkpoint {
	char *dir;
	size_t nfiles;
	struct cal_st_file **files;
	char **file_names;         /* plain names, strcmp order (index mode) */
	size_t nnames;
	size_t count;
	const struct cal_st_tensor **tensors; /* strcmp order */
	uint64_t disk_bytes;
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_tensor_name(const void *a, const void *b)
{
	const struct cal_st_tensor *const *x = a, *const *y = b;
	return strcmp((*x)->name, (*y)->name);
}

/* A shard name must be a plain file name in the checkpoint directory. */
static int shard_name_ok(const char *s)
{
	return s[0] != '\0' && !strchr(s, '/') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

static enum cal_status add_file(struct cal_checkpoint *ck, const char *dir, const char *name,
				struct cal_error *err)
{
	char *path = cal_path_join(dir, name);
	if (!path)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", dir);
	struct cal_st_file *f;
	enum cal_status st = cal_st_file_open(path, &f, err);
	free(path);
	if (st < 0)
		return st;
	ck->files[ck->nfiles++] = f;
	ck->disk_bytes += cal_st_file_size(f);
	return CAL_OK;
}

/* Sorted tensor list over all files; duplicates were excluded by the caller. */
static enum cal_status collect_tensors(struct cal_checkpoint *ck, struct cal_error *err)
{
	size_t total = 0;
	for (size_t i = 0; i < ck->nfiles; i++)
		total += cal_st_file_count(ck->files[i]);
	ck->tensors = calloc(total ? total : 1, sizeof(*ck->tensors));
	if (!ck->tensors)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", ck->dir);
	for (size_t i = 0; i < ck->nfiles; i++)
		for (size_t j = 0; j < cal_st_file_count(ck->files[i]); j++)
			ck->tensors[ck->count++] = cal_st_file_tensor(ck->files[i], j);
	qsort(ck->tensors, ck->count, sizeof(*ck->tensors), cmp_tensor_name);
	return CAL_OK;
}

static enum cal_status open_index(struct cal_checkpoint *ck, const char *ipath,
				  struct cal_error *err)
{
	enum cal_status st;
	char *text = NULL;
	size_t tlen;
	json_t *root = NULL;
	const char **names = NULL;
	const char *iname = CAL_ST_INDEX_NAME;

	CAL_TRY(cal_read_file(ipath, CAL_ST_MAX_INDEX, &text, &tlen, err));
	ck->disk_bytes += tlen;
	json_error_t jerr;
	root = json_loadb(text, tlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", ipath,
				   jerr.text, jerr.line);
		goto fail;
	}
	json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
	if (!json_is_object(wm)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: %s", ipath,
				   json_is_object(root) ? "no 'weight_map' object" : "not a JSON object");
		goto fail;
	}
	size_t n = json_object_size(wm);
	names = calloc(n ? n : 1, sizeof(*names));
	if (!names)
		goto nomem;
	size_t k = 0;
	const char *key;
	json_t *val;
	json_object_foreach(wm, key, val) {
		if (!json_is_string(val)) {
			st = cal_error_set(err, CAL_ERR_FORMAT, "%s: weight_map['%s'] is not a string",
					   ipath, key);
			goto fail;
		}
		const char *s = json_string_value(val);
		if (!shard_name_ok(s)) {
			st = cal_error_set(err, CAL_ERR_FORMAT,
					   "%s: tensor '%s': shard name '%.200s' is not a plain file name in the checkpoint directory",
					   ipath, key, s);
			goto fail;
		}
		names[k++] = s;
	}
	qsort(names, n, sizeof(*names), cmp_str);
	size_t nshards = 0;
	for (size_t i = 0; i < n; i++)
		if (i == 0 || strcmp(names[i], names[i - 1]) != 0)
			names[nshards++] = names[i];

	ck->files = calloc(nshards ? nshards : 1, sizeof(*ck->files));
	ck->file_names = calloc(nshards ? nshards : 1, sizeof(*ck->file_names));
	if (!ck->files || !ck->file_names)
		goto nomem;
	for (size_t i = 0; i < nshards; i++) {
		if (!(ck->file_names[i] = strdup(names[i])))
			goto nomem;
		ck->nnames++;
		st = add_file(ck, ck->dir, names[i], err);
		if (st == CAL_ERR_NOTFOUND) {
			cal_error_clear(err);
			st = cal_error_set(err, CAL_ERR_NOTFOUND,
					   "%s: weight_map names shard '%s', which does not exist in %s",
					   ipath, names[i], ck->dir);
		}
		if (st < 0)
			goto fail;
	}

	/* Every index entry points to a tensor its shard holds. */
	json_object_foreach(wm, key, val) {
		const char *s = json_string_value(val);
		char **hit = bsearch(&s, ck->file_names, nshards, sizeof(char *), cmp_str);
		if (!hit || !cal_st_file_find(ck->files[hit - ck->file_names], key)) {
			st = cal_error_set(err, CAL_ERR_FORMAT,
					   "%s: weight_map maps tensor '%s' to shard '%s', which has no such tensor",
					   ipath, key, s);
			goto fail;
		}
	}
	/* Every shard tensor is listed, under that shard. */
	for (size_t i = 0; i < nshards; i++) {
		for (size_t j = 0; j < cal_st_file_count(ck->files[i]); j++) {
			const struct cal_st_tensor *t = cal_st_file_tensor(ck->files[i], j);
			json_t *e = json_object_get(wm, t->name);
			if (!e) {
				st = cal_error_set(err, CAL_ERR_FORMAT,
						   "%s: tensor '%s' of shard '%s' is not listed in %s",
						   ipath, t->name, ck->file_names[i], iname);
				goto fail;
			}
			if (strcmp(json_string_value(e), ck->file_names[i]) != 0) {
				st = cal_error_set(err, CAL_ERR_FORMAT,
						   "%s: tensor '%s' is in two shards, '%s' and '%s'",
						   ipath, t->name, json_string_value(e),
						   ck->file_names[i]);
				goto fail;
			}
		}
	}
	st = collect_tensors(ck, err);
	goto out;
nomem:
	st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", ipath);
fail:
out:
	free(names);
	json_decref(root);
	free(text);
	return st;
}

/* The single *.safetensors file of dir (no index, no model.safetensors). */
static enum cal_status find_single(const char *dir, char **ret, struct cal_error *err)
{
	*ret = NULL;
	DIR *d = opendir(dir);
	if (!d)
		return cal_error_set(err, errno == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_IO,
				     "%s: cannot open directory: %s", dir, strerror(errno));
	size_t found = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (de->d_name[0] == '.' || n <= 12 || strcmp(de->d_name + n - 12, ".safetensors") != 0)
			continue;
		if (found++ == 0 && !(*ret = strdup(de->d_name))) {
			closedir(d);
			return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", dir);
		}
	}
	closedir(d);
	if (found == 1)
		return CAL_OK;
	free(*ret);
	*ret = NULL;
	if (found == 0)
		return cal_error_set(err, CAL_ERR_NOTFOUND,
				     "%s: no %s, model.safetensors or other *.safetensors file", dir,
				     CAL_ST_INDEX_NAME);
	return cal_error_set(err, CAL_ERR_FORMAT,
			     "%s: %zu *.safetensors files but no %s to say how they fit together",
			     dir, found, CAL_ST_INDEX_NAME);
}

enum cal_status cal_checkpoint_open(const char *dir, struct cal_checkpoint **ret,
				    struct cal_error *err)
{
	enum cal_status st;
	char *ipath = NULL, *single = NULL;
	struct cal_checkpoint *ck = calloc(1, sizeof(*ck));
	*ret = NULL;
	if (!ck || !(ck->dir = strdup(dir)) || !(ipath = cal_path_join(dir, CAL_ST_INDEX_NAME))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", dir);
		goto fail;
	}
	struct stat sb;
	if (stat(ipath, &sb) == 0) {
		CAL_TRY(open_index(ck, ipath, err));
	} else if (errno != ENOENT) {
		st = cal_error_set(err, CAL_ERR_IO, "%s: %s", ipath, strerror(errno));
		goto fail;
	} else {
		char *mpath = cal_path_join(dir, "model.safetensors");
		int have = mpath && stat(mpath, &sb) == 0;
		free(mpath);
		if (have) {
			single = strdup("model.safetensors");
			if (!single) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", dir);
				goto fail;
			}
		} else {
			CAL_TRY(find_single(dir, &single, err));
		}
		ck->files = calloc(1, sizeof(*ck->files));
		if (!ck->files) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", dir);
			goto fail;
		}
		CAL_TRY(add_file(ck, dir, single, err));
		CAL_TRY(collect_tensors(ck, err));
	}
	free(ipath);
	free(single);
	*ret = ck;
	return CAL_OK;
fail:
	free(ipath);
	free(single);
	cal_checkpoint_free(ck);
	return st;
}

size_t cal_checkpoint_count(const struct cal_checkpoint *ck)
{
	return ck->count;
}

const struct cal_st_tensor *cal_checkpoint_tensor(const struct cal_checkpoint *ck, size_t i)
{
	return i < ck->count ? ck->tensors[i] : NULL;
}

const struct cal_st_tensor *cal_checkpoint_find(const struct cal_checkpoint *ck,
						const char *name)
{
	struct cal_st_tensor key = {.name = name};
	const struct cal_st_tensor *kp = &key;
	const struct cal_st_tensor **hit =
		bsearch(&kp, ck->tensors, ck->count, sizeof(*ck->tensors), cmp_tensor_name);
	return hit ? *hit : NULL;
}

uint64_t cal_checkpoint_disk_bytes(const struct cal_checkpoint *ck)
{
	return ck->disk_bytes;
}

size_t cal_checkpoint_file_count(const struct cal_checkpoint *ck)
{
	return ck->nfiles;
}

const char *cal_checkpoint_dir(const struct cal_checkpoint *ck)
{
	return ck->dir;
}

void cal_checkpoint_free(struct cal_checkpoint *ck)
{
	if (!ck)
		return;
	for (size_t i = 0; i < ck->nfiles; i++)
		cal_st_file_free(ck->files[i]);
	for (size_t i = 0; i < ck->nnames; i++)
		free(ck->file_names[i]);
	free(ck->file_names);
	free(ck->files);
	free(ck->tensors);
	free(ck->dir);
	free(ck);
}

/* ---- fingerprint (docs/eval.md) ---------------------------------------------- */


enum cal_status cal_checkpoint_fingerprint(const char *model_dir, const struct cal_checkpoint *ck,
				       char out[17], struct cal_error *err)
{
	char *path = cal_path_join(model_dir, "config.json"), *text = NULL;
	size_t len = 0;
	uint64_t h = 14695981039346656037ull;
	enum cal_status st;
	if (!path)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	st = cal_read_file(path, 64u << 20, &text, &len, err);
	free(path);
	if (st < 0)
		return st;
	h = cal_fnv1a(h, text, len);
	free(text);
	for (size_t i = 0; i < cal_checkpoint_count(ck); i++) {
		const struct cal_st_tensor *t = cal_checkpoint_tensor(ck, i);
		int32_t dt = (int32_t)t->dtype;
		h = cal_fnv1a(h, t->name, strlen(t->name) + 1);
		h = cal_fnv1a(h, &dt, sizeof(dt));
		h = cal_fnv1a(h, t->shape, (size_t)t->ndim * sizeof(t->shape[0]));
		uint64_t k = t->nbytes < 64 ? t->nbytes : 64;
		h = cal_fnv1a(h, t->data, k);
		h = cal_fnv1a(h, (const char *)t->data + (t->nbytes - k) / 2, k);
		h = cal_fnv1a(h, (const char *)t->data + t->nbytes - k, k);
	}
	snprintf(out, 17, "%016llx", (unsigned long long)h);
	return CAL_OK;
}
