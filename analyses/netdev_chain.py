"""The notifier chain a waiting device's rebroadcasts run: its subscribers, their calls, and who dropped a reference.

While a device waits in unregistration the kernel rebroadcasts ``NETDEV_UNREGISTER`` for it about once
a second through the netdevice notifier chains (the namespace's own chain first, v5.7+, then the global
``netdev_chain``). Input, from the netdevwait probes: each round (with the count the wait loop sees),
each notifier block a walk of the chain found (:class:`Link`, in chain order), each callback call made
for the device (:class:`Call`: time, return value, the count before and after), and the end of the
wait. Output, per device (:class:`DeviceChain`): the subscribers in the order the kernel runs them, their
calls and time over the rounds, what they returned and any reference they dropped; the rounds in
which the count changed and by whom; and a verdict: ``leak`` (the count flat over LEAK_ROUNDS rounds
and no subscriber dropped anything), ``slow release`` (the count went down), or ``undecided``.

A subscriber's call belongs to the interval between two rounds by its time: the count of round R is
read as the global chain starts, so a drop in the global chain of rebroadcast R (or in the namespace
chain of rebroadcast R+1) shows in round R+1's count. A call of the global chain after the last round's
interval waits for its round's record (read late, from another CPU's buffer); if none comes before the
wait ends, it is from a rebroadcast whose round was not seen, as when the tool's probes are detached one
by one at its end, and is not counted.

Pure: no I/O, no clock.

Example::

    >>> t = ChainTracker()
    >>> t.round("0xd", "veth0", 1, 0, 2)
    >>> t.link(Link("0xd", 0, GLOBAL, 0, "0xb", "0xc", 5, "drop_it", "mod"))
    >>> t.call(Call("0xd", 10, 300, "0xb", "0xc", 5, 1, 2, 1, "drop_it", "mod"))
    >>> t.end("0xd", 20, 1)
    >>> t.devices()[0].verdict()[0]
    'slow release'
"""
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .records import JsonRecord

GLOBAL, NETNS = "global", "netns"
CHAIN_ORDER = (NETNS, GLOBAL)          # call_netdevice_notifiers_info(): the namespace's chain first
LEAK_ROUNDS = 3                        # rounds with a flat count before a wait is called a leak
LEAK, SLOW, UNDECIDED = "leak", "slow release", "undecided"
OUTSIDE = "outside the notifier chain"
# include/linux/notifier.h (2.6 to 6.18): NOTIFY_DONE 0, NOTIFY_OK 1, NOTIFY_STOP_MASK 0x8000,
# NOTIFY_BAD = STOP_MASK|2, NOTIFY_STOP = OK|STOP_MASK; notifier_from_errno(err) = STOP_MASK|(OK - err).
NOTIFY_STOP_MASK = 0x8000
_NOTIFY = {0: "DONE", 1: "OK", 0x8001: "STOP", 0x8002: "BAD"}


def notify_name(ret: int) -> str:
    """A notifier callback's return value in words: DONE, OK, STOP, BAD, or BAD(errno N)."""
    if ret in _NOTIFY:
        return _NOTIFY[ret]
    if ret & NOTIFY_STOP_MASK and ret > 0:
        return "BAD(errno %d)" % ((ret & ~NOTIFY_STOP_MASK) - 1)
    return "%#x" % ret


def label(symbol: Optional[str], module: Optional[str], call: str) -> str:
    """``symbol [module]`` (vmlinux symbols bare), or the address when kallsyms has no name for it."""
    name = symbol or call
    return "%s [%s]" % (name, module) if module else name


@dataclass
class Link(JsonRecord):
    """One notifier block of a chain walk (one walk: one ``ts_ns``); ``truncated``: the walk stopped there."""

    dev: str
    ts_ns: int
    chain: str                      # GLOBAL | NETNS
    index: int
    nb: str                         # the struct notifier_block (identifies the subscriber)
    call: str                       # its notifier_call
    priority: int
    symbol: Optional[str] = None
    module: Optional[str] = None
    truncated: bool = False


@dataclass
class Call(JsonRecord):
    """One callback call for a waiting device: from ``ts_ns`` for ``dur_ns``, its return value and the
    device's reference count when it was called and when it returned."""

    dev: str
    ts_ns: int
    dur_ns: int
    nb: str
    call: str
    priority: int
    ret: int
    count_before: int
    count_after: int
    symbol: Optional[str] = None
    module: Optional[str] = None


@dataclass
class Subscriber:
    """One notifier block of the device's chains and what its calls did over the rounds."""

    nb: str
    call: str
    chain: str
    index: Optional[int]            # position in the last walk of its chain (None: not in it any more)
    priority: int
    symbol: Optional[str] = None
    module: Optional[str] = None
    calls: int = 0
    total_ns: int = 0
    max_ns: int = 0
    returns: Dict[str, int] = field(default_factory=dict)
    changes: List[Dict[str, int]] = field(default_factory=list)   # {"round", "before", "after"}

    @property
    def label(self) -> str:
        return label(self.symbol, self.module, self.call)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["label"] = self.label
        return out


@dataclass
class DeviceChain:
    """A waiting device's chains as they ran: subscribers, rounds, count changes and who made them."""

    dev: str
    name: Optional[str] = None
    base: Optional[int] = None
    subscribers: Dict[str, Subscriber] = field(default_factory=OrderedDict)   # nb -> subscriber
    rounds: List[Tuple[int, int, int]] = field(default_factory=list)          # (round, ts_ns, count)
    changes: List[Dict[str, Any]] = field(default_factory=list)               # {"round", "before", "after", "by"}
    first_timed_round: Optional[int] = None
    first_timed_ns: Optional[int] = None
    truncated: bool = False
    ended: bool = False
    end_count: Optional[int] = None
    waiting_calls: List["Call"] = field(default_factory=list)    # global-chain calls whose round is to come

    def round_at(self, ts_ns: int) -> int:
        """The round whose interval holds TS_NS (round R: from its rebroadcast to the next one)."""
        number = 1
        for r, ts, _count in self.rounds:
            if ts <= ts_ns:
                number = r
        if self.rounds and ts_ns > self.rounds[-1][1] + _NEXT_ROUND_NS:
            number = self.rounds[-1][0] + 1                         # its round's record is still to come
        return number

    def late_round(self, ts_ns: int, count: int) -> None:
        """A round earlier than the last one seen (its record came late, from another CPU's buffer): the rounds
        numbered in time order again, and what was numbered at or after its time (count changes, the first
        timed call) one later. A shift, not a new round_at: a namespace-chain call numbered with the round whose
        record was still to come keeps that round."""
        rounds = sorted(self.rounds + [(0, ts_ns, count)], key=lambda r: r[1])
        self.rounds = [(n, ts, c) for n, (_, ts, c) in enumerate(rounds, 1)]
        for change in [c for s in self.subscribers.values() for c in s.changes] + self.changes:
            if change["round"] is not None and change["ts_ns"] >= ts_ns:
                change["round"] += 1
        if self.first_timed_ns is not None and self.first_timed_ns >= ts_ns:
            self.first_timed_round += 1

    def ordered(self) -> List[Subscriber]:
        """Subscribers as the kernel runs them: the namespace's chain, then the global one, by position;
        those no longer in their chain last."""
        return sorted(self.subscribers.values(), key=lambda s: (
            s.index is None, CHAIN_ORDER.index(s.chain) if s.chain in CHAIN_ORDER else 2, s.index or 0))

    def _drops_between(self, start: Optional[int], end: Optional[int]) -> List[str]:
        """Subscribers whose calls between START and END (ns; None: open) lowered the count."""
        out = []
        for s in self.subscribers.values():
            for change in s.changes:
                if change["after"] < change["before"] and (start is None or change["ts_ns"] >= start) and \
                        (end is None or change["ts_ns"] < end) and s.label not in out:
                    out.append(s.label)
        return out

    def count_changed(self, number: int, ts_ns: int, before: int, after: int, prev_ts: Optional[int]) -> None:
        """The count went from BEFORE (the previous round) to AFTER at round NUMBER (or the end)."""
        by = self._drops_between(prev_ts, ts_ns) if after < before else []
        self.changes.append({"round": number, "ts_ns": ts_ns, "before": before, "after": after,
                             "by": by or ([OUTSIDE] if after < before else [])})

    def verdict(self, leak_rounds: int = LEAK_ROUNDS) -> Tuple[str, List[str]]:
        """``leak``, ``slow release`` or ``undecided``, with the evidence in words."""
        downs = [c for c in self.changes if c["after"] < c["before"]]
        if downs:
            return SLOW, ["%s: count %d -> %d, by %s" % (
                "end of wait" if c["round"] is None else "round %d" % c["round"], c["before"], c["after"],
                ", ".join(c["by"])) for c in downs]
        timed = sum(s.calls for s in self.subscribers.values())
        if len(self.rounds) >= leak_rounds and not self.changes:
            seen = ("no subscriber dropped a reference (%d calls of %d subscribers timed from round %d)" % (
                timed, len(self.subscribers), self.first_timed_round) if timed
                else "subscribers not timed: their drops cannot be excluded")
            return LEAK, ["count %d flat over %d rounds (%d-%d)" % (
                self.rounds[-1][2], len(self.rounds), self.rounds[0][0], self.rounds[-1][0]), seen]
        return UNDECIDED, ["%d round(s) seen%s; a leak needs the count flat over %d" % (
            len(self.rounds), ", the count rose" if self.changes else "", leak_rounds)]

    def to_json(self) -> Dict[str, Any]:
        verdict, evidence = self.verdict()
        return {"dev": self.dev, "name": self.name, "verdict": verdict, "evidence": evidence,
                "rounds": len(self.rounds), "first_timed_round": self.first_timed_round,
                "truncated": self.truncated, "ended": self.ended, "changes": list(self.changes),
                "subscribers": [s.to_json() for s in self.ordered()]}


# A subscriber's call more than this after the last round's rebroadcast belongs to the next round.
_NEXT_ROUND_NS = 500 * 1000 * 1000
MAX_WAITING_CALLS = 4096            # calls per device waiting for their round's record (the newest kept)


class ChainTracker(object):
    """Per waiting device: its chains and their calls. The caller gives rounds (as the episode
    counts them), chain links, calls and the end of each wait."""

    def __init__(self) -> None:
        self._open = OrderedDict()  # type: Dict[str, DeviceChain]
        self._done = []  # type: List[DeviceChain]

    def _device(self, dev: str) -> DeviceChain:
        if dev not in self._open:
            self._open[dev] = DeviceChain(dev)
        return self._open[dev]

    def round(self, dev: str, name: Optional[str], number: int, ts_ns: int, count: int) -> None:
        """Round NUMBER of DEV's wait, rebroadcast at TS_NS with COUNT references."""
        state = self._device(dev)
        state.name = name or state.name
        if state.rounds and state.rounds[-1][0] >= number:
            return
        last = state.rounds[-1] if state.rounds else None
        late = last is not None and ts_ns is not None and last[1] is not None and ts_ns < last[1]
        if late:
            state.late_round(ts_ns, count)
        else:
            state.rounds.append((number, ts_ns, count))
        waiting, state.waiting_calls = state.waiting_calls, []
        for call in waiting:            # numbered now that their round (or the next) is known
            self.call(call)
        if not late and last is not None and last[2] != count:
            state.count_changed(number, ts_ns, last[2], count, last[1])

    def link(self, link: Link) -> None:
        """One notifier block of a walk: the chain's order and priorities as they are now."""
        state = self._device(link.dev)
        if link.truncated:
            state.truncated = True
            return
        if link.index == 0:
            for s in state.subscribers.values():
                if s.chain == link.chain:
                    s.index = None                  # until this walk lists it again
        sub = state.subscribers.get(link.nb)
        if sub is None:
            sub = state.subscribers[link.nb] = Subscriber(link.nb, link.call, link.chain, link.index, link.priority,
                                                          link.symbol, link.module)
        sub.chain, sub.index, sub.priority, sub.call = link.chain, link.index, link.priority, link.call

    def call(self, call: Call) -> None:
        """One callback call for the device: counted, timed, and a count change noted with its round."""
        state = self._device(call.dev)
        sub = state.subscribers.get(call.nb)
        if sub is None:                               # called before a walk listed it (netns chain)
            sub = state.subscribers[call.nb] = Subscriber(call.nb, call.call, NETNS, None, call.priority,
                                                          call.symbol, call.module)
        number = state.round_at(call.ts_ns)
        if sub.chain == GLOBAL and state.rounds and number > state.rounds[-1][0]:
            state.waiting_calls.append(call)        # until its round's record comes (counted then), if it does
            del state.waiting_calls[:-MAX_WAITING_CALLS]
            return
        if state.first_timed_ns is None or call.ts_ns < state.first_timed_ns:
            state.first_timed_round, state.first_timed_ns = number, call.ts_ns
        sub.calls += 1
        sub.total_ns += call.dur_ns
        sub.max_ns = max(sub.max_ns, call.dur_ns)
        name = notify_name(call.ret)
        sub.returns[name] = sub.returns.get(name, 0) + 1
        if call.count_after != call.count_before:
            sub.changes.append({"round": number, "ts_ns": call.ts_ns, "before": call.count_before,
                                "after": call.count_after})
            if len(sub.changes) > 1 and call.ts_ns < sub.changes[-2]["ts_ns"]:      # a call that waited
                sub.changes.sort(key=lambda c: c["ts_ns"])

    def end(self, dev: str, ts_ns: int, count: int) -> None:
        """DEV's wait ended (freed, or its count reached the base) with COUNT references."""
        state = self._open.pop(dev, None)
        if state is None:
            return
        last = state.rounds[-1] if state.rounds else None
        if last is not None and last[2] != count:
            state.count_changed(None, ts_ns, last[2], count, last[1])
        state.ended, state.end_count = True, count
        self._done.append(state)

    def open(self, dev: str) -> Optional[DeviceChain]:
        """DEV's chain while it waits, or None."""
        return self._open.get(dev)

    def devices(self) -> List[DeviceChain]:
        """Ended and waiting devices, in the order they were first seen."""
        return list(self._done) + list(self._open.values())


def folded_time(chains: List[Dict[str, Any]]) -> Dict[str, int]:
    """Folded stacks ``DEVICE;CHAIN chain;SUBSCRIBER`` -> microseconds spent in it over the rounds, from
    the ``to_json()`` of device chains (a flame graph of the time in subscribers)."""
    out = {}  # type: Dict[str, int]
    for chain in chains:
        for s in chain.get("subscribers", []):
            if s.get("total_ns"):
                key = ";".join(part.replace(";", ":") for part in (
                    chain.get("name") or chain["dev"], "%s chain" % s["chain"], s["label"]))
                out[key] = out.get(key, 0) + max(1, int(s["total_ns"]) // 1000)
    return out
