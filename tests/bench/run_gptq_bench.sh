#!/bin/sh
# run_gptq_bench.sh BUILD_DIR OUT_DIR — GPTQ speed (docs/gptq.md "Speed") on a
# GPU machine with torch, transformers and nvidia-modelopt 0.47:
#   0. the GPTQ recipe on a tiny fixture on the GPU and on the CPU (codes
#      that differ between the two back ends);
#   1. the pipeline benchmark's 8-layer Qwen3-30B-A3B-shaped checkpoint and
#      NS x SEQ tokens (moe_baseline.py, GEN_ONLY=1; NS default 64 here);
#   2. `calibd quantize` with modelopt's nvfp4_default-kv_none-gptq recipe,
#      then with its max twin (the same formats, algorithm max), each twice
#      (the first runs are kept as *_cold.json);
#   3. real modelopt's GPTQ on the same checkpoint and tokens
#      (modelopt_compare.py, the recipe's layerwise checkpoint files off),
#      its export_hf_checkpoint timed as calibd's export is (MO_EXPORT=0
#      leaves it out); the two outputs are not compared (GPTQ's codes
#      differ by design); MODELOPT=0 skips; MO_TIMEOUT seconds, default 300.
# A benchmark: it prints numbers, judges none.
set -u
b=${1:?build dir}; out=${2:?output dir}
D=${D:-/tmp/q30}; export D
NS=${NS:-64}; export NS
DEV=${DEV:-cuda}   # DEV=cpu GEN=0 with D a small checkpoint: a dry run of the script
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
R=${RECIPE:-$(python3 -c 'import modelopt_recipes as m, os; print(os.path.dirname(m.__file__))')/general/ptq/nvfp4_default-kv_none-gptq.yaml}
sed 's/method: gptq/method: max/' "$R" >"$out/max_twin.yaml"
export CALIBD_RECIPES_DIR="$here/../../recipes"
# 0. GPU vs CPU on a fixture
f=/tmp/gq_fixture; rm -rf $f /tmp/gq_fx_cpu /tmp/gq_fx_cuda
"$b/tests/fixtures/calibd-fixture" --arch qwen3_moe $f >/dev/null
head -4 "$here/../parity/qwen3_moe_fused/tokens.jsonl" >$f.tokens.jsonl
for dev in cpu $DEV; do
	"$b/cli/calibd" quantize --model $f --calib-tokens $f.tokens.jsonl --recipe "$R" \
		--device $dev --out /tmp/gq_fx_$dev --quiet >/dev/null 2>"$out/fixture_$dev.err"
done
python3 - /tmp/gq_fx_$DEV/model.safetensors <<'PY' | tee "$out/fixture_cpu_cuda.txt"
import sys, torch
from safetensors.torch import load_file
a = load_file("/tmp/gq_fx_cpu/model.safetensors"); b = load_file(sys.argv[1])
n = d = 0
for k in a:
    if k.endswith(".weight") and a[k].dtype == torch.uint8 and "experts" not in k:
        x, y = a[k], b[k]
        cx = torch.stack([x & 15, x >> 4], -1); cy = torch.stack([y & 15, y >> 4], -1)
        n += cx.numel(); d += int((cx != cy).sum())
print(f"fixture GPTQ linears: {d} of {n} codes differ between the CPU and the other device")
PY
# 1. the checkpoint and tokens
[ "${GEN:-1}" = 0 ] || PYTHONUNBUFFERED=1 GEN_ONLY=1 python3 "$here/moe_baseline.py" >"$out/gen.json" \
	2>"$out/gen.err" || tail -20 "$out/gen.err"
q() { "$b/cli/calibd" quantize --model "$D" --calib-tokens "$D.tokens.jsonl" --device $DEV --json "$@"; }
# 2. calibd: GPTQ, then max, twice each: the first runs (*_cold.json) pay
#    the freshly written checkpoint's write-back and the first process's
#    driver and page-cache warm-up; the second (gptq.json, max.json) are the
#    numbers compared with modelopt
sync
for run in _cold ""; do
	rm -rf /tmp/gq_gptq /tmp/gq_max
	q --recipe "$R" --out /tmp/gq_gptq >"$out/gptq$run.json" 2>"$out/gptq$run.err"
	tail -3 "$out/gptq$run.err"
	q --recipe "$out/max_twin.yaml" --out /tmp/gq_max >"$out/max$run.json" 2>"$out/max$run.err"
	tail -3 "$out/max$run.err"
done
python3 - "$out" <<'PY' | tee "$out/calibd.txt"
import json, sys
o = sys.argv[1]
for n in ("gptq_cold", "max_cold", "gptq", "max"):
    try:
        j = json.load(open(f"{o}/{n}.json"))
    except Exception as e:
        print(n, "no result:", e); continue
    p = j.get("phases_s", {})
    try:
        g = json.load(open(f"/tmp/gq_{n}/calibd_report.json"))["gptq"]
        print(f"calibd {n}: gptq factorisations {g['factor_s']:.2f} s, passes {g['pass_s']}")
    except Exception:
        pass
    print(f"calibd {n}: wall {j['wall_s']:.2f} s, calibrate {p.get('calibrate', 0):.2f} s, "
          f"gptq solve {p.get('gptq_solve', 0):.2f} s, tokens {j['calibration']['tokens']}, "
          f"fallbacks {j.get('gptq_fallback')}")
PY
[ "${MODELOPT:-1}" = 0 ] && exit 0
# 3. modelopt
PYTHONUNBUFFERED=1 timeout "${MO_TIMEOUT:-300}" python3 "$here/modelopt_compare.py" --model "$D" \
	--tokens "$D.tokens.jsonl" --recipe "$R" --no-layerwise-checkpoints --no-compare \
	$([ "${MO_EXPORT:-1}" = 0 ] && echo --skip-export) \
	--calibd-out /tmp/gq_gptq --calibd-json "$out/gptq.json" --out "${D}_modelopt_gptq" \
	--batch "${BS:-16}" --device $DEV --json "$out/modelopt.json" >"$out/modelopt.txt" \
	2>"$out/modelopt.err"
echo "modelopt exit $?"
grep -E "GPTQ time|^modelopt|calibd end" "$out/modelopt.txt"
rm -rf "${D}_modelopt_gptq"; tail -3 "$out/modelopt.err"
