"""The live loop of ``bpftools watch``: detectors polled, the kernel log followed, rings kept, triggers
turned into bundles, metrics fed; until SIGTERM/SIGINT or the duration, then everything in flight is
written and every probe detached.

A bundle opens at its trigger with the rings' events (the time before), collects what comes for
``after`` seconds, then is written: the recording (header, the detectors' mode records, the events,
the triggers, doctor's verdicts, a trailer), report.html with its flame graphs (folded stacks), the
kernel log excerpt, doctor's verdict on that excerpt (doctor.json) and bundle.json (what triggered it).
"""
import errno
import json
import os
import select
import shutil
import signal
import time
from typing import Any, Callable, Dict, List, Optional

from dataclasses import dataclass, field

from ..capture import detach_probes
from ..doctor import run_doctor
from ..errors import BpftoolsError
from ..exports import now_iso, write_exports
from ..kernel.log import available
from ..kernel.tracefs import kprobe_misses
from ..analyses.kernel_log import LogAnalyser
from ..pointers import PointerHider
from ..recording import Recorder
from ..signals import SignalGuard, StopSignals
from . import triggers as trig
from .bundles import BundleDir
from .detectors import NETDEV, Detector, NetdevDetector, Reused
from .report import DOCTOR, incident_report
from .ring import Ring

KERNEL_LOG = "kernel-log.txt"
TICK_EVERY = 0.5          # seconds between housekeeping rounds (rings, bundles due, lost counts)
TEXTFILE_EVERY = 15.0     # seconds between node_exporter textfile writes
POLL_MS = 100             # the longest wait for the first program's records
REFRESH_EVERY = 10.0      # seconds between the detectors' periodic work (namespace snapshots, stack map)


@dataclass
class Limits:
    """How much watch keeps and writes."""

    ring_events: int = 5000          # per detector
    ring_seconds: float = 300.0
    log_lines: int = 2000            # kernel log records kept for the excerpt
    after: float = 15.0              # seconds a bundle keeps collecting after its trigger
    after_events: int = 20000        # events a bundle takes after its trigger, at most
    min_wait_ns: int = 10 ** 9       # a mempool wait this long triggers
    min_interval: float = 300.0      # seconds between two bundles of one incident


@dataclass
class Capture:
    """A bundle being collected: its triggers, the events before and after them, until DEADLINE."""

    name: str
    incident: str
    deadline: float
    triggers: List[trig.Trigger]
    events: List[Any]                 # (seq, event) in arrival order
    suppressed: int = 0
    taken_after: int = 0
    cut_after: int = 0
    files: List[str] = field(default_factory=list)


class _Asked(SignalGuard):
    """SIGUSR1: an operator asks for a bundle now."""

    def __init__(self) -> None:
        SignalGuard.__init__(self, (signal.SIGUSR1,))
        self.count = 0

    def handle(self, signum: int) -> None:
        self.count += 1


class Watch(object):
    """One watch run over DETECTORS (started), writing into BUNDLES, feeding METRICS (a ``metrics.Metrics``),
    saying what it does through SAY(object, line) and its troubles through WARN(line)."""

    def __init__(self, reused: Reused, detectors: List[Detector], bundles: BundleDir, limits: Limits, metrics: Any,
                 header: Dict[str, Any], hider: PointerHider, say: Callable[[Dict[str, Any], str], None],
                 warn: Callable[[str], None], textfile: Optional[str] = None) -> None:
        self.reused = reused
        self.detectors = detectors
        self.bundles = bundles
        self.limits = limits
        self.metrics = metrics
        self.header = header
        self.hider = hider
        self.say = say
        self.warn = warn
        self.textfile = textfile
        self.rings = dict((d.name, Ring(limits.ring_events, limits.ring_seconds)) for d in detectors)
        self.log_ring = Ring(limits.log_lines, limits.ring_seconds)
        self.analyser = LogAnalyser(os.uname().release)
        self.reports = self.analyser.reports()
        self.rate = trig.RateLimit(limits.min_interval)
        self.captures = []  # type: List[Capture]
        self.seq = 0
        self.lost = 0
        self.written = []  # type: List[str]
        self._next_tick = 0.0
        self._next_refresh = time.monotonic() + REFRESH_EVERY
        self._next_textfile = 0.0
        self._netdev = next((d for d in detectors if isinstance(d, NetdevDetector)), None)

    # --- what comes in -----------------------------------------------------------------------------

    def add(self, detector: str, events: List[Dict[str, Any]], now: Optional[float] = None) -> None:
        """Take DETECTOR's decoded EVENTS: into its ring and the open bundles; metrics and triggers."""
        now = time.monotonic() if now is None else now
        for event in events:
            event = self.hider.hide(event)
            self.seq += 1
            self.rings[detector].add(self.seq, now, event)
            for capture in self.captures:
                if capture.taken_after < self.limits.after_events:
                    capture.events.append((self.seq, event))
                    capture.taken_after += 1
                else:
                    capture.cut_after += 1
            self._count(detector, event)
            trigger = trig.from_event(detector, event, self.limits.min_wait_ns, now)
            if trigger is not None:
                self.trigger(trigger)

    def _count(self, detector: str, event: Dict[str, Any]) -> None:
        """Metrics of one event, and its line for the operator where it is one they look for."""
        kind = event.get("type")
        if kind == "slab_failure":
            memcg = event.get("memcg_cache") or {}
            self.metrics.slab_failure(memcg.get("base") or event.get("cache") or "unknown")
        elif kind == "sleep" and event.get("in_mempool"):
            self.metrics.mempool_wait(event["duration_ns"] / 1e9, bool(event.get("timed_out")))
        elif kind == "writeback" and not event.get("depth"):
            self.metrics.slow_writeback(event["duration_ns"] / 1e9)
        elif kind == "netdev_wait" and event.get("update") == "end":
            self.metrics.unregister_done(str(event.get("name") or event.get("dev")))
        elif kind == "netdev_wait":
            self.metrics.unregister_wait(str(event.get("name") or event.get("dev")), float(event.get("waited") or 0.0),
                                         int(event.get("count") or 0))
        elif kind == "kmem_file" and event.get("op") in ("write", "kernel"):
            self.say(event, "kmem: pid %s (%s) %s %r to %s: %s" % (
                event.get("tgid"), event.get("comm"), event.get("op"), event.get("value"), event.get("path"),
                event.get("error") or "ok"))

    def lost_records(self, detector: str, count: int, source: str) -> None:
        """COUNT records of DETECTOR lost (perf buffer, or dropped in the kernel): a gap in its ring."""
        if count <= 0:
            return
        self.lost += count
        self.metrics.lost_events(count)
        self.add(detector, [{"type": "lost", "count": count, "source": source, "ts_ns": None, "detector": detector}])

    def log_record(self, data: bytes, baseline: bool = False) -> None:
        """One kernel log record (/dev/kmsg): analysed, kept for the excerpt, netdevwait's log mode;
        a new report triggers unless BASELINE (what the log held when watch started)."""
        now = time.monotonic()
        text = data.decode("utf-8", "replace").rstrip("\n")
        self.seq += 1
        self.log_ring.add(self.seq, now, {"line": text})
        self.analyser.feed(data)
        self.analyser.end_of_record()
        if self._netdev is not None:
            self.add(NETDEV, self._netdev.log_line(text.split("\n", 1)[0]), now)
        reports = self.analyser.reports()
        if reports != self.reports:
            if not baseline:
                for trigger in trig.from_log(self.reports, reports, now):
                    self.trigger(trigger)
            self.reports = reports

    def trigger(self, trigger: trig.Trigger) -> None:
        """Join TRIGGER to its incident's open bundle, or open one unless rate-limited."""
        self.say(trigger.to_json(), "trigger: [%s] %s" % (trigger.incident, trigger.what))
        for capture in self.captures:
            if capture.incident == trigger.incident:
                capture.triggers.append(trigger)
                return
        if not self.rate.allow(trigger.incident, trigger.at):
            return
        before = sorted((entry for ring in self.rings.values() for entry in ring.entries()), key=lambda e: e[0])
        self.captures.append(Capture(self.bundles.new_name(trigger.incident), trigger.incident,
                                     trigger.at + self.limits.after, [trigger], before,
                                     suppressed=self.rate.take_suppressed(trigger.incident)))

    # --- housekeeping --------------------------------------------------------------------------------

    def tick(self, now: Optional[float] = None) -> None:
        """Rings aged, bundles due written, drops counted, namespaces refreshed, the textfile written."""
        now = time.monotonic() if now is None else now
        self._next_tick = now + TICK_EVERY
        for ring in list(self.rings.values()) + [self.log_ring]:
            ring.expire(now)
        for capture in [c for c in self.captures if c.deadline <= now]:
            self.finish(capture)
        for detector in self.detectors:
            self.lost_records(detector.name, detector.drops(), "kernel_map_full")
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_EVERY
            for detector in self.detectors:
                self.add(detector.name, detector.tick(), now)
        if self.textfile and now >= self._next_textfile:
            self._next_textfile = now + TEXTFILE_EVERY
            try:
                self.metrics.write_textfile(self.textfile)
            except BpftoolsError as err:        # a full disk: said, and the next round tries again
                self.warn(str(err))

    def due(self) -> bool:
        return time.monotonic() >= self._next_tick

    def flush(self, interrupted: bool) -> None:
        """Write every open bundle now (the run ends)."""
        for capture in list(self.captures):
            self.finish(capture, interrupted=interrupted)

    # --- bundles -------------------------------------------------------------------------------------

    def finish(self, capture: Capture, interrupted: bool = False) -> None:
        """Write CAPTURE as a bundle; a failure (disk full...) is said and leaves no partial directory."""
        self.captures.remove(capture)
        partial = None
        try:
            partial, out = self.bundles.start(capture.name)
            with out:
                out.write_text(KERNEL_LOG, "".join(e["line"] + "\n" for _, e in self.log_ring.entries()))
                triage = run_doctor(log_path=os.path.join(partial, KERNEL_LOG), release=os.uname().release)
                out.write_text("doctor.json", json.dumps(triage.to_json(), indent=1, sort_keys=True) + "\n")
                events = [d.mode for d in self.detectors] + [e for _, e in capture.events]
                events += [t.to_json() for t in capture.triggers]
                events.append({"type": DOCTOR, "verdicts": [v.to_json() for v in triage.verdicts]})
                recorder = Recorder(os.path.join(partial, "recording.jsonl"), self.header)
                for event in events:
                    recorder.write(event)
                recorder.close({"lost_events": self.lost, "interrupted": interrupted, "events": recorder.events,
                                "events_cut_after_trigger": capture.cut_after})
                files = write_exports(partial, incident_report(self.reused, self.header, events, now_iso()))
                summary = {"name": capture.name, "incident": capture.incident,
                           "triggers": [t.to_json() for t in capture.triggers], "after_s": self.limits.after,
                           "events": len(events), "suppressed_before": capture.suppressed,
                           "interrupted": interrupted, "files": sorted(os.path.basename(f) for f in files) + [
                               "bundle.json", "doctor.json", KERNEL_LOG, "recording.jsonl"]}
                out.write_text("bundle.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
            path = self.bundles.finish(capture.name)
        except Exception as err:        # a bundle that cannot be written must not stop the recorder
            self.warn("bundle %s not written: %s%s" % (capture.name, "" if isinstance(err, (BpftoolsError, OSError))
                                                        else type(err).__name__ + ": ", err))
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            return
        self.written.append(path)
        self.metrics.bundle_written()
        self.say({"type": "bundle", "path": path, "incident": capture.incident, "events": len(events)},
                 "bundle: %s (%s, %d events)" % (path, capture.incident, len(events)))


def _open_kmsg(path: Optional[str], warn: Callable[[str], None]) -> Optional[int]:
    """The kernel log to follow, non-blocking; None (with a note) where it cannot be read."""
    if not path:
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        warn("not following the kernel log: %s: %s" % (path, err.strerror))
        return None


def _drain_kmsg(watch: Watch, fd: Optional[int], baseline: bool = False) -> None:
    if fd is None:
        return
    try:
        for data in available(fd):
            watch.log_record(data, baseline)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise


def run(watch: Watch, kmsg_path: Optional[str], duration: Optional[float],
        ready: Optional[Callable[[], None]]) -> None:
    """Poll every detector and follow the kernel log until SIGTERM/SIGINT or DURATION; then the open
    bundles are written and every program detached. SIGINT raises KeyboardInterrupt at the end."""
    stop, asked = StopSignals(), _Asked()
    polled = [d for d in watch.detectors if d.bpf is not None]
    deadline = None if duration is None else time.monotonic() + duration
    stopping = []  # type: List[bool]

    def on_data(detector: Detector) -> Callable[[int, Any, int], None]:
        table = detector.bpf["events"]

        def _on(cpu: int, data: Any, size: int) -> None:
            if not stopping and (stop.received is not None or (deadline is not None and time.monotonic() >= deadline)):
                stopping.append(True)           # a flood: detach so the buffers drain and the poll returns
                for d in polled:
                    detach_probes(d.bpf)
            watch.add(detector.name, detector.decode(table.event(data)))
            if watch.due():
                watch.tick()                    # also while a flood keeps the poll busy
        return _on

    def on_lost(detector: Detector) -> Callable[[int], None]:
        return lambda count: watch.lost_records(detector.name, count, "perf_buffer")

    kmsg = _open_kmsg(kmsg_path, watch.warn)
    interrupted = False
    try:
        for detector in polled:
            detector.bpf["events"].open_perf_buffer(on_data(detector), page_cnt=64, lost_cb=on_lost(detector))
        _drain_kmsg(watch, kmsg, baseline=True)
        with stop, asked:
            if ready is not None:
                ready()
            manual = 0
            while stop.received is None and (deadline is None or time.monotonic() < deadline):
                if polled:
                    polled[0].bpf.perf_buffer_poll(timeout=POLL_MS)
                    for detector in polled[1:]:
                        detector.bpf.perf_buffer_poll(timeout=0)
                elif kmsg is not None:
                    select.select([kmsg], [], [], POLL_MS / 1000.0)
                else:
                    time.sleep(POLL_MS / 1000.0)
                _drain_kmsg(watch, kmsg)
                while manual < asked.count:
                    manual += 1
                    watch.trigger(trig.Trigger(trig.MANUAL, "signal", "SIGUSR1: a bundle was asked for",
                                               time.monotonic()))
                if watch.due():
                    watch.tick()
            for detector in polled:
                detector.bpf.perf_buffer_poll(timeout=10)       # what arrived at the end
            _drain_kmsg(watch, kmsg)
            interrupted = stop.received == signal.SIGINT
    finally:
        try:
            misses = kprobe_misses(os.getpid())        # kretprobes over maxactive, while still attached
            for detector in polled:
                detach_probes(detector.bpf)
            if misses and polled:
                watch.lost_records(polled[0].name, misses, "kretprobe_maxactive")
            watch.flush(interrupted)
        finally:
            for detector in watch.detectors:
                detector.close()
            if kmsg is not None:
                os.close(kmsg)
    if interrupted:
        raise KeyboardInterrupt()


__all__ = ["Limits", "Watch", "run"]
