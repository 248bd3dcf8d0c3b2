"""Kernel symbol resolver: what to attach a kprobe/fentry to, on *this* kernel, for a wanted function.

The function a tool wants is often not the symbol the kernel has: since 6.10 the allocators are
``*_noprof`` functions behind same-named macros; ``netdev_wait_allrefs`` became
``netdev_wait_allrefs_any``; gcc emits ``.isra.N``/``.constprop.N``/``.part.N`` clones and ``.cold``
fragments; static functions get inlined and vanish. Like bcc's ``get_kprobe_functions``, the table is
``/proc/kallsyms`` (text symbols only), checked against the kprobes blacklist and, when readable,
``available_filter_functions`` (fentry and kprobe-on-ftrace need the function there).

Example::

    >>> table = SymbolTable.from_kallsyms("ffffffff8123 T mempool_alloc_noprof\\n")
    >>> table.resolve("mempool_alloc").attach
    'mempool_alloc_noprof'

Knowledge of inlined, static and renamed functions lives in one table, ``KNOWN_SYMBOLS``
(from /work/shared/design/kernel-facts.md; markers: [V] read in kernel source, [S] secondary
source, [L] seen in /proc/kallsyms of the 6.18 lab machine, [U] inference).
"""
import errno
import os
import re
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple, Union

from dataclasses import dataclass

from ..errors import MissingKernelFeature
from .hostroot import host_path
from .tracefs import find_tracefs

# nm types of text symbols; kallsyms shows data symbols too on kernels with CONFIG_KALLSYMS_ALL.
TEXT_TYPES = frozenset("tTW")

# gcc clone suffixes, possibly chained: ".isra.0", ".constprop.2.isra.0", ".part.0", and ".cold"
# fragments. gcc 8/9 numbered them (".cold.12"); gcc >= 10 does not: the 6.18 lab kernel (gcc 15.3)
# has 2822 bare ".cold" symbols and 69 ".isra.N.cold" ones [L].
_CLONE_SUFFIX = re.compile(r"^(?:\.(?:isra|constprop|part|cold)\.\d+|\.cold)+$")
_COLD = re.compile(r"\.cold(?:\.\d+)?(?=\.|$)")

# Where the kprobes blacklist lives: debugfs only (kernel/kprobes.c, since v4.0 [U]); RHEL 7 kernels
# may lack it (bcc#2413 [S]).
KPROBES_BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"

# Errors that mean "this file cannot tell us": absent, not permitted (the lab machine refuses
# available_filter_functions with EPERM even to root [L]), or no such filesystem.
_UNKNOWN_ERRNOS = frozenset([errno.ENOENT, errno.ENOTDIR, errno.EPERM, errno.EACCES, errno.ENODEV])

# Kinds of KNOWN_SYMBOLS entries, and the ``how`` a missing symbol of that kind gets.
INLINE = "inline"          # an inline function in every version: never a symbol
MAY_INLINE = "may-inline"  # a static (or small) function the compiler may inline away
RENAMED = "renamed"        # renamed or removed in other kernel versions

_HOW_WHEN_MISSING = {INLINE: "inlined", MAY_INLINE: "inlined", RENAMED: "absent"}


@dataclass(frozen=True)
class KnownSymbol:
    """What kernel-facts.md says about a function that may not be in kallsyms.

    ``fallbacks`` are wanted names (resolved with the same rules, first found wins);
    ``advice`` is a non-symbol alternative (a tracepoint, a hardware watchpoint).
    """

    kind: str
    fallbacks: Tuple[str, ...]
    reason: str
    history: str
    advice: str = ""


_DEV_HOLD = KnownSymbol(
    INLINE, ("ref_tracker_alloc", "dst_init", "dst_alloc"),
    "always inline (3.10: this_cpu_inc on dev->pcpu_refcnt; 6.x: inside netdev_hold)",
    "inline in 3.10, 6.1 and 6.18 [V]; ref_tracker_alloc is a real call only with "
    "CONFIG_NET_DEV_REFCNT_TRACKER (debug kernels) [V]; dst_init (RHEL 7, 6.1) and dst_alloc "
    "(vanilla 3.10) take a device reference [V]",
    "a hardware watchpoint on the refcount (perf_event_open PERF_TYPE_BREAKPOINT, one per CPU)")
_DEV_PUT = KnownSymbol(
    INLINE, ("ref_tracker_free", "dst_destroy", "dst_dev_put"),
    "always inline (3.10: this_cpu_dec on dev->pcpu_refcnt; 6.x: inside netdev_put)",
    "inline in 3.10, 6.1 and 6.18 [V]; ref_tracker_free only with CONFIG_NET_DEV_REFCNT_TRACKER [V]; "
    "dst_destroy drops a dst's device reference, dst_dev_put (6.x) moves it to blackhole_netdev [V]",
    _DEV_HOLD.advice)
_WAIT_ALLREFS = KnownSymbol(
    MAY_INLINE, ("netdev_run_todo", "netdev_refcnt_read"),
    "static and often inlined into netdev_run_todo",
    "3.10: static netdev_wait_allrefs(dev) [V]; 6.1 and 6.18: static netdev_wait_allrefs_any(list) [V]; "
    "inlined on the 6.18 lab kernel [L]; netdev_refcnt_read is exported in all three [V]")
_FNHE_HOSTS = ("rt_bind_exception", "rt_set_nexthop")

KNOWN_SYMBOLS = {
    "netdev_wait_allrefs": _WAIT_ALLREFS,
    "netdev_wait_allrefs_any": _WAIT_ALLREFS,
    "dev_hold": _DEV_HOLD,
    "netdev_hold": _DEV_HOLD,
    "dev_put": _DEV_PUT,
    "netdev_put": _DEV_PUT,
    "bvec_alloc": KnownSymbol(
        MAY_INLINE, ("bio_alloc_bioset",),
        "may be inlined into its caller bio_alloc_bioset",
        "argument order changed between 3.10 (gfp, nr, idx, pool) and 6.1 (pool, nr_vecs, gfp) [V]; "
        "inlining on 6.18 is an inference [U]; a T symbol on the 6.18 lab kernel [L]"),
    "ip_del_fnhe": KnownSymbol(
        MAY_INLINE, ("find_exception",) + _FNHE_HOSTS,
        "static and likely inlined into its caller find_exception",
        "absent in vanilla 3.10.99, static in RHEL 514/1127, 6.1 and 6.18 [V]; fix ee60ad219f5c (~v5.1, "
        "RHEL 1127, not 957 GA) [V]; caller find_exception [S]; inlined on the 6.18 lab kernel [L]"),
    "fnhe_remove_oldest": KnownSymbol(
        MAY_INLINE, ("update_or_create_fnhe",) + _FNHE_HOSTS,
        "static and likely inlined into its caller update_or_create_fnhe (absent before 67d6d681e15b)",
        "introduced by 67d6d681e15b [V]; rebinding race fixed Nov 2025 (in 6.18.2, not 6.1.141) [V]; "
        "caller update_or_create_fnhe [S]; inlined on the 6.18 lab kernel [L]"),
    "rt_bind_exception": KnownSymbol(
        MAY_INLINE, ("rt_set_nexthop",),
        "static and inlined into its only caller rt_set_nexthop",
        "binds a dst to an fnhe (the 2025 leak) [V]; caller rt_set_nexthop [S]; inlined into "
        "rt_set_nexthop.isra.0 on the 6.18 lab kernel [L]"),
    "__writepage": KnownSymbol(
        MAY_INLINE, ("write_cache_pages", "do_writepages"),
        "static in mm/page-writeback.c from 3.10 to 6.1 and gone by 6.18 (writeback_iter drives the loop)",
        "3.10 and 6.1: static, called by write_cache_pages [V]; 6.18: ->writepage removed [V]; "
        "no write_cache_pages on the 6.18 lab kernel [L]",
        "the writeback:wbc_writepage tracepoint (3.10, 6.1, 6.18)"),
    "slab_out_of_memory": KnownSymbol(
        MAY_INLINE, (),
        "an empty inline stub without CONFIG_SLUB_DEBUG (static noinline otherwise)",
        "static noinline in 3.10, 6.1 and 6.18 [V]",
        "the kmem:kmem_cache_alloc tracepoint (on 3.10 it fires on failure with ptr=0)"),
    "kmem_cache_alloc_trace": KnownSymbol(
        RENAMED, ("kmalloc_trace", "__kmalloc_cache"),
        "renamed: kmalloc_trace on 6.1, __kmalloc_cache_noprof on 6.10+ (arguments differ)",
        "3.10 kmem_cache_alloc_trace, 6.1 kmalloc_trace, 6.18 __kmalloc_cache_noprof [V]"),
    "kmalloc_trace": KnownSymbol(
        RENAMED, ("__kmalloc_cache", "kmem_cache_alloc_trace"),
        "renamed: kmem_cache_alloc_trace on 3.10, __kmalloc_cache_noprof on 6.10+ (arguments differ)",
        "3.10 kmem_cache_alloc_trace, 6.1 kmalloc_trace, 6.18 __kmalloc_cache_noprof [V]"),
    "kmalloc_large": KnownSymbol(
        RENAMED, ("__kmalloc_large",),
        "renamed __kmalloc_large_noprof on 6.10+",
        "6.1 kmalloc_large, 6.18 __kmalloc_large_noprof [V]"),
    "memcg_update_kmem_limit": KnownSymbol(
        RENAMED, ("mem_cgroup_write",),
        "the 3.10 write path of memory.kmem.limit_in_bytes, a write that 6.x only warns about",
        "3.10: a write calls memcg_update_kmem_limit [V]; through the cgroup write handler "
        "mem_cgroup_write [U]; 6.1/6.18: the write has no effect [V]"),
}


@dataclass(frozen=True)
class Resolution:
    """Where to attach for one wanted function on this kernel.

    ``how``: "exact" | "noprof" | "any" | "clone" | "inlined" | "absent" | "blacklisted".
    ``fallback`` is set when ``attach`` is None or covers only part of the function (a ``.part.N``
    clone). ``module`` is the kernel module of ``attach`` (None for vmlinux). ``ftrace`` says whether
    the recommended symbol (``attach``, else ``fallback``) is in available_filter_functions, which
    fentry and kprobe-on-ftrace need; None when unknown.
    """

    wanted: str
    attach: Optional[str]
    how: str
    candidates: Tuple[str, ...]
    fallback: Optional[str]
    note: str
    module: Optional[str] = None
    ftrace: Optional[bool] = None

    def to_json(self) -> dict:
        """Plain data for recordings and ``--json``."""
        return {"wanted": self.wanted, "attach": self.attach, "how": self.how,
                "candidates": list(self.candidates), "fallback": self.fallback, "note": self.note,
                "module": self.module, "ftrace": self.ftrace}


def _names(items: Optional[Iterable[str]]) -> Optional[FrozenSet[str]]:
    """Function names from file lines or bare names; None stays None (unknown).

    Blacklist lines are ``0xSTART-0xEND<TAB>name [module]``; available_filter_functions lines are
    ``name`` or ``name [module]``.
    """
    if items is None:
        return None
    out = set()
    for item in items:
        parts = item.split()
        if parts:
            out.add(parts[1] if parts[0].startswith("0x") and len(parts) > 1 else parts[0])
    return frozenset(out)


def _is_cold(name: str) -> bool:
    return _COLD.search(name) is not None


KALLSYMS = "/proc/kallsyms"
DATA_TYPES = frozenset("dDbBrR")
Entry = Tuple[int, str, str, Optional[str]]     # address, nm type, name, module (None: vmlinux)


def kallsyms_entries(lines: Iterable[str]) -> Iterator[Entry]:
    """The symbols of /proc/kallsyms LINES (``addr type name [\t[module]]``); malformed lines skipped.
    Addresses read 0 where kptr_restrict hides them."""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        yield addr, parts[1], parts[2], parts[3].strip("[]") if len(parts) > 3 else None


def read_kallsyms(path: Optional[str] = None) -> List[str]:
    """The lines of /proc/kallsyms (under the host root; root sees addresses and, with CONFIG_KALLSYMS_ALL,
    data symbols)."""
    lines = _read_lines(path or host_path(KALLSYMS))
    if lines is None:
        raise MissingKernelFeature("/proc/kallsyms (CONFIG_KALLSYMS)")
    return lines


def symbol_address(lines: Iterable[str], name: str, types: Optional[FrozenSet[str]] = None) -> Optional[int]:
    """Address of the vmlinux symbol NAME (of nm TYPES; any type when None) in kallsyms LINES; None when
    absent, hidden (kptr_restrict shows zeros) or only in a module."""
    for addr, kind, sym, module in kallsyms_entries(lines):
        if sym == name and module is None and (types is None or kind in types):
            return addr or None
    return None


def text_addresses(lines: Iterable[str]) -> Dict[Tuple[str, Optional[str]], List[int]]:
    """(name, module) -> addresses of the text symbols of kallsyms LINES (module None for vmlinux)."""
    out = {}  # type: Dict[Tuple[str, Optional[str]], List[int]]
    for addr, kind, name, module in kallsyms_entries(lines):
        if kind in TEXT_TYPES:
            out.setdefault((name, module), []).append(addr)
    return out


class SymbolTable:
    """The text symbols of one kernel plus what its kprobes blacklist and ftrace allow."""

    def __init__(self, symbols: Dict[str, List[Optional[str]]], clones: Dict[str, List[str]],
                 blacklist: Optional[FrozenSet[str]], filter_functions: Optional[FrozenSet[str]],
                 addresses_visible: bool) -> None:
        self._symbols = symbols            # name -> module of each same-named symbol (None: vmlinux)
        self._clones = clones              # base name -> its clone names, kallsyms order
        self._blacklist = blacklist or frozenset()
        self.blacklist_known = blacklist is not None
        self.filter_functions = filter_functions   # None: unknown (absent or EPERM)
        self.addresses_visible = addresses_visible  # False when kptr_restrict hides addresses

    @property
    def filter_functions_known(self) -> bool:
        """True when available_filter_functions was read."""
        return self.filter_functions is not None

    @classmethod
    def from_kallsyms(cls, text_or_lines: Union[str, Iterable[str]],
                      blacklist: Optional[Iterable[str]] = None,
                      filter_functions: Optional[Iterable[str]] = None) -> "SymbolTable":
        """Build from /proc/kallsyms text (``addr type name [\\t[module]]`` lines).

        ``blacklist`` and ``filter_functions`` take file lines or bare names; None means unknown.
        """
        lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
        symbols = {}  # type: Dict[str, List[Optional[str]]]
        clones = {}   # type: Dict[str, List[str]]
        visible = False
        for addr, kind, name, module in kallsyms_entries(lines):
            if kind not in TEXT_TYPES:
                continue
            visible = visible or addr != 0
            if name not in symbols:
                symbols[name] = []
                base, dot, suffix = name.partition(".")
                if dot and _CLONE_SUFFIX.match(dot + suffix):
                    clones.setdefault(base, []).append(name)
            symbols[name].append(module)
        return cls(symbols, clones, _names(blacklist), _names(filter_functions), visible)

    @classmethod
    def from_system(cls, root: Optional[str] = None, kallsyms: Optional[List[str]] = None) -> "SymbolTable":
        """Read /proc/kallsyms, the kprobes blacklist and tracefs' available_filter_functions.

        An unreadable available_filter_functions (absent, or EPERM) leaves it unknown; a missing
        blacklist gives an empty one with ``blacklist_known`` False. Raises MissingKernelFeature when
        /proc/kallsyms cannot be read. KALLSYMS: its lines, where the caller has read them already. ROOT: a
        tree standing for / (default: /proc under the host root, tracefs and debugfs where bcc sees them).
        """
        if kallsyms is None:
            kallsyms = read_kallsyms(host_path(KALLSYMS, root))
        tracefs = find_tracefs(root or "/")
        filter_functions = None
        blacklist_paths = [host_path(KPROBES_BLACKLIST, root or "/")]
        if tracefs is not None:
            filter_functions = _read_lines(os.path.join(tracefs, "available_filter_functions"))
            # tracefs under debugfs (old kernels): its parent is the debugfs root.
            blacklist_paths.append(os.path.join(os.path.dirname(tracefs), "kprobes", "blacklist"))
        blacklist = None
        for path in blacklist_paths:
            blacklist = _read_lines(path)
            if blacklist is not None:
                break
        return cls.from_kallsyms(kallsyms, blacklist, filter_functions)

    @property
    def blacklist_size(self) -> int:
        """Entries in the kprobes blacklist (0 when it is unknown: see ``blacklist_known``)."""
        return len(self._blacklist)

    def has(self, name: str) -> bool:
        """True when NAME is a text symbol (exact name) of this kernel."""
        return name in self._symbols

    def resolve(self, wanted: str) -> Resolution:
        """Find the symbol to attach to for WANTED, or the documented fallback."""
        known = KNOWN_SYMBOLS.get(wanted)
        attach, how, candidates = self._lookup(wanted)
        clauses = []
        if attach is not None and attach in self._blacklist:
            clauses.append("%s is on the kprobes blacklist" % attach)
            attach, how = None, "blacklisted"
        elif attach is None:
            how = _HOW_WHEN_MISSING[known.kind] if known else "absent"
            clauses.append("%s is not in kallsyms: %s" % (wanted, known.reason) if known
                           else "%s is not a text symbol on this kernel" % wanted)
        else:
            clauses.append(self._found_clause(wanted, attach, how))
        partial = attach is not None and ".part." in attach
        fallback = None
        if (attach is None or partial) and known is not None:
            fallback = self._first_fallback(known)
            if fallback:
                clauses.append("use %s instead" % fallback if attach is None else "also probe %s" % fallback)
            elif known.fallbacks:
                clauses.append("none of its fallbacks (%s) is here either" % ", ".join(known.fallbacks))
            if known.advice:
                clauses.append("or use %s" % known.advice)
        clauses.extend(self._extra_clauses(attach, how, candidates))
        recommended = attach or fallback
        ftrace = None
        if recommended is not None and self.filter_functions is not None:
            ftrace = recommended in self.filter_functions
            if not ftrace:
                clauses.append("%s is not in available_filter_functions, so fentry and kprobe-on-ftrace "
                               "cannot attach (a plain kprobe may)" % recommended)
        module = self._symbols[attach][0] if attach is not None else None
        return Resolution(wanted=wanted, attach=attach, how=how, candidates=candidates,
                          fallback=fallback, note="; ".join(clauses) + ".", module=module, ftrace=ftrace)

    def resolve_all(self, wanted: Iterable[str]) -> List[Resolution]:
        """``resolve`` for each name, in order."""
        return [self.resolve(name) for name in wanted]

    def _lookup(self, wanted: str) -> Tuple[Optional[str], str, Tuple[str, ...]]:
        """(attach, how, candidates) by the preference order, ignoring the blacklist.

        ``X_noprof`` comes first: since 6.10 ``X`` may be a macro around it and a same-named symbol
        something else [V]. Then ``X``, then ``X_any`` (netdev_wait_allrefs_any, 6.x [V]), then the
        clones of those three; ``.cold`` fragments are never attach points.
        """
        bases = ((wanted + "_noprof", "noprof"), (wanted, "exact"), (wanted + "_any", "any"))
        exact = [(name, how) for name, how in bases if name in self._symbols]
        clones = [(rank, name) for rank, (base, _) in enumerate(bases) for name in self._clones.get(base, ())]
        candidates = tuple([name for name, _ in exact] + [name for _, name in clones])
        if exact:
            return exact[0][0], exact[0][1], candidates
        usable = [(rank, ".part." in name, name.count("."), i, name)
                  for i, (rank, name) in enumerate(clones) if not _is_cold(name)]
        if usable:
            return min(usable)[-1], "clone", candidates
        return None, "absent", candidates

    def _first_fallback(self, known: KnownSymbol) -> Optional[str]:
        for name in known.fallbacks:
            attach = self._lookup(name)[0]
            if attach is not None and attach not in self._blacklist:
                return attach
        return None

    def _found_clause(self, wanted: str, attach: str, how: str) -> str:
        where = " (module %s)" % self._symbols[attach][0] if self._symbols[attach][0] else ""
        if how == "exact":
            return "%s is a text symbol on this kernel%s" % (attach, where)
        if how == "noprof":
            return "since 6.10 %s is a macro around %s%s" % (wanted, attach, where)
        if how == "any":
            return "%s is named %s on this kernel%s" % (wanted, attach, where)
        if ".part." in attach:
            return ("only the compiler-split part %s%s exists: the start of %s is inlined into its callers, "
                    "so calls that return early are missed" % (attach, where, wanted))
        return ("only compiler clones exist; %s%s may take fewer or reordered arguments than %s"
                % (attach, where, wanted))

    def _extra_clauses(self, attach: Optional[str], how: str, candidates: Tuple[str, ...]) -> List[str]:
        out = []
        if how == "clone":
            others = [c for c in candidates if c != attach and "." in c and not _is_cold(c)]
            if others:
                out.append("other clones %s are separate copies: probe them too" % ", ".join(others))
        if attach is not None and len(self._symbols[attach]) > 1:
            out.append("%d text symbols are named %s (distinct static functions), so attaching by name "
                       "is ambiguous" % (len(self._symbols[attach]), attach))
        return out


def _read_lines(path: str) -> Optional[List[str]]:
    """The lines of PATH, or None when it is absent or not permitted."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except (IOError, OSError) as e:
        if e.errno in _UNKNOWN_ERRNOS:
            return None
        raise
