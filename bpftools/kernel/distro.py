"""The node's distribution (os-release), and how it installs what live runs need: bcc, kernel headers."""
import re
from typing import Dict, Optional

from .hostroot import host_path

BCC_FLOOR = "0.9.0"      # the oldest bcc the live tools support (tests/test_bcc_floor.py says why)
BCC_HINT = {
    "debian": "apt-get install python3-bpfcc (a venv needs --system-site-packages)",
    "el7": ("scripts/setup, or: yum install bcc python-bcc (%s or newer: CentOS/RHEL 7.8+ has 0.10.0; 7.6 "
            "ships 0.6.0), then make its Python 2 bindings importable from Python 3 (README, "
            "'CentOS/RHEL 7')" % BCC_FLOOR),
    "el": "dnf install python3-bcc",
    "unknown": "your distribution's bcc bindings for Python 3 (python3-bpfcc, python3-bcc), bcc %s or newer"
               % BCC_FLOOR,
}
HEADERS_HINT = {
    "debian": "apt-get install linux-headers-%s",
    "el7": "yum install kernel-devel-%s",
    "el": "dnf install kernel-devel-%s",
    "unknown": "your distribution's headers package for %s, or modprobe kheaders",
}


def os_release(root: Optional[str] = None) -> Dict[str, str]:
    """KEY=value pairs of /etc/os-release (or /usr/lib/os-release) under ROOT (default: the host root),
    quotes removed; {} when absent."""
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(host_path(name, root), encoding="utf-8", errors="replace") as f:
                return dict((k, v.strip().strip('"')) for k, v in
                            (line.rstrip("\n").split("=", 1) for line in f if "=" in line))
        except OSError:
            continue
    return {}


def distro_name(root: Optional[str] = None) -> str:
    """PRETTY_NAME from os-release, else redhat-release, else 'unknown'."""
    name = os_release(root).get("PRETTY_NAME")
    if name:
        return name
    try:
        with open(host_path("/etc/redhat-release", root)) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def family(root: Optional[str] = None) -> str:
    """``debian`` (Debian, Ubuntu), ``el7`` (RHEL/CentOS 7), ``el`` (RHEL 8+, Fedora and kin) or ``unknown``."""
    info = os_release(root)
    ids = set([info.get("ID", "")] + info.get("ID_LIKE", "").split())
    if ids & {"debian", "ubuntu"}:
        return "debian"
    if ids & {"rhel", "centos", "fedora"}:
        major = re.match(r"(\d+)", info.get("VERSION_ID", ""))
        return "el7" if major and major.group(1) == "7" and "fedora" not in info.get("ID", "") else "el"
    return "unknown"


def bcc_hint(root: str = "/") -> str:
    """How to install bcc where bpftools runs (in an image: the image's distribution, not the host's)."""
    return BCC_HINT[family(root)]


def headers_hint(release: str, root: Optional[str] = None) -> str:
    """How the node (the host root) installs the headers of RELEASE."""
    return HEADERS_HINT[family(root)] % release
