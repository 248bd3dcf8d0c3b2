"""kmemsnoop's kernel hook on real kernels (lab VMs): the kernel's kmem limit handler sees a real write.

A child writes ``1`` then ``-1`` to a fresh cgroup v1 memory cgroup's ``memory.kmem.limit_in_bytes``
with write(2), then ``-1`` once more with pwrite(2) (which the syscall tracepoints kmemsnoop follows
do not cover). With ``--mode kprobe`` the two writes carry the handler's view (function, return value,
the limit it got) and the pwrite shows up as a ``kernel`` event of its own.

Needs cgroup v1's memory controller: the lab mounts it on 5.10 and 6.1; Debian's 6.12 is built
without it (CONFIG_MEMCG_V1 off), where there is no kmem file to write.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kernel

MEMCG = "/sys/fs/cgroup/memory"
LIMIT_FILE = "memory.kmem.limit_in_bytes"
PAGE = os.sysconf("SC_PAGE_SIZE")
PAGE_COUNTER_MAX_BYTES = (2 ** 63 - 1) // PAGE * PAGE   # "-1" on kernels that count pages
WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"kmemwriter", 0, 0, 0)   # PR_SET_NAME
path = sys.argv[1] + "/memory.kmem.limit_in_bytes"
results = []
for value in (b"1", b"-1"):
    fd = os.open(path, os.O_WRONLY)
    try:
        results.append(os.write(fd, value))
    except OSError as err:
        results.append(-err.errno)
    os.close(fd)
fd = os.open(path, os.O_WRONLY)
try:
    results.append(os.pwrite(fd, b"-1", 0))
except OSError as err:
    results.append(-err.errno)
os.close(fd)
print(os.getpid(), *results, flush=True)
"""


def _kallsyms_text():
    with open("/proc/kallsyms") as f:
        return set(p[2] for p in (line.split() for line in f) if len(p) >= 3 and p[1] in "tT")


@pytest.fixture
def cgroup_dir():
    if not os.path.exists(os.path.join(MEMCG, LIMIT_FILE)):
        pytest.skip("no cgroup v1 memory controller with kmem files on %s (CONFIG_MEMCG_V1 off)" % os.uname().release)
    path = os.path.join(MEMCG, "bpftools-kmemhook-%d" % os.getpid())
    os.mkdir(path)
    yield path
    os.rmdir(path)


def test_kernel_handler_sees_writes_and_a_pwrite(tmp_path, cgroup_dir):
    symbols = _kallsyms_text()
    expected = next((f for f in ("memcg_update_kmem_limit", "memcg_update_kmem_max") if f in symbols),
                    "mem_cgroup_write")
    ready = tmp_path / "ready"
    tool = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "kmemsnoop", "--mode", "kprobe", "--json",
                             "-d", "120", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd="/")
    deadline = time.monotonic() + 600
    while not ready.exists():
        if tool.poll() is not None or time.monotonic() > deadline:
            tool.kill()
            out, err = tool.communicate()
            pytest.fail("kmemsnoop did not attach: rc=%s\n%s\n%s" % (tool.returncode, out, err))
        time.sleep(0.1)
    child = subprocess.run([sys.executable, "-c", WRITER, cgroup_dir], stdout=subprocess.PIPE,
                           universal_newlines=True, check=True)
    pid, first, second, positional = (int(x) for x in child.stdout.split())
    time.sleep(2)
    tool.send_signal(signal.SIGTERM)
    out, err = tool.communicate(timeout=120)
    assert tool.returncode == 0, err
    assert "kernel hook: kprobe on %s" % expected in err
    mine = [json.loads(line) for line in out.splitlines() if json.loads(line)["tgid"] == pid]
    writes = [e for e in mine if e["op"] == "write"]
    path = os.path.join(cgroup_dir, LIMIT_FILE)
    assert [(e["comm"], e["path"], e["value"], e["ret"]) for e in writes] == [
        ("kmemwriter", path, "1", first), ("kmemwriter", path, "-1", second)]
    # mem_cgroup_write returns what write(2) returns (bytes or -errno); memcg_update_kmem_* 0 or -errno.
    def handler_ret(syscall_ret):
        return syscall_ret if expected == "mem_cgroup_write" else min(syscall_ret, 0)
    assert [w["kernel"]["function"] for w in writes] == [expected, expected]
    assert [w["kernel"]["ret"] for w in writes] == [handler_ret(first), handler_ret(second)]
    kernel_only = [e for e in mine if e["op"] == "kernel"]
    assert len(kernel_only) == 1, mine
    k = kernel_only[0]
    assert (k["comm"], k["tid"], k["path"], k["ret"], k["kernel"]["function"]) == (
        "kmemwriter", pid, LIMIT_FILE, handler_ret(positional), expected)
    if expected == "memcg_update_kmem_max":   # page_counter_memparse: bytes / PAGE_SIZE, "-1" = PAGE_COUNTER_MAX
        assert [w["kernel"]["limit_bytes"] for w in writes + [k]] == [0, PAGE_COUNTER_MAX_BYTES, PAGE_COUNTER_MAX_BYTES]
    elif expected == "mem_cgroup_write":       # the handler's own copy of what was written
        assert [w["kernel"]["limit_bytes"] for w in writes + [k]] == [None, None, None]
        assert k["value"] == "-1"
