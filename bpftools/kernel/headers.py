"""This kernel's own headers: whether bcc can compile against them, and whether struct reads are safe.

They are read where bcc reads them, ``/lib/modules/$(uname -r)/{build,source}``, never under the host root
(kernel.hostroot says why): in a container the host's ``/lib/modules`` and ``/usr/src`` are mounted at
the same paths.
"""
import os
import re
from typing import Optional

from ..errors import MissingKernelFeature
from .distro import headers_hint
from .hostroot import host_path, host_root


def headers_release(release: str) -> Optional[str]:
    """The kernel release the headers at /lib/modules/RELEASE/build were made for (None: unknown);
    Debian links another kernel's headers there where a kernel has none of its own (scripts/setup)."""
    build = "/lib/modules/%s/build" % release
    for rel in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        try:
            with open(os.path.join(build, rel)) as f:
                found = re.search(r'"?([^"\s]+)"?\s*$', f.read().strip())
        except OSError:
            continue
        return found.group(1) if found else None
    return None


def headers_match_running_kernel() -> bool:
    """True when /lib/modules/$(uname -r)/build holds this kernel's own headers (struct reads are safe)."""
    release = os.uname().release
    return headers_release(release) == release


def header_text(name: str) -> Optional[str]:
    """The text of include/NAME in this kernel's headers: build, else source (Debian splits the
    headers: include/linux and include/uapi are in the -common "source" tree)."""
    for tree in ("build", "source"):
        try:
            with open("/lib/modules/%s/%s/include/%s" % (os.uname().release, tree, name)) as f:
                return f.read()
        except OSError:
            continue
    return None


def slub_def_usable() -> bool:
    """True when this kernel's linux/slub_def.h compiles on its own.

    Since 5.17 (struct slab, commit d122019bf061) its inline helpers use ``struct slab``, defined only
    in mm/slab.h, so including it fails; older headers (3.10, 5.10) are self-contained.
    """
    text = header_text("linux/slub_def.h")
    return text is not None and "struct slab *" not in text


def require_headers() -> None:
    """bcc compiles against /lib/modules/$(uname -r)/build, or the kernel's built-in kheaders."""
    release = os.uname().release
    build = "/lib/modules/%s/build" % release
    if os.path.isdir(build + "/include") or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    if host_root() != "/" and os.path.lexists(host_path(build)):
        raise MissingKernelFeature("kernel headers for %s in this container" % release,
                                   fallback="the host has them: mount its /lib/modules and /usr/src at the same "
                                            "paths here (read-only)")
    raise MissingKernelFeature("kernel headers for %s" % release, fallback=headers_hint(release))
