"""Signal guards: handlers for SIGINT/SIGTERM while a block runs, the previous ones back on exit."""
import signal
from typing import Any, Dict, Optional, Tuple

STOP = (signal.SIGINT, signal.SIGTERM)


class SignalGuard(object):
    """Installs :meth:`handle` for SIGNALS on entry and restores the previous handlers on exit."""

    def __init__(self, signals: Tuple[int, ...] = STOP) -> None:
        self.signals = signals
        self._old = {}  # type: Dict[int, Any]

    def handle(self, signum: int) -> None:
        raise NotImplementedError

    def _handler(self, signum: int, frame: Any) -> None:
        self.handle(signum)

    def __enter__(self) -> "SignalGuard":
        for signum in self.signals:
            self._old[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)


class StopSignals(SignalGuard):
    """SIGNALS set a flag (the first one received) instead of raising.

    An exception raised by a signal handler while a perf-buffer callback runs is printed and swallowed by
    ctypes; a flag is seen by the poll loop whenever the signal lands."""

    def __init__(self, signals: Tuple[int, ...] = STOP) -> None:
        super().__init__(signals)
        self.received = None  # type: Optional[int]

    def handle(self, signum: int) -> None:
        if self.received is None:
            self.received = signum
