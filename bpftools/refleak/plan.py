"""What ``bpftools refleak`` can do on this kernel: strategies, attach points and struct offsets, as one plan.

Feature detection only: a hook is used when its function is a kallsyms text symbol the kprobes
blacklist allows (bpftools.kernel.symbols), a struct offset when the running kernel's BTF (or, without BTF,
this kernel's own headers) has it, the watchpoints when ``__per_cpu_offset`` is visible in
/proc/kallsyms (data symbols: CONFIG_KALLSYMS_ALL, root). What is off says why, in ``notes``.

``make_plan`` is pure (symbol table, offsets and facts in), so host tests plan for kernels they
do not run; ``target_plan`` asks a kernel (bpftools.kernel.target: this node or a described one).
"""
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from dataclasses import dataclass, field

from ..capture import Attach, Outline, Probe
from ..errors import MissingKernelFeature
from ..kernel.symbols import DATA_TYPES, SymbolTable, symbol_address
from ..kernel.target import Target

PROGRAM = "refleak"
STRATEGIES = ("watch", "holders", "ref_tracker", "inline")
MAX_CPUS = 64                      # probes/refleak.bpf.c MAX_CPUS
# struct members read by the program (their -D names; kernel.structs says where each is)
STRUCT_MEMBERS = ("OFF_DEV_NAME", "OFF_DEV_IFINDEX", "OFF_DEV_PCPU_REFCNT", "OFF_DEV_REFCOUNT_T", "OFF_DEV_ND_NET",
                  "OFF_NET_NS", "OFF_NS_INUM", "OFF_FNHE_RTH_INPUT", "OFF_FNHE_RTH_OUTPUT", "OFF_NEIGH_DEV",
                  "OFF_DST_DEV", "OFF_IN_DEV_DEV", "OFF_INET6_DEV_DEV", "OFF_FIB_NH_COMMON", "OFF_NHC_DEV",
                  "OFF_DEV_REFCNT_TRACKER")
DEVICE_MEMBERS = ("OFF_DEV_NAME", "OFF_DEV_IFINDEX", "OFF_DEV_ND_NET", "OFF_NET_NS", "OFF_NS_INUM")
# What probes/refleak.bpf.c takes from the kernel's own headers when there is no BTF (members that
# exist from 3.10 on); the others (fib_nh_common, the fnhe's input/output routes) need BTF.
HEADER_MEMBERS = frozenset(DEVICE_MEMBERS + ("OFF_NEIGH_DEV", "OFF_IN_DEV_DEV", "OFF_INET6_DEV_DEV",
                                             "OFF_DEV_REFCNT_TRACKER", "OFF_DST_DEV"))


@dataclass(frozen=True)
class HolderHooks:
    """How one kind of holder object is followed: create (entry [+ return]) and release functions."""

    kind: str
    flag: str
    create: Tuple[str, ...]          # wanted kernel function, alternatives in order (the first found)
    create_fn: str                   # BPF function at its entry
    create_ret_fn: Optional[str]     # BPF function at its return (None: the entry says it all)
    releases: Tuple[Tuple[str, str], ...]   # (wanted kernel function, BPF function)
    members: Tuple[str, ...]         # STRUCT_MEMBERS the section reads
    also: Tuple[Tuple[str, str], ...] = ()  # other creating functions (entry only), used when found


HOLDERS = (
    # dst_alloc(ops, dev, ..) inlines dst_init on 5.10-6.12 (seen in 6.1's DWARF); dst_init(dst, ops,
    # dev, ..) is still called on its own by other users (xfrm): both, an object is reported once.
    HolderHooks("dst", "HOLD_DST", ("dst_alloc",), "dst_alloc_entry", "dst_alloc_return",
                (("dst_dev_put", "dst_dev_put_entry"), ("dst_destroy", "dst_destroy_entry")), ("OFF_DST_DEV",),
                also=(("dst_init", "dst_init_entry"),)),
    # ___neigh_create(tbl, pkey, dev, ...) since 4.19's neigh flags (__neigh_create wraps it); before,
    # __neigh_create(tbl, pkey, dev, want_ref) is the constructor (3.10). The device is argument 3 in both.
    HolderHooks("neigh", "HOLD_NEIGH", ("___neigh_create", "__neigh_create"), "neigh_create_entry", "neigh_create_return",
                (("neigh_destroy", "neigh_destroy_entry"),), ("OFF_NEIGH_DEV",)),
    HolderHooks("in_dev", "HOLD_IN_DEV", ("inetdev_init",), "in_dev_init_entry", "in_dev_init_return",
                (("in_dev_finish_destroy", "in_dev_destroy_entry"),), ("OFF_IN_DEV_DEV",)),
    HolderHooks("inet6_dev", "HOLD_INET6_DEV", ("ipv6_add_dev",), "inet6_dev_add_entry", "inet6_dev_add_return",
                (("in6_dev_finish_destroy", "inet6_dev_destroy_entry"),), ("OFF_INET6_DEV_DEV",)),
    HolderHooks("fib_nh", "HOLD_FIB_NH", ("fib_check_nh",), "fib_nh_check_entry", "fib_nh_check_return",
                (("fib_nh_common_release", "fib_nh_release_entry"),), ("OFF_FIB_NH_COMMON", "OFF_NHC_DEV")),
)
# Exact attach kinds: the program reads these functions' arguments by position.
_EXACT = ("exact", "noprof", "any")


@dataclass
class RefleakPlan:
    """One run's program: flags, -D parameters, kprobes, strategies on (and why the others are off)."""

    flags: List[str] = field(default_factory=list)
    params: Dict[str, int] = field(default_factory=dict)
    kprobes: List[Attach] = field(default_factory=list)
    strategies: List[str] = field(default_factory=list)
    off: Dict[str, str] = field(default_factory=dict)
    holders: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    pcpu: Optional[bool] = None
    base_refs: Optional[int] = None
    ncpus: int = 1
    watch_new: bool = False
    inline_vmlinux: bool = False     # the inline sites include vmlinux's (else modules only: partial)

    def probe(self) -> Probe:
        return Probe(PROGRAM, self.params, sorted(set(self.flags)))

    def to_json(self) -> Dict[str, Any]:
        """The ``plan`` record written first in a recording."""
        return {"type": "plan", "flags": sorted(set(self.flags)), "params": dict(self.params),
                "kprobes": [a.to_json() for a in self.kprobes], "strategies": list(self.strategies),
                "off": dict(self.off), "holders": list(self.holders), "notes": list(self.notes),
                "pcpu": self.pcpu, "base_refs": self.base_refs, "ncpus": self.ncpus, "watch_new": self.watch_new,
                "inline_vmlinux": self.inline_vmlinux}

    def outline(self) -> Outline:
        return Outline("strategies: %s" % (", ".join(self.strategies) or "none"),
                       [a.describe() for a in self.kprobes], self.notes + ["holders: %s" % ", ".join(self.holders)],
                       ["%s: %s" % (s, why) for s, why in sorted(self.off.items())])

    def describe(self) -> str:
        """What --ebpf prints: the plan, then the program with its cflags."""
        lines = ["// strategies: %s" % (", ".join(self.strategies) or "none")]
        lines += ["// off: %s: %s" % (s, why) for s, why in sorted(self.off.items())]
        lines += ["// holders: %s" % (", ".join(self.holders) or "none")]
        lines += ["// %s" % n for n in self.notes]
        lines += ["// attach " + a.describe() for a in self.kprobes]
        return "\n".join(lines) + "\n" + self.probe().describe()


def _signed64(value: int) -> int:
    """An address as a signed 64-bit number (a -D integer clang takes without an overflow warning)."""
    return value - (1 << 64) if value >= (1 << 63) else value


def _hook(table: SymbolTable, wanted: str, exact: bool) -> Tuple[Optional[str], str]:
    """(symbol to attach, why not) for WANTED; EXACT refuses clones (their arguments may differ)."""
    r = table.resolve(wanted)
    if r.attach is not None and (r.how in _EXACT or not exact):
        return r.attach, ""
    if r.attach is not None:
        return None, "%s is only a compiler clone (%s): its arguments may differ" % (wanted, r.attach)
    return None, r.note


def make_plan(table: SymbolTable, offsets: Dict[str, int], per_cpu_offset: Optional[int], ncpus: int,
              base_refs: Optional[int], requested: Iterable[str], watch_new: bool, self_tgid: int,
              cgroup_id: bool = True, headers: bool = False, inline_sites: int = 0,
              inline_vmlinux: bool = False, perf_addr: bool = True) -> RefleakPlan:
    """The plan for a kernel described by its symbol TABLE, struct OFFSETS (from BTF; HEADERS: the
    kernel's own headers give the rest), the address of ``__per_cpu_offset`` (None when kallsyms does
    not show data symbols), the count of possible CPUs, its base reference count (1 since v5.13),
    and the strategies REQUESTED. INLINE_SITES: how many inlined hold/put sites debug info gave,
    INLINE_VMLINUX: whether vmlinux's are among them."""
    want = set(requested)
    plan = RefleakPlan(ncpus=ncpus, base_refs=base_refs, watch_new=watch_new, inline_vmlinux=inline_vmlinux)
    plan.params["SELF_TGID"] = self_tgid
    if cgroup_id:
        plan.flags.append("HAVE_CGROUP_ID")
    if headers and not offsets:
        plan.flags.append("HAVE_MATCHING_HEADERS")
        plan.notes.append("struct offsets from this kernel's own headers (no BTF)")
    elif not all(m in offsets for m in DEVICE_MEMBERS):
        missing = [m for m in DEVICE_MEMBERS if m not in offsets]
        raise MissingOffsets("struct net_device fields (%s): no BTF and no matching kernel headers"
                             % ", ".join(missing))
    for name in DEVICE_MEMBERS:
        if name in offsets:
            plan.params[name] = offsets[name]
    if "OFF_NET_NS" in offsets and "OFF_NS_INUM" in offsets:
        plan.params["OFF_NET_NS_INUM"] = offsets["OFF_NET_NS"] + offsets["OFF_NS_INUM"]
        del plan.params["OFF_NET_NS"], plan.params["OFF_NS_INUM"]
    if "OFF_DEV_PCPU_REFCNT" in offsets:
        plan.pcpu = True
        plan.params["OFF_DEV_REFCNT"] = offsets["OFF_DEV_PCPU_REFCNT"]
        plan.flags.append("DEV_REFCNT_PCPU")
    elif "OFF_DEV_REFCOUNT_T" in offsets:
        plan.pcpu = False
        plan.params["OFF_DEV_REFCNT"] = offsets["OFF_DEV_REFCOUNT_T"]
    elif headers:
        plan.notes.append("counter layout (per-cpu or refcount_t) from the headers' config")
    else:
        raise MissingOffsets("net_device.pcpu_refcnt / dev_refcnt: not in this kernel's BTF")
    level_known = plan.pcpu is False or (per_cpu_offset is not None and ncpus <= MAX_CPUS)
    if plan.pcpu and per_cpu_offset is None:
        plan.notes.append("__per_cpu_offset is not in /proc/kallsyms (needs CONFIG_KALLSYMS_ALL and root): "
                          "the per-cpu counter cannot be read or watched")
    if plan.pcpu and ncpus > MAX_CPUS:
        plan.notes.append("%d possible CPUs, the program reads at most %d counter slots" % (ncpus, MAX_CPUS))
    if level_known:
        plan.params["NCPUS"] = ncpus
        plan.params["PER_CPU_OFFSET"] = _signed64(per_cpu_offset or 0)
    else:
        plan.flags.append("LEVEL_UNKNOWN")

    _lifecycle(plan, table, watch_new)
    _strategy_watch(plan, want, level_known, perf_addr)
    _strategy_holders(plan, table, offsets, want, headers)
    _strategy_tracker(plan, table, offsets, want, headers)
    _strategy_inline(plan, want, inline_sites)
    return plan


class MissingOffsets(Exception):
    """The device fields every strategy needs cannot be located on this kernel."""


# Functions every run probes, with the names they had in other versions (first found wins).
# dev_get_flags(dev) answers SIOCGIFFLAGS; v6.18 renamed it netif_get_flags.
LIFECYCLE = ((("dev_get_flags", "netif_get_flags"), "lookup_entry"),
             (("unregister_netdevice_queue",), "unregister_entry"),
             (("free_netdev",), "free_entry"))


def _lifecycle(plan: RefleakPlan, table: SymbolTable, watch_new: bool) -> None:
    for names, fn in LIFECYCLE:
        symbol, why = None, ""
        for wanted in names:
            symbol, why = _hook(table, wanted, exact=True)
            if symbol is not None:
                break
        if symbol is None:
            raise MissingHook(" or ".join(names), why)
        plan.kprobes.append(Attach(symbol, fn))
    if watch_new:
        symbol, why = _hook(table, "register_netdevice", exact=True)
        if symbol is None:
            raise MissingHook("register_netdevice", why)
        plan.flags.append("WATCH_NEW")
        plan.kprobes.append(Attach(symbol, "register_return", ret=True))
        plan.kprobes.append(Attach(symbol, "register_entry"))


class MissingHook(Exception):
    """A function every run needs is not probe-able here."""

    def __init__(self, wanted: str, why: str) -> None:
        super().__init__("%s: %s" % (wanted, why))
        self.wanted = wanted


def _strategy_watch(plan: RefleakPlan, want: Set[str], level_known: bool, perf_addr: bool) -> None:
    if "watch" not in want:
        plan.off["watch"] = "not requested"
    elif not perf_addr:
        plan.off["watch"] = ("this kernel's perf_event programs cannot read the breakpoint address "
                             "(bpf_perf_event_data.addr, Linux 4.17)")
    elif not level_known:
        plan.off["watch"] = "the counter's per-cpu slots cannot be located (see notes)"
    else:
        plan.flags.append("WATCH")
        plan.strategies.append("watch")


def _located(members: Iterable[str], offsets: Dict[str, int], headers: bool) -> bool:
    """True when every member's offset is known: from BTF, or from the headers where they can give it."""
    return all(m in offsets or (headers and m in HEADER_MEMBERS) for m in members)


def _strategy_holders(plan: RefleakPlan, table: SymbolTable, offsets: Dict[str, int], want: Set[str],
                      headers: bool) -> None:
    if "holders" not in want:
        plan.off["holders"] = "not requested"
        return
    for hooks in HOLDERS:
        if not _located(hooks.members, offsets, headers):
            plan.notes.append("holders: %s not followed (no offset of %s)" % (hooks.kind, ", ".join(hooks.members)))
            continue
        found = [_hook(table, wanted, exact=True) for wanted in hooks.create]
        create = next((symbol for symbol, _ in found if symbol is not None), None)
        if create is None:
            plan.notes.append("holders: %s not followed: %s" % (hooks.kind, "; ".join(why for _, why in found)))
            continue
        releases = []
        for wanted, fn in hooks.releases:
            symbol, why = _hook(table, wanted, exact=False)
            if symbol is None:
                plan.notes.append("holders: %s releases by %s not seen: %s" % (hooks.kind, wanted, why))
            else:
                releases.append(Attach(symbol, fn))
        if not releases:
            plan.notes.append("holders: %s not followed: no release function to probe" % hooks.kind)
            continue
        plan.flags.append(hooks.flag)
        for m in hooks.members:
            if m in offsets:
                plan.params[m] = offsets[m]
        if hooks.create_ret_fn:
            plan.kprobes.append(Attach(create, hooks.create_ret_fn, ret=True))
        plan.kprobes.append(Attach(create, hooks.create_fn))
        for wanted, fn in hooks.also:
            symbol = _hook(table, wanted, exact=True)[0]
            if symbol is not None:
                plan.kprobes.append(Attach(symbol, fn))
        plan.kprobes.extend(releases)
        plan.holders.append(hooks.kind)
    if "dst" in plan.holders:
        _fnhe(plan, table, offsets, headers)
    if plan.holders:
        plan.strategies.append("holders")
    else:
        plan.off["holders"] = "no holder object can be followed on this kernel (see notes)"


def _fnhe(plan: RefleakPlan, table: SymbolTable, offsets: Dict[str, int], headers: bool) -> None:
    """Route-exception binding: after rt_bind_exception(rt, fnhe, ..) -- static and usually inlined into
    rt_set_nexthop(rt, daddr, res, fnhe, ..) -- the exception's cached route is compared with the dst
    (a clone with other argument positions just never matches)."""
    members = ("OFF_FNHE_RTH_INPUT", "OFF_FNHE_RTH_OUTPUT")
    if not _located(members, offsets, headers):
        plan.notes.append("holders: route-exception binding not checked (no fib_nh_exception offsets)")
        return
    symbol, arg = _hook(table, "rt_bind_exception", exact=False)[0], 2
    if symbol is None:
        symbol, arg = _hook(table, "rt_set_nexthop", exact=False)[0], 4
        if symbol is not None:
            plan.notes.append("holders: rt_bind_exception is inlined; route-exception binding is checked "
                              "after %s (fnhe = its 4th argument)" % symbol)
    if symbol is None:
        plan.notes.append("holders: route-exception binding not checked (neither rt_bind_exception nor "
                          "rt_set_nexthop can be probed)")
        return
    plan.flags.append("HOLD_FNHE")
    plan.params["FNHE_ARG"] = arg
    for m in members:
        if m in offsets:
            plan.params[m] = offsets[m]
    plan.kprobes.append(Attach(symbol, "fnhe_return", ret=True))
    plan.kprobes.append(Attach(symbol, "fnhe_entry"))
    plan.holders.append("fnhe")


def _strategy_tracker(plan: RefleakPlan, table: SymbolTable, offsets: Dict[str, int], want: Set[str],
                      headers: bool) -> None:
    if "ref_tracker" not in want:
        plan.off["ref_tracker"] = "not requested"
        return
    alloc, why = _hook(table, "ref_tracker_alloc", exact=True)
    free, why_free = _hook(table, "ref_tracker_free", exact=True)
    if alloc is None or free is None:
        plan.off["ref_tracker"] = ("not a CONFIG_NET_DEV_REFCNT_TRACKER kernel: %s" % (why or why_free))
        return
    if not _located(("OFF_DEV_REFCNT_TRACKER",), offsets, headers):
        plan.off["ref_tracker"] = "net_device.refcnt_tracker not in BTF (CONFIG_NET_DEV_REFCNT_TRACKER off)"
        return
    plan.flags.append("TRACKER")
    if "OFF_DEV_REFCNT_TRACKER" in offsets:
        plan.params["OFF_DEV_REFCNT_TRACKER"] = offsets["OFF_DEV_REFCNT_TRACKER"]
    plan.kprobes.append(Attach(alloc, "tracker_alloc_entry"))
    plan.kprobes.append(Attach(free, "tracker_free_entry"))
    plan.strategies.append("ref_tracker")


def _strategy_inline(plan: RefleakPlan, want: Set[str], sites: int) -> None:
    if "inline" not in want:
        plan.off["inline"] = "not requested"
    elif sites <= 0:
        plan.off["inline"] = "no debug info (give --debuginfo VMLINUX, or install the kernel's -dbg package)"
    else:
        plan.flags.append("INLINE")
        plan.strategies.append("inline")
        plan.notes.append("inline: %d inlined hold/put sites from debug info%s" % (
            sites, "" if plan.inline_vmlinux else " of modules only: a partial count (no vmlinux)"))


# ---------------------------------------------------------------------------------------------
# This machine
# ---------------------------------------------------------------------------------------------

def wanted_functions() -> List[str]:
    """Every kernel function a plan may probe (for kallsyms excerpts in test fixtures)."""
    names = [n for names, _ in LIFECYCLE for n in names] + ["register_netdevice", "rt_bind_exception",
                                                           "rt_set_nexthop", "ref_tracker_alloc",
                                                           "ref_tracker_free", "bpf_get_current_cgroup_id"]
    for hooks in HOLDERS:
        names += list(hooks.create) + [w for w, _ in hooks.releases] + [w for w, _ in hooks.also]
    return names


def relevant_symbol(line: str) -> bool:
    """True for a kallsyms line a plan reads: a wanted function (or its clone) or __per_cpu_offset."""
    parts = line.split()
    if len(parts) < 3:
        return False
    base = parts[2].split(".")[0]
    if base.endswith("_noprof"):
        base = base[:-len("_noprof")]
    return parts[2] == "__per_cpu_offset" or base in set(wanted_functions())



def base_references(release: str, config: Optional[Dict[str, str]], has_refcount_t: bool) -> Optional[int]:
    """The references an unregistering device keeps: 1 since v5.13, 0 before.

    Commit 919067cc845f "net: add CONFIG_PCPU_DEV_REFCNT" and "net: set initial device refcount to 1"
    (both v5.13) made the device hold one base reference until it is freed. Detected by the config
    option that came with it (set or not) or by ``dev_refcnt`` in BTF; only when neither can be read,
    by the release number."""
    if config is not None and "CONFIG_PCPU_DEV_REFCNT" in config:
        return 1
    if has_refcount_t:
        return 1
    if config is not None and config:
        return 0
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        return None
    return 1 if (int(m.group(1)), int(m.group(2))) >= (5, 13) else 0



def target_plan(target: Target, requested: Iterable[str], watch_new: bool, inline_sites: int = 0,
                inline_vmlinux: bool = False) -> RefleakPlan:
    """The plan for TARGET (the running kernel: kallsyms, BTF, /boot/config; root sees data symbols)."""
    kprobes = target.kprobes()
    if not kprobes.ok:
        raise MissingKernelFeature("kprobes for refleak's holds and puts (%s)" % kprobes.detail)
    kallsyms = target.kallsyms()
    table = target.symbols()
    offsets = target.offsets(STRUCT_MEMBERS)
    per_cpu = symbol_address(kallsyms, "__per_cpu_offset", DATA_TYPES)
    base = base_references(target.release, target.config(), "OFF_DEV_REFCOUNT_T" in offsets)
    return make_plan(table, offsets, per_cpu, target.possible_slots(), base, requested, watch_new, os.getpid(),
                     cgroup_id=table.has("bpf_get_current_cgroup_id"),
                     headers=not offsets and target.headers_match(), inline_sites=inline_sites,
                     inline_vmlinux=inline_vmlinux, perf_addr=target.perf_event_addr())
