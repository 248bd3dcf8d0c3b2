"""Which network devices ``bpftools refleak`` watches, and how it finds the ones that already exist.

A :class:`Selector` says which devices: name patterns (``--dev``, shell globs), network namespaces
(``--netns``: an iproute2 name under /var/run/netns or a path such as /proc/PID/ns/net), and whether
devices created after the start count too (always; with no pattern and no namespace they are the
only ones).

Existing devices are found by name: the program cannot walk the kernel's device lists, so for each
wanted name this process enters the device's namespace (setns) and asks for its flags
(``SIOCGIFFLAGS``); the kernel answers through ``dev_get_flags(dev)``, where a kprobe of ours reads
the device's address.
"""
import fcntl
import fnmatch
import os
import socket
import struct
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from dataclasses import dataclass, field

from ..errors import BadInput
from ..kernel.hostroot import host_path
from ..kernel.netns import InNetns

SIOCGIFFLAGS = 0x8913
NETNS_DIR = "/var/run/netns"      # iproute2's NETNS_RUN_DIR
IFNAMSIZ = 16


@dataclass
class Selector:
    """The devices to watch: names matching PATTERNS in namespaces NETNS (inode -> label)."""

    patterns: List[str] = field(default_factory=list)
    netns: Dict[int, str] = field(default_factory=dict)

    @property
    def everything_new(self) -> bool:
        """No pattern and no namespace: every device created after the start."""
        return not self.patterns and not self.netns

    def matches(self, name: str, netns: Optional[int]) -> bool:
        """True for a device NAME in namespace NETNS (inode; None when unknown) that we watch."""
        if self.patterns and not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
            return False
        if self.netns and netns not in self.netns:
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.patterns:
            parts.append("devices %s" % ", ".join(self.patterns))
        if self.netns:
            parts.append("in %s" % ", ".join(self.netns[i] for i in sorted(self.netns)))
        return " ".join(parts) if parts else "every device created from now on"


def validate_pattern(pattern: str) -> str:
    """A --dev value: a device name or glob of at most 15 characters, no '/' or whitespace."""
    if not pattern or len(pattern) >= IFNAMSIZ or "/" in pattern or any(c.isspace() for c in pattern):
        raise BadInput("--dev %r: a device name or pattern is 1-15 characters without '/' or spaces" % pattern)
    return pattern


def netns_path(value: str) -> str:
    """A --netns value as a path: an iproute2 name (/var/run/netns/NAME) or a path to a netns file."""
    if "/" in value:
        path = value
    else:
        path = os.path.join(host_path(NETNS_DIR), value)
    if not os.path.exists(path):
        raise BadInput("--netns %r: no such network namespace (%s does not exist)" % (value, path))
    return path


def inode(path: str) -> int:
    return os.stat(path).st_ino


def make_selector(patterns: List[str], netns: List[str]) -> Selector:
    """The Selector of the command line (BadInput for a bad pattern or an unknown namespace)."""
    spaces = {}  # type: Dict[int, str]
    for value in netns:
        spaces[inode(netns_path(value))] = value
    return Selector([validate_pattern(p) for p in patterns], spaces)


def namespaces(selector: Selector) -> List[Tuple[int, str]]:
    """(inode, path) of the namespaces to search for existing devices: the chosen ones, or ours, the
    iproute2 named ones and those of every process, each once."""
    if selector.netns:
        found = []
        for ino, label in sorted(selector.netns.items()):
            found.append((ino, netns_path(label)))
        return found
    seen = {}  # type: Dict[int, str]
    candidates = ["/proc/self/ns/net"]
    names, proc = host_path(NETNS_DIR), host_path("/proc")
    try:
        candidates += [os.path.join(names, n) for n in sorted(os.listdir(names))]
    except OSError:
        pass
    candidates += [os.path.join(proc, p, "ns/net") for p in sorted(os.listdir(proc), key=lambda s: (len(s), s))
                   if p.isdigit()]
    for path in candidates:
        try:
            ino = inode(path)
        except OSError:
            continue
        seen.setdefault(ino, path)
    return sorted(seen.items())


def device_names(path: str) -> List[str]:
    """Names of the devices in the namespace at PATH ([] when it is gone)."""
    try:
        with InNetns(path):
            return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def ask_flags(name: str) -> bool:
    """SIOCGIFFLAGS on NAME in the current namespace (the kernel calls dev_get_flags); False if gone."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", name.encode(), 0))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def find_existing(selector: Selector, lookup: Callable[[str], bool] = ask_flags) -> Iterator[Tuple[int, str]]:
    """Ask the kernel about each existing device the selector wants, namespace by namespace; yields
    (netns inode, name) of each device asked about. Nothing when the selector wants only new devices."""
    if selector.everything_new:
        return
    for ino, path in namespaces(selector):
        names = [n for n in device_names(path) if selector.matches(n, ino)]
        if not names:
            continue
        try:
            with InNetns(path):
                asked = [n for n in names if lookup(n)]
        except OSError:
            continue
        for name in asked:
            yield ino, name
