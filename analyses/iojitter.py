"""Correlate slab failures, mempool sleeps and slow writebacks into one causal record per stall.

Input: the event stream of ``bpftools iojitter`` (live, or a recording's events), each a dict with a
``type``:

- ``writeback`` (writeslow): ``tid tgid comm start_ns ts_ns duration_ns func depth dev ino kstack
  cgroup container wb_container``; ``ts_ns`` is the end.
- ``sleep`` (mempoolwait): ``tid start_ns ts_ns duration_ns in_mempool timed_out source blocked_in
  caller pool kstack``; ``source`` is ``kprobe`` (a measured mempool wait) or ``sched_switch``.
- ``slab_failure`` (slabfail): ``tid ts_ns kind cache call_site memcg_cache container``.
- ``lost``: ``count source ts_ns``: records lost after the event at ``ts_ns`` (None: unknown).
- ``mode``: the plan of the run (``flags``), which says whether sleeps came from kprobes.
Anything else (``mempool_alloc``...) is ignored.

Output (:func:`correlate`): per thread, each outermost slow writeback is an :class:`Episode` holding
its nested calls, the sleeps inside it and the slab failures that preceded each mempool sleep, so an
SRE reads "ext4_writepages stalled 5.02 s: slab fail biovec-64 → mempool wait 5.00 s (timed out)".
An episode is *explained* by the mempool when mempool sleeps cover at least half of it. The
:class:`Result` adds the fraction explained, per container/pod groups, folded stacks weighted by time
blocked and a confidence that drops when records were lost or sleeps were only recognised by stack.

The stream is read once, in bounded memory (:class:`Correlator`): each thread keeps only its open
window (the records since its last finished slow writeback); a writeback is finished once the
thread's records run SETTLE_NS past its end. The result keeps totals, per-group sums and folded
stacks of every episode, but the episodes themselves only for the first KEEP_EPISODES in time and the
KEEP_EPISODES longest (``episodes_left_out`` counts the rest).

Pure: no I/O, no clock; the same stream gives the same result.
"""
import bisect
import functools
import heapq
import operator
from array import array
from collections import Counter, OrderedDict, deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from dataclasses import asdict, dataclass, field

from . import folded as folded_stacks
from . import stacks

MEMPOOL_TIMEOUT_NS = 5 * 1000 ** 3       # io_schedule_timeout(5*HZ) in mempool_alloc, literal in 3.10..6.18
TIMEOUT_SLACK_NS = 20 * 1000 ** 2        # two jiffies at HZ=100: a wait this close to 5 s timed out
EXPLAINED_SHARE = 0.5                    # mempool sleeps covering this share of a stall explain it
HIGH, MEDIUM, LOW = "high", "medium", "low"
SETTLE_NS = 2 * 1000 ** 3           # a writeback is finished when its thread's records are this far past its end
COLLATERAL_NS = 60 * 1000 ** 3      # how long past its end a stall waits for other threads' stalls on its inode
PENDING_NS = 600 * 1000 ** 3        # sleeps and slab failures outside any writeback are kept this long
MAX_PENDING = 20000                 # ... and at most this many per thread (the oldest are decided first)
SWEEP_NS = 10 * 1000 ** 3           # idle threads and stale stalls are swept once per this much stream time
KEEP_EPISODES = 500                 # the first and the longest episodes kept whole (each)
STACKS = 4096                       # distinct sleeping stacks kept shared (Correlator._share)
NEVER = 1 << 100                    # a time past any (integer, unlike inf: compared faster with times)


def timed_out(duration_ns: int) -> bool:
    """True when a mempool sleep lasted the whole 5 s timeout (not woken early by mempool_free).

    >>> timed_out(4999 * 1000 ** 2), timed_out(1200 * 1000 ** 2)
    (True, False)
    """
    return duration_ns >= MEMPOOL_TIMEOUT_NS - TIMEOUT_SLACK_NS


@dataclass
class Call:
    """One writeback call of an episode (the outermost first, then the calls nested in it)."""

    func: str
    depth: int                 # nesting depth inside the episode, 0 = the episode itself
    start_ns: int
    end_ns: int
    dev: Optional[str]
    ino: Optional[int]


@dataclass
class Wait:
    """A sleep inside an episode, with the slab failures since the previous sleep (mempool waits only)."""

    start_ns: int
    end_ns: int
    duration_ns: int
    in_mempool: bool
    timed_out: Optional[bool]
    blocked_in: Optional[str]      # function name the task slept in (not the scheduler's)
    caller: Optional[str]          # who called mempool_alloc
    call: Optional[str]            # the innermost writeback call around it
    kstack: Optional[List[str]]    # the sleeping stack, innermost first; None when none was taken
    after_slab_failures: List[str] = field(default_factory=list)   # cache (or call site) of each
    pool_cache: Optional[str] = None   # the slab cache behind the mempool (kprobe mode, slab pools)


@dataclass
class Episode:
    """One slow writeback on one thread (the outermost call) and what it was blocked on."""

    tid: int
    tgid: int
    comm: str
    start_ns: int
    end_ns: int
    duration_ns: int
    func: str
    dev: Optional[str]
    ino: Optional[int]
    calls: List[Call]
    waits: List[Wait]
    slab_failures: List[str]       # all failures on the thread during the episode: cache or call site
    mempool_ns: int
    other_blocked_ns: int
    explained: bool
    group: str                     # container / pod / cgroup the stall belongs to
    container: Optional[Dict[str, Any]]
    incomplete: bool               # records were lost while it ran
    kstack: Optional[List[str]]
    behind: Optional[Dict[str, Any]] = None   # explained by another thread's mempool waits on the same inode

    @property
    def mempool_timeouts(self) -> int:
        return sum(1 for w in self.waits if w.in_mempool and w.timed_out)

    def chain(self) -> str:
        """The causal record in one line: slab failures → mempool sleeps → the writeback's end.

        Consecutive sleeps in the same other function are merged ("blocked 0.43s in blk_mq_get_tag
        (4 sleeps)").
        """
        parts = []
        merged = []  # type: List[List[Any]]   # [wait, total ns, count]
        for w in self.waits:
            last = merged[-1][0] if merged else None
            if (last is not None and not w.in_mempool and not last.in_mempool and not w.after_slab_failures
                    and w.blocked_in == last.blocked_in):
                merged[-1][1] += w.duration_ns
                merged[-1][2] += 1
            else:
                merged.append([w, w.duration_ns, 1])
        for w, ns, n in merged:
            if w.after_slab_failures:
                parts.append("slab fail %s" % _counted(w.after_slab_failures))
            if w.in_mempool:
                parts.append("mempool wait %ss%s (%s)" % (_secs(ns), " on %s" % w.pool_cache if w.pool_cache else "",
                                                       "timed out" if w.timed_out else "woken"))
            else:
                parts.append("blocked %ss in %s%s" % (_secs(ns), w.blocked_in or "[no stack]",
                                                      " (%d sleeps)" % n if n > 1 else ""))
        if self.behind:
            parts.append("behind tid %d (%s) in mempool wait %ss on the same inode" % (
                self.behind["tid"], self.behind["comm"], _secs(self.behind["overlap_ns"])))
        calls = sorted(self.calls, key=lambda c: (c.depth, c.start_ns))
        parts.append(" > ".join("%s %ss" % (c.func, _secs(c.end_ns - c.start_ns)) for c in calls))
        return " -> ".join(parts)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["mempool_timeouts"] = self.mempool_timeouts
        out["chain"] = self.chain()
        return out


@dataclass
class Group:
    """Stalls of one container / pod / cgroup."""

    group: str
    container: Optional[Dict[str, Any]]
    episodes: int
    explained: int
    stalled_ns: int
    mempool_ns: int
    slab_failures: int


@dataclass
class Result:
    """The correlation of one stream."""

    sleeps_from: str                          # "kprobe" | "sched_switch" | "none"
    episodes: List[Episode]
    groups: List[Group]
    slow_writebacks: int
    explained: int
    fraction_explained: Optional[float]       # None without slow writebacks
    stalled_ns: int
    mempool_ns: int
    mempool_waits: int                        # in slow writebacks
    mempool_timeouts: int
    mempool_waits_elsewhere: int              # outside any slow writeback
    slab_failures: int
    slab_failures_elsewhere: int
    other_blocking: List[Tuple[str, int]]     # (function, ns) of non-mempool sleeps in stalls, most first
    lost_records: int
    skipped_records: int                      # not usable (missing or invalid fields)
    confidence: str
    reasons: List[str]
    verdict: str
    folded: Dict[str, int]
    episodes_left_out: int = 0                # slow writebacks counted but not kept in ``episodes``
    pool_caches: List[str] = field(default_factory=list)   # of the mempool waits in stalls, first seen first

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["episodes"] = [e.to_json() for e in self.episodes]
        out["other_blocking"] = [{"function": f, "ns": ns} for f, ns in self.other_blocking]
        return out


def _secs(ns: int) -> str:
    """NS in seconds with 2 decimals, as ``folded_stacks.fixed(ns / 1e9, 2)``: in integers, unless NS is
    within a microsecond of a tie (where the float's rounding decides) or past 2**53.

    >>> _secs(1234567890), _secs(5 * 10 ** 9), _secs(15 * 10 ** 6)      # the last: 0.015 is a tie
    ('1.23', '5.00', '0.01')
    """
    centis, rest = divmod(ns, 10 ** 7)
    if 0 <= ns < 1 << 53 and abs(rest - 5 * 10 ** 6) > 1000:
        return _centis(centis + (rest > 5 * 10 ** 6))
    return _near_tie(ns)


@functools.lru_cache(maxsize=1 << 14)       # sleeps of a stream last few distinct hundredths of a second
def _centis(centis: int) -> str:
    return "%d.%02d" % divmod(centis, 100)


@functools.lru_cache(maxsize=1 << 10)       # whole milliseconds (synthetic streams) tie once in ten: at x.xx5 s
def _near_tie(ns: int) -> str:
    return folded_stacks.fixed(ns / 1e9, 2)


_base_name = functools.lru_cache(maxsize=1 << 12)(stacks.base_name)   # a stream's sleeps block in few functions


def _counted(items: List[str]) -> str:
    """"biovec-64 x2, filp" in first-seen order."""
    if items.count(items[0]) == len(items):      # one name (the common case)
        return items[0] if len(items) == 1 else "%s x%d" % (items[0], len(items))
    counts = Counter(items)
    return ", ".join(name if counts[name] == 1 else "%s x%d" % (name, counts[name])
                     for name in OrderedDict.fromkeys(items))


def _group_of(container: Optional[Dict[str, Any]], cgroup: Optional[str]) -> str:
    if container:
        cid, pod = container.get("container_id"), container.get("pod_uid")
        if cid or pod:
            try:
                return _container_group(cid, pod)
            except TypeError:       # not hashable (a damaged record): not cached
                return _container_group.__wrapped__(cid, pod)
    return "cgroup %s" % cgroup if cgroup and cgroup != "/" else "host"


@functools.lru_cache(maxsize=1 << 10)       # a node runs few containers
def _container_group(cid: Any, pod: Any) -> str:
    if cid:
        return "container %s%s" % (cid[:12], " pod %s" % pod if pod else "")
    return "pod %s" % pod


# Records as Correlator.feed_all keeps them: tuples of the fields read later, made while the event is fresh.
# A writeback call: its fields _CALL_FIELDS (in one C call: _call_record), read at these places (the hot
# paths unpack it):
_CALL_FIELDS = ("start_ns", "ts_ns", "func", "dev", "ino", "tid", "tgid", "comm", "kstack", "wb_cgroup", "cgroup",
                "wb_container", "container")
_C_START, _C_END, _C_FUNC, _C_DEV, _C_INO, _C_TID, _C_TGID, _C_COMM, _C_KSTACK = range(9)
_call_record = operator.itemgetter(*_CALL_FIELDS)
# A sleep: (start, end, in mempool, blocked in (its base name), timed out, caller, pool cache, kstack (shared,
# :meth:`Correlator._share`)); a slab failure: :func:`_slab_record`.
_SLEEP_FIELDS = ("in_mempool", "blocked_in", "timed_out", "caller", "pool_cache", "kstack")
_sleep_fields = operator.itemgetter(*_SLEEP_FIELDS)
_S_IN_MEMPOOL, _S_BLOCKED, _S_TIMED_OUT, _S_CALLER, _S_POOL, _S_KSTACK = range(2, 8)
_CallRec = Tuple[Any, ...]
_DirectStall = Tuple[int, int, str, List[Tuple[int, int]]]     # Correlator.direct
_Direct = Dict[Tuple[Optional[str], int], List[_DirectStall]]
_START, _END = operator.itemgetter(_C_START), operator.itemgetter(_C_END)


class _Tree(object):
    """Writeback calls of one thread nested by time: roots are the episodes."""

    def __init__(self, calls: List[_CallRec]) -> None:
        self.roots = []  # type: List[Tuple[_CallRec, List[Tuple[_CallRec, int]]]]
        ends = []  # type: List[int]     # of the calls open around the next, innermost last
        by_end = sorted(calls, key=_END, reverse=True)        # two stable sorts: by start, then latest end
        for call in sorted(by_end, key=_START):
            end = call[_C_END]
            # not around it: ended before it started, or overlaps it (feed checked start <= end)
            while ends and end > ends[-1]:
                ends.pop()
            if ends:
                self.roots[-1][1].append((call, len(ends)))
            else:
                self.roots.append((call, [(call, 0)]))
            ends.append(end)


class _Timed(object):
    """One thread's records of one kind in stream order with their times (integers), for range queries
    by time: in time order, ties in stream order. Records usually come in time order, and then the
    times are the index; else they are sorted when asked."""

    __slots__ = ("records", "times", "in_order", "_order", "_keys")

    def __init__(self, records: List[Dict[str, Any]], times: List[int]) -> None:
        self.records, self.times = records, times
        self.in_order = all(a <= b for a, b in zip(times, times[1:]))
        self._order = None  # type: Optional[List[int]]    # (out of order) indexes in time order, once asked
        self._keys = times

    def __len__(self) -> int:
        return len(self.records)

    def between(self, start: int, end: int) -> Tuple[Iterable[int], List[Dict[str, Any]]]:
        """The indexes and the records whose time is within [START, END], in time order."""
        records = self.records
        if self.in_order:
            times = self.times
            lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
            return range(lo, hi), records[lo:hi]
        if self._order is None or len(self._order) < len(self.times):     # records came since
            self._order = sorted(range(len(self.times)), key=self.times.__getitem__)
            self._keys = [self.times[i] for i in self._order]
        indexes = self._order[bisect.bisect_left(self._keys, start):bisect.bisect_right(self._keys, end)]
        return indexes, [records[i] for i in indexes]

    def drop_until(self, until: float) -> Tuple[Iterable[int], List[Dict[str, Any]]]:
        """Remove the records at or before UNTIL: the indexes they had, and they."""
        if self.in_order:
            n = bisect.bisect_right(self.times, until)
            gone = self.records[:n]
            del self.records[:n]
            del self.times[:n]
            return range(n), gone
        indexes = [i for i, t in enumerate(self.times) if t <= until]
        gone = [self.records[i] for i in indexes]
        self.keep([i for i, t in enumerate(self.times) if t > until])
        return indexes, gone

    def keep(self, indexes: List[int]) -> None:
        """Keep only the records at INDEXES (ascending)."""
        records, times = self.records, self.times
        self.__init__([records[i] for i in indexes], [times[i] for i in indexes])


def _innermost(members: List[Tuple[_CallRec, int]], ts: int) -> Optional[str]:
    best = None  # type: Optional[Tuple[int, str]]
    for call, depth in members:
        if call[_C_START] <= ts <= call[_C_END] and (best is None or depth >= best[0]):
            best = (depth, call[_C_FUNC] or "?")
    return best[1] if best else None


def _slab_record(ev: Dict[str, Any], ts: int) -> Tuple[int, str, Any]:
    """A slab failure as feed keeps it: TS, its label (the cache, a 3.10 per-memcg cache with its cgroup cut to
    12 characters; else the caller) and the container its per-memcg cache names."""
    memcg = ev.get("memcg_cache")
    if memcg and memcg.get("base") and memcg.get("cgroup") is not None:
        label = "%s(%s:%s)" % (memcg["base"], memcg.get("memcg_id"), memcg["cgroup"][:12])
    else:
        label = ev.get("cache") or ev.get("call_site") or "?"
    return ts, label, memcg.get("container") if memcg else None


class _Losses(object):
    """Time windows in which records may be missing (from a ``lost`` marker to the next timed record),
    and the number of records lost; fed the usable records in stream order."""

    def __init__(self) -> None:
        self.windows = []  # type: List[Tuple[float, float]]
        self.lost = 0
        self.perf_buffer = 0             # of them, those the perf buffer's markers counted
        self.last = float("-inf")  # type: float    # the latest time of a timed record
        self.pending = []  # type: List[float]

    def feed(self, ev: Dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "lost":
            count = int(ev.get("count") or 0)
            self.lost += count
            if ev.get("source") == "perf_buffer":
                self.perf_buffer += count
            start = ev.get("ts_ns")
            self.pending.append(float(start) if start is not None else float(self.last))
            return
        ts = ev.get("ts_ns")
        if ts is not None and kind != "mode":
            self.timed(ts)

    def timed(self, ts: int) -> None:
        """A record at TS (not a marker): it ends the windows open."""
        if self.pending:
            self.windows.extend((start, float(ts)) for start in self.pending)
            self.pending = []
        if ts > self.last:
            self.last = ts

    def hits(self) -> Any:
        """A test (start, end) -> True when a window overlaps [start, end] (a window (a, b) does when
        a <= end and b >= start): windows sorted by b, with the least a from each on."""
        windows = sorted(self.windows + [(start, float("inf")) for start in self.pending], key=lambda w: w[1])
        ends = [b for _, b in windows]
        least = [float("inf")] * (len(windows) + 1)
        for i in range(len(windows) - 1, -1, -1):
            least[i] = min(least[i + 1], windows[i][0])

        def hit(start: int, end: int) -> bool:
            return least[bisect.bisect_left(ends, start)] <= end
        return hit


_WRITEBACK, _SLEEP, _SLAB = 1, 2, 3
_KINDS = {"writeback": _WRITEBACK, "sleep": _SLEEP, "slab_failure": _SLAB}   # the records correlated


def correlate(events: Iterable[Any], extra_lost: int = 0) -> Result:
    """One causal record per slow writeback from an iojitter event stream (see the module doc).

    EXTRA_LOST counts records known lost but not marked in the stream (a recording's trailer): their
    place is unknown, so every episode may miss them. Records that are not usable (missing or
    non-integer ids and times) are skipped and lower the confidence.
    """
    correlator = Correlator()
    correlator.feed_all(events)
    return correlator.result(extra_lost)


class _Thread(object):
    """One thread's open window: writeback calls not finished yet, sleeps and slab failures not decided."""

    __slots__ = ("calls", "sleeps", "slabs", "clock", "due")

    def __init__(self) -> None:
        self.calls = []  # type: List[_CallRec]
        self.sleeps = _Timed([], [])     # by start
        self.slabs = _Timed([], [])      # by time
        self.clock = -1                  # the latest time in its records
        self.due = NEVER                 # past this time its earliest open call is finished (SETTLE_NS)


class Correlator(object):
    """:func:`correlate` fed one record at a time; ``result()`` once the stream ended. Without FOLD the
    result's ``folded`` is empty (for outputs that show no stacks: folding is a sixth of the work)."""

    def __init__(self, fold: bool = True) -> None:
        self.threads = {}  # type: Dict[int, _Thread]
        self.losses = _Losses()
        self.totals = _Totals(fold)
        self.sleeps_from = "none"
        self.seen_sleep = self.seen_kprobe_sleep = False
        self.malformed = 0
        self.clock = -1                  # the latest time in the stream
        self.swept = -1                  # the stream's time at the last sweep
        self.settling = []  # type: List[Tuple[int, int, _Stall]]    # (end, n, stall): waiting for collateral
        # the stalls their own mempool waits explain, by inode, for the stalls of other threads on it (_close):
        # (start, tid, comm, its mempool waits' (start, end)), not the stall, which holds all its records. Those
        # settled since the last sweep; before them, one index per sweep, with the stream's time at its end
        # (no stall in it ended later): dropped whole once that is 3 * COLLATERAL_NS old
        self.direct = {}  # type: _Direct
        self.direct_before = deque()  # type: Deque[Tuple[int, _Direct]]
        self.stacks = {}  # type: Dict[Tuple[str, ...], Tuple[str, ...]]

    def feed(self, ev: Any) -> None:
        """One record (:meth:`feed_all`)."""
        self.feed_all((ev,))

    def feed_all(self, events: Iterable[Any]) -> None:
        """Records in stream order: each one goes to its thread's window (one loop, its lookups made once)."""
        threads, losses, kinds = self.threads, self.losses, _KINDS
        for ev in events:
            try:
                kind = kinds[ev["type"]]
                tid, ts = ev["tid"], ev["ts_ns"]
                start = ts if kind == _SLAB else ev["start_ns"]
            except (KeyError, TypeError):       # not a dict, not correlated, or a field missing
                self._not_correlated(ev)
                continue
            # usable: integer ids and times, start before end (else skipped, and the confidence drops)
            if type(tid) is not int or type(ts) is not int or type(start) is not int or start > ts:
                self.malformed += 1
                continue
            if losses.pending:
                losses.timed(ts)
            try:
                thread = threads[tid]
            except KeyError:
                thread = threads[tid] = _Thread()
            if ts > thread.clock:
                thread.clock = ts
                if ts > self.clock:     # the stream's clock (and the losses', which counts other records too)
                    self.clock = ts
                    if ts > losses.last:
                        losses.last = ts
                    if ts > self.swept + SWEEP_NS:
                        self.swept = ts
                        self._sweep()
            if kind == _WRITEBACK:
                try:
                    thread.calls.append(_call_record(ev))
                except KeyError:        # a record without some field: None for it
                    thread.calls.append(tuple(map(ev.get, _CALL_FIELDS)))
                if ts + SETTLE_NS < thread.due:
                    thread.due = ts + SETTLE_NS
            else:
                if kind == _SLEEP:
                    if self.sleeps_from == "none" and not self.seen_kprobe_sleep:    # (else the mode said)
                        self.seen_sleep = True
                        if ev.get("source") == "kprobe":
                            self.seen_kprobe_sleep = True
                    timed = thread.sleeps
                    try:
                        in_mempool, blocked, timed_out, caller, pool, kstack = _sleep_fields(ev)
                    except KeyError:        # a record without some field: None for it
                        in_mempool, blocked, timed_out, caller, pool, kstack = map(ev.get, _SLEEP_FIELDS)
                    if type(kstack) is list:
                        key = tuple(kstack)
                        try:
                            kstack = self.stacks[key]
                        except KeyError:
                            kstack = self._share(key)
                        except TypeError:       # a frame that is not text: the list kept as it is
                            pass
                    record = (start, ts, True if in_mempool else False, _base_name(blocked) if blocked else None,
                              timed_out, caller, pool, kstack)
                else:
                    timed = thread.slabs
                    try:
                        memcg, cache = ev["memcg_cache"], ev["cache"]
                    except KeyError:        # an older record
                        memcg, cache = ev.get("memcg_cache"), ev.get("cache")
                    # _slab_record's common case (a cache, no per-memcg one) made here, without the call
                    record = (ts, cache, None) if cache and not memcg else _slab_record(ev, ts)
                records, times = timed.records, timed.times
                if times and start < times[-1]:
                    timed.in_order = False
                records.append(record)
                times.append(start)
                if len(records) > MAX_PENDING:
                    self._forget(thread, thread.clock - PENDING_NS, MAX_PENDING // 2)
            if thread.clock > thread.due:
                self._finish(thread, False)

    def _not_correlated(self, ev: Any) -> None:
        """A record :meth:`feed_all` does not correlate: the plan (``mode``), a loss marker, or one not usable
        (not a dict, or a correlated kind without some field)."""
        if not isinstance(ev, dict) or type(ev.get("type")) is str and ev["type"] in _KINDS:
            self.malformed += 1
        elif ev.get("type") == "mode":
            flags = ev.get("flags") or []
            self.sleeps_from = "kprobe" if "WANT_SLEEP_KPROBE" in flags else (
                "sched_switch" if "WANT_SLEEP_SCHED" in flags else self.sleeps_from)
        else:
            self.losses.feed(ev)

    def _share(self, stack: Tuple[str, ...]) -> Tuple[str, ...]:
        """STACK (a sleeping stack as a tuple, not seen lately) kept as the one shared from now on by the equal
        stacks (at most STACKS are kept): made while the event is fresh, so that a stall, later, compares its
        stacks by identity and hashes no frame again."""
        if len(self.stacks) >= STACKS:
            self.stacks.clear()
        self.stacks[stack] = stack
        return stack

    def _finish(self, thread: _Thread, final: bool) -> None:
        """Make episodes of the thread's finished writebacks (all of them when FINAL); decide the sleeps
        and slab failures up to the last one's end."""
        roots = _Tree(thread.calls).roots      # their ends increase (a root ends after the roots before it)
        n = len(roots)
        if not final:
            n = 0
            while n < len(roots) and roots[n][0][_C_END] + SETTLE_NS < thread.clock:
                n += 1
            if not n:
                thread.due = roots[0][0][_C_END] + SETTLE_NS if roots else NEVER
                return
        used_sleeps = set()  # type: set
        used_slabs = set()  # type: set
        for root, members in roots[:n]:
            self._settle(_stall(root, members, thread, used_sleeps, used_slabs))
        thread.calls = [call for _, members in roots[n:] for call, _ in members]
        thread.due = roots[n][0][_C_END] + SETTLE_NS if n < len(roots) else NEVER
        self._decide(thread, float("inf") if final else roots[n - 1][0][_C_END], used_sleeps, used_slabs)

    def _decide(self, thread: _Thread, until: float, used_sleeps: set, used_slabs: set) -> None:
        """Drop the thread's sleeps starting and slab failures at or before UNTIL; those no episode
        used happened outside slow writebacks."""
        indexes, sleeps = thread.sleeps.drop_until(until)
        if len(used_sleeps) < len(sleeps):      # else every one was in a stall
            self.totals.mempool_elsewhere += sum(1 for i, s in zip(indexes, sleeps)
                                                 if i not in used_sleeps and s[_S_IN_MEMPOOL])
        self.totals.slab_elsewhere += len(thread.slabs.drop_until(until)[1]) - len(used_slabs)

    def _forget(self, thread: _Thread, before: int, keep: int) -> None:
        """Sleeps and slab failures older than BEFORE, and all but the KEEP newest, outside any writeback."""
        for timed in (thread.sleeps, thread.slabs):
            kept = [i for i, t in enumerate(timed.times) if t >= before][-keep:]
            if timed is thread.sleeps:
                self.totals.mempool_elsewhere += sum(1 for x in timed.records if x[_S_IN_MEMPOOL]) - sum(
                    1 for i in kept if timed.records[i][_S_IN_MEMPOOL])
            else:
                self.totals.slab_elsewhere += len(timed) - len(kept)
            timed.keep(kept)

    def _sweep(self) -> None:
        """Finish threads silent for PENDING_NS; decide stalls no other thread's can explain any more."""
        for tid in [t for t, th in self.threads.items() if th.clock < self.clock - PENDING_NS]:
            self._finish(self.threads.pop(tid), True)
        if self.direct:
            self.direct_before.append((self.clock, self.direct))
            self.direct = {}
        horizon = self.clock - 3 * COLLATERAL_NS
        while self.direct_before and self.direct_before[0][0] < horizon:
            self.direct_before.popleft()

    def explained_on(self, dev: Optional[str], ino: int) -> List[_DirectStall]:
        """The stalls indexed (explained by their own mempool waits) on the inode DEV, INO."""
        found = self.direct.get((dev, ino), [])
        for _, before in self.direct_before:
            found = found + before.get((dev, ino), [])
        return found

    def _settle(self, e: "_Stall") -> None:
        """E, unless its own waits explain it, waits COLLATERAL_NS (of stream time) for the stalls of other
        threads on its inode."""
        if e.explained and e.ino is not None:
            self.direct.setdefault((e.dev, e.ino), []).append((e.start_ns, e.tid, e.comm, e.mempool_spans))
        if e.may_be_behind():
            heapq.heappush(self.settling, (e.end_ns, self.totals.episodes, e))
        else:
            self.totals.add(e)
        self.totals.episodes += 1
        while self.settling and self.settling[0][0] + COLLATERAL_NS < self.clock:
            self._close(heapq.heappop(self.settling)[2])

    def _close(self, e: "_Stall") -> None:
        """A writeback of an inode that another thread is writing back while that thread sleeps in the
        mempool waits for it (page locks, writeback bits; e.g. the flusher behind a stalled fsync): when
        those waits cover EXPLAINED_SHARE of it, it is explained, ``behind`` that thread."""
        if e.may_be_behind():
            best = None  # type: Optional[Tuple[int, int, int, str]]
            for start_ns, tid, comm, spans in self.explained_on(e.dev, e.ino):
                if tid == e.tid:
                    continue
                overlap = sum(max(0, min(end, e.end_ns) - max(start, e.start_ns)) for start, end in spans)
                key = (overlap, -start_ns, -tid, comm)
                if best is None or key[:3] > best[:3]:
                    best = key
            if best is not None and best[0] >= EXPLAINED_SHARE * e.duration_ns:
                e.explained = True
                e.behind = {"tid": -best[2], "comm": best[3], "overlap_ns": best[0]}
        self.totals.add(e)

    def result(self, extra_lost: int = 0) -> Result:
        """The correlation of everything fed (the open windows are closed: call it once, at the end)."""
        for tid in sorted(self.threads):
            self._finish(self.threads[tid], True)
        self.threads = {}
        while self.settling:
            self._close(heapq.heappop(self.settling)[2])
        sleeps_from = self.sleeps_from
        if sleeps_from == "none" and self.seen_kprobe_sleep:
            sleeps_from = "kprobe"
        elif sleeps_from == "none" and self.seen_sleep:
            sleeps_from = "sched_switch"
        hit = (lambda start, end: True) if extra_lost else self.losses.hits()
        return self.totals.result(sleeps_from, hit, self.losses.lost + extra_lost, self.malformed)


class _FirstSeen(object):
    """Names counted, in the order of the first place each was seen at: ORDER (episode start, tid), then
    the place I, J in the episode. With BASE, a 3.10 per-memcg cache counts as its base cache ("biovec-64"
    for "biovec-64(3:c0ffee)")."""

    def __init__(self, base: bool = False) -> None:
        self.seen = {}  # type: Dict[str, List[Any]]     # name -> [count, order, i, j] (the first)
        self.base = base

    def add(self, names: Iterable[str], order: Tuple[int, int], i: int) -> None:
        """NAMES seen at place I of the episode at ORDER (the Jth of them at place I, J)."""
        seen = self.seen
        for j, name in enumerate(names):
            if self.base and "(" in name:
                name = name.partition("(")[0]
            had = seen.get(name)
            if had is None:
                seen[name] = [1, order, i, j]
            else:
                had[0] += 1
                if order <= had[1] and (order, i, j) < (had[1], had[2], had[3]):
                    had[1:] = [order, i, j]

    def names(self) -> List[str]:
        return sorted(self.seen, key=lambda n: self.seen[n][1:])

    def counted(self) -> str:
        """"biovec-64 x2, filp" in first-seen order."""
        return ", ".join(n if self.seen[n][0] == 1 else "%s x%d" % (n, self.seen[n][0]) for n in self.names())


class _Totals(object):
    """What the result needs of every episode, in bounded memory: sums, per-group sums, folded stacks,
    the first and the longest KEEP_EPISODES episodes, and each episode's span (16 bytes) to mark
    those that ran while records were lost."""

    def __init__(self, fold: bool) -> None:
        self.episodes = 0                # made (some may still wait for collateral)
        self.n = self.behind = 0         # (stalled time, mempool time, explained, slab failures: the groups' sums)
        self.mempool_waits = self.mempool_timeouts = self.preceded = self.no_stack = 0
        self.mempool_elsewhere = self.slab_elsewhere = 0
        self.other = Counter()  # type: Counter[str]
        self.caches = _FirstSeen(base=True)
        self.pools = _FirstSeen()
        self.groups = {}  # type: Dict[str, Tuple[Tuple[int, int], Group]]
        self.folder = _Folder() if fold else None
        self.first = []  # type: List[Tuple[int, int, int, _Stall]]
        self.longest = []  # type: List[Tuple[int, int, int, int, _Stall]]
        self.starts = array("q")
        self.ends = array("q")

    def add(self, e: "_Stall") -> None:
        order = (e.start_ns, e.tid)
        self.n += 1
        if e.behind:
            self.behind += 1
        mempool_waits = timeouts = no_stack = preceded = 0
        for i, (_, _, duration, in_mempool, sleep, before, blocked) in enumerate(e.waits):
            if in_mempool:
                mempool_waits += 1
                if sleep[_S_TIMED_OUT]:
                    timeouts += 1
                if sleep[_S_POOL]:
                    self.pools.add((sleep[_S_POOL],), order, i)
            else:
                self.other[blocked or "[no stack]"] += duration
            if sleep[_S_KSTACK] is None:
                no_stack += 1
            if before:
                preceded += 1
                self.caches.add(before, order, i)
        self.mempool_waits += mempool_waits
        self.mempool_timeouts += timeouts
        self.no_stack += no_stack
        self.preceded += preceded
        had = self.groups.get(e.group)
        if had is None:
            g = Group(e.group, e.container, 0, 0, 0, 0, 0)
            self.groups[e.group] = (order, g)
        else:
            g = had[1]
            if order < had[0]:       # the group's container as its first stall in time gave it
                g.container = e.container
                self.groups[e.group] = (order, g)
        g.episodes += 1
        if e.explained:
            g.explained += 1
        g.stalled_ns += e.duration_ns
        g.mempool_ns += e.mempool_ns
        g.slab_failures += len(e.slabs)
        if self.folder is not None:
            self.folder.add(e)
        self.starts.append(e.start_ns)
        self.ends.append(e.end_ns)
        first, longest = self.first, self.longest
        if len(first) < KEEP_EPISODES:
            heapq.heappush(first, (-e.start_ns, -e.tid, self.n, e))
        elif (-e.start_ns, -e.tid) > first[0][:2]:       # earlier than the latest kept
            heapq.heapreplace(first, (-e.start_ns, -e.tid, self.n, e))
        if len(longest) < KEEP_EPISODES:
            heapq.heappush(longest, (e.duration_ns, -e.start_ns, -e.tid, self.n, e))
        elif e.duration_ns >= longest[0][0] and (e.duration_ns, -e.start_ns, -e.tid) > longest[0][:3]:
            heapq.heapreplace(longest, (e.duration_ns, -e.start_ns, -e.tid, self.n, e))

    def result(self, sleeps_from: str, hit: Any, lost: int, malformed: int) -> Result:
        kept = dict((id(t[-1]), t[-1]) for t in self.first + self.longest)
        episodes = [st.episode() for st in sorted(kept.values(), key=lambda st: (st.start_ns, st.tid))]
        for e in episodes:
            e.incomplete = hit(e.start_ns, e.end_ns)
        hits = sum(1 for start, end in zip(self.starts, self.ends) if hit(start, end))
        n = self.n
        groups = [g for _, g in self.groups.values()]
        explained = sum(g.explained for g in groups)
        confidence, reasons = _confidence(hits, self.no_stack, sleeps_from, lost, malformed)
        result = Result(
            sleeps_from=sleeps_from, episodes=episodes,
            groups=sorted(groups, key=lambda g: (-g.stalled_ns, g.group)), slow_writebacks=n,
            explained=explained, fraction_explained=(float(explained) / n) if n else None,
            stalled_ns=sum(g.stalled_ns for g in groups), mempool_ns=sum(g.mempool_ns for g in groups),
            mempool_waits=self.mempool_waits, mempool_timeouts=self.mempool_timeouts,
            mempool_waits_elsewhere=self.mempool_elsewhere,
            slab_failures=sum(g.slab_failures for g in groups) + self.slab_elsewhere,
            slab_failures_elsewhere=self.slab_elsewhere,
            other_blocking=sorted(self.other.items(), key=lambda kv: (-kv[1], kv[0])), lost_records=lost,
            skipped_records=malformed, confidence=confidence, reasons=reasons, verdict="",
            folded=folded_stacks.finished(self.folder.folded() if self.folder else {}),
            episodes_left_out=n - len(episodes), pool_caches=self.pools.names())
        result.verdict = _verdict(result, self)
        return result


class _Stall(object):
    """A slow writeback as the totals need it: its numbers, and its records for :meth:`episode`, the whole
    :class:`Episode` (made only for the episodes a result keeps). Each wait is a tuple (start, end,
    duration, in mempool, the sleep record, the slab failures before it, the function it blocked in)."""

    __slots__ = ("tid", "comm", "start_ns", "end_ns", "duration_ns", "dev", "ino", "root", "members", "waits",
                 "mempool_spans", "slabs", "mempool_ns", "other_blocked_ns", "explained", "group", "container",
                 "behind")

    def may_be_behind(self) -> bool:
        """True when another thread's stall on its inode may explain it (:meth:`Correlator._close`)."""
        return not self.explained and self.ino is not None and self.duration_ns > 0

    def episode(self) -> Episode:
        root, members = self.root, self.members
        waits = [Wait(start_ns=start, end_ns=end, duration_ns=duration, in_mempool=in_mempool,
                      timed_out=sleep[_S_TIMED_OUT], blocked_in=blocked, caller=sleep[_S_CALLER],
                      call=_innermost(members, start),
                      kstack=list(sleep[_S_KSTACK]) if type(sleep[_S_KSTACK]) is tuple else sleep[_S_KSTACK],
                      after_slab_failures=list(before), pool_cache=sleep[_S_POOL])
                 for start, end, duration, in_mempool, sleep, before, blocked in self.waits]
        calls = [Call(func=c[_C_FUNC] or "?", depth=depth, start_ns=c[_C_START], end_ns=c[_C_END], dev=c[_C_DEV],
                      ino=c[_C_INO]) for c, depth in members]
        return Episode(
            tid=self.tid, tgid=int(root[_C_TGID] or root[_C_TID]), comm=self.comm, start_ns=self.start_ns,
            end_ns=self.end_ns, duration_ns=self.duration_ns, func=root[_C_FUNC] or "?", dev=self.dev, ino=self.ino,
            calls=calls, waits=waits, slab_failures=[f[1] for f in self.slabs], mempool_ns=self.mempool_ns,
            other_blocked_ns=self.other_blocked_ns, explained=self.explained, group=self.group,
            container=self.container, incomplete=False, kstack=root[_C_KSTACK], behind=self.behind)


def _stall(call: _CallRec, members: List[Tuple[_CallRec, int]], thread: _Thread, used_sleeps: set,
           used_slabs: set) -> _Stall:
    """The stall of CALL (its nested calls MEMBERS)."""
    start, end, _, dev, ino, tid, _, comm, _, wb_cgroup, cgroup, wb_container, container = call
    cgroup = wb_cgroup or cgroup      # the bdi_writeback's, else the writer's
    indexes, slabs = thread.slabs.between(start, end)
    used_slabs.update(indexes)
    indexes, sleeps = thread.sleeps.between(start, end)
    used_sleeps.update(indexes)
    waits = []
    spans = []      # (start, end) of the mempool waits
    cursor = start
    slab_i = 0
    mempool_ns = other_ns = 0
    for s in sleeps:
        s_start, s_end, in_mempool, blocked = s[:4]
        if s_end > end:
            s_end = end
        duration = max(0, s_end - s_start)
        before = ()  # type: Tuple[str, ...]
        if in_mempool:
            failures = []
            while slab_i < len(slabs) and slabs[slab_i][0] <= s_start:
                if slabs[slab_i][0] >= cursor:
                    failures.append(slabs[slab_i][1])
                slab_i += 1
            if failures:
                before = tuple(failures)
            cursor = s_end
            mempool_ns += duration
            spans.append((s_start, s_end))
        else:
            other_ns += duration
        waits.append((s_start, s_end, duration, in_mempool, s, before, blocked))
    st = _Stall()
    st.tid, st.comm, st.start_ns, st.end_ns, st.duration_ns = tid, comm or "?", start, end, end - start
    st.dev, st.ino, st.root, st.members = dev, ino, call, members
    st.waits, st.mempool_spans = waits, spans
    st.slabs = slabs
    st.mempool_ns, st.other_blocked_ns = mempool_ns, other_ns
    st.explained = st.duration_ns > 0 and mempool_ns >= EXPLAINED_SHARE * st.duration_ns
    st.container = _episode_container(wb_container, container, slabs)
    st.group = _group_of(st.container, cgroup)
    st.behind = None
    return st


def _episode_container(wb_container: Optional[Dict[str, Any]], task: Optional[Dict[str, Any]],
                       slabs: List[Tuple[int, str, Any]]) -> Optional[Dict[str, Any]]:
    """Whose stall it is: the bdi_writeback's cgroup (cgroup writeback), else the container a 3.10
    per-memcg cache of the failures names (the charge went there; the writer's own record of the same
    container is preferred, it carries the pod), else the writer's container."""
    if wb_container:
        return wb_container
    for _, _, charged in slabs:
        if charged:
            same = task and task.get("container_id") == charged.get("container_id")
            return task if same else charged
    return task


def _confidence(hit: int, unknown: int, sleeps_from: str, lost: int, malformed: int) -> Tuple[str, List[str]]:
    """high, medium or low, and why it is not high (HIT episodes ran while records were lost, UNKNOWN
    sleeps in them had no stack)."""
    levels = [HIGH]
    reasons = []

    def lower(to: str, why: str) -> None:
        levels.append(to)
        reasons.append(why)

    if sleeps_from == "sched_switch":
        lower(MEDIUM, "tracepoint fallback: mempool sleeps recognised by their kernel stack (no pool pointer; "
                      "'timed out' inferred from ~5 s sleeps)")
    elif sleeps_from == "none":
        lower(MEDIUM, "no sleep records: the stream has no mempool or D-state section")
    if hit:
        lower(LOW, "%d records lost while %d of the slow writebacks ran: their causes may be missing"
              % (lost, hit))
    elif lost:
        lower(MEDIUM, "%d records lost during the capture (outside the slow writebacks shown)" % lost)
    if unknown and sleeps_from == "sched_switch":
        lower(MEDIUM, "%d sleeps inside slow writebacks had no kernel stack: cannot tell whether they were "
                      "mempool waits" % unknown)
    if malformed:
        lower(MEDIUM, "%d records could not be used (missing or invalid fields)" % malformed)
    order = [HIGH, MEDIUM, LOW]
    return max(levels, key=order.index), reasons


def _verdict(r: Result, totals: _Totals) -> str:
    if not r.slow_writebacks:
        tail = "; %d mempool waits outside writeback" % r.mempool_waits_elsewhere if r.mempool_waits_elsewhere else ""
        return "no slow writeback in this capture%s" % tail
    head = "%d of %d slow writebacks (%d%%) were stalled in mempool_alloc" % (
        r.explained, r.slow_writebacks, round(100.0 * (r.fraction_explained or 0)))
    parts = [head]
    if totals.behind:
        parts[0] += " (%d of them behind another thread's mempool wait on the same inode)" % totals.behind
    if r.mempool_waits:
        parts.append("%ss of %ss blocked there in %d waits (%d timed out at 5 s, %d woken early)" % (
            _secs(r.mempool_ns), _secs(r.stalled_ns), r.mempool_waits, r.mempool_timeouts,
            r.mempool_waits - r.mempool_timeouts))
    if totals.preceded:
        parts.append("slab allocation failures preceded %d of the waits (%s)" % (totals.preceded,
                                                                                totals.caches.counted()))
    if r.other_blocking:
        top = ", ".join("%s %ss" % (f, _secs(ns)) for f, ns in r.other_blocking[:3])
        parts.append("other blocking: %s" % top)
    groups = [g for g in r.groups if g.explained]
    if groups:
        parts.append("stalls explained by the mempool in %s" % ", ".join(g.group for g in groups[:3]))
    return "; ".join(parts)


class _Folder(object):
    """Time blocked per stack, folded as stalls come: ``comm;outermost..;[after slab fail X];[mempool wait
    5.00s] ns``. Sleeps use their own stack (taken at the sleep); time of a stall not spent asleep is
    charged to the writeback's entry stack as ``[writeback other time]`` (running, or asleep unmeasured).
    Time is added up per line's parts: comm, then (the stack as a tuple (the sleeps' shared ones compare by
    identity), the slab failures before the sleep, its kind), then its seconds; the lines are made once, by
    :meth:`folded`."""

    OTHER_TIME = ";" + folded_stacks.annotation("writeback other time")

    def __init__(self) -> None:
        # comm -> (stack, slab failures before, in mempool) -> seconds -> ns; the last three None for other
        # time. By comm first: a stall's parts share it, and its text is new in each record (compared, not
        # identical). The seconds last: their texts are shared (_centis), and the parts above them few, so
        # that a stall's lookups stay among few, recently used keys
        self.parts = {}  # type: Dict[str, Dict[Tuple[Tuple[Any, ...], Any, Optional[bool]], Dict[Optional[str], int]]]

    def add(self, e: _Stall) -> None:
        parts = self.parts.get(e.comm)
        if parts is None:
            parts = self.parts[e.comm] = {}
        for _, _, duration, in_mempool, sleep, before, _ in e.waits:
            kstack = sleep[_S_KSTACK]
            key = (kstack if type(kstack) is tuple else tuple(kstack or ()), before, in_mempool)
            secs = _secs(duration)
            by_secs = parts.get(key)
            if by_secs is None:
                parts[key] = {secs: duration}
            else:
                by_secs[secs] = by_secs.get(secs, 0) + duration
        rest = e.duration_ns - e.mempool_ns - e.other_blocked_ns      # not asleep
        if rest > 0:
            key = (tuple(e.root[_C_KSTACK] or ()), None, None)
            by_secs = parts.get(key)
            if by_secs is None:
                parts[key] = {None: rest}
            else:
                by_secs[None] += rest

    def folded(self) -> Dict[str, int]:
        """The folded lines and their time (unsorted)."""
        lines = {}  # type: Dict[str, int]
        prefixes = {}  # type: Dict[Tuple[str, Tuple[Any, ...]], str]     # comm;outermost;..;innermost
        afters = {(): ""}  # type: Dict[Tuple[str, ...], str]     # the frame of the slab failures before a sleep
        for comm, parts in self.parts.items():
            for (kstack, failures, in_mempool), by_secs in parts.items():
                prefix = prefixes.get((comm, kstack))
                if prefix is None:
                    prefix = prefixes[(comm, kstack)] = ";".join(
                        folded_stacks.sanitize_frame(f) for f in [comm] + stacks.root_first(kstack))
                if failures is None:
                    line = prefix + self.OTHER_TIME
                    lines[line] = lines.get(line, 0) + by_secs[None]
                    continue
                after = afters.get(failures)
                if after is None:
                    after = afters[failures] = ";" + folded_stacks.annotation(
                        "after slab fail %s" % _counted(list(failures)))
                # folded_stacks.annotation of a label with nothing to sanitise
                head, kind = prefix + after, ";[mempool wait %ss]" if in_mempool else ";[blocked %ss]"
                for secs, ns in by_secs.items():
                    line = head + kind % secs
                    lines[line] = lines.get(line, 0) + ns
        return lines
