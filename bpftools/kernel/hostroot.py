"""The host's files seen from a container: one root prefix for host paths (``bpftools --host-root /host``,
or ``BPFTOOLS_HOST_ROOT``), so that the image runs with the node's ``/`` mounted at ``/host``.

What takes the prefix, and why (a privileged pod with ``hostPID``, the node's ``/`` at ``/host``):

- ``/proc`` (but ``/proc/self``, which is bpftools itself): BPF reports the pids of the initial pid
  namespace, which the host's procfs names (a pod without ``hostPID`` has a procfs of its own); the
  host's mount table is ``/proc/1/mountinfo`` (a task's mountinfo shows its own mount namespace).
- cgroupfs: found in the host's mount table, read under the prefix; a container's ``/sys/fs/cgroup``
  may be its own cgroup namespace's view (on cgroup v2, its own subtree only). A privileged container
  keeps the host's cgroup namespace (containerd and CRI-O, per the cgroup v2 KEP), so the paths in
  ``/proc/PID/cgroup`` are the host's.
- ``/dev/kmsg``: the ring buffer is the machine's, but a container's ``/dev`` has it only when
  privileged; the host's ``/dev`` always does.
- ``/boot`` (the kernel's config), ``/etc/os-release`` (the node's distribution, for install hints),
  ``/run/netns`` (iproute2's names), ``/var/log/pods`` and ``/var/log/containers`` (kubelet's names of
  pods and containers), and netdevwait's ``/sys/class/net`` (the host network namespace's devices: a
  pod's sysfs shows its own).

What does not:

- ``/sys`` (BTF, livepatch, kheaders, CPU lists), tracefs and debugfs: a privileged container's sysfs
  is a mount of the same kernel objects, and bcc attaches through ``/sys/kernel/{debug/,}tracing`` at
  those paths, so bpftools looks where bcc looks.
- ``/lib/modules`` and ``/usr/src``: bcc compiles against ``/lib/modules/$(uname -r)/build`` and
  ``source`` as the container sees them (``BCC_KERNEL_SOURCE`` names one tree and loses Debian's
  split ``-common`` headers), and ``build`` is an absolute link into ``/usr/src``: the image mounts
  the host's ``/lib/modules`` and ``/usr/src`` at the same paths, read-only. bpftools reads them there
  too, to tell what bcc will compile against; the prefix only says, when they are missing, that the
  host has them.
"""
import os
from typing import Optional

ENV = "BPFTOOLS_HOST_ROOT"


class _Settings(object):
    root = "/"


def set_host_root(path: Optional[str]) -> None:
    """Read host files under PATH from now on (None or "/": the filesystem as it is)."""
    _Settings.root = os.path.abspath(path) if path else "/"


def host_root() -> str:
    """The host root prefix ("/" when there is none)."""
    return _Settings.root


def host_path(path: str, root: Optional[str] = None) -> str:
    """PATH, absolute as the host names it, under ROOT (default: the host root).

    >>> host_path("/proc/1/mountinfo", "/host")
    '/host/proc/1/mountinfo'
    """
    root = _Settings.root if root is None else root
    return path if root in ("", "/") else os.path.join(root, path.lstrip("/"))


def mount_table(root: Optional[str] = None) -> str:
    """The mountinfo file of the host's mount namespace: ours at "/", else init's (pid 1) under ROOT."""
    root = _Settings.root if root is None else root
    return host_path("/proc/self/mountinfo" if root in ("", "/") else "/proc/1/mountinfo", root)
