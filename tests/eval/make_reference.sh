#!/bin/sh
# make_reference.sh — regenerates tests/eval/ref/ (the committed reference
# logits test_eval.c compares `calibd eval` with).  Needs a calibd build, the
# calibd-fixture generator and a Python with torch + transformers +
# safetensors (CPU):
#   sh tests/eval/make_reference.sh build/cpu /opt/hfenv/bin/python
# For each case: the qwen3_moe fixture (seed 7), `calibd quantize` with the
# case's recipe on tests/eval/ref/calib.jsonl, then reference.py on the
# held-out tokens tests/eval/ref/held.jsonl; plus the unquantized source's
# logits (orig.bf16).  Output: raw bf16 [tokens, vocab] files.
set -eu
B=${1:?build dir}
PY=${2:?python}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
"$B/tests/fixtures/calibd-fixture" --arch qwen3_moe --seed 7 "$t/src" >/dev/null
for r in nvfp4_default-kv_fp8 fp8_default-kv_fp8 nvfp4_weight_only-kv_fp16; do
	"$B/cli/calibd" quantize --model "$t/src" \
		--recipe "$root/recipes/general/ptq/$r.yaml" \
		--calib-tokens "$here/ref/calib.jsonl" --out "$t/$r" --device cpu --quiet >/dev/null
	"$PY" "$here/reference.py" "$t/src" "$t/$r" "$here/ref/held.jsonl" "$here/ref/$r.bf16"
done
REF_MODE=none "$PY" "$here/reference.py" "$t/src" "$t/fp8_default-kv_fp8" \
	"$here/ref/held.jsonl" "$here/ref/orig.bf16"
