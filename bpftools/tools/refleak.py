"""refleak: who took the references a network device is waiting for ("waiting for DEV to become free").

Every reference taken (+1) and dropped (-1) on the chosen devices is attributed to a kernel stack,
task and cgroup; per device, the holds that no put balanced are the leak. Strategies, chosen by what
the kernel offers (``--strategy``, default all that work here), combined:

- watch: hardware watchpoints on the reference counter itself (one per CPU on its per-cpu slot),
  armed when a watched device appears; at most 4 devices at once (debug registers per CPU).
- holders: the kernel objects that pin a device (dst, neigh, in_dev, inet6_dev, fib nexthop) with
  their creation stacks; at unregister, the ones still alive; dst entries bound to a route exception
  (fnhe) are marked: device <- dst <- who cached it.
- ref_tracker: ref_tracker_alloc/free on CONFIG_NET_DEV_REFCNT_TRACKER kernels (exact pairs).
- inline: kprobes on the inlined dev_hold/dev_put sites that debug info lists (``--debuginfo``).

The analysis is analyses/refbalance.py; the plan and the capture session are in bpftools/refleak/.
"""
import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import click
from rich.markup import escape
from rich.table import Table as RichTable

from ..analyses.folded import fold, folded_lines
from ..analyses.refbalance import Analysis, analyze, folded_samples
from ..errors import BadInput, MissingKernelFeature
from ..flamegraph import render_svg
from ..html_report import MAX_TIMELINE_MARKERS, Activity, FlameGraph, IncidentReport, Table
from ..capture import Outline
from ..kernel.target import Running, Target
from ..kernel.tracefs import tracing_ready
from ..live import LiveRun
from ..options import CONTEXT, PATH, POSITIVE
from ..outfiles import write_text
from ..refleak import inline_sites as sites_mod
from ..refleak.devices import make_selector
from ..refleak.plan import MissingHook, MissingOffsets, target_plan
from ..refleak.session import Session, run
from ..render import one_line, terminal

TOOL = "refleak"
ALL_STRATEGIES = ("watch", "holders", "ref_tracker", "inline")
TOP_STACKS = 10


def parse_strategies(ctx: Optional[click.Context], param: Optional[click.Parameter], value: str) -> List[str]:
    """click callback of --strategy: ``auto`` or a comma list of watch, holders, ref_tracker, inline
    (a usage error otherwise)."""
    if value in ("auto", "all", ""):
        return list(ALL_STRATEGIES)
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in chosen if s not in ALL_STRATEGIES]
    if bad or not chosen:
        raise click.BadParameter("%r: choose from auto, %s (comma-separated)" % (value, ", ".join(ALL_STRATEGIES)),
                                 ctx, param)
    return chosen


def inline_sites(debuginfo: List[str], wanted: bool, say: Any) -> List[Any]:
    """The inlined hold/put sites of the DEBUGINFO files (or of a debug vmlinux found for this
    kernel), via bpftools.refleak.inline_sites; [] when the strategy is not wanted or there is no debug info."""
    if not wanted:
        return []
    paths = list(debuginfo)
    if not paths:
        found = sites_mod.find_debug_vmlinux(os.uname().release)
        paths = [found] if found else []
    out = []  # type: List[Any]
    for path in paths:
        if not os.path.isfile(path):
            raise BadInput("--debuginfo %s: no such file" % path)
        sites, cached = sites_mod.cached_sites(path)
        say("inline: %d hold/put sites in %s%s" % (len(sites), path, " (cached)" if cached else ""))
        out.extend(sites)
    return out


def outline(target: Target) -> Outline:
    """The plan of ``bpftools refleak`` on TARGET, in words (every strategy asked for, no debug info)."""
    return plan_for(target, list(ALL_STRATEGIES), True, []).outline()


def plan_for(target: Target, strategies: List[str], watch_new: bool, sites: List[Any]) -> Any:
    """The refleak plan of TARGET (MissingKernelFeature when a required hook is missing)."""
    try:
        return target_plan(target, strategies, watch_new, inline_sites=len(sites),
                           inline_vmlinux=any(s.module is None for s in sites))
    except MissingHook as err:
        raise MissingKernelFeature("a kprobe on %s (%s)" % (err.wanted, err), fallback="a kernel with kprobes")
    except MissingOffsets as err:
        raise MissingKernelFeature(str(err), fallback="a kernel with BTF (CONFIG_DEBUG_INFO_BTF) or its own headers")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

STATE_TEXT = {"live": "live", "unregistered": "unregistered, not freed", "freed": "freed"}


def device_line(d: Any) -> str:
    """One line per device: identity, state, level and verdict."""
    level = "" if d.level is None else ", %d reference(s) now" % d.level
    leak = ""
    if d.verdict == "leak":
        leak = ": LEAK, waiting for %s reference(s)" % (d.leaked if d.leaked is not None else "?")
    return "%s (ifindex %d, netns %s, %s) %s%s%s%s" % (
        d.name, d.ifindex, d.netns, d.how, STATE_TEXT.get(d.state, d.state), level, leak,
        " [uncertain]" if d.uncertain else "")


def frames_text(stack: Optional[List[str]], limit: int = 8) -> str:
    """``a <- b <- c`` innermost first, at most LIMIT frames."""
    if not stack:
        return "[no stack]"
    shown = list(stack[:limit])
    return " <- ".join(shown) + (" <- ..." if len(stack) > limit else "")


def render_result(result: Any, console: Any, top: int = TOP_STACKS) -> None:
    """The end-of-run report: per device a balance table, the unbalanced stacks and the holders."""
    leaking = [d.name for d in result.devices if d.verdict == "leak"]
    console.print("[bold]refleak[/bold]: %d device(s) seen, strategies %s%s" % (
        len(result.devices), ", ".join(result.strategies) or "none",
        "; [red]leaking: %s[/red]" % escape(", ".join(leaking)) if leaking else "; no leak"))
    if result.lost or result.dropped:
        console.print("[yellow]%d record(s) lost, %d dropped in the kernel: balances may be off[/yellow]"
                      % (result.lost, result.dropped))
    for d in result.devices:
        console.print()
        console.print(escape(device_line(d)), highlight=False)
        if d.watch is not None and not d.watch.get("armed"):
            console.print("  watchpoints: not armed (%s)" % escape(str(d.watch.get("reason", "?"))))
        table = RichTable(show_edge=False, pad_edge=False)
        for col in ("strategy", "holds", "puts", "net", "level", "older", "held", "matched by", "status"):
            table.add_column(col)
        for s in d.strategies:
            level = "%s -> %s" % (_n(s.level_start), _n(s.level_end)) if s.level_start is not None else "-"
            matched = ", ".join("%s %d" % kv for kv in sorted(s.matched.items())) or "-"
            status = "uncertain" if s.uncertain else ("balanced" if not s.outstanding else "%+d" % s.outstanding)
            table.add_row(s.strategy, str(s.holds), str(s.puts), "%+d" % s.net, level, _n(s.older),
                          str(s.outstanding), matched, status)
        if d.strategies:
            console.print(table)
        for s in d.strategies:
            for reason in s.uncertain[:5]:
                console.print("  [yellow]uncertain[/yellow] %s" % escape(reason))
            if s.skipped:
                console.print("  %s: the kernel did not run our program for %d of %d watchpoint hit(s) (another "
                              "BPF program was running on that CPU)" % (s.strategy, s.skipped, s.hits))
            if s.untrapped:
                console.print("  %s: %d write(s) did not trap at all (perf counted no hit for them)"
                              % (s.strategy, s.untrapped))
            for row in s.unbalanced[:top]:
                console.print("  %s %+d  %s" % (s.strategy, row.count, escape(frames_text(row.stack))), highlight=False)
                when = "%.3fs" % (row.first_ns / 1e9) if row.first_ns == row.last_ns else "%.3fs..%.3fs" % (
                    row.first_ns / 1e9, row.last_ns / 1e9)
                console.print("      by %s%s, at %s" % (escape(", ".join(row.processes)),
                                                       (" cgroup " + escape(", ".join(row.cgroups))) if row.cgroups
                                                       else "", when), highlight=False)
        _holders(d, console)


def _n(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def _holder_text(h: Any) -> str:
    fnhe = " bound to route exception %s%s" % (h.fnhe, " (input)" if h.fnhe_input else "") if h.fnhe else ""
    return "%s %s by %s%s: %s" % (h.kind, h.obj, h.process, fnhe, frames_text(h.stack, 6))


def _holders(d: Any, console: Any) -> None:
    if not d.holders_seen:
        return
    if d.unregistered_ns is not None:
        console.print("  holders alive at unregister: %d (of %d seen)" % (len(d.holders_at_unregister), d.holders_seen))
        for h in d.holders_at_unregister[:TOP_STACKS]:
            gone = " (released by %s)" % h.ended_by if h.ended_by else ""
            still = next((a for a in d.holders_alive if a.obj == h.obj), None)
            console.print("    %s%s" % (escape(_holder_text(h)), "" if still else escape(gone or " (released later)")),
                          highlight=False)
    if d.holders_alive and d.state != "freed":
        console.print("  holders alive now: %d" % len(d.holders_alive))
        for h in d.holders_alive[:TOP_STACKS]:
            console.print("    %s" % escape(_holder_text(h)), highlight=False)


def folded_text(result: Any) -> str:
    """The unbalanced stacks as folded lines (flamegraph.pl / inferno input)."""
    lines = folded_lines(fold(folded_samples(result)))
    return "\n".join(lines) + ("\n" if lines else "")


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of a refleak recording: the end-of-run report, recomputed."""
    render_result(analyze(rec.events), console)


# Timeline lanes of the records counted over time (holds and puts by the sign of their delta).
ACTIVITY_LANES = {"device": "device", "unregister": "unregister", "free": "free", "holder_new": "holder created",
                  "holder_end": "holder released", "lost": "records lost", "dropped": "records dropped"}
MARKED = frozenset(["device", "unregister", "free"])   # drawn one by one too (the first MAX_TIMELINE_MARKERS)


def _activity_lane(e: Dict[str, Any]) -> Optional[str]:
    """The timeline lane of a timed record, None for the others."""
    kind = e.get("type")
    if type(e.get("ts_ns")) is not int or type(kind) is not str:
        return None
    if kind == "ref":
        delta = e.get("delta")
        return ("hold" if delta > 0 else "put") if type(delta) is int and delta else None
    return ACTIVITY_LANES.get(kind)


def incident_report(header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: str) -> Any:
    """The HTML/flame-graph report of a refleak recording (EVENTS read once): every timed record counted
    in the activity timeline, the device lifecycle records marked one by one (the first ones)."""
    activity = Activity()
    timeline = []  # type: List[Tuple[int, str, str]]

    def marking(stream: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for e in stream:
            lane = _activity_lane(e)
            if lane is not None:
                n = e.get("count") if e["type"] in ("lost", "dropped") else 1
                activity.add(e["ts_ns"], lane, n if type(n) is int and n > 0 else 1)
                if e["type"] in MARKED and len(timeline) < MAX_TIMELINE_MARKERS:
                    timeline.append((e["ts_ns"], "%s %s" % (e["type"], e.get("dev")), e["type"]))
            yield e
    result = analyze(marking(events))
    unmarked = sum(sum(row) for kind, row in activity.to_json()["counts"].items() if kind in MARKED) - len(timeline)
    leaking = [d for d in result.devices if d.verdict == "leak"]
    rows = []
    for d in result.devices:
        for s in d.strategies:
            rows.append([d.name, d.ifindex, d.state, s.strategy, s.holds, s.puts, s.net, s.level_start, s.level_end,
                         s.older, s.outstanding, "yes" if s.uncertain else ""])
    stacks = [[d.name, s.strategy, r.count, " <- ".join(r.stack), ", ".join(r.processes), ", ".join(r.cgroups)]
              for d in result.devices for s in d.strategies for r in s.unbalanced]
    holders = [[d.name, h.kind, h.obj, h.process, h.fnhe or "", " <- ".join(h.stack or []),
                "alive" if any(a.obj == h.obj for a in d.holders_alive) else (h.ended_by or "")]
               for d in result.devices for h in d.holders_at_unregister]
    verdict = {
        "incident": "netdev_refcount_leak", "title": "Device references not dropped",
        "status": "detected" if leaking else "clear",
        "summary": ("%d device(s) wait for references: %s" % (len(leaking), ", ".join(
            "%s (%s)" % (d.name, d.leaked) for d in leaking))) if leaking
        else "every watched device balanced or still in use (%d watched)" % len(result.devices),
        "evidence": ["%s: %+d from %s" % (d.name, r.count, " <- ".join(r.stack[:4]))
                     for d in leaking for s in d.strategies for r in s.unbalanced][:20],
        "remediation": [],
    }
    return IncidentReport(
        title="refleak: device references", command=list(header.get("argv", [])), generated=generated,
        kernel_release=str(header.get("kernel_release", "")), verdicts=[verdict],
        tables=[Table("Balance per device and strategy", ["device", "ifindex", "state", "strategy", "holds", "puts",
                                                            "net", "level at sync", "level now", "older", "held",
                                                            "uncertain"], rows),
                Table("Unbalanced stacks", ["device", "strategy", "count", "stack", "processes", "cgroups"], stacks),
                Table("Holders alive at unregister", ["device", "kind", "object", "creator", "route exception",
                                                      "creation stack", "then"], holders)],
        timeline=timeline,
        flame_graphs=[FlameGraph("References not dropped, by stack", fold(folded_samples(result)),
                                 unit="references", name="refleak")],
        capabilities=header.get("capabilities"), tool_version=str(header.get("version", "")), activity=activity,
        notes=["the timeline marks the first %d device records: %d more are counted in its lanes only"
               % (MAX_TIMELINE_MARKERS, unmarked)] if unmarked else [])


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

@click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools refleak                          # every device created from now on, until Ctrl-C
  bpftools refleak --dev eth0 --dev 'veth*' # these devices (existing and new)
  bpftools refleak --netns cni-1234 -d 600  # every device of that network namespace, 10 minutes
  bpftools refleak --record leak.jsonl      # keep the records: bpftools report leak.jsonl
  bpftools refleak --strategy watch,holders --folded leak.folded --svg leak.svg
  bpftools refleak --debuginfo /usr/lib/debug/boot/vmlinux-$(uname -r)   # + inlined hold/put sites
\b
The report comes at the end (duration, Ctrl-C or SIGTERM): per device, holds, puts and the level of
its reference count per strategy, the stacks whose holds no put balanced, and the objects (dst,
neigh, in_dev...) still pinning it. Hardware watchpoints: 4 debug registers per CPU, so at most 4
devices are watched at once; the others wait until a watched device is freed.
""")
@click.option("--dev", "patterns", multiple=True, metavar="NAME|PATTERN",
              help="Watch devices with this name (shell pattern), existing or new; repeatable.")
@click.option("--netns", multiple=True, metavar="NAME|PATH",
              help="Watch the devices of this network namespace (iproute2 name or a path); repeatable.")
@click.option("--strategy", "strategies", default="auto", show_default=True, metavar="LIST", callback=parse_strategies,
              help="auto, or a comma list of watch, holders, ref_tracker, inline.")
@click.option("--debuginfo", multiple=True, metavar="PATH",
              help="vmlinux or module ELF with DWARF: probe its inlined hold/put sites; repeatable.")
@click.option("-d", "--duration", type=POSITIVE, metavar="SECONDS", help="Stop after SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@click.option("--record", type=PATH, metavar="FILE", help="Write a recording (JSON lines) to FILE.")
@click.option("--report", "report_dir", type=PATH, metavar="DIR",
              help="At the end, write report.html and the flame graph to DIR.")
@click.option("--folded", type=PATH, metavar="FILE",
              help="At the end, write the unbalanced stacks as folded lines ('-': stdout).")
@click.option("--svg", type=PATH, metavar="FILE", help="At the end, write a flame graph of the unbalanced stacks.")
@click.option("--ready-file", type=PATH, metavar="FILE", hidden=True,
              help="Touch FILE once the devices are watched (tests).")
@click.option("--ebpf", is_flag=True, hidden=True, help="Print the plan, BPF program and cflags, then exit.")
def command(patterns: List[str], netns: List[str], strategies: List[str], debuginfo: List[str],
            duration: Optional[float], as_json: bool, record: Optional[str], report_dir: Optional[str],
            folded: Optional[str], svg: Optional[str], ready_file: Optional[str], ebpf: bool) -> None:
    """Attribute device references (holds and puts) to stacks and show the ones never dropped."""
    if as_json and folded == "-":
        raise click.UsageError("--json and --folded - both print on stdout: write the folded stacks to a file")
    selector = make_selector(list(patterns), list(netns))
    tracing_ready()
    say = _say
    sites = inline_sites(list(debuginfo), "inline" in strategies, say)
    plan = plan_for(Running(), strategies, watch_new=True, sites=sites)
    if ebpf:
        click.echo(plan.describe())
        return
    for note in plan.notes:
        say(note)
    for name, why in sorted(plan.off.items()):
        if why != "not requested":
            say("%s: off (%s)" % (name, why))
    say("watching %s; strategies: %s" % (selector.describe(), ", ".join(plan.strategies) or "none"))
    _run(plan, selector, sites, duration, as_json, record, report_dir, folded, svg, ready_file)


def _say(line: str) -> None:
    sys.stderr.write("bpftools: %s\n" % one_line(line))
    sys.stderr.flush()


def _run(plan: Any, selector: Any, sites: List[Any], duration: Optional[float], as_json: bool,
         record: Optional[str], report_dir: Optional[str], folded: Optional[str], svg: Optional[str],
         ready_file: Optional[str]) -> None:
    analysis = Analysis()                 # counts, not the records: a capture of any length
    progress = _progress()
    with LiveRun(TOOL, record, report_dir, incident_report=incident_report) as liverun:
        def emit(event: Dict[str, Any]) -> None:
            analysis.feed(event)
            liverun.record(event)
            progress(event)

        emit(plan.to_json())
        session = Session(plan, selector, emit, _say, sites=sites)
        try:
            run(session, duration, liverun.ready_callback(ready_file))
        except KeyboardInterrupt:
            _finish(analysis.result(), as_json, folded, svg)     # the report is what Ctrl-C asks for
            raise
        _finish(analysis.result(), as_json, folded, svg)


def _progress() -> Callable[[Dict[str, Any]], None]:
    """A printer of lifecycle lines on stderr while the capture runs (device names by address)."""
    names = {}  # type: Dict[str, str]

    def show(event: Dict[str, Any]) -> None:
        kind, dev = event.get("type"), event.get("dev")
        if kind == "device":
            names[dev] = event["name"]
        elif kind == "unregister":
            _say("%s: unregistering, %s reference(s)" % (names.get(dev, dev), event.get("level")))
        elif kind == "free":
            _say("%s: freed" % names.pop(dev, dev))
    return show


def _finish(result: Any, as_json: bool, folded: Optional[str], svg: Optional[str]) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        render_result(result, terminal())
    if folded:
        text = folded_text(result)
        if folded == "-":
            sys.stdout.write(text)
        else:
            write_text(folded, text)
    if svg:
        write_text(svg, render_svg(fold(folded_samples(result)), "References not dropped, by stack", unit="references"))
