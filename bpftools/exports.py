"""Files people open: a report directory (HTML + per flame graph .folded, .speedscope.json, .svg).

The CLI's ``report`` options call these: ``--folded`` -> :func:`write_folded`, ``--speedscope FILE``
-> :func:`write_speedscope`, ``--svg FILE`` -> :func:`write_svg`, ``--html FILE`` -> :func:`write_html`,
``--report DIR`` -> :func:`write_exports`. Text is written as UTF-8; anything that still cannot be
encoded is written backslash-escaped rather than failing the export.
"""
import json
import os
from typing import Dict, List, Optional

from .analyses.folded import folded_lines, to_speedscope
from .flamegraph import render_svg
from .html_report import IncidentReport, render_html, slug

REPORT_FILE = "report.html"


def write_text(path: str, content: str) -> str:
    """Write ``content`` to ``path`` as UTF-8; returns the path."""
    with open(path, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as f:
        f.write(content)
    return path


def folded_text(folded: Dict[str, int]) -> str:
    """The folded file's text: one ``stack count`` line per stack, sorted."""
    lines = folded_lines(folded)
    return "\n".join(lines) + "\n" if lines else ""


def write_folded(path: str, folded: Dict[str, int]) -> str:
    """Folded stacks for flamegraph.pl, inferno or speedscope."""
    return write_text(path, folded_text(folded))


def write_speedscope(path: str, folded: Dict[str, int], name: str, unit: str) -> str:
    """A speedscope.app file (open it at speedscope.app or with the speedscope CLI)."""
    return write_text(path, json.dumps(to_speedscope(folded, name, unit), ensure_ascii=True, separators=(",", ":"))
                      + "\n")


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


def write_exports(out_dir: str, report: IncidentReport) -> List[str]:
    """Write report.html and, per flame graph, NAME.folded, NAME.speedscope.json and NAME.svg into
    ``out_dir`` (created if missing); returns the paths written, in that order."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [write_html(os.path.join(out_dir, REPORT_FILE), report)]
    for name, graph in zip(export_names(report), report.flame_graphs):
        base = os.path.join(out_dir, name)
        paths.append(write_folded(base + ".folded", graph.folded))
        paths.append(write_speedscope(base + ".speedscope.json", graph.folded, graph.title, graph.unit))
        paths.append(write_svg(base + ".svg", graph.folded, graph.title, graph.unit, graph.count_name))
    return paths
