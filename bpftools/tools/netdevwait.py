"""netdevwait: network devices stuck in unregistration ("waiting for eth0 to become free"), live.

For each device whose unregistration waits for its references to go: name, ifindex, network namespace,
who used that namespace (pod, container, processes, the host side of its veth pair; the waiter itself is
a kworker), the reference count and what it means on this kernel (leaked = count - the device's own
base reference, 1 since v5.13), how long it has waited and how many times the kernel rebroadcast
NETDEV_UNREGISTER; and when the wait ends.

Modes (``--mode``):
- kprobe: the kernel's wait loop itself (probes/netdevwait.bpf.c). Attach points come from the symbol
  resolver: ``netdev_refcnt_read`` (count, via kretprobe) filtered to calls from the wait loop's code
  (``netdev_wait_allrefs``/``netdev_wait_allrefs_any`` where it is a symbol, and ``netdev_run_todo``
  it is often inlined into), and ``raw_notifier_call_chain`` for the rebroadcasts.
- log (the last resort, e.g. without kprobes): follows /dev/kmsg for the kernel's "waiting for DEV to
  become free. Usage count = N" message: devices by name only, seen every
  ``netdev_unregister_timeout_secs`` (10 s by default), no end of wait.
- ``--log FILE``: the same message in a saved log, summarised.

Episodes come from ``analyses.netdev_wait``; a recording keeps the observations, and ``bpftools
report`` replays them through the same analysis and renderer.
"""
import errno
import fnmatch
import json
import os
import select
import signal
import stat
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import click
from dataclasses import dataclass, field

from ..analyses.netdev_wait import (NOTIFY, READ, EpisodeTracker, Observation, Update, count_meaning,
                                    episodes_from_log, message_observation)
from ..cgroups import container_of, memory_cgroup_of_pid
from ..errors import BadInput, MissingKernelFeature, PrivilegeError
from . import _iocommon as io

TOOL = "netdevwait"
AUTO, KPROBE, LOG = "auto", "kprobe", "log"
NDW_READ, NDW_NOTIFY, NDW_F_FIELDS = 1, 2, 1          # probes/netdevwait.h
OBS, CONTEXT, UPDATE, SUMMARY = "netdev_obs", "netns_context", "netdev_wait", "netdev_wait_summary"
MODE_LABELS = {KPROBE: "kprobe mode", LOG: "kernel log mode", "log file": "log file"}
REFRESH_EVERY = 2.0          # seconds between snapshots of who uses which network namespace
MAX_USERS = 8                # processes remembered per namespace
# Struct members read from the device (-D offsets from BTF).
FIELDS = OrderedDict([
    ("OFF_DEV_NAME", [("net_device", "name")]),
    ("OFF_DEV_IFINDEX", [("net_device", "ifindex")]),
    ("OFF_DEV_NET", [("net_device", "nd_net")]),
    ("OFF_NET_NS", [("net", "ns")]),
    ("OFF_NS_INUM", [("ns_common", "inum")]),
])
LOG_NOTE = ("devices are seen only when the kernel prints 'waiting for DEV to become free' (every "
            "net.core.netdev_unregister_timeout_secs, 10 s by default, fixed 10 s before 5.12), by name only, "
            "and the end of a wait is not visible")
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
    flags: List[str] = field(default_factory=list)
    kprobes: List[io.Attach] = field(default_factory=list)
    hooks: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def probe(self) -> Any:
        from ..capture import Probe
        return Probe(TOOL, self.params, self.flags)

    def to_json(self, meaning: Dict[str, Any]) -> Dict[str, Any]:
        """The ``mode`` record written first in a recording."""
        return {"type": "mode", "mode": self.mode, "hooks": dict(self.hooks), "params": dict(self.params),
                "flags": list(self.flags), "notes": list(self.notes), "meaning": dict(meaning)}

    def describe(self) -> str:
        """What --ebpf prints: the plan, then (kprobe mode) the program with its cflags."""
        lines = ["// mode: %s" % self.mode] + ["// %s" % n for n in self.notes]
        lines += ["// attach %s %s -> %s" % ("kretprobe" if a.ret else "kprobe", a.event, a.fn_name)
                  for a in self.kprobes]
        text = "\n".join(lines) + "\n"
        return text + self.probe().describe() if self.mode == KPROBE else text


def function_ranges(kallsyms: Iterable[str], names: Iterable[str]) -> List[Tuple[str, int, int]]:
    """``(name, start, end)`` of the vmlinux text symbols NAMES, in that order: kallsyms has no sizes,
    so a function ends where the next text symbol starts. Absent names and hidden (zero) addresses
    (kptr_restrict) are left out."""
    wanted = list(OrderedDict.fromkeys(names))
    starts = {}  # type: Dict[str, int]
    addresses = []
    for line in kallsyms:
        parts = line.split()
        if len(parts) != 3 or parts[1] not in "tTwW":     # module symbols have a fourth column
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        addresses.append(addr)
        if parts[2] in wanted and parts[2] not in starts:
            starts[parts[2]] = addr
    out = []
    for name in wanted:
        start = starts.get(name)
        end = min((a for a in addresses if a > start), default=None) if start else None
        if start and end:
            out.append((name, start, end))
    return out


def make_plan(requested: str, table: Any, kallsyms: Iterable[str], offsets: Dict[str, int], kprobes_ok: bool,
              headers: bool = False, net_proc_inum: bool = False) -> Plan:
    """The plan for REQUESTED mode on a kernel described by its SymbolTable, /proc/kallsyms lines, BTF
    offsets (FIELDS found), whether it has kprobes and whether its own headers are installed.

    Raises MissingKernelFeature when kprobe mode is requested but impossible; auto falls back to log."""
    if requested == LOG:
        return Plan(LOG, notes=["kernel log mode (--mode log): " + LOG_NOTE])
    why, read, scope = None, None, []
    if not kprobes_ok:
        why = "no kprobes"
    else:
        read = table.resolve("netdev_refcnt_read")
        wait = table.resolve("netdev_wait_allrefs")
        names = [n for n in (wait.attach, "netdev_run_todo") if n and table.has(n)]
        scope = function_ranges(kallsyms, names)
        if read.attach is None:
            why = "netdev_refcnt_read cannot be probed: %s" % read.note
        elif not scope:
            why = "the wait loop's code (%s) has no address in /proc/kallsyms (kptr_restrict?)" % (
                ", ".join(names) or "netdev_run_todo")
    if why:
        if requested == KPROBE:
            raise MissingKernelFeature("kprobes on the unregister wait loop (%s)" % why, fallback="--mode log")
        return Plan(LOG, notes=["kernel log mode (%s): %s" % (why, LOG_NOTE)])
    plan = Plan(KPROBE, hooks={"count": read.attach, "wait_loop": [name for name, _, _ in scope]})
    # kretprobe first: kprobes at one address run newest first, so the entry handler reads the return
    # address before the kretprobe replaces it with its trampoline.
    plan.kprobes = [io.Attach(read.attach, "on_refcnt_return", ret=True), io.Attach(read.attach, "on_refcnt_read")]
    for i, (_, start, end) in enumerate(scope[:2]):
        plan.params["WAIT_START%d" % i], plan.params["WAIT_END%d" % i] = start, end
    plan.notes.append("kprobe mode: counts from %s called by %s" % (
        read.attach, " or ".join("%s [%#x, %#x)" % r for r in scope[:2])))
    rounds = table.resolve("raw_notifier_call_chain")
    if rounds.attach:
        plan.flags.append("WANT_ROUNDS")
        plan.kprobes.append(io.Attach(rounds.attach, "on_notify"))
        plan.hooks["rounds"] = rounds.attach
    else:
        plan.notes.append("rebroadcast rounds are not counted: %s" % rounds.note)
    if len(offsets) == len(FIELDS):
        plan.params.update(offsets)
        plan.notes.append("device name, ifindex and netns: struct offsets from BTF")
    elif headers:
        plan.flags.append("HAVE_MATCHING_HEADERS")
        if net_proc_inum:
            plan.flags.append("NET_PROC_INUM")
        plan.notes.append("device name, ifindex and netns: struct offsets from this kernel's headers (no BTF)")
    else:
        plan.notes.append("device name, ifindex and netns unknown (no BTF, no matching kernel headers): "
                          "devices are shown by address")
    return plan


def _has_ns_common() -> bool:
    """True when this kernel's struct net has ``ns`` (struct ns_common, since 3.19, 435d5f4bb2cc)."""
    for tree in ("build", "source"):
        try:
            with open("/lib/modules/%s/%s/include/net/net_namespace.h" % (os.uname().release, tree)) as f:
                return "struct ns_common" in f.read()
        except OSError:
            continue
    return True


def system_plan(requested: str) -> Plan:
    """make_plan for the running kernel (reads kallsyms, BTF and tracefs as root)."""
    if requested == LOG:
        return make_plan(LOG, None, [], {}, False)
    io.tracing_ready()
    if not io.kprobes_available():
        return make_plan(requested, None, [], {}, False)
    from ..symbols import SymbolTable
    from . import _btf
    table = SymbolTable.from_system()
    with open("/proc/kallsyms") as f:
        kallsyms = f.read().splitlines()
    offsets = _btf.offsets(dict(FIELDS))
    headers = len(offsets) < len(FIELDS) and io.headers_match_running_kernel()
    return make_plan(requested, table, kallsyms, offsets, True, headers, headers and not _has_ns_common())


# ---------------------------------------------------------------------------------------------
# Raw records and kernel log lines to observations
# ---------------------------------------------------------------------------------------------

def decode(raw: Any) -> Observation:
    """The one place a raw netdevwait_event becomes an Observation."""
    ts, comm = int(raw.ts_ns), io.text(bytes(raw.comm))
    if raw.type == NDW_NOTIFY:
        return Observation(NOTIFY, "%#x" % raw.dev, ts_ns=ts, alt_dev="%#x" % raw.data, pid=int(raw.tid), comm=comm)
    fields = bool(raw.flags & NDW_F_FIELDS)
    return Observation(READ, "%#x" % raw.dev, ts_ns=ts, count=int(raw.count),
                       name=io.text(bytes(raw.name)) if fields else None,
                       ifindex=int(raw.ifindex) if fields else None,
                       netns=int(raw.netns) if fields and raw.netns else None, pid=int(raw.tid), comm=comm)


class _StopOnTerm(object):
    """SIGTERM ends the log follower like the duration does (SIGINT stays KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.stopped = False
        self._old = None  # type: Any

    def _handler(self, signum: int, frame: Any) -> None:
        self.stopped = True

    def __enter__(self) -> "_StopOnTerm":
        self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self._old)


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
        while True:
            try:
                data = os.read(fd, 8192)
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    return
                if err.errno == errno.EPIPE:      # records overwritten before we read them
                    continue
                raise
            if not data:
                return
            lines = (pending[0] + data.decode("utf-8", "replace")).split("\n")
            pending[0] = lines.pop()
            for line in lines:
                on_line(line)

    try:
        with _StopOnTerm() as term:
            drain()
            if ready is not None:
                ready()
            deadline = None if duration is None else time.monotonic() + duration
            while not term.stopped:
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


class NetnsUsers(object):
    """Who uses each network namespace, from snapshots of /proc, /run/netns and /sys/class/net.

    A namespace being torn down has no processes left, so its last users are those of an earlier
    snapshot: :meth:`refresh` runs at start and every REFRESH_EVERY seconds. A namespace created and
    deleted between two snapshots is known by its inode only.
    """

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self.own = _netns_inode(self._path("proc/self/ns/net"))
        self.names = {}  # type: Dict[int, List[str]]
        self.users = {}  # type: Dict[int, OrderedDict]
        self.links = {}  # type: Dict[int, Dict[str, Any]]   # host ifindex -> name, iflink
        self._pids = {}  # type: Dict[int, Optional[int]]     # pid -> its netns when last looked at

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def refresh(self) -> None:
        """Take one snapshot (errors on vanishing entries are expected and ignored)."""
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
        for pid in pids:
            self._look_at(pid)
        self._pids = dict((pid, self._pids[pid]) for pid in pids if pid in self._pids)
        try:
            devices = os.listdir(self._path("sys/class/net"))
        except OSError:
            devices = []
        for name in devices:
            ifindex = _read(self._path("sys/class/net/%s/ifindex" % name))
            iflink = _read(self._path("sys/class/net/%s/iflink" % name))
            if ifindex and iflink and ifindex.isdigit() and iflink.isdigit():
                self.links[int(ifindex)] = {"name": name, "ifindex": int(ifindex), "iflink": int(iflink)}

    def _look_at(self, pid: int) -> None:
        inode = _netns_inode(self._path("proc/%d/ns/net" % pid))
        if inode is None or inode == self.own or self._pids.get(pid) == inode:
            return
        self._pids[pid] = inode
        cgroup = memory_cgroup_of_pid(pid, self.root)
        users = self.users.setdefault(inode, OrderedDict())
        users.pop(pid, None)
        users[pid] = {"pid": pid, "comm": _read(self._path("proc/%d/comm" % pid)), "cgroup": cgroup}
        while len(users) > MAX_USERS:
            users.popitem(last=False)

    def context(self, netns: Optional[int], ifindex: Optional[int]) -> Optional[Dict[str, Any]]:
        """What is known about the namespace NETNS and the device IFINDEX in it, or None."""
        if netns is None:
            return None
        users = list(self.users.get(netns, {}).values())
        containers = []  # type: List[Dict[str, Any]]
        for user in users:
            ref = container_of(user["cgroup"] or "")
            if ref is not None and ref.to_json() not in containers:
                containers.append(ref.to_json())
        host = netns == self.own
        # The host side of a veth pair: its iflink is the peer's ifindex. Other namespaces reuse
        # ifindexes, so several candidates are possible.
        peers = [] if host or ifindex is None else [
            {"name": link["name"], "ifindex": link["ifindex"]} for link in sorted(
                self.links.values(), key=lambda link: link["ifindex"])
            if link["iflink"] == ifindex and link["ifindex"] != link["iflink"]]
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
        self.contexts = {}  # type: Dict[str, Optional[Dict[str, Any]]]

    @staticmethod
    def context_key(netns: Optional[int], ifindex: Optional[int]) -> str:
        return "%s:%s" % (netns, ifindex)

    def wanted(self, obs: Observation) -> bool:
        """OBS passes --dev (a device without a name cannot be filtered) and changes the episodes:
        exactly the observations a recording keeps."""
        if self.pattern and obs.name is not None and not fnmatch.fnmatchcase(obs.name, self.pattern):
            return False
        return self.tracker.relevant(obs)

    def feed(self, obs: Observation) -> Optional[Update]:
        return self.tracker.feed(obs)

    def update_json(self, update: Update) -> Dict[str, Any]:
        out = update.to_json()
        out["type"] = UPDATE
        out["context"] = self.contexts.get(self.context_key(update.episode.netns, update.episode.ifindex))
        return out

    def summary_json(self) -> Dict[str, Any]:
        episodes = []
        for episode in self.tracker.episodes():
            data = episode.to_json()
            data["context"] = self.contexts.get(self.context_key(episode.netns, episode.ifindex))
            episodes.append(data)
        return {"type": SUMMARY, "mode": self.mode, "episodes": episodes, "brief_waits": self.tracker.brief,
                "meaning": self.meaning}


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
    return "%-12s %-8s %-15s %7s %-11s %5s %6s %7s %8s  %s" % (
        when, update["update"], update.get("name") or update.get("dev"), update.get("ifindex") or "-",
        update.get("netns") or "-", update.get("count"), "?" if update.get("leaked") is None else update["leaked"],
        _rounds(update), _seconds(update.get("waited")), _where(update))


def summary_lines(summary: Dict[str, Any]) -> List[str]:
    """The final table: one line per device wait, and what the count means."""
    episodes = summary.get("episodes", [])
    head = "netdevwait summary (%s): %d device wait(s) in unregister" % (
        MODE_LABELS.get(summary.get("mode"), summary.get("mode")), len(episodes))
    if summary.get("mode") == KPROBE:
        head += "; %d brief wait(s) ended within 1 s (normal)" % summary.get("brief_waits", 0)
    out = [head]
    if episodes:
        out.append("%-15s %7s %-11s %5s %4s %6s %7s %8s %-8s %s" % (
            "DEVICE", "IFINDEX", "NETNS", "COUNT", "BASE", "LEAKED", "ROUNDS", "WAITED", "STATE", "WHERE"))
    for e in episodes:
        state = {True: "ended", False: "waiting", None: "no-end"}[e.get("ended")]
        out.append("%-15s %7s %-11s %5s %4s %6s %7s %8s %-8s %s" % (
            e.get("name") or e.get("dev"), e.get("ifindex") or "-", e.get("netns") or "-", e.get("count"),
            "?" if e.get("base") is None else e["base"], "?" if e.get("leaked") is None else e["leaked"],
            _rounds(e), _seconds(e.get("waited")), state, _where(e)))
    meaning = summary.get("meaning") or {}
    if meaning.get("explanation"):
        out.append("count meaning: %s [%s]" % (meaning["explanation"], meaning.get("basis")))
    return out


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def _summarize_log_file(path: str, release: Optional[str], dev_pattern: Optional[str]) -> Dict[str, Any]:
    from ..kernel_log_source import read_log_file
    episodes, meaning = episodes_from_log(read_log_file(path), release)
    data = [dict(e.to_json(), context=None) for e in episodes
            if not dev_pattern or fnmatch.fnmatchcase(e.name or "", dev_pattern)]
    return {"type": SUMMARY, "mode": "log file", "episodes": data, "brief_waits": 0,
            "meaning": meaning or count_meaning(release, "given")}


@click.command(TOOL, context_settings=io.CONTEXT, epilog="""\b
Examples:
  bpftools netdevwait                  # devices stuck in unregister, live, until Ctrl-C
  bpftools netdevwait -d 60 --json     # 60 s, one JSON object per update, then a summary
  bpftools netdevwait --dev 'veth*' --record ndw.jsonl
  bpftools netdevwait --mode log       # from the kernel's "waiting for" messages only
  bpftools netdevwait --log /var/log/kern.log --release 3.10.0-1127.el7.x86_64
""")
@click.option("--dev", "dev_pattern", metavar="PATTERN", help="Only devices whose name matches PATTERN ('veth*').")
@click.option("-d", "--duration", type=float, callback=io.positive, metavar="SECONDS", help="Stop after SECONDS.")
@click.option("--mode", type=click.Choice((AUTO, KPROBE, LOG)), default=AUTO, show_default=True,
              help="kprobe: the kernel's wait loop (exact, needs kprobes); log: its 'waiting for' messages.")
@click.option("--log", "log_path", metavar="FILE", help="Summarise a saved kernel log ('-' for stdin) instead.")
@click.option("--release", metavar="RELEASE", help="With --log: the kernel release the log came from.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one object per line).")
@click.option("--record", metavar="FILE", help="Also write a recording (JSON lines) to FILE.")
@click.option("--ready-file", metavar="FILE", hidden=True, help="Touch FILE once attached (for tests).")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the plan, BPF program and cflags, then exit.")
@click.option("--kmsg", "kmsg_path", default="/dev/kmsg", hidden=True, help="The kernel log to follow (tests).")
def command(dev_pattern: Optional[str], duration: Optional[float], mode: str, log_path: Optional[str],
            release: Optional[str], as_json: bool, record: Optional[str], ready_file: Optional[str], ebpf: bool,
            kmsg_path: str) -> None:
    """Devices stuck in unregister: who held them, the count and leaked references, rounds, wait time."""
    from ..live import LiveRun

    def emit(obj: Dict[str, Any], lines: List[str]) -> None:
        click.echo(json.dumps(obj, sort_keys=True) if as_json else "\n".join(lines))

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
    plan = system_plan(mode)
    if ebpf:
        click.echo(plan.describe(), nl=False)
        return
    for note in plan.notes:
        io.warn(note)
    meaning = count_meaning(os.uname().release)
    session = Session(plan.mode, meaning, dev_pattern)
    users = NetnsUsers() if plan.mode == KPROBE else None
    with LiveRun(TOOL, record) as run:
        run.record(plan.to_json(meaning))
        if not as_json:
            click.echo(HEADER)

        def observe(obs: Optional[Observation]) -> None:
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

        with io.then(finish):
            if plan.mode == KPROBE:
                from ..capture import poll_events
                users.refresh()
                bpf = io.load(plan)
                poll_events(bpf, "events", lambda raw: observe(decode(raw)), duration=duration,
                            ready=run.ready_callback(ready_file), on_lost=run.add_lost,
                            tick_every=REFRESH_EVERY, on_tick=users.refresh)
            else:
                kernel = os.uname().release
                follow_log(kmsg_path, lambda line: observe(message_observation(line, kernel)), duration,
                           run.ready_callback(ready_file))


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a netdevwait recording: the observations replayed through the same
    analysis, so the same lines as the live run."""
    def say(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True, highlight=False)

    mode = next((e for e in rec.events if e.get("type") == "mode"), {})
    for note in mode.get("notes", []):
        say("# %s" % note)
    summaries = [e for e in rec.events if e.get("type") == SUMMARY]
    if mode.get("mode") == "log file":
        for summary in summaries:
            say("\n".join(summary_lines(summary)))
        return
    session = Session(mode.get("mode", "?"), mode.get("meaning") or {})
    session.contexts = dict((e["key"], e.get("context")) for e in rec.events if e.get("type") == CONTEXT)
    say(HEADER)
    for obj in rec.events:
        if obj.get("type") == OBS:
            update = session.feed(Observation.from_json(obj))
            if update is not None:
                say(update_line(session.update_json(update)))
    say("\n".join(summary_lines(session.summary_json())))
