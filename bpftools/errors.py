"""Typed errors and the exit code each one maps to (one place: ``cli.main``)."""
from typing import Optional

EXIT_OK = 0
EXIT_FAILURE = 1          # unexpected error (a bug): traceback with --traceback
EXIT_USAGE = 2            # click's own usage errors
EXIT_BAD_INPUT = 3        # a file or value the user gave cannot be used
EXIT_NOT_ROOT = 4         # tracing needs root / CAP_BPF + CAP_PERFMON
EXIT_MISSING_FEATURE = 5  # the kernel or the system lacks what the tool needs
EXIT_PROBE_LOAD = 6       # the BPF program failed to compile, load or attach
EXIT_INCOMPLETE = 7       # doctor: the log was analysed in part (lines cut) or not at all
EXIT_INTERRUPTED = 130    # Ctrl-C: detached cleanly


class BpftoolsError(Exception):
    """Base class: a one-line message for stderr and an exit code."""

    exit_code = EXIT_FAILURE

    def detail(self) -> Optional[str]:
        """Extra text shown with -v (e.g. a verifier log)."""
        return None


class BadInput(BpftoolsError):
    """A file, recording or argument that cannot be used."""

    exit_code = EXIT_BAD_INPUT


class PrivilegeError(BpftoolsError):
    """The command needs root."""

    exit_code = EXIT_NOT_ROOT

    def __init__(self, what: str = "this command") -> None:
        super().__init__("%s needs root (or CAP_BPF and CAP_PERFMON); run it with sudo" % what)


class MissingKernelFeature(BpftoolsError):
    """The kernel or system lacks a feature; names the minimum kernel or the fallback."""

    exit_code = EXIT_MISSING_FEATURE

    def __init__(self, feature: str, min_kernel: Optional[str] = None,
                 fallback: Optional[str] = None) -> None:
        parts = ["missing kernel feature: %s" % feature]
        if min_kernel:
            parts.append("needs Linux %s or later" % min_kernel)
        if fallback:
            parts.append("try: %s" % fallback)
        super().__init__("; ".join(parts))
        self.feature = feature
        self.min_kernel = min_kernel
        self.fallback = fallback


class ProbeLoadError(BpftoolsError):
    """A BPF program failed to compile, load or attach; ``log`` holds the compiler/verifier output."""

    exit_code = EXIT_PROBE_LOAD

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log

    def detail(self) -> Optional[str]:
        return self.log or None


class MissingDependency(BpftoolsError):
    """A system package the command needs is not installed (same exit code as a missing feature)."""

    exit_code = EXIT_MISSING_FEATURE

    def __init__(self, what: str, install: str) -> None:
        super().__init__("missing dependency: %s; install it: %s" % (what, install))
