"""The doctor's verdict for each incident, from findings, the kmem audit and the known-bug matrix.

Pure: JSON-shaped inputs (what each part's ``to_json`` gives), a list of Verdicts out.
"""
from typing import Any, Dict, List, Optional

from dataclasses import dataclass, field

from . import known_bugs
from .kernel_log import CONFIDENCES, WEAK

KMEM = "kmem_io_jitter"
NETDEV = "netdev_refcount_leak"
TITLES = {
    KMEM: "I/O jitter from kmem accounting (slab failures -> mempool 5 s waits)",
    NETDEV: "netdev refcount leak (unregister_netdevice: waiting for DEV to become free)",
}
# The incident each kind of finding is evidence of.
KIND_INCIDENT = {"slub_alloc_failure": KMEM, "hung_task_mempool": KMEM,
                 "netdev_unregister_wait": NETDEV, "hung_task_netdev": NETDEV}
# Which known bugs raise the risk of which incident.
BUG_INCIDENT = {
    known_bugs.KMEM_ALL_SLABS: KMEM, known_bugs.SLUB_DEAD_CACHES: KMEM, known_bugs.MEMCG_ID_SPACE: KMEM,
    known_bugs.NOKMEM_BOOT_OPTION: KMEM, known_bugs.FNHE_DEL_RACE: NETDEV, known_bugs.FNHE_REMOVE_OLDEST: NETDEV,
}


@dataclass
class Verdict:
    """detected: the log shows it (certain or likely); at-risk: no sign yet (or only a weak one) but
    the node may have the preconditions; clear. ``confidence`` is that of the strongest finding of
    the log for this incident (None without one), ``rule`` the rule that gave it."""

    incident: str
    status: str
    summary: str
    evidence: List[str] = field(default_factory=list)
    remediation: List[str] = field(default_factory=list)
    confidence: Optional[str] = None
    rule: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {"incident": self.incident, "title": TITLES[self.incident], "status": self.status,
                "summary": self.summary, "confidence": self.confidence, "rule": self.rule,
                "evidence": list(self.evidence), "remediation": list(self.remediation)}


def _by_kind(findings: List[Dict[str, Any]], kind: str) -> Optional[Dict[str, Any]]:
    return next((f for f in findings if f.get("kind") == kind), None)


def _kmem_evidence(findings: List[Dict[str, Any]]) -> List[str]:
    out = []
    slub = _by_kind(findings, "slub_alloc_failure")
    if slub:
        memcg = [c for c in slub.get("caches", []) if c.get("memcg_id") is not None or c.get("cgroup")]
        caches = ", ".join("%s x%s" % (c["cache"], c.get("count", "?")) for c in slub.get("caches", []))
        seen = [str(slub[k]) for k in ("first_seen", "last_seen") if slub.get(k) is not None]
        out.append("%d SLUB allocation failure(s)%s%s%s" % (
            slub["count"], " (%s)" % caches if caches else "",
            "; %d per-container cache(s)" % len(memcg) if memcg else "", ", " + " .. ".join(seen) if seen else ""))
        for c in memcg:
            out.append("cache %s charged to memcg %s, cgroup %s" % (c["cache"], c.get("memcg_id"), c.get("cgroup")))
    out.extend(_task_lines(_by_kind(findings, "hung_task_mempool")))
    return out


def _task_lines(finding: Optional[Dict[str, Any]]) -> List[str]:
    """'task X (pid N) blocked in a <- b <- c [likely: rule]' from the frames that made the stack
    match, with how sure the match is and why."""
    out = []
    for t in (finding or {}).get("tasks", []):
        who = ("task %s (pid %s)" % (t.get("task"), t.get("pid")) if t.get("pid") is not None
               else "a task whose header the excerpt cut")
        if t.get("matched_frames"):
            where = "blocked in " + " <- ".join(t["matched_frames"])
        else:
            where = "blocked as a '%s' worker (frames: %s)" % (
                t.get("workqueue"), " <- ".join(t.get("frames", [])[:6]) or "none")
        out.append("%s %s [%s: %s]" % (who, where, t.get("confidence"), t.get("rule")))
    return out


def _strongest(findings: List[Dict[str, Any]], incident: str) -> Optional[Dict[str, Any]]:
    """The finding of INCIDENT with the strongest confidence, the first of equals."""
    mine = [f for f in findings if KIND_INCIDENT.get(f.get("kind", "")) == incident]
    ranked = sorted(mine, key=lambda f: CONFIDENCES.index(f.get("confidence") or WEAK))
    return ranked[0] if ranked else None


def _netdev_evidence(findings: List[Dict[str, Any]]) -> List[str]:
    out = []
    wait = _by_kind(findings, "netdev_unregister_wait")
    if wait:
        for d in wait.get("devices", []):
            out.append("%s: %s message(s), max usage count %s%s" % (
                d.get("name"), d.get("messages"), d.get("max_usage_count"),
                ", waited >= %ss" % d["duration_seconds"] if d.get("duration_seconds") else ""))
            for tracker in d.get("ref_tracker", []):
                out.append("ref_tracker: %s holds %s, taken via %s" % (
                    tracker.get("holder"), d.get("name"), " <- ".join(tracker.get("frames", [])[:4])))
        meaning = wait.get("leaked_references")
        if isinstance(meaning, dict) and meaning.get("explanation"):
            out.append("count semantics (%s): %s" % (meaning.get("basis"), meaning["explanation"]))
    out.extend(_task_lines(_by_kind(findings, "hung_task_netdev")))
    return out


def decide(findings: List[Dict[str, Any]], audit: Optional[Dict[str, Any]],
           bugs: List[Dict[str, Any]], steps: List[Dict[str, Any]]) -> List[Verdict]:
    """One Verdict per incident, KMEM first.

    ``steps`` are known_bugs.remediation_for() results as dicts; each names in ``why`` the bug id
    that asks for it, which says which incident it fixes.
    """
    verdicts = []
    for incident, evidence in ((KMEM, _kmem_evidence(findings)), (NETDEV, _netdev_evidence(findings))):
        affected = [b for b in bugs if BUG_INCIDENT.get(b.get("id", "")) == incident
                    and b.get("status") == "affected"]
        remediation = [s["action"] for s in steps
                       if BUG_INCIDENT.get(str(s.get("why", "")).split(":")[0]) == incident]
        risk = ["%s: %s" % (b.get("title"), b.get("reason")) for b in affected]
        if incident == KMEM and audit and audit.get("applies"):
            active = audit.get("summary", {}).get("active", 0)
            if active:
                risk.append("%d memory cgroup(s) have kmem accounting active" % active)
        best = _strongest(findings, incident)
        confidence = best.get("confidence") if best else None
        rule = best.get("rule") if best else None
        if evidence and confidence != WEAK:
            status, summary = "detected", "the kernel log shows this incident (%s: %s)" % (confidence, rule)
        elif evidence:
            status, summary = "at-risk", "only a weak sign in the kernel log (%s)" % rule
        elif risk:
            status, summary = "at-risk", "no sign in the log, but this node has the preconditions"
        else:
            status, summary = "clear", "no sign in the log and no known precondition"
        verdicts.append(Verdict(incident, status, summary, evidence + risk, remediation, confidence, rule))
    return verdicts
