#!/bin/sh
# demo.sh — the main job, from a fresh Debian 12 machine: installs what is
# missing, builds, generates a tiny MoE checkpoint and describes it.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh build/cpu -Dcuda=disabled
echo "calibd built: $(build/cpu/daemon/calibd version | head -1)"

# A tiny random Qwen3-MoE checkpoint (docs/fixtures.md), described by
# `calibd inspect` in both forms (docs/inspect.md).
mkdir -p out
rm -rf out/demo-qwen3_moe
build/cpu/tests/fixtures/calibd-fixture --arch qwen3_moe --seed 1 out/demo-qwen3_moe
echo "== calibd inspect out/demo-qwen3_moe"
build/cpu/daemon/calibd inspect out/demo-qwen3_moe
echo "== calibd inspect out/demo-qwen3_moe --json"
build/cpu/daemon/calibd inspect out/demo-qwen3_moe --json
