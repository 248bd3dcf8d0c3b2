"""`bpftools doctor`: kernel log analysis + kmem accounting audit + known-bug matrix -> verdicts.

The log is analysed as it is read, line by line, in bounded memory, whatever its size. When the
analysis saw only part of the log (lines longer than ``kernel.log.MAX_LINE`` cut) or nothing of it
(empty, or no line that looks like a kernel log), doctor says so on stderr and its exit code is
``EXIT_INCOMPLETE``; with nothing analysable the verdicts that would say ``clear`` say ``unknown``.
"""
import os
from typing import Any, Dict, List, Optional

from dataclasses import dataclass, field, replace

from .analyses.kernel_log import MAX_LISTED, LogAnalysis, analyse_log
from .analyses.known_bugs import apply_live_patches, check_release, remediation_for
from .analyses.verdicts import KIND_INCIDENT, Verdict, decide
from .errors import EXIT_INCOMPLETE, EXIT_OK
from .kernel.cgroups import memory_cgroup_mount
from .kernel.livepatch import LivePatches, read_live_patches
from .kernel.log import MAX_LINE, LogLines, read_log
from .kmem_audit import audit_kmem
from .live import warn
from .runtimes import discover_runtimes


@dataclass
class Triage:
    """Everything doctor found, in the order it prints it."""

    release: str
    log_source: str
    log_lines: int
    findings: List[Any]
    audit: Optional[Any]
    bugs: List[Any]
    runtimes: List[Any]
    live_patches: Optional[LivePatches] = None     # this node's (None with --release: another kernel)
    verdicts: List[Verdict] = field(default_factory=list)
    log_analysable: bool = True
    log_lines_cut: int = 0
    log_notes: List[str] = field(default_factory=list)  # what limited the log's analysis (on stderr too)

    @property
    def exit_code(self) -> int:
        """EXIT_INCOMPLETE when the log was analysed in part or not at all, else EXIT_OK."""
        return EXIT_INCOMPLETE if self.log_notes else EXIT_OK

    def to_json(self) -> Dict[str, Any]:
        return {
            "kernel_release": self.release,
            "log": {"source": self.log_source, "lines": self.log_lines},
            "log_analysis": {"analysable": self.log_analysable, "lines_cut": self.log_lines_cut,
                             "notes": list(self.log_notes)},
            "verdicts": [v.to_json() for v in self.verdicts],
            "findings": [f.to_json() for f in self.findings],
            "kmem_audit": self.audit.to_json() if self.audit is not None else None,
            "known_bugs": [b.to_json() for b in self.bugs],
            "runtimes": [r.to_json() for r in self.runtimes],
            "live_patches": self.live_patches.to_json() if self.live_patches is not None else None,
        }


def log_notes(log: LogLines, analysis: LogAnalysis) -> List[str]:
    """One sentence per limit the log's analysis met: long lines cut, nothing analysable."""
    notes = []
    if log.cut:
        notes.append("%s: %d line(s) longer than %d bytes: only their first %d bytes were analysed"
                     % (log.source, log.cut, MAX_LINE, MAX_LINE))
    if not analysis.analysable:
        what = ("it is empty" if not log.lines else
                "none of its %d line(s) looks like a kernel log (no timestamp, no readable text)" % log.lines)
        notes.append("%s: nothing to analyse: %s; the log part of the verdicts is unknown" % (log.source, what))
    return notes


def _without_log(verdict: Verdict) -> Verdict:
    """VERDICT when the log said nothing: no finding can be absent from a log that was not read."""
    if verdict.status == "clear":
        return replace(verdict, status="unknown",
                       summary="the kernel log could not be analysed, and no known precondition")
    if verdict.status == "at-risk":
        return replace(verdict, summary="the kernel log could not be analysed, but this node has the preconditions")
    return verdict


def _left_out(verdict: Verdict, findings: List[Any]) -> Verdict:
    """VERDICT with one line per finding of its incident that lists only part of what it found."""
    lines = ["%s: %s left out (the %d seen last are listed; all are counted)" % (
        f.kind, ", ".join("{:,} {}".format(n, what) for what, n in f.left_out.items()), MAX_LISTED)
        for f in findings if f.left_out and KIND_INCIDENT.get(f.kind) == verdict.incident]
    return replace(verdict, evidence=verdict.evidence + lines) if lines else verdict


def run_doctor(log_path: Optional[str] = None, release: Optional[str] = None, root: str = "/") -> Triage:
    """Inspect this node (or a saved log): with --log, the audit still looks at this node. The live
    patches count only for this node's own kernel (not with --release of another one)."""
    live_release = os.uname().release
    log = read_log(log_path)
    analysis = analyse_log(log, kernel_release=release or (None if log_path is not None else live_release))
    notes = log_notes(log, analysis)
    for note in notes:
        warn(note)
    mount = memory_cgroup_mount()
    audit = audit_kmem(mount, live_release) if mount else None
    patches = read_live_patches(root) if release in (None, live_release) else None
    bugs = apply_live_patches(check_release(release or live_release),
                              [p.to_json() for p in patches.patches] if patches else [])
    runtimes = discover_runtimes()
    report = Triage(release=release or live_release, log_source=log.source, log_lines=log.lines,
                    findings=analysis.findings, audit=audit, bugs=bugs, runtimes=runtimes,
                    live_patches=patches, log_analysable=analysis.analysable, log_lines_cut=log.cut,
                    log_notes=notes)
    steps = remediation_for(bugs, runtimes)
    verdicts = decide([f.to_json() for f in analysis.findings],
                      audit.to_json() if audit is not None else None,
                      [b.to_json() for b in bugs], [s.to_json() for s in steps])
    if not analysis.analysable:
        verdicts = [_without_log(v) for v in verdicts]
    report.verdicts = [_left_out(v, analysis.findings) for v in verdicts]
    return report
