#!/bin/sh
# check-deploy.sh — CI checks of the deployment files:
#   - every kustomization under deploy/k8s (the base and each overlay)
#     renders with `kubectl kustomize`, and what it renders validates
#     against the Kubernetes schemas (kubernetes-validate --strict, from
#     PyPI, installed into build/deploy-venv when missing).
# The semantic checks (roots mounted, no Job in the base, tolerations,
# recipe names) and those of the systemd unit (systemd-analyze verify and
# security) are the api suite's units/kubernetes_* and units/systemd_unit.
# kubectl (or kustomize) is not in Debian 12's archive: where neither is
# installed the rendering is skipped, visibly, unless CALIBD_DEPLOY_STRICT=1
# makes that a failure.  The validator comes from PyPI and must install.
set -eu
cd "$(dirname "$0")/.."
out=build/deploy-check
mkdir -p "$out"
missing() {
	if [ "${CALIBD_DEPLOY_STRICT:-0}" != 1 ]; then
		echo "check-deploy: SKIPPED: $1" >&2
		return 0
	fi
	echo "check-deploy: $1" >&2
	exit 1
}

validator=$(command -v kubernetes-validate || true)
if [ -z "$validator" ]; then
	[ -x build/deploy-venv/bin/kubernetes-validate ] ||
		{ python3 -m venv build/deploy-venv && build/deploy-venv/bin/pip install -q kubernetes-validate; } ||
		{ echo "check-deploy: cannot install kubernetes-validate (PyPI)" >&2; exit 1; }
	validator=build/deploy-venv/bin/kubernetes-validate
fi

if command -v kubectl >/dev/null 2>&1; then
	kust="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1; then
	kust="kustomize build"
else
	kust=""
	missing "neither kubectl nor kustomize is installed: deploy/k8s not rendered"
fi
if [ -n "$kust" ]; then
	n=0
	for k in $(find deploy/k8s -name kustomization.yaml | sort); do
		d=$(dirname "$k")
		f="$out/$(echo "$d" | tr / _).yaml"
		$kust "$d" > "$f"
		[ -x "$validator" ] || [ -n "$(command -v "$validator")" ] || continue
		"$validator" --strict --quiet "$f"
		echo "check-deploy: $d renders and validates ($(grep -c '^kind:' "$f") objects)"
		n=$((n + 1))
	done
	[ "$n" -ge 3 ] || { echo "check-deploy: expected the base and 2 overlays, validated $n" >&2; exit 1; }
fi

