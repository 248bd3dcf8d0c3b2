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
import os
import re
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import click
from dataclasses import dataclass

from ..event import JsonEvent
from ..analyses import folded as folded_stacks
from ..analyses import stacks
from ..analyses.gfp import UNKNOWN, decode_gfp, generation_for_release
from ..kernel.cgroups import container_of
from ..errors import MissingKernelFeature
from ..options import CONTEXT, positive
from . import _iocommon as io

TOOL = "slabfail"
SLAB_SRC = {1: "kmem_cache_alloc", 2: "kmalloc"}           # probes/slabfail.h SLAB_SRC_*
SLAB_F_ACCOUNTED, SLAB_F_ACCOUNTED_KNOWN, SLAB_F_NAME_FROM_TP, SLAB_F_NAME_FROM_CACHE, SLAB_F_OOM_ARGS = \
    1, 2, 4, 8, 16
# The allocators whose first two arguments are (struct kmem_cache *, gfp_t): 3.10 / 6.1 / 6.10+ names
# come from the resolver (kmem_cache_alloc_noprof; kmem_cache_alloc_trace -> kmalloc_trace ->
# __kmalloc_cache_noprof).
CACHE_ALLOCATORS = ("kmem_cache_alloc", "kmem_cache_alloc_trace")
# A 3.10 per-memcg cache: "<base cache>(<memcg cache id>:<cgroup directory name>)" (kernel-facts.md).
_MEMCG_CACHE = re.compile(r"^(?P<base>.+)\((?P<id>\d+):(?P<cgroup>[^()]*)\)$")
HEADER = "%-14s %-7s %-16s %-26s %-30s %s" % ("TIME(s)", "PID", "COMM", "CACHE", "CALLER", "GFP  [CGROUP]")


@dataclass
class SlabFailure(JsonEvent):
    """One slab allocation that returned NULL (kind "alloc") or one SLUB warning (kind "slub_oom")."""

    TYPE = "slab_failure"

    ts_ns: int
    tgid: int
    tid: int
    comm: str
    kind: str                      # "alloc" | "slub_oom"
    source: str                    # "kmem_cache_alloc" | "kmalloc" (tracepoints) | "slab_out_of_memory" (kprobe)
    cache: Optional[str]           # cache name; None when this kernel and mode cannot tell
    call_site: Optional[str]       # the allocator's caller
    gfp: Optional[int]
    gfp_flags: List[str]
    bytes_req: Optional[int]
    node: Optional[int]            # NUMA node asked for; None = any
    accounted: Optional[bool]      # charged to a memory cgroup (6.x tracepoints say so)
    memcg_cache: Optional[Dict[str, Any]]   # 3.10 per-memcg cache name, parsed (see parse_memcg_cache)
    kstack: Optional[List[str]]    # innermost first; None when no stack was taken
    cgroup: Optional[str]          # the allocating task's memory cgroup
    container: Optional[Dict[str, Any]]



def parse_memcg_cache(name: Optional[str]) -> Optional[Dict[str, Any]]:
    """Split a 3.10 per-memcg cache name into base cache, memcg cache id, cgroup and container.

    >>> parse_memcg_cache("ip6_dst_cache(0:18479a49)")["base"]
    'ip6_dst_cache'
    """
    m = _MEMCG_CACHE.match(name or "")
    if not m:
        return None
    ref = container_of(m.group("cgroup")) if m.group("cgroup") else None
    return {"base": m.group("base"), "memcg_id": int(m.group("id")), "cgroup": m.group("cgroup"),
            "container": ref.to_json() if ref else None}


def _gfp_names(value: int) -> List[str]:
    """Flag names in this kernel's gfp layout (hex when the layout is not known)."""
    generation = generation_for_release(os.uname().release)
    return decode_gfp(value, generation) if generation != UNKNOWN else ["%#x" % value]


def decode(raw: Any, capture: io.Capture) -> Optional[SlabFailure]:
    """The one place a raw EV_SLAB_FAIL / EV_SLUB_OOM record becomes a SlabFailure."""
    if raw.type not in (io.EV_SLAB_FAIL, io.EV_SLUB_OOM):
        return None
    oom = raw.type == io.EV_SLUB_OOM
    flags = int(raw.flags)
    has_args = not oom or bool(flags & SLAB_F_OOM_ARGS)
    name = io.text(bytes(raw.name)) if flags & (SLAB_F_NAME_FROM_TP | SLAB_F_NAME_FROM_CACHE) else None
    frames = capture.frames(int(raw.kstack))
    if oom:
        call_site = stacks.caller_of(frames or [], "slab_out_of_memory") if frames else None
    else:
        call_site = capture.symbol(int(raw.call_site)) if raw.call_site else None
    gfp = int(raw.gfp) if has_args else None
    proc = capture.process(int(raw.tgid))
    return SlabFailure(
        ts_ns=int(raw.ts_ns), tgid=int(raw.tgid), tid=int(raw.tid), comm=io.text(bytes(raw.comm)),
        kind="slub_oom" if oom else "alloc",
        source="slab_out_of_memory" if oom else SLAB_SRC.get(int(raw.func), str(raw.func)),
        cache=name or None, call_site=call_site, gfp=gfp,
        gfp_flags=_gfp_names(gfp) if gfp is not None else [],
        bytes_req=None if oom else int(raw.bytes), node=int(raw.node) if has_args and raw.node >= 0 else None,
        accounted=bool(flags & SLAB_F_ACCOUNTED) if flags & SLAB_F_ACCOUNTED_KNOWN else None,
        memcg_cache=parse_memcg_cache(name), kstack=frames, cgroup=proc["cgroup"], container=proc["container"])


def plan(mode: str, pid: Optional[int], follow_allocators: bool = True) -> io.Plan:
    """Which tracepoints and kprobes this kernel allows for slab failures, and what they can tell.
    Without FOLLOW_ALLOCATORS no allocator is kprobed (a kprobe per allocation): names as in tracepoint mode."""
    from ..kernel.symbols import SymbolTable
    io.tracing_ready()
    fields = io.tracepoint_fields("kmem", "kmem_cache_alloc")
    if fields is None:
        raise MissingKernelFeature("tracepoint kmem:kmem_cache_alloc")
    kprobe_ok = io.kprobes_available()
    has_name = "name" in fields
    if mode == "auto":
        chosen = "kprobe" if kprobe_ok and not has_name else "tracepoint"
    else:
        chosen = io.choose_mode(mode, kprobe_ok, TOOL)
    out = io.Plan(mode=chosen, flags=["WANT_SLAB"], params={"FILTER_TGID": pid} if pid else {})
    for fld, flag in (("name", "HAVE_TP_NAME"), ("node", "HAVE_TP_NODE"), ("accounted", "HAVE_TP_ACCOUNTED")):
        if fld in fields:
            out.flags.append(flag)
    kmalloc = io.tracepoint_fields("kmem", "kmalloc")
    if kmalloc is not None:
        out.flags.append("HAVE_TP_KMALLOC")
        out.flags += [flag for fld, flag in (("node", "HAVE_TP_KMALLOC_NODE"), ("accounted", "HAVE_TP_KMALLOC_ACCOUNTED"))
                      if fld in kmalloc]
    table = SymbolTable.from_system() if kprobe_ok and mode != "tracepoint" else None
    if chosen == "kprobe" and table is not None and follow_allocators:
        out.flags.append("WANT_SLAB_KPROBE")
        for resolution in table.resolve_all(CACHE_ALLOCATORS):
            target = resolution.attach or resolution.fallback
            if target is None or resolution.how == "clone":
                out.notes.append("slabfail: not probing %s (%s)" % (resolution.wanted, resolution.note))
            elif all(a.event != target for a in out.kprobes):
                out.kprobes.append(io.Attach(target, "slab_alloc_entry"))
        source = out.read_structs(["OFF_CACHE_NAME"], slub_def=True)
        if source:
            out.notes.append("slabfail: kprobe mode; cache names read from struct kmem_cache (offset from %s)"
                             % ("BTF" if source == "btf" else "this kernel's headers"))
        elif has_name:
            out.notes.append("slabfail: kprobe mode; cache names from kmem:kmem_cache_alloc's name field")
        else:
            out.notes.append("slabfail: cache names unknown: kmem_cache->name needs BTF or this kernel's own "
                             "headers (with a self-contained linux/slub_def.h); call sites only")
    else:
        how = "tracepoint mode" if chosen == "tracepoint" else "failures from the tracepoints, no allocator kprobed"
        names = ("cache names from kmem:kmem_cache_alloc's name field" if has_name else
                 "this kernel's kmem:kmem_cache_alloc has no cache name (slabfail's kprobe mode reads it): "
                 "call sites only")
        out.notes.append("slabfail: %s; %s" % (how, names))
    if table is not None:
        oom = table.resolve("slab_out_of_memory")
        if oom.attach:
            out.flags.append("WANT_SLUB_OOM")
            if oom.how in ("exact", "noprof"):
                out.flags.append("SLUB_OOM_ARGS")
            out.kprobes.append(io.Attach(oom.attach, "slub_oom_entry"))
    return out


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
        out.append("%-8d %-26s %-30s %s" % (n, cache, caller, cgroup))
    return out


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
@click.argument("interval", required=False, type=float, callback=positive)
@click.argument("count", required=False, type=click.IntRange(1, None))
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], ready_file: Optional[str], ebpf: bool, kernel_stacks: bool, folded: bool,
            interval: Optional[float], count: Optional[int]) -> None:
    """Trace slab allocations that fail (return NULL): cache, caller, stack and container."""
    the_plan = plan(mode, pid)
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
    with io.then(finish), io.Ticker(None if folded else interval, count, tick) as ticker:
        io.live(TOOL, the_plan, record, ready_file, run_duration,
                lambda raw, capture: _filtered(decode(raw, capture), cgroup), show, ticker=ticker)


def _filtered(event: Optional[SlabFailure], cgroup: Optional[str]) -> Optional[SlabFailure]:
    return event if event is not None and io.cgroup_matches(event.cgroup, cgroup) else None


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a slabfail recording: the same lines as the live run."""
    io.render_events(rec, console, HEADER, {SlabFailure.TYPE: SlabFailure.from_json}, line)
