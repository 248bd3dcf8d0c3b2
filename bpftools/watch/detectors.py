"""The detectors watch keeps attached, each in the best mode this kernel offers, loaded once.

- ``io``: the I/O-stall program (iojitter's three sections in one program): slab failures, mempool
  waits inside writeback, slow writebacks; kprobes where the kernel has them, else tracepoints
  (sched_switch, kmem, writeback).
- ``kmem``: kmemsnoop's program: writes to memory.kmem.* files (syscall tracepoints, plus the kernel's
  kmem limit handler where kprobes exist).
- ``netdev``: netdevwait's program (kprobes and BTF), else the kernel log's "waiting for DEV to become
  free" messages, which watch follows anyway.

A detector that cannot be planned or loaded on this kernel is switched off with a note; the others run.
Each decoded event is a recording's JSON object with ``detector`` added.
"""
import os
import time
from typing import Any, Callable, Dict, List, Optional

from dataclasses import dataclass

from ..errors import BpftoolsError
from ..iostall import program, sections, writeback
from ..kernel.cpus import online_cpus
from ..kernel.target import Target
from ..capture import Outline, table_sum

IO, KMEM_FILES, NETDEV = "io", "kmem", "netdev"
STACKS_EVERY = 600.0            # seconds between clearings of the io program's stack map
SWEEP_EVERY = 10.0              # seconds between sweeps of dead threads' writeback stacks


@dataclass(frozen=True)
class Reused:
    """The tools whose programs and reports watch reuses. Tools never import each other, so the registry
    hands these modules over: ``bpftools.tools.iojitter``, ``.kmemsnoop`` and ``.netdevwait``."""

    iojitter: Any
    kmemsnoop: Any
    netdevwait: Any


@dataclass
class Settings:
    """What the detectors are asked for."""

    mode: str = "auto"              # auto | tracepoint (kprobe modes only where kprobes exist)
    slow_writeback_ns: int = 100 * 10 ** 6
    wait_min_ns: int = 10 ** 6
    every_slab_allocation: bool = False   # the kmem tracepoints too, not only the failures SLUB reports


class Detector(object):
    """One program of the set: its mode record, the loaded BPF object (None: nothing loaded) and DECODE."""

    def __init__(self, name: str, mode: Dict[str, Any], bpf: Any,
                 decode: Callable[[Any], List[Dict[str, Any]]]) -> None:
        self.name = name
        self.mode = dict(mode, type="mode", detector=name)
        self.bpf = bpf
        self.decode = decode
        self._drops = 0

    def drops(self) -> int:
        """Records the program dropped (full maps, failed perf_submit) since the last call."""
        if self.bpf is None:
            return 0
        total = table_sum(self.bpf, "lost") + table_sum(self.bpf, "unsent")
        new, self._drops = total - self._drops, total
        return new

    def tick(self) -> List[Dict[str, Any]]:
        """Periodic work (netdev: the namespace snapshot); events it produced."""
        return []

    def close(self) -> None:
        """Detach and unload; the perf buffers are closed first, while the map is open (as poll_events does)."""
        if self.bpf is not None:
            table = self.bpf["events"]
            for cpu in online_cpus():
                del table[cpu]
            self.bpf.cleanup()
            self.bpf = None


def _tagged(detector: str, event: Dict[str, Any]) -> Dict[str, Any]:
    event["detector"] = detector
    return event


def io_plan(target: Target, settings: Settings) -> program.Plan:
    """iojitter's plan: sleeps followed only inside traced writebacks, no allocator kprobed, and in kprobe
    mode only the outermost writeback calls timed (the nested ones doubled the probes' cost; metrics and
    triggers count outermost calls only), with no stack walk at every call's entry (before 5.15), and only
    the slab failures SLUB reports where kprobes exist (no BPF run per slab allocation), unless asked."""
    return sections.plan(target, settings.mode, None, settings.slow_writeback_ns, settings.wait_min_ns,
                         always_on=True, every_slab_allocation=settings.every_slab_allocation)


def kmem_plan(reused: Reused, target: Target, settings: Settings) -> Any:
    """kmemsnoop's plan: syscall tracepoints, plus the kernel hook where kprobes exist."""
    return reused.kmemsnoop.plan(None, "tracepoint" if settings.mode == "tracepoint" else "auto", target)


def netdev_plan(reused: Reused, target: Target, settings: Settings) -> Any:
    """netdevwait's plan without the notifier chain's subscribers (its kprobe mode, else log mode)."""
    tool = reused.netdevwait
    return tool.target_plan(tool.LOG if settings.mode == "tracepoint" else tool.AUTO, target, subscribers=False)


def outline(reused: Reused, target: Target, settings: Settings) -> Outline:
    """The three plans on TARGET in words (``bpftools plan``), nothing loaded."""
    parts = []
    for name, make in ((IO, lambda: io_plan(target, settings).outline()),
                       (KMEM_FILES, lambda: kmem_plan(reused, target, settings).outline()),
                       (NETDEV, lambda: netdev_plan(reused, target, settings).outline())):
        try:
            parts.append((name, make()))
        except BpftoolsError as err:
            parts.append((name, Outline("off", [], ["off: %s" % err])))
    return Outline(", ".join("%s %s" % (name, o.mode) for name, o in parts),
                   ["%s: %s" % (name, a) for name, o in parts for a in o.attaches],
                   ["%s: %s" % (name, n) for name, o in parts for n in o.notes])


class IoDetector(Detector):
    """The I/O-stall program, loaded; its stack map is emptied every STACKS_EVERY seconds, and the writeback
    stacks of dead threads deleted every SWEEP_EVERY (watch keeps each thread's between its calls)."""

    def __init__(self, target: Target, settings: Settings) -> None:
        plan = io_plan(target, settings)
        bpf = program.load(plan)
        self.decoder = program.Decoder(bpf, plan)
        self._cleared = self._swept = time.monotonic()
        Detector.__init__(self, IO, dict(plan.to_json(), notes=list(plan.notes)), bpf, self._decode)

    def _decode(self, raw: Any) -> List[Dict[str, Any]]:
        if raw.type == program.EV_DROPPED:
            return [_tagged(IO, self.decoder.dropped(raw).to_json())]
        event = sections.decode(raw, self.decoder)
        if event is None:
            return []
        self.decoder.seen(event.ts_ns)
        return [_tagged(IO, event.to_json())]

    def tick(self) -> List[Dict[str, Any]]:
        now = time.monotonic()
        if now - self._swept >= SWEEP_EVERY:
            self._swept = now
            writeback.forget_dead_threads(self.bpf)
        if now - self._cleared >= STACKS_EVERY:
            self._cleared = now
            self.decoder.forget_stacks()
        return []


def kmem_detector(reused: Reused, target: Target, settings: Settings) -> Detector:
    """kmemsnoop's program, loaded."""
    tool = reused.kmemsnoop
    plan = kmem_plan(reused, target, settings)
    bpf = plan.probe.load(plan.attaches, maxactive=tool.SYSCALL_MAXACTIVE if plan.syscalls.attaches else 0)
    cgroups = tool.CgroupCache()
    own = os.getpid()

    def decode(raw: Any) -> List[Dict[str, Any]]:
        """Writes (and the kernel handler's view) of other processes: opens are many (a kubelet reads
        memory.kmem.usage_in_bytes of every pod) and watch's own are doctor's audit in a bundle."""
        event = tool.decode(raw, cgroups)
        if event.tgid == own or event.op == "open":
            return []
        return [_tagged(KMEM_FILES, event.to_json())]
    outline = plan.outline()
    return Detector(KMEM_FILES, {"mode": outline.mode, "attaches": outline.attaches, "notes": list(plan.notes)},
                    bpf, decode)


class NetdevDetector(Detector):
    """netdevwait: kprobe mode (its program), else log mode (:meth:`log_line` gets the kernel log)."""

    def __init__(self, reused: Reused, target: Target, settings: Settings) -> None:
        self.tool = tool = reused.netdevwait
        plan = netdev_plan(reused, target, settings)
        self.release = os.uname().release
        meaning = tool.count_meaning(self.release)
        self.session = tool.Session(plan.mode, meaning)
        self.users = tool.NetnsUsers() if plan.mode == tool.KPROBE else None
        bpf = None
        if self.users is not None:
            self.users.refresh()
            bpf = plan.probe().load(plan.kprobes)
        Detector.__init__(self, NETDEV, plan.to_json(meaning), bpf, lambda raw: self.observe(tool.decode(raw)))

    def observe(self, obs: Any) -> List[Dict[str, Any]]:
        """The recording's objects for one observation: it, the namespace's context (first time), and the
        episode's update (``netdev_wait``, what triggers and metrics read)."""
        if not isinstance(obs, self.tool.Observation) or not self.session.wanted(obs):
            return []
        out = [_tagged(NETDEV, dict(obs.to_json(), type=self.tool.OBS))]
        update = self.session.feed(obs)
        if update is None:
            return out
        key = self.tool.Session.context_key(update.episode.netns, update.episode.ifindex)
        if self.users is not None and key not in self.session.contexts:
            self.session.contexts[key] = self.users.context(update.episode.netns, update.episode.ifindex)
            out.append(_tagged(NETDEV, {"type": self.tool.CONTEXT, "key": key, "context": self.session.contexts[key]}))
        out.append(_tagged(NETDEV, self.session.update_json(update)))
        return out

    def log_line(self, line: str) -> List[Dict[str, Any]]:
        """Log mode: the "waiting for DEV" message in one kernel log record, if any."""
        if self.users is not None:
            return []
        return self.observe(self.tool.message_observation(line, self.release))

    def tick(self) -> List[Dict[str, Any]]:
        if self.users is not None:
            self.users.refresh()
        return []


def start(reused: Reused, target: Target, settings: Settings, warn: Callable[[str], None]) -> List[Detector]:
    """Plan and load every detector this kernel allows; each that cannot is switched off with a note."""
    makers = ((IO, lambda: IoDetector(target, settings)), (KMEM_FILES, lambda: kmem_detector(reused, target, settings)),
              (NETDEV, lambda: NetdevDetector(reused, target, settings)))
    out = []  # type: List[Detector]
    try:
        for name, make in makers:
            try:
                detector = make()
            except BpftoolsError as err:
                warn("%s detector off: %s" % (name, err))
                continue
            for note in detector.mode.get("notes", []):
                warn("%s: %s" % (name, note))
            out.append(detector)
    except BaseException:
        for detector in out:
            detector.close()
        raise
    return out


def find(detectors: List[Detector], name: str) -> Optional[Detector]:
    return next((d for d in detectors if d.name == name), None)
