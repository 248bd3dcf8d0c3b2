"""Terminal rendering with rich: results in, text out. Tests pass Console(file=StringIO()).

Names, comms, stack frames and argv come from kernel logs and recordings that anyone may have written:
:func:`visible` escapes their control characters before they reach a terminal. The console of
:func:`terminal` applies it to everything printed through it; plain lines (``click.echo``) call it.
"""
import re
from typing import Any, Callable, List, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"detected": "bold red", "at-risk": "yellow", "clear": "green", "unknown": "dim"}
# What a terminal acts on or what reorders text: C0 (tab included) but newline, DEL, C1 (0x9b is CSI),
# the Unicode line and paragraph separators, the bidirectional marks, embeddings, overrides and isolates.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
CONTROL_OR_NEWLINE = re.compile("\n|" + CONTROL.pattern)


def _escaped(match: Any) -> str:
    code = ord(match.group())
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def visible(text: object) -> str:
    r"""TEXT with its control characters escaped visibly, newlines kept: ESC shows as ``\x1b``,
    U+202E as ``\u202e`` (a backslash in TEXT is left as it is)."""
    return CONTROL.sub(_escaped, str(text))


def one_line(text: object) -> str:
    """TEXT as :func:`visible` shows it, newlines escaped too: an error message stays one line."""
    return CONTROL_OR_NEWLINE.sub(_escaped, str(text))


class Terminal(Console):
    """A rich console that shows control characters escaped: :func:`visible` on every string it renders
    (markup, table cells, titles)."""

    def render_str(self, text: str, **kwargs: Any) -> Any:
        return super().render_str(visible(text), **kwargs)


def terminal() -> Console:
    """The console every command prints its verdicts and tables with (stdout, no highlighting)."""
    return Terminal(highlight=False)


def command_line(argv: Any) -> str:
    """A recording's argv as one command line (a list of words; a string as it is)."""
    return " ".join(str(a) for a in argv) if isinstance(argv, list) else str(argv or "")


def capabilities(caps: Any, console: Console) -> None:
    """The capability table of `doctor --capabilities`."""
    console.print("[bold]Kernel[/bold] %s  (%s), cgroup layout: %s" % (
        escape(caps.release), escape(caps.distro), caps.cgroup_layout))
    table = Table(title="Capabilities", show_lines=False)
    table.add_column("feature")
    table.add_column("ok")
    table.add_column("detail")
    for c in caps.checks:
        mark = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[dim]?[/dim]"}[c.ok]
        table.add_row(c.name, mark, escape(c.detail))
    console.print(table)
    tps = Table(title="Tracepoints")
    tps.add_column("tracepoint")
    tps.add_column("present")
    for name, present in sorted(caps.tracepoints.items()):
        tps.add_row(name, "yes" if present else "[red]no[/red]")
    console.print(tps)
    syms = Table(title="Attach points for this kernel")
    for col in ("wanted", "attach", "how", "fallback / note"):
        syms.add_column(col)
    for r in caps.symbols:
        detail = ("fallback: %s" % r.fallback) if r.fallback else ("" if r.how == "exact" else r.note)
        syms.add_row(r.wanted, escape(r.attach or "-"), r.how, escape(detail))
    console.print(syms)


def _counts(events: int, damaged: int) -> str:
    return ", %d events%s" % (events, ", %d damaged line(s) skipped" % damaged if damaged else "")


def recording(rec: Any, console: Console, renderer: Optional[Callable[[Any, Console], None]]) -> None:
    """Re-render a recording with RENDERER, that of the tool that made it (None: an unknown tool, its
    events printed as they are)."""
    header = rec.header
    listed = isinstance(rec.events, list)       # else a stream: counted once read, said at the end
    console.print("[bold]%s[/bold] recording: bpftools %s on %s%s" % (
        escape(rec.tool), escape(str(header.get("version"))), escape(str(header.get("kernel_release"))),
        _counts(len(rec.events), rec.damaged_lines) if listed else ""))
    console.print("command: %s" % escape(command_line(header.get("argv"))))
    if renderer is not None:
        renderer(rec, console)
    else:
        for obj in rec.events:
            console.print(escape(str(obj)))
    if not listed:
        console.print("read%s" % _counts(rec.count, rec.damaged_lines)[1:])
    trailer = rec.trailer
    if trailer is None:
        console.print("[yellow]no trailer: the run was cut off (the events above are all that was recorded)[/yellow]")
    else:
        if trailer.get("lost_events"):
            console.print("[red]%d events lost during capture[/red]" % trailer["lost_events"])
        if trailer.get("interrupted"):
            console.print("run interrupted with Ctrl-C")


def triage(report: Any, console: Console) -> None:
    """The doctor's verdicts first, then the evidence behind them."""
    console.print("[bold]bpftools doctor[/bold]  kernel %s, log: %s (%d lines)" % (
        escape(report.release), escape(report.log_source), report.log_lines))
    for v in report.verdicts:
        data = v.to_json()
        style = STATUS_STYLE.get(v.status, "")
        console.print()
        console.print("[%s]%s[/%s]  %s" % (style, v.status.upper(), style, escape(data["title"])))
        console.print("  %s" % escape(v.summary))
        for line in v.evidence:
            console.print("  - %s" % escape(line))
        for line in v.remediation:
            console.print("  [bold]fix:[/bold] %s" % escape(line))
    findings_table(report.findings, console)
    _audit(report.audit, console)
    _bugs(report.bugs, console)
    _live_patches(report.live_patches, console)
    if report.runtimes:
        console.print("runtimes: %s" % escape(", ".join(
            "%s %s" % (r.to_json().get("name"), r.to_json().get("version")) for r in report.runtimes)))


def findings_table(findings: List[Any], console: Console) -> None:
    """The kernel log findings, one row each, with the confidence the analyser gave it."""
    if not findings:
        console.print("\nkernel log: no findings")
        return
    table = Table(title="Kernel log findings")
    for col in ("kind", "count", "confidence", "first seen", "last seen", "what"):
        table.add_column(col, no_wrap=col in ("kind", "confidence"))
    for f in findings:
        data = f.to_json()
        what = ", ".join(c["cache"] for c in data.get("caches", [])) or \
            ", ".join("%s (max count %s)" % (d["name"], d.get("max_usage_count")) for d in data.get("devices", [])) or \
            ", ".join("%s/%s" % (t.get("task") or "?", t.get("pid") or "?") for t in data.get("tasks", []))
        table.add_row(f.kind, str(f.count), f.confidence, escape(_seen(f.first_seen)), escape(_seen(f.last_seen)),
                      escape(what))
    console.print(table)


def _seen(stamp: Optional[object]) -> str:
    """A log line's time stamp, or ``-`` for a line without one."""
    return "-" if stamp is None else str(stamp)


def _audit(audit: Any, console: Console) -> None:
    if audit is None:
        console.print("kmem audit: no cgroup v1 memory controller mounted (check does not apply)")
        return
    data = audit.to_json()
    if not data.get("applies", True):
        console.print("kmem audit of this node: %s" % escape(str(data.get("explanation", "does not apply"))))
        return
    summary = data.get("summary", {})
    console.print("kmem audit of this node: %s" % escape(", ".join("%s=%s" % kv for kv in sorted(summary.items()))))
    active = [c for c in data.get("cgroups", []) if c.get("active")]
    if active:
        table = Table(title="cgroups with kmem accounting active")
        for col in ("cgroup", "usage", "limit", "failcnt", "container / pod"):
            table.add_column(col)
        for c in active[:50]:
            cont = c.get("container") or {}
            table.add_row(escape(c.get("path", "")), str(c.get("usage")), str(c.get("limit")), str(c.get("failcnt")),
                          escape("%s %s" % ((cont.get("container_id") or "")[:12], cont.get("pod_uid") or "")))
        console.print(table)


def _bugs(bugs: List[Any], console: Console) -> None:
    if not bugs:
        return
    table = Table(title="Known-bug matrix for this kernel")
    for col in ("bug", "status", "why"):
        table.add_column(col)
    for b in bugs:
        data = b.to_json()
        style = {"affected": "red", "fixed": "green"}.get(data.get("status"), "dim")
        status = str(data.get("status"))
        if data.get("live_patch"):
            status += " (live patch %s)" % data["live_patch"]
        table.add_row(escape(str(data.get("title"))), "[%s]%s[/%s]" % (style, escape(status), style),
                      escape(str(data.get("reason"))))
    console.print(table)


def _live_patches(found: Any, console: Console) -> None:
    """The live patches this node runs, each with the functions it replaces."""
    if found is None:
        return
    data = found.to_json()
    taint = {True: "kernel tainted by a live patch (K)", False: "no live-patch taint", None: "taint unknown"}
    if not data["patches"] and not data["modules"]:
        console.print("live patches: none (%s)" % taint[data["tainted"]])
        return
    table = Table(title="Live patches (%s)" % taint[data["tainted"]])
    for col in ("patch", "source", "state", "replaces"):
        table.add_column(col)
    for p in data["patches"]:
        state = "enabled" if p["enabled"] else "disabled" if p["enabled"] is False else "?"
        if p["transition"]:
            state += ", in transition"
        table.add_row(escape(p["name"]), p["source"], state, escape(", ".join(
            "%s:%s,%d" % (f["object"], f["name"], f["sympos"]) for f in p["functions"]) or "-"))
    for name in data["modules"]:
        if all(p["name"] != name for p in data["patches"]):
            table.add_row(escape(name), "module (K)", "loaded", "? (no sysfs entry)")
    console.print(table)

