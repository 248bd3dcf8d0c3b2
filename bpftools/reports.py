"""From recordings (or a live run's events) to the exports people open: HTML, SVG, folded, speedscope.

One recording gives its tool's report; several give one report of all of them (:func:`combine`).
"""
import datetime
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import BadInput

Builder = Callable[[Dict[str, Any], List[Dict[str, Any]], str], Any]


def _builders() -> Dict[str, Builder]:
    from .tools import iojitter, kmemsnoop, refleak
    return {"iojitter": iojitter.incident_report, "kmemsnoop": kmemsnoop.incident_report,
            "refleak": refleak.incident_report}


def now_iso() -> str:
    """The report's generation time (UTC, seconds)."""
    return datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"


def build_report(header: Dict[str, Any], events: List[Dict[str, Any]], generated: Optional[str] = None) -> Any:
    """The IncidentReport of a recording made by any tool that has a report builder."""
    tool = str(header.get("tool", ""))
    builder = _builders().get(tool)
    if builder is None:
        raise BadInput("no report exporter for recordings of %r" % tool)
    return builder(header, events, generated or now_iso())


def combine(parts: Sequence[Tuple[str, Any]]) -> Any:
    """One IncidentReport of several, given as ``(tool, report)`` in order; one part is returned as is.

    Verdicts, tables, flame graphs, timeline events and notes are concatenated in that order; the
    titles of tables and flame graphs, timeline labels and notes get the tool's name as prefix.
    Commands are listed per tool, capabilities are the first report's that has them, the kernel
    release is shared or listed per tool (with a note when the kernels differ).
    """
    from .html_report import FlameGraph, IncidentReport, Table
    if len(parts) == 1:
        return parts[0][1]
    tools = [tool for tool, _ in parts]
    kernels = [r.kernel_release for _, r in parts]
    merged = IncidentReport(
        title="bpftools incident report: %s" % " + ".join(tools), command=list(parts[0][1].command),
        generated=parts[0][1].generated, kernel_release=kernels[0], commands=[(t, list(r.command)) for t, r in parts],
        capabilities=next((r.capabilities for _, r in parts if r.capabilities is not None), None),
        tool_version=", ".join(OrderedDict.fromkeys(r.tool_version for _, r in parts if r.tool_version)))
    if len(set(kernels)) > 1:
        merged.kernel_release = ", ".join("%s (%s)" % (k, t) for t, k in zip(tools, kernels))
        merged.notes.append("the recordings come from different kernels: %s" % merged.kernel_release)
    for tool, r in parts:
        merged.verdicts.extend(r.verdicts)
        merged.tables.extend(Table("%s: %s" % (tool, t.title), t.columns, t.rows, t.note) for t in r.tables)
        merged.flame_graphs.extend(FlameGraph("%s: %s" % (tool, g.title), g.folded, g.unit, g.count_name, g.name)
                                   for g in r.flame_graphs)
        merged.timeline.extend((ts, "%s: %s" % (tool, label), kind) for ts, label, kind in r.timeline)
        merged.notes.extend("%s: %s" % (tool, n) for n in r.notes)
    if sum(1 for _, r in parts if r.timeline) > 1:
        merged.notes.append("the timeline puts every recording on one axis of monotonic time (ts_ns): events "
                            "line up only for recordings made on the same node during one boot")
    return merged


def export(report: Any, folded: Optional[str] = None, speedscope: Optional[str] = None,
           svg: Optional[str] = None, html: Optional[str] = None, out_dir: Optional[str] = None) -> List[str]:
    """Write the requested files ('-' for --folded means stdout); returns what was written."""
    import os
    import sys
    from . import exports
    written = []
    graph = report.flame_graphs[0] if report.flame_graphs else None
    try:
        if folded and graph is not None:
            if folded == "-":
                sys.stdout.write(exports.folded_text(graph.folded))
            else:
                written.append(exports.write_folded(folded, graph.folded))
        if speedscope and graph is not None:
            written.append(exports.write_speedscope(speedscope, graph.folded, graph.title, graph.unit))
        if svg and graph is not None:
            written.append(exports.write_svg(svg, graph.folded, graph.title, graph.unit, graph.count_name))
        if html:
            written.append(exports.write_html(html, report))
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            written.extend(exports.write_exports(out_dir, report))
    except OSError as err:
        raise BadInput("cannot write %s: %s" % (err.filename or "export", err.strerror))
    return written
