"""Where kernel log lines come from: the live ring buffer (/dev/kmsg, else `dmesg`), a file, or stdin.

A saved log is read line by line as it is analysed, never whole: any size fits in bounded memory.
A line longer than MAX_LINE bytes (the kernel writes at most 8 KiB per record) keeps its first
MAX_LINE bytes, where the stamp and the message are; the rest is skipped and counted in ``cut``.
"""
import errno
import io
import os
import subprocess
import sys
from typing import BinaryIO, Iterator, List, Optional

from ..errors import BadInput, PrivilegeError
from .hostroot import host_path

KMSG = "/dev/kmsg"
MAX_LINE = 16 * 1024
_SKIP = 64 * 1024   # bytes read at a time while skipping the rest of a long line


def available(fd: int) -> Iterator[bytes]:
    """What non-blocking FD has now, one read at a time (/dev/kmsg gives one record per read); records
    overwritten before they were read (EPIPE) are skipped."""
    while True:
        try:
            data = os.read(fd, 8192)
        except OSError as err:
            if err.errno == errno.EAGAIN:
                return
            if err.errno == errno.EPIPE:
                continue
            raise
        if not data:
            return
        yield data


def kmsg_device() -> str:
    """/dev/kmsg under the host root (kernel.hostroot)."""
    return host_path(KMSG)


def kmsg_bytes(path: Optional[str] = None) -> bytes:
    """Every record currently in the kernel ring buffer, in /dev/kmsg form ("6,123,456,-;msg\n"), from PATH
    (default: :func:`kmsg_device`)."""
    fd = os.open(path or kmsg_device(), os.O_RDONLY | os.O_NONBLOCK)
    try:
        return b"".join(available(fd))
    finally:
        os.close(fd)


def read_kmsg(path: Optional[str] = None) -> List[str]:
    """The lines of :func:`kmsg_bytes`, as text."""
    return kmsg_bytes(path).decode("utf-8", "replace").splitlines()


def read_live_log() -> bytes:
    """The live kernel log: /dev/kmsg, falling back to `dmesg` (e.g. in containers without kmsg)."""
    try:
        return kmsg_bytes()
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
            raise PrivilegeError("reading the kernel log")
    try:
        return subprocess.check_output(["dmesg"], stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        raise BadInput("cannot read the kernel log (%s and dmesg both failed); pass --log FILE" % kmsg_device())


class LogLines(object):
    """The lines of a log as text, read as they are iterated (once); counts the lines and the long
    lines that were cut."""

    def __init__(self, source: str, stream: BinaryIO) -> None:
        self.source = source
        self.stream = stream
        self.lines = 0
        self.cut = 0

    def __iter__(self) -> Iterator[str]:
        readline = self.stream.readline
        try:
            while True:
                data = readline(MAX_LINE + 1)
                if not data:
                    return
                if len(data) > MAX_LINE and not data.endswith(b"\n"):
                    self.cut += 1
                    data = data[:MAX_LINE]
                    while True:
                        rest = readline(_SKIP)
                        if not rest or rest.endswith(b"\n"):
                            break
                self.lines += 1
                yield data.decode("utf-8", "replace").rstrip("\r\n")
        except OSError as err:
            raise BadInput("cannot read log %s: %s" % (self.source, err.strerror))
        finally:
            self.close()

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()


def read_log_file(path: str) -> LogLines:
    """The lines of a saved log ('-' is stdin), decoded leniently: logs carry non-UTF-8 bytes."""
    if path == "":
        raise BadInput("--log '' names no file (leave --log out to read the live kernel log)")
    if path == "-":
        return LogLines("-", sys.stdin.buffer)
    try:
        return LogLines(path, open(path, "rb"))
    except OSError as err:
        raise BadInput("cannot read log %s: %s" % (path, err.strerror))


def read_log(path: Optional[str]) -> LogLines:
    """--log PATH when given, else the live log."""
    if path is not None:
        return read_log_file(path)
    return LogLines("live kernel log", io.BytesIO(read_live_log()))
