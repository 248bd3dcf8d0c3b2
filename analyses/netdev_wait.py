"""Wait episodes of network devices stuck in unregistration ("waiting for DEV to become free").

Input is a stream of :class:`Observation` s: from the netdevwait probes, each ``NETDEV_UNREGISTER``
rebroadcast the kernel's unregister wait loop makes for a device, with its reference count
(``round``), and the device's release (``freed``); or, from the kernel log, each
``unregister_netdevice: waiting for DEV to become free. Usage count = N`` message (``message``).
Output is one :class:`Episode` per device and wait: first and last seen, rebroadcast rounds (or log
messages), the reference count and what it means (leaked = count - base), and whether the wait ended.

The base reference: since v5.13 (919067cc845f "net: add CONFIG_PCPU_DEV_REFCNT" and its fix "net:
set initial device refcount to 1") an unregistering device keeps one reference of its own and the
wait loop waits for the count to drop to 1; before, it waits for 0. That rule lives in
``kernel_log`` (the one definition); :func:`count_meaning` asks it.

Pure: no I/O, no clock. The same stream gives the same episodes, live or from a recording.

Example::

    >>> t = EpisodeTracker(base=1)
    >>> t.feed(Observation(ROUND, "0xff01", ts_ns=0, count=2, name="eth0")).what
    'waiting'
    >>> t.feed(Observation(FREED, "0xff01", ts_ns=3000000000, count=1)).episode.leaked
    0
"""
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .kernel_log import usage_count_meaning, find_incidents, parse_line
from .records import JsonRecord

ROUND, FREED, MESSAGE = "round", "freed", "message"
# The wait loop rebroadcasts at most once a second (``rebroadcast_time + 1 * HZ`` in
# netdev_wait_allrefs(_any), 3.10 to 6.18), and one rebroadcast may reach a probe more than once
# (the per-netns and the global notifier chains): observations closer than this are one round.
ROUND_GAP_NS = 500 * 1000 * 1000
LATE_ROUNDS = 8             # a round record may come after this many later ones and still be told apart
_WAIT_MESSAGE = "unregister_netdevice: waiting for"


@dataclass
class Observation(JsonRecord):
    """One thing seen about a device in unregistration.

    ``dev`` identifies the device: the ``struct net_device`` address (``0x...``) from the probes, the
    name from the kernel log.
    """

    kind: str                       # ROUND | FREED | MESSAGE
    dev: str
    ts_ns: Optional[int] = None     # monotonic ns (bpf_ktime_get_ns, or the printk stamp)
    count: Optional[int] = None     # the reference count ("Usage count" in a message)
    name: Optional[str] = None
    ifindex: Optional[int] = None
    netns: Optional[int] = None     # inode of the device's network namespace
    pid: Optional[int] = None       # the task that waits (a kworker running netdev_run_todo)
    comm: Optional[str] = None
    stamp: Optional[str] = None     # MESSAGE: the log stamp as printed


@dataclass
class Episode:
    """One device's wait in unregistration.

    ``rounds`` counts NETDEV_UNREGISTER rebroadcasts (probes; None from the kernel log),
    ``messages`` the kernel's "waiting for" messages (kernel log). ``ended`` is None when the source
    cannot tell (the kernel log prints nothing when a wait ends). ``waited_s`` is set only where no
    monotonic stamps exist (a log with wall-clock stamps): the duration kernel_log computed.
    """

    dev: str
    name: Optional[str]
    count: int                      # the last reference count seen
    base: Optional[int]             # the device's own reference: 1 since v5.13, else 0; None unknown
    max_count: int = 0
    ifindex: Optional[int] = None
    netns: Optional[int] = None
    first_ns: Optional[int] = None
    last_ns: Optional[int] = None
    first_stamp: Optional[str] = None
    last_stamp: Optional[str] = None
    rounds: Optional[int] = None
    messages: int = 0
    ended: Optional[bool] = False
    waiter_pid: Optional[int] = None
    waiter_comm: Optional[str] = None
    waited_s: Optional[float] = None
    last_round_ns: Optional[int] = None

    @property
    def leaked(self) -> Optional[int]:
        """References still held beyond the device's own: the leak."""
        return self.count - self.base if self.base is not None else None

    @property
    def waited(self) -> Optional[float]:
        """Seconds from the first to the last observation: a lower bound, as the wait began before
        the first rebroadcast (1 s) or message (netdev_unregister_timeout_secs)."""
        if self.first_ns is not None and self.last_ns is not None:
            return round((self.last_ns - self.first_ns) / 1e9, 6)
        return self.waited_s

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        del out["last_round_ns"]
        out["leaked"] = self.leaked
        out["waited"] = self.waited
        return out

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "Episode":
        return cls(**dict((k, obj.get(k)) for k in cls.__dataclass_fields__ if k in obj))  # type: ignore


@dataclass
class Update:
    """What changed for a waiting device: ``waiting`` (first report), ``round``, ``count``,
    ``message`` or ``end``; ``episode`` is a copy taken then and ``ts_ns`` the observation's time."""

    what: str
    ts_ns: Optional[int]
    episode: Episode

    def to_json(self) -> Dict[str, Any]:
        out = self.episode.to_json()
        out.update({"update": self.what, "ts_ns": self.ts_ns})
        return out


class EpisodeTracker(object):
    """Turns observations into episodes, one open episode per device at a time.

    A ``round`` above BASE opens an episode (the kernel rebroadcast for it: it waits) or counts a
    round of the open one; ``freed``, or a round at or below BASE (5.10 waits for 0, 6.x for 1), ends
    it. A ``message`` opens or continues the device's episode and never ends it.
    """

    def __init__(self, base: Optional[int]) -> None:
        self.base = base
        self._open = OrderedDict()  # type: Dict[str, Episode]
        # the times of each open episode's latest rounds: a round can come late (another CPU's buffer)
        self._round_times = {}  # type: Dict[str, List[int]]
        self._done = []  # type: List[Episode]
        self._ended_at = {}  # type: Dict[str, int]      # dev -> when its last episode ended

    def _stale(self, obs: Observation) -> bool:
        """OBS is from before the end of its device's last episode (a record read late from another
        CPU's buffer): it must not open a new one."""
        end = self._ended_at.get(obs.dev)
        return end is not None and obs.ts_ns is not None and obs.ts_ns <= end

    def _floor(self) -> int:
        return self.base if self.base is not None else 0

    def relevant(self, obs: Observation) -> bool:
        """True when OBS changes the state (a recording needs only these to replay the same)."""
        if obs.kind == MESSAGE:
            return obs.count is not None
        if self._stale(obs):
            return False
        if obs.dev in self._open:
            return obs.kind == FREED or obs.count is not None
        return obs.kind == ROUND and obs.count is not None and obs.count > self._floor()

    def feed(self, obs: Observation) -> Optional[Update]:
        """Take one observation; returns the update to report, if any."""
        if not self.relevant(obs):
            return None
        episode = self._open.get(obs.dev)
        if obs.kind == MESSAGE:
            return self._message(obs, episode)
        if episode is None:
            episode = self._open[obs.dev] = Episode(
                dev=obs.dev, name=obs.name, count=obs.count, base=self.base, max_count=obs.count,
                first_ns=obs.ts_ns, rounds=0)
        what = None
        if obs.ts_ns is not None:
            episode.last_ns = obs.ts_ns if episode.last_ns is None else max(episode.last_ns, obs.ts_ns)
        for attr in ("name", "ifindex", "netns"):
            if getattr(obs, attr) is not None:
                setattr(episode, attr, getattr(obs, attr))
        if obs.pid is not None:
            episode.waiter_pid, episode.waiter_comm = obs.pid, obs.comm
        if obs.count is not None:
            what = "count" if obs.count != episode.count else None
            episode.count = obs.count
            episode.max_count = max(episode.max_count, obs.count)
        if obs.kind == FREED or episode.count <= self._floor():
            episode.ended = True
            del self._open[episode.dev]
            self._round_times.pop(episode.dev, None)
            if obs.ts_ns is not None:
                self._ended_at[episode.dev] = obs.ts_ns
            self._done.append(episode)
            return Update("end", obs.ts_ns, replace(episode))
        last = episode.last_round_ns
        times = self._round_times.setdefault(episode.dev, [])
        if last is None or (obs.ts_ns is not None and all(abs(obs.ts_ns - t) >= ROUND_GAP_NS for t in times)):
            episode.rounds += 1
            if obs.ts_ns is not None:
                times.append(obs.ts_ns)
                del times[:-LATE_ROUNDS]
                episode.last_round_ns = obs.ts_ns if last is None else max(last, obs.ts_ns)
            what = "waiting" if episode.rounds == 1 else "round"
        return Update(what, obs.ts_ns, replace(episode)) if what else None

    def _message(self, obs: Observation, episode: Optional[Episode]) -> Update:
        if episode is None:
            episode = self._open[obs.dev] = Episode(
                dev=obs.dev, name=obs.name, count=obs.count, base=self.base, max_count=obs.count,
                first_ns=obs.ts_ns, first_stamp=obs.stamp, ended=None)
        episode.messages += 1
        episode.count = obs.count
        episode.max_count = max(episode.max_count, obs.count)
        episode.last_ns, episode.last_stamp = obs.ts_ns, obs.stamp
        return Update("waiting" if episode.messages == 1 else "message", obs.ts_ns, replace(episode))

    def waiting(self, dev: str) -> bool:
        """True while DEV has an open episode."""
        return dev in self._open

    def episodes(self) -> List[Episode]:
        """Episodes, ended and still waiting, in the order they started."""
        found = self._done + list(self._open.values())
        return [replace(e) for e in sorted(found, key=lambda e: (e.first_ns is None, e.first_ns or 0))]


def count_meaning(release: Optional[str], source: str = "running kernel") -> Dict[str, Any]:
    """What the count means on RELEASE: ``base_references`` (1, 0 or None), ``basis`` and
    ``explanation``; the rule is kernel_log's."""
    return dict(usage_count_meaning(release, source, False))


def message_observation(record: str, release: Optional[str]) -> Optional[Observation]:
    """The MESSAGE observation of one kernel log record (a /dev/kmsg record or a dmesg line), or None."""
    if _WAIT_MESSAGE not in record:
        return None
    found = [f for f in find_incidents([record], kernel_release=release) if f.kind == "netdev_unregister_wait"]
    if not found:
        return None
    device = found[0].facts["devices"][0]
    line = parse_line(record)
    ts = int(round(line.monotonic * 1e9)) if line.monotonic is not None else None
    return Observation(MESSAGE, device["name"], ts_ns=ts, count=device["last_usage_count"],
                       name=device["name"], stamp=line.timestamp)


def episodes_from_log(lines: Iterable[str], release: Optional[str] = None
                      ) -> Tuple[List[Episode], Optional[Dict[str, Any]]]:
    """Episodes of a saved kernel log (one per device name, as kernel_log groups them) and the count's
    meaning; RELEASE defaults to the one printed in the log. Duplicate copies of a message (a syslog
    wall broadcast of a dmesg line) count once."""
    found = [f for f in find_incidents(lines, kernel_release=release) if f.kind == "netdev_unregister_wait"]
    if not found:
        return [], None
    meaning = dict(found[0].facts["leaked_references"])
    episodes = [Episode(dev=d["name"], name=d["name"], count=d["last_usage_count"], base=meaning["base_references"],
                        max_count=d["max_usage_count"], first_stamp=d["first_seen"], last_stamp=d["last_seen"],
                        messages=d["distinct_events"], ended=None, waited_s=d["duration_seconds"])
                for d in found[0].facts["devices"]]
    return episodes, meaning
