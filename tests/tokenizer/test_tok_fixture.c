/*
 * test_tok_fixture.c — the byte-level BPE tokenizer that the fixture
 * generator (tests/fixtures) writes into every tiny checkpoint must encode
 * the corpus exactly as Hugging Face `tokenizers` encodes it
 * (reference/fixture.jsonl, from make_reference.py --fixture-tokenizer).
 * A separate program so that the main tokenizer test does not depend on
 * the fixture library.  When gen_fixture's tokenizer changes, regenerate
 * the reference.
 */
#include <unistd.h>

#include "fixture.h"
#include "tok_check.h"

Test(tokenizer, fixture_tokenizer)
{
	char tmpl[] = "/tmp/cal-tok-fixture-XXXXXX";
	cr_assert(mkdtemp(tmpl));
	char *dir = path2(tmpl, "ckpt");
	struct cal_fixture_opts opts = { .arch = cal_fixture_arch_name(0), .seed = 1 };
	struct cal_error err = { 0 };
	cr_assert_eq(cal_fixture_write(&opts, dir, &err), CAL_OK, "%s", cal_error_msg(&err));
	struct tok_corpus c = { 0 };
	load_corpus(&c);
	struct cal_tokenizer *tok;
	cr_assert_eq(cal_tokenizer_load(dir, &tok, &err), CAL_OK, "%s", cal_error_msg(&err));
	size_t compared, bad = check_reference(tok, "fixture", &c, &compared);
	fprintf(stderr, "conformance fixture: %zu encodings compared, %zu mismatches\n",
		compared, bad);
	cr_expect_eq(bad, 0);
	cal_tokenizer_free(tok);
	tc_free(&c);
	/* remove the checkpoint */
	const char *files[] = { "config.json", "generation_config.json", "model.safetensors",
				"model.safetensors.index.json", "tokenizer.json",
				"tokenizer_config.json" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char *p = path2(dir, files[i]);
		unlink(p);
		free(p);
	}
	rmdir(dir);
	rmdir(tmpl);
	free(dir);
}
