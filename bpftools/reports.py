"""From a recording (or a live run's events) to the exports people open: HTML, SVG, folded, speedscope."""
import datetime
from typing import Any, Callable, Dict, List, Optional

from .errors import BadInput

Builder = Callable[[Dict[str, Any], List[Dict[str, Any]], str], Any]


def _builders() -> Dict[str, Builder]:
    from .tools import kmemsnoop, refleak
    return {"kmemsnoop": kmemsnoop.incident_report, "refleak": refleak.incident_report}


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
