"""`bpftools doctor`: kernel log analysis + kmem accounting audit + known-bug matrix -> verdicts."""
import os
from typing import Any, Dict, List, Optional

from dataclasses import dataclass, field

from .analyses.kernel_log import find_incidents
from .analyses.known_bugs import apply_live_patches, check_release, remediation_for
from .analyses.verdicts import Verdict, decide
from .kernel.cgroups import memory_cgroup_mount
from .kernel.livepatch import LivePatches, read_live_patches
from .kernel.log import read_log
from .kmem_audit import audit_kmem
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

    def to_json(self) -> Dict[str, Any]:
        return {
            "kernel_release": self.release,
            "log": {"source": self.log_source, "lines": self.log_lines},
            "verdicts": [v.to_json() for v in self.verdicts],
            "findings": [f.to_json() for f in self.findings],
            "kmem_audit": self.audit.to_json() if self.audit is not None else None,
            "known_bugs": [b.to_json() for b in self.bugs],
            "runtimes": [r.to_json() for r in self.runtimes],
            "live_patches": self.live_patches.to_json() if self.live_patches is not None else None,
        }


def run_doctor(log_path: Optional[str] = None, release: Optional[str] = None, root: str = "/") -> Triage:
    """Inspect this node (or a saved log): with --log, the audit still looks at this node. The live
    patches count only for this node's own kernel (not with --release of another one)."""
    live_release = os.uname().release
    lines = read_log(log_path)
    findings = find_incidents(lines, kernel_release=release or (None if log_path else live_release))
    mount = memory_cgroup_mount()
    audit = audit_kmem(mount, live_release) if mount else None
    patches = read_live_patches(root) if release in (None, live_release) else None
    bugs = apply_live_patches(check_release(release or live_release),
                              [p.to_json() for p in patches.patches] if patches else [])
    runtimes = discover_runtimes()
    report = Triage(release=release or live_release, log_source=log_path or "live kernel log",
                    log_lines=len(lines), findings=findings, audit=audit, bugs=bugs, runtimes=runtimes,
                    live_patches=patches)
    steps = remediation_for(bugs, runtimes)
    report.verdicts = decide([f.to_json() for f in findings],
                             audit.to_json() if audit is not None else None,
                             [b.to_json() for b in bugs], [s.to_json() for s in steps])
    return report
