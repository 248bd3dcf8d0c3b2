"""This kernel's own headers: whether bcc can compile against them, and whether struct reads are safe."""
import os
import re
from typing import Optional

from ..errors import MissingKernelFeature
from .distro import headers_hint


def headers_match_running_kernel() -> bool:
    """True when /lib/modules/$(uname -r)/build holds this kernel's own headers (struct reads are safe)."""
    release = os.uname().release
    build = "/lib/modules/%s/build" % release
    for rel in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        try:
            with open(os.path.join(build, rel)) as f:
                found = re.search(r'"?([^"\s]+)"?\s*$', f.read().strip())
        except OSError:
            continue
        return bool(found) and found.group(1) == release
    return False


def slub_def_usable() -> bool:
    """True when this kernel's linux/slub_def.h compiles on its own.

    Since 5.17 (struct slab, commit d122019bf061) its inline helpers use ``struct slab``, defined only
    in mm/slab.h, so including it fails; older headers (3.10, 5.10) are self-contained.
    """
    for tree in ("build", "source"):   # Debian splits the headers: include/linux is in the -common "source"
        try:
            with open("/lib/modules/%s/%s/include/linux/slub_def.h" % (os.uname().release, tree)) as f:
                return "struct slab *" not in f.read()
        except OSError:
            continue
    return False


def uapi_header_text(name: str) -> Optional[str]:
    """The text of include/uapi/NAME in this kernel's headers (build, else Debian's -common source)."""
    for tree in ("build", "source"):
        try:
            with open("/lib/modules/%s/%s/include/uapi/%s" % (os.uname().release, tree, name)) as f:
                return f.read()
        except OSError:
            continue
    return None


def require_headers() -> None:
    """bcc compiles against /lib/modules/$(uname -r)/build, or the kernel's built-in kheaders."""
    release = os.uname().release
    if os.path.isdir("/lib/modules/%s/build/include" % release) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    raise MissingKernelFeature("kernel headers for %s" % release, fallback=headers_hint(release))
