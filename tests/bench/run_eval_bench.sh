#!/bin/sh
# run_eval_bench.sh BUILD_DIR OUT_DIR — issue 18's evaluation benchmark on a
# GPU machine with torch + transformers:
#   1. the pipeline benchmark's checkpoint (moe_baseline.py, GEN_ONLY=1: the
#      synthetic Qwen3-30B-A3B-shaped model, 8 layers) and NS=256 random
#      sequences of 512 tokens: the first 128 calibrate, the last 128 are
#      held out (skipped when $D.tokens.jsonl exists: bring your own model);
#   2. one calibration pass over 128 x 512 tokens (`calibd bench calibrate`,
#      run 2 is from a warm page cache);
#   3. `calibd quantize` (experts-only NVFP4 + FP8 KV) on those tokens;
#   4. `calibd eval` of the result on the 128 held-out sequences, then on
#      the calibration sequences (the overlap is reported);
#   5. lm-eval-style perplexity of the source through transformers on the
#      same device (hf_perplexity.py).
# DEVICE=cpu runs it on the CPU (a tiny model brought in D). A benchmark: it
# prints numbers, judges none.
set -u
b=${1:?build dir}; out=${2:?output dir}
D=${D:-/tmp/q30}; export D
DEVICE=${DEVICE:-cuda}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
if [ ! -f "$D.tokens.jsonl" ]; then
	PYTHONUNBUFFERED=1 GEN_ONLY=1 NS=256 SEQ=512 python3 "$here/moe_baseline.py" \
		>"$out/gen.json" 2>"$out/gen.err" || tail -20 "$out/gen.err"
fi
n=$(wc -l <"$D.tokens.jsonl"); h=$((n / 2))
head -n "$h" "$D.tokens.jsonl" >"$D.calib.jsonl"
tail -n "$h" "$D.tokens.jsonl" >"$D.held.jsonl"
export CALIBD_RECIPES_DIR="$here/../../recipes"
recipe="$CALIBD_RECIPES_DIR/general/ptq/nvfp4_experts_only-kv_fp8.yaml"
now() { date +%s.%N; }
"$b/cli/calibd" bench calibrate --model "$D" --tokens "$D.calib.jsonl" --device "$DEVICE" \
	--repeat 2 --no-profile --json "$out/calib.json" 2>&1 | tee "$out/calib.txt"
rm -rf "${D}_q"
t0=$(now)
"$b/cli/calibd" quantize --model "$D" --recipe "$recipe" --calib-tokens "$D.calib.jsonl" \
	--out "${D}_q" --device "$DEVICE" --quiet >"$out/quantize.json" 2>"$out/quantize.err"
echo "quantize: rc $? in $(awk -v a="$t0" -v b="$(now)" "BEGIN{printf \"%.2f\", b - a}") s" | tee "$out/quantize.txt"
for set in held calib; do
	t0=$(now)
	"$b/cli/calibd" eval --model "$D" --quantized "${D}_q" --data-tokens "$D.$set.jsonl" \
		--device "$DEVICE" --out "$out/eval_$set.json" 2>&1 | tee "$out/eval_$set.txt"
	echo "eval ($set): $(awk -v a="$t0" -v b="$(now)" "BEGIN{printf \"%.2f\", b - a}") s wall" | tee -a "$out/eval_$set.txt"
done
PYTHONUNBUFFERED=1 python3 "$here/hf_perplexity.py" --model "$D" --tokens "$D.held.jsonl" \
	--device "$DEVICE" --json "$out/hf_ppl.json" 2>"$out/hf_ppl.err" || tail -5 "$out/hf_ppl.err"
