"""Recordings: a JSON-lines file, a header line then one event per line, flushed as it goes.

An interrupted run leaves a valid file: every line is written whole and flushed. A line cut by a
crash (the last one) is reported and skipped when the recording is read back.
"""
import json
import os
import sys
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

from . import __version__
from .errors import BadInput

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
    """Writes a recording; each event line is flushed so nothing recorded is lost on interrupt."""

    def __init__(self, path: str, header: Dict[str, Any]) -> None:
        try:
            self._file = open(path, "w", encoding="utf-8")  # type: Optional[IO[str]]
        except OSError as err:
            raise BadInput("cannot write recording %s: %s" % (path, err.strerror))
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


def _parse_lines(lines: Iterator[str], name: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]],
                                                            Optional[Dict[str, Any]], int]:
    header = None  # type: Optional[Dict[str, Any]]
    events = []  # type: List[Dict[str, Any]]
    trailer = None
    damaged = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
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


def read_recording(path: str) -> Recording:
    """Read a recording; raises BadInput for a file that is not one."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            header, events, trailer, damaged = _parse_lines(iter(f), path)
    except OSError as err:
        raise BadInput("cannot read %s: %s" % (path, err.strerror))
    return Recording(header, events, trailer, damaged)
