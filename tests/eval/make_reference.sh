#!/bin/sh
# make_reference.sh — regenerates tests/eval/ref/ (the committed reference
# logits test_eval.c compares `calibd eval` with).  Needs a calibd build, the
# calibd-fixture generator and a Python with torch + transformers +
# safetensors (CPU):
#   sh tests/eval/make_reference.sh build/cpu /opt/hfenv/bin/python
# For each case (architecture, recipe): the fixture (seed 7), `calibd
# quantize` with the recipe on tests/eval/ref/calib.jsonl, then reference.py
# on the held-out tokens tests/eval/ref/held.jsonl; plus the unquantized
# qwen3_moe source's logits (orig.bf16).  Output: raw bf16 [tokens, vocab]
# files, named RECIPE.bf16 for qwen3_moe and ARCH.RECIPE.bf16 otherwise.
# The second reference, modelopt's own fake-quant model
# (modelopt_reference.py; FP8 only: modelopt's NVFP4 fake quant needs CUDA),
# goes to modelopt.ARCH.RECIPE.bf16 (needs nvidia-modelopt in PYTHON).
set -eu
B=${1:?build dir}
PY=${2:?python}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cases="qwen3_moe:nvfp4_default-kv_fp8 qwen3_moe:fp8_default-kv_fp8
qwen3_moe:nvfp4_weight_only-kv_fp16 qwen3_next:nvfp4_weight_only-kv_fp16
qwen3_next:nvfp4_default-kv_fp8 qwen3_5_moe:nvfp4_weight_only-kv_fp16
qwen3_5_moe:nvfp4_default-kv_fp8 deepseek_v3:nvfp4_weight_only-kv_fp16
deepseek_v3:nvfp4_default-kv_fp8 gpt_oss:nvfp4_default-kv_fp8 gpt_oss:fp8_default-kv_fp8
gpt_oss:nvfp4_default-kv_nvfp4_rotate gpt_oss:nvfp4_default-kv_nvfp4_cast llama:mxfp8 llama:fp8_default-kv_fp8_affine
llama:nvfp4_default-kv_nvfp4_affine qwen3_moe:int8_sq-kv_fp8_cast
qwen3_moe:int8_weight_only-kv_fp8_cast qwen3_next:int8_sq-kv_fp8_cast
llama:nvfp4_awq-kv_fp8_cast"
for c in $cases; do
	a=${c%%:*}; r=${c#*:}
	[ -d "$t/$a" ] || "$B/tests/fixtures/calibd-fixture" --arch "$a" --seed 7 "$t/$a" >/dev/null
	"$B/cli/calibd" quantize --model "$t/$a" --recipe "$root/recipes/general/ptq/$r.yaml" \
		--calib-tokens "$here/ref/calib.jsonl" --out "$t/$a.$r" --device cpu --quiet >/dev/null
	name=$r.bf16
	[ "$a" = qwen3_moe ] || name=$a.$r.bf16
	"$PY" "$here/reference.py" "$t/$a" "$t/$a.$r" "$here/ref/held.jsonl" "$here/ref/$name"
done
REF_MODE=none "$PY" "$here/reference.py" "$t/qwen3_moe" "$t/qwen3_moe.fp8_default-kv_fp8" \
	"$here/ref/held.jsonl" "$here/ref/orig.bf16"
for a in qwen3_moe gpt_oss; do
	"$PY" "$here/modelopt_reference.py" "$t/$a" general/ptq/fp8_default-kv_fp8 \
		"$here/ref/calib.jsonl" "$here/ref/held.jsonl" "$here/ref/modelopt.$a.fp8_default-kv_fp8.bf16"
done
