#!/bin/sh
# fuzz.sh BUILD_DIR SECONDS — runs every libFuzzer target of BUILD_DIR
# (built with -Dfuzz=true) for SECONDS each, seeded from tests/fuzz/corpus/<target>.
set -eu
dir=$1; secs=$2
found=0
for t in "$dir"/tests/fuzz/fuzz_*; do
	[ -f "$t" ] && [ -x "$t" ] || continue
	found=1
	name=$(basename "$t")
	work=$(mktemp -d)
	seed="tests/fuzz/corpus/$name"
	[ -d "$seed" ] && cp -r "$seed"/. "$work"/
	dict=""
	[ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
	echo "fuzz: $name for ${secs}s"
	# no pipe: a crash must fail the script (sh has no pipefail)
	if ! "$t" -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 $dict "$work" >"$work.log" 2>&1; then
		tail -40 "$work.log"
		echo "fuzz: $name FAILED (reproducer: crash-*/leak-*/timeout-* in $(pwd))"
		rm -rf "$work" "$work.log"
		exit 1
	fi
	tail -4 "$work.log"
	rm -rf "$work" "$work.log"
done
[ $found -eq 1 ] || echo "fuzz: no targets built"
