/*
 * fuzz_model_config.c — libFuzzer target: the input is a config.json.
 * Parses it into a model description; when it is accepted, walks the
 * per-layer table and the not-convert list so that ASan catches counts that
 * disagree with what was allocated, and reads every name helper.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	if (cal_model_desc_parse("fuzz/config.json", (const char *)data, size, &d, &err) ==
	    CAL_OK) {
		volatile size_t sink = 0;
		for (int64_t i = 0; i < d->num_layers; i++)
			sink += strlen(cal_mixer_name(d->layers[i].mixer)) +
				strlen(cal_ffn_name(d->layers[i].ffn));
		for (size_t i = 0; i < d->n_not_convert; i++)
			sink += strlen(d->not_convert[i]);
		sink += strlen(cal_arch_name(d->arch->id)) + strlen(cal_rope_type_name(d->rope.type)) +
			strlen(cal_src_quant_name(d->src_quant));
		(void)sink;
	}
	cal_error_clear(&err);
	cal_model_desc_free(d);
	return 0;
}
