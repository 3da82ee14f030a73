/*
 * fuzz_st_header.c — libFuzzer target: one safetensors file image through
 * the header validator.  Accepted files are walked tensor by tensor and
 * every byte they claim is read, so ASan catches a validator that lets a
 * range outside the input through.
 */
#include <stddef.h>
#include <stdint.h>

#include "engine/st/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cal_st_file *f = NULL;
	struct cal_error err = {0};
	if (cal_st_file_parse("fuzz.safetensors", data, size, &f, &err) == CAL_OK) {
		volatile uint8_t sink = 0;
		for (size_t i = 0; i < cal_st_file_count(f); i++) {
			const struct cal_st_tensor *t = cal_st_file_tensor(f, i);
			const uint8_t *p = t->data;
			for (uint64_t j = 0; j < t->nbytes; j++)
				sink ^= p[j];
			if (cal_st_file_find(f, t->name) != t)
				__builtin_trap();
		}
		(void)cal_st_file_metadata(f, "format");
		(void)sink;
	}
	cal_error_clear(&err);
	cal_st_file_free(f);
	return 0;
}
