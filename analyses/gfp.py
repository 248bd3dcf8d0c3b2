"""Decode gfp_t allocation masks ("gfp=0x20") into flag names, per kernel generation.

Since v4.6 the kernel prints the names itself (``gfp=0xdc0(GFP_KERNEL|__GFP_ZERO)``, the ``%pGg``
format); older kernels print only the hex value, and the bit layout has changed several times,
so one value means different things on different kernels (0x20 is ``GFP_ATOMIC`` on 3.10 but only
``__GFP_HIGH`` on 4.4, where ``GFP_ATOMIC`` is 0x2080020). Supported layouts:

- ``"3.10"``: include/linux/gfp.h of v3.10 (also RHEL 7's 3.10.0-*), valid for v3.x up to v4.3.
- ``"4.4"``: v4.4 to v4.9. Since commit d0164adc89f6 (v4.4) ``__GFP_WAIT`` is gone and reclaim
  is split into ``__GFP_DIRECT_RECLAIM``/``__GFP_KSWAPD_RECLAIM``; commit 41b6167e8f74 (v4.10)
  removed ``__GFP_OTHER_NODE`` and moved the bits above it.
- ``"modern"``: include/linux/gfp_types.h of v6.1. The bits up to ``__GFP_ACCOUNT`` (0x400000)
  have the same positions from v5.4 to v6.18; 0x800000 is ``__GFP_ZEROTAGS`` as in v6.1 (older
  lockdep kernels used it for ``__GFP_NOLOCKDEP``); higher bits depend on the kernel config and
  are left as hex. Composite names follow v6.1 (v6.3 dropped ``__GFP_ATOMIC``, so a newer
  ``GFP_ATOMIC`` shows as ``GFP_NOWAIT|__GFP_HIGH``).

Decoding is greedy like the kernel's own ``%pGg``: composite masks first, then single bits;
bits no table entry covers are appended as one hex value.
"""
import re
from typing import Iterable, List, Optional, Sequence, Tuple

GENERATIONS = ("3.10", "4.4", "modern")
UNKNOWN = "unknown"

_Table = Sequence[Tuple[str, int]]


def _composites(bits: dict, recipes: Sequence[Tuple[str, Sequence[str]]]) -> List[Tuple[str, int]]:
    """Build (name, mask) pairs for composite flags from the names of their single bits."""
    out = []
    for name, parts in recipes:
        mask = 0
        for part in parts:
            mask |= bits[part]
        out.append((name, mask))
    return out


# --- v3.10 include/linux/gfp.h --------------------------------------------------------------
_BITS_3_10 = {
    "__GFP_DMA": 0x01, "__GFP_HIGHMEM": 0x02, "__GFP_DMA32": 0x04, "__GFP_MOVABLE": 0x08,
    "__GFP_WAIT": 0x10, "__GFP_HIGH": 0x20, "__GFP_IO": 0x40, "__GFP_FS": 0x80,
    "__GFP_COLD": 0x100, "__GFP_NOWARN": 0x200, "__GFP_REPEAT": 0x400, "__GFP_NOFAIL": 0x800,
    "__GFP_NORETRY": 0x1000, "__GFP_MEMALLOC": 0x2000, "__GFP_COMP": 0x4000,
    "__GFP_ZERO": 0x8000, "__GFP_NOMEMALLOC": 0x10000, "__GFP_HARDWALL": 0x20000,
    "__GFP_THISNODE": 0x40000, "__GFP_RECLAIMABLE": 0x80000, "__GFP_KMEMCG": 0x100000,
    "__GFP_NOTRACK": 0x200000, "__GFP_NO_KSWAPD": 0x400000, "__GFP_OTHER_NODE": 0x800000,
    "__GFP_WRITE": 0x1000000,
}
_KERNEL_3_10 = ("__GFP_WAIT", "__GFP_IO", "__GFP_FS")
_USER_3_10 = _KERNEL_3_10 + ("__GFP_HARDWALL",)
_HIGHUSER_MOVABLE_3_10 = _USER_3_10 + ("__GFP_HIGHMEM", "__GFP_MOVABLE")
# Order of include/trace/events/gfpflags.h (v3.10): most bits first.
_TABLE_3_10 = _composites(_BITS_3_10, [
    ("GFP_TRANSHUGE", _HIGHUSER_MOVABLE_3_10 + ("__GFP_COMP", "__GFP_NOMEMALLOC", "__GFP_NORETRY",
                                               "__GFP_NOWARN", "__GFP_NO_KSWAPD")),
    ("GFP_HIGHUSER_MOVABLE", _HIGHUSER_MOVABLE_3_10),
    ("GFP_HIGHUSER", _USER_3_10 + ("__GFP_HIGHMEM",)),
    ("GFP_USER", _USER_3_10),
    ("GFP_TEMPORARY", _KERNEL_3_10 + ("__GFP_RECLAIMABLE",)),
    ("GFP_KERNEL", _KERNEL_3_10),
    ("GFP_NOFS", ("__GFP_WAIT", "__GFP_IO")),
    ("GFP_ATOMIC", ("__GFP_HIGH",)),
    ("GFP_NOIO", ("__GFP_WAIT",)),
]) + sorted(_BITS_3_10.items(), key=lambda kv: kv[1])

# --- v4.4 .. v4.9 include/linux/gfp.h ----------------------------------------------------------
_BITS_4_4 = {
    "__GFP_DMA": 0x01, "__GFP_HIGHMEM": 0x02, "__GFP_DMA32": 0x04, "__GFP_MOVABLE": 0x08,
    "__GFP_RECLAIMABLE": 0x10, "__GFP_HIGH": 0x20, "__GFP_IO": 0x40, "__GFP_FS": 0x80,
    "__GFP_COLD": 0x100, "__GFP_NOWARN": 0x200, "__GFP_REPEAT": 0x400, "__GFP_NOFAIL": 0x800,
    "__GFP_NORETRY": 0x1000, "__GFP_MEMALLOC": 0x2000, "__GFP_COMP": 0x4000,
    "__GFP_ZERO": 0x8000, "__GFP_NOMEMALLOC": 0x10000, "__GFP_HARDWALL": 0x20000,
    "__GFP_THISNODE": 0x40000, "__GFP_ATOMIC": 0x80000,
    # v4.4 itself named this bit __GFP_NOACCOUNT; commit a9bb7e620efd (v4.5) made it __GFP_ACCOUNT.
    "__GFP_ACCOUNT": 0x100000,
    "__GFP_NOTRACK": 0x200000, "__GFP_DIRECT_RECLAIM": 0x400000, "__GFP_OTHER_NODE": 0x800000,
    "__GFP_WRITE": 0x1000000, "__GFP_KSWAPD_RECLAIM": 0x2000000,
}
_RECLAIM = ("__GFP_DIRECT_RECLAIM", "__GFP_KSWAPD_RECLAIM")
_KERNEL = _RECLAIM + ("__GFP_IO", "__GFP_FS")
_USER = _KERNEL + ("__GFP_HARDWALL",)
# Order of include/trace/events/mmflags.h (v4.5..v4.9); GFP_TRANSHUGE changed meaning inside
# this range (v4.8) and is left out: THP page allocations never print the SLUB message.
_TABLE_4_4 = _composites(_BITS_4_4, [
    ("GFP_HIGHUSER_MOVABLE", _USER + ("__GFP_HIGHMEM", "__GFP_MOVABLE")),
    ("GFP_HIGHUSER", _USER + ("__GFP_HIGHMEM",)),
    ("GFP_USER", _USER),
    ("GFP_TEMPORARY", _KERNEL + ("__GFP_RECLAIMABLE",)),
    ("GFP_KERNEL_ACCOUNT", _KERNEL + ("__GFP_ACCOUNT",)),
    ("GFP_KERNEL", _KERNEL),
    ("GFP_NOFS", _RECLAIM + ("__GFP_IO",)),
    ("GFP_ATOMIC", ("__GFP_HIGH", "__GFP_ATOMIC", "__GFP_KSWAPD_RECLAIM")),
    ("GFP_NOIO", _RECLAIM),
    ("GFP_NOWAIT", ("__GFP_KSWAPD_RECLAIM",)),
    ("__GFP_RECLAIM", _RECLAIM),
]) + sorted(_BITS_4_4.items(), key=lambda kv: kv[1])

# --- v6.1 include/linux/gfp_types.h (config-independent bits only) -----------------------------
_BITS_MODERN = {
    "__GFP_DMA": 0x01, "__GFP_HIGHMEM": 0x02, "__GFP_DMA32": 0x04, "__GFP_MOVABLE": 0x08,
    "__GFP_RECLAIMABLE": 0x10, "__GFP_HIGH": 0x20, "__GFP_IO": 0x40, "__GFP_FS": 0x80,
    "__GFP_ZERO": 0x100, "__GFP_ATOMIC": 0x200, "__GFP_DIRECT_RECLAIM": 0x400,
    "__GFP_KSWAPD_RECLAIM": 0x800, "__GFP_WRITE": 0x1000, "__GFP_NOWARN": 0x2000,
    "__GFP_RETRY_MAYFAIL": 0x4000, "__GFP_NOFAIL": 0x8000, "__GFP_NORETRY": 0x10000,
    "__GFP_MEMALLOC": 0x20000, "__GFP_COMP": 0x40000, "__GFP_NOMEMALLOC": 0x80000,
    "__GFP_HARDWALL": 0x100000, "__GFP_THISNODE": 0x200000, "__GFP_ACCOUNT": 0x400000,
    "__GFP_ZEROTAGS": 0x800000,
}
_HIGHUSER_MOVABLE = _USER + ("__GFP_HIGHMEM", "__GFP_MOVABLE")
# GFP_TRANSHUGE_LIGHT = (GFP_HIGHUSER_MOVABLE | COMP | NOMEMALLOC | NOWARN) & ~__GFP_RECLAIM
_TRANSHUGE_LIGHT = ("__GFP_IO", "__GFP_FS", "__GFP_HARDWALL", "__GFP_HIGHMEM", "__GFP_MOVABLE",
                    "__GFP_COMP", "__GFP_NOMEMALLOC", "__GFP_NOWARN")
# Order of include/trace/events/mmflags.h (v6.1).
_TABLE_MODERN = _composites(_BITS_MODERN, [
    ("GFP_TRANSHUGE", _TRANSHUGE_LIGHT + ("__GFP_DIRECT_RECLAIM",)),
    ("GFP_TRANSHUGE_LIGHT", _TRANSHUGE_LIGHT),
    ("GFP_HIGHUSER_MOVABLE", _HIGHUSER_MOVABLE),
    ("GFP_HIGHUSER", _USER + ("__GFP_HIGHMEM",)),
    ("GFP_USER", _USER),
    ("GFP_KERNEL_ACCOUNT", _KERNEL + ("__GFP_ACCOUNT",)),
    ("GFP_KERNEL", _KERNEL),
    ("GFP_NOFS", _RECLAIM + ("__GFP_IO",)),
    ("GFP_ATOMIC", ("__GFP_HIGH", "__GFP_ATOMIC", "__GFP_KSWAPD_RECLAIM")),
    ("GFP_NOIO", _RECLAIM),
    ("GFP_NOWAIT", ("__GFP_KSWAPD_RECLAIM",)),
    ("GFP_DMA", ("__GFP_DMA",)),
    ("GFP_DMA32", ("__GFP_DMA32",)),
    ("__GFP_RECLAIM", _RECLAIM),
]) + sorted(_BITS_MODERN.items(), key=lambda kv: kv[1])

_TABLES = {"3.10": _TABLE_3_10, "4.4": _TABLE_4_4, "modern": _TABLE_MODERN}

# The highest bit of the 3.10 layout is __GFP_WRITE (0x1000000, __GFP_BITS_SHIFT 25).
_BEYOND_3_10 = ~((1 << 25) - 1)


def decode_gfp(value: int, generation: str) -> List[str]:
    """Flag names of a gfp mask in the given layout, like the kernel's ``%pGg``.

    >>> decode_gfp(0x8020, "3.10")
    ['GFP_ATOMIC', '__GFP_ZERO']

    Raises ValueError for a negative value or an unknown generation.
    """
    if value < 0:
        raise ValueError("gfp mask must not be negative: %d" % value)
    if generation not in _TABLES:
        raise ValueError("unknown gfp layout %r (known: %s)" % (generation, ", ".join(GENERATIONS)))
    names = []
    rest = value
    for name, mask in _TABLES[generation]:
        if mask and rest & mask == mask:
            names.append(name)
            rest &= ~mask
    if rest:
        names.append("%#x" % rest)
    return names


def encode_gfp(names: Iterable[str], generation: str) -> int:
    """The mask of flag names (as :func:`decode_gfp` returns them; hex parts are taken as is).

    >>> hex(encode_gfp(["GFP_KERNEL", "__GFP_ZERO"], "modern"))
    '0xdc0'

    Raises ValueError for a name the layout does not have.
    """
    if generation not in _TABLES:
        raise ValueError("unknown gfp layout %r (known: %s)" % (generation, ", ".join(GENERATIONS)))
    masks = dict(_TABLES[generation])
    value = 0
    for name in names:
        if name in masks:
            value |= masks[name]
        elif re.match(r"^0x[0-9a-fA-F]+$", name):
            value |= int(name, 16)
        else:
            raise ValueError("no flag %r in the %s gfp layout" % (name, generation))
    return value


def _version(release: Optional[str]) -> Optional[Tuple[int, int]]:
    match = re.match(r"\s*(\d+)\.(\d+)", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def generation_for_release(release: Optional[str]) -> str:
    """The gfp layout of a kernel release (``uname -r``), or ``"unknown"``.

    >>> generation_for_release("3.10.0-957.el7.x86_64")
    '3.10'

    v4.10..v5.3 and pre-3.0 kernels answer ``"unknown"``: no table here matches them (every
    kernel from v4.6 prints the flag names anyway).
    """
    version = _version(release)
    if version is None or version < (3, 0):
        return UNKNOWN
    if version < (4, 4):
        return "3.10"
    if version < (4, 10):
        return "4.4"
    if version >= (5, 4):
        return "modern"
    return UNKNOWN


def generation_for_unnamed_mask(value: int) -> str:
    """The likely layout of a mask printed without names (``(gfp=0x...)``, kernels before v4.6).

    That format was printed by v3.x..v4.5, i.e. the "3.10" and "4.4" layouts. Every 4.4-layout
    mask that may wake kswapd has bit 0x2000000, which does not exist in the 3.10 layout.
    """
    return "4.4" if value & _BEYOND_3_10 else "3.10"
