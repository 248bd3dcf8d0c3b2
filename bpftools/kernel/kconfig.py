"""Kernel build configurations: the running kernel's (/boot/config-RELEASE) or any config file's text."""
import re
from typing import Dict, Optional

from .hostroot import host_path


def parse_config(text: str) -> Dict[str, str]:
    """CONFIG_* values of a kernel config's TEXT ("n" for "is not set")."""
    out = {}  # type: Dict[str, str]
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line) or re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            out[m.group(1)] = m.group(2).strip('"') if m.lastindex == 2 else "n"
    return out


def kernel_config(release: str) -> Optional[Dict[str, str]]:
    """CONFIG_* of kernel RELEASE from /boot/config-RELEASE (under the host root), or None."""
    try:
        with open(host_path("/boot/config-%s" % release)) as f:
            return parse_config(f.read())
    except OSError:
        return None
