"""The mempool section of the I/O-stall program: sleeps inside mempool_alloc (up to 5 s each).

When a bio_vec slab allocation fails, ``bvec_alloc`` falls back to the biovec mempool; with the pool
empty, ``mempool_alloc`` sleeps in ``io_schedule_timeout(5*HZ)`` until an element is freed (woken
early) or the 5 s pass (timed out), and tries again (mm/mempool.c, the same in 3.10 and 6.x).
"""
import re
from typing import Any, Dict, List, Optional

import click
from dataclasses import dataclass

from ..analyses import stacks
from ..analyses.iojitter import timed_out
from ..capture import Attach, c_text
from ..errors import MissingKernelFeature
from ..event import JsonEvent
from ..kernel.target import Target
from .program import EV_MEMPOOL_ALLOC, EV_SLEEP, Decoder, Plan, new_plan, unwinder_sees_through_kretprobes


SLEEP_F_MEMPOOL, SLEEP_F_SCHED, SLEEP_F_JIFFIES = 1, 2, 64          # probes/mempoolwait.h


MPALLOC_F_NULL = 1


KPROBE_FUNCTIONS = ("mempool_alloc", "io_schedule_timeout", "finish_wait")


@dataclass
class Sleep(JsonEvent):
    """One uninterruptible sleep: a mempool wait (kprobe mode) or a D-state sleep (sched_switch)."""

    TYPE = "sleep"

    ts_ns: int                     # when it ended
    start_ns: int
    duration_ns: int
    tgid: int
    tid: int
    comm: str
    source: str                    # "kprobe" | "sched_switch"
    in_mempool: bool               # kprobe: always; sched_switch: the stack holds mempool_alloc
    timed_out: Optional[bool]      # a mempool wait that lasted the whole 5 s; None for other sleeps
    pool: Optional[Any]            # the mempool_t (kprobe mode); a kptr- token in recordings (bpftools.pointers)
    timeout_jiffies: Optional[int]
    caller: Optional[str]          # who called mempool_alloc (bvec_alloc, bio_alloc_bioset...)
    blocked_in: Optional[str]      # the innermost frame that is not the scheduler's
    kstack: Optional[List[str]]    # innermost first; None when no stack was taken
    cgroup: Optional[str]
    container: Optional[Dict[str, Any]]
    pool_cache: Optional[str] = None   # the slab cache behind the pool (mempool_alloc_slab pools, kprobe mode)


@dataclass
class MempoolAlloc(JsonEvent):
    """One mempool_alloc call that slept or was slow, seen at its return (kprobe mode only)."""

    TYPE = "mempool_alloc"

    ts_ns: int
    start_ns: int
    duration_ns: int
    tgid: int
    tid: int
    comm: str
    pool: Any                      # the mempool_t; a kptr- token in recordings (bpftools.pointers)
    sleeps: int
    waited_ns: int
    failed: bool                   # returned NULL (a caller that may not sleep)
    caller: Optional[str]
    kstack: Optional[List[str]]
    cgroup: Optional[str]
    container: Optional[Dict[str, Any]]


def dstate_mask(fmt: Optional[str]) -> int:
    """The prev_state bit sched_switch prints as "D", from its format file (2 when it cannot tell).

    Since v4.14 (commit efb40f588b43) prev_state is a task-state *index* bit, not the raw state;
    on 3.10 it is the raw state. Both print ``{ 2, "D" }`` today; reading it keeps us honest.
    """
    m = re.search(r'\{\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*"D"\s*\}', fmt or "")
    return int(m.group(1), 0) if m else 2


def decode(raw: Any, decoder: Decoder) -> Optional[Any]:
    """The one place a raw EV_SLEEP / EV_MEMPOOL_ALLOC record becomes a Sleep / MempoolAlloc."""
    if raw.type not in (EV_SLEEP, EV_MEMPOOL_ALLOC):
        return None
    frames = decoder.frames(int(raw.kstack))
    proc = decoder.process(int(raw.tgid))
    caller = stacks.caller_of(frames, stacks.MEMPOOL_ALLOC) if frames else None
    start, end = int(raw.start_ns), int(raw.ts_ns)
    common = dict(ts_ns=end, start_ns=start, duration_ns=end - start, tgid=int(raw.tgid), tid=int(raw.tid),
                  comm=c_text(bytes(raw.comm)), caller=caller, kstack=frames, cgroup=proc["cgroup"],
                  container=proc["container"])
    if raw.type == EV_MEMPOOL_ALLOC:
        return MempoolAlloc(pool=int(raw.ptr), sleeps=int(raw.written), waited_ns=int(raw.waited_ns),
                            failed=bool(raw.flags & MPALLOC_F_NULL), **common)
    kprobe = bool(raw.flags & SLEEP_F_MEMPOOL)
    in_mempool = kprobe or stacks.holds(frames, stacks.MEMPOOL_ALLOC)
    return Sleep(source="kprobe" if kprobe else "sched_switch", in_mempool=in_mempool,
                 timed_out=_timed_out(raw, end - start) if in_mempool else None,
                 pool=int(raw.ptr) if kprobe else None, timeout_jiffies=int(raw.timeout) if kprobe else None,
                 blocked_in=stacks.blocking_frame(frames), pool_cache=_pool_cache(raw, decoder) if kprobe else None,
                 **common)


def _timed_out(raw: Any, duration_ns: int) -> bool:
    """The kernel's own answer where the sleep was measured in jiffies (it lasted its whole timeout),
    else from the duration (~5 s)."""
    if raw.flags & SLEEP_F_JIFFIES and raw.timeout > 0:
        return int(raw.jiffies) >= int(raw.timeout)
    return timed_out(duration_ns)


def _pool_cache(raw: Any, decoder: Decoder) -> Optional[str]:
    """The kmem_cache name behind a slab-backed pool (pool->alloc is mempool_alloc_slab), else None."""
    if not raw.call_site or stacks.base_name(decoder.symbol(int(raw.call_site))) != "mempool_alloc_slab":
        return None
    return c_text(bytes(raw.name)) or None


def plan(target: Target, mode: str, pid: Optional[int], min_ns: int, all_dstate: bool = False,
         only_in_writeback: bool = False) -> Plan:
    """kprobes on mempool_alloc/io_schedule_timeout/finish_wait, or the sched_switch fallback.

    ONLY_IN_WRITEBACK (iojitter, which adds the writeback section): only threads inside a traced
    writeback call are followed, and no per-call records are made (no kretprobe on mempool_alloc)."""
    if all_dstate and mode == "kprobe":
        raise click.BadParameter("--all-dstate is the sched_switch view: use it without --mode kprobe")
    out = new_plan(target, mode, "mempoolwait", pid, {"SLEEP_MIN_NS": min_ns}, kprobes_wanted=not all_dstate)
    if out.mode == "kprobe":
        table = target.symbols()
        found = table.resolve_all(KPROBE_FUNCTIONS)
        missing = [r for r in found if r.attach is None or r.how == "clone"]
        if not missing:
            mp, sleep, finish = (r.attach for r in found)
            out.flags.append("WANT_SLEEP_KPROBE")
            # (kernels without kretprobe maxactive, before 4.12, are all before 5.15: no return probe)
            returns = unwinder_sees_through_kretprobes(table) and not only_in_writeback
            if only_in_writeback:
                out.flags.append("ONLY_IN_WB")
            if returns:
                out.kprobes.append(Attach(mp, "mp_alloc_return", ret=True))
            out.kprobes += [Attach(mp, "mp_alloc_entry"), Attach(sleep, "mp_sleep_entry"),
                            Attach(finish, "mp_finish_wait_entry")]
            source = out.read_structs(target, ["OFF_MEMPOOL_WAIT"])
            out.read_structs(target, ["OFF_MEMPOOL_POOL_DATA", "OFF_MEMPOOL_ALLOC", "OFF_CACHE_NAME"], slub_def=True)
            if table.has("bpf_jiffies64"):       # the helper (5.5+): timeouts told in jiffies
                out.flags.append("HAVE_JIFFIES64")
            out.notes.append("mempoolwait: kprobe mode on %s, %s, %s; %s%s" % (
                mp, sleep, finish, "a sleep ends at finish_wait(&pool->wait)" if source else
                "without BTF or headers, a sleep ends at a finish_wait on the pool's first 256 bytes",
                "; only threads inside a traced writeback" if only_in_writeback else
                "" if returns else "; no per-call records: a kretprobe on %s would hide its callers in the "
                "stacks of this kernel (before 5.15)" % mp))
            return out
        if mode == "kprobe":
            raise MissingKernelFeature("kprobe attach points: %s" % "; ".join(r.note for r in missing),
                                       fallback="--mode tracepoint")
        out.mode = "tracepoint"
        out.notes.append("mempoolwait: cannot probe %s" % "; ".join(r.note for r in missing))
    fmt = target.tracepoint_format("sched", "sched_switch")
    if fmt is None:
        raise MissingKernelFeature("tracepoint sched:sched_switch")
    out.flags.append("WANT_SLEEP_SCHED")
    out.params["DSTATE_MASK"] = dstate_mask(fmt)
    if only_in_writeback:
        out.flags.append("ONLY_IN_WB")
    what = "every D-state sleep" if all_dstate else "D-state sleeps whose kernel stack holds mempool_alloc"
    out.notes.append("mempoolwait: tracepoint fallback mode (sched:sched_switch): %s of %.3g ms or more%s; "
                     "no pool pointer, 'timed out' inferred from a ~5 s sleep" % (
                         what, min_ns / 1e6, " inside a traced writeback" if only_in_writeback else ""))
    return out
