/*
 * test_st.c — engine/st: the safetensors validator (a table of malformed
 * files, each breaking one rule and refused with its own message), sharded
 * checkpoints and their index, and the crash-safe writer (sharding, index,
 * existing target, simulated disk full, abandoned and incomplete writes).
 *
 * CAL_ST_WRITE_CORPUS=DIR makes the table test also write every file image
 * of the table into DIR (how tests/fuzz/corpus/fuzz_st_header was made).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/st/safetensors.h"
#include "engine/st/st_writer.h"
#include "testutil.h"

#define SEED 20240611u

/* ---- helpers ------------------------------------------------------------ */

static uint32_t rng_state;
static uint8_t rnd8(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return (uint8_t)rng_state;
}

/* File image: 8-byte length (n, or strlen(hdr) when n == 0), hdr, then
 * `data` pattern bytes. */
static uint8_t *image(const char *hdr, uint64_t n, size_t data, size_t *ret_len)
{
	size_t hl = strlen(hdr);
	if (!n)
		n = hl;
	size_t len = 8 + hl + data;
	uint8_t *b = malloc(len);
	cr_assert_not_null(b);
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(n >> (8 * i));
	memcpy(b + 8, hdr, hl);
	for (size_t i = 0; i < data; i++)
		b[8 + hl + i] = (uint8_t)(i * 7 + 1);
	*ret_len = len;
	return b;
}

static void expect_refused(const char *id, const void *buf, size_t len, const char *want)
{
	struct cal_st_file *f = (void *)1;
	struct cal_error err = {0};
	enum cal_status st = cal_st_file_parse("bad.safetensors", buf, len, &f, &err);
	cr_expect_eq(st, CAL_ERR_FORMAT, "%s: status %d (%s)", id, st, cal_error_msg(&err));
	cr_expect_null(f, "%s: no file on failure", id);
	cr_expect(err.msg && strstr(err.msg, want) && strstr(err.msg, "bad.safetensors"),
		  "%s: message '%s' should contain '%s' and the file name", id, cal_error_msg(&err),
		  want);
	cal_error_clear(&err);
}

/* ---- the validator: one broken rule per row ------------------------------ */

#define T(d, s, o) "\"" d "\",\"shape\":" s ",\"data_offsets\":" o
struct bad_case {
	const char *id;
	const char *hdr;
	size_t data;
	uint64_t n;       /* header length field; 0 = the real length */
	const char *want; /* substring of the message */
};

static const struct bad_case bad_cases[] = {
	{"len_past_end", "{}", 0, 1000, "header length 1000 runs past the end of the 10-byte file"},
	{"len_over_100MB", "{}", 0, 100000001, "header length 100000001 exceeds the limit of 100000000"},
	{"len_wraps", "{}", 0, UINT64_MAX - 3, "exceeds the limit"},
	{"not_brace", "[{}]", 0, 0, "header does not start with '{'"},
	{"space_first", " {}", 0, 0, "header does not start with '{'"},
	{"not_json", "{\"a\":", 0, 0, "header is not valid JSON"},
	{"trailing_garbage", "{}x", 0, 0, "header is not valid JSON"},
	{"bad_utf8_name", "{\"\xff\":{\"dtype\":" T("U8", "[1]", "[0,1]") "}}", 1, 0,
	 "header is not valid JSON"},
	{"nul_in_name", "{\"a\\u0000b\":{\"dtype\":" T("U8", "[1]", "[0,1]") "}}", 1, 0,
	 "header is not valid JSON"},
	{"duplicate_tensor", "{\"a\":{\"dtype\":" T("U8", "[1]", "[0,1]") "},\"a\":{\"dtype\":"
	 T("U8", "[1]", "[1,2]") "}}", 2, 0, "duplicate object key"},
	{"duplicate_meta_key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, 0, "duplicate object key"},
	{"duplicate_metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, "duplicate object key"},
	{"meta_not_object", "{\"__metadata__\":[\"a\"]}", 0, 0, "__metadata__ is not an object"},
	{"meta_value_int", "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0, 0,
	 "__metadata__ value of key 'n' is not a string"},
	{"meta_value_null", "{\"__metadata__\":{\"n\":null}}", 0, 0,
	 "__metadata__ value of key 'n' is not a string"},
	{"empty_name", "{\"\":{\"dtype\":" T("U8", "[1]", "[0,1]") "}}", 1, 0, "empty tensor name"},
	{"entry_not_object", "{\"a\":[1,2]}", 0, 0, "tensor 'a': entry is not a JSON object"},
	{"extra_key", "{\"a\":{\"dtype\":" T("U8", "[1]", "[0,1]") ",\"x\":1}}", 1, 0,
	 "tensor 'a': unexpected key 'x'"},
	{"missing_dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 0,
	 "tensor 'a': missing 'dtype'"},
	{"missing_shape", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, 0,
	 "tensor 'a': missing 'shape'"},
	{"missing_offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, 0,
	 "tensor 'a': missing 'data_offsets'"},
	{"dtype_not_string", "{\"a\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 0,
	 "tensor 'a': dtype is not a string"},
	{"unknown_dtype", "{\"a\":{\"dtype\":" T("Q7", "[1]", "[0,1]") "}}", 1, 0,
	 "tensor 'a': unknown dtype 'Q7'"},
	{"dtype_lowercase", "{\"a\":{\"dtype\":" T("bf16", "[1]", "[0,2]") "}}", 2, 0,
	 "tensor 'a': unknown dtype 'bf16'"},
	{"shape_not_array", "{\"a\":{\"dtype\":" T("U8", "1", "[0,1]") "}}", 1, 0,
	 "tensor 'a': shape is not an array"},
	{"shape_too_many_dims", "{\"a\":{\"dtype\":" T("U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") "}}", 1, 0,
	 "tensor 'a': shape has 9 dimensions"},
	{"shape_float", "{\"a\":{\"dtype\":" T("U8", "[1.0]", "[0,1]") "}}", 1, 0,
	 "tensor 'a': shape[0] is not an integer"},
	{"shape_negative", "{\"a\":{\"dtype\":" T("U8", "[2,-1]", "[0,2]") "}}", 2, 0,
	 "tensor 'a': shape[1] is negative (-1)"},
	{"shape_mismatch", "{\"a.weight\":{\"dtype\":" T("BF16", "[2,3]", "[0,10]") "}}", 10, 0,
	 "tensor 'a.weight': data_offsets [0, 10] hold 10 bytes but shape [2, 3] x BF16 needs 12"},
	{"shape_overflow", "{\"a\":{\"dtype\":" T("U8", "[4294967296,4294967296]", "[0,0]") "}}", 0, 0,
	 "tensor 'a': shape [4294967296, 4294967296]: element count overflows"},
	{"shape_wraps_to_zero", "{\"a\":{\"dtype\":" T("U8", "[4294967296,4294967296,0]", "[0,0]") "}}",
	 0, 0, "element count overflows"},
	{"bytes_overflow", "{\"a\":{\"dtype\":" T("F32", "[4611686018427387904]", "[0,0]") "}}", 0, 0,
	 "tensor 'a': shape [4611686018427387904] x F32: byte size overflows"},
	{"bits_overflow", "{\"a\":{\"dtype\":" T("BF16", "[4611686018427387904]", "[0,0]") "}}", 0, 0,
	 "byte size overflows"},
	{"offsets_not_pair", "{\"a\":{\"dtype\":" T("U8", "[1]", "[0,1,2]") "}}", 1, 0,
	 "tensor 'a': data_offsets is not an array of two non-negative integers"},
	{"offsets_negative", "{\"a\":{\"dtype\":" T("U8", "[1]", "[-1,0]") "}}", 1, 0,
	 "data_offsets is not an array of two non-negative integers"},
	{"offsets_string", "{\"a\":{\"dtype\":" T("U8", "[1]", "[\"0\",\"1\"]") "}}", 1, 0,
	 "data_offsets is not an array of two non-negative integers"},
	{"offsets_reversed", "{\"a\":{\"dtype\":" T("U8", "[0]", "[4,0]") "}}", 4, 0,
	 "tensor 'a': data_offsets [4, 0] end before begin"},
	{"offsets_out_of_range", "{\"a\":{\"dtype\":" T("U8", "[100]", "[0,100]") "}}", 12, 0,
	 "tensor 'a': data_offsets [0, 100] run past the end of the 12-byte data section"},
	{"offsets_huge", "{\"a\":{\"dtype\":" T("U8", "[1]", "[9223372036854775806,9223372036854775807]") "}}",
	 1, 0, "run past the end"},
	{"overlap", "{\"a\":{\"dtype\":" T("U8", "[4]", "[0,4]") "},\"b\":{\"dtype\":" T("U8", "[4]", "[2,6]") "}}",
	 6, 0, "tensor 'b': data_offsets [2, 6] overlap tensor 'a' [0, 4]"},
	{"alias", "{\"a\":{\"dtype\":" T("U8", "[4]", "[0,4]") "},\"b\":{\"dtype\":" T("U8", "[4]", "[0,4]") "}}",
	 4, 0, "overlap tensor"},
	{"hole", "{\"a\":{\"dtype\":" T("U8", "[4]", "[0,4]") "},\"b\":{\"dtype\":" T("U8", "[4]", "[6,10]") "}}",
	 10, 0, "tensor 'b': hole of 2 bytes before data_offsets [6, 10]"},
	{"hole_at_start", "{\"a\":{\"dtype\":" T("U8", "[4]", "[2,6]") "}}", 6, 0,
	 "tensor 'a': hole of 2 bytes before data_offsets [2, 6]"},
	{"trailing_bytes", "{\"a\":{\"dtype\":" T("U8", "[4]", "[0,4]") "}}", 6, 0,
	 "2 trailing bytes after the last tensor"},
	{"trailing_no_tensors", "{}", 3, 0, "3 trailing bytes after the last tensor"},
	{"trailing_meta_only", "{\"__metadata__\":{\"format\":\"pt\"}}", 1, 0, "1 trailing bytes"},
};

/* Valid images, written as fuzz seeds next to the broken ones. */
static const struct {
	const char *id, *hdr;
	size_t data;
} good_seeds[] = {
	{"good_empty", "{}      ", 0},
	{"good_meta_null", "{\"__metadata__\":null}", 0},
	{"good_mixed", "{\"__metadata__\":{\"format\":\"pt\"},"
	 "\"z\":{\"dtype\":" T("I64", "[2]", "[4,20]") "},"
	 "\"e\":{\"dtype\":" T("BF16", "[3,0,2]", "[4,4]") "},"
	 "\"s\":{\"dtype\":" T("F32", "[]", "[0,4]") "},"
	 "\"w\":{\"dtype\":" T("F8_E4M3", "[2,2,2]", "[20,28]") "}}    ", 28},
};

Test(validator, refuses_each_broken_rule_with_its_message)
{
	const char *corpus = getenv("CAL_ST_WRITE_CORPUS");
	for (size_t i = 0; i < CAL_ARRAY_LEN(good_seeds); i++) {
		size_t len;
		uint8_t *b = image(good_seeds[i].hdr, 0, good_seeds[i].data, &len);
		struct cal_st_file *f;
		struct cal_error err = {0};
		cr_expect_eq(cal_st_file_parse("seed", b, len, &f, &err), CAL_OK, "%s: %s",
			     good_seeds[i].id, cal_error_msg(&err));
		cal_error_clear(&err);
		cal_st_file_free(f);
		if (corpus) {
			char *p = cal_test_path(corpus, good_seeds[i].id);
			cal_test_write_file(p, b, len);
			free(p);
		}
		free(b);
	}
	for (size_t i = 0; i < CAL_ARRAY_LEN(bad_cases); i++) {
		const struct bad_case *c = &bad_cases[i];
		size_t len;
		uint8_t *b = image(c->hdr, c->n, c->data, &len);
		expect_refused(c->id, b, len, c->want);
		if (corpus) {
			char *p = cal_test_path(corpus, c->id);
			cal_test_write_file(p, b, len);
			free(p);
		}
		free(b);
	}
}

Test(validator, refuses_short_files_and_long_names)
{
	expect_refused("empty", "", 0, "file is 0 bytes, too short");
	expect_refused("short", "\x02\0\0\0", 4, "file is 4 bytes, too short");
	expect_refused("len_zero", "\0\0\0\0\0\0\0\0", 8, "header does not start with '{'");

	char name[CAL_ST_MAX_NAME + 2];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	char *hdr;
	cr_assert(asprintf(&hdr, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
			   name) > 0);
	size_t len;
	uint8_t *b = image(hdr, 0, 1, &len);
	expect_refused("long_name", b, len, "name of 1025 bytes exceeds the 1024-byte limit");
	free(b);
	name[CAL_ST_MAX_NAME] = '\0'; /* exactly at the limit: accepted */
	free(hdr);
	cr_assert(asprintf(&hdr, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
			   name) > 0);
	b = image(hdr, 0, 1, &len);
	struct cal_st_file *f;
	cr_assert_eq(cal_st_file_parse("ok", b, len, &f, NULL), CAL_OK);
	cal_st_file_free(f);
	free(b);
	free(hdr);
}

static struct cal_st_file *parse_ok(const char *hdr, size_t data, uint8_t **ret_buf)
{
	size_t len;
	uint8_t *b = image(hdr, 0, data, &len);
	struct cal_st_file *f = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_st_file_parse("good.safetensors", b, len, &f, &err), CAL_OK, "%s: %s", hdr,
		     cal_error_msg(&err));
	*ret_buf = b;
	return f;
}

Test(validator, accepts_edge_cases)
{
	uint8_t *b;
	struct cal_st_file *f = parse_ok("{}", 0, &b);
	cr_expect_eq(cal_st_file_count(f), 0);
	cal_st_file_free(f);
	free(b);

	f = parse_ok("{\"__metadata__\":null}   ", 0, &b);
	cr_expect_null(cal_st_file_metadata(f, "format"));
	cal_st_file_free(f);
	free(b);

	/* Header order need not follow data order; zero-rank and empty tensors,
	 * several empty tensors at one offset. */
	f = parse_ok("{\"__metadata__\":{\"format\":\"pt\",\"x\":\"\"},"
		     "\"z\":{\"dtype\":" T("I64", "[2]", "[4,20]") "},"
		     "\"e2\":{\"dtype\":" T("BF16", "[3,0,2]", "[4,4]") "},"
		     "\"e1\":{\"dtype\":" T("F32", "[0]", "[4,4]") "},"
		     "\"s\":{\"dtype\":" T("F32", "[]", "[0,4]") "},"
		     "\"end\":{\"dtype\":" T("U8", "[0]", "[20,20]") "}} ",
		     20, &b);
	cr_assert_eq(cal_st_file_count(f), 5);
	cr_expect_str_eq(cal_st_file_metadata(f, "format"), "pt");
	cr_expect_str_eq(cal_st_file_metadata(f, "x"), "");
	cr_expect_null(cal_st_file_metadata(f, "y"));
	cr_expect_str_eq(cal_st_file_tensor(f, 0)->name, "s");
	cr_expect_str_eq(cal_st_file_tensor(f, 3)->name, "z");
	const struct cal_st_tensor *s = cal_st_file_find(f, "s");
	cr_assert_not_null(s);
	cr_expect_eq(s->ndim, 0);
	cr_expect_eq(s->numel, 1);
	cr_expect_eq(s->nbytes, 4);
	cr_expect_eq(s->dtype, CAL_DTYPE_F32);
	const struct cal_st_tensor *z = cal_st_file_find(f, "z");
	cr_expect_eq(z->shape[0], 2);
	cr_expect_eq(z->nbytes, 16);
	cr_expect_eq((const uint8_t *)z->data - (const uint8_t *)s->data, 4);
	const struct cal_st_tensor *e2 = cal_st_file_find(f, "e2");
	cr_expect_eq(e2->ndim, 3);
	cr_expect_eq(e2->numel, 0);
	cr_expect_eq(e2->nbytes, 0);
	cr_expect_str_eq(e2->file, "good.safetensors");
	cr_expect_null(cal_st_file_find(f, "nope"));
	cr_expect_null(cal_st_file_tensor(f, 5));
	cal_st_file_free(f);
	free(b);
	cal_st_file_free(NULL);
}

Test(validator, knows_every_dtype)
{
	for (int i = 0; i < CAL_DTYPE_COUNT; i++) {
		char *hdr;
		size_t sz = cal_dtype_size((enum cal_dtype)i);
		cr_assert(asprintf(&hdr, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
				   cal_dtype_name((enum cal_dtype)i), 3 * sz) > 0);
		uint8_t *b;
		struct cal_st_file *f = parse_ok(hdr, 3 * sz, &b);
		cr_expect_eq((int)cal_st_file_tensor(f, 0)->dtype, i);
		cal_st_file_free(f);
		free(b);
		free(hdr);
	}
}

Test(validator, open_reports_missing_file)
{
	struct cal_st_file *f;
	struct cal_error err = {0};
	cr_expect_eq(cal_st_file_open("/nonexistent/x.safetensors", &f, &err), CAL_ERR_NOTFOUND);
	cr_expect(strstr(cal_error_msg(&err), "/nonexistent/x.safetensors"));
	cal_error_clear(&err);
}

/* ---- writer ------------------------------------------------------------- */

struct spec {
	const char *name;
	enum cal_dtype dtype;
	int ndim;
	int64_t shape[3];
};

struct written {
	size_t n;
	uint8_t *data[16];
	uint64_t len[16];
};

static uint64_t spec_bytes(const struct spec *s)
{
	uint64_t n = cal_dtype_size(s->dtype);
	for (int i = 0; i < s->ndim; i++)
		n *= (uint64_t)s->shape[i];
	return n;
}

/* Declares, begins, puts (in reverse order) and commits specs into dir. */
static void write_ckpt(const char *dir, const struct spec *specs, size_t n, uint64_t max_shard,
		       struct written *out)
{
	struct cal_st_writer *w;
	struct cal_error err = {0};
	struct cal_st_writer_opts o = {.max_shard_bytes = max_shard};
	cr_assert_eq(cal_st_writer_open(dir, &o, &w, &err), CAL_OK, "%s", cal_error_msg(&err));
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(cal_st_writer_declare(w, specs[i].name, specs[i].dtype, specs[i].ndim,
						   specs[i].shape, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_st_writer_begin(w, &err), CAL_OK, "%s", cal_error_msg(&err));
	out->n = n;
	uint64_t total = 0;
	for (size_t i = n; i-- > 0;) {
		out->len[i] = spec_bytes(&specs[i]);
		out->data[i] = malloc(out->len[i] + 1);
		for (uint64_t j = 0; j < out->len[i]; j++)
			out->data[i][j] = rnd8();
		cr_assert_eq(cal_st_writer_put(w, specs[i].name, out->data[i], out->len[i], &err), CAL_OK,
			     "%s", cal_error_msg(&err));
		total += out->len[i];
	}
	cr_expect_eq(cal_st_writer_bytes_written(w), total);
	const char cfg[] = "{\"model_type\":\"test\"}\n";
	cr_assert_eq(cal_st_writer_add_file(w, "config.json", cfg, sizeof(cfg) - 1, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_commit(w, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_st_writer_free(w);
}

static void check_ckpt(const char *dir, const struct spec *specs, const struct written *wr)
{
	struct cal_checkpoint *ck;
	struct cal_error err = {0};
	cr_assert_eq(cal_checkpoint_open(dir, &ck, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_checkpoint_count(ck), wr->n);
	for (size_t i = 0; i < wr->n; i++) {
		const struct cal_st_tensor *t = cal_checkpoint_find(ck, specs[i].name);
		cr_assert_not_null(t, "%s", specs[i].name);
		cr_expect_eq(t->dtype, specs[i].dtype);
		cr_expect_eq(t->ndim, specs[i].ndim);
		for (int d = 0; d < t->ndim; d++)
			cr_expect_eq(t->shape[d], specs[i].shape[d]);
		cr_assert_eq(t->nbytes, wr->len[i]);
		cr_expect_eq(memcmp(t->data, wr->data[i], wr->len[i]), 0, "bytes of %s", t->name);
	}
	for (size_t i = 1; i < cal_checkpoint_count(ck); i++)
		cr_expect_lt(strcmp(cal_checkpoint_tensor(ck, i - 1)->name,
				    cal_checkpoint_tensor(ck, i)->name), 0);
	cal_checkpoint_free(ck);
}

static void free_written(struct written *wr)
{
	for (size_t i = 0; i < wr->n; i++)
		free(wr->data[i]);
}

static void init_rng(void)
{
	rng_state = SEED;
	cr_log_info("random seed %u", SEED);
}

/* ---- a temporary tree per writer and checkpoint test ------------------------ */

/* st_base: a fresh temporary directory; st_out: st_base/out, not created. */
static char *st_base, *st_out;

static void tree_init(void)
{
	st_base = cal_test_tmpdir("st");
	st_out = cal_test_path(st_base, "out");
}

static void tree_fini(void)
{
	free(st_out);
	cal_test_rm_rf(st_base);
	free(st_base);
}

TestSuite(writer, .init = tree_init, .fini = tree_fini);
TestSuite(checkpoint, .init = tree_init, .fini = tree_fini);

Test(writer, single_shard_roundtrip)
{
	init_rng();
	static const struct spec specs[] = {
		{"model.layers.0.mlp.down_proj.weight", CAL_DTYPE_BF16, 2, {2, 3}},
		{"scalar", CAL_DTYPE_F32, 0, {0}},
		{"empty", CAL_DTYPE_U8, 2, {0, 5}},
		{"idx", CAL_DTYPE_I64, 1, {4}},
		{"fp8", CAL_DTYPE_F8_E4M3, 3, {3, 1, 7}},
	};
	struct written wr;
	write_ckpt(st_out, specs, CAL_ARRAY_LEN(specs), 0, &wr);
	cr_expect_eq((int)cal_test_count_entries(st_base), 1, "only the published directory is left");
	cr_expect_eq((int)cal_test_count_entries(st_out), 2); /* model.safetensors + config.json */
	check_ckpt(st_out, specs, &wr);

	char *path = cal_test_path(st_out, "model.safetensors");
	struct cal_st_file *f;
	cr_assert_eq(cal_st_file_open(path, &f, NULL), CAL_OK);
	cr_expect_str_eq(cal_st_file_metadata(f, "format"), "pt");
	cr_expect_eq((8 + cal_st_file_header_len(f)) % 8, 0, "data starts 8-aligned");
	/* declared order is data order */
	for (size_t i = 0; i < CAL_ARRAY_LEN(specs); i++)
		cr_expect_str_eq(cal_st_file_tensor(f, i)->name, specs[i].name);
	cal_st_file_free(f);

	char *text;
	size_t len;
	cr_assert_eq(cal_read_file(path, 1 << 20, &text, &len, NULL), CAL_OK);
	cr_expect_eq(strncmp(text + 8, "{\"__metadata__\":{\"format\":\"pt\"},", 32), 0, "%.60s", text + 8);
	cr_expect(strstr(text + 8, "\"model.layers.0.mlp.down_proj.weight\":{\"dtype\":\"BF16\","
			 "\"shape\":[2,3],\"data_offsets\":[0,12]}"));
	free(text);
	free(path);
	free_written(&wr);
}

Test(writer, multi_shard_cut_and_index)
{
	init_rng();
	/* limit 100: [a] [b] [c: 250, alone] [d e] */
	static const struct spec specs[] = {
		{"z.a", CAL_DTYPE_U8, 1, {60}},
		{"y.b", CAL_DTYPE_BF16, 2, {5, 6}},
		{"x.c", CAL_DTYPE_F32, 2, {25, 2}},
		{"w.d", CAL_DTYPE_U8, 1, {10}},
		{"v.e", CAL_DTYPE_F16, 1, {15}},
	};
	uint64_t c_bytes = 25 * 2 * 4;
	cr_assert_eq(c_bytes, 200);
	struct written wr;
	write_ckpt(st_out, specs, CAL_ARRAY_LEN(specs), 100, &wr);
	check_ckpt(st_out, specs, &wr);
	cr_expect_eq((int)cal_test_count_entries(st_out), 6); /* 4 shards, index, config.json */

	char *ipath = cal_test_path(st_out, CAL_ST_INDEX_NAME);
	json_error_t jerr;
	json_t *idx = json_load_file(ipath, 0, &jerr);
	cr_assert_not_null(idx, "%s", jerr.text);
	cr_expect_eq(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")),
		     60 + 60 + 200 + 10 + 30);
	json_t *wm = json_object_get(idx, "weight_map");
	cr_assert_eq(json_object_size(wm), 5);
	const char *want[][2] = {
		{"z.a", "model-00001-of-00004.safetensors"}, {"y.b", "model-00002-of-00004.safetensors"},
		{"x.c", "model-00003-of-00004.safetensors"}, {"w.d", "model-00004-of-00004.safetensors"},
		{"v.e", "model-00004-of-00004.safetensors"},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(want); i++)
		cr_expect_str_eq(json_string_value(json_object_get(wm, want[i][0])), want[i][1]);
	json_decref(idx);
	/* keys are written sorted */
	char *text;
	cr_assert_eq(cal_read_file(ipath, 1 << 20, &text, NULL, NULL), CAL_OK);
	cr_expect_lt(strstr(text, "\"metadata\""), strstr(text, "\"weight_map\""));
	cr_expect_lt(strstr(text, "\"v.e\""), strstr(text, "\"z.a\""));
	free(text);

	struct cal_checkpoint *ck;
	cr_assert_eq(cal_checkpoint_open(st_out, &ck, NULL), CAL_OK);
	cr_expect_eq(cal_checkpoint_file_count(ck), 4);
	cr_expect_str_eq(cal_checkpoint_dir(ck), st_out);
	cr_expect_gt(cal_checkpoint_disk_bytes(ck), 360);
	cr_expect_null(cal_checkpoint_find(ck, "nope"));
	cr_expect(strstr(cal_checkpoint_find(ck, "v.e")->file, "model-00004-of-00004.safetensors"));
	cal_checkpoint_free(ck);
	free(ipath);
	free_written(&wr);
}

Test(writer, checkpoint_without_tensors)
{
	struct written wr;
	write_ckpt(st_out, NULL, 0, 0, &wr);
	struct cal_checkpoint *ck;
	cr_assert_eq(cal_checkpoint_open(st_out, &ck, NULL), CAL_OK);
	cr_expect_eq(cal_checkpoint_count(ck), 0);
	cr_expect_eq(cal_checkpoint_file_count(ck), 1);
	cal_checkpoint_free(ck);
}

Test(writer, existing_target_is_never_overwritten)
{
	cr_assert_eq(mkdir(st_out, 0755), 0);
	struct cal_st_writer *w = (void *)1;
	struct cal_error err = {0};
	cr_expect_eq(cal_st_writer_open(st_out, NULL, &w, &err), CAL_ERR_EXISTS);
	cr_expect_null(w);
	cr_expect(strstr(cal_error_msg(&err), "already exists"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_assert_eq(rmdir(st_out), 0);

	/* the target appears while writing: commit refuses, the intruder stays */
	int64_t shape[] = {4};
	cr_assert_eq(cal_st_writer_open(st_out, NULL, &w, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_declare(w, "a", CAL_DTYPE_U8, 1, shape, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_begin(w, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_put(w, "a", "abcd", 4, &err), CAL_OK);
	cr_assert_eq(mkdir(st_out, 0755), 0);
	cr_expect_eq(cal_st_writer_commit(w, &err), CAL_ERR_EXISTS, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_st_writer_free(w);
	cr_expect_eq((int)cal_test_count_entries(st_base), 1);
	cr_expect_eq((int)cal_test_count_entries(st_out), 0);
}

Test(writer, simulated_disk_full_leaves_nothing)
{
	setenv("CALIBD_TEST_FREE_BYTES", "100", 1);
	struct cal_st_writer *w;
	struct cal_error err = {0};
	int64_t shape[] = {64, 2};
	cr_assert_eq(cal_st_writer_open(st_out, NULL, &w, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_declare(w, "big", CAL_DTYPE_F32, 2, shape, &err), CAL_OK);
	cr_expect_eq(cal_st_writer_begin(w, &err), CAL_ERR_NOSPACE);
	cr_expect(strstr(cal_error_msg(&err), st_base), "%s", cal_error_msg(&err));
	cr_expect(strstr(cal_error_msg(&err), "bytes needed, 100 available"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_eq((int)cal_test_count_entries(st_base), 0, "no temporary directory left behind");
	cr_expect_eq(cal_st_writer_put(w, "big", "", 0, &err), CAL_ERR_INVALID, "writer is dead");
	cal_error_clear(&err);
	cal_st_writer_free(w);
	unsetenv("CALIBD_TEST_FREE_BYTES");
}

Test(writer, free_without_commit_leaves_nothing)
{
	struct cal_st_writer *w;
	int64_t shape[] = {4};
	cr_assert_eq(cal_st_writer_open(st_out, NULL, &w, NULL), CAL_OK);
	cr_expect_eq((int)cal_test_count_entries(st_base), 1);
	cr_expect_eq(strncmp(strrchr(cal_st_writer_tmp_dir(w), '/'), "/.out.tmp-", 10), 0);
	cr_assert_eq(cal_st_writer_declare(w, "a", CAL_DTYPE_U8, 1, shape, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_declare(w, "b", CAL_DTYPE_U8, 1, shape, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_begin(w, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_put(w, "a", "abcd", 4, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_add_file(w, "config.json", "{}", 2, NULL), CAL_OK);
	cal_st_writer_free(w);
	cr_expect_eq((int)cal_test_count_entries(st_base), 0);

	/* before begin, too */
	cr_assert_eq(cal_st_writer_open(st_out, NULL, &w, NULL), CAL_OK);
	cal_st_writer_free(w);
	cr_expect_eq((int)cal_test_count_entries(st_base), 0);
}

Test(writer, missing_put_fails_commit)
{
	struct cal_st_writer *w;
	struct cal_error err = {0};
	int64_t shape[] = {4};
	cr_assert_eq(cal_st_writer_open(st_out, NULL, &w, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_declare(w, "a", CAL_DTYPE_U8, 1, shape, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_declare(w, "b", CAL_DTYPE_U8, 1, shape, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_begin(w, NULL), CAL_OK);
	cr_assert_eq(cal_st_writer_put(w, "b", "abcd", 4, NULL), CAL_OK);
	cr_expect_eq(cal_st_writer_commit(w, &err), CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "never written, the first is 'a'"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_eq((int)cal_test_count_entries(st_base), 0);
	cal_st_writer_free(w);
}

/* Each misuse kills the writer with a message naming the tensor. */
Test(writer, misuse_is_refused)
{
	int64_t shape[] = {4}, neg[] = {-1};
	struct {
		const char *id;
		int step; /* 0: declare dup, 1: put undeclared, 2: put wrong size, 3: put twice,
			   * 4: negative dim, 5: add_file with '/', 6: bad name,
			   * 7: add_file with a shard name */
		const char *want;
	} cases[] = {
		{"dup", 0, "tensor 'a' declared twice"},
		{"undeclared", 1, "tensor 'zz' was never declared"},
		{"size", 2, "tensor 'a': got 3 bytes but shape [4] x U8 is 4"},
		{"twice", 3, "tensor 'a' written twice"},
		{"negative", 4, "dimension 0 (-1) is negative"},
		{"slash", 5, "'x/y' is not a plain file name"},
		{"meta_name", 6, "not __metadata__"},
		{"reserved", 7, "'model.safetensors' is a name the writer keeps"},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(cases); i++) {
		struct cal_st_writer *w;
		struct cal_error err = {0};
		enum cal_status st = CAL_OK;
		cr_assert_eq(cal_st_writer_open(st_out, NULL, &w, NULL), CAL_OK);
		cr_assert_eq(cal_st_writer_declare(w, "a", CAL_DTYPE_U8, 1, shape, NULL), CAL_OK);
		switch (cases[i].step) {
		case 0: st = cal_st_writer_declare(w, "a", CAL_DTYPE_U8, 1, shape, &err); break;
		case 4: st = cal_st_writer_declare(w, "n", CAL_DTYPE_U8, 1, neg, &err); break;
		case 5: st = cal_st_writer_add_file(w, "x/y", "", 0, &err); break;
		case 6: st = cal_st_writer_declare(w, "__metadata__", CAL_DTYPE_U8, 1, shape, &err); break;
		case 7: st = cal_st_writer_add_file(w, "model.safetensors", "", 0, &err); break;
		default:
			cr_assert_eq(cal_st_writer_begin(w, NULL), CAL_OK);
			if (cases[i].step == 1)
				st = cal_st_writer_put(w, "zz", "abcd", 4, &err);
			else if (cases[i].step == 2)
				st = cal_st_writer_put(w, "a", "abc", 3, &err);
			else if ((st = cal_st_writer_put(w, "a", "abcd", 4, &err)) == CAL_OK)
				st = cal_st_writer_put(w, "a", "abcd", 4, &err);
		}
		cr_expect_eq(st, CAL_ERR_INVALID, "%s", cases[i].id);
		cr_expect(strstr(cal_error_msg(&err), cases[i].want), "%s: '%s'", cases[i].id,
			  cal_error_msg(&err));
		cr_expect_eq(cal_st_writer_commit(w, NULL), CAL_ERR_INVALID, "%s: dead", cases[i].id);
		cr_expect_eq((int)cal_test_count_entries(st_base), 0, "%s", cases[i].id);
		cal_error_clear(&err);
		cal_st_writer_free(w);
	}
}

/* ---- checkpoints: index and shards must agree ----------------------------- */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

/* Writes a 2-shard checkpoint (a, b | c) and returns its directory. */
static char *two_shards(const char *base, const char *name)
{
	char *dir = cal_test_path(base, name);
	static const struct spec specs[] = {
		{"a", CAL_DTYPE_U8, 1, {4}},
		{"b", CAL_DTYPE_U8, 1, {4}},
		{"c", CAL_DTYPE_U8, 1, {8}},
	};
	struct written wr;
	write_ckpt(dir, specs, 3, 8, &wr);
	free_written(&wr);
	return dir;
}

static void expect_ckpt_refused(const char *dir, enum cal_status want_st, const char *want)
{
	struct cal_checkpoint *ck = (void *)1;
	struct cal_error err = {0};
	cr_expect_eq(cal_checkpoint_open(dir, &ck, &err), want_st, "%s: %s", want, cal_error_msg(&err));
	cr_expect_null(ck);
	cr_expect(strstr(cal_error_msg(&err), want), "'%s' should contain '%s'", cal_error_msg(&err),
		  want);
	cal_error_clear(&err);
}

static void index_with(const char *dir, const char *weight_map)
{
	char *text;
	cr_assert(asprintf(&text, "{\"metadata\":{\"total_size\":16},\"weight_map\":%s}", weight_map) > 0);
	cal_test_write_text(dir, CAL_ST_INDEX_NAME, text);
	free(text);
}

Test(checkpoint, index_and_shards_must_agree)
{
	char *dir = two_shards(st_base, "ok");
	struct cal_checkpoint *ck;
	cr_assert_eq(cal_checkpoint_open(dir, &ck, NULL), CAL_OK);
	cr_expect_eq(cal_checkpoint_count(ck), 3);
	cr_expect_eq(cal_checkpoint_file_count(ck), 2);
	cal_checkpoint_free(ck);

	static const struct {
		const char *id, *wm;
		enum cal_status st;
		const char *want;
	} cases[] = {
		{"missing_tensor", "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\",\"ghost\":\"" SHARD2 "\"}",
		 CAL_ERR_FORMAT, "weight_map maps tensor 'ghost' to shard '" SHARD2 "', which has no such tensor"},
		{"missing_shard", "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"model-00009-of-00009.safetensors\"}",
		 CAL_ERR_NOTFOUND, "weight_map names shard 'model-00009-of-00009.safetensors', which does not exist"},
		{"slash", "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"sub/" SHARD2 "\"}",
		 CAL_ERR_FORMAT, "tensor 'c': shard name 'sub/" SHARD2 "' is not a plain file name"},
		{"dotdot", "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"..\"}",
		 CAL_ERR_FORMAT, "shard name '..' is not a plain file name"},
		{"empty_shard_name", "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"\"}",
		 CAL_ERR_FORMAT, "shard name '' is not a plain file name"},
		{"unlisted", "{\"a\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}",
		 CAL_ERR_FORMAT, "tensor 'b' of shard '" SHARD1 "' is not listed in model.safetensors.index.json"},
		{"wrong_shard", "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD2 "\",\"c\":\"" SHARD2 "\"}",
		 CAL_ERR_FORMAT, "weight_map maps tensor 'b' to shard '" SHARD2 "', which has no such tensor"},
		{"not_string", "{\"a\":1}", CAL_ERR_FORMAT, "weight_map['a'] is not a string"},
		{"duplicate", "{\"a\":\"" SHARD1 "\",\"a\":\"" SHARD1 "\"}", CAL_ERR_FORMAT, "duplicate object key"},
		{"no_weight_map", "[]", CAL_ERR_FORMAT, "no 'weight_map' object"},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(cases); i++) {
		index_with(dir, cases[i].wm);
		expect_ckpt_refused(dir, cases[i].st, cases[i].want);
	}
	cal_test_write_text(dir, CAL_ST_INDEX_NAME, "{\"weight_map\":");
	expect_ckpt_refused(dir, CAL_ERR_FORMAT, "model.safetensors.index.json: not valid JSON");
	cal_test_write_text(dir, CAL_ST_INDEX_NAME, "[1]");
	expect_ckpt_refused(dir, CAL_ERR_FORMAT, "model.safetensors.index.json: not a JSON object");

	/* a shard that breaks a header rule is named with its rule */
	index_with(dir, "{\"a\":\"" SHARD1 "\",\"b\":\"" SHARD1 "\",\"c\":\"" SHARD2 "\"}");
	char *p2 = cal_test_path(dir, SHARD2);
	FILE *f = fopen(p2, "ab");
	fputc('x', f);
	fclose(f);
	expect_ckpt_refused(dir, CAL_ERR_FORMAT, SHARD2 ": 1 trailing bytes after the last tensor");
	free(p2);
	free(dir);
}

Test(checkpoint, tensor_in_two_shards)
{
	size_t len;
	uint8_t *b1 = image("{\"a\":{\"dtype\":" T("U8", "[4]", "[0,4]") "}}", 0, 4, &len);
	char *p = cal_test_path(st_base, "s1.safetensors");
	cal_test_write_file(p, b1, len);
	free(p);
	free(b1);
	uint8_t *b2 = image("{\"a\":{\"dtype\":" T("U8", "[4]", "[0,4]") "},\"b\":{\"dtype\":"
			    T("U8", "[2]", "[4,6]") "}}", 0, 6, &len);
	p = cal_test_path(st_base, "s2.safetensors");
	cal_test_write_file(p, b2, len);
	free(p);
	free(b2);
	index_with(st_base, "{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}");
	expect_ckpt_refused(st_base, CAL_ERR_FORMAT, "tensor 'a' is in two shards, 's1.safetensors' and 's2.safetensors'");

	/* without an index, two files are ambiguous; with one left it opens */
	p = cal_test_path(st_base, CAL_ST_INDEX_NAME);
	unlink(p);
	free(p);
	expect_ckpt_refused(st_base, CAL_ERR_FORMAT, "2 *.safetensors files but no model.safetensors.index.json");
	p = cal_test_path(st_base, "s1.safetensors");
	unlink(p);
	free(p);
	struct cal_checkpoint *ck;
	cr_assert_eq(cal_checkpoint_open(st_base, &ck, NULL), CAL_OK);
	cr_expect_eq(cal_checkpoint_count(ck), 2);
	cr_expect_str_eq(cal_checkpoint_tensor(ck, 0)->name, "a");
	cal_checkpoint_free(ck);
	p = cal_test_path(st_base, "s2.safetensors");
	unlink(p);
	free(p);
	expect_ckpt_refused(st_base, CAL_ERR_NOTFOUND, "no model.safetensors.index.json, model.safetensors");
}

/* One output, several writers (expert parallelism): a part writer attaches
 * to the leader's temporary directory and writes its tensors at their
 * offsets; the leader marks them written and publishes.  A part with
 * another layout or a foreign directory name is refused without harming
 * the leader's output; a part never commits. */
Test(writer, part_writers_write_into_the_leaders_output)
{
	struct cal_st_writer *w = NULL, *p = NULL, *other = NULL, *stray = NULL;
	struct cal_error err = {0};
	struct cal_st_writer_opts o = {.max_shard_bytes = 8}; /* a, b | c */
	int64_t shape[] = {4};
	cr_assert_eq(cal_st_writer_open(st_out, &o, &w, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_open_part(st_out, &o, &p, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_open_part(st_out, &o, &other, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_open_part(st_out, &o, &stray, &err), CAL_OK);
	for (int i = 0; i < 3; i++) {
		const char nm[2] = {(char)('a' + i), 0};
		cr_assert_eq(cal_st_writer_declare(w, nm, CAL_DTYPE_U8, 1, shape, &err), CAL_OK);
		cr_assert_eq(cal_st_writer_declare(p, nm, CAL_DTYPE_U8, 1, shape, &err), CAL_OK);
		cr_assert_eq(cal_st_writer_declare(stray, nm, CAL_DTYPE_U8, 1, shape, &err), CAL_OK);
		if (i < 2) /* a different plan */
			cr_assert_eq(cal_st_writer_declare(other, nm, CAL_DTYPE_U8, 1, shape, &err),
				     CAL_OK);
	}
	cr_assert_eq(cal_st_writer_begin(w, &err), CAL_OK);
	const char *tn = cal_st_writer_tmp_name(w);
	uint64_t h = cal_st_writer_layout_hash(w);
	cr_expect_eq(cal_st_writer_attach(other, tn, h, &err), CAL_ERR_INTERNAL);
	cr_expect(strstr(cal_error_msg(&err), "layout differs"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_eq(cal_st_writer_attach(stray, "../elsewhere", h, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	cr_assert_eq(cal_st_writer_attach(p, tn, h, &err), CAL_OK, "%s", cal_error_msg(&err));
	/* a part never commits (and its death removes nothing) */
	cr_assert_eq(cal_st_writer_attach(stray, tn, h, &err), CAL_ERR_INVALID); /* dead */
	cal_error_clear(&err);
	struct cal_st_writer *q = NULL;
	cr_assert_eq(cal_st_writer_open_part(st_out, &o, &q, &err), CAL_OK);
	for (int i = 0; i < 3; i++) {
		const char nm[2] = {(char)('a' + i), 0};
		cr_assert_eq(cal_st_writer_declare(q, nm, CAL_DTYPE_U8, 1, shape, &err), CAL_OK);
	}
	cr_assert_eq(cal_st_writer_attach(q, tn, h, &err), CAL_OK);
	cr_expect_eq(cal_st_writer_commit(q, &err), CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "part writer"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_st_writer_free(q);
	cr_assert_eq(cal_st_writer_put(w, "a", "AAAA", 4, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_put(p, "b", "BBBB", 4, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_put(p, "c", "CCCC", 4, &err), CAL_OK);
	cr_assert_eq(cal_st_writer_part_close(p, &err), CAL_OK, "%s", cal_error_msg(&err));
	uint64_t idx[3];
	cr_assert_eq(cal_st_writer_put_indices(p, NULL), 2);
	cr_assert_eq(cal_st_writer_put_indices(p, idx), 2);
	cr_expect(idx[0] == 1 && idx[1] == 2);
	cal_st_writer_free(p); /* removes nothing */
	cal_st_writer_free(other);
	cal_st_writer_free(stray);
	cr_assert_eq(cal_st_writer_put_elsewhere(w, idx, 2, &err), CAL_OK);
	cr_expect_eq(cal_st_writer_bytes_written(w), 12);
	cr_assert_eq(cal_st_writer_commit(w, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_st_writer_free(w);
	struct cal_checkpoint *ck;
	cr_assert_eq(cal_checkpoint_open(st_out, &ck, NULL), CAL_OK);
	const char *want[] = {"AAAA", "BBBB", "CCCC"};
	for (int i = 0; i < 3; i++) {
		const char nm[2] = {(char)('a' + i), 0};
		const struct cal_st_tensor *t = cal_checkpoint_find(ck, nm);
		cr_assert(t && t->nbytes == 4 && !memcmp(t->data, want[i], 4), "%s", nm);
	}
	cal_checkpoint_free(ck);
	cr_expect_eq((int)cal_test_count_entries(st_base), 1, "only the published output is left");
}
