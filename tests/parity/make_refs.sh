#!/bin/sh
# make_refs.sh — regenerates the parity reference data with Hugging Face
# transformers (run on a machine with torch + transformers, a GPU is
# optional).  For every case: the fixture (calibd-fixture, deterministic),
# a token file (fixed seed, equal-length rows, ids < the fixture vocab),
# the reference (shared/tools/hf_reference.py) and case.json.
#
#   sh tests/parity/make_refs.sh BUILD_DIR OUT_DIR [HF_REFERENCE_PY]
#
# Then copy OUT_DIR/<case>/ into tests/parity/<case>/ (tokens.jsonl,
# stats.json, hidden.safetensors, case.json) and run
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

# case arch layout (layout "default" = the release layout)
while read -r case arch layout; do
	[ -n "$case" ] || continue
	echo "== $case ($arch, $layout)"
	rm -rf "$TMP/$case" "$OUT/$case"
	if [ "$layout" = default ]; then
		"$FIX" --arch "$arch" --seed "$SEED" "$TMP/$case"
	else
		"$FIX" --arch "$arch" --layout "$layout" --seed "$SEED" "$TMP/$case"
	fi
	mkdir -p "$OUT/$case"
	python3 - "$TMP/$case/config.json" "$OUT/$case/tokens.jsonl" "$NSEQ" "$SEQ" "$SEED" <<'PY'
import json, random, sys
cfg = json.load(open(sys.argv[1]))
vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
n, s, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = random.Random(seed)
with open(sys.argv[2], "w") as f:
    for _ in range(n):
        f.write(json.dumps({"input_ids": [r.randrange(vocab) for _ in range(s)]}) + "\n")
PY
	python3 "$HFREF" "$TMP/$case" "$OUT/$case/tokens.jsonl" "$OUT/$case"
	printf '{"arch": "%s", "layout": "%s", "seed": %s, "sequences": %s, "seq_len": %s}\n' \
		"$arch" "$layout" "$SEED" "$NSEQ" "$SEQ" > "$OUT/$case/case.json"
done <<'CASES'
qwen3_moe_per_expert qwen3_moe per-expert
qwen3_moe_fused qwen3_moe fused
mixtral mixtral mixtral
qwen2_moe qwen2_moe per-expert
olmoe olmoe per-expert
llama llama default
qwen2 qwen2 default
qwen3 qwen3 default
CASES
echo "references in $OUT; copy each case folder into tests/parity/"
