"""Entering a network namespace for a block of code (setns on this thread), and coming back."""
import ctypes
import os
from typing import Optional

CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    """Move this thread into the network namespace open as FD (OSError with the errno on failure)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class InNetns(object):
    """``with InNetns(path):`` runs the block in the namespace at PATH, then returns to the one this
    thread was in. HOME: an fd of the namespace to return to that the caller keeps open (a worker
    switching often), else this thread's own is opened and closed here."""

    def __init__(self, path: str, home: Optional[int] = None) -> None:
        self.path = path
        self.given_home = home
        self.home = -1 if home is None else home

    def __enter__(self) -> "InNetns":
        if self.given_home is None:
            self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                setns(fd)
            finally:
                os.close(fd)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            setns(self.home)
        finally:
            self._release()

    def _release(self) -> None:
        if self.given_home is None:
            os.close(self.home)
