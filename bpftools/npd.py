"""`bpftools doctor --npd CONDITION`: doctor as a node-problem-detector custom plugin.

NPD's custom plugin monitor runs one program per rule and reads its exit status and stdout
(kubernetes/node-problem-detector, pkg/custompluginmonitor/plugin/plugin.go):

- exit 0: OK (the node condition is False), 1: NonOK (True), any other: Unknown;
- stdout, trimmed, is the condition's message, cut at ``max_output_length`` bytes (default 80);
- the program is killed after ``timeout`` (default 5 s) and the result is Unknown.

One condition per run, as NPD runs one program per rule. Whatever keeps the check from giving an
answer (a log that cannot be read, bad input, a bug of ours, running out of time) is Unknown, exit
2: NPD must never read a failure of the tool as a problem of the node.
"""
import re
import signal
from typing import Any, Callable, Optional, Tuple

from .analyses.verdicts import KMEM, NETDEV
from .errors import BpftoolsError

EXIT_NPD_OK = 0
EXIT_NPD_PROBLEM = 1
EXIT_NPD_UNKNOWN = 2

MAX_MESSAGE_BYTES = 80        # NPD's default max_output_length: it cuts the message there
# NPD's default timeout is 5 s (pkg/custompluginmonitor/types/config.go); answering Unknown by
# ourselves before it kills us keeps the reason in the message; the budget leaves time for Python's
# start and exit on a loaded node (a measured run takes 0.3 s).
TIME_BUDGET_S = 3.0

# The condition name on the command line -> the incident of doctor's verdicts.
CONDITIONS = {"kmem": KMEM, "netdev": NETDEV}
# The verdict states that make each condition True. KmemIOJitter is also True at risk: the node
# has the preconditions of the 5 s writeback stalls (kmem accounting active on a kernel that
# charges biovec slabs), and they strike without warning. A netdev leak is a fact of the log.
PROBLEM_STATES = {KMEM: ("detected", "at-risk"), NETDEV: ("detected",)}


class OutOfTime(BaseException):
    """The check ran past its time budget (a BaseException, as KeyboardInterrupt: no ``except Exception``
    on the way, doctor's or ours, takes it for an error)."""


def message(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """TEXT as one printable ASCII line of at most LIMIT bytes ('...' marks a cut)."""
    line = re.sub(r"\s+", " ", text).strip()
    line = "".join(c if " " <= c <= "~" else "?" for c in line)
    return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."


def judge(verdict: Any) -> Tuple[int, str]:
    """The exit status and message of one doctor verdict (its incident, status and evidence)."""
    state = verdict.status
    first = verdict.evidence[0] if verdict.evidence else verdict.summary
    if state in PROBLEM_STATES[verdict.incident]:
        return EXIT_NPD_PROBLEM, message("%s: %s" % (state, first))
    if state == "unknown":
        return EXIT_NPD_UNKNOWN, message("unknown: %s" % verdict.summary)
    if state == "at-risk":
        return EXIT_NPD_OK, message("no sign in the log; at risk: %s" % first)
    if state == "clear":
        return EXIT_NPD_OK, message("clear: %s" % verdict.summary)
    return EXIT_NPD_UNKNOWN, message("unknown: doctor gave the state %r" % state)


def _out_of_time(signum: int, frame: Any) -> None:
    raise OutOfTime()


def check(condition: str, triage_of: Callable[[], Any], budget: float = TIME_BUDGET_S) -> Tuple[int, str]:
    """Run TRIAGE_OF (doctor) within BUDGET seconds and judge CONDITION ('kmem' or 'netdev') from its
    verdicts. Never raises: every failure is Unknown with the reason as the message."""
    try:
        return _timed_check(condition, triage_of, budget)
    except OutOfTime:                 # wherever the alarm struck, its own handlers included
        return EXIT_NPD_UNKNOWN, message("unknown: no answer within %.1f s" % budget)


def _timed_check(condition: str, triage_of: Callable[[], Any], budget: float) -> Tuple[int, str]:
    previous = signal.signal(signal.SIGALRM, _out_of_time)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        incident = CONDITIONS[condition]
        verdicts = triage_of().verdicts
        signal.setitimer(signal.ITIMER_REAL, 0)
        verdict = next((v for v in verdicts if v.incident == incident), None)   # type: Optional[Any]
        if verdict is None:
            return EXIT_NPD_UNKNOWN, message("unknown: doctor gave no verdict on %s" % incident)
        return judge(verdict)
    except BpftoolsError as err:      # e.g. a log that cannot be read
        return EXIT_NPD_UNKNOWN, message("unknown: %s" % err)
    except Exception as err:  # a bug of ours: never a node problem
        return EXIT_NPD_UNKNOWN, message("unknown: internal error: %s: %s" % (type(err).__name__, err))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
