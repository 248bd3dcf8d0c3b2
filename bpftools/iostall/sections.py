"""All sections of the I/O-stall program at once (iojitter): one plan, one decoder for every record."""
from typing import Any, Optional, Tuple

from ..kernel.target import Target
from . import mempool, slab, writeback
from .program import EV_MEMPOOL_ALLOC, EV_SLAB_FAIL, EV_SLEEP, EV_SLUB_OOM, EV_WRITEBACK, Decoder, Plan

DECODERS = {EV_SLAB_FAIL: slab.decode, EV_SLUB_OOM: slab.decode, EV_SLEEP: mempool.decode,
            EV_MEMPOOL_ALLOC: mempool.decode, EV_WRITEBACK: writeback.decode}


def plan(target: Target, mode: str, pid: Optional[int], min_ns: int, wait_min_ns: int,
         functions: Tuple[str, ...] = (), always_on: bool = False, every_slab_allocation: bool = False) -> Plan:
    """writeslow's plan (the slow-write threshold) + mempoolwait's + slabfail's, the sleeps followed only
    in threads inside a traced writeback call (ONLY_IN_WB): the rest of the node costs one map lookup.
    No allocator is kprobed (a probe on every allocation of the node): a failure's cache is named by the
    tracepoint where it has ``name``, and the cache behind a mempool by the pool itself. ALWAYS_ON: the
    writebacks as watch times them (see writeback.plan), and the slab failures SLUB reports where that can
    be probed, unless EVERY_SLAB_ALLOCATION (see slab.reports_plan)."""
    wb = writeback.plan(target, mode, pid, min_ns, functions, always_on)
    sleeps = mempool.plan(target, mode, pid, wait_min_ns, only_in_writeback=True)
    slabs = slab.plan(target, mode, pid, follow_allocators=False,
                      reports_only=always_on and not every_slab_allocation)
    return sleeps.merge(wb).merge(slabs)


def decode(raw: Any, decoder: Decoder) -> Optional[Any]:
    """A raw record of any of the three sections as its tool's event."""
    section = DECODERS.get(int(raw.type))
    return section(raw, decoder) if section else None
