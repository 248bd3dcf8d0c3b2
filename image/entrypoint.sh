#!/bin/sh
# The image's entrypoint: bpftools, with kernel headers where bcc looks for them.
#
# bcc compiles against /lib/modules/$(uname -r)/build (and source). The DaemonSet mounts the node's
# /lib/modules and /usr/src at those paths: nothing to do. Under `kubectl debug node/...` the node's /
# is at /host (or $BPFTOOLS_HOST_ROOT) and /lib/modules is the image's own: its build and source links
# are made to point into the node's tree. A node without headers gets the image's Debian ones,
# another kernel's: enough for tracepoint programs (`bpftools plan` says which tools need more).
release=$(uname -r)
modules=/lib/modules/$release
host=${BPFTOOLS_HOST_ROOT:-/host}
if [ ! -e "$modules/build/include" ] && mkdir -p "$modules" 2>/dev/null; then
    linked=
    for name in build source; do
        target=$(readlink "$host$modules/$name" 2>/dev/null) || continue
        case "$target" in
            /*) target=$host$target ;;
            *) target=$host$modules/$target ;;
        esac
        [ -d "$target" ] && ln -sfn "$target" "$modules/$name" 2>/dev/null && linked=1
    done
    if [ -z "$linked" ]; then
        headers=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
        if [ -n "$headers" ]; then
            ln -sfn "$headers" "$modules/build" 2>/dev/null
            ln -sfn "${headers%-amd64}-common" "$modules/source" 2>/dev/null
        fi
    fi
fi
exec bpftools "$@"
