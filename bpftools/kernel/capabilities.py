"""What this kernel offers a tracer, computed once: every tool picks its attach strategy from it.

Feature detection, never version comparison: each check looks for the thing itself (a tracefs file,
a kallsyms symbol, a syscall that succeeds). ``bpftools doctor --capabilities`` prints the table.
"""
import ctypes
import errno
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from dataclasses import dataclass, field

from . import btf
from .breakpoints import open_breakpoint
from .cpus import online_cpus
from .headers import header_text, headers_release
from .cgroups import cgroup_layout
from .distro import distro_name
from .symbols import SymbolTable
from .tracefs import find_tracefs, tracepoint_exists

FentryTest = Callable[[str], Tuple[bool, str]]

# Tracepoints the tools use; each has a kprobe-free role (see the tools).
WANTED_TRACEPOINTS = (
    "syscalls:sys_enter_openat", "syscalls:sys_enter_open", "syscalls:sys_enter_write",
    "sched:sched_switch", "sched:sched_process_hang", "kmem:kmem_cache_alloc",
    "writeback:wbc_writepage", "writeback:writeback_single_inode_start",
    "block:block_bio_queue", "ext4:ext4_writepages", "net:netif_receive_skb",
    "fib:fib_table_lookup",
)
# Functions the tools want to probe; resolved against kallsyms for this kernel.
WANTED_FUNCTIONS = (
    "bvec_alloc", "mempool_alloc", "kmem_cache_alloc", "slab_out_of_memory", "io_schedule_timeout",
    "finish_wait", "netdev_wait_allrefs", "netdev_run_todo", "netdev_refcnt_read", "dev_hold",
    "dst_init", "dst_destroy", "rt_bind_exception", "ip_del_fnhe", "__writepage", "do_writepages",
    "memcg_update_kmem_limit",
)


@dataclass
class Check:
    """One capability: ok is True, False, or None when it could not be determined."""

    name: str
    ok: Optional[bool]
    detail: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Capabilities:
    """The capability table of this node."""

    release: str
    distro: str
    checks: List[Check] = field(default_factory=list)
    tracepoints: Dict[str, bool] = field(default_factory=dict)
    symbols: List[Any] = field(default_factory=list)   # symbols.Resolution
    cgroup_layout: str = "unknown"

    def ok(self, name: str) -> bool:
        """True only when the named check succeeded."""
        return any(c.name == name and c.ok for c in self.checks)

    def check(self, name: str) -> Optional[Check]:
        for c in self.checks:
            if c.name == name:
                return c
        return None

    def to_json(self) -> Dict[str, Any]:
        return {
            "kernel_release": self.release,
            "distro": self.distro,
            "checks": [c.to_json() for c in self.checks],
            "tracepoints": dict(self.tracepoints),
            "symbols": [s.to_json() for s in self.symbols],
            "cgroup_layout": self.cgroup_layout,
        }


def check_kprobes(tracefs: Optional[str]) -> Check:
    if tracefs is None:
        return Check("kprobes", None, "tracefs not mounted: cannot tell")
    if os.path.exists(os.path.join(tracefs, "kprobe_events")):
        return Check("kprobes", True, "kprobe_events present")
    return Check("kprobes", False, "no kprobe_events in tracefs (CONFIG_KPROBES off): tracepoint fallbacks only")


def _check_headers(release: str) -> Check:
    build = "/lib/modules/%s/build" % release
    if not os.path.isdir(os.path.join(build, "include")):
        return Check("kernel_headers", False,
                     "no headers at %s: bcc cannot compile (install kernel-devel / linux-headers)" % build)
    version = headers_release(release)
    if version and version != release:
        return Check("kernel_headers", True,
                     "headers of %s, not %s: usable for tracepoints only; never read structs" % (version, release))
    return Check("kernel_headers", True, "headers at %s" % os.path.realpath(build))


def _check_hw_breakpoint() -> Check:
    """Try it the way refleak arms them: a disabled watchpoint bound to one CPU, every task (pid -1).

    Not one bound to this process: a task-bound perf event flips the perf_sched_events static key in
    ``__schedule`` on open and again a second after close, two live patches of the scheduler per check."""
    target = ctypes.c_uint32(0)
    try:
        fd = open_breakpoint(ctypes.addressof(target), cpu=online_cpus()[0])
    except OSError as e:
        return Check("hw_breakpoints", False, "perf_event_open(BREAKPOINT): %s" % errno.errorcode.get(e.errno, e))
    os.close(fd)
    return Check("hw_breakpoints", True, "perf_event_open(PERF_TYPE_BREAKPOINT) accepted")


def _check_blacklist(table: Any) -> Check:
    if table.blacklist_known:
        return Check("kprobe_blacklist", True, "%d entries" % table.blacklist_size)
    return Check("kprobe_blacklist", None, "no kprobes blacklist file (old kernels lack it; bcc#2413)")


def _check_fentry(symbols: List[Any], try_fentry: Optional[FentryTest]) -> Check:
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return Check("fentry", False, "no BTF: fentry/fexit need /sys/kernel/btf/vmlinux (5.5+)")
    if try_fentry is None:
        return Check("fentry", None, "not tried")
    target = next((s.attach for s in symbols if s.attach), None)
    if target is None:
        return Check("fentry", None, "no resolvable function to try")
    ok, why = try_fentry(target)
    return Check("fentry", ok, why)


def detect(try_fentry: Optional[FentryTest] = None) -> Capabilities:
    """Compute the capability table of the running kernel (root gives the full picture).

    TRY_FENTRY (the capture layer's, which loads BPF) attaches a fentry program as the honest test;
    without it fentry is "not tried"."""
    release = os.uname().release
    tracefs = find_tracefs()
    caps = Capabilities(release=release, distro=distro_name())
    caps.checks.append(Check("root", os.geteuid() == 0, "euid %d" % os.geteuid()))
    caps.checks.append(Check("tracefs", tracefs is not None, tracefs or "not mounted"))
    caps.checks.append(check_kprobes(tracefs))
    table = SymbolTable.from_system()
    caps.checks.append(_check_blacklist(table))
    caps.symbols = table.resolve_all(WANTED_FUNCTIONS)
    caps.checks.append(Check("btf", os.path.exists("/sys/kernel/btf/vmlinux"), "/sys/kernel/btf/vmlinux"))
    caps.checks.append(_check_fentry(caps.symbols, try_fentry if os.geteuid() == 0 else None))
    caps.checks.append(_check_headers(release))
    caps.checks.append(Check("ring_buffer", table.has("bpf_ringbuf_output"), "BPF ring buffer (5.8+)"))
    caps.checks.append(Check("perf_buffer", table.has("bpf_perf_event_output"), "BPF perf buffer (4.4+)"))
    caps.checks.append(Check("stack_maps", table.has("bpf_get_stackid"), "BPF stack trace maps (4.6+)"))
    caps.checks.append(_check_hw_breakpoint())
    caps.tracepoints = dict((tp, tracepoint_exists(*tp.split(":"), tracefs=tracefs))
                            for tp in WANTED_TRACEPOINTS)
    caps.cgroup_layout = cgroup_layout()
    return caps


def perf_event_addr(btf_path: str = btf.VMLINUX) -> bool:
    """True when a perf_event BPF program can read the breakpoint's address (``ctx->addr``: struct
    bpf_perf_event_data's ``addr``, added about Linux 4.17): from BTF, else this kernel's uapi
    header."""
    if btf.offsets({"addr": [("bpf_perf_event_data", "addr")]}, btf_path):
        return True
    text = header_text("uapi/linux/bpf_perf_event.h") or ""
    return bool(re.search(r"struct bpf_perf_event_data\s*\{[^}]*\baddr;", text))


def kprobes_available() -> bool:
    """True when this kernel has kprobes (the capability layer's check)."""
    return bool(check_kprobes(find_tracefs()).ok)
