"""The capture layer: the only module that imports bcc.

It compiles ``probes/NAME.bpf.c`` with parameters passed as ``-D`` integers (never pasted into C
text), attaches, polls the perf buffer, counts lost events and detaches on Ctrl-C, SIGTERM or the
end of the duration.
"""
import contextlib
import os
import signal
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from . import probes as _probes_package
from .errors import MissingDependency, MissingKernelFeature, PrivilegeError, ProbeLoadError
from .tracefs import ensure_tracefs

PROBES_DIR = os.path.dirname(os.path.abspath(_probes_package.__file__))
_PARAM_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789")


def _bcc() -> Any:
    try:
        import bcc  # noqa: F401  (system package: python3-bpfcc / python3-bcc)
    except ImportError:
        raise MissingDependency(
            "the bcc Python module", "apt-get install python3-bpfcc (Debian/Ubuntu) or "
            "yum install bcc python-bcc (RHEL 7); a venv needs --system-site-packages")
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

    def load(self) -> Any:
        """Compile and load (tracepoint probes attach automatically). Needs root."""
        if os.geteuid() != 0:
            raise PrivilegeError("tracing")
        bcc = _bcc()
        _require_headers()
        ensure_tracefs()
        try:
            return bcc.BPF(src_file=self.path.encode(), cflags=self.cflags())
        except Exception as err:  # bcc raises plain Exception with the compiler/verifier log on stderr
            raise ProbeLoadError("cannot load BPF program %s: %s (use -v for the log)"
                                 % (self.name, str(err).splitlines()[0] if str(err) else type(err).__name__),
                                 log=str(err))


def _require_headers() -> None:
    """bcc compiles against /lib/modules/$(uname -r)/build, or the kernel's built-in kheaders."""
    release = os.uname().release
    if os.path.isdir("/lib/modules/%s/build/include" % release) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    raise MissingKernelFeature(
        "kernel headers for %s" % release,
        fallback="apt-get install linux-headers-%s (Debian/Ubuntu), yum install kernel-devel-%s (RHEL), "
                 "or modprobe kheaders" % (release, release))


class _Stop(Exception):
    pass


def poll_events(bpf: Any, table: str, on_event: Callable[[Any], None],
                duration: Optional[float] = None, ready: Optional[Callable[[], None]] = None,
                on_lost: Optional[Callable[[int], None]] = None, page_cnt: int = 64) -> None:
    """Poll perf buffer TABLE until DURATION seconds pass or SIGINT/SIGTERM.

    ``on_event`` gets the bcc-decoded ctypes struct, ``on_lost`` the count of each perf-buffer loss.
    SIGTERM ends the poll like the duration does; SIGINT raises KeyboardInterrupt after detaching
    (the CLI maps it to exit code 130).
    """
    def _lost(count: int) -> None:
        if on_lost is not None:
            on_lost(count)

    perf = bpf[table]
    perf.open_perf_buffer(lambda cpu, data, size: on_event(perf.event(data)),
                          page_cnt=page_cnt, lost_cb=_lost)

    def _term(signum: int, frame: Any) -> None:
        raise _Stop()

    old = signal.signal(signal.SIGTERM, _term)
    deadline = None if duration is None else time.monotonic() + duration
    if ready is not None:
        ready()
    try:
        while deadline is None or time.monotonic() < deadline:
            timeout = 200 if deadline is None else max(1, min(200, int((deadline - time.monotonic()) * 1000)))
            bpf.perf_buffer_poll(timeout=timeout)
        bpf.perf_buffer_poll(timeout=10)   # drain what arrived at the end
    except _Stop:
        bpf.perf_buffer_poll(timeout=10)
    finally:
        signal.signal(signal.SIGTERM, old)
        for cpu in _bcc().utils.get_online_cpus():   # close our buffers while the map fd is open
            del perf[cpu]
        dropped = map_drops(bpf)
        if dropped and on_lost is not None:
            on_lost(dropped)
        bpf.cleanup()


def map_drops(bpf: Any) -> int:
    """Events a program dropped because a bounded map was full (its ``lost`` array, if it has one)."""
    try:
        table = bpf.get_table("lost")
    except KeyError:
        return 0
    return sum(int(v.value) for v in table.values())


def try_fentry_attach(function: str) -> Tuple[bool, str]:
    """Load and attach an empty fentry program on FUNCTION: the honest fentry test."""
    bcc = _bcc()
    if not bcc.BPF.support_kfunc():
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
