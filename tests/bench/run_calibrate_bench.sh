#!/bin/sh
# run_calibrate_bench.sh BUILD_DIR OUT_DIR — the calibration benchmark of
# issue 5 on a GPU machine with torch + transformers: writes the synthetic
# Qwen3-30B-A3B-shaped checkpoint (8 layers) and its 512 x 512 calibration
# tokens with moe_baseline.py, times transformers on it (eager experts with
# modelopt-style hooks, and its default grouped_mm forward), then
# `calibd bench calibrate` on the same checkpoint and tokens (experts-only
# NVFP4 recipe), once with all the GPU and once under a memory cap smaller
# than the model's weights.  A benchmark: it prints numbers, judges none.
set -u
b=${1:?build dir}; out=${2:?output dir}
D=${D:-/tmp/q30}; export D
mkdir -p "$out"
PYTHONUNBUFFERED=1 SKIP_EXPORT=${SKIP_EXPORT:-1} python3 "$(dirname "$0")/moe_baseline.py" \
	>"$out/baseline.json" 2>"$out/baseline.err" || tail -20 "$out/baseline.err"
cat "$out/baseline.json"
export CALIBD_RECIPES_DIR="$(dirname "$0")/../../recipes"
"$b/cli/calibd" bench calibrate --model "$D" --tokens "$D.tokens.jsonl" \
	--repeat "${REPEAT:-2}" --json "$out/calib.json" 2>&1 | tee "$out/bench.txt"
"$b/cli/calibd" bench calibrate --model "$D" --tokens "$D.tokens.jsonl" --no-profile \
	--max-gpu-mem "${CAP:-6G}" --json "$out/calib_cap.json" 2>&1 | tee "$out/bench_cap.txt"
