"""Where kernel log lines come from: the live ring buffer (/dev/kmsg, else `dmesg`), a file, or stdin."""
import errno
import os
import subprocess
import sys
from typing import Iterator, List, Optional

from ..errors import BadInput, PrivilegeError

MAX_BYTES = 256 * 1024 * 1024


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


def read_kmsg(path: str = "/dev/kmsg") -> List[str]:
    """Every record currently in the kernel ring buffer, in /dev/kmsg form ("6,123,456,-;msg")."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return [line for record in available(fd) for line in record.decode("utf-8", "replace").splitlines()]
    finally:
        os.close(fd)


def read_live_log() -> List[str]:
    """The live kernel log: /dev/kmsg, falling back to `dmesg` (e.g. in containers without kmsg)."""
    try:
        return read_kmsg()
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
            raise PrivilegeError("reading the kernel log")
    try:
        out = subprocess.check_output(["dmesg"], stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        raise BadInput("cannot read the kernel log (/dev/kmsg and dmesg both failed); pass --log FILE")
    return out.decode("utf-8", "replace").splitlines()


def read_log_file(path: str) -> List[str]:
    """Lines of a saved log ('-' is stdin), decoded leniently: logs carry non-UTF-8 bytes."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_BYTES)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES)
        except OSError as err:
            raise BadInput("cannot read log %s: %s" % (path, err.strerror))
    return data.decode("utf-8", "replace").splitlines()


def read_log(path: Optional[str]) -> List[str]:
    """--log PATH when given, else the live log."""
    return read_log_file(path) if path else read_live_log()
