"""A live run's bookkeeping: the recording, the report directory, the ready file and lost events.

Whatever ends the run (duration, SIGTERM, Ctrl-C), the recording gets its trailer and the report
directory its files: nothing recorded is lost.
"""
import sys
from typing import Any, Callable, Dict, List, Optional

from .recording import Recorder, make_header

MAX_REPORT_EVENTS = 1000000


class LiveRun(object):
    """Context manager around one live capture."""

    def __init__(self, tool: str, record_path: Optional[str], report_dir: Optional[str] = None,
                 argv: Optional[List[str]] = None) -> None:
        self.tool = tool
        self.lost = 0
        self.report_dir = report_dir
        self.events = []  # type: List[Dict[str, Any]]
        self.recorder = None  # type: Optional[Recorder]
        self.header = {}  # type: Dict[str, Any]
        if record_path or report_dir:
            from .kernel.capabilities import detect
            caps = detect(try_fentry=False)
            # as typed: "bpftools TOOL ARGS", whatever the entry point (a venv script, python -m, -c)
            self.header = make_header(tool, ["bpftools"] + sys.argv[1:] if argv is None else list(argv),
                                      {"capabilities": caps.to_json()})
        if record_path:
            self.recorder = Recorder(record_path, self.header)

    def add_lost(self, count: int) -> None:
        self.lost += count

    def record(self, event: Dict[str, Any]) -> None:
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
            with open(path, "w") as f:
                f.write("ready\n")
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
            from .reports import build_report, export
            for path in export(build_report(self.header, self.events), out_dir=self.report_dir):
                sys.stderr.write("wrote %s\n" % path)
