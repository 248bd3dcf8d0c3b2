"""The capability checks every tool runs first must not live-patch the scheduler.

A perf event bound to a task turns the ``perf_sched_events`` static key on, and off again a second
after it is closed: each flip rewrites a jump site in ``__schedule`` (text_poke_bp). A 6.12 lab VM
died of exactly that, an unhandled int3 at ``__schedule+0x410``, a ``perf_sched_events`` site, in the
idle task. The hardware-breakpoint check now opens its event the way refleak arms them (one CPU,
every task), which never touches the key. Read here from /proc/kcore, the key's ``enabled`` count.

Runs inside ``python3 lab/run.py SUITE -- tests/kernel/test_capability_checks.py``.
"""
import ctypes
import os
import struct

import pytest

from bpftools.kernel import capabilities
from bpftools.kernel.breakpoints import open_breakpoint
from bpftools.kernel.symbols import read_kallsyms, symbol_address

pytestmark = pytest.mark.kernel

PT_LOAD = 1


def read_kernel(addr: int, size: int) -> bytes:
    """SIZE bytes of kernel memory at ADDR, through /proc/kcore's ELF program headers."""
    with open("/proc/kcore", "rb") as f:
        header = f.read(64)
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack("<IIQQQQQQ", f.read(56))
            if kind == PT_LOAD and vaddr <= addr and addr + size <= vaddr + filesz:
                f.seek(offset + addr - vaddr)
                return f.read(size)
    raise LookupError(hex(addr))


def perf_sched_events() -> int:
    """The key's ``enabled`` count (struct static_key starts with it, an atomic_t)."""
    addr = symbol_address(read_kallsyms(), "perf_sched_events")
    assert addr is not None, "perf_sched_events is not in kallsyms"
    return struct.unpack("<i", read_kernel(addr, 4))[0]


def test_the_checks_leave_perf_sched_events_alone_and_a_task_bound_event_would_not():
    assert perf_sched_events() == 0, "something in the VM holds a task-bound perf event"
    caps = capabilities.detect()
    hw = caps.check("hw_breakpoints")
    assert hw is not None and hw.ok, hw
    assert perf_sched_events() == 0
    target = ctypes.c_uint32(0)
    fd = open_breakpoint(ctypes.addressof(target), cpu=-1, pid=0)   # the control: bound to this process
    try:
        assert perf_sched_events() == 1
    finally:
        os.close(fd)
