"""Hardware watchpoints on kernel addresses, with a BPF program run on every hit.

``perf_event_open(PERF_TYPE_BREAKPOINT)`` bound to one CPU (``pid=-1, cpu=N``) puts a data breakpoint
into one of that CPU's debug registers (x86: DR0-DR3, so 4 per CPU, shared with ptrace and kgdb);
``PERF_EVENT_IOC_SET_BPF`` attaches a ``BPF_PROG_TYPE_PERF_EVENT`` program (its fd from bcc's
``BPF.load_func(name, BPF.PERF_EVENT)``) that runs in the debug exception after each write, with the
trapping context's registers (``bpf_get_stackid`` gives the writer's kernel stack) and
``bpf_perf_event_data.addr`` = the watched address.

Plain ctypes on purpose: bcc's ``attach_perf_event_raw`` exists in 0.18, 0.26 and 0.31, but its
``perf_event_attr`` names the breakpoint fields differently across versions and it keys the events it
opens by (type, config), so a second breakpoint replaces the first in its bookkeeping. This module
owns its fds and closes them itself. Linux-only; x86-64 and arm64 syscall numbers.
"""
import ctypes
import errno
import fcntl
import os
import platform
import struct
from typing import Dict, List, Optional, Tuple

from dataclasses import dataclass, field

PERF_TYPE_BREAKPOINT = 5
HW_BREAKPOINT_R, HW_BREAKPOINT_W = 1, 2
PERF_FLAG_FD_CLOEXEC = 8
# _IO('$', 0), _IO('$', 1), _IOW('$', 8, __u32)
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
DEBUG_REGISTERS_X86 = 4          # data breakpoints per CPU (DR0-DR3)
_ATTR_DISABLED = 1               # perf_event_attr.disabled (bit 0 of the flags word)


class BreakpointAttr(ctypes.Structure):
    """``struct perf_event_attr`` up to ``bp_len`` (PERF_ATTR_SIZE_VER1, 72 bytes): all a breakpoint needs."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("bp_addr", ctypes.c_uint64), ("bp_len", ctypes.c_uint64)]


def breakpoint_attr(addr: int, length: int = 4, kind: int = HW_BREAKPOINT_W) -> BreakpointAttr:
    """A disabled breakpoint on ADDR that samples every hit (the BPF program decides what to keep)."""
    return BreakpointAttr(type=PERF_TYPE_BREAKPOINT, size=ctypes.sizeof(BreakpointAttr), sample_period=1,
                          flags=_ATTR_DISABLED, bp_type=kind, bp_addr=addr, bp_len=length)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def open_breakpoint(addr: int, cpu: int, length: int = 4, kind: int = HW_BREAKPOINT_W, pid: int = -1) -> int:
    """perf_event_open a disabled watchpoint on ADDR on CPU (PID -1: every task; 0 with CPU -1: this process
    only); returns its fd, OSError(errno) on failure.

    ENOSPC: the CPU's debug registers are all in use; EINVAL: a bad address or length; EACCES/EPERM:
    not root (a kernel-address breakpoint needs CAP_SYS_ADMIN)."""
    nr = SYS_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, "perf_event_open: unknown syscall number on %s" % platform.machine())
    attr = breakpoint_attr(addr, length, kind)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.byref(attr), ctypes.c_int(pid), ctypes.c_int(cpu),
                      ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, "perf_event_open(breakpoint %#x, cpu %d): %s" % (addr, cpu, os.strerror(err)))
    return int(fd)


def read_hits(fd: int) -> int:
    """How many times breakpoint FD was hit (perf counts every hit, also those whose BPF program the
    kernel did not run). read_format 0: the count alone, one u64."""
    return int(struct.unpack("=Q", os.read(fd, 8))[0])


def attach_program(fd: int, prog_fd: int) -> None:
    """Attach the BPF perf-event program PROG_FD to breakpoint FD and enable it."""
    fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
    fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)


@dataclass
class Armed:
    """What arming one watch did: the CPUs watched and, for the others, why not (an errno name)."""

    key: int
    cpus: List[int] = field(default_factory=list)
    failed: Dict[int, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed and bool(self.cpus)


class Watchpoints(object):
    """The breakpoints of one run, grouped by a caller's key (e.g. a device's address).

    ``arm(key, {cpu: addr}, prog_fd)`` opens one breakpoint per CPU and attaches the program;
    ``disarm(key)`` stops them, reads how often each was hit and closes them; ``close()`` closes
    everything. ``opener``/``attacher``/``reader`` are injectable for tests.
    """

    def __init__(self, opener=open_breakpoint, attacher=attach_program, reader=read_hits) -> None:
        self._open = opener
        self._attach = attacher
        self._read = reader
        self._fds = {}  # type: Dict[int, List[Tuple[int, int]]]

    def arm(self, key: int, addrs: Dict[int, int], prog_fd: int, length: int = 4) -> Armed:
        """Watch ADDRS[cpu] on each cpu for writes; a CPU that fails is reported, the others stay armed."""
        result = Armed(key)
        fds = self._fds.setdefault(key, [])
        for cpu in sorted(addrs):
            try:
                fd = self._open(addrs[cpu], cpu, length)
            except OSError as err:
                result.failed[cpu] = errno.errorcode.get(err.errno or 0, str(err.errno))
                continue
            try:
                self._attach(fd, prog_fd)
            except OSError as err:
                os.close(fd)
                result.failed[cpu] = errno.errorcode.get(err.errno or 0, str(err.errno))
                continue
            fds.append((cpu, fd))
            result.cpus.append(cpu)
        if not fds:
            del self._fds[key]
        return result

    def armed(self, key: int) -> List[int]:
        """CPUs on which KEY is watched now."""
        return [cpu for cpu, _ in self._fds.get(key, [])]

    def keys(self) -> List[int]:
        return sorted(self._fds)

    def disarm(self, key: int) -> Dict[int, Optional[int]]:
        """Stop watching KEY; returns {cpu: hits} for the CPUs that were watched (None: unreadable).
        Every breakpoint is disabled before any is read, so the counts end at the same moment."""
        fds = self._fds.pop(key, [])
        for _, fd in fds:
            try:
                fcntl.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)
            except OSError:
                pass
        hits = {}  # type: Dict[int, Optional[int]]
        for cpu, fd in fds:
            try:
                hits[cpu] = self._read(fd)
            except OSError:
                hits[cpu] = None
            _close(fd)
        return hits

    def close(self) -> None:
        for key in list(self._fds):
            self.disarm(key)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def slot_limit(machine: Optional[str] = None) -> Optional[int]:
    """Data breakpoints per CPU on this architecture (None when not known)."""
    return DEBUG_REGISTERS_X86 if (machine or platform.machine()) in ("x86_64", "i686", "i386") else None
