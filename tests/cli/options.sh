#!/bin/sh
# options.sh — the one-shot commands' options as the user sees them, now
# that they come from one table (cli/cli_util.c cal_cli_options): every
# command answers --help (usage on stdout, exit 0) and -h, refuses an
# unknown option with usage on stderr (exit 2), and knows each long option
# it lists.  Usage: options.sh CALIBD RECIPES_DIR
set -eu
calibd=$1
recipes=$2
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
# the commands with getopt tables, and one long option each lists
for c in "export --per-expert-input-amax" "verify --json" "plan --recipes-dir x" \
	"recipes --json" "report --eval x" "calibrate --pad-like-modelopt" \
	"eval --layer-kl-positions 1" "quantize --progress-fd 9" "bench --iters 1" \
	"bench calibrate --no-profile" "bench quantize --no-disk" "inspect --json" \
	"tokenize --ids" "calibrate --kv-cache-qformat none" "export --kv-cache-qformat none" \
	"plan --kv-cache-qformat none" "quantize --kv-cache-qformat none"; do
	cmd=${c%% --*}
	opt=--${c#* --}
	# shellcheck disable=SC2086
	"$calibd" $cmd --help > "$t/out" 2> "$t/err" || fail "$cmd --help exited $?"
	grep -q '^usage: calibd' "$t/out" || fail "$cmd --help: no usage on stdout"
	[ ! -s "$t/err" ] || fail "$cmd --help wrote on stderr"
	# shellcheck disable=SC2086
	"$calibd" $cmd -h > "$t/out" 2>&1 || fail "$cmd -h exited $?"
	rc=0
	# shellcheck disable=SC2086
	"$calibd" $cmd --no-such-option > "$t/out" 2> "$t/err" || rc=$?
	[ "$rc" = 2 ] || fail "$cmd --no-such-option exited $rc, not 2"
	grep -q 'usage: calibd' "$t/err" || fail "$cmd --no-such-option: no usage on stderr"
	# a listed option is known: whatever else goes wrong, not "unrecognized"
	# shellcheck disable=SC2086
	"$calibd" $c > "$t/out" 2> "$t/err" || true
	if grep -Eq "unrecognized option|unknown argument|unexpected argument" "$t/err"; then
		fail "$cmd does not know $opt"
	fi
done
# --kv-cache-qformat: the same help paragraph, from one table, in every
# command that takes it
for cmd in calibrate export plan quantize; do
	"$calibd" $cmd --help | grep -q 'kv_cache_qformat names:' || fail "$cmd --help: no --kv-cache-qformat"
	"$calibd" $cmd --help | grep -q 'nvfp4_rotate$' || fail "$cmd --help: no KV-cache format names"
done
# the short options of export, verify, plan and recipes
"$calibd" recipes -d "$recipes" -j > "$t/r.json" || fail "recipes -d DIR -j exited $?"
grep -q '"recipes"' "$t/r.json" || fail "recipes -j: no JSON"
rc=0
"$calibd" plan -m "$t/none" -r nvfp4 -j > "$t/out" 2> "$t/err" || rc=$?
[ "$rc" = 3 ] || fail "plan -m -r -j on a missing model exited $rc, not 3"
echo "ok"
