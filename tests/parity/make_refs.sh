#!/bin/sh
# make_refs.sh — regenerates the parity reference data with Hugging Face
# transformers (run on a machine with torch + transformers, a GPU is
# optional).  For every case: the fixture (calibd-fixture, deterministic),
# a token file (fixed seed, equal-length rows, ids < the fixture vocab),
# the reference (shared/tools/hf_reference.py) and case.json.
#
#   sh tests/parity/make_refs.sh BUILD_DIR OUT_DIR [HF_REFERENCE_PY]
#   (ONLY="case1 case2" limits it to those cases)
#
# Then copy OUT_DIR/<case>/ into tests/parity/<case>/ (tokens.jsonl,
# stats.json, hidden.safetensors, case.json; MXFP4 cases also
# dequant.safetensors) and run
#   meson test -C BUILD_DIR --suite unit parity   (and --suite gpu parity_cuda)
# Keep the case list in sync with test_parity.c.
set -eu
BUILD=${1:?usage: make_refs.sh BUILD_DIR OUT_DIR [HF_REFERENCE_PY]}
OUT=${2:?usage: make_refs.sh BUILD_DIR OUT_DIR [HF_REFERENCE_PY]}
HFREF=${3:-/work/shared/tools/hf_reference.py}
FIX="$BUILD/tests/fixtures/calibd-fixture"
SEED=${SEED:-1}
NSEQ=${NSEQ:-4}
SEQ=${SEQ:-48}
[ -x "$FIX" ] || { echo "make_refs.sh: $FIX not built (ninja -C $BUILD tests/fixtures/calibd-fixture)" >&2; exit 2; }
[ -f "$HFREF" ] || { echo "make_refs.sh: $HFREF not found" >&2; exit 2; }
python3 -c 'import torch, transformers' || { echo "make_refs.sh: needs torch and transformers" >&2; exit 2; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

# case arch layout [seq_len [fixture flags]] (layout "default" = the release
# layout; seq_len "-" or absent = $SEQ: the Gated DeltaNet cases use 80 so
# that HF's chunked delta rule (chunks of 64) crosses a chunk boundary;
# GPT-OSS uses 160 so that its sliding layers (window 128) drop keys;
# flags: the deepseek_v3 variants --q-lora-null, --fp8-block=N)
while read -r case arch layout seqlen flags; do
	[ -n "$case" ] || continue
	case " ${ONLY:-$case} " in *" $case "*) ;; *) continue ;; esac
	[ "${seqlen:--}" = - ] && seqlen=$SEQ
	slen=$seqlen
	echo "== $case ($arch, $layout ${flags:-})"
	rm -rf "$TMP/$case" "$OUT/$case"
	if [ "$layout" = default ]; then
		"$FIX" --arch "$arch" --seed "$SEED" ${flags:-} "$TMP/$case"
	else
		"$FIX" --arch "$arch" --layout "$layout" --seed "$SEED" ${flags:-} "$TMP/$case"
	fi
	extra=""
	case " ${flags:-} " in *" --q-lora-null "*) extra="$extra, \"q_lora_null\": true" ;; esac
	case " ${flags:-} " in
	*" --fp8-block="*)
		# FP8 block source: the reference runs on transformers' dequantization
		blk=$(echo "$flags" | sed 's/.*--fp8-block=\([0-9]*\).*/\1/')
		extra="$extra, \"fp8_block\": $blk"
		python3 "$(dirname "$0")/fp8_dequant.py" "$TMP/$case" "$TMP/$case.bf16"
		rm -rf "$TMP/$case"
		mv "$TMP/$case.bf16" "$TMP/$case" ;;
	esac
	mkdir -p "$OUT/$case"
	python3 - "$TMP/$case/config.json" "$OUT/$case/tokens.jsonl" "$NSEQ" "$slen" "$SEED" <<'PY'
import json, random, sys
cfg = json.load(open(sys.argv[1]))
vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
n, s, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = random.Random(seed)
with open(sys.argv[2], "w") as f:
    for _ in range(n):
        f.write(json.dumps({"input_ids": [r.randrange(vocab) for _ in range(s)]}) + "\n")
PY
	case "$arch" in
	gpt_oss) # attention sinks and sliding windows: hf_reference_sinks.py says why
		python3 "$(dirname "$0")/hf_reference_sinks.py" "$HFREF" "$TMP/$case" \
			"$OUT/$case/tokens.jsonl" "$OUT/$case" ;;
	*) python3 "$HFREF" "$TMP/$case" "$OUT/$case/tokens.jsonl" "$OUT/$case" ;;
	esac
	if [ "$layout" = mxfp4 ]; then # transformers' own dequantization of the experts
		python3 "$(dirname "$0")/mxfp4_dequant_ref.py" "$TMP/$case" "$OUT/$case"
	fi
	printf '{"arch": "%s", "layout": "%s", "seed": %s, "sequences": %s, "seq_len": %s%s}\n' \
		"$arch" "$layout" "$SEED" "$NSEQ" "$slen" "$extra" > "$OUT/$case/case.json"
done <<'CASES'
qwen3_moe_per_expert qwen3_moe per-expert
qwen3_moe_fused qwen3_moe fused
mixtral mixtral mixtral
qwen2_moe qwen2_moe per-expert
olmoe olmoe per-expert
llama llama default
qwen2 qwen2 default
qwen3 qwen3 default
qwen3_5_moe qwen3_5_moe fused 80
qwen3_5_moe_text qwen3_5_moe_text fused 80
qwen3_next qwen3_next per-expert 80
gpt_oss gpt_oss default 160
gpt_oss_mxfp4 gpt_oss mxfp4 160
deepseek_v3 deepseek_v3 per-expert
deepseek_v2_q_proj deepseek_v3 per-expert - --q-lora-null
deepseek_v3_fp8 deepseek_v3 per-expert - --fp8-block=16
CASES
echo "references in $OUT; copy each case folder into tests/parity/"
