#!/bin/sh
# make_algo_fingerprints.sh — regenerates the real-modelopt fingerprints of
# the single-linear algorithm tests (docs/gptq.md, docs/smoothquant.md,
# docs/awq.md; nvfp4_act_headroom: docs/numerics.md "Activation headroom") on
# the CPU, then `meson test -C BUILD calib_algorithms` checks calibd
# against them.
#
#   sh tests/modelopt/make_algo_fingerprints.sh [PYTHON]
#
# PYTHON (default /opt/hfenv/bin/python) needs torch and nvidia-modelopt
# 0.47 (modelopt imports `requests`: put a venv's site-packages that has it
# on PYTHONPATH if PYTHON lacks it).
set -eu
PY=${1:-/opt/hfenv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
G="$HERE/gptq_fingerprint.py"
S="$HERE/smoothquant_fingerprint.py"
"$PY" "$G" --out "$HERE/gptq/nvfp4_64x256.json"
"$PY" "$G" --tokens 96 --perc-damp 0.05 --block-size 64 --seed 21 \
	--out "$HERE/gptq/nvfp4_64x256_rankdef_b64.json"
"$PY" "$G" --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 \
	--out "$HERE/gptq/nvfp4_32x512.json"
"$PY" "$S" --out "$HERE/smoothquant/int8_64x256_a1.json"
"$PY" "$S" --alpha 0.5 --dead -1 --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 \
	--out "$HERE/smoothquant/int8_32x512_a05.json"
A="$HERE/awq_fingerprint.py"
"$PY" "$A" --out "$HERE/awq/int4_64x256.json"
"$PY" "$A" --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 --alpha-step 0.05 \
	--out "$HERE/awq/int4_32x512_s005.json"
"$PY" "$A" --nvfp4 --out "$HERE/awq/nvfp4_64x256.json"
"$PY" "$A" --nvfp4 --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 --alpha-step 0.05 \
	--out "$HERE/awq/nvfp4_32x512_s005.json"
E="$HERE/awq_export_fingerprint.py"
"$PY" "$E" --out "$HERE/awq_export/int4_qkv_256.json"
"$PY" "$E" --rows 48,48 --cols 384 --seed 5 --plus-one --out "$HERE/awq_export/int4_gu_384_plus1.json"
"$PY" "$E" --smoothquant 0.5 --seed 9 --out "$HERE/awq_export/int8_sq_qkv_256_a05.json"
N="$HERE/headroom_fingerprint.py"
"$PY" "$N" --rows 16 --out "$HERE/headroom/nvfp4_16x256.json"
"$PY" "$N" --rows 16 --upper 100 --rho 64 --out "$HERE/headroom/nvfp4_16x256_u100_r64.json"
"$PY" "$N" --rows 16 --anchor 5 --upper 99 --rho 1000 --batch 96 --tokens 480 --seed 3 \
	--out "$HERE/headroom/nvfp4_16x256_a5_u99.json"
# awq_full (docs/awq.md "awq_full"): awq_lite then awq_clip, INT4
"$PY" "$A" --full --out "$HERE/awq/int4_full_64x256.json"
"$PY" "$A" --full --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 --alpha-step 0.05 \
	--min-clip-ratio 0.6 --shrink-step 0.1 --max-tokens 128 \
	--out "$HERE/awq/int4_full_32x512_r06_s01.json"
"$PY" "$A" --full --rows 48 --cols 384 --tokens 300 --batch 100 --seed 13 --max-tokens 40 \
	--out "$HERE/awq/int4_full_48x384_t40.json"
# w4a8_awq (docs/awq.md "w4a8_awq"): the INT4 search with FP8 inputs
"$PY" "$A" --w4a8 --out "$HERE/awq/w4a8_64x256.json"
"$PY" "$A" --w4a8 --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 --alpha-step 0.05 \
	--out "$HERE/awq/w4a8_32x512_s005.json"
# awq_clip alone, and awq_full / awq_clip with NVFP4 and W4A8 weights
# (docs/awq.md "awq_clip"): NVFP4's clip is per tensor; W4A8's clip is
# discarded by modelopt's closing max calibration
"$PY" "$A" --clip-only --out "$HERE/awq/int4_clip_64x256.json"
"$PY" "$A" --clip-only --rows 48 --cols 384 --tokens 300 --batch 100 --seed 13 --max-tokens 40 \
	--out "$HERE/awq/int4_clip_48x384_t40.json"
"$PY" "$A" --nvfp4 --full --out "$HERE/awq/nvfp4_full_64x256.json"
"$PY" "$A" --nvfp4 --full --seed 11 --out "$HERE/awq/nvfp4_full_64x256_s11.json"
"$PY" "$A" --nvfp4 --clip-only --rows 32 --cols 512 --tokens 384 --batch 96 --seed 3 \
	--min-clip-ratio 0.6 --shrink-step 0.1 --out "$HERE/awq/nvfp4_clip_32x512_r06_s01.json"
"$PY" "$A" --w4a8 --full --out "$HERE/awq/w4a8_full_64x256.json"
"$PY" "$A" --w4a8 --clip-only --out "$HERE/awq/w4a8_clip_64x256.json"
# a linear with a bias (GPT-OSS's attention; docs/awq.md "GPT-OSS")
"$PY" "$A" --bias 4 --out "$HERE/awq/int4_bias4_64x256.json"
"$PY" "$A" --nvfp4 --bias 4 --out "$HERE/awq/nvfp4_bias4_64x256.json"
