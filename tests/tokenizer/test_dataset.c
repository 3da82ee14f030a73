/*
 * test_dataset.c — calibration datasets: source lists, JSONL records
 * (text, messages, input_ids), plain text chunking, per-source counts,
 * seeded sampling, truncation, empty samples, errors naming file and line.
 * Uses a character-level tokenizer (id = byte - 0x20, '\n' = 95, <s> = 96,
 * </s> = 97, template "<s> $A </s>") so expected ids are obvious.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tokenizer/dataset.h"
#include "testutil.h"

static struct cal_tokenizer *tok;
static char dir[] = "/tmp/cal-ds-XXXXXX";

static void setup(void)
{
	char *json = malloc(1 << 16);
	size_t n = (size_t)sprintf(json, "{\"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {");
	for (int c = 0x20; c < 0x7F; c++) {
		if (c == '"' || c == '\\')
			n += (size_t)sprintf(json + n, "\"\\%c\": %d, ", c, c - 0x20);
		else
			n += (size_t)sprintf(json + n, "\"%c\": %d, ", c, c - 0x20);
	}
	n += (size_t)sprintf(json + n,
		"\"\\n\": 95, \"<s>\": 96, \"</s>\": 97}}, \"added_tokens\": ["
		"{\"id\": 96, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
		"{\"id\": 97, \"content\": \"</s>\", \"special\": true, \"normalized\": false}],"
		"\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
		"{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
		"{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
		"{\"SpecialToken\": {\"id\": \"</s>\", \"type_id\": 0}}],"
		"\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [96], \"tokens\": [\"<s>\"]},"
		"\"</s>\": {\"id\": \"</s>\", \"ids\": [97], \"tokens\": [\"</s>\"]}}}}");
	struct cal_error err = { 0 };
	cr_assert_eq(cal_tokenizer_load_buffer(json, n, "char.json", &tok, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	free(json);
	cr_assert(mkdtemp(dir));
}

static void teardown(void)
{
	cal_tokenizer_free(tok);
	cal_test_rm_rf(dir);
}

TestSuite(dataset, .init = setup, .fini = teardown);

static char *put(const char *name, const char *content)
{
	char *p = malloc(strlen(dir) + strlen(name) + 2);
	sprintf(p, "%s/%s", dir, name);
	FILE *f = fopen(p, "wb");
	cr_assert(f);
	fputs(content, f);
	fclose(f);
	return p;
}

/* the sample as a string of characters (ids mapped back) */
static void seq_str(const struct cal_dataset *ds, size_t i, char *out)
{
	size_t k = 0;
	for (size_t j = ds->off[i]; j < ds->off[i + 1]; j++) {
		int32_t id = ds->ids[j];
		if (id == 96)
			k += (size_t)sprintf(out + k, "<s>");
		else if (id == 97)
			k += (size_t)sprintf(out + k, "</s>");
		else
			out[k++] = id == 95 ? '\n' : (char)(id + 0x20);
	}
	out[k] = 0;
}

/* The dataset of spec under o; asserts it loads. */
static struct cal_dataset *load_ok(const char *spec, const struct cal_dataset_opts *o)
{
	struct cal_dataset *ds = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_dataset_load(tok, spec, o, &ds, &err), CAL_OK, "%s: %s", spec,
		     cal_error_msg(&err));
	return ds;
}

/* Expects sequence i of ds to read want (seq_str's rendering). */
static void expect_seq(const struct cal_dataset *ds, size_t i, const char *want)
{
	char s[256];
	seq_str(ds, i, s);
	cr_expect_str_eq(s, want, "sequence %zu", i);
}

Test(dataset, sources_parse)
{
	struct cal_calib_source *s;
	size_t n;
	struct cal_error err = { 0 };
	cr_assert_eq(cal_calib_sources_parse("a.jsonl:3,b.txt,c:d.jsonl:5,e:f", &s, &n, &err), CAL_OK);
	cr_assert_eq(n, 4);
	cr_expect_str_eq(s[0].path, "a.jsonl");
	cr_expect(s[0].has_n && s[0].n == 3);
	cr_expect_str_eq(s[1].path, "b.txt");
	cr_expect(!s[1].has_n);
	cr_expect_str_eq(s[2].path, "c:d.jsonl");
	cr_expect_eq(s[2].n, 5);
	cr_expect_str_eq(s[3].path, "e:f");
	cal_calib_sources_free(s, n);
	const char *bad[] = { "", "a,,b", "a:0", ":5", "a,", "a:99999999999999999999" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(cal_calib_sources_parse(bad[i], &s, &n, &err), CAL_ERR_INVALID,
			     "'%s' accepted", bad[i]);
		cr_expect_null(s);
		cal_error_clear(&err);
	}
}

Test(dataset, jsonl_records)
{
	char *p = put("d.jsonl",
		      "{\"text\": \"abc\"}\n"
		      "\n"
		      "{\"text\": \"\"}\n"
		      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, "
		      "{\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
		      "{\"input_ids\": [1, 2, 3]}\n"
		      "{\"text\": \"0123456789abcdef\"}\n");
	struct cal_dataset_opts o = { .samples = 10, .seq_len = 8 };
	struct cal_dataset *ds = load_ok(p, &o);
	cr_assert_eq(ds->n, 4);
	expect_seq(ds, 0, "<s>abc</s>");
	expect_seq(ds, 1, "<s>hi\nyo</s>");
	cr_expect_eq(ds->off[3] - ds->off[2], 3);
	cr_expect_eq(ds->ids[ds->off[2]], 1);
	expect_seq(ds, 3, "<s>012345</s>"); /* 8 tokens with the specials */
	cr_expect_eq(ds->dropped_empty, 1);
	cr_expect_eq(ds->truncated, 1);
	cr_expect_eq(ds->shortfall, 6);
	cal_dataset_free(ds);

	o.no_special = true;
	ds = load_ok(p, &o);
	expect_seq(ds, 0, "abc");
	expect_seq(ds, 3, "01234567");
	cal_dataset_free(ds);
	free(p);
}

Test(dataset, errors_name_file_and_line)
{
	static const struct {
		const char *content, *needle;
	} cases[] = {
		{ "{\"text\": \"a\"}\n{\"text\": 5}\n", "e.jsonl:2: 'text' must be a string" },
		{ "{\"text\": \"a\"}\n\n{bad json\n", "e.jsonl:3:" },
		{ "{\"foo\": 1}\n", "e.jsonl:1: record has no 'text'" },
		{ "{\"input_ids\": [1, 98]}\n", "e.jsonl:1: input_ids[1]" },
		{ "{\"messages\": [{\"content\": 3}]}\n", "e.jsonl:1: messages[0].content" },
		{ "[1]\n", "e.jsonl:1: not a JSON object" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *p = put("e.jsonl", cases[i].content);
		struct cal_dataset_opts o = { .samples = 5, .seq_len = 16 };
		struct cal_dataset *ds = NULL;
		struct cal_error err = { 0 };
		cr_expect_eq(cal_dataset_load(tok, p, &o, &ds, &err), CAL_ERR_FORMAT, "case %zu", i);
		cr_expect(err.msg && strstr(err.msg, cases[i].needle), "case %zu: '%s' lacks '%s'",
			  i, cal_error_msg(&err), cases[i].needle);
		cr_expect_null(ds);
		cal_error_clear(&err);
		free(p);
	}
	struct cal_dataset *ds = NULL;
	struct cal_error err = { 0 };
	struct cal_dataset_opts o = { .samples = 5, .seq_len = 16 };
	cr_expect_lt(cal_dataset_load(tok, "/nonexistent.jsonl", &o, &ds, &err), 0);
	cr_expect(err.msg && strstr(err.msg, "/nonexistent.jsonl"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	o.seq_len = 2; /* only room for the specials */
	cr_expect_eq(cal_dataset_load(tok, "x.txt", &o, &ds, &err), CAL_ERR_RANGE);
	cal_error_clear(&err);
}

Test(dataset, text_chunks_counts_and_seed)
{
	char *t = put("t.txt", "abcdefghijklmnopqrstuvwxy"); /* 25 tokens */
	char *j = put("j.jsonl", "{\"text\": \"1\"}\n{\"text\": \"2\"}\n{\"text\": \"3\"}\n"
				 "{\"text\": \"4\"}\n{\"text\": \"5\"}\n{\"text\": \"6\"}\n");
	char spec[512];
	snprintf(spec, sizeof(spec), "%s,%s", t, j);
	struct cal_dataset_opts o = { .samples = 7, .seq_len = 10 };
	struct cal_dataset *ds;
	struct cal_error err = { 0 };
	/* 7 split 4 + 3; the text gives chunks of 8 tokens: 8, 8, 8, 1 */
	ds = load_ok(spec, &o);
	cr_assert_eq(ds->n, 7);
	expect_seq(ds, 0, "<s>abcdefgh</s>");
	expect_seq(ds, 3, "<s>y</s>");
	expect_seq(ds, 4, "<s>1</s>");
	expect_seq(ds, 6, "<s>3</s>");
	cal_dataset_free(ds);

	/* explicit counts; totals must agree */
	snprintf(spec, sizeof(spec), "%s:1,%s:2", t, j);
	o.samples = 0;
	ds = load_ok(spec, &o);
	cr_expect_eq(ds->n, 3);
	cal_dataset_free(ds);
	o.samples = 4;
	cr_expect_eq(cal_dataset_load(tok, spec, &o, &ds, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	snprintf(spec, sizeof(spec), "%s", j);
	o.samples = 0;
	cr_expect_eq(cal_dataset_load(tok, spec, &o, &ds, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);

	/* seeded sampling: deterministic, and a permutation of the records */
	const uint64_t seed = 1234;
	fprintf(stderr, "dataset seed %llu\n", (unsigned long long)seed);
	o = (struct cal_dataset_opts){ .samples = 6, .seq_len = 10, .shuffle = true, .seed = seed };
	struct cal_dataset *a, *b;
	a = load_ok(j, &o);
	b = load_ok(j, &o);
	cr_assert_eq(a->n, 6);
	cr_expect_eq(memcmp(a->ids, b->ids, a->n_tokens * sizeof(int32_t)), 0);
	int seen = 0, in_order = 1;
	for (size_t i = 0; i < a->n; i++) {
		int d = a->ids[a->off[i] + 1] + 0x20 - '0';
		seen |= 1 << d;
		in_order &= d == (int)i + 1;
	}
	cr_expect_eq(seen, 0x7E);
	cr_expect(!in_order, "seed %llu left the records in order", (unsigned long long)seed);
	cal_dataset_free(a);
	cal_dataset_free(b);
	free(t);
	free(j);
}

Test(dataset, calib_args)
{
	char *argv[] = { "cmd", "--calib", "x.jsonl:4", "--samples=9", "--seq-len", "128",
			 "--seed", "7", "--other", "--seq-len", "abc" };
	int argc = 11, i = 1;
	struct cal_calib_args a;
	struct cal_error err = { 0 };
	cal_calib_args_init(&a);
	cr_expect_eq(a.seq_len, 512);
	for (int k = 0; k < 4; k++)
		cr_assert_eq(cal_calib_args_option(&a, argc, argv, &i, &err), 1, "option %d", k);
	cr_expect_str_eq(a.calib, "x.jsonl:4");
	cr_expect_eq(a.samples, 9);
	cr_expect_eq(a.seq_len, 128);
	cr_expect(a.seed_set && a.seed == 7);
	cr_expect_eq(i, 8);
	cr_expect_eq(cal_calib_args_option(&a, argc, argv, &i, &err), 0);
	i = 9;
	cr_expect_eq(cal_calib_args_option(&a, argc, argv, &i, &err), CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "--seq-len"));
	cal_error_clear(&err);
}
