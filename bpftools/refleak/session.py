"""The live side of ``bpftools refleak``: load the program, find and watch devices, decode records.

One :class:`Session` per run. It loads probes/refleak.bpf.c with the plan's sections, attaches the
kprobes, and for every device the selector wants:

1. the device record (found by name, or registered after the start) is emitted and, with the watch
   strategy, one hardware watchpoint per online CPU is armed on the device's counter (its per-cpu
   slot on each CPU, or the one refcount_t on every CPU) -- all or none: a CPU left out would miss
   its writes. A device that finds the debug registers taken waits until a watched device is freed.
2. a sync (``ctl[RL_CTL_SYNC] = dev`` then a getppid() of ours, which the program's tracepoint
   sees) reads the counter and sets every slot's shadow: the baseline the balance counts from.
3. ``free_netdev`` ends the watch: the breakpoints are closed before the freed slots are reused, and a
   ``watch_end`` record compares the hits perf counted with the runs of our program. A device whose
   counter sits where a watched device's was (that one is freed, its free not read yet) ends that
   watch before its own is armed: an address is never watched twice, so runs per address are exact.

Records of a device not yet announced (holders created inside register_netdevice, before its return
announces the device) wait for the announcement, and are dropped with an unwanted device. The perf
buffer has one ring per CPU, read one after the other: a device's free can be read before its last
writes from another CPU, so records of a freed device older than its free are still kept (the
analysis orders by time). Decoding raw records into event dicts happens here and nowhere else.
"""
import collections
import ctypes as ct
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..kernel import breakpoints
from ..kernel.cpus import online_cpus
from ..capture import c_text, poll_events
from ..kernel.cgroups import cgroup2_path_of_id
from ..errors import ProbeLoadError
from ..kstacks import KernelStacks
from .devices import Selector, ask_flags, find_existing
from .plan import RefleakPlan
from .sites import attach_sites

# probes/refleak.h
EV_DEVICE, EV_SYNC, EV_REF, EV_HOLDER_NEW, EV_HOLDER_END, EV_FNHE, EV_UNREGISTER, EV_FREE, EV_DROPPED = range(1, 10)
STRATEGY = {1: "watch", 2: "ref_tracker", 3: "inline"}
HOLDER_KIND = {1: "dst", 2: "neigh", 3: "in_dev", 4: "inet6_dev", 5: "fib_nh"}
END_FUNC = {1: "dst_dev_put", 2: "dst_destroy", 3: "neigh_destroy", 4: "in_dev_finish_destroy",
            5: "in6_dev_finish_destroy", 6: "fib_nh_common_release"}
F_PCPU, F_REGISTERED, F_GAP, F_INPUT = 1, 2, 4, 8
CTL_LOOKUP, CTL_SYNC, CTL_SYNCED = 0, 1, 2
SYNC_DONE = 1
SYNC_TRIES = 3
MAXACTIVE = 64               # kretprobe instances in flight (where this bcc can say)
PERF_EVENT_PROG = 7          # BPF_PROG_TYPE_PERF_EVENT
MAX_PENDING = 4096           # records kept for devices not announced yet
MAX_FREED = 4096             # freed devices remembered (records from other CPUs' buffers arrive late)
DISCOVERY_WAIT = 10.0        # seconds to wait for the devices found at the start to be synced


def hexaddr(value: int) -> str:
    return "0x%x" % (value & 0xFFFFFFFFFFFFFFFF)


class Decoder(object):
    """Raw refleak_event -> event dict; stack ids and cgroup ids resolved once per run."""

    def __init__(self, bpf: Any, plan: RefleakPlan) -> None:
        self.bpf = bpf
        self.level_known = "LEVEL_UNKNOWN" not in plan.flags
        self.base_refs = plan.base_refs
        self._stacks = KernelStacks(bpf, offsets=True)
        self._cgroups = {}  # type: Dict[int, Optional[str]]
        self._drops = 0

    def stack(self, stack_id: int) -> Optional[List[str]]:
        return self._stacks.frames(stack_id)

    def _sym(self, addr: int) -> str:
        return self._stacks.symbol(addr)

    def cgroup(self, cgroup_id: int) -> Optional[str]:
        if not cgroup_id:
            return None
        if cgroup_id not in self._cgroups:
            self._cgroups[cgroup_id] = cgroup2_path_of_id(cgroup_id)
        return self._cgroups[cgroup_id]

    def level(self, raw: Any) -> Optional[int]:
        return int(raw.level) if self.level_known else None

    def __call__(self, raw: Any) -> Optional[Dict[str, Any]]:
        kind = int(raw.type)
        ev = {"ts_ns": int(raw.ts_ns), "dev": hexaddr(int(raw.dev)), "tgid": int(raw.tgid), "tid": int(raw.tid),
              "cpu": int(raw.cpu), "comm": c_text(bytes(raw.comm))}  # type: Dict[str, Any]
        if kind == EV_DEVICE:
            ev.update(type="device", name=c_text(bytes(raw.name)), ifindex=int(raw.ifindex), netns=int(raw.netns),
                      how="registered" if raw.flags & F_REGISTERED else "existing", pcpu=bool(raw.flags & F_PCPU),
                      counter=hexaddr(int(raw.aux)), level=self.level(raw), base_refs=self.base_refs)
        elif kind == EV_SYNC:
            ev.update(type="sync", level=self.level(raw))
        elif kind == EV_REF:
            strategy = STRATEGY.get(int(raw.strategy), str(raw.strategy))
            ev.update(type="ref", strategy=strategy, delta=int(raw.delta), stack=self.stack(int(raw.kstack)),
                      cgroup=self.cgroup(int(raw.cgroup_id)))
            if strategy == "watch":
                ev.update(addr=hexaddr(int(raw.obj)), value=ct.c_int64(int(raw.aux)).value,
                          gap=bool(raw.flags & F_GAP))
            elif strategy == "ref_tracker":
                ev["tracker"] = hexaddr(int(raw.obj)) if raw.obj else None
            else:
                ev["site"] = self._sym(int(raw.obj))
        elif kind in (EV_HOLDER_NEW, EV_HOLDER_END):
            ev.update(type="holder_new" if kind == EV_HOLDER_NEW else "holder_end",
                      kind=HOLDER_KIND.get(int(raw.kind), str(raw.kind)), obj=hexaddr(int(raw.obj)),
                      stack=self.stack(int(raw.kstack)), cgroup=self.cgroup(int(raw.cgroup_id)))
            if kind == EV_HOLDER_END:
                ev["func"] = END_FUNC.get(int(raw.func), str(raw.func))
        elif kind == EV_FNHE:
            ev.update(type="fnhe", kind=HOLDER_KIND.get(int(raw.kind), str(raw.kind)), obj=hexaddr(int(raw.obj)),
                      fnhe=hexaddr(int(raw.aux)), input=bool(raw.flags & F_INPUT))
        elif kind in (EV_UNREGISTER, EV_FREE):
            ev.update(type="unregister" if kind == EV_UNREGISTER else "free", level=self.level(raw),
                      stack=self.stack(int(raw.kstack)))
        elif kind == EV_DROPPED:
            total = int(raw.level)
            count, self._drops = total - self._drops, total
            return {"type": "dropped", "count": count, "source": "kernel_map_full", "ts_ns": int(raw.ts_ns)}
        else:
            return None
        return ev


class Session(object):
    """One live run: see the module docstring. EMIT gets every event dict to keep, SAY progress lines."""

    def __init__(self, plan: RefleakPlan, selector: Selector, emit: Callable[[Dict[str, Any]], None],
                 say: Callable[[str], None], sites: Optional[List[Any]] = None,
                 watchpoints: Optional[breakpoints.Watchpoints] = None) -> None:
        self.plan = plan
        self.selector = selector
        self.emit = emit
        self.say = say
        self.sites = sites or []
        self.bpf = None  # type: Any
        self.decode = None  # type: Optional[Decoder]
        self.prog_fd = None  # type: Optional[int]
        self.watchpoints = watchpoints or breakpoints.Watchpoints()
        self.devices = {}  # type: Dict[str, Dict[str, Any]]      # wanted devices, by dev
        self.waiting_slots = []  # type: List[str]                 # wanted, not armed (registers taken)
        self.pending = {}  # type: Dict[str, List[Dict[str, Any]]] # records of devices not announced yet
        self.freed = collections.OrderedDict()  # type: Dict[str, int]  # freed devices: when
        self.synced = set()  # type: set
        self.ignored = set()  # type: set                         # announced, not wanted
        self.errors = 0
        self.last_ts = None  # type: Optional[int]
        self.cpus = online_cpus()

    # -- setup -----------------------------------------------------------------------------------
    def load(self) -> Any:
        """Compile, load, attach the kprobes (a function's kretprobe before its entry: see capture.attach)."""
        bpf = self.plan.probe().load(self.plan.kprobes, maxactive=MAXACTIVE)
        try:
            if "watch" in self.plan.strategies:
                self.prog_fd = bpf.load_func(b"on_watch", PERF_EVENT_PROG).fd
            if self.sites:
                for note in attach_sites(bpf, self.sites):
                    self.say(note)
        except Exception as err:  # bcc raises plain Exception
            bpf.cleanup()
            if isinstance(err, ProbeLoadError):
                raise
            raise ProbeLoadError("cannot attach refleak's probes: %s" % (str(err).splitlines()[0] if str(err)
                                                                          else type(err).__name__), log=str(err))
        self.bpf = bpf
        self.decode = Decoder(bpf, self.plan)
        return bpf

    def _ctl(self, slot: int, value: int) -> None:
        self.bpf["ctl"][ct.c_int(slot)] = ct.c_uint64(value)

    # -- devices ---------------------------------------------------------------------------------
    def discover(self) -> List[Tuple[int, str]]:
        """Ask the kernel about the existing devices the selector wants, then wait until each one is
        armed and synced (so that a ready file means "watching")."""
        def lookup(name: str) -> bool:
            self._ctl(CTL_LOOKUP, 1)           # armed for our ioctl only (listing names calls it too)
            try:
                return ask_flags(name)
            finally:
                self._ctl(CTL_LOOKUP, 0)

        asked = list(find_existing(self.selector, lookup))
        deadline = time.monotonic() + DISCOVERY_WAIT
        while time.monotonic() < deadline:
            self.bpf.perf_buffer_poll(timeout=100)
            seen = set((d["netns"], d["name"]) for d in self.devices.values())
            if all(a in seen for a in asked) and all(d in self.synced for d in self.devices):
                break
        return asked

    def _announce(self, ev: Dict[str, Any]) -> None:
        dev = ev["dev"]
        pending = self.pending.pop(dev, [])
        wanted = self.selector.matches(ev["name"], ev["netns"])
        if not wanted:
            self._unwatch(dev)
            self.ignored.add(dev)
            return
        self.ignored.discard(dev)
        self.devices[dev] = ev
        self.emit(ev)
        self.say("watching %s (ifindex %d, netns %d, %s), %s references now" % (
            ev["name"], ev["ifindex"], ev["netns"], ev["how"], ev["level"] if ev["level"] is not None else "?"))
        for held in pending:
            self.emit(held)
        self._arm(dev)
        self._sync(dev)

    def _unwatch(self, dev: str) -> None:
        try:
            del self.bpf["watched"][ct.c_uint64(int(dev, 16))]
        except KeyError:
            pass

    def _slot_addrs(self, dev: str) -> Dict[int, int]:
        info = self.devices[dev]
        counter = int(info["counter"], 16)
        if not info["pcpu"]:
            return dict((cpu, counter) for cpu in self.cpus)
        table = self.bpf["cpu_offsets"]
        return dict((cpu, counter + table[ct.c_int(cpu)].value) for cpu in self.cpus)

    def _arm(self, dev: str) -> bool:
        if self.prog_fd is None:
            return False
        addrs = self._slot_addrs(dev)
        for key in self.watchpoints.keys():
            other = hexaddr(key)
            if other != dev and other in self.devices and set(self._slot_addrs(other).values()) & set(addrs.values()):
                # DEV's counter sits where OTHER's was: OTHER is freed (its free not read yet), its watch ends
                self._end_watch(other)
        armed = self.watchpoints.arm(int(dev, 16), addrs, self.prog_fd)
        record = {"type": "watch", "dev": dev, "ts_ns": self.last_ts, "cpus": list(armed.cpus),
                  "failed": dict((str(c), e) for c, e in sorted(armed.failed.items())), "armed": armed.complete}
        if not armed.complete:
            self.watchpoints.disarm(int(dev, 16))
            self._runs(dev)
            record["cpus"] = []
            record["reason"] = ("no free debug register on cpu %s" % ", ".join(str(c) for c in sorted(armed.failed))
                                if any(e == "ENOSPC" for e in armed.failed.values())
                                else "perf_event_open failed: %s" % ", ".join(sorted(set(armed.failed.values()))))
            if dev not in self.waiting_slots:
                self.waiting_slots.append(dev)
            self.say("not watching %s with watchpoints: %s" % (self.devices[dev]["name"], record["reason"]))
        self.emit(record)
        return armed.complete

    def _sync(self, dev: str) -> bool:
        """Read DEV's counter and set the shadows: the program's sys_enter_getppid tracepoint does it
        during our getppid(). True when it did (it says so in ctl[CTL_SYNCED])."""
        status = 0
        for _ in range(SYNC_TRIES):
            self._ctl(CTL_SYNCED, 0)
            self._ctl(CTL_SYNC, int(dev, 16))
            os.getppid()
            status = self.bpf["ctl"][ct.c_int(CTL_SYNCED)].value
            if status:
                break
        self._ctl(CTL_SYNC, 0)
        if status != SYNC_DONE:
            self.say("cannot read the counter of %s (%s): its balance is not counted" % (
                self.devices.get(dev, {}).get("name", dev),
                "not watched any more" if status else "the getppid tracepoint did not run"))
        return status == SYNC_DONE

    def _runs(self, dev: str) -> Dict[int, Tuple[int, int]]:
        """{cpu: (runs, of which during a sync)} of on_watch for DEV's slots; the counts are cleared."""
        table = self.bpf["watch_runs"]
        counts = {}  # type: Dict[int, Tuple[int, int]]
        addrs = self._slot_addrs(dev)
        for cpu, addr in addrs.items():
            per_cpu = table.get(ct.c_uint64(addr))
            if per_cpu is not None and cpu < len(per_cpu):
                counts[cpu] = (int(per_cpu[cpu].runs), int(per_cpu[cpu].in_sync))
        for addr in set(addrs.values()):
            try:
                del table[ct.c_uint64(addr)]
            except KeyError:
                pass
        return counts

    def _end_watch(self, dev: str) -> None:
        """Close DEV's watchpoints and say how many hits the kernel counted against how many our program
        ran for: the difference is writes the kernel did not show us (a hit that lands while another BPF
        program runs on that CPU skips ours), what makes the watch's count uncertain."""
        hits = self.watchpoints.disarm(int(dev, 16))
        if not hits or dev not in self.devices:
            return
        runs = self._runs(dev)
        per_cpu = dict((str(cpu), [n, runs.get(cpu, (0, 0))[0]]) for cpu, n in sorted(hits.items()))
        total = None if any(n is None for n in hits.values()) else sum(hits.values())
        ran = sum(r for r, _ in runs.values())
        self.emit({"type": "watch_end", "dev": dev, "ts_ns": self.last_ts, "hits": total, "runs": ran,
                   "in_sync": sum(s for _, s in runs.values()),
                   "skipped": total - ran if total is not None else None, "cpus": per_cpu})

    def _freed(self, dev: str) -> None:
        self._end_watch(dev)
        self.devices.pop(dev, None)
        if dev in self.waiting_slots:
            self.waiting_slots.remove(dev)
        for slot in list(self.bpf["slots"].keys()):
            value = self.bpf["slots"].get(slot)
            if value is not None and hexaddr(int(value.dev)) == dev:
                del self.bpf["slots"][slot]
        for waiting in list(self.waiting_slots):
            if waiting in self.devices and self._arm(waiting):
                self.waiting_slots.remove(waiting)
                self._sync(waiting)

    # -- records ---------------------------------------------------------------------------------
    def on_raw(self, raw: Any) -> None:
        """One record from the perf buffer. An exception here would be swallowed by ctypes (the
        callback's caller) and the record silently lost: it becomes a gap in the stream instead."""
        try:
            self._on_raw(raw)
        except Exception as err:  # noqa: BLE001 - reported, and the stream says a record is missing
            self.errors += 1
            if self.errors <= 3:
                self.say("cannot process a record: %s: %s" % (type(err).__name__, err))
            self.emit({"type": "lost", "count": 1, "source": "decode_error", "ts_ns": self.last_ts})

    def _on_raw(self, raw: Any) -> None:
        ev = self.decode(raw) if self.decode is not None else None
        if ev is None:
            return
        if ev.get("ts_ns") is not None and ev["type"] != "device":
            self.last_ts = max(self.last_ts or 0, ev["ts_ns"])
        if ev["type"] == "dropped":
            self.emit(ev)
            return
        dev = ev["dev"]
        if ev["type"] == "device":
            if dev in self.devices:
                return
            self._announce(ev)
            return
        if dev in self.ignored:
            return
        if dev not in self.devices:
            if ev.get("ts_ns", 0) <= self.freed.get(dev, -1):
                self.emit(ev)     # from another CPU's buffer, read after the free: its place is before it
                return
            backlog = self.pending.setdefault(dev, [])
            if len(backlog) < MAX_PENDING:
                backlog.append(ev)
            return
        if ev["type"] == "sync":
            self.synced.add(dev)
        self.emit(ev)
        if ev["type"] == "free":
            self._freed(dev)
            self.pending.pop(dev, None)
            self.freed[dev] = ev["ts_ns"]
            if len(self.freed) > MAX_FREED:
                self.freed.popitem(last=False)

    def lost(self, count: int) -> None:
        self.emit({"type": "lost", "count": count, "source": "perf_buffer", "ts_ns": self.last_ts})

    def end_watches(self) -> None:
        """End every watch still armed (its hit count is part of the record): while the maps are open."""
        for key in self.watchpoints.keys():
            self._end_watch(hexaddr(key))

    def close(self) -> None:
        self.watchpoints.close()


def run(session: Session, duration: Optional[float], ready: Optional[Callable[[], None]],
        on_tick: Optional[Callable[[], None]] = None, tick_every: Optional[float] = None) -> None:
    """Load, discover, poll until DURATION/Ctrl-C/SIGTERM; the watchpoints are closed whatever ends it."""
    bpf = session.load()

    def _ready() -> None:
        asked = session.discover()
        if session.selector.patterns and not asked and not session.devices:
            session.say("no existing device matches %s: waiting for new ones" % session.selector.describe())
        if ready is not None:
            ready()

    try:
        poll_events(bpf, "events", session.on_raw, duration=duration, ready=_ready, on_lost=session.lost,
                    page_cnt=256, tick_every=tick_every, on_tick=on_tick, on_end=session.end_watches)
    finally:
        session.close()
