"""Recordings: a JSON-lines file, a header line then one event per line, flushed as it goes.

An interrupted run leaves a valid file: every line is written whole and flushed. A line cut by a
crash (the last one) is reported and skipped when the recording is read back. A path ending in
``.gz`` is written gzip-compressed (each line flushed as a complete deflate block, so a cut file
still reads up to the cut); reading recognises gzip by its magic bytes, whatever the name.

Reading streams: :func:`stream_recording` gives the header at once and the events as an iterator (the
trailer and the damaged-line count are known once it is exhausted), so an analysis of any size holds
one event at a time. :func:`merged` interleaves several streams in time order; :func:`read_recording`
keeps the whole list for callers that want one; :class:`CountedRecording` reads one twice, for an output
that puts its counts before its events.

A field whose value is a JSON array or object (a kernel stack, a container, a flag list) is written whole
once and by number after (:class:`SharedValues`): a busy capture records the same few hundred stacks
millions of times, and reading a number is cheaper than reading the stack again.
"""
import codecs
import contextlib
import gc
import gzip
import heapq
import itertools
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import zlib
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Tuple

from . import __version__
from .errors import BadInput
from .outfiles import open_stream

FORMAT = "bpftools-recording/2"         # /2: shared values (SHARED); /1 files, without them, read alike
FORMATS = (FORMAT, "bpftools-recording/1")


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


GZIP_MAGIC = b"\x1f\x8b"

# An event's shared values: {"@": {FIELD: [NUMBER, VALUE]}} the first time a value is written, {FIELD:
# NUMBER} after; a reader puts VALUE back in FIELD (one object for all the events that share it: read-only).
SHARED = "@"
MAX_SHARED = 1 << 16        # distinct values a recording shares; values past that are written whole each time


_COMPOUND = (list, dict)     # the types whose values are shared (not their subclasses: written whole)


class SharedValues(object):
    """The writer's side of shared values: an event with each array or object field replaced by its
    number under SHARED (and the value, the first time). The first MAX_SHARED distinct values are shared,
    so a capture of days holds at most that many."""

    def __init__(self) -> None:
        self._numbers = {}  # type: Dict[Any, int]     # by _identity

    def encode(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """EVENT as written (a new dict when it shares a value; EVENT itself is left as it is)."""
        compound = [(key, value) for key, value in event.items() if value and type(value) in _COMPOUND]
        if not compound:
            return event
        numbers = self._numbers
        refs = {}  # type: Dict[str, Any]
        for key, value in compound:
            identity = _identity(value)
            number = numbers.get(identity)
            if number is not None:
                refs[key] = number
            elif len(numbers) < MAX_SHARED:
                number = numbers[identity] = len(numbers)
                refs[key] = [number, value]
        if not refs:
            return event
        out = {key: value for key, value in event.items() if key not in refs}
        out[SHARED] = refs
        return out


def _identity(value: Any) -> Any:
    """A key equal for values written alike, and only for them: a list of texts as a tuple, an object of
    texts (or nulls) as its sorted items (kernel stacks, flag lists, containers: cheaper than their JSON
    text), anything else as its JSON text. Only texts and nulls: 1, 1.0 and true are equal keys."""
    if isinstance(value, list):
        if all(type(item) is str for item in value):
            return tuple(value)
    elif all(item is None or type(item) is str for item in value.values()):
        return tuple(sorted(value.items()))
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _share(event: Dict[str, Any], refs: Any, values: Dict[int, Any]) -> bool:
    """Put the shared values REFS of EVENT back in it, learning the new ones into VALUES; False when REFS
    is malformed or names a value not defined before (a damaged line carried it)."""
    if not isinstance(refs, dict):
        return False
    for key, ref in refs.items():
        if type(ref) is list:
            if len(ref) != 2 or type(ref[0]) is not int or not 0 <= ref[0] < MAX_SHARED or \
                    not isinstance(ref[1], (list, dict)):
                return False
            values[ref[0]] = value = ref[1]
        else:
            value = values.get(ref) if type(ref) is int else None
            if value is None:
                return False
        event[key] = value
    return True


def compressed(path: str) -> bool:
    """True when a recording written to PATH is gzip-compressed (its name ends in ``.gz``)."""
    return path.endswith(".gz")


class Recorder:
    """Writes a recording; each event line is flushed so nothing recorded is lost on interrupt.

    The file is new, 0600 (:func:`bpftools.outfiles.open_stream`): a regular file of that name owned by
    root or you is replaced, a link, FIFO or device at the name is refused. A PATH ending in ``.gz``
    is gzip-compressed, each line flushed as a complete deflate block (zlib's sync flush)."""

    def __init__(self, path: str, header: Dict[str, Any]) -> None:
        self._file = open_stream(path, "recording")  # type: Optional[IO[str]]
        self._shared = SharedValues()
        self._gzip = None  # type: Optional[gzip.GzipFile]
        if compressed(path):
            self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._file.buffer, mtime=0)
        self.path = path
        self.events = 0
        self._write(header)

    def _write(self, obj: Dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n"
        if self._gzip is not None:
            self._gzip.write(line.encode("utf-8"))
            self._gzip.flush()
            self._file.buffer.flush()
        else:
            self._file.write(line)
            self._file.flush()

    def write(self, event: Dict[str, Any]) -> None:
        """Append one event (a JSON-serialisable dict; its array and object values shared)."""
        self._write(self._shared.encode(event))
        self.events += 1

    def close(self, trailer: Optional[Dict[str, Any]] = None) -> None:
        """Write an optional trailer (e.g. lost-event counts) and close."""
        if self._file is None:
            return
        if trailer is not None:
            self._write(dict(trailer, trailer=True))
        if self._gzip is not None:
            self._gzip.close()
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


try:
    from orjson import loads as _fast_loads   # optional, 4x faster than json; refuses what is out of range
except ImportError:
    _fast_loads = None

# one pass makes every digit 0 and every opening bracket [, for the two checks below
_DIGITS_AND_OPENINGS = bytes.maketrans(b"123456789{", b"000000000[")
_LONG_NUMBER = b"0" * 19     # 19 digits in a row: maybe an integer past 64 bits, which orjson makes a float


def _load(raw: bytes) -> Any:
    """One line's JSON value (ValueError: not JSON; _Nonsense: JSON no recording holds). The strict
    decoder (on the text, bad bytes replaced) reads what orjson refuses or may read as a float, and
    everything when orjson is not installed."""
    marked = raw.translate(_DIGITS_AND_OPENINGS)
    try:
        try:
            if _fast_loads is None or marked.find(_LONG_NUMBER) >= 0:     # not "in": it tries an integer first
                raise ValueError("for the strict decoder")
            obj = _fast_loads(raw)
        except ValueError:
            obj = _DECODER.decode(raw.decode("utf-8", "replace"))
    except RecursionError:
        raise _Nonsense("nested deeper than %d levels" % MAX_DEPTH)
    # the openings counted as the length replace() takes off: several times faster than count() here
    if len(marked) - len(marked.replace(b"[", b"")) > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        raise _Nonsense("nested deeper than %d levels" % MAX_DEPTH)
    return obj


CHUNK = 1 << 16


def _lines(raw: Any, name: str) -> Iterator[bytes]:
    """The lines of the binary file RAW, gzip-compressed or not (by its magic bytes), ending at LF, CR LF
    or CR, without their line ends, a UTF-8 byte-order mark skipped; a compressed file cut short (or
    corrupt past some point) ends at the last byte it inflates. BadInput for UTF-16 text."""
    start = raw.peek(2)[:2]
    if start in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"{\x00", b"\x00{"):
        raise BadInput("%s is not a bpftools recording: it is UTF-16 text, and a recording is UTF-8 "
                       "(iconv -f UTF-16 -t UTF-8 converts it)" % name)
    source = gzip.GzipFile(filename="", mode="rb", fileobj=raw) if start == GZIP_MAGIC else raw
    rest = b""
    first = True
    while True:
        try:
            chunk = source.read1(CHUNK)
        except (EOFError, zlib.error, OSError):      # cut or damaged compressed data: what came before stands
            chunk = b""
        if not chunk:
            break
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        if first and lines:
            first = False
            lines[0] = _without_bom(lines[0])
        if b"\r" in data:
            for line in lines:
                yield from line.split(b"\r")
        else:
            yield from lines
    if rest:
        yield from (_without_bom(rest) if first else rest).split(b"\r")


def _without_bom(line: bytes) -> bytes:
    return line[len(codecs.BOM_UTF8):] if line.startswith(codecs.BOM_UTF8) else line


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as err:
        raise BadInput("cannot read %s: %s" % (path, err.strerror))


class RecordingStream(object):
    """A recording being read: ``header`` at once, ``events`` an iterator read once; ``trailer`` and
    ``damaged_lines`` hold once the events are exhausted. Close it (or use ``with``) when stopping early."""

    def __init__(self, path: str, raw: Optional[IO[bytes]] = None) -> None:
        """Read the file PATH, or RAW (a binary file open on it, read from where it stands) under that name."""
        self.path = path
        self.trailer = None  # type: Optional[Dict[str, Any]]
        self.damaged_lines = 0
        self.count = 0            # events read so far
        self._shared = {}  # type: Dict[int, Any]
        self._raw = _open(path) if raw is None else raw
        self._lines = enumerate(_lines(self._raw, path), 1)
        try:
            self.header = self._first()
        except BaseException:
            self.close()
            raise
        self.events = self._events()  # type: Iterator[Dict[str, Any]]

    @property
    def tool(self) -> str:
        return str(self.header.get("tool", ""))

    def _objects(self) -> Iterator[Dict[str, Any]]:
        """The JSON objects of the remaining lines; damaged ones counted."""
        for number, line in self._lines:
            obj = self._object(number, line)
            if obj is not None:
                yield obj

    def _first(self) -> Dict[str, Any]:
        try:
            for obj in self._objects():
                if obj.get("format") not in FORMATS:
                    raise BadInput("%s is not a bpftools recording (no header line)" % self.path)
                return obj
        except OSError as err:
            raise BadInput("cannot read %s: %s" % (self.path, err.strerror))
        raise BadInput("%s is empty: not a bpftools recording" % self.path)

    def _events(self) -> Iterator[Dict[str, Any]]:
        try:
            for obj in self._objects():
                if obj.get("trailer"):
                    self.trailer = obj
                    continue
                refs = obj.pop(SHARED, None)
                if refs is not None and not _share(obj, refs, self._shared):
                    self.damaged_lines += 1
                    continue
                self.count += 1
                yield obj
        except OSError as err:
            raise BadInput("cannot read %s: %s" % (self.path, err.strerror))
        finally:
            self.close()

    def _object(self, number: int, line: bytes) -> Optional[Dict[str, Any]]:
        """The JSON object of LINE (NUMBER), None for a blank line or a damaged one (counted)."""
        if not line.strip():
            return None
        try:
            obj = _load(line)
        except _Nonsense as err:
            raise BadInput("%s line %d: %s" % (self.path, number, err))
        except ValueError:
            self.damaged_lines += bool(line.decode("utf-8", "replace").strip())   # blank in Unicode terms
            return None
        if isinstance(obj, dict):
            return obj
        self.damaged_lines += 1
        return None

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "RecordingStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while recordings are read and analysed (a context manager or
    a decorator). Events and the analyses' state make no reference cycles (reference counting frees them),
    and the collector's passes over millions of short-lived objects took a quarter to a third of the time
    (bench/analysis_throughput.py); it runs again, and collects, at the end."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def stream_recording(path: str) -> RecordingStream:
    """Open a recording for one pass over its events; raises BadInput for a file that is not one."""
    return RecordingStream(path)


def _seekable(raw: IO[bytes], path: str) -> IO[bytes]:
    """RAW when it is a regular file; else (a pipe, a device) its bytes copied to an anonymous temp file."""
    if stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
        return raw
    copy = tempfile.TemporaryFile()
    with raw:
        try:
            shutil.copyfileobj(raw, copy, CHUNK)
        except OSError as err:
            copy.close()
            raise BadInput("cannot read %s into a temp file: %s" % (path, err.strerror))
    copy.seek(0)
    return copy


class CountedRecording(object):
    """A recording read through once (every line checked; its events and damaged lines counted, its trailer
    found), whose events can then be read once more (:meth:`events`) from the same open file: the file as it
    was, even if replaced meanwhile, and no more events than were counted, even if it grew. A pipe is copied
    to an anonymous temp file first. Close it when done."""

    def __init__(self, path: str) -> None:
        self.path = path
        raw = _seekable(_open(path), path)
        self._again = os.dup(raw.fileno())      # the same open file, rewound for the second reading
        try:
            first = RecordingStream(path, raw)
            for _ in first.events:
                pass
        except BaseException:
            self.close()
            raise
        self.header = first.header
        self.trailer = first.trailer
        self.damaged_lines = first.damaged_lines
        self.count = first.count

    def events(self) -> Iterator[Dict[str, Any]]:
        """The events counted, read again (call once)."""
        fd, self._again = self._again, -1
        os.lseek(fd, 0, os.SEEK_SET)
        with RecordingStream(self.path, os.fdopen(fd, "rb")) as again:
            for event in itertools.islice(again.events, self.count):
                yield event

    def close(self) -> None:
        if self._again >= 0:
            os.close(self._again)
            self._again = -1


def whole(rec: Any) -> Recording:
    """The recording REC (a stream, merged or not) with its events in a list."""
    events = list(rec.events)
    return Recording(rec.header, events, rec.trailer, rec.damaged_lines)


def read_recording(path: str) -> Recording:
    """Read a whole recording into memory; raises BadInput for a file that is not one."""
    with stream_recording(path) as stream:
        return whole(stream)


def _time_keyed(stream: Iterable[Dict[str, Any]], index: int) -> Iterator[Tuple[int, int, int, Dict[str, Any]]]:
    """(time, INDEX, n, event) of each event; an event without an integer ``ts_ns`` takes the time of
    the one before it, so it keeps its place in its own stream."""
    last = -1
    for n, event in enumerate(stream):
        ts = event.get("ts_ns")
        if isinstance(ts, int) and not isinstance(ts, bool):
            last = max(last, ts)
        yield last, index, n, event


def merged(streams: List[Iterable[Dict[str, Any]]]) -> Iterator[Dict[str, Any]]:
    """The events of several recordings in time order (``ts_ns``; each stream's own order kept among
    equal times and for events without a time), holding one event per stream."""
    for _, _, _, event in heapq.merge(*[_time_keyed(s, i) for i, s in enumerate(streams)]):
        yield event


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class MergedRecording(object):
    """Several recording streams of one tool read as one, in time order (:func:`merged`): the first's
    header; once the events are exhausted, the damaged lines and a trailer summed over all (None when
    one of them has none: it was cut off)."""

    def __init__(self, streams: List[RecordingStream]) -> None:
        self.streams = streams
        self.header = streams[0].header
        self.events = merged([s.events for s in streams])

    @property
    def tool(self) -> str:
        return self.streams[0].tool

    @property
    def count(self) -> int:
        return sum(s.count for s in self.streams)

    @property
    def damaged_lines(self) -> int:
        return sum(s.damaged_lines for s in self.streams)

    @property
    def trailer(self) -> Optional[Dict[str, Any]]:
        trailers = [s.trailer for s in self.streams]
        if any(t is None for t in trailers):
            return None
        return {"trailer": True, "recordings": len(trailers),
                "lost_events": sum(_count(t.get("lost_events")) for t in trailers),
                "interrupted": any(t.get("interrupted") for t in trailers),
                "events": sum(_count(t.get("events")) for t in trailers)}

    def close(self) -> None:
        for s in self.streams:
            s.close()
