"""iojitter: why writes stall: slab failures, mempool sleeps and slow writebacks, correlated per thread.

Runs slabfail, mempoolwait and writeslow at once (one BPF program) and hands the stream to
:mod:`bpftools.analyses.iojitter`, which gives each slow writeback a causal record ("ext4_writepages
stalled 5.02 s: slab fail biovec-64 -> mempool wait 5.00 s (timed out)"), the share of slow writebacks
the mempool explains, per container/pod, and folded stacks weighted by time blocked.

In tracepoint mode the sleeps are sched_switch D-state sleeps of threads inside a traced writeback,
recognised as mempool waits by their stack; other sleeps in a stall are shown as "other blocking"
(e.g. ``blk_mq_get_tag``: the device queue was full).
"""
import json
from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import click
from rich.markup import escape
from rich.table import Table

from ..analyses import folded as folded_stacks
from ..analyses.iojitter import KEEP_EPISODES, Correlator, Episode, Result, correlate
from ..analyses.verdicts import KMEM
from ..html_report import Activity, FlameGraph, IncidentReport
from ..html_report import Table as ReportTable
from ..iostall import face as io
from ..iostall.program import Decoder
from ..iostall.sections import decode, plan
from ..live import then
from ..capture import Outline
from ..kernel.target import Running, Target
from ..options import CONTEXT, NON_NEGATIVE, POSITIVE
from ..render import terminal

TOOL = "iojitter"
MIN_MS = 100.0        # a slow writeback (--min-ms)
WAIT_MIN_MS = 1.0     # the shortest mempool sleep followed (--wait-min-ms)

CONFIDENCE_STYLE = {"high": "green", "medium": "yellow", "low": "red"}
MAX_EPISODES = 20


def _secs(ns: int) -> str:
    return folded_stacks.fixed(ns / 1e9, 2)


def render(result: Result, console: Any, max_episodes: int = MAX_EPISODES) -> None:
    """The verdict, the episodes table and the per-container table."""
    style = CONFIDENCE_STYLE.get(result.confidence, "")
    console.print("[bold]Verdict:[/bold] %s" % escape(result.verdict))
    console.print("confidence: [%s]%s[/%s]  (sleeps from %s)" % (style, result.confidence, style, result.sleeps_from))
    for reason in result.reasons:
        console.print("  - %s" % escape(reason))
    if result.episodes:
        shown = sorted(result.episodes, key=lambda e: (-e.duration_ns, e.start_ns))[:max_episodes]
        table = Table(title="Slow writebacks (longest %d of %d)" % (len(shown), result.slow_writebacks))
        for col in ("#", "start(s)", "pid/tid", "comm", "stall(s)", "mempool(s)", "slab fails", "dev:ino", "group"):
            table.add_column(col)
        for i, e in enumerate(shown, 1):
            table.add_row(
                str(i), "%.3f" % (e.start_ns / 1e9), "%d/%d" % (e.tgid, e.tid), escape(e.comm),
                folded_stacks.fixed(e.duration_ns / 1e9, 3), folded_stacks.fixed(e.mempool_ns / 1e9, 3),
                str(len(e.slab_failures)), "%s:%s" % (e.dev or "?", "?" if e.ino is None else e.ino), escape(e.group))
        console.print(table)
        console.print("[bold]Causal records[/bold] (sleeps in order, then the writeback calls, outermost first)")
        for i, e in enumerate(shown, 1):
            console.print("  %d. %s%s" % (i, escape(e.chain()), " [red](records lost meanwhile)[/red]" if e.incomplete else ""))
    if result.groups:
        groups = Table(title="By container / pod")
        for col in ("group", "slow writebacks", "explained by mempool", "stalled(s)", "in mempool(s)", "slab fails"):
            groups.add_column(col)
        for g in result.groups:
            groups.add_row(escape(g.group), str(g.episodes), str(g.explained), folded_stacks.fixed(g.stalled_ns / 1e9, 3),
                           folded_stacks.fixed(g.mempool_ns / 1e9, 3), str(g.slab_failures))
        console.print(groups)


def render_recording(rec: Any, console: Any) -> None:
    """``bpftools report`` of an iojitter recording: the same analysis and tables as the live run, its
    events read once (a list or a stream); no stacks are folded, as the text shows none."""
    correlator = Correlator(fold=False)
    correlator.feed_all(rec.events)
    trailer_lost = int((rec.trailer or {}).get("lost_events") or 0)
    render(correlator.result(extra_lost=max(0, trailer_lost - correlator.losses.perf_buffer)), console)


def _tallied(events: Iterable[Any], activity: Activity, modes: List[Dict[str, Any]]) -> Iterator[Any]:
    """EVENTS as they pass, each counted in ACTIVITY (the timeline); the first plan (``mode``) goes to MODES."""
    for e in events:
        if isinstance(e, dict):
            kind = _activity_kind(e)
            if kind is not None:
                activity.add(e["ts_ns"], kind, int(e.get("count") or 1) if kind == "records lost" else 1)
            elif not modes and e.get("type") == "mode":
                modes.append(e)
        yield e


def _threshold_ns(mode: Optional[Dict[str, Any]]) -> Optional[int]:
    """The slow-writeback threshold of the run (WB_MIN_NS of its plan, the MODE event), None when not recorded."""
    params = (mode or {}).get("params")
    value = params.get("WB_MIN_NS") if isinstance(params, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _distinct(values: List[Any]) -> List[str]:
    """The non-empty values as text, each once, in first-seen order."""
    return list(OrderedDict((str(v), None) for v in values if v))


def _episode_line(e: Episode) -> str:
    """Evidence for one slow writeback: who, how long, and the mempool waits (or what it waited behind)."""
    line = "tid %d (%s): %s stalled %s s, %s" % (e.tid, e.comm, e.func, _secs(e.duration_ns),
                                                 "explained" if e.explained else "not explained")
    waits = [w for w in e.waits if w.in_mempool]
    if waits:
        line += "; %d mempool wait(s) for %s s, %d timed out; pool %s; mempool_alloc called from %s" % (
            len(waits), _secs(e.mempool_ns), e.mempool_timeouts,
            ", ".join(_distinct([w.pool_cache for w in waits])) or "?",
            ", ".join(_distinct([w.caller for w in waits])) or "?")
    elif e.behind:
        line += "; behind tid %d (%s) in mempool wait %s s on the same inode" % (
            e.behind["tid"], e.behind["comm"], _secs(e.behind["overlap_ns"]))
    else:
        line += "; %s" % e.chain()
    return line


def incident_report(header: Dict[str, Any], events: Iterable[Dict[str, Any]], generated: str) -> Any:
    """The HTML/flame-graph report of an iojitter recording (EVENTS read once): the verdict, episodes,
    containers, the timeline and the time blocked per kernel stack (the same folded stacks as ``--folded``)."""
    correlator = Correlator()
    activity = Activity()
    modes = []  # type: List[Dict[str, Any]]
    correlator.feed_all(_tallied(events, activity, modes))
    result = correlator.result()
    threshold = _threshold_ns(modes[0] if modes else None)
    at_least = " (>= %s s)" % _secs(threshold) if threshold is not None else ""
    pools = result.pool_caches
    if result.slow_writebacks:
        summary = "%d of %d slow writebacks%s explained by mempool waits%s" % (
            result.explained, result.slow_writebacks, at_least, "; pools: %s" % ", ".join(pools) if pools else "")
    else:
        summary = "no slow writeback%s in this recording" % at_least
    verdict = {
        "incident": KMEM, "title": "Slow writebacks stalled in mempool_alloc",
        "status": "detected" if result.explained else "clear", "summary": summary,
        "evidence": [_episode_line(e) for e in result.episodes[:MAX_EPISODES]] + [
            "confidence %s (sleeps from %s)%s" % (result.confidence, result.sleeps_from,
                                                  "".join("; " + r for r in result.reasons))],
        "remediation": [],
    }
    episodes = []
    for e in result.episodes:
        waits = [w for w in e.waits if w.in_mempool]
        frames = next((w.kstack for w in waits + e.waits if w.kstack), None) or e.kstack or []
        episodes.append([
            round(e.start_ns / 1e9, 6), e.tid, e.comm, e.group, e.func, round(e.duration_ns / 1e9, 3),
            ("yes, behind tid %d" % e.behind["tid"]) if e.behind else e.explained, len(waits), e.mempool_timeouts,
            round(e.mempool_ns / 1e9, 3), ", ".join(_distinct([w.pool_cache for w in waits])),
            ", ".join(_distinct([w.caller for w in waits])), " <- ".join(frames[:6]), e.chain()])
    groups = [[g.group, g.episodes, g.explained, round(100.0 * g.explained / g.episodes) if g.episodes else 0,
               round(g.stalled_ns / 1e9, 3), round(g.mempool_ns / 1e9, 3), g.slab_failures] for g in result.groups]
    timeline = []  # type: List[Tuple[int, str, str]]
    for e in result.episodes:
        timeline.append((e.start_ns, "tid %d %s: %s stalled %s s" % (e.tid, e.comm, e.func, _secs(e.duration_ns)),
                         "slow writeback"))
        for w in e.waits:
            what = ("mempool wait %s s%s (%s)" % (_secs(w.duration_ns), " on %s" % w.pool_cache if w.pool_cache else "",
                                                 "timed out" if w.timed_out else "woken")
                    if w.in_mempool else "blocked %s s in %s" % (_secs(w.duration_ns), w.blocked_in or "[no stack]"))
            timeline.append((w.start_ns, "tid %d: %s" % (e.tid, what),
                             "mempool wait" if w.in_mempool else "other sleep"))
    return IncidentReport(
        title="iojitter: slow writebacks and mempool waits", command=list(header.get("argv", [])),
        generated=generated, kernel_release=str(header.get("kernel_release", "")), verdicts=[verdict],
        tables=[ReportTable("Slow writebacks", ["start (s)", "tid", "comm", "group", "function", "stall (s)", "explained",
                                          "mempool waits", "timeouts", "in mempool (s)", "pool cache",
                                          "mempool_alloc caller", "first frames", "causal record"], episodes,
                            note=_left_out(result)),
                ReportTable("By container / pod / cgroup", ["group", "slow writebacks", "explained by mempool",
                                                      "explained (%)", "stalled (s)", "in mempool (s)",
                                                      "slab failures"], groups)],
        timeline=timeline,
        flame_graphs=[FlameGraph("Time in slow writebacks by kernel stack (waits and the rest)", result.folded,
                                 unit="ns", name="iojitter")],
        capabilities=header.get("capabilities"), tool_version=str(header.get("version", "")), activity=activity,
        notes=["%d mempool wait(s) outside any slow writeback" % result.mempool_waits_elsewhere]
        if result.mempool_waits_elsewhere else [])


def _activity_kind(e: Dict[str, Any]) -> Optional[str]:
    """The timeline lane of a timed record (every one is counted), None for the others."""
    ts, kind = e.get("ts_ns"), e.get("type")
    if not isinstance(ts, int) or isinstance(ts, bool):
        return None
    if kind == "sleep":
        return "mempool wait" if e.get("in_mempool") else "other sleep"
    return {"writeback": "writeback call", "slab_failure": "slab failure", "lost": "records lost"}.get(kind)


def _left_out(result: Result) -> str:
    """What the episodes table (and the timeline drawn from it) leaves out, if anything."""
    if not result.episodes_left_out:
        return ""
    return ("the first %d and the longest %d slow writebacks of %d: %d left out (counted in every total, "
            "the per-container table and the flame graph)" % (KEEP_EPISODES, KEEP_EPISODES, result.slow_writebacks,
                                                              result.episodes_left_out))


def outline(target: Target) -> Outline:
    """The plan of ``bpftools iojitter`` on TARGET, in words."""
    return plan(target, "auto", None, int(MIN_MS * 1e6), int(WAIT_MIN_MS * 1e6)).outline()


@click.command(TOOL, context_settings=CONTEXT, epilog="""\b
Examples:
  bpftools iojitter -d 60              # one minute, then the verdict and the tables
  bpftools iojitter -m 1000 10 6       # writebacks of 1 s or more; a report every 10 s, 6 times
  bpftools iojitter --record io.jsonl  # keep the stream: bpftools report io.jsonl
  bpftools iojitter -f -d 60 > io.folded   # time blocked per stack, for flame graphs
""")
@io.common_options
@click.option("-m", "--min-ms", type=NON_NEGATIVE, default=MIN_MS, show_default=True,
              help="A writeback call this slow is a stall.")
@click.option("--wait-min-ms", type=NON_NEGATIVE, default=WAIT_MIN_MS, show_default=True,
              help="Ignore sleeps shorter than this.")
@click.option("-F", "--function", "functions", multiple=True, metavar="NAME",
              help="Writeback function to time instead of the default set (repeatable; needs kprobes).")
@click.option("-K", "kernel_stacks", is_flag=True, help="With --json: keep the kernel stacks in the episodes.")
@click.option("-f", "--folded", is_flag=True, help="Print folded stacks weighted by time blocked at the end.")
@click.argument("interval", required=False, type=POSITIVE)
@click.argument("count", required=False, type=click.IntRange(1, None))
def command(pid: Optional[int], cgroup: Optional[str], duration: Optional[float], mode: str, as_json: bool,
            record: Optional[str], ready_file: Optional[str], ebpf: bool, min_ms: float, wait_min_ms: float,
            functions: Tuple[str, ...], kernel_stacks: bool, folded: bool, interval: Optional[float],
            count: Optional[int]) -> None:
    """Explain slow writebacks: slab failure -> mempool sleep -> writeback end, per thread and container."""
    the_plan = plan(Running(), mode, pid, int(min_ms * 1e6), int(wait_min_ms * 1e6), tuple(functions))
    if ebpf:
        click.echo(the_plan.describe())
        return
    stream = [the_plan.to_json()]  # type: List[Dict[str, Any]]

    def keep(raw: Any, decoder: Decoder) -> Optional[Any]:
        event = decode(raw, decoder)
        if event is None or not io.cgroup_matches(getattr(event, "wb_cgroup", None) or event.cgroup, cgroup):
            return None
        return event

    def report() -> None:
        result = correlate(stream)
        if folded:
            return
        if as_json:
            out = result.to_json()
            if not kernel_stacks:
                for e in out["episodes"]:
                    e.pop("kstack", None)
                    for w in e["waits"]:
                        w.pop("kstack", None)
            click.echo(json.dumps(out, sort_keys=True))
        else:
            render(result, terminal())

    def finish() -> None:
        if folded:
            click.echo("\n".join(folded_stacks.folded_lines(correlate(stream).folded)))
        elif not interval:
            report()

    run_duration = duration
    if interval and count:
        run_duration = min(duration or interval * count, interval * count)
    with then(finish), io.Ticker(None if folded else interval, count, report) as ticker:
        io.live(TOOL, the_plan, record, ready_file, run_duration, keep,
                lambda event: stream.append(event.to_json()), on_gap=lambda lost: stream.append(lost.to_json()),
                ticker=ticker)
