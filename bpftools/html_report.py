"""The incident report as one self-contained HTML file an SRE can attach to a ticket.

No external scripts, styles or fonts. Sections: verdicts, flame graphs (inline SVGs from
:mod:`bpftools.flamegraph`, still zoomable and searchable), timeline, tables, capabilities of the
node, and the command that produced it. The report's data (without the stacks, which the
``.folded`` exports hold) is embedded as JSON in ``<script type="application/json"
id="bpftools-report-data">`` for machines: as much of it as the page shows, saying how much was
left out (:func:`embedded_data`).

Everything in an :class:`IncidentReport` is treated as hostile: text is cleaned
(:func:`bpftools.analyses.folded.clean_text`: lone surrogates and control characters) and escaped
for HTML text and attributes, and the JSON escapes ``<``, ``>`` and ``&`` so ``</script>`` cannot end
its element. Only this module's own markup goes out unescaped.
"""
import base64
import hashlib
import json
import math
import re
import shlex
from html import escape
from typing import Any, Dict, List, Optional, Tuple

from dataclasses import dataclass, field

from .analyses.folded import clean_text, fixed, format_weight
from .flamegraph import SCRIPT as FLAMEGRAPH_SCRIPT
from .flamegraph import render_svg

STATUSES = ("detected", "at-risk", "clear")
MAX_TABLE_ROWS = 5000        # per table; the rest is counted, not shown
MAX_TIMELINE_MARKERS = 5000
MAX_TIMELINE_ROWS = 1000
MAX_BUCKETS = 240            # activity over time: counts in at most this many equal spans
TIMELINE_WIDTH = 1200
# Colours of timeline kinds, by order of first appearance.
KIND_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass
class Table:
    """A table of the report: cells may be str, bytes, int, float, bool or None."""

    title: str
    columns: List[str]
    rows: List[List[Any]]
    note: str = ""


@dataclass
class FlameGraph:
    """Folded stacks to draw; ``name`` is the file stem of its exports (from the title when empty)."""

    title: str
    folded: Dict[str, int]
    unit: str = "samples"
    count_name: Optional[str] = None
    name: str = ""


@dataclass
class Section:
    """One block of the page: its anchor, heading, body (HTML made by this module) and the count
    shown next to its link in the navigation (None: no count)."""

    anchor: str
    title: str
    body: str
    count: Optional[int] = None


class Activity(object):
    """How many events of each kind fell in each of at most MAX_BUCKETS equal spans of time: the
    timeline of a recording of any length, in bounded memory. When the times seen span more buckets,
    the width doubles and neighbouring buckets merge; times may come in any order."""

    def __init__(self) -> None:
        self.width = 1                               # ns per bucket, a power of two
        self.counts = {}  # type: Dict[str, Dict[int, int]]     # kind -> {bucket index: events}
        self.low = self.high = None  # type: Optional[int]     # bucket indexes seen

    def add(self, ts: int, kind: str, count: int = 1) -> None:
        index = ts // self.width
        if self.low is None or index < self.low:
            self.low = index
        if self.high is None or index > self.high:
            self.high = index
        if self.high - self.low >= MAX_BUCKETS:
            self._widen()
            index = ts // self.width
        buckets = self.counts.setdefault(kind, {})
        buckets[index] = buckets.get(index, 0) + count

    def _widen(self) -> None:
        factor = 2
        while self.high // factor - self.low // factor >= MAX_BUCKETS:
            factor *= 2
        self.width *= factor
        self.low //= factor
        self.high //= factor
        for kind, buckets in self.counts.items():
            merged = {}  # type: Dict[int, int]
            for i, n in buckets.items():
                merged[i // factor] = merged.get(i // factor, 0) + n
            self.counts[kind] = merged

    def to_json(self) -> Dict[str, Any]:
        """{"start_ns", "bucket_ns", "counts": {kind: [events per bucket from start_ns]}}."""
        if self.low is None:
            return {"start_ns": 0, "bucket_ns": self.width, "counts": {}}
        size = self.high - self.low + 1
        counts = {}
        for kind, buckets in self.counts.items():
            row = [0] * size
            for i, n in buckets.items():
                row[i - self.low] += n
            counts[kind] = row
        return {"start_ns": self.low * self.width, "bucket_ns": self.width, "counts": counts}


@dataclass
class IncidentReport:
    """What the report shows. ``generated`` is an ISO time string chosen by the caller;
    ``verdicts`` are ``analyses.verdicts.Verdict.to_json()`` dicts; ``timeline`` holds
    ``(ts_ns, label, kind)``; ``capabilities`` is ``Capabilities.to_json()``. ``commands``, when
    set (a report of several recordings), are ``(label, argv)`` of each, shown instead of ``command``."""

    title: str
    command: List[str]
    generated: str
    kernel_release: str
    verdicts: List[Dict[str, Any]] = field(default_factory=list)
    tables: List[Table] = field(default_factory=list)
    timeline: List[Tuple[int, str, str]] = field(default_factory=list)
    flame_graphs: List[FlameGraph] = field(default_factory=list)
    capabilities: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)
    tool_version: str = ""
    commands: List[Tuple[str, List[str]]] = field(default_factory=list)
    activity: Optional[Activity] = None      # every event counted over time (a recording of any length)

    def to_json(self) -> Dict[str, Any]:
        """Plain data of the report; flame graphs as their totals (the stacks go to .folded files)."""
        return {
            "title": self.title, "command": list(self.command), "generated": self.generated,
            "kernel_release": self.kernel_release, "tool_version": self.tool_version,
            "verdicts": list(self.verdicts), "notes": list(self.notes),
            "tables": [{"title": t.title, "columns": list(t.columns), "rows": [list(r) for r in t.rows],
                        "note": t.note} for t in self.tables],
            "timeline": [list(e) for e in self.timeline],
            "activity": self.activity.to_json() if self.activity is not None else None,
            "flame_graphs": [{"title": g.title, "name": g.name, "unit": g.unit, "stacks": len(g.folded),
                              "total": sum(g.folded.values())} for g in self.flame_graphs],
            "capabilities": self.capabilities,
            "commands": [[label, list(argv)] for label, argv in self.commands],
        }


def text(value: Any) -> str:
    """Any value as clean text: bytes decoded as UTF-8 (bad bytes as ``\\xNN``), None as ''."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    return clean_text(str(value))


def h(value: Any) -> str:
    """Escaped for HTML text and (quoted) attribute values."""
    return escape(text(value), quote=True)


def json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>``, ``&`` or non-ASCII characters."""
    out = json.dumps(_clean_json(data), ensure_ascii=True, sort_keys=True, default=text)
    return out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clean_json(data: Any) -> Any:
    if isinstance(data, (str, bytes)):
        return text(data)
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)                     # NaN/Infinity are not JSON: JSON.parse would fail
    if isinstance(data, dict):
        return dict((text(k), _clean_json(v)) for k, v in data.items())
    if isinstance(data, (list, tuple)):
        return [_clean_json(v) for v in data]
    return data


def command_line(argv: List[str]) -> str:
    """The argv as one shell-quoted line (to copy and run again)."""
    return " ".join(shlex.quote(text(a)) for a in argv)


def slug(title: str, fallback: str) -> str:
    """A file-name and anchor friendly name: lower-case ASCII words joined by '-'."""
    words = re.findall(r"[a-z0-9]+", text(title).lower())
    return "-".join(words)[:60].strip("-") or fallback


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _list(items: List[Any], cls: str) -> str:
    if not items:
        return ""
    return '<ul class="%s">%s</ul>' % (cls, "".join("<li>%s</li>" % h(i) for i in items))


def _verdicts(verdicts: List[Dict[str, Any]]) -> str:
    if not verdicts:
        return '<p class="empty">No verdicts in this report.</p>'
    cards = []
    for v in verdicts:
        status = text(v.get("status")) or "unknown"
        cls = status if status in STATUSES else "unknown"
        cards.append(
            '<article class="verdict %s"><header><span class="status">%s</span> <strong>%s</strong>'
            ' <code class="incident">%s</code></header><p class="summary">%s</p>%s%s</article>' % (
                cls, h(status), h(v.get("title") or v.get("incident")), h(v.get("incident")), h(v.get("summary")),
                ('<h4>Evidence</h4>' + _list(v.get("evidence") or [], "evidence")) if v.get("evidence") else "",
                ('<h4>Remediation</h4>' + _list(v.get("remediation") or [], "remediation"))
                if v.get("remediation") else ""))
    return "\n".join(cards)


def _table(table: Table, anchor: str) -> str:
    head = "".join("<th>%s</th>" % h(c) for c in table.columns)
    rows = []
    for row in table.rows[:MAX_TABLE_ROWS]:
        rows.append("<tr>%s</tr>" % "".join(
            '<td class="num">%s</td>' % h(c) if _is_number(c) else "<td>%s</td>" % h(c) for c in row))
    more = len(table.rows) - MAX_TABLE_ROWS
    return ('<div class="table" id="%s"><h3>%s</h3>%s<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>%s</div>'
            % (anchor, h(table.title), '<p class="note">%s</p>' % h(table.note) if table.note else "", head,
               "".join(rows), '<p class="note">%d more row(s) not shown</p>' % more if more > 0 else ""))


def _flame_graph(graph: FlameGraph, anchor: str) -> str:
    svg = render_svg(graph.folded, graph.title, unit=graph.unit, count_name=graph.count_name)
    svg = svg[svg.index("<svg"):]            # inline: no XML declaration
    return ('<div class="flamegraph" id="%s"><form class="fg-search" data-target="%s">'
            '<input type="search" placeholder="search frames: text, or /regex/" aria-label="search frames">'
            '<button type="submit">Search</button><button type="button" class="fg-reset">Reset</button>'
            '<span class="fg-result"></span></form><div class="fg-svg">%s</div></div>' % (anchor, anchor, svg))


def _in_time_order(events: List[Tuple[int, str, str]]) -> List[Tuple[int, str, str]]:
    return sorted(events, key=lambda e: (e[0], text(e[2]), text(e[1])))


def _timeline(events: List[Tuple[int, str, str]]) -> str:
    if not events:
        return '<p class="empty">No timed events.</p>'
    ordered = _in_time_order(events)
    t0, t1 = ordered[0][0], ordered[-1][0]
    span = max(t1 - t0, 1)
    kinds = []  # type: List[str]
    for _, _, kind in ordered:
        if text(kind) not in kinds:
            kinds.append(text(kind))
    lane_h, top, label_w = 22, 8, 110
    plot_w = TIMELINE_WIDTH - label_w
    height = top + lane_h * len(kinds) + 24
    parts = ['<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">'
             % (TIMELINE_WIDTH, height, TIMELINE_WIDTH, height)]
    for lane, kind in enumerate(kinds):
        y = top + lane * lane_h
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>' % (
            label_w, y, plot_w, lane_h - 2, "#eef0f3" if lane % 2 else "#f7f8fa"))
        parts.append('<text x="%d" y="%d" class="lane" text-anchor="end">%s</text>' % (
            label_w - 6, y + 15, h(kind[:18])))
    for ts, label, kind in ordered[:MAX_TIMELINE_MARKERS]:
        lane = kinds.index(text(kind))
        x = label_w + (ts - t0) * (plot_w - 3) / span
        parts.append('<rect class="ev" x="%.1f" y="%d" width="3" height="%d" fill="%s"><title>+%s %s</title></rect>'
                     % (x, top + lane * lane_h + 2, lane_h - 6, KIND_COLOURS[lane % len(KIND_COLOURS)],
                        h(format_weight(ts - t0, "ns")), h(label)))
    for i in range(5):
        x = label_w + plot_w * i / 4.0
        parts.append('<text x="%.1f" y="%d" text-anchor="%s" class="tick">+%s</text>' % (
            x, height - 6, ("start", "middle", "middle", "middle", "end")[i],
            h(format_weight(span * i // 4 if t1 > t0 else 0, "ns"))))
    parts.append("</svg>")
    rows = "".join('<tr><td class="num">+%s</td><td class="num">%d</td><td>%s</td><td>%s</td></tr>' % (
        fixed((ts - t0) / 1e9, 6), ts, h(kind), h(label)) for ts, label, kind in ordered[:MAX_TIMELINE_ROWS])
    more = len(ordered) - MAX_TIMELINE_ROWS
    return ('%s<p class="note">%d event(s) over %s, from ts_ns %d.</p><details><summary>Events</summary><table>'
            '<thead><tr><th>t (s)</th><th>ts_ns</th><th>kind</th><th>event</th></tr></thead><tbody>%s</tbody>'
            '</table>%s</details>' % ("".join(parts), len(ordered), h(format_weight(t1 - t0, "ns")), t0, rows,
                                      '<p class="note">%d more event(s) not shown</p>' % more if more > 0 else ""))


def _activity(activity: Activity) -> str:
    """Events per span of time, one lane per kind, each bar as tall as its count against the lane's most."""
    data = activity.to_json()
    counts = data["counts"]
    if not counts:
        return ""
    size = max(len(row) for row in counts.values())
    lane_h, top, label_w = 22, 8, 110
    plot_w = TIMELINE_WIDTH - label_w
    height = top + lane_h * len(counts) + 24
    step = float(plot_w) / size
    parts = ['<svg class="timeline activity" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'viewBox="0 0 %d %d">' % (TIMELINE_WIDTH, height, TIMELINE_WIDTH, height)]
    for lane, (kind, row) in enumerate(counts.items()):
        y = top + lane * lane_h
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>' % (
            label_w, y, plot_w, lane_h - 2, "#eef0f3" if lane % 2 else "#f7f8fa"))
        parts.append('<text x="%d" y="%d" class="lane" text-anchor="end">%s</text>' % (label_w - 6, y + 15, h(kind[:18])))
        most = max(row) or 1
        for i, n in enumerate(row):
            if n:
                bar = max(1.0, (lane_h - 6) * float(n) / most)
                parts.append('<rect class="bucket" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>'
                             '+%s: %s %s</title></rect>' % (
                                 label_w + i * step, y + lane_h - 4 - bar, max(step - 0.5, 0.5), bar,
                                 KIND_COLOURS[lane % len(KIND_COLOURS)], h(format_weight(i * data["bucket_ns"], "ns")),
                                 "{:,}".format(n), h(kind)))
    span = size * data["bucket_ns"]
    for i in range(5):
        parts.append('<text x="%.1f" y="%d" text-anchor="%s" class="tick">+%s</text>' % (
            label_w + plot_w * i / 4.0, height - 6, ("start", "middle", "middle", "middle", "end")[i],
            h(format_weight(span * i // 4, "ns"))))
    parts.append("</svg>")
    total = sum(sum(row) for row in counts.values())
    return '%s<p class="note">All {:,} event(s) of the recording, counted in spans of %s from ts_ns %d.</p>'.format(
        total) % ("".join(parts), h(format_weight(data["bucket_ns"], "ns")), data["start_ns"])


def _mark(ok: Any) -> str:
    if ok is True:
        return '<span class="ok">yes</span>'
    if ok is False:
        return '<span class="bad">no</span>'
    return '<span class="unknown">?</span>'


def _capabilities(caps: Dict[str, Any]) -> str:
    out = ['<dl class="facts"><dt>kernel</dt><dd>%s</dd><dt>distribution</dt><dd>%s</dd>'
           '<dt>cgroup layout</dt><dd>%s</dd></dl>' % (h(caps.get("kernel_release")), h(caps.get("distro")),
                                                      h(caps.get("cgroup_layout")))]
    checks = caps.get("checks") or []
    out.append('<h3>Checks</h3><table class="checks"><thead><tr><th>capability</th><th>ok</th><th>detail</th>'
               '</tr></thead><tbody>%s</tbody></table>' % "".join(
                   '<tr><td>%s</td><td>%s</td><td>%s</td></tr>' % (h(c.get("name")), _mark(c.get("ok")),
                                                                   h(c.get("detail"))) for c in checks))
    tracepoints = caps.get("tracepoints") or {}
    out.append('<h3>Tracepoints</h3><table class="tracepoints"><thead><tr><th>tracepoint</th><th>present</th>'
               '</tr></thead><tbody>%s</tbody></table>' % "".join(
                   '<tr><td>%s</td><td>%s</td></tr>' % (h(name), _mark(tracepoints[name]))
                   for name in sorted(tracepoints, key=text)))
    symbols = caps.get("symbols") or []
    out.append('<h3>Attach points</h3><table class="symbols"><thead><tr><th>wanted</th><th>attach</th><th>how</th>'
               '<th>fallback</th><th>note</th></tr></thead><tbody>%s</tbody></table>' % "".join(
                   '<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>' % (
                       h(s.get("wanted")), h(s.get("attach") or "-"), h(s.get("how")), h(s.get("fallback")),
                       h(s.get("note"))) for s in symbols))
    return "".join(out)


def sections(report: IncidentReport) -> List[Section]:
    """The page's sections in order; a section with nothing to show is left out."""
    out = [Section("verdicts", "Verdicts", _verdicts(report.verdicts), len(report.verdicts))]
    if report.flame_graphs:
        out.append(Section("flame-graphs", "Flame graphs", "\n".join(
            _flame_graph(g, "fg-%d" % i) for i, g in enumerate(report.flame_graphs, 1)), len(report.flame_graphs)))
    if report.timeline or report.activity is not None:
        body = (_activity(report.activity) if report.activity is not None else "") + (
            _timeline(report.timeline) if report.timeline else "")
        out.append(Section("timeline", "Timeline", body, len(report.timeline)))
    if report.tables:
        out.append(Section("tables", "Tables", "\n".join(
            _table(t, "table-%d" % i) for i, t in enumerate(report.tables, 1)), len(report.tables)))
    if report.capabilities is not None:
        out.append(Section("capabilities", "Node capabilities", _capabilities(report.capabilities)))
    if report.commands:
        out.append(Section("command", "Commands", "".join(
            '<h3>%s</h3><pre class="command"><code>%s</code></pre>' % (h(label), h(command_line(argv)))
            for label, argv in report.commands), len(report.commands)))
    else:
        out.append(Section("command", "Command", '<pre class="command"><code>%s</code></pre>' % h(
            command_line(report.command))))
    return out


def _summary(verdicts: List[Dict[str, Any]]) -> str:
    counts = []
    for status in STATUSES:
        n = sum(1 for v in verdicts if v.get("status") == status)
        if n:
            counts.append('<span class="badge %s">%d %s</span>' % (status, n, status))
    return " ".join(counts)


def content_security_policy() -> str:
    """Only our own scripts may run (by hash), nothing is loaded from anywhere: should escaping
    ever fail, an injected script or event handler still would not run."""
    hashes = " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
                      for js in (_PAGE_JS, FLAMEGRAPH_SCRIPT))
    return ("default-src 'none'; script-src %s; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'" % hashes)


def embedded_data(report: IncidentReport) -> Dict[str, Any]:
    """The report's data as the page embeds it: what the page shows (each table's first
    MAX_TABLE_ROWS rows, the first MAX_TIMELINE_MARKERS events in time order), and in ``left_out``
    how many rows and events were not embedded."""
    data = report.to_json()
    rows = 0
    for table in data["tables"]:
        rows += max(0, len(table["rows"]) - MAX_TABLE_ROWS)
        table["rows"] = table["rows"][:MAX_TABLE_ROWS]
    ordered = _in_time_order(report.timeline)
    data["timeline"] = [list(e) for e in ordered[:MAX_TIMELINE_MARKERS]]
    data["left_out"] = {"table_rows": rows, "timeline_events": max(0, len(ordered) - MAX_TIMELINE_MARKERS)}
    return data


def _left_out_note(left_out: Dict[str, int]) -> List[str]:
    if not any(left_out.values()):
        return []
    return ["This page embeds the data it shows: {:,} table row(s) and {:,} timeline event(s) were left out "
            "(the recordings hold them all).".format(left_out["table_rows"], left_out["timeline_events"])]


def render_html(report: IncidentReport) -> str:
    """The whole report page (see the module docstring)."""
    parts = sections(report)
    data = embedded_data(report)
    nav = "".join('<a href="#%s">%s%s</a>' % (s.anchor, h(s.title), " (%d)" % s.count if s.count is not None else "")
                  for s in parts)
    body = "\n".join('<section id="%s"><h2>%s</h2>\n%s\n</section>' % (s.anchor, h(s.title), s.body) for s in parts)
    notes = "".join('<p class="note">%s</p>' % h(n) for n in report.notes + _left_out_note(data["left_out"]))
    return """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%s">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="bpftools %s">
<title>%s</title>
<style>%s</style>
</head><body>
<header class="top"><h1>%s</h1>
<p class="meta">generated %s &middot; kernel <code>%s</code>%s &middot; %s</p>%s
<nav>%s</nav></header>
<main>
%s
</main>
<script type="application/json" id="bpftools-report-data">%s</script>
<script>%s</script>
</body></html>
""" % (h(content_security_policy()), h(report.tool_version), h(report.title), _CSS, h(report.title), h(report.generated), h(report.kernel_release),
       " &middot; bpftools %s" % h(report.tool_version) if report.tool_version else "",
       _summary(report.verdicts) or "no verdicts", notes, nav, body, json_for_script(data), _PAGE_JS)


_CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fff}
header.top{background:#1f2933;color:#f5f7fa;padding:14px 24px}
header.top h1{margin:0 0 4px;font-size:22px}
header.top code{color:#fff}
header.top nav a{color:#9fd3ff;margin-right:16px;text-decoration:none}
.meta{margin:0 0 8px;color:#cbd2d9}
main{padding:8px 24px 40px;max-width:1260px}
h2{border-bottom:2px solid #e4e7eb;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #d9dde2;padding:3px 8px;text-align:left;vertical-align:top;word-break:break-word}
th{background:#f0f2f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{border:1px solid #d9dde2;border-left:8px solid #999;border-radius:4px;padding:8px 14px;margin:10px 0}
.verdict.detected{border-left-color:#c62828}
.verdict.at-risk{border-left-color:#ef8f00}
.verdict.clear{border-left-color:#2e7d32}
.verdict h4{margin:8px 0 2px}
.status,.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;background:#777;font-size:12px}
.detected .status,.badge.detected{background:#c62828}
.at-risk .status,.badge.at-risk{background:#ef8f00}
.clear .status,.badge.clear{background:#2e7d32}
.ok{color:#2e7d32;font-weight:bold}.bad{color:#c62828;font-weight:bold}.unknown{color:#777}
.note,.empty{color:#616e7c}
.flamegraph{margin:10px 0 24px}
.fg-svg{overflow-x:auto}
.fg-search{margin:4px 0}
.fg-search input{width:320px;padding:2px 6px}
.fg-result{margin-left:10px;color:#616e7c}
.timeline text{font:11px Helvetica,Arial,sans-serif;fill:#333}
pre.command{background:#f5f7fa;border:1px solid #d9dde2;padding:8px;white-space:pre-wrap;word-break:break-all}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dl.facts dt{font-weight:bold}dl.facts dd{margin:0}
@media print{header.top{background:none;color:#000}.fg-search{display:none}}
"""

# Wires the search boxes above each flame graph to that graph's own script (svg.bpfFlame).
_PAGE_JS = r"""
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("form.fg-search"), function (form) {
    var box = document.getElementById(form.getAttribute("data-target"));
    var svg = box && box.querySelector("svg.bpffg"), result = form.querySelector(".fg-result");
    var input = form.querySelector("input");
    if (!svg || !svg.bpfFlame) { form.style.display = "none"; return; }
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var r = svg.bpfFlame.search(input.value);
      result.textContent = input.value ? r.frames + " frame(s), " + r.percent + "% of the total" : "";
    });
    form.querySelector(".fg-reset").addEventListener("click", function () {
      input.value = "";
      result.textContent = "";
      svg.bpfFlame.resetSearch();
      svg.bpfFlame.unzoom();
    });
  });
})();
"""
