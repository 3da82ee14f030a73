#!/bin/sh
# make_fingerprints.sh — regenerates the real-modelopt fingerprints of the
# differential test (docs/modelopt_diff.md) on the CPU.
#
#   sh tests/modelopt/make_fingerprints.sh BUILD_DIR [PYTHON]
#   (ONLY="case1 case2" limits it to those rows of cases.txt)
#
# PYTHON (default /opt/hfenv/bin/python) needs torch, transformers,
# safetensors and nvidia-modelopt; its output goes to
# tests/modelopt/fingerprints/<case>/<recipe>.json.  Then run
#   meson test -C BUILD_DIR modelopt_diff
# and commit the fingerprints.
set -eu
BUILD=${1:?usage: make_fingerprints.sh BUILD_DIR [PYTHON]}
PY=${2:-/opt/hfenv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
FIX="$BUILD/tests/fixtures/calibd-fixture"
[ -x "$FIX" ] || { echo "make_fingerprints.sh: $FIX not built" >&2; exit 2; }
"$PY" -c 'import torch, transformers, safetensors, modelopt' ||
	{ echo "make_fingerprints.sh: $PY lacks torch/transformers/safetensors/modelopt" >&2; exit 2; }
only=$(echo "${ONLY:-}" | tr ' ' ',')
exec "$PY" "$HERE/modelopt_fingerprints.py" --fixture-bin "$FIX" \
	--parity-dir "$HERE/../parity" --out "$HERE/fingerprints" ${only:+--only "$only"}
