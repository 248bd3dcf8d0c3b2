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

Pure: no I/O, no clock; the same events give the same result. A stream of any length is read once,
in bounded memory beyond the holds outstanding (which the rules may still match): per device and
strategy the counts, per distinct stack its facts (:class:`StackCache`), and the holder objects alive.

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
from typing import Any, Callable, Deque, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

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


def specific_functions(stack: Optional[Iterable[str]]) -> Set[str]:
    """The functions of STACK that say which operation it was (generic frames left out)."""
    return set(base_name(f) for f in stack or () if not is_generic(f))


class StackFacts(object):
    """What the matching rules and the stitching need of one stack, worked out once per distinct stack
    (records repeat a few stacks: see :class:`StackCache`)."""

    __slots__ = ("frames", "context", "in_kprobe_slot", "cut", "cut_function")

    def __init__(self, frames: Tuple[str, ...]) -> None:
        self.frames = frames                                        # innermost first
        self.context = frozenset(specific_functions(frames))       # the functions that name the operation
        self.in_kprobe_slot = bool(frames) and base_name(frames[0]) in KPROBE_SLOTS
        # where a kretprobe cut the stack (the first trampoline frame, not the innermost) and the function below it
        self.cut = next((i for i, f in enumerate(frames) if base_name(f) in KRETPROBE_TRAMPOLINES), None)
        self.cut_function = base_name(frames[self.cut - 1]) if self.cut else None


# Distinct stacks whose facts one analysis keeps: the cache starts over when it is full.
MAX_STACK_FACTS = 1 << 14


class StackCache(object):
    """The facts of the stacks seen, keyed by their frames (at most MAX_STACK_FACTS)."""

    def __init__(self) -> None:
        self.known = {}  # type: Dict[Tuple[str, ...], StackFacts]

    def facts(self, stack: Optional[Iterable[str]]) -> StackFacts:
        """The facts of STACK (a list of frames, or None)."""
        frames = tuple(stack) if stack else ()
        facts = self.known.get(frames)
        if facts is None:
            if len(self.known) >= MAX_STACK_FACTS:
                self.known.clear()
            facts = self.known[frames] = StackFacts(frames)
        return facts


# An outstanding hold: (ts_ns, frames, comm, tgid, cgroup); its task is "comm[tgid]" (as _task makes it).
Hold = Tuple[int, Tuple[str, ...], Any, Any, Optional[str]]


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
# Reasons of uncertainty kept per strategy and device (the others are counted): lost records, gaps and
# unbalanced puts repeat through a long recording.
MAX_REASONS = 100


class _Holds(object):
    """Outstanding holds with the four lookups the matching rules make: by tracker (the most recent),
    by shared function (the most shared, then the most recent; O(MAX_CONTEXTS) at most), the most
    recent of all, and all in the order taken; the others amortised O(1)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.alive = OrderedDict()  # type: Dict[int, Hold]     # by sequence number, oldest first
        self.seq = 0
        self.by_tracker = {}  # type: Dict[str, List[int]]        # lazily cleaned: dead ids skipped
        self.by_context = {}  # type: Dict[FrozenSet[str], List[int]]
        self.contexts = {}  # type: Dict[str, Set[FrozenSet[str]]]   # function -> contexts with it
        self.unindexed = 0     # holds left out of the context rule (MAX_CONTEXTS reached)

    def __len__(self) -> int:
        return len(self.alive)

    def add(self, hold: Hold, tracker: Optional[str], context: FrozenSet[str]) -> None:
        """HOLD, taken with TRACKER (if any) from a stack whose specific functions are CONTEXT."""
        seq = self.seq
        self.seq = seq + 1
        alive = self.alive
        alive[seq] = hold
        if tracker:
            self.by_tracker.setdefault(tracker, []).append(seq)
        elif context:
            ids = self.by_context.get(context)
            if ids is None:
                if not self._room():
                    self.unindexed += 1
                    return
                ids = self.by_context[context] = []
                for function in context:
                    self.contexts.setdefault(function, set()).add(context)
            while ids and ids[-1] not in alive:      # drop the holds the other rules took since: the list
                ids.pop()                              # stays as long as the alive
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

    def take_context(self, functions: FrozenSet[str]) -> bool:
        """The hold whose functions share the most with FUNCTIONS, the most recent among equals."""
        shared = {}  # type: Dict[FrozenSet[str], int]
        contexts = self.contexts
        for function in functions:
            for context in contexts.get(function, ()):
                shared[context] = shared.get(context, 0) + 1
        if not shared:
            return False
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

    def in_order(self) -> Iterable[Hold]:
        return self.alive.values()


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
        self.more_reasons = 0                     # reasons of uncertainty beyond the MAX_REASONS kept

    def _uncertain(self, reason: str) -> None:
        if len(self.out.uncertain) < MAX_REASONS:
            self.out.uncertain.append(reason)
        else:
            self.more_reasons += 1

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
            self._uncertain("the counter's level is unknown: older references cannot be told apart")

    def _matched(self, rule: str, times: int = 1) -> None:
        if times:
            matched = self.out.matched
            matched[rule] = matched.get(rule, 0) + times

    def ref(self, event: Dict[str, Any], facts: StackFacts) -> None:
        """A hold or put (a ``ref`` record) whose stack's facts are FACTS."""
        if self.ended:
            return
        out = self.out
        if not self.synced:
            out.presync += 1
            return
        delta = event.get("delta")
        if type(delta) is not int or not -MAX_COUNT <= delta <= MAX_COUNT:
            delta = count(event, "delta", 0)
        if delta == 0:
            out.unchanged += 1       # a trap that changed nothing: no reference taken or dropped
            return
        if out.level_end is not None:
            out.level_end += delta
        if delta > 1 or delta < -1:
            self._gap(event, delta)
        if delta > 0:
            out.holds += 1
            ts = event["ts_ns"]
            self.holds.add((ts if type(ts) is int else int(ts), facts.frames, event.get("comm"),
                            event.get("tgid", "?"), event.get("cgroup")), event.get("tracker"), facts.context)
            if self.holds.unindexed == 1 and not self._noted_contexts:
                self._noted_contexts = True
                self._uncertain("%s: more than %d distinct hold stacks outstanding at once: holds "
                                "from further stacks are matched by order only" % (out.strategy, MAX_CONTEXTS))
        else:
            out.puts += 1
            self._put(event, facts)

    def _gap(self, event: Dict[str, Any], delta: int) -> None:
        """A watchpoint slot that moved by DELTA in one hit: the writes between were not seen."""
        self._uncertain("%s: the counter moved by %+d at one write (cpu %s): %d write(s) not seen"
                        % (self.out.strategy, delta, event.get("cpu"), abs(delta) - 1))
        self.out.missed += abs(delta) - 1
        unseen = delta - (1 if delta > 0 else -1)
        if unseen > 0 and self.out.older is not None:
            self.out.older += unseen          # unseen holds: references nobody can attribute
        if unseen < 0:
            self._consume_unseen(-unseen)

    def _put(self, event: Dict[str, Any], facts: StackFacts) -> None:
        tracker = event.get("tracker")
        if tracker and self.holds.take_tracker(tracker):
            self._matched("tracker")
            return
        if facts.context and self.holds.take_context(facts.context):
            self._matched("context")
            return
        if not self.out.older and self.holds.alive:        # the usual case of what follows, in short
            self.holds.alive.popitem(last=True)
            self._matched("order")
            return
        self._consume_unseen(1, facts.frames)

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
            self._uncertain("%s: a put with no hold to balance (a hold was not seen): %s"
                            % (self.out.strategy, what))
        else:
            self._uncertain("%s: %d puts with no hold to balance (holds were not seen): %s"
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
        self._uncertain("%s: the counter was %d at %s, %d by the changes seen (%+d not seen)"
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
            self._uncertain("%d record(s) lost (%s) while this device was counted" % (count, source))

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
        by_stack = {}  # type: Dict[Tuple[str, ...], List[Any]]   # frames -> [count, first, last, tasks, cgroups]
        for ts, frames, comm, tgid, cgroup in self.holds.in_order():
            row = by_stack.get(frames)
            if row is None:
                row = by_stack[frames] = [0, ts, ts, set(), set()]
            row[0] += 1
            row[1] = min(row[1], ts)
            row[2] = max(row[2], ts)
            row[3].add("%s[%s]" % (comm or "?", tgid))
            if cgroup:
                row[4].add(cgroup)
        rows = [StackBalance(stack=list(frames), count=n, first_ns=first, last_ns=last, processes=sorted(tasks),
                             cgroups=sorted(cgroups))
                for frames, (n, first, last, tasks, cgroups) in by_stack.items()]
        rows.sort(key=lambda r: (-r.count, r.first_ns, r.stack))
        out = StrategyBalance(**dict((k, getattr(self.out, k))
                                     for k in StrategyBalance.__dataclass_fields__))  # type: ignore
        out.unbalanced = rows
        out.matched = dict(self.out.matched)
        out.uncertain = list(self.out.uncertain)
        if self.more_reasons:
            out.uncertain.append("and %d more reason(s)" % self.more_reasons)
        return out


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
        self.ended = []  # type: List[Holder]      # holders alive at unregister that ended since
        self.at_unregister = set()  # type: Set[Tuple[str, int]]    # (obj, created_ns) of those alive then

    def ledger(self, strategy: str) -> "_Ledger":
        if strategy not in self.ledgers:
            self.ledgers[strategy] = _Ledger(strategy, self.out.base_refs, strategy in self.partial)
        return self.ledgers[strategy]

    def holder_new(self, event: Dict[str, Any]) -> None:
        obj = str(event["obj"])
        old = self.holders.pop(obj, None)
        if old is not None:
            old.ended_by = "unknown (the address was reused)"
            self._ended(old)
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
        self._ended(holder)

    def _ended(self, holder: Holder) -> None:
        """Keeps HOLDER, which just ended, if it was alive at unregister (the others are not shown)."""
        if (holder.obj, holder.created_ns) in self.at_unregister:
            self.ended.append(holder)

    def unregistered(self) -> None:
        """The device was unregistered: the holders alive now are those that may be holding it."""
        self.out.holders_at_unregister = self.alive()
        self.at_unregister.update((h.obj, h.created_ns) for h in self.out.holders_at_unregister)

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
        self.last_inline = OrderedDict()  # type: Dict[Any, Dict[str, Any]]   # tid -> its last inline record
        self.partial = set()  # type: Set[str]
        self.planned = None  # type: Optional[List[str]]
        self.stacks = StackCache()

    def _strategies(self) -> List[str]:
        return self.strategies if self.strategies is not None else ["watch"]

    def feed(self, event: Dict[str, Any], facts: Optional[StackFacts] = None) -> None:
        """EVENT, in time order; FACTS: those of its stack when a ref's are known."""
        kind = event.get("type")
        if kind == "ref":                       # nearly every record: first, in short
            dev = event.get("dev")
            if dev is None and "dev" not in event:
                return
            device = self.devices.get(dev if type(dev) is str else _dev_key(dev))
            if device is not None:
                self._ref(device, event, facts or self.stacks.facts(event.get("stack")))
            return
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
            device.unregistered()
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

    def _ref(self, device: "_Device", event: Dict[str, Any], facts: StackFacts) -> None:
        strategy = event.get("strategy", "watch")
        if type(strategy) is not str:
            strategy = str(strategy)
        if strategy == "inline":
            self._last_inline(event)
        elif strategy == "watch" and facts.in_kprobe_slot:
            event = self._unwound(event)
            facts = self.stacks.facts(event.get("stack"))
        ledger = device.ledgers.get(strategy)
        (ledger or device.ledger(strategy)).ref(event, facts)

    def _last_inline(self, event: Dict[str, Any]) -> None:
        """EVENT is the last inline record of its thread; the threads are the REORDER_EVENTS most recent
        (a watchpoint trap follows its kprobe's record at once)."""
        tid = event.get("tid")
        self.last_inline.pop(tid, None)
        self.last_inline[tid] = event
        if len(self.last_inline) > REORDER_EVENTS:
            self.last_inline.popitem(last=False)  # type: ignore

    def _unwound(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """A watchpoint trap inside a kprobe's out-of-line copy of the instruction (the inline
        strategy's kprobe sits on that very hold/put) has a one-frame stack; the kprobe's own record,
        just before on the same thread, has the real one."""
        site = self.last_inline.get(event.get("tid"))
        if site is None or site.get("delta") != event.get("delta") or site.get("dev") != event.get("dev"):
            return event
        return dict(event, stack=site.get("stack"), stack_from="inline")

    def result(self) -> RefleakResult:
        devices = []
        for device in self.order:
            out = _copy_device(device.out)
            out.strategies = [device.ledgers[s].finish() for s in STRATEGIES
                              if s in device.ledgers and device.ledgers[s].synced]
            out.holders_alive = device.alive()
            out.holders_at_unregister = [device.later(h) for h in out.holders_at_unregister]
            devices.append(out)
        return RefleakResult(devices=devices, lost=self.lost, dropped=self.dropped,
                             strategies=list(self.planned if self.planned is not None else self._strategies()))


def _copy_device(d: DeviceBalance) -> DeviceBalance:
    return DeviceBalance(**dict((k, getattr(d, k)) for k in DeviceBalance.__dataclass_fields__))  # type: ignore


# The perf buffer is per CPU, so records arrive grouped by CPU, not in time order: they are put in
# order through a window of the REORDER_EVENTS latest records (and at most REORDER_NS of time).
REORDER_EVENTS = 16384
REORDER_NS = 5 * 1000 ** 3


class _TimeOrder(object):
    """Records by ``ts_ns`` (stable), through a window of REORDER_EVENTS records: EMIT gets each as it
    leaves. A record without a time (a lost-records marker) keeps its place after the record before it;
    the plan comes first. The window is two sorted queues: the records that came in order (most, in
    O(1)) and a heap of the others."""

    def __init__(self, emit: Callable[[Dict[str, Any]], None]) -> None:
        self.emit = emit
        self.ordered = collections.deque()  # type: Deque[Tuple[int, int, Dict[str, Any]]]
        self.heap = []  # type: List[Tuple[int, int, Dict[str, Any]]]
        self.size = REORDER_EVENTS
        self.last = -1          # the latest time seen
        self.newest = -1        # the time of the newest record in order
        self.fed = 0

    def feed(self, event: Dict[str, Any]) -> None:
        ts = event.get("ts_ns")
        if event.get("type") == "plan":
            ts = -1
        elif ts is None:
            ts = self.last
        elif type(ts) is not int:
            ts = int(ts)
        if ts > self.last:
            self.last = ts
        i = self.fed
        self.fed = i + 1
        ordered, heap = self.ordered, self.heap
        if ts >= self.newest or not ordered:
            ordered.append((ts, i, event))
            self.newest = ts
        else:
            heapq.heappush(heap, (ts, i, event))
        oldest = self.last - REORDER_NS
        if not heap:
            while ordered and (len(ordered) > self.size or ordered[0][0] < oldest):
                self.emit(ordered.popleft()[2])
            return
        while heap or ordered:
            if heap and (not ordered or heap[0] < ordered[0]):
                if len(ordered) + len(heap) <= self.size and heap[0][0] >= oldest:
                    break
                self.emit(heapq.heappop(heap)[2])
            else:
                if len(ordered) + len(heap) <= self.size and ordered[0][0] >= oldest:
                    break
                self.emit(ordered.popleft()[2])

    def flush(self) -> None:
        ordered, heap = self.ordered, self.heap
        while heap or ordered:
            if heap and (not ordered or heap[0] < ordered[0]):
                self.emit(heapq.heappop(heap)[2])
            else:
                self.emit(ordered.popleft()[2])


def in_time_order(events: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """EVENTS by ``ts_ns`` (stable), through a window of REORDER_EVENTS records (see :class:`_TimeOrder`)."""
    out = collections.deque()  # type: Deque[Dict[str, Any]]
    order = _TimeOrder(out.append)
    for event in events:
        order.feed(event)
        while out:
            yield out.popleft()
    order.flush()
    while out:
        yield out.popleft()


class _Stitcher(object):
    """Makes whole again the stacks a kretprobe cut, for records in time order.

    Before v5.15 the unwinder stops at ``kretprobe_trampoline``: a hold taken inside a function that
    refleak's holder strategy return-probes (dst_alloc, ___neigh_create, fib_check_nh...) has a stack
    ending there. The holder record of that call, on the same thread right after, carries the stack
    taken at the function's entry: its callers replace the trampoline. Such a record waits for the
    REORDER_EVENTS records after it to find that holder record; the others go through at once unless
    they come behind one that waits."""

    def __init__(self, stacks: StackCache, emit: Callable[[Dict[str, Any], Optional[StackFacts]], None]) -> None:
        self.stacks = stacks
        self.emit = emit                     # called with each record in order, and the facts of a ref's stack
        self.window = collections.deque()  # type: Deque[Tuple[int, Dict[str, Any], Optional[StackFacts]]]
        self.entries = {}  # type: Dict[Any, List[Tuple[int, List[str]]]]   # tid -> holder entries in the window
        self.fed = 0

    def feed(self, event: Dict[str, Any]) -> None:
        """EVENT in; out go the records that wait for nothing: a ref whose stack a kretprobe cut waits
        for the REORDER_EVENTS records after it, and the records after it wait behind it."""
        position = self.fed
        self.fed += 1
        kind = event.get("type")
        facts = self.stacks.facts(event.get("stack")) if kind == "ref" else None
        window = self.window
        if not window:
            if facts is None or not facts.cut:
                self.emit(event, facts)
                return
        elif kind == "holder_new" and event.get("stack"):
            self.entries.setdefault(event.get("tid"), []).append((int(event["ts_ns"]), event["stack"]))
        window.append((position, event, facts))
        while window:
            first, _, waits = window[0]
            if waits is not None and waits.cut and first + REORDER_EVENTS > position:
                break
            self._leave()

    def flush(self) -> None:
        while self.window:
            self._leave()

    def _leave(self) -> None:
        _, event, facts = self.window.popleft()
        if facts is not None:
            if facts.cut and self.entries:
                whole = self._stitched(event, facts)
                if whole is not event:
                    event, facts = whole, None
        elif event.get("type") == "holder_new" and event.get("stack"):
            entries = self.entries[event.get("tid")]
            entries.pop(0)
            if not entries:
                del self.entries[event.get("tid")]
        self.emit(event, facts)

    def _stitched(self, event: Dict[str, Any], facts: StackFacts) -> Dict[str, Any]:
        """EVENT with its stack whole again, if a holder entry on its thread fits where the kretprobe cut it."""
        function = facts.cut_function
        # the function itself, or its helper it tail-called (fib_check_nh -> fib_check_nh_v4_gw)
        entry = next((frames for ts, frames in self.entries.get(event.get("tid"), ())
                      if ts >= event["ts_ns"] and function.startswith(base_name(frames[0]))), None)
        if entry is None:
            return event
        return dict(event, stack=list(facts.frames[:facts.cut]) + list(entry[1:]), stack_from="holder entry")


class Analysis(object):
    """The balances of records fed one at a time (a live capture) or all at once (:func:`analyze`):
    put in time order (:class:`_TimeOrder`), the stacks cut by a kretprobe made whole again
    (:class:`_Stitcher`), balanced (:class:`Balancer`). ``result()`` once, at the end."""

    def __init__(self, strategies: Optional[List[str]] = None) -> None:
        self.balancer = Balancer(strategies)
        self.stitcher = _Stitcher(self.balancer.stacks, self.balancer.feed)
        self.order = _TimeOrder(self.stitcher.feed)
        self.feed = self.order.feed

    def result(self) -> RefleakResult:
        """The balances of every record fed (the windows are emptied: feed nothing after)."""
        self.order.flush()
        self.stitcher.flush()
        return self.balancer.result()


def analyze(events: Iterable[Dict[str, Any]], strategies: Optional[List[str]] = None) -> RefleakResult:
    """The balances of a whole recording, read once."""
    analysis = Analysis(strategies)
    feed = analysis.feed
    for event in events:
        feed(event)
    return analysis.result()


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
