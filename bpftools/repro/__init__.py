"""Machinery shared by the repro workloads (``bpftools repro kmem-io`` / ``netns-churn``).

The workloads create kernel objects (cgroups, loop devices, mounts, network namespaces) and
child processes, so every run must end with nothing left behind, however it ends. The pieces:

- :class:`Signals` turns SIGINT and SIGTERM into a :class:`Signalled` exception while the
  workload runs, and records (without raising) signals that arrive during cleanup;
- :func:`fork_child` starts a workload process that dies with its parent (``PR_SET_PDEATHSIG``),
  ignores the terminal's Ctrl-C (the parent decides) and never returns into the parent's code;
- :func:`owned_by_dead_run` is the test that lets a run remove leftovers of an earlier run whose
  owner pid is gone, never those of a live one;
- :func:`command` runs ``ip``/``losetup``/… with a timeout and a typed error;
- :func:`kmsg_mark` / :func:`kmsg_since` give the kernel log written during the run;
- :func:`latency_stats` and :func:`parse_size` are the small pure helpers both commands use.
"""
import ctypes
import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import (EXIT_FAILURE, BadInput, BpftoolsError, MissingDependency, PrivilegeError)
from ..kernel.log import read_kmsg
from ..signals import SignalGuard

# Where root's tools live when PATH lacks the sbin directories (sudo without secure_path, cron).
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")
PR_SET_PDEATHSIG = 1
COMMAND_TIMEOUT = 60.0
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_KMSG_SEQ = re.compile(r"^\d{1,4},(\d{1,20}),")


class ReproError(BpftoolsError):
    """A step of the workload failed (a command, a kernel file): the message names the step."""

    exit_code = EXIT_FAILURE


class ReproInterrupted(BpftoolsError):
    """The run was stopped by SIGINT/SIGTERM after cleaning up; exit code 128 + signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def interrupted_error(what: str, signum: int, seconds: float, cleanup: Dict[str, Any], done: str) -> ReproInterrupted:
    """The error a run stopped by SIGNUM raises once it has cleaned up: WHAT (e.g. "repro kmem-io"),
    how long it ran, DONE (what had been done / removed), or what the cleanup could not remove."""
    if cleanup["errors"]:
        done = "cleanup incomplete: %s" % "; ".join(cleanup["errors"])
    return ReproInterrupted("%s interrupted by %s after %.1f s; %s" % (what, signal_name(signum), seconds, done),
                            signum)


class Signalled(BaseException):
    """Raised in the main thread when SIGINT or SIGTERM arrives while the workload runs.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` never swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2, ``SIGTERM`` for 15, ``signal N`` otherwise."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


class Signals(SignalGuard):
    """Context manager: SIGINT/SIGTERM raise :class:`Signalled`, except inside :meth:`deferred`,
    where they are only recorded (cleanup must not be cut short). Old handlers come back on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.defer = False
        self.received = []  # type: List[int]

    def handle(self, signum: int) -> None:
        self.received.append(signum)
        if not self.defer:
            raise Signalled(signum)

    def deferred(self) -> "_Deferred":
        """``with signals.deferred(): cleanup()`` — signals during cleanup are recorded only."""
        return _Deferred(self)


class _Deferred(object):
    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    def __enter__(self) -> None:
        self.signals.defer = True

    def __exit__(self, *exc: Any) -> None:
        self.signals.defer = False


class RootRequired(PrivilegeError):
    """A PrivilegeError (same exit code) whose message fits a workload: it needs real root, not
    the tracing capabilities."""

    def __init__(self, what: str) -> None:
        BpftoolsError.__init__(self, "%s needs root (it creates cgroups, mounts, loop devices or network "
                                     "namespaces); run it with sudo" % what)


def warn_cleanup_errors(errors: List[str]) -> None:
    """Name what could not be removed on stderr when the run is failing (the summary, which
    carries the same list, is not printed then)."""
    if errors and sys.exc_info()[0] is not None and not isinstance(sys.exc_info()[1], Signalled):
        sys.stderr.write("bpftools: cleanup incomplete: %s\n" % "; ".join(errors))


def require_root(what: str) -> None:
    """RootRequired unless running as root (cgroups, loop devices, namespaces need it)."""
    if os.geteuid() != 0:
        raise RootRequired(what)


def find_tool(name: str, package: str) -> str:
    """Absolute path of the program NAME, looking in PATH and the sbin directories.

    ``package`` names the package that ships it, e.g. ``"e2fsprogs"``, for the error."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise MissingDependency(name, "apt-get install %s (Debian/Ubuntu) or yum install %s (RHEL/CentOS)"
                            % (package, package))


def command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> Tuple[int, str, str]:
    """Run ARGV; (exit code, stdout, stderr). The child gets its own session, so the terminal's
    Ctrl-C (sent to the whole foreground group) cannot kill it half-way through a step."""
    try:
        proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ReproError("%s: no answer after %.0f s" % (" ".join(argv), timeout))
    except OSError as err:
        raise ReproError("%s: %s" % (argv[0], err.strerror or err))
    return proc.returncode, proc.stdout, proc.stderr


def check(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ARGV; its stdout, or ReproError naming the command and its first stderr line."""
    code, out, err = command(argv, timeout)
    if code != 0:
        raise ReproError("%s failed (exit %d): %s" % (" ".join(argv), code, first_line(err)))
    return out


def first_line(text: str) -> str:
    """The first non-empty line of TEXT, stripped ("" if none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def pid_alive(pid: int) -> bool:
    """True if a process PID exists in this pid namespace and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def owned_by_dead_run(owner: int, me: Optional[int] = None) -> bool:
    """True for a leftover whose owner pid is gone: safe to remove. Never our own, never a live run's."""
    me = os.getpid() if me is None else me
    return owner != me and owner > 0 and not pid_alive(owner)


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def fork_child(body: Callable[[], int]) -> int:
    """Fork a workload process that runs BODY and exits with its return value; returns its pid.

    The child dies with the parent (PR_SET_PDEATHSIG SIGKILL, checked against a parent that died
    before the prctl), ignores SIGINT (the terminal sends Ctrl-C to the whole group: the parent
    decides), takes SIGTERM's default action, and never runs the parent's cleanup code.
    """
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        code = body()
    except BaseException:  # the child must never unwind into the parent's frames
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)
    os._exit(code)
    return 0  # not reached


def reap(pid: int, timeout: float) -> Optional[int]:
    """Wait up to TIMEOUT s for child PID; its raw wait status, or None if it is still running."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def kill_and_reap(pids: Sequence[int], timeout: float = 30.0) -> Dict[int, Optional[int]]:
    """SIGKILL each child in PIDS and reap it; pid → wait status (None: not gone after TIMEOUT s,
    e.g. stuck in D state in the kernel)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {pid: reap(pid, timeout) for pid in pids}


def describe_status(status: Optional[int]) -> str:
    """``ok``, ``exit N``, ``killed by SIGKILL`` or ``still running`` for a wait status."""
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal_name(os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    return "ok" if code == 0 else "exit %d" % code


def write_ready_file(path: Optional[str], data: Dict[str, Any]) -> None:
    """Write DATA as JSON to PATH atomically (a poller never sees half a file)."""
    if not path:
        return
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.write("\n")
    os.rename(tmp, path)


def kmsg_mark(path: str = "/dev/kmsg") -> Tuple[Optional[int], Optional[str]]:
    """(sequence number of the newest kernel log record, None) — or (None, reason) when the log
    cannot be read. Records after the mark are the ones this run's kernel activity wrote."""
    try:
        lines = read_kmsg(path)
    except OSError as err:
        return None, "%s: %s" % (path, err.strerror or err)
    last = -1
    for line in lines:
        m = _KMSG_SEQ.match(line)
        if m:
            last = int(m.group(1))
    return last, None


def kmsg_since(mark: int, path: str = "/dev/kmsg") -> List[str]:
    """The /dev/kmsg records (with their continuation lines) newer than MARK."""
    out = []
    keep = False
    for line in read_kmsg(path):
        m = _KMSG_SEQ.match(line)
        if m:
            keep = int(m.group(1)) > mark
        if keep:
            out.append(line)
    return out


def parse_size(text: str) -> int:
    """Bytes in a size such as ``256M``, ``1M``, ``4k``, ``1G``, ``1MiB`` or ``1048576``
    (K/M/G/T are powers of 1024). BadInput for anything else."""
    m = _SIZE.match(str(text))
    if not m:
        raise BadInput("not a size: %r (use e.g. 4k, 1M, 256M, 1G or a number of bytes)" % text)
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")


def format_size(value: int) -> str:
    """``256M`` for 268435456; bytes when not a whole KiB/MiB/GiB."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value and value % unit == 0:
            return "%d%s" % (value // unit, suffix)
    return "%d" % value


def latency_stats(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """count, min, median, p99 (nearest rank) and max of VALUES, rounded to 3 decimals;
    the statistics are None when VALUES is empty."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return {"count": 0, "min": None, "median": None, "p99": None, "max": None}
    if n % 2:
        median = ordered[n // 2]
    else:
        median = (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0
    p99 = ordered[max(0, int(math.ceil(0.99 * n)) - 1)]
    return {"count": n, "min": round(ordered[0], 3), "median": round(median, 3),
            "p99": round(p99, 3), "max": round(ordered[-1], 3)}


def errno_name(code: int) -> str:
    """``EMSGSIZE`` for 90; ``errno N`` for an unknown number."""
    return errno.errorcode.get(code, "errno %d" % code)
