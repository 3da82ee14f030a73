/*
 * ytree.h — a small, safe YAML reader for recipes (internal to engine/recipe).
 *
 * Parses YAML text with libyaml's event API into a tree of nodes, resolving
 * plain scalars the way PyYAML's SafeLoader does (null, bool, int, float,
 * string; YAML 1.1 spellings), so that a file means to calibd what it means
 * to modelopt.  Every node remembers its file, line and column (1-based).
 *
 * Refused, with file:line:column: anchors and aliases (no billion laughs),
 * explicit tags other than the standard str/int/float/bool/null ones,
 * nesting deeper than CAL_YTREE_MAX_DEPTH, more than CAL_YTREE_MAX_NODES
 * nodes, more than two documents, duplicate mapping keys, non-scalar keys.
 * Input longer than CAL_YTREE_MAX_BYTES is refused before parsing.
 *
 * Ownership: every node is owned by its parent; cal_ynode_free() frees a
 * whole subtree.  `file` strings are NOT owned by nodes: they point into a
 * string that the caller keeps alive as long as the tree (the recipe loader
 * keeps one per loaded file).
 */
#ifndef CAL_YTREE_H
#define CAL_YTREE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define CAL_YTREE_MAX_BYTES (1u << 20)
#define CAL_YTREE_MAX_DEPTH 64
#define CAL_YTREE_MAX_NODES 200000

enum cal_ykind {
	CAL_Y_NULL,
	CAL_Y_BOOL,
	CAL_Y_INT,
	CAL_Y_FLOAT,
	CAL_Y_STR,
	CAL_Y_SEQ,
	CAL_Y_MAP,
};

struct cal_ynode {
	enum cal_ykind kind;
	const char *file; /* not owned (see banner) */
	int line, col;    /* 1-based */
	char *str;        /* scalars: the text as written; NULL for collections */
	int64_t i;        /* CAL_Y_INT; CAL_Y_BOOL: 0/1 */
	double f;         /* CAL_Y_FLOAT */
	int exmy;         /* CAL_Y_SEQ made from an "ExMy" string */
	size_t n;         /* SEQ: items; MAP: pairs */
	struct cal_ynode **items; /* SEQ: n items; MAP: 2n nodes, key then value */
	size_t cap;       /* allocated slots of items */
};

/* A parsed file: one or two documents. */
struct cal_ydocs {
	size_t n;                  /* 0, 1 or 2 */
	struct cal_ynode *doc[2];  /* owned */
	char *schema;              /* "# modelopt-schema: X" of the leading comment
				    * block, or NULL; owned */
};

/*
 * Parses `len` bytes of `text`.  `file` names the input in messages and is
 * stored (not copied) in every node.  `nodes_left`, when not NULL, is a
 * shared node budget decremented per node (CAL_ERR_RANGE when exhausted).
 * Errors: CAL_ERR_FORMAT (YAML syntax, refused constructs; message
 * "file:line:col: ..."), CAL_ERR_RANGE (size, depth, node limits),
 * CAL_ERR_NOMEM.  On success *ret is filled; free with cal_ydocs_clear().
 */
enum cal_status cal_ytree_parse(const char *file, const char *text, size_t len,
				size_t *nodes_left, struct cal_ydocs *ret,
				struct cal_error *err);
void cal_ydocs_clear(struct cal_ydocs *d);

void cal_ynode_free(struct cal_ynode *n);
/* Deep copy (file pointers shared); NULL on allocation failure or when the
 * budget runs out (then *nodes_left == 0). */
struct cal_ynode *cal_ynode_copy(const struct cal_ynode *n, size_t *nodes_left);
/* A new empty node of `kind` located at `at` (may be NULL). */
struct cal_ynode *cal_ynode_new(enum cal_ykind kind, const struct cal_ynode *at);
/* Appends to a SEQ (one item) or a MAP (key and value); 0 or -1 (no memory).
 * Takes ownership of the appended nodes only on success. */
int cal_ynode_append(struct cal_ynode *coll, struct cal_ynode *a, struct cal_ynode *b);

/* Value of key `key` (a string key) in MAP `m`, or NULL. */
const struct cal_ynode *cal_ymap_get(const struct cal_ynode *m, const char *key);
/* Index of the pair with string key `key` in MAP `m`, or -1. */
long cal_ymap_find(const struct cal_ynode *m, const char *key);

/* An index of the keys of a mapping being built, so that looking every key
 * up as it is added stays linear overall (small mappings are scanned).
 * Zero-initialise; cal_ykeys_free() when done. */
struct cal_ykeys {
	size_t *ht;          /* open addressing: pair index + 1, 0 empty */
	size_t cap, indexed; /* slots (a power of two); pairs indexed so far */
};
/* Index of the pair of MAP `m` whose key equals `key` (same kind and
 * value), -1 when none, -2 when out of memory.  Pairs appended to `m` since
 * the last call are indexed first; `m`'s keys may only be appended to
 * between calls. */
long cal_ykeys_find(struct cal_ykeys *ix, const struct cal_ynode *m, const struct cal_ynode *key);
/* Key comparisons cal_ykeys_find() made on this thread (for tests: the cost
 * of a lookup is counted, not timed). */
extern _Thread_local unsigned long cal_ykeys_compares;
void cal_ykeys_free(struct cal_ykeys *ix);

/* "null", "bool", "int", "float", "string", "list", "mapping". */
const char *cal_ykind_name(enum cal_ykind k);

/* Appends a canonical one-line rendering of `n` to a growable buffer
 * (*buf, *len, *cap; *buf may start NULL).  Strings are single-quoted,
 * ExMy tuples print as (x, y), mappings as {k: v, ...} in file order.
 * Returns 0 or -1 (no memory). */
int cal_ynode_render(const struct cal_ynode *n, char **buf, size_t *len, size_t *cap);
/* Appends a string to the same kind of growable buffer; 0 or -1. */
int cal_ybuf_puts(char **buf, size_t *len, size_t *cap, const char *s);

#endif
