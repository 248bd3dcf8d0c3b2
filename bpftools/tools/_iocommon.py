"""Plumbing shared by the I/O-stall tools (slabfail, mempoolwait, writeslow, iojitter).

All four load one BPF program, ``probes/iojitter.bpf.c``, with the sections they need switched on
(bcc rewrites map operations only in the main source file, so the sections cannot live in separate
files that iojitter includes). A :class:`Plan` says which sections, tracepoints and kprobes a run
uses; :func:`load` compiles it and attaches the kprobes; :class:`Capture` turns the raw records'
common parts (stack ids, pids) into names once per run.
"""
import contextlib
import json
import os
import re
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import click
from dataclasses import asdict, dataclass, field

from ..capture import Probe, poll_events
from ..kernel.cgroups import cgroup2_path_of_id, container_of, memory_cgroup_of_pid
from ..options import positive
from ..errors import MissingKernelFeature, PrivilegeError, ProbeLoadError
from ..kstacks import KernelStacks
from ..kernel.tracefs import ensure_tracefs, find_tracefs

PROGRAM = "iojitter"
EV_SLAB_FAIL, EV_SLUB_OOM, EV_SLEEP, EV_MEMPOOL_ALLOC, EV_WRITEBACK, EV_DROPPED = 1, 2, 3, 4, 5, 6
MODES = ("auto", "kprobe", "tracepoint")


def text(raw: bytes) -> str:
    """A C string from a fixed-size char array."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def tracepoint_fields(category: str, name: str, tracefs: Optional[str] = None) -> Optional[Set[str]]:
    """Field names of tracepoint CATEGORY:NAME from its tracefs format file, None when it does not exist."""
    fmt = tracepoint_format(category, name, tracefs)
    if fmt is None:
        return None
    return set(re.findall(r"field:[^;]*?([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])?;", fmt))


def tracepoint_format(category: str, name: str, tracefs: Optional[str] = None) -> Optional[str]:
    """The text of a tracepoint's format file, or None."""
    base = tracefs or find_tracefs()
    if not base:
        return None
    try:
        with open(os.path.join(base, "events", category, name, "format")) as f:
            return f.read()
    except OSError:
        return None


def tracing_ready() -> None:
    """Planning reads tracefs and kallsyms as they are for root: require root, mount tracefs if needed."""
    if os.geteuid() != 0:
        raise PrivilegeError("tracing")
    ensure_tracefs()


def kprobes_available() -> bool:
    """True when this kernel has kprobes (the capability layer's check)."""
    from ..kernel.capabilities import check_kprobes
    return bool(check_kprobes(find_tracefs()).ok)


def unwinder_sees_through_kretprobes(table: Any) -> bool:
    """True when kernel stacks show the real caller above a function that has a kretprobe.

    A kretprobe replaces the return address with its trampoline; since 5.15 the unwinder puts the real
    one back (kretprobe_find_ret_addr, commit 03bac0df2886; rethook_find_ret_addr where kretprobes run
    on rethook). Before that, the stack ends at ``kretprobe_trampoline`` (seen on Debian's 5.10).
    """
    return table.has("kretprobe_find_ret_addr") or table.has("rethook_find_ret_addr")


def headers_match_running_kernel() -> bool:
    """True when /lib/modules/$(uname -r)/build holds this kernel's own headers (struct reads are safe)."""
    release = os.uname().release
    build = "/lib/modules/%s/build" % release
    for rel in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        try:
            with open(os.path.join(build, rel)) as f:
                found = re.search(r'"?([^"\s]+)"?\s*$', f.read().strip())
        except OSError:
            continue
        return bool(found) and found.group(1) == release
    return False


# Kernel struct members the kprobe modes read, passed as -D OFF_* offsets; alternatives in order.
STRUCT_MEMBERS = {
    "OFF_CACHE_NAME": [("kmem_cache", "name")],
    "OFF_MEMPOOL_WAIT": [("mempool", "wait"), ("mempool_s", "wait")],
    "OFF_MEMPOOL_POOL_DATA": [("mempool", "pool_data"), ("mempool_s", "pool_data")],
    "OFF_MEMPOOL_ALLOC": [("mempool", "alloc"), ("mempool_s", "alloc")],
    "OFF_PAGE_MAPPING": [("page", "mapping")],
    "OFF_MAPPING_HOST": [("address_space", "host")],
    "OFF_INODE_INO": [("inode", "i_ino")],
    "OFF_INODE_SB": [("inode", "i_sb")],
    "OFF_SB_DEV": [("super_block", "s_dev")],
    "OFF_WBC_NR_TO_WRITE": [("writeback_control", "nr_to_write")],
}


def slub_def_usable() -> bool:
    """True when this kernel's linux/slub_def.h compiles on its own.

    Since 5.17 (struct slab, commit d122019bf061) its inline helpers use ``struct slab``, defined only
    in mm/slab.h, so including it fails; older headers (3.10, 5.10) are self-contained.
    """
    for tree in ("build", "source"):   # Debian splits the headers: include/linux is in the -common "source"
        try:
            with open("/lib/modules/%s/%s/include/linux/slub_def.h" % (os.uname().release, tree)) as f:
                return "struct slab *" not in f.read()
        except OSError:
            continue
    return False


@dataclass
class Attach:
    """One kprobe (or kretprobe) to attach: the kernel symbol and the BPF function."""

    event: str
    fn_name: str
    ret: bool = False


@dataclass
class Plan:
    """What one run traces: the program's flags and parameters, the kprobes, and what was chosen why."""

    mode: str                                   # "kprobe" | "tracepoint" (of the main section)
    flags: List[str] = field(default_factory=list)
    params: Dict[str, int] = field(default_factory=dict)
    kprobes: List[Attach] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    slots: Dict[int, str] = field(default_factory=dict)    # writeback kprobe slot -> function

    def merge(self, other: "Plan") -> "Plan":
        """The union of two plans (iojitter); this plan's mode names the result."""
        params = dict(self.params)
        params.update(other.params)
        slots = dict(self.slots)
        slots.update(other.slots)
        return Plan(mode=self.mode, flags=sorted(set(self.flags) | set(other.flags)), params=params,
                    kprobes=self.kprobes + other.kprobes, notes=self.notes + other.notes, slots=slots)

    def read_structs(self, names: List[str], slub_def: bool = False) -> Optional[str]:
        """Make the kernel struct offsets NAMES (OFF_*) available to the program; returns where from.

        "btf" (all found in /sys/kernel/btf/vmlinux: exact for the running kernel), else "headers" (this
        kernel's own headers are installed; SLUB_DEF also needs linux/slub_def.h to compile alone), else
        None: the program reads nothing from those structs.
        """
        from ..kernel import btf as _btf
        found = _btf.offsets(dict((n, STRUCT_MEMBERS[n]) for n in names))
        if len(found) == len(names):
            self.params.update(found)
            return "btf"
        if headers_match_running_kernel() and (not slub_def or slub_def_usable()):
            self.flags.append("HAVE_MATCHING_HEADERS")
            if slub_def:
                self.flags.append("HAVE_SLUB_DEF")
            return "headers"
        return None

    def probe(self) -> Probe:
        return Probe(PROGRAM, self.params, sorted(set(self.flags)))

    def to_json(self) -> Dict[str, Any]:
        """The ``mode`` record written first in a recording."""
        return {"type": "mode", "mode": self.mode, "flags": sorted(set(self.flags)),
                "params": dict(self.params), "kprobes": [asdict(a) for a in self.kprobes],
                "notes": list(self.notes), "slots": dict((str(k), v) for k, v in self.slots.items())}

    def describe(self) -> str:
        """What --ebpf prints: the plan, then the program with its cflags."""
        lines = ["// mode: %s" % self.mode] + ["// %s" % n for n in self.notes]
        lines += ["// attach %s %s -> %s" % ("kretprobe" if a.ret else "kprobe", a.event, a.fn_name)
                  for a in self.kprobes]
        return "\n".join(lines) + "\n" + self.probe().describe()


def choose_mode(requested: str, kprobe_ok: bool, what: str) -> str:
    """kprobe or tracepoint for REQUESTED (auto/kprobe/tracepoint); kprobe without kprobes is an error."""
    if requested == "kprobe" and not kprobe_ok:
        raise MissingKernelFeature("kprobes (CONFIG_KPROBES) for %s" % what,
                                   fallback="--mode tracepoint")
    if requested == "auto":
        return "kprobe" if kprobe_ok else "tracepoint"
    return requested


def load(plan: Plan) -> Any:
    """Compile and load the program, then attach the plan's kprobes; detaches everything on failure.

    Kprobes run newest first where several share an address, so a plan lists a function's kretprobe
    before its entry kprobe: the entry handler then sees the stack before the kretprobe rewrites the
    return address (what an unwinder without kretprobe support would stop at).
    """
    bpf = plan.probe().load()
    for a in plan.kprobes:
        try:
            if a.ret:
                bpf.attach_kretprobe(event=a.event.encode(), fn_name=a.fn_name.encode())
            else:
                bpf.attach_kprobe(event=a.event.encode(), fn_name=a.fn_name.encode())
        except Exception as err:  # bcc raises plain Exception
            bpf.cleanup()
            raise ProbeLoadError("cannot attach %s to %s: %s" % (
                "kretprobe" if a.ret else "kprobe", a.event, str(err).splitlines()[0] if str(err) else "error"),
                log=str(err))
    return bpf


@dataclass
class Lost:
    """A gap in the stream: COUNT records lost after the event at TS_NS (None: position unknown)."""

    count: int
    source: str          # "perf_buffer" (user space too slow) | "kernel_map_full" (a BPF map was full)
    ts_ns: Optional[int]

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["type"] = "lost"
        return out


class Capture(object):
    """Per-run decoding state: the loaded program's stack map and the pids' cgroups, looked up once."""

    def __init__(self, bpf: Any, plan: Plan) -> None:
        self.bpf = bpf
        self.plan = plan
        self.last_ts = None  # type: Optional[int]
        self._stacks = KernelStacks(bpf)
        self._cgroups = {}  # type: Dict[int, Optional[str]]
        self._wb_cgroups = {}  # type: Dict[int, Optional[str]]
        self._kernel_drops = 0

    def frames(self, stack_id: int) -> Optional[List[str]]:
        """Kernel frames of STACK_ID, innermost first; None when no stack was taken (negative id)."""
        return self._stacks.frames(stack_id)

    def symbol(self, addr: int) -> str:
        """Kernel symbol of ADDR (``[unknown]`` when kallsyms has none)."""
        return self._stacks.symbol(addr)

    def process(self, tgid: int) -> Dict[str, Any]:
        """``cgroup`` (memory cgroup path) and ``container`` (ContainerRef JSON) of a process."""
        if self._cgroups.get(tgid) is None:   # looked up once per pid (again if the first try failed)
            self._cgroups[tgid] = memory_cgroup_of_pid(tgid)
        cgroup = self._cgroups[tgid]
        ref = container_of(cgroup) if cgroup else None
        return {"cgroup": cgroup, "container": ref.to_json() if ref else None}

    def wb_cgroup(self, ino: int) -> Optional[str]:
        """cgroup2 path of a bdi_writeback's cgroup inode (cgroup writeback), when it can be found."""
        if ino <= 1:
            return None
        if ino not in self._wb_cgroups:
            self._wb_cgroups[ino] = cgroup2_path_of_id(ino)
        return self._wb_cgroups[ino]

    def dropped(self, raw: Any) -> Lost:
        """An EV_DROPPED record as a gap marker counting the drops since the previous report."""
        total = int(raw.dropped)
        count, self._kernel_drops = total - self._kernel_drops, total
        return Lost(count=count, source="kernel_map_full", ts_ns=self.last_ts)

    def seen(self, ts_ns: int) -> None:
        """Remember the newest event time (a later loss is placed after it)."""
        if self.last_ts is None or ts_ns > self.last_ts:
            self.last_ts = ts_ns


def run(plan: Plan, on_raw: Callable[[Any, Capture], None], duration: Optional[float],
        ready: Optional[Callable[[], None]], on_lost: Callable[[Lost], None],
        ticker: Optional["Ticker"] = None) -> None:
    """Load PLAN and poll until DURATION/Ctrl-C/SIGTERM, handing each raw record to ON_RAW."""
    bpf = load(plan)
    capture = Capture(bpf, plan)

    def _lost(count: int) -> None:
        on_lost(Lost(count=count, source="perf_buffer", ts_ns=capture.last_ts))

    poll_events(bpf, "events", lambda raw: on_raw(raw, capture), duration=duration, ready=ready,
                on_lost=_lost, page_cnt=128, tick_every=ticker.interval if ticker else None,
                on_tick=ticker.periodic if ticker else None)


def common_options(fn: Callable) -> Callable:
    """The options every I/O-stall tool shares (kmemsnoop's names and meanings)."""
    decorators = [
        click.option("-p", "--pid", type=click.IntRange(1, 2 ** 31 - 1), help="Trace this process (tgid) only."),
        click.option("--cgroup", metavar="PATH", help="Only tasks whose memory cgroup path starts with PATH."),
        click.option("-d", "--duration", type=float, callback=positive, metavar="SECONDS", help="Stop after SECONDS."),
        click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
                     help="kprobe: exact (needs kprobes); tracepoint: works everywhere, less detail."),
        click.option("--json", "as_json", is_flag=True, help="JSON output (one object per line)."),
        click.option("--record", metavar="FILE", help="Also write a recording (JSON lines) to FILE."),
        click.option("--ready-file", metavar="FILE", hidden=True, help="Touch FILE once attached (for tests)."),
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
    click.echo(line(event))
    if kernel_stacks:
        click.echo("\n".join("        %s" % f for f in (event.kstack or ["[no stack]"])))


def print_folded(samples: List[Any]) -> None:
    """Folded stacks of (frames, weight) SAMPLES on stdout (flamegraph.pl input)."""
    from ..analyses import folded
    click.echo("\n".join(folded.folded_lines(folded.fold(samples))))


def render_events(rec: Any, console: Any, header: str, kinds: Dict[str, Callable[[Dict[str, Any]], Any]],
                  line: Callable[[Any], str]) -> None:
    """``bpftools report``: HEADER, then LINE of each event whose type is in KINDS (type -> from_json), and gaps."""
    def plain(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True, highlight=False)
    plain(header)
    for obj in rec.events:
        kind = obj.get("type")
        if kind in kinds:
            plain(line(kinds[kind](obj)))
        elif kind == "lost":
            plain("[%d records lost: %s]" % (obj.get("count", 0), obj.get("source")))


def warn(message: str) -> None:
    """A one-line note on stderr (keeps stdout clean for --json and --folded)."""
    sys.stderr.write("bpftools: %s\n" % message)


def live(tool: str, plan: Plan, record: Optional[str], ready_file: Optional[str], duration: Optional[float],
         decode: Callable[[Any, Capture], Optional[Any]], show: Callable[[Any], None],
         on_gap: Optional[Callable[[Lost], None]] = None, ticker: Optional["Ticker"] = None) -> None:
    """One live run: notes on stderr, the plan then every event (and gap) in the recording, SHOW per event.

    DECODE returns the tool's event (with ``ts_ns`` and ``to_json()``) or None to skip a record.
    """
    from ..live import LiveRun
    for note in plan.notes:
        warn(note)
    with LiveRun(tool, record) as liverun:
        liverun.record(plan.to_json())

        def gap(lost: Lost) -> None:
            liverun.record(lost.to_json())
            if on_gap is not None:
                on_gap(lost)

        def on_raw(raw: Any, capture: Capture) -> None:
            if raw.type == EV_DROPPED:
                lost = capture.dropped(raw)
                warn("%d records dropped in the kernel so far (a BPF map was full)" % int(raw.dropped))
                gap(lost)
                return
            event = decode(raw, capture)
            if event is None:
                return
            capture.seen(event.ts_ns)
            liverun.record(event.to_json())
            show(event)

        def on_lost(lost: Lost) -> None:
            liverun.add_lost(lost.count)
            gap(lost)

        run(plan, on_raw, duration, liverun.ready_callback(ready_file), on_lost, ticker)


class Ticker(object):
    """Calls ON_TICK every INTERVAL seconds while a capture runs (the poll loop drives it), and once at the end.

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


@contextlib.contextmanager
def then(finish: Callable[[], None]) -> Iterator[None]:
    """Run FINISH after the block, also when Ctrl-C ended it (bcc's -f tools print on Ctrl-C too)."""
    try:
        yield
    except KeyboardInterrupt:
        finish()
        raise
    finish()
