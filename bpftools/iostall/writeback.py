"""The writeback section of the I/O-stall program: writeback calls slower than a threshold, nested.

Each thread keeps a stack of the writeback calls it is inside, so an outer ``do_writepages`` and the
``ext4_writepages`` in it are both reported, each with its nesting depth.
"""
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import click
from dataclasses import dataclass

from ..analyses import stacks
from ..capture import Attach, c_text
from ..errors import BadInput, MissingKernelFeature
from ..event import JsonEvent
from ..kernel.hostroot import host_path
from ..kernel.pods import container_named
from ..kernel.target import Target
from .program import EV_WRITEBACK, Decoder, Plan, new_plan, unwinder_sees_through_kretprobes


WB_SRC = {100: "writeback_single_inode", 101: "ext4_writepages"}   # probes/writeslow.h WB_SRC_*


WB_F_INODE, WB_F_WRITTEN, WB_F_DEEPER, WB_F_EXIT_STACK = 1, 2, 4, 8


WB_SLOTS = 8


WB_ARG_NONE, WB_ARG_MAPPING, WB_ARG_PAGE = 0, 1, 2


# Writeback functions, outermost first, and the kind of their first argument (kernel-facts.md,
# "Writeback"). iomap_writepages took (mapping, wbc, wpc, ops) up to 6.16 and only (wpc) since:
# its argument is not read. Clones (.isra.N) may reorder arguments: not read either.
WRITEBACK_FUNCTIONS = (
    ("do_writepages", WB_ARG_MAPPING), ("generic_writepages", WB_ARG_MAPPING),
    ("ext4_writepages", WB_ARG_MAPPING), ("xfs_vm_writepages", WB_ARG_MAPPING),
    ("iomap_writepages", WB_ARG_NONE), ("__writepage", WB_ARG_PAGE), ("ext4_writepage", WB_ARG_PAGE),
    ("xfs_vm_writepage", WB_ARG_PAGE),
)


# The writeback functions no other of them calls: every ->writepages runs inside do_writepages, and
# ->writepage is outermost where reclaim calls it (pageout). A plan of these alone (watch) times every
# writeback once, at half the probes of the nested list.
OUTERMOST_FUNCTIONS = ("do_writepages", "ext4_writepage", "xfs_vm_writepage")


LONG_MAX = 2 ** 63 - 1


STRUCT_READS = ["OFF_PAGE_MAPPING", "OFF_MAPPING_HOST", "OFF_INODE_INO", "OFF_INODE_SB", "OFF_SB_DEV",
                "OFF_WBC_NR_TO_WRITE"]


@dataclass
class WritebackCall(JsonEvent):
    """One writeback call that took at least the threshold."""

    TYPE = "writeback"

    ts_ns: int                     # when it returned
    start_ns: int
    duration_ns: int
    tgid: int
    tid: int
    comm: str
    func: str
    depth: int                     # calls of this thread it was nested in (0 = outermost)
    dev: Optional[str]             # "major:minor"
    ino: Optional[int]
    bdi: Optional[str]
    nr_to_write: Optional[int]     # None for "everything" (LONG_MAX, a sync) or unknown
    written: Optional[int]         # pages written
    ret: Optional[int]
    deeper: bool                   # nesting went past the recorded depth: inner calls not shown
    wb_cgroup_ino: Optional[int]   # the bdi_writeback's cgroup (cgroup writeback), as an inode number
    wb_cgroup: Optional[str]
    wb_container: Optional[Dict[str, Any]]
    kstack: Optional[List[str]]    # the callers (taken at entry, or at the end of a slow call), innermost first
    cgroup: Optional[str]          # the writing task's memory cgroup (a kworker's is the root)
    container: Optional[Dict[str, Any]]


def kernel_dev(dev: int) -> str:
    """major:minor of a kernel dev_t (MINORBITS 20)."""
    return "%d:%d" % (dev >> 20, dev & 0xFFFFF)


def decode(raw: Any, decoder: Decoder) -> Optional[WritebackCall]:
    """The one place a raw EV_WRITEBACK record becomes a WritebackCall."""
    if raw.type != EV_WRITEBACK:
        return None
    flags = int(raw.flags)
    func_id = int(raw.func)
    func = WB_SRC.get(func_id) or decoder.plan.slots.get(func_id) or "slot%d" % func_id
    bdi = c_text(bytes(raw.name)) or None
    dev = kernel_dev(int(raw.dev)) if raw.dev else (bdi if bdi and re.match(r"^\d+:\d+$", bdi) else None)
    known = bool(flags & WB_F_INODE)
    wb_ino = int(raw.cgroup_ino) or None
    wb_cgroup = decoder.wb_cgroup(wb_ino) if wb_ino else None
    wb_ref = container_named(wb_cgroup)
    proc = decoder.process(int(raw.tgid))
    nr = int(raw.nr_to_write)
    start, end = int(raw.start_ns), int(raw.ts_ns)
    return WritebackCall(
        ts_ns=end, start_ns=start, duration_ns=end - start, tgid=int(raw.tgid), tid=int(raw.tid),
        comm=c_text(bytes(raw.comm)), func=func, depth=int(raw.depth), dev=dev if known else None,
        ino=int(raw.ino) if known else None, bdi=bdi,
        nr_to_write=nr if known and 0 < nr < LONG_MAX else None,
        written=int(raw.written) if flags & WB_F_WRITTEN else None,
        ret=int(raw.ret) if func_id == 101 else None, deeper=bool(flags & WB_F_DEEPER),
        wb_cgroup_ino=wb_ino, wb_cgroup=wb_cgroup, wb_container=wb_ref.to_json() if wb_ref else None,
        kstack=_entry_stack(decoder.frames(int(raw.kstack)), func, func_id in decoder.plan.slots and
                            bool(flags & WB_F_EXIT_STACK)),
        cgroup=proc["cgroup"], container=proc["container"])


def _entry_stack(frames: Optional[List[str]], func: str, at_kretprobe: bool) -> Optional[List[str]]:
    """FRAMES as the call's entry would have seen them: a stack taken in a kretprobe starts at the
    caller (the probed function has returned), so FUNC is put back on top."""
    if at_kretprobe and frames and stacks.base_name(frames[0]) != stacks.base_name(func):
        return [func] + frames
    return frames


def forget_dead_threads(bpf: Any) -> int:
    """Delete the writeback stacks (WB_KEEP_STACKS) of threads that no longer exist; how many. (A new
    thread given a dead one's id between the check and the delete would lose the call it is in.)"""
    table = bpf["wb_stacks"]
    dead = [key for key in table.keys() if not os.path.exists(host_path("/proc/%d" % key.value))]
    for key in dead:
        try:
            del table[key]
        except KeyError:
            pass
    return len(dead)


def plan(target: Target, mode: str, pid: Optional[int], min_ns: int, functions: Tuple[str, ...] = (),
         always_on: bool = False) -> Plan:
    """kprobes on this kernel's writeback functions (or FUNCTIONS), or the tracepoint pairs. ALWAYS_ON
    (watch): only the functions no other of them calls, no stack walk at the entry of every call
    where the stack cannot wait for the end of a slow one (before 5.15: 87 µs per call under the lab's
    emulation, the largest part of watch's cost there; its sleeps keep their own stacks), and each
    thread's writeback stack kept in the map between calls (forget_dead_threads sweeps it)."""
    if functions and mode == "tracepoint":
        raise click.BadParameter("-F/--function needs kprobes: use it without --mode tracepoint")
    # Without kretprobe maxactive (before 4.12) a kretprobe follows about one call per CPU: the returns
    # of calls that sleep, the slow ones, are missed. auto then takes the tracepoint pairs.
    maxactive = target.kretprobe_maxactive()
    out = new_plan(target, "kprobe" if functions else mode, "writeslow", pid, {"WB_MIN_NS": min_ns},
                   kprobes_wanted=maxactive or mode == "kprobe" or bool(functions))
    if not maxactive:
        out.notes.append("writeslow: this kernel's kretprobes have no maxactive (before 4.12): %s" % (
            "slow calls' returns may be missed (counted as lost records)" if out.mode == "kprobe" else
            "writebacks timed by the tracepoint pairs"))
    if always_on:
        out.flags.append("WB_KEEP_STACKS")
    if out.mode == "kprobe":
        table = target.symbols()
        kinds = dict(WRITEBACK_FUNCTIONS)
        every = OUTERMOST_FUNCTIONS if always_on else tuple(name for name, _ in WRITEBACK_FUNCTIONS)
        wanted = list(functions or every)
        for name in wanted:
            r = table.resolve(name)
            if r.attach is None:
                if functions:
                    raise BadInput("cannot probe %s: %s" % (name, r.note))
                continue
            if r.attach in out.slots.values():
                continue
            if len(out.slots) == WB_SLOTS:
                raise BadInput("at most %d writeback functions at once" % WB_SLOTS)
            slot = len(out.slots)
            out.slots[slot] = r.attach
            out.params["WB_ARG%d" % slot] = kinds.get(name, WB_ARG_NONE) if r.how in ("exact", "noprof") else WB_ARG_NONE
            out.kprobes += [Attach(r.attach, "wb_return_%d" % slot, ret=True), Attach(r.attach, "wb_entry_%d" % slot)]
        if out.slots:
            out.flags.append("WANT_WB_KPROBE")
            source = out.read_structs(target, STRUCT_READS)
            extra = ("device, inode and pages read from the arguments" if source else
                     "no device/inode/pages (needs BTF or this kernel's own headers)")
            if unwinder_sees_through_kretprobes(table):
                out.flags.append("WB_STACK_AT_EXIT")
            elif always_on:
                out.flags.append("WB_NO_STACK")
                extra += "; no stacks of the writeback calls (before 5.15 only at each call's entry: too costly to leave on)"
            else:
                extra += "; stacks of nested calls end at the outer call (kretprobe_trampoline, before 5.15)"
            out.notes.append("writeslow: kprobe mode on %s; %s" % (", ".join(out.slots.values()), extra))
            return out
        if mode == "kprobe":
            raise MissingKernelFeature("any writeback function to probe (%s)" % ", ".join(wanted),
                                       fallback="--mode tracepoint")
        out.mode = "tracepoint"
        out.notes.append("writeslow: none of %s can be probed" % ", ".join(wanted))
    single = target.tracepoint_fields("writeback", "writeback_single_inode_start")
    ext4 = target.tracepoint_fields("ext4", "ext4_writepages")
    if single is None and ext4 is None:
        raise MissingKernelFeature("writeback tracepoints (writeback:writeback_single_inode_start, "
                                   "ext4:ext4_writepages)")
    out.flags += ["WANT_WB_TP", "WB_STACK_AT_EXIT"]
    pairs = []
    if single is not None and target.tracepoint_exists("writeback", "writeback_single_inode"):
        out.flags.append("HAVE_TP_WBSI")
        pairs.append("writeback_single_inode")
        if "cgroup_ino" in single:
            out.flags.append("HAVE_WB_CGROUP_INO")
    if ext4 is not None and target.tracepoint_exists("ext4", "ext4_writepages_result"):
        out.flags.append("HAVE_TP_EXT4")
        pairs.append("ext4_writepages")
    if not pairs:
        raise MissingKernelFeature("a writeback tracepoint pair (writeback:writeback_single_inode_start with "
                                   "writeback_single_inode, or ext4:ext4_writepages with ext4_writepages_result)")
    out.notes.append("writeslow: tracepoint mode: %s start/end pairs" % " and ".join(pairs))
    return out
