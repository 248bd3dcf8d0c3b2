"""Reference balance of network devices: hold/put records in, per-device balances, the holds that no
put balanced (the leak), and the kernel objects still pinning each device out.

Input: the event dicts of a refleak recording (``bpftools refleak --record``), in capture order.
Types: ``plan``, ``device``, ``watch`` (watchpoints armed or not), ``watch_end`` (the hits perf
counted and how many of them the kernel skipped our program for), ``sync`` (the counter's level: the
baseline of the counting strategies), ``ref`` (one hold +1 or put -1, with its strategy, stack, task
and cgroup), ``holder_new`` / ``holder_end`` / ``fnhe`` (holder objects), ``unregister``, ``free``,
``lost`` and ``dropped`` (gaps). Devices are keyed by their ``dev`` (the net_device address).

A counter has no owner: a put does not say which hold it balances. Strategies that see only
counter writes (``watch``, ``inline``, and ``ref_tracker`` holds without a tracker) match each put
with one outstanding hold by these rules, in order, and report how many each rule matched:

1. ``tracker``: the same ref_tracker object (exact).
2. ``context``: a hold whose stack shares a function with the put's, beyond the generic entry,
   interrupt, softirq, worker and syscall-dispatch frames (taken and dropped in one operation);
   the most shared frames first, then the most recent hold.
3. ``older``: a reference older than the watch (the level at the sync, minus the device's base
   reference, minus the holds seen since): teardown drops the references taken at registration.
4. ``order``: the most recent outstanding hold.

The count is exact (the level at every point is known from the sync); which hold is left over is
the rules' choice, so it is called attribution, and a device whose stream has gaps (lost records,
a watchpoint slot that moved by more than one, a put with nothing to balance, a count that differs
from the kernel's own at unregister or free) is ``uncertain``. A watchpoint trap that left the
counter as it was (QEMU's emulation delivers some) is counted as ``unchanged`` and ignored: every
real hold or put changes the slot by one, and a miss would show as a jump later. The kernel does
not run a watchpoint's program for a hit that lands while another BPF program runs on that CPU;
perf still counts the hit, so ``skipped`` says how many writes could not be seen; the jumps
(``missed``) beyond it (and beyond hits during a sync, whose baseline read may precede them) are
writes that raised no hit at all: ``untrapped``.
A freed device is balanced by definition: the kernel freed it at its base level. The inline
strategy with debug info of modules only (no vmlinux) sees a part of the holds and puts: it has no
level and no older references, and its puts of holds it did not see are just counted.

Pure: no I/O, no clock; the same events give the same result.

>>> r = analyze([{"type": "device", "dev": "0x1", "name": "veth1", "ifindex": 7, "ts_ns": 1,
...               "level": 3, "base_refs": 1},
...              {"type": "watch", "dev": "0x1", "ts_ns": 2, "armed": True, "cpus": [0, 1]},
...              {"type": "sync", "dev": "0x1", "ts_ns": 2, "level": 3},
...              {"type": "ref", "dev": "0x1", "ts_ns": 3, "delta": 1, "strategy": "watch",
...               "stack": ["bpftools_devref_take+0x14", "devref_write"]}])
>>> [(s.stack[0], s.count) for s in r.devices[0].strategies[0].unbalanced]
[('bpftools_devref_take+0x14', 1)]
"""
import collections
import functools
import heapq
import re
from collections import OrderedDict
from typing import Any, Deque, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

from dataclasses import dataclass, field

from .stacks import base_name

STRATEGIES = ("watch", "inline", "ref_tracker")
# Frames that say nothing about which operation took or dropped a reference: system-call entry and
# dispatch, interrupts, softirqs, RCU callbacks, workqueues and kthreads, the scheduler.
GENERIC_FRAME = re.compile(
    r"^(entry_SYSCALL|entry_INT80|do_syscall_|do_fast_syscall|syscall_|__x64_sys_|__ia32_sys_|__do_sys_|"
    r"__se_sys_|x64_sys_call|ksys_|vfs_|new_sync_|proc_reg_|kernfs_fop_|ret_from_fork|kthread|"
    r"worker_thread|process_one_work|process_scheduled_works|smpboot_thread_fn|run_ksoftirqd|"
    r"__do_softirq|handle_softirqs|do_softirq|__softirqentry_text_start|irq_exit|__irq_exit_rcu|"
    r"sysvec_|asm_|do_softirq_own_stack|__sysvec_|rcu_core|rcu_do_batch|rcu_cpu_kthread|"
    r"__schedule|schedule|finish_task_switch|preempt_schedule|exit_to_user_mode|"
    r"__bpf_trace|bpf_trace|kretprobe_trampoline|__kretprobe_trampoline|\[unknown\])")
MATCH_RULES = ("tracker", "context", "older", "order")
KRETPROBE_TRAMPOLINES = frozenset(["kretprobe_trampoline", "__kretprobe_trampoline"])
# Where a kprobe runs the probed instruction out of line: a trap there has no unwindable stack.
KPROBE_SLOTS = frozenset(["kprobe_insn_page", "kprobe_optinsn_page"])


def _dev_key(value: Any) -> str:
    return str(value)


@functools.lru_cache(maxsize=1 << 16)
def is_generic(frame: str) -> bool:
    """True for a frame of the entry/interrupt/worker plumbing (see GENERIC_FRAME)."""
    return GENERIC_FRAME.match(base_name(frame)) is not None


def specific_functions(stack: Optional[List[str]]) -> Set[str]:
    """The functions of STACK that say which operation it was (generic frames left out)."""
    return set(base_name(f) for f in stack or () if not is_generic(f))


@dataclass
class _Hold:
    ts_ns: int
    stack: Tuple[str, ...]
    functions: Set[str]
    tracker: Optional[str]
    task: str
    cgroup: Optional[str]


@dataclass
class StackBalance:
    """Holds from one stack that no put balanced, with who took them and when."""

    stack: List[str]                 # innermost first
    count: int
    first_ns: int
    last_ns: int
    processes: List[str]             # "comm[pid]"
    cgroups: List[str]

    def to_json(self) -> Dict[str, Any]:
        return {"stack": list(self.stack), "count": self.count, "first_ns": self.first_ns,
                "last_ns": self.last_ns, "processes": list(self.processes), "cgroups": list(self.cgroups)}


@dataclass
class StrategyBalance:
    """One strategy's count for one device, from its sync (baseline) to the end of the stream."""

    strategy: str
    holds: int = 0
    puts: int = 0
    level_start: Optional[int] = None    # the counter at the sync
    level_end: Optional[int] = None      # the counter now (sync + the changes seen)
    older: Optional[int] = None          # references older than the watch not yet dropped
    unbalanced: List[StackBalance] = field(default_factory=list)
    matched: Dict[str, int] = field(default_factory=dict)
    uncertain: List[str] = field(default_factory=list)
    partial: bool = False                # sees only some hold/put sites (inline without vmlinux)
    unmatched: int = 0                   # partial: puts whose hold was taken where it does not see
    presync: int = 0                     # records before the baseline (not counted)
    unchanged: int = 0                   # watchpoint traps that changed nothing (not counted)
    missed: int = 0                      # changes not seen, from jumps and the kernel's own counts
    hits: Optional[int] = None           # watch: the hits perf counted on the armed CPUs
    skipped: Optional[int] = None        # watch: hits the kernel did not run our program for
    in_sync: int = 0                     # watch: hits during a sync (whose baseline may miss them)

    @property
    def net(self) -> int:
        return self.holds - self.puts

    @property
    def outstanding(self) -> int:
        return sum(s.count for s in self.unbalanced)

    @property
    def untrapped(self) -> Optional[int]:
        """watch: writes missed beyond the hits the kernel skipped and those during a sync, i.e. writes
        that raised no watchpoint hit at all (None: no hit count)."""
        if self.skipped is None:
            return None
        return max(0, self.missed - self.skipped - self.in_sync)

    def to_json(self) -> Dict[str, Any]:
        return {"strategy": self.strategy, "holds": self.holds, "puts": self.puts, "net": self.net,
                "level_start": self.level_start, "level_end": self.level_end, "older": self.older,
                "outstanding": self.outstanding, "unbalanced": [s.to_json() for s in self.unbalanced],
                "matched": dict(self.matched), "uncertain": list(self.uncertain), "presync": self.presync,
                "unchanged": self.unchanged, "partial": self.partial, "unmatched": self.unmatched,
                "missed": self.missed, "hits": self.hits, "skipped": self.skipped, "in_sync": self.in_sync,
                "untrapped": self.untrapped}


@dataclass
class Holder:
    """A kernel object that pinned the device (dst, neigh, in_dev, inet6_dev, fib_nh)."""

    kind: str
    obj: str
    created_ns: int
    stack: Optional[List[str]]
    process: str
    cgroup: Optional[str]
    fnhe: Optional[str] = None           # the route exception it is cached in (dst)
    fnhe_input: bool = False
    ended_ns: Optional[int] = None
    ended_by: Optional[str] = None
    end_stack: Optional[List[str]] = None

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "obj": self.obj, "created_ns": self.created_ns,
                "stack": list(self.stack) if self.stack is not None else None, "process": self.process,
                "cgroup": self.cgroup, "fnhe": self.fnhe, "fnhe_bound": self.fnhe is not None,
                "fnhe_input": self.fnhe_input, "ended_ns": self.ended_ns, "ended_by": self.ended_by,
                "end_stack": list(self.end_stack) if self.end_stack is not None else None}


@dataclass
class DeviceBalance:
    """Everything refleak knows about one device."""

    dev: str
    name: str
    ifindex: int
    netns: Optional[int]
    how: str                                   # "existing" | "registered"
    seen_ns: int
    base_refs: Optional[int]
    state: str = "live"                        # "live" | "unregistered" | "freed"
    unregistered_ns: Optional[int] = None
    freed_ns: Optional[int] = None
    level_at_unregister: Optional[int] = None
    level_at_free: Optional[int] = None
    watch: Optional[Dict[str, Any]] = None     # the last "watch" record (armed CPUs or why not)
    strategies: List[StrategyBalance] = field(default_factory=list)
    holders_at_unregister: List[Holder] = field(default_factory=list)
    holders_alive: List[Holder] = field(default_factory=list)
    holders_seen: int = 0

    @property
    def level(self) -> Optional[int]:
        """The best known reference count now."""
        if self.level_at_free is not None:
            return self.level_at_free
        for s in self.strategies:
            if s.level_end is not None:
                return s.level_end
        return self.level_at_unregister

    @property
    def leaked(self) -> Optional[int]:
        """References the device still waits for (unregistered, not freed), beyond its base."""
        if self.state != "unregistered" or self.level is None or self.base_refs is None:
            return None
        return self.level - self.base_refs

    @property
    def verdict(self) -> str:
        """leak | balanced | held | unknown: see the module docstring."""
        counted = [s for s in self.strategies if s.level_start is not None or s.holds or s.puts]
        if self.state == "freed":
            return "balanced"
        if self.state == "unregistered":
            if self.leaked is not None:
                return "leak" if self.leaked > 0 else "balanced"
            return "leak" if any(s.outstanding for s in counted) else "unknown"
        return "held" if any(s.outstanding for s in counted) else ("balanced" if counted else "unknown")

    @property
    def uncertain(self) -> bool:
        return any(s.uncertain for s in self.strategies)

    def to_json(self) -> Dict[str, Any]:
        return {"dev": self.dev, "name": self.name, "ifindex": self.ifindex, "netns": self.netns,
                "how": self.how, "seen_ns": self.seen_ns, "base_refs": self.base_refs, "state": self.state,
                "unregistered_ns": self.unregistered_ns, "freed_ns": self.freed_ns,
                "level_at_unregister": self.level_at_unregister, "level_at_free": self.level_at_free,
                "level": self.level, "leaked": self.leaked, "verdict": self.verdict,
                "uncertain": self.uncertain, "watch": self.watch,
                "strategies": [s.to_json() for s in self.strategies],
                "holders_at_unregister": [h.to_json() for h in self.holders_at_unregister],
                "holders_alive": [h.to_json() for h in self.holders_alive], "holders_seen": self.holders_seen}


@dataclass
class RefleakResult:
    """Per-device balances of one capture."""

    devices: List[DeviceBalance]
    lost: int = 0
    dropped: int = 0
    strategies: List[str] = field(default_factory=list)

    def device(self, name: str) -> Optional[DeviceBalance]:
        """The last device of that name (names are reused after a device is freed)."""
        found = [d for d in self.devices if d.name == name]
        return found[-1] if found else None

    def to_json(self) -> Dict[str, Any]:
        return {"devices": [d.to_json() for d in self.devices], "lost": self.lost, "dropped": self.dropped,
                "strategies": list(self.strategies),
                "leaking": [d.name for d in self.devices if d.verdict == "leak"]}


def _task(event: Dict[str, Any]) -> str:
    return "%s[%s]" % (event.get("comm") or "?", event.get("tgid", "?"))


# A reference count, its level or change, a count of hits or records: the kernel's counters are at
# most 64-bit. No loop is sized by these numbers; beyond this bound they are nonsense.
MAX_COUNT = 2 ** 63


def count(event: Dict[str, Any], name: str, default: Any = None) -> Any:
    """EVENT[NAME] as an int within +-MAX_COUNT (DEFAULT when absent); ValueError for anything else
    (a float, a string, a bool, 1e30): loops and sums are sized by these numbers."""
    value = event.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_COUNT <= value <= MAX_COUNT:
        raise ValueError("%s %s event: %s is %r, not an integer within +-2^63"
                         % (event.get("type"), event.get("dev", ""), name, value))
    return value


# Distinct stacks (function sets) of outstanding holds the context rule compares a put with: the
# cost of one put is bounded by them. Holds from stacks beyond are matched by the other rules.
MAX_CONTEXTS = 256


class _Holds(object):
    """Outstanding holds with the four lookups the matching rules make: by tracker (the most recent),
    by shared function (the most shared, then the most recent; O(MAX_CONTEXTS) at most), the most
    recent of all, and all in the order taken; the others amortised O(1)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.alive = OrderedDict()  # type: Dict[int, _Hold]    # by sequence number, oldest first
        self.seq = 0
        self.by_tracker = {}  # type: Dict[str, List[int]]        # lazily cleaned: dead ids skipped
        self.by_context = {}  # type: Dict[FrozenSet[str], List[int]]
        self.contexts = {}  # type: Dict[str, Set[FrozenSet[str]]]   # function -> contexts with it
        self.unindexed = 0     # holds left out of the context rule (MAX_CONTEXTS reached)

    def __len__(self) -> int:
        return len(self.alive)

    def add(self, hold: _Hold) -> None:
        seq, self.seq = self.seq, self.seq + 1
        self.alive[seq] = hold
        if hold.tracker:
            self.by_tracker.setdefault(hold.tracker, []).append(seq)
        elif hold.functions:
            context = frozenset(hold.functions)
            if context not in self.by_context and not self._room():
                self.unindexed += 1
                return
            if context not in self.by_context:
                self.by_context[context] = []
                for function in context:
                    self.contexts.setdefault(function, set()).add(context)
            ids = self.by_context[context]
            self._top(ids)          # drop the holds the other rules took since: the list stays as long as the alive
            ids.append(seq)

    def _top(self, ids: List[int]) -> Optional[int]:
        while ids and ids[-1] not in self.alive:
            ids.pop()
        return ids[-1] if ids else None

    def take_tracker(self, tracker: str) -> bool:
        ids = self.by_tracker.get(tracker)
        seq = self._top(ids) if ids else None
        if seq is not None:
            del self.alive[seq]
            ids.pop()
        if ids is not None and not ids:
            del self.by_tracker[tracker]      # a tracker per object: keep none of those gone
        return seq is not None

    def take_context(self, functions: Set[str]) -> bool:
        """The hold whose functions share the most with FUNCTIONS, the most recent among equals."""
        shared = {}  # type: Dict[FrozenSet[str], int]
        for function in functions:
            for context in self.contexts.get(function, ()):
                shared[context] = shared.get(context, 0) + 1
        best = None  # type: Optional[Tuple[int, int]]
        for context, n in shared.items():
            seq = self._top(self.by_context[context])
            if seq is None:
                self._forget(context)
            elif best is None or (n, seq) > best:
                best = (n, seq)
        if best is None:
            return False
        del self.alive[best[1]]
        return True

    def _room(self) -> bool:
        """True when one more context fits (contexts whose holds are all gone are forgotten first)."""
        if len(self.by_context) >= MAX_CONTEXTS:
            for context in [c for c, ids in self.by_context.items() if self._top(ids) is None]:
                self._forget(context)
        return len(self.by_context) < MAX_CONTEXTS

    def _forget(self, context: FrozenSet[str]) -> None:
        del self.by_context[context]
        for function in context:
            self.contexts[function].discard(context)

    def take_last(self, count: int = 1) -> int:
        """Drop up to COUNT of the most recent holds; how many were dropped."""
        taken = min(count, len(self.alive))
        for _ in range(taken):
            self.alive.popitem(last=True)
        return taken

    def in_order(self) -> List[_Hold]:
        return list(self.alive.values())


class _Ledger(object):
    """One strategy's count for one device: outstanding holds, older references, the matches."""

    def __init__(self, strategy: str, base_refs: Optional[int], partial: bool = False) -> None:
        self.out = StrategyBalance(strategy, partial=partial)
        self.base_refs = base_refs
        self.active = strategy != "watch"        # the watch counts from the sync after it was armed
        self.synced = False
        self.holds = _Holds()
        self.ended = False
        self._noted_contexts = False

    def activate(self) -> None:
        self.active = True

    def sync(self, level: Optional[int]) -> None:
        if not self.active or self.synced:
            return
        self.synced = True
        if self.out.partial:
            return                # its changes are not all the counter's: no level, no older references
        self.out.level_start = level
        self.out.level_end = level
        if level is not None and self.base_refs is not None:
            self.out.older = max(0, level - self.base_refs)
        if level is None:
            self.out.uncertain.append("the counter's level is unknown: older references cannot be told apart")

    def _matched(self, rule: str, times: int = 1) -> None:
        if times:
            self.out.matched[rule] = self.out.matched.get(rule, 0) + times

    def ref(self, event: Dict[str, Any]) -> None:
        if self.ended:
            return
        if not self.synced:
            self.out.presync += 1
            return
        delta = count(event, "delta", 0)
        stack = tuple(event.get("stack") or ())
        if delta == 0:
            self.out.unchanged += 1       # a trap that changed nothing: no reference taken or dropped
            return
        if self.out.level_end is not None:
            self.out.level_end += delta
        if abs(delta) > 1:
            self._gap(event, delta)
        if delta > 0:
            self.out.holds += 1
            self.holds.add(_Hold(int(event["ts_ns"]), stack, specific_functions(list(stack)),
                                 event.get("tracker"), _task(event), event.get("cgroup")))
            if self.holds.unindexed == 1 and self.out.holds and not self._noted_contexts:
                self._noted_contexts = True
                self.out.uncertain.append("%s: more than %d distinct hold stacks outstanding at once: holds "
                                          "from further stacks are matched by order only"
                                          % (self.out.strategy, MAX_CONTEXTS))
        elif delta < 0:
            self.out.puts += 1
            self._put(event, stack)

    def _gap(self, event: Dict[str, Any], delta: int) -> None:
        """A watchpoint slot that moved by DELTA in one hit: the writes between were not seen."""
        self.out.uncertain.append("%s: the counter moved by %+d at one write (cpu %s): %d write(s) not seen"
                                  % (self.out.strategy, delta, event.get("cpu"), abs(delta) - 1))
        self.out.missed += abs(delta) - 1
        unseen = delta - (1 if delta > 0 else -1)
        if unseen > 0 and self.out.older is not None:
            self.out.older += unseen          # unseen holds: references nobody can attribute
        if unseen < 0:
            self._consume_unseen(-unseen)

    def _put(self, event: Dict[str, Any], stack: Tuple[str, ...]) -> None:
        tracker = event.get("tracker")
        if tracker and self.holds.take_tracker(tracker):
            self._matched("tracker")
            return
        functions = specific_functions(list(stack))
        if functions and self.holds.take_context(functions):
            self._matched("context")
            return
        self._consume_unseen(1, stack)

    def _consume_unseen(self, puts: int, stack: Tuple[str, ...] = ()) -> None:
        """PUTS puts matched by the rules that need no stack: older references first, then the most
        recent holds; the rest had nothing to balance. In O(1) whatever PUTS is."""
        older = min(puts, self.out.older or 0)
        if older:
            self.out.older -= older
            self._matched("older", older)
        taken = self.holds.take_last(puts - older)
        self._matched("order", taken)
        left = puts - older - taken
        if not left:
            return
        if self.out.partial:
            self.out.unmatched += left
            return
        what = stack[0] if stack else "[no stack]"
        if left == 1:
            self.out.uncertain.append("%s: a put with no hold to balance (a hold was not seen): %s"
                                      % (self.out.strategy, what))
        else:
            self.out.uncertain.append("%s: %d puts with no hold to balance (holds were not seen): %s"
                                      % (self.out.strategy, left, what))

    def check(self, level: Optional[int], where: str) -> None:
        """The kernel's own count at WHERE against ours. A difference is writes this strategy missed
        (a watchpoint hit lands while a BPF program runs on that CPU: the kernel skips the handler);
        unseen holds join the older references, unseen puts are matched like seen ones."""
        if level is None or self.out.level_end is None or not self.synced or self.out.partial:
            return
        diff = level - self.out.level_end
        if diff == 0:
            return
        self.out.uncertain.append("%s: the counter was %d at %s, %d by the changes seen (%+d not seen)"
                                  % (self.out.strategy, level, where, self.out.level_end, diff))
        self.out.missed += abs(diff)
        self.out.level_end = level
        if diff > 0 and self.out.older is not None:
            self.out.older += diff
        if diff < 0:
            self._consume_unseen(-diff)

    def watch_end(self, event: Dict[str, Any]) -> None:
        """The watchpoints' own counts (``watch_end``): every write either reached us or is in SKIPPED."""
        for name in ("hits", "skipped"):
            if event.get(name) is not None:
                setattr(self.out, name, (getattr(self.out, name) or 0) + count(event, name))
        self.out.in_sync += count(event, "in_sync") or 0

    def lost(self, count: int, source: str) -> None:
        if self.synced and not self.ended:
            self.out.uncertain.append("%d record(s) lost (%s) while this device was counted" % (count, source))

    def freed(self) -> None:
        """free_netdev: every reference was dropped, whatever the attribution said."""
        left = len(self.holds) + (self.out.older or 0)
        if self.synced and left:
            self.out.matched["freed"] = self.out.matched.get("freed", 0) + left
        self.holds.clear()
        if self.synced and not self.out.partial:
            self.out.older = 0
        self.ended = True

    def finish(self) -> StrategyBalance:
        by_stack = {}  # type: Dict[Tuple[str, ...], List[_Hold]]
        for hold in self.holds.in_order():
            by_stack.setdefault(hold.stack, []).append(hold)
        rows = []
        for stack, holds in by_stack.items():
            rows.append(StackBalance(
                stack=list(stack), count=len(holds), first_ns=min(h.ts_ns for h in holds),
                last_ns=max(h.ts_ns for h in holds), processes=sorted(set(h.task for h in holds)),
                cgroups=sorted(set(h.cgroup for h in holds if h.cgroup))))
        rows.sort(key=lambda r: (-r.count, r.first_ns, r.stack))
        self.out.unbalanced = rows
        return self.out


class _Device(object):
    def __init__(self, event: Dict[str, Any], strategies: List[str], partial: Set[str]) -> None:
        base = count(event, "base_refs")
        self.out = DeviceBalance(
            dev=_dev_key(event["dev"]), name=str(event.get("name", "?")), ifindex=int(event.get("ifindex", 0)),
            netns=event.get("netns"), how=str(event.get("how", "existing")), seen_ns=int(event.get("ts_ns", 0)),
            base_refs=base)
        self.partial = partial
        self.ledgers = dict((s, _Ledger(s, self.out.base_refs, s in partial)) for s in strategies)
        self.holders = {}  # type: Dict[str, Holder]
        self.ended = []  # type: List[Holder]

    def ledger(self, strategy: str) -> "_Ledger":
        if strategy not in self.ledgers:
            self.ledgers[strategy] = _Ledger(strategy, self.out.base_refs, strategy in self.partial)
        return self.ledgers[strategy]

    def holder_new(self, event: Dict[str, Any]) -> None:
        obj = str(event["obj"])
        old = self.holders.pop(obj, None)
        if old is not None:
            old.ended_by = "unknown (the address was reused)"
            self.ended.append(old)
        self.holders[obj] = Holder(kind=str(event.get("kind")), obj=obj, created_ns=int(event["ts_ns"]),
                                   stack=event.get("stack"), process=_task(event), cgroup=event.get("cgroup"))
        self.out.holders_seen += 1

    def holder_end(self, event: Dict[str, Any]) -> None:
        holder = self.holders.pop(str(event["obj"]), None)
        if holder is None:
            return
        holder.ended_ns = int(event["ts_ns"])
        holder.ended_by = event.get("func")
        holder.end_stack = event.get("stack")
        self.ended.append(holder)

    def fnhe(self, event: Dict[str, Any]) -> None:
        holder = self.holders.get(str(event["obj"]))
        if holder is not None:
            holder.fnhe = str(event.get("fnhe"))
            holder.fnhe_input = bool(event.get("input"))

    def later(self, holder: Holder) -> Holder:
        """HOLDER (as it was at unregister) with how it ended afterwards, if it did."""
        for ended in self.ended:
            if ended.obj == holder.obj and ended.created_ns == holder.created_ns:
                return _copy_holder(ended)
        return _copy_holder(holder)

    def alive(self) -> List[Holder]:
        return sorted((_copy_holder(h) for h in self.holders.values()), key=lambda h: (h.created_ns, h.obj))


def _copy_holder(h: Holder) -> Holder:
    return Holder(**dict((k, getattr(h, k)) for k in Holder.__dataclass_fields__))  # type: ignore


class Balancer(object):
    """Feed events one by one (live) or all at once (:func:`analyze`); ``result()`` at any point."""

    def __init__(self, strategies: Optional[List[str]] = None) -> None:
        self.strategies = list(strategies) if strategies is not None else None  # type: Optional[List[str]]
        self.devices = {}  # type: Dict[str, _Device]
        self.order = []  # type: List[_Device]
        self.lost = 0
        self.dropped = 0
        self.last_inline = {}  # type: Dict[Any, Dict[str, Any]]
        self.partial = set()  # type: Set[str]
        self.planned = None  # type: Optional[List[str]]

    def _strategies(self) -> List[str]:
        return self.strategies if self.strategies is not None else ["watch"]

    def feed(self, event: Dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "plan":
            self.planned = list(event.get("strategies") or [])
            self.strategies = [s for s in STRATEGIES if s in self.planned]
            if event.get("inline_vmlinux") is False:
                self.partial.add("inline")
            return
        if kind in ("lost", "dropped"):
            lost = count(event, "count", 0)
            if kind == "lost":
                self.lost += lost
            else:
                self.dropped += lost
            for device in self.devices.values():
                for ledger in device.ledgers.values():
                    ledger.lost(lost, str(event.get("source", kind)))
            return
        if "dev" not in event:
            return
        key = _dev_key(event["dev"])
        if kind == "device":
            if key in self.devices and self.devices[key].out.state != "freed":
                return                                     # looked up again
            device = _Device(event, self._strategies(), self.partial)
            self.devices[key] = device
            self.order.append(device)
            return
        device = self.devices.get(key)
        if device is None:
            return
        self._device_event(device, kind, event)

    def _device_event(self, device: "_Device", kind: Any, event: Dict[str, Any]) -> None:
        out = device.out
        if kind == "watch":
            out.watch = dict((k, v) for k, v in event.items() if k not in ("type", "dev"))
            if event.get("armed"):
                device.ledger("watch").activate()
        elif kind == "watch_end":
            device.ledger("watch").watch_end(event)
        elif kind == "sync":
            for ledger in device.ledgers.values():
                ledger.sync(count(event, "level"))
        elif kind == "ref":
            strategy = str(event.get("strategy", "watch"))
            if strategy == "inline":
                self.last_inline[event.get("tid")] = event
            elif strategy == "watch":
                event = self._unwound(event)
            device.ledger(strategy).ref(event)
        elif kind == "holder_new":
            device.holder_new(event)
        elif kind == "holder_end":
            device.holder_end(event)
        elif kind == "fnhe":
            device.fnhe(event)
        elif kind == "unregister":
            out.state = "unregistered"
            out.unregistered_ns = int(event["ts_ns"])
            out.level_at_unregister = count(event, "level")
            out.holders_at_unregister = device.alive()
            for ledger in device.ledgers.values():
                ledger.check(out.level_at_unregister, "unregister")
        elif kind == "free":
            out.state = "freed"
            out.freed_ns = int(event["ts_ns"])
            out.level_at_free = count(event, "level")
            if out.level_at_free is not None and out.base_refs is None:
                out.base_refs = out.level_at_free
            for ledger in device.ledgers.values():
                ledger.check(out.level_at_free, "free")
                ledger.freed()

    def _unwound(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """A watchpoint trap inside a kprobe's out-of-line copy of the instruction (the inline
        strategy's kprobe sits on that very hold/put) has a one-frame stack; the kprobe's own record,
        just before on the same thread, has the real one."""
        stack = event.get("stack") or []
        if not stack or base_name(stack[0]) not in KPROBE_SLOTS:
            return event
        site = self.last_inline.get(event.get("tid"))
        if site is None or site.get("delta") != event.get("delta") or site.get("dev") != event.get("dev"):
            return event
        return dict(event, stack=site.get("stack"), stack_from="inline")

    def result(self) -> RefleakResult:
        devices = []
        for device in self.order:
            out = _copy_device(device.out)
            out.strategies = [_copy_strategy(device.ledgers[s]) for s in STRATEGIES
                              if s in device.ledgers and device.ledgers[s].synced]
            out.holders_alive = device.alive()
            out.holders_at_unregister = [device.later(h) for h in out.holders_at_unregister]
            devices.append(out)
        return RefleakResult(devices=devices, lost=self.lost, dropped=self.dropped,
                             strategies=list(self.planned if self.planned is not None else self._strategies()))


def _copy_device(d: DeviceBalance) -> DeviceBalance:
    return DeviceBalance(**dict((k, getattr(d, k)) for k in DeviceBalance.__dataclass_fields__))  # type: ignore


def _copy_strategy(ledger: "_Ledger") -> StrategyBalance:
    out = ledger.finish()
    return StrategyBalance(**dict((k, getattr(out, k)) for k in StrategyBalance.__dataclass_fields__))  # type: ignore


# The perf buffer is per CPU, so records arrive grouped by CPU, not in time order: they are put in
# order through a window of the REORDER_EVENTS latest records (and at most REORDER_NS of time).
REORDER_EVENTS = 16384
REORDER_NS = 5 * 1000 ** 3


def in_time_order(events: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """EVENTS by ``ts_ns`` (stable), through a window of REORDER_EVENTS records. A record without a
    time (a lost-records marker) keeps its place after the record before it; the plan comes first."""
    window = []  # type: List[Tuple[int, int, Dict[str, Any]]]
    last = -1
    for i, event in enumerate(events):
        ts = event.get("ts_ns")
        if event.get("type") == "plan":
            ts = -1
        elif ts is None:
            ts = last
        ts = int(ts)
        last = max(last, ts)
        heapq.heappush(window, (ts, i, event))
        while len(window) > REORDER_EVENTS or window[0][0] < last - REORDER_NS:
            yield heapq.heappop(window)[2]
    while window:
        yield heapq.heappop(window)[2]


class _Stitcher(object):
    """Makes whole again the stacks a kretprobe cut, for records in time order.

    Before v5.15 the unwinder stops at ``kretprobe_trampoline``: a hold taken inside a function that
    refleak's holder strategy return-probes (dst_alloc, ___neigh_create, fib_check_nh...) has a stack
    ending there. The holder record of that call, on the same thread right after, carries the stack
    taken at the function's entry: its callers replace the trampoline. Records wait in a window of
    REORDER_EVENTS for that holder record."""

    def __init__(self) -> None:
        self.window = collections.deque()  # type: Deque[Dict[str, Any]]
        self.entries = {}  # type: Dict[Any, List[Tuple[int, List[str]]]]   # tid -> holder entries in the window

    def feed(self, event: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        """EVENT in; the records that left the window out."""
        if event.get("type") == "holder_new" and event.get("stack"):
            self.entries.setdefault(event.get("tid"), []).append((int(event["ts_ns"]), event["stack"]))
        self.window.append(event)
        while len(self.window) > REORDER_EVENTS:
            yield self._leave()

    def flush(self) -> Iterator[Dict[str, Any]]:
        while self.window:
            yield self._leave()

    def _leave(self) -> Dict[str, Any]:
        event = self.window.popleft()
        if event.get("type") == "holder_new" and event.get("stack"):
            entries = self.entries[event.get("tid")]
            entries.pop(0)
            if not entries:
                del self.entries[event.get("tid")]
        stack = event.get("stack") or []
        if event.get("type") != "ref" or not stack:
            return event
        cut = next((i for i, f in enumerate(stack) if base_name(f) in KRETPROBE_TRAMPOLINES), None)
        if cut:
            function = base_name(stack[cut - 1])
            # the function itself, or its helper it tail-called (fib_check_nh -> fib_check_nh_v4_gw)
            entry = next((frames for ts, frames in self.entries.get(event.get("tid"), ())
                          if ts >= event["ts_ns"] and function.startswith(base_name(frames[0]))), None)
            if entry is not None:
                event = dict(event, stack=list(stack[:cut]) + list(entry[1:]), stack_from="holder entry")
        return event


def stitched(events: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """EVENTS (in time order) with the stacks cut by a kretprobe made whole again (see :class:`_Stitcher`)."""
    stitcher = _Stitcher()
    for event in events:
        for out in stitcher.feed(event):
            yield out
    for out in stitcher.flush():
        yield out


def analyze(events: Iterable[Dict[str, Any]], strategies: Optional[List[str]] = None) -> RefleakResult:
    """The balances of a whole recording (or a live run's events so far), read once, fed in time order."""
    balancer = Balancer(strategies)
    for event in stitched(in_time_order(events)):
        balancer.feed(event)
    return balancer.result()


def folded_samples(result: RefleakResult) -> List[Tuple[List[str], int]]:
    """The unbalanced stacks as flame-graph samples: ``[DEV] ; [strategy] ; root..leaf``, weighted by
    the references each still holds. Frames lose their ``+0x..`` offsets so one function is one box."""
    samples = []
    for d in result.devices:
        for s in d.strategies:
            for row in s.unbalanced:
                frames = ["[%s ifindex %d]" % (d.name, d.ifindex), "[%s]" % s.strategy]
                frames += [base_name(f) for f in reversed(row.stack)]
                samples.append((frames, row.count))
    return samples
