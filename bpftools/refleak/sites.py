"""Kprobes on the inlined ``dev_hold``/``dev_put`` sites that debug info lists (refleak's inline strategy).

bpftools.refleak.inline_sites turns DWARF into sites (``caller+offset``, the delta, where the device pointer
is). Here each site becomes one entry of the program's ``sites`` map, keyed by the probed address
(the caller's kallsyms address + offset: on x86 a kprobe's handler sees ``ip`` one byte past it, the
int3), and one kprobe running the single BPF function ``site_entry``: no per-site C text.
"""
import ctypes as ct
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..capture import Attach, try_attach
from ..kernel.symbols import read_kallsyms, text_addresses

# struct pt_regs as an array of u64 (x86-64): the index site_entry's switch reads.
PT_REGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
           "orig_ax", "ip", "cs", "flags", "sp", "ss")
READABLE = frozenset(PT_REGS[:15] + ("sp",))
LOC = {"reg": 1, "breg": 2}      # probes/refleak.h RL_LOC_*
MAX_SITES = 4096



def site_entries(sites: Iterable[Any], addresses: Dict[Tuple[str, Optional[str]], List[int]]
                 ) -> Tuple[List[Tuple[int, Any]], Dict[str, int]]:
    """(probe address, site) of each usable site, and the count of the others by reason."""
    usable = []  # type: List[Tuple[int, Any]]
    skipped = {}  # type: Dict[str, int]

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for site in sites:
        if site.dev is None:
            skip("no device location")
            continue
        if site.dev.reg not in READABLE:
            skip("device in register %s" % site.dev.reg)
            continue
        found = addresses.get((site.caller, site.module), [])
        if not found:
            skip("caller not in kallsyms" + (" (module %s not loaded)" % site.module if site.module else ""))
            continue
        if len(found) > 1:
            skip("caller name not unique")
            continue
        usable.append((found[0] + site.offset, site))
    if len(usable) > MAX_SITES:
        skipped["over the %d-site limit" % MAX_SITES] = len(usable) - MAX_SITES
        usable = usable[:MAX_SITES]
    return usable, skipped


def attach_sites(bpf: Any, sites: List[Any]) -> List[str]:
    """Fill ``sites`` and attach one kprobe per usable site; returns notes for the user."""
    usable, skipped = site_entries(sites, text_addresses(read_kallsyms()))
    table = bpf["sites"]
    attached = 0
    for addr, site in usable:
        value = table.Leaf(site.delta, PT_REGS.index(site.dev.reg), site.dev.offset, LOC[site.dev.kind], 0)
        table[ct.c_uint64(addr)] = value
        if try_attach(bpf, Attach(site.caller, "site_entry", offset=site.offset)) is None:
            attached += 1
        else:   # e.g. a blacklisted or notrace function
            del table[ct.c_uint64(addr)]
            skipped["kprobe refused"] = skipped.get("kprobe refused", 0) + 1
    notes = ["inline: %d kprobes on inlined hold/put sites" % attached]
    notes += ["inline: %d site(s) not probed: %s" % (n, why) for why, n in sorted(skipped.items())]
    return notes
