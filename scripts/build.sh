#!/bin/sh
# build.sh DIR [meson options...] — configures DIR once (reconfigures when it
# exists) and builds it.  Puts the CUDA toolkit on PATH when it is installed
# in the usual place, so -Dcuda=auto finds nvcc.  Development and CI builds
# are -Werror (-Dwerror=true, before the caller's options so one can
# override it); meson.build's default (false) is for packagers.
set -eu
dir=$1; shift
[ -d /usr/local/cuda/bin ] && PATH="$PATH:/usr/local/cuda/bin" && export PATH
if [ -f "$dir/build.ninja" ]; then
	meson configure "$dir" -Dwerror=true "$@" >/dev/null
else
	meson setup "$dir" -Dwerror=true "$@" >/dev/null
fi
ninja -C "$dir" >/dev/null || ninja -C "$dir"
