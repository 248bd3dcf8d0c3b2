#!/bin/sh
# PID 1 of a lab VM (packed as /init by lab/run.py): mount what the tracing tests need, run the
# in-VM pytest tier against /opt/bpftools, print its exit code between markers, power off.
# Reads /opt/bpftools-lab/pytest-args (one argument a line) and /opt/bpftools-lab/env (sourced).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export PYTHONPATH=/opt/site BPFTOOLS_REQUIRE_KERNEL=1 BPFTOOLS_REQUIRE_ROOT=1
export BPFTOOLS_LAB_OUT=/run/bpftools-lab-out   # tests put files here for the host (recordings)

mnt() {
    mkdir -p "$3"
    mount -t "$1" -o "${4:-rw}" "$2" "$3" 2>/dev/null || { echo "lab-init: this kernel cannot mount $1 ${4:-} on $3"; rmdir "$3" 2>/dev/null; }
}
mnt proc proc /proc
mnt sysfs sysfs /sys
mnt devtmpfs devtmpfs /dev
mnt devpts devpts /dev/pts
mnt tmpfs tmpfs /dev/shm
mnt tmpfs tmpfs /tmp
mnt tmpfs tmpfs /run
mnt debugfs debugfs /sys/kernel/debug
mnt tracefs tracefs /sys/kernel/tracing
mnt bpf bpf /sys/fs/bpf
# cgroup v1 memory controller (kmem files) beside a cgroup2 hierarchy, as on the CI host
# (6.12 in trixie has no cgroup v1 memory: CONFIG_MEMCG_V1 is off).
mnt tmpfs cgroup /sys/fs/cgroup mode=755
mnt cgroup cgroup /sys/fs/cgroup/memory memory
mnt cgroup2 cgroup2 /sys/fs/cgroup/unified
ip link set lo up
mkdir -p "$BPFTOOLS_LAB_OUT"
# `bpftools` for --exec commands: the package at /opt/site (not the source tree in the working directory)
printf '%s\n' '#!/bin/sh' \
    'exec python3 -c "import sys; del sys.path[0]; from bpftools.cli import main; sys.exit(main())" "$@"' \
    > /usr/local/bin/bpftools
chmod 755 /usr/local/bin/bpftools
hostname bpftools-lab

[ -r /opt/bpftools-lab/env ] && . /opt/bpftools-lab/env

# Shortly before the host kills the VM (BPFTOOLS_LAB_TIMEOUT s after its start), show what a hung tier
# is doing: every task's state, CPU time (utime stime, ticks) and command line, the kernel stack of the
# user tasks, and the CPUs' backtraces (sysrq l). Pytest's faulthandler_timeout gives the Python side.
watchdog() {
    sleep "$1"
    dmesg -n 7 2>/dev/null
    echo "lab-init: watchdog: $1 s after boot, near the VM's timeout: tasks (pid state utime stime command)"
    for d in /proc/[0-9]*; do
        stat=$(cat "$d/stat" 2>/dev/null) || continue
        set -- ${stat##*) }
        cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null | cut -c1-160)
        echo "lab-init: task ${d#/proc/} $1 ${12} ${13} ${cmd:-[$(cat "$d/comm" 2>/dev/null)]}"
        [ -n "$cmd" ] && sed 's/^/lab-init:     /' "$d/stack" 2>/dev/null
    done
    echo l > /proc/sysrq-trigger 2>/dev/null
}
[ "${BPFTOOLS_LAB_TIMEOUT:-0}" -gt 240 ] && watchdog $((BPFTOOLS_LAB_TIMEOUT - 180)) &
set --
if [ -r /opt/bpftools-lab/pytest-args ]; then
    while IFS= read -r arg; do set -- "$@" "$arg"; done < /opt/bpftools-lab/pytest-args
fi

echo "@@BPFTOOLS-LAB-KERNEL=$(uname -r)@@"
echo "@@BPFTOOLS-LAB-BEGIN@@"
# `python3 -m pytest` without the cwd on sys.path, so that /opt/bpftools/bpftools (the source
# layout) does not shadow the installed layout in /opt/site. Paths in the args are relative to
# /opt/bpftools; run.py puts tests/kernel there unless the caller named test paths.
cd /opt/bpftools
if [ -r /opt/bpftools-lab/command ]; then     # lab/run.py --exec CMD: a benchmark, the demo...
    sh -c "$(cat /opt/bpftools-lab/command)"
else
    python3 -c 'import sys; del sys.path[0]; import pytest; sys.exit(pytest.main(sys.argv[1:]))' \
        -p no:cacheprovider -m kernel -q -rfEs -o faulthandler_timeout=900 "$@"
fi
rc=$?
# Files the tests left in $BPFTOOLS_LAB_OUT go to the host through the console (lab/run.py --out);
# console loglevel 1 first, so that no kernel message lands between the base64 lines.
dmesg -n 1 2>/dev/null
(cd "$BPFTOOLS_LAB_OUT" && find . -type f | sort | while IFS= read -r f; do
    echo "@@BPFTOOLS-LAB-FILE=${f#./}@@"
    base64 -w 76 "$f"
    echo "@@BPFTOOLS-LAB-FILE-END@@"
done)
echo "@@BPFTOOLS-LAB-EXIT=$rc@@"
sync
poweroff -f 2>/dev/null
# minbase has no poweroff: reboot(2) with LINUX_REBOOT_CMD_POWER_OFF (what poweroff -f does).
python3 -c 'import ctypes; ctypes.CDLL(None, use_errno=True).reboot(0x4321fedc)'
# Still here: let PID 1 exit; the kernel panics, panic=-1 reboots and qemu -no-reboot quits.
exit "$rc"
