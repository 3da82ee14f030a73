#!/bin/sh
# arch_matrix.sh BUILD_DIR OUT_DIR [DEVICE...] — `calibd eval` on every tiny
# fixture architecture (and source layout) with several recipes: each
# fixture is made with calibd-fixture, quantized on the CPU, then evaluated
# on each DEVICE (default: cpu) on tests/eval/ref/held.jsonl; prints one line
# per case and device (KL mean / median, top-1, the layers' KL contributions
# summed against the final KL).  The unit test `eval` checks the CPU side;
# this script runs the same cases on the GPU machine (cpu cuda).
set -u
b=${1:?build dir}; out=${2:?output dir}; shift 2
[ $# -gt 0 ] || set -- cpu
here=$(cd "$(dirname "$0")" && pwd)
R=${CALIBD_RECIPES_DIR:-$here/../../recipes}; export CALIBD_RECIPES_DIR="$R"
mkdir -p "$out"
cases="qwen3_moe: qwen3_moe:--layout=per-expert qwen3_moe:--layout=fused qwen2_moe: mixtral:
olmoe: qwen3_next: qwen3_5_moe: qwen3_5_moe_text: deepseek_v3: deepseek_v3:--q-lora-null
deepseek_v3:--fp8-block=16 gpt_oss: gpt_oss:--layout=mxfp4 llama: qwen2: qwen3:"
recipes=${RECIPES:-"nvfp4_default-kv_fp8 fp8_default-kv_fp8 nvfp4_weight_only-kv_fp16 mxfp8"}
for cs in $cases; do
	a=${cs%%:*}; opt=$(echo "${cs#*:}" | tr '=' ' ')
	tag=$a$(echo "$opt" | tr -d ' -')
	d=$out/$tag
	rm -rf "$d"; mkdir -p "$d"
	# shellcheck disable=SC2086
	"$b/tests/fixtures/calibd-fixture" --arch "$a" $opt --seed 7 "$d/src" >/dev/null 2>"$d/fixture.err" ||
		{ echo "$tag: fixture failed: $(tail -1 "$d/fixture.err")"; continue; }
	for r in $recipes; do
		"$b/daemon/calibd" quantize --model "$d/src" --recipe "$R/general/ptq/$r.yaml" \
			--calib-tokens "$here/ref/calib.jsonl" --out "$d/$r" --device cpu --quiet \
			>/dev/null 2>"$d/$r.qerr" ||
			{ echo "$tag $r: not quantized: $(tail -1 "$d/$r.qerr")"; continue; }
		for dev in "$@"; do
			j=$d/$r.$dev.json
			if "$b/daemon/calibd" eval --model "$d/src" --quantized "$d/$r" --device "$dev" \
				--data-tokens "$here/ref/held.jsonl" --out "$j" --quiet 2>"$d/$r.$dev.err"; then
				python3 - "$j" "$tag" "$r" "$dev" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = sum(l["kl_contribution"] for l in j["layers"]) + j["layer_kl"]["lm_head_contribution"]
print("%-24s %-26s %-4s KL mean %.4g median %.4g top1 %.3f ppl %.1f->%.1f layers %d (sum of KL contributions %.4g = KL on %d positions %.4g) %d weights %.2fs"
      % (sys.argv[2], sys.argv[3], sys.argv[4], j["kl"]["mean"], j["kl"]["median"], j["top1_agreement"],
         j["perplexity"]["original"], j["perplexity"]["quantized"], len(j["layers"]), s,
         j["layer_kl"]["positions"], j["layer_kl"]["final_kl_on_positions"], j["quantized_weights"], j["seconds"]))
PY
			else
				echo "$tag $r $dev: eval failed: $(tail -1 "$d/$r.$dev.err")"
			fi
		done
	done
done
