"""Where tracefs is (mounted at /sys/kernel/tracing, or under debugfs on old kernels), mounting it if needed."""
import os
import subprocess
from typing import Optional

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
