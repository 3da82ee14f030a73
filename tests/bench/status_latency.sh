#!/bin/sh
# tests/bench/status_latency.sh [BUILD_DIR] — latency of GET /v1/jobs/{id} while a
# job runs: starts `calibd serve` on 127.0.0.1 (temp state dir), submits a
# job, waits until it runs, then drives the status route with wrk (latency
# distribution) and prints p50 / p99.  A benchmark, not a test: it needs wrk
# (`apt-get install wrk`) and curl, and takes ~15-30 s.
#
#   WORKER=real  (default) a real CPU quantization of the tiny qwen3_moe
#                fixture: SAMPLES x 512 calibration tokens (default 128,
#                about 20 s on a 2-core VM), so the worker competes with the
#                daemon for the CPU as a real job does
#   WORKER=fake  the api suite's fake worker (fake-slow-N: a progress line
#                every 100 ms, no CPU load)
#   DURATION=10 CONNECTIONS=64 THREADS=2   wrk's -d, -c, -t
set -eu
build=${1:-build/cpu}
WORKER=${WORKER:-real}
SAMPLES=${SAMPLES:-128}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
calibd=$(realpath "$build/cli/calibd")
fixture=$(realpath "$build/tests/fixtures/calibd-fixture")
fake=$(realpath "$build/tests/api/fake_worker")
command -v wrk >/dev/null || { echo "status_latency: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "status_latency: curl is not installed" >&2; exit 2; }

tmp=$(mktemp -d /tmp/calibd-bench-XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
mkdir -p "$tmp/models" "$tmp/data" "$tmp/out" "$tmp/state"
"$fixture" --arch qwen3_moe --seed 1 "$tmp/models/m" >/dev/null
# SAMPLES sequences of 512 token ids below the fixture's vocabulary (320)
awk -v n="$SAMPLES" 'BEGIN { for (s = 0; s < n; s++) { printf "{\"input_ids\":[";
	for (i = 0; i < 512; i++) printf "%s%d", (i ? "," : ""), (s * 37 + i * 11) % 300 + 1; print "]}" } }' \
	>"$tmp/data/tokens.jsonl"

worker_flags=
name=bench
if [ "$WORKER" = fake ]; then
	worker_flags="--worker-command $fake"
	name=fake-slow-400
fi
# shellcheck disable=SC2086
"$calibd" serve --listen 127.0.0.1 --port 0 --port-file "$tmp/port" --admin-port 0 --state-dir "$tmp/state" \
	--model-root "$tmp/models" --data-root "$tmp/data" --output-root "$tmp/out" --devices none \
	--min-free-percent 0 --max-connections 1024 --per-ip-connections 1024 $worker_flags \
	2>"$tmp/daemon.log" &
pid=$!
i=0
while [ ! -s "$tmp/port" ]; do
	i=$((i + 1)); [ $i -gt 100 ] && { echo "the daemon did not start" >&2; cat "$tmp/daemon.log" >&2; exit 1; }
	sleep 0.1
done
url="http://127.0.0.1:$(cat "$tmp/port")"
id=$(curl -sf -X POST "$url/v1/jobs" -H 'Content-Type: application/json' -d "{\"name\":\"$name\",
	\"model\":\"$tmp/models/m\",\"recipe\":\"general/ptq/nvfp4_experts_only-kv_fp8\",
	\"calibration\":{\"tokens\":\"$tmp/data/tokens.jsonl\",\"samples\":$SAMPLES,\"seq_len\":512},
	\"output\":\"$tmp/out/q\",\"devices\":\"cpu\"}" | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || { echo "submission failed" >&2; cat "$tmp/daemon.log" >&2; exit 1; }
i=0
until curl -sf "$url/v1/jobs/$id" | grep -q '"state":"running"'; do
	i=$((i + 1)); [ $i -gt 100 ] && { echo "the job did not start" >&2; exit 1; }
	sleep 0.1
done
sleep 1 # past start-up: the worker is calibrating

wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url/v1/jobs/$id" >"$tmp/wrk.txt"
state=$(curl -sf "$url/v1/jobs/$id" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
cat "$tmp/wrk.txt"
p50=$(awk '$1 == "50%" { print $2 }' "$tmp/wrk.txt")
p99=$(awk '$1 == "99%" { print $2 }' "$tmp/wrk.txt")
rps=$(awk '/^Requests\/sec/ { print $2 }' "$tmp/wrk.txt")
errs=$(awk '/Non-2xx|Socket errors/ { print }' "$tmp/wrk.txt")
echo
echo "GET /v1/jobs/{id} while a job runs (worker=$WORKER, ${CONNECTIONS} connections, ${DURATION} s, $(nproc) CPUs):"
echo "  p50 $p50  p99 $p99  requests/s $rps  job state after the run: $state"
[ -n "$errs" ] && echo "  $errs"
[ "$state" = running ] || echo "  note: the job was no longer running at the end (raise SAMPLES)"
curl -sf -X DELETE "$url/v1/jobs/$id" >/dev/null || true
exit 0
