"""cgroup layout discovery and container/pod naming from cgroup paths.

``container_of`` maps a cgroup path (or the cgroup component of a 3.10 per-memcg slab cache
name such as ``kmalloc-1024(1793:c8ed…)``) to the container and pod it belongs to. Layouts:

- kubelet, cgroupfs driver: ``/kubepods/burstable/pod<uid>/<64-hex id>``,
  ``/kubepods/besteffort/pod<uid>/<id>``, guaranteed pods ``/kubepods/pod<uid>/<id>``; the id
  is docker's or containerd's, which the path does not tell apart (``runtime`` None); CRI-O
  uses ``crio-<id>``.
- kubelet, systemd driver: ``/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _ for ->.slice/docker-<id>.scope`` (or ``cri-containerd-``,
  ``crio-``), guaranteed pods ``/kubepods.slice/kubepods-pod<uid>.slice/…``.
- plain docker: ``/docker/<id>`` (cgroupfs), ``/system.slice/docker-<id>.scope`` (systemd);
  podman: ``/machine.slice/libpod-<id>.scope``.

The other functions read ``/proc`` and cgroupfs of the host (``kernel.hostroot``: under ``--host-root``
the host's mount table is ``/proc/1/mountinfo`` and its mount points are read under the prefix); each
takes ``root`` so tests can point it at a fixture tree (default: the host root).
"""
import os
import re
from typing import Callable, List, Optional, Tuple

from dataclasses import asdict, dataclass

from .hostroot import host_path, mount_table

_HEX64 = r"[0-9a-f]{64}"
# (pattern of one path component, runtime); the group is the container id.
_CONTAINER_COMPONENTS = (
    (re.compile(r"^docker-(%s)\.scope$" % _HEX64), "docker"),
    (re.compile(r"^cri-containerd-(%s)\.scope$" % _HEX64), "containerd"),
    (re.compile(r"^crio-(%s)(?:\.scope)?$" % _HEX64), "cri-o"),
    (re.compile(r"^libpod-(%s)\.scope$" % _HEX64), "podman"),
    (re.compile(r"^(%s)$" % _HEX64), None),
)
# The same components cut short (a cache name truncated by a fixed-size buffer): 12+ hex digits of the id.
_CONTAINER_PREFIX = re.compile(r"^(docker-|cri-containerd-|crio-|libpod-)?([0-9a-f]{12,64})")
_PREFIX_RUNTIMES = {"docker-": "docker", "cri-containerd-": "containerd", "crio-": "cri-o", "libpod-": "podman"}


def container_id_prefix(component: str) -> Optional[Tuple[Optional[str], str]]:
    """(runtime or None, the id's first hex digits) of a cgroup directory name that may be cut short
    (``docker-c8edefa90517e2`` from a truncated 3.10 cache name); None without 12 hex digits."""
    m = _CONTAINER_PREFIX.match(component)
    if not m:
        return None
    return _PREFIX_RUNTIMES.get(m.group(1) or ""), m.group(2)


# cgroupfs "pod<uid>", systemd "kubepods-pod<uid>.slice" / "kubepods-burstable-pod<uid>.slice".
_POD_COMPONENT = re.compile(
    r"^(?:kubepods-(?:(burstable|besteffort)-)?)?pod([0-9a-f][0-9a-f_-]*)(\.slice)?$")
_QOS_COMPONENTS = {
    "burstable": "burstable", "besteffort": "besteffort",
    "kubepods-burstable.slice": "burstable", "kubepods-besteffort.slice": "besteffort",
    "kubepods": "guaranteed", "kubepods.slice": "guaranteed",
}


@dataclass(frozen=True)
class ContainerRef:
    """Who a cgroup belongs to.

    ``runtime``: ``docker`` | ``containerd`` | ``cri-o`` | ``podman`` | None (a bare id, which
    docker and containerd both use). ``container_id`` is None for a pod-level cgroup;
    ``pod_uid`` (with dashes) and ``qos`` (``guaranteed`` | ``burstable`` | ``besteffort``) are
    None outside Kubernetes. ``namespace``, ``pod`` and ``container`` are the names kubelet gives them,
    where this node knows them (``kernel.pods``); a cgroup path alone does not say.
    """

    runtime: Optional[str]
    container_id: Optional[str]
    pod_uid: Optional[str]
    qos: Optional[str]
    namespace: Optional[str] = None
    pod: Optional[str] = None
    container: Optional[str] = None

    def to_json(self) -> dict:
        """Plain dict for --json output."""
        return asdict(self)


def _container_component(component: str) -> Optional[Tuple[Optional[str], str]]:
    """(runtime, id) when one path component names a container."""
    for pattern, runtime in _CONTAINER_COMPONENTS:
        m = pattern.match(component)
        if m:
            return runtime, m.group(1)
    return None


def container_of(cgroup_path: str) -> Optional[ContainerRef]:
    """The container/pod a cgroup path belongs to, or None.

    Accepts absolute cgroup paths (``/kubepods/burstable/pod…/…``), paths under a mount
    (``/sys/fs/cgroup/memory/kubepods/…``) and a single directory name (the cgroup part of a
    3.10 memcg cache name).

    >>> container_of("/docker/" + "ab" * 32).runtime
    'docker'
    """
    parts = [p for p in cgroup_path.strip().split("/") if p]
    in_kubepods = False
    for i, part in enumerate(parts):
        if part.startswith("kubepods"):
            in_kubepods = True
        m = _POD_COMPONENT.match(part) if in_kubepods else None
        if m is None:
            continue
        uid = m.group(2).replace("_", "-") if m.group(3) else m.group(2)
        qos = m.group(1) or _QOS_COMPONENTS.get(parts[i - 1] if i else "")
        child = _container_component(parts[i + 1]) if i + 1 < len(parts) else None
        if child is None:
            return ContainerRef(None, None, uid, qos)
        return ContainerRef(child[0], child[1], uid, qos)
    for i in range(len(parts) - 1, -1, -1):
        found = _container_component(parts[i])
        if found is None:
            continue
        runtime, cid = found
        if runtime is None and i > 0 and parts[i - 1] == "docker":
            runtime = "docker"
        return ContainerRef(runtime, cid, None, None)
    return None


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountinfo(root: Optional[str] = None) -> List[Tuple[str, str, List[str]]]:
    """(mount point, fstype, super options) of each mount in the host's mount table (see mount_table)."""
    path = mount_table(root)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append((_unescape_mountinfo(fields[4]), tail[0], tail[2].split(",")))
    return mounts


def memory_cgroup_mount(root: Optional[str] = None) -> Optional[str]:
    """Mount point of the cgroup v1 memory controller (prefixed with ``root``), or None."""
    for mount_point, fstype, options in mountinfo(root):
        if fstype == "cgroup" and "memory" in options:
            return host_path(mount_point, root)
    return None


def cgroup_layout(root: Optional[str] = None) -> str:
    """``v1``, ``v2`` or ``hybrid`` (v1 hierarchies and a cgroup2 mount); ``none`` if neither."""
    fstypes = {fstype for _, fstype, _ in mountinfo(root)}
    v1, v2 = "cgroup" in fstypes, "cgroup2" in fstypes
    if v1 and v2:
        return "hybrid"
    if v1:
        return "v1"
    return "v2" if v2 else "none"


def memory_cgroup_of_pid(pid: int, root: Optional[str] = None) -> Optional[str]:
    """A task's memory cgroup path from /proc/PID/cgroup: the v1 ``memory`` line, else ``0::``."""
    path = host_path("/proc/%d/cgroup" % pid, root)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, cgroup = parts
        if "memory" in controllers.split(","):
            return cgroup
        if hierarchy == "0" and controllers == "":
            unified = cgroup
    return unified


def cgroup2_mount(root: Optional[str] = None) -> Optional[str]:
    """Where the cgroup2 (unified) hierarchy is mounted, or None."""
    for mountpoint, fstype, _ in mountinfo(root):
        if fstype == "cgroup2":
            return host_path(mountpoint, root)
    return None


def cgroup_dir_under(mount: str, wanted: Callable[[str], bool], limit: int = 100000) -> Optional[str]:
    """The first cgroup directory below MOUNT (a bounded walk) that WANTED accepts, as a cgroup path
    ("/" for MOUNT itself)."""
    for seen, (base, _, _) in enumerate(os.walk(mount)):
        if seen >= limit:
            return None
        try:
            if wanted(base):
                rel = os.path.relpath(base, mount)
                return "/" if rel == "." else "/" + rel
        except OSError:
            continue
    return None


def kernfs_id_is(cgroup_id: int) -> Callable[[str], bool]:
    """Whether a directory is the cgroup of kernfs id CGROUP_ID: its inode number is the id (5.5+) or
    the id's low half (4.12-5.4, a generation in the high half)."""
    return lambda path: os.stat(path).st_ino in (cgroup_id, cgroup_id & 0xffffffff)


def named(name: str) -> Callable[[str], bool]:
    """Whether a directory is called NAME (a 3.10 cgroup's name)."""
    return lambda path: os.path.basename(path) == name


def cgroup2_path_of_id(cgroup_id: int, root: Optional[str] = None, limit: int = 100000) -> Optional[str]:
    """The cgroup2 path whose id is CGROUP_ID (what bpf_get_current_cgroup_id returns).

    A cgroup2 directory's inode number is its kernfs id on 64-bit kernels, so a bounded walk finds it;
    used when the task has exited before /proc/PID/cgroup could be read.
    """
    mount = cgroup2_mount(root)
    if mount is None or cgroup_id <= 0:
        return None
    return cgroup_dir_under(mount, kernfs_id_is(cgroup_id), limit)
