"""The export layer: incident reports written as the files people open.

One report (HTML + per flame graph .folded, .speedscope.json, .svg), or several combined into one
(:func:`combine`). :func:`export` serves the CLI's options: ``--folded`` -> :func:`write_folded`,
``--speedscope FILE`` -> :func:`write_speedscope`, ``--svg FILE`` -> :func:`write_svg`, ``--html FILE``
-> :func:`write_html`, ``--report DIR`` -> :func:`write_exports`. Every file is written through
:mod:`bpftools.outfiles` (no link followed, 0600 files, 0700 directories, an atomic rename).
"""
import datetime
import json
import sys
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .analyses.folded import folded_lines, to_speedscope
from .flamegraph import render_svg
from .html_report import Activity, FlameGraph, IncidentReport, Table, render_html, slug
from .outfiles import Directory, write_text

REPORT_FILE = "report.html"


def folded_text(folded: Dict[str, int]) -> str:
    """The folded file's text: one ``stack count`` line per stack, sorted."""
    lines = folded_lines(folded)
    return "\n".join(lines) + "\n" if lines else ""


def write_folded(path: str, folded: Dict[str, int]) -> str:
    """Folded stacks for flamegraph.pl, inferno or speedscope."""
    return write_text(path, folded_text(folded))


def speedscope_text(folded: Dict[str, int], name: str, unit: str) -> str:
    """A speedscope.app file's text (open it at speedscope.app or with the speedscope CLI)."""
    return json.dumps(to_speedscope(folded, name, unit), ensure_ascii=True, separators=(",", ":")) + "\n"


def write_speedscope(path: str, folded: Dict[str, int], name: str, unit: str) -> str:
    """A speedscope.app file."""
    return write_text(path, speedscope_text(folded, name, unit))


def write_svg(path: str, folded: Dict[str, int], title: str, unit: str = "samples",
              count_name: Optional[str] = None) -> str:
    """A standalone interactive flame graph."""
    return write_text(path, render_svg(folded, title, unit=unit, count_name=count_name))


def write_html(path: str, report: IncidentReport) -> str:
    """The self-contained HTML report."""
    return write_text(path, render_html(report))


def export_names(report: IncidentReport) -> List[str]:
    """The file stem of each flame graph: its name, else a slug of its title; made unique with -2, -3..."""
    names = []  # type: List[str]
    for i, graph in enumerate(report.flame_graphs, 1):
        base = slug(graph.name or graph.title, "flamegraph-%d" % i)
        name, n = base, 1
        while name in names:
            n += 1
            name = "%s-%d" % (base, n)
        names.append(name)
    return names


def export_files(report: IncidentReport) -> Iterator[Tuple[str, str]]:
    """``(file name, text)`` of report.html and, per flame graph, NAME.folded, NAME.speedscope.json and
    NAME.svg; each text is made when it is asked for."""
    yield REPORT_FILE, render_html(report)
    for name, graph in zip(export_names(report), report.flame_graphs):
        yield name + ".folded", folded_text(graph.folded)
        yield name + ".speedscope.json", speedscope_text(graph.folded, graph.title, graph.unit)
        yield name + ".svg", render_svg(graph.folded, graph.title, unit=graph.unit, count_name=graph.count_name)


def write_exports(out_dir: str, report: IncidentReport) -> List[str]:
    """Write the :func:`export_files` into ``out_dir`` (created 0700 if missing); returns their paths, in order."""
    with Directory(out_dir, create=True) as out:
        return [out.write_text(name, text) for name, text in export_files(report)]


def now_iso() -> str:
    """The report's generation time (UTC, seconds)."""
    return datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z"


def combine(parts: Sequence[Tuple[str, Any]]) -> Any:
    """One IncidentReport of several, given as ``(tool, report)`` in order; one part is returned as is.

    Verdicts, tables, flame graphs, timeline events and notes are concatenated in that order; the
    titles of tables and flame graphs, timeline labels and notes get the tool's name as prefix.
    Commands are listed per tool, capabilities are the first report's that has them, the kernel
    release is shared or listed per tool (with a note when the kernels differ).
    """
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
    for tool, r in parts:
        if r.activity is not None:
            merged.activity = merged.activity or Activity()
            data = r.activity.to_json()
            for kind, row in data["counts"].items():
                for i, n in enumerate(row):
                    if n:
                        merged.activity.add(data["start_ns"] + i * data["bucket_ns"], "%s: %s" % (tool, kind), n)
    if sum(1 for _, r in parts if r.timeline) > 1:
        merged.notes.append("the timeline puts every recording on one axis of monotonic time (ts_ns): events "
                            "line up only for recordings made on the same node during one boot")
    return merged


def export(report: Any, folded: Optional[str] = None, speedscope: Optional[str] = None,
           svg: Optional[str] = None, html: Optional[str] = None, out_dir: Optional[str] = None) -> List[str]:
    """Write the requested files ('-' for --folded means stdout); returns what was written."""
    written = []
    graph = report.flame_graphs[0] if report.flame_graphs else None
    if folded and graph is not None:
        if folded == "-":
            sys.stdout.write(folded_text(graph.folded))
        else:
            written.append(write_folded(folded, graph.folded))
    if speedscope and graph is not None:
        written.append(write_speedscope(speedscope, graph.folded, graph.title, graph.unit))
    if svg and graph is not None:
        written.append(write_svg(svg, graph.folded, graph.title, graph.unit, graph.count_name))
    if html:
        written.append(write_html(html, report))
    if out_dir:
        written.extend(write_exports(out_dir, report))
    return written
