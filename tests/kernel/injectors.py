"""Build, load, drive and unload the lab's fault-injection modules (lab/injectors), for kernel-tier tests.

An :class:`Injector` copies ``lab/injectors`` to a temporary directory, builds one module there
against ``/lib/modules/$(uname -r)/build``, loads it with ``insmod`` and parameters, talks to it
through ``/proc/NAME`` (commands in, counters out) and ``/sys/module/NAME/parameters``, and
unloads it on exit. Everything is safe to repeat: a module left loaded by an earlier failure is
removed before loading. :class:`KernelLog` reads the kernel log records written after it opened.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

from bpftools.kernel.log import available
from kerneltier import kernel_version, skip_or_fail

SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "lab", "injectors")


def build_module(name: str, workdir: str) -> str:
    """Build lab/injectors/NAME.c in WORKDIR against this kernel's headers; returns the .ko path.

    Skips (or fails, in the lab) when the headers are missing or the build fails."""
    kdir = "/lib/modules/%s/build" % os.uname().release
    if not os.path.isdir(kdir):
        skip_or_fail("no kernel headers at %s to build %s" % (kdir, name))
    src = os.path.join(workdir, "src")
    shutil.copytree(SOURCE_DIR, src)
    proc = subprocess.Popen(["make", "-C", src, "KDIR=" + kdir, "INJECTORS=%s.o" % name, "modules"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    out = proc.communicate()[0]
    ko = os.path.join(src, name + ".ko")
    if proc.returncode != 0 or not os.path.exists(ko):
        skip_or_fail("cannot build %s:\n%s" % (name, out[-3000:]))
    return ko


def loaded(name: str) -> bool:
    """True while module NAME is loaded."""
    return os.path.isdir("/sys/module/%s" % name)


class Injector(object):
    """One lab injector module: ``with Injector("bpftools_devref") as inj: inj.command("hold veth1")``."""

    def __init__(self, name: str, **params: object) -> None:
        self.name = name
        self.params = params
        self.workdir = tempfile.mkdtemp(prefix="bpftools-%s-" % name)
        self.ko = None  # type: Optional[str]

    @property
    def proc(self) -> str:
        return "/proc/%s" % self.name

    def load(self, **params: object) -> "Injector":
        """Build once, unload any stale copy, then insmod with the constructor's and these parameters."""
        if self.ko is None:
            self.ko = build_module(self.name, self.workdir)
        self.unload()
        merged = dict(self.params)
        merged.update(params)
        args = ["%s=%s" % (k, v) for k, v in sorted(merged.items())]
        subprocess.check_call(["insmod", self.ko] + args)
        return self

    def unload(self) -> None:
        """rmmod the module if loaded (it drops whatever it still holds)."""
        if loaded(self.name):
            subprocess.check_call(["rmmod", self.name])

    def command(self, text: str) -> None:
        """Write one command line to /proc/NAME (an OSError carries the module's errno)."""
        with open(self.proc, "w") as f:
            f.write(text + "\n")

    def read(self) -> str:
        """The text of /proc/NAME."""
        with open(self.proc) as f:
            return f.read()

    def counters(self) -> Dict[str, int]:
        """``KEY N`` lines of /proc/NAME as a dict (other lines are left out)."""
        out = {}  # type: Dict[str, int]
        for line in self.read().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def set_param(self, param: str, value: object) -> None:
        """Write /sys/module/NAME/parameters/PARAM."""
        with open("/sys/module/%s/parameters/%s" % (self.name, param), "w") as f:
            f.write("%s\n" % value)

    def get_param(self, param: str) -> str:
        with open("/sys/module/%s/parameters/%s" % (self.name, param)) as f:
            return f.read().strip()

    def close(self) -> None:
        """Unload and remove the build directory."""
        try:
            self.unload()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Injector":
        try:
            return self.load()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


UNREGISTER_TIMEOUT = "/proc/sys/net/core/netdev_unregister_timeout_secs"   # v5.12+


@contextmanager
def unregister_warnings_every_second() -> Iterator[int]:
    """The kernel's "waiting for DEV to become free" message every second while inside, where the sysctl
    exists (v5.12+; restored after); yields the seconds between messages: 1, else the fixed 10."""
    if not os.path.exists(UNREGISTER_TIMEOUT):
        yield 10
        return
    with open(UNREGISTER_TIMEOUT) as f:
        old = f.read().strip()
    with open(UNREGISTER_TIMEOUT, "w") as f:
        f.write("1\n")
    try:
        yield 1
    finally:
        with open(UNREGISTER_TIMEOUT, "w") as f:
            f.write(old + "\n")


class KernelLog(object):
    """The kernel log records (``/dev/kmsg`` lines ``prio,seq,usec,flags;message``) written after
    this object was made."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.records = []  # type: List[str]

    def poll(self) -> List[str]:
        """Read every new record; returns the new ones (all are kept in ``records``)."""
        new = [data.decode("utf-8", "replace").split("\n", 1)[0] for data in available(self.fd)]
        self.records.extend(new)
        return new

    def wait_for(self, text: str, timeout: float) -> Optional[str]:
        """Poll until a new record contains TEXT; returns it, or None after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.poll():
                if text in record:
                    return record
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "KernelLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tasks_in(frame: str) -> Dict[int, str]:
    """pid -> comm of every task whose /proc/PID/stack holds FRAME now."""
    found = {}  # type: Dict[int, str]
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stack" % name) as f:
                stack = f.read()
            if frame not in stack:
                continue
            with open("/proc/%s/comm" % name) as f:
                found[int(name)] = f.read().strip()
        except OSError:
            continue
    return found


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Poll PREDICATE() until true (returns True) or TIMEOUT seconds pass (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# The bpftools_slabfail workload: a child dirties 1 MiB of one file, says "dirty", waits for a line,
# fsyncs (ext4 writeback asks for BIO_MAX_VECS-vector bios: bio_alloc_bioset -> bvec_alloc -> the
# biovec-max slab, which the module fails for the child's pid), says "synced", waits for a line.
SLABFAIL_WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"\\xab" * (1 << 20))
print("dirty", flush=True)
sys.stdin.readline()
os.fsync(fd)
print("synced", flush=True)
sys.stdin.readline()
"""


SLABFAIL_HOLD_S = 6.0   # after the writer is seen in mempool_alloc: one 5 s timeout, then the wake-up


def run_slabfail_writer(path: str, injector: "Injector", inject: bool, in_mempool: Callable[[int], bool],
                        on_dirty: Optional[Callable[[int], None]] = None,
                        why: Callable[[], str] = lambda: "") -> int:
    """One SLABFAIL_WRITER run on PATH with the bpftools_slabfail module targeting it; returns its pid.

    With INJECT the module fails the writer's biovec-max allocations and holds the bvec pool's reserve,
    so its writeback sleeps in mempool_alloc; once IN_MEMPOOL(pid) says so the test waits
    SLABFAIL_HOLD_S (one 5 s timeout), then stops the injection, which gives the reserve back and
    wakes the writer. ON_DIRTY(pid) runs once the writer has dirtied its data; WHY() adds to the
    failure message when the writer never sleeps there."""
    import incident1_workloads as wl   # tests/, on the path of the kernel tier's test modules
    child = subprocess.Popen([sys.executable, "-c", SLABFAIL_WRITER, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert wl._readline(child, 60).strip() == "dirty"
        if on_dirty is not None:
            on_dirty(child.pid)
        injector.set_param("pid", child.pid)
        injector.set_param("drain", 1)
        if inject:
            injector.set_param("enable", 1)
            assert injector.counters()["hoarded"] == 2            # BIO_POOL_SIZE
        child.stdin.write("sync\n")
        child.stdin.flush()
        if inject:
            if not wait_until(lambda: in_mempool(child.pid), 60):
                raise AssertionError("writer never slept in mempool_alloc; module: %s%s" % (injector.read(), why()))
            time.sleep(SLABFAIL_HOLD_S)
            injector.set_param("enable", 0)
        assert wl._readline(child, 60).strip() == "synced"
        child.communicate("bye\n", timeout=30)
    finally:
        injector.set_param("enable", 0)
        injector.set_param("pid", 0)
        if child.poll() is None:
            child.kill()
            child.wait()
        if os.path.exists(path):
            os.remove(path)
    return child.pid


def bvec_caller() -> str:
    """The frame under mempool_alloc in the writer's sleep: bvec_alloc before v5.12; from v5.12
    ("block: refactor bvec_alloc") bvec_alloc ends in ``return mempool_alloc(pool, gfp)``, a tail
    call, so its caller bio_alloc_bioset is the next frame (measured on 6.1)."""
    return "bvec_alloc" if kernel_version() < (5, 12) else "bio_alloc_bioset"
