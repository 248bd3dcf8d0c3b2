"""Find the two bpftools incidents in kernel log text: kmem/SLUB allocation failures with
mempool stalls, and netdev reference leaks ("waiting for eth0 to become free").

The messages are read with the forms of :mod:`.log_forms` (every kernel from 3.10 to 6.18).
Accepted input, mixed freely (pasted or exported lines are first undone by :mod:`.log_paste`:
line numbers, quote markers, backticks, HTML entities, journald and ``dmesg --json`` records):
raw ``dmesg`` (``[  122.222455] msg``, with or without a printk caller id ``[T1234]``), ``dmesg -T``
(``[Thu May 14 23:17:24 2020] msg``, any locale's weekday), syslog and journald short
(``Mar  5 03:41:22 host kernel: [732240.608081] msg``, with no host or a ``facility.level``), ISO
stamps, syslogd's wall broadcast (``Message from syslogd@host at ...`` then `` kernel:[ts] msg``),
``/dev/kmsg`` records (``6,1234,5678901,-;msg``), lines without stamps, a console line whose dmesg
stamp follows another program's output, mail-quoted or indented lines, other programs' lines in
between (syslog lines not tagged ``kernel`` are skipped), and wrapped lines: a stamped line ending
in a space (format=flowed) or a comma continues on the next unstamped line, and any line ending in
a blank and a backslash on the next one.

``find_incidents(lines)`` returns one :class:`Finding` per kind found, in the order of
:data:`KINDS`, each with a confidence (:data:`CONFIDENCES`) and the rule that gave it. Timestamps
are reported exactly as printed; a syslog line that also carries the dmesg stamp reports both
(``"Mar  5 03:41:22 [732240.608081]"``), a ``/dev/kmsg`` record its microseconds field.
"""
import calendar
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from . import log_forms as forms
from .gfp import UNKNOWN, decode_gfp, generation_for_release, generation_for_unnamed_mask
from .log_paste import unpaste

KINDS = ("slub_alloc_failure", "netdev_unregister_wait", "hung_task_mempool", "hung_task_netdev")

# How sure a finding is, strongest first: the decisive message or frame was printed ("certain");
# a report whose decisive frame was cut but whose other frames point at the path ("likely"); a
# stack without the header that says the task was blocked ("weak").
CERTAIN, LIKELY, WEAK = "certain", "likely", "weak"
CONFIDENCES = (CERTAIN, LIKELY, WEAK)

MAX_EVIDENCE = 5       # raw lines of evidence per finding
MAX_LISTED = 20        # devices, caches, tasks... listed per finding: the ones seen last
MAX_TRACKED = 1000     # entries kept while reading; beyond, the one seen longest ago is dropped
MAX_NAME = 128         # characters of a name shown (a device name has 15, a memcg cache ~85)
MAX_SHOWN = 2048       # characters of an evidence line shown
MAX_JOINED = 8192      # characters a wrapped line may grow to by joining its continuations
MAX_FRAMES = 128       # stack frames kept per stack


@dataclass
class Finding:
    """One kind of incident found in a log, with the facts an SRE needs."""

    kind: str  # one of KINDS
    count: int  # number of messages/reports of this kind
    first_seen: Optional[str]  # timestamp string exactly as printed in the log, or None
    last_seen: Optional[str]
    facts: Dict[str, Any]  # kind-specific facts, JSON-serialisable
    evidence: List[str]  # a few representative raw lines
    left_out: Dict[str, int] = field(default_factory=dict)  # entries not listed in the facts, by kind
    confidence: str = CERTAIN  # the strongest of its reports (one of CONFIDENCES)
    rule: str = ""  # the rule that gave that confidence

    def to_json(self) -> Dict[str, Any]:
        """Plain data: kind, count, first/last seen, confidence and rule, the facts, what was left
        out, the evidence."""
        out = OrderedDict([("kind", self.kind), ("count", self.count),
                           ("first_seen", self.first_seen), ("last_seen", self.last_seen),
                           ("confidence", self.confidence), ("rule", self.rule)])
        out.update(self.facts)
        if self.left_out:
            out["left_out"] = dict(self.left_out)
        out["evidence"] = list(self.evidence)
        return dict(out)


def _nonzero(counts: Dict[str, int]) -> Dict[str, int]:
    return OrderedDict((kind, n) for kind, n in counts.items() if n)


# ---------------------------------------------------------------------------------------------
# Lines: prefixes and stamps
# ---------------------------------------------------------------------------------------------

@dataclass
class LogLine:
    """One log line with its prefixes parsed off."""

    index: int  # position in the input (0-based)
    raw: str  # the line as given, without newline (a wrapped line joined with its continuation)
    text: str  # the message: prefixes, quote markers and surrounding blanks removed
    timestamp: Optional[str] = None  # stamp(s) exactly as printed
    monotonic: Optional[float] = None  # seconds since boot, when printed
    wall: Optional[str] = None  # wall-clock stamp as printed, when printed
    kernel: bool = True  # False for lines syslog/journald attribute to another program
    caller: Optional[str] = None  # printk caller id ("T1234" a task, "C0" a CPU), when printed
    field: Optional[str] = None  # a dmesg --json field line ("time", "fac"...), not a message
    field_value: Any = None


_MONTH = r"[^\W\d_]{3,4}\.?"  # "Mar", "Mär", "Okt" (journalctl follows the locale)
_WALL_HEADER = re.compile(
    r"^Message from syslogd@\S+ at (?P<wall>%s +\d{1,2} \d\d:\d\d:\d\d)" % _MONTH)
_HOST_TAG = r"(?P<host>[^\s:]+) (?P<tag>[A-Za-z_][\w.@/-]*)(?:\[\d{1,10}\])?: ?"
# syslog: "MON DD HH:MM:SS [host] [facility.level] tag[pid]: msg" (no host: a file written by the
# node itself; facility.level: busybox syslogd and others)
_SYSLOG = re.compile(r"^(?P<wall>%s +\d{1,2} \d\d:\d\d:\d\d(?:\.\d{1,9})?) (?:(?P<host>[^\s:]+) )?"
                     r"(?:[a-z]{2,8}\.[a-z]{3,7} )?(?P<tag>[A-Za-z_][\w.@/-]*)(?:\[\d{1,10}\])?: ?(?P<rest>.*)$"
                     % _MONTH)
_ISO = re.compile(r"^(?P<wall>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?"
                  r"(?:Z|[+-]\d\d:?\d\d)?)\s+(?P<rest>.*)$")
_HOST_TAG_ONLY = re.compile(r"^%s(?P<rest>.*)$" % _HOST_TAG)
_KERNEL_TAG = re.compile(r"^kernel:\s?(?P<rest>.*)$")
_SHORT_MONOTONIC_TAG = re.compile(r"^[^\s:]+ kernel: ?(?P<rest>.*)$")
_KMSG = re.compile(r"^(?P<prio>\d{1,4}),(?P<seq>\d{1,20}),(?P<usec>\d{1,20}),[^;]*;(?P<rest>.*)$")
_LEVEL = re.compile(r"^<\d{1,3}>")
_MONO = re.compile(r"^\[\s*(?P<mono>\d{1,12}\.\d{1,9})\]")
_CTIME = re.compile(r"^\[(?P<ctime>[^\W\d_]{2,4}\.? +%s +\d{1,2} \d\d:\d\d:\d\d \d{4})\]" % _MONTH)
_CALLER = re.compile(r"^\s?\[\s*(?P<caller>[TC]\d{1,10})\]")
_WRAPPED = re.compile(r"[ \t,]$")
# A dmesg stamp after console noise another program wrote on the same line (no stamp at the start).
_EMBEDDED_MONO = re.compile(r"\s(?=\[\s*\d{1,12}\.\d{1,9}\]\s)")


def _dmesg_prefix(body: str) -> Tuple[Optional[str], Optional[float], Optional[str], str, Optional[str]]:
    """Split ``[stamp] [caller] msg``: (stamp as printed, monotonic seconds, ctime text, message,
    caller id)."""
    body = _LEVEL.sub("", body, count=1)
    stamp, mono, ctime, caller = None, None, None, None
    match = _MONO.match(body)
    if match:
        stamp, mono = match.group(0), float(match.group("mono"))
    else:
        match = _CTIME.match(body)
        if match:
            stamp, ctime = match.group(0), match.group("ctime")
    if match:
        body = body[match.end():]
        tagged = _CALLER.match(body)
        if tagged:
            caller, body = tagged.group("caller"), body[tagged.end():]
    return stamp, mono, ctime, body.strip(), caller


def parse_line(raw: str, index: int = 0) -> LogLine:
    """Parse one line of any supported format (see the module docstring)."""
    pasted = unpaste(raw)
    if pasted.field is not None:
        return LogLine(index, raw, "", kernel=False, field=pasted.field, field_value=pasted.value)
    body = pasted.text
    if pasted.stamp is not None or pasted.wall is not None or pasted.kernel is not None:
        timestamp = pasted.stamp or pasted.wall
        return LogLine(index, raw, body, timestamp, pasted.monotonic, pasted.wall, pasted.kernel is not False)
    header = _WALL_HEADER.match(body)
    if header:
        wall = header.group("wall")
        return LogLine(index, raw, "", wall, None, wall, kernel=False)
    kmsg = _KMSG.match(body)
    if kmsg:
        usec = kmsg.group("usec")
        return LogLine(index, raw, kmsg.group("rest").strip(), usec, int(usec) / 1e6)
    wall, kernel = None, True
    match = _SYSLOG.match(body)
    if match:
        wall, kernel, body = match.group("wall"), match.group("tag") == "kernel", match.group("rest")
    else:
        match = _ISO.match(body)
        if match:
            wall, body = match.group("wall"), match.group("rest")
            tagged = _HOST_TAG_ONLY.match(body)
            if tagged:
                kernel, body = tagged.group("tag") == "kernel", tagged.group("rest")
        else:
            match = _KERNEL_TAG.match(body)
            if match:
                body = match.group("rest")
    stamp, mono, ctime, body, caller = _dmesg_prefix(body)
    if stamp and wall is None:
        tagged = _SHORT_MONOTONIC_TAG.match(body)  # journalctl -o short-monotonic
        if tagged:
            body = tagged.group("rest").strip()
    if stamp is None and wall is None and "]" in body:
        noise = _EMBEDDED_MONO.search(body)
        if noise:
            stamp, mono, ctime, body, caller = _dmesg_prefix(body[noise.end():])
    timestamp = " ".join(part for part in (wall, stamp) if part) or None
    return LogLine(index, raw, body, timestamp, mono, wall or ctime, kernel, caller)


def _split(lines: Iterable[Any]) -> Iterator[str]:
    """Lines from an iterable of lines or chunks (str or bytes, with or without newlines)."""
    if isinstance(lines, (str, bytes)):
        lines = [lines]
    for chunk in lines:
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", "replace")
        if chunk.endswith("\n"):
            chunk = chunk[:-1]
        for piece in chunk.split("\n"):
            yield piece.rstrip("\r")


class LineJoiner(object):
    """Parses lines as they come, joining a wrapped line with its unstamped continuation (one line of
    lookback; a joined line stops growing at MAX_JOINED characters), and giving the messages of an
    indented ``dmesg --json`` the time and facility of their record. ``push`` returns the line it
    completed, if any; ``flush`` the one it holds."""

    def __init__(self) -> None:
        self.prev = None  # type: Optional[LogLine]
        self.count = 0
        self.record = {}  # type: Dict[str, Any]   # the dmesg --json fields of the record being read

    def push(self, raw: str) -> Optional[LogLine]:
        line = self._record(parse_line(raw, self.count))
        self.count += 1
        prev = self.prev
        continued = prev is not None and line.timestamp is None and line.text and len(prev.raw) < MAX_JOINED
        if continued and prev.raw.endswith(" \\"):  # a shell-style continuation, stamped or not
            self.prev = replace(prev, raw=prev.raw[:-1].rstrip() + " " + raw.strip(),
                                text=(prev.text[:-1].rstrip() + " " + line.text).strip())
            return None
        if continued and prev.timestamp and _WRAPPED.search(prev.raw[-1:]):
            self.prev = replace(prev, raw=prev.raw.rstrip() + " " + raw.strip(),
                                text=(prev.text + " " + line.text).strip())
            return None
        self.prev = line
        return prev

    def flush(self) -> Optional[LogLine]:
        prev, self.prev = self.prev, None
        return prev

    def _record(self, line: LogLine) -> LogLine:
        """LINE with the "time" and "fac" fields of its dmesg --json record (read before it)."""
        if line.field is not None:
            self.record = {} if line.field == "structure" else self.record
            if line.field in ("time", "fac") and len(self.record) < 2:
                self.record[line.field] = line.field_value
            return line
        if not self.record:
            return line
        record, self.record = self.record, {}
        seconds = record.get("time")
        if line.timestamp is not None or seconds is None:
            return line
        return replace(line, timestamp=seconds, monotonic=float(seconds),
                       kernel=record.get("fac") in (None, "kern"))


def iter_lines(lines: Iterable[Any]) -> Iterator[LogLine]:
    """Parse every line as it comes (see :class:`LineJoiner`)."""
    joiner = LineJoiner()
    for raw in _split(lines):
        line = joiner.push(raw)
        if line is not None:
            yield line
    line = joiner.flush()
    if line is not None:
        yield line


def parse_lines(lines: Iterable[Any]) -> List[LogLine]:
    """Every line parsed (see :func:`iter_lines`)."""
    return list(iter_lines(lines))


_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
_MONTHS.update({"Mär": 3, "Mrz": 3, "Mai": 5, "Okt": 10, "Dez": 12})
_WALL_SYSLOG = re.compile(r"^(?P<mon>\S+?)\.? +(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d(?:\.\d+)?)$")
_WALL_CTIME = re.compile(r"^\S+ +(?P<mon>\S+?)\.? +(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d) (?P<y>\d{4})$")
_WALL_ISO = re.compile(r"^(?P<y>\d{4})-(?P<mon>\d\d)-(?P<day>\d\d)[T ](?P<h>\d\d):(?P<m>\d\d):"
                       r"(?P<s>\d\d(?:[.,]\d+)?)(?P<tz>Z|[+-]\d\d:?\d\d)?$")
_YEAR = 365 * 86400


def _wall_seconds(wall: Optional[str]) -> Optional[Tuple[float, bool]]:
    """(seconds on a common scale, whether the stamp has a year) or None if not parseable."""
    if not wall:
        return None
    for pattern, has_year in ((_WALL_ISO, True), (_WALL_CTIME, True), (_WALL_SYSLOG, False)):
        match = pattern.match(wall)
        if not match:
            continue
        parts = match.groupdict()
        month = int(parts["mon"]) if parts["mon"].isdigit() else _MONTHS.get(parts["mon"][:3].title())
        if not month or not 1 <= month <= 12:
            return None
        # Yearless syslog stamps: a common year (timegm takes Feb 29 as Mar 1, no error).
        year = int(parts["y"]) if has_year else 2001
        try:
            seconds = calendar.timegm((year, month, int(parts["day"]), int(parts["h"]),
                                       int(parts["m"]), 0, 0, 0, 0))
        except (ValueError, OverflowError):
            return None
        seconds += float(parts["s"].replace(",", "."))
        tz = parts.get("tz")
        if tz and tz != "Z":
            sign = -1 if tz[0] == "+" else 1
            seconds += sign * (int(tz[1:3]) * 3600 + int(tz[-2:]) * 60)
        return seconds, has_year
    return None


def _mono_key(line: LogLine) -> Tuple[float, int]:
    return line.monotonic, line.index


class _Stamps(object):
    """First and last timestamp and duration of a stream of lines, in constant memory.

    ``span()``: by monotonic stamp for plain dmesg (one boot), else in file order (syslog spans
    reboots and is written in order). ``duration()``: seconds between the first and the last line,
    when their stamps allow it. ``merge`` appends another stream's lines.
    """

    def __init__(self) -> None:
        self.first = self.last = None  # type: Optional[LogLine]   # stamped lines, file order
        self.lo = self.hi = None  # type: Optional[LogLine]        # by (monotonic, index)
        self.mono_only = True      # every stamped line has a monotonic stamp and no wall clock
        self.lines = 0
        self.all_mono = True       # every line has a monotonic stamp
        self.no_wall = True
        self.ordered = True        # monotonic stamps never go back
        self.mono = None  # type: Optional[Tuple[float, float, float, float]]  # first, last, min, max
        self.walls_ok = True       # every line's wall clock parses
        self.walls = None  # type: Optional[List[Tuple[float, bool]]]  # first and last line's

    def add(self, line: LogLine) -> None:
        one = _Stamps()
        one.lines, mono, wall = 1, line.monotonic, line.wall
        if line.timestamp:
            one.first = one.last = one.lo = one.hi = line
            one.mono_only = mono is not None and wall is None
        one.all_mono, one.no_wall = mono is not None, wall is None
        if mono is not None:
            one.mono = (mono, mono, mono, mono)
        seconds = _wall_seconds(wall)
        one.walls_ok = seconds is not None
        if seconds is not None:
            one.walls = [seconds, seconds]
        self.merge(one)

    def merge(self, other: "_Stamps") -> None:
        if not other.lines:
            return
        if not self.lines:
            self.__dict__.update(other.__dict__)
            return
        self.first = self.first or other.first
        self.last = other.last or self.last
        if self.mono_only and other.mono_only and other.lo is not None:
            lines = [line for line in (self.lo, self.hi, other.lo, other.hi) if line is not None]
            self.lo = min(lines, key=_mono_key)
            self.hi = max(lines, key=_mono_key)
        self.mono_only = self.mono_only and other.mono_only
        self.all_mono = self.all_mono and other.all_mono
        self.no_wall = self.no_wall and other.no_wall
        if self.all_mono and self.mono is not None and other.mono is not None:
            self.ordered = self.ordered and other.ordered and self.mono[1] <= other.mono[0]
            self.mono = (self.mono[0], other.mono[1], min(self.mono[2], other.mono[2]),
                         max(self.mono[3], other.mono[3]))
        self.walls_ok = self.walls_ok and other.walls_ok
        if self.walls_ok:
            self.walls = [self.walls[0], other.walls[1]]
        self.lines += other.lines

    def span(self) -> Tuple[Optional[str], Optional[str]]:
        """First and last timestamp as printed (None, None without stamps)."""
        if self.first is None:
            return None, None
        if self.mono_only:
            return self.lo.timestamp, self.hi.timestamp
        return self.first.timestamp, self.last.timestamp

    def duration(self) -> Optional[float]:
        """Seconds between the first and the last line, or None."""
        if self.lines and self.all_mono and (self.no_wall or self.ordered):
            return round(self.mono[3] - self.mono[2], 6)
        if not self.lines or not self.walls_ok:
            return None
        (start, has_year), (end, _) = self.walls
        delta = end - start
        if delta < 0 and not has_year:
            delta += _YEAR  # yearless syslog stamps across New Year
        return round(delta, 6)


class _Evidence(object):
    """Up to MAX_EVIDENCE distinct raw lines: the first ones and the last two (each cut at
    MAX_SHOWN characters)."""

    def __init__(self) -> None:
        self.head = []  # type: List[str]
        self.tail = []  # type: List[str]

    def add(self, line: LogLine) -> None:
        raw = shown(line.raw.strip(), MAX_SHOWN)
        if raw in self.head or raw in self.tail:
            return
        if len(self.head) < MAX_EVIDENCE - 2:
            self.head.append(raw)
            return
        self.tail = (self.tail + [raw])[-2:]

    def lines(self) -> List[str]:
        return self.head + self.tail


def shown(name: str, limit: int = MAX_NAME) -> str:
    """NAME cut to LIMIT characters for display, saying how long it was."""
    if len(name) <= limit:
        return name
    return "%s...[%d characters]" % (name[:limit], len(name))


class _Newest(object):
    """Entries by key, at most MAX_TRACKED of them: one more drops the one touched longest ago
    (counted). ``newest(n)`` gives the N touched last, in the order they were first added."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.items = OrderedDict()  # type: Dict[Any, Tuple[int, Any]]
        self.added = 0
        self.dropped = 0

    def touch(self, key: Any) -> Any:
        item = self.items.get(key)
        if item is None:
            item = self.items[key] = (self.added, self.make(key))
            self.added += 1
            if len(self.items) > MAX_TRACKED:
                self.items.popitem(last=False)
                self.dropped += 1
        else:
            self.items.move_to_end(key)
        return item[1]

    def newest(self, count: int = MAX_LISTED) -> List[Any]:
        kept = list(self.items.values())[-count:]
        return [entry for _, entry in sorted(kept, key=lambda item: item[0])]

    def left_out(self, count: int = MAX_LISTED) -> int:
        """Entries not in ``newest(COUNT)`` (one dropped and seen again counts twice)."""
        return self.dropped + max(0, len(self.items) - count)


# ---------------------------------------------------------------------------------------------
# Stack frames
# ---------------------------------------------------------------------------------------------

_FRAME = re.compile(
    r"^(?P<addr>\[<[0-9a-fA-F]{1,16}>\]\s*)?(?:\?\s*)?"
    r"(?P<fn>[A-Za-z_][\w.$]*)"
    r"(?P<offset>\+0x[0-9a-fA-F]{1,16}/0x[0-9a-fA-F]{1,16})?"
    r"(?:\s+\[[^\]\s]+(?:\s+[0-9a-fA-F]+)?\])?"  # module, optionally with build id
    r"(?P<source>\s+[\w./+-]+:\d{1,7})?"  # file:line of symbolized traces
    r"(?:\s+\[inline\])?\s*$")
# 32-bit ARM's unwinder: "[<c0882f18>] (__schedule) from [<c0883858>] (schedule+0x64/0xe4)": the
# frame is the first function, called from the second (arch/arm/kernel/traps.c dump_backtrace_entry).
_ARM_FRAME = re.compile(r"^\[<[0-9a-fA-F]{1,16}>\] \((?P<fn>[A-Za-z_][\w.$]*)(?:\+0x[0-9a-fA-F]{1,16}/0x[0-9a-fA-F]{1,16})?"
                        r"(?: \[[^\]\s]{1,64}\])?\) from \[<")
_COMPILER_SUFFIXES = frozenset(["isra", "constprop", "part", "cold", "llvm", "lto_priv"])


def parse_frame(text: str) -> Optional[str]:
    """Function name of a stack-trace line (offset, module, ``?`` marker and compiler suffixes
    such as ``.isra.55`` removed), or None if the line is not a frame."""
    text = text.strip()
    match = _FRAME.match(text)
    if not match or not (match.group("addr") or match.group("offset") or match.group("source")):
        match = _ARM_FRAME.match(text) if text.startswith("[<") else None
        return _without_suffixes(match.group("fn")) if match else None
    return _without_suffixes(match.group("fn"))


def _without_suffixes(function: str) -> str:
    """FUNCTION without its trailing compiler suffixes (``.isra.55``, ``.constprop.0``, ``.cold``),
    in one pass from the end (a regex anchored at the end is quadratic on crafted names)."""
    parts = function.split(".")
    end = len(parts)
    while end > 1:
        if parts[end - 1] in _COMPILER_SUFFIXES:
            end -= 1
        elif end > 2 and parts[end - 1].isdecimal() and parts[end - 2] in _COMPILER_SUFFIXES:
            end -= 2
        else:
            break
    return ".".join(parts[:end])


def _base_name(function: str) -> str:
    """Name for matching: since v6.10 allocators are ``*_noprof`` (``mempool_alloc_noprof``)."""
    return function[:-len("_noprof")] if function.endswith("_noprof") else function


# ---------------------------------------------------------------------------------------------
# Kernel release printed in the log
# ---------------------------------------------------------------------------------------------

_RELEASE_PATTERNS = (
    re.compile(r"Linux version (?P<release>\d+\.\d+\S*)"),
    # the taint flags are a few letters and blanks (bounded: unbounded, it is quadratic on blanks)
    re.compile(r"(?:Not tainted|Tainted: [A-Z ]{0,64}?)\s{1,64}(?P<release>\d+\.\d+\.\d+\S*) #"),
)


def release_from_log(lines: Iterable[LogLine]) -> Optional[str]:
    """The kernel release printed in the log (boot banner, oops or hung-task header), if any."""
    return next((release for release in map(_release_in, lines) if release), None)


def _release_in(line: LogLine) -> Optional[str]:
    text = line.text
    if "Linux version" not in text and "ainted" not in text:
        return None
    for pattern in _RELEASE_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group("release")
    return None


def _version(release: Optional[str]) -> Optional[Tuple[int, int]]:
    match = re.match(r"\s*(\d+)\.(\d+)", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


# ---------------------------------------------------------------------------------------------
# SLUB: Unable to allocate memory
# ---------------------------------------------------------------------------------------------

_SLUB_HEADERS = forms.of_signature(forms.SLUB)[:3]  # oldest first; they share no prefix beyond "SLUB:"
_SLUB_CACHE = forms.pattern("slub_cache")
_MEMCG_CACHE = re.compile(r"^(?P<base>.+?)\((?P<id>\d{1,20}):(?P<cgroup>[^()]*)\)$")
_SLUB_NODE = forms.pattern("slub_node")
_SLUB_SUPPRESSED = forms.pattern("slub_suppressed")
# Continuation lines belong to a header printed at most this many lines before (other CPUs' lines
# interleave), and at most this many reports wait for theirs at once.
SLUB_WINDOW = 32
MAX_OPEN_SLUB = 8


@dataclass
class _SlubReport:
    header: LogLine
    cache: Optional[Tuple[str, Optional[int], Optional[str]]] = None  # name, memcg id, cgroup
    nodes: int = 0  # "node N:" lines attached
    evidence: List[LogLine] = field(default_factory=list)  # the header and the next line
    stamps: _Stamps = field(default_factory=_Stamps)


def _numbers() -> "OrderedDict[int, None]":
    return OrderedDict()


def _slub_header(text: str) -> Optional[Any]:
    if "SLUB" not in text:
        return None
    return next((m for m in (form.pattern.search(text) for form in _SLUB_HEADERS) if m), None)


class _SlubCollector:
    """Groups each SLUB header with its ``cache:`` and ``node N:`` lines and counts the reports by
    cache and gfp mask as they close.

    Two CPUs printing at once interleave their lines: a continuation line goes to the open report
    of the same printk caller when the log prints caller ids (``[T1234]``/``[C0]``), else to the
    newest open report that still needs such a line, never to a header printed after it (by their
    monotonic stamps); a report stays open for SLUB_WINDOW lines. A continuation line with no report
    to go to waits SLUB_WINDOW lines for a header printed before it that comes later in the file (a
    log exported newest first); then it is an orphan (an excerpt that starts mid-report), counted
    and never given to another report.
    """

    def __init__(self) -> None:
        self.open = []  # type: List[_SlubReport]   # oldest first, at most MAX_OPEN_SLUB
        self.pending = []  # type: List[Tuple[LogLine, Any]]  # continuations with no header yet
        self.reports = 0
        self.suppressed = 0
        self.orphans = 0
        self.caches = _Newest(lambda key: OrderedDict([
            ("cache", shown(key[0])), ("memcg_id", key[1]), ("cgroup", shown(key[2]) if key[2] else key[2]),
            ("count", 0)]))
        self.gfps = _Newest(lambda key: OrderedDict([("value", key[0]), ("printed", key[1]), ("count", 0)]))
        self.numbers = {"nodes": _numbers(), "requested_nodes": _numbers(), "cpus": _numbers()}
        self.stamps = _Stamps()
        self.evidence = _Evidence()

    def _number(self, kind: str, value: int) -> None:
        numbers = self.numbers[kind]
        if len(numbers) < MAX_TRACKED:
            numbers[value] = None

    def feed(self, line: LogLine) -> bool:
        """Take LINE if it is a SLUB line (header, continuation, suppressed count): True if taken."""
        text = line.text
        self._expire(line.index)
        header = _slub_header(text)
        if header:
            self._header(line, header)
            return True
        suppressed = _SLUB_SUPPRESSED.search(text) if "suppressed" in text else None
        if suppressed:
            self.suppressed += int(suppressed.group("n"))
            return True
        continuation = (_SLUB_CACHE.match(text) if text.startswith("cache:") else
                        _SLUB_NODE.match(text) if text.startswith("node ") else None)
        if continuation is None:
            return False
        report = self._owner(line, continuation)
        if report is not None:
            self._continue(report, line, continuation)
        elif len(self.pending) < MAX_OPEN_SLUB * 4:
            self.pending.append((line, continuation))
        else:
            self.orphans += 1
        return True

    def _continue(self, report: _SlubReport, line: LogLine, continuation: Any) -> None:
        if "name" in continuation.groupdict():
            report.cache = _cache_key(continuation.group("name").strip())
        else:
            report.nodes += 1
            self._number("nodes", int(continuation.group("node")))
        self._attach(report, line)

    def _header(self, line: LogLine, header: Any) -> None:
        groups = header.groupdict()
        gfp, flags = groups.get("gfp") or groups.get("gfp_old"), groups.get("flags")
        self._number("requested_nodes", int(groups["node"]))
        if groups.get("cpu"):
            self._number("cpus", int(groups["cpu"]))
        report = _SlubReport(header=line)
        self.open.append(report)
        if len(self.open) > MAX_OPEN_SLUB:
            self._close(self.open.pop(0))
        self._attach(report, line)
        # newest in the file first: a log exported newest first lists them latest first
        for waiting in [p for p in reversed(self.pending) if _fits(report, p[0], p[1], after=True)]:
            self.pending.remove(waiting)
            self._continue(report, *waiting)
        self.reports += 1
        if gfp:
            printed = tuple(f for f in flags.split("|") if f) if flags is not None else None
            self.gfps.touch(("%#x" % int(gfp, 16), printed))["count"] += 1

    def _owner(self, line: LogLine, continuation: Any) -> Optional[_SlubReport]:
        """The newest open report LINE continues, or None."""
        return next((r for r in reversed(self.open) if _fits(r, line, continuation, after=False)), None)

    def _expire(self, index: int) -> None:
        while self.open and index - self.open[0].header.index > SLUB_WINDOW:
            self._close(self.open.pop(0))
        while self.pending and index - self.pending[0][0].index > SLUB_WINDOW:
            self.pending.pop(0)
            self.orphans += 1

    def _attach(self, report: _SlubReport, line: LogLine) -> None:
        report.stamps.add(line)
        if len(report.evidence) < 2:
            report.evidence.append(line)

    def _close(self, report: _SlubReport) -> None:
        if report.cache is not None:
            self.caches.touch(report.cache)["count"] += 1
        self.stamps.merge(report.stamps)
        for line in report.evidence:
            self.evidence.add(line)

    def _close_all(self) -> None:
        while self.open:
            self._close(self.open.pop(0))
        self.orphans += len(self.pending)
        self.pending = []

    def finding(self, release: Optional[str]) -> Optional[Finding]:
        self._close_all()
        if not self.reports:
            return None
        gfps = OrderedDict()  # type: Dict[str, Dict[str, Any]]
        for entry in self.gfps.newest(MAX_TRACKED):
            known = gfps.get(entry["value"])
            if known is None:
                printed = list(entry["printed"]) if entry["printed"] is not None else None
                flags, source = _gfp_names(entry["value"], printed, release)
                known = gfps[entry["value"]] = OrderedDict([
                    ("value", entry["value"]), ("flags", flags), ("flags_source", source), ("count", 0)])
            known["count"] += entry["count"]
        first, last = self.stamps.span()
        facts = OrderedDict([
            ("caches", [dict(entry) for entry in self.caches.newest()]),
            ("gfp", [dict(entry) for entry in list(gfps.values())[-MAX_LISTED:]]),
        ])
        for kind, numbers in self.numbers.items():
            facts[kind] = sorted(numbers)
        facts["callbacks_suppressed"] = self.suppressed
        facts["orphan_lines"] = self.orphans
        left_out = OrderedDict([("caches", self.caches.left_out()),
                                ("gfp", self.gfps.dropped + max(0, len(gfps) - MAX_LISTED))])
        return Finding("slub_alloc_failure", self.reports, first, last, dict(facts),
                       self.evidence.lines(), _nonzero(left_out), CERTAIN,
                       "a SLUB allocation failure header (mm/slub.c slab_out_of_memory)")


def _fits(report: _SlubReport, line: LogLine, continuation: Any, after: bool) -> bool:
    """Whether LINE (a cache or node line) can be REPORT's: the same printk caller when both print
    one, a cache line only where none is yet, and not printed before the header (by monotonic stamp;
    AFTER: the line came first in the file, so it needs stamps that show it)."""
    header = report.header
    if line.caller is not None and header.caller is not None and line.caller != header.caller:
        return False
    if "name" in continuation.groupdict() and report.cache is not None:
        return False
    if line.monotonic is None or header.monotonic is None:
        return not after
    return line.monotonic >= header.monotonic


def _cache_key(name: str) -> Tuple[str, Optional[int], Optional[str]]:
    """(cache, memcg id, cgroup) of a printed cache name: ``kmalloc-1024(1793:<cgroup>)`` is a
    per-memcg cache (until v5.8); ``kmalloc-cg-256`` and ``kmalloc-rnd-05-64`` are plain names."""
    memcg = _MEMCG_CACHE.match(name)
    if memcg:
        return memcg.group("base"), int(memcg.group("id")), memcg.group("cgroup")
    return name, None, None


def _gfp_names(value: str, printed: Optional[List[str]], release: Optional[str]
               ) -> Tuple[List[str], str]:
    """Flag names of a gfp value and where they come from: "log" or the layout decoded with."""
    if printed is not None:
        return printed, "log"
    mask = int(value, 16)
    generation = generation_for_release(release)
    if generation == UNKNOWN:
        # Only v3.x..v4.5 print the mask without names; the value tells the two layouts apart.
        generation = generation_for_unnamed_mask(mask)
    return decode_gfp(mask, generation), generation


# ---------------------------------------------------------------------------------------------
# unregister_netdevice: waiting for DEV to become free (+ ref_tracker)
# ---------------------------------------------------------------------------------------------

_NETDEV_WAIT = forms.pattern("netdev_wait")
_REF_TRACKER = forms.pattern("ref_tracker_users")
_REF_LEAKED = forms.pattern("ref_tracker_leaked")  # v5.17 to v6.4: no object, no user count
# Frames of the reference-taking plumbing; the first other frame is the holder.
_TRACKER_PLUMBING = {"ref_tracker_alloc", "__netdev_tracker_alloc", "netdev_tracker_alloc",
                     "netdev_hold", "dev_hold", "__dev_hold", "dev_hold_track"}
# Commit 919067cc845f "net: add CONFIG_PCPU_DEV_REFCNT" and its fix "net: set initial device
# refcount to 1" (both v5.13): the device keeps one base reference while it waits.
_BASE_REFERENCE_SINCE = (5, 13)


MAX_TRACKER_STACKS = 8  # distinct ref_tracker stacks kept per device
_LOOKBACK = 64          # message identities remembered per device to count copies once


class _Device(object):
    """One device's wait messages, folded as they come."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages = 0
        self.recent = OrderedDict()  # type: Dict[Any, None]   # the last _LOOKBACK event keys
        self.distinct = 0
        self.max_count = self.last_count = 0
        self.stamps = _Stamps()
        self.first_line = self.last_line = None  # type: Optional[LogLine]
        self.trackers = OrderedDict()  # type: Dict[Tuple[str, ...], Dict[str, Any]]
        self.trackers_left_out = 0

    def message(self, line: LogLine, count: int) -> bool:
        """Count one message; True when it is a new event (not a copy of one just seen)."""
        self.messages += 1
        self.max_count = count if self.messages == 1 else max(self.max_count, count)
        self.last_count = count
        self.stamps.add(line)
        self.first_line = self.first_line or line
        self.last_line = line
        key = _event_key(line)
        if key in self.recent:
            return False
        self.recent[key] = None
        if len(self.recent) > _LOOKBACK:
            self.recent.popitem(last=False)
        self.distinct += 1
        return True


class _NetdevCollector:
    """Collects the wait messages per device and the ref_tracker stacks printed after them."""

    def __init__(self) -> None:
        self.devices = _Newest(_Device)
        self.messages = 0
        self.distinct = 0
        self.stamps = _Stamps()
        self.last = None  # type: Optional[_Device]
        self.tracker = None  # type: Optional[Dict[str, Any]]
        self.saw_ref_tracker = False

    def feed(self, line: LogLine) -> None:
        text = line.text
        if self.tracker is not None:
            function = parse_frame(text)
            if function:
                if len(self.tracker["frames"]) < MAX_FRAMES:
                    self.tracker["frames"].append(function)
                return
            self._end_tracker()
        wait = _NETDEV_WAIT.search(text) if "unregister_netdevice" in text else None
        if wait:
            device = self.devices.touch(wait.group("dev"))
            self.messages += 1
            self.distinct += device.message(line, int(wait.group("count")))
            self.stamps.add(line)
            self.last = device
            return
        tracker = _REF_TRACKER.match(text) if text.startswith("ref_tracker") else None
        leaked = _REF_LEAKED.match(text) if text.startswith("leaked") else None
        if tracker or leaked:
            self.saw_ref_tracker = True
            if self.last is not None:
                self.tracker = {"object": tracker.group("object") if tracker else None,
                                "users": tracker.group("users") if tracker else None,
                                "frames": [], "line": line}

    def _end_tracker(self) -> None:
        tracker, self.tracker = self.tracker, None
        if tracker is None or self.last is None:
            return
        key = tuple(tracker["frames"])
        known = self.last.trackers.get(key)
        if known is not None:
            known["reports"] += 1
            return
        if len(self.last.trackers) >= MAX_TRACKER_STACKS:
            self.last.trackers_left_out += 1
            return
        holder = next((f for f in tracker["frames"] if _base_name(f) not in _TRACKER_PLUMBING), None)
        self.last.trackers[key] = OrderedDict([
            ("object", tracker["object"] and shown(tracker["object"])), ("users", tracker["users"]),
            ("holder", holder),
            ("frames", tracker["frames"]), ("reports", 1), ("_line", tracker["line"])])

    def finding(self, release: Optional[str], release_source: str) -> Optional[Finding]:
        self._end_tracker()
        if not self.messages:
            return None
        meaning = usage_count_meaning(release, release_source, self.saw_ref_tracker)
        base = meaning["base_references"]
        devices, evidence = [], _Evidence()
        listed = self.devices.newest()
        for device in listed:
            first, last = device.stamps.span()
            trackers = [OrderedDict((k, v) for k, v in entry.items() if k != "_line")
                        for entry in device.trackers.values()]
            devices.append(OrderedDict([
                ("name", shown(device.name)), ("messages", device.messages),
                ("distinct_events", device.distinct),
                ("max_usage_count", device.max_count), ("last_usage_count", device.last_count),
                ("leaked_references", device.max_count - base if base is not None else None),
                ("first_seen", first), ("last_seen", last),
                ("duration_seconds", device.stamps.duration()),
                ("ref_tracker", [dict(entry) for entry in trackers]),
            ]))
            for line in [device.first_line] + [e["_line"] for e in device.trackers.values()][:1]:
                evidence.add(line)
        evidence.add(listed[-1].last_line)
        first, last = self.stamps.span()
        facts = OrderedDict([("devices", [dict(d) for d in devices]),
                             ("distinct_events", self.distinct),
                             ("leaked_references", meaning)])
        left_out = OrderedDict([("devices", self.devices.left_out()),
                                ("ref_tracker stacks", sum(d.trackers_left_out for d in listed))])
        return Finding("netdev_unregister_wait", self.messages, first, last, dict(facts),
                       evidence.lines(), _nonzero(left_out), CERTAIN,
                       "an unregister_netdevice wait message (net/core/dev.c netdev_wait_allrefs)")


def _event_key(line: LogLine) -> Any:
    """Identity of one printed message: its monotonic stamp if printed (a syslog wall copy of a
    dmesg line is the same event), else stamp and text, else the line itself."""
    if line.monotonic is not None:
        return line.monotonic
    if line.timestamp:
        return (line.timestamp, line.text)
    return ("line", line.index)


def usage_count_meaning(release: Optional[str], release_source: str, saw_ref_tracker: bool
                         ) -> Dict[str, Any]:
    """What "Usage count = N" means on this kernel: how many references are leaked."""
    version = _version(release)
    if version is not None:
        base = 1 if version >= _BASE_REFERENCE_SINCE else 0
        basis = "kernel release %s (%s)" % (release, release_source)
    elif saw_ref_tracker:
        base, basis = 1, "ref_tracker output in the log (CONFIG_NET_DEV_REFCNT_TRACKER, v5.17+)"
    else:
        base, basis = None, "unknown: no kernel release given or printed in the log"
    if base == 1:
        text = ("Since v5.13 the unregistering device keeps one base reference, so "
                "'Usage count = N' means N-1 leaked references (one leak prints 2).")
    elif base == 0:
        text = ("Before v5.13 the count is exactly the references still held, so "
                "'Usage count = N' means N leaked references (one leak prints 1).")
    else:
        text = ("Kernel unknown: 'Usage count = N' means N leaked references on kernels before "
                "v5.13 (3.10, 4.x, 5.4, 5.10) and N-1 from v5.13 on (6.x), where the device keeps "
                "one base reference. Pass the kernel release to decide.")
    return OrderedDict([("base_references", base), ("basis", basis), ("explanation", text)])


# ---------------------------------------------------------------------------------------------
# Blocked-task stack dumps (hung-task watchdog, SysRq w/t)
# ---------------------------------------------------------------------------------------------

# Names are bounded (a comm has 15 characters): `.+` here is quadratic on "INFO: task a:1 " repeated.
_HUNG = forms.pattern("hung_task_header")
_TASK_OLD = forms.pattern("task_line_old")
_TASK_NEW = forms.pattern("task_line_5_9")
_WORKQUEUE = forms.pattern("workqueue")
_MEMCG_OOM = tuple(form.pattern for form in forms.of_signature(forms.MEMCG_OOM))
_NETNS_WORKER = re.compile(r"^netns cleanup_net\b")
_TASK_END = re.compile(r"^</TASK>$")
_TRACE_NOISE = re.compile(
    r"^(?:Call [Tt]race:|<(?:TASK|IRQ|/IRQ|NMI|/NMI|SOFTIRQ|/SOFTIRQ|EOI)>"
    r"|(?:RIP|RSP|RAX|RBX|RCX|RDX|RSI|RDI|RBP|R\d{1,2}|FS|CS|CR2|Code):.*"
    r"|\?\s*0x[0-9a-fA-F]+.*"
    # hex words (stack contents), split one way only: "(?:HEX{8,16}\s*)+$" was exponential
    r"|[0-9a-fA-F]{8,}(?:\s+[0-9a-fA-F]{8,})*\s*)$")
_MAX_PREAMBLE = 12  # lines between a task header and its first frame (Tainted, echo 0 >, ...)

_MEMPOOL_FRAMES = {"mempool_alloc", "bvec_alloc"}
# Reclaim writeback: the path that allocates bios from the mempool when slab allocations fail.
_WRITEBACK = re.compile(r"writepage|pageout|^shrink_(?:page|folio)_list$")
# The device unregistration wait itself, and the netns and rtnl paths that queue behind it.
_NETDEV_WAIT_FRAMES = re.compile(r"^(?:netdev_run_todo|netdev_wait_allrefs|unregister_netdevice)")
_NETDEV_FRAMES = {"copy_net_ns", "cleanup_net"}
_NETDEV_PREFIXES = re.compile(r"^(?:netdev_run_todo|netdev_wait_allrefs|unregister_netdevice|_*rtnl(?:_net)?_lock)")


@dataclass
class _TaskDump:
    task: Optional[str]
    pid: Optional[int]
    state: Optional[str] = None
    blocked_seconds: Optional[int] = None
    workqueue: Optional[str] = None
    frames: List[Tuple[str, LogLine]] = field(default_factory=list)  # the first MAX_FRAMES
    first_line: Optional[LogLine] = None
    stamps: _Stamps = field(default_factory=_Stamps)
    preamble: int = 0
    workqueue_line: Optional[LogLine] = None
    headless: bool = False  # the excerpt starts inside the dump: no header says the task was blocked

    @property
    def blocked(self) -> bool:
        """Reported by the hung-task watchdog, dumped in D state (SysRq), or headless."""
        return self.blocked_seconds is not None or self.state == "D" or self.headless

    def add(self, line: LogLine) -> None:
        self.first_line = self.first_line or line
        self.stamps.add(line)


class _TaskCollector:
    """Cuts the log into blocked-task dumps: header, task line, Call Trace, frames; each dump is
    folded into the kinds it matches when it ends."""

    def __init__(self) -> None:
        self.current = None  # type: Optional[_TaskDump]
        self.kinds = [_TaskKind("hung_task_mempool", _mempool_frames),
                      _TaskKind("hung_task_netdev", _netdev_frames)]

    def _close(self) -> None:
        dump, self.current = self.current, None
        if dump is not None and dump.blocked:
            for kind in self.kinds:
                kind.fold(dump)

    def feed(self, line: LogLine) -> None:
        text = line.text
        hung = _HUNG.search(text) if "INFO: task" in text else None
        if hung:
            self._close()
            self.current = _TaskDump(hung.group("task"), int(hung.group("pid")),
                                     blocked_seconds=int(hung.group("seconds")))
            self.current.add(line)
            return
        task = _TASK_NEW.match(text) or _TASK_OLD.match(text)
        if task:
            pid, current = int(task.group("pid")), self.current
            if current is None or current.frames or current.state or current.pid not in (None, pid):
                self._close()
                current = self.current = _TaskDump(task.group("task").strip(), pid)
            current.state = task.group("state")
            current.add(line)
            return
        current = self.current
        if current is None:
            workqueue = _WORKQUEUE.match(text) if text.startswith("Workqueue:") else None
            if workqueue:  # a dump whose header the excerpt cut off
                self.current = _TaskDump(None, None, headless=True)
                self._workqueue(self.current, workqueue, line)
            return
        if not text:
            self._close()
            return
        function = parse_frame(text)
        if function:
            if len(current.frames) < MAX_FRAMES:
                current.frames.append((function, line))
            current.add(line)
        elif _TASK_END.match(text):
            current.add(line)
            self._close()
        elif _TRACE_NOISE.match(text):
            current.add(line)
        elif current.frames:
            self._close()
        else:
            workqueue = _WORKQUEUE.match(text)
            if workqueue:
                self._workqueue(current, workqueue, line)
                return
            current.preamble += 1
            if current.preamble > _MAX_PREAMBLE:
                self._close()
            else:
                current.add(line)

    @staticmethod
    def _workqueue(dump: _TaskDump, match: Any, line: LogLine) -> None:
        dump.workqueue, dump.workqueue_line = match.group("workqueue"), line
        dump.add(line)

    def findings(self) -> List[Finding]:
        self._close()
        return [finding for finding in (kind.finding() for kind in self.kinds) if finding is not None]


class _TaskKind(object):
    """The blocked-task dumps whose frames MATCHER accepts; tasks merged by (name, pid)."""

    def __init__(self, kind: str, matcher: Any) -> None:
        self.kind, self.matcher = kind, matcher
        self.count = 0
        self.tasks = _Newest(lambda key: OrderedDict())
        self.stamps = _Stamps()
        self.evidence = _Evidence()
        self.confidence = None  # type: Optional[str]
        self.rule = ""

    def fold(self, dump: _TaskDump) -> None:
        frames = [f for f, _ in dump.frames]
        verdict = self.matcher(frames, dump.workqueue)
        if verdict is None:
            return
        hits, confidence, rule = verdict
        if dump.headless:
            confidence, rule = WEAK, "the excerpt starts inside the dump (no header says it was blocked): " + rule
        self.count += 1
        entry = self.tasks.touch((dump.task, dump.pid))
        if not entry:
            entry.update([
                ("task", shown(dump.task) if dump.task is not None else None), ("pid", dump.pid),
                ("state", dump.state), ("blocked_seconds", dump.blocked_seconds),
                ("workqueue", shown(dump.workqueue) if dump.workqueue is not None else None),
                ("reports", 0), ("confidence", confidence), ("rule", rule),
                ("matched_frames", hits), ("frames", frames)])
        else:
            if dump.blocked_seconds is not None:
                entry["blocked_seconds"] = max(entry["blocked_seconds"] or 0, dump.blocked_seconds)
            if len(frames) > len(entry["frames"]):
                entry["frames"], entry["matched_frames"] = frames, hits
            if _stronger(confidence, entry["confidence"]):
                entry["confidence"], entry["rule"] = confidence, rule
        entry["reports"] += 1
        if self.confidence is None or _stronger(confidence, self.confidence):
            self.confidence, self.rule = confidence, rule
        self.stamps.merge(dump.stamps)
        self.evidence.add(dump.first_line)
        key = next((hit for hit in hits if hit in _MEMPOOL_FRAMES), hits[0] if hits else None)
        decisive = next((line for f, line in dump.frames if _base_name(f) == key), dump.workqueue_line)
        if decisive is not None:
            self.evidence.add(decisive)

    def finding(self) -> Optional[Finding]:
        if not self.count:
            return None
        first, last = self.stamps.span()
        return Finding(self.kind, self.count, first, last,
                       {"tasks": [dict(entry) for entry in self.tasks.newest()]}, self.evidence.lines(),
                       _nonzero({"tasks": self.tasks.left_out()}), self.confidence, self.rule)


def _stronger(confidence: str, than: str) -> bool:
    return CONFIDENCES.index(confidence) < CONFIDENCES.index(than)


Match = Optional[Tuple[List[str], str, str]]  # (matched frames, confidence, rule), None: no match


def _mempool_frames(functions: List[str], workqueue: Optional[str] = None) -> Match:
    """A mempool/bvec stall: mempool_alloc or bvec_alloc anywhere (certain), or io_schedule_timeout
    with a reclaim-writeback frame, the stack cut before mempool_alloc (likely)."""
    bases = [_base_name(f) for f in functions]
    writeback = [f for f in bases if _WRITEBACK.search(f)]
    if _MEMPOOL_FRAMES.intersection(bases):
        confidence, rule = CERTAIN, "mempool_alloc/bvec_alloc in a blocked task's stack"
    elif "io_schedule_timeout" in bases and writeback:
        confidence, rule = LIKELY, ("io_schedule_timeout under a reclaim-writeback frame (%s): the "
                                    "stack shows the writeback stall but not mempool_alloc" % writeback[0])
    else:
        return None
    relevant = _MEMPOOL_FRAMES | {"io_schedule_timeout"} | set(writeback)
    return list(OrderedDict.fromkeys(f for f in bases if f in relevant)), confidence, rule


def _netdev_frames(functions: List[str], workqueue: Optional[str] = None) -> Match:
    """Device unregistration (certain: netdev_run_todo, netdev_wait_allrefs...), the netns or rtnl
    paths queued behind it (likely), or a netns cleanup_net worker with no useful frame (likely)."""
    bases = [_base_name(f) for f in functions]
    hits = list(OrderedDict.fromkeys(
        f for f in bases if f in _NETDEV_FRAMES or _NETDEV_PREFIXES.match(f)))
    if any(_NETDEV_WAIT_FRAMES.match(f) for f in hits):
        return hits, CERTAIN, "the device unregistration wait (netdev_run_todo) in a blocked task's stack"
    if hits:
        return hits, LIKELY, "netns setup/teardown or the rtnl lock in a blocked task's stack (%s)" % hits[0]
    if workqueue is not None and _NETNS_WORKER.match(workqueue):
        return [], LIKELY, "a blocked 'netns cleanup_net' worker whose stack has no decisive frame"
    return None


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

@dataclass
class LogAnalysis:
    """The findings of one log and what its lines were: ``analysable`` is False when no line looks
    like a kernel log (empty input, random bytes), so a lack of findings means nothing."""

    findings: List[Finding]
    lines: int = 0            # lines read (a wrapped line and its continuation count two)
    kernel_lines: int = 0     # lines the kernel wrote (syslog lines of other programs left out)
    stamped_lines: int = 0    # kernel lines with a timestamp or record prefix
    text_lines: int = 0       # other non-empty kernel lines of printable text
    garbled_lines: int = 0    # other non-empty kernel lines: undecodable bytes or control characters
    memcg_oom_kills: int = 0  # memory cgroup OOM kills: a user-memory limit, not the kmem incident

    @property
    def analysable(self) -> bool:
        return bool(self.findings) or self.stamped_lines > 0 or self.text_lines > self.garbled_lines


class LogAnalyser(object):
    """The analysis of a log fed line by line (a file, or a live log followed for as long as it runs).
    Memory is bounded by the MAX_* constants however many lines it is fed.

    ``kernel_release`` (``uname -r`` of the kernel that wrote the log) decides how gfp masks
    without names and "Usage count" values are read; without it the release printed in the log
    (the first one) is used, if any.
    """

    def __init__(self, kernel_release: Optional[str] = None) -> None:
        self.kernel_release = kernel_release
        self.printed = None  # type: Optional[str]
        self.joiner = LineJoiner()
        self.counts = LogAnalysis([])
        self.slub, self.netdev, self.tasks = _SlubCollector(), _NetdevCollector(), _TaskCollector()

    def feed(self, raw: Any) -> None:
        """Analyse RAW: one line or a chunk of lines (str or bytes, with or without newlines)."""
        for piece in _split(raw):
            self._take(self.joiner.push(piece))

    def _take(self, line: Optional[LogLine]) -> None:
        if line is None:
            return
        out = self.counts
        out.lines = line.index + 1
        if not line.kernel:
            return
        out.kernel_lines += 1
        if line.timestamp:
            out.stamped_lines += 1
        elif line.text:
            if line.text.isprintable() and "\ufffd" not in line.text:
                out.text_lines += 1
            else:
                out.garbled_lines += 1
        if self.printed is None and self.kernel_release is None:
            self.printed = _release_in(line)
        if "Memory cgroup out of memory" in line.text and any(p.search(line.text) for p in _MEMCG_OOM):
            out.memcg_oom_kills += 1
        if not self.slub.feed(line):  # a SLUB line interleaved in a stack does not end the stack
            self.netdev.feed(line)
            self.tasks.feed(line)

    def end_of_record(self) -> None:
        """Analyse the line held back for a continuation now: a /dev/kmsg record is whole, so a follower
        calls this after each one (else the newest message waits for the next record to be seen)."""
        self._take(self.joiner.flush())

    def reports(self) -> Dict[str, int]:
        """Reports seen so far by kind: SLUB headers and wait messages as they come, blocked-task
        dumps once they end. Cheap; for a follower to notice that something new was logged."""
        return OrderedDict([("slub_alloc_failure", self.slub.reports),
                            ("netdev_unregister_wait", self.netdev.messages)]
                           + [(kind.kind, kind.count) for kind in self.tasks.kinds])

    def finish(self) -> "LogAnalysis":
        """The findings of everything fed, in KINDS order, with the line counts. Ends the input:
        feed nothing after it."""
        self.end_of_record()
        release, source = ((self.kernel_release, "given") if self.kernel_release is not None
                           else (self.printed, "printed in the log"))
        found = [self.slub.finding(release), self.netdev.finding(release, source)] + self.tasks.findings()
        by_kind = {finding.kind: finding for finding in found if finding is not None}
        return replace(self.counts, findings=[by_kind[kind] for kind in KINDS if kind in by_kind])


def analyse_log(lines: Iterable[Any], kernel_release: Optional[str] = None) -> LogAnalysis:
    """Findings of the four KINDS in kernel log lines (any supported format), in KINDS order, and
    counts of the lines: one pass of a :class:`LogAnalyser`, in bounded memory."""
    analyser = LogAnalyser(kernel_release)
    for chunk in lines if not isinstance(lines, (str, bytes)) else [lines]:
        analyser.feed(chunk)
    return analyser.finish()


def find_incidents(lines: Iterable[Any], kernel_release: Optional[str] = None) -> List[Finding]:
    """The findings of :func:`analyse_log`."""
    return analyse_log(lines, kernel_release).findings
