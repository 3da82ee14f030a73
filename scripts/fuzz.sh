#!/bin/sh
# fuzz.sh BUILD_DIR SECONDS — runs every libFuzzer target of BUILD_DIR
# (built with -Dfuzz=true) for SECONDS each, seeded from tests/fuzz/corpus/<target>.
set -eu
dir=$1; secs=$2
found=0
for t in "$dir"/tests/fuzz/fuzz_*; do
	[ -x "$t" ] || continue
	found=1
	name=$(basename "$t")
	work=$(mktemp -d)
	seed="tests/fuzz/corpus/$name"
	[ -d "$seed" ] && cp -r "$seed"/. "$work"/
	echo "fuzz: $name for ${secs}s"
	"$t" -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 "$work" 2>&1 | tail -4
	rm -rf "$work"
done
[ $found -eq 1 ] || echo "fuzz: no targets built"
