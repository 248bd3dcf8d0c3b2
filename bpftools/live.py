"""A live run's bookkeeping: the recording, the ready file, and lost-event reporting on exit."""
import sys
from typing import Any, Callable, Dict, Optional

from .recording import Recorder, make_header


class LiveRun(object):
    """Context manager around one live capture; the recording is closed with a trailer however it ends."""

    def __init__(self, tool: str, record_path: Optional[str], argv: Optional[list] = None) -> None:
        self.tool = tool
        self.lost = 0
        self.recorder = None  # type: Optional[Recorder]
        if record_path:
            from .capabilities import detect
            caps = detect(try_fentry=False)
            self.recorder = Recorder(record_path, make_header(
                tool, list(sys.argv if argv is None else argv), {"capabilities": caps.to_json()}))

    def add_lost(self, count: int) -> None:
        self.lost += count

    def record(self, event: Dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.write(event)

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
            sys.stderr.write("bpftools: %d events lost (perf buffer overflow)\n" % self.lost)
        if self.recorder is not None:
            self.recorder.close({"lost_events": self.lost, "interrupted": interrupted,
                                 "events": self.recorder.events})
