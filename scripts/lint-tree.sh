#!/bin/sh
# lint-tree.sh [SRCDIR] — checks the shape of the tree (docs/architecture.md
# "Layers"); the unit suite runs it (test 'lint_tree').  Three rules:
#   1. includes point down the layers, never up:
#        common < kernels < engine < api, daemon < cli
#      api/ includes from daemon/ only the job table (daemon.h, config.h,
#      log.h) and from engine/ only the job entry point (engine/job.h);
#      daemon/ includes from api/ only the job spec (jobspec.h, errors.h)
#      and from engine/ and kernels/ only in the worker (worker*.c); tests/ may include
#      anything.
#   2. comments and docs cite the repository's own docs/ (by section title),
#      never a design note that is not in the repository.
#   3. no source file has more than 1,200 lines.
# Prints every violation as FILE:LINE: what; exits 1 if there is one.
set -u
src=${1:-$(dirname "$0")/..}
cd "$src" || exit 2

max_lines=1200
# files allowed over the limit, each with the issue that splits it
over_limit_ok=''

fail=0
report() { printf '%s\n' "$*"; fail=1; }

# ---- 1. layers ---------------------------------------------------------------
allowed() { # allowed FROM_FILE INCLUDED_PATH -> 0 if the include is allowed
	from=$1 inc=$2
	case $inc in */*) ;; *) return 0 ;; esac  # same folder
	top=${inc%%/*}
	case $from in
	common/*) case $top in common) return 0 ;; esac ;;
	kernels/*) case $top in common | kernels) return 0 ;; esac ;;
	engine/*) case $top in common | kernels | engine) return 0 ;; esac ;;
	api/*)
		case $inc in
		common/* | api/* | daemon/daemon.h | daemon/config.h | daemon/log.h | engine/job.h) return 0 ;;
		esac ;;
	daemon/*)
		case $inc in
		common/* | daemon/* | api/jobspec.h | api/errors.h) return 0 ;;
		engine/* | kernels/*) case $from in daemon/worker*.c) return 0 ;; esac ;;
		esac ;;
	cli/*) case $top in common | kernels | engine | api | daemon | cli) return 0 ;; esac ;;
	*) return 0 ;;
	esac
	return 1
}

bad=$(for f in $(find common kernels engine api daemon cli -type f \
	\( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.def' \) | sort); do
	grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" |
		sed 's/^\([0-9]*\):[^"]*"\([^"]*\)".*/\1 \2/' |
		while read -r line inc; do
			allowed "$f" "$inc" && continue
			echo "$f:$line: includes $inc, which its layer may not use"
		done
done)
if [ -n "$bad" ]; then printf '%s\n' "$bad"; fail=1; fi

# ---- 2. citations -----------------------------------------------------------
notes='ARCHITECTURES\.md\|MODELOPT\.md\|RELIABILITY\.md\|DESIGN\.md\|STYLE\.md\|FIELD\.md\|NUMERICS\.md\|docs/DESIGN'
hits=$(grep -rn "$notes" --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' \
	--include='*.def' --include='*.md' --include='*.sh' --include='*.py' --include='*.yaml' \
	--include='*.yml' --include='meson.build' --include='*.txt' --include='Dockerfile' \
	common kernels engine api daemon cli tests scripts docs deploy systemd recipes \
	README.md meson.build meson_options.txt .ci 2>/dev/null |
	grep -v '^scripts/lint-tree\.sh:')
if [ -n "$hits" ]; then
	printf '%s\n' "$hits" | sed 's/$/  <- cites a design note that is not in the repository (cite docs\/)/'
	fail=1
fi
# numbered sections (§1.3) belong to notes outside the repository: our docs
# are cited by section title
hits=$(grep -rn '§' --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' \
	--include='*.def' --include='*.md' --include='*.sh' --include='*.py' --include='*.yaml' \
	--include='meson.build' common kernels engine api daemon cli tests scripts docs deploy \
	systemd README.md 2>/dev/null | grep -v '^scripts/lint-tree\.sh:\|^docs/measurements/')
if [ -n "$hits" ]; then
	printf '%s\n' "$hits" | sed 's/$/  <- a numbered section of an outside note (cite a docs\/ section by title)/'
	fail=1
fi

# ---- 3. file length -----------------------------------------------------------
for f in $(find common kernels engine api daemon cli tests scripts -type f \
	\( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.def' \
	-o -name '*.py' -o -name '*.sh' \) | sort); do
	n=$(wc -l < "$f")
	[ "$n" -le $max_lines ] && continue
	case " $over_limit_ok " in *" $f "*) continue ;; esac
	report "$f:$n: has $n lines; the limit is $max_lines (split it along a seam)"
done

exit $fail
