"""A watch recording (a bundle's) as a report: the triggers and doctor's verdict, then each detector's
part as its own tool reports it (iojitter, netdevwait, kmemsnoop), combined into one page.

The recording is read once (:class:`Split`): each detector's events go, as they pass, to a spool of their
own (a compressed temp file without a name, :func:`bpftools.live.spool`), the first MAX_TRIGGERS triggers
and doctor's verdicts are kept; then each part reads its spool once, in the order the page shows them.
Memory does not grow with the events."""
from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from ..exports import combine
from ..html_report import IncidentReport, Table
from ..live import ReadBack, spool
from ..recording import Recording
from ..render import one_line
from .detectors import IO as IO_DETECTOR, KMEM_FILES, NETDEV as NETDEV_DETECTOR, Reused
from .triggers import Trigger

DOCTOR = "doctor_verdicts"
MAX_TRIGGERS = 1000          # triggers listed (all are counted)
PARTS = (("iojitter", IO_DETECTOR), ("netdevwait", NETDEV_DETECTOR), ("kmemsnoop", KMEM_FILES))   # in page order


class Split(object):
    """A watch recording's events, read once: each detector's in its spool (recording order), whether it saw
    anything but its mode record and gaps, the first MAX_TRIGGERS triggers (and how many more) and the
    first doctor's verdicts record. Close it when done (or use ``with``)."""

    def __init__(self, header: Dict[str, Any], events: Iterable[Dict[str, Any]]) -> None:
        self.header = header
        self.triggers = []  # type: List[Dict[str, Any]]
        self.more_triggers = 0
        self.doctor = None  # type: Optional[Dict[str, Any]]
        self.seen = set()  # type: Set[str]      # detectors with events other than mode and lost records
        self._spools = OrderedDict()  # type: Dict[str, ReadBack]
        try:
            for event in events:
                self._route(event)
        except BaseException:
            self.close()
            raise

    def _route(self, event: Dict[str, Any]) -> None:
        detector, kind = event.get("detector"), event.get("type")
        if detector in (IO_DETECTOR, NETDEV_DETECTOR, KMEM_FILES):
            if kind not in ("mode", "lost"):
                self.seen.add(detector)
            if detector not in self._spools:
                self._spools[detector] = spool(self.header)
            self._spools[detector].write(event)
        elif kind == Trigger.TYPE:
            if len(self.triggers) < MAX_TRIGGERS:
                self.triggers.append(event)
            else:
                self.more_triggers += 1
        elif kind == DOCTOR and self.doctor is None:
            self.doctor = event

    def events(self, detector: str) -> Iterator[Dict[str, Any]]:
        """The events of DETECTOR, read back once."""
        if detector in self._spools:
            for event in self._spools[detector].events():
                yield event

    def close(self) -> None:
        for spooled in self._spools.values():
            spooled.close()

    def __enter__(self) -> "Split":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def watch_report(split: Split, generated: str) -> Any:
    """The triggers of the bundle and doctor's verdicts on its kernel log excerpt."""
    header, triggers, doctor = split.header, split.triggers, split.doctor or {}
    return IncidentReport(
        title="bpftools watch: evidence bundle", command=list(header.get("argv", [])), generated=generated,
        kernel_release=str(header.get("kernel_release", "")), verdicts=list(doctor.get("verdicts", [])),
        tables=[Table("Triggers", ["incident", "source", "what"],
                      [[t.get("incident"), t.get("source"), t.get("what")] for t in triggers],
                      note="the first %d triggers: %d more left out" % (MAX_TRIGGERS, split.more_triggers)
                      if split.more_triggers else "")],
        timeline=[(t["ts_ns"], t.get("what", ""), "trigger") for t in triggers if t.get("ts_ns") is not None],
        capabilities=header.get("capabilities"), tool_version=str(header.get("version", "")),
        notes=["verdicts: bpftools doctor on the bundle's kernel log excerpt"] if split.doctor else [])


def parts(reused: Reused, header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: str
          ) -> List[Tuple[str, Any]]:
    """(tool, IncidentReport) of the watch part and of each detector that saw something (EVENTS read once)."""
    with Split(header, events) as split:
        out = [("watch", watch_report(split, generated))]
        for tool, detector in PARTS:
            if detector in split.seen:
                mine = split.events(detector)
                if detector == KMEM_FILES:
                    mine = (e for e in mine if e.get("type") == "kmem_file")
                out.append((tool, getattr(reused, tool).incident_report(header, mine, generated)))
    return out


def incident_report(reused: Reused, header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: str) -> Any:
    """The one report of a watch recording (``bpftools report --html`` and the bundle's report.html)."""
    return combine(parts(reused, header, events, generated))


def render_recording(reused: Reused, rec: Any, console: Any) -> None:
    """``bpftools report`` of a watch recording (its events read once): its triggers, then each detector's
    part as its tool shows it."""
    def say(text: str) -> None:
        console.print(one_line(text), markup=False, soft_wrap=True, highlight=False)

    with Split(rec.header, rec.events) as split:
        for trigger in split.triggers:
            say("trigger: [%s] %s" % (trigger.get("incident"), trigger.get("what")))
        if split.more_triggers:
            say("(%d more triggers)" % split.more_triggers)
        for verdict in (split.doctor or {}).get("verdicts", []):
            say("doctor: %s: %s: %s" % (verdict.get("incident"), verdict.get("status"), verdict.get("summary")))
        for tool, detector in PARTS:
            if detector in split.seen:
                say("--- %s detector ---" % detector)
                getattr(reused, tool).render_recording(Recording(rec.header, split.events(detector), rec.trailer, 0),
                                                       console)


__all__ = ["incident_report", "render_recording", "DOCTOR"]
