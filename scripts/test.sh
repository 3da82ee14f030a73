#!/bin/sh
# test.sh — the whole test suite, from a fresh Debian 12 machine:
# installs what is missing, then builds and tests
#   1. the CPU-only build            (unit, api and multigpu suites: CPU ranks)
#   1a. the API contract              (api/openapi.yaml validated, then checked with
#                                     schemathesis against a live daemon:
#                                     scripts/api-contract.sh; tools from PyPI)
#   1b. release and plain builds     (compile only, -Werror: what packagers build)
#   1c. deploy checks                (kustomize + schema validation of deploy/k8s,
#                                     systemd-analyze verify/security of the unit)
#   2. the CUDA build, when nvcc is  (all suites; gpu/multigpu skip without a GPU)
#      present
#   3. an ASan+UBSan build           (unit suite)
#   4. the libFuzzer targets         (a short run of each)
# Exits non-zero on the first failure.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
jobs=$(nproc)

echo "== 1. CPU-only build"
# the recipe matrix runs modelopt's whole recipe tree here (from the
# nvidia-modelopt wheel on PyPI); elsewhere the 4 recipes of ../shared
mkdir -p build
mo=$(sh scripts/modelopt-recipes.sh "$PWD/build/modelopt_recipes")
if [ -n "$mo" ]; then
	echo "recipe matrix: modelopt's recipe tree from nvidia-modelopt 0.47.0 ($mo)"
	sh scripts/build.sh build/cpu -Dcuda=disabled -Dmodelopt_recipes="$mo"
else
	echo "recipe matrix: modelopt's recipe tree NOT available; the shared fixtures' recipes only"
	sh scripts/build.sh build/cpu -Dcuda=disabled
fi
meson test -C build/cpu --num-processes "$jobs" --print-errorlogs --suite unit --suite api --suite multigpu
echo "== 1a. API contract: openapi-spec-validator + schemathesis against a live daemon"
sh scripts/api-contract.sh build/cpu

echo "== 1b. release and plain builds (compile only)"
sh scripts/build.sh build/release -Dcuda=disabled -Dbuildtype=release
sh scripts/build.sh build/plain -Dcuda=disabled -Dbuildtype=plain

echo "== 1c. deploy checks"
sh scripts/check-deploy.sh

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
	echo "== 2. CUDA build"
	sh scripts/build.sh build/cuda -Dcuda=enabled
	meson test -C build/cuda --num-processes "$jobs" --print-errorlogs
else
	echo "== 2. CUDA build: SKIPPED (no nvcc on this machine)"
fi

echo "== 3. ASan + UBSan build"
sh scripts/build.sh build/asan -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS=suppressions="$PWD/tests/lsan.supp" \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	meson test -C build/asan --num-processes "$jobs" --print-errorlogs --suite unit
# Criterion runs each test in a child whose sanitizer report does not change
# the verdict: read the log instead.
if grep -nE 'ERROR: (Leak|Address)Sanitizer|runtime error:' build/asan/meson-logs/testlog.txt; then
	echo "sanitizer reports in the unit suite (see build/asan/meson-logs/testlog.txt)"
	exit 1
fi

echo "== 4. fuzz targets (short runs; docs/fuzzing.md for long ones)"
CC=clang sh scripts/build.sh build/fuzz -Dcuda=disabled -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
sh scripts/fuzz.sh build/fuzz 20
fuzz_targets=$(find build/fuzz/tests/fuzz -maxdepth 1 -type f -name 'fuzz_*' -perm -u+x | wc -l)
echo "== all test stages passed"
builds="build/cpu build/asan"
[ -d build/cuda ] && builds="build/cpu build/cuda build/asan"
# shellcheck disable=SC2086
FUZZ_TARGETS=$fuzz_targets python3 scripts/test-summary.py $builds
