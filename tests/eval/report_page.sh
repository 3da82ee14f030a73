#!/bin/sh
# report_page.sh — the report page (calibd report, docs/eval.md) rendered by
# headless Chromium: no console message at error level or above, and every
# plot present in the rendered DOM (SVG with its id; the expert plot of a
# layer where an expert saw no token carries its red cross).  Skips (77)
# without chromium.  Usage: report_page.sh CALIBD CALIBD_FIXTURE RECIPES_DIR
set -eu
calibd=$1
fixture=$2
recipes=$3
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "SKIP: chromium is not installed (scripts/deps.sh)"; exit 77; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
"$fixture" --arch qwen3_moe --seed 7 "$t/src" >/dev/null
# two short sequences: with 8 experts and top-2 routing some expert sees no token
printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 5]}\n' > "$t/calib.jsonl"
printf '{"input_ids": [7, 8, 9, 10, 11, 12]}\n' > "$t/held.jsonl"
"$calibd" quantize --model "$t/src" --recipe "$recipes/general/ptq/nvfp4_default-kv_fp8.yaml" \
	--calib-tokens "$t/calib.jsonl" --out "$t/q" --device cpu --quiet >/dev/null
"$calibd" eval --model "$t/src" --quantized "$t/q" --data-tokens "$t/held.jsonl" \
	--out "$t/eval.json" --quiet
"$calibd" report "$t/q" --eval "$t/eval.json" --html "$t/report.html"
if grep -Eq '(src|href)="(https?:)?//' "$t/report.html"; then
	echo "FAIL: the page refers to an external asset"; exit 1
fi
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --no-first-run \
	--user-data-dir="$t/profile" --enable-logging=stderr --v=0 \
	--dump-dom "file://$t/report.html" > "$t/dom.html" 2> "$t/console.txt"
if grep -E 'CONSOLE|Uncaught' "$t/console.txt" | grep -Eiv 'verbose|info'; then
	echo "FAIL: console messages above"; exit 1
fi
for id in plot-weight-sqnr plot-layer-error plot-layer-rel-error plot-expert-tokens-0 \
	plot-expert-tokens-2 plot-throughput; do
	grep -q "<svg id=\"$id\"" "$t/dom.html" || { echo "FAIL: no <svg id=$id> in the DOM"; exit 1; }
done
empty=$(jq '[.experts[].experts_without_tokens | length] | add' "$t/q/calibd_report.json")
marks=$(grep -o 'class="empty"' "$t/dom.html" | wc -l)
[ "$empty" -gt 0 ] || { echo "FAIL: the fixture was meant to leave an expert without tokens"; exit 1; }
[ "$marks" -eq "$empty" ] || { echo "FAIL: $empty experts without tokens, $marks marked"; exit 1; }
echo "report page: 6 plots rendered, $marks experts without tokens marked, no console errors"
