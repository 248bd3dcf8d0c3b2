"""Find the two bpftools incidents in kernel log text: kmem/SLUB allocation failures with
mempool stalls, and netdev reference leaks ("waiting for eth0 to become free").

Accepted input, mixed freely: raw ``dmesg`` (``[  122.222455] msg``), ``dmesg -T``
(``[Thu May 14 23:17:24 2020] msg``, any locale's weekday), syslog and journald short
(``Mar  5 03:41:22 host kernel: [732240.608081] msg``), ISO stamps, syslogd's wall broadcast
(``Message from syslogd@host at ...`` then `` kernel:[ts] msg``), ``/dev/kmsg`` records
(``6,1234,5678901,-;msg``), lines without stamps, mail-quoted or indented lines, other programs'
lines in between (syslog lines not tagged ``kernel`` are skipped), and lines a mail client
wrapped: a stamped line ending in a space (format=flowed) or a comma continues on the next
unstamped line.

``find_incidents(lines)`` returns one :class:`Finding` per kind found, in the order of
:data:`KINDS`. Timestamps are reported exactly as printed; a syslog line that also carries the
dmesg stamp reports both (``"Mar  5 03:41:22 [732240.608081]"``), a ``/dev/kmsg`` record its
microseconds field.
"""
import calendar
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .gfp import UNKNOWN, decode_gfp, generation_for_release, generation_for_unnamed_mask

KINDS = ("slub_alloc_failure", "netdev_unregister_wait", "hung_task_mempool", "hung_task_netdev")

MAX_EVIDENCE = 5


@dataclass
class Finding:
    """One kind of incident found in a log, with the facts an SRE needs."""

    kind: str  # one of KINDS
    count: int  # number of messages/reports of this kind
    first_seen: Optional[str]  # timestamp string exactly as printed in the log, or None
    last_seen: Optional[str]
    facts: Dict[str, Any]  # kind-specific facts, JSON-serialisable
    evidence: List[str]  # a few representative raw lines

    def to_json(self) -> Dict[str, Any]:
        """Plain data: kind, count, first/last seen, the facts, then the evidence."""
        out = OrderedDict([("kind", self.kind), ("count", self.count),
                           ("first_seen", self.first_seen), ("last_seen", self.last_seen)])
        out.update(self.facts)
        out["evidence"] = list(self.evidence)
        return dict(out)


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


_MONTH = r"[^\W\d_]{3,4}\.?"  # "Mar", "Mär", "Okt" (journalctl follows the locale)
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+")
_WALL_HEADER = re.compile(
    r"^Message from syslogd@\S+ at (?P<wall>%s +\d{1,2} \d\d:\d\d:\d\d)" % _MONTH)
_HOST_TAG = r"(?P<host>[^\s:]+) (?P<tag>[A-Za-z_][\w.@/-]*)(?:\[\d{1,10}\])?: ?"
_SYSLOG = re.compile(r"^(?P<wall>%s +\d{1,2} \d\d:\d\d:\d\d(?:\.\d{1,9})?) %s(?P<rest>.*)$"
                     % (_MONTH, _HOST_TAG))
_ISO = re.compile(r"^(?P<wall>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?"
                  r"(?:Z|[+-]\d\d:?\d\d)?)\s+(?P<rest>.*)$")
_HOST_TAG_ONLY = re.compile(r"^%s(?P<rest>.*)$" % _HOST_TAG)
_KERNEL_TAG = re.compile(r"^kernel:\s?(?P<rest>.*)$")
_SHORT_MONOTONIC_TAG = re.compile(r"^[^\s:]+ kernel: ?(?P<rest>.*)$")
_KMSG = re.compile(r"^(?P<prio>\d{1,4}),(?P<seq>\d{1,20}),(?P<usec>\d{1,20}),[^;]*;(?P<rest>.*)$")
_LEVEL = re.compile(r"^<\d{1,3}>")
_MONO = re.compile(r"^\[\s*(?P<mono>\d{1,12}\.\d{1,9})\]")
_CTIME = re.compile(r"^\[(?P<ctime>[^\W\d_]{2,4}\.? +%s +\d{1,2} \d\d:\d\d:\d\d \d{4})\]" % _MONTH)
_CALLER = re.compile(r"^\s?\[\s*[TC]\d{1,10}\]")
_WRAPPED = re.compile(r"[ \t,]$")


def _dmesg_prefix(body: str) -> Tuple[Optional[str], Optional[float], Optional[str], str]:
    """Split ``[stamp] msg``: (stamp as printed, monotonic seconds, ctime text, message)."""
    body = _LEVEL.sub("", body, count=1)
    stamp, mono, ctime = None, None, None
    match = _MONO.match(body)
    if match:
        stamp, mono = match.group(0), float(match.group("mono"))
    else:
        match = _CTIME.match(body)
        if match:
            stamp, ctime = match.group(0), match.group("ctime")
    if match:
        body = _CALLER.sub("", body[match.end():], count=1)
    return stamp, mono, ctime, body.strip()


def parse_line(raw: str, index: int = 0) -> LogLine:
    """Parse one line of any supported format (see the module docstring)."""
    body = _QUOTE.sub("", raw).strip()
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
    stamp, mono, ctime, body = _dmesg_prefix(body)
    if stamp and wall is None:
        tagged = _SHORT_MONOTONIC_TAG.match(body)  # journalctl -o short-monotonic
        if tagged:
            body = tagged.group("rest").strip()
    timestamp = " ".join(part for part in (wall, stamp) if part) or None
    return LogLine(index, raw, body, timestamp, mono, wall or ctime, kernel)


def _split(lines: Iterable[Any]) -> Iterable[str]:
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


def parse_lines(lines: Iterable[str]) -> List[LogLine]:
    """Parse every line, joining wrapped lines with their unstamped continuation."""
    out = []  # type: List[LogLine]
    for index, raw in enumerate(_split(lines)):
        line = parse_line(raw, index)
        prev = out[-1] if out else None
        if (prev is not None and prev.timestamp and line.timestamp is None and line.text
                and _WRAPPED.search(prev.raw)):
            out[-1] = replace(prev, raw=prev.raw.rstrip() + " " + raw.strip(),
                              text=(prev.text + " " + line.text).strip())
            continue
        out.append(line)
    return out


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


def _span(lines: List[LogLine]) -> Tuple[Optional[str], Optional[str]]:
    """First and last timestamp of some lines: by monotonic stamp for plain dmesg (one boot),
    else in file order (syslog spans reboots and is written in order)."""
    stamped = [line for line in lines if line.timestamp]
    if not stamped:
        return None, None
    if all(line.monotonic is not None and line.wall is None for line in stamped):
        stamped = sorted(stamped, key=lambda line: (line.monotonic, line.index))
    return stamped[0].timestamp, stamped[-1].timestamp


def _duration(lines: List[LogLine]) -> Optional[float]:
    """Seconds between the first and the last of some lines, when their stamps allow it."""
    monos = [line.monotonic for line in lines]
    if lines and all(mono is not None for mono in monos):
        if all(line.wall is None for line in lines) or monos == sorted(monos):
            return round(max(monos) - min(monos), 6)
    walls = [_wall_seconds(line.wall) for line in lines]
    if not lines or any(wall is None for wall in walls):
        return None
    delta = walls[-1][0] - walls[0][0]
    if delta < 0 and not walls[0][1]:
        delta += _YEAR  # yearless syslog stamps across New Year
    return round(delta, 6)


def _evidence(lines: List[LogLine]) -> List[str]:
    """Up to MAX_EVIDENCE distinct raw lines: the first ones and the last two."""
    raws = list(OrderedDict.fromkeys(line.raw.strip() for line in lines))
    if len(raws) <= MAX_EVIDENCE:
        return raws
    return raws[:MAX_EVIDENCE - 2] + raws[-2:]


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
_COMPILER_SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|llvm|lto_priv)(?:\.\d+)?)+$")


def parse_frame(text: str) -> Optional[str]:
    """Function name of a stack-trace line (offset, module, ``?`` marker and compiler suffixes
    such as ``.isra.55`` removed), or None if the line is not a frame."""
    match = _FRAME.match(text.strip())
    if not match or not (match.group("addr") or match.group("offset") or match.group("source")):
        return None
    return _COMPILER_SUFFIX.sub("", match.group("fn"))


def _base_name(function: str) -> str:
    """Name for matching: since v6.10 allocators are ``*_noprof`` (``mempool_alloc_noprof``)."""
    return function[:-len("_noprof")] if function.endswith("_noprof") else function


# ---------------------------------------------------------------------------------------------
# Kernel release printed in the log
# ---------------------------------------------------------------------------------------------

_RELEASE_PATTERNS = (
    re.compile(r"Linux version (?P<release>\d+\.\d+\S*)"),
    re.compile(r"(?:Not tainted|Tainted: [A-Z ]*?)\s+(?P<release>\d+\.\d+\.\d+\S*) #"),
)


def release_from_log(lines: Iterable[LogLine]) -> Optional[str]:
    """The kernel release printed in the log (boot banner, oops or hung-task header), if any."""
    for line in lines:
        for pattern in _RELEASE_PATTERNS:
            match = pattern.search(line.text)
            if match:
                return match.group("release")
    return None


def _version(release: Optional[str]) -> Optional[Tuple[int, int]]:
    match = re.match(r"\s*(\d+)\.(\d+)", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


# ---------------------------------------------------------------------------------------------
# SLUB: Unable to allocate memory
# ---------------------------------------------------------------------------------------------

_SLUB_HEADER = re.compile(
    r"SLUB: Unable to allocate memory (?:for CPU (?P<cpu>\d{1,6}) (?:\(of node -?\d{1,6}\) )?)?"
    r"on node (?P<node>-?\d{1,6})"
    r"(?:,\s*gfp=(?P<gfp>0x[0-9a-fA-F]{1,16})(?:\((?P<flags>[^)]*)\))?"  # v4.6+
    r"|\s*\(gfp=(?P<gfp_old>0x[0-9a-fA-F]{1,16})\))?")  # v3.x..v4.5
_SLUB_CACHE = re.compile(r"^cache: (?P<name>[^,]+)")
_MEMCG_CACHE = re.compile(r"^(?P<base>.+?)\((?P<id>\d{1,20}):(?P<cgroup>[^()]*)\)$")
_SLUB_NODE = re.compile(r"^node (?P<node>-?\d{1,6}): slabs: \d+, objs: \d+, free: \d+")
_SLUB_SUPPRESSED = re.compile(r"slab_out_of_memory: (?P<n>\d{1,10}) callbacks suppressed")


@dataclass
class _SlubReport:
    header: LogLine
    node: int
    cpu: Optional[int]
    gfp: Optional[str]  # "0x20"
    printed_flags: Optional[List[str]]  # names the kernel printed, None for the old format
    cache: Optional[str] = None
    memcg_id: Optional[int] = None
    cgroup: Optional[str] = None
    nodes: List[int] = field(default_factory=list)
    lines: List[LogLine] = field(default_factory=list)


class _SlubCollector:
    """Groups each SLUB header with its ``cache:`` and ``node N:`` lines."""

    def __init__(self) -> None:
        self.reports = []  # type: List[_SlubReport]
        self.suppressed = 0

    def feed(self, line: LogLine) -> None:
        text = line.text
        header = _SLUB_HEADER.search(text)
        if header:
            gfp = header.group("gfp") or header.group("gfp_old")
            flags = header.group("flags")
            self.reports.append(_SlubReport(
                header=line, node=int(header.group("node")),
                cpu=int(header.group("cpu")) if header.group("cpu") else None,
                gfp="%#x" % int(gfp, 16) if gfp else None,
                printed_flags=[f for f in flags.split("|") if f] if flags is not None else None,
                lines=[line]))
            return
        suppressed = _SLUB_SUPPRESSED.search(text)
        if suppressed:
            self.suppressed += int(suppressed.group("n"))
            return
        report = self.reports[-1] if self.reports else None
        if report is None:
            return
        cache = _SLUB_CACHE.match(text)
        if cache and report.cache is None:
            name = cache.group("name").strip()
            memcg = _MEMCG_CACHE.match(name)
            if memcg:
                report.cache, report.memcg_id = memcg.group("base"), int(memcg.group("id"))
                report.cgroup = memcg.group("cgroup")
            else:
                report.cache = name
            report.lines.append(line)
            return
        node = _SLUB_NODE.match(text)
        if node:
            report.nodes.append(int(node.group("node")))
            report.lines.append(line)

    def finding(self, release: Optional[str]) -> Optional[Finding]:
        if not self.reports:
            return None
        caches = OrderedDict()  # type: Dict[Tuple[Any, ...], Dict[str, Any]]
        gfps = OrderedDict()  # type: Dict[str, Dict[str, Any]]
        for report in self.reports:
            if report.cache is not None:
                key = (report.cache, report.memcg_id, report.cgroup)
                entry = caches.setdefault(key, OrderedDict([
                    ("cache", report.cache), ("memcg_id", report.memcg_id),
                    ("cgroup", report.cgroup), ("count", 0)]))
                entry["count"] += 1
            if report.gfp is not None:
                entry = gfps.get(report.gfp)
                if entry is None:
                    flags, source = _gfp_names(report.gfp, report.printed_flags, release)
                    entry = gfps[report.gfp] = OrderedDict([
                        ("value", report.gfp), ("flags", flags), ("flags_source", source),
                        ("count", 0)])
                entry["count"] += 1
        lines = [line for report in self.reports for line in report.lines]
        first, last = _span(lines)
        facts = OrderedDict([
            ("caches", [dict(entry) for entry in caches.values()]),
            ("gfp", [dict(entry) for entry in gfps.values()]),
            ("nodes", sorted({node for report in self.reports for node in report.nodes})),
            ("requested_nodes", sorted({report.node for report in self.reports})),
            ("cpus", sorted({report.cpu for report in self.reports if report.cpu is not None})),
            ("callbacks_suppressed", self.suppressed),
        ])
        evidence_lines = [line for report in self.reports for line in report.lines[:2]]
        return Finding("slub_alloc_failure", len(self.reports), first, last, dict(facts),
                       _evidence(evidence_lines))


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

_NETDEV_WAIT = re.compile(r"unregister_netdevice: waiting for (?P<dev>\S+) to become free\. "
                          r"Usage count = (?P<count>-?\d{1,10})")
_REF_TRACKER = re.compile(r"^ref_tracker: (?P<object>[^\s@]+@\S+) has (?P<users>\d{1,10}/\d{1,10}) "
                          r"users at")
# Frames of the reference-taking plumbing; the first other frame is the holder.
_TRACKER_PLUMBING = {"ref_tracker_alloc", "__netdev_tracker_alloc", "netdev_tracker_alloc",
                     "netdev_hold", "dev_hold", "__dev_hold", "dev_hold_track"}
# Commit 919067cc845f "net: add CONFIG_PCPU_DEV_REFCNT" and its fix "net: set initial device
# refcount to 1" (both v5.13): the device keeps one base reference while it waits.
_BASE_REFERENCE_SINCE = (5, 13)


@dataclass
class _Device:
    name: str
    events: List[Tuple[LogLine, int]] = field(default_factory=list)
    trackers: "OrderedDict[Tuple[str, ...], Dict[str, Any]]" = field(default_factory=OrderedDict)


class _NetdevCollector:
    """Collects the wait messages per device and the ref_tracker stacks printed after them."""

    def __init__(self) -> None:
        self.devices = OrderedDict()  # type: Dict[str, _Device]
        self.last = None  # type: Optional[_Device]
        self.tracker = None  # type: Optional[Dict[str, Any]]
        self.saw_ref_tracker = False

    def feed(self, line: LogLine) -> None:
        text = line.text
        if self.tracker is not None:
            function = parse_frame(text)
            if function:
                self.tracker["frames"].append(function)
                return
            self._end_tracker()
        wait = _NETDEV_WAIT.search(text)
        if wait:
            name = wait.group("dev")
            device = self.devices.get(name)
            if device is None:
                device = self.devices[name] = _Device(name)
            device.events.append((line, int(wait.group("count"))))
            self.last = device
            return
        tracker = _REF_TRACKER.match(text)
        if tracker:
            self.saw_ref_tracker = True
            if self.last is not None:
                self.tracker = {"object": tracker.group("object"), "users": tracker.group("users"),
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
        holder = next((f for f in tracker["frames"] if _base_name(f) not in _TRACKER_PLUMBING), None)
        self.last.trackers[key] = OrderedDict([
            ("object", tracker["object"]), ("users", tracker["users"]), ("holder", holder),
            ("frames", tracker["frames"]), ("reports", 1), ("_line", tracker["line"])])

    def finding(self, release: Optional[str], release_source: str) -> Optional[Finding]:
        self._end_tracker()
        if not self.devices:
            return None
        meaning = usage_count_meaning(release, release_source, self.saw_ref_tracker)
        base = meaning["base_references"]
        devices, lines, evidence, distinct_total = [], [], [], 0
        for device in self.devices.values():
            dev_lines = [line for line, _ in device.events]
            counts = [count for _, count in device.events]
            distinct = len(OrderedDict.fromkeys(_event_key(line) for line in dev_lines))
            distinct_total += distinct
            first, last = _span(dev_lines)
            trackers = [OrderedDict((k, v) for k, v in entry.items() if k != "_line")
                        for entry in device.trackers.values()]
            devices.append(OrderedDict([
                ("name", device.name), ("messages", len(dev_lines)), ("distinct_events", distinct),
                ("max_usage_count", max(counts)), ("last_usage_count", counts[-1]),
                ("leaked_references", max(counts) - base if base is not None else None),
                ("first_seen", first), ("last_seen", last),
                ("duration_seconds", _duration(dev_lines)),
                ("ref_tracker", [dict(entry) for entry in trackers]),
            ]))
            lines.extend(dev_lines)
            evidence.extend(dev_lines[:1] + [e["_line"] for e in device.trackers.values()][:1])
        evidence.extend(lines[-1:])
        first, last = _span(lines)
        facts = OrderedDict([("devices", [dict(d) for d in devices]),
                             ("distinct_events", distinct_total),
                             ("leaked_references", meaning)])
        return Finding("netdev_unregister_wait", len(lines), first, last, dict(facts),
                       _evidence(evidence))


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

_HUNG = re.compile(r"INFO: task (?P<task>.+):(?P<pid>\d{1,10}) blocked for more than "
                   r"(?P<seconds>\d{1,12}) seconds")
# sched_show_task() before v5.9: "%-15.15s %c" then [stack pointer (3.x)] free-stack pid ppid flags
_TASK_OLD = re.compile(r"^(?P<task>\S.{0,14}?)\s+(?P<state>[RSDTtXZPIKWN])\s*(?:[0-9a-f]{8,16}\s+)?"
                       r"\d{1,10}\s+(?P<pid>\d{1,10})\s+\d{1,10}\s+0x[0-9a-f]{1,16}$")
# since commit cc172ff301d8 (v5.9): "task:%-15.15s state:%c stack:%5lu pid:%5d ppid:..."
_TASK_NEW = re.compile(r"^task:(?P<task>.+?)\s+state:(?P<state>\S)\s.*?\bpid:\s*(?P<pid>\d{1,10})")
_WORKQUEUE = re.compile(r"^Workqueue: (?P<workqueue>.+)$")
_TASK_END = re.compile(r"^</TASK>$")
_TRACE_NOISE = re.compile(
    r"^(?:Call [Tt]race:|<(?:TASK|IRQ|/IRQ|NMI|/NMI|SOFTIRQ|/SOFTIRQ|EOI)>"
    r"|(?:RIP|RSP|RAX|RBX|RCX|RDX|RSI|RDI|RBP|R\d{1,2}|FS|CS|CR2|Code):.*"
    r"|\?\s*0x[0-9a-fA-F]+.*|(?:[0-9a-fA-F]{8,16}\s*)+)$")
_MAX_PREAMBLE = 12  # lines between a task header and its first frame (Tainted, echo 0 >, ...)

_MEMPOOL_FRAMES = {"mempool_alloc", "bvec_alloc"}
_WRITEBACK = re.compile(r"writepage|pageout")
_NETDEV_FRAMES = {"netdev_run_todo", "copy_net_ns", "cleanup_net"}
_NETDEV_PREFIXES = re.compile(r"^(?:netdev_wait_allrefs|unregister_netdevice|_*rtnl(?:_net)?_lock)")


@dataclass
class _TaskDump:
    task: Optional[str]
    pid: Optional[int]
    state: Optional[str] = None
    blocked_seconds: Optional[int] = None
    workqueue: Optional[str] = None
    frames: List[Tuple[str, LogLine]] = field(default_factory=list)
    lines: List[LogLine] = field(default_factory=list)
    preamble: int = 0

    @property
    def blocked(self) -> bool:
        """Reported by the hung-task watchdog, or dumped in D state (SysRq)."""
        return self.blocked_seconds is not None or self.state == "D"


class _TaskCollector:
    """Cuts the log into blocked-task dumps: header, task line, Call Trace, frames."""

    def __init__(self) -> None:
        self.dumps = []  # type: List[_TaskDump]
        self.current = None  # type: Optional[_TaskDump]

    def _close(self) -> None:
        if self.current is not None:
            self.dumps.append(self.current)
            self.current = None

    def feed(self, line: LogLine) -> None:
        text = line.text
        hung = _HUNG.search(text)
        if hung:
            self._close()
            self.current = _TaskDump(hung.group("task"), int(hung.group("pid")),
                                     blocked_seconds=int(hung.group("seconds")), lines=[line])
            return
        task = _TASK_NEW.match(text) or _TASK_OLD.match(text)
        if task:
            pid, current = int(task.group("pid")), self.current
            if current is None or current.frames or current.state or current.pid not in (None, pid):
                self._close()
                current = self.current = _TaskDump(task.group("task").strip(), pid)
            current.state = task.group("state")
            current.lines.append(line)
            return
        current = self.current
        if current is None:
            return
        if not text:
            self._close()
            return
        function = parse_frame(text)
        if function:
            current.frames.append((function, line))
            current.lines.append(line)
        elif _TASK_END.match(text):
            current.lines.append(line)
            self._close()
        elif _TRACE_NOISE.match(text):
            current.lines.append(line)
        elif current.frames:
            self._close()
        else:
            workqueue = _WORKQUEUE.match(text)
            if workqueue:
                current.workqueue = workqueue.group("workqueue")
            current.preamble += 1
            if current.preamble > _MAX_PREAMBLE:
                self._close()
            else:
                current.lines.append(line)

    def findings(self) -> List[Finding]:
        self._close()
        out = []
        for kind, matcher in (("hung_task_mempool", _mempool_frames),
                              ("hung_task_netdev", _netdev_frames)):
            matched = [(dump, matcher([f for f, _ in dump.frames]))
                       for dump in self.dumps if dump.blocked]
            matched = [(dump, hits) for dump, hits in matched if hits]
            if matched:
                out.append(_task_finding(kind, matched))
        return out


def _mempool_frames(functions: List[str]) -> List[str]:
    """Frames that make a stack a mempool/bvec stall: mempool_alloc or bvec_alloc anywhere, or
    io_schedule_timeout together with a writepage/pageout frame. [] if it is not one."""
    bases = [_base_name(f) for f in functions]
    writeback = [f for f in bases if _WRITEBACK.search(f)]
    if not (_MEMPOOL_FRAMES.intersection(bases) or ("io_schedule_timeout" in bases and writeback)):
        return []
    relevant = _MEMPOOL_FRAMES | {"io_schedule_timeout"} | set(writeback)
    return list(OrderedDict.fromkeys(f for f in bases if f in relevant))


def _netdev_frames(functions: List[str]) -> List[str]:
    """Frames of device unregistration, netns setup/teardown or the rtnl lock."""
    bases = [_base_name(f) for f in functions]
    return list(OrderedDict.fromkeys(
        f for f in bases if f in _NETDEV_FRAMES or _NETDEV_PREFIXES.match(f)))


def _task_finding(kind: str, matched: List[Tuple[_TaskDump, List[str]]]) -> Finding:
    """One finding from the matching dumps; tasks are merged by (name, pid)."""
    tasks = OrderedDict()  # type: Dict[Tuple[Optional[str], Optional[int]], Dict[str, Any]]
    lines, evidence = [], []
    for dump, hits in matched:
        frames = [f for f, _ in dump.frames]
        entry = tasks.get((dump.task, dump.pid))
        if entry is None:
            entry = tasks[(dump.task, dump.pid)] = OrderedDict([
                ("task", dump.task), ("pid", dump.pid), ("state", dump.state),
                ("blocked_seconds", dump.blocked_seconds), ("workqueue", dump.workqueue),
                ("reports", 0), ("matched_frames", hits), ("frames", frames)])
        else:
            if dump.blocked_seconds is not None:
                entry["blocked_seconds"] = max(entry["blocked_seconds"] or 0, dump.blocked_seconds)
            if len(frames) > len(entry["frames"]):
                entry["frames"], entry["matched_frames"] = frames, hits
        entry["reports"] += 1
        lines.extend(dump.lines)
        key = next((hit for hit in hits if hit in _MEMPOOL_FRAMES), hits[0])
        evidence.append(dump.lines[0])
        evidence.append(next(line for f, line in dump.frames if _base_name(f) == key))
    first, last = _span(lines)
    return Finding(kind, len(matched), first, last,
                   {"tasks": [dict(entry) for entry in tasks.values()]}, _evidence(evidence))


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def find_incidents(lines: Iterable[str], kernel_release: Optional[str] = None) -> List[Finding]:
    """Findings of the four KINDS in kernel log lines (any supported format), in KINDS order.

    ``kernel_release`` (``uname -r`` of the kernel that wrote the log) decides how gfp masks
    without names and "Usage count" values are read; without it the release printed in the log
    is used, if any.
    """
    parsed = [line for line in parse_lines(lines) if line.kernel]
    release, source = kernel_release, "given"
    if release is None:
        release, source = release_from_log(parsed), "printed in the log"
    slub, netdev, tasks = _SlubCollector(), _NetdevCollector(), _TaskCollector()
    for line in parsed:
        slub.feed(line)
        netdev.feed(line)
        tasks.feed(line)
    found = [slub.finding(release), netdev.finding(release, source)] + tasks.findings()
    by_kind = {finding.kind: finding for finding in found if finding is not None}
    return [by_kind[kind] for kind in KINDS if kind in by_kind]
