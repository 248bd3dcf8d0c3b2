"""Audit which memory cgroups have kernel-memory (kmem) accounting switched on.

On 3.10 (RHEL 7) kmem accounting is opt-in per memory cgroup: the first write to
``memory.kmem.limit_in_bytes`` switches it on for good (runc 1.0.0-rc3+ writes ``1`` then
``-1``), children inherit it, and from then on every slab allocation of the cgroup's tasks is
charged to it, the path behind the 5-second writeback stalls. Reading ``memory.kmem.slabinfo``
tells the state apart: readable where accounting is on, ``EIO`` where it is off.

Since v4.6 (b313aeee2509) every v1 memory cgroup accounts kmem and there is no switch; on 6.1+
writing ``kmem.limit_in_bytes`` only warns "deprecated … no effect" and ``kmem.slabinfo`` reads
empty; cgroup v2 always accounts kmem. There the audit still lists the counters but
``applies`` is False and ``active`` is None.
"""
import errno
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from dataclasses import asdict, dataclass, field

from bpftools.analyses.known_bugs import parse_release
from .kernel.cgroups import ContainerRef
from .kernel.pods import container_named

MAX_CGROUPS = 100000
# "Unlimited" reads back as LLONG_MAX on 3.10 (res_counter RESOURCE_MAX, 9223372036854775807)
# and as PAGE_COUNTER_MAX pages in bytes on newer kernels (9223372036854771712 with 4 KiB
# pages, 9223372036854710272 with 64 KiB pages): anything from 2**63 - 64 KiB up is unlimited.
PAGE_COUNTER_MAX_BYTES = 9223372036854771712
UNLIMITED_FLOOR = (1 << 63) - (1 << 16)

_LIMIT = "memory.kmem.limit_in_bytes"
_USAGE = "memory.kmem.usage_in_bytes"
_MAX_USAGE = "memory.kmem.max_usage_in_bytes"
_FAILCNT = "memory.kmem.failcnt"
_SLABINFO = "memory.kmem.slabinfo"


def read_slabinfo(path: str) -> Optional[bool]:
    """True if ``memory.kmem.slabinfo`` is readable (3.10: kmem accounting on), False on EIO
    (3.10: off), None when it cannot be told (file missing, permission denied, …)."""
    try:
        with open(path, "rb") as f:
            f.read(4096)
        return True
    except OSError as exc:
        return False if exc.errno == errno.EIO else None


@dataclass
class KmemCgroup:
    """One memory cgroup. ``path`` is relative to the mount (``/`` for the root).

    ``active``: kmem accounting on (True/False), None where the check does not apply or failed.
    ``limit`` is None when unlimited (``unlimited`` True) or unreadable (``unlimited`` None);
    unreadable counters are None and named in ``errors``.
    """

    path: str
    active: Optional[bool]
    usage: Optional[int]
    max_usage: Optional[int]
    limit: Optional[int]
    unlimited: Optional[bool]
    failcnt: Optional[int]
    container: Optional[ContainerRef]
    errors: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


@dataclass
class KmemSummary:
    """Counts: ``walked`` cgroups listed, ``active`` with kmem accounting on, ``with_failcnt``
    with ``memory.kmem.failcnt`` above 0, ``vanished`` removed during the walk; ``truncated``
    is True when the walk stopped at its bound."""

    walked: int = 0
    active: int = 0
    with_failcnt: int = 0
    vanished: int = 0
    truncated: bool = False

    def to_json(self) -> Dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


@dataclass
class KmemAudit:
    """The audit of one memory cgroup hierarchy; ``errors`` are directories that could not be
    listed."""

    mount: Optional[str]
    release: str
    applies: bool
    explanation: str
    summary: KmemSummary = field(default_factory=KmemSummary)
    cgroups: List[KmemCgroup] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def kmem_check_applies(release: str, mount: Optional[str]) -> Tuple[bool, str]:
    """Whether "is kmem accounting on in this cgroup" is a meaningful question, and why."""
    if mount is None:
        return False, ("no cgroup v1 memory controller is mounted: cgroup v2 always accounts "
                       "kernel memory (SLAB_ACCOUNT caches only), there is no per-cgroup switch")
    parsed = parse_release(release)
    if parsed is None:
        return False, "kernel release %r not understood: not auditing kmem activation" % release
    if parsed.base < (4, 6):
        note = "" if parsed.base[0] == 3 else " (the EIO behaviour was read in 3.10 sources only)"
        return True, ("Linux %d.%d: kmem accounting is opt-in per memory cgroup (the first write "
                      "to memory.kmem.limit_in_bytes switches it on; children inherit it); "
                      "memory.kmem.slabinfo is readable where it is on and fails with EIO where "
                      "it is off%s" % (parsed.base + (note,)))
    text = ("Linux %d.%d: every cgroup v1 memory cgroup accounts kernel memory since v4.6 "
            "(b313aeee2509), and only SLAB_ACCOUNT caches since v4.5" % parsed.base)
    if parsed.version >= 6:
        text += ("; writing memory.kmem.limit_in_bytes only warns that it is deprecated and has "
                 "no effect (6.1+), and memory.kmem.slabinfo reads empty")
    return False, text + ": there is no per-cgroup kmem switch to audit"


def _read_int(path: str) -> Tuple[Optional[int], Optional[str], bool]:
    """(value, error text, missing) for a one-number cgroup file."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        return None, "%s: %s" % (os.path.basename(path), exc.strerror or exc), \
            exc.errno == errno.ENOENT
    try:
        return int(text), None, False
    except ValueError:
        return None, "%s: not a number: %r" % (os.path.basename(path), text[:40]), False


def _read_cgroup(directory: str, rel: str, check_active: bool,
                 reader: Callable[[str], Optional[bool]]) -> Optional[KmemCgroup]:
    """One cgroup's kmem state; None when the cgroup vanished while being read."""
    values = {}
    errors = []
    missing = False
    for name in (_LIMIT, _USAGE, _MAX_USAGE, _FAILCNT):
        value, error, gone = _read_int(os.path.join(directory, name))
        values[name] = value
        missing = missing or gone
        if error:
            errors.append(error)
    if missing and not os.path.isdir(directory):
        return None
    active = reader(os.path.join(directory, _SLABINFO)) if check_active else None
    if active is None and check_active and not os.path.isdir(directory):
        return None
    if check_active and active is None:
        errors.append("%s: could not tell whether kmem accounting is on" % _SLABINFO)
    limit = values[_LIMIT]
    unlimited = None if limit is None else limit >= UNLIMITED_FLOOR
    return KmemCgroup(rel, active, values[_USAGE], values[_MAX_USAGE],
                      None if unlimited else limit, unlimited, values[_FAILCNT],
                      container_named(rel), errors)


def _children(directory: str, errors: List[str]) -> List[str]:
    """Sorted names of the child cgroups (subdirectories); [] if the cgroup vanished."""
    try:
        with os.scandir(directory) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    except OSError as exc:
        errors.append("%s: %s" % (directory, exc.strerror or exc))
        return []


def audit_kmem(mount: Optional[str], release: str,
               read_slabinfo: Callable[[str], Optional[bool]] = read_slabinfo,
               max_cgroups: int = MAX_CGROUPS) -> KmemAudit:
    """Walk every cgroup under the v1 memory ``mount`` (depth first, sorted) and report kmem.

    ``mount`` None means no v1 memory controller (pure cgroup v2): nothing is walked.
    ``read_slabinfo`` is injectable for tests. Never raises for cgroups that vanish or
    cannot be read; stops after ``max_cgroups`` cgroups (``truncated``).
    """
    applies, explanation = kmem_check_applies(release, mount)
    audit = KmemAudit(mount, release, applies, explanation)
    if mount is None:
        return audit
    if not os.path.isdir(mount):
        audit.errors.append("%s: not a directory" % mount)
        return audit
    summary = audit.summary
    stack = [(mount, "/")]
    while stack:
        if len(audit.cgroups) >= max_cgroups:
            summary.truncated = True
            break
        directory, rel = stack.pop()
        entry = _read_cgroup(directory, rel, applies, read_slabinfo)
        if entry is None:
            summary.vanished += 1
            continue
        audit.cgroups.append(entry)
        for name in reversed(_children(directory, audit.errors)):
            stack.append((os.path.join(directory, name), rel.rstrip("/") + "/" + name))
    summary.walked = len(audit.cgroups)
    summary.active = sum(1 for c in audit.cgroups if c.active)
    summary.with_failcnt = sum(1 for c in audit.cgroups if c.failcnt)
    return audit
