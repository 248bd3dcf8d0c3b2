"""kmemsnoop's kprobes on real kernels (lab VMs): the kernel's kmem limit handler sees a real write, and
kprobes on the syscall functions see what the syscall tracepoints see.

Hook test: a child writes ``1`` then ``-1`` to a fresh cgroup v1 memory cgroup's
``memory.kmem.limit_in_bytes`` with write(2), then ``-1`` once more with pwrite(2) (which the syscall
tracepoints kmemsnoop follows do not cover). With ``--mode kprobe`` the two writes carry the handler's
view (function, return value, the limit it got) and the pwrite shows up as a ``kernel`` event of its own.
Needs cgroup v1's memory controller: the lab mounts it on 5.10 and 6.1; Debian's 6.12 is built
without it (CONFIG_MEMCG_V1 off), where there is no kmem file to write.

Syscall-kprobe test (RHEL 7's path: no BPF on syscalls:* tracepoints before 4.14): with
``--mode kprobe-syscalls`` a child in a fresh memory cgroup opens and writes a kmem file; its opens and
writes come with exact pid, path, value and result. The test switch ``--memcg-from-css`` (hidden) makes
the program also read the writer's memory cgroup from its css_set, as it does where
bpf_get_current_cgroup_id is absent (before 4.18): that path must equal the writer's memory cgroup in
/proc. Where there is no cgroup v1 memory controller (6.12) the file is a regular file of a kmem file's
name (kmemsnoop matches names) and the writer's memory cgroup is a cgroup2 one, which the helper's id
names too.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bpftools.kernel.cgroups import cgroup2_mount, memory_cgroup_mount
from bpftools.kernel.target import Running
from bpftools.tools import kmemsnoop

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


def _attached_kmemsnoop(tmp_path, *args):
    """kmemsnoop ARGS, once its probes are attached (its --ready-file exists)."""
    ready = tmp_path / "ready"
    tool = subprocess.Popen([sys.executable, "-m", "bpftools.cli", "kmemsnoop"] + list(args) +
                            ["--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd="/")
    deadline = time.monotonic() + 600
    while not ready.exists():
        if tool.poll() is not None or time.monotonic() > deadline:
            tool.kill()
            out, err = tool.communicate()
            pytest.fail("kmemsnoop did not attach: rc=%s\n%s\n%s" % (tool.returncode, out, err))
        time.sleep(0.1)
    return tool


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
    tool = _attached_kmemsnoop(tmp_path, "--mode", "kprobe", "--json", "-d", "120")
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


SYSCALL_WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"kmemwriter", 0, 0, 0)   # PR_SET_NAME
with open(sys.argv[1], "w") as procs:                  # join the writer's memory cgroup
    procs.write(str(os.getpid()))
results = []
for value in (b"1", b"-1"):
    fd = os.open(sys.argv[2], os.O_WRONLY)
    results.append(fd)
    try:
        results.append(os.write(fd, value))
    except OSError as err:
        results.append(-err.errno)
    os.close(fd)
print(os.getpid(), *results, flush=True)
sys.stdin.read()                                       # live on (its /proc readable) until told
"""
KPROBES_LIST = "/sys/kernel/debug/kprobes/list"


@pytest.fixture
def memcg_layout(tmp_path):
    """(cgroup.procs of a fresh memory cgroup for the writer, its cgroup path, the kmem file to write):
    cgroup v1's memory controller where mounted, else cgroup2's with a regular file named like a kmem file."""
    v1 = memory_cgroup_mount()
    name = "bpftools-kmemcss-%d" % os.getpid()
    if v1 is not None:
        writer, target = os.path.join(v1, name), os.path.join(v1, name + "-target")
        os.mkdir(target)
        path = os.path.join(target, LIMIT_FILE)
    else:
        unified = cgroup2_mount()
        if unified is None:
            pytest.skip("no cgroup v1 memory controller and no cgroup2 mount")
        with open(os.path.join(unified, "cgroup.subtree_control"), "w") as f:
            f.write("+memory")                       # children get memory cgroups of their own
        writer, target = os.path.join(unified, name), None
        path = str(tmp_path / LIMIT_FILE)
        with open(path, "w") as f:
            f.write("0\n")
    os.mkdir(writer)
    yield os.path.join(writer, "cgroup.procs"), "/" + name, path
    os.rmdir(writer)
    if target is not None:
        os.rmdir(target)


def _kprobed():
    """(k|r, function) of every kprobe and kretprobe registered now."""
    with open(KPROBES_LIST) as f:
        return set((p[1], p[2].split("+")[0]) for p in (line.split() for line in f) if len(p) >= 3)


def test_syscall_kprobes_see_opens_and_writes_and_the_writers_memory_cgroup(tmp_path, memcg_layout):
    procs, memcg, path = memcg_layout
    the_plan = kmemsnoop.plan(None, "kprobe-syscalls", Running(), memcg_from_css=True)
    assert the_plan.probe.flags[:1] == ["SYSCALL_KPROBES"]      # the syscall tracepoint programs compiled out
    tool = _attached_kmemsnoop(tmp_path, "--mode", "kprobe-syscalls", "--memcg-from-css", "--json", "-d", "300")
    kprobed = _kprobed()
    child = subprocess.Popen([sys.executable, "-c", SYSCALL_WRITER, procs, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, universal_newlines=True)
    try:
        pid, fd1, first, fd2, second = (int(x) for x in child.stdout.readline().split())
        time.sleep(2)
        tool.send_signal(signal.SIGTERM)
        out, err = tool.communicate(timeout=120)
    finally:
        child.communicate("")
    assert tool.returncode == 0, err
    wanted = set(("r" if a.ret else "k", a.event) for a in the_plan.attaches)
    assert wanted <= kprobed, sorted(wanted - kprobed)
    assert "syscalls: kprobes on " in err and "(--mode kprobe-syscalls)" in err
    assert "writer's memory cgroup: read from its css_set (this kernel's headers)" in err
    mine = [json.loads(line) for line in out.splitlines() if json.loads(line)["tgid"] == pid]
    assert [(e["op"], e["path"], e["value"], e["ret"]) for e in mine] == [
        ("open", path, None, fd1), ("write", path, "1", first), ("open", path, None, fd2), ("write", path, "-1", second)]
    assert all((e["comm"], e["tid"]) == ("kmemwriter", pid) for e in mine)
    # the css_set's memory cgroup is the one /proc shows (and, on cgroup2, the helper's id names)
    assert [(e["writer_memcg"], e["writer_cgroup"]) for e in mine] == [(memcg, memcg)] * 4
    if memory_cgroup_mount() is None:
        assert [e["writer_cgroup_v2"] for e in mine] == [memcg] * 4
