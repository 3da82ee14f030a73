#!/bin/sh
# demo.sh — the main job, from a fresh Debian 12 machine: installs what is
# missing, builds calibd (with the CUDA back end when nvcc is present), then
#   1. generates a tiny random Qwen3-MoE checkpoint and a small text dataset,
#   2. starts the daemon on 127.0.0.1 (an ephemeral port),
#   3. submits a quantization job with curl (experts-only NVFP4, FP8 KV cache),
#   4. follows its progress (Server-Sent Events) to the end,
#   5. prints the result and verifies the published checkpoint,
#   6. stops the daemon.
# The job runs on a GPU when the daemon finds one, else on the CPU.
# Everything is written under out/demo/.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
	build=build/cuda; sh scripts/build.sh build/cuda -Dcuda=enabled
else
	build=build/cpu; sh scripts/build.sh build/cpu -Dcuda=disabled
fi
calibd=$build/cli/calibd
echo "== $($calibd version | tr '\n' ' ')"

W=$(pwd)/out/demo
rm -rf "$W"
mkdir -p "$W/models" "$W/data" "$W/outputs" "$W/state"

echo "== 1. a tiny Qwen3-MoE checkpoint and a calibration dataset"
$build/tests/fixtures/calibd-fixture --arch qwen3_moe --seed 1 "$W/models/qwen3-moe-tiny" >/dev/null
$calibd inspect "$W/models/qwen3-moe-tiny"
i=0
while [ $i -lt 32 ]; do
	printf '{"text": "Sample %d: calibration data flows through every layer of the model, and each expert records the largest magnitude it sees. The quick brown fox jumps over the lazy dog %d times."}\n' $i $((i * 7)) >> "$W/data/calib.jsonl"
	i=$((i + 1))
done
# held-out data for the evaluation (not the calibration text)
i=0
while [ $i -lt 8 ]; do
	printf '{"text": "Held-out %d: a quantized model should predict the next token like the original one does; here the evaluation measures how far it drifts after %d layers."}\n' $i $((i + 3)) >> "$W/data/heldout.jsonl"
	i=$((i + 1))
done

echo "== 2. calibd serve on 127.0.0.1"
$calibd serve --listen 127.0.0.1 --port 0 --port-file "$W/port" --admin-port 0 --state-dir "$W/state" \
	--model-root "$W/models" --data-root "$W/data" --output-root "$W/outputs" \
	--log-format text > "$W/daemon.log" 2>&1 &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT INT TERM
n=0
until [ -s "$W/port" ] && curl -sf "http://127.0.0.1:$(cat "$W/port")/readyz" >/dev/null; do
	n=$((n + 1))
	[ $n -lt 100 ] || { echo "daemon did not become ready:"; cat "$W/daemon.log"; exit 1; }
	sleep 0.1
done
api="http://127.0.0.1:$(cat "$W/port")"
echo "daemon ready at $api"

echo "== 3. POST /v1/jobs"
cat > "$W/job.json" <<JSON
{
  "name": "demo-qwen3-moe-nvfp4",
  "model": "$W/models/qwen3-moe-tiny",
  "recipe": "general/ptq/nvfp4_experts_only-kv_fp8",
  "calibration": {"datasets": ["$W/data/calib.jsonl"], "samples": 32, "seq_len": 64},
  "evaluate": {"dataset": "$W/data/heldout.jsonl", "samples": 8},
  "output": "$W/outputs/qwen3-moe-tiny-nvfp4"
}
JSON
curl -sS -X POST "$api/v1/jobs" -H 'Content-Type: application/json' \
	-H 'Idempotency-Key: demo-1' --data-binary @"$W/job.json" | tee "$W/submitted.json" | jq .
id=$(jq -r .id "$W/submitted.json")

echo "== 4. GET /v1/jobs/$id/events (progress until the job ends)"
curl -sSN "$api/v1/jobs/$id/events" | while IFS= read -r line; do
	case "$line" in
	data:*) echo "${line#data: }" | jq -c '{state, phase: .progress.phase, layer: .progress.layer,
		layers: .progress.layers, tokens_per_s: .progress.tokens_per_s,
		bytes_written: .progress.bytes_written}' ;;
	esac
done

echo "== 5. GET /v1/jobs/$id"
curl -sS "$api/v1/jobs/$id" | tee "$W/job-final.json" | jq '{id, state, error, result}'
[ "$(jq -r .state "$W/job-final.json")" = succeeded ] || { echo "job did not succeed"; exit 1; }
out=$(jq -r .result.output "$W/job-final.json")
echo "== quality (evaluate: KL, top-1 agreement, perplexity on held-out data; docs/eval.md)"
jq '.result.evaluation' "$W/job-final.json"
echo "== GET /v1/jobs/$id/report.html (the report page: inline SVG plots)"
curl -sSf "$api/v1/jobs/$id/report.html" -o "$W/report.html"
echo "$W/report.html: $(wc -c < "$W/report.html") bytes, $(grep -c '<svg id="plot-' "$W/report.html") plots"
echo "== calibd verify $out"
$calibd verify "$out" --source "$W/models/qwen3-moe-tiny"
echo "== $out/hf_quant_config.json"
cat "$out/hf_quant_config.json"

echo "== 6. stopping the daemon"
kill -TERM $daemon
wait $daemon || true
trap - EXIT INT TERM
echo "done: the quantized checkpoint is in $out"
