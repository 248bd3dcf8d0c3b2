"""A live run's bookkeeping: the recording, the report directory, the ready file and lost events.

Whatever ends the run (duration, SIGTERM, Ctrl-C), the recording gets its trailer and the report
directory its files: nothing recorded is lost.
"""
import contextlib
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

from .exports import export, now_iso
from .kernel.capabilities import detect
from .outfiles import write_text
from .pointers import PointerHider, Settings
from .recording import Recorder, make_header

MAX_REPORT_EVENTS = 1000000


class LiveRun(object):
    """Context manager around one live capture."""

    def __init__(self, tool: str, record_path: Optional[str], report_dir: Optional[str] = None,
                 argv: Optional[List[str]] = None,
                 incident_report: Optional[Callable[[Dict[str, Any], List[Dict[str, Any]], str], Any]] = None
                 ) -> None:
        """REPORT_DIR gets, at the end, the files of INCIDENT_REPORT(header, events, generated)."""
        if report_dir and incident_report is None:
            raise ValueError("a report directory needs the tool's incident report function")
        self.tool = tool
        self.incident_report = incident_report
        self.lost = 0
        self.report_dir = report_dir
        self.events = []  # type: List[Dict[str, Any]]
        self.recorder = None  # type: Optional[Recorder]
        self.header = {}  # type: Dict[str, Any]
        self.pointers = PointerHider(Settings.show)
        if record_path or report_dir:
            caps = detect()
            # as typed: "bpftools TOOL ARGS", whatever the entry point (a venv script, python -m, -c)
            self.header = self.pointers.hide(make_header(
                tool, ["bpftools"] + sys.argv[1:] if argv is None else list(argv), {"capabilities": caps.to_json()}))
        if record_path:
            self.recorder = Recorder(record_path, self.header)

    def add_lost(self, count: int) -> None:
        self.lost += count

    def record(self, event: Dict[str, Any]) -> None:
        """Keep EVENT (kernel pointers hidden: bpftools.pointers) in the recording and for the report."""
        if self.recorder is None and not self.report_dir:
            return
        event = self.pointers.hide(event)
        if self.recorder is not None:
            self.recorder.write(event)
        if self.report_dir and len(self.events) < MAX_REPORT_EVENTS:
            self.events.append(event)

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
        if self.recorder is not None:
            self.recorder.close({"lost_events": self.lost, "interrupted": interrupted,
                                 "events": self.recorder.events})
        if self.report_dir and exc_type in (None, KeyboardInterrupt):
            report = self.incident_report(self.header, self.events, now_iso())
            for path in export(report, out_dir=self.report_dir):
                sys.stderr.write("wrote %s\n" % path)


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
