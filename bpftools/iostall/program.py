"""The I/O-stall program: one BPF program, its plan, loading, and the decoding state of a run.

slabfail, mempoolwait, writeslow and iojitter all load ``probes/iojitter.bpf.c`` with the sections
they need switched on (bcc rewrites map operations only in the main source file, so the sections
cannot live in separate files that iojitter includes). A :class:`Plan` says which sections,
tracepoints and kprobes a run uses; :func:`load` compiles it and attaches the kprobes;
:class:`Decoder` turns the raw records' common parts (stack ids, pids) into names once per run.
The sections' plans and decoders are in ``slab``, ``mempool`` and ``writeback`` beside this module.
"""
from typing import Any, Callable, Dict, List, Optional

from dataclasses import asdict, dataclass, field

from ..capture import Attach, Outline, Probe, poll_events
from ..errors import MissingKernelFeature
from ..kernel.cgroups import cgroup2_path_of_id, memory_cgroup_of_pid
from ..kernel.pods import container_named
from ..kernel.target import Target
from ..kstacks import KernelStacks

PROGRAM = "iojitter"
# the kernel struct members the kprobe modes read (their -D names; kernel.structs says where each is)
STRUCT_MEMBERS = ("OFF_CACHE_NAME", "OFF_MEMPOOL_WAIT", "OFF_MEMPOOL_POOL_DATA", "OFF_MEMPOOL_ALLOC", "OFF_PAGE_MAPPING",
                  "OFF_MAPPING_HOST", "OFF_INODE_INO", "OFF_INODE_SB", "OFF_SB_DEV", "OFF_WBC_NR_TO_WRITE")
EV_SLAB_FAIL, EV_SLUB_OOM, EV_SLEEP, EV_MEMPOOL_ALLOC, EV_WRITEBACK, EV_DROPPED = 1, 2, 3, 4, 5, 6
MODES = ("auto", "kprobe", "tracepoint")


def unwinder_sees_through_kretprobes(table: Any) -> bool:
    """True when kernel stacks show the real caller above a function that has a kretprobe.

    A kretprobe replaces the return address with its trampoline; since 5.15 the unwinder puts the real
    one back (kretprobe_find_ret_addr, commit 03bac0df2886; rethook_find_ret_addr where kretprobes run
    on rethook). Before that, the stack ends at ``kretprobe_trampoline`` (seen on Debian's 5.10).
    """
    return table.has("kretprobe_find_ret_addr") or table.has("rethook_find_ret_addr")


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

    def read_structs(self, target: Target, names: List[str], slub_def: bool = False) -> Optional[str]:
        """Make TARGET's struct offsets NAMES (OFF_*) available to the program; returns where from.

        "btf" (all found in the kernel's BTF: exact for it), else "headers" (the kernel's own headers are
        installed; SLUB_DEF also needs linux/slub_def.h to compile alone), else None: the program reads
        nothing from those structs.
        """
        found = target.offsets(names)
        if len(found) == len(names):
            self.params.update(found)
            return "btf"
        if target.headers_match() and (not slub_def or target.slub_def_usable()):
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
                "params": dict(self.params), "kprobes": [a.to_json() for a in self.kprobes],
                "notes": list(self.notes), "slots": dict((str(k), v) for k, v in self.slots.items())}

    def outline(self) -> Outline:
        return Outline(self.mode, [a.describe() for a in self.kprobes], list(self.notes))

    def describe(self) -> str:
        """What --ebpf prints: the plan, then the program with its cflags."""
        lines = ["// mode: %s" % self.mode] + ["// %s" % n for n in self.notes]
        lines += ["// attach " + a.describe() for a in self.kprobes]
        return "\n".join(lines) + "\n" + self.probe().describe()


def new_plan(target: Target, requested: str, what: str, pid: Optional[int], params: Dict[str, int],
             kprobes_wanted: bool = True) -> Plan:
    """A plan for WHAT in the mode REQUESTED gets on TARGET (see :func:`choose_mode`), with PARAMS
    and the pid filter; the kernel is made readable first."""
    target.prepare()
    chosen = choose_mode(requested, kprobes_wanted and bool(target.kprobes().ok), what)
    if pid:
        params = dict(params, FILTER_TGID=pid)
    return Plan(mode=chosen, params=params)


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
    return plan.probe().load(plan.kprobes)


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


class Decoder(object):
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
        ref = container_named(cgroup)
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

    def forget_stacks(self) -> None:
        """Empty the stack map and the frames named from it. The map keeps each distinct stack until it is
        full (then stacks are lost), so a run that never ends (``watch``) does this now and then."""
        table = self.bpf[self._stacks.table]
        for key in list(table.keys()):      # bcc's StackTrace.clear() does nothing
            try:
                del table[key]
            except KeyError:                # gone meanwhile
                pass
        self._stacks = KernelStacks(self.bpf)

    def seen(self, ts_ns: int) -> None:
        """Remember the newest event time (a later loss is placed after it)."""
        if self.last_ts is None or ts_ns > self.last_ts:
            self.last_ts = ts_ns


def run(plan: Plan, on_raw: Callable[[Any, Decoder], None], duration: Optional[float],
        ready: Optional[Callable[[], None]], on_lost: Callable[[Lost], None],
        ticker: Optional[Any] = None) -> None:
    """Load PLAN and poll until DURATION/Ctrl-C/SIGTERM, handing each raw record to ON_RAW; TICKER (a
    face.Ticker) is driven by the poll loop."""
    bpf = load(plan)
    decoder = Decoder(bpf, plan)

    def _lost(count: int) -> None:
        on_lost(Lost(count=count, source="perf_buffer", ts_ns=decoder.last_ts))

    poll_events(bpf, "events", lambda raw: on_raw(raw, decoder), duration=duration, ready=ready,
                on_lost=_lost, page_cnt=128, tick_every=ticker.interval if ticker else None,
                on_tick=ticker.periodic if ticker else None)

