"""slabfail: slab allocations that return NULL, with the cache, the caller, the stack and the container.

In the kmem-accounting incident a container's slab charge fails (its memory cgroup is at its limit),
``bvec_alloc`` gets NULL from its biovec slab and falls back to the mempool, where it may sleep 5 s.
This shows each failed allocation: which cache (on 3.10 a per-memcg cache name such as
``kmalloc-1024(1793:c8ed…)`` names the container itself), who asked (call site and kernel stack),
with which gfp mask, and the allocating task's memory cgroup / container / pod.

Modes (``--mode``):
- tracepoint: ``kmem:kmem_cache_alloc`` and ``kmem:kmalloc`` with ``ptr == 0``. The cache name comes
  from the tracepoint's ``name`` field where it has one (6.18 does; 3.10 and 6.1 do not).
- kprobe: the same tracepoints plus an entry kprobe on the allocators that remembers each thread's
  ``struct kmem_cache *``; the name is read from it when the kernel's own headers are installed and
  define it (``linux/slub_def.h``, up to 6.7). Without kprobes or headers: call sites only.
  Cost: one kprobe per slab allocation, so ``auto`` prefers the tracepoint when it has ``name``.
- either, when kprobes exist: a kprobe on ``slab_out_of_memory`` (the SLUB warning) as ``slub_oom``.
"""
from collections import Counter
from typing import Any, List, Optional, Tuple

import click

from ..analyses import folded as folded_stacks
from ..analyses import stacks
from ..iostall import face as io
from ..iostall.slab import SlabFailure, decode, plan
from ..live import then
from ..capture import Outline
from ..kernel.target import Running, Target
from ..options import CONTEXT, POSITIVE
from ..render import one_line

TOOL = "slabfail"
HEADER = "%-14s %-7s %-16s %-26s %-30s %s" % ("TIME(s)", "PID", "COMM", "CACHE", "CALLER", "GFP  [CGROUP]")


def line(event: SlabFailure) -> str:
    """One output line (plain text, like bcc's snoop tools)."""
    cache = event.cache or ("?" if event.kind == "alloc" else "-")
    if event.kind == "slub_oom":
        cache = "SLUB-OOM " + (event.cache or "?")
    where = event.cgroup or "?"
    container = (event.memcg_cache or {}).get("container") or event.container
    if container:
        where = "%s pod=%s" % ((container.get("container_id") or "-")[:12], container.get("pod_uid") or "-")
    gfp = "|".join(event.gfp_flags) or "-"
    return "%-14.6f %-7d %-16s %-26s %-30s %s  [%s]" % (
        event.ts_ns / 1e9, event.tgid, event.comm, cache, event.call_site or "?", gfp, where)


def folded_sample(event: SlabFailure) -> Tuple[List[str], int]:
    """``comm;outermost..innermost;[slab fail CACHE]`` weighted 1 per failure."""
    label = folded_stacks.annotation("slab fail %s" % (event.cache or event.call_site or "?"))
    return [event.comm] + stacks.root_first(event.kstack) + [label], 1


def summary_lines(counts: "Counter[Tuple[str, str, str]]") -> List[str]:
    """The interval table: failures per cache, caller and cgroup, most first."""
    out = ["%-8s %-26s %-30s %s" % ("COUNT", "CACHE", "CALLER", "CGROUP")]
    for (cache, caller, cgroup), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(one_line("%-8d %-26s %-30s %s" % (n, cache, caller, cgroup)))
    return out



def outline(target: Target) -> Outline:
    """The plan of ``bpftools slabfail`` on TARGET, in words."""
    return plan(target, "auto", None).outline()


@click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools slabfail                    # each failed slab allocation, until Ctrl-C
  bpftools slabfail -K                 # with kernel stacks
  bpftools slabfail 5 12               # a table every 5 s, 12 times
  bpftools slabfail --cgroup kubepods -d 60 --json
  bpftools slabfail -f -d 30 > slab.folded   # flame graph input
""")
@io.common_options
@click.option("-K", "kernel_stacks", is_flag=True, help="Print the kernel stack of each failure.")
@click.option("-f", "--folded", is_flag=True, help="Print folded stacks (failures per stack) at the end.")
@click.argument("interval", required=False, type=POSITIVE)
@click.argument("count", required=False, type=click.IntRange(1, None))
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], ready_file: Optional[str], ebpf: bool, kernel_stacks: bool, folded: bool,
            interval: Optional[float], count: Optional[int]) -> None:
    """Trace slab allocations that fail (return NULL): cache, caller, stack and container."""
    the_plan = plan(Running(), mode, pid)
    if ebpf:
        click.echo(the_plan.describe())
        return
    counts = Counter()  # type: Counter[Tuple[str, str, str]]
    samples = []  # type: List[Tuple[List[str], int]]

    def show(event: SlabFailure) -> None:
        if folded:
            samples.append(folded_sample(event))
        elif interval:
            counts[(event.cache or "?", event.call_site or "?", event.cgroup or "?")] += 1
        else:
            io.print_event(event, as_json, kernel_stacks, line)

    def tick() -> None:
        click.echo("\n".join(summary_lines(counts)) + "\n")
        counts.clear()

    if not (folded or interval or as_json):
        click.echo(HEADER)
    def finish() -> None:
        if folded:
            io.print_folded(samples)

    run_duration = duration
    if interval and count:
        run_duration = min(duration or interval * count, interval * count)
    with then(finish), io.Ticker(None if folded else interval, count, tick) as ticker:
        io.live(TOOL, the_plan, record, ready_file, run_duration,
                lambda raw, decoder: _filtered(decode(raw, decoder), cgroup), show, ticker=ticker)


def _filtered(event: Optional[SlabFailure], cgroup: Optional[str]) -> Optional[SlabFailure]:
    return event if event is not None and io.cgroup_matches(event.cgroup, cgroup) else None


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a slabfail recording: the same lines as the live run."""
    io.render_events(rec, console, HEADER, {SlabFailure.TYPE: SlabFailure.from_json}, line)
