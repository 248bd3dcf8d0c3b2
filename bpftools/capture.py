"""The capture layer: the only module that imports bcc.

It compiles ``probes/NAME.bpf.c`` with parameters passed as ``-D`` integers (never pasted into C
text), attaches, polls the perf buffer, counts lost events and detaches on Ctrl-C, SIGTERM or the
end of the duration.
"""
import contextlib
import inspect
import os
import signal
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from dataclasses import dataclass, field

from . import probes as _probes_package
from .errors import MissingDependency, PrivilegeError, ProbeLoadError
from .kernel.distro import BCC_FLOOR, bcc_hint
from .kernel.headers import require_headers
from .kernel.tracefs import ensure_tracefs, kprobe_misses, kretprobe_maxactive
from .signals import StopSignals

PROBES_DIR = os.path.dirname(os.path.abspath(_probes_package.__file__))
_PARAM_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789")


def _bcc() -> Any:
    """The bcc module, BCC_FLOOR or newer (the first that decodes perf records by the program's own
    struct: PerfEventArray.event); MissingDependency with this distribution's install command otherwise."""
    try:
        # lazy: bcc is a system package (python3-bpfcc / python3-bcc) that only live runs need
        import bcc  # noqa: F401
    except ImportError:
        raise MissingDependency("the bcc Python module", bcc_hint())
    perf_array = getattr(getattr(bcc, "table", None), "PerfEventArray", None)
    if perf_array is None or not hasattr(perf_array, "event"):
        raise MissingDependency("bcc %s or newer (this bcc cannot decode perf records: no PerfEventArray.event)"
                                % BCC_FLOOR, bcc_hint())
    return bcc


class Probe:
    """One BPF program: its source file and validated integer parameters."""

    def __init__(self, name: str, params: Optional[Dict[str, int]] = None,
                 flags: Iterable[str] = ()) -> None:
        self.name = name
        self.params = {}  # type: Dict[str, int]
        for key, value in (params or {}).items():
            if not set(key) <= _PARAM_NAME_CHARS or isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("probe parameter %r=%r must be an upper-case name and an integer" % (key, value))
            self.params[key] = value
        self.flags = []  # type: List[str]
        for flag in flags:
            if not set(flag) <= _PARAM_NAME_CHARS:
                raise ValueError("probe flag %r must be an upper-case name" % flag)
            self.flags.append(flag)

    @property
    def path(self) -> str:
        return os.path.join(PROBES_DIR, self.name + ".bpf.c")

    def cflags(self) -> List[str]:
        out = ["-I" + PROBES_DIR]
        out += ["-D%s=%d" % (k, v) for k, v in sorted(self.params.items())]
        out += ["-D%s" % f for f in self.flags]
        return out

    def source(self) -> str:
        with open(self.path) as f:
            return f.read()

    def describe(self) -> str:
        """What --ebpf prints: the cflags and the program source."""
        return "// cflags: %s\n%s" % (" ".join(self.cflags()), self.source())

    def load(self, kprobes: Iterable["Attach"] = (), maxactive: int = 0) -> Any:
        """Compile and load (tracepoint probes attach automatically), then attach KPROBES (see
        :func:`attach`). Needs root."""
        if os.geteuid() != 0:
            raise PrivilegeError("tracing")
        bcc = _bcc()
        require_headers()
        ensure_tracefs()
        try:
            bpf = bcc.BPF(src_file=self.path.encode(), cflags=self.cflags())
        except Exception as err:  # bcc raises plain Exception with the compiler/verifier log on stderr
            raise ProbeLoadError("cannot load BPF program %s: %s (use -v for the log)"
                                 % (self.name, str(err).splitlines()[0] if str(err) else type(err).__name__),
                                 log=str(err))
        attach(bpf, kprobes, maxactive)
        return bpf


@dataclass
class Attach:
    """One kprobe or kretprobe: the kernel symbol (+ OFFSET into it) and the BPF function."""

    event: str
    fn_name: str
    ret: bool = False
    offset: int = 0

    def to_json(self) -> Dict[str, Any]:
        """As a recording's mode record lists it (``offset`` only where there is one)."""
        out = {"event": self.event, "fn_name": self.fn_name, "ret": self.ret}   # type: Dict[str, Any]
        if self.offset:
            out["offset"] = self.offset
        return out

    def describe(self) -> str:
        return "%s %s%s -> %s" % ("kretprobe" if self.ret else "kprobe", self.event,
                                  "+%#x" % self.offset if self.offset else "", self.fn_name)


@dataclass
class Outline:
    """What a plan does, in words: its mode, what it attaches, why, and what it cannot do there
    (``bpftools plan``)."""

    mode: str
    attaches: List[str]
    notes: List[str]
    off: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {"mode": self.mode, "attaches": list(self.attaches), "notes": list(self.notes), "off": list(self.off)}


def try_attach(bpf: Any, probe: Attach, maxactive: int = 0) -> Optional[str]:
    """Attach one kprobe or kretprobe; None when attached, else the first line of bcc's error.
    MAXACTIVE (kretprobe instances in flight, 0: the kernel's default) as :func:`supported_maxactive` gives it."""
    try:
        if probe.ret:
            extra = {"maxactive": maxactive} if maxactive else {}
            bpf.attach_kretprobe(event=probe.event.encode(), fn_name=probe.fn_name.encode(), **extra)
        else:
            extra = {"event_off": probe.offset} if probe.offset else {}
            bpf.attach_kprobe(event=probe.event.encode(), fn_name=probe.fn_name.encode(), **extra)
    except Exception as err:  # bcc raises plain Exception
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def supported_maxactive(bpf: Any, maxactive: int) -> int:
    """MAXACTIVE where this bcc takes it (0.9.0+) and the kernel does (4.12+), else 0: there returns may
    be missed, and kprobe_misses() counts them as lost."""
    if maxactive and "maxactive" in inspect.signature(bpf.attach_kretprobe).parameters and kretprobe_maxactive():
        return maxactive
    return 0


def attach(bpf: Any, probes: Iterable[Attach], maxactive: int = 0) -> None:
    """Attach PROBES in order, all or nothing: on a failure everything is detached (ProbeLoadError).

    Kprobes run newest first where several share an address, so a plan lists a function's kretprobe
    before its entry kprobe: the entry handler then sees the stack before the kretprobe rewrites the
    return address (what an unwinder without kretprobe support would stop at).
    """
    maxactive = supported_maxactive(bpf, maxactive)     # once: a file read and a signature per run
    for probe in probes:
        why = try_attach(bpf, probe, maxactive)
        if why is not None:
            bpf.cleanup()
            raise ProbeLoadError("cannot attach %s: %s" % (probe.describe(), why), log=why)


def c_text(raw: bytes) -> str:
    """A C string from a fixed-size char array of a raw record."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def poll_events(bpf: Any, table: str, on_event: Callable[[Any], None],
                duration: Optional[float] = None, ready: Optional[Callable[[], None]] = None,
                on_lost: Optional[Callable[[int], None]] = None, page_cnt: int = 64,
                tick_every: Optional[float] = None, on_tick: Optional[Callable[[], None]] = None,
                on_end: Optional[Callable[[], None]] = None) -> None:
    """Poll perf buffer TABLE until DURATION seconds pass or SIGINT/SIGTERM, then detach.

    ``on_event`` gets the bcc-decoded ctypes struct, ``on_lost`` the count of each perf-buffer loss,
    ``on_tick`` is called every TICK_EVERY seconds, ``on_end`` once at the end while the maps are still
    open (before the probes are cleaned up). SIGTERM ends the poll like the duration does;
    SIGINT raises KeyboardInterrupt after detaching (the CLI maps it to exit code 130).

    A program with an ``unsent`` array counts its failed ``perf_submit()`` calls itself: that count is
    exact, where the kernel reports a ring's losses only with its next record (the last ones of a flood
    never), so the perf buffer's loss reports are then not counted (they are the same events).
    """
    counts_unsent = _has_table(bpf, "unsent")

    def _lost(count: int) -> None:
        if on_lost is not None and not counts_unsent:
            on_lost(count)

    stop = StopSignals()
    now = time.monotonic()
    deadline = None if duration is None else now + duration
    detached = []  # type: List[bool]

    def _on_data(cpu: int, data: Any, size: int) -> None:
        # Under a flood perf_buffer_poll() does not return while producers outrun us: once the run is
        # over, detach the probes here so the ring drains and the poll returns.
        if not detached and (stop.received is not None or (deadline is not None and time.monotonic() >= deadline)):
            detached.append(True)
            detach_probes(bpf)
        on_event(perf.event(data))

    perf = bpf[table]
    perf.open_perf_buffer(_on_data, page_cnt=page_cnt, lost_cb=_lost)
    with stop:
        try:
            next_tick = now + tick_every if tick_every and on_tick else None
            if ready is not None:
                ready()
            while stop.received is None and (deadline is None or now < deadline):
                wake = min(t for t in (deadline, next_tick, now + 0.2) if t is not None)
                bpf.perf_buffer_poll(timeout=max(1, int((wake - now) * 1000)))
                now = time.monotonic()
                if next_tick is not None and now >= next_tick and stop.received is None:
                    on_tick()
                    next_tick += tick_every
            bpf.perf_buffer_poll(timeout=10)   # drain what arrived at the end
        finally:
            try:
                if on_end is not None:
                    on_end()        # the maps are still open
            finally:
                for cpu in _bcc().utils.get_online_cpus():   # close our buffers while the map fd is open
                    del perf[cpu]
                # full maps, failed perf_submit() (where counted), kretprobes over maxactive
                dropped = table_sum(bpf, "lost") + table_sum(bpf, "unsent") + kprobe_misses(os.getpid())
                if dropped and on_lost is not None:
                    on_lost(dropped)
                bpf.cleanup()
    if stop.received == signal.SIGINT:
        raise KeyboardInterrupt()


def detach_probes(bpf: Any) -> None:
    """Detach every tracepoint and kprobe of BPF (bcc 0.18+ API); cleanup() still closes the rest."""
    for tp in list(getattr(bpf, "tracepoint_fds", {})):
        try:
            bpf.detach_tracepoint(tp)
        except Exception:  # already gone: nothing to stop
            pass
    for event in list(getattr(bpf, "kprobe_fds", {})):
        try:
            bpf.detach_kprobe_event(event)
        except Exception:
            pass


def _has_table(bpf: Any, name: str) -> bool:
    try:
        bpf.get_table(name)
        return True
    except KeyError:
        return False


def table_sum(bpf: Any, name: str) -> int:
    """The sum of the program's counter array NAME (0 if it has none): ``lost`` counts events dropped
    because a bounded map was full, ``unsent`` those whose perf_submit() failed."""
    if not _has_table(bpf, name):
        return 0
    return sum(int(v.value) for v in bpf.get_table(name).values())


def try_fentry_attach(function: str) -> Tuple[bool, str]:
    """Load and attach an empty fentry program on FUNCTION: the honest fentry test."""
    bcc = _bcc()
    supported = getattr(bcc.BPF, "support_kfunc", None)      # bcc 0.14.0+
    if supported is None:
        return False, "this bcc predates fentry (KFUNC_PROBE, bcc 0.14.0)"
    if not supported():
        return False, "bcc or kernel lacks fentry support (needs BTF and 5.5+)"
    name = function.replace(".", "_")
    text = "KFUNC_PROBE(%s) { return 0; }" % name  # a kallsyms name, not user input
    try:
        with _quiet_stderr():   # libbpf prints its own "Failed to load program" line
            b = bcc.BPF(text=text.encode())
            b.cleanup()
    except Exception as err:
        why = str(err).splitlines()[0] if str(err) else "error"
        if "super-user" in why:   # bcc's wording for any EPERM from BPF_PROG_LOAD
            why = "the kernel refused the BPF_PROG_TYPE_TRACING load (EPERM)"
        return False, "fentry on %s refused: %s" % (function, why)
    return True, "fentry attached to %s" % function


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (C libraries write there directly) for the duration of the block."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
