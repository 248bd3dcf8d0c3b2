"""Evidence bundles on disk: each written under a temporary name then renamed, rotated under a size cap.

A bundle is a directory ``<UTC time>-<incident>`` (``20261207T020636.123Z-kmem_io_jitter``) in the bundle directory. It is written as
``.partial-<name>`` and renamed when complete, so a reader (or a copy off the node) never sees half a
bundle; a run killed while writing leaves a ``.partial-*`` directory that the next start removes.
After each bundle the oldest ones are removed until the rest fit in ``max_bytes`` and ``max_bundles``
(the newest is always kept).
"""
import os
import shutil
import stat
import time
from typing import List, Optional, Tuple

from ..errors import BadInput
from ..outfiles import Directory

PARTIAL = ".partial-"


def tree_bytes(path: str) -> int:
    """Bytes in the regular files under PATH (links are not followed)."""
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(base, name))
            except OSError:
                continue
            total += st.st_size
    return total


class BundleDir(object):
    """The directory bundles live in (created 0700 if missing)."""

    def __init__(self, path: str, max_bytes: int, max_bundles: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_bundles = max_bundles
        Directory(path, create=True, what="bundle directory").close()
        self.removed = 0          # bundles removed by rotation

    def clean_leftovers(self) -> List[str]:
        """Remove the ``.partial-*`` directories a killed run left; returns their names."""
        gone = []
        for name in sorted(os.listdir(self.path)):
            if name.startswith(PARTIAL):
                shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
                gone.append(name)
        return gone

    def bundles(self) -> List[str]:
        """Names of the complete bundles, oldest first (by when their last file was written)."""
        found = []
        for name in os.listdir(self.path):
            try:
                st = os.lstat(os.path.join(self.path, name))
            except OSError:
                continue
            if not name.startswith(".") and stat.S_ISDIR(st.st_mode):
                found.append((st.st_mtime_ns, name))
        return [name for _, name in sorted(found)]

    def new_name(self, incident: str, wall: Optional[float] = None) -> str:
        """A name no bundle has: the UTC time (ms), the incident, and a number if that is taken."""
        wall = time.time() if wall is None else wall
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + ".%03dZ" % (int(wall * 1000) % 1000)
        taken = set(os.listdir(self.path))
        name, n = "%s-%s" % (stamp, incident), 1
        while name in taken or PARTIAL + name in taken:
            n += 1
            name = "%s-%s-%d" % (stamp, incident, n)
        return name

    def start(self, name: str) -> Tuple[str, Directory]:
        """(path, opened Directory) of the temporary directory bundle NAME is written into."""
        partial = os.path.join(self.path, PARTIAL + name)
        return partial, Directory(partial, create=True, what="bundle")

    def finish(self, name: str) -> str:
        """Rename the complete bundle NAME into place, then rotate; its final path."""
        with Directory(self.path, what="bundle directory") as top:
            try:
                os.rename(PARTIAL + name, name, src_dir_fd=top.fd, dst_dir_fd=top.fd)
            except OSError as err:
                raise BadInput("cannot rename bundle %s: %s" % (os.path.join(self.path, name), err.strerror))
        self.rotate(keep=name)
        return os.path.join(self.path, name)

    def rotate(self, keep: Optional[str] = None) -> None:
        """Remove the oldest bundles until the rest fit the caps (KEEP, the newest, stays)."""
        names = self.bundles()
        sizes = dict((n, tree_bytes(os.path.join(self.path, n))) for n in names)
        total = sum(sizes.values())
        for name in names:
            if name == keep or (total <= self.max_bytes and len(names) <= self.max_bundles):
                continue
            shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
            total -= sizes[name]
            names = [n for n in names if n != name]
            self.removed += 1

    def used_bytes(self) -> int:
        return sum(tree_bytes(os.path.join(self.path, n)) for n in self.bundles())
