#!/bin/sh
# api-contract.sh [BUILD_DIR] — checks api/openapi.yaml against the daemon:
#   1. openapi-spec-validator: the document is valid OpenAPI 3.0;
#   2. schemathesis: a bounded run of generated requests (valid and invalid)
#      against a live `calibd serve` on 127.0.0.1 (ephemeral ports, temp
#      state dir, the api suite's fake worker), with a token file; fails on
#      any answer the spec does not describe (a status code it does not
#      list, a content type or body that does not match, a 5xx, an invalid
#      request accepted, ...).
# Settings: scripts/api-contract.toml.  The tools are installed from PyPI into BUILD_DIR/contract-venv at the
# versions of scripts/api-contract-requirements.txt.  BUILD_DIR (default
# build/cpu) must hold a built daemon.  Bounds: CONTRACT_EXAMPLES requests
# per operation (default 40) and CONTRACT_MAX_TIME seconds (default 120).
set -eu
cd "$(dirname "$0")/.."
build=${1:-build/cpu}
examples=${CONTRACT_EXAMPLES:-40}
max_time=${CONTRACT_MAX_TIME:-120}
calibd=$(cd "$build" && pwd)/cli/calibd
fake=$(cd "$build" && pwd)/tests/api/fake_worker
[ -x "$calibd" ] && [ -x "$fake" ] || { echo "api-contract: build $build first" >&2; exit 1; }

venv=$build/contract-venv
if ! "$venv/bin/python" -c 'import schemathesis, openapi_spec_validator' 2>/dev/null; then
	echo "-- installing openapi-spec-validator and schemathesis into $venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check -r scripts/api-contract-requirements.txt
fi

echo "-- openapi-spec-validator $("$venv/bin/pip" show openapi-spec-validator | sed -n 's/^Version: //p'): api/openapi.yaml"
"$venv/bin/openapi-spec-validator" api/openapi.yaml

tmp=$(mktemp -d /tmp/calibd-contract-XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
mkdir -p "$tmp/models/m" "$tmp/data" "$tmp/out" "$tmp/state"
echo '{"model_type":"qwen3_moe","num_hidden_layers":2,"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"intermediate_size":128,"moe_intermediate_size":32,"num_experts":4,"num_experts_per_tok":2,"vocab_size":320}' \
	> "$tmp/models/m/config.json"
echo '{"input_ids":[1,2,3,4]}' > "$tmp/data/tokens.jsonl"
token=contract-test-token
printf '%s\n' "$token" > "$tmp/tokens"
chmod 600 "$tmp/tokens"
"$calibd" serve --listen 127.0.0.1 --port 0 --port-file "$tmp/port" --admin-port 0 \
	--state-dir "$tmp/state" --model-root "$tmp/models" --data-root "$tmp/data" --output-root "$tmp/out" \
	--devices none --worker-command "$fake" --recipes-dir "$PWD/recipes" --min-free-percent 0 \
	--token-file "$tmp/tokens" --per-ip-connections 256 2>"$tmp/daemon.log" &
pid=$!
i=0
until [ -s "$tmp/port" ]; do
	i=$((i + 1))
	[ $i -le 100 ] || { echo "api-contract: the daemon did not start" >&2; cat "$tmp/daemon.log" >&2; exit 1; }
	sleep 0.1
done
url="http://127.0.0.1:$(cat "$tmp/port")"
echo "-- schemathesis $("$venv/bin/pip" show schemathesis | sed -n 's/^Version: //p'): $url, every check," \
	"at most $examples examples per operation, at most $max_time s"
rc=0
"$venv/bin/schemathesis" --config-file scripts/api-contract.toml run api/openapi.yaml --url "$url" \
	--header "Authorization: Bearer $token" \
	--max-examples "$examples" --max-time "$max_time" --seed 1 \
	--workers 2 --request-timeout 20 --generation-database none --no-color \
	--report junit --report-dir "$build/contract-report" >"$tmp/schemathesis.log" 2>&1 || rc=$?
mkdir -p "$build/contract-report"
cp "$tmp/schemathesis.log" "$build/contract-report/schemathesis.log"
# schemathesis closes with a pytest-style "=== N warnings in Ts ===" banner; CI
# readers take such a banner for a pytest run that executed no test, so the
# banner is reworded and the log is shown whole only when the run failed.
if [ $rc -eq 0 ]; then
	grep -E '^ *✅ +[A-Z].*\(in [0-9.]+s\)' "$tmp/schemathesis.log" | sed -E 's/^ *✅ +/   phase ok: /' || true
else
	sed -E 's/^=+ (.*) =+$/-- schemathesis: \1/' "$tmp/schemathesis.log"
fi
if ! kill -0 "$pid" 2>/dev/null; then
	echo "api-contract: the daemon died during the run" >&2
	cat "$tmp/daemon.log" >&2
	rc=1
fi
[ $rc -eq 0 ] && echo "-- api contract: OK" || echo "-- api contract: FAILED (report: $build/contract-report)"
exit $rc
