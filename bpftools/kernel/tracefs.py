"""Where tracefs is (mounted at /sys/kernel/tracing, or under debugfs on old kernels), mounting it if needed."""
import os
import re
import subprocess
from typing import Optional, Set

from ..errors import PrivilegeError

CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def find_tracefs(root: str = "/") -> Optional[str]:
    """The tracefs directory in use, or None when neither location is mounted."""
    for path in CANDIDATES:
        full = os.path.join(root, path.lstrip("/"))
        if os.path.exists(os.path.join(full, "available_events")):
            return full
    return None


def ensure_tracefs() -> Optional[str]:
    """Mount tracefs (and debugfs, which bcc also reads) when missing; returns the tracefs path.

    Needs root; failures leave things as they were and return what is found.
    """
    if not os.path.exists("/sys/kernel/debug/tracing"):
        _mount("debugfs", "/sys/kernel/debug")
    if find_tracefs() is None or not os.path.exists("/sys/kernel/tracing/available_events"):
        _mount("tracefs", "/sys/kernel/tracing")
    return find_tracefs()


def _mount(fstype: str, target: str) -> None:
    if not os.path.isdir(target):
        return
    subprocess.call(["mount", "-t", fstype, "nodev", target],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tracepoint_exists(category: str, name: str, tracefs: Optional[str] = None) -> bool:
    """True when tracefs lists the tracepoint CATEGORY:NAME."""
    base = tracefs or find_tracefs()
    return bool(base) and os.path.isdir(os.path.join(base, "events", category, name))


def kprobe_misses(pid: int, tracefs: Optional[str] = None) -> int:
    """Hits that kprobes of process PID missed, kretprobes above all (maxactive reached), from tracefs
    ``kprobe_profile`` (``EVENT HITS MISSES``; bcc names its events ``..._bcc_PID``). Probes made through
    the perf kprobe PMU (bcc on 4.17+) are not listed there: 0 then means "not known", not "none"."""
    base = tracefs or find_tracefs()
    if not base:
        return 0
    try:
        with open(os.path.join(base, "kprobe_profile")) as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    suffix = "_bcc_%d" % pid
    total = 0
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(suffix) and parts[2].isdigit():
            total += int(parts[2])
    return total


def tracepoint_fields(category: str, name: str, tracefs: Optional[str] = None) -> Optional[Set[str]]:
    """Field names of tracepoint CATEGORY:NAME from its tracefs format file, None when it does not exist."""
    return format_fields(tracepoint_format(category, name, tracefs))


def format_fields(fmt: Optional[str]) -> Optional[Set[str]]:
    """Field names of a tracepoint's format text (None: no such tracepoint)."""
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


def kretprobe_maxactive(tracefs: Optional[str] = None) -> bool:
    """True when kprobe_events takes ``r[MAXACTIVE]`` (how many calls a kretprobe follows at once).

    Since Linux commit 696ced4fb1d7 (v4.12) tracefs' README documents it as ``r[maxactive]``; before,
    a kretprobe follows about one call per possible CPU, and the returns of more calls in flight (a
    writer asleep 5 s inside a writeback) are missed, counted only in kprobe_profile's misses."""
    base = tracefs or find_tracefs()
    try:
        with open(os.path.join(base or "", "README")) as f:
            return "r[maxactive]" in f.read()
    except OSError:
        return False


def tracing_ready() -> None:
    """Planning reads tracefs and kallsyms as they are for root: require root, mount tracefs if needed."""
    if os.geteuid() != 0:
        raise PrivilegeError("tracing")
    ensure_tracefs()
