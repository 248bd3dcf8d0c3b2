"""Folded stacks: the one input every flame-graph export takes, whatever tool made the stacks.

A sample is ``(frames, weight)`` with frames root first; folding sums the weights of equal stacks
into ``{"root;child;leaf": weight}``, the text format of flamegraph.pl, inferno and bcc's ``-f``.
Weights are integers: samples, nanoseconds waited, bytes, references held.

Frame conventions understood here (and coloured by the SVG renderer):

* kernel vs user: bcc tools run with ``-d`` put a ``-`` frame between the user part (before) and
  the kernel part (after); ``offwaketime`` adds ``--`` between the target's and the waker's
  stacks (the waker's kernel part comes first, then ``-``, then its user part). ``profile -a``
  instead suffixes kernel frames with ``_[k]`` (and ``_[j]``/``_[i]`` mark JIT and inlined user code).
* annotations: our own frames in square brackets, made with :func:`annotation`, e.g.
  ``[mempool wait 5.00s]``, ``[slab fail biovec-64]``, ``[pid 1234 kworker/u8:2]``.
  ``[unknown]`` (an unresolved address, as bcc and perf print it) is a code frame, not an annotation.

>>> folded_lines(fold([(["kworker", "bio_alloc", "mempool_alloc"], 5), (["kworker", "bio_alloc"], 1)]))
['kworker;bio_alloc 1', 'kworker;bio_alloc;mempool_alloc 5']
"""
import functools
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

# Frame kinds (the SVG colours them).
KERNEL = "kernel"
USER = "user"
ANNOTATION = "annotation"
SEPARATOR = "separator"

UNKNOWN_FRAME = "[unknown]"      # an empty or unresolved frame
NO_STACK = "[no stack]"          # a sample that came with no frames at all

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
# Our weight units -> speedscope's; anything else is a plain count ("none").
SPEEDSCOPE_UNITS = {"ns": "nanoseconds", "us": "microseconds", "ms": "milliseconds", "s": "seconds",
                    "bytes": "bytes"}
TIME_UNITS_NS = {"ns": 1, "us": 1000, "ms": 1000 * 1000, "s": 1000 * 1000 * 1000}

# Characters that cannot be written as UTF-8 (lone surrogates, e.g. from surrogateescape) or are not
# legal XML 1.0 (C0 controls except tab/newline/CR, U+FFFE, U+FFFF); DEL is escaped to stay visible.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# What a frame additionally may not contain: the folded separators.
_UNSAFE_IN_FRAME = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff;]")
_LINE = re.compile(r"^(.*?)[ \t]+([0-9]+)[ \t]*$")
_USER_SUFFIX = re.compile(r"_\[[a-jl-z]\]$")   # _[j] JIT, _[i] inlined: user code; _[k] is kernel


def _escape_char(match: Any) -> str:
    char = match.group(0)
    code = ord(char)
    if char == ";":
        return ":"
    if 0xDC80 <= code <= 0xDCFF:          # a byte smuggled in by surrogateescape: show the byte
        return "\\x%02x" % (code - 0xDC00)
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def clean_text(text: str) -> str:
    """Text that encodes as UTF-8 and is legal in XML/HTML, keeping tab, newline and CR.

    Bytes smuggled in by ``surrogateescape`` become ``\\xNN``, other lone surrogates U+FFFD,
    control characters ``\\xNN``. U+FFFD itself is kept.

    >>> clean_text("comm\\udcff\\x01")
    'comm\\\\xff\\\\x01'
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_char, text)


@functools.lru_cache(maxsize=1 << 16)      # frames repeat: a stream of any length names few functions
def sanitize_frame(frame: Union[str, bytes]) -> str:
    """One frame as it may appear in a folded stack: no ``;`` (becomes ``:``), no control chars.

    Bytes are decoded as UTF-8 (undecodable bytes shown as ``\\xNN``); an empty frame is ``[unknown]``.

    >>> sanitize_frame("a;b\\nc")
    'a:b\\\\x0ac'
    """
    if isinstance(frame, bytes):
        frame = frame.decode("utf-8", "surrogateescape")
    if not frame:
        return UNKNOWN_FRAME
    if _UNSAFE_IN_FRAME.search(frame) is None:
        return frame
    return _UNSAFE_IN_FRAME.sub(_escape_char, frame)


def sanitize_stack(stack: str) -> str:
    """A folded key made safe frame by frame (what :func:`fold` would have produced)."""
    if (_UNSAFE.search(stack) is None and ";;" not in stack and stack
            and stack[0] != ";" and stack[-1] != ";"):
        return stack
    return ";".join(sanitize_frame(f) for f in stack.split(";"))


def annotation(label: str) -> str:
    """Our annotation frame, e.g. ``annotation("mempool wait 5.00s") == "[mempool wait 5.00s]"``."""
    return sanitize_frame("[%s]" % label)


def is_annotation(frame: str) -> bool:
    """True for ``[...]`` frames we add, False for ``[unknown]`` (an unresolved code address)."""
    return len(frame) > 1 and frame[0] == "[" and frame[-1] == "]" and frame != UNKNOWN_FRAME


def fold(samples: Iterable[Tuple[Sequence[Union[str, bytes]], int]]) -> Dict[str, int]:
    """Sum the weights of equal stacks: ``(frames root-first, weight)`` -> ``{"a;b;c": total}``.

    Frames are sanitised (:func:`sanitize_frame`); a sample with no frames counts under
    ``[no stack]``; stacks whose total is 0 are dropped. Keys come out sorted.
    Raises TypeError for a weight that is not an int, ValueError for a negative one.
    """
    totals = {}  # type: Dict[str, int]
    add_samples(totals, samples)
    return finished(totals)


def finished(totals: Dict[str, int]) -> Dict[str, int]:
    """Folded stacks added to as a stream went (:func:`add_samples`) as :func:`fold` gives them: sorted by
    stack, without the stacks whose total is 0."""
    return dict((k, totals[k]) for k in sorted(totals) if totals[k])


def add_samples(totals: Dict[str, int], samples: Iterable[Tuple[Sequence[Union[str, bytes]], int]]) -> None:
    """Add SAMPLES to the folded stacks TOTALS, as :func:`fold` does (unsorted, zeros kept): a stream folded
    as it goes."""
    for frames, weight in samples:
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError("stack weight must be an int, not %r" % (weight,))
        if weight < 0:
            raise ValueError("stack weight must not be negative: %d" % weight)
        key = ";".join([sanitize_frame(f) for f in frames]) if len(frames) else NO_STACK
        totals[key] = totals.get(key, 0) + weight


def folded_lines(folded: Dict[str, int]) -> List[str]:
    """``"a;b;c 123"`` lines sorted by stack: the input of flamegraph.pl and inferno."""
    return ["%s %d" % (stack, folded[stack]) for stack in sorted(folded)]


def parse_folded_checked(lines: Iterable[str]) -> Tuple[Dict[str, int], List[int]]:
    """Read folded lines: the stacks, and the 1-based numbers of the lines that were not valid.

    Blank lines are ignored; a valid line is ``STACK COUNT`` with a non-negative integer count
    (a tab also separates). Frames are sanitised as :func:`fold` does; equal stacks are summed.
    """
    totals = {}  # type: Dict[str, int]
    bad = []  # type: List[int]
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None or not match.group(1):
            bad.append(number)
            continue
        stack = sanitize_stack(match.group(1))
        totals[stack] = totals.get(stack, 0) + int(match.group(2))
    return dict((k, totals[k]) for k in sorted(totals)), bad


def parse_folded(lines: Iterable[str]) -> Dict[str, int]:
    """Read folded lines, skipping invalid ones (:func:`parse_folded_checked` also says which)."""
    return parse_folded_checked(lines)[0]


def uses_kernel_suffix(folded: Dict[str, int]) -> bool:
    """True when the stacks mark kernel frames with ``_[k]`` (bcc ``profile -a``): then the
    unmarked frames are user frames."""
    return any("_[k]" in stack for stack in folded)


def frame_kinds(frames: Sequence[str], kernel_suffix: bool = False, default: str = KERNEL) -> List[str]:
    """The kind of each frame of one stack (root first): kernel, user, annotation or separator.

    In a stack with a ``-`` frame, unmarked frames before it are user frames and after it kernel
    frames (each further ``-`` switches again, as in offwaketime's waker part); otherwise they are
    user frames when the graph marks kernel frames with ``_[k]`` (``kernel_suffix``), else
    ``default``. Where stacks disagree about a merged frame, the renderer uses the first stack.

    >>> frame_kinds(["bash", "main", "-", "sys_write", "[slow 5.00s]"])
    ['user', 'user', 'separator', 'kernel', 'annotation']
    """
    separated = "-" in frames
    plain = USER if kernel_suffix else default
    kinds = []
    in_kernel = False
    for frame in frames:
        if frame[-1:] == "]" and frame != UNKNOWN_FRAME:
            if is_annotation(frame):
                kinds.append(ANNOTATION)
                continue
            if frame.endswith("_[k]"):
                kinds.append(KERNEL)
                continue
            if _USER_SUFFIX.search(frame):
                kinds.append(USER)
                continue
        elif frame == "-":
            in_kernel = not in_kernel
            kinds.append(SEPARATOR)
            continue
        elif frame == "--":
            kinds.append(SEPARATOR)
            continue
        if separated:
            kinds.append(KERNEL if in_kernel else USER)
        else:
            kinds.append(plain)
    return kinds


def to_speedscope(folded: Dict[str, int], name: str, unit: str) -> Dict[str, Any]:
    """A speedscope file (one "sampled" profile, one sample per distinct stack, weighted).

    ``unit`` is ours (``ns``, ``us``, ``ms``, ``s``, ``bytes``, or a count such as ``samples``);
    frames are shared by name, in order of first appearance over the sorted stacks.
    """
    index = {}  # type: Dict[str, int]
    frames = []  # type: List[Dict[str, str]]
    samples = []  # type: List[List[int]]
    weights = []  # type: List[int]
    for stack in sorted(folded):
        sample = []
        for frame in stack.split(";"):
            i = index.get(frame)
            if i is None:
                i = index[frame] = len(frames)
                frames.append({"name": frame})
            sample.append(i)
        samples.append(sample)
        weights.append(folded[stack])
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "exporter": "bpftools",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [{
            "type": "sampled", "name": name, "unit": SPEEDSCOPE_UNITS.get(unit, "none"),
            "startValue": 0, "endValue": sum(weights), "samples": samples, "weights": weights,
        }],
    }


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, ties away from zero: exactly JavaScript's toFixed, so the
    SVG's script and this module print the same numbers."""
    scaled = value * _TWICE_TENS[digits] if 0 <= digits < len(_TWICE_TENS) else None
    if scaled is not None and abs(scaled) < 2.0 ** 52 and scaled != int(scaled):
        # not a tie: "%f" rounds the exact binary value correctly, and only ties round differently
        return "%.*f" % (digits, value)
    quantum = Decimal(1).scaleb(-digits)
    return str(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))


_TWICE_TENS = [2.0 * 10 ** d for d in range(10)]    # a tie at D digits is an odd multiple of 1 / (2 * 10^D)


def format_weight(value: int, unit: str, count_name: str = "") -> str:
    """A weight for people: ``5.00 s``, ``12.50 ms``, ``800 ns``, ``1.50 MiB``, ``1,234 samples``.

    Time units (ns, us, ms, s) and bytes are scaled; any other unit is a count labelled with
    ``count_name`` (or the unit when count_name is empty).
    """
    if unit in TIME_UNITS_NS:
        ns = value * TIME_UNITS_NS[unit]
        for scale, suffix in ((10 ** 9, "s"), (10 ** 6, "ms"), (10 ** 3, "\u00b5s")):
            if abs(ns) >= scale:
                return "%s %s" % (fixed(ns / scale, 2), suffix)
        return "%d ns" % ns
    if unit == "bytes":
        for power, suffix in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
            if abs(value) >= 1024 ** power:
                return "%s %s" % (fixed(value / 1024 ** power, 2), suffix)
        return "%d B" % value
    return "{:,} {}".format(value, count_name or unit)
