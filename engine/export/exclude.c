/*
 * exclude.c — modelopt's prefix-wildcard summary of the unquantized modules
 * (export.h cal_exclude_summarize; docs/export.md "exclude_modules"). A small
 * string hash set stands in for Python's set.
 */
#include "export.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct strset {
	char **slot;
	size_t n_slot, n;
};

static uint64_t sh(const char *s, size_t len)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

/* Looks up the string s[0..len) followed by `star` (0 or 1 '*'). */
static char **ss_find(const struct strset *S, const char *s, size_t len, int star)
{
	uint64_t h = sh(s, len);
	if (star)
		h = (h ^ (unsigned char)'*') * 1099511628211ull;
	size_t mask = S->n_slot - 1, i = (size_t)h & mask;
	for (;;) {
		char **sl = &S->slot[i];
		if (!*sl)
			return sl;
		size_t l = strlen(*sl);
		if (l == len + (size_t)star && !memcmp(*sl, s, len) && (!star || (*sl)[len] == '*'))
			return sl;
		i = (i + 1) & mask;
	}
}

static int ss_has(const struct strset *S, const char *s, size_t len, int star)
{
	return *ss_find(S, s, len, star) != NULL;
}

static int ss_grow(struct strset *S)
{
	size_t nn = S->n_slot ? S->n_slot * 2 : 256;
	char **old = S->slot;
	size_t on = S->n_slot;
	S->slot = calloc(nn, sizeof(char *));
	if (!S->slot) {
		S->slot = old;
		return -1;
	}
	S->n_slot = nn;
	for (size_t i = 0; i < on; i++) {
		if (old[i]) {
			size_t l = strlen(old[i]);
			int star = l && old[i][l - 1] == '*';
			/* re-find by exact content: hash as (prefix, star) */
			*ss_find(S, old[i], l - (size_t)star, star) = old[i];
		}
	}
	free(old);
	return 0;
}

/* Adds s[0..len) + ('*' if star); 0 ok, -1 no memory. */
static int ss_add(struct strset *S, const char *s, size_t len, int star)
{
	if ((S->n + 1) * 2 > S->n_slot && ss_grow(S) < 0)
		return -1;
	char **sl = ss_find(S, s, len, star);
	if (*sl)
		return 0;
	char *c = malloc(len + 2);
	if (!c)
		return -1;
	memcpy(c, s, len);
	c[len] = star ? '*' : 0;
	c[len + 1] = 0;
	*sl = c;
	S->n++;
	return 0;
}

static void ss_free(struct strset *S)
{
	for (size_t i = 0; i < S->n_slot; i++)
		free(S->slot[i]);
	free(S->slot);
}

/* A string stored in the set is hashed as (its text without a final '*',
 * star flag).  "p.*" is therefore (prefix "p.", star 1). */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Moves the set's strings into a new array sorted in strcmp order (the
 * set is left empty); 0 ok, -1 no memory (the set unchanged). */
static int ss_take_sorted(struct strset *S, char ***ret, size_t *ret_n)
{
	char **out = calloc(S->n ? S->n : 1, sizeof(char *));
	size_t n = 0;
	if (!out)
		return -1;
	for (size_t i = 0; i < S->n_slot; i++) {
		if (S->slot[i]) {
			out[n++] = S->slot[i];
			S->slot[i] = NULL;
		}
	}
	S->n = 0;
	qsort(out, n, sizeof(char *), cmp_str);
	*ret = out;
	*ret_n = n;
	return 0;
}

void cal_exclude_free(char **list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

enum cal_status cal_exclude_summarize(const char *const *unquantized, size_t n_unq,
				      const char *const *quantized, size_t n_q, char ***ret,
				      size_t *ret_n, struct cal_error *err)
{
	struct strset neg = {0}, res = {0};
	if (ss_grow(&neg) < 0 || ss_grow(&res) < 0)
		goto nomem;
	/* negative set: every quantized name and all its prefixes + '*' */
	for (size_t q = 0; q < n_q; q++) {
		const char *L = quantized[q];
		size_t len = strlen(L);
		if (ss_add(&neg, L, len, 0) < 0)
			goto nomem;
		for (size_t i = 0; i <= len; i++)
			if (ss_add(&neg, L, i, 1) < 0)
				goto nomem;
	}
	for (size_t u = 0; u < n_unq; u++) {
		const char *U = unquantized[u];
		size_t len = strlen(U);
		/* candidate: kind 1 = [U[:i]*], kind 2 = [U[:i], U[:i].*], kind 3 = [U] */
		int take_kind = 0;
		size_t take_i = 0;
		for (size_t i = 0; i <= len; i++) {
			int kinds[2];
			int nk = 0;
			if (i == len) {
				kinds[nk++] = 3;
			} else if (U[i] == '.') {
				kinds[nk++] = 1;
				kinds[nk++] = 2;
			}
			int done = 0;
			for (int k = 0; k < nk; k++) {
				int negative, covered;
				if (kinds[k] == 1) {
					negative = ss_has(&neg, U, i, 1);
					covered = ss_has(&res, U, i, 1);
				} else if (kinds[k] == 2) {
					/* elements: U[:i] and U[:i+1] + '*' (U[i] is '.') */
					negative = ss_has(&neg, U, i, 0) || ss_has(&neg, U, i + 1, 1);
					covered = ss_has(&res, U, i, 0) && ss_has(&res, U, i + 1, 1);
				} else {
					negative = ss_has(&neg, U, len, 0);
					covered = ss_has(&res, U, len, 0);
				}
				if (negative)
					continue;
				if (!covered) {
					take_kind = kinds[k];
					take_i = i;
				}
				done = 1;
				break;
			}
			if (done)
				break;
		}
		int r = 0;
		if (take_kind == 1)
			r = ss_add(&res, U, take_i, 1);
		else if (take_kind == 2) /* the pair is emitted as "p.*" only */
			r = ss_add(&res, U, take_i + 1, 1);
		else if (take_kind == 3)
			r = ss_add(&res, U, len, 0);
		if (r < 0)
			goto nomem;
	}
	if (ss_take_sorted(&res, ret, ret_n) < 0)
		goto nomem;
	ss_free(&neg);
	ss_free(&res);
	return CAL_OK;
nomem:
	ss_free(&neg);
	ss_free(&res);
	return cal_error_set(err, CAL_ERR_NOMEM, "exclude_modules: out of memory");
}

/* ---- MTP layers (docs/export.md "MTP layers") ------------------------------ */

/* Index of the inlined MTP layer `name` lies in ("model.layers.<i>." with
 * num_layers <= i < num_layers + n_nextn), or -1. */
static int64_t inlined_mtp_layer(const char *name, int64_t num_layers, int64_t n_nextn)
{
	static const char px[] = "model.layers.";
	if (n_nextn <= 0 || strncmp(name, px, sizeof(px) - 1))
		return -1;
	const char *p = name + sizeof(px) - 1;
	if (*p < '0' || *p > '9')
		return -1;
	int64_t v = 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (int64_t)1 << 40)
			return -1;
		v = v * 10 + (*p - '0');
	}
	if (*p != '.' || v < num_layers || v >= num_layers + n_nextn)
		return -1;
	return v;
}

int cal_is_mtp_tensor(const char *name, int64_t num_layers, int64_t n_nextn)
{
	return strstr(name, "mtp") != NULL || inlined_mtp_layer(name, num_layers, n_nextn) >= 0;
}

enum cal_status cal_mtp_prefixes(const char *const *names, size_t n, int64_t num_layers,
				 int64_t n_nextn, char ***ret, size_t *ret_n,
				 struct cal_error *err)
{
	struct strset S = {0};
	int any = 0;
	char buf[64];
	if (ss_grow(&S) < 0)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		const char *k = names[i];
		if (!cal_is_mtp_tensor(k, num_layers, n_nextn))
			continue;
		any = 1;
		if (inlined_mtp_layer(k, num_layers, n_nextn) >= 0)
			continue;
		/* a separately stored MTP tensor: its first name component (not
		 * "model", which would cover the backbone), and the first
		 * "<...>.layers.<digits>" prefix */
		size_t c0 = strcspn(k, ".");
		if (!(c0 == 5 && !strncmp(k, "model", 5)) && ss_add(&S, k, c0, 0) < 0)
			goto nomem;
		for (const char *p = k; (p = strstr(p, "layers.")) != NULL; p++) {
			if (p != k && p[-1] != '.')
				continue;
			const char *d = p + 7;
			size_t nd = strspn(d, "0123456789");
			if (nd == 0 || (d[nd] != '.' && d[nd] != 0))
				continue;
			if (ss_add(&S, k, (size_t)(d + nd - k), 0) < 0)
				goto nomem;
			break;
		}
	}
	/* the inlined layers count as soon as any MTP tensor exists */
	for (int64_t L = num_layers; any && L < num_layers + n_nextn; L++) {
		int l = snprintf(buf, sizeof(buf), "model.layers.%lld", (long long)L);
		if (ss_add(&S, buf, (size_t)l, 0) < 0)
			goto nomem;
	}
	if (ss_take_sorted(&S, ret, ret_n) < 0)
		goto nomem;
	ss_free(&S);
	return CAL_OK;
nomem:
	ss_free(&S);
	return cal_error_set(err, CAL_ERR_NOMEM, "exclude_modules: out of memory");
}
