"""The running kernel's build configuration (/boot/config-RELEASE)."""
import re
from typing import Dict, Optional


def kernel_config(release: str) -> Optional[Dict[str, str]]:
    """CONFIG_* of the running kernel from /boot/config-RELEASE ("n" for "is not set"), or None."""
    try:
        with open("/boot/config-%s" % release) as f:
            text = f.read()
    except OSError:
        return None
    out = {}  # type: Dict[str, str]
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line) or re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            out[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
    return out
