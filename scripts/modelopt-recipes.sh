#!/bin/sh
# modelopt-recipes.sh DIR — unpacks modelopt's recipe tree (modelopt_recipes/
# of the nvidia-modelopt 0.47.0 wheel, from PyPI) into DIR, for the recipe
# matrix test (tests/quantize/test_recipe_matrix.c, -Dmodelopt_recipes).
# Nothing of it enters the repository.  Prints DIR on success; on failure
# (no network, say) prints nothing and says why on stderr, and the test then
# runs on ../shared/fixtures/modelopt_recipes, naming the recipes it lacks.
set -eu
dir=$1
version=0.47.0
[ -f "$dir/.version-$version" ] && { echo "$dir"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nvidia-modelopt==$version" >&2; then
	echo "modelopt-recipes: cannot download nvidia-modelopt $version from PyPI" >&2
	exit 0
fi
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$whl" ] || { echo "modelopt-recipes: no wheel downloaded" >&2; exit 0; }
rm -rf "$dir"
mkdir -p "$dir"
python3 - "$whl" "$dir" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith("modelopt_recipes/")]
    for n in names:
        z.extract(n, out + "/.x")
PY
mv "$dir/.x/modelopt_recipes"/* "$dir/"
rm -rf "$dir/.x"
touch "$dir/.version-$version"
echo "$dir"
