"""What makes watch write a bundle, and how often it may.

Triggers: a mempool wait of at least T seconds, a new report in the kernel log (SLUB allocation
failure, ``unregister_netdevice: waiting``, a hung task in either incident's frames), a device seen
waiting in unregister by the probes, and SIGUSR1 (an operator asking for a bundle now). Each belongs
to one incident (``analyses.verdicts``: KMEM or NETDEV; SIGUSR1: ``manual``); bundles of one incident
are at least ``min_interval`` seconds apart, and triggers in between are counted as suppressed.
"""
from typing import Any, Dict, List, Optional

from dataclasses import asdict, dataclass

from ..analyses.verdicts import KIND_INCIDENT, KMEM, NETDEV

MANUAL = "manual"
LOG_WHAT = {"slub_alloc_failure": "SLUB allocation failure in the kernel log",
            "netdev_unregister_wait": "unregister_netdevice wait in the kernel log",
            "hung_task_mempool": "hung task blocked in mempool_alloc in the kernel log",
            "hung_task_netdev": "hung task blocked in netdev unregister in the kernel log"}


@dataclass
class Trigger:
    """One reason to write a bundle: its incident, what was seen, and when (monotonic seconds)."""

    TYPE = "trigger"

    incident: str          # KMEM | NETDEV | MANUAL
    source: str            # "mempool_wait" | "netdev_wait" | a kernel_log finding kind | "signal"
    what: str              # one line for people
    at: float              # time.monotonic() when watch saw it
    ts_ns: Optional[int] = None    # the event's own time, where it has one (bpf_ktime_get_ns)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["type"] = self.TYPE
        return out


def from_event(detector: str, event: Dict[str, Any], min_wait_ns: int, now: float) -> Optional[Trigger]:
    """The trigger in one decoded event: a mempool wait of at least MIN_WAIT_NS, or a device starting
    to wait in unregister (its first report from the probes); else None."""
    kind = event.get("type")
    if detector == "io" and kind == "sleep" and event.get("in_mempool") and event["duration_ns"] >= min_wait_ns:
        where = ", ".join(x for x in (event.get("caller") and "called from %s" % event["caller"],
                                      event.get("pool_cache") and "pool %s" % event["pool_cache"]) if x)
        return Trigger(KMEM, "mempool_wait", "mempool wait of %.2f s by tid %d (%s)%s%s" % (
            event["duration_ns"] / 1e9, event["tid"], event["comm"], "; " if where else "", where), now,
            event.get("ts_ns"))
    if detector == "netdev" and kind == "netdev_wait" and event.get("update") == "waiting":
        return Trigger(NETDEV, "netdev_wait", "%s waiting in unregister: usage count %s, leaked %s" % (
            event.get("name") or event.get("dev"), event.get("count"),
            "?" if event.get("leaked") is None else event["leaked"]), now, event.get("ts_ns"))
    return None


def from_log(before: Dict[str, int], after: Dict[str, int], now: float) -> List[Trigger]:
    """Triggers for the kernel log reports counted in AFTER but not in BEFORE (LogAnalyser.reports())."""
    out = []
    for kind, count in after.items():
        new = count - before.get(kind, 0)
        if new > 0 and kind in KIND_INCIDENT:
            out.append(Trigger(KIND_INCIDENT[kind], kind, "%s (%d new)" % (LOG_WHAT.get(kind, kind), new), now))
    return out


class RateLimit(object):
    """Bundles of one incident at least MIN_INTERVAL seconds apart (from the start of the last one)."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._last = {}  # type: Dict[str, float]
        self.suppressed = {}  # type: Dict[str, int]

    def allow(self, incident: str, now: float) -> bool:
        last = self._last.get(incident)
        if last is not None and now - last < self.min_interval:
            self.suppressed[incident] = self.suppressed.get(incident, 0) + 1
            return False
        self._last[incident] = now
        return True

    def take_suppressed(self, incident: str) -> int:
        """Triggers of INCIDENT suppressed since the last call (for the next bundle to say)."""
        return self.suppressed.pop(incident, 0)


__all__ = ["KMEM", "NETDEV", "MANUAL", "Trigger", "from_event", "from_log", "RateLimit"]
