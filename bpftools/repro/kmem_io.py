"""``bpftools repro kmem-io``: fsync-heavy writers inside a memory cgroup whose kernel-memory
accounting was switched on the way runc does it — the workload behind the 5-second writeback
stalls of RHEL 7 nodes.

One run:

1. creates the v1 memory cgroup ``bpftools-repro-<pid>`` under the caller's own memory cgroup
   (so the caller's limits still apply), sets ``memory.limit_in_bytes`` and reads it back;
2. writes ``1`` then ``-1`` to ``memory.kmem.limit_in_bytes`` before any task joins (runc's
   ``EnableKernelMemoryAccounting``; the kernel answers EBUSY once the cgroup has tasks) and
   reports what the kernel did with each write: 3.10 takes the limit (``1`` reads back as one
   page) and switches accounting on; 6.x accepts the write and ignores it (the limit reads back
   unchanged, ``memory.kmem.slabinfo`` reads empty);
3. makes an ext4 file system in a loop-mounted sparse image (or uses ``--dir``);
4. forks the writers: each writes its pid to ``cgroup.procs`` first, then loops ``pwrite`` of
   one chunk + ``fsync``, timing every fsync, until the duration or the iteration count is up;
5. removes everything (writers, mount, loop device, image, writer files, cgroup) however the run
   ends; leftovers of an earlier run whose owner pid is gone are removed first.

Resources carry the owner pid: cgroup ``bpftools-repro-<pid>``, temporary directory
``$TMPDIR/bpftools-repro-<pid>-XXXXXX`` holding ``image.ext4`` and the mount point ``mnt``,
writer files ``bpftools-repro-<pid>-w<N>``.
"""
import json
import os
import re
import select
import shutil
import signal
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from dataclasses import dataclass

from ..kernel.cgroups import mountinfo, memory_cgroup_mount, memory_cgroup_of_pid
from ..analyses.kernel_log import find_incidents
from ..errors import BadInput, MissingKernelFeature
from ..kmem_audit import UNLIMITED_FLOOR, read_slabinfo
from . import (ReproError, Signalled, Signals, check, command, describe_status,
               errno_name, find_tool, first_line, fork_child, format_size, kill_and_reap,
               kmsg_mark, kmsg_since, latency_stats, owned_by_dead_run, reap, require_root,
               interrupted_error, warn_cleanup_errors, write_ready_file)

PREFIX = "bpftools-repro-"
IMAGE_NAME = "image.ext4"
MOUNT_DIR = "mnt"
_CGROUP_DIR = re.compile(r"^bpftools-repro-(\d+)$")
_RUN_DIR = re.compile(r"^bpftools-repro-(\d+)-[A-Za-z0-9_]+$")
_WRITER_FILE = re.compile(r"^bpftools-repro-(\d+)-w\d+$")
KMEM_LIMIT = "memory.kmem.limit_in_bytes"
KMEM_SLABINFO = "memory.kmem.slabinfo"
RUNC_KMEM_WRITES = ("1", "-1")  # runc's EnableKernelMemoryAccounting (v1.0.0-rc3, PR #1350)
COUNTERS = ("memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt",
            "memory.kmem.usage_in_bytes", "memory.kmem.max_usage_in_bytes", "memory.kmem.failcnt")
MAX_WRITERS = 64
MIN_CHUNK, MAX_CHUNK = 4096, 64 << 20
MIN_SIZE, MAX_SIZE = 32 << 20, 1 << 40
MIN_MEMORY_LIMIT = 16 << 20
MAX_DURATION = 3600.0
MAX_START_DELAY = 300.0
JOIN_TIMEOUT = 15.0
# A writer's last fsync may sit in the kernel well past --duration (the 5 s mempool waits repeat).
FINISH_GRACE = 120.0
SWEEP_MAX_CGROUPS = 20000
SLOWEST_SHOWN = 5


@dataclass
class KmemIoConfig:
    """What ``repro kmem-io`` runs; sizes in bytes, times in seconds."""

    writers: int = 2
    chunk: int = 1 << 20
    size: int = 256 << 20
    memory_limit: int = 256 << 20
    duration: float = 10.0
    iterations: Optional[int] = None
    slow_ms: float = 1000.0
    directory: Optional[str] = None
    kmem: bool = True
    start_delay: float = 0.0
    ready_file: Optional[str] = None


def validate(cfg: KmemIoConfig) -> None:
    """BadInput for values the run cannot honour (checked before anything is created)."""
    if not 1 <= cfg.writers <= MAX_WRITERS:
        raise BadInput("--writers must be 1..%d, not %d" % (MAX_WRITERS, cfg.writers))
    if not MIN_CHUNK <= cfg.chunk <= MAX_CHUNK:
        raise BadInput("--chunk must be 4K..64M, not %s" % format_size(cfg.chunk))
    if not MIN_SIZE <= cfg.size <= MAX_SIZE:
        raise BadInput("--size must be 32M..1T, not %s" % format_size(cfg.size))
    if cfg.memory_limit < MIN_MEMORY_LIMIT:
        raise BadInput("--memory-limit must be at least 16M, not %s" % format_size(cfg.memory_limit))
    if cfg.memory_limit < 4 * cfg.chunk * cfg.writers:
        raise BadInput("--memory-limit %s is below 4 x --chunk x --writers (%s): the writers would be "
                       "OOM-killed" % (format_size(cfg.memory_limit), format_size(4 * cfg.chunk * cfg.writers)))
    if not 0 < cfg.duration <= MAX_DURATION:
        raise BadInput("--duration must be > 0 and <= %d s" % MAX_DURATION)
    if cfg.iterations is not None and cfg.iterations < 1:
        raise BadInput("--iterations must be >= 1")
    if cfg.slow_ms <= 0:
        raise BadInput("--slow-ms must be > 0")
    if not 0 <= cfg.start_delay <= MAX_START_DELAY:
        raise BadInput("--start-delay must be 0..%d s" % MAX_START_DELAY)
    if cfg.directory is not None:
        if not os.path.isdir(cfg.directory):
            raise BadInput("--dir %s: not a directory" % cfg.directory)
        if not os.access(cfg.directory, os.W_OK):
            raise BadInput("--dir %s: not writable" % cfg.directory)
    else:
        writer_budget(cfg.size * 3 // 4, cfg.writers, cfg.chunk)


def writer_budget(usable: int, writers: int, chunk: int) -> int:
    """Bytes each writer's file may reach (a whole number of chunks; the writer then starts over
    at offset 0). BadInput when not even one chunk fits."""
    budget = usable // writers // chunk * chunk
    if budget < chunk:
        raise BadInput("not enough space for %d writers of %s chunks: %s usable (raise --size or "
                       "lower --chunk/--writers)" % (writers, format_size(chunk), format_size(usable)))
    return budget


# ---------------------------------------------------------------------------------------------
# The cgroup and runc's kmem activation
# ---------------------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_int(path: str) -> Optional[int]:
    try:
        return int(_read_text(path).strip())
    except (OSError, ValueError):
        return None


def write_cgroup_file(path: str, value: str) -> Dict[str, Any]:
    """Write VALUE to a cgroup file and read the file back: ``value``, ``result`` (``ok`` or the
    errno name the kernel returned, e.g. ``EBUSY``), ``error`` (its text) and ``read_back``."""
    result, error = "ok", None
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        result, error = errno_name(err.errno) if err.errno else "error", err.strerror or str(err)
    return {"value": value, "result": result, "error": error, "read_back": _read_int(path)}


def slabinfo_state(path: str) -> Dict[str, Any]:
    """How ``memory.kmem.slabinfo`` reads: ``readable`` (True; False on EIO, which on 3.10 means
    kmem accounting is off; None when it cannot be told) and the number of ``lines``."""
    readable = read_slabinfo(path)
    lines = None
    if readable:
        try:
            lines = len(_read_text(path).splitlines())
        except OSError:
            lines = None
    return {"readable": readable, "error": "EIO" if readable is False else None, "lines": lines}


def kmem_effect(writes: List[Dict[str, Any]], slabinfo: Dict[str, Any], present: bool,
                requested: bool) -> Tuple[str, str]:
    """(effect, explanation) of runc's kmem writes, judged from what the kernel did.

    ``applied``: the limit ``1`` read back as a real limit, accounting is on (3.10 behaviour);
    ``ignored``: the writes succeeded but the limit read back unchanged (6.x);
    ``rejected``: a write failed (EBUSY: the cgroup had tasks or children);
    ``absent``: no ``memory.kmem.limit_in_bytes``; ``skipped``: ``--no-kmem``.
    """
    if not present:
        return "absent", ("this kernel has no %s: there is no per-cgroup switch for kernel-memory "
                          "accounting to turn on" % KMEM_LIMIT)
    if not requested:
        if slabinfo["readable"] is False:
            state = "fails with EIO: kmem accounting is off for this cgroup"
        elif slabinfo["readable"] and slabinfo["lines"]:
            state = "is readable (%d lines): kmem accounting is on, inherited from the parent" % slabinfo["lines"]
        elif slabinfo["readable"]:
            state = "reads empty: no per-cgroup kmem switch on this kernel"
        else:
            state = "could not be read"
        return "skipped", "kmem activation skipped (--no-kmem); %s %s" % (KMEM_SLABINFO, state)
    for w in writes:
        if w["result"] != "ok":
            why = (": the cgroup already had tasks or child cgroups (accounting can only be switched "
                   "on while it is empty)") if w["result"] == "EBUSY" else ""
            return "rejected", "writing %s to %s failed with %s (%s)%s" % (
                w["value"], KMEM_LIMIT, w["result"], w["error"], why)
    first = writes[0]["read_back"]
    last = writes[-1]["read_back"]
    if first is not None and first < UNLIMITED_FLOOR:
        return "applied", ("the kernel took the limit: %s read back as %d, so kmem accounting is now "
                           "on for this cgroup; %s then lifted the limit (read back %s)"
                           % (writes[0]["value"], first, writes[-1]["value"], last))
    text = ("both writes succeeded but the limit read back unchanged (%s): this kernel accepts %s and "
            "ignores it, there is no per-cgroup switch (slab memory of SLAB_ACCOUNT caches is charged "
            "to the memory cgroup anyway)" % (first, KMEM_LIMIT))
    if slabinfo["readable"] and slabinfo["lines"] == 0:
        text += "; %s reads empty" % KMEM_SLABINFO
    return "ignored", text


def _cgroup_parent(mount: str) -> str:
    """The caller's own memory cgroup directory (the run nests its cgroup there)."""
    own = memory_cgroup_of_pid(os.getpid()) or "/"
    parent = os.path.join(mount, own.lstrip("/"))
    return parent if os.path.isdir(parent) else mount


def _counters(cgroup: str) -> Dict[str, Optional[int]]:
    return {name: _read_int(os.path.join(cgroup, name)) for name in COUNTERS}


# ---------------------------------------------------------------------------------------------
# The file system
# ---------------------------------------------------------------------------------------------

def _mount_of(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(mount point, fstype) of the file system holding PATH (longest mountinfo prefix)."""
    path = os.path.realpath(path)
    best = (None, None)  # type: Tuple[Optional[str], Optional[str]]
    for mount_point, fstype, _ in mountinfo("/"):
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and (best[0] is None or len(mount_point) >= len(best[0])):
            best = (mount_point, fstype)
    return best


def _make_filesystem(tmp: str, size: int, tools: Dict[str, str]) -> Dict[str, Any]:
    """Sparse image → mkfs.ext4 → losetup → mount; returns the file system record."""
    image = os.path.join(tmp, IMAGE_NAME)
    mnt = os.path.join(tmp, MOUNT_DIR)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    # No lazy init: ext4lazyinit would write inode tables in the background during the run.
    check([tools["mkfs.ext4"], "-F", "-q", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0",
           "-L", "bpftools-repro", image])
    code, out, err = command([tools["losetup"], "--find", "--show", image])
    if code != 0:
        if "unused loop device" in err or "No such file" in err or "loop-control" in err:
            raise MissingKernelFeature("loop block devices (CONFIG_BLK_DEV_LOOP): losetup said %r"
                                       % first_line(err), fallback="modprobe loop, or use --dir DIR")
        raise ReproError("losetup --find --show %s failed: %s" % (image, first_line(err)))
    device = out.strip()
    os.mkdir(mnt, 0o700)
    check([tools["mount"], "-t", "ext4", device, mnt])
    return {"kind": "loop-ext4", "image": image, "device": device, "mount": mnt, "fstype": "ext4",
            "size": size, "target_dir": mnt}


# ---------------------------------------------------------------------------------------------
# Leftovers: the same code removes this run's resources and a dead run's
# ---------------------------------------------------------------------------------------------

def _owner(pattern: Any, name: str) -> Optional[int]:
    m = pattern.match(name)
    return int(m.group(1)) if m else None


def _find_cgroups(mount: Optional[str], owned: Callable[[int], bool]) -> List[str]:
    """Directories ``bpftools-repro-<pid>`` anywhere under the memory mount (bounded walk)."""
    found = []  # type: List[str]
    if not mount or not os.path.isdir(mount):
        return found
    seen = 0
    for base, dirs, _ in os.walk(mount):
        seen += 1
        if seen > SWEEP_MAX_CGROUPS:
            break
        keep = []
        for name in sorted(dirs):
            owner = _owner(_CGROUP_DIR, name)
            if owner is None:
                keep.append(name)
            elif owned(owner):
                found.append(os.path.join(base, name))
        dirs[:] = keep
    return found


def _loop_devices() -> List[Tuple[str, str]]:
    """(device, backing file) of every attached loop device, from sysfs."""
    out = []
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            backing = _read_text("/sys/block/%s/loop/backing_file" % name).strip()
        except OSError:
            continue
        if backing.endswith(" (deleted)"):
            backing = backing[:-len(" (deleted)")]
        out.append(("/dev/" + name, backing))
    return out


def _ours(path: str, leaf: str, owned: Callable[[int], bool]) -> bool:
    """PATH is ``…/bpftools-repro-<pid>-XXXX/LEAF`` and the pid passes OWNED."""
    owner = _owner(_RUN_DIR, os.path.basename(os.path.dirname(path)))
    return os.path.basename(path) == leaf and owner is not None and owned(owner)


def _empty_cgroup(cgroup: str, me: int, timeout: float = 5.0) -> None:
    """SIGKILL the tasks still in a leftover cgroup (writers of a dead run) and wait until it is empty."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = [int(p) for p in _read_text(os.path.join(cgroup, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return
        pids = [p for p in pids if p != me]
        if not pids or time.monotonic() >= deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def sweep(owned: Callable[[int], bool], tools: Dict[str, str], mount: Optional[str],
          dirs: List[str]) -> Dict[str, List[str]]:
    """Remove every kmem-io resource whose owner pid passes OWNED: tasks in its cgroups, mounts,
    loop devices, temporary directories, writer files in DIRS, then the cgroups.
    Returns ``removed`` and ``errors`` (one line each); never raises for a resource."""
    removed, errors = [], []  # type: List[str], List[str]
    me = os.getpid()
    cgroups = _find_cgroups(mount, owned)
    for cgroup in cgroups:
        _empty_cgroup(cgroup, me)
    for mount_point, _, _ in mountinfo("/"):
        if not _ours(mount_point, MOUNT_DIR, owned):
            continue
        ok = False
        for _ in range(10):
            if command([tools.get("umount", "umount"), mount_point])[0] == 0:
                ok = True
                break
            time.sleep(0.2)
        if ok:
            removed.append("unmounted %s" % mount_point)
        elif command([tools.get("umount", "umount"), "-l", mount_point])[0] == 0:
            removed.append("unmounted %s (lazily: still busy)" % mount_point)
        else:
            errors.append("cannot unmount %s" % mount_point)
    for device, backing in _loop_devices():
        if not _ours(backing, IMAGE_NAME, owned):
            continue
        code, _, err = command([tools.get("losetup", "losetup"), "-d", device])
        if code == 0:
            removed.append("detached %s (backing %s)" % (device, backing))
        else:
            errors.append("cannot detach %s: %s" % (device, first_line(err)))
    tmp = tempfile.gettempdir()
    try:
        names = sorted(os.listdir(tmp))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(tmp, name)
        owner = _owner(_RUN_DIR, name)
        if owner is None or not owned(owner) or os.path.islink(path) or not os.path.isdir(path):
            continue
        if os.path.ismount(os.path.join(path, MOUNT_DIR)):
            errors.append("kept %s: %s is still mounted" % (path, MOUNT_DIR))
            continue
        try:
            shutil.rmtree(path)
            removed.append("removed %s" % path)
        except OSError as err:
            errors.append("cannot remove %s: %s" % (path, err.strerror or err))
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            owner = _owner(_WRITER_FILE, name)
            if owner is None or not owned(owner):
                continue
            try:
                os.unlink(os.path.join(directory, name))
                removed.append("removed %s" % os.path.join(directory, name))
            except OSError as err:
                errors.append("cannot remove %s: %s" % (os.path.join(directory, name), err.strerror))
    for cgroup in cgroups:
        try:
            os.rmdir(cgroup)
            removed.append("removed cgroup %s" % cgroup)
        except FileNotFoundError:
            pass
        except OSError as err:
            errors.append("cannot remove cgroup %s: %s" % (cgroup, err.strerror or err))
    return {"removed": removed, "errors": errors}


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------

def _send(fd: int, message: Dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _writer_body(cgroup: str, path: str, cfg: KmemIoConfig, budget: int, go_r: int, res_w: int) -> int:
    """A writer process: join the cgroup, wait for "go", pwrite + fsync in a loop, report."""
    pid = os.getpid()
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    except OSError as err:
        _send(res_w, {"error": "joining %s: %s" % (cgroup, err.strerror or err)})
        return 2
    _send(res_w, {"joined": pid})
    if os.read(go_r, 1) != b"g":
        return 0
    data = os.urandom(cfg.chunk)
    slots = budget // cfg.chunk
    latencies, starts = [], []  # type: List[float], List[float]
    written, n, stopped_by, error = 0, 0, "duration", None
    start = time.monotonic()
    deadline = start + cfg.duration
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            if cfg.iterations is not None and n >= cfg.iterations:
                stopped_by = "iterations"
                break
            if time.monotonic() >= deadline:
                break
            offset, view = (n % slots) * cfg.chunk, memoryview(data)
            while view:
                done = os.pwrite(fd, view, offset)
                written += done
                offset += done
                view = view[done:]
            t0 = time.monotonic()
            os.fsync(fd)
            t1 = time.monotonic()
            latencies.append(round((t1 - t0) * 1000.0, 3))
            starts.append(round(t0 - start, 3))
            n += 1
    except OSError as err:
        stopped_by, error = "error", "%s: %s" % (errno_name(err.errno or 0), err.strerror or err)
    finally:
        os.close(fd)
    _send(res_w, {"pid": pid, "iterations": n, "bytes": written, "stopped_by": stopped_by,
                  "error": error, "latencies_ms": latencies, "at_s": starts,
                  "seconds": round(time.monotonic() - start, 3)})
    return 3 if error else 0


class _Writer(object):
    """The parent's handle on one writer process."""

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self.pid = 0
        self.go_w = -1
        self.res_r = -1
        self.buffer = b""
        self.messages = []  # type: List[Dict[str, Any]]
        self.eof = False
        self.status = None  # type: Optional[int]

    def joined(self) -> bool:
        return any("joined" in m or "error" in m for m in self.messages)

    def result(self) -> Optional[Dict[str, Any]]:
        return next((m for m in self.messages if "iterations" in m), None)

    def start_error(self) -> Optional[str]:
        return next((m["error"] for m in self.messages if "error" in m and "iterations" not in m), None)


def _start_writer(index: int, cgroup: str, target: str, cfg: KmemIoConfig, budget: int,
                  started: List[_Writer]) -> _Writer:
    writer = _Writer(index, os.path.join(target, "%s%d-w%d" % (PREFIX, os.getpid(), index)))
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()

    def body() -> int:
        # The parent's ends of the other writers' pipes: holding them would hide their EOFs.
        for fd in [go_w, res_r] + [f for w in started for f in (w.go_w, w.res_r) if f >= 0]:
            os.close(fd)
        return _writer_body(cgroup, writer.path, cfg, budget, go_r, res_w)

    writer.pid = fork_child(body)
    os.close(go_r)
    os.close(res_w)
    writer.go_w, writer.res_r = go_w, res_r
    return writer


def _pump(writers: List[_Writer], deadline: float, waiting: Callable[[_Writer], bool]) -> None:
    """Read the writers' messages until none is WAITING or DEADLINE (monotonic) passes."""
    while True:
        open_ = {w.res_r: w for w in writers if not w.eof and waiting(w)}
        left = deadline - time.monotonic()
        if not open_ or left <= 0:
            return
        ready, _, _ = select.select(list(open_), [], [], min(left, 1.0))
        for fd in ready:
            w = open_[fd]
            data = os.read(fd, 65536)
            if not data:
                w.eof = True
                os.close(fd)
                w.res_r = -1
                continue
            w.buffer += data
            while b"\n" in w.buffer:
                line, w.buffer = w.buffer.split(b"\n", 1)
                w.messages.append(json.loads(line.decode()))


def _writer_summary(w: _Writer, chunk: int, slow_ms: float) -> Dict[str, Any]:
    res = w.result() or {}
    latencies = res.get("latencies_ms", [])
    return {"index": w.index, "pid": w.pid, "file": w.path, "iterations": res.get("iterations"),
            "bytes": res.get("bytes"), "chunk": chunk, "stopped_by": res.get("stopped_by"),
            "seconds": res.get("seconds"), "exit": describe_status(w.status),
            "error": res.get("error") or w.start_error(),
            "fsync_ms": latency_stats(latencies),
            "slow_fsyncs": sum(1 for v in latencies if v > slow_ms)}


def _slowest(writers: List[_Writer]) -> List[Dict[str, Any]]:
    rows = []
    for w in writers:
        res = w.result() or {}
        for i, (ms, at) in enumerate(zip(res.get("latencies_ms", []), res.get("at_s", []))):
            rows.append({"writer": w.index, "pid": w.pid, "iteration": i + 1, "ms": ms, "at_s": at})
    rows.sort(key=lambda r: (-r["ms"], r["writer"], r["iteration"]))
    return rows[:SLOWEST_SHOWN]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def run_kmem_io(cfg: KmemIoConfig, say: Callable[[str], None]) -> Dict[str, Any]:
    """Run the workload; the JSON-ready summary. SAY prints progress lines (the pids as soon as
    the writers start). Raises ReproInterrupted after cleaning up on SIGINT/SIGTERM."""
    require_root("bpftools repro kmem-io")
    validate(cfg)
    mount = memory_cgroup_mount()
    if mount is None:
        raise MissingKernelFeature(
            "cgroup v1 memory controller (kmem accounting files live in memory.kmem.*)",
            fallback="boot with systemd.unified_cgroup_hierarchy=0, or mount -t cgroup -o memory "
                     "memory /sys/fs/cgroup/memory")
    tools = {"umount": find_tool("umount", "mount"), "losetup": find_tool("losetup", "mount")}
    if cfg.directory is None:
        tools["mkfs.ext4"] = find_tool("mkfs.ext4", "e2fsprogs")
        tools["mount"] = find_tool("mount", "mount")
    me = os.getpid()
    extra_dirs = [cfg.directory] if cfg.directory else []
    summary = {"command": "kmem-io", "owner_pid": me, "interrupted": None}  # type: Dict[str, Any]
    writers = []  # type: List[_Writer]
    interrupted = None  # type: Optional[int]
    started = time.monotonic()
    signals = Signals()
    with signals:
        try:
            summary["leftovers_removed"] = sweep(owned_by_dead_run, tools, mount, extra_dirs)
            mark, log_error = kmsg_mark()
            summary.update(_setup_and_write(cfg, mount, tools, writers, say))
            summary["kernel_log"] = _kernel_log(mark, log_error)
        except Signalled as sig:
            interrupted = sig.signum
        finally:
            with signals.deferred():
                live = [w.pid for w in writers if w.status is None and w.pid]
                for pid, status in kill_and_reap(live).items():
                    next(w for w in writers if w.pid == pid).status = status
                summary["cleanup"] = sweep(lambda pid: pid == me, tools, mount, extra_dirs)
                warn_cleanup_errors(summary["cleanup"]["errors"])
    interrupted = interrupted or (signals.received[0] if signals.received else None)
    if interrupted is not None:
        raise interrupted_error("repro kmem-io", interrupted, time.monotonic() - started, summary["cleanup"],
                                "writers stopped, cleaned up (%d items removed)" % len(summary["cleanup"]["removed"]))
    return summary


def _kernel_log(mark: Optional[int], error: Optional[str]) -> Dict[str, Any]:
    """What the kernel logged during the run: findings of the incident detectors."""
    if mark is None:
        return {"available": False, "error": error, "findings": []}
    lines = kmsg_since(mark)
    return {"available": True, "error": None, "records": len(lines),
            "findings": [{"kind": f.kind, "count": f.count} for f in find_incidents(lines)]}


def _setup_and_write(cfg: KmemIoConfig, mount: str, tools: Dict[str, str], writers: List[_Writer],
                     say: Callable[[str], None]) -> Dict[str, Any]:
    """Cgroup, kmem activation, file system, writers; appends each writer to WRITERS at once so
    the caller's cleanup can stop it."""
    me = os.getpid()
    out = {}  # type: Dict[str, Any]
    cgroup = os.path.join(_cgroup_parent(mount), "%s%d" % (PREFIX, me))
    if os.path.isdir(cgroup):  # a dead process with our pid left it (pid reuse)
        os.rmdir(cgroup)
    os.mkdir(cgroup)
    limit = write_cgroup_file(os.path.join(cgroup, "memory.limit_in_bytes"), str(cfg.memory_limit))
    if limit["result"] != "ok":
        raise ReproError("setting memory.limit_in_bytes of %s to %d failed: %s"
                         % (cgroup, cfg.memory_limit, limit["error"]))
    out["cgroup"] = {"path": cgroup, "memory_limit_requested": cfg.memory_limit,
                     "memory_limit_read_back": limit["read_back"]}
    kmem_file = os.path.join(cgroup, KMEM_LIMIT)
    present = os.path.exists(kmem_file)
    kmem_writes = [write_cgroup_file(kmem_file, v) for v in RUNC_KMEM_WRITES] if present and cfg.kmem else []
    slabinfo = slabinfo_state(os.path.join(cgroup, KMEM_SLABINFO))
    effect, explanation = kmem_effect(kmem_writes, slabinfo, present, cfg.kmem)
    out["kmem"] = {"file": kmem_file if present else None, "writes": kmem_writes, "slabinfo": slabinfo,
                   "effect": effect, "explanation": explanation}
    say("cgroup %s: memory limit %s (read back %s); kmem: %s" % (
        cgroup, cfg.memory_limit, limit["read_back"],
        ", ".join("%s -> %s (read back %s)" % (w["value"], w["result"], w["read_back"]) for w in kmem_writes)
        or effect))
    say("kmem effect: %s: %s" % (effect, explanation))

    if cfg.directory is None:
        tmp = tempfile.mkdtemp(prefix="%s%d-" % (PREFIX, me))
        fs = _make_filesystem(tmp, cfg.size, tools)
        usable = cfg.size * 3 // 4
        say("file system: ext4 on %s (image %s, %s) mounted at %s"
            % (fs["device"], fs["image"], format_size(cfg.size), fs["mount"]))
    else:
        target = os.path.realpath(cfg.directory)
        mount_point, fstype = _mount_of(target)
        st = os.statvfs(target)
        usable = min(cfg.size, st.f_bavail * st.f_frsize // 2)
        fs = {"kind": "dir", "target_dir": target, "mount": mount_point, "fstype": fstype,
              "device": None, "image": None, "size": None}
        say("file system: %s (%s mounted at %s)" % (target, fstype, mount_point))
    out["filesystem"] = fs
    budget = writer_budget(usable, cfg.writers, cfg.chunk)
    out["file_budget_per_writer"] = budget

    for index in range(1, cfg.writers + 1):
        writer = _start_writer(index, cgroup, fs["target_dir"], cfg, budget, writers)
        writers.append(writer)
        say("writer %d: pid %d" % (index, writer.pid))
    _pump(writers, time.monotonic() + JOIN_TIMEOUT, lambda w: not w.joined())
    for w in writers:
        if w.start_error() or not w.joined():
            raise ReproError("writer %d (pid %d) could not start: %s"
                             % (w.index, w.pid, w.start_error() or "no answer in %d s" % JOIN_TIMEOUT))
    in_cgroup = sorted(int(p) for p in _read_text(os.path.join(cgroup, "cgroup.procs")).split())
    missing = [w.pid for w in writers if w.pid not in in_cgroup]
    if missing:
        raise ReproError("writers %s are not in %s/cgroup.procs" % (missing, cgroup))
    out["cgroup"]["pids_in_cgroup"] = in_cgroup
    write_ready_file(cfg.ready_file, {
        "owner_pid": me, "pids": [w.pid for w in writers], "cgroup": cgroup,
        "target_dir": fs["target_dir"], "device": fs["device"], "image": fs["image"]})
    if cfg.start_delay:
        say("starting in %.1f s (attach tracers now: -p %s)"
            % (cfg.start_delay, ",".join(str(w.pid) for w in writers)))
        time.sleep(cfg.start_delay)
    began = time.monotonic()
    for w in writers:
        os.write(w.go_w, b"g")
        os.close(w.go_w)
        w.go_w = -1
    _pump(writers, began + cfg.duration + FINISH_GRACE, lambda w: True)
    for w in writers:
        w.status = reap(w.pid, 10.0)
    if any(w.status is None for w in writers):
        raise ReproError("writers %s did not finish within %d s of --duration (stuck in fsync?)"
                         % ([w.pid for w in writers if w.status is None], FINISH_GRACE))
    out["seconds"] = round(time.monotonic() - began, 3)
    out["cgroup"]["counters_after"] = _counters(cgroup)
    all_ms = []  # type: List[float]
    for w in writers:
        all_ms.extend((w.result() or {}).get("latencies_ms", []))
    out["writers"] = [_writer_summary(w, cfg.chunk, cfg.slow_ms) for w in writers]
    out["iterations"] = sum(w["iterations"] or 0 for w in out["writers"])
    out["bytes"] = sum(w["bytes"] or 0 for w in out["writers"])
    out["fsync_ms"] = latency_stats(all_ms)
    out["slow_ms"] = cfg.slow_ms
    out["slow_fsyncs"] = sum(1 for v in all_ms if v > cfg.slow_ms)
    out["slowest"] = _slowest(writers)
    return out


def failed_writers(summary: Dict[str, Any]) -> List[str]:
    """One line per writer that did not end cleanly (the CLI exits non-zero after the summary)."""
    return ["writer %d (pid %d): %s" % (w["index"], w["pid"], w["error"] or w["exit"])
            for w in summary.get("writers", []) if w["error"] or w["exit"] != "ok"]


def render_text(summary: Dict[str, Any]) -> List[str]:
    """The summary as plain lines for a terminal."""
    ms = summary["fsync_ms"]
    lines = ["kmem-io: %d writers, %d fsyncs, %s written in %.1f s" % (
        len(summary["writers"]), summary["iterations"], format_size(summary["bytes"]), summary["seconds"])]
    lines.append("  cgroup %s (memory limit read back %s)" % (
        summary["cgroup"]["path"], summary["cgroup"]["memory_limit_read_back"]))
    lines.append("  kmem: %s" % summary["kmem"]["effect"])
    for w in summary["writers"]:
        f = w["fsync_ms"]
        lines.append("  writer %d pid %d: %s iterations, %s bytes, fsync ms min %s median %s p99 %s max %s, "
                     "%d slow, %s" % (w["index"], w["pid"], w["iterations"], w["bytes"], f["min"], f["median"],
                                      f["p99"], f["max"], w["slow_fsyncs"], w["exit"]))
    lines.append("  fsync ms: min %s median %s p99 %s max %s; %d over %s ms" % (
        ms["min"], ms["median"], ms["p99"], ms["max"], summary["slow_fsyncs"], summary["slow_ms"]))
    for row in summary["slowest"][:3]:
        lines.append("  slowest: writer %d iteration %d: %.3f ms at +%.3f s" % (
            row["writer"], row["iteration"], row["ms"], row["at_s"]))
    for finding in summary.get("kernel_log", {}).get("findings", []):
        lines.append("  kernel log during the run: %s x%d" % (finding["kind"], finding["count"]))
    cleanup = summary["cleanup"]
    lines.append("  cleanup: %d removed%s" % (len(cleanup["removed"]), "; errors: " + "; ".join(cleanup["errors"])
                                              if cleanup["errors"] else ""))
    return lines
