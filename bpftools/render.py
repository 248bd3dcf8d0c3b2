"""Terminal rendering with rich: results in, text out. Tests pass Console(file=StringIO())."""
from typing import Any, Dict, List

from rich.console import Console
from rich.markup import escape
from rich.table import Table

KMEM_HEADER = "%-14s %-7s %-16s %-5s %-8s %-6s %s" % ("TIME(s)", "PID", "COMM", "OP", "RESULT", "VALUE", "PATH  [WRITER CGROUP]")
STATUS_STYLE = {"detected": "bold red", "at-risk": "yellow", "clear": "green", "unknown": "dim"}


def kmem_line(event: Any) -> str:
    """One kmemsnoop line (plain text, like opensnoop)."""
    result = event.error or str(event.ret)
    value = repr(event.value) if event.value is not None else "-"
    where = event.writer_cgroup or "?"
    if event.container:
        where = "%s pod=%s" % ((event.container.get("container_id") or "")[:12], event.container.get("pod_uid") or "-")
    return "%-14.6f %-7d %-16s %-5s %-8s %-6s %s  [%s]" % (
        event.ts_ns / 1e9, event.tgid, event.comm, event.op, result, value, event.path, where)


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
        syms.add_row(r.wanted, escape(r.attach or "-"), r.how, escape(r.fallback or r.note or ""))
    console.print(syms)


def recording(rec: Any, console: Console) -> None:
    """Re-render a recording with the renderer of the tool that made it."""
    header = rec.header
    console.print("[bold]%s[/bold] recording: bpftools %s on %s, %d events%s" % (
        escape(rec.tool), escape(str(header.get("version"))), escape(str(header.get("kernel_release"))),
        len(rec.events), ", %d damaged line(s) skipped" % rec.damaged_lines if rec.damaged_lines else ""))
    console.print("command: %s" % escape(" ".join(str(a) for a in header.get("argv", []))))
    if rec.tool == "kmemsnoop":
        from .tools.kmemsnoop import KmemFileEvent
        console.print(KMEM_HEADER, markup=False)
        for obj in rec.events:
            console.print(kmem_line(KmemFileEvent.from_json(obj)), markup=False)
    else:
        for obj in rec.events:
            console.print(escape(str(obj)))
    trailer = rec.trailer
    if trailer is None:
        console.print("[yellow]no trailer: the run was cut off (the events above are all that was recorded)[/yellow]")
    else:
        if trailer.get("lost_events"):
            console.print("[red]%d events lost during capture[/red]" % trailer["lost_events"])
        if trailer.get("interrupted"):
            console.print("run interrupted with Ctrl-C")
