"""Pods and containers by name: what kubelet's log directories on this node say about a ContainerRef.

A cgroup path gives a pod's UID and a container's id (``cgroups.container_of``); kubelet names both
in the files it keeps for logs (under the host root, ``kernel.hostroot``):

- ``/var/log/pods/<namespace>_<pod>_<uid>/`` (kubelet 1.14+): the pod UID's namespace and name,
  and ``<container>/`` below it, one directory per container name;
- ``/var/log/containers/<pod>_<namespace>_<container>-<container id>.log``: a link into the pod's
  directory, naming the container of an id (its target names the pod directory, so its UID);
- under dockershim, ``/var/log/pods/<...>/<container>/<restart>.log`` is itself a link to
  ``/var/lib/docker/containers/<id>/<id>-json.log``: another id's name.

A container whose id no link names stays unnamed even in a pod of one container: the pod's sandbox
(pause) has a cgroup of its own and no log directory, so a guess could name the wrong one. Names are
DNS labels and subdomains, which hold no ``_``: the separators are not ambiguous.

Reads are cached and repeated when an unknown UID or id is asked for, at most every
``REFRESH_SECONDS``, and bounded (``MAX_ENTRIES`` pods and containers).
"""
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from dataclasses import replace

from .cgroups import ContainerRef, container_of
from .hostroot import host_path

PODS_DIR = "/var/log/pods"
CONTAINERS_DIR = "/var/log/containers"
REFRESH_SECONDS = 5.0
MAX_ENTRIES = 10000

_POD_DIR = re.compile(r"^([a-z0-9][a-z0-9-]*)_([a-z0-9][a-z0-9.-]*)_([0-9a-f][0-9a-f-]*)$")
_CONTAINER_LOG = re.compile(r"^([a-z0-9][a-z0-9.-]*)_([a-z0-9][a-z0-9-]*)_([a-z0-9][a-z0-9-]*)-([0-9a-f]{64})\.log$")
_ID_IN_PATH = re.compile(r"/([0-9a-f]{64})(?:/|-json\.log$)")


class PodNames(object):
    """UID -> (namespace, pod) and container id -> container name, as kubelet's log directories say."""

    def __init__(self, root: Optional[str] = None, clock: Callable[[], float] = time.monotonic) -> None:
        """ROOT: a tree standing for / (default: the host root)."""
        self.root = root
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = None         # type: Optional[float]
        self.pods = {}               # type: Dict[str, Tuple[str, str]]     uid -> (namespace, pod)
        self.containers = {}         # type: Dict[str, Tuple[str, str]]     container id -> (uid, name)

    def name(self, ref: Optional[ContainerRef]) -> Optional[ContainerRef]:
        """REF with the namespace, pod and container names the node knows (REF itself when none)."""
        if ref is None or (ref.pod_uid is None and ref.container_id is None):
            return ref
        with self._lock:
            if self._unknown(ref) and self._may_refresh():
                self._read()
            uid = ref.pod_uid
            container = None
            if ref.container_id in self.containers:
                owner, container = self.containers[ref.container_id]
                uid = uid or owner
            namespace, pod = self.pods.get(uid or "", (None, None))
        if namespace is None and container is None:
            return ref
        return replace(ref, pod_uid=uid, namespace=namespace, pod=pod, container=container)

    def _unknown(self, ref: ContainerRef) -> bool:
        return ((ref.pod_uid is not None and ref.pod_uid not in self.pods)
                or (ref.container_id is not None and ref.container_id not in self.containers))

    def _may_refresh(self) -> bool:
        now = self._clock()
        return self._read_at is None or now - self._read_at >= REFRESH_SECONDS

    def _read(self) -> None:
        """Read both directories again (what vanished is forgotten)."""
        self._read_at = self._clock()
        pods = {}          # type: Dict[str, Tuple[str, str]]
        containers = {}    # type: Dict[str, Tuple[str, str]]
        pods_dir = host_path(PODS_DIR, self.root)
        for entry in _listdir(pods_dir)[:MAX_ENTRIES]:
            m = _POD_DIR.match(entry)
            if not m:
                continue
            namespace, pod, uid = m.groups()
            pods[uid] = (namespace, pod)
            for container in _listdir(os.path.join(pods_dir, entry)):
                for cid in _linked_ids(os.path.join(pods_dir, entry, container)):
                    containers[cid] = (uid, container)
        links_dir = host_path(CONTAINERS_DIR, self.root)
        for entry in _listdir(links_dir)[:MAX_ENTRIES]:
            m = _CONTAINER_LOG.match(entry)
            if not m:
                continue
            pod, namespace, container, cid = m.groups()
            uid = _uid_of_link(os.path.join(links_dir, entry), namespace, pod)
            if uid is not None:
                containers[cid] = (uid, container)
                pods.setdefault(uid, (namespace, pod))
        self.pods, self.containers = pods, containers


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _linked_ids(container_dir: str) -> List[str]:
    """Container ids named by the links in a pod's container directory (dockershim's ``N.log``)."""
    ids = []
    for entry in _listdir(container_dir):
        try:
            m = _ID_IN_PATH.search(os.readlink(os.path.join(container_dir, entry)))
        except OSError:
            continue
        if m:
            ids.append(m.group(1))
    return ids


def _uid_of_link(path: str, namespace: str, pod: str) -> Optional[str]:
    """The pod UID in the target of a /var/log/containers link (``/var/log/pods/NS_POD_UID/...``), read
    from the link's text, never followed (the target is a host path)."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    for part in target.split("/"):
        m = _POD_DIR.match(part)
        if m and m.group(1) == namespace and m.group(2) == pod:
            return m.group(3)
    return None


class _Shared(object):
    names = None   # type: Optional[PodNames]


def pod_names() -> PodNames:
    """This node's PodNames, one per process (made at first use: after --host-root was read)."""
    if _Shared.names is None:
        _Shared.names = PodNames()
    return _Shared.names


def container_named(cgroup_path: Optional[str]) -> Optional[ContainerRef]:
    """``container_of(CGROUP_PATH)`` with the names this node's kubelet gives them (a live node's cgroups
    only: a saved log's cgroups are another node's)."""
    return pod_names().name(container_of(cgroup_path)) if cgroup_path else None
