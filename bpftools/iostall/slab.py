"""The slab section of the I/O-stall program: failed slab allocations and SLUB warnings.

In the kmem-accounting incident a container's slab charge fails (its memory cgroup is at its limit),
``bvec_alloc`` gets NULL from its biovec slab and falls back to the mempool, where it may sleep 5 s.
A :class:`SlabFailure` says which cache (on 3.10 a per-memcg cache name such as
``kmalloc-1024(1793:c8ed…)`` names the container itself), who asked, with which gfp mask, and the
allocating task's memory cgroup and container.
"""
import os
import re
from typing import Any, Dict, List, Optional

from dataclasses import dataclass

from ..analyses import stacks
from ..analyses.gfp import UNKNOWN, decode_gfp, generation_for_release
from ..capture import Attach, c_text
from ..errors import MissingKernelFeature
from ..event import JsonEvent
from ..kernel.cgroups import container_id_prefix, container_of
from ..kernel.target import Target
from .program import EV_SLAB_FAIL, EV_SLUB_OOM, Decoder, Plan, choose_mode


SLAB_SRC = {1: "kmem_cache_alloc", 2: "kmalloc"}           # probes/slabfail.h SLAB_SRC_*


SLAB_F_ACCOUNTED, SLAB_F_ACCOUNTED_KNOWN, SLAB_F_NAME_FROM_TP, SLAB_F_NAME_FROM_CACHE, SLAB_F_OOM_ARGS = \
    1, 2, 4, 8, 16


# The allocators whose first two arguments are (struct kmem_cache *, gfp_t): 3.10 / 6.1 / 6.10+ names
# come from the resolver (kmem_cache_alloc_noprof; kmem_cache_alloc_trace -> kmalloc_trace ->
# __kmalloc_cache_noprof).
CACHE_ALLOCATORS = ("kmem_cache_alloc", "kmem_cache_alloc_trace")


# A 3.10 per-memcg cache: "<base cache>(<memcg cache id>:<cgroup directory name>)" (kernel-facts.md),
# about 85 bytes with a container id: the closing ")" is missing when a buffer cut the name short.
_MEMCG_CACHE = re.compile(r"^(?P<base>[^()]+)\((?P<id>\d+):(?P<cgroup>[^()]*?)(?P<end>\))?$")


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
    cgroup, truncated = m.group("cgroup"), not m.group("end")
    ref = container_of(cgroup) if cgroup and not truncated else None
    out = {"base": m.group("base"), "memcg_id": int(m.group("id")), "cgroup": cgroup,
           "container": ref.to_json() if ref else None, "truncated": truncated}
    if truncated:       # the name was cut short: the container id's first digits still name it
        prefix = container_id_prefix(cgroup)
        out["container_id_prefix"] = prefix[1] if prefix else None
    return out


def _gfp_names(value: int) -> List[str]:
    """Flag names in this kernel's gfp layout (hex when the layout is not known)."""
    generation = generation_for_release(os.uname().release)
    return decode_gfp(value, generation) if generation != UNKNOWN else ["%#x" % value]


def decode(raw: Any, decoder: Decoder) -> Optional[SlabFailure]:
    """The one place a raw EV_SLAB_FAIL / EV_SLUB_OOM record becomes a SlabFailure."""
    if raw.type not in (EV_SLAB_FAIL, EV_SLUB_OOM):
        return None
    oom = raw.type == EV_SLUB_OOM
    flags = int(raw.flags)
    has_args = not oom or bool(flags & SLAB_F_OOM_ARGS)
    name = c_text(bytes(raw.name)) if flags & (SLAB_F_NAME_FROM_TP | SLAB_F_NAME_FROM_CACHE) else None
    frames = decoder.frames(int(raw.kstack))
    if oom:
        call_site = stacks.caller_of(frames or [], "slab_out_of_memory") if frames else None
    else:
        call_site = decoder.symbol(int(raw.call_site)) if raw.call_site else None
    gfp = int(raw.gfp) if has_args else None
    proc = decoder.process(int(raw.tgid))
    return SlabFailure(
        ts_ns=int(raw.ts_ns), tgid=int(raw.tgid), tid=int(raw.tid), comm=c_text(bytes(raw.comm)),
        kind="slub_oom" if oom else "alloc",
        source="slab_out_of_memory" if oom else SLAB_SRC.get(int(raw.func), str(raw.func)),
        cache=name or None, call_site=call_site, gfp=gfp,
        gfp_flags=_gfp_names(gfp) if gfp is not None else [],
        bytes_req=None if oom else int(raw.bytes), node=int(raw.node) if has_args and raw.node >= 0 else None,
        accounted=bool(flags & SLAB_F_ACCOUNTED) if flags & SLAB_F_ACCOUNTED_KNOWN else None,
        memcg_cache=parse_memcg_cache(name), kstack=frames, cgroup=proc["cgroup"], container=proc["container"])


def plan(target: Target, mode: str, pid: Optional[int], follow_allocators: bool = True,
         reports_only: bool = False) -> Plan:
    """Which tracepoints and kprobes this kernel allows for slab failures, and what they can tell.
    Without FOLLOW_ALLOCATORS no allocator is kprobed (a kprobe per allocation): names as in tracepoint mode.
    REPORTS_ONLY (watch): where slab_out_of_memory can be kprobed, only it (see reports_plan)."""
    target.prepare()
    if reports_only and mode != "tracepoint":
        reports = reports_plan(target, pid)
        if reports is not None:
            return reports
    fields = target.tracepoint_fields("kmem", "kmem_cache_alloc")
    if fields is None:
        raise MissingKernelFeature("tracepoint kmem:kmem_cache_alloc")
    kprobe_ok = bool(target.kprobes().ok)
    has_name = "name" in fields
    if mode == "auto":
        chosen = "kprobe" if kprobe_ok and not has_name else "tracepoint"
    else:
        chosen = choose_mode(mode, kprobe_ok, "slabfail")
    out = Plan(mode=chosen, flags=["WANT_SLAB"], params={"FILTER_TGID": pid} if pid else {})
    for fld, flag in (("name", "HAVE_TP_NAME"), ("node", "HAVE_TP_NODE"), ("accounted", "HAVE_TP_ACCOUNTED")):
        if fld in fields:
            out.flags.append(flag)
    kmalloc = target.tracepoint_fields("kmem", "kmalloc")
    if kmalloc is not None:
        out.flags.append("HAVE_TP_KMALLOC")
        out.flags += [flag for fld, flag in (("node", "HAVE_TP_KMALLOC_NODE"), ("accounted", "HAVE_TP_KMALLOC_ACCOUNTED"))
                      if fld in kmalloc]
    table = target.symbols() if kprobe_ok and mode != "tracepoint" else None
    if chosen == "kprobe" and table is not None and follow_allocators:
        out.flags.append("WANT_SLAB_KPROBE")
        for resolution in table.resolve_all(CACHE_ALLOCATORS):
            symbol = resolution.attach or resolution.fallback
            if symbol is None or resolution.how == "clone":
                out.notes.append("slabfail: not probing %s (%s)" % (resolution.wanted, resolution.note))
            elif all(a.event != symbol for a in out.kprobes):
                out.kprobes.append(Attach(symbol, "slab_alloc_entry"))
        source = out.read_structs(target, ["OFF_CACHE_NAME"], slub_def=True)
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
        _add_slub_oom(out, table)
    return out


def reports_plan(target: Target, pid: Optional[int]) -> Optional[Plan]:
    """Only the failures SLUB reports, from a kprobe on slab_out_of_memory: no BPF run per slab allocation
    of the node (a tracepoint's cost grows with the allocation rate). None where it cannot be probed (no
    kprobes, or no CONFIG_SLUB_DEBUG: then it is an empty inline stub)."""
    if not target.kprobes().ok:
        return None
    out = Plan(mode="kprobe", flags=["WANT_SLAB", "SLAB_REPORTS_ONLY"], params={"FILTER_TGID": pid} if pid else {})
    if not _add_slub_oom(out, target.symbols()):
        return None
    names = out.read_structs(target, ["OFF_CACHE_NAME"], slub_def=True) if "SLUB_OOM_ARGS" in out.flags else None
    out.notes.append("slabfail: the failures SLUB reports (kprobe on slab_out_of_memory%s), no tracepoint on every "
                     "allocation: a failure the kernel does not report (__GFP_NOWARN; on 3.10 also past "
                     "printk_ratelimit), a per-object memcg charge failure (5.9+) or an injected one is not seen"
                     % ("; cache names read from struct kmem_cache" if names else ""))
    return out


def _add_slub_oom(out: Plan, table: Any) -> bool:
    """The slab_out_of_memory kprobe added to OUT where TABLE resolves it (its arguments read where the
    attach point is the real function); whether it was."""
    oom = table.resolve("slab_out_of_memory")
    if not oom.attach:
        return False
    out.flags.append("WANT_SLUB_OOM")
    if oom.how in ("exact", "noprof"):
        out.flags.append("SLUB_OOM_ARGS")
    out.kprobes.append(Attach(oom.attach, "slub_oom_entry"))
    return True
