"""A live run's bookkeeping: the recording, the report directory, the ready file and lost events.

Whatever ends the run (duration, SIGTERM, Ctrl-C), the recording gets its trailer and the report
directory its files: nothing recorded is lost.

The report is built at the end by reading the events back, as a stream, from the recording, or without
``--record`` from a spool: a compressed recording in a private temp directory, whose name and directory
are removed as soon as it is open (nothing is left behind, however the run ends). Memory does not grow
with the events.
"""
import contextlib
import os
import sys
import tempfile
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional

from .errors import BadInput
from .exports import export, now_iso
from .kernel.capabilities import detect
from .outfiles import write_text
from .pointers import PointerHider, Settings
from .recording import Recorder, RecordingStream, make_header

SPOOL = "events.jsonl.gz"


class LiveRun(object):
    """Context manager around one live capture."""

    def __init__(self, tool: str, record_path: Optional[str], report_dir: Optional[str] = None,
                 argv: Optional[List[str]] = None,
                 incident_report: Optional[Callable[[Dict[str, Any], Iterable[Dict[str, Any]], str], Any]] = None
                 ) -> None:
        """REPORT_DIR gets, at the end, the files of INCIDENT_REPORT(header, events read once, generated)."""
        if report_dir and incident_report is None:
            raise ValueError("a report directory needs the tool's incident report function")
        self.tool = tool
        self.incident_report = incident_report
        self.lost = 0
        self.report_dir = report_dir
        self.recorder = None  # type: Optional[Recorder]
        self._readback = None  # type: Optional[ReadBack]     # the events for the report, read at the end
        self.header = {}  # type: Dict[str, Any]
        self.pointers = PointerHider(Settings.show)
        if record_path or report_dir:
            caps = detect()
            # as typed: "bpftools TOOL ARGS", whatever the entry point (a venv script, python -m, -c)
            self.header = self.pointers.hide(make_header(
                tool, ["bpftools"] + sys.argv[1:] if argv is None else list(argv), {"capabilities": caps.to_json()}))
        if record_path:
            self.recorder = Recorder(record_path, self.header)
            if report_dir:
                self._readback = ReadBack(self.recorder, _open_again(record_path))
        elif report_dir:
            self._readback = spool(self.header)
            self.recorder = self._readback.recorder

    def add_lost(self, count: int) -> None:
        self.lost += count

    def record(self, event: Dict[str, Any]) -> None:
        """Write EVENT (kernel pointers hidden: bpftools.pointers) to the recording, or the report's spool."""
        if self.recorder is not None:
            self.recorder.write(self.pointers.hide(event))

    @staticmethod
    def ready_callback(path: Optional[str]) -> Optional[Callable[[], None]]:
        """A callback that creates PATH once probes are attached (tests wait on it)."""
        if not path:
            return None

        def _ready() -> None:
            write_text(path, "ready\n")
        return _ready

    def __enter__(self) -> "LiveRun":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        interrupted = exc_type is KeyboardInterrupt
        if self.lost:
            sys.stderr.write("bpftools: %d events lost (perf buffer overflow or full maps)\n" % self.lost)
        try:
            if self.recorder is not None:
                self.recorder.close({"lost_events": self.lost, "interrupted": interrupted,
                                     "events": self.recorder.events})
            if self._readback is not None and exc_type in (None, KeyboardInterrupt):
                report = self.incident_report(self.header, self._readback.events(), now_iso())
                for path in export(report, out_dir=self.report_dir):
                    sys.stderr.write("wrote %s\n" % path)
        finally:
            if self._readback is not None:
                self._readback.close()


class ReadBack(object):
    """A recording being written (RECORDER) and the same file open for reading: written first, then read
    back once, as a stream."""

    def __init__(self, recorder: Recorder, readback: IO[bytes]) -> None:
        self.recorder = recorder
        self._readback = readback

    def write(self, event: Dict[str, Any]) -> None:
        self.recorder.write(event)

    def events(self) -> Iterator[Dict[str, Any]]:
        """The events written, read back once (the recorder is closed first, if it is not yet)."""
        self.recorder.close()
        with RecordingStream(self.recorder.path, self._readback) as stream:
            for event in stream.events:
                yield event

    def close(self) -> None:
        self.recorder.close()
        self._readback.close()


def _open_again(path: str) -> IO[bytes]:
    """The file PATH, just created, open for reading (not through a link put in its place)."""
    try:
        return open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW))
    except OSError as err:
        raise BadInput("cannot read back %s: %s" % (path, err.strerror))


def spool(header: Dict[str, Any]) -> ReadBack:
    """A compressed recording (HEADER first) in a new private temp directory, open for writing and for
    reading back; its name and directory are gone when this returns."""
    try:
        directory = tempfile.mkdtemp(prefix="bpftools-spool-")
    except OSError as err:
        raise BadInput("cannot make a temp directory for the report's events in %s: %s"
                       % (tempfile.gettempdir(), err.strerror))
    path = os.path.join(directory, SPOOL)
    try:
        recorder = Recorder(path, header)
        try:
            return ReadBack(recorder, _open_again(path))
        except BaseException:
            recorder.close()
            raise
    finally:
        if os.path.lexists(path):
            os.unlink(path)
        os.rmdir(directory)


def warn(message: str) -> None:
    """A one-line note on stderr (keeps stdout clean for --json and --folded)."""
    sys.stderr.write("bpftools: %s\n" % message)


@contextlib.contextmanager
def then(finish: Callable[[], None]) -> Iterator[None]:
    """Run FINISH after the block, also when Ctrl-C ended it (bcc's -f tools print on Ctrl-C too)."""
    try:
        yield
    except KeyboardInterrupt:
        finish()
        raise
    finish()
