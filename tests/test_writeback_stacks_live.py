"""watch keeps each thread's writeback stack in the map between its calls (WB_KEEP_STACKS: no map insert
and delete per call) and sweeps the stacks of dead threads; writeslow and iojitter delete a thread's
stack when its outermost call ends. Live on this host: the ext4 writeback tracepoint pair, a real fsync
on a loop-mounted ext4, the program's own map read back."""
import os
import subprocess
import sys

import pytest

from bpftools.iostall import program, writeback
from bpftools.kernel.target import Running
from incident1_workloads import StalledDisk, _readline

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, mount)")

FSYNCER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
for line in sys.stdin:
    if line.strip() != "write":
        break
    os.pwrite(fd, b"x" * 65536, 0)
    os.fsync(fd)
    print("synced", flush=True)
"""


def _stack_of(bpf, tid):
    """(depth, marks) of thread TID's writeback stack in the program's map, None when it has none."""
    for key, value in bpf["wb_stacks"].items():
        if key.value == tid:
            return value.depth, value.marks
    return None


def _fsync_twice_then_exit(bpf, mnt):
    """A child fsyncs a file on MNT twice; its stack after each fsync, then the child's pid (exited)."""
    child = subprocess.Popen([sys.executable, "-c", FSYNCER, os.path.join(mnt, "data")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    seen = []
    try:
        for _ in range(2):
            child.stdin.write("write\n")
            child.stdin.flush()
            assert _readline(child, 30).strip() == "synced"
            seen.append(_stack_of(bpf, child.pid))
        child.communicate("bye\n", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.pid, seen


@pytest.mark.parametrize("always_on", [True, False])
def test_a_threads_writeback_stack_is_kept_between_calls_only_for_watch_and_swept_when_it_exits(always_on):
    plan = writeback.plan(Running(), "tracepoint", None, 10 ** 12, always_on=always_on)
    assert ("WB_KEEP_STACKS" in plan.flags) is always_on and "HAVE_TP_EXT4" in plan.flags
    bpf = program.load(plan)
    try:
        with StalledDisk() as disk:
            pid, seen = _fsync_twice_then_exit(bpf, disk.a_mnt)
        if always_on:
            assert seen == [(0, 0), (0, 0)]          # ext4_writepages entered and left, the entry kept
            assert _stack_of(bpf, pid) == (0, 0)     # the thread is gone; its stack is not, yet
            assert writeback.forget_dead_threads(bpf) >= 1
            assert _stack_of(bpf, pid) is None
        else:
            assert seen == [None, None]
    finally:
        bpf.cleanup()
