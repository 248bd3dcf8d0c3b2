"""Recordings: a JSON-lines file, a header line then one event per line, flushed as it goes.

An interrupted run leaves a valid file: every line is written whole and flushed. A line cut by a
crash (the last one) is reported and skipped when the recording is read back.
"""
import codecs
import io
import json
import math
import os
import sys
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

from . import __version__
from .errors import BadInput
from .outfiles import open_stream

FORMAT = "bpftools-recording/1"


def make_header(tool: str, argv: List[str], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The header line: format, tool, version, argv and kernel release (plus capabilities etc.)."""
    header = {
        "format": FORMAT,
        "tool": tool,
        "version": __version__,
        "argv": list(argv),
        "kernel_release": os.uname().release,
        "python": sys.version.split()[0],
    }
    header.update(extra or {})
    return header


class Recorder:
    """Writes a recording; each event line is flushed so nothing recorded is lost on interrupt.

    The file is new, 0600 (:func:`bpftools.outfiles.open_stream`): a regular file of that name owned by
    root or you is replaced, a link, FIFO or device at the name is refused."""

    def __init__(self, path: str, header: Dict[str, Any]) -> None:
        self._file = open_stream(path, "recording")  # type: Optional[IO[str]]
        self.path = path
        self.events = 0
        self._write(header)

    def _write(self, obj: Dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n")
        self._file.flush()

    def write(self, event: Dict[str, Any]) -> None:
        """Append one event (a JSON-serialisable dict)."""
        self._write(event)
        self.events += 1

    def close(self, trailer: Optional[Dict[str, Any]] = None) -> None:
        """Write an optional trailer (e.g. lost-event counts) and close."""
        if self._file is None:
            return
        if trailer is not None:
            self._write(dict(trailer, trailer=True))
        self._file.close()
        self._file = None


class Recording:
    """A recording read back: header, events, trailer and the count of damaged lines skipped."""

    def __init__(self, header: Dict[str, Any], events: List[Dict[str, Any]],
                 trailer: Optional[Dict[str, Any]], damaged_lines: int) -> None:
        self.header = header
        self.events = events
        self.trailer = trailer
        self.damaged_lines = damaged_lines

    @property
    def tool(self) -> str:
        return str(self.header.get("tool", ""))


# What a reader accepts, so that nothing downstream meets an overflow or a recursion limit: integers of
# 64 bits (signed or not), finite floats, and JSON nested at most MAX_DEPTH deep (recordings nest 5 deep).
MIN_INT, MAX_INT = -2 ** 63, 2 ** 64 - 1
MAX_DEPTH = 32


class _Nonsense(Exception):
    """A line no recording holds: a number out of range, or nesting too deep (the message says which)."""


def _cut(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "..."


def _integer(text: str) -> int:
    value = int(text) if len(text) <= 21 else None
    if value is None or not MIN_INT <= value <= MAX_INT:
        raise _Nonsense("integer out of range (64 bits): %s" % _cut(text))
    return value


def _real(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Nonsense("number out of range: %s" % _cut(text))
    return value


def _constant(text: str) -> float:
    raise _Nonsense("%s is not a number a recording holds" % text)


_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_real, parse_constant=_constant)


def _depth(obj: Any) -> int:
    """How deep OBJ nests (a scalar: 0), without recursion; stops counting past MAX_DEPTH."""
    deepest, todo = 0, [(obj, 1)]
    while todo and deepest <= MAX_DEPTH:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _load(line: str) -> Any:
    """One line's JSON value (ValueError: not JSON; _Nonsense: JSON no recording holds)."""
    try:
        obj = _DECODER.decode(line)
    except RecursionError:
        raise _Nonsense("nested deeper than %d levels" % MAX_DEPTH)
    if line.count("[") + line.count("{") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        raise _Nonsense("nested deeper than %d levels" % MAX_DEPTH)
    return obj


def _parse_lines(lines: Iterator[str], name: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]],
                                                            Optional[Dict[str, Any]], int]:
    header = None  # type: Optional[Dict[str, Any]]
    events = []  # type: List[Dict[str, Any]]
    trailer = None
    damaged = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = _load(line)
        except _Nonsense as err:
            raise BadInput("%s line %d: %s" % (name, number, err))
        except ValueError:
            damaged += 1
            continue
        if not isinstance(obj, dict):
            damaged += 1
        elif header is None:
            if obj.get("format") != FORMAT:
                raise BadInput("%s is not a bpftools recording (no header line)" % name)
            header = obj
        elif obj.get("trailer"):
            trailer = obj
        else:
            events.append(obj)
    if header is None:
        raise BadInput("%s is empty: not a bpftools recording" % name)
    return header, events, trailer, damaged


def _utf8_lines(raw: Any, name: str) -> Iterator[str]:
    """The lines of the binary file RAW as UTF-8 (a byte-order mark skipped); BadInput for UTF-16."""
    start = raw.peek(2)[:2]
    if start in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"{\x00", b"\x00{"):
        raise BadInput("%s is not a bpftools recording: it is UTF-16 text, and a recording is UTF-8 "
                       "(iconv -f UTF-16 -t UTF-8 converts it)" % name)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace")


def read_recording(path: str) -> Recording:
    """Read a recording; raises BadInput for a file that is not one."""
    try:
        with open(path, "rb") as raw:
            header, events, trailer, damaged = _parse_lines(_utf8_lines(raw, path), path)
    except OSError as err:
        raise BadInput("cannot read %s: %s" % (path, err.strerror))
    return Recording(header, events, trailer, damaged)
