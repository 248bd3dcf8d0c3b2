"""The output layer: every file bpftools writes goes through here, safe to run as root in /tmp.

Rules (a local user may have planted anything at the path):

- A symbolic link is never written through, nor is one the directory written into. A link further up
  the path is followed only where it sits in a directory that only root or you can change
  (``/var/run -> /run``), or with ``--force``.
- FIFOs, sockets, devices and directories at the file's name are refused (they are never opened).
- A file is written to a temp file in the same directory (``O_EXCL``, 0600) and renamed over its
  name, so a reader never sees half a file; a failure leaves no temp file. A stream that is appended
  live (a recording) is created with ``O_EXCL|O_NOFOLLOW``, 0600, after unlinking a regular file of
  that name: an existing file is replaced, never written into.
- A missing directory is created 0700, one component at a time, relative to its parent's descriptor.
- A directory, or a file to replace, owned by another user is refused unless ``--force``
  (:func:`set_force`). "You" are root, the effective user and, under sudo, the user who ran sudo.

Every refusal and failure is one :class:`BadInput` naming the path::

    >>> with Directory("out", create=True) as out:
    ...     out.write_text("report.html", html)
    'out/report.html'
"""
import errno
import os
import secrets
import stat
from typing import IO, Any, Optional, Set, Tuple

from .errors import BadInput

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REFUSED = ((stat.S_ISLNK, "a symbolic link: not writing through it"), (stat.S_ISFIFO, "a FIFO: not writing to it"),
            (stat.S_ISSOCK, "a socket: not writing to it"), (stat.S_ISCHR, "a device: not writing to it"),
            (stat.S_ISBLK, "a device: not writing to it"), (stat.S_ISDIR, "a directory: not writing over it"))
_force = False


def set_force(force: bool) -> None:
    """``bpftools --force``: write into directories, and replace files, owned by another user."""
    global _force
    _force = force


def _your_uids() -> Set[int]:
    uids = {0, os.geteuid()}
    sudo_uid = os.environ.get("SUDO_UID", "") if os.geteuid() == 0 else ""
    if sudo_uid.isdigit():
        uids.add(int(sudo_uid))
    return uids


def _yours(st: os.stat_result) -> bool:
    return st.st_uid in _your_uids()


def _not_yours(path: str, st: os.stat_result, doing: str) -> BadInput:
    return BadInput("%s is owned by uid %d (not root or you): not %s without --force" % (path, st.st_uid, doing))


def _os_error(what: str, path: str, err: OSError) -> BadInput:
    return BadInput("cannot write %s%s: %s" % (what + " " if what else "", path, err.strerror))


class Directory(object):
    """A directory opened without following a link at its name; files are written relative to it."""

    def __init__(self, path: str, create: bool = False, what: str = "") -> None:
        """Open PATH ('' is the current directory; created 0700 with its missing parents if CREATE); WHAT
        names what is written, in errors."""
        self.path = path
        self.what = what
        try:
            self.fd = self._walk(create)
        except OSError as err:
            raise _os_error(what, "into " + (path or "."), err)
        st = os.fstat(self.fd)
        if not (_yours(st) or _force):
            self.close()
            raise _not_yours(path, st, "writing into it")

    def _walk(self, create: bool) -> int:
        parts = [p for p in self.path.split("/") if p not in ("", ".")]
        top = "/" if self.path.startswith("/") else ""
        fd = os.open(top or ".", _DIR_FLAGS)
        for i, name in enumerate(parts):
            try:
                child = self._step(fd, name, top + "/".join(parts[:i + 1]), i == len(parts) - 1, create)
            finally:
                os.close(fd)
            fd = child
        return fd

    @staticmethod
    def _step(parent: int, name: str, shown: str, last: bool, create: bool) -> int:
        """The directory NAME in PARENT: made if missing (and CREATE), a link followed only above the last level."""
        try:
            return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as err:
            if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if not stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise BadInput("%s is not a directory: not writing into it" % shown)
            holder = os.fstat(parent)
            if last or not (_force or (_yours(holder) and not holder.st_mode & 0o022)):
                raise BadInput("%s is a symbolic link: not writing through it" % shown)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass                # made meanwhile: opened below without following a link, like any other
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _check(self, name: str) -> Optional[os.stat_result]:
        """What is at NAME now (None: nothing); BadInput unless it is a regular file we may replace."""
        if name in ("", ".", "..") or "/" in name:
            raise BadInput("%s is not a file name: not writing to it" % self.join(name))
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise _os_error(self.what, self.join(name), err)
        for is_kind, refusal in _REFUSED:
            if is_kind(st.st_mode):
                raise BadInput("%s is %s" % (self.join(name), refusal))
        if not (_yours(st) or _force):
            raise _not_yours(self.join(name), st, "replacing it")
        return st

    def write_text(self, name: str, text: str, mode: int = 0o600) -> str:
        """Write TEXT (UTF-8, backslash escapes for what cannot be encoded) as NAME, atomically; its path.
        MODE is for files others must read (a node_exporter textfile); the default keeps them private."""
        data = text.encode("utf-8", "backslashreplace")
        self._check(name)
        tmp, fd = self._new_temp(name)
        try:
            with os.fdopen(fd, "wb") as f:
                if mode != 0o600:
                    os.fchmod(f.fileno(), mode)
                f.write(data)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException as err:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise _os_error(self.what, self.join(name), err)
            raise
        return self.join(name)

    def _new_temp(self, name: str) -> Tuple[str, int]:
        """(name, descriptor) of a new 0600 file in the directory, to be renamed to NAME."""
        while True:
            tmp = ".bpftools-%s.tmp" % secrets.token_hex(8)
            try:
                return tmp, os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=self.fd)
            except FileExistsError:
                continue        # 64 random bits taken: try others
            except OSError as err:
                raise _os_error(self.what, self.join(name), err)

    def open_stream(self, name: str) -> IO[str]:
        """NAME as a new 0600 file open for writing text (UTF-8), to append to live; a regular file of that
        name is unlinked first (its inode, maybe a planted hard link, is never written)."""
        try:
            if self._check(name) is not None:
                os.unlink(name, dir_fd=self.fd)
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=self.fd)
        except FileExistsError:
            raise BadInput("%s appeared while it was being replaced: not writing to it" % self.join(name))
        except OSError as err:
            raise _os_error(self.what, self.join(name), err)
        return os.fdopen(fd, "w", encoding="utf-8")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Directory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_text(path: str, text: str, create_dirs: bool = False, what: str = "") -> str:
    """Write TEXT to the file PATH by the rules above (CREATE_DIRS: make its missing directories); PATH."""
    head, name = os.path.split(path)
    with Directory(head, create_dirs, what) as directory:
        directory.write_text(name, text)
    return path


def open_stream(path: str, what: str = "") -> IO[str]:
    """The file PATH, new (0600), open for appending text live: see :meth:`Directory.open_stream`."""
    head, name = os.path.split(path)
    with Directory(head, what=what) as directory:
        return directory.open_stream(name)
