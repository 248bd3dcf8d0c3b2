"""mempoolwait: sleeps inside mempool_alloc (up to 5 s each), with the pool, the caller and the stack.

When a bio_vec slab allocation fails, ``bvec_alloc`` falls back to the biovec mempool; with the pool
empty, ``mempool_alloc`` sleeps in ``io_schedule_timeout(5*HZ)`` until an element is freed (woken
early) or the 5 s pass (timed out), and tries again (mm/mempool.c, the same in 3.10 and 6.x).

Modes (``--mode``):
- kprobe: exact. Marks the thread at ``mempool_alloc`` entry; a sleep starts at ``io_schedule_timeout``
  entry while marked and ends at ``finish_wait(&pool->wait)``; the whole call is reported at return
  (``mempool_alloc`` records: total time, number of sleeps, NULL results). Pool pointer included.
- tracepoint (fallback, where kprobes are missing): ``sched:sched_switch`` sleeps in D state with the
  kernel stack; only those whose stack holds ``mempool_alloc`` are shown (``--all-dstate`` shows every
  D-state sleep). No pool pointer; "timed out" is inferred from a sleep of about 5 s.
"""
import re
from typing import Any, Dict, List, Optional, Tuple

import click
from dataclasses import dataclass

from ..event import JsonEvent
from ..analyses import folded as folded_stacks
from ..analyses import stacks
from ..analyses.iojitter import timed_out
from ..errors import MissingKernelFeature
from ..options import CONTEXT
from . import _iocommon as io

TOOL = "mempoolwait"
SLEEP_F_MEMPOOL, SLEEP_F_SCHED, SLEEP_F_JIFFIES = 1, 2, 64          # probes/mempoolwait.h
MPALLOC_F_NULL = 1
KPROBE_FUNCTIONS = ("mempool_alloc", "io_schedule_timeout", "finish_wait")
HEADER = "%-14s %-7s %-7s %-16s %10s %-10s %s" % ("TIME(s)", "PID", "TID", "COMM", "SLEEP(ms)", "RESULT",
                                                 "CALLER / BLOCKED IN")


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
    pool: Optional[int]            # the mempool_t (kprobe mode)
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
    pool: int
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


def decode(raw: Any, capture: io.Capture) -> Optional[Any]:
    """The one place a raw EV_SLEEP / EV_MEMPOOL_ALLOC record becomes a Sleep / MempoolAlloc."""
    if raw.type not in (io.EV_SLEEP, io.EV_MEMPOOL_ALLOC):
        return None
    frames = capture.frames(int(raw.kstack))
    proc = capture.process(int(raw.tgid))
    caller = stacks.caller_of(frames, stacks.MEMPOOL_ALLOC) if frames else None
    start, end = int(raw.start_ns), int(raw.ts_ns)
    common = dict(ts_ns=end, start_ns=start, duration_ns=end - start, tgid=int(raw.tgid), tid=int(raw.tid),
                  comm=io.text(bytes(raw.comm)), caller=caller, kstack=frames, cgroup=proc["cgroup"],
                  container=proc["container"])
    if raw.type == io.EV_MEMPOOL_ALLOC:
        return MempoolAlloc(pool=int(raw.ptr), sleeps=int(raw.written), waited_ns=int(raw.waited_ns),
                            failed=bool(raw.flags & MPALLOC_F_NULL), **common)
    kprobe = bool(raw.flags & SLEEP_F_MEMPOOL)
    in_mempool = kprobe or stacks.holds(frames, stacks.MEMPOOL_ALLOC)
    return Sleep(source="kprobe" if kprobe else "sched_switch", in_mempool=in_mempool,
                 timed_out=_timed_out(raw, end - start) if in_mempool else None,
                 pool=int(raw.ptr) if kprobe else None, timeout_jiffies=int(raw.timeout) if kprobe else None,
                 blocked_in=stacks.blocking_frame(frames), pool_cache=_pool_cache(raw, capture) if kprobe else None,
                 **common)


def _timed_out(raw: Any, duration_ns: int) -> bool:
    """The kernel's own answer where the sleep was measured in jiffies (it lasted its whole timeout),
    else from the duration (~5 s)."""
    if raw.flags & SLEEP_F_JIFFIES and raw.timeout > 0:
        return int(raw.jiffies) >= int(raw.timeout)
    return timed_out(duration_ns)


def _pool_cache(raw: Any, capture: io.Capture) -> Optional[str]:
    """The kmem_cache name behind a slab-backed pool (pool->alloc is mempool_alloc_slab), else None."""
    if not raw.call_site or stacks.base_name(capture.symbol(int(raw.call_site))) != "mempool_alloc_slab":
        return None
    return io.text(bytes(raw.name)) or None


def plan(mode: str, pid: Optional[int], min_ns: int, all_dstate: bool = False,
         only_in_writeback: bool = False) -> io.Plan:
    """kprobes on mempool_alloc/io_schedule_timeout/finish_wait, or the sched_switch fallback.

    ONLY_IN_WRITEBACK (iojitter, which adds the writeback section): only threads inside a traced
    writeback call are followed, and no per-call records are made (no kretprobe on mempool_alloc)."""
    from ..kernel.symbols import SymbolTable
    if all_dstate and mode == "kprobe":
        raise click.BadParameter("--all-dstate is the sched_switch view: use it without --mode kprobe")
    io.tracing_ready()
    kprobe_ok = io.kprobes_available() and not all_dstate
    chosen = io.choose_mode(mode, kprobe_ok, TOOL)
    params = {"SLEEP_MIN_NS": min_ns}
    if pid:
        params["FILTER_TGID"] = pid
    out = io.Plan(mode=chosen, params=params)
    if chosen == "kprobe":
        table = SymbolTable.from_system()
        found = table.resolve_all(KPROBE_FUNCTIONS)
        missing = [r for r in found if r.attach is None or r.how == "clone"]
        if not missing:
            mp, sleep, finish = (r.attach for r in found)
            out.flags.append("WANT_SLEEP_KPROBE")
            returns = io.unwinder_sees_through_kretprobes(table) and not only_in_writeback
            if only_in_writeback:
                out.flags.append("ONLY_IN_WB")
            if returns:
                out.kprobes.append(io.Attach(mp, "mp_alloc_return", ret=True))
            out.kprobes += [io.Attach(mp, "mp_alloc_entry"), io.Attach(sleep, "mp_sleep_entry"),
                            io.Attach(finish, "mp_finish_wait_entry")]
            source = out.read_structs(["OFF_MEMPOOL_WAIT"])
            out.read_structs(["OFF_MEMPOOL_POOL_DATA", "OFF_MEMPOOL_ALLOC", "OFF_CACHE_NAME"], slub_def=True)
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
    fmt = io.tracepoint_format("sched", "sched_switch")
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


def line(event: Any) -> str:
    """One output line for a Sleep or a MempoolAlloc."""
    if isinstance(event, MempoolAlloc):
        result = "NULL" if event.failed else "alloc"
        where = "%d sleeps, %.1f ms asleep, pool %#x, from %s" % (
            event.sleeps, event.waited_ns / 1e6, event.pool, event.caller or "?")
    else:
        if event.in_mempool:
            result = "timed-out" if event.timed_out else "woken"
            where = "mempool_alloc from %s" % (event.caller or "?")
            if event.pool is not None:
                where += " pool %#x" % event.pool
            if event.pool_cache:
                where += " (%s)" % event.pool_cache
        else:
            result = "D"
            where = stacks.base_name(event.blocked_in) if event.blocked_in else "[no stack]"
    return "%-14.6f %-7d %-7d %-16s %10.3f %-10s %s" % (
        event.ts_ns / 1e9, event.tgid, event.tid, event.comm, event.duration_ns / 1e6, result, where)


def folded_sample(event: Sleep) -> Tuple[List[str], int]:
    """``comm;outermost..innermost;[mempool wait 5.00s]`` (or ``[D-state 0.30s]``) weighted by ns asleep."""
    seconds = folded_stacks.fixed(event.duration_ns / 1e9, 2)
    label = ("mempool wait %ss" if event.in_mempool else "D-state %ss") % seconds
    return [event.comm] + stacks.root_first(event.kstack) + [folded_stacks.annotation(label)], event.duration_ns


@click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools mempoolwait                 # sleeps in mempool_alloc, until Ctrl-C
  bpftools mempoolwait -K -m 100       # only sleeps of 100 ms or more, with stacks
  bpftools mempoolwait --all-dstate -m 500   # every D-state sleep of 0.5 s or more
  bpftools mempoolwait -f -d 60 > mempool.folded   # time asleep per stack, for flame graphs
""")
@io.common_options
@click.option("-m", "--min-ms", type=float, default=1.0, show_default=True,
              help="Ignore sleeps shorter than this (filtered in the kernel).")
@click.option("--all-dstate", is_flag=True, help="Show every D-state sleep (sched_switch), not only mempool waits.")
@click.option("-K", "kernel_stacks", is_flag=True, help="Print the kernel stack of each sleep.")
@click.option("-f", "--folded", is_flag=True, help="Print folded stacks weighted by time asleep at the end.")
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], ready_file: Optional[str], ebpf: bool, min_ms: float, all_dstate: bool,
            kernel_stacks: bool, folded: bool) -> None:
    """Trace sleeps inside mempool_alloc (or every D-state sleep): duration, timed out or woken, caller, stack."""
    if min_ms < 0:
        raise click.BadParameter("must be >= 0", param_hint="--min-ms")
    the_plan = plan(mode, pid, int(min_ms * 1e6), all_dstate=all_dstate)
    if ebpf:
        click.echo(the_plan.describe())
        return
    samples = []  # type: List[Tuple[List[str], int]]
    skipped = [0]

    def keep(raw: Any, capture: io.Capture) -> Optional[Any]:
        event = decode(raw, capture)
        if event is None or not io.cgroup_matches(event.cgroup, cgroup):
            return None
        if isinstance(event, Sleep) and not (event.in_mempool or all_dstate):
            skipped[0] += 1
            return None
        return event

    def show(event: Any) -> None:
        if folded:
            if isinstance(event, Sleep):
                samples.append(folded_sample(event))
        else:
            io.print_event(event, as_json, kernel_stacks, line)

    if not (folded or as_json):
        click.echo(HEADER)
    def finish() -> None:
        if skipped[0]:
            io.warn("%d D-state sleeps outside mempool_alloc not shown (--all-dstate shows them)" % skipped[0])
        if folded:
            io.print_folded(samples)

    with io.then(finish):
        io.live(TOOL, the_plan, record, ready_file, duration, keep, show)


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a mempoolwait recording: the same lines as the live run."""
    io.render_events(rec, console, HEADER, {Sleep.TYPE: Sleep.from_json, MempoolAlloc.TYPE: MempoolAlloc.from_json},
                     line)
