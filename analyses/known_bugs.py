"""The known-bug matrix: which kernel fixes a release carries, and what to do about the rest.

``check_release("3.10.0-957.el7.x86_64")`` answers, for each fix that matters to the two incidents
(kmem-accounting I/O jitter, netdev refcount leaks), one of ``affected``, ``fixed``, ``unknown`` or
``not-applicable``, with the reason. ``remediation_for`` turns those answers plus the container
runtimes found on the node (``bpftools.runtimes``) into concrete steps.

Only what the sources say is claimed (/work/shared/design/kernel-facts.md; [V] read in a kernel
tree, [S] secondary source). Where a release sits between two known data points, or is a distro
build whose stable sublevel cannot be seen in ``uname -r`` (Debian ``6.1.0-28``, Ubuntu
``5.4.0-29``), the answer is ``unknown`` and the reason says how to find out. Conventions:

- A kernel based on mainline X.Y contains every commit of mainline X.Y.
- A stable series keeps a fix in later sublevels once it has it (6.18.2 has it ⇒ 6.18.44 has it),
  and a build that lacks a fix lacks it in earlier sublevels or builds too.
- RHEL 7 (``3.10.0-N.el7``): "first in build N" or "absent in GA build N" is known for a few
  builds; z-stream builds (``N.x.y``) of builds known to lack a fix may carry a backport, so they
  are ``unknown`` unless stated otherwise.

Pure: no I/O, deterministic; imports nothing from the capture layer.
"""
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dataclasses import asdict, dataclass, field

# A runtime found on the node: bpftools.runtimes.RuntimeVersion, which this layer does not import
# (analyses never look up); only its name, runtime, version and kmem_flags are read.
RuntimeVersion = Any

AFFECTED = "affected"
FIXED = "fixed"
UNKNOWN = "unknown"
NOT_APPLICABLE = "not-applicable"
STATUSES = (AFFECTED, FIXED, UNKNOWN, NOT_APPLICABLE)

# Bug ids, in the order check_release reports them.
KMEM_ALL_SLABS = "kmem-all-slabs-charged"
SLUB_DEAD_CACHES = "slub-dead-caches"
MEMCG_ID_SPACE = "memcg-id-space"
NOKMEM_BOOT_OPTION = "nokmem-boot-option"
FNHE_DEL_RACE = "fnhe-del-race"
FNHE_REMOVE_OLDEST = "fnhe-remove-oldest"

# kmem-relevant runtime facts; bpftools.runtimes sets them on RuntimeVersion.kmem_flags.
RUNC_ALWAYS_KMEM = "runc-always-enables-kmem"
RUNC_KMEM_UNLESS_NOKMEM = "runc-kmem-unless-nokmem-build"
DOCKER_BEFORE_18_09_1 = "docker-before-18.09.1"

# Debian and Ubuntu name their flavours differently; both print sublevel 0 plus an ABI number.
_DEBIAN_ARCHES = ("amd64", "arm64", "686", "686-pae", "armmp", "armmp-lpae", "armel", "armhf",
                  "i386", "ppc64el", "powerpc64le", "s390x", "riscv64", "loong64", "mips64r2el",
                  "mips64r6el", "octeon", "marvell", "rpi", "4kc-malta", "5kc-malta")
_UBUNTU_FLAVOURS = ("generic", "lowlatency", "aws", "azure", "gcp", "gke", "gkeop", "oracle",
                    "kvm", "ibm", "raspi", "oem", "virtual", "nvidia", "intel-iotg", "realtime")

_RHEL_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)-(\d+(?:\.\d+)*)\.el(\d+)(?:_\d+)?(?:\..*)?$")
_DISTRO_RE = re.compile(r"^(\d+)\.(\d+)\.0-(\d+)(?:\.[0-9a-z.~+]+)?-([a-z0-9][a-z0-9-]*)$")
_UPSTREAM_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?(.*)$")


@dataclass(frozen=True)
class KernelRelease:
    """A parsed ``uname -r``.

    ``vendor``: ``rhel`` | ``debian`` | ``ubuntu`` | ``distro`` (Debian-like, flavour not known)
    | ``upstream`` (mainline or stable, no suffix) | ``custom`` (upstream numbering plus a local
    suffix such as ``-fc-v657``). ``sublevel`` is the stable sublevel, None where the string does
    not show it (RHEL, Debian, Ubuntu). ``rhel_build`` is ``(957,)`` for ``3.10.0-957.el7`` and
    ``(1127, 19, 1)`` for ``3.10.0-1127.19.1.el7``; ``el`` is the RHEL major (7).
    """

    release: str
    version: int
    patchlevel: int
    sublevel: Optional[int]
    vendor: str
    rc: Optional[int] = None
    rhel_build: Optional[Tuple[int, ...]] = None
    el: Optional[int] = None
    abi: Optional[int] = None
    flavour: str = ""

    @property
    def base(self) -> Tuple[int, int]:
        """Mainline version this kernel is based on, e.g. (6, 1)."""
        return (self.version, self.patchlevel)

    @property
    def zstream(self) -> bool:
        """True for a RHEL z-stream build (``957.21.3``), False for a GA build (``957``)."""
        return self.rhel_build is not None and len(self.rhel_build) > 1


def parse_release(release: str) -> Optional[KernelRelease]:
    """Parse a kernel release string; None when it is not one of the known shapes.

    >>> parse_release("3.10.0-1127.19.1.el7.x86_64").rhel_build
    (1127, 19, 1)
    """
    text = release.strip()
    m = _RHEL_RE.match(text)
    if m:
        build = tuple(int(x) for x in m.group(4).split("."))
        return KernelRelease(text, int(m.group(1)), int(m.group(2)), None, "rhel",
                             rhel_build=build, el=int(m.group(5)))
    m = _DISTRO_RE.match(text)
    if m:
        flavour = m.group(4)
        if flavour in _UBUNTU_FLAVOURS or flavour.split("-")[0] in _UBUNTU_FLAVOURS:
            vendor = "ubuntu"
        elif flavour in _DEBIAN_ARCHES or flavour.split("-")[-1] in _DEBIAN_ARCHES \
                or flavour.endswith("-pae") or flavour.endswith("-lpae"):
            vendor = "debian"
        else:
            vendor = "distro"
        return KernelRelease(text, int(m.group(1)), int(m.group(2)), None, vendor,
                             abi=int(m.group(3)), flavour=flavour)
    m = _UPSTREAM_RE.match(text)
    if m:
        local = m.group(5)
        # CONFIG_LOCALVERSION suffixes: "-fc-v657", "+deb13-amd64", "+" (dirty tree)
        if local and not re.match(r"^(?:\+|[-+][0-9A-Za-z][^\s]*)$", local):
            return None
        sublevel = int(m.group(3)) if m.group(3) is not None else 0
        rc = int(m.group(4)) if m.group(4) is not None else None
        return KernelRelease(text, int(m.group(1)), int(m.group(2)), sublevel,
                             "custom" if local else "upstream", rc=rc, flavour=local.lstrip("-"))
    return None


@dataclass
class BugStatus:
    """One row of the matrix for one kernel release (and, after :func:`apply_live_patches`, for the
    live patches the node runs)."""

    id: str
    title: str
    commit: str
    status: str
    reason: str
    remediation: str
    fix_functions: List[str] = field(default_factory=list)   # what the fix changes (FIX_FUNCTIONS)
    live_patch: Optional[str] = None     # the live patch whose replaced functions give the status

    def to_json(self) -> Dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


@dataclass
class Remediation:
    """One concrete step: ``action`` is what to do, ``why`` which finding asks for it."""

    id: str
    action: str
    why: str

    def to_json(self) -> Dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


# --- rule helpers: each returns a predicate over KernelRelease --------------------------------
_Pred = Callable[[KernelRelease], bool]


def _rhel7(lo: int = 0, hi: int = 1 << 30, ga_only: bool = False) -> _Pred:
    """RHEL 7 builds lo <= N <= hi (z-streams included unless ga_only)."""
    def pred(r: KernelRelease) -> bool:
        if r.el != 7 or r.rhel_build is None:
            return False
        return lo <= r.rhel_build[0] <= hi and not (ga_only and r.zstream)
    return pred


def _series(version: int, patchlevel: int, lo: int = 0, hi: int = 1 << 30) -> _Pred:
    """Upstream-numbered builds of one stable series with lo <= sublevel <= hi."""
    def pred(r: KernelRelease) -> bool:
        return (r.vendor in ("upstream", "custom") and r.base == (version, patchlevel)
                and r.sublevel is not None and r.rc is None and lo <= r.sublevel <= hi)
    return pred


def _based_on_at_least(version: int, patchlevel: int) -> _Pred:
    """Kernels based on mainline >= version.patchlevel (a -rc of that version excluded)."""
    def pred(r: KernelRelease) -> bool:
        if r.rc is not None and r.base == (version, patchlevel):
            return False
        return r.el != 7 and r.base >= (version, patchlevel)
    return pred


def _based_on_below(version: int, patchlevel: int) -> _Pred:
    """Non-RHEL-7 kernels based on mainline < version.patchlevel."""
    def pred(r: KernelRelease) -> bool:
        return r.el != 7 and r.base < (version, patchlevel)
    return pred


def _any_rhel7(r: KernelRelease) -> bool:
    return r.el == 7


_Rule = Tuple[_Pred, str, str]


@dataclass(frozen=True)
class _Bug:
    id: str
    title: str
    commit: str
    rules: Tuple[_Rule, ...]        # first match wins; no match -> unknown
    if_affected: str                # remediation when affected
    if_unknown: str                 # how to find out when unknown
    otherwise_unknown: str          # reason when no rule matches


_VERIFY_CHANGELOG = ("check the kernel package changelog (RHEL: `rpm -q --changelog kernel-$(uname -r)"
                     " | grep -i '%s'`; Debian/Ubuntu: /usr/share/doc/linux-image-$(uname -r)/"
                     "changelog*) for the fix")

_BUGS = (
    _Bug(
        KMEM_ALL_SLABS,
        "kmem accounting charges every slab allocation of a container (biovec slabs included)",
        "a9bb7e620efd",
        (
            (_rhel7(hi=957), AFFECTED,
             "RHEL 7 up to 7.6 (3.10.0-957): once kmem accounting is on for a container's memory "
             "cgroup, every slab allocation of its tasks is charged to it, including the biovec "
             "slabs of writeback; failed charges fall back to the 5 s mempool wait"),
            (_rhel7(lo=1127), NOT_APPLICABLE,
             "RHEL 7.8+ (3.10.0-1127 read in source) charges only SLAB_ACCOUNT/__GFP_ACCOUNT "
             "caches, so biovec allocations are not charged to the container"),
            (_any_rhel7, UNKNOWN,
             "between RHEL 7.6 (957, charges every slab) and 7.8 (1127, SLAB_ACCOUNT only); "
             "no source of this build was read"),
            (_based_on_below(4, 5), AFFECTED,
             "before a9bb7e620efd (v4.5) kmem accounting was opt-out: every slab allocation of "
             "a task in a kmem-active memory cgroup is charged"),
            (_based_on_at_least(4, 5), NOT_APPLICABLE,
             "since a9bb7e620efd (v4.5) only SLAB_ACCOUNT/__GFP_ACCOUNT caches are charged; "
             "biovec slabs are not"),
        ),
        "keep kmem accounting off for container cgroups: runc/kubelet built with nokmem, "
        "docker >= 18.09.1 on RHEL 7, or boot with cgroup.memory=nokmem where the kernel has it",
        "see the kmem audit of `bpftools doctor`: if no container cgroup has kmem accounting "
        "active, this path cannot trigger",
        "no data for this release"),
    _Bug(
        SLUB_DEAD_CACHES,
        "slub: make dead caches discard free slabs immediately",
        "d6e0b7fa1186",
        (
            (_rhel7(lo=1075), FIXED, "first in RHEL 3.10.0-1075 [secondary source]"),
            (_rhel7(hi=1074, ga_only=True), AFFECTED,
             "RHEL 7 GA builds before 3.10.0-1075 lack it (not in 957)"),
            (_any_rhel7, UNKNOWN,
             "z-stream of a RHEL 7 build before 1075: may carry a backport"),
            (_based_on_at_least(4, 0), FIXED, "in mainline since v4.0"),
        ),
        "upgrade to RHEL 3.10.0-1075 or later (7.8: 1127) or a v4.0+ kernel: dead memory "
        "cgroups of exited containers otherwise keep their empty slabs",
        _VERIFY_CHANGELOG % "dead caches",
        "in mainline since v4.0; this release is older and may or may not carry a backport"),
    _Bug(
        MEMCG_ID_SPACE,
        "mm: memcontrol: fix cgroup creation failure after many small jobs",
        "73f576c04b94",
        (
            (_any_rhel7, UNKNOWN,
             "probably backported to RHEL 7.6 (957) [secondary source, not verified in a tree]"),
            (_based_on_at_least(4, 7), FIXED, "in mainline since v4.7"),
        ),
        "upgrade to a v4.7+ kernel or one carrying 73f576c04b94: offline memory cgroups pinned "
        "by kmem charges exhaust the 65535 memcg ids and cgroup creation fails",
        _VERIFY_CHANGELOG % "cgroup creation failure",
        "in mainline since v4.7; this release is older and may or may not carry a backport"),
    _Bug(
        NOKMEM_BOOT_OPTION,
        "no cgroup.memory=nokmem boot option to switch kmem accounting off",
        "04823c833b3e",
        (
            (_rhel7(lo=1127), FIXED,
             "cgroup.memory=nokmem is available (RHEL 3.10.0-1127 read in source)"),
            (_rhel7(hi=514, ga_only=True), AFFECTED,
             "RHEL 7.3 (3.10.0-514) and older GA builds do not know cgroup.memory=nokmem"),
            (_rhel7(lo=957, hi=957, ga_only=True), UNKNOWN,
             "likely absent in RHEL 7.6 (957): absent in 514, present in 1127, no 957 source read"),
            (_any_rhel7, UNKNOWN,
             "RHEL 7 build between 514 (option absent) and 1127 (present)"),
            (_based_on_at_least(4, 6), FIXED,
             "cgroup.memory=nokmem (04823c833b3e, v4.5) also governs cgroup v1 since "
             "b313aeee2509 (v4.6) [secondary sources]"),
            (_based_on_below(4, 5), AFFECTED,
             "cgroup.memory=nokmem was added in v4.5 (04823c833b3e) [secondary source]"),
        ),
        "this kernel cannot switch kmem accounting off at boot; RHEL 3.10.0-1127 (7.8) and "
        "later can (cgroup.memory=nokmem)",
        "check whether this kernel knows cgroup.memory=nokmem "
        "(RHEL: `rpm -q --changelog kernel-$(uname -r) | grep -i nokmem`)",
        "cgroup.memory=nokmem came in v4.5 for cgroup v2 and governs cgroup v1 since v4.6; "
        "no data for this release"),
    _Bug(
        FNHE_DEL_RACE,
        "route: set the deleted fnhe fnhe_daddr to 0 in ip_del_fnhe to fix a race",
        "ee60ad219f5c",
        (
            (_rhel7(lo=1127), FIXED, "in RHEL 3.10.0-1127 (7.8) [read in source]"),
            (_rhel7(lo=514, hi=957, ga_only=True), AFFECTED,
             "absent in RHEL 3.10.0-514 and 957 GA: a dst bound to a deleted fnhe pins the "
             "device (unregister_netdevice: waiting for ... to become free)"),
            (_any_rhel7, UNKNOWN,
             "RHEL 7 build outside the known points (514 and 957 GA lack it, 1127 has it)"),
            (_series(3, 16, lo=70), FIXED, "backported to stable 3.16.70"),
            (_series(3, 10, hi=99), NOT_APPLICABLE,
             "vanilla 3.10 (3.10.99 read) has no ip_del_fnhe, where the race lives"),
            (_based_on_at_least(5, 1), FIXED, "in mainline since v5.1 (merged March 2019)"),
        ),
        "upgrade the kernel (RHEL 7: 3.10.0-1127 or later; upstream: 5.1+ or a stable release "
        "with ee60ad219f5c) or apply a live patch carrying ee60ad219f5c",
        _VERIFY_CHANGELOG % "fnhe",
        "in mainline since v5.1 and stable 3.16.70; whether this release carries a backport "
        "is not known"),
    _Bug(
        FNHE_REMOVE_OLDEST,
        "ipv4: route: Prevent rt_bind_exception() from rebinding stale fnhe",
        "ac1499fcd40f",
        (
            (_series(6, 18, lo=2), FIXED, "present in 6.18.2 [read in source]"),
            (_based_on_at_least(6, 19), FIXED,
             "the fix was in stable 6.18.2, and stable takes only fixes already upstream, so "
             "every 6.19+ kernel has it"),
            (_series(6, 1, hi=141), AFFECTED,
             "absent in 6.1.141 [read in source]: fnhe_remove_oldest() (from 67d6d681e15b) "
             "deletes an fnhe without clearing fnhe_daddr, so a dst can bind to it and leak "
             "a device reference"),
        ),
        "upgrade to a kernel carrying ac1499fcd40f (Nov 2025; 6.18.2 has it)",
        _VERIFY_CHANGELOG % "rebinding stale fnhe",
        "fixed in Nov 2025 (in 6.18.2, not in 6.1.141); whether this release has it is not "
        "known"),
)


# The functions each fix changes, from its commit, for matching live patches (a kpatch or livepatch
# module names every function it replaces). Empty: the fix is not something a live patch carries
# (a boot option, which caches are accounted, new struct fields) or its functions were not read.
FIX_FUNCTIONS = {
    # ee60ad219f5c's diff touches ip_del_fnhe only (it clears fnhe_daddr there, so that
    # rt_bind_exception, unchanged, no longer binds to the deleted entry). Where the compiler inlined
    # the static ip_del_fnhe, a live patch replaces its callers instead and is not matched here.
    FNHE_DEL_RACE: ("ip_del_fnhe",),
    # d6e0b7fa1186 (v4.0): __kmem_cache_shrink(s, deactivate) empties a dead cache's per-cpu partial
    # lists and put_cpu_partial() flushes at once when cpu_partial is 0 [S: as c9fc586403e7 and the
    # 2021 "remove redundant unfreeze_partials() from put_cpu_partial()" describe it].
    SLUB_DEAD_CACHES: ("__kmem_cache_shrink", "put_cpu_partial"),
    KMEM_ALL_SLABS: (),          # cache flags set at creation (SLAB_ACCOUNT): not a function swap
    MEMCG_ID_SPACE: (),          # adds a reference count to the memcg id (struct change)
    NOKMEM_BOOT_OPTION: (),      # a boot option
    FNHE_REMOVE_OLDEST: (),      # ac1499fcd40f's diff not read
}


def apply_live_patches(statuses: Sequence[BugStatus], patches: Sequence[Dict[str, Any]]) -> List[BugStatus]:
    """STATUSES with the node's live patches taken into account (PATCHES: LivePatch.to_json() dicts).

    A bug that is affected or unknown becomes ``fixed`` when one enabled patch that is not in
    transition replaces every function its fix changes; ``unknown`` when a patch replaces only some of
    them, or all of them but is disabled or still in transition. A replaced function is evidence that
    the fix is applied, not proof: the patch may carry another change to the same function.
    """
    out = []
    for s in statuses:
        wanted = list(FIX_FUNCTIONS.get(s.id, ()))
        row = BugStatus(s.id, s.title, s.commit, s.status, s.reason, s.remediation, wanted, s.live_patch)
        out.append(row)
        if not wanted or s.status not in (AFFECTED, UNKNOWN):
            continue
        matches = []
        for p in patches:
            replaced = [f for f in wanted if any(pf.get("name") == f for pf in p.get("functions", ()))]
            if replaced:
                matches.append((p, replaced))
        full = [p for p, replaced in matches if len(replaced) == len(wanted)]
        done = [p for p in full if p.get("enabled") and not p.get("transition")]
        what = "%s (the function%s %s changes)" % (", ".join(wanted), "s" if len(wanted) > 1 else "", s.commit)
        if done:
            row.status, row.live_patch, row.remediation = FIXED, str(done[0].get("name")), ""
            row.reason = ("live patch %s (%s, enabled) replaces %s: evidence that the fix is applied, not "
                          "proof (a replaced function may carry another change); without it: %s"
                          % (row.live_patch, done[0].get("source"), what, s.reason))
        elif full:
            p = full[0]
            state = "in transition" if p.get("enabled") and p.get("transition") else "disabled"
            row.status, row.live_patch = UNKNOWN, str(p.get("name"))
            row.reason = "live patch %s replaces %s but is %s; %s" % (row.live_patch, what, state, s.reason)
        elif matches:
            p, replaced = matches[0]
            missing = [f for f in wanted if f not in replaced]
            row.status, row.live_patch = UNKNOWN, str(p.get("name"))
            row.reason = ("live patch %s replaces %s but not %s, which %s also changes; %s"
                          % (row.live_patch, ", ".join(replaced), ", ".join(missing), s.commit, s.reason))
    return out


def _distro_note(r: KernelRelease) -> str:
    if r.vendor in ("debian", "ubuntu", "distro"):
        return ("; %s ABI %d does not show the upstream stable sublevel (`uname -v` does)"
                % (r.vendor, r.abi or 0))
    return ""


def check_release(release: str) -> List[BugStatus]:
    """Status of every known bug for one ``uname -r`` string, in a fixed order.

    >>> [s.status for s in check_release("3.10.0-957.el7.x86_64")][:2]
    ['affected', 'affected']
    """
    parsed = parse_release(release)
    out = []
    for bug in _BUGS:
        if parsed is None:
            status, reason = UNKNOWN, "kernel release %r not understood" % release
        else:
            status, reason = UNKNOWN, bug.otherwise_unknown + _distro_note(parsed)
            for pred, rule_status, rule_reason in bug.rules:
                if pred(parsed):
                    status, reason = rule_status, rule_reason
                    break
        remediation = {AFFECTED: bug.if_affected, UNKNOWN: bug.if_unknown}.get(status, "")
        out.append(BugStatus(bug.id, bug.title, bug.commit, status, reason, remediation,
                             list(FIX_FUNCTIONS.get(bug.id, ()))))
    return out


def _runtime_label(rt: RuntimeVersion) -> str:
    where = " (%s)" % rt.path if rt.path else ""
    return "%s %s%s" % (rt.name, rt.version or "?", where)


def remediation_for(statuses: Sequence[BugStatus],
                    runtimes: Sequence[RuntimeVersion]) -> List[Remediation]:
    """Concrete steps for the affected (and some unknown) findings, runtimes first.

    ``runtimes`` are ``bpftools.runtimes.RuntimeVersion`` objects (only ``name``, ``runtime``,
    ``version``, ``path`` and ``kmem_flags`` are read). Runtime steps are given only when the
    kmem incident path is ``affected`` or ``unknown`` on this kernel.
    """
    by_id = {s.id: s for s in statuses}
    steps = []  # type: List[Remediation]
    kmem = by_id.get(KMEM_ALL_SLABS)
    kmem_matters = kmem is not None and kmem.status in (AFFECTED, UNKNOWN)
    if kmem_matters:
        why = "%s: %s" % (KMEM_ALL_SLABS, kmem.status)
        flagged = False
        for rt in runtimes:
            flags = rt.kmem_flags
            if RUNC_ALWAYS_KMEM in flags:
                flagged = True
                steps.append(Remediation(
                    "runc-upgrade",
                    "replace %s: runc 1.0.0-rc3 to rc5 turns kmem accounting on for every "
                    "container with a memory limit; use runc >= 1.0.0-rc6 built with "
                    "`-tags nokmem` (or >= 1.0.0-rc94, which ignores kmem settings)"
                    % _runtime_label(rt), why))
            if RUNC_KMEM_UNLESS_NOKMEM in flags:
                flagged = True
                steps.append(Remediation(
                    "runc-check-nokmem",
                    "check that %s was built with `-tags nokmem`: with such a build (rc7+) "
                    "`docker run --rm --kernel-memory 100M busybox true` fails with \"kernel "
                    "memory accounting disabled in this runc build\"" % _runtime_label(rt), why))
            if DOCKER_BEFORE_18_09_1 in flags:
                flagged = True
                steps.append(Remediation(
                    "docker-upgrade",
                    "upgrade %s to >= 18.09.1, whose RHEL 7 packages build runc with nokmem "
                    "(disputed in opencontainers/runc#1725: verify with `docker run --rm "
                    "--kernel-memory 100M busybox true`, which must fail on a nokmem runc)"
                    % _runtime_label(rt), why))
        if not flagged and not any(rt.runtime == "runc" for rt in runtimes):
            steps.append(Remediation(
                "runc-nokmem",
                "no runc found on PATH: make sure the runc your container runtime uses is built "
                "with `-tags nokmem` (runc >= 1.0.0-rc6) or is >= 1.0.0-rc94", why))
        for rt in runtimes:
            if rt.runtime == "kubelet":
                steps.append(Remediation(
                    "kubelet-nokmem",
                    "check how %s was built: kubelet creates pod cgroups with its vendored "
                    "libcontainer, and a kubelet vendoring runc 1.0.0-rc3 to rc93 needs "
                    "GOFLAGS=-tags=nokmem to leave kmem accounting off" % _runtime_label(rt),
                    why))
    for bug in _BUGS:
        st = by_id.get(bug.id)
        if st is None or not st.remediation:
            continue
        if bug.id == KMEM_ALL_SLABS:
            continue  # expanded into the runtime steps above
        if st.status == AFFECTED or (st.status == UNKNOWN and bug.id == NOKMEM_BOOT_OPTION
                                     and kmem_matters):
            steps.append(Remediation("kernel-" + bug.id, st.remediation,
                                     "%s: %s" % (bug.id, st.status)))
    return steps
