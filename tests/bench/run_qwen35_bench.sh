#!/bin/sh
# run_qwen35_bench.sh BUILD_DIR OUT_DIR — issue 9's scale benchmark on a GPU
# machine with torch + transformers: writes a synthetic Qwen3.5-MoE with the
# real per-layer shapes (tests/bench/qwen35_synth.py; NL layers, default 4:
# 3 Gated DeltaNet + 1 gated attention) and NS x SEQ tokens, then
# `calibd bench calibrate` on it (experts-only NVFP4 recipe), which prints
# tokens/s and the share of time in linear attention (GDN) vs experts.
# A benchmark: it prints numbers, judges none.
set -u
b=${1:?build dir}; out=${2:?output dir}
D=${D:-/tmp/q35}; export D
mkdir -p "$out"
PYTHONUNBUFFERED=1 python3 "$(dirname "$0")/qwen35_synth.py" >"$out/q35_make.json" 2>"$out/q35_make.err" ||
	tail -20 "$out/q35_make.err"
cat "$out/q35_make.json"
export CALIBD_RECIPES_DIR="$(dirname "$0")/../../recipes"
"$b/cli/calibd" bench calibrate --model "$D" --tokens "$D.tokens.jsonl" \
	--repeat "${REPEAT:-2}" --json "$out/q35_bench.json" 2>&1
