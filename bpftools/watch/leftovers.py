"""What a killed run can leave behind, removed at the next start.

BPF programs and their attachments belong to the process: bcc attaches tracepoints, and kprobes
through the perf kprobe PMU (4.17+), with perf event file descriptors, so the kernel detaches them all
when a SIGKILLed run's descriptors close. Before 4.17 bcc makes kprobes as tracefs ``kprobe_events``
entries named ``..._bcc_PID``, which outlive the process: :func:`stale_kprobe_events` finds those of
processes that are gone, and :func:`remove_stale_kprobe_events` deletes them. Half-written bundles
are the bundle directory's to clean (``bundles.BundleDir.clean_leftovers``).
"""
import os
import re
from typing import Callable, List, Optional

from ..kernel.tracefs import find_tracefs

_BCC_EVENT = re.compile(r"^[pr]\d*:(?P<name>\S+_bcc_(?P<pid>\d+))\s")


def stale_kprobe_events(text: str, alive: Callable[[int], bool]) -> List[str]:
    """Names (``group/event``) in kprobe_events TEXT made by bcc for processes ALIVE(pid) says are gone.

    >>> stale_kprobe_events("p:kprobes/p_mempool_alloc_bcc_7 mempool_alloc\\n", lambda pid: False)
    ['kprobes/p_mempool_alloc_bcc_7']
    """
    out = []
    for line in text.splitlines():
        m = _BCC_EVENT.match(line)
        if m and not alive(int(m.group("pid"))):
            out.append(m.group("name"))
    return out


def _alive(pid: int) -> bool:
    return pid == os.getpid() or os.path.exists("/proc/%d" % pid)


def remove_stale_kprobe_events(tracefs: Optional[str] = None) -> List[str]:
    """Delete the kprobe events of bcc processes that are gone; returns the names removed."""
    base = tracefs or find_tracefs()
    if not base:
        return []
    path = os.path.join(base, "kprobe_events")
    try:
        with open(path) as f:
            stale = stale_kprobe_events(f.read(), _alive)
    except OSError:
        return []
    removed = []
    for name in stale:
        try:
            with open(path, "a") as f:
                f.write("-:%s\n" % name)
            removed.append(name)
        except OSError:
            continue             # busy (another tool still uses it) or already gone
    return removed
