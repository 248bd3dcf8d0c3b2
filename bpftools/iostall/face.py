"""The I/O-stall commands' shared face: their options, event lines, folded output and the live loop."""
import json
from typing import Any, Callable, Dict, List, Optional

import click

from ..analyses import folded
from ..live import LiveRun, warn
from ..options import PATH, POSITIVE
from ..render import one_line
from .program import EV_DROPPED, MODES, Decoder, Lost, Plan, run


def common_options(fn: Callable) -> Callable:
    """The options every I/O-stall tool shares (kmemsnoop's names and meanings)."""
    decorators = [
        click.option("-p", "--pid", type=click.IntRange(1, 2 ** 31 - 1), help="Trace this process (tgid) only."),
        click.option("--cgroup", metavar="PATH", help="Only tasks whose memory cgroup path starts with PATH."),
        click.option("-d", "--duration", type=POSITIVE, metavar="SECONDS", help="Stop after SECONDS."),
        click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
                     help="kprobe: exact (needs kprobes); tracepoint: works everywhere, less detail."),
        click.option("--json", "as_json", is_flag=True, help="JSON output (one object per line)."),
        click.option("--record", type=PATH, metavar="FILE", help="Also write a recording (JSON lines) to FILE."),
        click.option("--ready-file", type=PATH, metavar="FILE", hidden=True,
                     help="Touch FILE once attached (for tests)."),
        click.option("--ebpf", is_flag=True, hidden=True, help="Print the plan, BPF program and cflags, then exit."),
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def cgroup_matches(cgroup: Optional[str], want: Optional[str]) -> bool:
    """--cgroup filter: the event's memory cgroup path starts with WANT."""
    if not want:
        return True
    prefix = "/" + want.strip("/")
    return bool(cgroup) and (cgroup == prefix or cgroup.startswith(prefix.rstrip("/") + "/") or prefix == "/")


def print_event(event: Any, as_json: bool, kernel_stacks: bool, line: Callable[[Any], str]) -> None:
    """One event on stdout: a JSON object, or its line and (with -K) its kernel stack, innermost first."""
    if as_json:
        click.echo(json.dumps(event.to_json(), sort_keys=True))
        return
    click.echo(one_line(line(event)))
    if kernel_stacks:
        click.echo("\n".join("        %s" % one_line(f) for f in (event.kstack or ["[no stack]"])))


def print_folded(samples: List[Any]) -> None:
    """Folded stacks of (frames, weight) SAMPLES on stdout (flamegraph.pl input)."""
    click.echo("\n".join(folded.folded_lines(folded.fold(samples))))


def render_events(rec: Any, console: Any, header: str, kinds: Dict[str, Callable[[Dict[str, Any]], Any]],
                  line: Callable[[Any], str]) -> None:
    """``bpftools report``: HEADER, then LINE of each event whose type is in KINDS (type -> from_json), and
    gaps; the events read once, nothing kept."""
    def plain(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True, highlight=False)
    plain(header)
    for obj in rec.events:
        kind = obj.get("type")
        if kind in kinds:
            plain(one_line(line(kinds[kind](obj))))
        elif kind == "lost":
            plain("[%d records lost: %s]" % (obj.get("count", 0), obj.get("source")))


def live(tool: str, plan: Plan, record: Optional[str], ready_file: Optional[str], duration: Optional[float],
         decode: Callable[[Any, Decoder], Optional[Any]], show: Callable[[Any], None],
         on_gap: Optional[Callable[[Lost], None]] = None, ticker: Optional["Ticker"] = None) -> None:
    """One live run: notes on stderr, the plan then every event (and gap) in the recording, SHOW per event.

    DECODE returns the tool's event (with ``ts_ns`` and ``to_json()``) or None to skip a record.
    """
    for note in plan.notes:
        warn(note)
    with LiveRun(tool, record) as liverun:
        liverun.record(plan.to_json())

        def gap(lost: Lost) -> None:
            liverun.record(lost.to_json())
            if on_gap is not None:
                on_gap(lost)

        def on_raw(raw: Any, decoder: Decoder) -> None:
            if raw.type == EV_DROPPED:
                lost = decoder.dropped(raw)
                warn("%d records dropped in the kernel so far (a BPF map was full)" % int(raw.dropped))
                gap(lost)
                return
            event = decode(raw, decoder)
            if event is None:
                return
            decoder.seen(event.ts_ns)
            liverun.record(event.to_json())
            show(event)

        def on_lost(lost: Lost) -> None:
            liverun.add_lost(lost.count)
            gap(lost)

        run(plan, on_raw, duration, liverun.ready_callback(ready_file), on_lost, ticker)


class Ticker(object):
    """Calls ON_TICK every INTERVAL seconds while a run polls (the poll loop drives it), and once at the end.

    With COUNT, the last tick is the one at the end of the run. A None INTERVAL makes this a no-op.
    """

    def __init__(self, interval: Optional[float], count: Optional[int], on_tick: Callable[[], None]) -> None:
        self.interval = interval
        self.count = count
        self.on_tick = on_tick
        self.ticks = 0

    def periodic(self) -> None:
        """One interval passed (called by the poll loop)."""
        if self.count is not None and self.ticks >= self.count - 1:
            return
        self.ticks += 1
        self.on_tick()

    def __enter__(self) -> "Ticker":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.interval and (exc_type is None or exc_type is KeyboardInterrupt):
            self.on_tick()

