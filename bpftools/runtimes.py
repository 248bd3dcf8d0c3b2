"""Find the container runtimes on this node and the kmem-accounting facts their versions imply.

``discover_runtimes()`` runs ``runc``, ``docker-runc`` (the runc that docker-ce up to 18.06
ships), ``docker``, ``containerd`` and ``kubelet`` with ``--version`` (5 s timeout each). A
program not on PATH is not listed; one that fails is listed with ``error`` set.

Why versions matter (kernel-facts.md, runc history):

- runc 1.0.0-rc3 (PR #1350) writes ``1`` then ``-1`` to ``memory.kmem.limit_in_bytes`` of every
  container it creates with a memory limit: kmem accounting is switched on, with no limit.
- runc 1.0.0-rc6 (PR #1921) added the ``nokmem`` build tag; whether a binary was built with it
  cannot be seen in ``--version``. rc94 ignores kmem settings.
- docker 18.09.1 packaging builds runc with nokmem for RHEL 7 (disputed in runc#1725).
"""
import os
import re
import shutil
import signal
import subprocess
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dataclasses import asdict, dataclass, field

from bpftools.analyses.known_bugs import (DOCKER_BEFORE_18_09_1, RUNC_ALWAYS_KMEM,
                                          RUNC_KMEM_UNLESS_NOKMEM)

DEFAULT_TIMEOUT = 5.0

# (program looked up on PATH, runtime it is)
PROGRAMS = (
    ("runc", "runc"),
    ("docker-runc", "runc"),
    ("docker", "docker"),
    ("containerd", "containerd"),
    ("kubelet", "kubelet"),
)

# One pattern per runtime, searched line by line (kubelet may print warnings first).
_VERSION_RES = {
    # "runc version 1.0.0-rc2", "runc version 1.0.0~rc6+dfsg1" (Debian)
    "runc": re.compile(r"^\S*runc version\s+v?(\d[^\s,]*)", re.M),
    # "Docker version 18.09.0, build 4d60db4", "Docker version 17.03.2-ce, build f5ec1e2"
    "docker": re.compile(r"^Docker version\s+v?(\d[^\s,]*)", re.M),
    # "containerd github.com/containerd/containerd v1.6.21 3dce8eb…", "containerd containerd.io 1.6.21"
    "containerd": re.compile(r"^containerd\s+\S+\s+v?(\d[^\s]*)", re.M),
    # "Kubernetes v1.13.5"
    "kubelet": re.compile(r"^Kubernetes\s+v?(\d[^\s]*)", re.M),
}

_VersionKey = Tuple[Tuple[int, ...], Tuple[Any, ...]]


@dataclass
class RuntimeVersion:
    """One runtime program found on PATH.

    ``version`` is the version string as printed (``1.0.0-rc2``), None when the output could not
    be parsed or the program failed; ``raw`` the first output line; ``kmem_flags`` the
    kmem-relevant facts (ids from ``bpftools.analyses.known_bugs``).
    """

    name: str
    runtime: str
    path: str
    version: Optional[str]
    raw: str = ""
    error: Optional[str] = None
    kmem_flags: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def parse_version(runtime: str, output: str) -> Optional[str]:
    """The version string in a runtime's ``--version`` output, or None.

    >>> parse_version("docker", "Docker version 18.09.0, build 4d60db4")
    '18.09.0'
    """
    pattern = _VERSION_RES.get(runtime)
    if pattern is None:
        return None
    m = pattern.search(output)
    return m.group(1) if m else None


def version_key(version: str) -> _VersionKey:
    """Sort key: numeric release, then pre-release (``rc2`` < ``rc10`` < final).

    Build metadata (``+dev``, ``+dfsg1``) and Debian's ``~`` are handled; docker's ``-ce``/``-ee``
    are editions, not pre-releases. Leading zeros are numeric (``18.09`` == ``18.9``).
    """
    text = version.split("+", 1)[0].replace("~", "-")
    m = re.match(r"^v?(\d+(?:\.\d+)*)(.*)$", text)
    if not m:
        return ((), (0, text, 0))
    nums = tuple(int(x) for x in m.group(1).split("."))
    nums = nums + (0,) * (3 - len(nums))
    rest = m.group(2)
    pre = re.match(r"^[-.]?(rc|beta|alpha|dev|pre)\.?(\d*)", rest)
    if pre:
        return (nums, (0, pre.group(1), int(pre.group(2) or 0)))
    return (nums, (1, "", 0))


def kmem_flags(runtime: str, version: Optional[str]) -> List[str]:
    """kmem-accounting facts implied by a runtime version (see the module docstring)."""
    if version is None:
        return []
    key = version_key(version)
    if runtime == "runc":
        if version_key("1.0.0-rc3") <= key < version_key("1.0.0-rc6"):
            return [RUNC_ALWAYS_KMEM]
        if version_key("1.0.0-rc6") <= key < version_key("1.0.0-rc94"):
            return [RUNC_KMEM_UNLESS_NOKMEM]
        return []
    if runtime == "docker" and key < version_key("18.09.1"):
        return [DOCKER_BEFORE_18_09_1]
    return []


def _run_version(path: str, timeout: float) -> Tuple[Optional[str], Optional[str]]:
    """(output, error) of ``path --version``; stderr is merged into the output."""
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.Popen([path, "--version"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, env=env, start_new_session=True)
    except OSError as exc:
        return None, "cannot run %s: %s" % (path, exc.strerror or exc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Kill the whole session: a wrapper script's children would keep the pipe open.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        return None, "%s --version timed out after %g s" % (path, timeout)
    if proc.returncode != 0:
        first = _first_line(out)
        return out, "%s --version exited with status %d%s" % (
            path, proc.returncode, (": " + first) if first else "")
    return out, None


def _first_line(text: Optional[str]) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def discover_runtimes(which: Callable[[str], Optional[str]] = shutil.which,
                      timeout: float = DEFAULT_TIMEOUT,
                      programs: Sequence[Tuple[str, str]] = PROGRAMS) -> List[RuntimeVersion]:
    """Run each runtime's ``--version``; absent programs are skipped, failures listed with error."""
    found = []
    for name, runtime in programs:
        path = which(name)
        if not path:
            continue
        out, error = _run_version(path, timeout)
        version = parse_version(runtime, out) if out is not None and error is None else None
        if error is None and version is None:
            error = "no version found in the output of %s --version" % path
        found.append(RuntimeVersion(name, runtime, path, version, _first_line(out), error,
                                    kmem_flags(runtime, version)))
    return found
