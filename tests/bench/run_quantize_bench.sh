#!/bin/sh
# run_quantize_bench.sh BUILD_DIR OUT_DIR — issue 12's job benchmark on a GPU
# machine with torch + transformers (+ nvidia-modelopt 0.47 for step 3):
#   1. the synthetic Qwen3-30B-A3B-shaped checkpoint (8 layers, 11.2 GB) and
#      its 512 x 512 calibration tokens (moe_baseline.py, GEN_ONLY=1);
#   2. `calibd bench quantize` on them (experts-only NVFP4 + FP8 KV): disk
#      bandwidth, the floor, phases, overlap, memory, end to end / floor;
#      from a cold page cache, then again warm;
#   3. real modelopt on the same checkpoint, tokens and recipe
#      (modelopt_compare.py: hf_ptq's --recipe flow), the side-by-side ratio
#      and a tensor-by-tensor comparison of the two outputs (MODELOPT=0 skips).
# A benchmark: it prints numbers, judges none.
set -u
b=${1:?build dir}; out=${2:?output dir}
D=${D:-/tmp/q30}; export D
here=$(dirname "$0")
mkdir -p "$out"
PYTHONUNBUFFERED=1 GEN_ONLY=1 python3 "$here/moe_baseline.py" >"$out/gen.json" 2>"$out/gen.err" ||
	tail -20 "$out/gen.err"
export CALIBD_RECIPES_DIR="$here/../../recipes"
parent=$(dirname "$D")
rm -rf "$parent/calibd-bench-out" "${D}_modelopt"
"$b/cli/calibd" bench quantize --model "$D" --tokens "$D.tokens.jsonl" --out-parent "$parent" \
	--keep --json "$out/bench_quantize.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench_quantize.txt"
# the same job from a warm page cache (the source cached by the runs above)
mkdir -p "$parent/warm" && rm -rf "$parent/warm/calibd-bench-out"
"$b/cli/calibd" bench quantize --model "$D" --tokens "$D.tokens.jsonl" --out-parent "$parent/warm" \
	--warm --json "$out/bench_quantize_warm.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench_quantize_warm.txt"
[ "${MODELOPT:-1}" = 0 ] && exit 0
PYTHONUNBUFFERED=1 python3 "$here/modelopt_compare.py" --model "$D" --tokens "$D.tokens.jsonl" \
	--calibd-out "$parent/calibd-bench-out" --calibd-json "$out/bench_quantize.json" \
	--out "${D}_modelopt" --batch "${BS:-16}" --json "$out/modelopt.json" 2>"$out/modelopt.err" |
	tee "$out/modelopt.txt"
tail -5 "$out/modelopt.err"
