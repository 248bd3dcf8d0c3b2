"""A watch recording (a bundle's) as a report: the triggers and doctor's verdict, then each detector's
part as its own tool reports it (iojitter, netdevwait, kmemsnoop), combined into one page."""
from typing import Any, Dict, List, Tuple

from ..exports import combine
from ..html_report import IncidentReport, Table
from ..recording import Recording
from ..render import one_line
from .detectors import IO, KMEM_FILES, NETDEV as NETDEV_DETECTOR, Reused
from .triggers import Trigger

DOCTOR = "doctor_verdicts"


def by_detector(events: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """The events of each detector (its mode record first), in recording order."""
    out = {}  # type: Dict[str, List[Dict[str, Any]]]
    for event in events:
        if isinstance(event, dict) and event.get("detector"):
            out.setdefault(str(event["detector"]), []).append(event)
    return out


def _has_events(events: List[Dict[str, Any]]) -> bool:
    return any(e.get("type") not in ("mode", "lost") for e in events)


def watch_report(header: Dict[str, Any], events: List[Dict[str, Any]], generated: str) -> Any:
    """The triggers of the bundle and doctor's verdicts on its kernel log excerpt."""
    triggers = [e for e in events if e.get("type") == Trigger.TYPE]
    doctor = next((e for e in events if e.get("type") == DOCTOR), {})
    return IncidentReport(
        title="bpftools watch: evidence bundle", command=list(header.get("argv", [])), generated=generated,
        kernel_release=str(header.get("kernel_release", "")), verdicts=list(doctor.get("verdicts", [])),
        tables=[Table("Triggers", ["incident", "source", "what"],
                      [[t.get("incident"), t.get("source"), t.get("what")] for t in triggers])],
        timeline=[(t["ts_ns"], t.get("what", ""), "trigger") for t in triggers if t.get("ts_ns") is not None],
        capabilities=header.get("capabilities"), tool_version=str(header.get("version", "")),
        notes=["verdicts: bpftools doctor on the bundle's kernel log excerpt"] if doctor else [])


def parts(reused: Reused, header: Dict[str, Any], events: List[Dict[str, Any]], generated: str
          ) -> List[Tuple[str, Any]]:
    """(tool, IncidentReport) of the watch part and of each detector that saw something."""
    split = by_detector(events)
    out = [("watch", watch_report(header, events, generated))]
    if _has_events(split.get(IO, [])):
        out.append(("iojitter", reused.iojitter.incident_report(header, split[IO], generated)))
    if _has_events(split.get(NETDEV_DETECTOR, [])):
        out.append(("netdevwait", reused.netdevwait.incident_report(header, split[NETDEV_DETECTOR], generated)))
    if _has_events(split.get(KMEM_FILES, [])):
        kmem = [e for e in split[KMEM_FILES] if e.get("type") == "kmem_file"]
        out.append(("kmemsnoop", reused.kmemsnoop.incident_report(header, kmem, generated)))
    return out


def incident_report(reused: Reused, header: Dict[str, Any], events: List[Dict[str, Any]], generated: str) -> Any:
    """The one report of a watch recording (``bpftools report --html`` and the bundle's report.html)."""
    return combine(parts(reused, header, events, generated))


def render_recording(reused: Reused, rec: Any, console: Any) -> None:
    """``bpftools report`` of a watch recording: its triggers, then each detector's part as its tool shows it."""
    def say(text: str) -> None:
        console.print(one_line(text), markup=False, soft_wrap=True, highlight=False)

    for trigger in (e for e in rec.events if e.get("type") == Trigger.TYPE):
        say("trigger: [%s] %s" % (trigger.get("incident"), trigger.get("what")))
    for verdict in next((e for e in rec.events if e.get("type") == DOCTOR), {}).get("verdicts", []):
        say("doctor: %s: %s: %s" % (verdict.get("incident"), verdict.get("status"), verdict.get("summary")))
    split = by_detector(rec.events)
    for name, tool in ((IO, reused.iojitter), (NETDEV_DETECTOR, reused.netdevwait), (KMEM_FILES, reused.kmemsnoop)):
        if _has_events(split.get(name, [])):
            say("--- %s detector ---" % name)
            tool.render_recording(Recording(rec.header, split[name], rec.trailer, 0), console)



__all__ = ["incident_report", "render_recording", "by_detector", "DOCTOR"]
