"""Deterministic kernel workloads for the incident-1 tool tests (host tier and lab VMs).

- :class:`SlabFailure`: one slab allocation that really fails. A process in a memory cgroup whose
  limit equals its usage, and which the OOM killer may not kill, opens ``/dev/null`` until ``open()``
  fails: ``alloc_empty_file`` → ``kmem_cache_alloc(filp_cachep)`` is charged to the cgroup
  (``filp`` is a ``SLAB_ACCOUNT`` cache), the charge fails without an OOM kill, and the allocator
  returns NULL (``kmem:kmem_cache_alloc`` with ``ptr=0``, then ENOMEM). cgroup v1: the cgroup's OOM
  killer is off (``memory.oom_control``); cgroup v2 (kernels without v1 memory, e.g. Debian's 6.12):
  the victim's ``oom_score_adj`` is -1000, so the memcg OOM killer finds nobody and the charge fails.
  The memory is filled with tmpfs pages (not reclaimable without swap); the process locks its own
  pages first (``mlockall``) so that it never page-faults at the limit, and its file table is grown
  beforehand so the fd-table allocation cannot be the one that fails. With an ACTION file (the lab's
  test module), the victim then writes ``stall`` to it while its cgroup is still full, so that the
  module's own accounted allocation fails too.
- :class:`StalledDisk`: ext4 on loop device B whose backing file lives on ext4 on loop device A.
  Freezing A stops B's I/O (the loop worker blocks writing into the frozen filesystem); with B's queue
  cut to 4 requests, an ``fsync`` that submits 32 separate bios sleeps in ``blk_mq_get_tag`` (D state,
  ``io_schedule``) *inside* ``ext4_writepages`` until A is thawed. The test holds it for a known time.
"""
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Optional

MEMCG_ROOT = "/sys/fs/cgroup/memory"

VICTIM = r"""
import ctypes, os, resource, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, sys.argv[3].encode(), 0, 0, 0)            # PR_SET_NAME (the worker thread inherits it)
join, fill, action = sys.argv[1], sys.argv[2], sys.argv[4]
afd = os.open(action, os.O_WRONLY) if action != "-" else None   # opened now: the cgroup will be full
try:                                                      # room for the opens (the VMs start at 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
except (ValueError, OSError):                             # not allowed to raise the hard limit here
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
room = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 8192) - 1
os.dup2(0, room)                                          # grow the fd table now, outside the cgroup
os.close(room)
buf = b"x" * 65536
go = bytearray(64)
if sys.argv[5] == "v2":
    with open("/proc/self/oom_score_adj", "w") as f:      # the memcg OOM killer finds nobody to kill
        f.write("-1000")
if libc.mlockall(3) != 0:                                 # MCL_CURRENT | MCL_FUTURE: every page now, none later
    sys.exit("mlockall failed")
threading.stack_size(1 << 20)


def victim():
    # On a thread whose whole stack was mapped, populated and charged before the cgroup is joined: at
    # the limit a page fault (say, a main stack growing) would wait forever with the OOM killer off.
    tid = threading.get_native_id() if hasattr(threading, "get_native_id") else libc.syscall(186)
    with open(join, "w") as f:                            # cgroup.procs: the whole process moves
        f.write(str(os.getpid()))
    fd = os.open(fill, os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(64):                                   # 4 MiB of tmpfs, charged to the cgroup
        os.write(fd, buf)
    first = os.open(b"/dev/null", os.O_RDONLY)           # the first fd of the run, opened with room to spare
    os.write(1, b"filled %d\n" % tid)
    os.readv(0, [go])                                     # the parent set limit = usage
    # At the limit Python must not need new memory (MemoryError): discarded fds and counters reuse
    # freed object memory, and the tmpfs file is emptied before anything new is made.
    n, err = 1, 0
    try:
        for _ in range(room - 64):
            os.open(b"/dev/null", os.O_RDONLY)
            n += 1
    except (OSError, MemoryError) as e:
        err = getattr(e, "errno", None) or -1
    if afd is not None:
        os.write(afd, b"stall")                           # returns when the module's stall is over
    os.ftruncate(fd, 0)                                   # give the memory back before making anything
    os.closerange(first, first + n)
    os.write(1, b"%d %d\n" % (n, err))


worker = threading.Thread(target=victim)
worker.start()
worker.join()
sys.stdin.readline()                                      # stay alive until the parent is done
"""


class MemoryCgroup(object):
    """A memory cgroup that can be limited to its usage with no OOM kill: v1 if mounted, else v2."""

    def __init__(self, name: str) -> None:
        from bpftools.kernel.cgroups import cgroup2_mount
        self.version = None  # type: Optional[str]
        if os.path.exists(os.path.join(MEMCG_ROOT, "memory.oom_control")):
            self.version, root = "v1", MEMCG_ROOT
        else:
            root = cgroup2_mount() or ""
            if "memory" in _read(root, "cgroup.controllers").split() if root else False:
                self.version = "v2"
        self.root = root
        self.path = os.path.join(root, name)
        self.relative = "/" + name       # as /proc/PID/cgroup shows it

    def why_not(self) -> Optional[str]:
        """None when usable, else why not."""
        if self.version is None:
            return "no memory controller (cgroup v1 memory, or cgroup v2 with memory in cgroup.controllers)"
        return None

    def create(self) -> None:
        if self.version == "v2" and "memory" not in _read(self.root, "cgroup.subtree_control").split():
            _write(self.root, "cgroup.subtree_control", "+memory")
        os.mkdir(self.path)
        if self.version == "v1":
            _write(self.path, "memory.oom_control", "1")

    @property
    def join_file(self) -> str:
        """Writing a pid here moves all its threads (v1 and v2)."""
        return os.path.join(self.path, "cgroup.procs")

    def limit_to_usage(self) -> None:
        if self.version == "v1":
            _write(self.path, "memory.limit_in_bytes", _read(self.path, "memory.usage_in_bytes"))
        else:
            _write(self.path, "memory.max", _read(self.path, "memory.current"))

    def unlimit(self) -> None:
        """Lifts the limit (unblocks anything stuck at it)."""
        try:
            if self.version == "v1":
                _write(self.path, "memory.limit_in_bytes", "-1")
            else:
                _write(self.path, "memory.max", "max")
        except OSError:
            pass

    def remove(self) -> None:
        for _ in range(50):   # the cgroup empties once its tasks are reaped
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def memcg_available() -> Optional[str]:
    """None when a memory cgroup can be limited without OOM kills, else why not."""
    return MemoryCgroup("probe").why_not()


class SlabFailure(object):
    """Run the victim once; ``pid``, ``comm``, ``opens`` and ``errno`` describe what happened.

    Use as a context manager: the victim stays alive (so tools can read its /proc) until exit.
    ``cgroup`` is the victim's cgroup path as /proc/PID/cgroup shows it; ``tid`` the thread that
    allocates (a thread of process ``pid``).
    """

    def __init__(self, comm: str = "slabvictim", action: Optional[str] = None,
                 during: Optional[Callable[[int], object]] = None) -> None:
        self.comm = comm
        self.action = action
        self.during = during       # called with the allocating thread's tid once it was told to go
        self.memcg = MemoryCgroup("bpftools-slabfail-%d" % os.getpid())
        self.cgroup = self.memcg.relative
        self.fill = "/dev/shm/bpftools-slabfail-%d" % os.getpid()
        self.proc = None  # type: Optional[subprocess.Popen]
        self.pid = self.tid = self.opens = self.errno = None  # type: Optional[int]

    def __enter__(self) -> "SlabFailure":
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> "SlabFailure":
        self.memcg.create()
        self.proc = subprocess.Popen([sys.executable, "-c", VICTIM, self.memcg.join_file, self.fill, self.comm,
                                      self.action or "-", self.memcg.version],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        self.pid = self.proc.pid
        filled, tid = _readline(self.proc, 60).split()
        assert filled == "filled"
        self.tid = int(tid)       # the thread that allocates (not the main thread: see VICTIM)
        self.memcg.limit_to_usage()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        if self.during is not None:
            self.during(self.tid)
        opens, err = _readline(self.proc, 120).split()
        self.opens, self.errno = int(opens), int(err)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.memcg.unlimit()
            try:
                self.proc.communicate("bye\n", timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if os.path.exists(self.fill):
            os.remove(self.fill)
        self.memcg.remove()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """The child's next line; AssertionError if none comes within TIMEOUT seconds (a stuck victim)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("pid %d printed nothing for %d s" % (proc.pid, timeout))
    return proc.stdout.readline()


def _write(cgroup: str, name: str, value: str) -> None:
    with open(os.path.join(cgroup, name), "w") as f:
        f.write(value)


def _read(cgroup: str, name: str) -> str:
    with open(os.path.join(cgroup, name)) as f:
        return f.read().strip()


WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)   # PR_SET_NAME
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.fsync(fd)
page = b"w" * 4096
for i in range(int(sys.argv[3])):
    os.pwrite(fd, page, i * 262144)        # separate extents: one bio each, no merging
st = os.fstat(fd)
print(st.st_ino, os.major(st.st_dev), os.minor(st.st_dev), flush=True)
sys.stdin.readline()                       # the parent froze the backing filesystem
if sys.argv[4] == "syncfs":                # the flusher writes it back (writeback_single_inode)
    if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
        sys.exit("syncfs failed")
else:
    os.fsync(fd)                           # written back in this process (ext4_writepages)
print("synced", flush=True)
sys.stdin.readline()
"""


class StalledDisk(object):
    """Two loop-mounted ext4 filesystems, B's image on A; :meth:`stalled_fsync` stalls B's writeback."""

    PAGES = 32

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bpftools-stall-")
        self.a_mnt = os.path.join(self.dir, "a")
        self.b_mnt = os.path.join(self.dir, "b")
        self.loops = []  # type: list
        self.mounts = []  # type: list

    def __enter__(self) -> "StalledDisk":
        try:
            a_img = os.path.join(self.dir, "a.img")
            self._mkfs_mount(a_img, 64, self.a_mnt)
            self._mkfs_mount(os.path.join(self.a_mnt, "b.img"), 32, self.b_mnt)
            with open("/sys/block/%s/queue/nr_requests" % os.path.basename(self.loops[-1]), "w") as f:
                f.write("4")
        except Exception:
            self.__exit__()
            raise
        return self

    def _mkfs_mount(self, image: str, mib: int, mnt: str) -> None:
        with open(image, "wb") as f:
            f.truncate(mib << 20)
        # no metadata_csum: ext4 would need the crc32c driver, which the lab VMs lack
        subprocess.check_call(["mkfs.ext4", "-q", "-F", "-O", "^metadata_csum", image])
        loop = subprocess.check_output(["losetup", "--find", "--show", image], universal_newlines=True).strip()
        self.loops.append(loop)
        os.mkdir(mnt)
        subprocess.check_call(["mount", loop, mnt])
        self.mounts.append(mnt)

    @property
    def b_device(self) -> str:
        return self.loops[1]

    def stalled_fsync(self, hold: float, comm: str = "stallwriter", how: str = "fsync",
                      before_exit: Optional[Callable[[], object]] = None) -> Dict[str, object]:
        """A child dirties PAGES pages of a file on B, then syncs it (HOW) while A is frozen.

        ``fsync``: the child itself runs ``ext4_writepages``. ``syncfs``: a flusher kworker runs
        ``writeback_single_inode`` → ``do_writepages`` → ``ext4_writepages`` for it. Once the writing
        task sleeps in ``blk_mq_get_tag`` (read from /proc/PID/stack) A stays frozen HOLD more
        seconds, so that sleep and the writeback calls around it last at least HOLD. Returns pid,
        comm, ino, (major, minor) of B, the writing task (``writer``: the child or the kworker), the
        stack seen and the sync's wall time. BEFORE_EXIT runs while the child still lives (stop the
        tool there, so that it can read the child's /proc/PID/cgroup).
        """
        path = os.path.join(self.b_mnt, "stall-%d" % os.getpid())
        child = subprocess.Popen([sys.executable, "-c", WRITER, path, comm, str(self.PAGES), how],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        frozen = False
        try:
            ino, major, minor = (int(x) for x in child.stdout.readline().split())
            subprocess.check_call(["fsfreeze", "-f", self.a_mnt])
            frozen = True
            start = time.monotonic()
            child.stdin.write("sync\n")
            child.stdin.flush()
            if how == "syncfs":
                writer, stack = _wait_for_task(("blk_mq_get_tag", "writeback_sb_inodes"), timeout=30.0)
            else:
                writer, stack = child.pid, wait_for_frame(child.pid, "blk_mq_get_tag", timeout=30.0)
            time.sleep(hold)
            subprocess.check_call(["fsfreeze", "-u", self.a_mnt])
            frozen = False
            assert child.stdout.readline().strip() == "synced"
            elapsed = time.monotonic() - start
            if before_exit is not None:
                before_exit()
            child.communicate("bye\n", timeout=30)
        finally:
            if frozen:
                subprocess.call(["fsfreeze", "-u", self.a_mnt])
            if child.poll() is None:
                child.kill()
                child.wait()
        return {"pid": child.pid, "comm": comm, "ino": ino, "dev": (major, minor), "writer": writer,
                "stack": stack, "elapsed": elapsed, "path": path}

    def __exit__(self, *exc: object) -> None:
        subprocess.call(["fsfreeze", "-u", self.a_mnt], stderr=subprocess.DEVNULL)
        # B first: its image lives on A, which stays busy until B's loop device lets go of it.
        for i in reversed(range(len(self.loops))):
            if i < len(self.mounts):
                _retry(["umount", self.mounts[i]])
            subprocess.call(["losetup", "-d", self.loops[i]], stderr=subprocess.DEVNULL)  # may be autocleared
        subprocess.call(["rm", "-rf", self.dir])


def _retry(argv: list, tries: int = 50) -> None:
    """Run ARGV until it succeeds (a detached loop device releases its file asynchronously)."""
    for _ in range(tries):
        if subprocess.call(argv, stderr=subprocess.DEVNULL) == 0:
            return
        time.sleep(0.1)
    subprocess.call(argv)


def wait_for_frame(pid: int, frame: str, timeout: float) -> str:
    """Poll /proc/PID/stack until it holds FRAME; returns that stack text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stack" % pid) as f:
                stack = f.read()
        except OSError:
            stack = ""
        if frame in stack:
            return stack
        time.sleep(0.01)
    raise AssertionError("pid %d never slept in %s" % (pid, frame))


def _wait_for_task(frames: tuple, timeout: float) -> tuple:
    """Poll every task's /proc/PID/stack until one holds all FRAMES; returns (pid, stack text)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stack" % name) as f:
                    stack = f.read()
            except OSError:
                continue
            if all(frame in stack for frame in frames):
                return int(name), stack
        time.sleep(0.01)
    raise AssertionError("no task slept in %s" % " and ".join(frames))


# The real CLI with one tool command registered, as bpftools/cli.py will register it (cli.add_command).
RUNNER = (
    "import importlib, sys\n"
    "from bpftools import cli\n"
    "tool = importlib.import_module('bpftools.tools.' + sys.argv[1]).command\n"
    "if tool.name not in cli.cli.commands:\n"
    "    cli.cli.add_command(tool)\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


# The CLI runs from / so that no source tree in the cwd shadows the installed package (python -c puts the
# cwd first on sys.path; the lab VMs run pytest from /opt/bpftools, whose bpftools/ lacks analyses/).
CLI_CWD = "/"


def cli_argv(tool: str, *args: str) -> list:
    """argv that runs ``bpftools TOOL ARGS`` (TOOL is a module of bpftools.tools with a ``command``)."""
    return [sys.executable, "-c", RUNNER, tool] + list(args)


def run_cli(tool: str, *args: str) -> "subprocess.CompletedProcess":
    """Run ``bpftools TOOL ARGS`` to its end; stdout and stderr as text."""
    return subprocess.run(cli_argv(tool, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, cwd=CLI_CWD)


class Tool(object):
    """A tracing tool started with --ready-file; :meth:`stop` sends SIGTERM (or SIGINT) and collects output."""

    def __init__(self, tmp_dir: str, tool: str, *args: str) -> None:
        ready = os.path.join(tmp_dir, "ready-%s" % tool)
        self.proc = subprocess.Popen(cli_argv(tool, "--ready-file", ready, *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, universal_newlines=True, cwd=CLI_CWD)
        deadline = time.monotonic() + 600   # compiling under TCG, with other VMs beside it, takes minutes
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                out, err = self.proc.communicate()
                raise AssertionError("%s did not attach: rc=%s\n%s\n%s" % (tool, self.proc.returncode, out, err))
            time.sleep(0.05)
        self.out = self.err = ""
        self.returncode = None  # type: Optional[int]

    def stop(self, sig: int = signal.SIGTERM, settle: float = 0.5) -> "Tool":
        """Let the last records arrive (SETTLE seconds), then stop the tool and collect its output."""
        time.sleep(settle)
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 120) -> "Tool":
        """Wait for the tool to end (by itself with -d or interval/count, or after stop)."""
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()
            raise AssertionError("the tool did not end within %d s; its stderr:\n%s" % (timeout, self.err))
        self.returncode = self.proc.returncode
        return self

    def json_lines(self) -> list:
        import json
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]


KMEM_LIMIT_WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"kmemwriter", 0, 0, 0)   # PR_SET_NAME
fd = os.open(sys.argv[1] + "/memory.kmem.limit_in_bytes", os.O_WRONLY)
os.write(fd, b"1")
os.close(fd)
print(os.getpid(), flush=True)
"""


def write_kmem_limit(cgroup_dir: str) -> int:
    """A process named kmemwriter writes "1" to CGROUP_DIR's memory.kmem.limit_in_bytes; its pid."""
    return int(subprocess.check_output([sys.executable, "-c", KMEM_LIMIT_WRITER, cgroup_dir],
                                       universal_newlines=True))
