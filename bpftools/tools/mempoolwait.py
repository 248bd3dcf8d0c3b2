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
from typing import Any, List, Optional, Tuple

import click

from ..analyses import folded as folded_stacks
from ..analyses import stacks
from ..iostall import face as io
from ..iostall.mempool import MempoolAlloc, Sleep, decode, plan
from ..iostall.program import Decoder
from ..live import then, warn
from ..capture import Outline
from ..kernel.target import Running, Target
from ..pointers import pointer_text
from ..options import CONTEXT, NON_NEGATIVE

TOOL = "mempoolwait"
MIN_MS = 1.0          # the shortest sleep shown (--min-ms)
HEADER = "%-14s %-7s %-7s %-16s %10s %-10s %s" % ("TIME(s)", "PID", "TID", "COMM", "SLEEP(ms)", "RESULT",
                                                 "CALLER / BLOCKED IN")


def line(event: Any) -> str:
    """One output line for a Sleep or a MempoolAlloc."""
    if isinstance(event, MempoolAlloc):
        result = "NULL" if event.failed else "alloc"
        where = "%d sleeps, %.1f ms asleep, pool %s, from %s" % (
            event.sleeps, event.waited_ns / 1e6, pointer_text(event.pool), event.caller or "?")
    else:
        if event.in_mempool:
            result = "timed-out" if event.timed_out else "woken"
            where = "mempool_alloc from %s" % (event.caller or "?")
            if event.pool is not None:
                where += " pool %s" % pointer_text(event.pool)
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



def outline(target: Target) -> Outline:
    """The plan of ``bpftools mempoolwait`` on TARGET, in words."""
    return plan(target, "auto", None, int(MIN_MS * 1e6)).outline()


@click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools mempoolwait                 # sleeps in mempool_alloc, until Ctrl-C
  bpftools mempoolwait -K -m 100       # only sleeps of 100 ms or more, with stacks
  bpftools mempoolwait --all-dstate -m 500   # every D-state sleep of 0.5 s or more
  bpftools mempoolwait -f -d 60 > mempool.folded   # time asleep per stack, for flame graphs
""")
@io.common_options
@click.option("-m", "--min-ms", type=NON_NEGATIVE, default=MIN_MS, show_default=True,
              help="Ignore sleeps shorter than this (filtered in the kernel).")
@click.option("--all-dstate", is_flag=True, help="Show every D-state sleep (sched_switch), not only mempool waits.")
@click.option("-K", "kernel_stacks", is_flag=True, help="Print the kernel stack of each sleep.")
@click.option("-f", "--folded", is_flag=True, help="Print folded stacks weighted by time asleep at the end.")
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], ready_file: Optional[str], ebpf: bool, min_ms: float, all_dstate: bool,
            kernel_stacks: bool, folded: bool) -> None:
    """Trace sleeps inside mempool_alloc (or every D-state sleep): duration, timed out or woken, caller, stack."""
    the_plan = plan(Running(), mode, pid, int(min_ms * 1e6), all_dstate=all_dstate)
    if ebpf:
        click.echo(the_plan.describe())
        return
    samples = []  # type: List[Tuple[List[str], int]]
    skipped = [0]

    def keep(raw: Any, decoder: Decoder) -> Optional[Any]:
        event = decode(raw, decoder)
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
            warn("%d D-state sleeps outside mempool_alloc not shown (--all-dstate shows them)" % skipped[0])
        if folded:
            io.print_folded(samples)

    with then(finish):
        io.live(TOOL, the_plan, record, ready_file, duration, keep, show)


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a mempoolwait recording: the same lines as the live run."""
    io.render_events(rec, console, HEADER, {Sleep.TYPE: Sleep.from_json, MempoolAlloc.TYPE: MempoolAlloc.from_json},
                     line)
