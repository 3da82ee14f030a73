#!/bin/sh
# run_scaling.sh BUILD_DIR OUT_DIR — how `calibd quantize` grows (issue 12's
# scaling table in tests/bench/README.md), warm page cache, one GPU:
#   tokens 64k / 256k / 1M (128 / 512 / 2048 sequences of 512) on the 8-layer
#   128-expert checkpoint; layers 4 / 8 / 16; experts 64 / 128 (8 layers).
# Checkpoints come from moe_baseline.py (GEN_ONLY=1) under /tmp/scal.  Each
# line: end to end, calibration, the export stages, finish.  Prints numbers.
set -u
b=${1:?build dir}; out=${2:?output dir}
here=$(dirname "$0"); mkdir -p "$out" /tmp/scal
export CALIBD_RECIPES_DIR="$here/../../recipes"
gen() { # DIR LAYERS EXPERTS SEQS
	D=$1 NL=$2 NE=$3 NS=$4 GEN_ONLY=1 KEEP_CACHE=1 PYTHONUNBUFFERED=1 \
		python3 "$here/moe_baseline.py" >/dev/null 2>>"$out/gen.err" || tail -5 "$out/gen.err"
}
one() { # LABEL DIR TOKENS
	cat "$2"/*.safetensors >/dev/null # warm
	rm -rf /tmp/scal/calibd-bench-out
	"$b/cli/calibd" bench quantize --model "$2" --tokens "$3" --out-parent /tmp/scal --warm \
		--no-disk --json "$out/$1.json" >"$out/$1.txt" 2>&1 || tail -3 "$out/$1.txt"
	python3 - "$1" "$out/$1.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[2])); p = j["report"]["phases_s"]; c = j["report"]["calibration"]
print(f"{sys.argv[1]:14s} tokens {c['tokens']:8d}  end to end {j['wall_s']:6.2f} s  calibrate "
      f"{p['calibrate']:6.2f} s ({c['tokens'] / p['calibrate'] / 1e3:5.0f}k tok/s)  quantize stage "
      f"{p['export_layers']:5.2f} s  writer {p['export_write']:5.2f} s  drain {p['export_drain']:5.2f} s  "
      f"finish {p['finish']:5.2f} s  output {j['output_GB']:5.2f} GB")
PY
}
gen /tmp/scal/l8e128 8 128 2048
python3 -c "
import json
rows = [json.loads(l) for l in open('/tmp/scal/l8e128.tokens.jsonl')]
for n in (128, 512):
    with open(f'/tmp/scal/tok{n}.jsonl', 'w') as f:
        for r in rows[:n]: f.write(json.dumps(r) + '\n')"
one tokens_64k /tmp/scal/l8e128 /tmp/scal/tok128.jsonl
one tokens_256k /tmp/scal/l8e128 /tmp/scal/tok512.jsonl
one tokens_1M /tmp/scal/l8e128 /tmp/scal/l8e128.tokens.jsonl
gen /tmp/scal/l4e128 4 128 512
one layers_4 /tmp/scal/l4e128 /tmp/scal/tok512.jsonl
gen /tmp/scal/l16e128 16 128 512
one layers_16 /tmp/scal/l16e128 /tmp/scal/tok512.jsonl
rm -rf /tmp/scal/l16e128 /tmp/scal/l4e128
gen /tmp/scal/l8e64 8 64 512
one experts_64 /tmp/scal/l8e64 /tmp/scal/tok512.jsonl
