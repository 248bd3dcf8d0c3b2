"""Undo what people do to a kernel log line when they paste or export it, one line at a time.

A log reaches an SRE as it was handed over: with an editor's or a tracker's line numbers
(``162 [  843.07] msg``), markdown quote markers (``> ``) or inline-code backticks, HTML entities
(``&lt;TASK&gt;``, ``&nbsp;``, a trailing ``<br>`` of an HTML mail or page), as journald's JSON export (``journalctl -k -o json``: one object a line) or
as ``dmesg --json`` (one object a line, or util-linux's indented form with one field a line).
:func:`unpaste` takes those off and says what the export carried beside the text (a monotonic or
wall-clock stamp, whether the kernel wrote it). It looks at one line only: the few facts an
indented ``dmesg --json`` spreads over several lines are carried by the caller (one record of
lookback, see ``kernel_log.LineJoiner``). The syslog, journald and dmesg stamps themselves are
``kernel_log.parse_line``'s.
"""
import datetime
import html
import json
import re
from typing import Any, Dict, Optional

from dataclasses import dataclass

_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|apos|nbsp|#\d{1,7}|#x[0-9a-fA-F]{1,6});")
_BREAK = re.compile(r"<br\s{0,2}/?>$", re.IGNORECASE)  # an HTML line break closing the line
_QUOTE = re.compile(r"^(?:>[ \t]?)+")
# An editor's or tracker's line number, kept off only before what starts a log line: a dmesg or
# caller stamp, a priority, a syslog month, an ISO date, a /dev/kmsg record or a JSON object
# (maybe behind a quote marker or a backtick).
_LINE_NUMBER = re.compile(r"^\d{1,7}(?:[ \t]*[:|][ \t]*|[ \t]+)"
                          r"(?=(?:[`>][ \t]?){0,4}(?:\[(?:[ \t]*\d|[^\W\d_]{2,4}\.? )|<\d|\{\"|[^\W\d_]{3,4}\.? {1,2}\d"
                          r"|\d{4}-\d\d-\d\d[T ]|\d{1,4},\d))")
_JSON_FIELD = re.compile(r'^"(?P<key>[A-Za-z_]{1,32})"\s*:\s*(?P<value>.*?),?$')
_JSON_STRUCTURE = re.compile(r'^(?:[\[\]{}],?|\},\s*\{|"dmesg"\s*:\s*\[)$')
_MAX_LAYERS = 4      # decorations taken off one line, outermost first
_MAX_JSON = 1 << 20  # characters of a JSON line parsed (a kernel line is at most ~1 KiB of text)


@dataclass
class Unpasted:
    """A line with its paste decorations off, and what its export said beside the text."""

    text: str                          # what is left: a log line as the kernel or syslog wrote it
    monotonic: Optional[float] = None  # seconds since boot, from a JSON export
    stamp: Optional[str] = None        # that stamp as printed in the export
    wall: Optional[str] = None         # wall clock from a JSON export (ISO 8601, UTC)
    kernel: Optional[bool] = None      # False when the export says another program wrote it
    field: Optional[str] = None        # a dmesg --json field line ("time", "fac", ...), not a message
    value: Any = None                  # that field's value


def unpaste(raw: str) -> Unpasted:
    """RAW without its paste decorations (see the module docstring); never raises."""
    text = raw.strip()
    if text[:1] == "[" and "&" not in text and text[-1:] not in ("`", ">"):
        return Unpasted(text)  # a dmesg line as dmesg wrote it: nothing to take off
    if text[-1:] == ">":
        text = _BREAK.sub("", text).rstrip()
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text).replace("\xa0", " ")
    for _ in range(_MAX_LAYERS):  # decorations stack in any order: "12 > `msg`", "> 12 msg"...
        bare = _LINE_NUMBER.sub("", _QUOTE.sub("", text).strip(), count=1)
        if bare.startswith("`") or bare.endswith("`"):
            bare = bare.strip("`").strip()
        if bare == text:
            break
        text = bare
    if text.startswith("{") and text.endswith("}") and len(text) <= _MAX_JSON:
        record = _json(text)
        if record is not None:
            return _from_record(record)
    if text.startswith('"'):
        return _field_line(text)
    if _JSON_STRUCTURE.match(text):
        return Unpasted("", field="structure")
    return Unpasted(text)


def _json(text: str) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _from_record(record: Dict[str, Any]) -> Unpasted:
    """One journald (``MESSAGE``) or ``dmesg --json`` (``msg``) record."""
    if "MESSAGE" in record:
        usec = _number(record.get("_SOURCE_MONOTONIC_TIMESTAMP"))
        mono = usec / 1e6 if usec is not None else None
        real = _number(record.get("__REALTIME_TIMESTAMP"))
        kernel = record.get("_TRANSPORT") == "kernel" or record.get("SYSLOG_IDENTIFIER") == "kernel"
        return Unpasted(_text(record["MESSAGE"]), mono, "[%.6f]" % mono if mono is not None else None,
                        _iso(real) if real is not None else None, kernel)
    if "msg" in record:
        seconds = _number(record.get("time"))
        kernel = record.get("fac") in (None, "kern")
        return Unpasted(_text(record["msg"]), seconds, _shown(record.get("time")), None, kernel)
    return Unpasted("", field="structure")


def _field_line(text: str) -> Unpasted:
    """One line of util-linux's indented ``dmesg --json``: ``"time": 87876.714280,``."""
    match = _JSON_FIELD.match(text)
    if not match:
        return Unpasted(text)
    key, value = match.group("key"), match.group("value").strip()
    if key == "time":  # kept as printed: the stamp is reported as the log shows it
        return Unpasted("", field=key, value=value if _number(value) is not None else None)
    decoded = _json('{"v": %s}' % value) if value else None
    value = decoded.get("v") if decoded is not None else value
    if key == "msg":
        return Unpasted(_text(value))
    return Unpasted("", field=key, value=value)


def _text(value: Any) -> str:
    """A message as journald or dmesg exported it: a string, or a list of bytes (not UTF-8)."""
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace").strip()
    return str(value).strip()


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _shown(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _iso(usec: float) -> Optional[str]:
    """Microseconds since the epoch as an ISO 8601 UTC stamp, None when out of range."""
    try:
        moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=usec)
    except (OverflowError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
