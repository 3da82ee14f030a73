/*
 * goldens.c — see goldens.h.  Expected bytes are what modelopt produced on
 * a GPU (docs/numerics.md "Golden vectors"); of the FP8 CPU-semantics rows
 * only the fragments that differ from the CUDA rows were recorded, so
 * rows 0 and 3 must equal the CUDA rows and rows 1 and 2 must contain the
 * quoted fragments and differ from the CUDA rows.
 */
#include <stdio.h>
#include <string.h>

#include "common/fp.h"
#include "goldens.h"

const char *const golden_input_hex[4] = {
	"00bf64be603daa3ecabef0bd243ee03e94be40bc883eecbe3cbec03dbe3eb6bea0bd4c3ef43e80bee03c9c3ed8be14be083ed23ea2be20bd743efabe58be883d",
	"c03c143f60bfa4be703e4a3f2abfe0bde43e803fe8bed03d283f4cbf78bea03e5e3f16bf00bd063f6ebfc0be383e3c3f38bf28bec83e723f02bf403d1a3f5abf",
	"f6bf50bf983eb43fc0bfc8be383fea3f8abf003d923fe2bf28bfe83ec83facbf80b9603ffe3f6cbf403ea63fcebf00bf1c3fdc3f98bfa0bd843ff0bf44bfb03e",
	"803e1e4056c090bf8c3f544020c090bef83f78c0d4bf103f324042c050bfb43f0000000000000000000000000000000000000000000000000000000000000000",
};

static const char *const nvfp4_rows[4] = {
	"df61be748ef52ce64ad761cf739ef52d",
	"60cf639e751de64be758cf62ae741df6",
	"df62ae740df63ce658d761be748ef52c",
	"61bf739ef52de64b0000000000000000",
};
static const uint8_t nvfp4_scales[8] = {0x66, 0x66, 0x6e, 0x6e, 0x76, 0x76, 0x7e, 0x38};

static const char *const fp8_cuda_rows[4] = {
	"e6dd4d62e3d65965e0bb5fe5db5363e2d15c66de4561e4d85764e1c95ee6dc4f",
	"4368ede15e6bead5656ee55469ecde616ce8c667ede35a6bead9636ee74b69ec",
	"f6ec6172f3e36a75f04670f5e96573f28e6d76ed5b71f4e66974f1d16ff6eb62",
	"5e79fcf0707cf9e076fef4687afbec7200000000000000000000000000000000",
};

void golden_input(uint16_t w[4 * 32])
{
	for (int r = 0; r < 4; r++)
		for (int c = 0; c < 32; c++) {
			float v = (float)(((r * 131 + c * 71) % 257) - 128) / 64.0f;
			v = v * (r == 0 ? 0.25f : r == 1 ? 0.5f : r == 2 ? 1.0f : 2.0f);
			w[r * 32 + c] = cal_f32_to_bf16(v);
		}
	for (int c = 16; c < 32; c++)
		w[3 * 32 + c] = 0;
	w[2 * 32 + 16] = cal_f32_to_bf16(-1.0f / 4096.0f);
}

static void hex(const uint8_t *b, int n, char *out)
{
	for (int i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
}

enum cal_status golden_run(struct cal_backend *be, struct golden_result *r,
			   struct cal_error *err)
{
	uint16_t w[128];
	const struct cal_nonfinite nf0 = {0, CAL_NONFINITE_NONE};
	struct cal_nonfinite nf;
	void *dw = NULL, *da = NULL, *dn = NULL, *dp = NULL, *ds = NULL, *dq = NULL;
	enum cal_status st;
	float zero = 0.0f;

	memset(r, 0, sizeof(*r));
	golden_input(w);
	CAL_TRY(cal_backend_alloc(be, sizeof(w), &dw, err));
	CAL_TRY(cal_backend_alloc(be, 4, &da, err));
	CAL_TRY(cal_backend_alloc(be, sizeof(nf0), &dn, err));
	CAL_TRY(cal_backend_alloc(be, 64, &dp, err));
	CAL_TRY(cal_backend_alloc(be, 8, &ds, err));
	CAL_TRY(cal_backend_alloc(be, 128, &dq, err));
	CAL_TRY(cal_backend_upload(be, dw, w, sizeof(w), err));
	CAL_TRY(cal_backend_upload(be, da, &zero, 4, err));
	CAL_TRY(cal_backend_upload(be, dn, &nf0, sizeof(nf0), err));

	struct cal_amax_args am = {CAL_DTYPE_BF16, dw, 128, 0, da, dn};
	CAL_TRY(cal_op_amax(be, &am, err));
	CAL_TRY(cal_backend_download(be, &r->amax, da, 4, err));
	CAL_TRY(cal_backend_download(be, &nf, dn, sizeof(nf), err));
	if (nf.count)
		return cal_error_set(err, CAL_ERR_INTERNAL, "golden input reported non-finite");

	r->s2 = cal_nvfp4_scale2(r->amax, CAL_DIV_RECIP);
	struct cal_nvfp4_quant_args nq = {dw, 4, 32, r->s2, dp, ds, 0};
	CAL_TRY(cal_op_nvfp4_quant(be, &nq, err));
	CAL_TRY(cal_backend_download(be, r->nvfp4_packed, dp, 64, err));
	CAL_TRY(cal_backend_download(be, r->nvfp4_scales, ds, 8, err));

	r->fp8_scale_cuda = cal_fp8_scale(r->amax, CAL_DIV_RECIP);
	struct cal_fp8_quant_args fq = {dw, 128, r->fp8_scale_cuda, CAL_DIV_RECIP, dq, 0,
					NULL, 0, 0};
	CAL_TRY(cal_op_fp8_quant(be, &fq, err));
	CAL_TRY(cal_backend_download(be, r->fp8_cuda, dq, 128, err));
	r->fp8_scale_cpu = cal_fp8_scale(r->amax, CAL_DIV_EXACT);
	fq.scale = r->fp8_scale_cpu;
	fq.div = CAL_DIV_EXACT;
	CAL_TRY(cal_op_fp8_quant(be, &fq, err));
	CAL_TRY(cal_backend_download(be, r->fp8_cpu, dq, 128, err));
	st = cal_backend_sync(be, err);
fail:
	cal_backend_dealloc(be, dw);
	cal_backend_dealloc(be, da);
	cal_backend_dealloc(be, dn);
	cal_backend_dealloc(be, dp);
	cal_backend_dealloc(be, ds);
	cal_backend_dealloc(be, dq);
	return st;
}

#define EXPECT(cond, ...)                                                      \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "golden (%s): ", who);                 \
			fprintf(stderr, __VA_ARGS__);                          \
			fprintf(stderr, "\n");                                 \
			bad++;                                                 \
		}                                                              \
	} while (0)

int golden_check(const struct golden_result *r, const char *who)
{
	int bad = 0;
	char got[129];

	EXPECT(r->amax == 3.875f, "amax %g, want 3.875", (double)r->amax);
	EXPECT(cal_f32_bits(r->s2) == 0x3ABCF3CFu, "weight_scale_2 %08x, want 3abcf3cf",
	       cal_f32_bits(r->s2));
	EXPECT(!memcmp(r->nvfp4_scales, nvfp4_scales, 8), "NVFP4 weight_scale differs");
	for (int row = 0; row < 4; row++) {
		hex(r->nvfp4_packed + 16 * row, 16, got);
		EXPECT(!strcmp(got, nvfp4_rows[row]), "NVFP4 row %d: %s, want %s", row, got,
		       nvfp4_rows[row]);
	}
	EXPECT(cal_f32_bits(r->fp8_scale_cuda) == 0x3C0DB6DCu, "FP8 weight_scale (CUDA) %08x",
	       cal_f32_bits(r->fp8_scale_cuda));
	EXPECT(cal_f32_bits(r->fp8_scale_cpu) == 0x3C0DB6DBu, "FP8 weight_scale (CPU) %08x",
	       cal_f32_bits(r->fp8_scale_cpu));
	for (int row = 0; row < 4; row++) {
		hex(r->fp8_cuda + 32 * row, 32, got);
		EXPECT(!strcmp(got, fp8_cuda_rows[row]), "FP8 (CUDA semantics) row %d: %s, want %s",
		       row, got, fp8_cuda_rows[row]);
		hex(r->fp8_cpu + 32 * row, 32, got);
		if (row == 0 || row == 3)
			EXPECT(!strcmp(got, fp8_cuda_rows[row]), "FP8 (CPU semantics) row %d: %s",
			       row, got);
		else
			EXPECT(strcmp(got, fp8_cuda_rows[row]) != 0, "FP8 (CPU) row %d equals CUDA", row);
		if (row == 1)
			EXPECT(strstr(got, "5546aecde616de8c") && strstr(got, "ada"),
			       "FP8 (CPU semantics) row 1: %s lacks the doc's fragments", got);
		if (row == 2)
			EXPECT(strstr(got, "f5ea6573") != NULL,
			       "FP8 (CPU semantics) row 2: %s lacks the doc's fragment", got);
	}
	return bad;
}
