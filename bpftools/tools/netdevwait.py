"""netdevwait: network devices stuck in unregistration ("waiting for eth0 to become free"), live.

For each device whose unregistration waits for its references to go: name, ifindex, network namespace,
who used that namespace (pod, container, processes, the host side of its veth pair; the waiter itself is
a kworker), the reference count and what it means on this kernel (leaked = count - the device's own
base reference, 1 since v5.13), how long it has waited and how many times the kernel rebroadcast
NETDEV_UNREGISTER; and when the wait ends.

Modes (``--mode``):
- kprobe: the kernel's wait loop, at its rebroadcasts (probes/netdevwait.bpf.c). The loop itself
  (``netdev_wait_allrefs``/``netdev_wait_allrefs_any``) is static and inlined into ``netdev_run_todo``,
  and so is ``netdev_refcnt_read`` on Debian's 5.10 (measured: no call during a 4 s leak); a probe
  on ``netdev_run_todo`` would miss waits that began before the tool. So the resolver's
  ``raw_notifier_call_chain`` (each rebroadcast, with the device) and ``free_netdev`` (the end) are
  the hooks, and the count is summed from the device as netdev_refcnt_read() sums it; struct offsets
  come from BTF, ``__per_cpu_offset`` and ``netdev_chain`` from kallsyms.
- log (the last resort: no kprobes, no BTF): follows /dev/kmsg for the kernel's "waiting for DEV to
  become free. Usage count = N" message: devices by name only, seen every
  ``netdev_unregister_timeout_secs`` (10 s by default), no end of wait.
- ``--log FILE``: the same message in a saved log, summarised.

Episodes come from ``analyses.netdev_wait``; a recording keeps the observations, and ``bpftools
report`` replays them through the same analysis and renderer.
"""
import errno
import fnmatch
import heapq
import json
import os
import select
import signal
import stat
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import click
from dataclasses import dataclass, field

from ..analyses.netdev_wait import (FREED, ROUND, EpisodeTracker, Observation, Update, count_meaning,
                                    episodes_from_log, message_observation)
from ..analyses.netdev_chain import GLOBAL, NETNS, Call, ChainTracker, Link, folded_time
from ..capture import Attach, Outline, Probe, c_text, poll_events, try_attach
from ..errors import BadInput, MissingKernelFeature, PrivilegeError
from ..kernel.cgroups import memory_cgroup_of_pid
from ..kernel.hostroot import host_root
from ..kernel.log import available, kmsg_device, read_log_file
from ..kernel.pods import container_named
from ..kernel.structs import MEMBERS
from ..kernel.symbols import read_kallsyms, symbol_address, text_addresses
from ..kernel.target import Running, Target
from ..live import LiveRun, then, warn
from ..options import CONTEXT as CLI_CONTEXT, PATH, POSITIVE
from ..html_report import MAX_TIMELINE_MARKERS, FlameGraph, IncidentReport, Table
from ..pointers import PointerHider, Settings
from ..render import one_line
from ..signals import StopSignals

TOOL = "netdevwait"
AUTO, KPROBE, LOG = "auto", "kprobe", "log"
NDW_ROUND, NDW_FREED, NDW_LINK, NDW_CALL = 1, 2, 3, 4      # probes/netdevwait.h
NDW_CHAINS = {0: GLOBAL, 1: NETNS}                          # NDW_CHAIN_GLOBAL, NDW_CHAIN_NETNS
NDW_LINK_TRUNCATED = 1
OBS, CONTEXT, UPDATE, SUMMARY = "netdev_obs", "netns_context", "netdev_wait", "netdev_wait_summary"
LINK, CALL = "notifier_link", "notifier_call"
MODE_LABELS = {KPROBE: "kprobe mode", LOG: "kernel log mode", "log file": "log file"}
REFRESH_EVERY = 2.0          # seconds between snapshots of who uses which network namespace
# Records are handled in time order once this old: one CPU's perf buffer may be read seconds after
# another's (2.5 s seen in the lab VM), and the kworker that waits moves between CPUs.
REORDER_NS = 3 * 1000 * 1000 * 1000
MAX_USERS = 8                # processes remembered per namespace
# Struct members read from the device (-D offsets from BTF, kernel.structs), all needed.
FIELDS = ("OFF_DEV_NAME", "OFF_DEV_IFINDEX", "OFF_DEV_NET", "OFF_DEV_REG_STATE", "OFF_NET_NS", "OFF_NS_INUM")
# The reference count, one of: per-cpu counters or a refcount_t (see kernel.structs).
REFCOUNT_FIELDS = ("OFF_DEV_PCPU_REFCNT", "OFF_DEV_REFCNT")
# The notifier chain (all three to walk it; the per-namespace chain where the kernel has one, v5.7+).
CHAIN_FIELDS = ("OFF_NB_CALL", "OFF_NB_NEXT", "OFF_NB_PRIORITY")
NETNS_CHAIN_FIELD = "OFF_NET_NETDEV_CHAIN"
KALLSYMS_EVERY = 5.0         # seconds between reads of /proc/kallsyms for a callback not yet named
LOG_NOTE = ("devices are seen only when the kernel prints 'waiting for DEV to become free' (every "
            "net.core.netdev_unregister_timeout_secs, 10 s by default, fixed 10 s before 5.12), by name only, "
            "and the end of a wait is not visible, nor the notifier chain's subscribers, their calls or who "
            "dropped a reference (no leak or slow-release verdict)")
HEADER = "%-12s %-8s %-15s %7s %-11s %5s %6s %7s %8s  %s" % (
    "TIME(s)", "UPDATE", "DEVICE", "IFINDEX", "NETNS", "COUNT", "LEAKED", "ROUNDS", "WAITED", "WHERE")


# ---------------------------------------------------------------------------------------------
# Plan: which hooks this kernel offers
# ---------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """One run: kprobe mode (the program, its parameters and kprobes) or kernel log mode."""

    mode: str                                   # KPROBE | LOG
    params: Dict[str, int] = field(default_factory=dict)
    kprobes: List[Attach] = field(default_factory=list)
    hooks: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def probe(self) -> Any:
        return Probe(TOOL, self.params)

    def to_json(self, meaning: Dict[str, Any]) -> Dict[str, Any]:
        """The ``mode`` record written first in a recording."""
        return {"type": "mode", "mode": self.mode, "hooks": dict(self.hooks), "params": dict(self.params),
                "notes": list(self.notes), "meaning": dict(meaning)}

    def outline(self) -> Outline:
        return Outline(self.mode, [a.describe() for a in self.kprobes], list(self.notes))

    def describe(self) -> str:
        """What --ebpf prints: the plan, then (kprobe mode) the program with its cflags."""
        lines = ["// mode: %s" % self.mode] + ["// %s" % n for n in self.notes]
        lines += ["// attach " + a.describe() for a in self.kprobes]
        text = "\n".join(lines) + "\n"
        return text + self.probe().describe() if self.mode == KPROBE else text



def make_plan(requested: str, table: Any, kallsyms: List[str], offsets: Dict[str, int], kprobes_ok: bool,
              ncpus: int, subscribers: bool = True) -> Plan:
    """The plan for REQUESTED mode on a kernel described by its SymbolTable, /proc/kallsyms lines, BTF
    offsets (of FIELDS, REFCOUNT_FIELDS and CHAIN_FIELDS found), kprobes and its number of possible CPUs;
    SUBSCRIBERS: walk the notifier chain and time its callbacks.

    Raises MissingKernelFeature when kprobe mode is requested but impossible; auto falls back to log."""
    if requested == LOG:
        return Plan(LOG, notes=["kernel log mode (--mode log): " + LOG_NOTE])
    plan = Plan(KPROBE, params=dict((k, v) for k, v in offsets.items() if k in FIELDS))
    why = None
    if not kprobes_ok:
        why = "no kprobes"
    elif len(plan.params) < len(FIELDS):
        why = "no BTF for struct net_device (%s)" % ", ".join(
            "%s.%s" % MEMBERS[k][0] for k in FIELDS if k not in offsets)
    elif "OFF_DEV_PCPU_REFCNT" in offsets:
        per_cpu = symbol_address(kallsyms, "__per_cpu_offset")
        if per_cpu is None:
            why = "__per_cpu_offset is not in /proc/kallsyms (needs CONFIG_KALLSYMS_ALL) to sum the per-cpu count"
        else:
            plan.params.update(OFF_DEV_PCPU_REFCNT=offsets["OFF_DEV_PCPU_REFCNT"], PER_CPU_OFFSET=per_cpu,
                               NCPUS=ncpus)
    elif "OFF_DEV_REFCNT" in offsets:
        plan.params["OFF_DEV_REFCNT"] = offsets["OFF_DEV_REFCNT"]
    else:
        why = "no BTF for the device's reference count (net_device.pcpu_refcnt or dev_refcnt)"
    for role, wanted, handler in (("rounds", "raw_notifier_call_chain", "on_notify"), ("end", "free_netdev", "on_free")):
        if why:
            break
        resolution = table.resolve(wanted)
        if resolution.attach is None:
            why = "%s cannot be probed: %s" % (wanted, resolution.note)
        else:
            plan.kprobes.append(Attach(resolution.attach, handler))
            plan.hooks[role] = resolution.attach
    if why:
        if requested == KPROBE:
            raise MissingKernelFeature("kprobe mode of netdevwait (%s)" % why, fallback="--mode log")
        return Plan(LOG, notes=["kernel log mode (%s): %s" % (why, LOG_NOTE)])
    chain = symbol_address(kallsyms, "netdev_chain")
    if chain is not None:
        plan.params["NETDEV_CHAIN"] = chain
    plan.notes.append("kprobe mode: rounds from %s(%s, NETDEV_UNREGISTER) for unregistered devices, the end "
                      "from %s; count summed from %s" % (
                          plan.hooks["rounds"], "netdev_chain" if chain else "any chain", plan.hooks["end"],
                          "the per-cpu counters of %d CPUs" % ncpus if "NCPUS" in plan.params else "dev_refcnt"))
    plan.notes.append(_chain_plan(plan, offsets, subscribers))
    return plan


def _chain_plan(plan: Plan, offsets: Dict[str, int], subscribers: bool) -> str:
    """Add the notifier chain walk to PLAN where BTF describes struct notifier_block; returns its note."""
    if not subscribers:
        return "subscribers: off (--no-subscribers)"
    missing = [k for k in CHAIN_FIELDS if k not in offsets]
    if missing:
        return "subscribers: not shown, no BTF for %s" % ", ".join("%s.%s" % MEMBERS[k][0] for k in missing)
    plan.params.update((k, offsets[k]) for k in CHAIN_FIELDS)
    if NETNS_CHAIN_FIELD in offsets:
        plan.params[NETNS_CHAIN_FIELD] = offsets[NETNS_CHAIN_FIELD]
    plan.hooks["subscribers"] = "on_sub_entry/on_sub_return"
    return ("subscribers: the notifier blocks of %s walked at each round (at most 64 a chain), each callback "
            "found kprobed (entry and return) from then on: calls, time, return value, count before and after" % (
                "the namespace's chain and netdev_chain" if NETNS_CHAIN_FIELD in offsets else "netdev_chain"))


def target_plan(requested: str, target: Target, subscribers: bool = True) -> Plan:
    """make_plan for TARGET (the running kernel reads kallsyms, BTF and tracefs as root)."""
    if requested == LOG:
        return make_plan(LOG, None, [], {}, False, 1)
    target.prepare()
    if not target.kprobes().ok:
        return make_plan(requested, None, [], {}, False, 1)
    fields = FIELDS + REFCOUNT_FIELDS + CHAIN_FIELDS + (NETNS_CHAIN_FIELD,)
    return make_plan(requested, target.symbols(), target.kallsyms(), target.offsets(fields), True,
                     target.possible_slots(), subscribers)


# ---------------------------------------------------------------------------------------------
# Raw records and kernel log lines to observations
# ---------------------------------------------------------------------------------------------

def decode(raw: Any) -> Any:
    """The one place a raw netdevwait_event becomes an Observation, a chain Link or a Call (unnamed:
    :class:`Subscribers` names the callbacks)."""
    dev = "%#x" % raw.dev
    if raw.type == NDW_LINK:
        return Link(dev, int(raw.ts_ns), NDW_CHAINS.get(int(raw.chain), GLOBAL), int(raw.index), "%#x" % raw.nb,
                    "%#x" % raw.call, int(raw.priority), truncated=bool(raw.flags & NDW_LINK_TRUNCATED))
    if raw.type == NDW_CALL:
        return Call(dev, int(raw.ts_ns), int(raw.dur_ns), "%#x" % raw.nb, "%#x" % raw.call, int(raw.priority),
                    int(raw.ret), int(raw.count), int(raw.count_after))
    return Observation(ROUND if raw.type == NDW_ROUND else FREED, dev, ts_ns=int(raw.ts_ns),
                       count=int(raw.count), name=c_text(bytes(raw.name)), ifindex=int(raw.ifindex),
                       netns=int(raw.netns) or None, pid=int(raw.tid), comm=c_text(bytes(raw.comm)))


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns()."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e9)


class InOrder(object):
    """Records of all CPUs' perf buffers handed to ON_ITEM in ``ts_ns`` order, each once WINDOW_NS old by
    CLOCK (or at :meth:`flush`)."""

    def __init__(self, on_item: Callable[[Any], None], window_ns: int = REORDER_NS,
                 clock: Callable[[], int] = monotonic_ns) -> None:
        self._on_item = on_item
        self._window = window_ns
        self._clock = clock
        self._heap = []  # type: List[Any]
        self._seq = 0

    def push(self, item: Any) -> None:
        heapq.heappush(self._heap, (item.ts_ns, self._seq, item))
        self._seq += 1
        self.release()

    def release(self, everything: bool = False) -> None:
        """Hand on every record older than the window (all with EVERYTHING)."""
        limit = self._clock() - self._window
        while self._heap and (everything or self._heap[0][0] <= limit):
            self._on_item(heapq.heappop(self._heap)[2])

    def flush(self) -> None:
        self.release(True)


class Subscribers(object):
    """The callbacks the chain walks find: named from /proc/kallsyms (modules included; read again, at
    most every KALLSYMS_EVERY seconds, for an address it does not name yet) and, once each, kprobed at
    entry and return (on_sub_entry/on_sub_return) through ATTACH(Attach) -> None or why not. LINES: kallsyms
    as already read, indexed at once so that the first walk's callbacks are probed in its own round."""

    def __init__(self, attach: Optional[Callable[[Attach], Optional[str]]],
                 kallsyms: Callable[[], List[str]] = read_kallsyms, clock: Callable[[], float] = time.monotonic,
                 lines: Optional[List[str]] = None) -> None:
        self._attach = attach
        self._kallsyms = kallsyms
        self._clock = clock
        self._names = {}  # type: Dict[int, Any]            # address -> (name, module)
        self._counts = {}  # type: Dict[str, int]            # name -> text symbols of that name
        self._read_at = None  # type: Optional[float]
        self.attached = OrderedDict()  # type: Dict[str, Optional[str]]   # label -> None or why not timed
        if lines is not None:
            self._index(lines)

    def _read(self) -> None:
        self._index(self._kallsyms())

    def _index(self, lines: List[str]) -> None:
        self._read_at = self._clock()
        self._names, self._counts = {}, {}
        for (name, module), addrs in text_addresses(lines).items():
            self._counts[name] = self._counts.get(name, 0) + len(addrs)
            for addr in addrs:
                self._names[addr] = (name, module)

    def name(self, address: str) -> Any:
        """(symbol, module) of a callback address (``0x...``); (None, None) when kallsyms has none."""
        addr = int(address, 16)
        if addr and addr not in self._names and (
                self._read_at is None or self._clock() - self._read_at >= KALLSYMS_EVERY):
            self._read()
        return self._names.get(addr, (None, None))

    def named(self, item: Any, probe: bool = True) -> Any:
        """ITEM (a Link or Call) with its callback's symbol and module; with PROBE a Link's callback gets
        its probes."""
        if not item.call or int(item.call, 16) == 0:
            return item
        item.symbol, item.module = self.name(item.call)
        if probe and isinstance(item, Link) and self._attach is not None:
            self._probe(item)
        return item

    def _probe(self, link: Link) -> None:
        key = "%s [%s]" % (link.symbol, link.module) if link.module else str(link.symbol or link.call)
        if key in self.attached:
            return
        if link.symbol is None:
            why = "not in /proc/kallsyms"       # type: Optional[str]
        elif self._counts.get(link.symbol, 0) != 1:
            why = "%d text symbols are named %s" % (self._counts.get(link.symbol, 0), link.symbol)
        else:
            why = self._attach(Attach(link.symbol, "on_sub_return", ret=True)) or \
                self._attach(Attach(link.symbol, "on_sub_entry"))
        self.attached[key] = why
        if why:
            warn("subscriber %s not timed: %s" % (key, why))



def follow_log(path: str, on_line: Callable[[str], None], duration: Optional[float],
               ready: Optional[Callable[[], None]]) -> None:
    """Hand every line of PATH to ON_LINE: what it holds now, then what comes, until DURATION seconds
    pass or SIGTERM. /dev/kmsg gives one record per read; a regular file (tests) is polled."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES):
            raise PrivilegeError("reading the kernel log (%s)" % path)
        raise BadInput("cannot read %s: %s" % (path, err.strerror))
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    pending = [""]

    def drain() -> None:
        for data in available(fd):
            lines = (pending[0] + data.decode("utf-8", "replace")).split("\n")
            pending[0] = lines.pop()
            for line in lines:
                on_line(line)

    try:
        with StopSignals((signal.SIGTERM,)) as term:   # SIGTERM ends it like the duration (SIGINT raises)
            drain()
            if ready is not None:
                ready()
            deadline = None if duration is None else time.monotonic() + duration
            while term.received is None:
                wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if wait <= 0:
                    break
                if regular:
                    time.sleep(wait)
                else:
                    select.select([fd], [], [], wait)
                drain()
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Who used a network namespace
# ---------------------------------------------------------------------------------------------

def _netns_inode(link: str) -> Optional[int]:
    """The inode in a ``net:[4026531992]`` namespace link, or None."""
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return int(target[5:-1]) if target.startswith("net:[") and target.endswith("]") else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _links(sys_class_net: str) -> Dict[int, Dict[str, Any]]:
    """ifindex -> name, ifindex, iflink of the devices in a sysfs net class directory (a veth's iflink
    is its peer's ifindex, in the peer's namespace)."""
    try:
        names = os.listdir(sys_class_net)
    except OSError:
        return {}
    out = {}
    for name in names:
        ifindex = _read(os.path.join(sys_class_net, name, "ifindex"))
        iflink = _read(os.path.join(sys_class_net, name, "iflink"))
        if ifindex and iflink and ifindex.isdigit() and iflink.isdigit():
            out[int(ifindex)] = {"name": name, "ifindex": int(ifindex), "iflink": int(iflink)}
    return out


class NetnsUsers(object):
    """Who uses each network namespace, from snapshots of /proc, /run/netns and sysfs.

    A namespace being torn down has no processes left, so its last users are those of an earlier
    snapshot: :meth:`refresh` runs at start and every REFRESH_EVERY seconds, and nothing seen is
    forgotten. The veth peer comes from the namespace's own view of its devices (the sysfs under
    /proc/PID/root of a process in it: containers and ``ip netns exec`` mount one) matched with the host
    device whose ifindex is the peer's iflink and whose iflink is the device's ifindex. A namespace
    created and deleted between two snapshots, or one without processes, is known by its inode (and
    /run/netns name) only.
    """

    def __init__(self, root: Optional[str] = None) -> None:
        self.root = host_root() if root is None else root
        self.own = _netns_inode(self._path("proc/self/ns/net"))
        self.names = {}  # type: Dict[int, List[str]]
        self.users = {}  # type: Dict[int, OrderedDict]
        self.links = {}  # type: Dict[int, Dict[str, Any]]            # host ifindex -> device
        self.ns_links = {}  # type: Dict[int, Dict[int, Dict[str, Any]]]  # netns -> ifindex -> device
        self._pids = {}  # type: Dict[int, int]                       # pid -> its netns when last read

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def refresh(self) -> None:
        """Take one snapshot (entries that vanish while being read are skipped)."""
        for directory in ("run/netns", "var/run/netns"):
            try:
                entries = os.listdir(self._path(directory))
            except OSError:
                continue
            for name in entries:
                try:
                    inode = os.stat(os.path.join(self._path(directory), name)).st_ino
                except OSError:
                    continue
                if name not in self.names.setdefault(inode, []):
                    self.names[inode].append(name)
        pids = [int(entry) for entry in os.listdir(self._path("proc")) if entry.isdigit()]
        live = OrderedDict()  # type: Dict[int, int]                  # netns -> one of its processes
        for pid in pids:
            inode = self._look_at(pid)
            if inode is not None:
                live.setdefault(inode, pid)
        self._pids = dict((pid, self._pids[pid]) for pid in pids if pid in self._pids)
        self.links.update(_links(self._path("sys/class/net")))
        for inode, pid in live.items():
            self.ns_links.setdefault(inode, {}).update(_links(self._path("proc/%d/root/sys/class/net" % pid)))

    def _look_at(self, pid: int) -> Optional[int]:
        """Record PID as a user of its namespace (not ours); returns that namespace."""
        inode = _netns_inode(self._path("proc/%d/ns/net" % pid))
        if inode is None or inode == self.own:
            return None
        if self._pids.get(pid) != inode:
            self._pids[pid] = inode
            users = self.users.setdefault(inode, OrderedDict())
            users.pop(pid, None)
            users[pid] = {"pid": pid, "comm": _read(self._path("proc/%d/comm" % pid)),
                          "cgroup": memory_cgroup_of_pid(pid, self.root)}
            while len(users) > MAX_USERS:
                users.popitem(last=False)
        return inode

    def context(self, netns: Optional[int], ifindex: Optional[int]) -> Optional[Dict[str, Any]]:
        """What is known about the namespace NETNS and its device IFINDEX, or None."""
        if netns is None:
            return None
        users = list(self.users.get(netns, {}).values())
        containers = []  # type: List[Dict[str, Any]]
        for user in users:
            ref = container_named(user["cgroup"])
            if ref is not None and ref.to_json() not in containers:
                containers.append(ref.to_json())
        host = netns == self.own
        inner = self.ns_links.get(netns, {}).get(ifindex) if not host else None
        peer = self.links.get(inner["iflink"]) if inner else None
        peers = [{"name": peer["name"], "ifindex": peer["ifindex"]}] if peer and peer["iflink"] == ifindex else []
        return {"netns": netns, "host_netns": host, "netns_names": sorted(self.names.get(netns, [])),
                "processes": users, "containers": containers, "veth_peers": peers}


# ---------------------------------------------------------------------------------------------
# A run's episodes (live, or replayed from a recording) and their rendering
# ---------------------------------------------------------------------------------------------

class Session(object):
    """Episodes of one run with each device's context: the live tool and ``report`` both drive it."""

    def __init__(self, mode: str, meaning: Dict[str, Any], dev_pattern: Optional[str] = None) -> None:
        self.mode = mode
        self.meaning = meaning
        self.pattern = dev_pattern
        self.tracker = EpisodeTracker(meaning.get("base_references"))
        self.chains = ChainTracker()
        self.contexts = {}  # type: Dict[str, Optional[Dict[str, Any]]]

    @staticmethod
    def context_key(netns: Optional[int], ifindex: Optional[int]) -> str:
        return "%s:%s" % (netns, ifindex)

    def wanted(self, obs: Observation) -> bool:
        """OBS passes --dev and changes the episodes: exactly the observations a recording keeps."""
        if self.pattern and obs.name is not None and not fnmatch.fnmatchcase(obs.name, self.pattern):
            return False
        return self.tracker.relevant(obs)

    def feed(self, obs: Observation) -> Optional[Update]:
        update = self.tracker.feed(obs)
        if update is not None:
            episode = update.episode
            if update.what == "end":
                self.chains.end(episode.dev, update.ts_ns, episode.count)
            elif episode.rounds:        # the round's own time: a round read late is earlier than the last
                ts = update.ts_ns if update.what in ("waiting", "round") and update.ts_ns is not None \
                    else episode.last_round_ns
                self.chains.round(episode.dev, episode.name, episode.rounds, ts, episode.count)
        return update

    def chain_item(self, item: Any) -> bool:
        """Take a chain Link or Call of a waiting device; False (ignored) for any other device."""
        if not self.tracker.waiting(item.dev):
            return False
        if isinstance(item, Link):
            self.chains.link(item)
        else:
            self.chains.call(item)
        return True

    def update_json(self, update: Update) -> Dict[str, Any]:
        out = update.to_json()
        out["type"] = UPDATE
        out["context"] = self.contexts.get(self.context_key(update.episode.netns, update.episode.ifindex))
        chain = self.chains.open(update.episode.dev)
        if chain is not None:
            out["verdict"], out["evidence"] = chain.verdict()
        return out

    def summary_json(self) -> Dict[str, Any]:
        episodes = []
        for episode in self.tracker.episodes():
            data = episode.to_json()
            data["context"] = self.contexts.get(self.context_key(episode.netns, episode.ifindex))
            episodes.append(data)
        return {"type": SUMMARY, "mode": self.mode, "episodes": episodes, "meaning": self.meaning,
                "chains": [c.to_json() for c in self.chains.devices()]}


def _seconds(value: Optional[float]) -> str:
    return "?" if value is None else "%.1fs" % value


def _where(update: Dict[str, Any]) -> str:
    """Namespace names, pod/container, processes, veth peer and the waiter, compactly."""
    ctx = update.get("context") or {}
    parts = []
    if ctx.get("host_netns"):
        parts.append("host netns")
    parts += ["netns=%s" % n for n in ctx.get("netns_names", [])]
    for ref in ctx.get("containers", []):
        parts.append("pod=%s ctr=%s" % (ref.get("pod_uid") or "-", (ref.get("container_id") or "-")[:12]))
    if not ctx.get("containers"):
        parts += ["%s[%d]" % (p.get("comm"), p.get("pid")) for p in ctx.get("processes", [])[-3:]]
    parts += ["peer=%s" % p["name"] for p in ctx.get("veth_peers", [])]
    if update.get("waiter_comm"):
        parts.append("waiter=%s[%s]" % (update["waiter_comm"], update.get("waiter_pid")))
    return " ".join(parts) or "-"


def _rounds(data: Dict[str, Any]) -> str:
    if data.get("rounds") is not None:
        return str(data["rounds"])
    return "%dmsg" % data.get("messages", 0)


def update_line(update: Dict[str, Any]) -> str:
    """One live line: a device became stuck, or a round, count change, message or the end of its wait."""
    when = "%.6f" % (update["ts_ns"] / 1e9) if update.get("ts_ns") is not None else (update.get("last_stamp") or "-")
    return one_line("%-12s %-8s %-15s %7s %-11s %5s %6s %7s %8s  %s" % (
        when, update["update"], update.get("name") or update.get("dev"), update.get("ifindex") or "-",
        update.get("netns") or "-", update.get("count"), "?" if update.get("leaked") is None else update["leaked"],
        _rounds(update), _seconds(update.get("waited")), _where(update)))


def summary_lines(summary: Dict[str, Any]) -> List[str]:
    """The final table: one line per device wait, and what the count means."""
    episodes = summary.get("episodes", [])
    out = [one_line("netdevwait summary (%s): %d device wait(s) in unregister" % (
        MODE_LABELS.get(summary.get("mode"), summary.get("mode")), len(episodes)))]
    if episodes:
        out.append("%-15s %7s %-11s %5s %4s %6s %7s %8s %-8s %s" % (
            "DEVICE", "IFINDEX", "NETNS", "COUNT", "BASE", "LEAKED", "ROUNDS", "WAITED", "STATE", "WHERE"))
    for e in episodes:
        state = {True: "ended", False: "waiting", None: "no-end"}[e.get("ended")]
        out.append(one_line("%-15s %7s %-11s %5s %4s %6s %7s %8s %-8s %s" % (
            e.get("name") or e.get("dev"), e.get("ifindex") or "-", e.get("netns") or "-", e.get("count"),
            "?" if e.get("base") is None else e["base"], "?" if e.get("leaked") is None else e["leaked"],
            _rounds(e), _seconds(e.get("waited")), state, _where(e))))
    meaning = summary.get("meaning") or {}
    if meaning.get("explanation"):
        out.append(one_line("count meaning: %s [%s]" % (meaning["explanation"], meaning.get("basis"))))
    for chain in summary.get("chains", []):
        out += chain_lines(chain)
    return out


CHAIN_HEADER = "%3s %-6s %11s %-40s %6s %10s %9s  %s" % (
    "#", "CHAIN", "PRIORITY", "SUBSCRIBER [MODULE]", "CALLS", "TOTAL(us)", "MAX(us)", "RETURNS / COUNT CHANGES")


def chain_lines(chain: Dict[str, Any]) -> List[str]:
    """One device's notifier chain as it ran: verdict and evidence, then one line per subscriber."""
    out = [one_line("%s: %s (%s)" % (chain.get("name") or chain["dev"], chain["verdict"], "; ".join(chain["evidence"])))]
    if chain.get("truncated"):
        out.append("  chain longer than 64 notifier blocks: the rest is not listed")
    if not chain.get("subscribers"):
        return out
    out.append(CHAIN_HEADER)
    for s in chain["subscribers"]:
        returns = ", ".join("%s %d" % kv for kv in sorted(s["returns"].items()))
        changes = ", ".join("round %s %d->%d" % (c["round"], c["before"], c["after"]) for c in s["changes"])
        out.append(one_line("%3s %-6s %11d %-40s %6d %10.1f %9.1f  %s" % (
            "-" if s["index"] is None else s["index"], s["chain"], s["priority"], s["label"], s["calls"],
            s["total_ns"] / 1e3, s["max_ns"] / 1e3, "; ".join(p for p in (returns, changes) if p) or "-")))
    return out


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def _summarize_log_file(path: str, release: Optional[str], dev_pattern: Optional[str]) -> Dict[str, Any]:
    episodes, meaning = episodes_from_log(read_log_file(path), release)
    data = [dict(e.to_json(), context=None) for e in episodes
            if not dev_pattern or fnmatch.fnmatchcase(e.name or "", dev_pattern)]
    return {"type": SUMMARY, "mode": "log file", "episodes": data,
            "meaning": meaning or count_meaning(release, "given")}



def outline(target: Target) -> Outline:
    """The plan of ``bpftools netdevwait`` on TARGET, in words."""
    return target_plan(AUTO, target).outline()


@click.command(TOOL, context_settings=CLI_CONTEXT, epilog="""\b
Examples:
  bpftools netdevwait                  # devices stuck in unregister, live, until Ctrl-C
  bpftools netdevwait -d 60 --json     # 60 s, one JSON object per update, then a summary
  bpftools netdevwait --dev 'veth*' --record ndw.jsonl
  bpftools report ndw.jsonl --html ndw.html   # verdicts, subscribers, flame graph of their time
  bpftools netdevwait --no-subscribers # rounds and counts only: no chain walk, no callback probes
  bpftools netdevwait --mode log       # from the kernel's "waiting for" messages only
  bpftools netdevwait --log /var/log/kern.log --release 3.10.0-1127.el7.x86_64
""")
@click.option("--dev", "dev_pattern", metavar="PATTERN", help="Only devices whose name matches PATTERN ('veth*').")
@click.option("-d", "--duration", type=POSITIVE, metavar="SECONDS", help="Stop after SECONDS.")
@click.option("--mode", type=click.Choice((AUTO, KPROBE, LOG)), default=AUTO, show_default=True,
              help="kprobe: the wait loop's rebroadcasts (needs kprobes, BTF); log: its 'waiting for' messages.")
@click.option("--log", "log_path", metavar="FILE", help="Summarise a saved kernel log ('-' for stdin) instead.")
@click.option("--release", metavar="RELEASE", help="With --log: the kernel release the log came from.")
@click.option("--subscribers/--no-subscribers", default=True, show_default=True,
              help="kprobe mode: walk the notifier chain at each round and time each subscriber's callback.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one object per line).")
@click.option("--record", type=PATH, metavar="FILE", help="Also write a recording (JSON lines) to FILE.")
@click.option("--ready-file", type=PATH, metavar="FILE", hidden=True, help="Touch FILE once attached (for tests).")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the plan, BPF program and cflags, then exit.")
@click.option("--kmsg", "kmsg_path", hidden=True, help="The kernel log to follow (tests; default /dev/kmsg).")
def command(dev_pattern: Optional[str], duration: Optional[float], mode: str, log_path: Optional[str],
            release: Optional[str], subscribers: bool, as_json: bool, record: Optional[str], ready_file: Optional[str],
            ebpf: bool, kmsg_path: Optional[str]) -> None:
    """Devices stuck in unregister: who held them, the count and leaked references, rounds, wait time,
    and the notifier subscribers each round runs, with a leak / slow release verdict."""
    hider = PointerHider(Settings.show)         # kernel addresses (devices, notifier blocks) on stdout

    def emit(obj: Dict[str, Any], lines: List[str]) -> None:
        click.echo(json.dumps(hider.hide(obj), sort_keys=True) if as_json else hider.hide("\n".join(lines)))

    if log_path:
        if mode == KPROBE:
            raise click.UsageError("--log summarises a saved log; it cannot be combined with --mode kprobe")
        summary = _summarize_log_file(log_path, release, dev_pattern)
        with LiveRun(TOOL, record) as run:
            run.record({"type": "mode", "mode": "log file", "notes": [], "meaning": summary["meaning"]})
            run.record(summary)
        emit(summary, summary_lines(summary))
        return
    if release:
        raise click.UsageError("--release goes with --log (live modes use the running kernel's release)")
    target = Running()
    plan = target_plan(mode, target, subscribers)
    if ebpf:
        click.echo(plan.describe(), nl=False)
        return
    for note in plan.notes:
        warn(note)
    meaning = count_meaning(os.uname().release)
    session = Session(plan.mode, meaning, dev_pattern)
    users = NetnsUsers() if plan.mode == KPROBE else None
    with LiveRun(TOOL, record) as run:
        run.record(plan.to_json(meaning))
        if not as_json:
            click.echo(HEADER)

        def observe(obs: Optional[Observation]) -> None:
            if isinstance(obs, (Link, Call)):
                if session.chain_item(obs):
                    run.record(dict(obs.to_json(), type=LINK if isinstance(obs, Link) else CALL))
                return
            if obs is None or not session.wanted(obs):
                return
            run.record(dict(obs.to_json(), type=OBS))
            update = session.feed(obs)
            if update is None:
                return
            key = Session.context_key(update.episode.netns, update.episode.ifindex)
            if users is not None and key not in session.contexts:
                session.contexts[key] = users.context(update.episode.netns, update.episode.ifindex)
                run.record({"type": CONTEXT, "key": key, "context": session.contexts[key]})
            out = session.update_json(update)
            emit(out, [update_line(out)])

        def finish() -> None:
            summary = session.summary_json()
            emit(summary, summary_lines(summary))

        with then(finish):
            if plan.mode == KPROBE:
                users.refresh()
                bpf = plan.probe().load(plan.kprobes)
                callbacks = Subscribers(lambda probe: try_attach(bpf, probe), lines=target.kallsyms()
                                        if "subscribers" in plan.hooks else None)
                ordered = InOrder(observe)

                def receive(raw: Any) -> None:
                    """Name a chain's callbacks (and probe those of watched devices) as soon as a walk
                    finds them; everything else waits its turn."""
                    item = decode(raw)
                    if isinstance(item, (Link, Call)):
                        callbacks.named(item, probe=not dev_pattern or fnmatch.fnmatchcase(
                            c_text(bytes(raw.name)), dev_pattern))
                    ordered.push(item)

                def tick() -> None:
                    users.refresh()
                    ordered.release()

                poll_events(bpf, "events", receive, duration=duration, ready=run.ready_callback(ready_file),
                            on_lost=run.add_lost, tick_every=REFRESH_EVERY, on_tick=tick, on_end=ordered.flush)
            else:
                kernel = os.uname().release
                follow_log(kmsg_path or kmsg_device(), lambda line: observe(message_observation(line, kernel)), duration,
                           run.ready_callback(ready_file))


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a netdevwait recording (its events read once): the observations replayed
    through the same analysis, so the same lines as the live run."""
    def say(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True, highlight=False)

    log_file = False
    for kind, obj in replayed(rec.events):
        if kind == "mode":
            for note in obj.get("notes", []):
                say(one_line("# %s" % note))
            log_file = obj.get("mode") == "log file"
            if not log_file:
                say(HEADER)
        elif kind == "update" and not log_file:
            say(update_line(obj))
        elif kind == ("summary" if log_file else "end"):       # a --log run's own summary, else the replay's
            say("\n".join(summary_lines(obj)))


def replayed(events: Iterable[Dict[str, Any]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """A recording's EVENTS (read once) replayed through a Session: ("mode", the run's mode record, its
    first; {} when it has none), ("update", ...) per update of the episodes (with its device's context,
    recorded right after the observation that first updated that device), ("summary", ...) per summary
    a --log run recorded, and last ("end", the session's summary)."""
    session = None  # type: Optional[Session]
    pending = []  # type: List[Tuple[str, Dict[str, Any]]]     # (context key, update) awaiting its context
    for obj in events:
        kind = obj.get("type")
        if session is None:
            mode = obj if kind == "mode" else {}
            session = Session(mode.get("mode", "?"), mode.get("meaning") or {})
            yield "mode", mode
        if kind == CONTEXT:
            session.contexts[obj["key"]] = obj.get("context")
            for key, update in pending:
                if key == obj["key"]:
                    update["context"] = obj.get("context")
            continue
        for _, update in pending:
            yield "update", update
        pending = []
        if kind == OBS:
            found = session.feed(Observation.from_json(obj))
            if found is not None:
                pending.append((Session.context_key(found.episode.netns, found.episode.ifindex),
                                session.update_json(found)))
        elif kind == LINK:
            session.chain_item(Link.from_json(obj))
        elif kind == CALL:
            session.chain_item(Call.from_json(obj))
        elif kind == SUMMARY:
            yield "summary", obj
    if session is None:
        session = Session("?", {})
        yield "mode", {}
    for _, update in pending:
        yield "update", update
    yield "end", session.summary_json()


def incident_report(header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: str) -> Any:
    """The HTML/flame-graph report of a netdevwait recording (EVENTS read once): the verdict per device,
    each device's subscribers, and a flame graph of the time spent in them across the rounds. The
    timeline marks the first MAX_TIMELINE_MARKERS updates."""
    mode = {}  # type: Dict[str, Any]
    timeline = []  # type: List[Tuple[int, str, str]]
    unmarked = 0
    recorded = None  # type: Optional[Dict[str, Any]]     # the summary a --log run recorded
    for kind, obj in replayed(events):
        if kind == "mode":
            mode = obj
        elif kind == "update" and obj.get("ts_ns") is not None:
            if len(timeline) < MAX_TIMELINE_MARKERS:
                timeline.append((obj["ts_ns"], "%s %s" % (obj["update"], obj.get("name") or obj["dev"]), obj["update"]))
            else:
                unmarked += 1
        elif kind == "summary" and recorded is None:
            recorded = obj
        elif kind == "end":
            summary = obj
    if mode.get("mode") == "log file" and recorded is not None:
        summary = recorded
    chains = summary.get("chains", [])
    leaks = [c for c in chains if c["verdict"] == "leak"]
    verdict = {
        "incident": "netdev_unregister_wait", "title": "Devices waiting in unregister",
        "status": "detected" if summary["episodes"] else "clear",
        "summary": "%d device wait(s); %s" % (len(summary["episodes"]), ", ".join(
            "%s: %s" % (c.get("name") or c["dev"], c["verdict"]) for c in chains) or "no chain seen"),
        "evidence": ["%s: %s" % (c.get("name") or c["dev"], e) for c in chains for e in c["evidence"]][:20],
        "remediation": ["a leak: find the holder (bpftools refleak --strategy watch)"] if leaks else [],
    }
    rows = [[c.get("name") or c["dev"], c["verdict"], s["index"], s["chain"], s["priority"], s["label"], s["calls"],
             round(s["total_ns"] / 1e3, 1), round(s["max_ns"] / 1e3, 1),
             ", ".join("%s %d" % kv for kv in sorted(s["returns"].items())),
             ", ".join("round %s %d->%d" % (x["round"], x["before"], x["after"]) for x in s["changes"])]
            for c in chains for s in c["subscribers"]]
    episodes = [[e.get("name") or e["dev"], e.get("ifindex"), e.get("netns"), e.get("count"), e.get("leaked"),
                 _rounds(e), e.get("waited"), e.get("ended")] for e in summary["episodes"]]
    return IncidentReport(
        title="netdevwait: devices waiting in unregister", command=list(header.get("argv", [])), generated=generated,
        kernel_release=str(header.get("kernel_release", "")), verdicts=[verdict],
        tables=[Table("Device waits", ["device", "ifindex", "netns", "count", "leaked", "rounds", "waited (s)",
                                       "ended"], episodes),
                Table("Notifier subscribers per device", ["device", "verdict", "#", "chain", "priority", "subscriber",
                                                          "calls", "total (us)", "max (us)", "returns",
                                                          "count changes"], rows)],
        timeline=timeline,
        flame_graphs=[FlameGraph("Time in notifier subscribers across the rounds", folded_time(chains),
                                 unit="us", name="netdevwait-subscribers")],
        notes=list(mode.get("notes", [])) + (["the timeline marks the first %d updates: %d more not marked"
                                              % (MAX_TIMELINE_MARKERS, unmarked)] if unmarked else []),
        capabilities=header.get("capabilities"),
        tool_version=str(header.get("version", "")))
