#!/bin/sh
# deps.sh — installs the Debian 12 packages calibd needs to build and test,
# only those missing.  Uses sudo when not root.  The CUDA toolkit is
# optional (the CPU back end always builds); it is not installed here.
# chromium: the report page test renders the page headless (tests/eval).
set -eu
pkgs="build-essential meson ninja-build pkg-config libmicrohttpd-dev
libjansson-dev libyaml-dev libcriterion-dev libpcre2-dev libutf8proc-dev libcurl4-openssl-dev
clang libclang-rt-14-dev curl jq python3 python3-venv chromium"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
